#!/usr/bin/env python3
"""Checks the deployment offline: every manifest against its schema, and the manifests against
the code they deploy. Run by scripts/deploy-check.sh, which installs what it needs:

    check.py --deploy DIR --travel-agent BIN --gpu-sizing BIN --node NODE --node-modules DIR \
             --kubernetes-validate BIN --yamllint BIN --source REPO_ROOT

Exit 0 when everything holds; 1 with one line per failure otherwise.
"""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

KUBERNETES_VERSION = "1.34.0"
# Kinds validated by kubernetes-validate (the cluster's own schemas); the rest by the CRD
# validators below, except the kinds listed as unverifiable.
CUSTOM = {
    ("karpenter.sh/v1", "NodePool"),
    ("karpenter.k8s.aws/v1", "EC2NodeClass"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}
# vLLM flags that change how much GPU memory it takes: each one in the manifest must be one
# gpu-sizing prints.
MEMORY_FLAGS = {
    "--max-model-len", "--gpu-memory-utilization", "--max-num-seqs", "--tensor-parallel-size",
    "--pipeline-parallel-size", "--kv-cache-dtype", "--quantization", "--dtype",
}
UNVERIFIABLE = {("eks.amazonaws.com/v1", "NodeClass")}
KUSTOMIZE = ("kustomize.config.k8s.io/v1beta1", "Kustomization")
# Environment variables read by libraries rather than by the travel agent's own code.
READ_BY_LIBRARIES = {
    "AWS_REGION": "the AWS SDK",
    "OTEL_SERVICE_NAME": "the OpenTelemetry SDK",
    "OTEL_RESOURCE_ATTRIBUTES": "the OpenTelemetry SDK",
    "RUST_LOG": "tracing-subscriber's EnvFilter",
}
# The AWS SDK calls of the stores the service uses, and the IAM action each needs.
IAM_ACTIONS = {
    "get_object": "s3:GetObject",
    "put_object": "s3:PutObject",
    "list_objects_v2": "s3:ListBucket",
    "delete_object": "s3:DeleteObject",
    "head_object": "s3:GetObject",
    "get_item": "dynamodb:GetItem",
    "put_item": "dynamodb:PutItem",
    "update_item": "dynamodb:UpdateItem",
    "delete_item": "dynamodb:DeleteItem",
    "query": "dynamodb:Query",
    "scan": "dynamodb:Scan",
    "batch_write_item": "dynamodb:BatchWriteItem",
    "converse": "bedrock:InvokeModel",
    "converse_stream": "bedrock:InvokeModelWithResponseStream",
}

failures = []
passed = 0


def check(ok, message):
    global passed
    if ok:
        passed += 1
    else:
        failures.append(message)


def load(deploy):
    """Every YAML document under deploy/, as (path, document)."""
    docs = []
    for path in sorted(deploy.rglob("*.yaml")):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    docs.append((path, doc))
    return docs


def kustomizations(deploy, docs):
    """Each kustomization lists files that exist, and every manifest beside it is listed."""
    for path, doc in docs:
        if (doc.get("apiVersion"), doc.get("kind")) != KUSTOMIZE:
            continue
        here = path.parent
        listed = set()
        for resource in doc.get("resources", []):
            target = (here / resource).resolve()
            check(
                target.is_file() or (target / "kustomization.yaml").is_file(),
                f"{path.relative_to(deploy)}: resource {resource} does not exist",
            )
            listed.add(target)
        for manifest in here.glob("*.yaml"):
            if manifest.name != "kustomization.yaml":
                check(
                    manifest.resolve() in listed,
                    f"{manifest.relative_to(deploy)} is not in {path.relative_to(deploy)}",
                )


def lint(args, deploy):
    run = subprocess.run(
        [args.yamllint, "--strict", "-c", str(deploy / ".yamllint"), str(deploy)],
        capture_output=True,
        text=True,
    )
    check(run.returncode == 0, f"yamllint: {run.stdout.strip()}{run.stderr.strip()}")


def schemas(args, deploy, docs):
    core = sorted({str(p) for p, d in docs if (d.get("apiVersion"), d.get("kind")) not in CUSTOM | UNVERIFIABLE | {KUSTOMIZE}})
    run = subprocess.run(
        [args.kubernetes_validate, "--strict", "--quiet", "-k", KUBERNETES_VERSION, *core],
        capture_output=True,
        text=True,
    )
    output = (run.stdout + run.stderr).strip()
    check(run.returncode == 0, f"kubernetes-validate --strict ({KUBERNETES_VERSION}): {output}")
    custom = [
        {"file": str(p.relative_to(deploy)), "doc": d}
        for p, d in docs
        if (d.get("apiVersion"), d.get("kind")) in CUSTOM
    ]
    run = subprocess.run(
        [args.node, str(Path(__file__).parent / "validate-crds.mjs")],
        input=json.dumps(custom),
        capture_output=True,
        text=True,
        env={**os.environ, "KUBERNETES_MODELS": args.node_modules},
    )
    if run.returncode != 0 and not run.stdout.strip():
        check(False, f"the CRD validator failed: {run.stderr.strip()}")
        return
    for result in json.loads(run.stdout):
        check(result["ok"], f"{result['file']}: {result.get('error')}")


def by_kind(docs, kind, name=None):
    return [d for _, d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs, kind, name):
    found = by_kind(docs, kind, name)
    check(len(found) == 1, f"expected one {kind} {name}, found {len(found)}")
    return found[0] if found else {}


def container(deployment):
    return deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [{}])[0]


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def env_names_read(args, source):
    """The environment variables the travel-agent binary reads: clap's (from --help) and the
    ones the code looks up by name."""
    names = set()
    for command in (["serve", "--help"], ["mcp", "--help"]):
        out = subprocess.run([args.travel_agent, *command], capture_output=True, text=True).stdout
        names |= set(re.findall(r"\[env: ([A-Z0-9_]+)=", out))
    literal = re.compile(r'(?:var|var_os|lookup|env|non_empty|get)\(\s*"([A-Z][A-Z0-9_]+)"')
    for root in ["examples/travel-agent/src", "agent-core/src", "agent-memory/src"]:
        for path in (source / root).rglob("*.rs"):
            names |= set(literal.findall(path.read_text()))
    return names


