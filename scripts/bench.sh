#!/usr/bin/env bash
# The project's benchmark (issue #5): colorproxy against nginx and HAProxy, all three splitting
# 4:1 between two fast upstreams (two myapp instances) over keep-alive upstream connections, with
# wrk straight at one upstream as the ceiling. Loopback only, bounded in time.
#
#   scripts/bench.sh [--strict] [ROUNDS]          (ROUNDS defaults to $ROUNDS or 3)
#
# Environment: ROUNDS (3), DURATION seconds per measured run (10), WARMUP seconds before each (2),
# RSS_DURATION seconds of the 256-connection run that measures peak RSS (5), QUIET_WAIT seconds to
# wait for a quiet machine before the first run (60), RETRIES: how many disturbed runs may be
# repeated in all (10), NICE: the niceness decrease for everything measured, as root (10; 0: none).
#
# Method (stable ratios on a 2-core machine): wrk (1 thread, 64 connections) pinned to CPU 0; the
# upstreams and every proxy pinned together to CPU 1; every proxy with one worker (nginx
# worker_processes 1, HAProxy nbthread 1, colorproxy's tokio runtime sizes itself to the one CPU
# of its affinity mask). Each round runs every target once, in an order rotated from round to
# round; the table shows the median over the rounds. Proxy CPU is utime+stime from /proc/PID/stat
# before and after the measured run. Peak RSS is VmHWM after one extra run at 256 connections.
# The machine may be shared: each run also reports (column other%) how much CPU processes other
# than wrk and the servers used meanwhile, and a run disturbed by 20% of a CPU or more is repeated
# (at most twice, within the RETRIES budget). CPU per request is the figure least disturbed.
#
# Installs nginx, haproxy and wrk from Debian when missing (needs root). Prints a table, ratios and
# PASS/FAIL lines for the targets of issue #5, and writes the medians to target/bench/results.txt
# (whitespace-separated) and target/bench/results.md (a Markdown table for the README).
# Exit status: 0 whatever the PASS/FAIL lines say (with --strict: 1 if any says FAIL); 2 when the
# benchmark could not be set up or a run could not be measured.
set -euo pipefail

cd "$(dirname "$0")/.."
PATH=$PATH:/usr/sbin:/sbin

usage() { sed -n '6,11p' "$0" | sed 's/^# \{0,1\}//' >&2; }
die() { echo "bench.sh: $*" >&2; exit 2; }

strict=0
rounds=${ROUNDS:-3}
for arg in "$@"; do
  case $arg in
    --strict) strict=1 ;;
    -h | --help) usage; exit 0 ;;
    '' | *[!0-9]*) usage; die "unknown argument '$arg'" ;;
    *) rounds=$arg ;;
  esac
done
duration=${DURATION:-10}
warmup=${WARMUP:-2}
rss_duration=${RSS_DURATION:-5}
for v in rounds:"$rounds" DURATION:"$duration" WARMUP:"$warmup" RSS_DURATION:"$rss_duration"; do
  case ${v#*:} in
    '' | *[!0-9]* | 0) die "${v%%:*} must be a positive integer, got '${v#*:}'" ;;
  esac
done
for v in QUIET_WAIT:"${QUIET_WAIT:-60}" RETRIES:"${RETRIES:-10}" NICE:"${NICE:-10}"; do
  case ${v#*:} in
    '' | *[!0-9]*) die "${v%%:*} must be a non-negative integer, got '${v#*:}'" ;;
  esac
done
[ "${NICE:-10}" -le 20 ] || die "NICE must be at most 20"
if [ "$rounds" -gt 20 ] || [ "$duration" -gt 120 ]; then die "at most 20 rounds of 120 s each"; fi
conns=64
rss_conns=256
disturbed=20 # a run during which other processes used this % of a CPU or more is repeated
retries=${RETRIES:-10}
wrk_cpu=0
server_cpu=1

# ---------------------------------------------------------------------------------------------
# Tools

[ "$(nproc --all)" -ge 2 ] || die "needs at least 2 CPUs (wrk on CPU $wrk_cpu, servers on CPU $server_cpu)"
for tool in taskset getconf curl ss awk sort pgrep timeout; do
  command -v "$tool" >/dev/null || die "needs $tool"
