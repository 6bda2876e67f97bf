//! A case's report over HTTP: the newest version (or `?version=N`) as JSON, and the same as a
//! self-contained printable HTML page in the Fig. 11 chart layout, both as the report service stored them.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use gmmas_contracts::TenantId;
use gmmas_contracts::http::ErrorBody;
use gmmas_runtime::http::ApiError;
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Deserialize)]
pub(crate) struct VersionQuery {
    version: Option<i32>,
}

/// (JSON body, HTML) of the asked version, or the newest.
async fn load(db: &PgPool, t: &str, id: Uuid, version: Option<i32>) -> Result<(serde_json::Value, String), ApiError> {
    let t = TenantId::new(t).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let exists: Option<(String,)> = sqlx::query_as("SELECT status FROM cases WHERE id = $1 AND tenant_id = $2")
        .bind(id)
        .bind(t.as_str())
        .fetch_optional(db)
        .await?;
    let Some((status,)) = exists else {
        return Err(ApiError::NotFound(format!("no case {id} for tenant {t}")));
    };
    let row: Option<(serde_json::Value, String)> = sqlx::query_as(
        "SELECT body, html FROM reports WHERE case_id = $1 AND ($2::int IS NULL OR version = $2)
         ORDER BY version DESC LIMIT 1",
    )
    .bind(id)
    .bind(version)
    .fetch_optional(db)
    .await?;
    row.ok_or_else(|| match version {
        Some(v) => ApiError::NotFound(format!("case {id} has no report version {v}")),
        None => ApiError::NotFound(format!("case {id} ({status}) has no report yet")),
    })
}

#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/cases/{case_id}/report", tag = "reports",
    params(("tenant" = String, Path, description = "Tenant (hospital) id; must be the token's tenant"), ("case_id" = Uuid, Path, description = "Case id"), ("version" = Option<i32>, Query, description = "A stored version (default: the newest)")),
    responses((status = 200, description = "The report as stored (sections, citations, how it was written)", body = Object),
        (status = 401, description = "Missing, expired or invalid token", body = ErrorBody), (status = 403, description = "The token lacks the role", body = ErrorBody), (status = 404, description = "No such case, or no report yet", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn report_json(
    State(db): State<PgPool>,
    Path((t, id)): Path<(String, Uuid)>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(load(&db, &t, id, q.version).await?.0))
}

#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/cases/{case_id}/report.html", tag = "reports",
    params(("tenant" = String, Path, description = "Tenant (hospital) id; must be the token's tenant"), ("case_id" = Uuid, Path, description = "Case id"), ("version" = Option<i32>, Query, description = "A stored version (default: the newest)")),
    responses((status = 200, description = "Printable self-contained page (chart layout)", content_type = "text/html"),
        (status = 401, description = "Missing, expired or invalid token", body = ErrorBody), (status = 403, description = "The token lacks the role", body = ErrorBody), (status = 404, description = "No such case, or no report yet", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn report_html(
    State(db): State<PgPool>,
    Path((t, id)): Path<(String, Uuid)>,
    Query(q): Query<VersionQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let (_, html) = load(&db, &t, id, q.version).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page is static: no scripts, no remote resources.
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'"),
        ],
        html,
    ))
}

/// The report routes (under `/api`).
pub fn routes(db: PgPool) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/cases/{case_id}/report", get(report_json))
        .route("/v1/tenants/{tenant}/cases/{case_id}/report.html", get(report_html))
        .with_state(db)
}
