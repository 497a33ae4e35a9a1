#!/usr/bin/env bash
# Installs the MCP reference server the tests use (npm, pinned) and prints the path of its entry
# point. Tests start it themselves over stdio (a child process they stop).
#
# Cache: $AGENT_MCP_CACHE (default ~/.cache/agent-runtime/mcp).
set -euo pipefail
CACHE="${AGENT_MCP_CACHE:-$HOME/.cache/agent-runtime/mcp}"
VERSION="2026.8.31"
ENTRY="$CACHE/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
if ! command -v node >/dev/null 2>&1; then
  echo "[mcp-servers] node is not installed (apt-get install nodejs npm)" >&2
  exit 1
fi
if [ ! -f "$CACHE/.installed-$VERSION" ]; then
  echo "[mcp-servers] installing @modelcontextprotocol/server-everything@$VERSION from npm" >&2
  mkdir -p "$CACHE"
  (cd "$CACHE" && npm install --silent --no-audit --no-fund "@modelcontextprotocol/server-everything@$VERSION" >&2)
  touch "$CACHE/.installed-$VERSION"
fi
echo "$ENTRY"
