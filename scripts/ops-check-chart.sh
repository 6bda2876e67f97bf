#!/usr/bin/env bash
# Offline validation of the Helm chart in helm/gmmas: no cluster, no helm binary, no network
# after the first run.
#
#   scripts/ops-check-chart.sh [OUT_DIR]      # default: out/ops/chart
#
# 1. Tools, installed once into ${GMMAS_CACHE:-~/.cache/gmmas} (reruns skip this):
#    ops-venv/  helm-python-sdk 0.2.2 (the Helm v4 SDK as a shared library) and
#               kubernetes-validate 1.37.0;
#    ops-npm/   kubernetes-models 5.1.0 and @kubernetes-models/validate 5.0.2 (they refuse
#               malformed resource quantities, which kubernetes-validate lets through).
# 2. Renders the chart with: the defaults; gpu on; gpu off; every optional feature on with HPA
#    and again with KEDA (ServiceMonitor, PrometheusRule, bundled PostgreSQL, NetworkPolicies,
#    ingress, ...); each two-site example (helm/gmmas/ci/*-values.yaml,
#    helm/gmmas/examples/two-sites/). Manifests go to OUT_DIR/<values set>/.
# 3. Lints each values set strictly for Kubernetes 1.30 (any warning fails; the only finding
#    let through is the declared NATS subchart not being vendored, and it is reported).
# 4. kubernetes-validate --strict -k 1.30.0 --quiet on every rendered object; any output fails.
#    ServiceMonitor, PrometheusRule and ScaledObject (custom resources without a schema there)
#    are filtered out before, explicitly.
# 5. kubernetes-models .validate() on every object (helm/gmmas/ci/validate-models.mjs).
# 6. Assertions on the objects (helm/gmmas/ci/check_chart.py): probes, resources, security
#    contexts, a PodDisruptionBudget per Deployment, GPU placement on / none at all off, the
#    LLM server ClusterIP-only behind a NetworkPolicy, no Secret objects, the dashboard label.
# 7. Negative checks: a non-quantity GPU limit and an unknown top-level key must be refused.
# Exit status 0 only when everything passes.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$(realpath -m "${1:-$root/out/ops/chart}")
cache=${GMMAS_CACHE:-$HOME/.cache/gmmas}
venv=$cache/ops-venv
npm_dir=$cache/ops-npm

helm_sdk_version=0.2.2
kubernetes_validate_version=1.37.0
kubernetes_models_version=5.1.0
kubernetes_models_validate_version=5.0.2

for tool in python3 node npm; do
  command -v "$tool" >/dev/null || { echo "ops-check-chart: $tool is needed" >&2; exit 1; }
done

# Python tools: installed when missing or at another version.
if ! "$venv/bin/python" - "$helm_sdk_version" "$kubernetes_validate_version" 2>/dev/null <<'EOF'
import importlib.metadata as m, sys
ok = m.version("helm-python-sdk") == sys.argv[1] and m.version("kubernetes-validate") == sys.argv[2]
import helm_python  # the shared library loads
sys.exit(0 if ok else 1)
EOF
then
  echo "ops-check-chart: installing helm-python-sdk $helm_sdk_version and kubernetes-validate $kubernetes_validate_version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "helm-python-sdk==$helm_sdk_version" "kubernetes-validate==$kubernetes_validate_version"
fi

# Node tools: installed when missing or at another version.
if ! node -e '
  const fs = require("fs");
  const v = (p) => JSON.parse(fs.readFileSync(`${process.argv[1]}/node_modules/${p}/package.json`, "utf8")).version;
  process.exit(v("kubernetes-models") === process.argv[2] && v("@kubernetes-models/validate") === process.argv[3] ? 0 : 1);
' "$npm_dir" "$kubernetes_models_version" "$kubernetes_models_validate_version" 2>/dev/null; then
  echo "ops-check-chart: installing kubernetes-models $kubernetes_models_version into $npm_dir"
  mkdir -p "$npm_dir"
  [ -f "$npm_dir/package.json" ] || printf '{\n  "name": "gmmas-ops-tools",\n  "private": true\n}\n' >"$npm_dir/package.json"
  npm install --prefix "$npm_dir" --no-audit --no-fund --loglevel=error \
    "kubernetes-models@$kubernetes_models_version" "@kubernetes-models/validate@$kubernetes_models_validate_version"
fi

exec "$venv/bin/python" "$root/helm/gmmas/ci/check_chart.py" \
  --chart "$root/helm/gmmas" \
  --out "$out" \
  --npm-dir "$npm_dir" \
  --kubernetes-validate "$venv/bin/kubernetes-validate"
