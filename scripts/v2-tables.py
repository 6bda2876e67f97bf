#!/usr/bin/env python3
"""The tables of model v2 from the outputs of scripts/gpu-train.sh (its OUT folder).

Writes into --results, each as JSON + Markdown with the command that produced it:
  cv          cross-validated Dice per region (mean +- std) and the per-case table (full input)
  missing     whole-tumour Dice per missing-sequence subset and its cost against the full input
  table2      original -> + tumour filter -> + global fusion -> + semi-supervised (Dice)
  table3      AUC / accuracy / F1 / ECE per task for the same steps (real held-out + phantoms)
  table5      single segmentation, single classification, plain sum, eq. (7), ConvNet
  fig5c       the uncertainty run's Markdown and charts (copied)
  run         settings, wall time, and per training run its steps and seconds
"""
import argparse
import json
import os
import shutil

REGIONS = ["WT", "TC", "ET", "ED"]
TASKS = ["grade_gbm", "idh_mutant", "codel_1p19q", "mgmt_methylated"]


def load(path):
    with open(path) as f:
        return json.load(f)


def combo(report, arm, key="full"):
    for a in report["arms"]:
        if a["name"] == arm:
            for c in a["combinations"]:
                if c["key"] == key:
                    return c
    raise KeyError(f"arm {arm} / combination {key} not in the report")


def dice(c):
    return {r["region"]: {"mean": r["dice"]["mean"], "std": r["dice"]["std"], "n": r["dice"]["n"]} for r in c["regions"]}


def tasks(c):
    out = {}
    for t in c["tasks"]:
        m = t["metrics"]
        ece = (m.get("calibration") or {}).get("ece")
        out[t["task"]] = {"n": m["n"], "auc": m.get("auc"), "accuracy": m.get("accuracy"), "f1": m.get("f1"), "ece": ece}
    return out


def fmt(v, digits=3):
    return "–" if v is None else f"{v:.{digits}f}"


def pm(d):
    return f"{d['mean']:.3f} ± {d['std']:.3f}"


def write(results, name, title, header, data, md_body):
    with open(os.path.join(results, f"{name}.json"), "w") as f:
        json.dump({**header, "table": name, "data": data}, f, indent=2)
    lines = [f"# {title}", "", f"Command: `{header['command']}`", ""]
    if header.get("smoke"):
        lines += ["**Smoke run** (tiny profile, small phantoms, seconds of CPU training): these numbers",
                  "check that the script works end to end; they say nothing about the model.", ""]
    lines += [f"Settings: device {header['device']}, {header['seconds']} s of training per supervised run, "
              f"{header['ssl_seconds']} s per semi-supervised stage; folds {header['folds']}, "
              f"ablation folds {header['ablation_folds']}.", ""]
    with open(os.path.join(results, f"{name}.md"), "w") as f:
        f.write("\n".join(lines + md_body) + "\n")


def task_rows(label, t):
    return [f"| {label} | {name} | {x['n']} | {fmt(x['auc'])} | {fmt(x['accuracy'])} | {fmt(x['f1'])} | {fmt(x['ece'])} |"
            for name, x in t.items()]


