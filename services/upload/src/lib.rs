//! The upload path of GMMAS, shared by the ingest service and the API: one case (1-4 NIfTI
//! modalities, or a DICOM study as a zip) over HTTP, every header and voxel validated, the volumes
//! stored, the case recorded and `scan.ingested` published; admission limits in front.

pub mod spool;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use gmmas_contracts::{self as contracts, CaseStatus, Event, ScanIngested, Stage, TenantId, VolumeRef};
use gmmas_imaging::{Limits, Modality};
use gmmas_runtime::http::ApiError;
use gmmas_runtime::worker::StageRuntime;
use gmmas_runtime::{db, objects, outbox};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use spool::{SpoolError, Spooled, Spooler};

/// How much work an upload endpoint lets in (shared by ingest and the API).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AdmissionConfig {
    /// Uploads read and validated at once by this process; more get 429.
    pub max_concurrent_uploads: usize,
    /// Open cases (received, preprocessing, analyzing) across tenants beyond which uploads get 429.
    pub max_backlog: i64,
    /// Open cases of one tenant beyond which its uploads get 429 (fairness between hospitals).
    pub max_backlog_per_tenant: i64,
    /// Where uploads are spooled while they arrive and are checked (the system's temporary
    /// directory when unset). Needs room for `max_concurrent_uploads` x 4 x `max_upload_mib`.
    pub spool_dir: Option<PathBuf>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig { max_concurrent_uploads: 8, max_backlog: 1000, max_backlog_per_tenant: 300, spool_dir: None }
    }
}

/// The admission state of one process.
#[derive(Debug, Clone)]
pub struct Admission {
    cfg: AdmissionConfig,
    uploads: Arc<tokio::sync::Semaphore>,
}

impl Admission {
    pub fn new(cfg: AdmissionConfig) -> Self {
        let uploads = Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrent_uploads.max(1)));
        Admission { cfg, uploads }
    }

    /// The directory uploads are spooled to.
    pub fn spool_dir(&self) -> PathBuf {
        self.cfg.spool_dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    /// Lets one upload of `tenant` in, or says 429 with a Retry-After: too many uploads in
    /// progress here, or too many open cases overall or for this tenant.
    pub async fn admit(&self, rt: &StageRuntime, tenant: &str) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let Ok(permit) = self.uploads.clone().try_acquire_owned() else {
            rt.metrics.http_rejected("busy");
            return Err(ApiError::TooManyRequests {
                message: format!("{} uploads are in progress; try again shortly", self.cfg.max_concurrent_uploads),
                retry_after_s: 5,
            });
        };
        let (all, mine): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE tenant_id = $1) FROM cases
             WHERE status IN ('received', 'preprocessing', 'analyzing')",
        )
        .bind(tenant)
        .fetch_one(&rt.db)
        .await?;
        if all >= self.cfg.max_backlog {
            rt.metrics.http_rejected("backlog");
            return Err(ApiError::TooManyRequests {
                message: format!(
                    "{all} cases are waiting for analysis (limit {}); try again later",
                    self.cfg.max_backlog
                ),
                retry_after_s: 30,
            });
        }
        if mine >= self.cfg.max_backlog_per_tenant {
            rt.metrics.http_rejected("tenant_backlog");
            return Err(ApiError::TooManyRequests {
                message: format!(
                    "this tenant has {mine} cases waiting for analysis (limit {}); try again later",
                    self.cfg.max_backlog_per_tenant
                ),
                retry_after_s: 30,
            });
        }
        Ok(permit)
    }
}

/// A case as uploaded: the tenant, the hospital's reference, and its files (spooled) by modality.
#[derive(Debug)]
pub struct Upload {
    pub tenant: TenantId,
    pub case_ref: String,
    pub files: Vec<(Modality, Spooled)>,
    /// A DICOM study (zip archive), in place of `files`.
    pub study: Option<Spooled>,
    /// The user's word on the study's series (`5=t1ce`), form fields `series`.
    pub series: Vec<gmmas_dicom::Override>,
}

