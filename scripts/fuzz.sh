#!/usr/bin/env bash
# Property tests (proptest) of every parser of peer data, run for a while: the SSE decoder, the
# constrained-reply and string decoders, chunk assembly and tool arguments (agent-core), stored
# messages, agent documents and histories (agent-memory, agent-core), MCP results (agent-mcp).
# The suite runs each briefly (256 cases); this runs them over and over with new random seeds,
# with many cases each, until the time is up. A failure prints its minimal input and stops.
#
#   scripts/fuzz.sh [minutes]      (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
end=$((SECONDS + minutes * 60))
export PROPTEST_CASES=${PROPTEST_CASES:-20000}
cargo test --release --locked -p agent-core -p agent-memory -p agent-mcp --no-run
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rounds=0
while [ "$SECONDS" -lt "$end" ]; do
  if ! cargo test --release --locked -q -p agent-core -p agent-memory -p agent-mcp fuzz_ >"$log" 2>&1; then
    cat "$log"
    echo "fuzz: a property failed in round $((rounds + 1)) (the minimal input is above)"
    exit 1
  fi
  rounds=$((rounds + 1))
done
echo "fuzz: $rounds rounds of $PROPTEST_CASES cases per property in $minutes min, no failure"