def main():
    p = argparse.ArgumentParser()
    for a in ["out", "results", "command", "folds", "ablation-folds", "device"]:
        p.add_argument(f"--{a}", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--ssl-seconds", type=float, required=True)
    p.add_argument("--smoke", default="0")
    p.add_argument("--wall-seconds", type=float, default=None)
    a = p.parse_args()
    ev = os.path.join(a.out, "eval")
    os.makedirs(a.results, exist_ok=True)
    header = {"command": a.command, "device": a.device, "seconds": a.seconds, "ssl_seconds": a.ssl_seconds,
              "folds": a.folds, "ablation_folds": a.ablation_folds, "smoke": a.smoke == "1"}

    # Cross-validation and the missing-sequence cost.
    cvm = load(os.path.join(ev, "cv-missing", "missing.json"))
    full = combo(cvm, "cv")
    d = dice(full)
    cases = [{"case": c["case"], "run": c["run"], "dice": dict(zip(REGIONS, c["dice"]))}
             for c in full["cases"] if c["has_seg"]]
    body = ["| region | Dice (mean ± std) | cases |", "|---|---|---|"]
    body += [f"| {r} | {pm(d[r])} | {d[r]['n']} |" for r in REGIONS if r in d]
    body += ["", "Targets of the model issue: WT ≥ 0.85, TC ≥ 0.75, ET ≥ 0.70.", "",
             "| case | fold run | WT | TC | ET | ED |", "|---|---|---|---|---|---|"]
    body += [f"| {c['case']} | {c['run']} | " + " | ".join(fmt(c['dice'][r]) for r in REGIONS) + " |" for c in cases]
    write(a.results, "cv", "Model v2: cross-validated Dice on the held-out real cases", header,
          {"regions": d, "cases": cases}, body)

    arm = next(x for x in cvm["arms"] if x["name"] == "cv")
    rows = []
    for c in arm["combinations"]:
        wt = dice(c).get("WT")
        if wt:
            rows.append({"key": c["key"], "label": c["label"], "wt": wt, "cost": d["WT"]["mean"] - wt["mean"]})
    body = ["| input | WT Dice | cost against full |", "|---|---|---|"]
    body += [f"| {r['label']} | {pm(r['wt'])} | {r['cost']:+.3f} |" for r in rows]
    single = [r for r in rows if r["key"].startswith("no-") and r["key"].count("-") == 1]
    worst = max(single, key=lambda r: r["cost"]) if single else None
    if worst:
        body += ["", f"Largest single-sequence cost: {worst['label']} {worst['cost']:+.3f} (goal ≤ 0.05)."]
    write(a.results, "missing", "Model v2: whole-tumour Dice with sequences missing (cross-validated)", header,
          {"combinations": rows, "worst_single": worst}, body)

    # Table II / III: the steps.
    orig = load(os.path.join(ev, "original", "missing.json"))
    abl = load(os.path.join(ev, "ablations", "missing.json"))
    cvs = load(os.path.join(ev, "cv-ssl", "missing.json"))
    steps = [
        ("original (no global branch, no tumour filter)", combo(orig, "no-global"), "ablation folds"),
        ("+ tumour filter", combo(abl, "no-global"), "ablation folds"),
        ("+ global fusion", combo(abl, "cv"), "ablation folds"),
        ("+ global fusion", combo(cvs, "cv"), "all folds"),
        ("+ semi-supervised (Stage I + II)", combo(cvs, "ssl"), "all folds"),
    ]
    body = ["| step | folds | WT | TC | ET | ED |", "|---|---|---|---|---|---|"]
    data2 = []
    for label, c, folds in steps:
        dd = dice(c)
        data2.append({"step": label, "folds": folds, "dice": dd})
        body.append(f"| {label} | {folds} | " + " | ".join(pm(dd[r]) if r in dd else "–" for r in REGIONS) + " |")
    write(a.results, "table2", "Table II analogue: segmentation step by step (cross-validated Dice)", header, data2, body)

    ph = load(os.path.join(ev, "phantoms", "missing.json"))
    body = ["Real held-out cases (labels of the TCGA cases only):", "",
            "| step | task | n | AUC | accuracy | F1 | ECE |", "|---|---|---|---|---|---|---|"]
    data3 = {"real": [], "phantoms": []}
    for label, c, folds in steps:
        t = tasks(c)
        data3["real"].append({"step": label, "folds": folds, "tasks": t})
        body += task_rows(f"{label} ({folds})", t)
    body += ["", "Unseen phantoms (fold-0 models):", "",
             "| model | task | n | AUC | accuracy | F1 | ECE |", "|---|---|---|---|---|---|---|"]
    for x in ph["arms"]:
        t = tasks(combo(ph, x["name"]))
        data3["phantoms"].append({"model": x["name"], "tasks": t})
        body += task_rows(x["name"], t)
    write(a.results, "table3", "Table III analogue: classification step by step", header, data3, body)

    # Table V.
    names = [("single segmentation", "seg-only"), ("single classification", "cls-only"),
             ("plain multi-task sum", "plain-sum"), ("uncertainty-weighted multi-task (eq. 7)", "cv"),
             ("ConvNet without transformer", "convnet")]
    body = ["| model | WT | TC | ET | grade AUC | IDH AUC | grade acc | IDH acc |", "|---|---|---|---|---|---|---|---|"]
    data5 = []
    for label, key in names:
        c = combo(abl, key)
        dd, t = dice(c), tasks(c)
        data5.append({"model": label, "arm": key, "dice": dd, "tasks": t})
        seg = " | ".join(pm(dd[r]) if r in dd else "–" for r in ["WT", "TC", "ET"])
        if key == "cls-only":
            seg = "– | – | –"
        cls = "– | – | – | –" if key == "seg-only" else " | ".join(
            [fmt(t["grade_gbm"]["auc"]), fmt(t["idh_mutant"]["auc"]), fmt(t["grade_gbm"]["accuracy"]),
             fmt(t["idh_mutant"]["accuracy"])])
        body.append(f"| {label} | {seg} | {cls} |")
    body += ["", "Dice over the ablation folds' held-out real cases; a single-task model's other outputs",
             "are untrained and left out (–)."]
    write(a.results, "table5", "Table V analogue: single-task, plain sum, eq. (7) and ConvNet", header, data5, body)

    # Fig. 5c.
    unc = os.path.join(ev, "uncertainty")
    dest = os.path.join(a.results, "fig5c")
    os.makedirs(dest, exist_ok=True)
    for f in os.listdir(unc):
        if f.endswith((".md", ".png", ".json")):
            shutil.copy(os.path.join(unc, f), dest)

    # Runs.
    runs = {}
    for f in sorted(os.listdir(os.path.join(a.out, "logs"))):
        if f.endswith(".json") and not f.startswith("eval"):
            try:
                r = load(os.path.join(a.out, "logs", f))
            except (ValueError, OSError):
                continue
            runs[f[:-5]] = {k: r.get(k) for k in ["model_version", "steps", "seconds", "seconds_per_step",
                                                   "stopped_at_time_budget", "data_sha256"]}
    with open(os.path.join(a.results, "run.json"), "w") as f:
        json.dump({**header, "wall_seconds": a.wall_seconds, "runs": runs}, f, indent=2)
    print(f"tables written to {a.results}")


if __name__ == "__main__":
    main()
