#!/usr/bin/env bash
# The README's Swarm walkthrough on a real single-node Docker Swarm, command by command, and
# swarm/stack.yml with the rollout helpers, under a steady load that must lose nothing.
#
#   scripts/swarm-e2e.sh        (as root; .ci/run runs it after building the static binaries)
#
# Installs docker.io and iptables when dockerd is missing, starts its own dockerd (data, exec
# root and socket in a temporary directory; refuses to run beside another dockerd), makes a
# single-node Swarm, builds the two images FROM scratch from the static binaries
# (target/x86_64-unknown-linux-gnu/release/{colorproxy,myapp}) with the final stage of the
# repository's Dockerfiles, and always cleans up: services and stack removed, swarm left, the
# daemon stopped by its PID.
#
# Nothing is pulled and no registry is asked: DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 for dockerd,
# --no-resolve-image on every service create/update, --resolve-image never on stack deploy.
#
# This kernel has no IPVS, so service VIPs and the ingress routing mesh (-p8080:8080) do not
# answer. The load therefore goes through an "edge": one more colorproxy task, published in host
# mode on 127.0.0.1:$port, whose only color is the proxy service, found as tasks.<proxy> (with
# DNS_REFRESH=1s, below the 2 s between Swarm removing a task from DNS and stopping it, as the
# routing mesh would drop it). The load client (myapp/examples/load.rs) runs on the host and
# sends GET / at a steady rate over keep-alive connections; every non-2xx answer and every
# transport error is a failed request. It retries nothing, except (once, as browsers do) a
# request that met a reused keep-alive connection closed before any response byte; those are
# counted apart as "retried".
#
# Prints a report: each step, its duration, requests sent, failed and retried. Exits 1 if a
# check failed or any request failed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

target=x86_64-unknown-linux-gnu
bin=$repo/target/$target/release
port=18080          # the edge's host-mode port, on 127.0.0.1
status_port=19901   # the status page forwarder's host-mode port (the README's way to the page)
rate=300            # requests per second of the steady load
connections=8       # keep-alive connections of the load client
split_requests=1000 # requests to measure a split (>= 500)
timeout_s=180       # bound on every wait for Swarm