done
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "needs ${missing[*]}: run as root to install them, or apt-get install ${missing[*]}"
  echo "== installing ${missing[*]} from Debian"
  apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
  for tool in "${missing[@]}"; do
    command -v "$tool" >/dev/null || die "$tool is still missing after apt-get install"
  done
fi
clk_tck=$(getconf CLK_TCK)
# As root, wrk, the upstreams and the proxies run at nice -10, so that other work on the machine
# (a build, say) disturbs the measurement less. NICE=0 turns that off.
prio=()
if [ "$(id -u)" -eq 0 ] && [ "${NICE:-10}" != 0 ]; then prio=(nice -n "-${NICE:-10}"); fi
# 256 client connections plus as many upstream connections per proxy.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 2048 ] || die "needs at least 2048 open files (ulimit -n)"

# ---------------------------------------------------------------------------------------------
# Processes: everything started here is killed by PID on exit, Ctrl-C or failure.

work=$(mktemp -d "${TMPDIR:-/tmp}/colorproxy-bench.XXXXXX")
chmod 755 "$work" # nginx workers read nothing here, but keep the path traversable
pids=()
# shellcheck disable=SC2317 # reached through the EXIT trap
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

used_ports=" "
# Listening ports come from below the kernel's ephemeral range, so that no outgoing connection
# (ours or another program's) takes one between the check and the bind.
read -r ephemeral_low _ </proc/sys/net/ipv4/ip_local_port_range
if [ "$ephemeral_low" -gt 12000 ]; then
  port_low=10000 port_span=$((ephemeral_low - 10000))
else
  port_low=$((ephemeral_low + 20000)) port_span=5000 # unusual range: best effort above it
fi
# A free loopback port (nginx and HAProxy need it in their configuration; colorproxy's stdout,
# where it would announce a port 0 choice, goes to /dev/null).
free_port() {
  local port
  for _ in $(seq 200); do
    port=$((port_low + RANDOM % port_span))
    case $used_ports in *" $port "*) continue ;; esac
    if [ -z "$(ss -Htan "sport = :$port")" ]; then
      used_ports+="$port "
      echo "$port"
      return 0
    fi
  done
  die "no free port found"
}

# Waits up to 10 s until URL answers 200.
wait_http() { # url, pid, log
  local url=$1 pid=$2 log=$3
  for _ in $(seq 100); do
    curl -sf -o /dev/null --max-time 1 "$url" && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench.sh: $url did not answer 200 (pid $pid); its log $log:" >&2
  cat "$log" >&2 || true
  exit 2
}

echo "== building colorproxy and myapp (release)"
cargo build --release --quiet -p colorproxy -p myapp || die "cargo build failed"
bin=$PWD/target/release
if revision=$(git rev-parse --short HEAD 2>/dev/null); then
  git diff --quiet HEAD -- src myapp Cargo.toml Cargo.lock 2>/dev/null || revision+=+modified
else
  revision=unknown
fi

declare -A url pidlist
# The PIDs whose CPU time is counted for a target (for nginx: master and workers).
cpu_pids() { # target
  local t=$1 p
  for p in ${pidlist[$t]}; do
    echo "$p"
    [ "$t" = nginx ] && pgrep -P "$p"
  done
  return 0
}

