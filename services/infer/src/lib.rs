//! Infer: consumes `scan.preprocessed`, runs the current registered model (the `incomplete` one
//! for cases missing a sequence, when registered), maps the segmentation back to the input grid,
//! records the analysis with model version and input hashes, publishes `scan.analyzed`.

pub mod metrics;

use gmmas_modelstore::{self as registry, Role};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use gmmas_contracts::{self as contracts, Probabilities, RegionVolumes, ScanAnalyzed, ScanPreprocessed};
use gmmas_imaging::{Modality, PreparedCase};
use gmmas_models::{Analyzer, InferOptions};
use gmmas_runtime::db;
use gmmas_runtime::worker::{self, Attempt, Consuming, StageError, StageRuntime, StageWorker};
use gmmas_runtime::{CommonConfig, Shutdown};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

/// Configuration of the infer service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct InferConfig {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Weights registered as the current `complete` model when the registry has none.
    pub model_path: String,
    /// Weights registered as the current `incomplete` model (cases missing a sequence) when the
    /// registry has none; empty = none, every case goes to the `complete` model.
    pub incomplete_model_path: String,
    /// `auto` (CUDA when present), `cpu` or `cuda`.
    pub device: String,
    /// Sliding-window overlap (0-0.9).
    pub overlap: f32,
    /// MC-Dropout passes (0 = one deterministic pass).
    pub mc_passes: usize,
    /// MC passes after the first decode only the tumour's box (false: every voxel each pass).
    pub mc_roi: bool,
    /// MC passes per forward (0 = all at once).
    pub mc_batch: usize,
    /// In place of a missing sequence: `zero` (the `incomplete` model, when there is one,
    /// serves such cases) or `substitute` (a present sequence of similar contrast stands in and
    /// the `complete` model serves every case).
    pub missing_fill: gmmas_models::missing::MissingFill,
    /// Half precision on CUDA (fp16 autocast); refused on the CPU.
    pub half: bool,
    /// CPU threads for libtorch (0 = libtorch's default).
    pub threads: usize,
    /// Label cleanup: `tumor_filter` (Algorithm 1), `largest_component` or `none`.
    pub postprocess: gmmas_models::PostProcess,
    /// Flip test-time augmentation (the eight mirrorings averaged; 8x the inference time).
    pub tta_flips: bool,
    /// Small-ET rule: a predicted enhancing tumour of fewer voxels becomes necrosis (0 = off).
    pub min_et_voxels: usize,
    /// Seconds one inference may take before the attempt is abandoned and retried (0 = no limit).
    pub inference_deadline_s: f64,
    /// Seconds between checks of the registry for a newly promoted model (besides the
    /// `model.promoted` event, which triggers a check at once).
    pub model_poll_s: f64,
}

impl Default for InferConfig {
    fn default() -> Self {
        InferConfig {
            common: CommonConfig { http_addr: "127.0.0.1:8083".into(), ack_wait_s: 120, ..Default::default() },
            model_path: gmmas_models::default_model_path().display().to_string(),
            incomplete_model_path: gmmas_models::default_adapted_model_path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            device: "auto".into(),
            overlap: 0.5,
            mc_passes: 0,
            mc_roi: true,
            mc_batch: 1,
            missing_fill: gmmas_models::missing::MissingFill::Zero,
            half: false,
            threads: 0,
            postprocess: gmmas_models::PostProcess::default(),
            tta_flips: false,
            min_et_voxels: 0,
            inference_deadline_s: 900.0,
            model_poll_s: 30.0,
        }
    }
}

/// The model serving one role, swapped whole when the registry promotes another: a case
/// takes the `Arc` once and keeps that model to the end, so no case mixes two models.
/// Every model it holds keeps `replicas` copies of its network, one per worker.
#[derive(Debug)]
pub struct ModelSlot {
    model: std::sync::RwLock<Arc<Analyzer>>,
    replicas: std::sync::atomic::AtomicUsize,
}

impl ModelSlot {
    pub fn new(model: Analyzer) -> Self {
        ModelSlot { model: std::sync::RwLock::new(Arc::new(model)), replicas: 1.into() }
    }

