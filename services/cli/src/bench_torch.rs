//! `gmmas bench --torch-python`: the network timed in tch (this process) against the same network
//! in PyTorch from Python (`models/bench/torch_net.py`), whole-volume inference and one training step.

use std::io::{BufRead, BufReader, Lines, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use gmmas_models::probe::{InferenceProbe, random_train_batch, write_logit_check};
use gmmas_models::train::{TrainConfig, Trainer};
use gmmas_models::{Analyzer, Device};
use serde_json::{Value, json};

/// Largest logit difference between tch and the replica for the comparison to count.
const CHECK_TOL: f64 = 1e-3;

/// Options of the tch / PyTorch comparison (flattened into `gmmas bench`).
#[derive(Args)]
pub struct TorchArgs {
    /// Also time the network in tch against the same network in PyTorch from Python
    /// (`--torch-script`, run with `--python`): inference and one training step, ratios tch / PyTorch.
    #[arg(long)]
    pub torch_python: bool,
    /// The PyTorch re-implementation of the network.
    #[arg(long, default_value = "models/bench/torch_net.py")]
    pub torch_script: PathBuf,
    /// Inference input D,H,W (z, y, x): default the 143x168x141 crop of the bench's full case,
    /// padded to multiples of 8 (the one window `gmmas analyze` runs on it).
    #[arg(long, default_value = "144,168,144", value_parser = parse_dims)]
    pub torch_size: [i64; 3],
    /// Training patch D,H,W (default: the model's own patch), batch `--torch-batch`.
    #[arg(long, value_parser = parse_dims)]
    pub torch_patch: Option<[i64; 3]>,
    /// Training batch size.
    #[arg(long, default_value_t = 1)]
    pub torch_batch: i64,
    /// Untimed runs before the timed ones, on each side.
    #[arg(long, default_value_t = 1)]
    pub torch_warmup: usize,
    /// Timed runs on each side (the median is compared).
    #[arg(long, default_value_t = 3)]
    pub torch_repeats: usize,
    /// Also write the numbers as JSON to this file.
    #[arg(long)]
    pub torch_json: Option<PathBuf>,
}

fn parse_dims(s: &str) -> Result<[i64; 3], String> {
    let v: Vec<i64> =
        s.split(',').map(|p| p.trim().parse::<i64>().map_err(|e| format!("{s:?}: {e}"))).collect::<Result<_, _>>()?;
    match v[..] {
        [d, h, w] if v.iter().all(|&x| x > 0 && x % 8 == 0) => Ok([d, h, w]),
        _ => Err(format!("{s:?}: expected D,H,W, positive multiples of 8")),
    }
}

/// The interpreter: `--python` as given, except that the default `python3` means the venv's
/// Python when VIRTUAL_ENV is set.
fn interpreter(python: &str) -> String {
    match std::env::var_os("VIRTUAL_ENV") {
        Some(v) if python == "python3" => PathBuf::from(v).join("bin/python").to_string_lossy().into_owned(),
        _ => python.to_string(),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// `torch_net.py bench --serve`: the replica in its own process, running one workload per
/// request, so that its runs interleave with ours and both meet the same machine load.
struct PyServer {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: PathBuf,
    script: PathBuf,
}

impl PyServer {
    /// Starts the server and waits until it has checked itself against `check` and loaded
    /// its workloads; returns it with the check report and its `READY` line.
    fn start(python: &str, script: &Path, args: &[String], check: &Path) -> anyhow::Result<(Self, Value, Value)> {
        let stderr = check.with_extension("stderr");
        let mut child = Command::new(python)
            .arg(script)
            .arg("bench")
            .args(args)
            .arg("--check")
            .arg(check)
            .arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?)
            .spawn()
            .with_context(|| format!("running {python}"))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let mut server = Self { child, stdin, stdout, stderr, script: script.to_path_buf() };
        let check = serde_json::from_str(&server.expect("CHECK ")?)?;
        let ready = serde_json::from_str(&server.expect("READY ")?)?;
        Ok((server, check, ready))
    }

    /// The rest of the next output line that starts with `prefix` (others are skipped).
    fn expect(&mut self, prefix: &str) -> anyhow::Result<String> {
        for line in self.stdout.by_ref() {
            let line = line?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.to_string());
            }
            if let Some(e) = line.strip_prefix("ERROR ") {
                bail!("{}: {e}", self.script.display());
            }
        }
        let _ = self.child.wait();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        bail!("{} ended before printing {prefix:?}:\n{err}", self.script.display())
    }

    /// Seconds of one run of `workload` (`infer` or `step`) as the script measured it.
    fn time(&mut self, workload: &str) -> anyhow::Result<f64> {
        writeln!(self.stdin, "{workload}")?;
        self.stdin.flush()?;
        Ok(self.expect("TIME ")?.trim().parse()?)
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// Seconds of one run of `f`.
fn once(f: &mut impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// `warmup` untimed runs of each side, then `repeats` timed pairs, alternating which side goes
/// first (tch, python, python, tch, ...) so that a change of load meets both alike.
fn interleaved(
    warmup: usize,
    repeats: usize,
    mut ours: impl FnMut() -> anyhow::Result<()>,
    py: &mut PyServer,
    workload: &str,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    for _ in 0..warmup {
        ours()?;
        py.time(workload)?;
    }
    let (mut t, mut p) = (Vec::new(), Vec::new());
    for r in 0..repeats {
        if r % 2 == 0 {
            t.push(once(&mut ours)?);
            p.push(py.time(workload)?);
        } else {
            p.push(py.time(workload)?);
            t.push(once(&mut ours)?);
        }
    }
    Ok((t, p))
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "?".into())
}

/// Times the model of `model` in tch and in PyTorch from Python and prints both and the ratios.
pub fn run(args: &TorchArgs, python: &str, model: Option<&Path>, threads: usize) -> anyhow::Result<()> {
    let python = interpreter(python);
    let model = model.map_or_else(gmmas_models::default_model_path, Path::to_path_buf);
    let analyzer = Analyzer::load(&model, Device::Cpu)?;
    let version = analyzer.version().to_string();
    let patch = args.torch_patch.unwrap_or(analyzer.config().patch.map(|v| v as i64));
    drop(analyzer);
    let (warmup, repeats) = (args.torch_warmup, args.torch_repeats.max(1));
    println!(
        "## tch against PyTorch from Python, the same network ({}), CPU, {threads} threads",
        args.torch_script.display()
    );

    // The replica first checks that it computes our logits, then loads its workloads.
    let check_path = std::env::temp_dir().join(format!("gmmas-torch-check-{}.safetensors", std::process::id()));
    write_logit_check(&model, &check_path)?;
    let dims = |v: [i64; 3]| format!("{},{},{}", v[0], v[1], v[2]);
    let py_args: Vec<String> = vec![
        "--weights".into(),
        model.to_string_lossy().into_owned(),
        "--threads".into(),
        threads.to_string(),
        "--size".into(),
        dims(args.torch_size),
        "--patch".into(),
        dims(patch),
        "--batch".into(),
        args.torch_batch.to_string(),
    ];
    let started = PyServer::start(&python, &args.torch_script, &py_args, &check_path);
    let _ = std::fs::remove_file(&check_path);
    let (mut py, check, meta) = started?;
    let diff = check["seg_max_abs_diff"]
        .as_f64()
        .unwrap_or(f64::NAN)
        .max(check["tasks_max_abs_diff"].as_f64().unwrap_or(f64::NAN));
    println!("check   : same input [1, 4, 32, 48, 40], largest logit difference tch vs PyTorch {diff:.2e}");
    if diff.is_nan() || diff >= CHECK_TOL {
        bail!("the PyTorch replica does not compute our network (logits differ by {diff}, tolerance {CHECK_TOL})");
    }

    // Inference: one whole-volume forward pass, eval mode, no gradient.
    let [d, h, w] = args.torch_size;
    let probe = InferenceProbe::new(&model, args.torch_size)?;
    let infer = || -> anyhow::Result<()> {
        probe.run()?;
        Ok(())
    };
    let (tch_infer, py_infer) = interleaved(warmup, repeats, infer, &mut py, "infer")?;
    drop(probe);

    // Training: Trainer::step (forward, eq. (7) objective, backward, clipping, AdamW).
    let mut trainer = Trainer::from_weights(&model, TrainConfig::default(), Device::Cpu)?;
    let batch = random_train_batch(args.torch_batch, patch);
    let step = || -> anyhow::Result<()> {
        trainer.step(&batch)?;
        Ok(())
    };
    let (tch_step, py_step) = interleaved(warmup, repeats, step, &mut py, "step")?;
    drop(py);

    let (ti, pi, ts, ps) = (median(&tch_infer), median(&py_infer), median(&tch_step), median(&py_step));
    let list = |v: &[f64]| v.iter().map(|s| format!("{s:.3}")).collect::<Vec<_>>().join(" ");
    let torch = meta["torch"].as_str().unwrap_or("?");
    println!(
        "model {version}; PyTorch {torch}; median of {repeats} after {warmup} warm-up, each side, runs interleaved"
    );
    println!(
        "inference [1, 4, {d}, {h}, {w}]: tch {ti:.3} s ({}), pytorch {pi:.3} s ({}), ratio tch / pytorch {:.3} (goal <= 1.00)",
        list(&tch_infer),
        list(&py_infer),
        ti / pi
    );
    println!(
        "train step [{}, 4, {}, {}, {}]: tch {ts:.3} s ({}), pytorch {ps:.3} s ({}), ratio tch / pytorch {:.3} (goal <= 1.00)",
        args.torch_batch,
        patch[0],
        patch[1],
        patch[2],
        list(&tch_step),
        list(&py_step),
        ts / ps
    );
    let report = json!({
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "cpu": cpu_name(),
        "threads": threads,
        "model": version,
        "pytorch": torch,
        "python": meta["python"],
        "warmup": warmup,
        "repeats": repeats,
        "check_max_abs_logit_diff": diff,
        "inference": {
            "input": [1, 4, d, h, w],
            "tch_s": tch_infer, "pytorch_s": py_infer,
            "tch_median_s": ti, "pytorch_median_s": pi, "ratio": ti / pi,
        },
        "train_step": {
            "input": [args.torch_batch, 4, patch[0], patch[1], patch[2]],
            "tch_s": tch_step, "pytorch_s": py_step,
            "tch_median_s": ts, "pytorch_median_s": ps, "ratio": ts / ps,
        },
    });
    println!("TORCH_PYTHON {report}");
    if let Some(path) = &args.torch_json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
