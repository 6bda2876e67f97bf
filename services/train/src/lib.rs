//! Train: when enough newly labelled cases have arrived (or on a schedule), trains Stage I
//! (supervised on labelled + pseudo-labelled cases) then Stage II (weak-to-strong consistency)
//! from the current model, one run at a time, resumable from checkpoints in the object store;
//! then evaluates the candidate against the current model on a fixed set and promotes or
//! rejects it by the gate.

pub mod dataset;
pub mod gate;
pub mod runs;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gmmas_runtime::worker::StageRuntime;
use gmmas_runtime::{CommonConfig, Shutdown};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Configuration of the train service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainServiceConfig {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// The base run config (TOML, as `gmmas train` reads): reference labelled data, network
    /// profile, optimiser, augmentation. The service sets the data it adds, the init weights,
    /// the mode and the steps of each stage.
    pub run_config: String,
    /// The fixed evaluation set (BraTS-style case folders) that training never sees.
    pub eval_dir: String,
    /// Its labels CSV (empty: `<eval_dir>/labels.csv` when present).
    pub eval_labels: String,
    /// Which registry role is trained.
    pub role: String,
    /// Steps of Stage I (supervised on labelled + pseudo-labelled cases; 0 = skip).
    pub stage1_steps: usize,
    /// Steps of Stage II (weak-to-strong consistency; 0 = skip).
    pub stage2_steps: usize,
    /// Steps per epoch (a checkpoint is stored after every epoch).
    pub steps_per_epoch: usize,
    /// A run starts when at least this many curated cases are new since the last run ...
    pub min_new_cases: usize,
    /// ... or, with any new case, when this many seconds passed since the last run (0 = off).
    pub schedule_s: u64,
    /// Seconds between checks (a `dataset.updated` event checks at once).
    pub poll_s: f64,
    /// A run's lease; a run whose lease expired is taken over and resumed.
    pub lease_s: u64,
    /// Gate: the candidate's mean Dice (WT, TC, ET) may be at most this much below the current model's.
    pub gate_dice_margin: f64,
    /// Gate: each target task's AUC (accuracy when AUC is undefined) may be at most this much below.
    pub gate_task_margin: f64,
    /// Gate: the target tasks.
    pub gate_tasks: Vec<String>,
    /// `auto`, `cpu` or `cuda`.
    pub device: String,
    /// libtorch CPU threads (0 = default).
    pub threads: usize,
    /// Folder for run data (empty: a temporary folder per run).
    pub work_dir: String,
}

impl Default for TrainServiceConfig {
    fn default() -> Self {
        TrainServiceConfig {
            common: CommonConfig { http_addr: "127.0.0.1:8085".into(), ..Default::default() },
            run_config: String::new(),
            eval_dir: String::new(),
            eval_labels: String::new(),
            role: "complete".into(),
            stage1_steps: 200,
            stage2_steps: 200,
            steps_per_epoch: 20,
            min_new_cases: 20,
            schedule_s: 0,
            poll_s: 30.0,
            lease_s: 120,
            gate_dice_margin: 0.0,
            gate_task_margin: 0.02,
            gate_tasks: vec!["grade_gbm".into(), "idh_mutant".into()],
            device: "auto".into(),
            threads: 0,
            work_dir: String::new(),
        }
    }
}

impl TrainServiceConfig {
    fn check(&self) -> anyhow::Result<()> {
        if self.run_config.is_empty() {
            anyhow::bail!("setting `run_config` (GMMAS_RUN_CONFIG) is empty: name the base training config (TOML)");
        }
        if self.eval_dir.is_empty() {
            anyhow::bail!("setting `eval_dir` (GMMAS_EVAL_DIR) is empty: name the fixed evaluation set");
        }
        if self.stage1_steps + self.stage2_steps == 0 {
            anyhow::bail!("stage1_steps and stage2_steps are both 0: nothing to train");
        }
        for t in &self.gate_tasks {
            if !gate::TASKS.contains(&t.as_str()) {
                anyhow::bail!("gate_tasks: unknown task {t:?} (expected one of {:?})", gate::TASKS);
            }
        }
        Ok(())
    }

    pub fn eval_labels_path(&self) -> Option<PathBuf> {
        if !self.eval_labels.is_empty() {
            return Some(PathBuf::from(&self.eval_labels));
        }
        let p = PathBuf::from(&self.eval_dir).join("labels.csv");
        p.is_file().then_some(p)
    }
}

/// Runs the train service until SIGTERM. A run in progress at SIGTERM is left to its lease:
/// the next train process resumes it from the last checkpoint.
pub async fn run(config: TrainServiceConfig) -> anyhow::Result<()> {
    gmmas_runtime::telemetry::init("train", &config.common.log_format);
    config.check()?;
    let shutdown = Shutdown::on_signals();
    if config.threads > 0 {
        gmmas_models::set_threads(config.threads);
    }
    let rt = StageRuntime::start(&config.common, "train", &shutdown).await?;
    gmmas_runtime::http::serve(&config.common.http_addr, rt.health_routes(), shutdown.clone()).await?;
    let trainer = Arc::new(runs::Trainer::new(rt.clone(), config.clone(), Uuid::new_v4())?);
    let mut wake = rt
        .bus
        .client
        .subscribe(gmmas_contracts::Event::DatasetUpdated.all_tenants())
        .await
        .context("subscribing to dataset.updated")?;
    let poll = Duration::from_secs_f64(config.poll_s.max(0.2));
    loop {
        tokio::select! {
            r = trainer.tick() => if let Err(e) = r {
                tracing::error!(error = format!("{e:#}"), "training check failed; will try again");
            },
            _ = shutdown.wait() => {
                tracing::info!("stopping; a run in progress is resumed by the next train process after its lease");
                break;
            }
        }
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(poll) => {}
            _ = futures_next(&mut wake) => {}
        }
    }
    Ok(())
}

async fn futures_next(s: &mut async_nats::Subscriber) -> Option<async_nats::Message> {
    use futures::StreamExt;
    s.next().await
}
