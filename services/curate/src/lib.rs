//! Curate: consumes `scan.analyzed`, runs Stage I of the semi-supervised method (MC-Dropout,
//! distribution alignment, the dual threshold) with the model that analyzed the case, stores the
//! accepted pseudo-labels, and publishes `dataset.updated`. A clinician's labels always win.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use chrono::Utc;
use gmmas_contracts::{
    self as contracts, DatasetUpdated, LabelSource, ObjectRef, ScanAnalyzed, ScanPreprocessed, Stage,
};
use gmmas_imaging::PreparedCase;
use gmmas_models::Analyzer;
use gmmas_models::ssl::pseudo::{DistributionAligner, PseudoLabelOptions, PseudoLabels};
use gmmas_runtime::db::{self, StageState};
use gmmas_runtime::worker::{self, Attempt, Consuming, StageError, StageRuntime, StageWorker};
use gmmas_runtime::{CommonConfig, Shutdown};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

/// Task names in head order (the pseudo-label rows use them).
pub const TASKS: [&str; 4] = ["grade_gbm", "idh_mutant", "codel_1p19q", "mgmt_methylated"];
/// The row name of the segmentation pseudo-label.
pub const SEGMENTATION: &str = "segmentation";

/// Configuration of the curate service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CurateConfig {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// MC-Dropout passes per case (at least 2).
    pub mc_passes: usize,
    /// A task label is accepted when its uncertainty is below this (paper: 0.1) ...
    pub u_max: f64,
    /// ... and its confidence above this (paper: 0.95).
    pub c_min: f64,
    /// The same two thresholds per voxel.
    pub voxel_u_max: f64,
    pub voxel_c_min: f64,
    /// Cases in the distribution-alignment window.
    pub align_window: usize,
    /// Distribution alignment on / off.
    pub align: bool,
    /// Seed of the dropout masks (the same seed gives the same pseudo-labels).
    pub seed: u64,
    /// A segmentation pseudo-label is kept only when at least this fraction of the case's
    /// predicted tumour voxels was accepted.
    pub min_tumour_accepted: f64,
    /// `auto`, `cpu` or `cuda`.
    pub device: String,
    /// libtorch CPU threads (0 = default).
    pub threads: usize,
}

impl Default for CurateConfig {
    fn default() -> Self {
        let p = PseudoLabelOptions::default();
        CurateConfig {
            common: CommonConfig { http_addr: "127.0.0.1:8084".into(), ack_wait_s: 120, ..Default::default() },
            mc_passes: 8,
            u_max: p.u_max,
            c_min: p.c_min,
            voxel_u_max: p.voxel_u_max,
            voxel_c_min: p.voxel_c_min,
            align_window: 128,
            align: true,
            seed: 0,
            min_tumour_accepted: 0.5,
            device: "auto".into(),
            threads: 0,
        }
    }
}

/// The curate stage.
pub struct Curator {
    pub options: PseudoLabelOptions,
    pub align_window: usize,
    pub min_tumour_accepted: f64,
    pub device: gmmas_models::Device,
    /// Models by version (the one that analyzed each case), loaded once.
    models: Mutex<HashMap<String, Arc<Analyzer>>>,
    /// Counts of accepted / rejected pseudo-labels.
    pub metrics: Option<gmmas_runtime::metrics::Metrics>,
}

impl std::fmt::Debug for Curator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Curator").field("options", &self.options).finish_non_exhaustive()
    }
}

/// What one case contributed, as committed.
#[derive(Debug, Serialize)]
pub struct Curated {
    pub event: DatasetUpdated,
    #[serde(skip)]
    rows: Vec<PseudoRow>,
    #[serde(skip)]
    aligner: Option<(String, DistributionAligner)>,
}

#[derive(Debug)]
struct PseudoRow {
    task: String,
    accepted: bool,
    label: Option<bool>,
    probability: Option<f64>,
    confidence: Option<f64>,
    uncertainty: Option<f64>,
    accepted_fraction: Option<f64>,
    seg: Option<ObjectRef>,
    mask: Option<ObjectRef>,
}

