#!/usr/bin/env bash
# The test suite: set up, then every unit, integration and end-to-end test against a real
# nats-server (one per test, on a free port) and real PostgreSQL (a fresh database per test).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$GMMAS_ROOT/scripts/setup.sh"
cd "$GMMAS_ROOT"
export GMMAS_TEST_DATABASE_URL="${GMMAS_TEST_DATABASE_URL:-${GMMAS_DATABASE_URL%/*}/postgres}"
# Unit, integration and end-to-end tests (the crates have no doc tests).
exec cargo test --release --workspace --lib --bins --tests "$@"
