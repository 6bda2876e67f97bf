//! Infer: consumes `scan.preprocessed`, runs the current registered model (the `incomplete` one
//! for cases missing a sequence, when registered), maps the segmentation back to the input grid,
//! records the analysis with model version and input hashes, publishes `scan.analyzed`.

pub mod registry;

use registry::Role;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use gmmas_contracts::{
    self as contracts, CaseFailed, Event, Probabilities, RegionVolumes, ScanAnalyzed, ScanPreprocessed, Stage,
};
use gmmas_imaging::{Modality, PreparedCase};
use gmmas_models::{Analyzer, InferOptions};
use gmmas_runtime::bus::{Bus, ConsumerSpec, Delivery, Outcome, run_consumer};
use gmmas_runtime::db::{self, StageState};
use gmmas_runtime::http::Metrics;
use gmmas_runtime::{CommonConfig, Shutdown};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
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
    /// CPU threads for libtorch (0 = libtorch's default).
    pub threads: usize,
    /// Label cleanup: `tumor_filter` (Algorithm 1), `largest_component` or `none`.
    pub postprocess: gmmas_models::PostProcess,
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
            threads: 0,
            postprocess: gmmas_models::PostProcess::default(),
        }
    }
}

/// What the infer handler works with.
pub struct Ctx {
    pub bus: Bus,
    pub db: PgPool,
    pub model: Arc<Analyzer>,
    /// Model for cases missing a sequence (None: `model` serves them too).
    pub incomplete_model: Option<Arc<Analyzer>>,
    pub opts: InferOptions,
}

impl Ctx {
    /// The model for a case with these sequences present.
    pub fn model_for(&self, modalities: &[String]) -> &Arc<Analyzer> {
        let present = Modality::ALL.map(|m| modalities.iter().any(|x| x == m.as_str()));
        match &self.incomplete_model {
            Some(m) if gmmas_models::needs_adapted_model(present) => m,
            _ => &self.model,
        }
    }
}

/// Runs the infer service until SIGTERM.
pub async fn run(config: InferConfig) -> anyhow::Result<()> {
    gmmas_runtime::telemetry::init("infer", &config.common.log_format);
    let shutdown = Shutdown::on_signals();
    let bus = Bus::connect(&config.common.nats_url).await?;
    let pool = db::connect(&config.common.database_url, Duration::from_secs(30)).await?;
    if config.threads > 0 {
        gmmas_models::set_threads(config.threads);
    }
    let device = gmmas_models::parse_device(&config.device).context("setting `device`")?;
    let model = registry::load_current(&bus, &pool, Some(Path::new(&config.model_path)), device, Role::Complete)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no current model"))?;
    tracing::info!(model_version = model.version(), device = ?model.device(), role = "complete", "model loaded");
    let incomplete_path = (!config.incomplete_model_path.is_empty()).then(|| Path::new(&config.incomplete_model_path));
    let incomplete = registry::load_current(&bus, &pool, incomplete_path, device, Role::Incomplete).await?;
    match &incomplete {
        Some(m) => tracing::info!(model_version = m.version(), role = "incomplete", "model loaded"),
        None => tracing::info!("no model for incomplete inputs: the complete model serves every case"),
    }
    let metrics = Metrics::new("infer");
    let router = gmmas_runtime::http::health_routes(Some(bus.clone()), Some(pool.clone()), metrics.clone());
    gmmas_runtime::http::serve(&config.common.http_addr, router, shutdown.clone()).await?;
    let ctx = Arc::new(Ctx {
        bus: bus.clone(),
        db: pool,
        model: Arc::new(model),
        incomplete_model: incomplete.map(Arc::new),
        opts: InferOptions {
            overlap: config.overlap,
            mc_passes: config.mc_passes,
            postprocess: config.postprocess,
            ..InferOptions::default()
        },
    });
    let spec = ConsumerSpec {
        durable: contracts::consumers::INFER,
        filter_subject: Event::ScanPreprocessed.all_tenants(),
        stage: Stage::Infer.as_str(),
    };
    run_consumer(&bus, &config.common, spec, metrics, shutdown, move |d| handle(ctx.clone(), d)).await
}

