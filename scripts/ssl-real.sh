#!/usr/bin/env bash
# The learning loop on real data: the real unlabeled scans (../shared/data/unlabeled) and the
# whole-tumour-only cases (../shared/data/weak) added to the real cross-validation folds, with
# the held-out Dice before and after. Writes DIR/cv-real (pooled over the folds run) and a
# summary into --results (default models/results/ssl-real/).
#
#   scripts/ssl-real.sh [--folds "0"] [--steps 200] [--jobs 1] [--device auto] [--out DIR]
#                       [--results DIR] [--base-fold0 bundled|train]
#
# Per fold F (the 5-fold split of models/configs/release-small-cpu.toml, seed 0):
#   base     the fold's supervised model: for fold 0 the bundled gmmas-small (trained with that
#            config on fold 0) unless --base-fold0 train; otherwise out/cv/foldF/vanilla when
#            scripts/cv.sh left it, else trained here with release-small-cpu.toml --fold F
#   control  base + N supervised steps, same labelled cases (equal-steps control)
#   weak     base + N supervised steps, labelled cases + the 5 weak cases
#   ssl      base + N/2 steps of Stage I (weak cases + pseudo-labelled unlabeled scans), then
#            N/2 steps of Stage II (EMA teacher, weak-to-strong consistency) from it
# Every arm trains on the fold's training cases only (the fold's split file, weak cases added
# as training cases), so the held-out real cases are the same for every arm.
# Needs the phantoms of the configs: gmmas phantom --n 24 --seed 1 --out out/phantoms (made
# here when missing). On 2 CPU cores fold 0 with 200 steps took about 40 min; on a GPU the
# folds run side by side (--jobs 5).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/out/ssl-real"
results="$root/models/results/ssl-real"
folds="0"
steps=200
jobs=1
device=auto
base_fold0=bundled
source "$root/scripts/lib.sh"
opts ssl-real.sh "folds steps jobs device out results base-fold0" "$@"
case "$base_fold0" in bundled|train) ;; *) echo "ssl-real.sh: --base-fold0 takes bundled or train" >&2; exit 2 ;; esac
use_gmmas "$root"
cfg="$root/models/configs"
command_line="scripts/ssl-real.sh --folds \"$folds\" --steps $steps --base-fold0 $base_fold0"
mkdir -p "$out" "$results"
log_as ssl-real
config_phantoms "$root"

# A config of models/configs/ssl-real with every path absolute and fold F's folders.
materialize() { # arm fold dest
  sed -e "s#\"\.\./\.\./\.\./\.\./shared/data/#\"$shared/#g" \
      -e "s#\"\.\./\.\./\.\./out/ssl-real/fold0/#\"$out/fold$2/#g" \
      -e "s#\"\.\./\.\./\.\./out/#\"$root/out/#g" \
      -e "s#\"\.\./\.\./weights/#\"$root/models/weights/#g" \
      "$cfg/ssl-real/$1.toml" > "$3"
}

train() { # fold name config [args]
  local f=$1 name=$2 config=$3 d="$out/fold$1"; shift 3
  [ -f "$d/$name/model.safetensors" ] && return 0
  local t0; t0=$(date +%s)
  log "fold $f: $name"
  "$gmmas" train --config "$config" --out "$d/$name" --device "$device" --quiet "$@" \
    > "$d/logs/$name.json" 2> "$d/logs/$name.log"
  echo "$name $(( $(date +%s) - t0 ))" >> "$d/seconds.txt"
}

