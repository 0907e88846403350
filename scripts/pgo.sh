#!/usr/bin/env bash
# Builds colorproxy's release binary with profile-guided optimisation (issue #14): the way the
# shipped binary is built (Dockerfile, .ci/run) and the one the benchmarks measure. LLVM lays out
# and inlines code by how often it ran on real traffic: 25% fewer instructions per request than
# the plain release build (README, Performance).
#
#   scripts/pgo.sh [--target TRIPLE]
#
# 1. builds an instrumented colorproxy (target/pgo/), and myapp and myapp's load client as usual;
# 2. trains it on loopback: two myapp instances split 4:1, GET traffic over keep-alive
#    connections with the access log on (the default) and off, requests with 20 kB bodies (which
#    myapp reads, then answers 405), HTTP/2 requests, the admin endpoints; bounded in requests
#    and time;
# 3. merges the profile with the llvm-profdata of rustc's own LLVM version, and builds the
#    release binary with it, where `cargo build --release [--target TRIPLE]` puts it.
#
# Environment: RUSTFLAGS passes through (the static build: "-C target-feature=+crt-static"),
# PGO_REQUESTS: GET requests per training run (30000). Needs curl, and llvm-profdata matching
# rustc's LLVM: rustup's llvm-tools component, or Debian's llvm-N (installed when missing, as
# root). Exit status 0, or 2 with the reason on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "pgo.sh: $*" >&2; exit 2; }

target_args=()
out_dir=target/release
case $# in
  0) ;;
  2) if [ "$1" != --target ] || [ -z "$2" ]; then die "usage: scripts/pgo.sh [--target TRIPLE]"; fi
     target_args=(--target "$2")
     out_dir=target/$2/release ;;
  *) die "usage: scripts/pgo.sh [--target TRIPLE]" ;;
esac
requests=${PGO_REQUESTS:-30000}
case $requests in '' | *[!0-9]* | 0) die "PGO_REQUESTS must be a positive integer, got '$requests'" ;; esac

# shellcheck source=scripts/need.sh
. scripts/need.sh
need curl

# llvm-profdata reads only profiles of its own LLVM major version.
llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ -n "$llvm" ] || die "cannot tell rustc's LLVM version (rustc -vV)"
profdata=
for candidate in "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata "$(command -v "llvm-profdata-$llvm" || true)"; do
  if [ -x "$candidate" ] && "$candidate" --version 2>/dev/null | grep -q "LLVM version $llvm\."; then
    profdata=$candidate
    break
  fi
done
if [ -z "$profdata" ]; then
  # Not root: `rustup component add llvm-tools` does as well.
  need "llvm-profdata-$llvm:llvm-$llvm"
  profdata=$(command -v "llvm-profdata-$llvm")
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/colorproxy-pgo.XXXXXX")
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

flags=${RUSTFLAGS:-}
echo "== pgo: instrumented build (target/pgo), myapp and its load client"
# Build scripts and proc macros are instrumented too; their profiles go to the work directory,
# apart from the proxy's.
LLVM_PROFILE_FILE="$work/build-%p-%m.profraw" RUSTFLAGS="$flags -Cprofile-generate=$work" \
  cargo build --release --locked --quiet --target-dir target/pgo "${target_args[@]}" -p colorproxy ||
  die "the instrumented build failed"
gen=target/pgo/${out_dir#target/}/colorproxy
cargo build --release --locked --quiet "${target_args[@]}" -p myapp --bins --example load ||
  die "building myapp and its load client failed"

apps=()
for v in v1 v2; do
  "$out_dir/myapp" 127.0.0.1:0 >"$work/myapp-$v.log" 2>&1 &
  pids+=($!)
  app=$(log_addr "$work/myapp-$v.log" "myapp listening on" $!) || die "myapp $v did not start"
  apps+=("$app")
done

train() { # access log: on or off
  local pid addr admin i answer
  LLVM_PROFILE_FILE="$work/train-$1-%p.profraw" BLUE="http://${apps[0]}" GREEN="http://${apps[1]}" \
    BLUE_WEIGHT=4 GREEN_WEIGHT=1 LISTEN=127.0.0.1:0 ADMIN_LISTEN=127.0.0.1:0 ACCESS_LOG="$1" \
    "$gen" >"$work/proxy-$1.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  addr=$(log_addr "$work/proxy-$1.log" "listening on" "$pid") || die "the instrumented proxy did not start"
  admin=$(log_addr "$work/proxy-$1.log" "admin endpoints on" "$pid") || die "no admin endpoints"
  timeout 120 "$out_dir/examples/load" "$addr" --connections 32 --rate 1000000 --requests "$requests" \
    >"$work/load-$1.txt" || { cat "$work/load-$1.txt" >&2; die "training load against $addr failed"; }
  head -c 20000 /dev/urandom >"$work/body"
  # myapp reads a request's body, then answers anything but GET and HEAD with 405.
  for i in $(seq 100); do
    answer=$(curl -sS -m 10 -o /dev/null -w '%{http_code}' -X POST --data-binary "@$work/body" "http://$addr/upload/$i") ||
      die "POST through the instrumented proxy failed"
    [ "$answer" = 405 ] || die "POST through the instrumented proxy answered $answer"
  done
  # HTTP/2 clients (h2c with prior knowledge), one request a connection: Debian 12's curl fails
  # the second request of a reused HTTP/2 connection, whatever the server. Without these the
  # HTTP/2 code would be laid out as cold, slower than in a plain build.
  for i in $(seq 300); do
    curl -sS -f -m 10 -o /dev/null --http2-prior-knowledge "http://$addr/h2/$i" ||
      die "an HTTP/2 request through the instrumented proxy failed"
  done
  for path in metrics healthz status; do
    curl -sS -m 10 -o /dev/null "http://$admin/$path" || die "GET $admin/$path failed"
  done
  kill -TERM "$pid"
  wait "$pid" || die "the instrumented proxy exited with status $? (log: $work/proxy-$1.log)"
  echo "   access log $1: $(cat "$work/load-$1.txt"), 100 POSTs of 20 kB, 300 HTTP/2 GETs"
}
echo "== pgo: training on loopback (myapp ${apps[0]} and ${apps[1]}, 4:1)"
train on
train off
compgen -G "$work/train-*.profraw" >/dev/null || die "the training left no profile in $work"

echo "== pgo: merging with $profdata, and the optimised build ($out_dir/colorproxy)"
"$profdata" merge -o "$work/colorproxy.profdata" "$work"/train-*.profraw || die "llvm-profdata merge failed"
RUSTFLAGS="$flags -Cprofile-use=$work/colorproxy.profdata" \
  cargo build --release --locked --quiet "${target_args[@]}" -p colorproxy || die "the optimised build failed"
"$out_dir/colorproxy" version >/dev/null || die "the optimised binary does not run"
echo "== pgo: $out_dir/colorproxy built with the profile"
