//! The clinicians' web viewer: its static page, script and style (built into the binary, no
//! remote resources), and the read of a case's stored input volumes that it displays.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use gmmas_contracts::TenantId;
use gmmas_contracts::http::ErrorBody;
use gmmas_imaging::Modality;
use gmmas_runtime::bus::Bus;
use gmmas_runtime::http::ApiError;
use sqlx::PgPool;
use uuid::Uuid;

const INDEX_HTML: &str = include_str!("../viewer/index.html");
const VIEWER_JS: &str = include_str!("../viewer/viewer.js");
const VIEWER_CSS: &str = include_str!("../viewer/viewer.css");

/// The page loads only its own script and style, talks only to this origin, and may not be framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

#[derive(Clone)]
pub(crate) struct VolumeState {
    db: PgPool,
    bus: Bus,
}

/// A static asset with the viewer's security headers. The assets hold no patient data.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", VIEWER_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", VIEWER_CSS)
}

/// `GET .../cases/{id}/volumes/{modality}`: the input volume as it was uploaded (NIfTI, gzip or
/// not), for the case's tenant only; `ETag` is its sha256 and `If-None-Match` answers 304.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/cases/{case_id}/volumes/{modality}", tag = "cases",
    params(("tenant" = String, Path, description = "Tenant (hospital) id; must be the token's tenant"),
        ("case_id" = Uuid, Path, description = "Case id"),
        ("modality" = String, Path, description = "`t1`, `t1ce`, `t2` or `flair`")),
    responses((status = 200, description = "The input volume as uploaded (NIfTI, gzip or not); ETag = sha256"),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 401, description = "Missing, expired or invalid token", body = ErrorBody),
        (status = 403, description = "The token lacks the role", body = ErrorBody),
        (status = 404, description = "No such case, sequence or tenant", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn volume(
    State(s): State<VolumeState>,
    Path((t, id, modality)): Path<(String, Uuid, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let t = TenantId::new(&t).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let Some(modality) = Modality::parse(&modality) else {
        return Err(ApiError::NotFound(format!("no modality {modality:?}: expected t1, t1ce, t2 or flair")));
    };
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT v.object_key, v.sha256 FROM volumes v JOIN cases c ON c.id = v.case_id
         WHERE v.case_id = $1 AND c.tenant_id = $2 AND v.modality = $3",
    )
    .bind(id)
    .bind(t.as_str())
    .bind(modality.as_str())
    .fetch_optional(&s.db)
    .await?;
    let Some((key, sha)) = row else {
        return Err(ApiError::NotFound(format!("case {id} has no {} volume", modality.as_str())));
    };
    crate::serve_volume(&s.bus, key, sha, &format!("{id}_{}", modality.as_str()), &headers).await
}

/// The viewer's pages at `/viewer/` (and `/` leading there), and the volume read under `/api`.
pub fn routes(db: PgPool, bus: Bus) -> Router {
    let volumes = Router::new()
        .route("/api/v1/tenants/{tenant}/cases/{case_id}/volumes/{modality}", get(volume))
        .with_state(VolumeState { db, bus });
    Router::new()
        .route("/", get(|| async { Redirect::to("/viewer/") }))
        .route("/viewer", get(|| async { Redirect::to("/viewer/") }))
        .route("/viewer/", get(index))
        .route("/viewer/viewer.js", get(script))
        .route("/viewer/viewer.css", get(style))
        .merge(volumes)
}
