#!/usr/bin/env bash
# Long-term memory evaluation on a real model (tests/memory-eval/cases.json): precision and
# recall of stored facts and of retrieval, planted instructions, extraction cost. Starts the
# local model (scripts/local-model.sh) unless OPENAI_BASE_URL is set. Arguments go to the
# evaluation (--cases FILE, --report FILE.json).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p agent-tests --bin memory_eval
if [ -z "${OPENAI_BASE_URL:-}" ]; then
  trap 'scripts/local-model.sh stop' EXIT
  OPENAI_BASE_URL=$(scripts/local-model.sh start)
  export OPENAI_BASE_URL
  export OPENAI_MODEL="${OPENAI_MODEL:-local}" OPENAI_TOOL_CALLING="${OPENAI_TOOL_CALLING:-constrained}"
fi
./target/release/memory_eval "$@"