def against_code(args, deploy, docs):
    source = Path(args.source)
    config = one(docs, "ConfigMap", "travel-agent").get("data", {})
    agent = one(docs, "Deployment", "travel-agent")
    agent_container = container(agent)
    ports = {p["name"]: p["containerPort"] for p in agent_container.get("ports", [])}

    # Environment variables the binary reads.
    read = env_names_read(args, source)
    check("TRAVEL_AGENT_DRAIN_SECONDS" in read, "could not read the binary's environment variables")
    env = dict(config)
    for deployment in by_kind(docs, "Deployment"):
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            if c.get("image") != "travel-agent":
                continue
            values = " ".join(str(e.get("value", "")) for e in c.get("env", []))
            for e in c.get("env", []):
                env.setdefault(e["name"], e.get("value"))
                used = f"$({e['name']})" in values
                check(
                    e["name"] in read or e["name"] in READ_BY_LIBRARIES or used,
                    f"{deployment['metadata']['name']}: {e['name']} is not read by travel-agent",
                )
    for name in config:
        check(name in read or name in READ_BY_LIBRARIES, f"ConfigMap travel-agent: {name} is not read by travel-agent")

    # Ports.
    check(port_of(config["TRAVEL_AGENT_LISTEN"]) == ports.get("http"), "TRAVEL_AGENT_LISTEN's port is not the container's http port")
    check(port_of(config["TRAVEL_AGENT_METRICS_LISTEN"]) == ports.get("metrics"), "TRAVEL_AGENT_METRICS_LISTEN's port is not the container's metrics port")
    mcp = one(docs, "Deployment", "travel-mcp")
    mcp_env = {e["name"]: e.get("value") for e in container(mcp).get("env", [])}
    mcp_port = {p["name"]: p["containerPort"] for p in container(mcp).get("ports", [])}.get("mcp")
    check(port_of(mcp_env.get("TRAVEL_MCP_LISTEN", ":0")) == mcp_port, "TRAVEL_MCP_LISTEN's port is not the MCP container's port")
    url = re.fullmatch(r"http://([a-z0-9.-]+):(\d+)(/.*)", config.get("TRAVEL_MCP_URL", ""))
    check(url is not None, "TRAVEL_MCP_URL is not http://<service>:<port>/<path>")
    if url:
        service = one(docs, "Service", url.group(1).split(".")[0])
        service_ports = [p["port"] for p in service.get("spec", {}).get("ports", [])]
        check(int(url.group(2)) in service_ports, f"TRAVEL_MCP_URL's port {url.group(2)} is not a port of Service {url.group(1)}")
        check(url.group(3) == "/mcp", "the MCP server serves /mcp")
        allowed = (mcp_env.get("TRAVEL_MCP_ALLOWED_HOSTS") or "").split(",")
        check(url.group(1) in allowed, f"the MCP server refuses the Host {url.group(1)} (TRAVEL_MCP_ALLOWED_HOSTS)")
    vllm = one(docs, "Deployment", "vllm")
    vllm_args = container(vllm).get("args", [])
    flags = dict(a.split("=", 1) for a in vllm_args if "=" in a)
    url = re.fullmatch(r"http://([a-z0-9.-]+):(\d+)/v1", config.get("OPENAI_BASE_URL", ""))
    check(url is not None, "OPENAI_BASE_URL is not http://<service>:<port>/v1")
    if url:
        check(url.group(1) == "vllm" and url.group(2) == flags.get("--port"), "OPENAI_BASE_URL does not reach vLLM's --port")
    check(config.get("OPENAI_MODEL") == flags.get("--served-model-name"), "OPENAI_MODEL is not vLLM's --served-model-name")

    # Probes: the routes the service serves.
    routes = set(re.findall(r'\.route\("([^"]+)"', (source / "examples/travel-agent/src/serve/mod.rs").read_text()))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = agent_container.get(probe, {}).get("httpGet", {}).get("path")
        check(path in routes, f"travel-agent {probe} path {path} is not a route of the service ({sorted(routes)})")
    check(agent_container.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/ready", "the readiness probe must be /ready (it turns 503 on SIGTERM)")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = container(vllm).get(probe, {}).get("httpGet", {}).get("path")
        check(path == "/health", f"vllm {probe} path {path} is not vLLM's /health")
    startup = container(vllm).get("startupProbe", {})
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    check(budget <= 120, f"vLLM's startup budget {budget} s is beyond the 2-minute target")

    # Grace period: the preStop pause, the drain, then the service's own bounds.
    serve_source = (source / "examples/travel-agent/src/serve/mod.rs").read_text()
    listen_source = (source / "examples/travel-agent/src/serve/listen.rs").read_text()
    cancel = int(re.search(r"CANCEL_GRACE: Duration = Duration::from_secs\((\d+)\)", serve_source).group(1))
    close = int(re.search(r"CLOSE_GRACE: Duration = Duration::from_secs\((\d+)\)", listen_source).group(1))
    pause = agent_container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    drain = int(config.get("TRAVEL_AGENT_DRAIN_SECONDS", 90))
    grace = agent["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    needed = pause + drain + cancel + close
    check(grace > needed, f"terminationGracePeriodSeconds {grace} is not above preStop {pause} + drain {drain} + cancel grace {cancel} + close {close} = {needed}")
    check(grace < 120, f"terminationGracePeriodSeconds {grace} is not below Spot's 120 s notice")

    # Metrics the scaler queries are ones the service exports.
    metrics_source = (source / "examples/travel-agent/src/serve/metrics.rs").read_text()
    for so in by_kind(docs, "ScaledObject"):
        name = so["metadata"]["name"]
        target = so["spec"]["scaleTargetRef"]["name"]
        check(len(by_kind(docs, "Deployment", target)) == 1, f"ScaledObject {name} scales a Deployment {target} that is not here")
        triggers = so["spec"].get("triggers", [])
        if "fallback" in so["spec"]:
            check(
                all(t.get("metricType", "AverageValue") == "AverageValue" for t in triggers),
                f"ScaledObject {name}: KEDA refuses a fallback unless every trigger is AverageValue",
            )
        for trigger in triggers:
            query = trigger.get("metadata", {}).get("query", "")
            for metric in re.findall(r"(travel_agent_[a-z_]+)", query):
                check(f'"{metric}"' in metrics_source, f"ScaledObject {name} queries {metric}, which the service does not export")
            # Whatever the query reads must be scraped from the pods that export it.
            if re.search(r"travel_agent_|vllm:", query):
                deployment = by_kind(docs, "Deployment", target)
                pod_labels = deployment[0]["spec"]["template"]["metadata"]["labels"] if deployment else {}
                port_names = {p.get("name") for p in container(deployment[0]).get("ports", [])} if deployment else set()
                scraped = [
                    pm for pm in by_kind(docs, "PodMonitor")
                    if pm["spec"]["selector"].get("matchLabels")
                    and all(pod_labels.get(k) == v for k, v in pm["spec"]["selector"]["matchLabels"].items())
                    and any(e.get("port") in port_names for e in pm["spec"].get("podMetricsEndpoints", []))
                ]
                check(bool(scraped), f"ScaledObject {name} queries metrics of {target}, but no PodMonitor scrapes a port of its pods")

    # Selectors select something.
    labels = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in by_kind(docs, "Deployment")}

    def selects(selector):
        return any(all(l.get(k) == v for k, v in selector.items()) for l in labels.values())

    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        for d in by_kind(docs, kind):
            spec = d["spec"]
            selector = spec.get("selector", {}) if kind == "Service" else (spec.get("selector") or spec.get("podSelector") or {}).get("matchLabels", {})
            check(bool(selector) and selects(selector), f"{kind} {d['metadata']['name']} selects no Deployment's pods by label ({selector})")
            if kind == "Service":
                for p in spec.get("ports", []):
                    target = p.get("targetPort")
                    names = {
                        cp.get("name")
                        for dep in by_kind(docs, "Deployment")
                        if all(dep["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())
                        for cp in container(dep).get("ports", [])
                    }
                    check(target in names, f"Service {d['metadata']['name']} targets port {target}, which its pods do not name")

    # IAM: the actions the stores' SDK calls need, on the configured bucket, prefix and table.
    calls = set()
    for f in ("agent-memory/src/s3.rs", "agent-memory/src/long_term.rs"):
        calls |= set(re.findall(r"\.([a-z_0-9]+)\(\)", (source / f).read_text())) & IAM_ACTIONS.keys()
    # Bedrock, when the service is configured to call it (as its model or its fallback): the
    # provider's calls, on that model.
    bedrock_model = config.get("BEDROCK_FALLBACK_MODEL_ID") or config.get("BEDROCK_MODEL_ID")
    if bedrock_model:
        calls |= set(re.findall(r"\.([a-z_0-9]+)\(\)", (source / "agent-core/src/model/bedrock/mod.rs").read_text())) & {"converse", "converse_stream"}
    needed = {IAM_ACTIONS[c] for c in calls}
    policy = json.loads((deploy / "iam/agent-policy.json").read_text())
    if bedrock_model:
        resources = [
            r
            for st in policy["Statement"]
            if any(str(a).startswith("bedrock:") for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]]))
            for r in (st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]])
        ]
        check(any(r.endswith("/" + bedrock_model) for r in resources), f"iam/agent-policy.json does not let the role invoke {bedrock_model}")
    granted = {a for s in policy["Statement"] for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])}
    check(needed <= granted, f"iam/agent-policy.json lacks {sorted(needed - granted)}")
    check(granted <= needed, f"iam/agent-policy.json grants {sorted(granted - needed)}, which the service never uses")
    prefix = re.search(r'with_prefix\("([^"]+)"\)', (source / "examples/travel-agent/src/serve/state.rs").read_text()).group(1)
    resources = " ".join(str(s["Resource"]) for s in policy["Statement"])
    check(f"arn:aws:s3:::{config.get('TRAVEL_AGENT_SESSION_BUCKET')}/{prefix}/*" in resources, "the policy's S3 resource is not the session bucket and prefix")
    check(f":table/{config.get('TRAVEL_AGENT_MEMORY_TABLE')}" in resources, "the policy's table is not TRAVEL_AGENT_MEMORY_TABLE")
    model = re.fullmatch(r"s3://([^/]+)/(.+?)/?", flags.get("--model", ""))
    vllm_policy = json.dumps(json.loads((deploy / "iam/vllm-policy.json").read_text()))
    check(model is not None and f"arn:aws:s3:::{model.group(1)}/{model.group(2)}/*" in vllm_policy, "iam/vllm-policy.json does not grant the --model location")
    return vllm, flags


