//! `gmmas eval-missing`: segmentation Dice and classification AUC with sequences removed
//! (paper Tables VII, VIII and Fig. 10), per arm (a set of training runs), pooled over runs.
//!
//! Each run folder holds `model.safetensors` (+ `.json`) and `split.csv` as written by
//! `gmmas train`. With `--subset val` every run is evaluated on the val cases of its own
//! split (k-fold runs thus pool their held-out cases); with `--subset all` on every case of
//! `--data`. A removed sequence has its channel zeroed and its presence flag cleared, as for a
//! case that never had it. Output: `missing.json`, `missing.md`, `roc_<task>_<arm>.png`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use gmmas_models::Analyzer;
use gmmas_models::config::{MODALITIES, TASK_NAMES, TASKS};
use gmmas_models::data::{SplitConfig, Subset, read_split_file};
use gmmas_models::fit::{EvalOptions, evaluate};
use gmmas_models::metrics::{Region, Summary, TaskMetrics, roc_curve};
use gmmas_models::missing::{self, DropMask};
use serde::Serialize;

/// An arm: a name and the run folders whose held-out results it pools.
#[derive(Debug, Clone)]
pub struct Arm {
    pub name: String,
    pub runs: Vec<PathBuf>,
}

fn parse_arm(s: &str) -> Result<Arm, String> {
    let (name, dirs) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected NAME=RUN_DIR[,RUN_DIR...]"))?;
    let name = name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(format!("arm name {name:?}: use letters, digits, '-', '_' or '.'"));
    }
    let runs: Vec<PathBuf> = dirs.split(',').map(str::trim).filter(|d| !d.is_empty()).map(PathBuf::from).collect();
    if runs.is_empty() {
        return Err(format!("arm {name}: no run folder given"));
    }
    Ok(Arm { name: name.to_string(), runs })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseChoice {
    /// The val cases of each run's own split.csv.
    Val,
    /// Every case of --data.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComboChoice {
    /// Full input only (with --hd95: the cross-validation Dice / HD95 table).
    Full,
    /// Full input, each single sequence missing, each pair missing (11).
    Paper,
    /// Every non-empty set of remaining sequences (15).
    All,
}

#[derive(Args)]
pub struct EvalMissingArgs {
    /// `NAME=RUN_DIR[,RUN_DIR...]` (repeatable): each run folder holds model.safetensors
    /// (+ .json) and split.csv from `gmmas train`; results are pooled over an arm's runs.
    #[arg(long = "arm", required = true, value_parser = parse_arm)]
    pub arms: Vec<Arm>,
    /// Case folder, or a folder of case folders (repeatable).
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Labels CSV (repeatable); blank cells are unknown.
    #[arg(long)]
    pub labels: Vec<PathBuf>,
    /// `val`: each run on the val cases of its own split.csv; `all`: every case of --data.
    #[arg(long, value_enum, default_value = "val")]
    pub subset: CaseChoice,
    /// `paper` (11 combinations) or `all` (15).
    #[arg(long, value_enum, default_value = "paper")]
    pub combos: ComboChoice,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Also compute HD95 (off by default: a few distance transforms per case and combination).
    #[arg(long)]
    pub hd95: bool,
    /// Skip HD95 (the default; accepted for symmetry with `gmmas eval`).
    #[arg(long, conflicts_with = "hd95")]
    pub no_hd95: bool,
    /// Leave out unreadable cases with a warning instead of failing.
    #[arg(long)]
    pub skip_bad_cases: bool,
    #[command(flatten)]
    pub infer: crate::analyze::InferFlags,
    #[command(flatten)]
    pub compute: crate::cases::ComputeArgs,
}

