//! `gmmas bench --mc N`: what MC-Dropout uncertainty costs on one case (one deterministic pass
//! against N passes on the tumour's box and N passes over every voxel) and how far apart they are.

use std::time::Instant;

use gmmas_models::config::MODALITIES;
use gmmas_models::{Analyzer, InferOptions, Prediction};
use serde::Serialize;

/// One way of running the passes, timed.
#[derive(Debug, Serialize)]
pub struct Variant {
    pub name: String,
    pub mc_passes: usize,
    pub mc_roi: bool,
    pub mc_batch: usize,
    /// Median seconds of `Analyzer::analyze` over the repeats.
    pub seconds: f64,
    pub runs: Vec<f64>,
    /// Peak RSS of the process during this variant (MiB; the peak is reset before it).
    pub peak_rss_mib: f64,
    /// Seconds over the deterministic pass's.
    pub ratio_to_one_pass: f64,
}

/// How two predictions of the same case differ.
#[derive(Debug, Serialize)]
pub struct Agreement {
    pub a: String,
    pub b: String,
    /// Voxels with the same label.
    pub label_agreement: f64,
    /// Whole-tumour Dice of one against the other.
    pub wt_dice: f64,
    /// Mean uncertainty (std of the foreground probability) over the voxels either calls tumour.
    pub mean_uncertainty_wt: [f64; 2],
    /// Share of the second's uncertainty mass on voxels where the first's is exactly 0.
    pub b_mass_where_a_zero: f64,
    /// Largest difference of the task probabilities.
    pub max_task_difference: f64,
}

#[derive(Debug, Serialize)]
pub struct McReport {
    pub dims: [usize; 3],
    pub passes: usize,
    pub repeats: usize,
    pub variants: Vec<Variant>,
    pub agreement: Vec<Agreement>,
}

/// Resets this process's peak RSS (VmHWM) to its current RSS (Linux `clear_refs`, value 5).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn agreement_of(a: (&str, &Prediction), b: (&str, &Prediction)) -> Agreement {
    let (pa, pb) = (a.1, b.1);
    let n = pa.labels.len().max(1) as f64;
    let same = pa.labels.iter().zip(&pb.labels).filter(|(x, y)| x == y).count() as f64;
    let (mut both, mut ta, mut tb) = (0usize, 0usize, 0usize);
    for (x, y) in pa.labels.iter().zip(&pb.labels) {
        both += usize::from(*x != 0 && *y != 0);
        ta += usize::from(*x != 0);
        tb += usize::from(*y != 0);
    }
    let wt_dice = if ta + tb == 0 { 1.0 } else { 2.0 * both as f64 / (ta + tb) as f64 };
    let wt_mean = |p: &Prediction| -> f64 {
        let Some(u) = &p.uncertainty else { return 0.0 };
        let (s, c) = u
            .iter()
            .zip(pa.labels.iter().zip(&pb.labels))
            .filter(|(_, (x, y))| **x != 0 || **y != 0)
            .fold((0.0, 0usize), |(s, c), (v, _)| (s + f64::from(*v), c + 1));
        if c == 0 { 0.0 } else { s / c as f64 }
    };
    let b_mass_where_a_zero = match (&pa.uncertainty, &pb.uncertainty) {
        (Some(ua), Some(ub)) => {
            let total: f64 = ub.iter().map(|&v| f64::from(v)).sum();
            let outside: f64 = ua.iter().zip(ub).filter(|(x, _)| **x == 0.0).map(|(_, y)| f64::from(*y)).sum();
            if total > 0.0 { outside / total } else { 0.0 }
        }
        _ => 0.0,
    };
    let max_task_difference = pa
        .probabilities
        .to_array()
        .iter()
        .zip(pb.probabilities.to_array())
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max);
    Agreement {
        a: a.0.to_string(),
        b: b.0.to_string(),
        label_agreement: same / n,
        wt_dice,
        mean_uncertainty_wt: [wt_mean(pa), wt_mean(pb)],
        b_mass_where_a_zero,
        max_task_difference,
    }
}

