#!/usr/bin/env bash
# The project's benchmark (issues #5 and #14): colorproxy against nginx and HAProxy, all three
# splitting 4:1 between two upstreams over keep-alive upstream connections, with wrk straight at
# one upstream as the ceiling. Two tables, one per kind of upstream: two myapp instances, and two
# nginx `return 200` servers (as cheap as upstreams get, so that the proxies' own cost
# dominates). Each proxy runs twice: access log off, and on, writing to a file (colorproxy: its
# default ACCESS_LOG=on, stdout to the file; nginx: `access_log FILE combined buffer=64k`;
# HAProxy: `option httplog` to a local unix datagram socket, which socat appends to the file).
# Loopback only, bounded in time.
#
#   scripts/bench.sh [--strict] [ROUNDS]          (ROUNDS defaults to $ROUNDS or 3)
#
# Environment: ROUNDS (3), DURATION seconds per measured run (6), WARMUP seconds before each (2),
# RSS_DURATION seconds of the 256-connection run that measures peak RSS (5), QUIET_WAIT seconds to
# wait for a quiet machine before the first run (60), RETRIES: how many disturbed runs may be
# repeated in all (10), NICE: the niceness decrease for everything measured, as root (10; 0: none),
# UPSTREAMS: the tables to run ("myapp nginx200", the default, or either alone), COLORPROXY: a
# release binary to measure instead of building one (with profile-guided optimisation, as shipped:
# scripts/pgo.sh).
# With the defaults: about 8 minutes on a quiet machine, plus the waits and repeated runs on a
# busy one (RETRIES x (WARMUP + DURATION + up to 30 s), QUIET_WAIT).
#
# Method (stable ratios on a 2-core machine): wrk (1 thread, 64 connections) pinned to CPU 0; the
# upstreams and every proxy pinned together to CPU 1; every proxy with one worker (nginx
# worker_processes 1, HAProxy nbthread 1, colorproxy's tokio runtime sizes itself to the one CPU
# of its affinity mask). Each round runs every target once, in an order rotated from round to
# round; the table shows the median over the rounds. Proxy CPU is utime+stime from /proc/PID/stat
# before and after the measured run (for HAProxy with its log on, socat's CPU is counted too: it
# does the writing to the file that the others do themselves). Peak RSS is VmHWM after one extra
# run at 256 connections. Access log files are emptied after every run.
# The machine may be shared: each run also reports (column other%) how much CPU processes other
# than wrk and the servers used meanwhile, and a run disturbed by 20% of a CPU or more is repeated
# (at most twice, within the RETRIES budget). CPU per request is the figure least disturbed.
#
# Installs nginx, haproxy, wrk and socat from Debian when missing (needs root). Prints a table per
# kind of upstream, ratios (of the medians, and beside them the lowest and highest ratio of the
# rounds, each round's targets measured minutes apart) and PASS/FAIL lines for the targets of
# issue #14, and writes the medians to target/bench/results.txt (whitespace-separated) and
# target/bench/results.md (Markdown tables for the README).
# Exit status: 0 whatever the PASS/FAIL lines say (with --strict: 1 if any says FAIL); 2 when the
# benchmark could not be set up or a run could not be measured.
set -euo pipefail

cd "$(dirname "$0")/.."
PATH=$PATH:/usr/sbin:/sbin

usage() { sed -n '11,22p' "$0" | sed 's/^# \{0,1\}//' >&2; }
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
duration=${DURATION:-6}
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
upstream_kinds=${UPSTREAMS:-myapp nginx200}
read -ra kinds <<<"$upstream_kinds"
[ "${#kinds[@]}" -gt 0 ] || die "UPSTREAMS is empty"
for k in "${kinds[@]}"; do
  case $k in myapp | nginx200) ;; *) die "UPSTREAMS: unknown kind '$k' (myapp, nginx200)" ;; esac