/// The volumes a study became, spooled, the notes on how, and each series' own grid (JSON:
/// `[{sequence, grid, in_reference}]`, geometry only).
type StudyVolumes = (Vec<(Modality, Spooled)>, Vec<String>, serde_json::Value);

/// A DICOM study turned into the NIfTI volumes the rest of the path takes, each spooled as a
/// `.nii.gz`; the notes say which series became which sequence. No DICOM header is kept.
fn study_to_volumes(
    study: &Spooled,
    overrides: Vec<gmmas_dicom::Override>,
    dir: &std::path::Path,
    limits: &Limits,
) -> Result<StudyVolumes, ApiError> {
    let bytes = std::fs::read(study.path()).context("reopening the spooled study")?;
    let source_limits =
        gmmas_dicom::SourceLimits { max_files: 20_000, max_bytes: limits.max_file_bytes.saturating_mul(8) };
    let files = gmmas_dicom::source::read_zip("study", &bytes, &source_limits)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let opts = gmmas_dicom::StudyOptions { overrides, limits: source_limits, ..gmmas_dicom::StudyOptions::default() };
    let conv = gmmas_dicom::convert_files(files, &opts).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut notes = Vec::new();
    for s in &conv.manifest.series {
        let label = match s.number {
            Some(n) => format!("series {n} \"{}\"", s.description),
            None => format!("series \"{}\"", s.description),
        };
        notes.push(match (s.used, s.sequence) {
            (true, Some(m)) => format!("{label}: {m} ({})", s.reason),
            _ => format!("{label}: not used ({})", s.reason),
        });
    }
    notes.extend(conv.manifest.warnings.iter().cloned());
    let mut out = Vec::with_capacity(conv.volumes.len());
    for (m, v) in &conv.volumes {
        let nifti = gmmas_imaging::write_volume(v, true);
        out.push((*m, Spooled::from_bytes(dir, &nifti).map_err(|e| anyhow::anyhow!(e))?));
    }
    let native: Vec<serde_json::Value> = conv
        .native
        .iter()
        .map(|n| serde_json::json!({ "sequence": n.sequence.as_str(), "grid": n.grid, "in_reference": n.in_reference }))
        .collect();
    Ok((out, notes, serde_json::Value::Array(native)))
}

pub use gmmas_contracts::http::CaseCreated;
use gmmas_contracts::http::ErrorBody;

/// Validates and stores cases; shared by the ingest service and the API.
#[derive(Clone, Debug)]
pub struct Ingestor {
    pub rt: StageRuntime,
    pub limits: Limits,
    pub admission: Admission,
}

impl Ingestor {
    pub fn new(rt: StageRuntime, max_upload_mib: u64, max_voxels: u64) -> Self {
        Self::with_admission(rt, max_upload_mib, max_voxels, AdmissionConfig::default())
    }

    pub fn with_admission(rt: StageRuntime, max_upload_mib: u64, max_voxels: u64, admission: AdmissionConfig) -> Self {
        Ingestor { rt, limits: Limits::from_settings(max_upload_mib, max_voxels), admission: Admission::new(admission) }
    }

