#!/usr/bin/env bash
# Checks the deployment: helm lint, the rendered chart against the Kubernetes
# 1.33 schemas (strict), the committed manifests against a fresh render, and
# the alert rules with promtool (check + unit tests). tests/deploy.rs runs it.
# Tools: $PULLAHEAD_HELM, $PULLAHEAD_KUBERNETES_VALIDATE, $PULLAHEAD_PROMTOOL
# (installed by .ci/setup.d/ and .ci/apt-packages.txt).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
helm=${PULLAHEAD_HELM:-/opt/pullahead-tools/helm/helm}
kv=${PULLAHEAD_KUBERNETES_VALIDATE:-/opt/pullahead-tools/venv/bin/kubernetes-validate}
promtool=${PULLAHEAD_PROMTOOL:-promtool}
python=${PULLAHEAD_PYTHON:-$(dirname "$kv")/python3}
for t in "$helm" "$kv" "$promtool" "$python"; do
  command -v "$t" >/dev/null || { echo "missing tool: $t (run .ci/test's setup: .ci/setup.d/*.sh, apt prometheus)" >&2; exit 2; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export HELM_CACHE_HOME=$tmp/hc HELM_CONFIG_HOME=$tmp/hcfg HELM_DATA_HOME=$tmp/hd
chart=$here/helm/pullahead
all="serviceMonitor.enabled=true,prometheusRule.enabled=true,networkPolicy.enabled=true,grafanaDashboard.enabled=true,agent.startupTaint.enabled=true"

echo "== helm lint"
"$helm" lint --strict "$chart"
"$helm" lint --strict "$chart" --set "$all"

echo "== kubernetes-validate 1.33 (strict), defaults and everything enabled"
"$helm" template pullahead "$chart" -n pullahead --include-crds > "$tmp/default.yaml"
"$helm" template pullahead "$chart" -n pullahead --include-crds --set "$all" > "$tmp/all.yaml"
"$kv" -k 1.33.0 --strict "$tmp/default.yaml"
"$kv" -k 1.33.0 --strict "$tmp/all.yaml"

echo "== readiness gate: Node Readiness Controller mode, and its exclusion of startupTaint"
rr="agent.readinessRule.enabled=true,agent.readinessRule.nodeSelector.karpenter\.sh/nodepool=gpu"
"$helm" lint --strict "$chart" --set "$rr"
"$helm" template pullahead "$chart" -n pullahead --include-crds --set "$rr" > "$tmp/readiness.yaml"
# The NodeReadinessRule has no built-in schema (a warning); the rest is checked.
"$kv" -k 1.33.0 --strict "$tmp/readiness.yaml"
grep -q "kind: NodeReadinessRule" "$tmp/readiness.yaml"
grep -q "PULLAHEAD_RELEASE_CONDITION" "$tmp/readiness.yaml"
if "$helm" template pullahead "$chart" --set "$rr,agent.startupTaint.enabled=true" > /dev/null 2>&1; then
  echo "readinessRule and startupTaint rendered together" >&2; exit 1
fi
echo "readiness gate ok"

echo "== committed manifests match the chart"
bash "$here/render.sh" "$tmp/manifests" >/dev/null
diff -u "$here/manifests" "$tmp/manifests" || { echo "deploy/manifests is stale: run deploy/render.sh" >&2; exit 1; }
"$kv" -k 1.33.0 --strict "$here/manifests/pullahead.yaml"

echo "== promtool check rules / test rules"
"$helm" template pullahead "$chart" -n pullahead --set prometheusRule.enabled=true \
  --show-only templates/prometheusrule.yaml > "$tmp/prometheusrule.yaml"
"$python" -c 'import sys, yaml; yaml.safe_dump(yaml.safe_load(open(sys.argv[1]))["spec"], sys.stdout)' \
  "$tmp/prometheusrule.yaml" > "$tmp/rules.yaml"
"$promtool" check rules "$tmp/rules.yaml"
cp "$here/alerts/tests.yaml" "$tmp/tests.yaml"
(cd "$tmp" && "$promtool" test rules tests.yaml)
echo "== deploy ok"