/// A clinician's labels for a case, as stored by the API.
#[derive(Debug, Default, sqlx::FromRow)]
struct ClinicianLabels {
    seg_object_key: Option<String>,
    grade_gbm: Option<bool>,
    idh_mutant: Option<bool>,
    codel_1p19q: Option<bool>,
    mgmt_methylated: Option<bool>,
}

impl ClinicianLabels {
    fn task(&self, t: usize) -> Option<bool> {
        [self.grade_gbm, self.idh_mutant, self.codel_1p19q, self.mgmt_methylated][t]
    }
}

impl Curator {
    pub fn new(cfg: &CurateConfig) -> anyhow::Result<Self> {
        let options = PseudoLabelOptions {
            mc_passes: cfg.mc_passes,
            u_max: cfg.u_max,
            c_min: cfg.c_min,
            voxel_u_max: cfg.voxel_u_max,
            voxel_c_min: cfg.voxel_c_min,
            seed: cfg.seed,
            align: cfg.align,
            ..PseudoLabelOptions::default()
        };
        options.validate().context("curate thresholds")?;
        Ok(Curator {
            options,
            align_window: cfg.align_window.max(1),
            min_tumour_accepted: cfg.min_tumour_accepted,
            device: gmmas_models::parse_device(&cfg.device).context("setting `device`")?,
            models: Mutex::new(HashMap::new()),
            metrics: None,
        })
    }

    async fn model(&self, attempt: &Attempt, version: &str) -> Result<Arc<Analyzer>, StageError> {
        if let Some(m) = self.models.lock().unwrap_or_else(|e| e.into_inner()).get(version) {
            return Ok(m.clone());
        }
        let model = gmmas_modelstore::load_version(attempt.bus(), attempt.db(), version, self.device)
            .await
            .map_err(|e| StageError::Permanent(format!("the model {version} that analyzed the case: {e:#}")))?;
        let model = Arc::new(model);
        self.models.lock().unwrap_or_else(|e| e.into_inner()).insert(version.to_string(), model.clone());
        Ok(model)
    }
}

/// The aligner of a model: its persisted window, or a new one whose target is the marginals of
/// the clinicians' labels (0.5 for a task nobody labelled).
async fn aligner_for(db: &PgPool, version: &str, window: usize) -> Result<DistributionAligner, StageError> {
    let key = format!("aligner:{version}");
    let row: Option<(serde_json::Value,)> =
        sqlx::query_as("SELECT value FROM curate_state WHERE key = $1").bind(&key).fetch_optional(db).await?;
    if let Some((v,)) = row
        && let Ok(a) = serde_json::from_value::<DistributionAligner>(v)
    {
        return Ok(a);
    }
    type Row = (Option<bool>, Option<bool>, Option<bool>, Option<bool>);
    let rows: Vec<Row> =
        sqlx::query_as("SELECT grade_gbm, idh_mutant, codel_1p19q, mgmt_methylated FROM clinician_labels")
            .fetch_all(db)
            .await?;
    let labels: Vec<[Option<bool>; 4]> = rows.into_iter().map(|(a, b, c, d)| [a, b, c, d]).collect();
    DistributionAligner::from_labels(&labels, window).map_err(|e| StageError::Permanent(format!("aligner: {e}")))
}

impl StageWorker for Curator {
    type Input = ScanAnalyzed;
    type Output = Curated;

    const STAGE: Consuming = Consuming::Curate;

