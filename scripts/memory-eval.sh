#!/usr/bin/env bash
# Long-term memory evaluation on a real model (tests/memory-eval/cases.json): precision and
# recall of stored facts and of retrieval, planted instructions, extraction cost. Starts the
# local model (scripts/local-model.sh) unless OPENAI_BASE_URL is set, and the local embedding
# model (scripts/embed-model.sh) unless OPENAI_EMBEDDING_BASE_URL is set or --no-embeddings is
# given. Other arguments go to the evaluation (--cases FILE, --rounds N, --report FILE.json).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p agent-tests --bin memory_eval
stops=()
cleanup() {
  local s
  for s in "${stops[@]}"; do "$s" stop; done
}
trap cleanup EXIT
args=()
embeddings=1
for a in "$@"; do
  if [ "$a" = --no-embeddings ]; then embeddings=0; else args+=("$a"); fi
done
if [ -z "${OPENAI_BASE_URL:-}" ]; then
  stops+=(scripts/local-model.sh)
  OPENAI_BASE_URL=$(scripts/local-model.sh start)
  export OPENAI_BASE_URL
  export OPENAI_MODEL="${OPENAI_MODEL:-local}" OPENAI_TOOL_CALLING="${OPENAI_TOOL_CALLING:-constrained}"
fi
if [ "$embeddings" = 1 ] && [ -z "${OPENAI_EMBEDDING_BASE_URL:-}" ]; then
  stops+=(scripts/embed-model.sh)
  OPENAI_EMBEDDING_BASE_URL=$(scripts/embed-model.sh start)
  export OPENAI_EMBEDDING_BASE_URL OPENAI_EMBEDDING_MODEL="${OPENAI_EMBEDDING_MODEL:-all-minilm-l6-v2}"
fi
[ "$embeddings" = 1 ] || unset OPENAI_EMBEDDING_BASE_URL
./target/release/memory_eval "${args[@]}"
