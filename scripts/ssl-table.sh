#!/usr/bin/env bash
# Paper Table VI analogue on phantoms: supervised-20%, FixMatch, Stage I only, Stage II only,
# both stages, supervised-100%, plus a "supervised-20% continued" control, then every model
# evaluated on unseen phantoms. Writes models/results/ssl/table.{json,md} (or --results DIR).
#
#   scripts/ssl-table.sh [--steps N] [--pool N] [--test N] [--dims X,Y,Z] [--results DIR]
#
# Data (out/ssl-table): a pool of --pool phantoms (seed 21); its first 20 % are labelled
# (labelled.csv), the rest are the unlabeled set (unlabeled.csv: their labels are never read
# by the SSL arms); --test unseen phantoms (seed 22) for the evaluation.
# Arms (models/configs/ssl-table/*.toml, tiny profile, decoder dropout 0.1):
#   sup-20            from scratch, labelled 20 %, N steps
#   sup-100           from scratch, the whole pool with labels, N steps (upper bound)
#   sup-20-continued  sup-20 + N steps on the labelled cases (control for the extra steps)
#   fixmatch          sup-20 + N steps, single confidence threshold 0.95
#   stage1            sup-20 pseudo-labels the unlabeled set, + N steps on both
#   stage2            sup-20 + N steps of weak-to-strong consistency (EMA teacher)
#   both              stage1 with N/2 steps, then stage2 from it with N/2 steps
# Every SSL arm and the control add N steps to sup-20 (same learning-rate schedule).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/env.sh
source "$root/scripts/env.sh"
steps=200
pool=20
test=12
dims=48,48,40
results="$root/models/results/ssl"
source "$root/scripts/lib.sh"
opts ssl-table.sh "steps pool test dims results" "$@"
test_n="$test"
command_line="scripts/ssl-table.sh --steps $steps --pool $pool --test $test_n --dims $dims"
bin="$GMMAS_BIN/gmmas"
cfg="$root/models/configs/ssl-table"
t="$root/out/ssl-table"
rm -rf "$t"
mkdir -p "$t/logs" "$t/eval" "$results"
cd "$root"

"$bin" phantom --n "$pool" --seed 21 --dims "$dims" --out "$t/pool" > /dev/null
"$bin" phantom --n "$test_n" --seed 22 --dims "$dims" --out "$t/test" > /dev/null
labelled=$(( pool / 5 ))
{ echo "case,subset"; for ((i = 0; i < labelled; i++)); do printf 'Phantom_%04d,train\n' "$i"; done; } > "$t/labelled.csv"
{ echo "case,subset"; for ((i = labelled; i < pool; i++)); do printf 'Phantom_%04d,train\n' "$i"; done; } > "$t/unlabeled.csv"
echo "pool $pool phantoms ($labelled labelled), $test_n test phantoms, dims $dims, $steps steps per arm" >&2

train() { # name config [extra args]
  local name="$1" config="$2"; shift 2
  local t0; t0=$(date +%s)
  echo "== $name: gmmas train --config models/configs/ssl-table/$config.toml $*" >&2
  "$bin" train --config "$cfg/$config.toml" --out "$t/runs/$name" "$@" --quiet \
    > "$t/logs/$name.json" 2> "$t/logs/$name.log"
  echo "$name $(( $(date +%s) - t0 ))" >> "$t/seconds.txt"
}
half=$(( steps / 2 ))
train sup-20 sup-20 --steps "$steps"
train sup-100 sup-100 --steps "$steps"
train sup-20-continued sup-20-continued --steps "$steps"
train fixmatch fixmatch --steps "$steps"
train stage1 stage1 --steps "$steps"
train stage2 stage2 --steps "$steps"
train both-stage1 stage1 --steps "$half"
train both both --steps "$(( steps - half ))"

arms="sup-20 fixmatch stage1 stage2 both sup-100 sup-20-continued"
for arm in $arms; do
  "$bin" eval --model "$t/runs/$arm/model.safetensors" --data "$t/test" --labels "$t/test/labels.csv" \
    --out "$t/eval/$arm" --no-hd95 --threads 2 --device cpu > /dev/null 2> "$t/logs/eval-$arm.log"
done