    // Long on purpose: one analysed case through the curation decision and its single database transaction; the steps share that transaction.
    async fn work(&self, attempt: &Attempt, msg: &ScanAnalyzed) -> Result<Curated, StageError> {
        let db = attempt.db();
        let clinician: ClinicianLabels = sqlx::query_as(
            "SELECT seg_object_key, grade_gbm, idh_mutant, codel_1p19q, mgmt_methylated FROM clinician_labels
             WHERE case_id = $1",
        )
        .bind(msg.case_id)
        .fetch_optional(db)
        .await?
        .unwrap_or_default();
        let prepared = match db::stage_state(db, msg.case_id, Stage::Preprocess).await? {
            StageState::Done { output } => contracts::decode::<ScanPreprocessed>(&output)?,
            _ => return Err(StageError::Permanent("the case has no preprocessed tensor".into())),
        };
        let bytes = attempt.get_object(&prepared.prepared).await?;
        let model = self.model(attempt, &msg.model_version).await?;
        let mut aligner = aligner_for(db, &msg.model_version, self.align_window).await?;
        let opts = self.options.clone();
        let (labels, case, aligner) = tokio::task::spawn_blocking(move || {
            let case = PreparedCase::from_bytes(&bytes).map_err(|e| format!("preprocessed tensor: {e}"))?;
            let labels = model
                .pseudo_label(&case.data, case.dims, case.present, &opts, Some(&mut aligner))
                .map_err(|e| format!("pseudo-labelling: {e}"))?;
            Ok::<_, String>((labels, case, aligner))
        })
        .await
        .map_err(|e| StageError::transient(anyhow::anyhow!("pseudo-label task: {e}")))?
        .map_err(StageError::Permanent)?;

        let mut rows = Vec::new();
        let (mut accepted, mut rejected) = (Vec::new(), Vec::new());
        for (t, d) in labels.tasks.iter().enumerate() {
            if clinician.task(t).is_some() {
                continue; // the clinician's label wins; nothing to guess
            }
            if d.accepted {
                accepted.push(d.task.clone())
            } else {
                rejected.push(d.task.clone())
            }
            rows.push(PseudoRow {
                task: d.task.clone(),
                accepted: d.accepted,
                label: Some(d.label),
                probability: Some(d.probability),
                confidence: Some(d.confidence),
                uncertainty: Some(d.uncertainty),
                accepted_fraction: None,
                seg: None,
                mask: None,
            });
        }
        let c = labels.counts;
        let voxel_fraction = c.accepted_voxels as f64 / c.voxels.max(1) as f64;
        if clinician.seg_object_key.is_none() {
            let tumour_kept = if c.predicted_tumour_voxels == 0 {
                1.0
            } else {
                c.accepted_tumour_voxels as f64 / c.predicted_tumour_voxels as f64
            };
            let ok = tumour_kept >= self.min_tumour_accepted && c.accepted_voxels > 0;
            let (seg, mask) = if ok {
                let (seg, mask) = seg_files(&labels, &case);
                (
                    Some(attempt.put_object("pseudo_seg.nii.gz", &seg).await?),
                    Some(attempt.put_object("pseudo_accept.nii.gz", &mask).await?),
                )
            } else {
                (None, None)
            };
            if ok {
                accepted.push(SEGMENTATION.into())
            } else {
                rejected.push(SEGMENTATION.into())
            }
            rows.push(PseudoRow {
                task: SEGMENTATION.into(),
                accepted: ok,
                label: None,
                probability: None,
                confidence: None,
                uncertainty: None,
                accepted_fraction: Some(tumour_kept),
                seg,
                mask,
            });
        }
        tracing::info!(accepted = ?accepted, rejected = ?rejected, voxel_fraction, "pseudo-labelled");
        if let Some(m) = &self.metrics {
            accepted.iter().for_each(|t| m.pseudo_label(t, true));
            rejected.iter().for_each(|t| m.pseudo_label(t, false));
        }
        let curated_cases = curated_count(db).await? + u64::from(!accepted.is_empty());
        Ok(Curated {
            event: DatasetUpdated {
                schema_version: contracts::SCHEMA_VERSION,
                tenant: msg.tenant.clone(),
                case_id: msg.case_id,
                source: LabelSource::Pseudo,
                model_version: msg.model_version.clone(),
                accepted,
                rejected,
                accepted_voxel_fraction: voxel_fraction,
                curated_cases,
                updated_at: Utc::now(),
            },
            rows,
            aligner: Some((msg.model_version.clone(), aligner)),
        })
    }

