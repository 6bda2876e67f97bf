//! `gmmas bench`: per-stage and end-to-end time and peak memory for one full-size case, and the
//! preprocessing of a real case against the nibabel/numpy baseline, run in the same process run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use gmmas_imaging::{Limits, PrepOptions};
use gmmas_models::{Analyzer, InferOptions};
use gmmas_phantom::{PhantomConfig, generate};

#[derive(Args)]
pub struct BenchArgs {
    /// A real BraTS case folder for the preprocessing comparison.
    #[arg(long)]
    pub real_case: Option<PathBuf>,
    /// The Python baseline script.
    #[arg(long, default_value = "../shared/bench/py_preprocess_baseline.py")]
    pub baseline: PathBuf,
    /// Python with nibabel and numpy.
    #[arg(long, env = "GMMAS_BENCH_PYTHON", default_value = "python3")]
    pub python: String,
    /// Repetitions of the preprocessing comparison (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Also run MONAI's BraTS-bundle network over a full case (needs monai in `--python`).
    #[arg(long)]
    pub monai: bool,
    /// The MONAI anchor script.
    #[arg(long, default_value = "../shared/bench/monai_cpu_anchor.py")]
    pub monai_script: PathBuf,
    /// Model weights.
    #[arg(long, env = "GMMAS_MODEL_PATH")]
    pub model: Option<PathBuf>,
    /// CPU threads for libtorch.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[command(flatten)]
    pub torch: crate::bench_torch::TorchArgs,
    #[command(flatten)]
    pub mc: crate::bench_mc::McArgs,
}

/// Peak resident memory of this process so far, in MiB.
pub(crate) fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ours_load_prep(case: &Path) -> anyhow::Result<(f64, [usize; 3])> {
    let t = Instant::now();
    let files = gmmas_imaging::brats::discover_case(case)?;
    let mut vols = Vec::new();
    for (m, p) in &files.modalities {
        vols.push((*m, gmmas_imaging::read_volume(&std::fs::read(p)?, &Limits::default())?));
    }
    let refs: Vec<_> = vols.iter().map(|(m, v)| (*m, v)).collect();
    let prepared = gmmas_imaging::prepare(&refs, &PrepOptions::default())?;
    Ok((t.elapsed().as_secs_f64(), prepared.dims))
}

/// Fails with the command that installs `module` when `python` cannot import it (the bench does
/// not change the user's environment itself).
fn ensure_module(python: &str, module: &str, requirement: &str) -> anyhow::Result<()> {
    let status = Command::new(python)
        .args(["-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {python}"))?;
    if !status.success() {
        bail!(
            "--monai needs the Python package {module} in {python}, which cannot import it; install it \
             beside torch 2.11 with `{python} -m pip install {requirement}` (or pass --python with an \
             interpreter that has it)"
        );
    }
    Ok(())
}

