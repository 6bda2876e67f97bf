#!/usr/bin/env bash
# What the network reads in place of a missing sequence, measured: the bundled model (trained on
# fold 0's training cases) scored on fold 0's 4 held-out real cases with every single and paired
# missing sequence, once with the channel zeroed and left out (`--fill zero`, the default) and
# once with a present sequence of similar contrast standing in (`--fill substitute`: T2 for
# FLAIR, FLAIR for T2, T1 for T1CE, T1CE for T1). The bundled adapted model, which the services
# route incomplete cases to, is scored with zeros beside them. A third pass scores both with zeros
# and BatchNorm normalising by the case's own statistics when a sequence is missing
# (`--norm-stats case-if-missing`). Results in models/results/missing-fill/.
#
#   scripts/missing-fill.sh [--device auto] [--variants "zero substitute case-norm"]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
device=auto
variants="zero substitute case-norm"
source "$root/scripts/lib.sh"
opts missing-fill.sh "device variants" "$@"
use_gmmas "$root"
out="$root/out/missing-fill"
results="$root/models/results/missing-fill"
mkdir -p "$out/logs" "$results"
log_as missing-fill
config_phantoms "$root"
fold0_split "$root" "$out" "$device"
arm() {
  mkdir -p "$out/$1"
  cp "$root/models/weights/$2.safetensors" "$out/$1/model.safetensors"
  cp "$root/models/weights/$2.json" "$out/$1/model.json"
  cp "$out/split.csv" "$out/$1/split.csv"
}
arm bundled gmmas-small
arm adapted gmmas-small-adapted
for fill in $variants; do
  arms=(--arm "bundled=$out/bundled")
  [ "$fill" = substitute ] || arms+=(--arm "adapted=$out/adapted")
  case "$fill" in
    zero) flags=(--fill zero) ;;
    substitute) flags=(--fill substitute) ;;
    case-norm) flags=(--fill zero --norm-stats case-if-missing) ;;
    *) echo "missing-fill.sh: unknown variant $fill (expected zero, substitute or case-norm)" >&2; exit 2 ;;
  esac
  log "scoring with ${flags[*]}"
  t0=$(date +%s)
  "$gmmas" eval-missing "${arms[@]}" --data "$shared/brats" --labels "$shared/brats/labels.csv" \
    --subset val --combos paper --device "$device" "${flags[@]}" --out "$out/$fill" \
    > /dev/null 2> "$out/logs/eval-$fill.log"
  echo "$(( $(date +%s) - t0 ))" > "$out/$fill/seconds.txt"
  cp "$out/$fill/missing.json" "$results/missing-$fill.json"
  cp "$out/$fill/missing.md" "$results/missing-$fill.md"
done
python3 "$root/scripts/missing-fill-table.py" "$results" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
log "done: $results/README.md"