async fn handle(ctx: Arc<Ctx>, delivery: Delivery) -> Outcome {
    let msg: ScanPreprocessed = match contracts::decode(&delivery.payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(subject = %delivery.subject, error = %e, "undecodable message dropped");
            return Outcome::Rejected;
        }
    };
    match process(&ctx, &msg).await {
        Ok(o) => o,
        Err(e) => Outcome::Retry(e),
    }
}

async fn process(ctx: &Ctx, msg: &ScanPreprocessed) -> anyhow::Result<Outcome> {
    let stage = Stage::Infer.as_str();
    let case_id = msg.case_id;
    match db::stage_state(&ctx.db, case_id, stage).await? {
        StageState::Done { output } => {
            ctx.bus
                .publish(Event::ScanAnalyzed.subject(&msg.tenant), &Event::ScanAnalyzed.msg_id(case_id), output)
                .await?;
            return Ok(Outcome::Done);
        }
        StageState::Failed => return Ok(Outcome::Rejected),
        StageState::New | StageState::Running { .. } => {}
    }
    db::stage_started(&ctx.db, case_id, stage, "analyzing").await?;
    let bytes = ctx.bus.get_object(&msg.prepared).await?;
    let model = ctx.model_for(&msg.modalities).clone();
    let model_version = model.version().to_string();
    let device = format!("{:?}", model.device());
    let opts = ctx.opts;
    let result = tokio::task::spawn_blocking(move || analyze(&model, &bytes, &opts)).await.context("inference task")?;
    let out = match result {
        Ok(o) => o,
        Err(reason) => return reject(ctx, msg, reason).await,
    };
    let seg_key = format!("{}/{}/segmentation.nii.gz", msg.tenant, case_id);
    let seg = ctx.bus.put_object(&seg_key, &out.seg_nifti).await?;
    let uncertainty = match &out.uncertainty_nifti {
        Some(bytes) => {
            Some(ctx.bus.put_object(&format!("{}/{}/uncertainty.nii.gz", msg.tenant, case_id), bytes).await?)
        }
        None => None,
    };
    let missing: Vec<String> = Modality::ALL
        .iter()
        .filter(|m| !msg.modalities.iter().any(|x| x == m.as_str()))
        .map(|m| m.as_str().to_string())
        .collect();
    let analyzed = ScanAnalyzed {
        schema_version: contracts::SCHEMA_VERSION,
        tenant: msg.tenant.clone(),
        case_id,
        analysis_id: Uuid::new_v4(),
        model_version: model_version.clone(),
        segmentation: seg.clone(),
        regions: out.regions,
        probabilities: out.probabilities,
        missing_modalities: missing.clone(),
        analyzed_at: Utc::now(),
        mc_passes: ctx.opts.mc_passes as u32,
        probabilities_std: out.probabilities_std,
        uncertainty: uncertainty.clone(),
    };
    let encoded = contracts::encode(&analyzed)?;
    let inputs: serde_json::Map<String, serde_json::Value> = msg
        .input_sha256
        .iter()
        .map(|(m, h)| (m.clone(), serde_json::Value::String(h.clone())))
        .chain(std::iter::once(("preprocessed".to_string(), serde_json::Value::String(msg.prepared.sha256.clone()))))
        .collect();
    let r = &analyzed.regions;
    let p = &analyzed.probabilities;
    let mut tx = ctx.db.begin().await?;
    sqlx::query(
        "INSERT INTO analyses (id, case_id, model_version, input_sha256, device, seg_object_key, seg_sha256,
            ncr_ml, ed_ml, et_ml, wt_ml, tc_ml, ncr_fraction, ed_fraction, et_fraction,
            p_grade_gbm, p_idh_mutant, p_codel_1p19q, p_mgmt_methylated, missing_modalities, inference_ms,
            mc_passes, probabilities_std, uncertainty_key, uncertainty_sha256, mean_uncertainty_wt)
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24,$25,$26)
         ON CONFLICT (case_id) DO NOTHING",
    )
    .bind(analyzed.analysis_id)
    .bind(case_id)
    .bind(&analyzed.model_version)
    .bind(serde_json::Value::Object(inputs))
    .bind(&device)
    .bind(&seg.key)
    .bind(&seg.sha256)
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
    .bind(&missing)
    .bind(out.inference_ms as i64)
    .bind(analyzed.mc_passes as i32)
    .bind(analyzed.probabilities_std.map(|p| serde_json::json!(p)))
    .bind(uncertainty.as_ref().map(|u| u.key.clone()))
    .bind(uncertainty.as_ref().map(|u| u.sha256.clone()))
    .bind(out.mean_uncertainty_wt)
    .execute(&mut *tx)
    .await?;
    db::stage_done(&mut tx, case_id, stage, &encoded).await?;
    sqlx::query("UPDATE cases SET status = 'done', updated_at = now() WHERE id = $1")
        .bind(case_id)
        .execute(&mut *tx)
        .await?;
    db::audit(
        &mut tx,
        "infer",
        "case.analyzed",
        Some(msg.tenant.as_str()),
        Some(case_id),
        serde_json::json!({ "model_version": analyzed.model_version }),
    )
    .await?;
    tx.commit().await?;
    ctx.bus.publish(Event::ScanAnalyzed.subject(&msg.tenant), &Event::ScanAnalyzed.msg_id(case_id), encoded).await?;
    tracing::info!(case_id = %case_id, model_version = %analyzed.model_version, inference_ms = out.inference_ms, "analyzed");
    Ok(Outcome::Done)
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
pub fn analyze(model: &Analyzer, prepared: &[u8], opts: &InferOptions) -> Result<AnalysisOutput, String> {
    let case = PreparedCase::from_bytes(prepared).map_err(|e| format!("preprocessed tensor: {e}"))?;
    analyze_prepared(model, &case, opts)
}

