#!/usr/bin/env bash
# Proves the container's runtime layer offline (this machine cannot pull base images): builds
# the release binary the Dockerfile builds (deploy/container/build-static.sh), puts it and the CA
# bundle, and nothing else (but the devices an OCI runtime provides), in an empty root filesystem, and runs it there (chroot, as uid 65532,
# loopback only): the service answers GET /ping, /ready and /metrics, refuses a request whose
# model is unreachable with a typed error, the MCP server answers an initialize, and SIGTERM
# stops both with exit 0. Prints the binary's size. Needs root (chroot).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[container-check] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { say "needs root (chroot)"; exit 1; }
CHROOT=$(command -v chroot)

bin=$(examples/travel-agent/deploy/container/build-static.sh)
if ! ldd "$bin" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
  say "$bin is dynamically linked:"
  ldd "$bin" >&2
  exit 1
fi
say "binary: $bin, $(stat -c %s "$bin") bytes ($(du -h "$bin" | cut -f1)), statically linked"

root=$(mktemp -d)
chmod 0755 "$root"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$root"
}
trap cleanup EXIT
install -D -m 0755 "$bin" "$root/travel-agent"
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
install -d -m 1777 "$root/tmp"
# The devices every OCI runtime gives a container (runtime-spec, "Default Devices"): a static
# binary reads /dev/urandom where it cannot look up libc's getrandom.
install -d -m 0755 "$root/dev"
mknod -m 0666 "$root/dev/null" c 1 3
mknod -m 0666 "$root/dev/zero" c 1 5
mknod -m 0666 "$root/dev/random" c 1 8
mknod -m 0666 "$root/dev/urandom" c 1 9
say "root filesystem: $(cd "$root" && find . -type f -o -type c | sort | tr '\n' ' ')"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
web=$(free_port) metrics=$(free_port) mcp=$(free_port) closed=$(free_port)
# in_root VAR=value ... -- ARGS...: /travel-agent ARGS in the root, as uid 65532, with only VARs.
in_root() {
  local vars=()
  while [ "$1" != -- ]; do
    vars+=("$1")
    shift
  done
  shift
  exec env -i "${vars[@]}" "$CHROOT" --userspec=65532:65532 "$root" /travel-agent "$@"
}

in_root TRAVEL_MCP_LISTEN="127.0.0.1:$mcp" TRAVEL_MCP_ALLOWED_HOSTS=127.0.0.1 -- mcp >"$root.mcp.log" 2>&1 &
pids+=($!)
in_root OPENAI_BASE_URL="http://127.0.0.1:$closed/v1" OPENAI_MODEL=qwen3-8b \
  TRAVEL_MCP_URL="http://127.0.0.1:$mcp/mcp" TRAVEL_AGENT_DATA_DIR=/tmp/data \
  TRAVEL_AGENT_METRICS_LISTEN="127.0.0.1:$metrics" -- serve --no-auth --listen "127.0.0.1:$web" >"$root.serve.log" 2>&1 &
serve=$!
pids+=("$serve")

python3 - "$web" "$metrics" "$mcp" <<'PY'
import json, sys, time, urllib.request, urllib.error
web, metrics, mcp = sys.argv[1:]
def get(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status, r.read().decode()
deadline = time.time() + 30
while True:
    try:
        status, body = get(f"http://127.0.0.1:{web}/ping")
        break
    except Exception:
        if time.time() > deadline:
            sys.exit("the service never answered /ping")
        time.sleep(0.1)
assert json.loads(body)["status"] == "Healthy", body
assert get(f"http://127.0.0.1:{web}/ready") == (200, "ready")
status, text = get(f"http://127.0.0.1:{metrics}/metrics")
assert "travel_agent_invocations_in_flight 0" in text, text
request = urllib.request.Request(f"http://127.0.0.1:{web}/invocations", data=b'{"prompt": "hi"}',
                                 headers={"content-type": "application/json", "accept": "application/json"})
try:
    urllib.request.urlopen(request, timeout=60)
    sys.exit("an invocation with no model answered 200")
except urllib.error.HTTPError as e:
    error = json.loads(e.read())
    assert error["type"] == "error" and error["kind"], error
    print(f"[container-check] an invocation without a model: {e.code} {error['kind']}", file=sys.stderr)
initialize = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "check", "version": "0"}}}).encode()
request = urllib.request.Request(f"http://127.0.0.1:{mcp}/mcp", data=initialize, headers={
    "content-type": "application/json", "accept": "application/json, text/event-stream"})
