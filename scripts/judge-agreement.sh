#!/usr/bin/env bash
# The judged metrics of agent_core::eval beside Ragas' own (0.4.3, PyPI), both judged by the
# same model on the same 20 samples (tests/src/bin/judge_agreement.rs): the agreement, a
# measurement. Starts the local model (scripts/local-model.sh) unless OPENAI_BASE_URL is set, the
# local embedding model (scripts/embed-model.sh) unless OPENAI_EMBEDDING_BASE_URL is set, and
# installs Ragas (scripts/ragas-python.sh). Arguments go to the binary (--report FILE.json).
# About 25 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p agent-tests --bin judge_agreement
stops=()
cleanup() {
  local s
  for s in "${stops[@]}"; do "$s" stop; done
}
trap cleanup EXIT
if [ -z "${OPENAI_BASE_URL:-}" ]; then
  stops+=(scripts/local-model.sh)
  OPENAI_BASE_URL=$(scripts/local-model.sh start)
fi
if [ -z "${OPENAI_EMBEDDING_BASE_URL:-}" ]; then
  stops+=(scripts/embed-model.sh)
  OPENAI_EMBEDDING_BASE_URL=$(scripts/embed-model.sh start)
fi
python=$(scripts/ragas-python.sh)
./target/release/judge_agreement --model-url "$OPENAI_BASE_URL" --model "${OPENAI_MODEL:-local}" \
  --embed-url "$OPENAI_EMBEDDING_BASE_URL" --embed-model "${OPENAI_EMBEDDING_MODEL:-all-minilm-l6-v2}" \
  --python "$python" "$@"
