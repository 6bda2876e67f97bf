//! Preprocess: consumes `scan.ingested`, brings the volumes to canonical orientation, 1 mm,
//! the brain bounding box and per-modality z-scores, stores the tensor, publishes `scan.preprocessed`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use gmmas_contracts::{self as contracts, CaseFailed, Event, ScanIngested, ScanPreprocessed, Stage};
use gmmas_imaging::{Limits, Modality, PrepOptions};
use gmmas_runtime::bus::{Bus, ConsumerSpec, Delivery, Outcome, run_consumer};
use gmmas_runtime::db::{self, StageState};
use gmmas_runtime::http::Metrics;
use gmmas_runtime::{CommonConfig, Shutdown};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

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
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            common: CommonConfig { http_addr: "127.0.0.1:8082".into(), ..Default::default() },
            clip_low_pct: 0.5,
            clip_high_pct: 99.5,
            spacing_mm: 1.0,
        }
    }
}

struct Ctx {
    bus: Bus,
    db: PgPool,
    opts: PrepOptions,
}

/// Runs the preprocess service until SIGTERM.
pub async fn run(config: PreprocessConfig) -> anyhow::Result<()> {
    gmmas_runtime::telemetry::init("preprocess", &config.common.log_format);
    let shutdown = Shutdown::on_signals();
    let bus = Bus::connect(&config.common.nats_url).await?;
    let pool = db::connect(&config.common.database_url, Duration::from_secs(30)).await?;
    let metrics = Metrics::new("preprocess");
    let router = gmmas_runtime::http::health_routes(Some(bus.clone()), Some(pool.clone()), metrics.clone());
    gmmas_runtime::http::serve(&config.common.http_addr, router, shutdown.clone()).await?;
    let ctx = Arc::new(Ctx {
        bus: bus.clone(),
        db: pool,
        opts: PrepOptions {
            clip_percentiles: (config.clip_low_pct, config.clip_high_pct),
            spacing_mm: config.spacing_mm,
            ..PrepOptions::default()
        },
    });
    let spec = ConsumerSpec {
        durable: contracts::consumers::PREPROCESS,
        filter_subject: Event::ScanIngested.all_tenants(),
        stage: Stage::Preprocess.as_str(),
    };
    run_consumer(&bus, &config.common, spec, metrics, shutdown, move |d| handle(ctx.clone(), d)).await
}

async fn handle(ctx: Arc<Ctx>, delivery: Delivery) -> Outcome {
    let msg: ScanIngested = match contracts::decode(&delivery.payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(subject = %delivery.subject, error = %e, "undecodable message dropped");
            return Outcome::Rejected;
        }
    };
    match process(&ctx, &msg).await {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Retry(e),
    }
}

async fn process(ctx: &Ctx, msg: &ScanIngested) -> anyhow::Result<Outcome> {
    let stage = Stage::Preprocess.as_str();
    let case_id = msg.case_id;
    match db::stage_state(&ctx.db, case_id, stage).await? {
        StageState::Done { output } => {
            // Redelivery after the commit: publish again; JetStream drops the duplicate.
            let out: ScanPreprocessed = contracts::decode(&output)?;
            ctx.bus
                .publish(Event::ScanPreprocessed.subject(&out.tenant), &Event::ScanPreprocessed.msg_id(case_id), output)
                .await?;
            return Ok(Outcome::Done);
        }
        StageState::Failed => return Ok(Outcome::Rejected),
        StageState::New | StageState::Running { .. } => {}
    }
    db::stage_started(&ctx.db, case_id, stage, "preprocessing").await?;
    let started = std::time::Instant::now();

    let mut inputs = Vec::with_capacity(msg.volumes.len());
    for v in &msg.volumes {
        let Some(modality) = Modality::parse(&v.modality) else {
            return reject(ctx, msg, format!("unknown modality {:?} in the ingested case", v.modality)).await;
        };
        let bytes = ctx.bus.get_object(&v.object).await?;
        inputs.push((modality, bytes));
    }
    let opts = ctx.opts.clone();
    let prepared = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let limits = Limits::default();
        let mut volumes = Vec::with_capacity(inputs.len());
        for (m, bytes) in &inputs {
            let v = gmmas_imaging::read_volume(bytes, &limits).map_err(|e| format!("{}: {e}", m.as_str()))?;
            volumes.push((*m, v));
        }
        let refs: Vec<_> = volumes.iter().map(|(m, v)| (*m, v)).collect();
        let case = gmmas_imaging::prepare(&refs, &opts).map_err(|e| e.to_string())?;
        Ok(case.to_bytes())
    })
    .await
    .context("preprocessing task")?;
    let bytes = match prepared {
        Ok(b) => b,
        Err(reason) => return reject(ctx, msg, reason).await,
    };
    let key = format!("{}/{}/preprocessed.gmt", msg.tenant, case_id);
    let object = ctx.bus.put_object(&key, &bytes).await?;
    let out = ScanPreprocessed {
        schema_version: contracts::SCHEMA_VERSION,
        tenant: msg.tenant.clone(),
        case_id,
        prepared: object,
        modalities: msg.volumes.iter().map(|v| v.modality.clone()).collect(),
        input_sha256: msg.volumes.iter().map(|v| (v.modality.clone(), v.object.sha256.clone())).collect(),
        preprocessed_at: Utc::now(),
    };
    let encoded = contracts::encode(&out)?;
    let mut tx = ctx.db.begin().await?;
    db::stage_done(&mut tx, case_id, stage, &encoded).await?;
    tx.commit().await?;
    ctx.bus
        .publish(Event::ScanPreprocessed.subject(&msg.tenant), &Event::ScanPreprocessed.msg_id(case_id), encoded)
        .await?;
    tracing::info!(case_id = %case_id, ms = started.elapsed().as_millis() as u64, "preprocessed");
    Ok(Outcome::Done)
}

/// Marks the case failed with `reason`, announces it, and drops the message.
async fn reject(ctx: &Ctx, msg: &ScanIngested, reason: String) -> anyhow::Result<Outcome> {
    tracing::warn!(case_id = %msg.case_id, reason = %reason, "case rejected");
    let failed = CaseFailed {
        schema_version: contracts::SCHEMA_VERSION,
        tenant: msg.tenant.clone(),
        case_id: msg.case_id,
        stage: Stage::Preprocess,
        reason: reason.clone(),
        failed_at: Utc::now(),
    };
    let encoded = contracts::encode(&failed)?;
    db::case_failed(&ctx.db, msg.case_id, Stage::Preprocess.as_str(), &reason, &encoded).await?;
    ctx.bus.publish(Event::CaseFailed.subject(&msg.tenant), &Event::CaseFailed.msg_id(msg.case_id), encoded).await?;
    Ok(Outcome::Rejected)
}