one_fold() {
  local f=$1 d="$out/fold$1"
  mkdir -p "$d/logs" "$d/cfg" "$d/base"
  # The fold's split (the supervised config's k-fold assignment), read off a one-step run.
  if [ ! -f "$d/split.csv" ]; then
    "$gmmas" train --config "$cfg/release-small-cpu.toml" --fold "$f" --steps 1 --out "$d/split-run" \
      --device "$device" --quiet > /dev/null 2> "$d/logs/split-run.log"
    cp "$d/split-run/split.csv" "$d/base/split.csv"
    { cat "$d/split-run/split.csv"; for w in "$shared"/weak/*/; do printf '%s,train\n' "$(basename "$w")"; done; } \
      > "$d/split.csv.tmp"
    mv "$d/split.csv.tmp" "$d/split.csv"
    rm -rf "$d/split-run"
  fi
  # The base model.
  local base="$d/base/model.safetensors"
  # A model is its weights and the card beside them (model.json).
  copy_model() { cp "$1.safetensors" "$2.safetensors.tmp" && cp "$1.json" "$2.json" && mv "$2.safetensors.tmp" "$2.safetensors"; }
  if [ ! -f "$base" ]; then
    if [ "$f" = 0 ] && [ "$base_fold0" = bundled ]; then
      copy_model "$root/models/weights/gmmas-small" "$d/base/model"
    elif [ -f "$root/out/cv/fold$f/vanilla/model.safetensors" ]; then
      copy_model "$root/out/cv/fold$f/vanilla/model" "$d/base/model"
    else
      train "$f" base-train "$cfg/release-small-cpu.toml" --fold "$f"
      copy_model "$d/base-train/model" "$d/base/model"
    fi
  fi
  local arm
  for arm in control weak stage1 stage2; do materialize "$arm" "$f" "$d/cfg/$arm.toml"; done
  local half=$(( steps / 2 ))
  train "$f" control "$d/cfg/control.toml" --init "$base" --steps "$steps"
  train "$f" weak "$d/cfg/weak.toml" --init "$base" --steps "$steps"
  train "$f" stage1 "$d/cfg/stage1.toml" --init "$base" --steps "$half"
  train "$f" ssl "$d/cfg/stage2.toml" --init "$d/stage1/model.safetensors" --steps "$(( steps - half ))"
}

running=0
for f in $folds; do
  one_fold "$f" > "$out/fold$f.log" 2>&1 &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait
for f in $folds; do
  [ -f "$out/fold$f/ssl/model.safetensors" ] || { log "fold $f failed: see $out/fold$f.log and $out/fold$f/logs/"; exit 1; }
done

arm() { local name=$1 run=$2 dirs=() f; for f in $folds; do dirs+=("$out/fold$f/$run"); done
  (IFS=,; echo "$name=${dirs[*]}"); }
log "evaluating the held-out real cases"
"$gmmas" eval-missing --arm "$(arm base base)" --arm "$(arm control control)" --arm "$(arm weak weak)" \
  --arm "$(arm ssl ssl)" --data "$shared/brats" --labels "$shared/brats/labels.csv" --subset val \
  --combos full --device "$device" --out "$out/cv-real" > /dev/null 2> "$out/eval.log"

python3 - "$out" "$results" "$command_line" "$folds" <<'EOF'
import json, os, shutil, sys
out, results, command, folds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
shutil.copy(os.path.join(out, "cv-real", "missing.json"), os.path.join(results, "cv-real.json"))
shutil.copy(os.path.join(out, "cv-real", "missing.md"), os.path.join(results, "cv-real.md"))
pseudo = {}
for f in folds:
    p = os.path.join(out, f"fold{f}", "stage1", "pseudo_labels.json")
    if os.path.exists(p):
        pseudo[f"fold{f}"] = json.load(open(p))
json.dump(pseudo, open(os.path.join(results, "pseudo_labels.json"), "w"), indent=2)
seconds = {}
for f in folds:
    s = os.path.join(out, f"fold{f}", "seconds.txt")
    if os.path.exists(s):
        seconds[f"fold{f}"] = {k: int(v) for k, v in (l.split() for l in open(s))}
json.dump({"command": command, "folds": folds, "train_seconds": seconds}, open(os.path.join(results, "run.json"), "w"), indent=2)
EOF
log "done: $results/cv-real.md"
