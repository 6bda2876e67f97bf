//! Preprocess: consumes `scan.ingested`, strips the skull when the input has one, brings the
//! volumes to canonical orientation, 1 mm, the brain bounding box and per-modality z-scores,
//! stores the tensor (and the brain mask), publishes `scan.preprocessed`.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use chrono::Utc;
use gmmas_contracts::{self as contracts, ScanIngested, ScanPreprocessed};
use gmmas_imaging::{Limits, Modality, PrepOptions};
use gmmas_models::{BrainExtractor, SkullStrip};
use gmmas_runtime::worker::{self, Attempt, Consuming, StageError, StageRuntime, StageWorker};
use gmmas_runtime::{CommonConfig, Shutdown};
use serde::{Deserialize, Serialize};

/// Configuration of the preprocess service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PreprocessConfig {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Lower and upper intensity percentiles for outlier clipping.
    pub clip_low_pct: f32,
    pub clip_high_pct: f32,
    /// Target isotropic spacing in mm.
    pub spacing_mm: f32,
    /// Largest accepted file, in MiB, and volume, in voxels: the same settings as ingest's,
    /// so that a volume ingest accepted is never refused here.
    pub max_upload_mib: u64,
    pub max_voxels: u64,
    /// Skull stripping: `auto` (when a sequence is not skull-stripped), `always`, or `never`
    /// (such input fails with the reason).
    pub skull_strip: String,
    /// The brain-extraction network (TorchScript). Empty: `GMMAS_BRAIN_MODEL_PATH`, else the
    /// bundled one; without one, the classical extractor.
    pub brain_model_path: String,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            common: CommonConfig { http_addr: "127.0.0.1:8082".into(), ..Default::default() },
            clip_low_pct: 0.5,
            clip_high_pct: 99.5,
            spacing_mm: 1.0,
            max_upload_mib: 1024,
            max_voxels: 512 * 512 * 512,
            skull_strip: "auto".into(),
            brain_model_path: String::new(),
        }
    }
}

/// What the blocking part of a preprocessing attempt hands back.
struct Prepared {
    tensor: Vec<u8>,
    /// The brain mask (NIfTI, gzip) when the skull was stripped.
    mask: Option<Vec<u8>>,
    method: String,
}

/// The preprocess stage: volumes in, one normalized tensor out.
#[derive(Debug)]
pub struct Preprocessor {
    pub opts: PrepOptions,
    pub limits: Limits,
    /// When to strip the skull.
    pub strip: SkullStrip,
    /// The brain-extraction network; `None` = the classical extractor.
    pub extractor: Option<Arc<Mutex<BrainExtractor>>>,
}

impl StageWorker for Preprocessor {
    type Input = ScanIngested;
    type Output = ScanPreprocessed;

    const STAGE: Consuming = Consuming::Preprocess;