start_upstream() { # name
  local name=$1 log="$work/$1.log"
  "${prio[@]}" taskset -c "$server_cpu" env -u V2 HOSTNAME="$name" SHUTDOWN_DELAY=0 "$bin/myapp" 127.0.0.1:0 >"$log" 2>&1 &
  pids+=("$!")
  local pid=$! addr=
  for _ in $(seq 100); do
    addr=$(grep -o 'myapp listening on [0-9.:]*' "$log" | awk '{print $NF}') && [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$log" >&2; die "myapp $name did not start"; }
  wait_http "http://$addr/" "$pid" "$log"
  up_addr[$name]=$addr
  up_pid[$name]=$pid
}
declare -A up_addr up_pid
start_upstream v1
start_upstream v2
a=${up_addr[v1]}
b=${up_addr[v2]}
url[direct]=http://$a/
pidlist[direct]=${up_pid[v1]}
echo "== upstreams: myapp v1 on $a (weight 4), myapp v2 on $b (weight 1), pinned to CPU $server_cpu"

start_colorproxy() { # target, ACCESS_LOG
  local t=$1 port log="$work/$1.log"
  port=$(free_port)
  "${prio[@]}" taskset -c "$server_cpu" env -i PATH="$PATH" BLUE="http://$a" GREEN="http://$b" BLUE_WEIGHT=4 GREEN_WEIGHT=1 \
    LISTEN="127.0.0.1:$port" ADMIN_LISTEN=off ACCESS_LOG="$2" "$bin/colorproxy" >/dev/null 2>"$log" &
  pids+=("$!")
  pidlist[$t]=$!
  url[$t]=http://127.0.0.1:$port/
  wait_http "${url[$t]}" "$!" "$log"
}
start_colorproxy colorproxy off
start_colorproxy colorproxy+log on

# nginx: one worker, keep-alive upstream pool, headers comparable to what colorproxy sets.
nginx_port=$(free_port)
mkdir -p "$work/nginx"
{
  [ "$(id -u)" -eq 0 ] && echo "user root;"
  cat <<EOF
worker_processes 1;
daemon off;
master_process on;
error_log stderr warn;
pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/client_body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  keepalive_requests 1000000;
  upstream colors {
    server $a weight=4;
    server $b weight=1;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://colors;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header Color blue;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}
EOF
} >"$work/nginx/nginx.conf"
nginx -t -q -e stderr -p "$work/nginx" -c "$work/nginx/nginx.conf" 2>"$work/nginx-test.log" ||
  { cat "$work/nginx-test.log" >&2; die "nginx rejected its configuration ($work/nginx/nginx.conf)"; }
"${prio[@]}" taskset -c "$server_cpu" nginx -e stderr -p "$work/nginx" -c "$work/nginx/nginx.conf" >"$work/nginx.log" 2>&1 &
pids+=("$!")
pidlist[nginx]=$!
url[nginx]=http://127.0.0.1:$nginx_port/
wait_http "${url[nginx]}" "$!" "$work/nginx.log"
nginx_workers=$(pgrep -P "${pidlist[nginx]}" | tr '\n' ' ')
[ -n "$nginx_workers" ] || die "nginx has no worker process"
# Killed by PID too, should the master die first.
read -ra nw <<<"$nginx_workers"
pids+=("${nw[@]}")

# HAProxy: one thread, connection reuse, the same headers.
haproxy_port=$(free_port)
cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096

defaults
  mode http
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option forwardfor
  http-reuse always

frontend bench
  bind 127.0.0.1:$haproxy_port
  default_backend colors

backend colors
  balance roundrobin
  http-request set-header Color blue
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Forwarded-Proto http
  server v1 $a weight 4
  server v2 $b weight 1
EOF
haproxy -c -q -f "$work/haproxy.cfg" >"$work/haproxy-test.log" 2>&1 ||
  { cat "$work/haproxy-test.log" >&2; die "haproxy rejected its configuration ($work/haproxy.cfg)"; }
"${prio[@]}" taskset -c "$server_cpu" haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=("$!")
pidlist[haproxy]=$!
url[haproxy]=http://127.0.0.1:$haproxy_port/
wait_http "${url[haproxy]}" "$!" "$work/haproxy.log"

targets=(direct colorproxy colorproxy+log nginx haproxy)
proxies=(colorproxy colorproxy+log nginx haproxy)

# Every proxy splits 4:1: 200 requests, v2's share within 5 sigma of 20% (exact for round robin).
for t in "${proxies[@]}"; do
  urls=()
  for _ in $(seq 200); do urls+=("${url[$t]}"); done
  curl -sS --fail "${urls[@]}" >"$work/split-$t.txt" || die "$t: requests failed during the split check"
  n1=$(grep -c ' v1$' "$work/split-$t.txt" || true)
  n2=$(grep -c ' v2$' "$work/split-$t.txt" || true)
  if [ $((n1 + n2)) -ne 200 ] || [ "$n2" -lt 12 ] || [ "$n2" -gt 68 ]; then
    die "$t does not split 4:1 (v1 $n1, v2 $n2 of 200; e.g. '$(head -n1 "$work/split-$t.txt")')"
  fi
done

cp_threads() { # target: thread count and names
  local p=${pidlist[$1]}
  printf '%s threads (%s)' "$(find "/proc/$p/task" -mindepth 1 -maxdepth 1 | wc -l)" \
    "$(cat /proc/"$p"/task/*/comm | sort | uniq -c | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}')"
}

echo "== targets (servers pinned to CPU $server_cpu, wrk -t1 pinned to CPU $wrk_cpu):"
echo "   direct          ${url[direct]}  (myapp v1, pid ${pidlist[direct]})"
echo "   colorproxy      ${url[colorproxy]}  ACCESS_LOG=off, pid ${pidlist[colorproxy]}: $(cp_threads colorproxy)"
echo "   colorproxy+log  ${url[colorproxy+log]}  ACCESS_LOG=on to /dev/null, pid ${pidlist[colorproxy+log]}: $(cp_threads colorproxy+log)"
echo "   nginx           ${url[nginx]}  $(nginx -v 2>&1 | sed 's/.*: //'), master ${pidlist[nginx]}, worker(s) $nginx_workers"
echo "   haproxy         ${url[haproxy]}  $(haproxy -v | awk 'NR == 1 {print $1, $2, $3}'), pid ${pidlist[haproxy]}: $(cp_threads haproxy)"
echo "   colorproxy revision $revision; machine: $(nproc --all) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), load average $(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------
# Measurement

# CPU ticks (utime+stime, all threads) of the given PIDs.
cpu_ticks() {
  local p stat rest f total=0
  for p in "$@"; do
    stat=$(<"/proc/$p/stat") || die "pid $p is gone"
    rest=${stat##*) } # fields from 3 on; the name in parentheses may contain spaces
    read -ra f <<<"$rest"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

# 12.3us / 1.23ms / 1.23s / 1.00m -> milliseconds
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); print v + 0 }
    else if (v ~ /[0-9]m$/) { sub(/m$/, "", v); print v * 60000 }
    else if (v ~ /[0-9]s$/) { sub(/s$/, "", v); print v * 1000 }
    else { print "nan" }
  }'
}

