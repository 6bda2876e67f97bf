//! The training program: a TOML run config ([`TrainRunConfig`]) drives data loading, the
//! augmented batch stream, the optimisation loop, validation, checkpoints and the final model.
//!
//! Files written under the run's `out` folder:
//! - `run_config.toml` (the resolved config), `data_manifest.json` (every case with its
//!   subset, labels and file sha256, plus the data sha256) and `split.csv` (`case,subset`,
//!   usable as `gmmas eval --split`);
//! - `train_log.jsonl`: one JSON object per epoch (losses per task, sigmas, lr, validation
//!   Dice, seconds); a human line per epoch goes to stderr;
//! - `checkpoint.safetensors` + `checkpoint.json` (model card) + `checkpoint_state.json`
//!   (step, epoch, `log sigma`, data sha256, ...), rewritten at every checkpoint; `best.*`
//!   for the best validation WT Dice;
//! - `model.safetensors` + `model.json`: the final model with training notes (data hash,
//!   steps, wall time, final metrics).
//!
//! Resuming (`resume = true`) restores the weights, the step (so the learning-rate schedule
//! and the batch stream continue exactly where they stopped: batches are a pure function of
//! seed and step) and the task `log sigma` values. Not restored, because tch does not
//! expose them: the optimiser's internal state (SGD momentum buffers, AdamW moment
//! estimates — they restart from zero) and libtorch's RNG stream (dropout masks after a
//! resume differ from an uninterrupted run; it is reseeded with `seed + step`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

mod config;
mod eval;

pub use self::config::{ClassWeightMode, ModelSection, Schedule, TrainRunConfig, TrainSection};
pub use self::eval::{CaseEval, EvalOptions, EvalReport, RegionSummary, TaskSummary, evaluate};

use crate::ModelError;
use crate::adapt::TrainMode;
use crate::analyzer::{ModelMeta, sidecar_path};
use crate::augment::{BatchStream, HostBatch, Sampler};
use crate::config::{ModelConfig, TASK_NAMES, TASKS};
use crate::data::{ClassBalance, DataError, Dataset, Subset};
use crate::infer::InferOptions;
use crate::metrics::Region;
use crate::train::{Batch, StepLosses, Trainer};

/// Errors of a training or evaluation run.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// The run config is invalid.
    #[error("run config: {0}")]
    Config(String),
    /// The data has problems (all of them listed).
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The checkpoint cannot be resumed.
    #[error("resume: {0}")]
    Resume(String),
    /// Training stopped (e.g. a non-finite loss).
    #[error("training: {0}")]
    Training(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FitError + '_ {
    move |source| FitError::Io { path: path.to_path_buf(), source }
}

/// Options of [`fit`] that are not part of the run config.
#[derive(Debug, Clone, Copy, Default)]
pub struct FitOptions {
    /// Continue from `<out>/checkpoint.*`.
    pub resume: bool,
    /// Print a human line per epoch to stderr.
    pub quiet: bool,
}

/// What a finished run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FitReport {
    /// The final model (`<out>/model.safetensors`).
    pub model_path: PathBuf,
    /// Its version.
    pub model_version: String,
    /// Steps done in total (including those before a resume).
    pub steps: usize,
    /// Epochs done in total.
    pub epochs: usize,
    /// Steps done in this process.
    pub steps_this_run: usize,
    /// Seconds of this process's training loop (steps, validation, checkpoints).
    pub seconds: f64,
    /// Mean seconds per optimisation step in this process (batch wait + step; validation
    /// and checkpoints excluded).
    pub seconds_per_step: f64,
    /// sha256 of the data.
    pub data_sha256: String,
    /// Last validation (None without validation cases).
    pub final_validation: Option<ValidationSummary>,
    /// Whether `stop_at_wt_dice` ended the run early.
    pub stopped_early: bool,
    /// Whether `max_train_seconds` ended the run before its last step.
    #[serde(default)]
    pub stopped_at_time_budget: bool,
}

/// Validation numbers logged per epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationSummary {
    /// Subset validated on.
    pub on: Subset,
    /// Cases.
    pub n: usize,
    /// Mean Dice WT, TC, ET, ED.
    pub dice: [f64; 4],
    /// AUC per task (None without both classes).
    pub auc: [Option<f64>; TASKS],
    /// Seconds spent.
    pub seconds: f64,
}

/// Saved beside `checkpoint.safetensors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Steps done.
    pub step: usize,
    /// Epochs done.
    pub epoch: usize,
    /// eq. (7) `log sigma` (segmentation first).
    pub log_sigma: Vec<f64>,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Data the checkpoint was trained on.
    pub data_sha256: String,
    /// Network config.
    pub model: ModelConfig,
    /// Best validation WT Dice so far.
    pub best_wt_dice: Option<f64>,
    /// Training seconds so far (all processes).
    pub train_seconds: f64,
    /// What a resume does not restore.
    pub not_restored: Vec<String>,
}

const NOT_RESTORED: [&str; 3] = [
    "optimizer state (SGD momentum / AdamW moments restart from zero)",
    "libtorch RNG stream (dropout masks; reseeded with seed + step)",
    "weight average of train.weight_ema (restarts from the checkpoint's raw weights)",
];

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FitError> {
    Ok(crate::analyzer::write_atomic(path, bytes)?)
}

