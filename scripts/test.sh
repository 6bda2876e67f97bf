#!/usr/bin/env bash
# The test suite: set up, check formatting and lints, then every unit, integration and
# end-to-end test against a real nats-server (one per test, on a free port) and real
# PostgreSQL (a fresh database per test).
# GMMAS_SKIP_LINT=1 skips the gates, GMMAS_SKIP_OPS=1 the operations checks (quick local reruns).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$GMMAS_ROOT/scripts/setup.sh"
cd "$GMMAS_ROOT"
export GMMAS_TEST_DATABASE_URL="${GMMAS_TEST_DATABASE_URL:-${GMMAS_DATABASE_URL%/*}/postgres}"
# Gates first: formatting and lints (warnings are errors), on every target.
if [ "${GMMAS_SKIP_LINT:-0}" != 1 ]; then
  echo "[test] cargo fmt --check" >&2
  cargo fmt --all -- --check
  echo "[test] cargo clippy --all-targets -- -D warnings" >&2
  cargo clippy --release --workspace --all-targets --quiet -- -D warnings
fi
# The operations checks: Dockerfile lint, the Helm chart against the Kubernetes schemas, the
# alert rules' unit tests and the dashboard (real tools, offline; scripts/ops-check.sh).
if [ "${GMMAS_SKIP_OPS:-0}" != 1 ]; then
  echo "[test] scripts/ops-check.sh" >&2
  "$GMMAS_ROOT/scripts/ops-check.sh" "$GMMAS_ROOT/out/ops/chart"
fi
# Unit, integration and end-to-end tests (the crates have no doc tests).
exec cargo test --release --workspace --lib --bins --tests "$@"