def against_sizing(args, deploy, docs, vllm, flags):
    """vLLM's flags and the node pools come from gpu-sizing's output."""
    command = vllm["metadata"].get("annotations", {}).get("travel-agent/sizing", "")
    check(bool(command), "the vLLM Deployment has no travel-agent/sizing annotation")
    run = subprocess.run([args.gpu_sizing, *command.split(), "--json"], capture_output=True, text=True, cwd=deploy)
    check(run.returncode == 0, f"gpu-sizing {command}: {run.stderr.strip()}")
    if run.returncode != 0:
        return
    sizing = json.loads(run.stdout)
    sized = dict(a.split("=", 1) for a in sizing["vllm_args"])
    for name, value in sized.items():
        check(flags.get(name) == value, f"vLLM has {name}={flags.get(name)}, gpu-sizing says {value}")
    for arg in container(vllm).get("args", []):
        name = arg.split("=", 1)[0]
        check(name not in MEMORY_FLAGS or name in sized, f"vLLM's {name} changes its memory, and gpu-sizing was not given it")
    resources = container(vllm).get("resources", {})
    for side in ("requests", "limits"):
        check(str(resources.get(side, {}).get("nvidia.com/gpu")) == str(sizing["gpus"]), f"vLLM {side} nvidia.com/gpu is not gpu-sizing's {sizing['gpus']}")
    # A family fits when one of its types holds the model at the deployed tensor parallelism.
    gpus = sizing["gpus"]
    deployable = [f for f in sizing["fits"] if f["tensor_parallel"] <= gpus and f["instance"]["gpus"] >= min(gpus, 1)]
    fitting = {f["instance"]["family"] for f in deployable}
    smallest = {}
    for f in deployable:
        smallest.setdefault(f["instance"]["family"], f["instance"])
    cpu = str(resources.get("requests", {}).get("cpu", "0"))
    cpu = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    memory = str(resources.get("requests", {}).get("memory", "0"))
    units = {"Gi": 1.0, "Mi": 1 / 1024, "G": 1e9 / 2**30, "M": 1e6 / 2**30}
    unit = next((u for u in units if memory.endswith(u)), None)
    memory_gib = float(memory[: -len(unit)]) * units[unit] if unit else float(memory) / 2**30
    for path, d in docs:
        if d.get("kind") != "NodePool":
            continue
        template = d["spec"]["template"]
        where = f"{path.relative_to(deploy)}"
        check(template.get("metadata", {}).get("labels", {}).get("travel-agent/pool") == "gpu", f"{where}: its nodes lack the label vLLM's affinity needs (travel-agent/pool: gpu)")
        taints = {t["key"] for t in template["spec"].get("taints", [])}
        tolerated = {t["key"] for t in vllm["spec"]["template"]["spec"].get("tolerations", [])}
        check(taints <= tolerated, f"{where}: vLLM does not tolerate the taints {sorted(taints - tolerated)}")
        families = [r for r in template["spec"].get("requirements", []) if r["key"].endswith("/instance-family")]
        check(len(families) == 1, f"{where}: no instance-family requirement (In) limits it to GPUs that hold the model")
        check(not any(r["key"].endswith(("/instance-type", "node.kubernetes.io/instance-type")) for r in template["spec"].get("requirements", [])), f"{where}: instance types are chosen by family here")
        for r in families:
            check(r.get("operator") == "In", f"{where}: the instance-family requirement must be In, not {r.get('operator')}")
            if r.get("operator") == "In":
                for family in r["values"]:
                    check(family in fitting, f"{where}: instance family {family} cannot hold the model (gpu-sizing fits: {sorted(fitting)})")
                    check(family in sizing["families"], f"{where}: instance family {family} is beyond twice the cheapest fit's price ({sizing['families']})")
                    if family in smallest:
                        check(cpu < smallest[family]["vcpus"], f"{where}: vLLM requests {cpu} CPUs, {smallest[family]['name']} has {smallest[family]['vcpus']}")
                        check(memory_gib < smallest[family]["memory_gib"] * 0.9, f"{where}: vLLM requests {memory} of memory, {smallest[family]['name']} has {smallest[family]['memory_gib']} GiB")
        ref = template["spec"]["nodeClassRef"]
        classes = [c for p, c in docs if c.get("kind") == ref["kind"] and p.parent == path.parent and c["metadata"]["name"] == ref["name"]]
        check(len(classes) == 1, f"{where}: its nodeClassRef {ref['kind']} {ref['name']} is not in the overlay")


