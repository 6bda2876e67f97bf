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
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Longest lifetime of a token issued through the API (30 days).
pub const MAX_TOKEN_TTL_S: u64 = 30 * 24 * 3600;

#[derive(Clone)]
pub(crate) struct AdminState {
    db: PgPool,
    cfg: AuthConfig,
    /// The signing key when GMMAS issues its own tokens (none with an identity provider).
    key: Option<Vec<u8>>,
}

use gmmas_contracts::http::ErrorBody;
pub use gmmas_contracts::http::{AuditEntry, IssuedToken, NewTenant, NewToken, Tenant};

type TenantRow = (String, DateTime<Utc>, Option<String>);
type AuditRow = (i64, DateTime<Utc>, String, Option<String>, String, Option<Uuid>, Option<i32>, Option<String>);

#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    limit: Option<i64>,
    /// Only entries older than this id (paging backwards).
    before: Option<i64>,
}

#[utoipa::path(post, path = "/api/v1/admin/tenants", tag = "admin", request_body = NewTenant,
    responses((status = 201, body = Tenant), (status = 400, body = ErrorBody), (status = 401, description = "Missing, expired or invalid token", body = ErrorBody), (status = 403, description = "The token lacks the role", body = ErrorBody),
        (status = 409, description = "The tenant exists", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_tenant(
    State(s): State<AdminState>,
    Extension(who): Extension<Identity>,
    Json(body): Json<NewTenant>,
) -> Result<(axum::http::StatusCode, Json<Tenant>), ApiError> {
    let t = TenantId::new(&body.id).map_err(|e| ApiError::BadRequest(format!("id: {e}")))?;
    let row: Option<TenantRow> = sqlx::query_as(
        "INSERT INTO tenants (id, created_by) VALUES ($1, $2) ON CONFLICT DO NOTHING
         RETURNING id, created_at, created_by",
    )
    .bind(t.as_str())
    .bind(&who.subject)
    .fetch_optional(&s.db)
    .await?;
    let (id, created_at, created_by) = row.ok_or_else(|| ApiError::Conflict(format!("tenant {t} exists already")))?;
    Ok((axum::http::StatusCode::CREATED, Json(Tenant { id, created_at, created_by })))
}

#[utoipa::path(get, path = "/api/v1/admin/tenants", tag = "admin",
    responses((status = 200, body = Vec<Tenant>), (status = 401, description = "Missing, expired or invalid token", body = ErrorBody), (status = 403, description = "The token lacks the role", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_tenants(State(s): State<AdminState>) -> Result<Json<Vec<Tenant>>, ApiError> {
    let rows: Vec<TenantRow> =
        sqlx::query_as("SELECT id, created_at, created_by FROM tenants ORDER BY id").fetch_all(&s.db).await?;
    Ok(Json(rows.into_iter().map(|(id, created_at, created_by)| Tenant { id, created_at, created_by }).collect()))
}

#[utoipa::path(post, path = "/api/v1/admin/tokens", tag = "admin", request_body = NewToken,
    responses((status = 200, body = IssuedToken), (status = 400, body = ErrorBody), (status = 401, description = "Missing, expired or invalid token", body = ErrorBody), (status = 403, description = "The token lacks the role", body = ErrorBody),
        (status = 404, description = "Unknown tenant", body = ErrorBody),
        (status = 409, description = "Tokens come from the hospital's identity provider here", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn issue_token(
    State(s): State<AdminState>,
    Json(body): Json<NewToken>,
) -> Result<Json<IssuedToken>, ApiError> {
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

#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/audit", tag = "admin",
    params(("tenant" = String, Path, description = "Tenant (hospital) id; must be the token's tenant"), ("limit" = Option<i64>, Query, description = "At most this many (1-1000, default 100)"),
        ("before" = Option<i64>, Query, description = "Only entries older than this id")),
    responses((status = 200, description = "The tenant's audit trail, newest first", body = Vec<AuditEntry>), (status = 401, description = "Missing, expired or invalid token", body = ErrorBody), (status = 403, description = "The token lacks the role", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn audit_trail(
    State(s): State<AdminState>,
    Path(t): Path<String>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let t = TenantId::new(&t).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT id, at, actor, roles, action, case_id, outcome, request_id FROM audit_log
         WHERE tenant_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
    )
    .bind(t.as_str())
    .bind(q.before)
    .bind(q.limit.unwrap_or(100).clamp(1, 1000))
    .fetch_all(&s.db)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(id, at, actor, roles, action, case_id, outcome, request_id)| AuditEntry {
                id,
                at,
                actor,
                roles,
                action,
                case_id,
                outcome,
                request_id,
            })
            .collect(),
    ))
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
