#!/usr/bin/env bash
# On the GPU machine: unpacks the parts of scripts/gpu-pack.sh (out/gpu-carry/p*) into
# out/gpu-data/{brats,weak,unlabeled} and checks every file against the manifest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/out/gpu-carry"
dest="$root/out/gpu-data"
python3 - "$src" "$dest" <<'PY'
import hashlib, lzma, os, sys
src, dest = sys.argv[1:]
missing, bad = [], []
for line in open(os.path.join(src, "bin", "manifest.txt")):
    sha, part, rel = line.split(None, 2)
    rel = rel.strip()
    out = os.path.join(dest, rel)
    if os.path.exists(out) and hashlib.sha256(open(out, "rb").read()).hexdigest() == sha:
        continue
    packed = os.path.join(src, part, rel + ".xz")
    if not os.path.exists(packed):
        missing.append(f"{part}/{rel}")
        continue
    raw = lzma.decompress(open(packed, "rb").read())
    if hashlib.sha256(raw).hexdigest() != sha:
        bad.append(rel)
        continue
    os.makedirs(os.path.dirname(out), exist_ok=True)
    open(out, "wb").write(raw)
if missing or bad:
    sys.exit(f"gpu-unpack: {len(missing)} file(s) missing (parts not carried yet?), e.g. {missing[:3]}; "
             f"{len(bad)} corrupt: {bad[:3]}")
print(f"gpu-unpack: data ready in {dest}")
PY
