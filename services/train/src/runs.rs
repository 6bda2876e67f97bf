//! Training runs: when one is due, the lease that keeps it to one process at a time, the two
//! stages with their checkpoints mirrored to the object store (a run taken over after its
//! lease expired resumes from them; a checkpoint whose hash does not match is discarded), the
//! candidate, its evaluation and the gate. A failed run never changes the serving model.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use gmmas_contracts as contracts;
use gmmas_models::Analyzer;
use gmmas_models::adapt::TrainMode;
use gmmas_models::data::{DataConfig, Dataset, SplitConfig, Subset};
use gmmas_models::fit::{EvalOptions, FitOptions, TrainRunConfig, evaluate, fit};
use gmmas_runtime::registry::{self, NewCandidate};
use gmmas_runtime::worker::StageRuntime;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::TrainServiceConfig;
use crate::dataset::{self, Manifest};
use crate::gate::{self, GateMetrics};

/// Files of a fit checkpoint, mirrored to the object store after every epoch.
const CHECKPOINT_FILES: [&str; 3] = ["checkpoint.safetensors", "checkpoint.json", "checkpoint_state.json"];
/// Files of a finished stage.
const FINAL_FILES: [&str; 2] = ["model.safetensors", "model.json"];

/// One stored file: key in the models bucket and sha256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stored {
    key: String,
    sha256: String,
}

/// What is stored of one stage.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct StageStore {
    /// Step of the stored checkpoint.
    step: usize,
    checkpoint: Vec<(String, Stored)>,
    /// The finished stage's model, once done.
    #[serde(default)]
    model: Vec<(String, Stored)>,
}

/// A training run as read from `train_runs`.
#[derive(Debug, Clone)]
struct Run {
    id: Uuid,
    parent: String,
    manifest: Manifest,
    data_sha256: String,
    checkpoints: serde_json::Map<String, serde_json::Value>,
    resumes: i32,
}

/// The train service's logic (one per process).
pub struct Trainer {
    rt: StageRuntime,
    cfg: TrainServiceConfig,
    owner: Uuid,
    device: gmmas_models::Device,
    base: TrainRunConfig,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").field("owner", &self.owner).finish_non_exhaustive()
    }
}

impl Trainer {
    pub fn new(rt: StageRuntime, cfg: TrainServiceConfig, owner: Uuid) -> anyhow::Result<Self> {
        let base = TrainRunConfig::load(Path::new(&cfg.run_config))
            .with_context(|| format!("reading the base run config {}", cfg.run_config))?;
        let device = gmmas_models::parse_device(&cfg.device).context("setting `device`")?;
        Ok(Trainer { rt, cfg, owner, device, base })
    }

    /// One check: resume a run whose lease expired, or start one when due; then run it.
    pub async fn tick(&self) -> anyhow::Result<()> {
        if let Some(run) = self.take_over().await? {
            tracing::warn!(run_id = %run.id, resumes = run.resumes, "resuming a run whose lease expired");
            self.rt.metrics.training_run("resumed");
            return self.execute(run).await;
        }
        if let Some(run) = self.start_if_due().await? {
            return self.execute(run).await;
        }
        Ok(())
    }

    async fn take_over(&self) -> anyhow::Result<Option<Run>> {
        type Row = (Uuid, String, serde_json::Value, String, serde_json::Value, i32);
        let row: Option<Row> = sqlx::query_as(
            "UPDATE train_runs SET lease_owner = $1, lease_until = now() + make_interval(secs => $2), resumes = resumes + 1
             WHERE status = 'running' AND lease_until < now()
             RETURNING id, parent_version, manifest, data_sha256, checkpoints, resumes",
        )
        .bind(self.owner)
        .bind(self.cfg.lease_s as f64)
        .fetch_optional(&self.rt.db)
        .await?;
        let Some((id, parent, manifest, data_sha256, checkpoints, resumes)) = row else { return Ok(None) };
        Ok(Some(Run {
            id,
            parent,
            manifest: serde_json::from_value(manifest).context("run manifest")?,
            data_sha256,
            checkpoints: checkpoints.as_object().cloned().unwrap_or_default(),
            resumes,
        }))
    }