    /// Validates, stores, records and announces one case. The case, its volumes and the
    /// `scan.ingested` event are committed together (the event through the outbox), so a crash
    /// at any point leaves either nothing or a case that will be processed.
    pub async fn ingest(&self, upload: Upload) -> Result<CaseCreated, ApiError> {
        contracts::validate_case_ref(&upload.case_ref).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        match (upload.files.is_empty(), upload.study.is_some()) {
            (true, false) => {
                return Err(ApiError::BadRequest(
                    "no image files: expected 1-4 parts named t1, t1ce, t2, flair, or one part named study (a zip of DICOM files)".into(),
                ));
            }
            (false, true) => {
                return Err(ApiError::BadRequest(
                    "both NIfTI parts and a DICOM study: expected one or the other".into(),
                ));
            }
            _ => {}
        }
        if !upload.series.is_empty() && upload.study.is_none() {
            return Err(ApiError::BadRequest("series fields name DICOM series, but no study was uploaded".into()));
        }
        let db = &self.rt.db;
        let tenant = upload.tenant;
        let replaced = self.existing_case(&tenant, &upload.case_ref).await?;

        // Decode and check every file off the async threads (decompression is CPU work).
        let limits = self.limits;
        let (files, notes, native) = match upload.study {
            Some(study) => {
                let dir = self.admission.spool_dir();
                let overrides = upload.series;
                tokio::task::spawn_blocking(move || study_to_volumes(&study, overrides, &dir, &limits))
                    .await
                    .context("DICOM conversion task")??
            }
            None => (upload.files, Vec::new(), serde_json::Value::Null),
        };
        let (files, grids) =
            tokio::task::spawn_blocking(move || validate(files, &limits)).await.context("validation task")??;
        // Objects are stored from the spool files, hashed as they arrived.

        let case_id = Uuid::new_v4();
        // The upload owns its objects until the commit; a refused or crashed upload leaves none.
        let owner = Uuid::new_v4();
        let at = NewCase { tenant: &tenant, case_ref: &upload.case_ref, case_id, owner, replaced, native: &native };
        let stored = self.store_and_commit(at, &files, &grids).await;
        let refs = match stored {
            Ok(refs) => refs,
            Err(e) => {
                objects::discard(&self.rt.bus, db, &self.rt.metrics, owner).await;
                return Err(e);
            }
        };
        self.rt.relay.kick();
        if let Some(old) = replaced {
            objects::discard_case(&self.rt.bus, db, &self.rt.metrics, old).await;
        }
        tracing::info!(case_id = %case_id, tenant = %tenant, modalities = refs.len(), "case ingested");
        Ok(CaseCreated {
            case_id,
            tenant: tenant.to_string(),
            status: CaseStatus::Received.as_str().into(),
            modalities: refs.into_iter().map(|r| r.modality).collect(),
            notes,
        })
    }

    /// Tenants are created by an administrator; an upload to an unknown one is refused (404).
    pub async fn tenant_exists(&self, tenant: &str) -> Result<(), ApiError> {
        let t = TenantId::new(tenant).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let row: Option<(String,)> =
            sqlx::query_as("SELECT id FROM tenants WHERE id = $1").bind(t.as_str()).fetch_optional(&self.rt.db).await?;
        match row {
            Some(_) => Ok(()),
            None => Err(ApiError::NotFound(format!("tenant {t} does not exist (an administrator creates tenants)"))),
        }
    }

    /// A case with this reference: 409, unless it failed at ingest (then the upload replaces it).
    async fn existing_case(&self, tenant: &TenantId, case_ref: &str) -> Result<Option<Uuid>, ApiError> {
        let row: Option<(Uuid, String, Option<String>)> =
            sqlx::query_as("SELECT id, status, error_stage FROM cases WHERE tenant_id = $1 AND case_ref = $2")
                .bind(tenant.as_str())
                .bind(case_ref)
                .fetch_optional(&self.rt.db)
                .await?;
        match row {
            None => Ok(None),
            Some((id, status, stage))
                if CaseStatus::parse(&status) == Some(CaseStatus::Failed)
                    && stage.as_deref() == Some(Stage::Ingest.as_str()) =>
            {
                Ok(Some(id))
            }
            Some(_) => Err(ApiError::Conflict("this tenant already has a case with that reference".into())),
        }
    }

