"""Summary table of scripts/missing-fill.sh: Dice per missing-sequence combination for the
bundled model with zeros, the adapted model with zeros and the bundled model with stand-ins.

usage: missing-fill-table.py RESULTS_DIR DATE
    (reads missing-zero.json, missing-substitute.json and, when present, missing-case-norm.json)
"""
import json
import os
import sys

results, date = sys.argv[1], sys.argv[2]
zero = json.load(open(f"{results}/missing-zero.json"))
sub = json.load(open(f"{results}/missing-substitute.json"))


def arm(d, name):
    return next(a for a in d["arms"] if a["name"] == name)


def dice(a, label, region):
    c = next(c for c in a["combinations"] if c["label"] == label)
    r = next(r for r in c["regions"] if r["region"] == region)
    return r["dice"]["mean"], r["dice"]["std"]


columns = [
    ("bundled, zeros", arm(zero, "bundled")),
    ("adapted, zeros", arm(zero, "adapted")),
    ("bundled, stand-ins", arm(sub, "bundled")),
]
case_norm_path = f"{results}/missing-case-norm.json"
if os.path.exists(case_norm_path):
    case_norm = json.load(open(case_norm_path))
    columns += [
        ("bundled, zeros, case stats", arm(case_norm, "bundled")),
        ("adapted, zeros, case stats", arm(case_norm, "adapted")),
    ]
labels = zero["combinations"]
cases = arm(zero, "bundled")["runs"][0]["cases"]
lines = [
    "# A missing sequence: zeros or a stand-in",
    "",
    f"Measured {date} with `scripts/missing-fill.sh` (2-core CPU): the bundled `gmmas-small` (trained on",
    "fold 0's training cases) and the bundled adapted model scored on fold 0's "
    + f"{len(cases)} held-out real cases ({', '.join(cases)}), one deterministic pass, whole volumes.",
    "`zeros`: the removed channel is zeroed and its presence flag cleared (`--fill zero`, what the",
    "services do by default, routing such cases to the adapted model when one is configured);",
    "`stand-ins`: a present sequence of similar contrast fills it and the network reads a complete",
    "input (`--fill substitute`: T2 for FLAIR, FLAIR for T2, T1 for T1CE, T1CE for T1).",
    "`case stats`: zeros, and every BatchNorm normalises by the case's own statistics when a",
    "sequence is missing instead of the running averages learnt mostly on complete inputs",
    "(`--norm-stats case-if-missing`; full input is unchanged). Raw tables: `missing-zero.md`,",
    "`missing-substitute.md`, `missing-case-norm.md` (and `.json`).",
    "",
    "## Dice, mean ± std",
    "",
    "| combination | " + " | ".join(f"{n} {r}" for n, _ in columns for r in ("WT", "TC", "ET")) + " |",
    "|---|" + "---|" * (3 * len(columns)),
]
for label in labels:
    cells = []
    for _, a in columns:
        for region in ("WT", "TC", "ET"):
            m, s = dice(a, label, region)
            cells.append(f"{m:.3f} ± {s:.3f}")
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
lines += ["", "## Whole-tumour Dice lost to one missing sequence (full input minus missing)", ""]
lines.append("| missing | " + " | ".join(n for n, _ in columns) + " |")
lines.append("|---|" + "---|" * len(columns))
worst = {n: 0.0 for n, _ in columns}
for label in labels[1:5]:
    cells = []
    for n, a in columns:
        cost = dice(a, "Full input", "WT")[0] - dice(a, label, "WT")[0]
        worst[n] = max(worst[n], cost)
        cells.append(f"{cost:+.3f}")
    lines.append(f"| {label.removeprefix('Missing ')} | " + " | ".join(cells) + " |")
lines.append("| **worst** | " + " | ".join(f"**{worst[n]:+.3f}**" for n, _ in columns) + " |")
lines.append("")
open(f"{results}/README.md", "w").write("\n".join(lines))
json.dump(
    {"date": date, "command": "scripts/missing-fill.sh", "cases": cases, "worst_single_wt_cost": worst},
    open(f"{results}/summary.json", "w"),
    indent=2,
)
print("\n".join(lines))
