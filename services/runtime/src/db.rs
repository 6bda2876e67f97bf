//! PostgreSQL: the pool with migrations applied, and the per-(case, stage) bookkeeping that
//! makes every handler idempotent and gives the API each stage's status and timing.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

/// Migrations embedded in every binary; each service applies them at start (under a lock).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects (retrying for up to `wait`) and applies migrations.
pub async fn connect(url: &str, wait: Duration) -> anyhow::Result<PgPool> {
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
    MIGRATOR.run(&pool).await.context("applying database migrations")?;
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
pub async fn stage_state(pool: &PgPool, case_id: Uuid, stage: &str) -> sqlx::Result<StageState> {
    let row: Option<(String, i32, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT status, attempts, output FROM stage_runs WHERE case_id = $1 AND stage = $2")
            .bind(case_id)
            .bind(stage)
            .fetch_optional(pool)
            .await?;
    Ok(match row {
        None => StageState::New,
        Some((s, _, Some(output))) if s == "done" => StageState::Done { output },
        Some((s, _, _)) if s == "failed" => StageState::Failed,
        Some((_, attempts, _)) => StageState::Running { attempts },
    })
}

/// Records that a stage started (again) and moves the case to `case_status`.
pub async fn stage_started(pool: &PgPool, case_id: Uuid, stage: &str, case_status: &str) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO stage_runs (case_id, stage, status, attempts, started_at) VALUES ($1, $2, 'running', 1, now())
         ON CONFLICT (case_id, stage) DO UPDATE
           SET status = 'running', attempts = stage_runs.attempts + 1, started_at = now(), error = NULL
         WHERE stage_runs.status <> 'done'",
    )
    .bind(case_id)
    .bind(stage)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE cases SET status = $2, updated_at = now() WHERE id = $1 AND status NOT IN ('done', 'failed')")
        .bind(case_id)
        .bind(case_status)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Marks a stage done inside the caller's transaction, keeping the message it will publish.
pub async fn stage_done(tx: &mut sqlx::PgConnection, case_id: Uuid, stage: &str, output: &[u8]) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO stage_runs (case_id, stage, status, attempts, finished_at, output) VALUES ($1, $2, 'done', 1, now(), $3)
         ON CONFLICT (case_id, stage) DO UPDATE SET status = 'done', finished_at = now(), output = $3, error = NULL",
    )
    .bind(case_id)
    .bind(stage)
    .bind(output)
    .execute(tx)
    .await?;
    Ok(())
}

/// Marks a stage and its case failed with a reason a person can read.
pub async fn case_failed(pool: &PgPool, case_id: Uuid, stage: &str, reason: &str, output: &[u8]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO stage_runs (case_id, stage, status, attempts, finished_at, error, output) VALUES ($1, $2, 'failed', 1, now(), $3, $4)
         ON CONFLICT (case_id, stage) DO UPDATE SET status = 'failed', finished_at = now(), error = $3, output = $4",
    )
    .bind(case_id)
    .bind(stage)
    .bind(reason)
    .bind(output)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE cases SET status = 'failed', error_stage = $2, error = $3, updated_at = now() WHERE id = $1")
        .bind(case_id)
        .bind(stage)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
    audit(&mut tx, "system", "case.failed", None, Some(case_id), serde_json::json!({ "stage": stage })).await?;
    tx.commit().await
}

/// Appends to the audit log.
pub async fn audit(
    conn: &mut sqlx::PgConnection,
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
