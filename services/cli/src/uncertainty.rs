//! `gmmas uncertainty`: does MC-Dropout uncertainty track error? Voxel AUROC for wrong voxels,
//! ECE within uncertainty bins (Fig. 5c analogue) and case-level uncertainty on other inputs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use gmmas_models::Analyzer;
use gmmas_models::config::TASK_NAMES;
use gmmas_models::data::{CaseData, SplitConfig};
use gmmas_models::uncertainty::{
    CASE_SCORES, CaseUncertainty, CaseVoxelScores, OodComparison, PooledVoxelReport, TaskPoint, UncertaintyBin,
    Variant, VoxelMeasure, VoxelPool, brain_mask, case_uncertainty, case_voxel_scores, compare_scores, task_bins,
    top_label_ece,
};
use gmmas_plot::{BLUE, Figure, GREEN, Mark, ORANGE, RED};
use serde::{Deserialize, Serialize};

#[derive(Args)]
pub struct UncertaintyArgs {
    /// Model weights (`.safetensors` with its `.json` card beside it).
    #[arg(long, required_unless_present = "render")]
    pub weights: Option<PathBuf>,
    /// In-distribution cases with expert segmentations: a case folder or a folder of them
    /// (repeatable).
    #[arg(long, required_unless_present = "render")]
    pub cases: Vec<PathBuf>,
    /// Instead of running a model, write the Markdown and charts again from this
    /// `uncertainty.json` (its recorded command stays the one that measured it).
    #[arg(long, conflicts_with_all = ["weights", "cases"])]
    pub render: Option<PathBuf>,
    /// Labels CSV of those cases (repeatable); blank cells are unknown.
    #[arg(long)]
    pub labels: Vec<PathBuf>,
    /// Other inputs run as they are, `NAME=DIR` (repeatable), e.g. non-glioma phantoms.
    #[arg(long, value_parser = parse_named)]
    pub ood: Vec<(String, PathBuf)>,
    /// Variants made from every case (comma separated): `swap-<a>-<b>` exchanges two
    /// sequences, `noise-<sd>` adds Gaussian noise of that many z-score units to the brain.
    #[arg(long, default_value = "swap-t1ce-flair,swap-t1-t2,noise-1", value_delimiter = ',')]
    pub variants: Vec<String>,
    /// MC-Dropout passes per input (at least 2).
    #[arg(long, default_value_t = 8)]
    pub mc_passes: usize,
    /// Decoder dropout during the passes (default: the model's own setting).
    #[arg(long)]
    pub decoder_dropout: Option<f64>,
    /// Equal-count uncertainty bins of the voxel Fig. 5c analogue.
    #[arg(long, default_value_t = 10)]
    pub bins: usize,
    /// Equal-count uncertainty bins of the case-level classification analogue.
    #[arg(long, default_value_t = 4)]
    pub task_bins: usize,
    /// Seed of the dropout masks and of the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sliding-window overlap.
    #[arg(long, default_value_t = 0.5)]
    pub overlap: f32,
    /// Only the first N cases of `--cases` (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Output folder for uncertainty.json, uncertainty.md and the charts.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub compute: crate::cases::ComputeArgs,
}

fn parse_named(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((n, d)) if !n.is_empty() && !d.is_empty() => Ok((n.to_string(), PathBuf::from(d))),
        _ => Err(format!("expected NAME=DIR, got {s:?}")),
    }
}

/// One input run through the passes.
#[derive(Serialize, Deserialize)]
struct InputResult {
    /// `original`, a variant name, or the name of an `--ood` set.
    input: String,
    uncertainty: CaseUncertainty,
    /// Voxel AUROC against the expert segmentation (cases with one).
    voxel: Option<CaseVoxelScores>,
    seconds: f64,
}

#[derive(Serialize, Deserialize)]
struct CaseResult {
    name: String,
    /// Prepared grid `[nx, ny, nz]`.
    dims: [usize; 3],
    inputs: Vec<InputResult>,
}

#[derive(Serialize, Deserialize)]
struct Comparison {
    /// The other input (a variant or an `--ood` set), compared with the originals.
    input: String,
    /// Whether each case is compared with its own variant.
    paired: bool,
    scores: Vec<(String, OodComparison)>,
    /// Mean predicted whole tumour (mL): originals, other input.
    tumour_ml: (f64, f64),
}

