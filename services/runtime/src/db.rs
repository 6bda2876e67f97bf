//! PostgreSQL: the pool with migrations applied, and the per-(case, stage) bookkeeping that
//! makes every handler idempotent and gives the API each stage's status and timing.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use gmmas_contracts::{self as contracts, CaseFailed, CaseStatus, Event, Stage, StageStatus, TenantId};
use sqlx::PgConnection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

/// Migrations embedded in every binary; applied by `gmmas migrate` with the migrations role, or
/// by each service at start (under a lock) when `migrate_on_start` is set.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects (retrying for up to `wait`) and applies migrations.
pub async fn connect(url: &str, wait: Duration) -> anyhow::Result<PgPool> {
    connect_with(url, wait, true).await
}

/// Connects (retrying for up to `wait`); applies migrations when `migrate`, otherwise checks that
/// every migration this binary knows has been applied (a service role may not run DDL).
pub async fn connect_with(url: &str, wait: Duration, migrate: bool) -> anyhow::Result<PgPool> {
    let pool = open(url, wait).await?;
    if migrate {
        MIGRATOR.run(&pool).await.context(
            "applying database migrations (this needs the migrations role; a service that runs as \
             the service role sets migrate_on_start=false and `gmmas migrate` applies them)",
        )?;
    } else {
        check_schema(&pool).await?;
    }
    Ok(pool)
}

/// Refuses to serve on a schema that lacks migrations this binary expects.
pub async fn check_schema(pool: &PgPool) -> anyhow::Result<()> {
    let applied: Vec<(i64,)> = sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
        .context("reading the migration history (has `gmmas migrate` run on this database?)")?;
    let applied: std::collections::HashSet<i64> = applied.into_iter().map(|(v,)| v).collect();
    let missing: Vec<i64> = MIGRATOR.iter().map(|m| m.version).filter(|v| !applied.contains(v)).collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "the database schema lacks migrations {missing:?}; run `gmmas migrate` with the migrations \
             role (or set migrate_on_start=true where the service's role may run DDL)"
        );
    }
    Ok(())
}

async fn open(url: &str, wait: Duration) -> anyhow::Result<PgPool> {
    let deadline = tokio::time::Instant::now() + wait;
    let pool = loop {
        match PgPoolOptions::new().max_connections(8).acquire_timeout(Duration::from_secs(5)).connect(url).await {
            Ok(pool) => break pool,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "database not reachable yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("connecting to PostgreSQL (check GMMAS_DATABASE_URL)"),
        }
    };
    Ok(pool)
}

/// Where a stage stands for a case.
#[derive(Debug, Clone, PartialEq)]
pub enum StageState {
    /// Never started.
    New,
    /// Started (perhaps by a process that died); `attempts` so far.
    Running { attempts: i32 },
    /// Finished; the message it published.
    Done { output: Vec<u8> },
    /// Given up on.
    Failed,
}

