#!/usr/bin/env bash
# Local DynamoDB-, S3-, Cognito- and Bedrock Runtime-compatible server for the tests: ministack
# (PyPI, pinned), on 127.0.0.1, in memory. See ../shared/reference/local-aws.md for why this
# server (conditional writes enforced and atomic, DynamoDB validations like AWS's own DynamoDB
# Local).
#
#   scripts/aws-local.sh start    install once (cached), start, wait until healthy, print the endpoint
#   scripts/aws-local.sh stop     stop the server this script started (by its PID)
#
# Cache: $AGENT_AWS_CACHE (default $AGENT_CACHE_DIR/aws, $AGENT_CACHE_DIR defaulting to
# ~/.cache/agent-runtime). Port: $AGENT_AWS_PORT (default 4566).
set -euo pipefail

CACHE="${AGENT_AWS_CACHE:-${AGENT_CACHE_DIR:-$HOME/.cache/agent-runtime}/aws}"
PORT="${AGENT_AWS_PORT:-4566}"
VERSION="1.5.33"
# cryptography lets ministack sign Cognito tokens with real 2048-bit RSA keys (per pool, as AWS
# does); without it, it falls back to a static key that nothing can verify.
CRYPTOGRAPHY="50.0.2"
VENV="$CACHE/venv-$VERSION-cryptography-$CRYPTOGRAPHY"
PIDFILE="${AGENT_AWS_PIDFILE:-$CACHE/ministack.pid}"
LOG="${AGENT_AWS_LOG:-$CACHE/ministack.log}"

# shellcheck disable=SC2034 # read by service.sh
NAME=ministack
# shellcheck source=scripts/service.sh
. "$(dirname "$0")/service.sh"

say() { printf '[aws-local] %s\n' "$*" >&2; }

install() {
  install_venv "ministack $VERSION (about 30 s, once)" "ministack==$VERSION" "cryptography==$CRYPTOGRAPHY"
}

healthy() {
  python3 - "$PORT" <<'PY'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/_ministack/health", timeout=2) as r:
        services = json.load(r).get("services", {})
        sys.exit(0 if services.get("dynamodb") == "available" and services.get("s3") == "available" else 1)
except Exception:
    sys.exit(1)
PY
}


start() {
  install
  if running_pid >/dev/null && healthy; then
    echo "http://127.0.0.1:$PORT"
    return 0
  fi
  say "starting ministack on 127.0.0.1:$PORT (log: $LOG)"
  BIND_HOST=127.0.0.1 GATEWAY_PORT="$PORT" SERVICES=dynamodb,s3,cognito-idp,bedrock-runtime nohup "$VENV/bin/ministack" >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  wait_healthy 30 || exit 1
  echo "http://127.0.0.1:$PORT"
}


case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