/// One case under one combination.
#[derive(Debug, Clone, Serialize)]
struct CaseRow {
    /// Index of the run in its arm.
    run: usize,
    case: String,
    /// Modalities the model saw (t1, t1ce, t2, flair).
    present: [bool; MODALITIES],
    has_seg: bool,
    /// Dice WT, TC, ET, ED.
    dice: [f64; 4],
    hd95: [Option<f64>; 4],
    probabilities: [f32; TASKS],
    labels: [Option<bool>; TASKS],
    seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
struct RegionRow {
    region: &'static str,
    dice: Summary,
    hd95: Option<Summary>,
}

#[derive(Debug, Clone, Serialize)]
struct TaskRow {
    task: &'static str,
    metrics: TaskMetrics,
    /// `(fpr, tpr)` points (None without both classes).
    roc: Option<Vec<(f64, f64)>>,
}

#[derive(Debug, Clone, Serialize)]
struct ComboResult {
    label: String,
    key: String,
    /// Removed modalities (t1, t1ce, t2, flair).
    drop: DropMask,
    evaluated: usize,
    /// Cases left with no modality by this combination.
    skipped: usize,
    regions: Vec<RegionRow>,
    tasks: Vec<TaskRow>,
    cases: Vec<CaseRow>,
}

#[derive(Debug, Clone, Serialize)]
struct RunInfo {
    dir: PathBuf,
    model: PathBuf,
    version: String,
    split: Option<PathBuf>,
    cases: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
struct ArmResult {
    name: String,
    runs: Vec<RunInfo>,
    combinations: Vec<ComboResult>,
}

/// A run to evaluate: model path, split file and its val cases (None with `--subset all`).
type RunPlan = (PathBuf, Option<PathBuf>, Option<BTreeSet<String>>);

/// Curves of the ROC figures: combination key and colour.
const ROC_CURVES: [(&str, [u8; 3], &str); 5] = [
    ("full", [0, 0, 0], "black"),
    ("no-flair", [230, 120, 0], "orange"),
    ("no-t1ce", [200, 30, 30], "red"),
    ("no-t1", [30, 90, 200], "blue"),
    ("no-t2", [40, 160, 60], "green"),
];
const ROC_TASKS: [usize; 2] = [0, 1];

pub fn run(args: EvalMissingArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let device = args.compute.device()?;
    let hd95 = args.hd95;
    let infer_opts = args.infer.options(0)?;
    let mut names = BTreeSet::new();
    for a in &args.arms {
        anyhow::ensure!(names.insert(a.name.clone()), "arm {} given twice", a.name);
    }
    let combos = match args.combos {
        ComboChoice::Full => missing::paper_combos().into_iter().take(1).collect(),
        ComboChoice::Paper => missing::paper_combos(),
        ComboChoice::All => missing::all_combos(),
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;

    let runs = plan_runs(&args)?;

    // Load only the cases some run evaluates (all of --data with --subset all).
    let split = match args.subset {
        CaseChoice::All => SplitConfig::All,
        CaseChoice::Val => {
            let union: BTreeSet<&String> = runs.iter().flatten().filter_map(|r| r.2.as_ref()).flatten().collect();
            let path = args.out.join("evaluated_cases.csv");
            let text: String = std::iter::once("case,subset\n".to_string())
                .chain(union.iter().map(|c| format!("{c},val\n")))
                .collect();
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            SplitConfig::File { path }
        }
    };
    let data = crate::cases::load(&args.data, &args.labels, split, args.skip_bad_cases, args.compute.threads)?;
    let by_name: BTreeMap<&str, usize> = data.cases.iter().enumerate().map(|(i, c)| (c.name.as_str(), i)).collect();

    let ctx = ArmContext { data: &data, by_name: &by_name, combos: &combos, infer_opts, hd95, device };
    let mut arms = Vec::new();
    for (arm, arm_runs) in args.arms.iter().zip(&runs) {
        arms.push(evaluate_arm(arm, arm_runs, &ctx)?);
    }

    write_outputs(&args, &combos, &arms, &data, t0)
}

/// Each arm's runs: the model file and, for `--subset val`, the run's split file and val cases.
fn plan_runs(args: &EvalMissingArgs) -> anyhow::Result<Vec<Vec<RunPlan>>> {
    let mut runs: Vec<Vec<RunPlan>> = Vec::new();
    for arm in &args.arms {
        let mut list = Vec::new();
        for dir in &arm.runs {
            let model = dir.join("model.safetensors");
            anyhow::ensure!(model.exists(), "arm {}: {} not found", arm.name, model.display());
            let (split, val) = match args.subset {
                CaseChoice::All => (None, None),
                CaseChoice::Val => {
                    let split = dir.join("split.csv");
                    let map = read_split_file(&split).map_err(|p| anyhow::anyhow!("arm {}: {p}", arm.name))?;
                    let val: BTreeSet<String> =
                        map.into_iter().filter(|(_, s)| *s == Subset::Val).map(|(c, _)| c).collect();
                    anyhow::ensure!(!val.is_empty(), "arm {}: {} names no val case", arm.name, split.display());
                    (Some(split), Some(val))
                }
            };
            list.push((model, split, val));
        }
        runs.push(list);
    }
    Ok(runs)
}

/// What every arm is evaluated on and with.
struct ArmContext<'a> {
    data: &'a gmmas_models::data::Dataset,
    by_name: &'a BTreeMap<&'a str, usize>,
    combos: &'a [DropMask],
    infer_opts: gmmas_models::InferOptions,
    hd95: bool,
    device: gmmas_models::Device,
}

/// One arm: every run on its cases under every input combination, pooled per combination.
// Long on purpose: a run's cases under every combination share the run's index list, the duplicate check and the pooled rows.
fn evaluate_arm(arm: &Arm, arm_runs: &[RunPlan], ctx: &ArmContext<'_>) -> anyhow::Result<ArmResult> {
    let mut pooled: Vec<(Vec<CaseRow>, usize)> = vec![(Vec::new(), 0); ctx.combos.len()];
    let mut infos = Vec::new();
    let mut seen = BTreeMap::new();
    for (r, (model_path, split, val)) in arm_runs.iter().enumerate() {
        let model = Analyzer::load(model_path, ctx.device)
            .with_context(|| format!("arm {}: loading {}", arm.name, model_path.display()))?;
        let indices: Vec<usize> = match val {
            None => (0..ctx.data.cases.len()).collect(),
            Some(val) => {
                let missing: Vec<&String> = val.iter().filter(|c| !ctx.by_name.contains_key(c.as_str())).collect();
                if !missing.is_empty() {
                    eprintln!(
                        "warning: arm {} run {}: {} val case(s) not in --data (left out)",
                        arm.name,
                        arm.runs[r].display(),
                        missing.len()
                    );
                }
                val.iter().filter_map(|c| ctx.by_name.get(c.as_str()).copied()).collect()
            }
        };
        if indices.is_empty() {
            // A fold can hold none of --data's cases among its held-out ones.
            eprintln!(
                "warning: arm {} run {}: no case of --data to evaluate (skipped)",
                arm.name,
                arm.runs[r].display()
            );
            infos.push(RunInfo {
                dir: arm.runs[r].clone(),
                model: model_path.clone(),
                version: model.version().to_string(),
                split: split.clone(),
                cases: Vec::new(),
            });
            continue;
        }
        for &i in &indices {
            if let Some(prev) = seen.insert(i, r) {
                eprintln!(
                    "warning: arm {}: case {} is evaluated by runs {prev} and {r} (pooled twice)",
                    arm.name, ctx.data.cases[i].name
                );
            }
        }
        for (k, drop) in ctx.combos.iter().enumerate() {
            let t = Instant::now();
            let opts = EvalOptions { infer: ctx.infer_opts, hd95: ctx.hd95, drop: *drop };
            let report = evaluate(&model, ctx.data, &indices, &opts, |_| {})?;
            let skipped = indices.len() - report.cases_evaluated;
            let wt = report.dice(Region::WT);
            let by_case: BTreeMap<&str, usize> =
                indices.iter().map(|&i| (ctx.data.cases[i].name.as_str(), i)).collect();
            for c in report.cases {
                let present = ctx.data.cases[by_case[c.name.as_str()]].present;
                pooled[k].0.push(CaseRow {
                    run: r,
                    present: std::array::from_fn(|m| present[m] && !drop[m]),
                    case: c.name,
                    has_seg: c.has_seg,
                    dice: c.dice,
                    hd95: c.hd95,
                    probabilities: c.probabilities,
                    labels: c.labels,
                    seconds: c.seconds,
                });
            }
            pooled[k].1 += skipped;
            eprintln!(
                "[{}] run {}/{} ({}) combination {}/{} {}: {} case(s){}, WT Dice {:.3}, {:.1} s",
                arm.name,
                r + 1,
                arm_runs.len(),
                model.version(),
                k + 1,
                ctx.combos.len(),
                missing::label(drop),
                indices.len() - skipped,
                if skipped > 0 { format!(" ({skipped} skipped: nothing left)") } else { String::new() },
                wt,
                t.elapsed().as_secs_f64()
            );
        }
        infos.push(RunInfo {
            dir: arm.runs[r].clone(),
            model: model_path.clone(),
            version: model.version().to_string(),
            split: split.clone(),
            cases: indices.iter().map(|&i| ctx.data.cases[i].name.clone()).collect(),
        });
    }
    let combinations = ctx
        .combos
        .iter()
        .zip(pooled)
        .map(|(drop, (cases, skipped))| summarise(drop, cases, skipped, ctx.hd95))
        .collect();
    Ok(ArmResult { name: arm.name.clone(), runs: infos, combinations })
}

/// missing.json, missing.md, the ROC figures and one summary line per arm and combination.
fn write_outputs(
    args: &EvalMissingArgs,
    combos: &[DropMask],
    arms: &[ArmResult],
    data: &gmmas_models::data::Dataset,
    t0: Instant,
) -> anyhow::Result<()> {
    let hd95 = args.hd95;
    let command: Vec<String> = std::env::args().collect();
    let json = serde_json::json!({
        "command": command,
        "subset": args.subset,
        "combos": args.combos,
        "combinations": combos.iter().map(missing::label).collect::<Vec<_>>(),
        "hd95": hd95,
        "data": {
            "dirs": args.data,
            "labels": args.labels,
            "sha256": data.sha256(),
            "cases": data.cases.len(),
            "skipped": data.skipped,
        },
        "arms": arms,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    let json_path = args.out.join("missing.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = args.out.join("missing.md");
    std::fs::write(&md_path, markdown(args, &command, combos, arms, hd95))
        .with_context(|| format!("writing {}", md_path.display()))?;
    // Figures last: the numbers are on disk even when a chart cannot be drawn.
    let mut pngs = Vec::new();
    for arm in arms {
        for &t in &ROC_TASKS {
            let path = args.out.join(format!("roc_{}_{}.png", TASK_NAMES[t], arm.name));
            std::fs::write(&path, roc_png(arm, t)?).with_context(|| format!("writing {}", path.display()))?;
            pngs.push(path);
        }
    }
    for arm in arms {
        for c in &arm.combinations {
            let d = |reg: usize| c.regions[reg].dice;
            println!(
                "{} | {:<24} | n={:<3} WT {:.3} TC {:.3} ED {:.3} ET {:.3} | AUC grade {} IDH {}",
                arm.name,
                c.label,
                c.evaluated,
                d(0).mean,
                d(1).mean,
                d(3).mean,
                d(2).mean,
                fmt_opt(c.tasks[0].metrics.auc),
                fmt_opt(c.tasks[1].metrics.auc)
            );
        }
    }
    eprintln!(
        "wrote {}, {} and {} ROC figure(s) in {:.1} s",
        json_path.display(),
        md_path.display(),
        pngs.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn summarise(drop: &DropMask, cases: Vec<CaseRow>, skipped: usize, hd95: bool) -> ComboResult {
    let seg: Vec<&CaseRow> = cases.iter().filter(|c| c.has_seg).collect();
    let regions = Region::ALL
        .iter()
        .enumerate()
        .map(|(k, r)| RegionRow {
            region: r.as_str(),
            dice: Summary::of(seg.iter().map(|c| Some(c.dice[k]))),
            hd95: hd95.then(|| Summary::of(seg.iter().map(|c| c.hd95[k]))),
        })
        .collect();
    let tasks = (0..TASKS)
        .map(|t| {
            let pairs: Vec<(f64, bool)> =
                cases.iter().filter_map(|c| c.labels[t].map(|y| (f64::from(c.probabilities[t]), y))).collect();
            let scores: Vec<f64> = pairs.iter().map(|p| p.0).collect();
            let labels: Vec<bool> = pairs.iter().map(|p| p.1).collect();
            TaskRow { task: TASK_NAMES[t], metrics: TaskMetrics::of(&pairs), roc: roc_curve(&scores, &labels) }
        })
        .collect();
    ComboResult {
        label: missing::label(drop),
        key: missing::key(drop),
        drop: *drop,
        evaluated: cases.len(),
        skipped,
        regions,
        tasks,
        cases,
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |x| format!("{x:.3}"))
}

/// ROC figure of task `t` for one arm: full input and each single sequence missing, plus the
/// diagonal (grey).
fn roc_png(arm: &ArmResult, t: usize) -> anyhow::Result<Vec<u8>> {
    use gmmas_plot::{Corner, Figure, GREY, Mark};
    let mut chart =
        Figure::new(format!("ROC of {}: {}", TASK_NAMES[t], arm.name), "false positive rate", "true positive rate")
            .size(560, 480)
            .x_range(0.0, 1.0)
            .y_range(0.0, 1.0)
            .legend_at(Corner::LowerRight);
    chart.add("chance", &[(0.0, 0.0), (1.0, 1.0)], GREY, Mark::Dashed);
    // Full input last, on top.
    for (key, rgb, _) in ROC_CURVES.iter().rev() {
        if let Some(roc) = arm.combinations.iter().find(|c| c.key == *key).and_then(|c| c.tasks[t].roc.as_ref()) {
            chart.add(key, roc, *rgb, Mark::Line);
        }
    }
    Ok(chart.to_png()?)
}

// Long on purpose: a linear template of the report's sections, in the order a reader meets them.
fn markdown(args: &EvalMissingArgs, command: &[String], combos: &[DropMask], arms: &[ArmResult], hd95: bool) -> String {
    let mut s = String::from("# Missing-sequence evaluation\n\n");
    s.push_str(&format!("Command: `{}`\n\n", command.join(" ")));
    s.push_str(&format!(
        "Cases: {}. A removed sequence has its channel zeroed and its presence flag cleared before \
         inference (one deterministic pass, whole volumes); a case's own missing sequences stay \
         missing; a case left with no sequence is skipped. Results are pooled over each arm's runs.\n\n",
        match args.subset {
            CaseChoice::Val => "the val cases of each run's own split.csv",
            CaseChoice::All => "every case of --data, for every run",
        }
    ));
    for arm in arms {
        s.push_str(&format!("- arm `{}`:\n", arm.name));
        for r in &arm.runs {
            s.push_str(&format!("  - `{}` — model `{}`, {} case(s)\n", r.dir.display(), r.version, r.cases.len()));
        }
    }
    let row_head = |cols: &[String]| {
        format!("| combination | {} |\n|---|{}\n", cols.join(" | "), cols.iter().map(|_| "---|").collect::<String>())
    };
    // (a) Segmentation: one table of Dice, one of HD95 when computed.
    let regions = [(0usize, "WT"), (1, "TC"), (3, "ED"), (2, "ET")];
    let cols: Vec<String> =
        arms.iter().flat_map(|a| regions.iter().map(move |(_, r)| format!("{} {r}", a.name))).collect();
    let region_table = |cell: &dyn Fn(&RegionRow) -> String| -> String {
        let mut t = row_head(&cols);
        for (k, drop) in combos.iter().enumerate() {
            let cells: Vec<String> =
                arms.iter().flat_map(|a| regions.iter().map(|&(r, _)| cell(&a.combinations[k].regions[r]))).collect();
            t.push_str(&format!("| {} | {} |\n", missing::label(drop), cells.join(" | ")));
        }
        t
    };
    s.push_str("\n## Segmentation: Dice mean ± std (cf. Tables VII and VIII)\n\n");
    s.push_str(&region_table(&|r| {
        if r.dice.n == 0 { "–".to_string() } else { format!("{:.3} ± {:.3}", r.dice.mean, r.dice.std) }
    }));
    s.push_str(
        "\nWT whole tumour, TC tumour core, ED edema, ET enhancing tumour; population std over the \
         pooled cases with a reference segmentation. Dice of a region empty in both prediction and \
         reference counts as 1.\n",
    );
    if hd95 {
        s.push_str("\n## Segmentation: HD95 mm mean ± std\n\n");
        s.push_str(&region_table(&|r| match r.hd95 {
            Some(h) if h.n > 0 => format!("{:.2} ± {:.2}", h.mean, h.std),
            _ => "–".to_string(),
        }));
    }
    // (b) Classification.
    let tasks: Vec<usize> = (0..TASKS)
        .filter(|&t| {
            ROC_TASKS.contains(&t) || arms.iter().any(|a| a.combinations.iter().any(|c| c.tasks[t].metrics.n > 0))
        })
        .collect();
    let cols: Vec<String> =
        arms.iter().flat_map(|a| tasks.iter().map(move |&t| format!("{} {}", a.name, TASK_NAMES[t]))).collect();
    s.push_str("\n## Classification: AUC (n labelled)\n\n");
    s.push_str(&row_head(&cols));
    for (k, drop) in combos.iter().enumerate() {
        let cells: Vec<String> = arms
            .iter()
            .flat_map(|a| {
                let c = &a.combinations[k];
                tasks.iter().map(move |&t| {
                    let m = &c.tasks[t].metrics;
                    format!("{} (n={})", fmt_opt(m.auc), m.n)
                })
            })
            .collect();
        s.push_str(&format!("| {} | {} |\n", missing::label(drop), cells.join(" | ")));
    }
    s.push_str("\nAUC needs both classes among the labelled cases (– otherwise).\n");
    // Cases per combination.
    let cols: Vec<String> = arms.iter().map(|a| format!("{} evaluated (skipped)", a.name)).collect();
    s.push_str("\n## Cases per combination\n\n");
    s.push_str(&row_head(&cols));
    for (k, drop) in combos.iter().enumerate() {
        let cells: Vec<String> =
            arms.iter().map(|a| format!("{} ({})", a.combinations[k].evaluated, a.combinations[k].skipped)).collect();
        s.push_str(&format!("| {} | {} |\n", missing::label(drop), cells.join(" | ")));
    }
    // ROC figures.
    s.push_str("\n## ROC curves (cf. Fig. 10)\n\n");
    s.push_str(
        "`roc_<task>_<arm>.png`: false positive rate (x) against true positive rate (y), one curve \
         per combination, the diagonal in grey; identical curves overlap (full input drawn last, on \
         top). A combination without both classes has no curve.\n\n\
         | colour | combination |",
    );
    let roc_cols: Vec<String> =
        arms.iter().flat_map(|a| ROC_TASKS.iter().map(move |&t| format!("{} {} AUC", a.name, TASK_NAMES[t]))).collect();
    s.push_str(&format!(
        " {} |\n|---|---|{}\n",
        roc_cols.join(" | "),
        roc_cols.iter().map(|_| "---|").collect::<String>()
    ));
    for (key, _, colour) in ROC_CURVES {
        let Some(k) = combos.iter().position(|d| missing::key(d) == key) else { continue };
        let cells: Vec<String> = arms
            .iter()
            .flat_map(|a| ROC_TASKS.iter().map(move |&t| fmt_opt(a.combinations[k].tasks[t].metrics.auc)))
            .collect();
        s.push_str(&format!("| {colour} | {} | {} |\n", missing::label(&combos[k]), cells.join(" | ")));
    }
    s.push_str("\nPer-case Dice and probabilities for every arm and combination are in `missing.json`.\n");
    s
}
