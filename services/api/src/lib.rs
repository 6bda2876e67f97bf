//! The clinicians' API: upload a case, read a case with each stage's status, timing and result,
//! list a tenant's cases, download the segmentation. JSON over HTTP (axum) on PostgreSQL.

pub mod admin;
pub mod learning;
mod native;
pub mod openapi;
pub mod report;
pub mod viewer;

use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use gmmas_contracts::{Probabilities, RegionVolumes, TenantId};
use gmmas_runtime::bus::Bus;
use gmmas_runtime::http::ApiError;
use gmmas_runtime::worker::StageRuntime;
use gmmas_runtime::{CommonConfig, Shutdown};
use gmmas_upload::Ingestor;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

/// Configuration of the API service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiConfig {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Largest accepted upload, in MiB.
    pub max_upload_mib: u64,
    /// Largest accepted volume, in voxels.
    pub max_voxels: u64,
    /// Admission limits of uploads.
    #[serde(flatten)]
    pub admission: gmmas_upload::AdmissionConfig,
    /// Bearer tokens (GMMAS-issued or the hospital's OIDC provider's), hosts and CORS.
    #[serde(flatten)]
    pub auth: gmmas_runtime::auth::AuthConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            common: CommonConfig { http_addr: "127.0.0.1:8080".into(), ..Default::default() },
            max_upload_mib: 1024,
            max_voxels: 512 * 512 * 512,
            admission: gmmas_upload::AdmissionConfig::default(),
            auth: gmmas_runtime::auth::AuthConfig::default(),
        }
    }
}

#[derive(Clone)]
struct AppState {
    db: PgPool,
    bus: Bus,
}

use gmmas_contracts::http::ErrorBody;
pub use gmmas_contracts::http::{AnalysisView, CaseSummary, CaseView, StageView};

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    status: Option<String>,
}

fn tenant(s: &str) -> Result<TenantId, ApiError> {
    TenantId::new(s).map_err(|e| ApiError::BadRequest(e.to_string()))
}

#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/cases", tag = "cases",
    params(("tenant" = String, Path, description = "Tenant (hospital) id; must be the token's tenant"), ("limit" = Option<i64>, Query, description = "At most this many (1-1000, default 100)"),
        ("status" = Option<String>, Query, description = "Only cases with this status")),
    responses((status = 200, description = "The tenant's cases, newest first", body = Vec<CaseSummary>), (status = 401, description = "Missing, expired or invalid token", body = ErrorBody), (status = 403, description = "The token lacks the role", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_cases(
    State(s): State<AppState>,
    Path(t): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<CaseSummary>>, ApiError> {
    let t = tenant(&t)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows: Vec<SummaryRow> = sqlx::query_as(
        "SELECT id, case_ref, status, error, created_at, updated_at FROM cases
         WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)
         ORDER BY created_at DESC LIMIT $3",
    )
    .bind(t.as_str())
    .bind(q.status)
    .bind(limit)
    .fetch_all(&s.db)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(case_id, case_ref, status, error, created_at, updated_at)| CaseSummary {
                case_id,
                case_ref,
                status,
                error,
                created_at,
                updated_at,
            })
            .collect(),
    ))
}

type SummaryRow = (Uuid, String, String, Option<String>, DateTime<Utc>, DateTime<Utc>);
type CaseRow = (Uuid, String, String, Option<String>, Option<String>, DateTime<Utc>, DateTime<Utc>);
type StageRow = (String, String, i32, DateTime<Utc>, Option<DateTime<Utc>>, Option<String>);