/// Times one deterministic pass and `passes` MC passes (tumour box, `mc_batch` 0 and 1; every
/// voxel) on `input` (`dims` x-fastest, channel-major), `repeats` times each, and compares the
/// outputs (two runs of every-voxel MC give the yardstick of run-to-run variation).
pub fn run(
    model: &Analyzer,
    input: &[f32],
    dims: [usize; 3],
    present: [bool; MODALITIES],
    passes: usize,
    repeats: usize,
) -> anyhow::Result<McReport> {
    let repeats = repeats.max(1);
    let base = InferOptions::default();
    let mut specs = vec![
        ("one deterministic pass", InferOptions { mc_passes: 0, ..base }),
        (
            "MC on the tumour box, all passes in one forward",
            InferOptions { mc_passes: passes, mc_roi: true, mc_batch: 0, ..base },
        ),
        (
            "MC on the tumour box, one pass per forward",
            InferOptions { mc_passes: passes, mc_roi: true, mc_batch: 1, ..base },
        ),
        ("MC over every voxel", InferOptions { mc_passes: passes, mc_roi: false, ..base }),
    ];
    if model.device().is_cuda() {
        specs.push(("one deterministic pass, half precision", InferOptions { mc_passes: 0, half: true, ..base }));
    }
    // Warm-up (allocator, kernels).
    model.analyze(input, dims, present, &base)?;
    let mut variants = Vec::new();
    let mut outputs = Vec::new();
    let mut one_pass = f64::NAN;
    for &(name, opts) in &specs {
        reset_peak();
        let mut runs = Vec::new();
        let mut last = None;
        for _ in 0..repeats {
            let t = Instant::now();
            last = Some(model.analyze(input, dims, present, &opts)?);
            runs.push(t.elapsed().as_secs_f64());
        }
        let seconds = median(&runs);
        if opts.mc_passes == 0 {
            one_pass = seconds;
        }
        let peak_rss_mib = crate::bench::peak_rss_mib();
        println!(
            "{seconds:>8.2} s  peak {peak_rss_mib:>6.0} MiB  ratio {:>5.2}  {name} ({} passes)",
            seconds / one_pass,
            opts.mc_passes.max(1)
        );
        variants.push(Variant {
            name: name.to_string(),
            mc_passes: opts.mc_passes,
            mc_roi: opts.mc_roi,
            mc_batch: opts.mc_batch,
            seconds,
            runs,
            peak_rss_mib,
            ratio_to_one_pass: seconds / one_pass,
        });
        if let Some(p) = last {
            outputs.push((name, p));
        }
    }
    let full_again = model.analyze(input, dims, present, &specs[3].1)?;
    let named = |i: usize| (outputs[i].0, &outputs[i].1);
    let mut agreement = vec![
        agreement_of(named(1), named(3)),
        agreement_of(named(2), named(3)),
        agreement_of(("MC over every voxel, second run", &full_again), named(3)),
        agreement_of(named(0), named(3)),
    ];
    if outputs.len() > 4 {
        agreement.push(agreement_of(named(4), named(0)));
    }
    for a in &agreement {
        println!(
            "agreement: labels {:.4}, WT Dice {:.4}, WT uncertainty {:.4} / {:.4}, share of the second's uncertainty where the first's is 0: {:.3}, task p diff {:.4}  ({} vs {})",
            a.label_agreement,
            a.wt_dice,
            a.mean_uncertainty_wt[0],
            a.mean_uncertainty_wt[1],
            a.b_mass_where_a_zero,
            a.max_task_difference,
            a.a,
            a.b
        );
    }
    Ok(McReport { dims, passes, repeats, variants, agreement })
}

/// Cases per minute of `workers` threads sharing one model with `workers` replicas, each
/// analysing the same case from a queue of `queue` (no services: the network and its
/// pre/post-processing in process).
#[derive(Debug, Serialize)]
pub struct Throughput {
    pub workers: usize,
    pub queue: usize,
    pub seconds: f64,
    pub cases_per_minute: f64,
    pub peak_rss_mib: f64,
}