    pub fn get(&self) -> Arc<Analyzer> {
        self.model.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serves `model` (with this slot's replica count) from now on.
    pub fn replace(&self, mut model: Analyzer) -> Result<(), gmmas_models::ModelError> {
        model.set_replicas(self.replicas.load(std::sync::atomic::Ordering::Relaxed))?;
        *self.model.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(model);
        Ok(())
    }

    /// Keeps `n` replicas of the served model and of every model served later (before any
    /// case has taken the model).
    pub fn set_replicas(&mut self, n: usize) -> Result<(), gmmas_models::ModelError> {
        *self.replicas.get_mut() = n.max(1);
        let model = self.model.get_mut().unwrap_or_else(|e| e.into_inner());
        match Arc::get_mut(model) {
            Some(m) => m.set_replicas(n),
            None => Err(gmmas_models::ModelError::Internal("the served model is in use; replicas not changed".into())),
        }
    }
}

/// The infer stage: the model or models it serves and how it runs them.
#[derive(Debug)]
pub struct Inferrer {
    pub model: ModelSlot,
    /// Model for cases missing a sequence (None: `model` serves them too).
    pub incomplete_model: Option<ModelSlot>,
    pub opts: InferOptions,
    /// Longest one inference may take before the attempt is abandoned and retried.
    pub deadline: Option<Duration>,
    /// Network-time series (None in tests that run the worker without a registry).
    pub metrics: Option<metrics::InferMetrics>,
}

impl Inferrer {
    pub fn new(model: Analyzer, incomplete: Option<Analyzer>, opts: InferOptions, deadline: Option<Duration>) -> Self {
        Inferrer {
            model: ModelSlot::new(model),
            incomplete_model: incomplete.map(ModelSlot::new),
            opts,
            deadline,
            metrics: None,
        }
    }

    /// The model for a case with these sequences present.
    pub fn model_for(&self, modalities: &[String]) -> Arc<Analyzer> {
        let present = Modality::ALL.map(|m| modalities.iter().any(|x| x == m.as_str()));
        let substitute = self.opts.missing_fill == gmmas_models::missing::MissingFill::Substitute;
        match &self.incomplete_model {
            Some(m) if !substitute && gmmas_models::needs_adapted_model(present) => m.get(),
            _ => self.model.get(),
        }
    }

    /// One replica of each served model per worker, so that `workers` cases run at once.
    pub fn set_replicas(&mut self, n: usize) -> Result<(), gmmas_models::ModelError> {
        self.model.set_replicas(n)?;
        if let Some(m) = &mut self.incomplete_model {
            m.set_replicas(n)?;
        }
        Ok(())
    }

    fn slot(&self, role: Role) -> Option<&ModelSlot> {
        match role {
            Role::Complete => Some(&self.model),
            Role::Incomplete => self.incomplete_model.as_ref(),
        }
    }
}

/// Follows the registry: on `model.promoted` (and every `poll` as a fallback) loads the
/// current model of each role when it differs from the one served, and swaps it in.
fn follow_registry(
    rt: StageRuntime,
    worker: Arc<Inferrer>,
    device: gmmas_models::Device,
    poll: Duration,
    shutdown: Shutdown,
) {
    tokio::spawn(async move {
        let mut events = match rt.bus.client.subscribe(contracts::ModelEvent::Promoted.subject()).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to model.promoted; polling the registry only");
                None
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tokio::time::sleep(poll) => {}
                Some(_) = async { match events.as_mut() { Some(s) => futures::StreamExt::next(s).await, None => std::future::pending().await } } => {}
            }
            for role in [Role::Complete, Role::Incomplete] {
                let Some(slot) = worker.slot(role) else { continue };
                let serving = slot.get().version().to_string();
                let current = match gmmas_runtime::registry::current(&rt.db, role.as_str()).await {
                    Ok(Some(row)) => row.version,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "registry not readable; keeping the served model");
                        continue;
                    }
                };
                if current == serving {
                    continue;
                }
                match registry::load_current(&rt.bus, &rt.db, None, device, role).await {
                    Ok(Some(model)) => {
                        tracing::info!(from = %serving, to = model.version(), role = role.as_str(), "switching model");
                        let version = model.version().to_string();
                        if let Err(e) = slot.replace(model) {
                            tracing::error!(error = %e, version = %current, "the promoted model could not be replicated; still serving the previous one");
                            continue;
                        }
                        if let Some(m) = &worker.metrics {
                            report_serving(&rt, m, role, &version).await;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(error = format!("{e:#}"), version = %current, "the promoted model could not be loaded; still serving the previous one")
                    }
                }
            }
        }
    });
}