/// Runs a Python script under a wrapper that reports its peak RSS; returns (wall s, peak MiB, stdout).
fn python_run(python: &str, script: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<(f64, f64, String)> {
    // VmHWM belongs to the process image (reset by exec); ru_maxrss would include the
    // parent's memory at fork time.
    let wrapper = "import sys,runpy; p=sys.argv[1]; sys.argv=[p]+sys.argv[2:]; \
                   runpy.run_path(p, run_name='__main__'); \
                   print('PEAK_KB', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])";
    let t = Instant::now();
    let out = Command::new(python)
        .args(["-c", wrapper])
        .arg(script)
        .args(args)
        .output()
        .with_context(|| format!("running {python}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("baseline failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let peak = text
        .lines()
        .find_map(|l| l.strip_prefix("PEAK_KB "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN);
    Ok((secs, peak, text.to_string()))
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    gmmas_models::set_threads(args.threads);
    println!("# gmmas bench ({} libtorch threads)", args.threads);
    if args.torch.torch_python {
        crate::bench_torch::run(&args.torch, &args.python, args.model.as_deref(), args.threads)?;
    }
    if args.mc.mc > 0 || args.mc.queue > 0 {
        let case = args
            .mc
            .mc_case
            .as_ref()
            .or(args.real_case.as_ref())
            .ok_or_else(|| anyhow::anyhow!("--mc and --queue need a case folder: --mc-case (or --real-case)"))?;
        let model_path = args.model.clone().unwrap_or_else(gmmas_models::default_model_path);
        crate::bench_mc::run_sections(&args.mc, case, &model_path, args.repeats)?;
    }
    if args.mc.skip_pipeline {
        return Ok(());
    }
    if let Some(case) = &args.real_case {
        println!("## preprocessing of a real case: load 4 modalities + mask + clip/z-score + crop");
        let mut ours = Vec::new();
        let mut dims = [0; 3];
        for _ in 0..args.repeats.max(1) {
            let (s, d) = ours_load_prep(case)?;
            ours.push(s);
            dims = d;
        }
        let ours_peak = peak_rss_mib();
        let mut py = Vec::new();
        let mut py_peak = 0.0f64;
        for _ in 0..args.repeats.max(1) {
            let (s, p, _) = python_run(&args.python, &args.baseline, &[case.as_os_str()])?;
            py.push(s);
            py_peak = py_peak.max(p);
        }
        let (o, p) = (median(ours), median(py));
        println!("gmmas   : {o:.3} s median of {} (peak RSS {ours_peak:.0} MiB), cropped grid {dims:?}", args.repeats);
        println!("python  : {p:.3} s median of {} (peak RSS {py_peak:.0} MiB), process wall time", args.repeats);
        println!("ratio   : {:.3} (gmmas / python; goal <= 0.3)", o / p);
    }

    println!("## one full 240x240x155 four-modality case through every stage (in process)");
    let t_all = Instant::now();
    let t = Instant::now();
    let case = generate(&PhantomConfig { dims: [240, 240, 155], seed: 11 });
    let encoded: Vec<(gmmas_imaging::Modality, Vec<u8>)> =
        case.volumes.iter().map(|(m, v)| (*m, gmmas_imaging::write_volume(v, true))).collect();
    stage("phantom + encode (not part of analysis)", t.elapsed());
    let t_pipeline = Instant::now();
    let t = Instant::now();
    let mut vols = Vec::new();
    for (m, bytes) in &encoded {
        vols.push((*m, gmmas_imaging::read_volume(bytes, &Limits::default())?));
    }
    stage("decode + validate", t.elapsed());
    let t = Instant::now();
    let refs: Vec<_> = vols.iter().map(|(m, v)| (*m, v)).collect();
    let prepared = gmmas_imaging::prepare(&refs, &PrepOptions::default())?;
    stage(&format!("preprocess -> {:?}", prepared.dims), t.elapsed());
    let t = Instant::now();
    let model_path = args.model.clone().unwrap_or_else(gmmas_models::default_model_path);
    let model = Analyzer::load(&model_path, gmmas_models::parse_device("auto")?)?;
    stage(&format!("load model {}", model.version()), t.elapsed());
    let t = Instant::now();
    let out = gmmas_models::analyze_prepared(&model, &prepared, &InferOptions::default())?;
    stage(&format!("inference + restore + NIfTI encode (inference {} ms)", out.inference_ms), t.elapsed());
    println!("end-to-end (decode .. segmentation file): {:.2} s", t_pipeline.elapsed().as_secs_f64());
    let ours_peak = peak_rss_mib();
    if args.monai {
        println!("## MONAI BraTS-bundle SegResNet over a full case (segmentation only), same machine, same run");
        ensure_module(&args.python, "monai", "monai==1.5.1")?;
        let (wall, peak, text) = python_run(&args.python, &args.monai_script, &[])?;
        let secs = text
            .split_whitespace()
            .skip_while(|w| *w != "seconds")
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        println!("monai   : {secs:.2} s inference ({wall:.2} s process), peak RSS {peak:.0} MiB");
        println!(
            "gmmas   : {:.2} s inference (segmentation + 4 classifications), peak RSS {ours_peak:.0} MiB",
            out.inference_ms as f64 / 1000.0
        );
        println!(
            "ratio   : time {:.2}, memory {:.2} (gmmas / monai; goal <= 1.0)",
            out.inference_ms as f64 / 1000.0 / secs,
            ours_peak / peak
        );
    }
    println!("total including phantom generation: {:.2} s", t_all.elapsed().as_secs_f64());
    println!("peak RSS of this process: {:.0} MiB", peak_rss_mib());
    Ok(())
}

fn stage(name: &str, d: Duration) {
    println!("{:>8.3} s  peak {:>6.0} MiB  {name}", d.as_secs_f64(), peak_rss_mib());
}