    async fn commit(&self, tx: &mut PgConnection, msg: &ScanAnalyzed, out: &Curated) -> sqlx::Result<()> {
        for r in &out.rows {
            sqlx::query(
                "INSERT INTO pseudo_labels (case_id, task, model_version, accepted, label, probability, confidence,
                    uncertainty, accepted_fraction, seg_object_key, seg_sha256, mask_object_key, mask_sha256)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 ON CONFLICT (case_id, task, model_version) DO NOTHING",
            )
            .bind(msg.case_id)
            .bind(&r.task)
            .bind(&msg.model_version)
            .bind(r.accepted)
            .bind(r.label)
            .bind(r.probability.map(|v| v as f32))
            .bind(r.confidence.map(|v| v as f32))
            .bind(r.uncertainty.map(|v| v as f32))
            .bind(r.accepted_fraction.map(|v| v as f32))
            .bind(r.seg.as_ref().map(|o| o.key.clone()))
            .bind(r.seg.as_ref().map(|o| o.sha256.clone()))
            .bind(r.mask.as_ref().map(|o| o.key.clone()))
            .bind(r.mask.as_ref().map(|o| o.sha256.clone()))
            .execute(&mut *tx)
            .await?;
        }
        if let Some((version, aligner)) = &out.aligner {
            let value = serde_json::to_value(aligner).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            sqlx::query(
                "INSERT INTO curate_state (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = $2, updated_at = now()",
            )
            .bind(format!("aligner:{version}"))
            .bind(value)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    fn encode(&self, out: &Curated) -> Result<Vec<u8>, contracts::ContractError> {
        contracts::encode(&out.event)
    }
}

/// Cases whose labels (accepted pseudo-labels that are not stale, or a clinician's) are in the
/// training data.
pub async fn curated_count(db: &PgPool) -> sqlx::Result<u64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM (SELECT case_id FROM pseudo_labels WHERE accepted AND NOT stale
                               UNION SELECT case_id FROM clinician_labels) x",
    )
    .fetch_one(db)
    .await?;
    Ok(n.max(0) as u64)
}

/// The pseudo-label as NIfTI on the input grid: BraTS labels with 255 where a voxel was not
/// accepted (no supervision), and the accept mask (0/1).
fn seg_files(p: &PseudoLabels, case: &PreparedCase) -> (Vec<u8>, Vec<u8>) {
    let target: Vec<u8> = p.labels.iter().zip(&p.accept).map(|(&l, &a)| if a { l } else { 255 }).collect();
    let mask: Vec<u8> = p.accept.iter().map(|&a| u8::from(a)).collect();
    let seg = gmmas_imaging::restore_labels(&target, &case.geometry);
    let mask = gmmas_imaging::restore_labels(&mask, &case.geometry);
    (gmmas_imaging::write_labels(&seg, true), gmmas_imaging::write_labels(&mask, true))
}

/// Runs the curate service until SIGTERM.
pub async fn run(config: CurateConfig) -> anyhow::Result<()> {
    gmmas_runtime::telemetry::init("curate", &config.common.log_format);
    let shutdown = Shutdown::on_signals();
    if config.threads > 0 {
        gmmas_models::set_threads(config.threads);
    }
    let mut worker = Curator::new(&config)?;
    let rt = StageRuntime::start(&config.common, "curate", &shutdown).await?;
    worker.metrics = Some(rt.metrics.clone());
    gmmas_runtime::http::serve(&config.common.http_addr, rt.health_routes(), shutdown.clone()).await?;
    worker::run(rt, Arc::new(worker), shutdown).await
}