impl StageWorker for Inferrer {
    type Input = ScanPreprocessed;
    type Output = ScanAnalyzed;

    const STAGE: Consuming = Consuming::Infer;

    async fn work(&self, attempt: &Attempt, msg: &ScanPreprocessed) -> Result<ScanAnalyzed, StageError> {
        let bytes = attempt.get_object(&msg.prepared).await?;
        let model = self.model_for(&msg.modalities);
        let model_version = model.version().to_string();
        let device = format!("{:?}", model.device());
        let opts = self.opts;
        let task = tokio::task::spawn_blocking(move || analyze(&model, &bytes, &opts));
        let joined = match self.deadline {
            Some(limit) => tokio::time::timeout(limit, task).await.map_err(|_| {
                StageError::transient(anyhow::anyhow!(
                    "inference did not finish within the deadline of {:.1} s",
                    limit.as_secs_f64()
                ))
            })?,
            None => task.await,
        };
        let out =
            joined.map_err(|e| StageError::transient(anyhow::anyhow!("inference task: {e}")))?.map_err(
                |e| match e {
                    AnalyzeError::Resources(m) => StageError::transient(anyhow::anyhow!(m)),
                    AnalyzeError::Input(m) => StageError::Permanent(m),
                },
            )?;
        let seg = attempt.put_object("segmentation.nii.gz", &out.seg_nifti).await?;
        let uncertainty = match &out.uncertainty_nifti {
            Some(bytes) => Some(attempt.put_object("uncertainty.nii.gz", bytes).await?),
            None => None,
        };
        let missing: Vec<String> = Modality::ALL
            .iter()
            .filter(|m| !msg.modalities.iter().any(|x| x == m.as_str()))
            .map(|m| m.as_str().to_string())
            .collect();
        let mut inputs = msg.input_sha256.clone();
        inputs.push(("preprocessed".into(), msg.prepared.sha256.clone()));
        tracing::info!(model_version = %model_version, inference_ms = out.inference_ms as u64, "analyzed");
        if let Some(m) = &self.metrics {
            let mirrorings = if self.opts.tta_flips { 8 } else { 1 };
            m.observe_case(
                &device.to_lowercase(),
                out.inference_ms as f64 / 1000.0,
                self.opts.mc_passes.max(1) * mirrorings,
            );
        }
        Ok(ScanAnalyzed {
            schema_version: contracts::SCHEMA_VERSION,
            tenant: msg.tenant.clone(),
            case_id: msg.case_id,
            analysis_id: Uuid::new_v4(),
            model_version,
            segmentation: seg,
            regions: out.regions,
            probabilities: out.probabilities,
            missing_modalities: missing,
            analyzed_at: Utc::now(),
            mc_passes: self.opts.mc_passes as u32,
            probabilities_std: out.probabilities_std,
            uncertainty,
            mean_uncertainty_wt: out.mean_uncertainty_wt,
            device,
            inference_ms: out.inference_ms as u64,
            input_sha256: inputs,
            brain_mask: msg.brain_mask.clone(),
            skull_strip: msg.skull_strip.clone(),
        })
    }