    // Long on purpose: objects stored, then one transaction for the case, its volumes and its outbox event; the cleanup on failure needs every key stored so far.
    #[allow(clippy::too_many_arguments)]
    async fn store_and_commit(
        &self,
        at: NewCase<'_>,
        files: &[(Modality, Spooled)],
        grids: &[gmmas_imaging::Grid],
    ) -> Result<Vec<VolumeRef>, ApiError> {
        let NewCase { tenant, case_ref, case_id, owner, replaced, native } = at;
        let db = &self.rt.db;
        let mut refs = Vec::with_capacity(files.len());
        for ((modality, spooled), grid) in files.iter().zip(grids) {
            let ext = if spooled.gzip { "nii.gz" } else { "nii" };
            let key = format!("{tenant}/{case_id}/input/{}.{ext}", modality.as_str());
            let mut reader = tokio::fs::File::open(spooled.path())
                .await
                .with_context(|| format!("reopening the spooled {}", modality.as_str()))?;
            let source = objects::Source { reader: &mut reader, sha256: &spooled.sha256, size: spooled.size };
            let at = objects::Placement { bucket: contracts::VOLUMES_BUCKET, key: &key, case_id: Some(case_id), owner };
            let object = objects::put_owned_from(&self.rt.bus, db, at, source).await.map_err(|e| {
                ApiError::Unavailable(format!("the object store is unavailable ({e:#}); try again later"))
            })?;
            refs.push(VolumeRef {
                modality: modality.as_str().into(),
                object,
                dims: grid.dims.map(|d| d as u32),
                voxel_mm: grid.pixdim,
            });
        }
        let msg = ScanIngested {
            schema_version: contracts::SCHEMA_VERSION,
            tenant: tenant.clone(),
            case_id,
            volumes: refs.clone(),
            ingested_at: Utc::now(),
        };
        let encoded = contracts::encode(&msg).context("encoding scan.ingested")?;

        let mut tx = db.begin().await?;
        if let Some(old) = replaced {
            // The failed case's rows go; its objects are deleted after the commit.
            sqlx::query(
                "UPDATE objects SET state = 'pending', created_at = now() - interval '1 day' WHERE case_id = $1",
            )
            .bind(old)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM cases WHERE id = $1 AND status = 'failed'").bind(old).execute(&mut *tx).await?;
        }
        let inserted = sqlx::query(
            "INSERT INTO cases (id, tenant_id, case_ref, status, native_grids) VALUES ($1, $2, $3, 'received', $4)
             ON CONFLICT (tenant_id, case_ref) DO NOTHING",
        )
        .bind(case_id)
        .bind(tenant.as_str())
        .bind(case_ref)
        .bind((!native.is_null()).then_some(native))
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(ApiError::Conflict("this tenant already has a case with that reference".into()));
        }
        for r in &refs {
            sqlx::query(
                "INSERT INTO volumes (case_id, modality, object_key, sha256, size_bytes, dims, voxel_mm)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(case_id)
            .bind(&r.modality)
            .bind(&r.object.key)
            .bind(&r.object.sha256)
            .bind(r.object.size as i64)
            .bind(r.dims.iter().map(|&d| d as i32).collect::<Vec<_>>())
            .bind(r.voxel_mm.to_vec())
            .execute(&mut *tx)
            .await?;
        }
        db::stage_done(&mut tx, case_id, Stage::Ingest, &encoded).await?;
        objects::mark_live(&mut tx, owner).await?;
        outbox::enqueue(&mut tx, &Event::ScanIngested.subject(tenant), &Event::ScanIngested.msg_id(case_id), &encoded)
            .await?;
        db::audit(
            &mut tx,
            "ingest",
            "case.created",
            Some(tenant.as_str()),
            Some(case_id),
            serde_json::json!({ "modalities": refs.iter().map(|r| &r.modality).collect::<Vec<_>>(), "replaced": replaced }),
        )
        .await?;
        tx.commit().await?;
        Ok(refs)
    }
}

