#!/usr/bin/env bash
# Installs kubernetes-validate (offline Kubernetes JSON schemas, v1.25-v1.37)
# into its own virtualenv so that it does not disturb the system Python.
# Idempotent. Tests find it through $PULLAHEAD_KUBERNETES_VALIDATE.
set -euo pipefail
dest=${PULLAHEAD_TOOLS:-/opt/pullahead-tools}
kv="$dest/venv/bin/kubernetes-validate"
if [ -x "$kv" ] && "$kv" --version >/dev/null 2>&1; then
  exit 0
fi
mkdir -p "$dest"
python3 -m venv "$dest/venv"
"$dest/venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0' pyyaml
"$kv" --version