/// Runs the queue with each worker count in `workers` (the model gets that many replicas).
pub fn throughput(
    model: &mut Analyzer,
    input: &[f32],
    dims: [usize; 3],
    present: [bool; MODALITIES],
    opts: &InferOptions,
    queue: usize,
    workers: &[usize],
) -> anyhow::Result<Vec<Throughput>> {
    let mut out = Vec::new();
    for &n in workers {
        let n = n.max(1);
        model.set_replicas(n)?;
        reset_peak();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let model: &Analyzer = model;
        let t = Instant::now();
        std::thread::scope(|s| -> anyhow::Result<()> {
            let runs: Vec<_> = (0..n)
                .map(|_| {
                    s.spawn(|| -> anyhow::Result<()> {
                        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < queue {
                            model.analyze(input, dims, present, opts)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for r in runs {
                r.join().map_err(|_| anyhow::anyhow!("a worker panicked"))??;
            }
            Ok(())
        })?;
        let seconds = t.elapsed().as_secs_f64();
        let row = Throughput {
            workers: n,
            queue,
            seconds,
            cases_per_minute: queue as f64 * 60.0 / seconds,
            peak_rss_mib: crate::bench::peak_rss_mib(),
        };
        println!(
            "{:>8.2} s  peak {:>6.0} MiB  {:>6.2} cases/min  {} worker(s), queue of {queue}, {} MC passes",
            row.seconds, row.peak_rss_mib, row.cases_per_minute, n, opts.mc_passes
        );
        out.push(row);
    }
    Ok(out)
}

/// Flags of the MC-cost and throughput sections of `gmmas bench`.
#[derive(clap::Args, Debug)]
pub struct McArgs {
    /// Time one deterministic pass against N MC-Dropout passes (0 = skip).
    #[arg(long, default_value_t = 0)]
    pub mc: usize,
    /// Cases per minute over a queue of this many copies of the case (0 = skip).
    #[arg(long, default_value_t = 0)]
    pub queue: usize,
    /// Worker counts for `--queue` (each gets that many model replicas).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub workers: Vec<usize>,
    /// BraTS case folder for `--mc` and `--queue` (default: `--real-case`).
    #[arg(long)]
    pub mc_case: Option<std::path::PathBuf>,
    /// Write the `--mc` / `--queue` results here as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Stop after the `--torch-python`, `--mc` and `--queue` sections.
    #[arg(long)]
    pub skip_pipeline: bool,
}

/// Runs the sections `args` asks for on `case` with the model at `model_path`.
pub fn run_sections(
    args: &McArgs,
    case: &std::path::Path,
    model_path: &std::path::Path,
    repeats: usize,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let files = gmmas_imaging::brats::discover_case(case).with_context(|| format!("reading {}", case.display()))?;
    let mut vols = Vec::new();
    for (m, p) in &files.modalities {
        vols.push((*m, gmmas_imaging::read_volume(&std::fs::read(p)?, &gmmas_imaging::Limits::default())?));
    }
    let refs: Vec<_> = vols.iter().map(|(m, v)| (*m, v)).collect();
    let prepared = gmmas_imaging::prepare(&refs, &gmmas_imaging::PrepOptions::default())?;
    let mut model = Analyzer::load(model_path, gmmas_models::parse_device("auto")?)?;
    let mut report = serde_json::json!({ "case": case.display().to_string(), "model": model.version() });
    if args.mc > 0 {
        println!("## MC-Dropout passes against one pass ({} on {:?})", model.version(), prepared.dims);
        let r = run(&model, &prepared.data, prepared.dims, prepared.present, args.mc, repeats)?;
        report["mc"] = serde_json::to_value(r)?;
    }
    if args.queue > 0 {
        println!("## cases per minute, queue of {}", args.queue);
        let opts = InferOptions::default();
        let r =
            throughput(&mut model, &prepared.data, prepared.dims, prepared.present, &opts, args.queue, &args.workers)?;
        report["throughput"] = serde_json::to_value(r)?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