#[derive(Serialize, Deserialize)]
struct Report {
    command: String,
    model_version: String,
    weights: String,
    decoder_dropout: f64,
    mc_passes: usize,
    seed: u64,
    overlap: f32,
    data_sha256: String,
    measures: serde_json::Value,
    cases: Vec<CaseResult>,
    ood: Vec<(String, Vec<(String, InputResult)>)>,
    pooled: Option<PooledVoxelReport>,
    task_points: Vec<TaskPoint>,
    task_ece: Option<f64>,
    task_bins: Vec<UncertaintyBin>,
    comparisons: Vec<Comparison>,
    seconds: f64,
}

fn command_line() -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(first) = args.first_mut() {
        *first = "$GMMAS_BIN/gmmas".into();
    }
    args.iter().map(|a| if a.contains(' ') { format!("'{a}'") } else { a.clone() }).collect::<Vec<_>>().join(" ")
}

#[allow(clippy::too_many_arguments)]
fn run_input(
    model: &Analyzer,
    args: &UncertaintyArgs,
    case: &CaseData,
    input: &str,
    image: &[f32],
    present: [bool; 4],
    truth: Option<&[u8]>,
    pool: Option<&mut VoxelPool>,
) -> anyhow::Result<InputResult> {
    let t0 = Instant::now();
    let mc = model
        .voxel_mc(image, case.dims, present, args.overlap, args.mc_passes, args.seed)
        .with_context(|| format!("{} ({input})", case.name))?;
    let brain = brain_mask(&case.image, case.voxels());
    let voxel_ml = case.spacing.iter().product::<f64>() / 1000.0;
    let uncertainty = case_uncertainty(&mc, &brain, voxel_ml);
    let voxel = match truth {
        Some(t) => {
            if let Some(pool) = pool {
                pool.add(&mc, t, &brain)?;
            }
            Some(case_voxel_scores(&mc, t, &brain)?)
        }
        None => None,
    };
    let seconds = t0.elapsed().as_secs_f64();
    eprintln!(
        "  {} {input}: brain entropy {:.4}, task std {:.4}, tumour {:.1} mL{} ({seconds:.1} s)",
        case.name,
        uncertainty.brain_entropy,
        uncertainty.task_std_mean,
        uncertainty.predicted_tumour_ml,
        voxel.as_ref().and_then(|v| v.brain.auroc[0].1).map(|a| format!(", AUROC(entropy) {a:.3}")).unwrap_or_default(),
    );
    Ok(InputResult { input: input.to_string(), uncertainty, voxel, seconds })
}

