//! The learning loop over HTTP: a clinician's labels for a case (class labels, a corrected
//! segmentation on the case's grid), the model registry, and rollback of a role.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use chrono::Utc;
use gmmas_contracts::{self as contracts, DatasetUpdated, Event, LabelSource, TenantId};
use gmmas_imaging::Limits;
use gmmas_runtime::auth::Identity;
use gmmas_runtime::http::ApiError;
use gmmas_runtime::registry::{self, ModelRow, RegistryError};
use gmmas_runtime::worker::StageRuntime;
use gmmas_runtime::{db, objects, outbox};
use uuid::Uuid;

use gmmas_contracts::http::ErrorBody;
pub use gmmas_contracts::http::{ClassLabels, LabelsStored, RolledBack};

fn tenant(s: &str) -> Result<TenantId, ApiError> {
    TenantId::new(s).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// The case must exist for this tenant and be analyzed (labels are for finished cases).
async fn analyzed_case(rt: &StageRuntime, t: &TenantId, id: Uuid) -> Result<(), ApiError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT status FROM cases WHERE id = $1 AND tenant_id = $2")
        .bind(id)
        .bind(t.as_str())
        .fetch_optional(&rt.db)
        .await?;
    match row {
        None => Err(ApiError::NotFound(format!("no case {id} for tenant {t}"))),
        Some((s,)) if s != "done" => {
            Err(ApiError::Conflict(format!("case {id} is {s}: labels are taken for analyzed cases")))
        }
        Some(_) => Ok(()),
    }
}

