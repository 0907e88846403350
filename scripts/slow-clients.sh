#!/usr/bin/env bash
# Slow clients against colorproxy and nginx (issue #11): slowhttptest in slowloris (-H), slow
# body (-B) and slow read (-X) modes, CONNS connections each, against each proxy in front of its
# own backend that handles one request at a time (Python's HTTPServer without threads, like
# gunicorn's sync worker). During each attack a probe client (curl, 5 s timeout) asks for a small
# page PROBES times; the proxy passes when every probe is answered 200. Loopback only, bounded
# in time: every process started here is stopped by PID.
#
#   scripts/slow-clients.sh [MODE...]         (MODE: slowloris, body, read; default all three)
#
# Environment: CONNS (2000), DURATION seconds of each attack (20), PROBES (3), COLORPROXY (a
# colorproxy binary; default: scripts/pgo.sh, the release build as shipped). Installs
# slowhttptest, nginx and curl from Debian when missing (needs root). Exit status: 0 when every
# proxy passed every mode, 1 when one failed, 2 when the test could not be set up.
set -euo pipefail

cd "$(dirname "$0")/.."
PATH=$PATH:/usr/sbin:/sbin

die() { echo "slow-clients.sh: $*" >&2; exit 2; }

conns=${CONNS:-2000}
duration=${DURATION:-20}
probes=${PROBES:-3}
for v in CONNS:"$conns" DURATION:"$duration" PROBES:"$probes"; do
  case ${v#*:} in
    '' | *[!0-9]* | 0) die "${v%%:*} must be a positive integer, got '${v#*:}'" ;;
  esac
done
[ "$duration" -le 300 ] || die "DURATION is at most 300 s"
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(slowloris body read)
for m in "${modes[@]}"; do
  case $m in
    slowloris | body | read) ;;
    *) die "unknown mode '$m' (slowloris, body or read)" ;;
  esac
done

# shellcheck source=scripts/need.sh
. scripts/need.sh
need slowhttptest nginx curl python3
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((conns * 2 + 100)) ] ||
  die "needs $((conns * 2 + 100)) open files (ulimit -n is $(ulimit -n))"

release_binary

work=$(mktemp -d "${TMPDIR:-/tmp}/colorproxy-slow.XXXXXX")
chmod 777 "$work" # nginx's workers (user nobody) keep request bodies here
pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  pids=()
}
# shellcheck disable=SC2317 # reached through the EXIT trap
cleanup() {
  stop_all
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to 10 s for 127.0.0.1:PORT to accept connections.
wait_port() { # port, name, pid
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$3" 2>/dev/null || die "$2 exited at start (logs in $work)"
    sleep 0.1
  done
  die "$2 did not listen on 127.0.0.1:$1 within 10 s"
}

# One request at a time: GET /probe answers "ok", GET /big 1 MiB (what slow readers ask for),
# POST reads the whole body first. A 30 s socket timeout keeps a stuck request from holding the
# backend after the test.
cat >"$work/backend.py" <<'EOF'
import http.server, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    big = b"x" * (1 << 20)

    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.answer(self.big if self.path.startswith("/big") else b"ok\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.answer(b"ok\n")

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
EOF

start_backend() { # port
  python3 "$work/backend.py" "$1" >"$work/backend.log" 2>&1 &
  pids+=($!)
  wait_port "$1" backend $!
}

start_proxy() { # name, port, backend port
  case $1 in
    colorproxy)
      BLUE="http://127.0.0.1:$3" LISTEN="127.0.0.1:$2" ADMIN_LISTEN=off ACCESS_LOG=off \
        "$colorproxy" >"$work/colorproxy.log" 2>&1 &
      ;;
    nginx)
      cat >"$work/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $((conns * 4 + 100));
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
daemon off;
events { worker_connections $((conns * 2 + 100)); }
http {
  access_log off;
  client_body_temp_path $work/body;
  proxy_temp_path $work/proxy;
  fastcgi_temp_path $work/fastcgi;
  uwsgi_temp_path $work/uwsgi;
  scgi_temp_path $work/scgi;
  upstream app { server 127.0.0.1:$3; keepalive 16; }
  server {
    listen 127.0.0.1:$2;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
      nginx -p "$work" -c "$work/nginx.conf" >"$work/nginx.log" 2>&1 &
      ;;
  esac
  pids+=($!)
  wait_port "$2" "$1" $!
}

attack() { # mode, url
  local common=(-c "$conns" -r 500 -l "$duration" -p 3 -g -o "$work/slowhttptest")
  local run=(timeout $((duration + 30)) slowhttptest)
  case $1 in
    slowloris) "${run[@]}" -H "${common[@]}" -i 5 -u "$2/" ;;
    body) "${run[@]}" -B "${common[@]}" -i 5 -s 65536 -t POST -u "$2/" ;;
    read) "${run[@]}" -X "${common[@]}" -w 1 -y 16 -n 5 -z 16 -k 3 -u "$2/big" ;;
  esac
}

declare -A result
failed=0
echo "== $conns connections per attack, ${duration}s each, $probes probes during each"
for mode in "${modes[@]}"; do
  for proxy in colorproxy nginx; do
    backend_port=$(free_port)
    proxy_port=$(free_port)
    start_backend "$backend_port"
    start_proxy "$proxy" "$proxy_port" "$backend_port"
    url="http://127.0.0.1:$proxy_port"
    curl -sS -m 5 -o /dev/null "$url/probe" || die "$proxy does not answer before the attack"
    attack "$mode" "$url" >"$work/attack.log" 2>&1 &
    attacker=$!
    pids+=("$attacker")
    # Let the attack open its connections (500 a second), then probe across its length.
    served=0
    detail=
    gap=$(((duration - conns / 500 - 2) / probes))
    [ "$gap" -ge 1 ] || gap=1
    sleep $((conns / 500 + 2))
    for ((i = 0; i < probes; i++)); do
      # On a timeout curl still prints its figures: code 000.
      out=$(curl -sS -m 5 -o /dev/null -w '%{http_code} %{time_total}' "$url/probe" 2>/dev/null) || true
      code=${out%% *}
      [ "$code" != 200 ] || served=$((served + 1))
      detail+="${detail:+, }$code in $(awk -v t="${out#* }" 'BEGIN {printf "%.2fs", t}')"
      sleep "$gap"
    done
    # The attack ends by itself (slowhttptest -l, under a timeout); its CSV counts connections.
    wait "$attacker" || true
    open=$(awk -F, 'NR > 1 && $4 > m {m = $4} END {print m + 0}' "$work/slowhttptest.csv" 2>/dev/null || echo '?')
    rm -f "$work/slowhttptest.csv" "$work/slowhttptest.html"
    if [ "$served" -eq "$probes" ]; then verdict=SERVED; else verdict=BLOCKED; failed=1; fi
    result[$mode,$proxy]="$verdict ($served/$probes probes: $detail; most attacker connections open at once: $open)"
    printf '   %-9s %-10s %s\n' "$mode" "$proxy" "${result[$mode,$proxy]}"
    stop_all
  done
done

echo
echo "== summary: was a probe client still served during the attack?"
printf '   %-9s %-10s %-10s\n' mode colorproxy nginx
for mode in "${modes[@]}"; do
  printf '   %-9s %-10s %-10s\n' "$mode" "${result[$mode,colorproxy]%% *}" "${result[$mode,nginx]%% *}"
done
exit "$failed"
