#!/usr/bin/env bash
# Checks examples/travel-agent/deploy offline (deploy/check.py): core manifests with
# kubernetes-validate --strict, Karpenter and KEDA resources against their CRDs' schemas (npm
# @kubernetes-models; Prometheus Operator's PodMonitor too), yamllint, and the manifests against the code (ports, probe paths,
# environment variables, grace period > drain, IAM actions, vLLM flags from gpu-sizing).
#
#   scripts/deploy-check.sh [DEPLOY_DIR]   check DEPLOY_DIR (default: examples/travel-agent/deploy)
#   scripts/deploy-check.sh --broken       break a copy in several ways, one at a time: each must fail
#
# Cache: $AGENT_CACHE_DIR/deploy (default ~/.cache/agent-runtime/deploy): a venv and an npm prefix,
# pinned, installed once.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${AGENT_CACHE_DIR:-$HOME/.cache/agent-runtime}/deploy"
VENV="$CACHE/venv-kv-1.37.0-yamllint-1.38.0"
MODELS="$CACHE/npm-karpenter-2.0.0-keda-2.0.0-prometheus-operator-6.0.0"
DEPLOY=examples/travel-agent/deploy

say() { printf '[deploy-check] %s\n' "$*" >&2; }
# shellcheck source=scripts/service.sh
. "$(dirname "$0")/service.sh"

install_venv "kubernetes-validate and yamllint" kubernetes-validate==1.37.0 yamllint==1.38.0 PyYAML==6.0.2
install_into "$MODELS" @kubernetes-models/karpenter@2.0.0 @kubernetes-models/keda@2.0.0 @kubernetes-models/prometheus-operator@6.0.0
NODE=$(bash scripts/mcp-servers.sh node22)
cargo build -q --locked -p travel-agent -p gpu-sizing
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

check_dir() {
  "$VENV/bin/python" "$DEPLOY/check.py" --deploy "$1" --source . \
    --travel-agent "$TARGET/debug/travel-agent" --gpu-sizing "$TARGET/debug/gpu-sizing" \
    --node "$NODE" --node-modules "$MODELS/node_modules" \
    --kubernetes-validate "$VENV/bin/kubernetes-validate" --yamllint "$VENV/bin/yamllint"
}

if [ "${1:-}" != --broken ]; then
  check_dir "${1:-$DEPLOY}"
  exit
fi

# Each breakage: a file, a Python expression that rewrites its text, and what the check must say.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0
while IFS='|' read -r file edit expected; do
  [ -n "$file" ] || continue
  rm -rf "$scratch/deploy"
  cp -r "$DEPLOY" "$scratch/deploy"
  python3 - "$scratch/deploy/$file" "$edit" <<'PY'
import sys
path, edit = sys.argv[1], sys.argv[2]
text = open(path).read()
new = eval(edit, {"text": text})
assert new != text, f"the edit changed nothing in {path}"
open(path, "w").write(new)
PY
  if out=$(check_dir "$scratch/deploy" 2>&1); then
    say "NOT CAUGHT: $file: $edit"
    failed=1
  elif grep -qF -- "$expected" <<<"$out"; then
    say "caught: $file: $(grep -F -- "$expected" <<<"$out" | head -n 1 | cut -c1-160)"
  else
    say "caught, but not as expected ($expected): $file:"
    grep FAILED <<<"$out" >&2 || true
    failed=1
  fi
done <<'CASES'
base/agent-deployment.yaml|text.replace("terminationGracePeriodSeconds: 115", "terminationGracePeriodSeconds: 100")|terminationGracePeriodSeconds 100 is not above
base/agent-deployment.yaml|text.replace("path: /ready", "path: /readyz")|readinessProbe path /readyz
base/agent-config.yaml|text.replace("TRAVEL_AGENT_DRAIN_SECONDS:", "TRAVEL_AGENT_DRAIN_SECS:")|TRAVEL_AGENT_DRAIN_SECS is not read by travel-agent
base/agent-config.yaml|text.replace("http://travel-mcp:3001/mcp", "http://travel-mcp:3002/mcp")|port 3002 is not a port of Service travel-mcp
base/agent-deployment.yaml|text.replace("containerPort: 9090", "containerPorts: 9090")|kubernetes-validate
base/vllm-deployment.yaml|text.replace("--max-model-len=32768", "--max-model-len=65536")|vLLM has --max-model-len=65536
base/vllm-deployment.yaml|text.replace('nvidia.com/gpu: "1"              # sizing', 'nvidia.com/gpu: "2"              # sizing')|nvidia.com/gpu is not gpu-sizing
base/vllm-scaledobject.yaml|text.replace("minReplicaCount: 1", "minReplicaCount: one")|ScaledObject: data/spec/minReplicaCount must be integer
base/agent-scaledobject.yaml|text.replace("travel_agent_invocations_in_flight", "travel_agent_requests_in_flight")|which the service does not export
overlays/karpenter/nodepool-gpu.yaml|text.replace("consolidationPolicy: WhenEmpty", "consolidationPolicy: WhenIdle")|consolidationPolicy must be equal to one of the allowed values
overlays/karpenter/nodepool-gpu.yaml|text.replace('values: ["g6e"]', 'values: ["g6e", "g5"]')|instance family g5 is beyond twice
overlays/auto-mode/nodepool-gpu.yaml|text.replace('values: ["g6e"]', 'values: ["g6f"]')|instance family g6f cannot hold the model
overlays/karpenter/ec2nodeclass-gpu.yaml|text.replace("httpTokens: required", "httpTokens: sometimes")|EC2NodeClass
iam/agent-policy.json|text.replace('"dynamodb:Query"', '"dynamodb:Scan"')|lacks ['dynamodb:Query']
base/mcp-deployment.yaml|text.replace("value: travel-mcp,", "value: mcp,")|refuses the Host travel-mcp
base/agent-service.yaml|text.replace("  ports:\n    - name: http", "  ports:\n   - name: http")|yamllint
base/kustomization.yaml|text.replace("  - vllm-pdb.yaml\n", "")|vllm-pdb.yaml is not in base/kustomization.yaml
base/vllm-scaledobject.yaml|text.replace("  cooldownPeriod: 300\n", "  cooldownPeriod: 300\n  fallback:\n    failureThreshold: 3\n    replicas: 1\n")|KEDA refuses a fallback
base/podmonitors.yaml|text.replace("    - port: metrics", "    - port: web")|no PodMonitor scrapes a port of its pods
base/vllm-deployment.yaml|text.replace("- --enable-prefix-caching", "- --kv-cache-dtype=fp8")|gpu-sizing was not given it
overlays/karpenter/nodepool-gpu.yaml|text.replace("operator: In\n          values: [\"g6e\"]", "operator: NotIn\n          values: [\"g6e\"]")|must be In, not NotIn
base/vllm-deployment.yaml|text.replace("memory: 24Gi", "memory: 40Gi")|vLLM requests 40Gi of memory
CASES
exit "$failed"
