#!/usr/bin/env bash
# The model v2 recipe against the v1 recipe on fold 0 of the real cases, sized for this CPU:
# both continue the bundled gmmas-small (trained on fold 0's training cases) for the same steps;
# the v2 arm (models/configs/v2/finetune-fold0.toml) adds the weak cases and the v2
# augmentation. Scored on fold 0's 4 held-out real cases with every single and paired missing
# sequence (gmmas eval-missing --combos paper), then flip TTA and the small-ET rule measured on
# the v2 model. Results in models/results/v2-fold0/.
#
#   scripts/v2-fold0.sh [--steps 200] [--device auto]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
steps=200
device=auto
source "$root/scripts/lib.sh"
opts v2-fold0.sh "steps device" "$@"
use_gmmas "$root"
out="$root/out/v2-fold0"
results="$root/models/results/v2-fold0"
mkdir -p "$out/logs" "$results"
log_as v2-fold0
config_phantoms "$root"
fold0_split "$root" "$out" "$device"
copy_model() { cp "$1.safetensors" "$2.safetensors" && cp "$1.json" "$2.json"; }
mkdir -p "$out/base"
[ -f "$out/base/model.safetensors" ] || { copy_model "$root/models/weights/gmmas-small" "$out/base/model"; cp "$out/split.csv" "$out/base/split.csv"; }
# One arm per step count (v2-200, v2-1000, ...): a rerun with other --steps adds an arm.
arm=v2-$steps
if [ ! -f "$out/$arm/model.safetensors" ]; then
  log "training the $arm arm: $steps steps from the bundled model"
  t0=$(date +%s)
  "$gmmas" train --config "$root/models/configs/v2/finetune-fold0.toml" --init "$out/base/model.safetensors" \
    --steps "$steps" --out "$out/$arm" --device "$device" --quiet > "$out/logs/$arm.json" 2> "$out/logs/$arm.log"
  echo "$(( $(date +%s) - t0 ))" > "$out/$arm/train_seconds.txt"
fi
arms=(--arm "base=$out/base")
for d in "$out"/v2-*/; do
  [ -f "$d/model.safetensors" ] && arms+=(--arm "$(basename "$d")=${d%/}")
done
log "scoring ${arms[*]} on the held-out cases with sequences missing"
"$gmmas" eval-missing "${arms[@]}" --data "$shared/brats" \
  --labels "$shared/brats/labels.csv" --subset val --combos paper --device "$device" --out "$out/missing" \
  > /dev/null 2> "$out/logs/eval-missing.log"
cp "$out/missing/missing.md" "$results/missing.md"
cp "$out/missing/missing.json" "$results/missing.json"
# Test-time options on the v2 model: plain, flip TTA, small-ET rule (full input).
for variant in plain tta small-et; do
  extra=()
  case "$variant" in tta) extra=(--tta) ;; small-et) extra=(--min-et-voxels 500) ;; esac
  log "eval v2 ($variant)"
  "$gmmas" eval --model "$out/$arm/model.safetensors" --data "$shared/brats" --labels "$shared/brats/labels.csv" \
    --split "$out/split.csv" --subset val --no-hd95 --device "$device" --out "$out/eval-$arm-$variant" "${extra[@]}" \
    > /dev/null 2> "$out/logs/eval-$arm-$variant.log"
  cp "$out/eval-$arm-$variant/eval.json" "$results/eval-$arm-$variant.json"
done
cat > "$results/run-$arm.json" <<JSON
{"command": "scripts/v2-fold0.sh --steps $steps --device $device", "steps": $steps, "train_seconds": $(cat "$out/$arm/train_seconds.txt"), "finished": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"}
JSON
log "done: $results"
