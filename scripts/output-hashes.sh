#!/usr/bin/env bash
# The sha256 of the example phantom (seed 7, the case `gmmas up` analyzes) and of its
# segmentation by the bundled model: run at two commits to show a change leaves outputs alone.
# Usage: scripts/output-hashes.sh OUT_DIR   (uses the gmmas binary in $GMMAS_BIN)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
out=${1:?usage: scripts/output-hashes.sh OUT_DIR}
rm -rf "$out" && mkdir -p "$out"
"$GMMAS_BIN/gmmas" phantom --n 1 --seed 7 --out "$out/ph" >/dev/null
"$GMMAS_BIN/gmmas" analyze "$out/ph/Phantom_0000" --out "$out/an" >/dev/null
(cd "$out" && find ph an -type f \( -name '*.nii.gz' -o -name '*.csv' \) | sort | xargs sha256sum)
