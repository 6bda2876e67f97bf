#!/usr/bin/env bash
# Packs what scripts/gpu-train.sh needs on a lent GPU machine into parts that each fit one
# device call beside the working tree (the real data beside the checkout does not travel):
# out/gpu-carry/bin (the stripped gmmas binary) and out/gpu-carry/pN (the real cases of
# ../shared/data re-compressed with xz, at most --part-mib MiB each).
#
#   scripts/gpu-pack.sh [--part-mib 36]
#
# Then, with the machine warm between calls (it is released after a short idle time), one
# device call per part naming only that part in carry (earlier parts stay there), and last:
#   carry ["out/gpu-carry/bin", "out/gpu-carry/pN"], command
#   bash scripts/gpu-unpack.sh && GMMAS_BIN=out/gpu-carry/bin \
#     LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib \
#     bash scripts/gpu-train.sh --data-root out/gpu-data --results "$OUT/v2" && \
#     cp out/gpu-train/release/model.safetensors out/gpu-train/release/model.json "$OUT/"
# out/gpu-carry/manifest.txt lists every file with its sha256 and part; gpu-unpack.sh checks them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
part_mib=36
while [ $# -gt 0 ]; do
  case "$1" in
    --part-mib) part_mib="$2"; shift 2 ;;
    *) echo "gpu-pack.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "${GMMAS_BIN:-}" ]; then source "$root/scripts/env.sh"; fi
shared="$(cd "$root/../shared/data" && pwd)"
dest="$root/out/gpu-carry"
rm -rf "$dest"; mkdir -p "$dest/bin"
cp "$GMMAS_BIN/gmmas" "$dest/bin/gmmas"; strip "$dest/bin/gmmas"
python3 - "$shared" "$dest" "$part_mib" <<'PY'
import gzip, hashlib, lzma, os, sys
shared, dest, part_mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
limit = part_mib * 1024 * 1024
files = []
for sub in ["brats", "weak", "unlabeled"]:
    for dirpath, _, names in os.walk(os.path.join(shared, sub)):
        for n in sorted(names):
            files.append(os.path.relpath(os.path.join(dirpath, n), shared))
files.sort()
part, used, manifest = 1, 0, []
for rel in files:
    raw = open(os.path.join(shared, rel), "rb").read()
    if rel.endswith(".gz"):
        raw, rel = gzip.decompress(raw), rel[:-3]
    packed = lzma.compress(raw, preset=6)
    if used and used + len(packed) > limit:
        part, used = part + 1, 0
    out = os.path.join(dest, f"p{part}", rel + ".xz")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    open(out, "wb").write(packed)
    used += len(packed)
    manifest.append(f"{hashlib.sha256(raw).hexdigest()}  p{part}  {rel}")
open(os.path.join(dest, "manifest.txt"), "w").write("\n".join(manifest) + "\n")
print(f"{len(files)} files in {part} part(s) of at most {part_mib} MiB")
PY
cp "$dest/manifest.txt" "$dest/bin/manifest.txt"
du -sh "$dest"/* >&2
