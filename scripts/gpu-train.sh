#!/usr/bin/env bash
# Model v2 on a lent GPU in one go: every training run of models/configs/v2 side by side on
# one device, each stopped by a time budget, then every evaluation, then the tables.
#
#   scripts/gpu-train.sh [--seconds 240] [--ssl-seconds 60] [--folds "0 1 2 3 4"]
#                        [--ablation-folds "0 1 2 3 4"] [--device cuda] [--threads 1]
#                        [--out out/gpu-train] [--results models/results/v2] [--smoke]
#                        [--data-root ../shared/data]
#
# Phase 1 (side by side, --seconds of training each):
#   release       v2/release-medium-cpu.toml on every labelled case (the model to bundle)
#   paper         v2/release-paper-gpu.toml (the paper profile; skipped with --smoke)
#   foldF/cv      v2/cv-medium.toml --fold F                       (Table II/III '+ global fusion')
#   foldF/<abl>   v2/ablation-*.toml --fold F for --ablation-folds (Tables II, III, V)
# Phase 2 (side by side): foldF/ssl1 = Stage I from foldF/cv (--ssl-seconds), then foldF/ssl2 =
#   Stage II from ssl1 (--ssl-seconds)                             (Table II/III '+ semi-supervised')
# Phase 3: gmmas eval-missing over each run's held-out real cases (all 15 sequence subsets for
#   cv, the full input for the rest, the no-global arm also without the tumour filter), the
#   fold-0 models on the unseen phantom test set, and gmmas uncertainty (Fig. 5c) on fold 0.
# Phase 4: scripts/v2-tables.py writes --results (JSON + Markdown per table, with this command).
# Phase 5: inference performance on the device (gmmas bench --mc): one full real case with one
#   pass (fp32 and, on CUDA, fp16), 5 MC passes on the tumour box and over every voxel, and
#   cases/min with 1 and 2 replicas of the released model on one device; into --results/perf.
#
# On a lent GPU machine the real data does not travel with the checkout: scripts/gpu-pack.sh
# packs it (and the binary) into parts, scripts/gpu-unpack.sh unpacks them there into
# out/gpu-data, and --data-root points here (see gpu-pack.sh for the device calls).
# --smoke checks the whole script on a CPU in a few minutes: the tiny profile, 48^3 phantoms
# instead of the real data, 20 s per run, folds "0 1", one ablation fold; its tables say so.
# Every step logs to OUT/logs/; a failed run is named with its log and the script exits 1.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds=240
ssl_seconds=60
folds="0 1 2 3 4"
abl_folds="0 1 2 3 4"
device=cuda
threads=1
out="$root/out/gpu-train"
results="$root/models/results/v2"
smoke=0
data_root="$root/../shared/data"
command_line="scripts/gpu-train.sh $*"
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --ssl-seconds) ssl_seconds="$2"; shift 2 ;;
    --folds) folds="$2"; shift 2 ;;
    --ablation-folds) abl_folds="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    --smoke) smoke=1; shift ;;
    --data-root) data_root="$2"; shift 2 ;;
    *) echo "gpu-train.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$smoke" = 1 ]; then
  seconds=${GPU_TRAIN_SMOKE_SECONDS:-20}; ssl_seconds=10; folds="0 1"; abl_folds="0"; device=cpu
  [ "$out" = "$root/out/gpu-train" ] && out="$root/out/gpu-train-smoke"
  [ "$results" = "$root/models/results/v2" ] && results="$out/results"