done
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
# shellcheck source=scripts/need.sh
. scripts/need.sh
need nginx haproxy wrk socat
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

echo "== building myapp (release)"
cargo build --release --locked --quiet -p myapp || die "cargo build failed"
bin=$PWD/target/release
release_binary
colorproxy=$(realpath "$colorproxy")
if revision=$(git rev-parse --short HEAD 2>/dev/null); then
  git diff --quiet HEAD -- src myapp Cargo.toml Cargo.lock 2>/dev/null || revision+=+modified
else
  revision=unknown
fi

declare -A url pidlist with_children access_file describe helper
# The PIDs of a target's own processes (for nginx: master and workers), whose memory is counted.
own_pids() { # target
  local t=$1 p
  for p in ${pidlist[$t]}; do
    echo "$p"
    [ -z "${with_children[$t]:-}" ] || pgrep -P "$p"
  done
  return 0
}
# The PIDs whose CPU time is counted for a target: its own, and its log reader's (HAProxy's).
cpu_pids() { # target
  own_pids "$1"
  [ -z "${helper[$1]:-}" ] || echo "${helper[$1]}"
}
# Every server process started, for the other% column.
server_pids=()

# Waits up to 10 s for a line matching the pattern in the log; prints the match.
wait_line() { # pattern, log, pid
  local found=
  for _ in $(seq 100); do
    found=$(grep -o "$1" "$2" | head -n1) && [ -n "$found" ] && { echo "$found"; return 0; }
    kill -0 "$3" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}

declare -A up_a up_b up_pid
# Two myapp instances (v1, v2).
start_myapp_upstreams() {
  local name log pid addr
  for name in v1 v2; do
    log="$work/myapp-$name.log"
    "${prio[@]}" taskset -c "$server_cpu" env -u V2 HOSTNAME="$name" SHUTDOWN_DELAY=0 "$bin/myapp" 127.0.0.1:0 >"$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    server_pids+=("$pid")
    addr=$(wait_line 'myapp listening on [0-9.:]*' "$log" "$pid" | awk '{print $NF}') ||
      { cat "$log" >&2; die "myapp $name did not start"; }
    wait_http "http://$addr/" "$pid" "$log"
    [ "$name" = v1 ] && up_a[myapp]=$addr up_pid[myapp]=$pid
    [ "$name" = v2 ] && up_b[myapp]=$addr
  done
  return 0
}

# nginx writes its configuration's temporary paths and pid under DIR.
nginx_head() { # dir
  [ "$(id -u)" -eq 0 ] && echo "user root;"
  cat <<EOF
worker_processes 1;
daemon off;
master_process on;
error_log stderr warn;
pid $1/nginx.pid;
events { worker_connections 4096; }
EOF
}
nginx_temp_paths() { # dir
  local k
  for k in client_body proxy fastcgi uwsgi scgi; do echo "  ${k}_temp_path $1/$k;"; done
}
# Starts nginx on DIR/nginx.conf; sets r_pid (the master) and r_workers.
run_nginx() { # dir, url to wait for
  local dir=$1
  nginx -t -q -e stderr -p "$dir" -c "$dir/nginx.conf" 2>"$dir/test.log" ||
    { cat "$dir/test.log" >&2; die "nginx rejected its configuration ($dir/nginx.conf)"; }
  "${prio[@]}" taskset -c "$server_cpu" nginx -e stderr -p "$dir" -c "$dir/nginx.conf" >"$dir/nginx.log" 2>&1 &
  r_pid=$!
  pids+=("$r_pid")
  wait_http "$2" "$r_pid" "$dir/nginx.log"
  r_workers=$(pgrep -P "$r_pid" | tr '\n' ' ')
  [ -n "$r_workers" ] || die "nginx ($dir) has no worker process"
  # Killed by PID too, should the master die first.
  local -a nw
  read -ra nw <<<"$r_workers"
  pids+=("${nw[@]}")
  server_pids+=("$r_pid" "${nw[@]}")
}