#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/cases/{case_id}", tag = "cases",
    params(("tenant" = String, Path, description = "Tenant (hospital) id; must be the token's tenant"), ("case_id" = Uuid, Path, description = "Case id")),
    responses((status = 200, description = "The case with its stages and analysis", body = CaseView), (status = 401, description = "Missing, expired or invalid token", body = ErrorBody), (status = 403, description = "The token lacks the role", body = ErrorBody), (status = 404, description = "No such case for this tenant (another tenant's case looks the same)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn get_case(
    State(s): State<AppState>,
    Path((t, id)): Path<(String, Uuid)>,
) -> Result<Json<CaseView>, ApiError> {
    let t = tenant(&t)?;
    let row: Option<CaseRow> = sqlx::query_as(
        "SELECT id, case_ref, status, error_stage, error, created_at, updated_at FROM cases WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(t.as_str())
    .fetch_optional(&s.db)
    .await?;
    let (case_id, case_ref, status, error_stage, error, created_at, updated_at) =
        row.ok_or_else(|| ApiError::NotFound(format!("no case {id} for tenant {t}")))?;
    let modalities: Vec<(String,)> =
        sqlx::query_as("SELECT modality FROM volumes WHERE case_id = $1 ORDER BY array_position(ARRAY['t1','t1ce','t2','flair'], modality)")
            .bind(id)
            .fetch_all(&s.db)
            .await?;
    let stages: Vec<StageRow> = sqlx::query_as(
        "SELECT stage, status, attempts, started_at, finished_at, error FROM stage_runs WHERE case_id = $1
         ORDER BY array_position(ARRAY['ingest','preprocess','infer','curate','report'], stage)",
    )
    .bind(id)
    .fetch_all(&s.db)
    .await?;
    let stages = stages
        .into_iter()
        .map(|(stage, status, attempts, started_at, finished_at, error)| StageView {
            duration_ms: finished_at.map(|f| (f - started_at).num_milliseconds()),
            stage,
            status,
            attempts,
            started_at,
            finished_at,
            error,
        })
        .collect();
    let analysis = load_analysis(&s.db, &t, id).await?;
    let native_space = native::views(&s.db, &t, id).await?;
    Ok(Json(CaseView {
        case_id,
        tenant: t.to_string(),
        case_ref,
        status,
        error_stage,
        error,
        created_at,
        updated_at,
        modalities: modalities.into_iter().map(|(m,)| m).collect(),
        stages,
        analysis,
        native_space,
    }))
}

/// The values of the columns `names` of row `r`, in that order.
fn columns<'r, T, const N: usize>(r: &'r sqlx::postgres::PgRow, names: [&str; N]) -> Result<[T; N], sqlx::Error>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Default + Copy,
{
    use sqlx::Row;
    let mut out = [T::default(); N];
    for (value, name) in out.iter_mut().zip(names) {
        *value = r.try_get(name)?;
    }
    Ok(out)
}

async fn load_analysis(db: &PgPool, t: &TenantId, case_id: Uuid) -> Result<Option<AnalysisView>, ApiError> {
    let row = sqlx::query(
        "SELECT id, model_version, device, input_sha256, seg_sha256, ncr_ml, ed_ml, et_ml, wt_ml, tc_ml,
                ncr_fraction, ed_fraction, et_fraction, p_grade_gbm, p_idh_mutant, p_codel_1p19q,
                p_mgmt_methylated, missing_modalities, inference_ms, created_at,
                mc_passes, probabilities_std, mean_uncertainty_wt, uncertainty_key,
                skull_strip, brain_mask_key
         FROM analyses WHERE case_id = $1",
    )
    .bind(case_id)
    .fetch_optional(db)
    .await?;
    let Some(r) = row else { return Ok(None) };
    use sqlx::Row;
    let volumes = ["ncr_ml", "ed_ml", "et_ml", "wt_ml", "tc_ml", "ncr_fraction", "ed_fraction", "et_fraction"];
    let [ncr_ml, ed_ml, et_ml, wt_ml, tc_ml, ncr_fraction, ed_fraction, et_fraction] = columns(&r, volumes)?;
    let probabilities = ["p_grade_gbm", "p_idh_mutant", "p_codel_1p19q", "p_mgmt_methylated"];
    let [grade_gbm, idh_mutant, codel_1p19q, mgmt_methylated] = columns(&r, probabilities)?;
    Ok(Some(AnalysisView {
        analysis_id: r.try_get("id")?,
        model_version: r.try_get("model_version")?,
        device: r.try_get("device")?,
        input_sha256: r.try_get("input_sha256")?,
        segmentation_sha256: r.try_get("seg_sha256")?,
        segmentation_url: format!("/api/v1/tenants/{t}/cases/{case_id}/segmentation"),
        regions: RegionVolumes { ncr_ml, ed_ml, et_ml, wt_ml, tc_ml, ncr_fraction, ed_fraction, et_fraction },
        probabilities: Probabilities { grade_gbm, idh_mutant, codel_1p19q, mgmt_methylated },
        missing_modalities: r.try_get("missing_modalities")?,
        inference_ms: r.try_get("inference_ms")?,
        created_at: r.try_get("created_at")?,
        mc_passes: r.try_get("mc_passes")?,
        probabilities_std: r.try_get("probabilities_std")?,
        mean_uncertainty_wt: r.try_get("mean_uncertainty_wt")?,
        uncertainty_url: r
            .try_get::<Option<String>, _>("uncertainty_key")?
            .map(|_| format!("/api/v1/tenants/{t}/cases/{case_id}/uncertainty")),
        skull_strip: r.try_get("skull_strip")?,
        brain_mask_url: r
            .try_get::<Option<String>, _>("brain_mask_key")?
            .map(|_| format!("/api/v1/tenants/{t}/cases/{case_id}/brain-mask")),
    }))
}

/// A download route for one stored result volume of a case: its path, what the 200 carries,
/// and the analysis columns holding its object key and hash.
macro_rules! volume_route {
    ($name:ident, $path:tt, $what:tt, $key:tt, $sha:tt, $label:tt) => {
        #[utoipa::path(get, path = $path, tag = "cases",
            params(("tenant" = String, Path, description = "Tenant (hospital) id; must be the token's tenant"), ("case_id" = Uuid, Path, description = "Case id")),
            responses((status = 200, description = $what, content_type = "application/gzip"),
                (status = 304, description = "Not modified (If-None-Match)"),
                (status = 401, description = "Missing, expired or invalid token", body = ErrorBody), (status = 403, description = "The token lacks the role", body = ErrorBody), (status = 404, description = "No such case for this tenant (another tenant's case looks the same)", body = ErrorBody)),
            security(("bearer" = [])))]
        pub(crate) async fn $name(
            state: State<AppState>,
            path: Path<(String, Uuid)>,
            headers: HeaderMap,
        ) -> Result<Response, ApiError> {
            download(state, path, &headers, $key, $sha, $label).await
        }
    };
}

