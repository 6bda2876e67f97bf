//! Administration over HTTP: tenants (created by an admin, never by an upload), GMMAS-issued
//! tokens, and each tenant's own audit trail.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use gmmas_contracts::TenantId;
use gmmas_runtime::auth::{self, AuthConfig, Identity, Role};
use gmmas_runtime::http::ApiError;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// Longest lifetime of a token issued through the API (30 days).
pub const MAX_TOKEN_TTL_S: u64 = 30 * 24 * 3600;

#[derive(Clone)]
struct AdminState {
    db: PgPool,
    cfg: AuthConfig,
    /// The signing key when GMMAS issues its own tokens (none with an identity provider).
    key: Option<Vec<u8>>,
}

/// A tenant (a hospital).
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct Tenant {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
}

/// Body of `POST /v1/admin/tenants`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub id: String,
}

/// Body of `POST /v1/admin/tokens`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub tenant: String,
    pub role: String,
    /// Who the token is for (a user or service name; not a patient identifier).
    pub subject: String,
    /// Lifetime in seconds (at most 30 days).
    pub ttl_s: u64,
}

/// An issued token.
#[derive(Debug, Serialize, Deserialize)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// One row of a tenant's audit trail.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub roles: Option<String>,
    pub action: String,
    pub case_id: Option<Uuid>,
    pub outcome: Option<i32>,
    pub request_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    limit: Option<i64>,
    /// Only entries older than this id (paging backwards).
    before: Option<i64>,
}

async fn create_tenant(
    State(s): State<AdminState>,
    Extension(who): Extension<Identity>,
    Json(body): Json<NewTenant>,
) -> Result<(axum::http::StatusCode, Json<Tenant>), ApiError> {
    let t = TenantId::new(&body.id).map_err(|e| ApiError::BadRequest(format!("id: {e}")))?;
    let row: Option<Tenant> = sqlx::query_as(
        "INSERT INTO tenants (id, created_by) VALUES ($1, $2) ON CONFLICT DO NOTHING
         RETURNING id, created_at, created_by",
    )
    .bind(t.as_str())
    .bind(&who.subject)
    .fetch_optional(&s.db)
    .await?;
    let row = row.ok_or_else(|| ApiError::Conflict(format!("tenant {t} exists already")))?;
    Ok((axum::http::StatusCode::CREATED, Json(row)))
}

async fn list_tenants(State(s): State<AdminState>) -> Result<Json<Vec<Tenant>>, ApiError> {
    let rows = sqlx::query_as("SELECT id, created_at, created_by FROM tenants ORDER BY id").fetch_all(&s.db).await?;
    Ok(Json(rows))
}

async fn issue_token(State(s): State<AdminState>, Json(body): Json<NewToken>) -> Result<Json<IssuedToken>, ApiError> {
    let Some(key) = &s.key else {
        return Err(ApiError::Conflict("tokens are issued by the hospital's identity provider here".into()));
    };
    let t = TenantId::new(&body.tenant).map_err(|e| ApiError::BadRequest(format!("tenant: {e}")))?;
    let role = Role::parse(&body.role).ok_or_else(|| {
        ApiError::BadRequest(format!("role {:?}: expected clinician, ml-engineer or admin", body.role))
    })?;
    if body.ttl_s == 0 || body.ttl_s > MAX_TOKEN_TTL_S {
        return Err(ApiError::BadRequest(format!("ttl_s {}: expected 1..={MAX_TOKEN_TTL_S}", body.ttl_s)));
    }
    let exists: Option<(String,)> =
        sqlx::query_as("SELECT id FROM tenants WHERE id = $1").bind(t.as_str()).fetch_optional(&s.db).await?;
    if exists.is_none() {
        return Err(ApiError::NotFound(format!("tenant {t} does not exist")));
    }
    let ttl = Duration::from_secs(body.ttl_s);
    let token =
        auth::issue(key, &s.cfg, &body.subject, &t, role, ttl).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let expires_at = Utc::now() + chrono::Duration::seconds(body.ttl_s as i64);
    Ok(Json(IssuedToken { token, expires_at }))
}

async fn audit_trail(
    State(s): State<AdminState>,
    Path(t): Path<String>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let t = TenantId::new(&t).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let rows = sqlx::query_as(
        "SELECT id, at, actor, roles, action, case_id, outcome, request_id FROM audit_log
         WHERE tenant_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
    )
    .bind(t.as_str())
    .bind(q.before)
    .bind(q.limit.unwrap_or(100).clamp(1, 1000))
    .fetch_all(&s.db)
    .await?;
    Ok(Json(rows))
}

/// `POST|GET /v1/admin/tenants`, `POST /v1/admin/tokens`, `GET /v1/tenants/{tenant}/audit`.
pub fn routes(db: PgPool, cfg: AuthConfig) -> Result<Router, auth::AuthError> {
    let key = if cfg.auth_key_file.is_empty() { None } else { Some(auth::read_key_file(cfg.auth_key_file.as_ref())?) };
    Ok(Router::new()
        .route("/v1/admin/tenants", post(create_tenant).get(list_tenants))
        .route("/v1/admin/tokens", post(issue_token))
        .route("/v1/tenants/{tenant}/audit", get(audit_trail))
        .with_state(AdminState { db, cfg, key }))
}