# Two nginx servers (v1, v2) in one nginx answering `return 200` with what myapp answers.
start_nginx200_upstreams() {
  local dir=$work/nginx200 p1 p2
  p1=$(free_port)
  p2=$(free_port)
  mkdir -p "$dir"
  {
    nginx_head "$dir"
    echo "http {"
    echo "  access_log off;"
    nginx_temp_paths "$dir"
    echo "  keepalive_requests 1000000;"
    echo "  default_type text/plain;"
    for v in v1:"$p1" v2:"$p2"; do
      # shellcheck disable=SC2016 # $http_color is nginx's variable
      printf '  server { listen 127.0.0.1:%s; location / { return 200 "$http_color %s\\n"; } }\n' "${v#*:}" "${v%%:*}"
    done
    echo "}"
  } >"$dir/nginx.conf"
  run_nginx "$dir" "http://127.0.0.1:$p1/"
  up_a[nginx200]=127.0.0.1:$p1
  up_b[nginx200]=127.0.0.1:$p2
  up_pid[nginx200]="$r_pid $r_workers"
}

start_colorproxy() { # target, kind, ACCESS_LOG
  local t=$1 k=$2 port log="$work/${1//\//-}.log" out=/dev/null
  port=$(free_port)
  if [ "$3" = on ]; then out=$work/${t//\//-}.access; access_file[$t]=$out; fi
  "${prio[@]}" taskset -c "$server_cpu" env -i PATH="$PATH" BLUE="http://${up_a[$k]}" GREEN="http://${up_b[$k]}" \
    BLUE_WEIGHT=4 GREEN_WEIGHT=1 LISTEN="127.0.0.1:$port" ADMIN_LISTEN=off ACCESS_LOG="$3" "$colorproxy" >>"$out" 2>"$log" &
  pids+=("$!")
  server_pids+=("$!")
  pidlist[$t]=$!
  url[$t]=http://127.0.0.1:$port/
  wait_http "${url[$t]}" "$!" "$log"
  describe[$t]="ACCESS_LOG=$3${access_file[$t]:+, stdout to a file}, pid $!: $(cp_threads "$t")"
}

# nginx: one worker, keep-alive upstream pool, headers comparable to what colorproxy sets.
start_nginx() { # target, kind, log: on/off
  local t=$1 k=$2 dir=$work/${1//\//-} port log="access_log off;"
  port=$(free_port)
  mkdir -p "$dir"
  if [ "$3" = on ]; then
    access_file[$t]=$dir.access
    log="access_log ${access_file[$t]} combined buffer=64k;"
  fi
  {
    nginx_head "$dir"
    cat <<EOF
http {
  $log
$(nginx_temp_paths "$dir")
  keepalive_requests 1000000;
  upstream colors {
    server ${up_a[$k]} weight=4;
    server ${up_b[$k]} weight=1;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$port;
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
  } >"$dir/nginx.conf"
  url[$t]=http://127.0.0.1:$port/
  run_nginx "$dir" "${url[$t]}"
  pidlist[$t]=$r_pid
  with_children[$t]=1
  describe[$t]="$(nginx -v 2>&1 | sed 's/.*: //'), access log $3${access_file[$t]:+ (buffer=64k)}, master $r_pid, worker(s) $r_workers"
}

# HAProxy: one thread, connection reuse, the same headers; with its log on, `option httplog` to
# a unix datagram socket that socat appends to a file.
start_haproxy() { # target, kind, log: on/off
  local t=$1 k=$2 port f=$work/${1//\//-} global_log='' log='' socat_pid=
  local cfg=$f.cfg sock=$f.sock
  port=$(free_port)
  if [ "$3" = on ]; then
    access_file[$t]=$f.access
    "${prio[@]}" taskset -c "$server_cpu" socat -u "UNIX-RECV:$sock" "OPEN:${access_file[$t]},creat,append" 2>"$f-socat.log" &
    pids+=("$!")
    server_pids+=("$!")
    socat_pid=$!
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || { cat "$f-socat.log" >&2; die "socat did not create $sock"; }
    global_log="log $sock len 4096 local0 info"
    log=$'  log global\n  option httplog'
  fi
  cat >"$cfg" <<EOF
global
  nbthread 1
  maxconn 4096
  $global_log

defaults
  mode http
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option forwardfor
  http-reuse always
$log

frontend bench
  bind 127.0.0.1:$port
  default_backend colors

backend colors
  balance roundrobin
  http-request set-header Color blue
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Forwarded-Proto http
  server v1 ${up_a[$k]} weight 4
  server v2 ${up_b[$k]} weight 1
EOF
  haproxy -c -q -f "$cfg" >"$f-test.log" 2>&1 ||
    { cat "$f-test.log" >&2; die "haproxy rejected its configuration ($cfg)"; }
  "${prio[@]}" taskset -c "$server_cpu" haproxy -db -f "$cfg" >"$f.log" 2>&1 &
  pids+=("$!")
  server_pids+=("$!")
  pidlist[$t]=$!
  url[$t]=http://127.0.0.1:$port/
  wait_http "${url[$t]}" "$!" "$f.log"
  describe[$t]="$(haproxy -v | awk 'NR == 1 {print $1, $2, $3}'), log $3, pid $!: $(cp_threads "$t")"
  if [ -n "$socat_pid" ]; then
    helper[$t]=$socat_pid
    describe[$t]+="; socat (log reader) $socat_pid"
  fi
}

cp_threads() { # target: thread count and names
  local p=${pidlist[$1]%% *}
  printf '%s threads (%s)' "$(find "/proc/$p/task" -mindepth 1 -maxdepth 1 | wc -l)" \
    "$(cat /proc/"$p"/task/*/comm | sort | uniq -c | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}')"
}

# Targets are KIND/NAME: the rows of the table of that kind of upstream.
rows=(direct colorproxy colorproxy+log nginx nginx+log haproxy haproxy+log)
proxy_rows=(colorproxy colorproxy+log nginx nginx+log haproxy haproxy+log)
targets=()
proxies=()
for k in "${kinds[@]}"; do
  case $k in
    myapp) start_myapp_upstreams ;;
    nginx200) start_nginx200_upstreams ;;
  esac
  url[$k/direct]=http://${up_a[$k]}/
  pidlist[$k/direct]=${up_pid[$k]%% *}
  [ "$k" = myapp ] || with_children[$k/direct]=1
  describe[$k/direct]="the upstream v1 ($k on ${up_a[$k]}) straight"
  echo "== $k upstreams: v1 on ${up_a[$k]} (weight 4), v2 on ${up_b[$k]} (weight 1), pinned to CPU $server_cpu"
  start_colorproxy "$k/colorproxy" "$k" off
  start_colorproxy "$k/colorproxy+log" "$k" on
  start_nginx "$k/nginx" "$k" off
  start_nginx "$k/nginx+log" "$k" on
  start_haproxy "$k/haproxy" "$k" off
  start_haproxy "$k/haproxy+log" "$k" on
  for r in "${rows[@]}"; do targets+=("$k/$r"); done
  for r in "${proxy_rows[@]}"; do proxies+=("$k/$r"); done
done

# Every proxy splits 4:1: 200 requests, v2's share within 5 sigma of 20% (exact for round robin);
# with its log on, it writes a line per request.
for t in "${proxies[@]}"; do
  urls=()
  for _ in $(seq 200); do urls+=("${url[$t]}"); done
  split=$work/split-${t//\//-}.txt
  curl -sS --fail "${urls[@]}" >"$split" || die "$t: requests failed during the split check"
  n1=$(grep -c ' v1$' "$split" || true)
  n2=$(grep -c ' v2$' "$split" || true)
  if [ $((n1 + n2)) -ne 200 ] || [ "$n2" -lt 12 ] || [ "$n2" -gt 68 ]; then
    die "$t does not split 4:1 (v1 $n1, v2 $n2 of 200; e.g. '$(head -n1 "$split")')"
  fi
done
# Empties the access log files (nginx's buffer is written out when full; every writer appends).
truncate_logs() {
  local f
  for f in "${access_file[@]}"; do : >"$f"; done
}
for t in "${!access_file[@]}"; do
  case $t in */nginx+log) continue ;; esac # buffered: its lines come out 64 KiB at a time
  lines=0
  for _ in $(seq 50); do
    lines=$(grep -Ec 'status=200| 200 ' "${access_file[$t]}" || true)
    [ "$lines" -ge 200 ] && break
    sleep 0.1
  done
  [ "$lines" -ge 200 ] || die "$t wrote $lines access lines to ${access_file[$t]} for 200 requests"
done
truncate_logs

echo "== targets (servers pinned to CPU $server_cpu, wrk -t1 pinned to CPU $wrk_cpu):"
for t in "${targets[@]}"; do
  printf '   %-24s %s  %s\n' "$t" "${url[$t]}" "${describe[$t]}"
done
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
all_server_pids() { printf '%s\n' "${server_pids[@]}"; }
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
  truncate_logs
}

declare -A m_rps m_p50 m_p99 m_cpu m_err m_rss m_other
for t in "${targets[@]}"; do m_err[$t]=0; done
ntargets=${#targets[@]}
echo
echo "== $rounds rounds x $ntargets targets: ${warmup}s warm-up + ${duration}s measured each (wrk -t1 -c$conns)"
wait_quiet "${QUIET_WAIT:-60}"
printf '   %-5s %-24s %10s %8s %8s %10s %6s %7s\n' round target req/s p50_ms p99_ms cpu/100k errors other%
max_other=0
for ((r = 0; r < rounds; r++)); do
  for ((i = 0; i < ntargets; i++)); do
    t=${targets[$(((i + r) % ntargets))]}
    attempt=0
    while :; do
      timeout $((warmup + 30)) "${prio[@]}" taskset -c "$wrk_cpu" wrk -t1 -c"$conns" -d"${warmup}s" "${url[$t]}" >/dev/null 2>&1 ||
        die "wrk warm-up against $t failed"
      truncate_logs
      run_wrk "$t" "$conns" "$duration" "$work/wrk-$r-${t//\//-}.txt"
      if [ "$r_other" -lt "$disturbed" ] || [ "$attempt" -ge 2 ] || [ "$retries" -le 0 ]; then break; fi
      printf '   %-5s %-24s %10.0f %8.3f %8.3f %10.3f %6d %7s  disturbed: repeated\n' \
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
    printf '   %-5s %-24s %10.0f %8.3f %8.3f %10.3f %6d %7s\n' $((r + 1)) "$t" "$r_rps" "$r_p50" "$r_p99" "$r_cpu" "$r_err" "$r_other"
  done
done

echo
echo "== peak RSS: one ${rss_duration}s run per proxy at $rss_conns connections, then VmHWM"
vmhwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
for t in "${proxies[@]}"; do
  run_wrk "$t" "$rss_conns" "$rss_duration" "$work/wrk-rss-${t//\//-}.txt"
  m_err[$t]=$((m_err[$t] + r_err))
  kib=0
  detail=
  for p in $(own_pids "$t"); do
    k=$(vmhwm_kib "$p")
    kib=$((kib + k))
    detail+="${detail:+ + }$(awk -v k="$k" 'BEGIN {printf "%.1f", k / 1024}') (pid $p)"
  done
  m_rss[$t]=$(awk -v k="$kib" 'BEGIN {printf "%.1f", k / 1024}')
  printf '   %-24s %6s MiB = %s; %.0f req/s, p99 %.3f ms, %d errors at %d connections\n' \
    "$t" "${m_rss[$t]}" "$detail" "$r_rps" "$r_p99" "$r_err" "$rss_conns"
done
for k in "${kinds[@]}"; do
  m_rss[$k/direct]=-
  echo "   $k/colorproxy after the runs: $(cp_threads "$k/colorproxy")"
done

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
# The lowest and highest of the per-round ratios of two targets' samples (each list in round
# order, both measured within minutes of each other in every round): how far this machine moved
# the comparison during the run. A verdict whose spread straddles 1.0 is the noise's, not the code's.
spread() { # samples of a, samples of b
  awk -v a="$1" -v b="$2" 'BEGIN {
    n = split(a, x, " "); split(b, y, " "); lo = ""; hi = ""
    for (i = 1; i <= n; i++) if (y[i] > 0) { r = x[i] / y[i]; if (lo == "" || r < lo) lo = r; if (hi == "" || r > hi) hi = r }
    if (lo == "") print "nan"; else printf "%.2f-%.2f", lo, hi }'
}
pct() { awk -v a="$1" -v b="$2" 'BEGIN {if (b == 0) print "nan"; else printf "%+.1f%%", (a / b - 1) * 100}'; }

table() { # kind
  printf '%-15s %10s %8s %8s %10s %9s %7s\n' "$1" req/s p50_ms p99_ms cpu_s/100k rss_MiB errors
  for r in "${rows[@]}"; do
    t=$1/$r
    printf '%-15s %10.0f %8.3f %8.3f %10.3f %9s %7d\n' "$r" "${rps[$t]}" "${p50[$t]}" "${p99[$t]}" "${cpu[$t]}" "${m_rss[$t]}" "${m_err[$t]}"
  done
}

for k in "${kinds[@]}"; do
  echo
  echo "== $k upstreams: medians over $rounds rounds (wrk -t1 -c$conns, ${duration}s; errors: total over all runs)"
  table "$k"
done
echo "   cpu_s/100k: CPU seconds of the proxy per 100k requests (direct: of the upstream v1; haproxy+log:"
echo "   with socat, its log reader); rss_MiB: peak RSS (VmHWM) after the $rss_conns-connection run"
echo "   (nginx: master + worker; haproxy+log: haproxy alone)"
if [ "$max_other" -ge "$disturbed" ]; then
  echo "   WARNING: other processes used up to ${max_other}% of a CPU during the measured runs (column other%):"
  echo "   req/s and latency are disturbed; CPU per request much less so. Rerun on a quiet machine."
fi

echo
echo "== ratios"
for k in "${kinds[@]}"; do
  for log in "" +log; do
    for base in nginx haproxy; do
      a=$k/colorproxy$log b=$k/$base$log
      printf '   %-8s colorproxy%-4s vs %-12s req/s %sx (rounds %s)   CPU/request %sx (%s)   p99 %sx (%s)   p50 %sx\n' \
        "$k" "$log" "$base$log" \
        "$(ratio "${rps[$a]}" "${rps[$b]}")" "$(spread "${m_rps[$a]}" "${m_rps[$b]}")" \
        "$(ratio "${cpu[$a]}" "${cpu[$b]}")" "$(spread "${m_cpu[$a]}" "${m_cpu[$b]}")" \
        "$(ratio "${p99[$a]}" "${p99[$b]}")" "$(spread "${m_p99[$a]}" "${m_p99[$b]}")" \
        "$(ratio "${p50[$a]}" "${p50[$b]}")"
    done
  done
  printf '   %-8s colorproxy     vs direct       req/s %sx of the ceiling\n' "$k" "$(ratio "${rps[$k/colorproxy]}" "${rps[$k/direct]}")"
  for p in colorproxy nginx haproxy; do
    printf '   %-8s access log cost of %-10s req/s %s   CPU/request %s   p99 %s\n' "$k" "$p" \
      "$(pct "${rps[$k/$p+log]}" "${rps[$k/$p]}")" "$(pct "${cpu[$k/$p+log]}" "${cpu[$k/$p]}")" \
      "$(pct "${p99[$k/$p+log]}" "${p99[$k/$p]}")"
  done
done

echo
echo "== issue #14 targets (colorproxy against nginx's medians, the logged row against nginx's logged row)"
failed=0
check() { # target, description, awk condition over a and b, a, b, shown
  local ok
  ok=$(awk -v a="$4" -v b="$5" "BEGIN {print ($3) ? \"PASS\" : \"FAIL\"}")
  [ "$ok" = PASS ] || failed=1
  printf '   %s  %-24s %-34s %s\n' "$ok" "$1" "$2" "$6"
}
for k in "${kinds[@]}"; do
  for log in "" +log; do
    t=$k/colorproxy$log n=$k/nginx$log
    check "$t" "req/s >= 1.0x nginx$log" "a >= b" "${rps[$t]}" "${rps[$n]}" \
      "$(ratio "${rps[$t]}" "${rps[$n]}")x (rounds $(spread "${m_rps[$t]}" "${m_rps[$n]}")x)"
    check "$t" "CPU per request <= 1.0x nginx$log" "a <= b" "${cpu[$t]}" "${cpu[$n]}" \
      "$(ratio "${cpu[$t]}" "${cpu[$n]}")x (rounds $(spread "${m_cpu[$t]}" "${m_cpu[$n]}")x)"
    check "$t" "p99 <= nginx$log p99" "a <= b" "${p99[$t]}" "${p99[$n]}" \
      "${p99[$t]} ms vs ${p99[$n]} ms (rounds $(spread "${m_p99[$t]}" "${m_p99[$n]}")x)"
    check "$t" "peak RSS < 16 MiB at $rss_conns conns" "a < b" "${m_rss[$t]}" 16 "${m_rss[$t]} MiB"
    check "$t" "zero errors" "a == b" "${m_err[$t]}" 0 "${m_err[$t]} errors"
  done
done
for t in "${targets[@]}"; do
  case $t in */colorproxy*) continue ;; esac
  [ "${m_err[$t]}" -eq 0 ] || echo "   WARNING: $t had ${m_err[$t]} errors: the comparison is suspect"
done

# Machine-readable medians, and the tables as Markdown for the README.
mkdir -p target/bench
{
  echo "# scripts/bench.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) colorproxy $revision"
  echo "# rounds=$rounds duration_s=$duration warmup_s=$warmup conns=$conns rss_conns=$rss_conns cpus=$(nproc --all) wrk_cpu=$wrk_cpu server_cpu=$server_cpu max_other_pct=$max_other"
  echo "upstreams target req_s p50_ms p99_ms cpu_s_per_100k rss_mib errors"
  for t in "${targets[@]}"; do
    echo "${t%%/*} ${t#*/} ${rps[$t]} ${p50[$t]} ${p99[$t]} ${cpu[$t]} ${m_rss[$t]} ${m_err[$t]}"
  done
} >target/bench/results.txt
{
  for k in "${kinds[@]}"; do
    echo "| $k upstreams | req/s | p50 ms | p99 ms | CPU-s per 100k req | peak RSS MiB ($rss_conns conns) | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for r in "${rows[@]}"; do
      t=$k/$r
      printf '| %s | %.0f | %.2f | %.2f | %.2f | %s | %d |\n' "$r" "${rps[$t]}" "${p50[$t]}" "${p99[$t]}" "${cpu[$t]}" "${m_rss[$t]}" "${m_err[$t]}"
    done
    echo
  done
} >target/bench/results.md
echo
echo "== medians written to target/bench/results.txt and target/bench/results.md"

if [ "$strict" -eq 1 ] && [ "$failed" -ne 0 ]; then
  echo "bench.sh: --strict: at least one target FAILED" >&2
  exit 1
fi
exit 0
