#!/usr/bin/env bash
# Real cases through the DICOM path: each case of ../shared/data/brats written as a DICOM study
# (T1 axial, T1ce sagittal, T2 coronal, FLAIR axial: `gmmas to-dicom`), analysed with the
# bundled model from the study and from the NIfTI folder, and the two segmentations compared in
# world space (`gmmas seg-agreement`). Writes models/results/dicom-real/.
# usage: scripts/dicom-real.sh [CASE_DIR...]   (default: three cases of ../shared/data/brats)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$GMMAS_ROOT"
out=models/results/dicom-real
mkdir -p "$out"
cases=("$@")
if [ ${#cases[@]} -eq 0 ]; then
  cases=(../shared/data/brats/Brats18_CBICA_AQN_1 ../shared/data/brats/Brats18_TCIA01_201_1 ../shared/data/brats/Brats18_2013_3_1)
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rows=()
for c in "${cases[@]}"; do
  name=$(basename "$c")
  "$GMMAS_BIN/gmmas" to-dicom "$c" --out "$tmp/$name-dicom" >&2
  t0=$(date +%s.%N)
  "$GMMAS_BIN/gmmas" analyze "$c" --out "$tmp/$name-nifti-out" > /dev/null
  t1=$(date +%s.%N)
  "$GMMAS_BIN/gmmas" analyze "$tmp/$name-dicom" --out "$tmp/$name-dicom-out" > /dev/null
  t2=$(date +%s.%N)
  seg_dicom=$(ls "$tmp/$name-dicom-out"/study-*_seg.nii.gz)
  agree=$("$GMMAS_BIN/gmmas" seg-agreement "$tmp/$name-nifti-out/${name}_seg.nii.gz" "$seg_dicom")
  files=$(find "$tmp/$name-dicom" -type f | wc -l)
  echo "$name: $agree" >&2
  rows+=("{\"case\": \"$name\", \"dicom_files\": $files, \"nifti_s\": $(echo "$t1 - $t0" | bc), \"dicom_s\": $(echo "$t2 - $t1" | bc), \"agreement\": $agree}")
done
{
  echo "{"
  echo "  \"command\": \"scripts/dicom-real.sh\","
  echo "  \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\","
  echo "  \"machine\": \"$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB\","
  echo "  \"model\": \"bundled (gmmas analyze default), one deterministic pass\","
  echo "  \"cases\": ["
  (IFS=$'\n'; echo "${rows[*]}" | sed '$!s/$/,/' | sed 's/^/    /')
  echo "  ]"
  echo "}"
} > "$out/dicom-real.json"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
d = json.load(open(f"{out}/dicom-real.json"))
lines = [
    "# Real cases through the DICOM path",
    "",
    f"`{d['command']}`, {d['date']}, {d['machine']}; model: {d['model']}.",
    "",
    "Each case is written as a DICOM study (T1 axial, T1ce sagittal, T2 coronal, FLAIR axial),",
    "analysed from the study and from its NIfTI folder; the study's segmentation (on the sagittal",
    "T1ce grid) is brought onto the NIfTI grid through world coordinates and compared.",
    "",
    "| case | DICOM files | voxels equal | Dice WT | Dice TC | Dice ET | NIfTI analyze (s) | DICOM analyze (s) |",
    "|---|---|---|---|---|---|---|---|",
]
for c in d["cases"]:
    a = c["agreement"]
    lines.append(
        f"| {c['case']} | {c['dicom_files']} | {a['voxels_equal']:.6f} | {a['dice']['wt']:.4f} | {a['dice']['tc']:.4f} | "
        f"{a['dice']['et']:.4f} | {c['nifti_s']:.1f} | {c['dicom_s']:.1f} |"
    )
open(f"{out}/README.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