// Long on purpose: a command's sequence: load the model and cases, run every input kind, pool, write; its steps share the loaded cases.
pub fn run(args: UncertaintyArgs) -> anyhow::Result<()> {
    if let Some(json) = &args.render {
        let bytes = std::fs::read(json).with_context(|| format!("reading {}", json.display()))?;
        let report: Report = serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", json.display()))?;
        write_outputs(&args.out, &report, false)?;
        eprintln!("wrote {} from {}", args.out.display(), json.display());
        return Ok(());
    }
    let weights = args.weights.clone().context("--weights is required")?;
    let started = Instant::now();
    let device = args.compute.device()?;
    let mut model = Analyzer::load(&weights, device).with_context(|| format!("loading {}", weights.display()))?;
    if let Some(p) = args.decoder_dropout {
        model.set_decoder_dropout(p)?;
    }
    anyhow::ensure!(args.mc_passes >= 2, "--mc-passes must be at least 2");
    let variants: Vec<Variant> =
        args.variants.iter().filter(|v| !v.is_empty()).map(|v| Variant::parse(v)).collect::<Result<_, _>>()?;
    let data = crate::cases::load(&args.cases, &args.labels, SplitConfig::All, false, args.compute.threads)?;
    let data_sha256 = data.sha256();
    let n = if args.limit > 0 { args.limit.min(data.cases.len()) } else { data.cases.len() };
    anyhow::ensure!(n > 0, "no case in {:?}", args.cases);
    eprintln!(
        "{}: {n} case(s), {} MC passes, decoder dropout {}, inputs: original{}",
        model.version(),
        args.mc_passes,
        model.config().decoder_dropout,
        variants.iter().map(|v| format!(", {}", v.name())).collect::<String>()
    );
    let mut pool = VoxelPool::default();
    let mut cases = Vec::with_capacity(n);
    let mut task_points = Vec::new();
    for (i, case) in data.cases.iter().take(n).enumerate() {
        let truth: Option<Vec<u8>> = case.has_seg.then(|| case.seg.clone());
        let mut inputs = Vec::with_capacity(1 + variants.len());
        let original =
            run_input(&model, &args, case, "original", &case.image, case.present, truth.as_deref(), Some(&mut pool))?;
        for (t, name) in TASK_NAMES.iter().enumerate() {
            if let Some(label) = case.tasks[t] {
                task_points.push(TaskPoint {
                    case: case.name.clone(),
                    task: name.to_string(),
                    p: original.uncertainty.task_mean[t],
                    std: original.uncertainty.task_std[t],
                    label,
                });
            }
        }
        inputs.push(original);
        for v in &variants {
            let (image, present) = v.apply(&case.image, case.present, case.voxels(), args.seed ^ i as u64);
            inputs.push(run_input(&model, &args, case, &v.name(), &image, present, truth.as_deref(), None)?);
        }
        cases.push(CaseResult { name: case.name.clone(), dims: case.dims, inputs });
    }
    drop(data);
    let mut ood = Vec::new();
    for (name, dir) in &args.ood {
        let set = crate::cases::load(std::slice::from_ref(dir), &[], SplitConfig::All, false, args.compute.threads)?;
        let mut results = Vec::new();
        for case in &set.cases {
            results.push((
                case.name.clone(),
                run_input(&model, &args, case, name, &case.image, case.present, None, None)?,
            ));
        }
        ood.push((name.clone(), results));
    }

    // Comparisons of every other input with the originals.
    let originals: Vec<&CaseUncertainty> = cases.iter().map(|c| &c.inputs[0].uncertainty).collect();
    let mean_ml = |v: &[&CaseUncertainty]| v.iter().map(|u| u.predicted_tumour_ml).sum::<f64>() / v.len().max(1) as f64;
    let compare = |input: &str, others: &[&CaseUncertainty], paired: bool| Comparison {
        input: input.to_string(),
        paired,
        scores: CASE_SCORES
            .iter()
            .map(|s| {
                let a: Vec<Option<f64>> = originals.iter().map(|u| u.score(s)).collect();
                let b: Vec<Option<f64>> = others.iter().map(|u| u.score(s)).collect();
                (s.to_string(), compare_scores(&a, &b, paired))
            })
            .collect(),
        tumour_ml: (mean_ml(&originals), mean_ml(others)),
    };
    let mut comparisons = Vec::new();
    for (k, v) in variants.iter().enumerate() {
        let others: Vec<&CaseUncertainty> = cases.iter().map(|c| &c.inputs[k + 1].uncertainty).collect();
        comparisons.push(compare(&v.name(), &others, true));
    }
    for (name, results) in &ood {
        let others: Vec<&CaseUncertainty> = results.iter().map(|(_, r)| &r.uncertainty).collect();
        comparisons.push(compare(name, &others, false));
    }
    let pooled = (!pool.correct.is_empty()).then(|| pool.report(args.bins));
    drop(pool);
    let conf: Vec<f32> = task_points.iter().map(|p| p.p.max(1.0 - p.p) as f32).collect();
    let right: Vec<bool> = task_points.iter().map(|p| (p.p >= 0.5) == p.label).collect();
    let report = Report {
        command: command_line(),
        model_version: model.version().to_string(),
        weights: weights.display().to_string(),
        decoder_dropout: model.config().decoder_dropout,
        mc_passes: args.mc_passes,
        seed: args.seed,
        overlap: args.overlap,
        data_sha256,
        measures: serde_json::json!({
            "entropy": "predictive entropy of the MC-mean class distribution (nats, 0..ln 4)",
            "mutual_info": "predictive entropy minus the mean single-pass entropy (nats; epistemic part)",
            "class_std": "std over passes of the probability of the argmax class (paper eq. 6)",
            "wrong_voxel": "argmax of the MC-mean probabilities (no label cleanup) differs from the expert class",
            "brain": "voxels non-zero in any prepared channel",
            "tumour_region": "brain voxels in the predicted or the expert whole tumour",
            "task_std_mean": "mean over the 4 tasks of the std over passes of P(positive)",
            "task_entropy_mean": "mean over the 4 tasks of the binary entropy of the MC-mean P(positive)",
        }),
        task_ece: top_label_ece(&conf, &right, 10),
        task_bins: task_bins(&task_points, args.task_bins),
        task_points,
        cases,
        ood,
        pooled,
        comparisons,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_outputs(&args.out, &report, true)?;
    eprintln!("wrote {} ({:.0} s)", args.out.display(), report.seconds);
    Ok(())
}

/// Writes the Markdown and charts, and the JSON unless re-rendering from it (a parsed float
/// may differ from the written one in its last digit).
fn write_outputs(out: &Path, r: &Report, json: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let p = out.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))
    };
    if json {
        write("uncertainty.json", &serde_json::to_vec_pretty(r)?)?;
    }
    write("uncertainty.md", markdown(r).as_bytes())?;
    if let Some(p) = &r.pooled {
        write("fig5c_voxels.png", &voxel_chart(p, r).to_png()?)?;
    }
    if !r.task_bins.is_empty() {
        write(
            "fig5c_tasks.png",
            &bins_chart(&r.task_bins, &task_title(r), "task uncertainty bin (std of P)").to_png()?,
        )?;
    }
    for (score, file, label) in [
        ("brain_entropy", "ood_brain_entropy.png", "mean voxel entropy in brain"),
        ("task_std_mean", "ood_task_std.png", "mean task std of P"),
    ] {
        write(file, &ood_chart(r, score, label).to_png()?)?;
    }
    Ok(())
}