with urllib.request.urlopen(request, timeout=10) as r:
    assert r.status == 200 and b"travel" in r.read(), "the MCP server did not initialize"
print("[container-check] /ping, /ready, /metrics, /invocations and the MCP server answer from the empty root", file=sys.stderr)
PY

kill -TERM "$serve"
status=0
wait "$serve" || status=$?
if [ "$status" != 0 ]; then
  say "the service exited with $status on SIGTERM:"
  cat "$root.serve.log" >&2
  exit 1
fi
grep -q '"message":"drained"' "$root.serve.log" || { say "no drained line:"; cat "$root.serve.log" >&2; exit 1; }
say "SIGTERM: drained, exit 0"
rm -f "$root.serve.log" "$root.mcp.log"

# The image itself, where buildah is installed (Debian: apt-get install buildah): its runtime
# stage assembled from the Dockerfile's own lines (buildah cannot pull the build stage's base
# here, so the binary above stands in for that stage), then its configuration checked.
if ! command -v buildah >/dev/null 2>&1; then
  say "buildah is not installed: the image was not assembled (apt-get install buildah)"
  exit 0
fi
store=$(mktemp -d)
b() { buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs "$@"; }
trap 'cleanup; b rm --all >/dev/null 2>&1 || true; rm -rf "$store"' EXIT
dockerfile=examples/travel-agent/deploy/container/Dockerfile
runtime=$(awk '/^FROM /{stage=""} {stage = stage $0 "\n"} END {printf "%s", stage}' "$dockerfile")
grep -q '^FROM scratch' <<<"$runtime" || { say "the Dockerfile's last stage is not FROM scratch"; exit 1; }
ctr=$(b from scratch)
b copy "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
b copy "$ctr" "$bin" /travel-agent >/dev/null
config=()
while read -r instruction rest; do
  case $instruction in
    ENV) config+=(--env "$rest") ;;
    USER) config+=(--user "$rest") ;;
    EXPOSE) for p in $rest; do config+=(--port "$p"); done ;;
    STOPSIGNAL) config+=(--stop-signal "$rest") ;;
    ENTRYPOINT) config+=(--entrypoint "$rest") ;;
    CMD) config+=(--cmd "$(python3 -c 'import json, sys; print(" ".join(json.loads(sys.argv[1])))' "$rest")") ;;
  esac
done < <(printf '%b\n' "$runtime")
b config "${config[@]}" "$ctr"
b commit -q "$ctr" localhost/travel-agent:check >/dev/null
b inspect --type image localhost/travel-agent:check | python3 -c '
import json, sys
image = json.load(sys.stdin)
c = image["OCIv1"]["config"]
assert c["User"] == "65532:65532", c
assert c["Entrypoint"] == ["/travel-agent"] and c["Cmd"] == ["serve"], c
assert c["StopSignal"] == "SIGTERM", c
assert set(c["ExposedPorts"]) == {"8080", "9090", "3001"}, c
layers = image["OCIv1"]["rootfs"]["diff_ids"]
user, entry, cmd, stop = c["User"], c["Entrypoint"], c["Cmd"], c["StopSignal"]
print(f"[container-check] image localhost/travel-agent:check: {len(layers)} layer(s), user {user}, "
      f"entrypoint {entry} {cmd}, stop signal {stop}", file=sys.stderr)'
say "image size: $(b images --format '{{.Size}}' localhost/travel-agent:check)"