fn json_bytes(v: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap_or_default()
}

fn sigma_values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.detach().to_kind(Kind::Double).to_device(Device::Cpu)).unwrap_or_default()
}

/// Per-epoch running means of the step losses.
#[derive(Default)]
struct LossAccumulator {
    n: usize,
    total: f64,
    seg: f64,
    seg_dice: f64,
    global: (f64, usize),
    tasks: [(f64, usize); TASKS],
    sigma: Vec<f64>,
    distill: (f64, usize),
    partial_seg: (f64, usize),
    contrastive: (f64, usize),
    consistency: (f64, usize),
    confident_voxels: (f64, usize),
}

impl LossAccumulator {
    fn add(&mut self, l: &StepLosses) {
        self.n += 1;
        self.total += l.total;
        self.seg += l.seg;
        self.seg_dice += l.seg_dice;
        if let Some(g) = l.global_dice {
            self.global.0 += g;
            self.global.1 += 1;
        }
        for (acc, v) in self.tasks.iter_mut().zip(l.tasks) {
            if let Some(v) = v {
                acc.0 += v;
                acc.1 += 1;
            }
        }
        self.sigma = l.sigma.to_vec();
        for (acc, v) in [
            (&mut self.distill, l.distill),
            (&mut self.partial_seg, l.partial_seg),
            (&mut self.contrastive, l.contrastive),
            (&mut self.consistency, l.consistency.map(|c| c.loss)),
            (&mut self.confident_voxels, l.consistency.map(|c| c.confident_voxels)),
        ] {
            if let Some(v) = v {
                acc.0 += v;
                acc.1 += 1;
            }
        }
    }

    fn mean(v: (f64, usize)) -> Option<f64> {
        (v.1 > 0).then(|| v.0 / v.1 as f64)
    }

    fn json(&self) -> serde_json::Value {
        let n = self.n.max(1) as f64;
        let tasks: serde_json::Map<String, serde_json::Value> = TASK_NAMES
            .iter()
            .zip(self.tasks)
            .map(|(name, v)| (name.to_string(), serde_json::json!(Self::mean(v))))
            .collect();
        serde_json::json!({
            "total": self.total / n,
            "seg": self.seg / n,
            "seg_dice": self.seg_dice / n,
            "global_dice": Self::mean(self.global),
            "tasks": tasks,
            "distill": Self::mean(self.distill),
            "partial_seg": Self::mean(self.partial_seg),
            "contrastive": Self::mean(self.contrastive),
            "consistency": Self::mean(self.consistency),
            "teacher_confident_voxels": Self::mean(self.confident_voxels),
        })
    }

    fn human(&self) -> String {
        let n = self.n.max(1) as f64;
        let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.3}"));
        let t: Vec<String> = TASK_NAMES
            .iter()
            .zip(self.tasks)
            .map(|(name, v)| format!("{} {}", name.split('_').next().unwrap_or(name), f(Self::mean(v))))
            .collect();
        let s: Vec<String> = self.sigma.iter().map(|v| format!("{v:.2}")).collect();
        if let Some(c) = Self::mean(self.contrastive) {
            return format!("loss {:.4} (contrastive eq. 11)", c);
        }
        let mut adapt = match (Self::mean(self.distill), Self::mean(self.partial_seg)) {
            (Some(d), Some(p)) => format!(" distill mse {d:.4} partial seg {p:.3} |"),
            _ => String::new(),
        };
        if let (Some(c), Some(v)) = (Self::mean(self.consistency), Self::mean(self.confident_voxels)) {
            adapt.push_str(&format!(" unlabeled {c:.4} (teacher-confident voxels {:.1}%) |", 100.0 * v));
        }
        format!(
            "loss {:.4} ({} seg {:.3} dice {:.3} global {} | {}) sigma [{}]",
            self.total / n,
            adapt,
            self.seg / n,
            self.seg_dice / n,
            f(Self::mean(self.global)),
            t.join(" "),
            s.join(" ")
        )
    }
}

struct Paths {
    ckpt: PathBuf,
    state: PathBuf,
    best: PathBuf,
    model: PathBuf,
    log: PathBuf,
}

impl Paths {
    fn new(out: &Path) -> Self {
        Self {
            ckpt: out.join("checkpoint.safetensors"),
            state: out.join("checkpoint_state.json"),
            best: out.join("best.safetensors"),
            model: out.join("model.safetensors"),
            log: out.join("train_log.jsonl"),
        }
    }
}

/// Adds the Stage II teacher for the modes that learn from unlabeled batches.
fn with_ssl(t: Trainer, cfg: &TrainRunConfig) -> Result<Trainer, FitError> {
    Ok(match cfg.train.mode {
        TrainMode::SslConsistency => t.with_consistency(cfg.ssl.consistency.clone())?,
        TrainMode::FixMatch => t.with_consistency(cfg.ssl.consistency.clone().fixmatch())?,
        _ => t,
    })
}