say() { printf '\n== %s\n' "$*"; }
die() {
  printf 'swarm-e2e: FAILED: %s\n' "$*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root (it starts dockerd)"
for b in colorproxy myapp; do
  [ -x "$bin/$b" ] || die "$bin/$b is missing: build it with
  RUSTFLAGS=\"-C target-feature=+crt-static\" scripts/pgo.sh --target $target"
done

# ---------------------------------------------------------------------------------------------
# The report: one line per step.
report=()
failed_total=0
sent_total=0
retried_total=0
problems=()
step_t0=0
step_name=
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
step() {
  step_name=$1
  step_t0=$(now)
  say "$step_name"
}
# Ends the step: sent failed retried (or "-").
step_done() {
  local secs
  secs=$(awk -v a="$step_t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  report+=("$(printf '%-68s %7s %7s %7s %7s' "$step_name" "$secs" "${1:--}" "${2:--}" "${3:--}")")
  if [ "${1:--}" != - ]; then
    sent_total=$((sent_total + $1))
    failed_total=$((failed_total + $2))
    retried_total=$((retried_total + $3))
  fi
}
print_report() {
  printf '\n== report\n'
  printf '%-68s %7s %7s %7s %7s\n' step seconds sent failed retried
  local line
  for line in "${report[@]}"; do printf '%s\n' "$line"; done
  printf '%-68s %7s %7s %7s %7s\n' total "$SECONDS" "$sent_total" "$failed_total" "$retried_total"
  for line in "${problems[@]}"; do printf 'PROBLEM: %s\n' "$line"; done
}

# ---------------------------------------------------------------------------------------------
# Cleanup: whatever happened, leave nothing behind.
work=$(mktemp -d /var/tmp/colorproxy-e2e.XXXXXX)
export DOCKER_HOST=unix://$work/docker.sock
dockerd_pid=
load_pid=
services=()
stack_deployed=0
cleanup() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  if [ -n "$load_pid" ]; then
    kill -TERM "$load_pid" 2>/dev/null
    wait "$load_pid" 2>/dev/null
  fi
  if [ -n "$dockerd_pid" ]; then
    say "cleanup"
    [ "$stack_deployed" -eq 0 ] || docker stack rm demo
    [ ${#services[@]} -eq 0 ] || docker service rm "${services[@]}" >/dev/null 2>&1
    docker swarm leave --force
    kill -TERM "$dockerd_pid"
    local i
    for i in $(seq 60); do
      kill -0 "$dockerd_pid" 2>/dev/null || break
      [ "$i" -lt 60 ] || {
        echo "dockerd (pid $dockerd_pid) still running after 30 s: SIGKILL" >&2
        kill -KILL "$dockerd_pid"
      }
      sleep 0.5
    done
    wait "$dockerd_pid" 2>/dev/null
    echo "dockerd (pid $dockerd_pid) stopped"
  fi
  if [ "$status" -ne 0 ] && [ -f "$work/dockerd.log" ]; then
    echo "--- last lines of the dockerd log ($work/dockerd.log):" >&2
    tail -n 30 "$work/dockerd.log" >&2
  fi
  [ ${#report[@]} -eq 0 ] || print_report
  if grep -q " $work/" /proc/mounts; then
    echo "!! mounts remain under $work: not removing it" >&2
  elif [ "$status" -eq 0 ]; then
    rm -rf "$work"
  else
    rm -rf "$work/data" "$work/exec" "$work/images"
    echo "logs kept in $work" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
step "install docker.io and iptables (if missing)"
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v iptables >/dev/null || need+=(iptables)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
docker --version
dockerd --version
step_done

step "build the load client (myapp/examples/load.rs)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --quiet --target "$target" -p myapp --example load
load_bin=$bin/examples/load
step_done

# ---------------------------------------------------------------------------------------------
step "start dockerd, swarm init"
if other=$(pgrep -x dockerd); then
  die "a dockerd is already running (pid $other): this script starts its own and does not run beside another"
fi
mkdir -p "$work/data" "$work/exec"
DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 dockerd \
  --host "$DOCKER_HOST" --data-root "$work/data" --exec-root "$work/exec" \
  --pidfile "$work/dockerd.pid" >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
echo "dockerd pid $dockerd_pid, socket $DOCKER_HOST, log $work/dockerd.log"
for i in $(seq 120); do
  docker version >/dev/null 2>&1 && break
  kill -0 "$dockerd_pid" 2>/dev/null || die "dockerd exited: $(tail -n 20 "$work/dockerd.log")"
  [ "$i" -lt 120 ] || die "dockerd did not answer within 60 s"
  sleep 0.5
done
addr=$(ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1 | head -n1)
[ -n "$addr" ] || die "eth0 has no IPv4 address for --advertise-addr"
docker swarm init --advertise-addr "$addr" >/dev/null
echo "single-node swarm, advertise address $addr (eth0)"
step_done

# ---------------------------------------------------------------------------------------------
# The images: the final stage of each repository Dockerfile, verbatim, except that its
# `COPY --from=build /X /X` copies the binary CI built from the context instead, and a
# `COPY --from=build /rootfs/ /` (the image's writable /tmp) copies a rootfs made here.
step "build the images FROM scratch, as in the two Dockerfiles"
final_stage() { # dockerfile binary
  local df=$1 b=$2 stage copies=1
  [ "$(grep -E '^FROM ' "$df" | tail -n1)" = "FROM scratch" ] || die "$df: its last stage is not FROM scratch"
  stage=$(awk '/^FROM /{buf=""} {buf = buf $0 "\n"} END {printf "%s", buf}' "$df")
  grep -qx "COPY --from=build /$b /$b" <<<"$stage" ||
    die "$df: the final stage has no 'COPY --from=build /$b /$b' line: update this script"
  grep -qx "COPY --from=build /rootfs/ /" <<<"$stage" && copies=2
  [ "$(grep -c -- '--from=' <<<"$stage")" -eq "$copies" ] ||
    die "$df: the final stage copies more than /$b and /rootfs/ from the build stage: update this script"
  stage=${stage/"COPY --from=build /rootfs/ /"/"COPY rootfs/ /"}
  printf '%s\n' "${stage/"COPY --from=build /$b /$b"/"COPY $b /$b"}"
}
# The value of an instruction of the final stage, continuation lines joined.
instruction() { # dockerfile keyword
  awk -v k="$2" '/^FROM /{v=""} $1==k {on=1; v=""} on {line=$0; sub(/\\$/, "", line); v = v " " line; if ($0 !~ /\\$/) on=0} END {print v}' "$1" |
    sed -e "s/^ *$2 *//" -e 's/  */ /g'
}
nospace() { tr -d ' ' <<<"$1"; }
check_image() { # image dockerfile binary
  local image=$1 df=$2 b=$3 user entry health want_user want_entry want_health
  want_user=$(instruction "$df" USER)
  want_entry=$(nospace "$(instruction "$df" ENTRYPOINT)")
  want_health=$(instruction "$df" HEALTHCHECK)
  user=$(docker image inspect -f '{{.Config.User}}' "$image")
  entry=$(docker image inspect -f '{{json .Config.Entrypoint}}' "$image")
  health=$(docker image inspect -f '{{if .Config.Healthcheck}}{{json .Config.Healthcheck.Test}}{{end}}' "$image")
  if [ -z "$want_user" ] || [ "$user" != "$want_user" ]; then die "$image: USER '$user', $df says '$want_user'"; fi
  if [ -z "$want_entry" ] || [ "$entry" != "$want_entry" ]; then die "$image: ENTRYPOINT $entry, $df says $want_entry"; fi
  if [ -n "$want_health" ]; then
    local cmd
    cmd=$(nospace "${want_health##*CMD }")
    [ "$health" = "${cmd/\[/[\"CMD\",}" ] || die "$image: HEALTHCHECK $health, $df says $want_health"
  else
    [ -z "$health" ] || die "$image: has HEALTHCHECK $health, $df has none"
  fi
  echo "$image: USER $user, ENTRYPOINT $entry, HEALTHCHECK ${health:-none} (as in $df)"
}
for pair in colorproxy:Dockerfile myapp:myapp/Dockerfile; do
  b=${pair%%:*} df=${pair#*:}
  ctx=$work/images/$b
  mkdir -p "$ctx"
  cp "$bin/$b" "$ctx/$b"
  mkdir -p "$ctx/rootfs/tmp" && chmod 755 "$ctx/rootfs" && chmod 1777 "$ctx/rootfs/tmp"
  final_stage "$df" "$b" >"$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t "$b:latest" "$ctx" >/dev/null
  check_image "$b:latest" "$df" "$b"
done
step_done

# ---------------------------------------------------------------------------------------------
# Helpers over docker and the load client.

# Runs a command, printed like the README writes it, for at most $timeout_s seconds.
run() {
  printf '$ %s\n' "$*" >&2
  timeout "$timeout_s" "$@"
}
# Removes a network once no task uses it: `docker service rm` and `docker stack rm` return
# before their tasks have stopped, and a network in use by one cannot go yet.
remove_network() { # name
  local i
  for i in $(seq $((timeout_s * 2))); do
    docker network inspect "$1" >/dev/null 2>&1 || return 0
    docker network rm "$1" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "network $1 still in use after ${timeout_s} s"
}
# The container IDs (= hostnames) of a service's running containers.
containers() { docker ps -q --no-trunc --filter "label=com.docker.swarm.service.name=$1" | cut -c1-12 | sort; }
# Waits until a service has exactly N running containers and N tasks desired running, all running.
wait_tasks() { # service n
  local i running tasks
  for i in $(seq $((timeout_s * 2))); do
    running=$(containers "$1" | wc -l)
    tasks=$(docker service ps -q --filter desired-state=running "$1" | wc -l)
    if [ "$running" -eq "$2" ] && [ "$tasks" -eq "$2" ] &&
      ! docker service ps --format '{{.CurrentState}}' --filter desired-state=running "$1" | grep -qv '^Running'; then
      return 0
    fi
    [ "$i" -lt $((timeout_s * 2)) ] || die "$1: not $2 running tasks after ${timeout_s} s: $(docker service ps --no-trunc "$1")"
    sleep 0.5
  done
}
# Sends N requests (no load running) and writes the tally of answers to $work/tally.
sample() { # n
  local out
  out=$("$load_bin" "127.0.0.1:$port" --requests "$1" --rate 1000 --connections 8 --tally "$work/tally" 2>"$work/sample.err") ||
    die "load client failed: $(cat "$work/sample.err")"
  sample_sent=$(sed -n 's/.*sent=\([0-9]*\).*/\1/p' <<<"$out")
  sample_failed=$(sed -n 's/.*failed=\([0-9]*\).*/\1/p' <<<"$out")
  sample_retried=$(sed -n 's/.*retried=\([0-9]*\).*/\1/p' <<<"$out")
  [ "$sample_failed" -eq 0 ] || {
    head -n 20 "$work/sample.err" >&2
    die "$sample_failed of $1 requests failed: $out"
  }
}
# Waits until the edge answers 200 (the services start, pass their healthchecks and are found).
wait_answer() {
  local i
  for i in $(seq $((timeout_s * 2))); do
    curl -fsS -m 5 -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && return 0
    [ "$i" -lt $((timeout_s * 2)) ] || die "no 200 from 127.0.0.1:$port after ${timeout_s} s"
    sleep 0.5
  done
}
# The first-line tally of the last sample, for one kind of answer: count host (one per line).
blue_hosts() { awk -F'\t' '$2 ~ /^blue [0-9a-f]+$/ {split($2, a, " "); print $1, a[2]}' "$work/tally"; }
green_hosts() { awk -F'\t' '$2 ~ /^<h1>[0-9a-f]+ \(green\)<\/h1>$/ {h=$2; sub(/^<h1>/, "", h); sub(/ .*/, "", h); print $1, h}' "$work/tally"; }
total_of() { awk '{n += $1} END {print n + 0}'; }
# Fails unless every host of a tally is one of the service's running containers.
hosts_in() { # service "count host" lines...
  local svc=$1 ids host
  ids=$(containers "$svc")
  shift
  while read -r _ host; do
    [ -z "$host" ] || grep -qx "$host" <<<"$ids" || die "an answer named host $host, not a running task of $svc ($(tr '\n' ' ' <<<"$ids"))"
  done <<<"$*"
}
# Checks that every answer of the last sample came from a task of one service and color.
all_from() { # color service
  local lines n
  lines=$("$1_hosts")
  n=$(total_of <<<"$lines")
  [ "$n" -eq "$sample_sent" ] || die "$n of $sample_sent answers were $1 (expected all): $(cat "$work/tally")"
  hosts_in "$2" "$lines"
  echo "all $n answers $1, from $(wc -l <<<"$lines") task(s) of $2"
}
# Checks a green share within 5 sigma of PERCENT over the last sample (>= 500 requests).
split_is() { # percent blue_service green_service
  local blue green n
  blue=$(blue_hosts)
  green=$(green_hosts)
  n=$(($(total_of <<<"$blue") + $(total_of <<<"$green")))
  [ "$n" -eq "$sample_sent" ] || die "only $n of $sample_sent answers were blue or green: $(cat "$work/tally")"
  [ "$n" -ge 500 ] || die "a split needs >= 500 answers, got $n"
  hosts_in "$2" "$blue"
  hosts_in "$3" "$green"
  local g
  g=$(total_of <<<"$green")
  awk -v g="$g" -v n="$n" -v p="$1" 'BEGIN {
    p /= 100; mean = n * p; sigma = sqrt(n * p * (1 - p)); z = (g - mean) / sigma
    printf "green %d of %d answers (%.1f%%, expected %.0f%% = %.0f, sigma %.1f, z = %+.2f)\n", g, n, 100 * g / n, p * 100, mean, sigma, z
    exit (z < -5 || z > 5) }' || die "the green share is not within 5 sigma of $1%"
}

load_start() {
  "$load_bin" "127.0.0.1:$port" --rate "$rate" --connections "$connections" >"$work/load.out" 2>"$work/load.err" &
  load_pid=$!
}
# Stops the load and ends the step with its counts.
load_stop() {
  kill -INT "$load_pid"
  wait "$load_pid" || die "load client failed: $(cat "$work/load.err")"
  load_pid=
  local out sent failed retried
  out=$(cat "$work/load.out")
  sent=$(sed -n 's/.*sent=\([0-9]*\).*/\1/p' <<<"$out")
  failed=$(sed -n 's/.*failed=\([0-9]*\).*/\1/p' <<<"$out")
  retried=$(sed -n 's/.*retried=\([0-9]*\).*/\1/p' <<<"$out")
  echo "load: $out"
  if [ -s "$work/load.err" ]; then head -n 20 "$work/load.err"; fi
  if [ "$failed" -ne 0 ]; then
    problems+=("$step_name: $failed of $sent requests failed")
    cat "$work/load.err" >>"$work/failures.log"
  fi
  step_done "$sent" "$failed" "$retried"
}
# Runs an update under the steady load, waits until the service has N tasks again (the old ones
# gone, not just told to stop), then stops the load.
under_load() { # name service n command...
  local name=$1 svc=$2 n=$3
  shift 3
  step "$name"
  load_start
  run "$@" >"$work/cmd.out" 2>&1 || { cat "$work/cmd.out" && die "'$*' failed"; }
  grep -v '^\(overall progress\|[0-9]*/[0-9]*:\|verify:\|rollback:\)' "$work/cmd.out" | grep . || true
  wait_tasks "$svc" "$n"
  load_stop
}
# The logs of a service's running containers (`docker service logs` can hang on the logs of
# tasks already gone).
logs_of() { # service
  local c
  for c in $(docker ps -q --filter "label=com.docker.swarm.service.name=$1"); do
    timeout 30 docker logs "$c" 2>&1 || true
  done
}
env_of() { docker service inspect -f '{{json .Spec.TaskTemplate.ContainerSpec.Env}}' "$1"; }

# ---------------------------------------------------------------------------------------------
# The README walkthrough, command by command. What the test adds to each command: --no-resolve-image
# (nothing is pulled here), and no -p8080:8080 on the proxy (the routing mesh needs IPVS): the
# edge service publishes 127.0.0.1:$port in host mode instead.
nr=--no-resolve-image

step "walkthrough: network, myapp-v1, proxy (+ the test's edge); blue answers"
run docker network create --driver overlay backend >/dev/null
run docker service create -q "$nr" --name myapp-v1 --network backend myapp >/dev/null
services+=(myapp-v1)
run docker service create -q "$nr" --name proxy --network backend -eBLUE=http://myapp-v1:8080 colorproxy >/dev/null
services+=(proxy)
run docker service create -q "$nr" --name edge --network backend --publish "mode=host,target=8080,published=$port" \
  -eBLUE=http://proxy:8080 -eBLUE_DISCOVERY=tasks -eDNS_REFRESH=1s colorproxy >/dev/null
services+=(edge)
wait_tasks myapp-v1 1
wait_tasks proxy 1
wait_tasks edge 1
wait_answer
answer=$(curl -fsS -m 5 "http://127.0.0.1:$port/")
echo "curl 127.0.0.1:$port: $answer"
[[ $answer =~ ^blue\ ([0-9a-f]{12})$ ]] || die "expected 'blue <task hostname>', got '$answer'"
[ "${BASH_REMATCH[1]}" = "$(containers myapp-v1)" ] || die "answered by ${BASH_REMATCH[1]}, not myapp-v1's task $(containers myapp-v1)"
# The image's /tmp takes the files of RESPONSE_SPILL (the proxy says so at startup if not).
logs_of proxy >"$work/proxy-start.log"
grep -qF "listening on" "$work/proxy-start.log" || die "no startup lines in the proxy's logs: $(cat "$work/proxy-start.log")"
! grep -F "TMPDIR takes no files" "$work/proxy-start.log" || die "the image's /tmp takes no files for user 65534"
step_done 1 0 0

step "walkthrough: scale myapp-v1=4 proxy=2; all four tasks answer"
run docker service scale myapp-v1=4 proxy=2 >"$work/cmd.out" 2>&1 || { cat "$work/cmd.out" && die "scale failed"; }
wait_tasks myapp-v1 4
wait_tasks proxy 2
sent=0
for i in $(seq 60); do
  sample 400
  sent=$((sent + sample_sent))
  [ "$(blue_hosts | wc -l)" -lt 4 ] || break
  [ "$i" -lt 60 ] || die "after 60 samples, answers came from $(blue_hosts | wc -l) tasks, not 4: $(cat "$work/tally")"
  sleep 1 # the proxies find new tasks at their next DNS refresh (DNS_REFRESH, 5 s)
done
all_from blue myapp-v1
step_done "$sent" 0 0

under_load "myapp-v1 rolling update: update --update-order start-first --force (4 tasks)" myapp-v1 4 \
  docker service update "$nr" --update-order start-first --force myapp-v1

step "walkthrough: create myapp-v2"
run docker service create -q "$nr" --name myapp-v2 --network backend -eV2=1 myapp >/dev/null
services+=(myapp-v2)
wait_tasks myapp-v2 1
step_done

under_load "walkthrough: canary, docker service update --env-add ... (20%)" proxy 2 \
  docker service update "$nr" --env-add GREEN=http://myapp-v2:8080 --env-add GREEN_WEIGHT=20 --env-add BLUE_WEIGHT=80 proxy
step "the 20% canary split"
sample "$split_requests"
split_is 20 myapp-v1 myapp-v2
run scripts/rollout status proxy | tee "$work/status.out"
if ! grep -Eq '^/ +blue +http://myapp-v1:8080 +80 +80\.0%$' "$work/status.out" ||
  ! grep -Eq '^/ +green +http://myapp-v2:8080 +20 +20\.0%$' "$work/status.out"; then
  die "scripts/rollout status does not show the 80/20 table"
fi
step_done "$sample_sent" "$sample_failed" "$sample_retried"

under_load "walkthrough: promote, docker service update --env-rm ... (all green)" proxy 2 \
  docker service update "$nr" --env-rm GREEN_WEIGHT --env-rm BLUE_WEIGHT --env-rm BLUE proxy
step "all green after promote"
sample 300
all_from green myapp-v2
step_done "$sample_sent" "$sample_failed" "$sample_retried"

under_load "walkthrough: scripts/rollout rollback proxy (the previous spec)" proxy 2 \
  scripts/rollout rollback proxy
step "the canary split again after rollback to the previous spec"
sample "$split_requests"
split_is 20 myapp-v1 myapp-v2
step_done "$sample_sent" "$sample_failed" "$sample_retried"

under_load "walkthrough: scripts/rollout rollback proxy blue http://myapp-v1:8080" proxy 2 \
  scripts/rollout rollback proxy blue http://myapp-v1:8080
step "all blue after rollback"
sample 300
all_from blue myapp-v1
step_done "$sample_sent" "$sample_failed" "$sample_retried"

step "remove the walkthrough's services and network"
run docker service rm edge proxy myapp-v1 myapp-v2 >/dev/null
services=()
remove_network backend
step_done

# ---------------------------------------------------------------------------------------------
# swarm/stack.yml as it is, but for the proxy's published port: ingress mode needs IPVS, and in
# host mode two replicas cannot both publish 8080 on one node (a start-first update would wait
# forever for the port). The edge, on the stack's network, takes its place.
step "stack deploy -c swarm/stack.yml demo (no published port; + edge)"
awk '/^    ports:/ {skip = 1; next} skip && /^    [^ ]/ {skip = 0} !skip' swarm/stack.yml >"$work/stack.yml"
echo "what the test changes in swarm/stack.yml:"
diff -u swarm/stack.yml "$work/stack.yml" | tail -n +3 | tee "$work/stack.diff" || true
removed=$(grep -c '^-' "$work/stack.diff")
if [ "$(grep -c '^+' "$work/stack.diff")" -ne 0 ] || ! grep -q '^-    ports:' "$work/stack.diff" ||
  ! grep -q '^-        mode: ingress' "$work/stack.diff" || [ "$removed" -gt 10 ]; then
  die "swarm/stack.yml changed: the proxy's ports block is not what this script removes"
fi
run docker stack deploy --resolve-image never -c "$work/stack.yml" demo
stack_deployed=1
wait_tasks demo_myapp-v1 2
wait_tasks demo_myapp-v2 2
wait_tasks demo_proxy 2
run docker service create -q "$nr" --name demo-edge --network demo_backend --publish "mode=host,target=8080,published=$port" \
  -eBLUE=http://demo_proxy:8080 -eBLUE_DISCOVERY=tasks -eDNS_REFRESH=1s colorproxy >/dev/null
services+=(demo-edge)
wait_tasks demo-edge 1
wait_answer
sample 300
all_from blue demo_myapp-v1
step_done "$sample_sent" "$sample_failed" "$sample_retried"

# A colorproxy service on the stack's network in front of an unpublished port, published in
# host mode on 127.0.0.1:PORT: forwarder NAME PORT ENV...
forwarder() {
  local name=$1 published=$2
  shift 2
  run docker service create -q "$nr" --name "$name" --network demo_backend \
    --publish "mode=host,target=8080,published=$published" "$@" colorproxy >/dev/null
  services+=("$name")
  wait_tasks "$name" 1
}

# The README's way to the status page: a forwarder service (colorproxy itself) in front of one
# proxy task's admin port, published in host mode (its own admin port stays on: the image's
# HEALTHCHECK asks it).
step "stack: the status page of one proxy task, through a forwarder service"
task=$(docker service ps -q --filter desired-state=running demo_proxy | head -n1)
admin_ip=$(docker inspect -f '{{range .NetworksAttachments}}{{if eq .Network.Spec.Name "demo_backend"}}{{index .Addresses 0}}{{end}}{{end}}' "$task")
admin_ip=${admin_ip%/*}
[ -n "$admin_ip" ] || die "task $task of demo_proxy has no address on demo_backend"
forwarder demo-status "$status_port" -eBLUE="http://$admin_ip:9901"
# PEERS: the task has asked both replicas, which run the same configuration.
for i in $(seq $((timeout_s * 2))); do
  status_json=$(curl -fsS -m 5 "http://127.0.0.1:$status_port/status" 2>/dev/null) || status_json=
  [ "$(grep -o '"address":' <<<"$status_json" | wc -l)" -eq 2 ] && grep -q '"converged":true' <<<"$status_json" && break
  [ "$i" -lt $((timeout_s * 2)) ] || die "no converged /status with 2 replicas from 127.0.0.1:$status_port after ${timeout_s} s: $status_json"
  sleep 0.5
done
page_headers=$(curl -fsS -m 5 -D - -o "$work/status.html" "http://127.0.0.1:$status_port/")
grep -qi "^content-security-policy: default-src 'none'" <<<"$page_headers" || die "the page came without its policy: $page_headers"
grep -q 'fetch("status"' "$work/status.html" || die "not the status page: $(head -c 300 "$work/status.html")"
echo "the status page of task $task ($admin_ip) answers on 127.0.0.1:$status_port; its PEERS have converged"
run docker service rm demo-status >/dev/null
services=(demo-edge)
step_done

under_load "stack: scripts/rollout canary demo_proxy green http://myapp-v2:8080 20" demo_proxy 2 \
  scripts/rollout canary demo_proxy green http://myapp-v2:8080 20
step "the 20% canary split on the stack"
sample "$split_requests"
split_is 20 demo_myapp-v1 demo_myapp-v2
step_done "$sample_sent" "$sample_failed" "$sample_retried"

under_load "stack: myapp-v1 rolling update (--force, start-first from stack.yml)" demo_myapp-v1 2 \
  docker service update "$nr" --force demo_myapp-v1
under_load "stack: myapp-v2 rolling update (--force, start-first from stack.yml)" demo_myapp-v2 2 \
  docker service update "$nr" --force demo_myapp-v2

step "stack: bad update --env-add BLUE=myapp-v1:8080, rolled back by Swarm"
before=$(env_of demo_proxy)
load_start
run docker service update "$nr" --env-add BLUE=myapp-v1:8080 demo_proxy >"$work/cmd.out" 2>&1 || true
grep -v '^\(overall progress\|[0-9]*/[0-9]*:\|verify:\|rollback:\)' "$work/cmd.out" | grep . || true
for i in $(seq $((timeout_s * 2))); do
  state=$(docker service inspect -f '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' demo_proxy)
  [ "$state" != rollback_completed ] || break
  [ "$i" -lt $((timeout_s * 2)) ] || die "update state '$state' after ${timeout_s} s, not rollback_completed"
  sleep 0.5
done
wait_tasks demo_proxy 2
load_stop
echo "update status: $(docker service inspect -f '{{.UpdateStatus.State}}: {{.UpdateStatus.Message}}' demo_proxy)"
[ "$(env_of demo_proxy)" = "$before" ] || die "the environment after the rollback is $(env_of demo_proxy), not $before"
docker service ps --no-trunc --format '{{.Error}}' demo_proxy | grep -q 'non-zero exit (1)' ||
  die "no task of the bad update exited 1: $(docker service ps --no-trunc demo_proxy)"
echo "the new task exited 1 before binding; Swarm restored the previous environment $before"

under_load "stack: scripts/rollout promote demo_proxy green" demo_proxy 2 \
  scripts/rollout promote demo_proxy green
step "all green after promote on the stack"
sample 300
all_from green demo_myapp-v2
step_done "$sample_sent" "$sample_failed" "$sample_retried"

under_load "stack: scripts/rollout rollback demo_proxy (the previous spec)" demo_proxy 2 \
  scripts/rollout rollback demo_proxy
step "the canary split again on the stack"
sample "$split_requests"
split_is 20 demo_myapp-v1 demo_myapp-v2
step_done "$sample_sent" "$sample_failed" "$sample_retried"

under_load "stack: scripts/rollout rollback demo_proxy blue http://myapp-v1:8080" demo_proxy 2 \
  scripts/rollout rollback demo_proxy blue http://myapp-v1:8080
step "all blue after rollback on the stack"
sample 300
all_from blue demo_myapp-v1
step_done "$sample_sent" "$sample_failed" "$sample_retried"

# A ramp on the stack's two proxy replicas, one schedule for both: step 1 (50%), then 100%.
# Then a ramp to a canary that refuses every connection: its guard trips (on the first replica
# to see it, and through PEERS on the other), traffic is back on blue, no request is lost.
# Waits until the ramp's START (+ seconds) that the service's environment says.
wait_ramp() { # seconds after START
  local start
  start=$(env_of demo_proxy | grep -o 'GREEN_RAMP_START=[^"]*' | cut -d= -f2)
  [ -n "$start" ] || die "no GREEN_RAMP_START in $(env_of demo_proxy)"
  local wait_s=$(($(date -d "$start" +%s) + $1 - $(date +%s)))
  echo "waiting ${wait_s} s for START ($start) + $1 s"
  [ "$wait_s" -le 0 ] || sleep "$wait_s"
}
under_load "stack: scripts/rollout ramp demo_proxy green http://myapp-v2:8080 --steps 50,100 --every 30s" demo_proxy 2 \
  scripts/rollout ramp demo_proxy green http://myapp-v2:8080 --steps 50,100 --every 30s
step "the ramp's steps on the stack: 50%, then 100%"
wait_ramp 2
sample "$split_requests"
split_is 50 demo_myapp-v1 demo_myapp-v2
sent=$sample_sent
wait_ramp 32
sample 300
all_from green demo_myapp-v2
step_done $((sent + sample_sent)) 0 0

under_load "stack: scripts/rollout rollback demo_proxy blue http://myapp-v1:8080 (after the ramp)" demo_proxy 2 \
  scripts/rollout rollback demo_proxy blue http://myapp-v1:8080
under_load "stack: scripts/rollout ramp demo_proxy green http://myapp-v2:1 (refuses connections) --steps 50 --every 10m" demo_proxy 2 \
  scripts/rollout ramp demo_proxy green http://myapp-v2:1 --steps 50 --every 10m
step "a canary that refuses every connection: the guard trips on both replicas, nothing is lost"
# Each replica's admin port, reached through a colorproxy on the stack's network (the admin
# port stays unpublished); its two tasks answer in turn.
admin_port=$((port + 1))
forwarder demo-admin "$admin_port" -eBLUE=http://demo_proxy:9901 -eBLUE_DISCOVERY=tasks -eDNS_REFRESH=1s
wait_ramp 1
load_start
tripped=0
for i in $(seq 60); do
  answers=$(for _ in $(seq 20); do curl -fsS -m 5 "http://127.0.0.1:$admin_port/guard" || echo '{}'; done)
  if [ "$(grep -c '"tripped":\[{"color":"green"' <<<"$answers")" -eq 20 ] &&
    [ "$(sort -u <<<"$answers" | wc -l)" -le 2 ]; then
    tripped=1
    break
  fi
  sleep 1
done
echo "replicas' /guard: $(sort <<<"$answers" | uniq -c | head -n 2)"
[ "$tripped" -eq 1 ] || die "the guard did not trip on every replica within 60 s"
[ "$(grep -o '"config_hash":"[0-9a-f]*"' <<<"$answers" | sort -u | wc -l)" -eq 1 ] || die "the replicas' config hashes differ"
logs_of demo_proxy >"$work/proxy-guard.log"
grep -F "guard tripped" "$work/proxy-guard.log" | head -n 2 || die "no 'guard tripped' line in the proxy's logs"
! grep -F "cannot resolve PEERS" "$work/proxy-guard.log" || die "the replicas cannot find each other (PEERS)"
load_stop
step "all blue after the trip"
sample 300
all_from blue demo_myapp-v1
step_done "$sample_sent" "$sample_failed" "$sample_retried"

step "docker stack rm demo"
run docker service rm demo-admin demo-edge >/dev/null
services=()
# Its network may still be in use by a task of the edge, just removed: `docker stack rm` then
# says it failed to remove it, and remove_network waits for it.
run docker stack rm demo || echo "(the network goes once the last task has stopped)"
stack_deployed=0
left=$(docker service ls -q --filter label=com.docker.stack.namespace=demo)
[ -z "$left" ] || die "docker stack rm demo left services: $left"
remove_network demo_backend
step_done

if grep -iE 'registry-1\.docker\.io|pulling (from|image)' "$work/dockerd.log"; then
  die "dockerd asked a registry (see above)"
fi
[ "$failed_total" -eq 0 ] || die "$failed_total requests failed (see above and $work/failures.log)"
echo "swarm-e2e: OK: $sent_total requests, 0 failed, $retried_total retried on a new connection"
