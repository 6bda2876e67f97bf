//! The model registry in PostgreSQL: every model with its parent, data snapshot, config and
//! gate metrics; promotion of a candidate, rejection, and rollback, each one transaction that
//! also queues its `model.*` event through the outbox.

use chrono::{DateTime, Utc};
use gmmas_contracts::{self as contracts, ModelChanged, ModelEvent};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{db, outbox};

/// Serialises registry changes across processes.
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('gmmas.model_registry'))";

/// One registered model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ModelRow {
    pub version: String,
    pub name: String,
    pub role: String,
    pub status: String,
    pub origin: String,
    pub weights_uri: String,
    pub sha256: String,
    pub parent_version: Option<String>,
    pub data_sha256: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<serde_json::Value>,
    pub decision: Option<String>,
    pub run_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub promoted_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "version, name, role, status, origin, weights_uri, sha256, parent_version, data_sha256, \
                       metrics, decision, run_id, created_at, promoted_at";

/// Errors a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no current model for role {0}")]
    NoCurrent(String),
    #[error("role {0} has no earlier model to roll back to")]
    NothingToRollBackTo(String),
    #[error("model {0} is not a candidate")]
    NotACandidate(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Every model, newest first.
pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<ModelRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM model_registry ORDER BY created_at DESC, version"))
        .fetch_all(pool)
        .await
}

/// The current model of a role.
pub async fn current(pool: &PgPool, role: &str) -> sqlx::Result<Option<ModelRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM model_registry WHERE status = 'current' AND role = $1"))
        .bind(role)
        .fetch_optional(pool)
        .await
}

/// One model by version.
pub async fn get(pool: &PgPool, version: &str) -> sqlx::Result<Option<ModelRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM model_registry WHERE version = $1"))
        .bind(version)
        .fetch_optional(pool)
        .await
}

/// A trained model waiting for the gate.
#[derive(Debug, Clone)]
pub struct NewCandidate {
    pub version: String,
    pub name: String,
    pub role: String,
    pub weights_uri: String,
    pub sha256: String,
    pub parent_version: String,
    pub data_sha256: String,
    pub config: serde_json::Value,
    pub run_id: Uuid,
}

/// Registers a candidate (idempotent per version) and queues `model.candidate`.
pub async fn register_candidate(pool: &PgPool, c: &NewCandidate) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK).execute(&mut *tx).await?;
    let inserted = sqlx::query(
        "INSERT INTO model_registry (version, name, weights_uri, sha256, config, status, origin, role,
                                     parent_version, data_sha256, run_id)
         VALUES ($1, $2, $3, $4, $5, 'candidate', 'trained', $6, $7, $8, $9)
         ON CONFLICT (version) DO NOTHING",
    )
    .bind(&c.version)
    .bind(&c.name)
    .bind(&c.weights_uri)
    .bind(&c.sha256)
    .bind(&c.config)
    .bind(&c.role)
    .bind(&c.parent_version)
    .bind(&c.data_sha256)
    .bind(c.run_id)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 1 {
        let event = changed(&c.version, &c.role, Some(c.parent_version.clone()), "candidate");
        enqueue(&mut tx, ModelEvent::Candidate, &event).await?;
        db::audit(&mut tx, "train", "model.candidate", None, None, serde_json::json!({ "version": c.version })).await?;
    }
    tx.commit().await
}

/// The gate's verdict on a candidate: promote it (the current model of its role retires) or
/// reject it with the reason; `metrics` are kept either way.
pub async fn decide(
    pool: &PgPool,
    version: &str,
    promote: bool,
    decision: &str,
    metrics: &serde_json::Value,
) -> Result<(), RegistryError> {
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK).execute(&mut *tx).await?;
    let row: Option<(String, String)> = sqlx::query_as("SELECT role, status FROM model_registry WHERE version = $1")
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?;
    let Some((role, status)) = row else { return Err(RegistryError::NotACandidate(version.into())) };
    if status != "candidate" {
        return Err(RegistryError::NotACandidate(version.into()));
    }
    if promote {
        let previous: Option<(String,)> = sqlx::query_as(
            "UPDATE model_registry SET status = 'retired' WHERE status = 'current' AND role = $1 RETURNING version",
        )
        .bind(&role)
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE model_registry SET status = 'current', promoted_at = now(), decision = $2, metrics = $3 WHERE version = $1",
        )
        .bind(version)
        .bind(decision)
        .bind(metrics)
        .execute(&mut *tx)
        .await?;
        let event = changed(version, &role, previous.map(|p| p.0), "gate");
        enqueue(&mut tx, ModelEvent::Promoted, &event).await?;
        db::audit(
            &mut tx,
            "train",
            "model.promoted",
            None,
            None,
            serde_json::json!({ "version": version, "decision": decision }),
        )
        .await?;
    } else {
        sqlx::query("UPDATE model_registry SET status = 'rejected', decision = $2, metrics = $3 WHERE version = $1")
            .bind(version)
            .bind(decision)
            .bind(metrics)
            .execute(&mut *tx)
            .await?;
        db::audit(
            &mut tx,
            "train",
            "model.rejected",
            None,
            None,
            serde_json::json!({ "version": version, "decision": decision }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Rolls a role back: its current model becomes `rolled_back`, the model it replaced becomes
/// current again, and the pseudo-labels the rolled-back model produced are marked stale.
/// Returns (rolled back, now current).
pub async fn rollback(pool: &PgPool, role: &str, actor: &str) -> Result<(String, String), RegistryError> {
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK).execute(&mut *tx).await?;
    let cur: Option<(String,)> =
        sqlx::query_as("SELECT version FROM model_registry WHERE status = 'current' AND role = $1")
            .bind(role)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((cur,)) = cur else { return Err(RegistryError::NoCurrent(role.into())) };
    // The most recently promoted earlier model of the role that is still usable.
    let prev: Option<(String,)> = sqlx::query_as(
        "SELECT version FROM model_registry WHERE role = $1 AND status = 'retired' AND promoted_at IS NOT NULL
         ORDER BY promoted_at DESC LIMIT 1",
    )
    .bind(role)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((prev,)) = prev else { return Err(RegistryError::NothingToRollBackTo(role.into())) };
    sqlx::query("UPDATE model_registry SET status = 'rolled_back', decision = coalesce(decision, '') || ' | rolled back' WHERE version = $1")
        .bind(&cur)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE model_registry SET status = 'current', promoted_at = now() WHERE version = $1")
        .bind(&prev)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE pseudo_labels SET stale = true WHERE model_version = $1").bind(&cur).execute(&mut *tx).await?;
    let event = changed(&prev, role, Some(cur.clone()), "rollback");
    enqueue(&mut tx, ModelEvent::Promoted, &event).await?;
    db::audit(
        &mut tx,
        actor,
        "model.rolled_back",
        None,
        None,
        serde_json::json!({ "from": cur, "to": prev, "role": role }),
    )
    .await?;
    tx.commit().await?;
    Ok((cur, prev))
}

fn changed(version: &str, role: &str, previous: Option<String>, reason: &str) -> ModelChanged {
    ModelChanged {
        schema_version: contracts::SCHEMA_VERSION,
        version: version.into(),
        role: role.into(),
        previous,
        reason: reason.into(),
        at: Utc::now(),
    }
}

async fn enqueue(tx: &mut sqlx::PgConnection, kind: ModelEvent, event: &ModelChanged) -> sqlx::Result<()> {
    let payload = contracts::encode(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let msg_id = format!("{}:{}:{}", event.version, event.reason, event.at.timestamp_micros());
    outbox::enqueue(tx, &kind.subject(), &msg_id, &payload).await
}