fn task_title(r: &Report) -> String {
    format!("Tasks: ECE and error by uncertainty ({} predictions)", r.task_points.len())
}

/// A y range top just above the largest value whose quarters are round numbers.
fn max_y(values: impl Iterator<Item = f64>) -> f64 {
    let m = values.fold(0.0, f64::max);
    if !(m > 0.0 && m.is_finite()) {
        return 1.0;
    }
    let quarter = m * 1.02 / 4.0;
    let p = 10f64.powf(quarter.log10().floor());
    let f = [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0].into_iter().find(|f| f * p >= quarter);
    4.0 * f.unwrap_or(10.0) * p
}

/// ECE and error rate against the uncertainty bin (1 = least uncertain) for the entropy and
/// the class std voxel measures.
fn voxel_chart(p: &PooledVoxelReport, r: &Report) -> Figure {
    let pick = |m: VoxelMeasure| p.bins.iter().find(|(k, _)| *k == m).map(|(_, b)| b.as_slice()).unwrap_or(&[]);
    let (ent, std) = (pick(VoxelMeasure::Entropy), pick(VoxelMeasure::ClassStd));
    let nb = ent.len().max(std.len()).max(1);
    let ymax = max_y(ent.iter().chain(std).flat_map(|b| [b.ece, b.error_rate]));
    let mut c = Figure::new(
        format!("Voxels: ECE and error by uncertainty ({} passes)", r.mc_passes),
        "uncertainty bin (equal counts, 1 = lowest)",
        "ECE / error rate",
    )
    .size(760, 480)
    .x_range(0.5, nb as f64 + 0.5)
    .y_range(0.0, ymax)
    .categories((1..=nb).map(|k| (k as f64, k.to_string())).collect())
    .legend_at(gmmas_plot::Corner::UpperLeft);
    for (bins, what, ece_c, err_c) in [(ent, "entropy", BLUE, RED), (std, "class-std", GREEN, ORANGE)] {
        let ece: Vec<(f64, f64)> = bins.iter().enumerate().map(|(k, b)| ((k + 1) as f64, b.ece)).collect();
        let err: Vec<(f64, f64)> = bins.iter().enumerate().map(|(k, b)| ((k + 1) as f64, b.error_rate)).collect();
        c.add(&format!("ECE ({what} bins)"), &ece, ece_c, Mark::LineDots);
        c.add(&format!("error ({what} bins)"), &err, err_c, Mark::LineDots);
    }
    c
}

fn bins_chart(bins: &[UncertaintyBin], title: &str, x_label: &str) -> Figure {
    let nb = bins.len().max(1);
    let ymax = max_y(bins.iter().flat_map(|b| [b.ece, b.error_rate]));
    let mut c = Figure::new(title, x_label, "ECE / error rate")
        .size(760, 480)
        .x_range(0.5, nb as f64 + 0.5)
        .y_range(0.0, ymax)
        .categories((1..=nb).map(|k| (k as f64, k.to_string())).collect())
        .legend_at(gmmas_plot::Corner::UpperLeft);
    let ece: Vec<(f64, f64)> = bins.iter().enumerate().map(|(k, b)| ((k + 1) as f64, b.ece)).collect();
    let err: Vec<(f64, f64)> = bins.iter().enumerate().map(|(k, b)| ((k + 1) as f64, b.error_rate)).collect();
    c.add("ECE", &ece, BLUE, Mark::LineDots);
    c.add("error rate", &err, RED, Mark::LineDots);
    c
}