    async fn start_if_due(&self) -> anyhow::Result<Option<Run>> {
        let db = &self.rt.db;
        let manifest = dataset::current_manifest(db).await?;
        if manifest.cases.is_empty() {
            return Ok(None);
        }
        let last: Option<(serde_json::Value, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT manifest, started_at FROM train_runs WHERE role = $1 AND status <> 'failed'
             ORDER BY started_at DESC LIMIT 1",
        )
        .bind(&self.cfg.role)
        .fetch_optional(db)
        .await?;
        let (seen, last_at) = match last {
            Some((m, at)) => (serde_json::from_value::<Manifest>(m).unwrap_or_default(), Some(at)),
            None => (Manifest::default(), None),
        };
        let new = manifest.cases.iter().filter(|c| !seen.cases.contains(c)).count();
        let scheduled = self.cfg.schedule_s > 0
            && last_at.is_none_or(|at| (chrono::Utc::now() - at).num_seconds() >= self.cfg.schedule_s as i64);
        if new == 0 || (new < self.cfg.min_new_cases && !scheduled) {
            return Ok(None);
        }
        let Some(parent) = registry::current(db, &self.cfg.role).await? else {
            bail!("no current {} model to train from", self.cfg.role);
        };
        let id = Uuid::new_v4();
        let data_sha256 = manifest.sha256();
        let inserted = sqlx::query(
            "INSERT INTO train_runs (id, role, parent_version, status, data_sha256, manifest, lease_owner, lease_until)
             VALUES ($1, $2, $3, 'running', $4, $5, $6, now() + make_interval(secs => $7))
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(&self.cfg.role)
        .bind(&parent.version)
        .bind(&data_sha256)
        .bind(serde_json::to_value(&manifest)?)
        .bind(self.owner)
        .bind(self.cfg.lease_s as f64)
        .execute(db)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(None); // another process is running one
        }
        tracing::info!(run_id = %id, parent = %parent.version, cases = manifest.cases.len(), new, "training run started");
        self.rt.metrics.training_run("started");
        Ok(Some(Run { id, parent: parent.version, manifest, data_sha256, checkpoints: Default::default(), resumes: 0 }))
    }

    async fn execute(&self, run: Run) -> anyhow::Result<()> {
        let lost = Arc::new(AtomicBool::new(false));
        let lease = self.keep_lease(run.id, lost.clone());
        let result = self.stages(&run, &lost).await;
        lease.abort();
        let db = &self.rt.db;
        match result {
            Ok(()) => Ok(()),
            Err(e) if lost.load(Ordering::SeqCst) => {
                tracing::warn!(run_id = %run.id, error = format!("{e:#}"), "lease lost; another process owns the run");
                Ok(())
            }
            Err(e) => {
                let text = format!("{e:#}");
                tracing::error!(run_id = %run.id, error = %text, "training run failed; the serving model is unchanged");
                self.rt.metrics.training_run("failed");
                sqlx::query(
                    "UPDATE train_runs SET status = 'failed', error = $2, finished_at = now()
                     WHERE id = $1 AND lease_owner = $3 AND status = 'running'",
                )
                .bind(run.id)
                .bind(&text)
                .bind(self.owner)
                .execute(db)
                .await?;
                Ok(())
            }
        }
    }

