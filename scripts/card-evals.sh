#!/usr/bin/env bash
# The model card's measured numbers for the bundled pair, regenerated on this CPU and written
# with their commands to models/results/:
#   fold0-real/    gmmas eval of both bundled models on fold 0's 4 held-out real cases (Dice, HD95)
#   phantom-test/  gmmas eval of both on the 16 unseen test phantoms (Dice, HD95, AUC, acc, F1, ECE)
#   flair-only/    gmmas analyze of Brats18_2013_23_1 from its FLAIR alone (both models) and from
#                  all four sequences: whole-tumour and sub-region volumes
#   scripts/card-evals.sh [--parts "fold0-real phantom-test flair-only"] [--threads 2]
# Each evaluated case takes several seconds on 2 cores; eval.json records the time per case.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
parts="fold0-real phantom-test flair-only"
threads=2
source "$root/scripts/lib.sh"
opts card-evals.sh "parts threads" "$@"
use_gmmas "$root"
log_as card-evals
out="$root/out/card-evals"
results="$root/models/results"
weights="$root/models/weights"
models=(gmmas-small gmmas-small-adapted)
mkdir -p "$out/logs"
cd "$root"
# What made the numbers: the binary's sha256 and the commit it was run at (dirty: uncommitted
# changes in the working tree, which the binary may include).
dirty=$(git status --porcelain --untracked-files=no | grep -q . && echo ", working tree with uncommitted changes" || true)
export CARD_EVALS_BUILD="binary sha256 \`$(sha256sum "$gmmas" | cut -c1-16)…\`, run at commit \`$(git rev-parse --short HEAD)\`$dirty"

# eval_pair TOPIC TITLE COMMAND_DESCRIPTION ARGS...: gmmas eval of both bundled models with ARGS,
# eval.json / eval.md copied to models/results/TOPIC/eval-<model>.{json,md}, and README.md
# (the commands and the card's table) written from the two JSON files.
eval_pair() {
  local topic="$1" title="$2" what="$3"
  shift 3
  mkdir -p "$results/$topic"
  local cmds=()
  for m in "${models[@]}"; do
    local args=(eval --model "models/weights/$m.safetensors" "$@" --threads "$threads" --device cpu
      --out "out/card-evals/$topic/$m")
    cmds+=("gmmas ${args[*]}")
    log "$topic: $m"
    "$gmmas" "${args[@]}" > /dev/null 2> "$out/logs/$topic-$m.log"
    cp "$out/$topic/$m/eval.json" "$results/$topic/eval-$m.json"
    cp "$out/$topic/$m/eval.md" "$results/$topic/eval-$m.md"
  done
  python3 - "$results/$topic" "$title" "$what" "${cmds[@]}" <<'PY'
import json, os, sys, datetime
folder, title, what, *cmds = sys.argv[1:]
ev = {m: json.load(open(f"{folder}/eval-{m}.json")) for m in ("gmmas-small", "gmmas-small-adapted")}
a, b = ev["gmmas-small"], ev["gmmas-small-adapted"]
def ms(s, f):
    return f"{s['mean']:{f}} ± {s['std']:{f}}" if s["n"] else "–"
lines = [f"# {title}", "",
         f"Written by `scripts/card-evals.sh` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ} "
         "(2-core CPU, one deterministic pass, tumour filter on). " + what, "",
         "```sh", "source scripts/env.sh", *[c.replace("gmmas ", "$GMMAS_BIN/gmmas ", 1) for c in cmds], "```", "",
         f"Models: `{a['model']}` and `{b['model']}`; {a['cases_evaluated']} and {b['cases_evaluated']} "
         f"case(s); data sha256 `{a['data_sha256']}`"
         + ("" if a["data_sha256"] == b["data_sha256"] else f" / `{b['data_sha256']}`") + ".", "",
         "| region | gmmas-small Dice | HD95 mm | gmmas-small-adapted Dice | HD95 mm |", "|---|---|---|---|---|"]
for ra, rb in zip(a["regions"], b["regions"]):
    lines.append(f"| {ra['region']} | {ms(ra['dice'], '.3f')} | {ms(ra['hd95'], '.1f')} | "
                 f"{ms(rb['dice'], '.3f')} | {ms(rb['hd95'], '.1f')} |")
lines += ["", "HD95 mean ± std over the cases where it is defined (n and the undefined count per region are in "
          "`eval-<model>.md`).", "",
          "| task | n | positives | gmmas-small AUC / acc / F1 / ECE | gmmas-small-adapted AUC / acc / F1 / ECE |",
          "|---|---|---|---|---|"]
def cls(m):
    x = m["metrics"]
    f = lambda v: "–" if v is None else f"{v:.3f}"
    ece = (x.get("calibration") or {}).get("ece")
    return f"{f(x.get('auc'))} / {f(x.get('accuracy'))} / {f(x.get('f1'))} / {f(ece)}"
for ta, tb in zip(a["tasks"], b["tasks"]):
    lines.append(f"| {ta['task']} | {ta['metrics']['n']} | {ta['metrics']['positives']} | {cls(ta)} | {cls(tb)} |")
lines += ["", "Per-case rows, reliability bins and timings: `eval-gmmas-small.md`, `eval-gmmas-small-adapted.md` "
          "(and their JSON).", "", "Build: " + os.environ.get("CARD_EVALS_BUILD", "not recorded") + "."]
open(f"{folder}/README.md", "w").write("\n".join(lines) + "\n")
PY
  log "$topic: written $results/$topic/README.md"
}