volume_route!(
    segmentation,
    "/api/v1/tenants/{tenant}/cases/{case_id}/segmentation",
    "Segmentation NIfTI (gzip) on the input grid, BraTS labels 0/1/2/4; ETag = sha256",
    "seg_object_key",
    "seg_sha256",
    "seg"
);
volume_route!(
    uncertainty,
    "/api/v1/tenants/{tenant}/cases/{case_id}/uncertainty",
    "Per-voxel MC-Dropout uncertainty NIfTI (gzip); ETag = sha256",
    "uncertainty_key",
    "uncertainty_sha256",
    "uncertainty"
);
volume_route!(
    brain_mask,
    "/api/v1/tenants/{tenant}/cases/{case_id}/brain-mask",
    "Brain mask NIfTI (gzip) on the input grid (1 = brain), when the skull was stripped; ETag = sha256",
    "brain_mask_key",
    "brain_mask_sha256",
    "brain-mask"
);

/// One stored result volume of a case (columns name its key and hash).
async fn download(
    State(s): State<AppState>,
    Path((t, id)): Path<(String, Uuid)>,
    headers: &HeaderMap,
    key_col: &'static str,
    sha_col: &'static str,
    what: &'static str,
) -> Result<Response, ApiError> {
    let t = tenant(&t)?;
    let sql = format!(
        "SELECT a.{key_col}, a.{sha_col} FROM analyses a JOIN cases c ON c.id = a.case_id
         WHERE a.case_id = $1 AND c.tenant_id = $2"
    );
    let row: Option<(Option<String>, Option<String>)> =
        sqlx::query_as(&sql).bind(id).bind(t.as_str()).fetch_optional(&s.db).await?;
    let Some((Some(key), Some(sha))) = row else {
        return Err(ApiError::NotFound(format!("case {id} has no {what} volume")));
    };
    serve_volume(&s.bus, key, sha, &format!("{id}_{what}"), headers).await
}