    async fn work(&self, attempt: &Attempt, msg: &ScanIngested) -> Result<ScanPreprocessed, StageError> {
        let started = std::time::Instant::now();
        let mut modalities = Vec::with_capacity(msg.volumes.len());
        for v in &msg.volumes {
            modalities.push(Modality::parse(&v.modality).ok_or_else(|| {
                StageError::Permanent(format!("unknown modality {:?} in the ingested case", v.modality))
            })?);
        }
        // The volumes are fetched at once, then decoded one per thread.
        let fetched = futures::future::try_join_all(msg.volumes.iter().map(|v| attempt.get_object(&v.object))).await?;
        let inputs: Vec<_> = modalities.into_iter().zip(fetched).collect();
        let opts = self.opts.clone();
        let limits = self.limits;
        let (strip, extractor) = (self.strip, self.extractor.clone());
        let prepared = tokio::task::spawn_blocking(move || -> Result<Prepared, String> {
            let mut volumes = std::thread::scope(|s| {
                let decoding: Vec<_> = inputs
                    .iter()
                    .map(|(m, bytes)| {
                        s.spawn(move || {
                            gmmas_imaging::read_volume(bytes, &limits)
                                .map(|v| (*m, v))
                                .map_err(|e| format!("{}: {e}", m.as_str()))
                        })
                    })
                    .collect();
                decoding
                    .into_iter()
                    .map(|d| d.join().unwrap_or_else(|_| Err("decoding a volume panicked".to_string())))
                    .collect::<Result<Vec<_>, String>>()
            })?;
            let guard = match (&extractor, gmmas_models::needs_stripping(&volumes, strip)) {
                (Some(x), true) => Some(x.lock().map_err(|_| "the brain-extraction network is unusable".to_string())?),
                _ => None,
            };
            let (mask, report) =
                gmmas_models::strip_case(&mut volumes, strip, guard.as_deref()).map_err(|e| e.to_string())?;
            drop(guard);
            let refs: Vec<_> = volumes.iter().map(|(m, v)| (*m, v)).collect();
            let case = gmmas_imaging::prepare(&refs, &opts).map_err(|e| e.to_string())?;
            Ok(Prepared {
                tensor: case.to_bytes(),
                mask: mask.map(|m| gmmas_imaging::write_labels(&m, true)),
                method: report.method,
            })
        })
        .await
        .map_err(|e| StageError::transient(anyhow::anyhow!("preprocessing task: {e}")))?
        .map_err(StageError::Permanent)?;
        let object = attempt.put_object("preprocessed.gmt", &prepared.tensor).await?;
        let brain_mask = match &prepared.mask {
            Some(bytes) => Some(attempt.put_object("brain-mask.nii.gz", bytes).await?),
            None => None,
        };
        tracing::info!(ms = started.elapsed().as_millis() as u64, "preprocessed");
        Ok(ScanPreprocessed {
            schema_version: contracts::SCHEMA_VERSION,
            tenant: msg.tenant.clone(),
            case_id: msg.case_id,
            prepared: object,
            modalities: msg.volumes.iter().map(|v| v.modality.clone()).collect(),
            input_sha256: msg.volumes.iter().map(|v| (v.modality.clone(), v.object.sha256.clone())).collect(),
            preprocessed_at: Utc::now(),
            brain_mask,
            skull_strip: prepared.method,
        })
    }
}

/// The brain-extraction network at `path` (empty: the default one), on the CPU; `None` with a
/// warning when there is none, so that the classical extractor is used.
fn load_extractor(path: &str) -> anyhow::Result<Option<Arc<Mutex<BrainExtractor>>>> {
    let path = if path.is_empty() { gmmas_models::default_brain_model_path() } else { Some(path.into()) };
    let Some(path) = path else {
        tracing::warn!("no brain-extraction network: skull stripping uses the classical extractor");
        return Ok(None);
    };
    let x = BrainExtractor::load(&path, gmmas_models::Device::Cpu)
        .with_context(|| format!("loading the brain-extraction network {}", path.display()))?;
    tracing::info!(
        version = x.version(),
        subnormal_weights_zeroed = x.subnormal_zeroed(),
        "brain-extraction network loaded"
    );
    Ok(Some(Arc::new(Mutex::new(x))))
}

/// Runs the preprocess service until SIGTERM.
pub async fn run(config: PreprocessConfig) -> anyhow::Result<()> {
    gmmas_runtime::telemetry::init("preprocess", &config.common.log_format);
    let shutdown = Shutdown::on_signals();
    let rt = StageRuntime::start(&config.common, "preprocess", &shutdown).await?;
    gmmas_runtime::http::serve(&config.common.http_addr, rt.health_routes(), shutdown.clone()).await?;
    let worker = Preprocessor {
        opts: PrepOptions {
            clip_percentiles: (config.clip_low_pct, config.clip_high_pct),
            spacing_mm: config.spacing_mm,
            ..PrepOptions::default()
        },
        limits: Limits::from_settings(config.max_upload_mib, config.max_voxels),
        strip: config.skull_strip.parse()?,
        extractor: load_extractor(&config.brain_model_path)?,
    };
    worker::run(rt, Arc::new(worker), shutdown).await
}
