#!/usr/bin/env bash
# The longer runs of the reliability suite (README "Reliability"): the hand-off under load with
# 100,000 requests (CI runs 12,000), and the fault and bad-input tests, in a release build.
# Loopback only, bounded in requests and time.
#
#   scripts/reliability.sh [REQUESTS]      (REQUESTS: hand-off requests, default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-100000}

echo "== hand-off under load: 5 SO_REUSEPORT hand-offs, $requests requests"
HANDOFF_REQUESTS=$requests cargo test --release --locked --test handoff -- --nocapture 2>&1 |
  grep -E '^hand-off:|^test |test result'

echo "== faults: node loss, a whole color lost, DNS outage, bad and slow clients, broken upstreams"
cargo test --release --locked --test discovery --test shield 2>&1 | grep -E '^test |test result'

if [ -x scripts/slow-clients.sh ]; then
  echo "== slowhttptest against colorproxy and nginx"
  scripts/slow-clients.sh
fi