/// Every input kind's case-level `score` as dots (one per case) with the mean as a bar.
fn ood_chart(r: &Report, score: &str, label: &str) -> Figure {
    let mut columns: Vec<(String, Vec<f64>)> = Vec::new();
    let kinds = r.cases.first().map(|c| c.inputs.len()).unwrap_or(0);
    for k in 0..kinds {
        let name = r.cases[0].inputs[k].input.clone();
        columns.push((name, r.cases.iter().filter_map(|c| c.inputs.get(k)?.uncertainty.score(score)).collect()));
    }
    for (name, results) in &r.ood {
        columns.push((name.clone(), results.iter().filter_map(|(_, x)| x.uncertainty.score(score)).collect()));
    }
    let ymax = max_y(columns.iter().flat_map(|(_, v)| v.iter().copied()));
    let width = (160 * columns.len() + 140).max(760) as u32;
    let mut c = Figure::new(format!("Case-level uncertainty by input ({} passes)", r.mc_passes), "input", label)
        .size(width, 480)
        .x_range(0.5, columns.len() as f64 + 0.5)
        // Headroom so that the legend (upper right) never covers a case.
        .y_range(0.0, ymax * 1.25)
        .categories(columns.iter().enumerate().map(|(k, (n, _))| ((k + 1) as f64, n.clone())).collect());
    for (k, (_, v)) in columns.iter().enumerate() {
        let x = (k + 1) as f64;
        let pts: Vec<(f64, f64)> =
            v.iter().enumerate().map(|(i, &y)| (x - 0.15 + 0.3 * i as f64 / v.len().max(1) as f64, y)).collect();
        c.add(if k == 0 { "one case" } else { "" }, &pts, BLUE, Mark::Dots);
        if !v.is_empty() {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            c.add(if k == 0 { "mean" } else { "" }, &[(x - 0.25, mean), (x + 0.25, mean)], RED, Mark::Line);
        }
    }
    c
}

fn f(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.3}"))
}

fn e(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-3 { format!("{v:.2e}") } else { format!("{v:.4}") }
}

fn auroc_of(a: &[(VoxelMeasure, Option<f64>)], m: VoxelMeasure) -> Option<f64> {
    a.iter().find(|(k, _)| *k == m).and_then(|(_, v)| *v)
}

/// A Markdown table of uncertainty bins; `names` are the headers of the range, count and mean
/// uncertainty columns, and confidence, error rate and ECE get `digits` decimals.
fn bin_table(s: &mut String, names: [&str; 3], bins: &[UncertaintyBin], digits: usize) {
    use std::fmt::Write;
    let [range, count, mean] = names;
    let _ = writeln!(
        s,
        "| bin | {range} | {count} | {mean} | mean confidence | error rate | ECE |\n|---|---|---|---|---|---|---|"
    );
    for (k, b) in bins.iter().enumerate() {
        let (lo, hi) = (b.lo.map_or("min".into(), e), b.hi.map_or("max".into(), e));
        let _ = writeln!(
            s,
            "| {} | {lo} – {hi} | {} | {} | {:.digits$} | {:.digits$} | {:.digits$} |",
            k + 1,
            b.count,
            e(b.mean_uncertainty),
            b.mean_confidence,
            b.error_rate,
            b.ece
        );
    }
}

