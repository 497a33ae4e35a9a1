#!/usr/bin/env bash
# The whole test suite, from a fresh clone: unit tests, integration tests against real local
# servers, doc tests (README code included).
#
# The model endpoint most tests use is the vLLM-format server in tests/src/lib.rs, started by
# each test on 127.0.0.1 (random port) and stopped when the test ends. A DynamoDB/S3 server
# (scripts/aws-local.sh) and a real local model (scripts/local-model.sh) are installed and
# started here, and stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not on PATH: install Rust 1.95 or newer (https://rustup.rs)" >&2
  exit 1
fi

log=$(mktemp)
trap 'scripts/local-model.sh stop; scripts/aws-local.sh stop; rm -f "$log"' EXIT

# DynamoDB and S3: ministack (PyPI) on 127.0.0.1, reached through the SDK's standard variables.
AWS_ENDPOINT_URL=$(scripts/aws-local.sh start)
export AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1

# The real-model smoke test's endpoint: llama.cpp + Qwen2.5-Coder-1.5B on 127.0.0.1. The first
# run on a machine builds and downloads it (about 12 minutes on 2 cores); it is cached after.
AGENT_LOCAL_MODEL_URL=$(scripts/local-model.sh start)
export AGENT_LOCAL_MODEL_URL
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
# One closing line for the whole suite, summed over every test binary and doc-test run.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
