// Validates Karpenter, KEDA and Prometheus Operator custom resources against the JSON schemas generated from their
// published CRDs (npm @kubernetes-models/karpenter, keda and prometheus-operator). Reads
// [{file, doc}] as JSON on stdin, prints [{file, ok, error?}]. KUBERNETES_MODELS is the
// node_modules directory the packages are installed in.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const root = process.env.KUBERNETES_MODELS;
const models = {
  "karpenter.sh/v1 NodePool": "@kubernetes-models/karpenter/karpenter.sh/v1/NodePool.js",
  "karpenter.k8s.aws/v1 EC2NodeClass": "@kubernetes-models/karpenter/karpenter.k8s.aws/v1/EC2NodeClass.js",
  "keda.sh/v1alpha1 ScaledObject": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js",
  "monitoring.coreos.com/v1 PodMonitor": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor.js",
};
const input = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const { file, doc } of input) {
  const key = `${doc.apiVersion} ${doc.kind}`;
  const module = models[key];
  if (!module) {
    results.push({ file, ok: false, error: `no schema for ${key}` });
    continue;
  }
  const loaded = await import(pathToFileURL(join(root, module)).href);
  const Model = loaded[doc.kind];
  try {
    new Model(doc).validate();
    results.push({ file, ok: true });
  } catch (e) {
    results.push({ file, ok: false, error: `${key}: ${e.message}` });
  }
}
console.log(JSON.stringify(results));