python3 - "$t" "$results" "$command_line" "$arms" <<'EOF'
import json, sys, os
t, results, command, arms = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
label = {"sup-20": "Supervised 20 %", "fixmatch": "FixMatch (one threshold)", "stage1": "Stage I only",
         "stage2": "Stage II only", "both": "Two-stage SSL", "sup-100": "Supervised 100 %",
         "sup-20-continued": "Supervised 20 % + same extra steps (control)"}
seconds = dict(l.split() for l in open(os.path.join(t, "seconds.txt")))
rows = []
for arm in arms:
    e = json.load(open(os.path.join(t, "eval", arm, "eval.json")))
    reg = {r["region"]: r["dice"] for r in e["regions"]}
    tasks = {x["task"]: x["metrics"] for x in e["tasks"]}
    def mean_of(key):
        v = [m[key] for m in tasks.values() if m.get(key) is not None]
        return (sum(v) / len(v), len(v)) if v else (None, 0)
    pseudo = None
    for run in ([arm] if arm != "both" else ["both-stage1"]):
        p = os.path.join(t, "runs", run, "pseudo_labels.json")
        if os.path.exists(p):
            pl = json.load(open(p))
            c = [x["counts"] for x in pl["cases"]]
            pseudo = {"cases": len(c),
                      "accepted_voxel_fraction": sum(x["accepted_voxels"] for x in c) / max(1, sum(x["voxels"] for x in c)),
                      "accepted_tumour_voxels": sum(x["accepted_tumour_voxels"] for x in c),
                      "predicted_tumour_voxels": sum(x["predicted_tumour_voxels"] for x in c),
                      "accepted_task_labels": sum(x["accepted_tasks"] for x in c),
                      "task_labels_possible": 4 * len(c)}
    train_s = seconds.get(arm)
    if arm == "both":
        train_s = str(int(seconds["both-stage1"]) + int(seconds["both"]))
    rows.append({"arm": arm, "label": label[arm], "model": e["model"], "cases": e["cases_evaluated"],
                 "dice": {k: reg[k] for k in ("WT", "TC", "ED", "ET") if k in reg},
                 "tasks": tasks, "mean_auc": mean_of("auc"), "mean_accuracy": mean_of("accuracy"),
                 "mean_f1": mean_of("f1"), "pseudo_labels": pseudo, "train_seconds": int(train_s)})
out = {"command": command, "rows": rows}
json.dump(out, open(os.path.join(results, "table.json"), "w"), indent=2)
f = lambda d: f"{d['mean']:.3f} ± {d['std']:.3f}"
g = lambda v: "–" if v[0] is None else f"{v[0]:.3f} ({v[1]})"
md = ["# Table VI analogue on phantoms (tiny profile, CPU)", "", f"Command: `{command}`", "",
      f"Evaluated on {rows[0]['cases']} unseen phantoms. Dice mean ± std per region; AUC / accuracy / F1: mean over the "
      "tasks where the test labels allow the metric (number of tasks in brackets).", "",
      "| method | WT Dice | TC Dice | ED Dice | ET Dice | AUC | accuracy | F1 | train s |", "|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    d = r["dice"]
    md.append(f"| {r['label']} | {f(d['WT'])} | {f(d['TC'])} | {f(d['ED'])} | {f(d['ET'])} | {g(r['mean_auc'])} | "
              f"{g(r['mean_accuracy'])} | {g(r['mean_f1'])} | {r['train_seconds']} |")
md += ["", "Stage I pseudo-labels (unlabeled pool):", "", "| arm | voxels kept | tumour voxels kept / predicted | task labels kept |", "|---|---|---|---|"]
for r in rows:
    p = r["pseudo_labels"]
    if p:
        md.append(f"| {r['label']} | {100 * p['accepted_voxel_fraction']:.1f} % | {p['accepted_tumour_voxels']} / "
                  f"{p['predicted_tumour_voxels']} | {p['accepted_task_labels']} / {p['task_labels_possible']} |")
md += ["", "Per task AUC (n labelled test cases):", "", "| method | " + " | ".join(rows[0]["tasks"].keys()) + " |",
       "|---|" + "---|" * len(rows[0]["tasks"])]
for r in rows:
    md.append(f"| {r['label']} | " + " | ".join(
        ("–" if m["auc"] is None else f"{m['auc']:.3f}") + f" (n={m['n']})" for m in r["tasks"].values()) + " |")
open(os.path.join(results, "table.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF
