#!/usr/bin/env bash
# Runs the official MCP conformance client suite (npm @modelcontextprotocol/conformance, pinned
# in mcp-servers.sh) against a client binary, once per spec revision: `--suite all` at
# 2025-11-25, then at 2026-07-28. Prints each run's summary; exits non-zero if either run fails.
#
#   scripts/mcp-conformance.sh CLIENT_BINARY [extra conformance `client` args...]
#
# Extra args go after ours, so a later `--suite core` or `--timeout 20000` wins; `--scenario`
# does not (the harness prefers --suite).
#
# For each scenario the harness starts mock servers on an ephemeral port and runs
#   CLIENT_BINARY <server URL>
# through `sh -c`, with MCP_CONFORMANCE_SCENARIO, MCP_CONFORMANCE_PROTOCOL_VERSION and (for some
# scenarios) MCP_CONFORMANCE_CONTEXT (JSON) in the environment. The mocks listen on 127.0.0.1
# only (scripts/loopback.cjs, preloaded through NODE_OPTIONS; their URLs say localhost).
#
# Baseline: agent-mcp/conformance-expected-failures.yml (`client: [scenario, ...]`), if present.
# An unlisted failure fails the run, and so does a listed scenario that now passes.
#
# Results: $AGENT_MCP_CONFORMANCE_OUT (default: a new temporary directory), one directory per
# revision (<scenario>-<time>/checks.json, stdout.txt, stderr.txt) plus the run's log.
# Time limit: $AGENT_MCP_CONFORMANCE_TIMEOUT seconds per run (default 300).
set -euo pipefail

say() { printf '[mcp-conformance] %s\n' "$*" >&2; }

if [ $# -lt 1 ]; then
  say "usage: $0 CLIENT_BINARY [extra conformance client args...]"
  exit 2
fi
SCRIPTS=$(cd "$(dirname "$0")" && pwd)
client=$(realpath -- "$1")
shift
if [ ! -f "$client" ] || [ ! -x "$client" ]; then
  say "not an executable file: $client"
  exit 2
fi
# The harness splits the command on spaces and runs it through a shell.
case "$client" in
  *[[:space:]\'\"\\\$\`\;\&\|\<\>\(\)\*\?\[\]\#\~]*)
    say "the client's path must hold no spaces or shell characters: $client"
    exit 2 ;;
esac

NODE22=$("$SCRIPTS/mcp-servers.sh" node22)
CLI=$("$SCRIPTS/mcp-servers.sh" conformance)
OUT="${AGENT_MCP_CONFORMANCE_OUT:-$(mktemp -d -t mcp-conformance.XXXXXX)}"
TIMEOUT="${AGENT_MCP_CONFORMANCE_TIMEOUT:-300}"
mkdir -p "$OUT"

baseline=()
EXPECTED="$SCRIPTS/../agent-mcp/conformance-expected-failures.yml"
if [ -f "$EXPECTED" ]; then
  baseline=(--expected-failures "$(realpath -- "$EXPECTED")")
fi

# The preload keeps every mock server on 127.0.0.1; NODE_OPTIONS reaches the harness and any
# Node process it starts. Quoted, so the path may hold spaces.
export NODE_OPTIONS="--require \"$SCRIPTS/loopback.cjs\" --no-deprecation"

status=0
for version in 2025-11-25 2026-07-28; do
  log="$OUT/$version.log"
  say "suite all, spec $version: $client (results in $OUT/$version)"
  rc=0
  timeout -k 10 "$TIMEOUT" "$NODE22" "$CLI" client --command "$client" \
    --suite all --spec-version "$version" -o "$OUT/$version" "${baseline[@]}" "$@" \
    >"$log" 2>&1 || rc=$?
  echo "== spec $version"
  # The summary: a line per scenario (✓/✗ name: N passed, M failed), Total:, and the baseline's
  # verdict if there is one; the last lines of the log if the harness stopped before it.
  summary=$(sed -e 's/\x1b\[[0-9;]*m//g' "$log" | awk 'on && NF; /^=== SUITE SUMMARY ===$/ { on = 1 }')
  if [ -n "$summary" ]; then
    echo "$summary"
  else
    tail -n 20 "$log"
  fi
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    say "spec $version: timed out after $TIMEOUT s (log: $log)"
  elif [ "$rc" -ne 0 ]; then
    say "spec $version: failed, exit $rc (log: $log)"
  fi
  [ "$rc" -eq 0 ] || status=1
done
say "results: $OUT"
exit "$status"
