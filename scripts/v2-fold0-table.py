#!/usr/bin/env python3
"""Writes models/results/v2-fold0/README.md from what scripts/v2-fold0.sh left there: the
held-out Dice of each arm with every single missing sequence, and the test-time options."""
import glob
import json
import os
import sys

res = sys.argv[1] if len(sys.argv) > 1 else "models/results/v2-fold0"
miss = json.load(open(os.path.join(res, "missing.json")))
runs = {os.path.basename(p)[4:-5]: json.load(open(p)) for p in sorted(glob.glob(os.path.join(res, "run-*.json")))}


def dice(c, region):
    r = next(r for r in c["regions"] if r["region"] == region)
    return r["dice"]["mean"]


single = ["full", "no-flair", "no-t1ce", "no-t1", "no-t2"]
lines = [
    "# Model v2 recipe against v1 on fold 0 (CPU-sized)",
    "",
    "Every arm starts from the bundled `gmmas-small@3fdacc2cbe8d`, which the v1 recipe trained on",
    "fold 0's training cases (`models/configs/release-small-cpu.toml`). The `v2-N` arms continue it",
    "for N steps with the v2 recipe (`models/configs/v2/finetune-fold0.toml`: the 5 whole-tumour-only",
    "cases added, Tumor-CutMix at a random place with soft targets, flips on three axes, rotation,",
    "zoom, gamma, sequence dropout 0.35, EMA of the weights; 64³ patches, batch 1, AdamW 3e-4 as the",
    "learning loop's equal-steps control). All are scored on the same 4 held-out real cases of",
    "fold 0, one deterministic pass, whole volumes (`missing.md` has every combination).",
    "",
    "Commands (2-core CPU): " + ", ".join(f"`{r['command']}` ({r['train_seconds']} s of training)" for r in runs.values()),
    "",
    "## Whole-tumour Dice with one sequence missing",
    "",
]
labels = {}
arms = miss["arms"]
for a in arms:
    for c in a["combinations"]:
        labels[c["key"]] = c["label"]
keys = [k for k in single if k in labels]
lines.append("| arm | " + " | ".join(labels[k] for k in keys) + " | worst cost vs full |")
lines.append("|---|" + "---|" * (len(keys) + 1))
for a in arms:
    by = {c["key"]: c for c in a["combinations"]}
    full = dice(by["full"], "WT")
    row = [f"{dice(by[k], 'WT'):.3f}" for k in keys]
    worst = max(full - dice(by[k], "WT") for k in keys if k != "full")
    lines.append(f"| {a['name']} | " + " | ".join(row) + f" | {worst:.3f} |")
lines += ["", "## Full input, every region", "", "| arm | WT | TC | ED | ET |", "|---|---|---|---|---|"]
for a in arms:
    c = next(c for c in a["combinations"] if c["key"] == "full")
    lines.append(f"| {a['name']} | " + " | ".join(f"{dice(c, r):.3f}" for r in ["WT", "TC", "ED", "ET"]) + " |")
lines += [
    "",
    "For reference, the learning-loop run on the same cases (`models/results/ssl-real/`): 200 more",
    "v1-recipe steps (the control) 0.771 WT, the weak cases added 0.765, Stage I + II 0.817.",
    "",
    "## Test-time options on the v2 models (full input)",
    "",
    "| model | option | WT | TC | ET | seconds for 4 cases |",
    "|---|---|---|---|---|---|",
]
for p in sorted(glob.glob(os.path.join(res, "eval-*.json"))):
    name = os.path.basename(p)[5:-5]
    model, option = name.rsplit("-", 1) if not name.endswith("small-et") else (name[: -len("-small-et")], "small-et")
    d = json.load(open(p))
    reg = {r["region"]: r["dice"]["mean"] for r in d["regions"]}
    opt = {"plain": "one pass", "tta": "flip TTA (8 mirrorings)", "small-et": "small-ET rule (< 500 voxels → NCR)"}[option]
    lines.append(f"| {model} | {opt} | {reg['WT']:.3f} | {reg['TC']:.3f} | {reg['ET']:.3f} | {d['seconds']:.0f} |")
lines += [
    "",
    "## What it says",
    "",
    "Four held-out cases, one fold: differences of a few hundredths are within case-to-case",
    "noise. On this evidence the v2 recipe, as a continuation of the v1 model on this CPU, does",
    "not beat it or the equal-steps v1 control; sequence dropout at p 0.35 for 1000 steps did not",
    "teach the network to find edema without FLAIR; flip TTA costs 7x the time for no gain; the",
    "small-ET rule at 500 voxels lowers ET Dice on these cases, so it stays off. None of this",
    "replaces training the recipe from the start at its own patch size (`cv-medium.toml`), which",
    "needs the GPU run.",
]
open(os.path.join(res, "README.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