# Busy ticks of the whole machine (user nice system irq softirq steal), from /proc/stat.
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# CPU ticks of this shell's reaped children (wrk) from `times` output. `times` itself must run in
# the main shell, not in a $(...) subshell, whose children start from zero.
child_ticks() {
  awk -v hz="$clk_tck" 'NR == 2 {
    t = 0
    for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
    printf "%.0f", t * hz }' "$1"
}
# Every server process: the CPU they and wrk do not account for was used by someone else.
all_server_pids() {
  local t
  for t in "${targets[@]}"; do cpu_pids "$t"; done
  echo "${up_pid[v2]}"
}
# Percent of one CPU used by processes other than wrk and the servers over a span.
other_pct() { # busy ticks, server ticks, wrk ticks, seconds
  awk -v b="$1" -v s="$2" -v w="$3" -v d="$4" -v hz="$clk_tck" 'BEGIN {
    o = (b - s - w) / hz / d * 100; printf "%.0f", o < 0 ? 0 : o }'
}
now() { date +%s.%N; }

# Waits (up to the given seconds) for the machine to be quiet: other processes under 10% of one
# CPU over 2 s. Proceeds with a warning if it never is.
wait_quiet() { # seconds
  local limit=$1 waited=0 b0 s0 b1 s1 other
  local -a all
  mapfile -t all < <(all_server_pids)
  while :; do
    b0=$(busy_ticks)
    s0=$(cpu_ticks "${all[@]}")
    sleep 2
    b1=$(busy_ticks)
    s1=$(cpu_ticks "${all[@]}")
    other=$(other_pct $((b1 - b0)) $((s1 - s0)) 0 2)
    if [ "$other" -lt 10 ]; then
      echo "   machine quiet: other processes use ${other}% of a CPU"
      return 0
    fi
    if [ "$waited" -ge "$limit" ]; then
      echo "   WARNING: other processes still use ${other}% of a CPU after ${waited}s; results will be noisy"
      return 0
    fi
    [ "$waited" -gt 0 ] || echo "   other processes use ${other}% of a CPU; waiting up to ${limit}s for a quiet machine"
    waited=$((waited + 2))
  done
}

