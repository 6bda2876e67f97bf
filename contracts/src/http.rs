//! The HTTP API's request and response bodies (JSON), shared by the api and ingest services,
//! the CLI and the tests, and described in the API's OpenAPI document.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{Probabilities, RegionVolumes};

/// An error answer: what went wrong (for 500s a generic text; the cause is only logged).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub status: u16,
}

/// Answer to a successful upload.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CaseCreated {
    pub case_id: Uuid,
    pub tenant: String,
    pub status: String,
    pub modalities: Vec<String>,
    /// What reading the upload noticed. For a DICOM study: which series became which sequence
    /// and why, series not used, and warnings (a sequence absent, a series not usable).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// One stage of a case as the API reports it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StageView {
    pub stage: String,
    pub status: String,
    pub attempts: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
}

/// The analysis of a case, with what produced it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AnalysisView {
    pub analysis_id: Uuid,
    pub model_version: String,
    pub device: String,
    /// sha256 of each input volume, keyed by modality.
    #[schema(value_type = Object)]
    pub input_sha256: serde_json::Value,
    pub segmentation_sha256: String,
    pub segmentation_url: String,
    pub regions: RegionVolumes,
    pub probabilities: Probabilities,
    pub missing_modalities: Vec<String>,
    pub inference_ms: i64,
    pub created_at: DateTime<Utc>,
    /// MC-Dropout passes (0 = one deterministic pass).
    pub mc_passes: i32,
    /// Std of each probability over the MC passes (eq. 6), when passes > 1.
    #[schema(value_type = Option<Object>)]
    pub probabilities_std: Option<serde_json::Value>,
    /// Mean per-voxel uncertainty inside the predicted tumor.
    pub mean_uncertainty_wt: Option<f32>,
    /// Download of the per-voxel uncertainty map (NIfTI), when computed.
    pub uncertainty_url: Option<String>,
    /// How the skull was stripped before analysis: the brain-extraction network's version,
    /// `classical`, or `none (already skull-stripped)`.
    #[serde(default)]
    pub skull_strip: String,
    /// Download of the brain mask (NIfTI, input grid) when the skull was stripped.
    #[serde(default)]
    pub brain_mask_url: Option<String>,
}

/// Results on one DICOM series' own grid (as acquired, before co-registration).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NativeSpaceView {
    /// The sequence the series became.
    pub sequence: String,
    /// The series' grid size.
    pub dims: Vec<u32>,
    pub segmentation_url: String,
    pub uncertainty_url: String,
}

/// A case: status, inputs, stages and (when done) the analysis.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CaseView {
    pub case_id: Uuid,
    pub tenant: String,
    pub case_ref: String,
    pub status: String,
    pub error_stage: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub modalities: Vec<String>,
    pub stages: Vec<StageView>,
    pub analysis: Option<AnalysisView>,
    /// For a DICOM study: the series whose own grid results can be had on, each with its
    /// downloads (`.../native/{sequence}/segmentation` and `/uncertainty`).
    #[serde(default)]
    pub native_space: Vec<NativeSpaceView>,
}

/// One row of a tenant's case list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CaseSummary {
    pub case_id: Uuid,
    pub case_ref: String,
    pub status: String,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Class labels a clinician attaches to a case (absent = unknown, not negative).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassLabels {
    pub grade_gbm: Option<bool>,
    pub idh_mutant: Option<bool>,
    pub codel_1p19q: Option<bool>,
    pub mgmt_methylated: Option<bool>,
    /// Who labelled: the token's subject (a value sent here is replaced by it).
    #[serde(default)]
    pub author: String,
}

/// Answer to a label upload.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LabelsStored {
    pub case_id: Uuid,
    pub segmentation_sha256: Option<String>,
    pub classes: ClassLabels,
}

/// Answer to a rollback.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolledBack {
    pub role: String,
    pub rolled_back: String,
    pub current: String,
}

/// A tenant (a hospital).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
}

/// Body of `POST /api/v1/admin/tenants`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// Letters, digits, `-` and `_`.
    pub id: String,
}

/// Body of `POST /api/v1/admin/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub tenant: String,
    /// `clinician`, `ml-engineer` or `admin`.
    pub role: String,
    /// Who the token is for (a user or service name; not a patient identifier).
    pub subject: String,
    /// Lifetime in seconds (at most 30 days).
    pub ttl_s: u64,
}

/// An issued token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// One row of a tenant's audit trail.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// The token's subject (`anonymous` without a valid token).
    pub actor: String,
    pub roles: Option<String>,
    /// `METHOD /path/{template}` for requests, or a domain event (`labels.updated`, ...).
    pub action: String,
    pub case_id: Option<Uuid>,
    /// HTTP status of a request.
    pub outcome: Option<i32>,
    pub request_id: Option<String>,
}