for part in $parts; do
  case "$part" in
    fold0-real)
      # Fold 0's held-out cases as the bundled model's card records them (training.notes.cases.val).
      mkdir -p "$out/fold0-real"
      python3 - "$weights/gmmas-small.json" "$out/fold0-real/split.csv" <<'PY'
import json, sys
cases = json.load(open(sys.argv[1]))["training"]["notes"]["cases"]
rows = ["case,subset"] + [f"{c},val" for c in cases["val"] if not c.startswith("Phantom_")]
open(sys.argv[2], "w").write("\n".join(rows) + "\n")
PY
      eval_pair fold0-real "The bundled pair on fold 0's 4 held-out real cases" \
        "The split is fold 0 as recorded in \`models/weights/gmmas-small.json\` (\`training.notes.cases\`; the real cases only), written to \`out/card-evals/fold0-real/split.csv\` by the script. Four cases: the classification numbers below mean nothing (the card says so)." \
        --data ../shared/data/brats --labels ../shared/data/brats/labels.csv \
        --split out/card-evals/fold0-real/split.csv --subset val
      ;;
    phantom-test)
      if [ ! -f "$root/out/phantoms-test/labels.csv" ]; then
        log "making the unseen test phantoms (out/phantoms-test)"
        "$gmmas" phantom --n 16 --seed 99 --out "$root/out/phantoms-test" > /dev/null
      fi
      eval_pair phantom-test "The bundled pair on the 16 unseen test phantoms" \
        "Test phantoms: \`gmmas phantom --n 16 --seed 99 --out out/phantoms-test\` (never trained on)." \
        --data out/phantoms-test --labels out/phantoms-test/labels.csv
      ;;
    flair-only)
      case_name=Brats18_2013_23_1
      src="$shared/brats/$case_name"
      mkdir -p "$out/flair-only/input/$case_name" "$results/flair-only"
      ln -sf "$src/${case_name}_flair.nii.gz" "$out/flair-only/input/$case_name/${case_name}_flair.nii.gz"
      cmds=()
      for run in full:gmmas-small flair:gmmas-small flair:gmmas-small-adapted; do
        input="${run%%:*}" m="${run#*:}"
        dir="../shared/data/brats/$case_name"
        [ "$input" = flair ] && dir="out/card-evals/flair-only/input/$case_name"
        args=(analyze "$dir" --model "models/weights/$m.safetensors" --device cpu --out "out/card-evals/flair-only/$input-$m")
        cmds+=("gmmas ${args[*]}")
        log "flair-only: $input input, $m"
        "$gmmas" "${args[@]}" > /dev/null 2> "$out/logs/flair-only-$input-$m.log"
        cp "$out/flair-only/$input-$m/${case_name}_analysis.json" "$results/flair-only/$input-$m.json"
      done
      python3 - "$results/flair-only" "$src/${case_name}_seg.nii.gz" "${cmds[@]}" <<'PY'