    async fn commit(&self, tx: &mut PgConnection, _msg: &ScanPreprocessed, a: &ScanAnalyzed) -> sqlx::Result<()> {
        let inputs: serde_json::Map<String, serde_json::Value> =
            a.input_sha256.iter().map(|(m, h)| (m.clone(), serde_json::Value::String(h.clone()))).collect();
        let r = &a.regions;
        let p = &a.probabilities;
        sqlx::query(
            "INSERT INTO analyses (id, case_id, model_version, input_sha256, device, seg_object_key, seg_sha256,
                ncr_ml, ed_ml, et_ml, wt_ml, tc_ml, ncr_fraction, ed_fraction, et_fraction,
                p_grade_gbm, p_idh_mutant, p_codel_1p19q, p_mgmt_methylated, missing_modalities, inference_ms,
                mc_passes, probabilities_std, uncertainty_key, uncertainty_sha256, mean_uncertainty_wt,
                skull_strip, brain_mask_key, brain_mask_sha256)
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24,$25,$26,
                $27,$28,$29)",
        )
        .bind(a.analysis_id)
        .bind(a.case_id)
        .bind(&a.model_version)
        .bind(serde_json::Value::Object(inputs))
        .bind(&a.device)
        .bind(&a.segmentation.key)
        .bind(&a.segmentation.sha256)
        .bind(r.ncr_ml)
        .bind(r.ed_ml)
        .bind(r.et_ml)
        .bind(r.wt_ml)
        .bind(r.tc_ml)
        .bind(r.ncr_fraction)
        .bind(r.ed_fraction)
        .bind(r.et_fraction)
        .bind(p.grade_gbm)
        .bind(p.idh_mutant)
        .bind(p.codel_1p19q)
        .bind(p.mgmt_methylated)
        .bind(&a.missing_modalities)
        .bind(a.inference_ms as i64)
        .bind(a.mc_passes as i32)
        .bind(a.probabilities_std.map(|p| serde_json::json!(p)))
        .bind(a.uncertainty.as_ref().map(|u| u.key.clone()))
        .bind(a.uncertainty.as_ref().map(|u| u.sha256.clone()))
        .bind(a.mean_uncertainty_wt)
        .bind(&a.skull_strip)
        .bind(a.brain_mask.as_ref().map(|m| m.key.clone()))
        .bind(a.brain_mask.as_ref().map(|m| m.sha256.clone()))
        .execute(&mut *tx)
        .await?;
        db::audit(
            tx,
            "infer",
            "case.analyzed",
            Some(a.tenant.as_str()),
            Some(a.case_id),
            serde_json::json!({ "model_version": a.model_version }),
        )
        .await
    }
}

/// Runs the infer service until SIGTERM.
pub async fn run(config: InferConfig) -> anyhow::Result<()> {
    gmmas_runtime::telemetry::init("infer", &config.common.log_format);
    let shutdown = Shutdown::on_signals();
    let rt = StageRuntime::start(&config.common, "infer", &shutdown).await?;
    if config.threads > 0 {
        gmmas_models::set_threads(config.threads);
    }
    let device = gmmas_models::parse_device(&config.device).context("setting `device`")?;
    if config.half && !device.is_cuda() {
        anyhow::bail!("setting `half`: half precision runs on CUDA only, and `device` is {device:?}");
    }
    let model = registry::load_current(&rt.bus, &rt.db, Some(Path::new(&config.model_path)), device, Role::Complete)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no current model"))?;
    tracing::info!(model_version = model.version(), device = ?model.device(), role = "complete", "model loaded");
    let incomplete_path = (!config.incomplete_model_path.is_empty()).then(|| Path::new(&config.incomplete_model_path));
    let incomplete = registry::load_current(&rt.bus, &rt.db, incomplete_path, device, Role::Incomplete).await?;
    match &incomplete {
        Some(m) => tracing::info!(model_version = m.version(), role = "incomplete", "model loaded"),
        None => tracing::info!("no model for incomplete inputs: the complete model serves every case"),
    }
    gmmas_runtime::http::serve(&config.common.http_addr, rt.health_routes(), shutdown.clone()).await?;
    let infer_metrics = metrics::InferMetrics::register(&rt.metrics.registry).context("registering metrics")?;
    report_serving(&rt, &infer_metrics, Role::Complete, model.version()).await;
    if let Some(m) = &incomplete {
        report_serving(&rt, &infer_metrics, Role::Incomplete, m.version()).await;
    }
    if device.is_cuda() {
        metrics::spawn_cuda_memory(infer_metrics.clone(), Duration::from_secs(10), shutdown.clone());
    }
    let mut worker = Inferrer::new(
        model,
        incomplete,
        InferOptions {
            overlap: config.overlap,
            mc_passes: config.mc_passes,
            mc_roi: config.mc_roi,
            mc_batch: config.mc_batch,
            missing_fill: config.missing_fill,
            half: config.half,
            postprocess: config.postprocess,
            tta_flips: config.tta_flips,
            min_et_voxels: config.min_et_voxels,
            ..InferOptions::default()
        },
        (config.inference_deadline_s > 0.0).then(|| Duration::from_secs_f64(config.inference_deadline_s)),
    );
    worker.metrics = Some(infer_metrics);
    worker.set_replicas(config.common.workers).context("copying the model for each worker")?;
    let worker = Arc::new(worker);
    let poll = Duration::from_secs_f64(config.model_poll_s.max(0.5));
    follow_registry(rt.clone(), worker.clone(), device, poll, shutdown.clone());
    worker::run(rt, worker, shutdown).await
}

