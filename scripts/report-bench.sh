#!/usr/bin/env bash
# Measures the report service over 20 phantom cases (GMMAS_REPORT_BENCH_CASES to change): time
# per report through the local LLM and through the fallback, and the share of LLM answers that
# pass validation. Writes services/report/results/bench.json and bench.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$GMMAS_ROOT/scripts/setup.sh"
cd "$GMMAS_ROOT"
export GMMAS_TEST_DATABASE_URL="${GMMAS_TEST_DATABASE_URL:-${GMMAS_DATABASE_URL%/*}/postgres}"
exec cargo test --release -p gmmas-e2e --test report_bench -- --ignored --nocapture "$@"