// Long on purpose: a linear template of the report's sections, in the order a reader meets them.
fn markdown(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "# MC-Dropout uncertainty against error: {}\n", r.model_version);
    let _ = writeln!(s, "Produced by:\n\n```sh\n{}\n```\n", r.command);
    let _ = writeln!(
        s,
        "{} MC-Dropout passes per input (dropout masks seeded by {}), decoder dropout {}, overlap {}; \
         {} in-distribution case(s), {:.0} s in all. Measures (see `uncertainty.json`, `measures`): \
         `entropy` = predictive entropy of the MC mean (nats), `mutual_info` = its epistemic part, \
         `class_std` = std over passes of the chosen class's probability (eq. 6). A voxel is wrong \
         when the argmax of the MC mean (no label cleanup) differs from the expert label.\n",
        r.mc_passes,
        r.seed,
        r.decoder_dropout,
        r.overlap,
        r.cases.len(),
        r.seconds
    );
    if let Some(p) = &r.pooled {
        let _ = writeln!(s, "## Voxel uncertainty for finding wrong voxels (AUROC)\n");
        let _ = writeln!(s, "| voxels | n | wrong | entropy | mutual info | class std |\n|---|---|---|---|---|---|");
        for (name, reg) in [("brain, pooled", &p.brain), ("tumour region, pooled", &p.tumour_region)] {
            let _ = writeln!(
                s,
                "| {name} | {} | {} ({:.2} %) | {} | {} | {} |",
                reg.voxels,
                reg.wrong,
                100.0 * reg.wrong as f64 / reg.voxels.max(1) as f64,
                f(auroc_of(&reg.auroc, VoxelMeasure::Entropy)),
                f(auroc_of(&reg.auroc, VoxelMeasure::MutualInfo)),
                f(auroc_of(&reg.auroc, VoxelMeasure::ClassStd)),
            );
        }
        let _ = writeln!(s, "\nPer case (brain; tumour region = predicted or expert whole tumour):\n");
        let _ = writeln!(
            s,
            "| case | wrong in brain | entropy | mutual info | class std | tumour region: wrong | entropy | class std |\n|---|---|---|---|---|---|---|---|"
        );
        for c in &r.cases {
            let Some(v) = &c.inputs[0].voxel else { continue };
            let _ = writeln!(
                s,
                "| {} | {:.2} % | {} | {} | {} | {:.1} % | {} | {} |",
                c.name,
                100.0 * v.brain.wrong as f64 / v.brain.voxels.max(1) as f64,
                f(auroc_of(&v.brain.auroc, VoxelMeasure::Entropy)),
                f(auroc_of(&v.brain.auroc, VoxelMeasure::MutualInfo)),
                f(auroc_of(&v.brain.auroc, VoxelMeasure::ClassStd)),
                100.0 * v.tumour_region.wrong as f64 / v.tumour_region.voxels.max(1) as f64,
                f(auroc_of(&v.tumour_region.auroc, VoxelMeasure::Entropy)),
                f(auroc_of(&v.tumour_region.auroc, VoxelMeasure::ClassStd)),
            );
        }
        let _ = writeln!(
            s,
            "\n## Fig. 5c analogue, voxels: ECE within uncertainty bins\n\n![voxels](fig5c_voxels.png)\n\n\
             Pooled brain voxels in equal-count bins of each measure (ties kept together, so a bin can \
             hold more); ECE inside a bin uses 10 confidence bins. ECE of all pooled brain voxels: {}.\n",
            f(p.ece)
        );
        for (m, bins) in &p.bins {
            let _ = writeln!(s, "{}:\n", m.as_str());
            bin_table(&mut s, ["range", "voxels", "mean uncertainty"], bins, 4);
            let _ = writeln!(s);
        }
    }
    let _ = writeln!(
        s,
        "## Fig. 5c analogue, classification tasks\n\n![tasks](fig5c_tasks.png)\n\n\
         Every labelled (case, task) prediction: P = MC mean, uncertainty = std of P over the passes. \
         {} predictions, ECE over all of them {}.\n",
        r.task_points.len(),
        f(r.task_ece)
    );
    bin_table(&mut s, ["std range", "predictions", "mean std"], &r.task_bins, 3);
    let _ = writeln!(
        s,
        "\n## Case-level uncertainty on inputs unlike the training data\n\n\
         ![brain entropy](ood_brain_entropy.png) ![task std](ood_task_std.png)\n\n\
         Each other input against the {} original case(s): mean score of each side, AUROC of the score for \
         telling the other input from the originals (1 = always higher, 0.5 = no signal), and for variants \
         of the same cases how many rose. `tumour_entropy` is over the predicted tumour (inputs without one \
         are left out).\n",
        r.cases.len()
    );
    let _ = write!(s, "| input | tumour mL (orig → input) |");
    for sc in CASE_SCORES {
        let _ = write!(s, " {sc}: orig → input, AUROC, rose |");
    }
    let _ = write!(s, "\n|---|---|");
    for _ in CASE_SCORES {
        let _ = write!(s, "---|");
    }
    let _ = writeln!(s);
    for c in &r.comparisons {
        let _ = write!(s, "| {} | {:.1} → {:.1} |", c.input, c.tumour_ml.0, c.tumour_ml.1);
        for (_, k) in &c.scores {
            let rose = match (k.paired_higher, k.n_pairs) {
                (Some(h), Some(n)) => format!("{h}/{n}"),
                _ => "–".into(),
            };
            let mean = |v: Option<f64>| v.map_or("–".into(), e);
            let _ = write!(s, " {} → {}, {}, {} |", mean(k.mean_in), mean(k.mean_out), f(k.auroc), rose);
        }
        let _ = writeln!(s);
    }
    s
}