#[utoipa::path(put, path = "/api/v1/tenants/{tenant}/cases/{case_id}/labels", tag = "labels",
    params(("tenant" = String, Path, description = "Tenant (hospital) id; must be the token's tenant"), ("case_id" = Uuid, Path, description = "Case id")), request_body = ClassLabels,
    responses((status = 200, description = "Stored; feeds the learning loop as ground truth", body = LabelsStored),
        (status = 400, body = ErrorBody), (status = 401, description = "Missing, expired or invalid token", body = ErrorBody), (status = 403, description = "The token lacks the role", body = ErrorBody), (status = 404, description = "No such case for this tenant (another tenant's case looks the same)", body = ErrorBody), (status = 409, description = "The case is not analyzed yet", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn put_classes(
    State(rt): State<StageRuntime>,
    Extension(who): Extension<Identity>,
    Path((t, id)): Path<(String, Uuid)>,
    Json(mut labels): Json<ClassLabels>,
) -> Result<Json<LabelsStored>, ApiError> {
    let t = tenant(&t)?;
    labels.author = who.subject.clone();
    analyzed_case(&rt, &t, id).await?;
    let mut tx = rt.db.begin().await?;
    sqlx::query(
        "INSERT INTO clinician_labels (case_id, grade_gbm, idh_mutant, codel_1p19q, mgmt_methylated, author)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (case_id) DO UPDATE SET grade_gbm = $2, idh_mutant = $3, codel_1p19q = $4,
             mgmt_methylated = $5, author = $6, updated_at = now()",
    )
    .bind(id)
    .bind(labels.grade_gbm)
    .bind(labels.idh_mutant)
    .bind(labels.codel_1p19q)
    .bind(labels.mgmt_methylated)
    .bind(labels.author.trim())
    .execute(&mut *tx)
    .await?;
    let accepted: Vec<String> = [
        ("grade_gbm", labels.grade_gbm),
        ("idh_mutant", labels.idh_mutant),
        ("codel_1p19q", labels.codel_1p19q),
        ("mgmt_methylated", labels.mgmt_methylated),
    ]
    .into_iter()
    .filter(|(_, v)| v.is_some())
    .map(|(k, _)| k.to_string())
    .collect();
    announce(&mut tx, &t, id, accepted, &labels.author).await?;
    tx.commit().await?;
    rt.relay.kick();
    let seg: Option<(Option<String>,)> = sqlx::query_as("SELECT seg_sha256 FROM clinician_labels WHERE case_id = $1")
        .bind(id)
        .fetch_optional(&rt.db)
        .await?;
    Ok(Json(LabelsStored { case_id: id, segmentation_sha256: seg.and_then(|s| s.0), classes: labels }))
}

#[utoipa::path(put, path = "/api/v1/tenants/{tenant}/cases/{case_id}/labels/segmentation", tag = "labels",
    params(("tenant" = String, Path, description = "Tenant (hospital) id; must be the token's tenant"), ("case_id" = Uuid, Path, description = "Case id")),
    request_body(content_type = "application/gzip", description = "Corrected segmentation NIfTI on the case's grid, labels 0/1/2/4"),
    responses((status = 200, description = "Stored; feeds the learning loop as ground truth", body = LabelsStored),
        (status = 400, description = "Not a label volume on the case's grid", body = ErrorBody), (status = 401, description = "Missing, expired or invalid token", body = ErrorBody), (status = 403, description = "The token lacks the role", body = ErrorBody), (status = 404, description = "No such case for this tenant (another tenant's case looks the same)", body = ErrorBody),
        (status = 409, description = "The case is not analyzed yet", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn put_segmentation(
    State(rt): State<StageRuntime>,
    Extension(who): Extension<Identity>,
    Path((t, id)): Path<(String, Uuid)>,
    body: Bytes,
) -> Result<Json<LabelsStored>, ApiError> {
    let t = tenant(&t)?;
    analyzed_case(&rt, &t, id).await?;
    // The segmentation must be on the grid of the case's own inputs, with BraTS labels.
    let limits = Limits::default();
    let seg =
        gmmas_imaging::read_labels(&body, &limits).map_err(|e| ApiError::BadRequest(format!("segmentation: {e}")))?;
    if let Some(bad) = seg.data.iter().find(|v| !matches!(v, 0..=4)) {
        return Err(ApiError::BadRequest(format!("segmentation: label value {bad}: expected 0, 1, 2, 4 (or 3)")));
    }
    let input: (String, String) =
        sqlx::query_as("SELECT object_key, sha256 FROM volumes WHERE case_id = $1 ORDER BY modality LIMIT 1")
            .bind(id)
            .fetch_one(&rt.db)
            .await?;
    let obj = contracts::ObjectRef { bucket: contracts::VOLUMES_BUCKET.into(), key: input.0, sha256: input.1, size: 0 };
    let bytes = rt.bus.get_object(&obj).await.map_err(|e| ApiError::Internal(e.into()))?;
    let grid =
        gmmas_imaging::read_volume(&bytes, &limits).map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?.grid;
    gmmas_imaging::same_grid(&grid, &seg.grid)
        .map_err(|e| ApiError::BadRequest(format!("segmentation is not on the case's grid: {e}")))?;
    let owner = Uuid::new_v4();
    let key = format!("{t}/{id}/labels/{owner}/segmentation.nii.gz");
    let at = objects::Placement { bucket: contracts::VOLUMES_BUCKET, key: &key, case_id: Some(id), owner };
    let stored = objects::put_owned(&rt.bus, &rt.db, at, &body).await.map_err(ApiError::Internal)?;
    let mut tx = rt.db.begin().await?;
    sqlx::query(
        "INSERT INTO clinician_labels (case_id, seg_object_key, seg_sha256, author) VALUES ($1, $2, $3, $4)
         ON CONFLICT (case_id) DO UPDATE SET seg_object_key = $2, seg_sha256 = $3, author = $4, updated_at = now()",
    )
    .bind(id)
    .bind(&stored.key)
    .bind(&stored.sha256)
    .bind(&who.subject)
    .execute(&mut *tx)
    .await?;
    objects::mark_live(&mut tx, owner).await?;
    announce(&mut tx, &t, id, vec!["segmentation".into()], &who.subject).await?;
    tx.commit().await?;
    rt.relay.kick();
    Ok(Json(LabelsStored { case_id: id, segmentation_sha256: Some(stored.sha256), classes: ClassLabels::default() }))
}

/// Queues `dataset.updated` (clinician) and the audit row, in the caller's transaction.
async fn announce(
    tx: &mut sqlx::PgConnection,
    t: &TenantId,
    id: Uuid,
    accepted: Vec<String>,
    author: &str,
) -> Result<(), ApiError> {
    let (curated,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM (SELECT case_id FROM pseudo_labels WHERE accepted AND NOT stale
                               UNION SELECT case_id FROM clinician_labels) x",
    )
    .fetch_one(&mut *tx)
    .await?;
    let event = DatasetUpdated {
        schema_version: contracts::SCHEMA_VERSION,
        tenant: t.clone(),
        case_id: id,
        source: LabelSource::Clinician,
        model_version: String::new(),
        accepted: accepted.clone(),
        rejected: Vec::new(),
        accepted_voxel_fraction: 0.0,
        curated_cases: curated.max(0) as u64,
        updated_at: Utc::now(),
    };
    let payload = contracts::encode(&event).map_err(|e| ApiError::Internal(e.into()))?;
    let msg_id = format!("{}:{}", Event::DatasetUpdated.msg_id(id), Uuid::new_v4());
    outbox::enqueue(tx, &Event::DatasetUpdated.subject(t), &msg_id, &payload).await?;
    db::audit(tx, author, "labels.updated", Some(t.as_str()), Some(id), serde_json::json!({ "labels": accepted }))
        .await?;
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/models", tag = "models",
    responses((status = 200, description = "Every registered model: role, status, parent, data snapshot, gate decision", body = Vec<gmmas_runtime::registry::ModelRow>), (status = 401, description = "Missing, expired or invalid token", body = ErrorBody), (status = 403, description = "The token lacks the role", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn list_models(State(rt): State<StageRuntime>) -> Result<Json<Vec<ModelRow>>, ApiError> {
    Ok(Json(registry::list(&rt.db).await?))
}

#[utoipa::path(post, path = "/api/v1/models/{role}/rollback", tag = "models",
    params(("role" = String, Path, description = "`complete` or `incomplete`")),
    responses((status = 200, description = "The previous model is current again", body = RolledBack), (status = 400, body = ErrorBody),
        (status = 401, description = "Missing, expired or invalid token", body = ErrorBody), (status = 403, description = "The token lacks the role", body = ErrorBody), (status = 409, description = "Nothing to roll back to", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn rollback(
    State(rt): State<StageRuntime>,
    Extension(who): Extension<Identity>,
    Path(role): Path<String>,
) -> Result<Json<RolledBack>, ApiError> {
    if !matches!(role.as_str(), "complete" | "incomplete") {
        return Err(ApiError::BadRequest(format!("role {role:?}: expected complete or incomplete")));
    }
    match registry::rollback(&rt.db, &role, &who.subject).await {
        Ok((from, to)) => {
            rt.relay.kick();
            rt.metrics.model_change("rolled_back");
            Ok(Json(RolledBack { role, rolled_back: from, current: to }))
        }
        Err(e @ (RegistryError::NoCurrent(_) | RegistryError::NothingToRollBackTo(_))) => {
            Err(ApiError::Conflict(e.to_string()))
        }
        Err(e) => Err(ApiError::Internal(e.into())),
    }
}

/// `PUT .../cases/{id}/labels`, `PUT .../cases/{id}/labels/segmentation`, `GET /v1/models`,
/// `POST /v1/models/{role}/rollback`.
pub fn routes(rt: StageRuntime, max_upload_bytes: usize) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/cases/{case_id}/labels", put(put_classes))
        .route(
            "/v1/tenants/{tenant}/cases/{case_id}/labels/segmentation",
            put(put_segmentation).layer(axum::extract::DefaultBodyLimit::max(max_upload_bytes)),
        )
        .route("/v1/models", get(list_models))
        .route("/v1/models/{role}/rollback", post(rollback))
        .with_state(rt)
}
