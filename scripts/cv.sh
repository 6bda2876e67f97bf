#!/usr/bin/env bash
# k-fold cross-validation of vanilla training against the adaptation module, then the
# missing-sequence tables (paper Tables VII/VIII, Fig. 10) over the held-out real cases.
#
#   scripts/cv.sh [--out DIR] [--folds "0 1 2 3 4"] [--jobs N] [--device auto] [--skip-train] [--skip-eval]
#                 [--configs DIR] [--train-args "--steps 4"] [--real DIR] [--phantoms-test DIR]
#
# Per fold F (all folds of one config share data and split seed; --fold picks the held-out one):
#   DIR/foldF/vanilla      gmmas train --config models/configs/release-small-cpu.toml --fold F
#   DIR/foldF/distill      stage 1, from vanilla          (models/configs/adapt-1-distill.toml)
#   DIR/foldF/contrastive  stage 2, from distill          (models/configs/adapt-2-contrastive.toml)
#   DIR/foldF/finetune     stage 3, from contrastive      (models/configs/adapt-3-finetune.toml)
# then
#   DIR/missing-real       gmmas eval-missing over every fold's held-out real cases
#   DIR/missing-phantoms   the same on unseen phantoms (out/phantoms-test), fold-0 models
#   DIR/cv-real            Dice and HD95 over the pooled held-out real cases, full input
# Needs the phantoms of the configs: gmmas phantom --n 24 --seed 1 --out out/phantoms, and
# gmmas phantom --n 16 --seed 99 --out out/phantoms-test. On 2 CPU cores the supervised run
# of a fold took 22.6 min (measured) and the three stages add an estimated 25 min; on a GPU
# the folds run side by side (--jobs).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/out/cv"
folds="0 1 2 3 4"
jobs=1
device=auto
skip_train=0
skip_eval=0
cfg="$root/models/configs"
real="$root/../shared/data/brats"
ptest="$root/out/phantoms-test"
train_args=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --folds) folds="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --skip-train) skip_train=1; shift ;;
    --skip-eval) skip_eval=1; shift ;;
    --configs) cfg="$(cd "$2" && pwd)"; shift 2 ;;
    --train-args) train_args="$2"; shift 2 ;;
    --real) real="$2"; shift 2 ;;
    --phantoms-test) ptest="$2"; shift 2 ;;
    *) echo "cv.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "${GMMAS_BIN:-}" ]; then source "$root/scripts/env.sh"; fi
gmmas="$GMMAS_BIN/gmmas"
mkdir -p "$out"
log() { printf '[cv %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

one_fold() {
  local f=$1 d="$out/fold$1"
  mkdir -p "$d"
  # shellcheck disable=SC2206
  local common=(--fold "$f" --device "$device" --quiet $train_args)
  [ -f "$d/vanilla/model.safetensors" ] ||
    "$gmmas" train --config "$cfg/release-small-cpu.toml" --out "$d/vanilla" "${common[@]}" >"$d/vanilla.json"
  [ -f "$d/distill/model.safetensors" ] ||
    "$gmmas" train --config "$cfg/adapt-1-distill.toml" --out "$d/distill" \
      --init "$d/vanilla/model.safetensors" "${common[@]}" >"$d/distill.json"
  [ -f "$d/contrastive/model.safetensors" ] ||
    "$gmmas" train --config "$cfg/adapt-2-contrastive.toml" --out "$d/contrastive" \
      --init "$d/distill/model.safetensors" "${common[@]}" >"$d/contrastive.json"
  [ -f "$d/finetune/model.safetensors" ] ||
    "$gmmas" train --config "$cfg/adapt-3-finetune.toml" --out "$d/finetune" \
      --init "$d/contrastive/model.safetensors" "${common[@]}" >"$d/finetune.json"
}

if [ "$skip_train" = 0 ]; then
  running=0
  for f in $folds; do
    log "fold $f: training (log $out/fold$f.log)"
    one_fold "$f" >"$out/fold$f.log" 2>&1 &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
  done
  wait
  for f in $folds; do
    [ -f "$out/fold$f/finetune/model.safetensors" ] || { log "fold $f failed: see $out/fold$f.log"; exit 1; }
  done
fi

[ "$skip_eval" = 1 ] && exit 0

arm() { local name=$1 stage=$2 dirs=() f; for f in $folds; do dirs+=("$out/fold$f/$stage"); done
  (IFS=,; echo "$name=${dirs[*]}"); }
first=$(echo "$folds" | awk '{print $1}')
log "missing-sequence tables"
"$gmmas" eval-missing --arm "$(arm vanilla vanilla)" --arm "$(arm adapted finetune)" \
  --data "$real" --labels "$real/labels.csv" --subset val --combos paper \
  --device "$device" --out "$out/missing-real" &
"$gmmas" eval-missing --arm "vanilla=$out/fold$first/vanilla" --arm "adapted=$out/fold$first/finetune" \
  --data "$ptest" --labels "$ptest/labels.csv" --subset all --combos paper \
  --device "$device" --out "$out/missing-phantoms" &
"$gmmas" eval-missing --arm "$(arm vanilla vanilla)" --arm "$(arm adapted finetune)" \
  --data "$real" --labels "$real/labels.csv" --subset val --combos full --hd95 \
  --device "$device" --out "$out/cv-real" &
wait
log "done: $out/cv-real/missing.md (Dice and HD95, full input), $out/missing-real/missing.md, $out/missing-phantoms/missing.md"