/// Puts the model now served for `role` and its promotion time into the metrics.
async fn report_serving(rt: &StageRuntime, m: &metrics::InferMetrics, role: Role, version: &str) {
    let promoted = match gmmas_runtime::registry::current(&rt.db, role.as_str()).await {
        Ok(Some(row)) if row.version == version => row.promoted_at.map(|t| t.timestamp() as f64),
        _ => None,
    };
    m.serving(role.as_str(), version, promoted);
}

/// Why an analysis failed: the input (permanent) or the machine (memory; worth retrying).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnalyzeError {
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Resources(String),
}

impl AnalyzeError {
    /// Sorts a model error by its cause: running out of (GPU or host) memory is transient.
    fn classify(context: &str, e: impl std::fmt::Display) -> Self {
        let text = format!("{context}: {e}");
        let lower = text.to_ascii_lowercase();
        if lower.contains("out of memory") || lower.contains("cuda error") || lower.contains("cublas") {
            AnalyzeError::Resources(text)
        } else {
            AnalyzeError::Input(text)
        }
    }
}

/// The product of one analysis, before it is stored.
#[derive(Debug)]
pub struct AnalysisOutput {
    pub seg_nifti: Vec<u8>,
    pub regions: RegionVolumes,
    pub probabilities: Probabilities,
    /// Std of each probability over MC-Dropout passes (when more than one pass ran).
    pub probabilities_std: Option<Probabilities>,
    /// Per-voxel uncertainty (std of the tumor probability) as float32 NIfTI on the input grid.
    pub uncertainty_nifti: Option<Vec<u8>>,
    /// Mean per-voxel uncertainty inside the predicted whole tumor.
    pub mean_uncertainty_wt: Option<f32>,
    pub inference_ms: u128,
}

/// Runs the model on a prepared case and maps the result back to the input grid.
/// Errors are reasons a person can read (the case is then marked failed).
pub fn analyze(model: &Analyzer, prepared: &[u8], opts: &InferOptions) -> Result<AnalysisOutput, AnalyzeError> {
    let case =
        PreparedCase::from_bytes(prepared).map_err(|e| AnalyzeError::Input(format!("preprocessed tensor: {e}")))?;
    analyze_prepared(model, &case, opts)
}

/// Runs the model on a prepared case ([`gmmas_models::analyze_prepared`]) and puts the result
/// in the service's wire types.
pub fn analyze_prepared(
    model: &Analyzer,
    case: &PreparedCase,
    opts: &InferOptions,
) -> Result<AnalysisOutput, AnalyzeError> {
    let out =
        gmmas_models::analyze_prepared(model, case, opts).map_err(|e| AnalyzeError::classify("inference failed", e))?;
    let to_probs = |t: gmmas_models::TaskProbabilities| Probabilities {
        grade_gbm: t.grade_gbm,
        idh_mutant: t.idh_mutant,
        codel_1p19q: t.codel_1p19q,
        mgmt_methylated: t.mgmt_methylated,
    };
    Ok(AnalysisOutput {
        probabilities_std: out.probabilities_std.map(to_probs),
        uncertainty_nifti: out.uncertainty_nifti,
        mean_uncertainty_wt: out.mean_uncertainty_wt,
        seg_nifti: out.seg_nifti,
        regions: out.regions,
        probabilities: to_probs(out.probabilities),
        inference_ms: out.inference_ms,
    })
}
