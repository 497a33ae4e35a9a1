#!/usr/bin/env bash
# Python Strands Agents (PyPI, pinned) in a venv of its own, for the interoperability test
# (tests/tests/strands_python.rs): Python Strands reads and resumes sessions this runtime wrote.
#
#   scripts/strands-python.sh    install once (cached), print the venv's python
#
# Cache: $AGENT_STRANDS_CACHE (default $AGENT_CACHE_DIR/strands, $AGENT_CACHE_DIR defaulting to
# ~/.cache/agent-runtime).
set -euo pipefail

CACHE="${AGENT_STRANDS_CACHE:-${AGENT_CACHE_DIR:-$HOME/.cache/agent-runtime}/strands}"
VERSION="1.62.0"
VENV="$CACHE/venv-$VERSION"
PIDFILE="$CACHE/unused.pid"
LOG="$CACHE/unused.log"

# shellcheck disable=SC2034 # read by service.sh
NAME=strands
# shellcheck source=scripts/service.sh
. "$(dirname "$0")/service.sh"

say() { printf '[strands] %s\n' "$*" >&2; }

install_venv "strands-agents $VERSION (about a minute, once)" "strands-agents==$VERSION"
echo "$VENV/bin/python"