def main():
    parser = argparse.ArgumentParser()
    for name in ("deploy", "travel-agent", "gpu-sizing", "node", "node-modules", "kubernetes-validate", "yamllint", "source"):
        parser.add_argument(f"--{name}", required=True)
    args = parser.parse_args()
    deploy = Path(args.deploy)
    lint(args, deploy)
    try:
        docs = load(deploy)
    except yaml.YAMLError as e:
        check(False, f"a manifest is not YAML: {e}")
        docs = None
    if docs is not None:
        # A manifest broken in a way one stage does not expect fails that stage, not the run.
        stages = [
            ("kustomizations", lambda: kustomizations(deploy, docs)),
            ("schemas", lambda: schemas(args, deploy, docs)),
            ("code", lambda: against_sizing(args, deploy, docs, *against_code(args, deploy, docs))),
        ]
        for name, stage in stages:
            try:
                stage()
            except Exception as e:  # noqa: BLE001 - reported as a failure of the stage
                check(False, f"the {name} checks could not run: {e!r}")
    for p, d in docs or []:
        if (d.get("apiVersion"), d.get("kind")) in UNVERIFIABLE:
            print(f"[deploy-check] not validated (no published schema offline): {p.relative_to(deploy)} ({d['apiVersion']} {d['kind']})", file=sys.stderr)
    for f in failures:
        print(f"[deploy-check] FAILED: {f}", file=sys.stderr)
    print(f"[deploy-check] {passed} checks passed, {len(failures)} failed", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