    /// Renews the lease every third of its length; flags `lost` when another process owns it.
    fn keep_lease(&self, run_id: Uuid, lost: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
        let db = self.rt.db.clone();
        let owner = self.owner;
        let lease_s = self.cfg.lease_s.max(1);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs_f64(lease_s as f64 / 3.0)).await;
                let r = sqlx::query(
                    "UPDATE train_runs SET lease_until = now() + make_interval(secs => $3)
                     WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
                )
                .bind(run_id)
                .bind(owner)
                .bind(lease_s as f64)
                .execute(&db)
                .await;
                if let Ok(r) = r
                    && r.rows_affected() == 0
                {
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
        })
    }

    // Long on purpose: a training run's stages in order, each checkpointed in the run row before the next; the lease check runs between all of them.
    async fn stages(&self, run: &Run, lost: &AtomicBool) -> anyhow::Result<()> {
        let tmp;
        let work = if self.cfg.work_dir.is_empty() {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        } else {
            let d = PathBuf::from(&self.cfg.work_dir).join(run.id.to_string());
            std::fs::create_dir_all(&d)?;
            d
        };
        let data = work.join("data");
        dataset::materialize(&self.rt.bus, &run.manifest, &data).await?;
        let parent = gmmas_modelstore::download_version(&self.rt.bus, &self.rt.db, &run.parent, &work.join("parent"))
            .await
            .context("the parent model's weights")?;
        let mut init = parent.clone();
        let stages = [
            ("stage1", TrainMode::Supervised, self.cfg.stage1_steps),
            ("stage2", TrainMode::SslConsistency, self.cfg.stage2_steps),
        ];
        for (name, mode, steps) in stages {
            if steps == 0 {
                continue;
            }
            let out = work.join(name);
            let cfg = self.stage_config(run, &data, &init, &out, mode, steps);
            init = self.run_stage(run, name, cfg, &out, lost).await?;
        }
        // The candidate.
        let candidate = tokio::task::spawn_blocking({
            let p = init.clone();
            let device = self.device;
            move || Analyzer::load(&p, device)
        })
        .await??;
        let version = candidate.version().to_string();
        let (uri, sha256) = gmmas_modelstore::publish_weights(&self.rt.bus, &init, &version).await?;
        registry::register_candidate(
            &self.rt.db,
            &NewCandidate {
                version: version.clone(),
                name: version.split('@').next().unwrap_or("gmmas").to_string(),
                role: self.cfg.role.clone(),
                weights_uri: uri,
                sha256,
                parent_version: run.parent.clone(),
                data_sha256: run.data_sha256.clone(),
                config: json!({ "stage1_steps": self.cfg.stage1_steps, "stage2_steps": self.cfg.stage2_steps,
                                "base_config": self.base.to_toml().unwrap_or_default() }),
                run_id: run.id,
            },
        )
        .await?;
        sqlx::query("UPDATE train_runs SET candidate_version = $2 WHERE id = $1")
            .bind(run.id)
            .bind(&version)
            .execute(&self.rt.db)
            .await?;
        // The gate: both models on the fixed evaluation set.
        let (verdict, metrics) = match self.evaluate(candidate, &parent).await {
            Ok((cand, cur)) => {
                let v = gate::decide(
                    &cand,
                    &cur,
                    self.cfg.gate_dice_margin,
                    self.cfg.gate_task_margin,
                    &self.cfg.gate_tasks,
                );
                (v, json!({ "candidate": cand, "current": cur }))
            }
            Err(e) => (
                gate::Verdict { promote: false, reason: format!("rejected: the evaluation could not run: {e:#}") },
                json!(null),
            ),
        };
        if lost.load(Ordering::SeqCst) {
            bail!("lease lost before the decision");
        }
        self.rt.metrics.model_change("candidate");
        registry::decide(&self.rt.db, &version, verdict.promote, &verdict.reason, &metrics).await?;
        self.rt.relay.kick();
        let outcome = if verdict.promote { "promoted" } else { "rejected" };
        self.rt.metrics.training_run(outcome);
        self.rt.metrics.model_change(outcome);
        sqlx::query(
            "UPDATE train_runs SET status = $2, metrics = $3, error = $4, finished_at = now()
             WHERE id = $1 AND status = 'running'",
        )
        .bind(run.id)
        .bind(if verdict.promote { "promoted" } else { "rejected" })
        .bind(&metrics)
        .bind(if verdict.promote { None } else { Some(verdict.reason.clone()) })
        .execute(&self.rt.db)
        .await?;
        tracing::info!(run_id = %run.id, candidate = %version, promoted = verdict.promote, reason = %verdict.reason, "training run decided");
        Ok(())
    }

    fn stage_config(
        &self,
        run: &Run,
        data: &Path,
        init: &Path,
        out: &Path,
        mode: TrainMode,
        steps: usize,
    ) -> TrainRunConfig {
        let mut c = self.base.clone();
        c.out = out.to_path_buf();
        // A seed per run that TOML can carry (the fit writes its config back as TOML).
        c.seed = u64::from(u32::from_le_bytes(run.id.as_bytes()[..4].try_into().unwrap_or([0; 4])));
        c.device = self.cfg.device.clone();
        c.validate_every = 0;
        c.data.dirs.push(data.to_path_buf());
        c.data.labels.push(data.join("labels.csv"));
        c.data.split = SplitConfig::All;
        c.data.require_seg = false;
        c.model.init = Some(init.to_path_buf());
        c.train.mode = mode;
        c.train.steps = Some(steps);
        c.train.epochs = None;
        c.train.steps_per_epoch = Some(self.cfg.steps_per_epoch.max(1).min(steps));
        c.train.checkpoint_every = 1;
        if mode == TrainMode::SslConsistency {
            c.ssl.unlabeled =
                Some(DataConfig { dirs: vec![data.to_path_buf()], require_seg: false, ..DataConfig::default() });
        }
        c
    }

    /// Runs one stage (resuming from its stored checkpoint) while mirroring each new
    /// checkpoint to the object store; returns the stage's model path.
    async fn run_stage(
        &self,
        run: &Run,
        name: &str,
        cfg: TrainRunConfig,
        out: &Path,
        lost: &AtomicBool,
    ) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(out)?;
        let stored: StageStore =
            run.checkpoints.get(name).and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
        if !stored.model.is_empty() && self.restore(&stored.model, out).await {
            tracing::info!(run_id = %run.id, stage = name, "stage already finished; using its stored model");
            return Ok(out.join("model.safetensors"));
        }
        let resume = !stored.checkpoint.is_empty() && self.restore(&stored.checkpoint, out).await;
        if resume {
            tracing::info!(run_id = %run.id, stage = name, step = stored.step, "resuming from the stored checkpoint");
        }
        let done = Arc::new(AtomicBool::new(false));
        let fit_task = tokio::task::spawn_blocking({
            let done = done.clone();
            move || {
                let r = fit(&cfg, &FitOptions { resume, quiet: true });
                done.store(true, Ordering::SeqCst);
                r
            }
        });
        let mut last_step = if resume { stored.step } else { 0 };
        let mut state = stored;
        while !done.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if lost.load(Ordering::SeqCst) {
                continue; // the fit cannot be interrupted; its result will be discarded
            }
            last_step = self.mirror_checkpoint(run.id, name, out, last_step, &mut state).await.unwrap_or_else(|e| {
                tracing::warn!(error = format!("{e:#}"), "checkpoint not stored; will try at the next one");
                last_step
            });
        }
        let report = fit_task.await?.with_context(|| format!("training {name}"))?;
        self.mirror_checkpoint(run.id, name, out, last_step, &mut state).await?;
        state.model = self.store_files(run.id, name, out, &FINAL_FILES).await?;
        self.save_state(run.id, name, &state).await?;
        tracing::info!(run_id = %run.id, stage = name, steps = report.steps, model = %report.model_version, "stage finished");
        Ok(report.model_path)
    }

    async fn mirror_checkpoint(
        &self,
        run_id: Uuid,
        stage: &str,
        out: &Path,
        last: usize,
        state: &mut StageStore,
    ) -> anyhow::Result<usize> {
        #[derive(Deserialize)]
        struct Step {
            step: usize,
        }
        let Ok(text) = std::fs::read(out.join("checkpoint_state.json")) else { return Ok(last) };
        let Ok(Step { step }) = serde_json::from_slice(&text) else { return Ok(last) };
        if step <= last {
            return Ok(last);
        }
        state.checkpoint = self.store_files(run_id, stage, out, &CHECKPOINT_FILES).await?;
        state.step = step;
        self.save_state(run_id, stage, state).await?;
        tracing::info!(run_id = %run_id, stage, step, "checkpoint stored");
        Ok(step)
    }

    async fn store_files(
        &self,
        run_id: Uuid,
        stage: &str,
        out: &Path,
        names: &[&str],
    ) -> anyhow::Result<Vec<(String, Stored)>> {
        let mut stored = Vec::new();
        for name in names {
            let bytes = std::fs::read(out.join(name)).with_context(|| format!("reading {name}"))?;
            let key = format!("train/{run_id}/{stage}/{name}");
            let obj = self.rt.bus.put_object_in(contracts::MODELS_BUCKET, &key, &bytes).await?;
            stored.push((name.to_string(), Stored { key, sha256: obj.sha256 }));
        }
        Ok(stored)
    }

    async fn save_state(&self, run_id: Uuid, stage: &str, state: &StageStore) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE train_runs SET checkpoints = jsonb_set(checkpoints, ARRAY[$2], $3::jsonb)
             WHERE id = $1 AND lease_owner = $4",
        )
        .bind(run_id)
        .bind(stage)
        .bind(serde_json::to_value(state)?)
        .bind(self.owner)
        .execute(&self.rt.db)
        .await?;
        Ok(())
    }

    /// Downloads stored files into `out`; false (and nothing kept) when one is missing or its
    /// hash does not match — a corrupt checkpoint is discarded, the stage starts afresh.
    async fn restore(&self, files: &[(String, Stored)], out: &Path) -> bool {
        for (name, s) in files {
            let obj = contracts::ObjectRef {
                bucket: contracts::MODELS_BUCKET.into(),
                key: s.key.clone(),
                sha256: s.sha256.clone(),
                size: 0,
            };
            match self.rt.bus.get_object(&obj).await {
                Ok(bytes) => {
                    if std::fs::write(out.join(name), bytes).is_err() {
                        return false;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, file = %name, "stored checkpoint unusable; discarding it");
                    for (n, _) in files {
                        let _ = std::fs::remove_file(out.join(n));
                    }
                    return false;
                }
            }
        }
        true
    }

    async fn evaluate(&self, candidate: Analyzer, parent: &Path) -> anyhow::Result<(GateMetrics, GateMetrics)> {
        let eval = DataConfig {
            dirs: vec![PathBuf::from(&self.cfg.eval_dir)],
            labels: self.cfg.eval_labels_path().into_iter().collect(),
            split: SplitConfig::All,
            threads: self.base.data.threads,
            ..DataConfig::default()
        };
        let parent = parent.to_path_buf();
        let device = self.device;
        tokio::task::spawn_blocking(move || -> anyhow::Result<(GateMetrics, GateMetrics)> {
            let data = Dataset::load(&eval).map_err(|e| anyhow::anyhow!("evaluation set: {e}"))?;
            let idx = data.indices(Subset::Train);
            if idx.is_empty() {
                bail!("the evaluation set holds no case");
            }
            let current = Analyzer::load(&parent, device)?;
            let opts = EvalOptions::default();
            let c = evaluate(&candidate, &data, &idx, &opts, |_| {})?;
            let p = evaluate(&current, &data, &idx, &opts, |_| {})?;
            Ok((GateMetrics::of(&c), GateMetrics::of(&p)))
        })
        .await?
    }
}