import json, os, sys, datetime, gzip, struct, array
from collections import Counter
folder, seg, *cmds = sys.argv[1:]
# The expert segmentation's volumes (NIfTI-1 label map: 1 NCR, 2 ED, 4 ET), for reference.
raw = gzip.open(seg).read()
dims = struct.unpack("<8h", raw[40:56])
datatype, = struct.unpack("<h", raw[70:72])
pix = struct.unpack("<8f", raw[76:108])
offset = int(struct.unpack("<f", raw[108:112])[0])
codes = {2: "B", 4: "h", 512: "H", 8: "i", 16: "f"}
assert datatype in codes, f"unexpected NIfTI datatype {datatype} in {seg}"
labels = array.array(codes[datatype])
labels.frombytes(raw[offset:offset + dims[1] * dims[2] * dims[3] * labels.itemsize])
counts = Counter(labels)
ml = pix[1] * pix[2] * pix[3] / 1000.0
truth = {lab: counts.get(lab, 0) * ml for lab in (1, 2, 4)}
runs = []
for name in ("full-gmmas-small", "flair-gmmas-small", "flair-gmmas-small-adapted"):
    d = json.load(open(f"{folder}/{name}.json"))
    runs.append((name, d))
lines = ["# Brats18_2013_23_1 from its FLAIR alone", "",
         f"Written by `scripts/card-evals.sh --parts flair-only` on "
         f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%MZ} (2-core CPU, one deterministic pass). "
         "The FLAIR-only input is a folder holding a link to the case's FLAIR and nothing else.", "",
         "```sh", "source scripts/env.sh", *[c.replace("gmmas ", "$GMMAS_BIN/gmmas ", 1) for c in cmds], "```", "",
         "| input | model | WT mL | TC mL | ED mL | ET mL | NCR mL |", "|---|---|---|---|---|---|---|"]
for name, d in runs:
    r = d["regions"]
    inp = "all four sequences" if name.startswith("full") else "FLAIR only"
    lines.append(f"| {inp} | `{d['model_version']}` | {r['wt_ml']:.1f} | {r['tc_ml']:.1f} | {r['ed_ml']:.1f} | "
                 f"{r['et_ml']:.1f} | {r['ncr_ml']:.1f} |")
wt = sum(truth.values())
lines.append(f"| expert segmentation | – | {wt:.1f} | {truth[1] + truth[4]:.1f} | {truth[2]:.1f} | {truth[4]:.1f} | {truth[1]:.1f} |")
lines += ["", "Each run's analysis JSON (volumes, probabilities, input hashes, timings) is beside this file "
          "(`full-gmmas-small.json`, `flair-gmmas-small.json`, `flair-gmmas-small-adapted.json`); the expert "
          "volumes are counted from `Brats18_2013_23_1_seg.nii.gz` by the script.", "",
          "Build: " + os.environ.get("CARD_EVALS_BUILD", "not recorded") + "."]
open(f"{folder}/README.md", "w").write("\n".join(lines) + "\n")
PY
      log "flair-only: written $results/flair-only/README.md"
      ;;
    *) echo "card-evals.sh: unknown part $part (fold0-real, phantom-test, flair-only)" >&2; exit 2 ;;
  esac
done