fi
if [ -z "${GMMAS_BIN:-}" ]; then source "$root/scripts/env.sh"; fi
gmmas="$GMMAS_BIN/gmmas"
shared="$(cd "$data_root" && pwd)"
mkdir -p "$out/logs" "$out/cfg" "$results"
log() { printf '[gpu-train %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
t_start=$(date +%s)

# Data: the configs' phantoms, the phantom test set (or small phantoms for --smoke).
if [ "$smoke" = 1 ]; then
  [ -f "$out/phantoms/labels.csv" ] || "$gmmas" phantom --n 10 --seed 1 --dims 48,48,40 --out "$out/phantoms" >/dev/null
  [ -f "$out/phantoms-test/labels.csv" ] || "$gmmas" phantom --n 3 --seed 99 --dims 48,48,40 --out "$out/phantoms-test" >/dev/null
  [ -f "$out/unlabeled/labels.csv" ] || "$gmmas" phantom --n 2 --seed 7 --dims 48,48,40 --out "$out/unlabeled" >/dev/null
  real="$out/phantoms"; real_labels="$out/phantoms/labels.csv"; ptest="$out/phantoms-test"
else
  [ -f "$root/out/phantoms/labels.csv" ] || "$gmmas" phantom --n 24 --seed 1 --out "$root/out/phantoms" >/dev/null
  [ -f "$root/out/phantoms-test/labels.csv" ] || "$gmmas" phantom --n 16 --seed 99 --out "$root/out/phantoms-test" >/dev/null
  real="$shared/brats"; real_labels="$shared/brats/labels.csv"; ptest="$root/out/phantoms-test"
fi

# A config of models/configs/v2 with absolute paths (and, for --smoke, the tiny profile on
# the small phantoms).
materialize() { # name dest
  python3 - "$root/models/configs/v2/$1.toml" "$2" "$root" "$shared" "$smoke" "$out" <<'EOF'
import re, sys
src, dest, root, shared, smoke, out = sys.argv[1:]
s = open(src).read()
s = s.replace('"../../../../shared/data/', '"' + shared + '/').replace('"../../../out/', '"' + root + '/out/')
if smoke == "1":
    s = re.sub(r'^dirs = \[.*\]$', f'dirs = ["{out}/phantoms"]', s, count=1, flags=re.M)
    s = re.sub(r'^labels = \[.*\]$', f'labels = ["{out}/phantoms/labels.csv"]', s, count=1, flags=re.M)
    s = re.sub(r'^train_only_dirs = \[.*\]$', 'train_only_dirs = []', s, flags=re.M)
    s = re.sub(r'^dirs = \["[^"]*unlabeled"\]$', f'dirs = ["{out}/unlabeled"]', s, flags=re.M)
    s = re.sub(r'^profile = ".*"$', 'profile = "tiny"', s, flags=re.M)
    s = re.sub(r'^patch = \[.*\]$', 'patch = [32, 32, 32]', s, flags=re.M)
    s = re.sub(r'^batch_size = \d+$', 'batch_size = 1', s, flags=re.M)
    s = re.sub(r'^steps_per_epoch = \d+$', 'steps_per_epoch = 5', s, flags=re.M)
    s = re.sub(r'^mc_passes = \d+$', 'mc_passes = 2', s, flags=re.M)
open(dest, "w").write(s)
EOF
}

pids=(); names=()
launch() { # name config-name [train args...]
  local name=$1 config=$2; shift 2
  mkdir -p "$out/$(dirname "$name")"
  materialize "$config" "$out/cfg/${name//\//-}.toml"
  [ -f "$out/$name/model.safetensors" ] && return 0
  log "start $name"
  "$gmmas" train --config "$out/cfg/${name//\//-}.toml" --out "$out/$name" --device "$device" \
    --threads "$threads" --quiet "$@" > "$out/logs/${name//\//-}.json" 2> "$out/logs/${name//\//-}.log" &
  pids+=($!); names+=("$name")
}
wait_all() { # phase
  local i failed=0
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      log "FAILED ${names[$i]}: see $out/logs/${names[$i]//\//-}.log"; failed=1
    fi
  done
  pids=(); names=()
  [ "$failed" = 0 ] || { log "$1 failed"; exit 1; }
  log "$1 done ($(( $(date +%s) - t_start )) s since start)"
}

ablations="ablation-no-global ablation-convnet ablation-seg-only ablation-cls-only ablation-plain-sum"
log "phase 1: supervised runs, $seconds s each, on $device"
launch release release-medium-cpu --max-seconds "$seconds"
[ "$smoke" = 1 ] || launch paper release-paper-gpu --max-seconds "$seconds"
for f in $folds; do launch "fold$f/cv" cv-medium --fold "$f" --max-seconds "$seconds"; done
for f in $abl_folds; do
  for a in $ablations; do launch "fold$f/${a#ablation-}" "$a" --fold "$f" --max-seconds "$seconds"; done
done
wait_all "phase 1"

log "phase 2: semi-supervised stages, $ssl_seconds s each"
for f in $folds; do
  (
    set -e
    if [ ! -f "$out/fold$f/ssl1/model.safetensors" ]; then
      materialize ssl-1-pseudo "$out/cfg/fold$f-ssl1.toml"
      "$gmmas" train --config "$out/cfg/fold$f-ssl1.toml" --out "$out/fold$f/ssl1" --device "$device" \
        --threads "$threads" --quiet --fold "$f" --init "$out/fold$f/cv/model.safetensors" \
        --labeller "$out/fold$f/cv/model.safetensors" --max-seconds "$ssl_seconds" \
        > "$out/logs/fold$f-ssl1.json" 2> "$out/logs/fold$f-ssl1.log"
    fi
    if [ ! -f "$out/fold$f/ssl2/model.safetensors" ]; then
      materialize ssl-2-consistency "$out/cfg/fold$f-ssl2.toml"
      "$gmmas" train --config "$out/cfg/fold$f-ssl2.toml" --out "$out/fold$f/ssl2" --device "$device" \
        --threads "$threads" --quiet --fold "$f" --init "$out/fold$f/ssl1/model.safetensors" \
        --max-seconds "$ssl_seconds" > "$out/logs/fold$f-ssl2.json" 2> "$out/logs/fold$f-ssl2.log"
    fi
  ) &
  pids+=($!); names+=("fold$f/ssl")
done
wait_all "phase 2"

log "phase 3: evaluations"
arm() { # name run [folds]
  local name=$1 run=$2 fs=${3:-$folds} dirs=() f
  for f in $fs; do dirs+=("$out/fold$f/$run"); done
  (IFS=,; echo "$name=${dirs[*]}")
}
evaluate() { # name [eval-missing args...]
  local name=$1; shift
  "$gmmas" eval-missing --data "$real" --labels "$real_labels" --device "$device" --threads "$threads" \
    --out "$out/eval/$name" "$@" > /dev/null 2> "$out/logs/eval-$name.log" &
  pids+=($!); names+=("eval-$name")
}
evaluate cv-missing --arm "$(arm cv cv)" --subset val --combos all
evaluate cv-ssl --arm "$(arm cv cv)" --arm "$(arm ssl ssl2)" --subset val --combos full
abl_arms=()
for a in $ablations; do abl_arms+=(--arm "$(arm "${a#ablation-}" "${a#ablation-}" "$abl_folds")"); done
evaluate ablations --arm "$(arm cv cv "$abl_folds")" "${abl_arms[@]}" --subset val --combos full
evaluate original --arm "$(arm no-global no-global "$abl_folds")" --subset val --combos full --postprocess none
# Classification on the unseen phantoms, fold-0 models (Table III's phantom part).
first=${folds%% *}
ph_arms=(--arm "cv=$out/fold$first/cv" --arm "ssl=$out/fold$first/ssl2")
for a in $ablations; do ph_arms+=(--arm "${a#ablation-}=$out/fold${abl_folds%% *}/${a#ablation-}"); done
"$gmmas" eval-missing --data "$ptest" --labels "$ptest/labels.csv" --device "$device" --threads "$threads" \
  --out "$out/eval/phantoms" "${ph_arms[@]}" --subset all --combos full > /dev/null 2> "$out/logs/eval-phantoms.log" &
pids+=($!); names+=("eval-phantoms")
# Fig. 5c: MC-Dropout uncertainty against error on fold 0's held-out real cases.
heldout="$out/heldout-fold$first"
rm -rf "$heldout"; mkdir -p "$heldout"
python3 - "$out/fold$first/cv/split.csv" "$real" "$heldout" <<'EOF'
import csv, os, sys
split, real, dest = sys.argv[1:]
for row in csv.DictReader(open(split)):
    src = os.path.join(real, row["case"])
    if row["subset"] == "val" and os.path.isdir(src):
        os.symlink(src, os.path.join(dest, row["case"]))
EOF
"$gmmas" uncertainty --weights "$out/fold$first/cv/model.safetensors" --cases "$heldout" --labels "$real_labels" \
  --mc-passes 8 --device "$device" --threads "$threads" --out "$out/eval/uncertainty" \
  > /dev/null 2> "$out/logs/eval-uncertainty.log" &
pids+=($!); names+=("eval-uncertainty")
wait_all "phase 3"

log "phase 4: tables"
python3 "$root/scripts/v2-tables.py" --out "$out" --results "$results" --command "$command_line" \
  --folds "$folds" --ablation-folds "$abl_folds" --seconds "$seconds" --ssl-seconds "$ssl_seconds" \
  --device "$device" --smoke "$smoke" --wall-seconds "$(( $(date +%s) - t_start ))"
log "phase 5: inference performance"
mkdir -p "$results/perf"
perf_case="$real/$(ls "$real" | grep -v '\.csv$' | head -n 1)"
perf_model="$out/release/model.safetensors"
[ -f "$perf_model" ] || perf_model="$root/models/weights/gmmas-small.safetensors"
if "$gmmas" bench --mc-case "$perf_case" --model "$perf_model" --skip-pipeline --mc 5 --repeats 3 --queue 20 \
  --workers 1,2 --json "$results/perf/bench.json" > "$results/perf/bench.txt" 2> "$out/logs/perf.log"; then
  log "perf: $(grep -c . "$results/perf/bench.txt") lines in $results/perf/bench.txt"
else
  log "perf failed (see $out/logs/perf.log); the tables above stand"
fi
log "done in $(( $(date +%s) - t_start )) s: $results; release model: $out/release/model.safetensors"
