#!/usr/bin/env bash
# The walkthrough without Docker: two myapp instances on loopback (v1 plain text, v2 HTML) and
# colorproxy in front of them, restarted with a new environment at each step of a rollout the
# way a Swarm rolling update would. Prints the split measured at each step and exits non-zero
# if a split is not what the weights say.
#
#   scripts/demo.sh [REQUESTS_PER_STEP]      (default 400)
set -euo pipefail

cd "$(dirname "$0")/.."
requests=${1:-400}
case $requests in
  '' | *[!0-9]*) echo "usage: scripts/demo.sh [REQUESTS_PER_STEP]  (a number, got '$requests')" >&2; exit 2 ;;
esac
[ "$requests" -ge 100 ] || { echo "demo.sh: use at least 100 requests per step" >&2; exit 2; }
command -v curl >/dev/null || { echo "demo.sh: needs curl (apt-get install curl)" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== building colorproxy and myapp (release)"
cargo build --release --quiet -p colorproxy -p myapp
bin=target/release

# Waits up to 10 s for "<prefix> <addr>" in a log file and prints the address.
wait_addr() {
  local log=$1 prefix=$2 pid=$3
  for _ in $(seq 100); do
    if addr=$(grep -o "$prefix [0-9.:]*" "$log" 2>/dev/null | head -n1 | awk '{print $NF}') && [ -n "$addr" ]; then
      echo "$addr"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "demo.sh: no '$prefix' line in $log:" >&2
  cat "$log" >&2
  return 1
}

# Starts a myapp instance in this shell (so that cleanup knows its PID) and sets $addr.
start_app() { # name, env...
  local name=$1
  shift
  # Nothing discovers these instances through DNS: no need to keep serving after a stop signal.
  env "$@" HOSTNAME="$name" SHUTDOWN_DELAY=0 "$bin/myapp" 127.0.0.1:0 >"$work/$name.log" 2>&1 &
  pids+=("$!")
  addr=$(wait_addr "$work/$name.log" "myapp listening on" "$!")
}

start_app myapp-v1
v1=$addr
start_app myapp-v2 V2=1
v2=$addr
echo "== myapp-v1 on $v1 (plain text), myapp-v2 on $v2 (HTML, V2=1)"

proxy_pid=
proxy_addr=127.0.0.1:0
step=0
failed=0

# Starts colorproxy with the given environment on the same port as the previous one (SO_REUSEPORT),
# then stops the previous one: a rolling update on one host.
restart_proxy() {
  step=$((step + 1))
  local log="$work/proxy-$step.log"
  env -i PATH="$PATH" LISTEN="$proxy_addr" "$@" "$bin/colorproxy" >"$log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  proxy_addr=$(wait_addr "$log" "listening on" "$pid")
  if [ -n "$proxy_pid" ]; then
    kill -TERM "$proxy_pid"
    wait "$proxy_pid" || { echo "demo.sh: the old proxy did not exit cleanly" >&2; exit 1; }
  fi
  proxy_pid=$pid
}

# Sends $requests requests over keep-alive connections and checks the blue share is within
# 5 sigma of the expected percentage.
measure() { # title, explanation, expected blue %
  local title=$1 why=$2 expect=$3
  local url="http://$proxy_addr/" out="$work/out-$step.txt"
  local urls=()
  for _ in $(seq "$requests"); do urls+=("$url"); done
  curl -sS --fail-with-body "${urls[@]}" >"$out"
  local blue green other
  blue=$(grep -c '^blue ' "$out" || true)
  green=$(grep -c '(green)</h1>$' "$out" || true)
  other=$((requests - blue - green))
  echo
  echo "== step $step: $title"
  echo "   env: $(tr '\n' ' ' <"$work/env-$step")"
  echo "   $why"
  printf '   %-6s %5d requests  %5.1f%%   e.g. %s\n' blue "$blue" "$(pct "$blue")" "$(grep -m1 '^blue ' "$out" || echo -)"
  printf '   %-6s %5d requests  %5.1f%%   e.g. %s\n' green "$green" "$(pct "$green")" "$(grep -m1 '(green)' "$out" || echo -)"
  [ "$other" -eq 0 ] || printf '   %-6s %5d requests (unexpected answers)\n' other "$other"
  # Binomial bound: |blue - n p| <= 5 sqrt(n p (1-p)); exact when p is 0 or 1.
  if awk -v b="$blue" -v n="$requests" -v p="$expect" -v o="$other" \
    'BEGIN { p /= 100; d = b - n * p; if (d < 0) d = -d; exit !(o == 0 && d <= 5 * sqrt(n * p * (1 - p))) }'; then
    echo "   split OK (expected blue $expect%)"
  else
    echo "   split WRONG (expected blue $expect%)"
    failed=1
  fi
}

pct() { awk -v x="$1" -v n="$requests" 'BEGIN { printf "%.1f", 100 * x / n }'; }

run_step() { # title, explanation, expected blue %, env...
  local title=$1 why=$2 expect=$3
  shift 3
  restart_proxy "$@"
  printf '%s\n' "$@" >"$work/env-$step"
  measure "$title" "$why" "$expect"
}

run_step "blue only" \
  "docker service create ... -eBLUE=http://myapp-v1:8080 colorproxy: every request goes to v1" \
  100 BLUE="http://$v1"
run_step "canary: 20% green" \
  "--env-add GREEN=... --env-add GREEN_WEIGHT=1 --env-add BLUE_WEIGHT=4: one request in five goes to v2" \
  80 BLUE="http://$v1" GREEN="http://$v2" BLUE_WEIGHT=4 GREEN_WEIGHT=1
run_step "all green" \
  "--env-rm GREEN_WEIGHT --env-rm BLUE_WEIGHT --env-rm BLUE: blue is gone, v2 takes everything" \
  0 GREEN="http://$v2"
run_step "rollback" \
  "--env-rm GREEN --env-add BLUE=http://myapp-v1:8080: back to v1 alone" \
  100 BLUE="http://$v1"

echo
if [ "$failed" -ne 0 ]; then
  echo "demo FAILED: at least one split was not what the weights say"
  exit 1
fi
echo "demo OK: every step split traffic as configured ($requests requests per step)"