# One wrk run against a target; sets r_rps r_p50 r_p99 r_cpu (CPU-s per 100k requests) r_err and
# r_other (percent of one CPU that processes other than wrk and the servers used meanwhile).
run_wrk() { # target, connections, seconds, output file
  local t=$1 c=$2 d=$3 out=$4 before after requests
  local b0 b1 s0 s1 w0 w1 t0 t1
  local -a cp all
  mapfile -t cp < <(cpu_pids "$t")
  mapfile -t all < <(all_server_pids)
  times >"$work/times0"
  t0=$(now)
  b0=$(busy_ticks)
  s0=$(cpu_ticks "${all[@]}")
  before=$(cpu_ticks "${cp[@]}")
  timeout $((d + 30)) "${prio[@]}" taskset -c "$wrk_cpu" wrk -t1 -c"$c" -d"${d}s" --latency "${url[$t]}" >"$out" 2>&1 ||
    { cat "$out" >&2; die "wrk against $t failed"; }
  after=$(cpu_ticks "${cp[@]}")
  s1=$(cpu_ticks "${all[@]}")
  b1=$(busy_ticks)
  t1=$(now)
  times >"$work/times1"
  w0=$(child_ticks "$work/times0")
  w1=$(child_ticks "$work/times1")
  r_other=$(other_pct $((b1 - b0)) $((s1 - s0)) $((w1 - w0)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')")
  r_rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  requests=$(awk '/ requests in / {print $1}' "$out")
  r_p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")
  r_p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
  r_err=$(awk '/Non-2xx or 3xx responses:/ {e += $NF}
    /Socket errors:/ {for (i = 3; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) e += $i + 0}
    END {print e + 0}' "$out")
  if [ -z "$r_rps" ] || [ -z "$requests" ] || [ "$requests" -eq 0 ] || [ "$r_p50" = nan ] || [ "$r_p99" = nan ]; then
    cat "$out" >&2
    die "could not read wrk's output for $t"
  fi
  r_cpu=$(awk -v t=$((after - before)) -v hz="$clk_tck" -v n="$requests" 'BEGIN {printf "%.3f", t / hz / n * 100000}')
}

declare -A m_rps m_p50 m_p99 m_cpu m_err m_rss m_other
for t in "${targets[@]}"; do m_err[$t]=0; done
ntargets=${#targets[@]}
echo
echo "== $rounds rounds x $ntargets targets: ${warmup}s warm-up + ${duration}s measured each (wrk -t1 -c$conns)"
wait_quiet "${QUIET_WAIT:-60}"
printf '   %-5s %-15s %10s %8s %8s %10s %6s %7s\n' round target req/s p50_ms p99_ms cpu/100k errors other%
max_other=0
for ((r = 0; r < rounds; r++)); do
  for ((i = 0; i < ntargets; i++)); do
    t=${targets[$(((i + r) % ntargets))]}
    attempt=0
    while :; do
      timeout $((warmup + 30)) "${prio[@]}" taskset -c "$wrk_cpu" wrk -t1 -c"$conns" -d"${warmup}s" "${url[$t]}" >/dev/null 2>&1 ||
        die "wrk warm-up against $t failed"
      run_wrk "$t" "$conns" "$duration" "$work/wrk-$r-$t.txt"
      if [ "$r_other" -lt "$disturbed" ] || [ "$attempt" -ge 2 ] || [ "$retries" -le 0 ]; then break; fi
      printf '   %-5s %-15s %10.0f %8.3f %8.3f %10.3f %6d %7s  disturbed: repeated\n' \
        $((r + 1)) "$t" "$r_rps" "$r_p50" "$r_p99" "$r_cpu" "$r_err" "$r_other"
      attempt=$((attempt + 1))
      retries=$((retries - 1))
      wait_quiet 30 | sed 's/^/      /'
    done
    m_rps[$t]+=" $r_rps"
    m_p50[$t]+=" $r_p50"
    m_p99[$t]+=" $r_p99"
    m_cpu[$t]+=" $r_cpu"
    m_err[$t]=$((m_err[$t] + r_err))
    m_other[$t]+=" $r_other"
    [ "$r_other" -le "$max_other" ] || max_other=$r_other
    printf '   %-5s %-15s %10.0f %8.3f %8.3f %10.3f %6d %7s\n' $((r + 1)) "$t" "$r_rps" "$r_p50" "$r_p99" "$r_cpu" "$r_err" "$r_other"
  done
done

echo
echo "== peak RSS: one ${rss_duration}s run per proxy at $rss_conns connections, then VmHWM"
vmhwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
for t in "${proxies[@]}"; do
  run_wrk "$t" "$rss_conns" "$rss_duration" "$work/wrk-rss-$t.txt"
  m_err[$t]=$((m_err[$t] + r_err))
  kib=0
  detail=
  for p in $(cpu_pids "$t"); do
    k=$(vmhwm_kib "$p")
    kib=$((kib + k))
    detail+="${detail:+ + }$(awk -v k="$k" 'BEGIN {printf "%.1f", k / 1024}') (pid $p)"
  done
  m_rss[$t]=$(awk -v k="$kib" 'BEGIN {printf "%.1f", k / 1024}')
  printf '   %-15s %6s MiB = %s; %.0f req/s, p99 %.3f ms, %d errors at %d connections\n' \
    "$t" "${m_rss[$t]}" "$detail" "$r_rps" "$r_p99" "$r_err" "$rss_conns"
done
m_rss[direct]=-
echo "   colorproxy after the runs: $(cp_threads colorproxy)"

# ---------------------------------------------------------------------------------------------
# Report

median() {
  printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {
    if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
declare -A rps p50 p99 cpu
for t in "${targets[@]}"; do
  # shellcheck disable=SC2086 # word splitting of the space-separated samples is intended
  {
    rps[$t]=$(median ${m_rps[$t]})
    p50[$t]=$(median ${m_p50[$t]})
    p99[$t]=$(median ${m_p99[$t]})
    cpu[$t]=$(median ${m_cpu[$t]})
  }
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b == 0) print "nan"; else printf "%.2f", a / b}'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN {if (b == 0) print "nan"; else printf "%+.1f%%", (a / b - 1) * 100}'; }

table() {
  printf '%-15s %10s %8s %8s %10s %9s %7s\n' target req/s p50_ms p99_ms cpu_s/100k rss_MiB errors
  for t in "${targets[@]}"; do
    printf '%-15s %10.0f %8.3f %8.3f %10.3f %9s %7d\n' "$t" "${rps[$t]}" "${p50[$t]}" "${p99[$t]}" "${cpu[$t]}" "${m_rss[$t]}" "${m_err[$t]}"
  done
}

echo
echo "== medians over $rounds rounds (wrk -t1 -c$conns, ${duration}s; errors: total over all runs)"
table
echo "   cpu_s/100k: CPU seconds of the proxy per 100k requests (direct: of the upstream myapp v1);"
echo "   rss_MiB: peak RSS (VmHWM) after the $rss_conns-connection run (nginx: master + worker)"
if [ "$max_other" -ge "$disturbed" ]; then
  echo "   WARNING: other processes used up to ${max_other}% of a CPU during the measured runs (column other%):"
  echo "   req/s and latency are disturbed; CPU per request much less so. Rerun on a quiet machine."
fi

echo
echo "== ratios"
for base in nginx haproxy; do
  printf '   colorproxy vs %-8s req/s %sx   CPU/request %sx   p99 %sx   p50 %sx\n' "$base" \
    "$(ratio "${rps[colorproxy]}" "${rps[$base]}")" "$(ratio "${cpu[colorproxy]}" "${cpu[$base]}")" \
    "$(ratio "${p99[colorproxy]}" "${p99[$base]}")" "$(ratio "${p50[colorproxy]}" "${p50[$base]}")"
done
printf '   colorproxy vs direct   req/s %sx of the ceiling\n' "$(ratio "${rps[colorproxy]}" "${rps[direct]}")"
printf '   nginx vs haproxy       req/s %sx   CPU/request %sx   p99 %sx\n' \
  "$(ratio "${rps[nginx]}" "${rps[haproxy]}")" "$(ratio "${cpu[nginx]}" "${cpu[haproxy]}")" "$(ratio "${p99[nginx]}" "${p99[haproxy]}")"
printf '   access log cost (colorproxy+log vs colorproxy): req/s %s   CPU/request %s   p99 %s\n' \
  "$(pct "${rps[colorproxy+log]}" "${rps[colorproxy]}")" "$(pct "${cpu[colorproxy+log]}" "${cpu[colorproxy]}")" \
  "$(pct "${p99[colorproxy+log]}" "${p99[colorproxy]}")"

echo
echo "== issue #5 targets (against nginx's medians)"
failed=0
check() { # target, description, awk condition over a and b, a, b, shown
  local ok
  ok=$(awk -v a="$4" -v b="$5" "BEGIN {print ($3) ? \"PASS\" : \"FAIL\"}")
  [ "$ok" = PASS ] || failed=1
  printf '   %s  %-15s %-34s %s\n' "$ok" "$1" "$2" "$6"
}
for t in colorproxy colorproxy+log; do
  check "$t" "req/s >= 1.0x nginx" "a >= b" "${rps[$t]}" "${rps[nginx]}" "$(ratio "${rps[$t]}" "${rps[nginx]}")x"
  check "$t" "CPU per request <= 1.0x nginx" "a <= b" "${cpu[$t]}" "${cpu[nginx]}" "$(ratio "${cpu[$t]}" "${cpu[nginx]}")x"
  check "$t" "p99 <= nginx p99" "a <= b" "${p99[$t]}" "${p99[nginx]}" "${p99[$t]} ms vs ${p99[nginx]} ms"
  check "$t" "peak RSS < 20 MiB at $rss_conns conns" "a < b" "${m_rss[$t]}" 20 "${m_rss[$t]} MiB"
  check "$t" "zero errors" "a == b" "${m_err[$t]}" 0 "${m_err[$t]} errors"
done
for t in direct nginx haproxy; do
  [ "${m_err[$t]}" -eq 0 ] || echo "   WARNING: $t had ${m_err[$t]} errors: the comparison is suspect"
done

# Machine-readable medians, and the table as Markdown for the README.
mkdir -p target/bench
{
  echo "# scripts/bench.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) colorproxy $revision"
  echo "# rounds=$rounds duration_s=$duration warmup_s=$warmup conns=$conns rss_conns=$rss_conns cpus=$(nproc --all) wrk_cpu=$wrk_cpu server_cpu=$server_cpu"
  echo "target req_s p50_ms p99_ms cpu_s_per_100k rss_mib errors"
  for t in "${targets[@]}"; do
    echo "$t ${rps[$t]} ${p50[$t]} ${p99[$t]} ${cpu[$t]} ${m_rss[$t]} ${m_err[$t]}"
  done
} >target/bench/results.txt
{
  echo "| target | req/s | p50 ms | p99 ms | CPU-s per 100k req | peak RSS MiB ($rss_conns conns) | errors |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for t in "${targets[@]}"; do
    printf '| %s | %.0f | %.2f | %.2f | %.2f | %s | %d |\n' "$t" "${rps[$t]}" "${p50[$t]}" "${p99[$t]}" "${cpu[$t]}" "${m_rss[$t]}" "${m_err[$t]}"
  done
} >target/bench/results.md
echo
echo "== medians written to target/bench/results.txt and target/bench/results.md"

if [ "$strict" -eq 1 ] && [ "$failed" -ne 0 ]; then
  echo "bench.sh: --strict: at least one target FAILED" >&2
  exit 1
fi
exit 0