/// Who a new case is and what it replaces, for [`Ingestor::store_and_commit`].
struct NewCase<'a> {
    tenant: &'a TenantId,
    case_ref: &'a str,
    case_id: Uuid,
    /// Owner of the objects until the commit.
    owner: Uuid,
    /// The failed case of the same reference this one replaces.
    replaced: Option<Uuid>,
    /// Each DICOM series' own grid (null for NIfTI uploads).
    native: &'a serde_json::Value,
}

type Validated = (Vec<(Modality, Spooled)>, Vec<gmmas_imaging::Grid>);

/// Reads every file completely (headers, body, voxel values) from its spool file, one chunk at a
/// time, and checks the grids agree.
fn validate(mut files: Vec<(Modality, Spooled)>, limits: &Limits) -> Result<Validated, ApiError> {
    files.sort_by_key(|(m, _)| m.index());
    for pair in files.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(ApiError::BadRequest(format!("modality {} was uploaded twice", pair[0].0.as_str())));
        }
    }
    let mut grids: Vec<gmmas_imaging::Grid> = Vec::with_capacity(files.len());
    for (modality, spooled) in &files {
        let file = std::fs::File::open(spooled.path())
            .with_context(|| format!("reopening the spooled {}", modality.as_str()))?;
        let grid = gmmas_imaging::check_volume_from(std::io::BufReader::with_capacity(1 << 16, file), limits)
            .map_err(|e| ApiError::BadRequest(format!("{}: {e}", modality.as_str())))?;
        if let Some(first) = grids.first() {
            gmmas_imaging::same_grid(first, &grid).map_err(|e| {
                ApiError::BadRequest(format!(
                    "{} is not on the grid of {}: {e}",
                    modality.as_str(),
                    files[0].0.as_str()
                ))
            })?;
        }
        grids.push(grid);
    }
    Ok((files, grids))
}

/// Reads a multipart upload: a `case_ref` text field and files named by modality, each spooled
/// to `spool_dir` chunk by chunk and refused past `max_file_bytes`.
pub async fn read_multipart(
    tenant: &str,
    mut form: Multipart,
    spool_dir: &std::path::Path,
    max_file_bytes: u64,
) -> Result<Upload, ApiError> {
    let tenant = TenantId::new(tenant).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut case_ref = None;
    let mut files = Vec::new();
    let mut study = None;
    let mut series = Vec::new();
    while let Some(mut field) = form.next_field().await.map_err(|e| ApiError::BadRequest(format!("multipart: {e}")))? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "case_ref" {
            case_ref = Some(field.text().await.map_err(|e| ApiError::BadRequest(format!("case_ref: {e}")))?);
            continue;
        }
        if name == "series" {
            let text = field.text().await.map_err(|e| ApiError::BadRequest(format!("series: {e}")))?;
            series
                .push(text.parse::<gmmas_dicom::Override>().map_err(|e| ApiError::BadRequest(format!("series: {e}")))?);
            continue;
        }
        let modality = if name == "study" {
            None
        } else {
            Some(Modality::parse(&name).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "unknown form field {name:?}: expected case_ref, t1, t1ce, t2, flair, study or series"
                ))
            })?)
        };
        let mut spooler = Spooler::create(spool_dir, max_file_bytes).map_err(|e| anyhow::anyhow!(e))?;
        while let Some(chunk) = field.chunk().await.map_err(|e| match e.status() {
            axum::http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(format!("{name}: upload too large")),
            _ => ApiError::BadRequest(format!("{name}: {e}")),
        })? {
            spooler.push(&chunk).map_err(|e| match e {
                SpoolError::TooLarge { .. } => ApiError::PayloadTooLarge(format!("{name}: {e}")),
                other => ApiError::Internal(anyhow::anyhow!(other)),
            })?;
        }
        let spooled = spooler.finish().map_err(|e| anyhow::anyhow!(e))?;
        match modality {
            Some(m) => files.push((m, spooled)),
            None if study.is_some() => return Err(ApiError::BadRequest("study: uploaded twice".into())),
            None => study = Some(spooled),
        }
    }
    let case_ref = case_ref.ok_or_else(|| ApiError::BadRequest("missing form field case_ref".into()))?;
    Ok(Upload { tenant, case_ref: case_ref.trim().to_string(), files, study, series })
}

