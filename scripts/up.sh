#!/usr/bin/env bash
# The main job: set up, start every GMMAS service locally, analyze the example case, serve
# until Ctrl-C. Extra arguments go to `gmmas up` (e.g. --case-dir DIR, --once).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$GMMAS_ROOT/scripts/setup.sh"
cd "$GMMAS_ROOT"
exec "$GMMAS_BIN/gmmas" up --state-dir "$GMMAS_STATE" "$@"
