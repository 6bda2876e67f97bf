//! The sweeper: finds cases with no progress and no live attempt (their event lost, a relay
//! down too long) and re-drives them, or fails them with a reason after `max_redrives`; removes
//! orphan objects and old outbox rows. One sweeper works at a time (a PostgreSQL advisory lock).

use std::time::Duration;

use gmmas_contracts::{Event, Stage, TenantId};
use uuid::Uuid;

use crate::db::{self, StageState};
use crate::worker::StageRuntime;
use crate::{Shutdown, objects, outbox};

/// Advisory-lock key that makes one sweeper run at a time across every process.
const LOCK_KEY: i64 = 0x676d_6d61_7377_6570; // "gmmasswep"

/// The case pipeline: a finished stage, the event it published, and the stage that consumes it.
const PIPELINE: [(Stage, Event, Stage); 2] = [
    (Stage::Ingest, Event::ScanIngested, Stage::Preprocess),
    (Stage::Preprocess, Event::ScanPreprocessed, Stage::Infer),
];

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub redriven: u64,
    pub failed: u64,
    pub objects_deleted: u64,
    pub outbox_deleted: u64,
    /// False when another process held the sweep lock.
    pub ran: bool,
}

/// Runs one sweep now.
pub async fn sweep(rt: &StageRuntime) -> anyhow::Result<SweepReport> {
    let mut lock = rt.db.acquire().await?;
    let (got,): (bool,) =
        sqlx::query_as("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY).fetch_one(&mut *lock).await?;
    if !got {
        return Ok(SweepReport::default());
    }
    let result = sweep_locked(rt).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(LOCK_KEY).execute(&mut *lock).await;
    result
}

async fn sweep_locked(rt: &StageRuntime) -> anyhow::Result<SweepReport> {
    let cfg = &rt.config;
    let mut report = SweepReport { ran: true, ..Default::default() };
    let stale: Vec<(Uuid, String, i32)> = sqlx::query_as(
        "SELECT c.id, c.tenant_id, c.redrives FROM cases c
         WHERE c.status NOT IN ('done', 'failed') AND c.updated_at < now() - make_interval(secs => $1)
           AND NOT EXISTS (SELECT 1 FROM stage_runs s WHERE s.case_id = c.id AND s.status = 'running'
                           AND s.heartbeat_at > now() - make_interval(secs => $1))
         ORDER BY c.updated_at LIMIT 200",
    )
    .bind(cfg.stale_after_s as f64)
    .fetch_all(&rt.db)
    .await?;
    rt.metrics.set_stale_cases(stale.len() as u64);
    for (case_id, tenant, redrives) in stale {
        let Ok(tenant) = TenantId::new(&tenant) else { continue };
        // The last finished stage of the pipeline and the stage waiting on its event.
        let mut next = None;
        for (done, event, consumer) in PIPELINE {
            if let StageState::Done { output } = db::stage_state(&rt.db, case_id, done).await? {
                next = Some((event, consumer, output));
            }
        }
        let Some((event, consumer, output)) = next else { continue };
        if redrives >= cfg.max_redrives {
            let reason = format!(
                "no progress at stage {} for {} s after {redrives} re-drives; giving up",
                consumer.as_str(),
                cfg.stale_after_s
            );
            if db::fail_case(&rt.db, &tenant, case_id, consumer, &reason).await? {
                report.failed += 1;
                tracing::warn!(case_id = %case_id, stage = consumer.as_str(), "stale case failed");
            }
            continue;
        }
        let mut tx = rt.db.begin().await?;
        let bumped = sqlx::query(
            "UPDATE cases SET redrives = redrives + 1, updated_at = now()
             WHERE id = $1 AND redrives = $2 AND status NOT IN ('done', 'failed')",
        )
        .bind(case_id)
        .bind(redrives)
        .execute(&mut *tx)
        .await?;
        if bumped.rows_affected() == 1 {
            let msg_id = format!("{}:redrive-{}", event.msg_id(case_id), redrives + 1);
            outbox::enqueue(&mut tx, &event.subject(&tenant), &msg_id, &output).await?;
            tx.commit().await?;
            report.redriven += 1;
            tracing::warn!(case_id = %case_id, stage = consumer.as_str(), redrive = redrives + 1, "stale case re-driven");
        }
    }
    report.objects_deleted = objects::sweep_orphans(
        &rt.bus,
        &rt.db,
        &rt.metrics,
        Duration::from_secs(cfg.orphan_grace_s),
        (cfg.failed_retention_days > 0).then(|| Duration::from_secs(cfg.failed_retention_days * 86_400)),
    )
    .await?;
    report.outbox_deleted = sqlx::query(
        "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < now() - make_interval(days => $1)",
    )
    .bind(cfg.outbox_retention_days as i32)
    .execute(&rt.db)
    .await?
    .rows_affected();
    rt.metrics.sweeper_action("redrive", report.redriven);
    rt.metrics.sweeper_action("fail", report.failed);
    rt.metrics.sweeper_action("orphan_deleted", report.objects_deleted);
    if report.redriven + report.failed > 0 {
        rt.relay.kick();
    }
    Ok(report)
}

/// Sweeps every `sweep_interval_s` until shutdown.
pub fn spawn(rt: StageRuntime, shutdown: Shutdown) {
    let every = Duration::from_secs(rt.config.sweep_interval_s.max(1));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait() => break,
            }
            if let Err(e) = sweep(&rt).await {
                tracing::warn!(error = format!("{e:#}"), "sweep failed; will try again");
            }
            match tokio::time::timeout(Duration::from_secs(10), storage_stats(&rt)).await {
                Ok(Err(e)) => tracing::debug!(error = format!("{e:#}"), "storage statistics unavailable"),
                Err(_) => tracing::debug!("storage statistics timed out"),
                Ok(Ok(())) => {}
            }
        }
    });
}

/// Reads the JetStream account's storage use and the size of each object-store bucket this
/// service may read into the metrics (operators alert on a filling store).
pub async fn storage_stats(rt: &StageRuntime) -> anyhow::Result<()> {
    // The account info read as plain JSON: only the two fields used, whatever else the server
    // version adds (the client's typed answer does not parse every server's).
    let reply = rt.bus.client.request("$JS.API.INFO", bytes::Bytes::new()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let info: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    if let Some(err) = info.get("error") {
        anyhow::bail!("JetStream account info: {err}");
    }
    let used = info["storage"].as_u64().unwrap_or(0);
    let limit = info["limits"]["max_storage"].as_i64().unwrap_or(-1);
    rt.metrics.set_jetstream_storage(used, limit);
    let buckets: Vec<String> = match crate::bus_auth::grant(&rt.metrics.service) {
        Some(g) if !rt.config.nats_user.is_empty() => g.buckets.iter().map(|(b, _)| b.to_string()).collect(),
        _ => vec![gmmas_contracts::VOLUMES_BUCKET.to_string(), gmmas_contracts::MODELS_BUCKET.to_string()],
    };
    for bucket in buckets {
        // A bucket nobody wrote to yet has no stream; that is not an error. Looking the stream
        // up already fetched its state: one request per bucket.
        if let Ok(stream) = rt.bus.js.get_stream(format!("OBJ_{bucket}")).await {
            rt.metrics.set_object_store_bytes(&bucket, stream.cached_info().state.bytes);
        }
    }
    Ok(())
}