#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/cases", tag = "cases",
    params(("tenant" = String, Path, description = "Tenant (hospital) id; must be the token's tenant")),
    request_body(content_type = "multipart/form-data", description = "Form fields `case_ref` (the hospital's reference) and either one NIfTI file (.nii or .nii.gz) for each sequence present: `t1`, `t1ce`, `t2`, `flair`, or `study`: a zip archive of a DICOM study (series identified from their names and tags; optional repeated `series` fields such as `5=t1ce` or `9=ignore` name them). Skull-stripped input is expected."),
    responses((status = 201, description = "Case stored and queued", body = CaseCreated),
        (status = 400, description = "Invalid form or volume (names the field and the problem)", body = ErrorBody),
        (status = 401, description = "Missing, expired or invalid token", body = ErrorBody), (status = 404, description = "Unknown tenant (an administrator creates tenants)", body = ErrorBody),
        (status = 409, description = "The tenant has a case with that reference", body = ErrorBody),
        (status = 413, description = "A file or the upload is too large", body = ErrorBody),
        (status = 429, description = "Too much work queued; retry after the Retry-After seconds", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn upload(
    State(ingestor): State<Arc<Ingestor>>,
    Path(tenant): Path<String>,
    mut form: Multipart,
) -> Result<(axum::http::StatusCode, Json<CaseCreated>), ApiError> {
    let admitted = match ingestor.tenant_exists(&tenant).await {
        Ok(()) => ingestor.admission.admit(&ingestor.rt, &tenant).await,
        Err(e) => Err(e),
    };
    let _permit = match admitted {
        Ok(p) => p,
        Err(e) => {
            // Read the body to its end without keeping it, so that the client, which is still
            // sending, receives the 404 or 429 instead of a reset connection.
            while let Ok(Some(mut field)) = form.next_field().await {
                while let Ok(Some(_)) = field.chunk().await {}
            }
            return Err(e);
        }
    };
    let _in_flight = ingestor.rt.metrics.in_flight();
    let spool_dir = ingestor.admission.spool_dir();
    let upload = read_multipart(&tenant, form, &spool_dir, ingestor.limits.max_file_bytes).await?;
    let created = ingestor.ingest(upload).await?;
    Ok((axum::http::StatusCode::CREATED, Json(created)))
}

/// `POST /v1/tenants/{tenant}/cases` (multipart), with the body limit applied: four files of the
/// per-file limit and the form's overhead; each file is limited on its own while it is spooled.
pub fn routes(ingestor: Arc<Ingestor>) -> Router {
    let limit =
        usize::try_from(ingestor.limits.max_file_bytes.saturating_mul(4).saturating_add(1 << 20)).unwrap_or(usize::MAX);
    Router::new()
        .route("/v1/tenants/{tenant}/cases", post(upload))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(ingestor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::FromRequest;
    use gmmas_imaging::{Grid, Volume};

    fn nifti(dims: [usize; 3]) -> Vec<u8> {
        let grid = Grid::axis_aligned(dims, [1.0; 3], [0.0; 3]);
        let n = dims.iter().product::<usize>();
        gmmas_imaging::write_volume(&Volume::new(grid, (0..n).map(|i| (i % 7) as f32).collect()).unwrap(), true)
    }

    fn spooled(bytes: &[u8]) -> Spooled {
        Spooled::from_bytes(&std::env::temp_dir(), bytes).unwrap()
    }

    fn bad_request(r: Result<Validated, ApiError>) -> String {
        match r {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("expected 400, got {:?}", other.map(|(_, g)| g)),
        }
    }

    #[test]
    fn files_on_one_grid_pass_and_come_back_in_modality_order() {
        let files = vec![(Modality::Flair, spooled(&nifti([8, 8, 6]))), (Modality::T1, spooled(&nifti([8, 8, 6])))];
        let (files, grids) = validate(files, &Limits::default()).unwrap();
        assert_eq!(files.iter().map(|(m, _)| *m).collect::<Vec<_>>(), [Modality::T1, Modality::Flair]);
        assert_eq!(grids[0].dims, [8, 8, 6]);
    }

    #[test]
    fn a_file_that_is_not_nifti_is_refused_naming_its_sequence() {
        let files = vec![(Modality::T1, spooled(&nifti([8, 8, 6]))), (Modality::T2, spooled(b"not an image"))];
        let m = bad_request(validate(files, &Limits::default()));
        assert!(m.starts_with("t2:"), "{m}");
    }

    #[test]
    fn grids_that_differ_are_refused_naming_both_sequences() {
        let files = vec![(Modality::T1, spooled(&nifti([8, 8, 6]))), (Modality::T1ce, spooled(&nifti([8, 8, 5])))];
        let m = bad_request(validate(files, &Limits::default()));
        assert!(m.contains("t1ce is not on the grid of t1"), "{m}");
    }

    #[test]
    fn a_sequence_uploaded_twice_is_refused() {
        let files = vec![(Modality::T2, spooled(&nifti([4, 4, 4]))), (Modality::T2, spooled(&nifti([4, 4, 4])))];
        assert!(bad_request(validate(files, &Limits::default())).contains("t2 was uploaded twice"));
    }

    /// A multipart request with the given (name, bytes) parts.
    fn form(parts: &[(&str, &[u8])]) -> axum::extract::Request {
        let boundary = "gmmas-test-boundary";
        let mut body = Vec::new();
        for (name, bytes) in parts {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.nii.gz\"\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        axum::http::Request::builder()
            .method("POST")
            .header("content-type", format!("multipart/form-data; boundary={boundary}"))
            .body(axum::body::Body::from(body))
            .unwrap()
    }

    async fn read(parts: &[(&str, &[u8])], max_file_bytes: u64) -> Result<Upload, ApiError> {
        let multipart = Multipart::from_request(form(parts), &()).await.unwrap();
        read_multipart("hospital-a", multipart, &std::env::temp_dir(), max_file_bytes).await
    }

    #[tokio::test]
    async fn a_form_is_read_into_its_reference_and_files() {
        let img = nifti([4, 4, 4]);
        let up = read(&[("case_ref", b" case-7 "), ("t1", &img), ("flair", &img)], 1 << 20).await.unwrap();
        assert_eq!(up.case_ref, "case-7");
        assert_eq!(up.tenant.as_str(), "hospital-a");
        assert_eq!(up.files.iter().map(|(m, _)| *m).collect::<Vec<_>>(), [Modality::T1, Modality::Flair]);
        assert_eq!(std::fs::read(up.files[0].1.path()).unwrap(), img);
    }

    #[tokio::test]
    async fn form_mistakes_are_named() {
        let img = nifti([4, 4, 4]);
        match read(&[("case_ref", b"c"), ("dwi", &img)], 1 << 20).await {
            Err(ApiError::BadRequest(m)) => assert!(m.contains("unknown form field \"dwi\""), "{m}"),
            other => panic!("{:?}", other.map(|u| u.case_ref)),
        }
        match read(&[("t1", &img)], 1 << 20).await {
            Err(ApiError::BadRequest(m)) => assert!(m.contains("missing form field case_ref"), "{m}"),
            other => panic!("{:?}", other.map(|u| u.case_ref)),
        }
        match read(&[("case_ref", b"c"), ("t2", &img)], 16).await {
            Err(ApiError::PayloadTooLarge(m)) => assert!(m.starts_with("t2:"), "{m}"),
            other => panic!("{:?}", other.map(|u| u.case_ref)),
        }
    }
}