fn restore_log_sigma(trainer: &Trainer, values: &[f64]) -> Result<(), FitError> {
    let current = trainer.log_sigma();
    if values.len() as i64 != current.size()[0] {
        return Err(FitError::Resume(format!(
            "checkpoint has {} log sigma values, the trainer {}",
            values.len(),
            current.size()[0]
        )));
    }
    let src = Tensor::from_slice(values).to_kind(current.kind()).to_device(current.device());
    let mut dst = current.shallow_clone();
    tch::no_grad(|| {
        dst.copy_(&src);
    });
    Ok(())
}

/// What a new or resumed trainer is built from.
struct TrainerSetup<'a> {
    tcfg: &'a crate::train::TrainConfig,
    device: Device,
    model_cfg: &'a ModelConfig,
    data_sha: &'a str,
}

/// The trainer and its checkpoint state: resumed from `paths` (after checking that the data,
/// model config and checkpoint agree), fine-tuned from `model.init`, or fresh.
fn open_trainer(
    cfg: &TrainRunConfig,
    paths: &Paths,
    resuming: bool,
    setup: &TrainerSetup<'_>,
    say: &dyn Fn(&str),
) -> Result<(Trainer, CheckpointState), FitError> {
    let TrainerSetup { tcfg, device, model_cfg, data_sha } = *setup;
    let opened = if resuming {
        let bytes = std::fs::read(&paths.state).map_err(io_err(&paths.state))?;
        let st: CheckpointState =
            serde_json::from_slice(&bytes).map_err(|e| FitError::Resume(format!("{}: {e}", paths.state.display())))?;
        if st.data_sha256 != data_sha {
            return Err(FitError::Resume(format!(
                "the data changed since the checkpoint (sha256 {} then, {} now); start a new run",
                &st.data_sha256[..16.min(st.data_sha256.len())],
                &data_sha[..16.min(data_sha.len())]
            )));
        }
        if st.model != *model_cfg {
            return Err(FitError::Resume("the model config differs from the checkpoint's".into()));
        }
        let meta: ModelMeta = std::fs::read(sidecar_path(&paths.ckpt))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| FitError::Resume("checkpoint card missing or unreadable".into()))?;
        let card_step = meta.training["notes"]["step"].as_u64();
        if card_step != Some(st.step as u64) {
            return Err(FitError::Resume(format!(
                "checkpoint weights (step {card_step:?}) and state (step {}) disagree",
                st.step
            )));
        }
        let t = with_ssl(
            Trainer::from_weights(&paths.ckpt, tcfg.clone(), device)?.with_mode(cfg.train.mode, cfg.adapt.clone())?,
            cfg,
        )?;
        restore_log_sigma(&t, &st.log_sigma)?;
        tch::manual_seed(cfg.seed.wrapping_add(st.step as u64) as i64);
        say(&format!("resuming from step {} (epoch {})", st.step, st.epoch));
        (t, st)
    } else {
        tch::manual_seed(cfg.seed as i64);
        let t = match &cfg.model.init {
            Some(w) => {
                let mut t = Trainer::from_weights(w, tcfg.clone(), device)?;
                if let Some(d) = cfg.model.decoder_dropout {
                    t.set_decoder_dropout(d)?;
                }
                if t.net().config() != model_cfg {
                    say("note: model.init weights define the network; [model] sizes are ignored");
                }
                t
            }
            None => Trainer::new(model_cfg.clone(), tcfg.clone(), cfg.seed as i64, device)?,
        };
        let t = with_ssl(t.with_mode(cfg.train.mode, cfg.adapt.clone())?, cfg)?;
        let st = CheckpointState {
            step: 0,
            epoch: 0,
            log_sigma: sigma_values(t.log_sigma()),
            lr: tcfg.lr,
            data_sha256: data_sha.to_string(),
            model: t.net().config().clone(),
            best_wt_dice: None,
            train_seconds: 0.0,
            not_restored: NOT_RESTORED.map(String::from).to_vec(),
        };
        let _ = std::fs::remove_file(&paths.log);
        (t, st)
    };
    Ok(opened)
}

/// The data of a run, read and checked before the first step.
struct RunData {
    data: Arc<Dataset>,
    ssl: crate::ssl::run::SslSetup,
    data_sha: String,
    train_idx: Vec<usize>,
    val_idx: Vec<usize>,
    balance: ClassBalance,
}

