#!/usr/bin/env bash
# Arize Phoenix (PyPI, pinned): an LLM observability backend that ingests OTLP and shows the GenAI
# conventions as its LLM/TOOL/AGENT views. The suite exports real agent runs to it and reads them
# back through its REST API. Every listener is on 127.0.0.1 (scripts/phoenix/loopback.py); its
# data lives in a fresh directory per start, removed on stop.
#
#   scripts/phoenix.sh start    install once (cached), start, wait until healthy, print the base URL
#   scripts/phoenix.sh stop     stop the server this script started (by its PID)
#
# Cache: $AGENT_PHOENIX_CACHE (default $AGENT_CACHE_DIR/phoenix, $AGENT_CACHE_DIR defaulting to
# ~/.cache/agent-runtime). Ports: $AGENT_PHOENIX_PORT (HTTP, default 6006) and
# $AGENT_PHOENIX_GRPC_PORT (OTLP/gRPC, default 4317).
set -euo pipefail

CACHE="${AGENT_PHOENIX_CACHE:-${AGENT_CACHE_DIR:-$HOME/.cache/agent-runtime}/phoenix}"
PORT="${AGENT_PHOENIX_PORT:-6006}"
GRPC_PORT="${AGENT_PHOENIX_GRPC_PORT:-4317}"
VERSION="20.26.1"
VENV="$CACHE/venv-$VERSION"
PIDFILE="${AGENT_PHOENIX_PIDFILE:-$CACHE/phoenix.pid}"
LOG="${AGENT_PHOENIX_LOG:-$CACHE/phoenix.log}"
DATA="$PIDFILE.data"
LAUNCHER="$(cd "$(dirname "$0")" && pwd)/phoenix/loopback.py"

# shellcheck disable=SC2034 # read by service.sh
NAME=phoenix
# shellcheck source=scripts/service.sh
. "$(dirname "$0")/service.sh"

say() { printf '[phoenix] %s\n' "$*" >&2; }

install() {
  install_venv "arize-phoenix $VERSION (about a minute, once)" "arize-phoenix==$VERSION"
}

healthy() {
  http_ok "http://127.0.0.1:$PORT/healthz"
}

start() {
  install
  if running_pid >/dev/null && healthy; then
    echo "http://127.0.0.1:$PORT"
    return 0
  fi
  mkdir -p "$(dirname "$PIDFILE")" "$(dirname "$LOG")"
  rm -rf "$DATA"
  mkdir -p "$DATA"
  say "starting Phoenix on 127.0.0.1:$PORT, OTLP/gRPC on 127.0.0.1:$GRPC_PORT (log: $LOG)"
  PHOENIX_HOST=127.0.0.1 PHOENIX_PORT="$PORT" PHOENIX_GRPC_PORT="$GRPC_PORT" \
    PHOENIX_WORKING_DIR="$DATA" PHOENIX_TELEMETRY_ENABLED=false \
    nohup "$VENV/bin/python" "$LAUNCHER" >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  wait_healthy 120 || exit 1
  echo "http://127.0.0.1:$PORT"
}

case "${1:-}" in
  start) start ;;
  stop) stop; rm -rf "$DATA" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