/// Answers with a stored NIfTI volume (verified against its sha256): `ETag` is the sha256 and a
/// matching `If-None-Match` gets 304 without reading the object; gzip or plain by its key.
pub(crate) async fn serve_volume(
    bus: &Bus,
    key: String,
    sha: String,
    file_stem: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let etag = format!("\"{sha}\"");
    let cache = [(header::ETAG, etag.clone()), (header::CACHE_CONTROL, "private, no-cache".to_string())];
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, cache).into_response());
    }
    let (content_type, ext) =
        if key.ends_with(".gz") { ("application/gzip", "nii.gz") } else { ("application/octet-stream", "nii") };
    let obj = gmmas_contracts::ObjectRef { bucket: gmmas_contracts::VOLUMES_BUCKET.into(), key, sha256: sha, size: 0 };
    let bytes = bus.get_object(&obj).await.map_err(|e| ApiError::Internal(e.into()))?;
    let mut response = (cache, bytes).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file_stem}.{ext}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// The API's routes (without health/metrics), under `/api`; [`gmmas_runtime::access::protect`]
/// puts them behind the token guard.
pub fn routes(
    db: PgPool,
    bus: Bus,
    ingestor: Arc<Ingestor>,
    auth: gmmas_runtime::auth::AuthConfig,
) -> anyhow::Result<Router> {
    let learning = learning::routes(ingestor.rt.clone(), ingestor.limits.max_file_bytes as usize);
    let reports = report::routes(db.clone());
    let admin = admin::routes(db.clone(), auth)?;
    let viewer = viewer::routes(db.clone(), bus.clone());
    let state = AppState { db, bus };
    let reads = Router::new()
        .route("/v1/tenants/{tenant}/cases", get(list_cases))
        .route("/v1/tenants/{tenant}/cases/{case_id}", get(get_case))
        .route("/v1/tenants/{tenant}/cases/{case_id}/segmentation", get(segmentation))
        .route("/v1/tenants/{tenant}/cases/{case_id}/uncertainty", get(uncertainty))
        .route("/v1/tenants/{tenant}/cases/{case_id}/brain-mask", get(brain_mask))
        .route("/v1/tenants/{tenant}/cases/{case_id}/native/{sequence}/{volume}", get(native::native_volume))
        .with_state(state);
    let api = gmmas_upload::routes(ingestor).merge(reads).merge(learning).merge(reports).merge(admin);
    Ok(Router::new().nest("/api", api).merge(openapi::routes()).merge(viewer))
}

/// Runs the API service until SIGTERM.
pub async fn run(config: ApiConfig) -> anyhow::Result<()> {
    gmmas_runtime::telemetry::init("api", &config.common.log_format);
    let shutdown = Shutdown::on_signals();
    let rt = StageRuntime::start(&config.common, "api", &shutdown).await?;
    let health = rt.health_routes();
    let (pool, bus) = (rt.db.clone(), rt.bus.clone());
    let access = gmmas_runtime::access::Access::new(&config.auth, &config.common.http_addr, pool.clone())
        .await
        .context("setting up the API's token verification")?;
    let ingestor = Arc::new(Ingestor::with_admission(rt, config.max_upload_mib, config.max_voxels, config.admission));
    let router = routes(pool, bus, ingestor, config.auth.clone())?.merge(health);
    let router = gmmas_runtime::access::protect(router, access, &config.auth);
    gmmas_runtime::http::serve_until_shutdown(&config.common, router, shutdown).await
}