/// Reads a stage's state.
pub async fn stage_state(pool: &PgPool, case_id: Uuid, stage: Stage) -> sqlx::Result<StageState> {
    let row: Option<(String, i32, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT status, attempts, output FROM stage_runs WHERE case_id = $1 AND stage = $2")
            .bind(case_id)
            .bind(stage.as_str())
            .fetch_optional(pool)
            .await?;
    Ok(match row {
        None => StageState::New,
        Some((s, attempts, output)) => match (StageStatus::parse(&s), output) {
            (Some(StageStatus::Done), Some(output)) => StageState::Done { output },
            (Some(StageStatus::Failed), _) => StageState::Failed,
            _ => StageState::Running { attempts },
        },
    })
}

/// Records that `attempt_id` starts (another) attempt at a stage and moves the case to
/// `case_status`. Returns the attempt number, or `None` when the stage is already finished.
pub async fn stage_started(
    pool: &PgPool,
    case_id: Uuid,
    stage: Stage,
    attempt_id: Uuid,
    case_status: Option<CaseStatus>,
) -> sqlx::Result<Option<i32>> {
    let mut tx = pool.begin().await?;
    let attempts: Option<(i32,)> = sqlx::query_as(
        "INSERT INTO stage_runs (case_id, stage, status, attempts, started_at, attempt_id, heartbeat_at)
         VALUES ($1, $2, 'running', 1, now(), $3, now())
         ON CONFLICT (case_id, stage) DO UPDATE
           SET status = 'running', attempts = stage_runs.attempts + 1, started_at = now(),
               attempt_id = $3, heartbeat_at = now()
         WHERE stage_runs.status = 'running'
         RETURNING attempts",
    )
    .bind(case_id)
    .bind(stage.as_str())
    .bind(attempt_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let (Some(_), Some(case_status)) = (attempts, case_status) {
        sqlx::query(
            "UPDATE cases SET status = $2, updated_at = now() WHERE id = $1 AND status NOT IN ('done', 'failed')",
        )
        .bind(case_id)
        .bind(case_status.as_str())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(attempts.map(|(n,)| n))
}

/// Shows that an attempt is alive (the sweeper leaves such cases alone).
pub async fn heartbeat(pool: &PgPool, case_id: Uuid, stage: Stage) -> sqlx::Result<()> {
    sqlx::query("UPDATE stage_runs SET heartbeat_at = now() WHERE case_id = $1 AND stage = $2 AND status = 'running'")
        .bind(case_id)
        .bind(stage.as_str())
        .execute(pool)
        .await?;
    Ok(())
}

/// Keeps the error of a failed attempt (the reason given when the attempts run out).
pub async fn stage_error(pool: &PgPool, case_id: Uuid, stage: Stage, error: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE stage_runs SET error = $3 WHERE case_id = $1 AND stage = $2 AND status = 'running'")
        .bind(case_id)
        .bind(stage.as_str())
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}

/// The error kept by [`stage_error`], if any.
pub async fn last_error(pool: &PgPool, case_id: Uuid, stage: Stage) -> sqlx::Result<Option<String>> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT error FROM stage_runs WHERE case_id = $1 AND stage = $2")
            .bind(case_id)
            .bind(stage.as_str())
            .fetch_optional(pool)
            .await?;
    Ok(row.and_then(|(e,)| e))
}

/// Marks a stage done inside the caller's transaction, keeping the message it publishes —
/// only if no other attempt finished it first. Returns false when one did (the caller then
/// rolls back and discards what it wrote).
pub async fn stage_done(tx: &mut PgConnection, case_id: Uuid, stage: Stage, output: &[u8]) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "INSERT INTO stage_runs (case_id, stage, status, attempts, finished_at, output, heartbeat_at)
         VALUES ($1, $2, 'done', 1, now(), $3, now())
         ON CONFLICT (case_id, stage) DO UPDATE SET status = 'done', finished_at = now(), output = $3, error = NULL
         WHERE stage_runs.status = 'running'",
    )
    .bind(case_id)
    .bind(stage.as_str())
    .bind(output)
    .execute(tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Moves a case to `status` inside the caller's transaction (never out of `done` or `failed`).
pub async fn set_case_status(tx: &mut PgConnection, case_id: Uuid, status: CaseStatus) -> sqlx::Result<()> {
    sqlx::query("UPDATE cases SET status = $2, updated_at = now() WHERE id = $1 AND status NOT IN ('done', 'failed')")
        .bind(case_id)
        .bind(status.as_str())
        .execute(tx)
        .await?;
    Ok(())
}

/// Marks one stage failed with a reason, leaving its case as it is (side-branch stages).
pub async fn fail_stage(pool: &PgPool, case_id: Uuid, stage: Stage, reason: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO stage_runs (case_id, stage, status, attempts, finished_at, error) VALUES ($1, $2, 'failed', 1, now(), $3)
         ON CONFLICT (case_id, stage) DO UPDATE SET status = 'failed', finished_at = now(), error = $3",
    )
    .bind(case_id)
    .bind(stage.as_str())
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks a stage and its case failed with a reason a person can read and queues the
/// `case.failed` event, in one transaction. Does nothing to a case already done or failed.
pub async fn fail_case(
    pool: &PgPool,
    tenant: &TenantId,
    case_id: Uuid,
    stage: Stage,
    reason: &str,
) -> sqlx::Result<bool> {
    let failed = CaseFailed {
        schema_version: contracts::SCHEMA_VERSION,
        tenant: tenant.clone(),
        case_id,
        stage,
        reason: reason.to_string(),
        failed_at: Utc::now(),
    };
    let encoded = contracts::encode(&failed).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let mut tx = pool.begin().await?;
    let moved = sqlx::query(
        "UPDATE cases SET status = 'failed', error_stage = $2, error = $3, updated_at = now()
         WHERE id = $1 AND status NOT IN ('done', 'failed')",
    )
    .bind(case_id)
    .bind(stage.as_str())
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO stage_runs (case_id, stage, status, attempts, finished_at, error, output) VALUES ($1, $2, 'failed', 1, now(), $3, $4)
         ON CONFLICT (case_id, stage) DO UPDATE SET status = 'failed', finished_at = now(), error = $3, output = $4",
    )
    .bind(case_id)
    .bind(stage.as_str())
    .bind(reason)
    .bind(&encoded)
    .execute(&mut *tx)
    .await?;
    audit(
        &mut tx,
        "system",
        "case.failed",
        Some(tenant.as_str()),
        Some(case_id),
        serde_json::json!({ "stage": stage.as_str() }),
    )
    .await?;
    crate::outbox::enqueue(&mut tx, &Event::CaseFailed.subject(tenant), &Event::CaseFailed.msg_id(case_id), &encoded)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// Appends to the audit log.
pub async fn audit(
    conn: &mut PgConnection,
    actor: &str,
    action: &str,
    tenant: Option<&str>,
    case_id: Option<Uuid>,
    detail: serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO audit_log (actor, action, tenant_id, case_id, detail) VALUES ($1, $2, $3, $4, $5)")
        .bind(actor)
        .bind(action)
        .bind(tenant)
        .bind(case_id)
        .bind(detail)
        .execute(conn)
        .await?;
    Ok(())
}