/// Loads and checks the run's cases, adds the semi-supervised modes' pseudo-labelled cases or
/// unlabeled sampler, and picks the train and validation indices.
fn load_run_data(
    cfg: &TrainRunConfig,
    model_cfg: &ModelConfig,
    device: Device,
    say: &dyn Fn(&str),
) -> Result<RunData, FitError> {
    let out = &cfg.out;
    let t_load = Instant::now();
    let mut data_cfg = cfg.data.clone();
    if data_cfg.threads == 0 {
        data_cfg.threads = cfg.threads;
    }
    let mut data = Dataset::load(&data_cfg)?;
    for w in &data.warnings {
        say(&format!("warning: {w}"));
    }
    // Semi-supervised modes: Stage I adds pseudo-labelled cases; Stage II gets a sampler.
    let ssl = crate::ssl::run::prepare(cfg, &mut data, model_cfg, device, out, say)?;
    let data = Arc::new(data);
    let data_sha = data.sha256();
    let train_idx = data.indices(Subset::Train);
    if train_idx.is_empty() {
        return Err(FitError::Config("no case in the train subset".into()));
    }
    let mut val_idx = data.indices(cfg.validate_on);
    if let Some(m) = cfg.validate_max_cases {
        val_idx.truncate(m);
    }
    if val_idx.is_empty() {
        say(&format!("note: no {} case: validation is off", cfg.validate_on.as_str()));
    }
    let balance = data.class_balance(&train_idx);
    say(&format!("mode: {}", cfg.train.mode.as_str()));
    say(&format!(
        "data: {} case(s) ({} train, {} {} for validation) loaded in {:.1} s; sha256 {}",
        data.cases.len(),
        train_idx.len(),
        val_idx.len(),
        cfg.validate_on.as_str(),
        t_load.elapsed().as_secs_f64(),
        &data_sha[..16]
    ));

    Ok(RunData { data, ssl, data_sha, train_idx, val_idx, balance })
}

/// What one epoch did, for its log line.
struct EpochStats<'a> {
    lr: f64,
    acc: &'a LossAccumulator,
    val: Option<&'a ValidationSummary>,
    seconds: f64,
    steps: usize,
    data_wait: f64,
    total_epochs: usize,
    total_steps: usize,
}

/// Appends the epoch's JSON line to `train_log.jsonl` and returns its one-line summary.
fn log_epoch(
    log: &mut std::fs::File,
    log_path: &Path,
    state: &CheckpointState,
    e: &EpochStats<'_>,
) -> Result<String, FitError> {
    let per_step = e.seconds / e.steps.max(1) as f64;
    let line = serde_json::json!({
        "epoch": state.epoch,
        "step": state.step,
        "lr": e.lr,
        "loss": e.acc.json(),
        "sigma": e.acc.sigma,
        "val": e.val,
        "seconds": e.seconds,
        "seconds_per_step": per_step,
        "data_wait_seconds": e.data_wait,
        "train_seconds": state.train_seconds,
    });
    writeln!(log, "{line}").map_err(io_err(log_path))?;
    let val_text = e.val.map_or(String::new(), |v| {
        format!(
            " | {} Dice WT {:.3} TC {:.3} ET {:.3} (n={}, {:.1} s)",
            v.on.as_str(),
            v.dice[0],
            v.dice[1],
            v.dice[2],
            v.n,
            v.seconds
        )
    });
    Ok(format!(
        "epoch {}/{} step {}/{} lr {:.2e} {}{} | {:.1} s ({:.2} s/step, data wait {:.1} s)",
        state.epoch,
        e.total_epochs,
        state.step,
        e.total_steps,
        e.lr,
        e.acc.human(),
        val_text,
        e.seconds,
        per_step,
        e.data_wait
    ))
}

/// The next labelled batch and, in semi-supervised mode, the next unlabeled one.
fn next_batches(
    stream: &mut BatchStream,
    unlabeled: Option<&mut BatchStream>,
    step: usize,
) -> Result<(HostBatch, Option<Batch>), FitError> {
    let hb = match stream.next_batch() {
        Some(Ok(b)) => b,
        Some(Err(e)) => return Err(FitError::Training(e)),
        None => return Err(FitError::Training(format!("batch stream ended early at step {step}"))),
    };
    let unl = match unlabeled.map(BatchStream::next_batch) {
        None => None,
        Some(Some(Ok(b))) => Some(b.to_batch()),
        Some(Some(Err(e))) => return Err(FitError::Training(e)),
        Some(None) => return Err(FitError::Training(format!("unlabeled stream ended early at step {step}"))),
    };
    Ok((hb, unl))
}

/// Dice per region and AUC per task of the trainer's current (averaged) weights on `cases`.
fn validate(
    trainer: &Trainer,
    name: &str,
    data: &Dataset,
    cases: &[usize],
    on: Subset,
) -> Result<ValidationSummary, FitError> {
    let tv = Instant::now();
    let opts = EvalOptions { infer: InferOptions::default(), hd95: false, ..EvalOptions::default() };
    let a = trainer.analyzer(name, serde_json::Value::Null)?;
    let r = evaluate(&a, data, cases, &opts, |_| {})?;
    Ok(ValidationSummary {
        on,
        n: r.cases_evaluated,
        dice: Region::ALL.map(|reg| r.dice(reg)),
        auc: std::array::from_fn(|t| r.tasks[t].metrics.auc),
        seconds: tv.elapsed().as_secs_f64(),
    })
}

/// A step bar with loss and ETA on a terminal; hidden otherwise (plain per-epoch lines).
fn step_bar(quiet: bool, start_step: usize, total_steps: usize) -> indicatif::ProgressBar {
    if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(total_steps as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} step {pos}/{len} [{bar:30}] {msg} | {elapsed_precise} elapsed, eta {eta}",
    ) {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_position(start_step as u64);
    b
}