/// Runs the model on a prepared case (shared by the service and `gmmas analyze`).
pub fn analyze_prepared(model: &Analyzer, case: &PreparedCase, opts: &InferOptions) -> Result<AnalysisOutput, String> {
    let started = Instant::now();
    let pred =
        model.analyze(&case.data, case.dims, case.present, opts).map_err(|e| format!("inference failed: {e}"))?;
    let inference_ms = started.elapsed().as_millis();
    let seg = gmmas_imaging::restore_labels(&pred.labels, &case.geometry);
    let stats = gmmas_imaging::region_stats(&seg);
    let to_probs = |t: gmmas_models::TaskProbabilities| Probabilities {
        grade_gbm: t.grade_gbm,
        idh_mutant: t.idh_mutant,
        codel_1p19q: t.codel_1p19q,
        mgmt_methylated: t.mgmt_methylated,
    };
    let (uncertainty_nifti, mean_uncertainty_wt) = match &pred.uncertainty {
        Some(u) => {
            let (sum, n) = u
                .iter()
                .zip(&pred.labels)
                .filter(|(_, l)| **l != 0)
                .fold((0.0f64, 0usize), |(s, n), (v, _)| (s + *v as f64, n + 1));
            let map = gmmas_imaging::restore_map(u, &case.geometry);
            (Some(gmmas_imaging::write_volume(&map, true)), (n > 0).then(|| (sum / n as f64) as f32))
        }
        None => (None, None),
    };
    Ok(AnalysisOutput {
        probabilities_std: pred.task_std.map(to_probs),
        uncertainty_nifti,
        mean_uncertainty_wt,
        seg_nifti: gmmas_imaging::write_labels(&seg, true),
        regions: RegionVolumes {
            ncr_ml: stats.ncr_ml,
            ed_ml: stats.ed_ml,
            et_ml: stats.et_ml,
            wt_ml: stats.wt_ml,
            tc_ml: stats.tc_ml,
            ncr_fraction: stats.ncr_fraction,
            ed_fraction: stats.ed_fraction,
            et_fraction: stats.et_fraction,
        },
        probabilities: to_probs(pred.probabilities),
        inference_ms,
    })
}

async fn reject(ctx: &Ctx, msg: &ScanPreprocessed, reason: String) -> anyhow::Result<Outcome> {
    tracing::warn!(case_id = %msg.case_id, reason = %reason, "case rejected");
    let failed = CaseFailed {
        schema_version: contracts::SCHEMA_VERSION,
        tenant: msg.tenant.clone(),
        case_id: msg.case_id,
        stage: Stage::Infer,
        reason: reason.clone(),
        failed_at: Utc::now(),
    };
    let encoded = contracts::encode(&failed)?;
    db::case_failed(&ctx.db, msg.case_id, Stage::Infer.as_str(), &reason, &encoded).await?;
    ctx.bus.publish(Event::CaseFailed.subject(&msg.tenant), &Event::CaseFailed.msg_id(msg.case_id), encoded).await?;
    Ok(Outcome::Rejected)
}
