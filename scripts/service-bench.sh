#!/usr/bin/env bash
# What the travel-agent service adds to an invocation next to the library, then 100 and 1,000
# concurrent SSE streams, RSS per stream and cold start (tests/src/bin/service_bench.rs).
# Pass --quick for a shorter run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p travel-agent -p agent-tests --bin travel-agent --bin service_bench
exec ./target/release/service_bench "$@"