/// Trains a model as `cfg` says. See the module docs for the files written.
///
/// Longer than the house limit on purpose: this is the step loop itself, whose state (batch
/// streams, loss accumulator, progress bar, checkpoint state, timers) is shared by every phase
/// of an epoch; the phases are the functions above (`load_run_data`, `open_trainer`,
/// `next_batches`, `validate`, `log_epoch`).
pub fn fit(cfg: &TrainRunConfig, opts: &FitOptions) -> Result<FitReport, FitError> {
    cfg.check()?;
    let say = |m: &str| {
        if !opts.quiet {
            eprintln!("{m}");
        }
    };
    let out = &cfg.out;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let paths = Paths::new(out);
    let resuming = opts.resume && paths.state.exists() && paths.ckpt.exists();
    if opts.resume && !resuming {
        say(&format!("no checkpoint in {}: starting a new run", out.display()));
    }
    if !opts.resume && (paths.ckpt.exists() || paths.model.exists()) {
        return Err(FitError::Config(format!(
            "{} already holds a run: pass --resume to continue it, or choose another out folder",
            out.display()
        )));
    }
    crate::device::set_threads(cfg.threads);
    let device = crate::device::parse_device(&cfg.device)?;
    let model_cfg = cfg.model.resolve()?;

    // Data: everything is read and checked before the first step.
    let RunData { data, ssl, data_sha, train_idx, val_idx, balance } = load_run_data(cfg, &model_cfg, device, &say)?;
    let tcfg = cfg.train.train_config(&balance);

    let sampler =
        Sampler::new(data.clone(), train_idx.clone(), cfg.augment.clone(), &model_cfg, cfg.train.batch_size, cfg.seed)?;
    let spe = cfg.train.steps_per_epoch.unwrap_or(sampler.steps_per_epoch());
    let total_steps = cfg.train.steps.unwrap_or_else(|| cfg.train.epochs.unwrap_or(1) * spe);
    let total_epochs = total_steps.div_ceil(spe);

    // Trainer: fresh, fine-tuned or resumed.
    let (mut trainer, mut state) = open_trainer(
        cfg,
        &paths,
        resuming,
        &TrainerSetup { tcfg: &tcfg, device, model_cfg: &model_cfg, data_sha: &data_sha },
        &say,
    )?;
    let model_cfg = trainer.net().config().clone();
    state.model = model_cfg.clone();

    // Provenance beside the checkpoints.
    write_atomic(&out.join("run_config.toml"), cfg.to_toml()?.as_bytes())?;
    write_atomic(&out.join("data_manifest.json"), &json_bytes(&data.manifest()))?;
    let split: String =
        data.cases.iter().zip(&data.subsets).map(|(c, s)| format!("{},{}\n", c.name, s.as_str())).collect();
    write_atomic(&out.join("split.csv"), format!("case,subset\n{split}").as_bytes())?;

    let name = cfg.name.clone().unwrap_or_else(|| model_cfg.name.clone());
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&paths.log).map_err(io_err(&paths.log))?;
    let notes = |st: &CheckpointState, extra: serde_json::Value| {
        serde_json::json!({
            "step": st.step,
            "epoch": st.epoch,
            "data_sha256": data_sha,
            "cases": {
                "train": train_idx.iter().map(|&i| data.cases[i].name.clone()).collect::<Vec<_>>(),
                "val": data.indices(Subset::Val).iter().map(|&i| data.cases[i].name.clone()).collect::<Vec<_>>(),
            },
            "class_balance": balance,
            "augment": cfg.augment,
            "schedule": {"kind": cfg.train.schedule, "total_steps": total_steps, "batch_size": cfg.train.batch_size},
            "seed": cfg.seed,
            "mode": cfg.train.mode,
            "init": cfg.model.init.as_ref().map(|p| p.display().to_string()),
            "train_seconds": st.train_seconds,
            "extra": extra,
        })
    };

    let start_step = state.step;
    let bar = step_bar(opts.quiet, start_step, total_steps);
    // Lines printed while the bar runs go above it.
    let say = |m: &str| bar.suspend(|| say(m));
    let t_run = Instant::now();
    let mut stream = BatchStream::spawn(sampler, start_step, total_steps, cfg.train.prefetch);
    let mut unl_stream = ssl.unlabeled.map(|s| BatchStream::spawn(s, start_step, total_steps, cfg.train.prefetch));
    let mut acc = LossAccumulator::default();
    let mut epoch_start = Instant::now();
    let mut wait = 0.0;
    let mut step_seconds = 0.0;
    let mut last_val = None;
    let mut stopped_early = false;
    let mut stopped_at_time_budget = false;
    let peak_lr = tcfg.lr;
    let seconds_before = state.train_seconds;
    for step in start_step..total_steps {
        let tw = Instant::now();
        let (hb, unl) = next_batches(&mut stream, unl_stream.as_mut(), step)?;
        wait += tw.elapsed().as_secs_f64();
        // With a time budget the schedule runs on whichever is further: steps or seconds.
        let elapsed = seconds_before + t_run.elapsed().as_secs_f64();
        let sched_step = match cfg.max_train_seconds {
            Some(m) => step.max(((elapsed / m) * total_steps as f64) as usize).min(total_steps - 1),
            None => step,
        };
        let lr = cfg.train.lr_at(peak_lr, sched_step, total_steps);
        trainer.set_lr(lr);
        let losses = trainer.step_with(&hb.to_batch(), unl.as_ref()).map_err(|e| {
            FitError::Training(format!(
                "step {step} (cases {}): {e}; the last checkpoint is in {}",
                hb.cases.join(", "),
                out.display()
            ))
        })?;
        acc.add(&losses);
        step_seconds += tw.elapsed().as_secs_f64();
        state.step = step + 1;
        bar.set_position(state.step as u64);
        bar.set_message(format!("loss {:.3} lr {lr:.1e}", losses.total));
        state.lr = lr;
        let time_up = cfg
            .max_train_seconds
            .is_some_and(|m| seconds_before + t_run.elapsed().as_secs_f64() >= m && state.step < total_steps);
        let end_of_epoch = state.step % spe == 0 || state.step == total_steps || time_up;
        if !end_of_epoch {
            continue;
        }
        state.epoch = state.step.div_ceil(spe);
        let epoch_secs = epoch_start.elapsed().as_secs_f64();
        let steps_in_epoch = acc.n;
        let last = state.step == total_steps || time_up;
        let due = last || (cfg.validate_every > 0 && state.epoch.is_multiple_of(cfg.validate_every));
        let mut val = None;
        if due && !val_idx.is_empty() {
            val = Some(validate(&trainer, &name, &data, &val_idx, cfg.validate_on)?);
        }
        state.train_seconds += epoch_secs;
        state.log_sigma = sigma_values(trainer.log_sigma());
        let stats = EpochStats {
            lr,
            acc: &acc,
            val: val.as_ref(),
            seconds: epoch_secs,
            steps: steps_in_epoch,
            data_wait: wait,
            total_epochs,
            total_steps,
        };
        say(&log_epoch(&mut log, &paths.log, &state, &stats)?);
        let improved = val.as_ref().is_some_and(|v| state.best_wt_dice.is_none_or(|b| v.dice[0] > b));
        if let Some(v) = &val {
            if improved {
                state.best_wt_dice = Some(v.dice[0]);
                trainer.analyzer(&name, notes(&state, serde_json::json!({"validation": v})))?.save(&paths.best)?;
            }
            stopped_early = cfg.stop_at_wt_dice.is_some_and(|t| v.dice[0] >= t);
        }
        if last || stopped_early || state.epoch.is_multiple_of(cfg.train.checkpoint_every.max(1)) {
            trainer.raw_analyzer(&name, notes(&state, serde_json::Value::Null))?.save(&paths.ckpt)?;
            write_atomic(&paths.state, &json_bytes(&state))?;
        }
        if val.is_some() {
            last_val = val;
        }
        acc = LossAccumulator::default();
        wait = 0.0;
        epoch_start = Instant::now();
        if stopped_early {
            say(&format!(
                "validation WT Dice reached {:.3} >= stop_at_wt_dice: stopping",
                state.best_wt_dice.unwrap_or(0.0)
            ));
            break;
        }
        if time_up {
            stopped_at_time_budget = true;
            say(&format!("max_train_seconds spent after {} of {} steps: stopping", state.step, total_steps));
            break;
        }
    }
    bar.finish_and_clear();
    drop(stream);
    drop(unl_stream);
    let seconds = t_run.elapsed().as_secs_f64();
    let steps_this_run = state.step - start_step;
    let sps = step_seconds / steps_this_run.max(1) as f64;
    let final_notes = notes(
        &state,
        serde_json::json!({
            "final_validation": last_val,
            "stopped_early": stopped_early,
            "stopped_at_time_budget": stopped_at_time_budget,
            "seconds_per_step_last_run": sps,
            "run_config": cfg,
            "device": format!("{device:?}"),
            "not_restored_on_resume": NOT_RESTORED,
        }),
    );
    let model = trainer.analyzer(&name, final_notes)?;
    model.save(&paths.model)?;
    say(&format!(
        "saved {} ({}) after {} step(s), {:.1} s ({:.2} s/step)",
        paths.model.display(),
        model.version(),
        state.step,
        seconds,
        sps
    ));
    Ok(FitReport {
        model_path: paths.model,
        model_version: model.version().to_string(),
        steps: state.step,
        epochs: state.epoch,
        steps_this_run,
        seconds,
        seconds_per_step: sps,
        data_sha256: data_sha,
        final_validation: last_val,
        stopped_early,
        stopped_at_time_budget,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzer::Analyzer;
    use crate::data::{ClassBalance, DataConfig, join_clean};
    use crate::train::{OptimizerKind, TrainConfig};

    fn phantom_config(root: &Path, n: usize, dims: [usize; 3], extra: &str) -> TrainRunConfig {
        gmmas_phantom::write_dataset(n, 11, dims, &root.join("data")).unwrap();
        let text = format!(
            r#"
seed = 3
out = "run"
threads = 2
device = "cpu"
{extra}

[data]
dirs = ["data"]
labels = ["data/labels.csv"]

[model]
profile = "tiny"
"#
        );
        TrainRunConfig::from_toml(&text, root).unwrap()
    }

    #[test]
    fn config_parses_and_round_trips() {
        let text = r#"
out = "runs/a"
[data]
dirs = ["d"]
split = { kind = "kfold", k = 5, fold = 2, seed = 1 }
[model]
profile = "small"
patch = [64, 64, 64]
[train]
optimizer = "sgd"
lr = 0.01
schedule = "cosine"
epochs = 3
[augment]
cutmix_p = 0.5
"#;
        let c = TrainRunConfig::from_toml(text, Path::new("/base")).unwrap();
        assert_eq!(c.out, Path::new("/base/runs/a"));
        assert_eq!(join_clean(Path::new("a/b/configs"), Path::new("../../out")), Path::new("a/out"));
        assert_eq!(join_clean(Path::new("c"), Path::new("../../x")), Path::new("../x"));
        assert_eq!(c.data.dirs, vec![PathBuf::from("/base/d")]);
        let m = c.model.resolve().unwrap();
        assert_eq!(m.patch, [64, 64, 64]);
        assert_eq!(m.channels, ModelConfig::small().channels);
        let t = c.train.train_config(&ClassBalance { counts: [[1, 3]; TASKS], weights: [[2.0, 2.0 / 3.0]; TASKS] });
        assert_eq!(t.optimizer, OptimizerKind::Sgd);
        assert_eq!(t.task_class_weights[0], [2.0, 2.0 / 3.0]);
        let back = TrainRunConfig::from_toml(&c.to_toml().unwrap(), Path::new("/")).unwrap();
        assert_eq!(back, c);
        // Schedules.
        let s = &c.train;
        assert!((s.lr_at(0.01, 0, 100) - 0.01).abs() < 1e-12);
        assert!(s.lr_at(0.01, 99, 100) < 1e-5);
        assert!(TrainRunConfig::from_toml("out = 1", Path::new("/")).is_err());
        let bad =
            TrainRunConfig::from_toml("out = \"o\"\n[data]\ndirs=[]\n[train]\nepochs = 1\nsteps = 2\n", Path::new("/"))
                .unwrap();
        assert!(bad.check().is_err());
    }

    #[test]
    fn tiny_fit_writes_a_loadable_model_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = phantom_config(
            dir.path(),
            3,
            [48, 48, 48],
            "validate_every = 1\n[train]\nsteps = 4\nsteps_per_epoch = 2\nbatch_size = 2\n",
        );
        cfg.data.split = crate::data::SplitConfig::KFold { k: 3, fold: 0, seed: 0 };
        let quiet = FitOptions { resume: false, quiet: true };
        let r = fit(&cfg, &quiet).unwrap();
        assert_eq!((r.steps, r.epochs, r.steps_this_run), (4, 2, 4));
        let v = r.final_validation.as_ref().unwrap();
        assert_eq!(v.n, 1);
        let out = &cfg.out;
        let a = Analyzer::load(&out.join("model.safetensors"), Device::Cpu).unwrap();
        assert_eq!(a.version(), r.model_version);
        let notes = &a.training_notes()["notes"];
        assert_eq!(notes["data_sha256"], r.data_sha256);
        assert_eq!(notes["step"], 4);
        for f in [
            "train_log.jsonl",
            "checkpoint.safetensors",
            "checkpoint.json",
            "checkpoint_state.json",
            "run_config.toml",
            "data_manifest.json",
            "split.csv",
            "model.json",
        ] {
            assert!(out.join(f).exists(), "{f} missing");
        }
        let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["step"], 4);
        assert!(lines[1]["loss"]["total"].as_f64().unwrap().is_finite());
        assert!(lines[1]["val"]["dice"][0].as_f64().is_some());

        // A second run into the same folder must ask for --resume.
        let e = fit(&cfg, &quiet).unwrap_err().to_string();
        assert!(e.contains("--resume"), "{e}");
        // Resume and extend to 6 steps: continues at step 4.
        cfg.train.steps = Some(6);
        let r2 = fit(&cfg, &FitOptions { resume: true, quiet: true }).unwrap();
        assert_eq!((r2.steps, r2.steps_this_run), (6, 2));
        let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
        let steps: Vec<u64> = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, vec![2, 4, 6]);
        let st: CheckpointState =
            serde_json::from_slice(&std::fs::read(out.join("checkpoint_state.json")).unwrap()).unwrap();
        assert_eq!(st.step, 6);
        // Changed data refuses to resume.
        std::fs::write(dir.path().join("data/labels.csv"), "case_id,grade\nPhantom_0000,GBM\n").unwrap();
        cfg.train.steps = Some(8);
        let e = fit(&cfg, &FitOptions { resume: true, quiet: true }).unwrap_err().to_string();
        assert!(e.contains("data changed"), "{e}");
    }

    /// A tiny time budget ends a run of many steps early, with a saved, validated model;
    /// the decayed learning rate shows the schedule followed the clock, not the steps.
    #[test]
    fn time_budget_stops_the_run_and_the_schedule_follows_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = phantom_config(
            dir.path(),
            3,
            [32, 32, 32],
            "validate_every = 0\nmax_train_seconds = 3.0\n[train]\nsteps = 100000\nsteps_per_epoch = 1000\n\
             batch_size = 1\nschedule = \"cosine\"\nweight_ema = 0.9\n",
        );
        cfg.data.split = crate::data::SplitConfig::KFold { k: 3, fold: 0, seed: 0 };
        let r = fit(&cfg, &FitOptions { resume: false, quiet: true }).unwrap();
        assert!(r.stopped_at_time_budget);
        assert!(r.steps > 0 && r.steps < 100_000, "{}", r.steps);
        assert!(r.final_validation.is_some());
        let log = std::fs::read_to_string(cfg.out.join("train_log.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        // The last step's rate was set from the clock at its start. Step-based cosine would still
        // be at the peak (r.steps / 100000 of the way: above 0.99999 of it); by the clock, a step
        // that starts 0.1 s into the 3 s is already 3 % of the way (below 0.998 of the peak). The
        // bound holds on a loaded machine too, as long as a first step takes less than the budget.
        assert!(r.steps >= 2, "one step used the whole budget: {} steps", r.steps);
        let lr = last["lr"].as_f64().unwrap();
        let peak = cfg.train.lr.unwrap_or(TrainConfig::default().lr);
        assert!(lr < 0.998 * peak, "lr {lr} (peak {peak}) should have decayed with the clock");
        let a = Analyzer::load(&cfg.out.join("model.safetensors"), Device::Cpu).unwrap();
        assert_eq!(a.training_notes()["weights"], "ema");
        let bad = phantom_config(dir.path(), 3, [32, 32, 32], "max_train_seconds = 0\n[train]\nsteps = 2\n");
        assert!(fit(&bad, &FitOptions::default()).unwrap_err().to_string().contains("max_train_seconds"));
    }

    #[test]
    fn resume_restores_log_sigma() {
        let t = Trainer::new(ModelConfig::tiny(), TrainConfig::default(), 1, Device::Cpu).unwrap();
        let want = [0.1, -0.2, 0.3, 0.4, -0.5];
        restore_log_sigma(&t, &want).unwrap();
        let got = sigma_values(t.log_sigma());
        assert!(got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{got:?}");
        assert!(t.log_sigma().requires_grad());
        assert!(restore_log_sigma(&t, &[0.0; 2]).is_err());
    }

    #[test]
    fn evaluate_scores_cases_and_renders_markdown() {
        let dir = tempfile::tempdir().unwrap();
        gmmas_phantom::write_dataset(3, 2, [32, 32, 24], dir.path()).unwrap();
        let data = Dataset::load(&DataConfig {
            dirs: vec![dir.path().to_path_buf()],
            labels: vec![dir.path().join("labels.csv")],
            ..DataConfig::default()
        })
        .unwrap();
        let model = Analyzer::new_seeded(ModelConfig::tiny(), 1, Device::Cpu).unwrap();
        let mut seen = Vec::new();
        let r = evaluate(&model, &data, &[0, 2], &EvalOptions::default(), |c| seen.push(c.name.clone())).unwrap();
        assert_eq!(seen, ["Phantom_0000", "Phantom_0002"]);
        assert_eq!(r.cases_evaluated, 2);
        assert_eq!(r.regions.len(), 4);
        assert_eq!(r.regions[0].dice.n, 2);
        for c in &r.cases {
            assert!(c.dice.iter().all(|d| (0.0..=1.0).contains(d)));
            assert!(c.probabilities.iter().all(|p| (0.0..=1.0).contains(p)));
        }
        let labelled = r.cases.iter().filter(|c| c.labels[0].is_some()).count();
        assert_eq!(r.tasks[0].metrics.n, labelled);
        let md = r.markdown("t");
        assert!(md.contains("| WT |") && md.contains("| grade_gbm |") && md.contains("| Phantom_0002 |"), "{md}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["cases"].as_array().unwrap().len(), 2);
    }

    /// The whole path (phantom files -> Dataset -> augmented background batches -> Trainer ->
    /// full-volume validation) learns: the tiny profile fits a few phantom cases to a whole
    /// tumour Dice above 0.9.
    #[test]
    fn tiny_profile_learns_phantoms_through_the_full_path() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = phantom_config(
            dir.path(),
            2,
            [36, 36, 32],
            r#"validate_on = "train"
stop_at_wt_dice = 0.9
[train]
lr = 0.003
schedule = "constant"
steps = 150
steps_per_epoch = 10
batch_size = 2
[augment]
tumor_protect_p = 1.0
flip_p = [0.0, 0.0, 0.0]
intensity_shift = 0.0
intensity_scale = 0.0
cutmix_p = 0.0
"#,
        );
        let t = Instant::now();
        let r = fit(&cfg, &FitOptions { resume: false, quiet: false }).unwrap();
        let v = r.final_validation.unwrap();
        eprintln!("learned to WT Dice {:.3} in {} steps, {:.1} s", v.dice[0], r.steps, t.elapsed().as_secs_f64());
        assert!(r.stopped_early && v.dice[0] > 0.9, "WT Dice {:.3}", v.dice[0]);
    }
}
