#!/usr/bin/env bash
# Ragas (PyPI, pinned) in a venv of its own, for the evaluation parity test
# (tests/tests/eval_ragas.rs): Ragas computes the same metrics on the same samples.
#
#   scripts/ragas-python.sh      install once (cached), print the venv's python
#
# Cache: $AGENT_RAGAS_CACHE (default $AGENT_CACHE_DIR/ragas, $AGENT_CACHE_DIR defaulting to
# ~/.cache/agent-runtime).
set -euo pipefail

CACHE="${AGENT_RAGAS_CACHE:-${AGENT_CACHE_DIR:-$HOME/.cache/agent-runtime}/ragas}"
VERSION="0.4.3"
VENV="$CACHE/venv-$VERSION"
PIDFILE="$CACHE/unused.pid"
LOG="$CACHE/unused.log"

# shellcheck disable=SC2034 # read by service.sh
NAME=ragas
# shellcheck source=scripts/service.sh
. "$(dirname "$0")/service.sh"

say() { printf '[ragas] %s\n' "$*" >&2; }

# Ragas 0.4.3 imports langchain_community.chat_models.vertexai, which langchain-community 0.4
# removed: pinned to the last 0.3.
install_venv "ragas $VERSION (about a minute, once)" "ragas==$VERSION" "langchain-community==0.3.31"
echo "$VENV/bin/python"
