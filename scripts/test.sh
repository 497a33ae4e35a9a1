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

# This run's own ports and PID files, so concurrent runs on one machine never share or stop
# each other's servers; the trap stops exactly what this run started.
run_dir=$(mktemp -d)
log="$run_dir/test.log"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export AGENT_MODEL_PORT=$(free_port) AGENT_MODEL_PIDFILE="$run_dir/llama-server.pid" AGENT_MODEL_LOG="$run_dir/llama-server.log"
export AGENT_AWS_PORT=$(free_port) AGENT_AWS_PIDFILE="$run_dir/ministack.pid" AGENT_AWS_LOG="$run_dir/ministack.log"
trap 'scripts/local-model.sh stop; scripts/aws-local.sh stop; rm -rf "$run_dir"' EXIT

# DynamoDB and S3: ministack (PyPI) on 127.0.0.1, reached through the SDK's standard variables.
AWS_ENDPOINT_URL=$(scripts/aws-local.sh start)
export AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1

# MCP: the reference server from npm; tests run it (stdio, and HTTP on 127.0.0.1) and stop it.
# The conformance suite's Node 22 and harness (npm, pinned); its test runs them.
MCP_EVERYTHING=$(scripts/mcp-servers.sh everything)
MCP_CONFORMANCE=$(scripts/mcp-servers.sh conformance)
export MCP_EVERYTHING MCP_CONFORMANCE

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
