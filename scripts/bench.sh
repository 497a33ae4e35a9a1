#!/usr/bin/env bash
# Framework overhead of one agent invocation against a hand-written reqwest client (the floor),
# measured side by side in one run. Pass --quick for a shorter run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p agent-tests --bin bench
exec ./target/release/bench "$@"
