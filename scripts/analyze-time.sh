#!/usr/bin/env bash
# Times `gmmas analyze` (the bundled model, sliding windows, one process) on real cases, with one
# deterministic pass and with 5 MC-Dropout passes; writes models/results/analyze-time/.
# usage: scripts/analyze-time.sh [CASE_DIR...]   (default: three cases of ../shared/data/brats)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$GMMAS_ROOT"
out=models/results/analyze-time
mkdir -p "$out"
cases=("$@")
if [ ${#cases[@]} -eq 0 ]; then
  cases=(../shared/data/brats/Brats18_CBICA_AQN_1 ../shared/data/brats/Brats18_TCIA01_201_1 ../shared/data/brats/Brats18_2013_3_1)
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rows=()
for c in "${cases[@]}"; do
  for mc in 0 5; do
    /usr/bin/time -f "%e %M" -o "$tmp/t" "$GMMAS_BIN/gmmas" analyze "$c" --out "$tmp/a" --mc-passes "$mc" > /dev/null
    read -r wall rss < "$tmp/t"
    echo "$(basename "$c") mc=$mc: $wall s, peak RSS $((rss / 1024)) MiB" >&2
    rows+=("{\"case\": \"$(basename "$c")\", \"mc_passes\": $mc, \"wall_s\": $wall, \"peak_rss_mib\": $((rss / 1024))}")
  done
done
{
  echo "{"
  echo "  \"command\": \"scripts/analyze-time.sh\","
  echo "  \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
  echo "  \"machine\": \"$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB\","
  echo "  \"model\": \"bundled (gmmas analyze default)\","
  echo "  \"runs\": ["
  (IFS=$'\n'; echo "${rows[*]}" | sed '$!s/$/,/' | sed 's/^/    /')
  echo "  ]"
  echo "}"
} > "$out/analyze-time.json"
python3 - "$out" <<'PY'
import json, sys, statistics
out = sys.argv[1]
d = json.load(open(f"{out}/analyze-time.json"))
lines = ["# `gmmas analyze` on real cases", "",
         f"Measured {d['date']} on {d['machine']} with `{d['command']}` (bundled model, sliding windows,",
         "the whole process: reading the NIfTI files, preprocessing, the network, writing the outputs).", "",
         "| case | MC passes | wall (s) | peak RSS (MiB) |", "|---|---|---|---|"]
for r in d["runs"]:
    lines.append(f"| {r['case']} | {r['mc_passes']} | {r['wall_s']:.2f} | {r['peak_rss_mib']} |")
for mc in (0, 5):
    w = [r["wall_s"] for r in d["runs"] if r["mc_passes"] == mc]
    lines.append(f"\nMean with {mc} MC passes: {statistics.mean(w):.2f} s (max {max(w):.2f} s).")
open(f"{out}/analyze-time.md", "w").write("\n".join(lines) + "\n")
PY
cat "$out/analyze-time.md"
