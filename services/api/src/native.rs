//! Results in native space: a DICOM case's segmentation and uncertainty map resampled onto one
//! input series' own grid (as acquired, before co-registration), on request.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use gmmas_imaging::{Grid, Limits, Modality};
use gmmas_runtime::http::ApiError;
use serde::Deserialize;
use uuid::Uuid;

use crate::{AppState, ErrorBody, tenant};

/// One series' grid as the upload recorded it.
#[derive(Deserialize)]
struct NativeGrid {
    sequence: String,
    grid: Grid,
    in_reference: Grid,
}

/// The native-space downloads of case `id` (empty for a NIfTI upload).
pub(crate) async fn views(
    db: &sqlx::PgPool,
    t: &gmmas_contracts::TenantId,
    id: Uuid,
) -> Result<Vec<gmmas_contracts::http::NativeSpaceView>, ApiError> {
    let row: Option<(Option<serde_json::Value>,)> =
        sqlx::query_as("SELECT native_grids FROM cases WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(t.as_str())
            .fetch_optional(db)
            .await?;
    let Some((Some(v),)) = row else { return Ok(Vec::new()) };
    let grids: Vec<NativeGrid> =
        serde_json::from_value(v).map_err(|e| ApiError::Internal(anyhow::anyhow!("native_grids: {e}")))?;
    Ok(grids
        .into_iter()
        .map(|g| {
            let base = format!("/api/v1/tenants/{t}/cases/{id}/native/{}", g.sequence);
            gmmas_contracts::http::NativeSpaceView {
                dims: g.grid.dims.iter().map(|&d| d as u32).collect(),
                segmentation_url: format!("{base}/segmentation"),
                uncertainty_url: format!("{base}/uncertainty"),
                sequence: g.sequence,
            }
        })
        .collect())
}

/// A case's native grids and its analysis' result objects (segmentation key and sha256, then
/// the uncertainty map's).
type ResultRow = (Option<serde_json::Value>, Option<String>, Option<String>, Option<String>, Option<String>);

/// Which result volume.
#[derive(Clone, Copy)]
enum Which {
    Segmentation,
    Uncertainty,
}

#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/cases/{case_id}/native/{sequence}/{volume}", tag = "cases",
    params(("tenant" = String, Path, description = "Tenant (hospital) id; must be the token's tenant"),
        ("case_id" = Uuid, Path, description = "Case id"),
        ("sequence" = String, Path, description = "The input series: t1, t1ce, t2 or flair"),
        ("volume" = String, Path, description = "segmentation or uncertainty")),
    responses((status = 200, description = "The result on that DICOM series' own grid (NIfTI, gzip; labels by nearest neighbour, uncertainty trilinear)", content_type = "application/gzip"),
        (status = 400, description = "Unknown sequence or volume", body = ErrorBody),
        (status = 401, description = "Missing, expired or invalid token", body = ErrorBody), (status = 403, description = "The token lacks the role", body = ErrorBody),
        (status = 404, description = "No such case, not a DICOM case, no such series, or no such result yet", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn native_volume(
    State(s): State<AppState>,
    Path((t, id, sequence, volume)): Path<(String, Uuid, String, String)>,
) -> Result<Response, ApiError> {
    let t = tenant(&t)?;
    let m = Modality::parse(&sequence)
        .ok_or_else(|| ApiError::BadRequest(format!("sequence {sequence:?}: expected t1, t1ce, t2 or flair")))?;
    let which = match volume.as_str() {
        "segmentation" => Which::Segmentation,
        "uncertainty" => Which::Uncertainty,
        other => return Err(ApiError::BadRequest(format!("{other:?}: expected segmentation or uncertainty"))),
    };
    let row: Option<ResultRow> = sqlx::query_as(
        "SELECT c.native_grids, a.seg_object_key, a.seg_sha256, a.uncertainty_key, a.uncertainty_sha256
             FROM cases c LEFT JOIN analyses a ON a.case_id = c.id WHERE c.id = $1 AND c.tenant_id = $2",
    )
    .bind(id)
    .bind(t.as_str())
    .fetch_optional(&s.db)
    .await?;
    let Some((grids, seg_key, seg_sha, unc_key, unc_sha)) = row else {
        return Err(ApiError::NotFound(format!("no case {id}")));
    };
    let grids: Vec<NativeGrid> = match grids {
        Some(v) => serde_json::from_value(v).map_err(|e| ApiError::Internal(anyhow::anyhow!("native_grids: {e}")))?,
        None => return Err(ApiError::NotFound(format!("case {id} was not uploaded as a DICOM study"))),
    };
    let native = grids
        .into_iter()
        .find(|g| g.sequence == m.as_str())
        .ok_or_else(|| ApiError::NotFound(format!("case {id} has no {} series", m.as_str())))?;
    let (key, sha) = match which {
        Which::Segmentation => (seg_key, seg_sha),
        Which::Uncertainty => (unc_key, unc_sha),
    };
    let (Some(key), Some(sha)) = (key, sha) else {
        return Err(ApiError::NotFound(format!("case {id} has no {volume} yet")));
    };
    let obj = gmmas_contracts::ObjectRef { bucket: gmmas_contracts::VOLUMES_BUCKET.into(), key, sha256: sha, size: 0 };
    let bytes = s.bus.get_object(&obj).await.map_err(|e| ApiError::Internal(e.into()))?;
    let out = tokio::task::spawn_blocking(move || resample(&bytes, which, &native))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("resampling task: {e}")))??;
    let mut response = out.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
    if let Ok(v) =
        HeaderValue::from_str(&format!("attachment; filename=\"{id}_{volume}_{}-native.nii.gz\"", m.as_str()))
    {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// The stored result resampled where the series' voxels lie in the analysis world, written with
/// the series' own affine (so it overlays the series in a viewer).
fn resample(bytes: &[u8], which: Which, native: &NativeGrid) -> Result<Vec<u8>, ApiError> {
    let limits = Limits::default();
    let fail = |e: gmmas_imaging::ImagingError| ApiError::Internal(anyhow::anyhow!("native-space resampling: {e}"));
    match which {
        Which::Segmentation => {
            let seg = gmmas_imaging::read_labels(bytes, &limits).map_err(fail)?;
            let mut out = gmmas_imaging::resample::resample_labels(&seg, &native.in_reference).map_err(fail)?;
            out.grid = native.grid.clone();
            Ok(gmmas_imaging::write_labels(&out, true))
        }
        Which::Uncertainty => {
            let u = gmmas_imaging::read_volume(bytes, &limits).map_err(fail)?;
            let mut out = gmmas_imaging::resample::resample_linear(&u, &native.in_reference).map_err(fail)?;
            out.grid = native.grid.clone();
            Ok(gmmas_imaging::write_volume(&out, true))
        }
    }
}
