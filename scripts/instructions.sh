#!/usr/bin/env bash
# Instructions per request, colorproxy against nginx, counted by valgrind's callgrind: the one
# figure of the benchmark that a shared, noisy machine does not disturb (issue #14). Both
# proxies forward to one nginx `return 200` upstream (8-byte body) over keep-alive upstream
# connections, access log off and on (colorproxy: ACCESS_LOG=on to a file; nginx: `access_log
# FILE combined buffer=64k`). Loopback only, bounded in time.
#
#   scripts/instructions.sh
#
# Environment: DURATION seconds of counted load per run (6), COLORPROXY: a release binary to
# measure instead of building one with scripts/pgo.sh (as shipped), KEEP: a directory that keeps
# the callgrind files (for `callgrind_annotate`; build with CARGO_PROFILE_RELEASE_DEBUG=1 to see
# colorproxy's lines).
#
# Method: each proxy runs under `valgrind --tool=callgrind` with one worker (colorproxy pinned to
# one CPU, so its runtime has one thread; nginx with one worker process and no master); wrk
# (1 thread, 8 connections) warms it for 2 s, callgrind's counters are zeroed, wrk runs
# DURATION seconds, and the counters are dumped: startup and warm-up are not counted. User-space
# instructions only (all threads): syscalls, which both proxies make alike (2 reads and 2 writes
# per request), are the kernel's. Installs valgrind, nginx and wrk from Debian when missing
# (needs root). Exit status 0, or 2 when a run could not be set up or measured.
set -euo pipefail

cd "$(dirname "$0")/.."
PATH=$PATH:/usr/sbin:/sbin

die() { echo "instructions.sh: $*" >&2; exit 2; }

duration=${DURATION:-6}
keep=${KEEP:-}
if [ -n "$keep" ]; then mkdir -p "$keep" || die "KEEP: cannot create directory '$keep'"; fi
case $duration in '' | *[!0-9]* | 0) die "DURATION must be a positive integer, got '$duration'" ;; esac
[ "$duration" -le 120 ] || die "DURATION is at most 120 s"

# shellcheck source=scripts/need.sh
. scripts/need.sh
need valgrind nginx wrk python3

release_binary
colorproxy=$(realpath "$colorproxy")

work=$(mktemp -d "${TMPDIR:-/tmp}/colorproxy-instr.XXXXXX")
chmod 755 "$work"
pids=()
stop() { # pid
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${pids[@]}"; do stop "$pid"; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() { # port, name, pid (valgrind starts slowly: up to 60 s)
  for _ in $(seq 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$3" 2>/dev/null || die "$2 exited at start (logs in $work)"
    sleep 0.1
  done
  die "$2 did not listen on 127.0.0.1:$1 within 60 s"
}

nginx_temp_paths() {
  local t
  for t in client_body proxy fastcgi uwsgi scgi; do echo "${t}_temp_path $work/$t;"; done
}

upstream=$(free_port)
cat >"$work/upstream.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/upstream.pid;
error_log $work/upstream-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  $(nginx_temp_paths)
  server {
    listen 127.0.0.1:$upstream;
    keepalive_requests 1000000;
    location / { return 200 "12345678"; }
  }
}
EOF
nginx -p "$work" -c "$work/upstream.conf" >"$work/upstream.log" 2>&1 &
pids+=($!)
wait_port "$upstream" "nginx upstream" $!

measure() { # proxy, log (on|off): sets $instr to the instructions per request
  local proxy=$1 log=$2 port out pid requests total
  instr=
  port=$(free_port)
  out=$work/callgrind.$proxy-$log
  case $proxy in
    colorproxy)
      BLUE="http://127.0.0.1:$upstream" LISTEN="127.0.0.1:$port" ADMIN_LISTEN=off ACCESS_LOG=$log \
        taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out" "$colorproxy" \
        >"$work/access-$proxy.log" 2>"$work/valgrind-$proxy-$log.log" &
      ;;
    nginx)
      local access="access_log off;"
      [ "$log" = on ] && access="access_log $work/access-nginx.log combined buffer=64k;"
      cat >"$work/proxy.conf" <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $work/proxy.pid;
error_log $work/proxy-error.log warn;
events { worker_connections 1024; }
http {
  $access
  $(nginx_temp_paths)
  upstream app { server 127.0.0.1:$upstream; keepalive 64; }
  server {
    listen 127.0.0.1:$port;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
      valgrind --tool=callgrind --callgrind-out-file="$out" nginx -p "$work" -c "$work/proxy.conf" \
        >/dev/null 2>"$work/valgrind-$proxy-$log.log" &
      ;;
  esac
  pid=$!
  pids+=("$pid")
  wait_port "$port" "$proxy" "$pid"
  wrk -t1 -c8 -d2s "http://127.0.0.1:$port/" >/dev/null || die "wrk failed against $proxy"
  callgrind_control -z "$pid" >/dev/null 2>&1 || die "callgrind_control -z failed for $proxy"
  requests=$(wrk -t1 -c8 -d"${duration}s" "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" >/dev/null 2>&1 || die "callgrind_control -d failed for $proxy"
  stop "$pid"
  case $requests in "" | *[!0-9]* | 0) die "no requests measured against $proxy" ;; esac
  # The dump after the zeroing is the file with the suffix .1.
  total=$(callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  [ -n "$total" ] || die "no totals in $out.1 (logs in $work)"
  instr=$((total / requests))
  if [ -n "$keep" ]; then cp "$out.1" "$keep/callgrind.$proxy-$log" || die "cannot copy into KEEP=$keep"; fi
}

echo "== each run: 2 s warm-up, then ${duration} s counted (wrk -t1 -c8), under callgrind"
declare -A result
for log in off on; do
  for proxy in colorproxy nginx; do
    measure "$proxy" "$log"
    result[$proxy-$log]=$instr
    echo "$proxy, access log $log: ${result[$proxy-$log]} instructions per request"
  done
done
echo
echo "| access log | colorproxy | nginx | ratio |"
echo "|---|---:|---:|---:|"
for log in off on; do
  c=${result[colorproxy-$log]} n=${result[nginx-$log]}
  printf '| %s | %s | %s | %s× |\n' "$log" "$c" "$n" "$(awk -v c="$c" -v n="$n" 'BEGIN {printf "%.2f", c / n}')"
done
