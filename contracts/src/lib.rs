//! The only wire types shared by GMMAS services: messages, subjects, stream and bucket names.
//! MessagePack with named fields; fields are only ever added, and new ones carry `#[serde(default)]`.

pub mod http;

/// Lowercase hex sha256 of `bytes`: the form every `*_sha256` field and content-addressed
/// object name in these contracts takes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

/// Version of the message schema written by this build. Readers accept any version:
/// unknown fields are ignored and missing fields take their defaults.
pub const SCHEMA_VERSION: u32 = 1;

/// The JetStream stream that carries every GMMAS event.
pub const STREAM: &str = "GMMAS";
/// Subjects captured by [`STREAM`].
pub const STREAM_SUBJECTS: &str = "gmmas.>";
/// Object-store bucket for volumes, preprocessed tensors and segmentations.
pub const VOLUMES_BUCKET: &str = "gmmas-volumes";
/// Object-store bucket for released model weights.
pub const MODELS_BUCKET: &str = "gmmas-models";
/// Header that JetStream uses for de-duplication.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Processing stages a case goes through, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Ingest,
    Preprocess,
    Infer,
    /// After the analysis, off the case's critical path: pseudo-labels for learning.
    Curate,
    /// After the analysis, off the case's critical path: the written report.
    Report,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Ingest, Stage::Preprocess, Stage::Infer, Stage::Curate, Stage::Report];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Preprocess => "preprocess",
            Stage::Infer => "infer",
            Stage::Curate => "curate",
            Stage::Report => "report",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// Where a case stands. Stored as lower-case text in `cases.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseStatus {
    Received,
    Preprocessing,
    Analyzing,
    Done,
    Failed,
}

impl CaseStatus {
    pub const ALL: [CaseStatus; 5] =
        [CaseStatus::Received, CaseStatus::Preprocessing, CaseStatus::Analyzing, CaseStatus::Done, CaseStatus::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            CaseStatus::Received => "received",
            CaseStatus::Preprocessing => "preprocessing",
            CaseStatus::Analyzing => "analyzing",
            CaseStatus::Done => "done",
            CaseStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<CaseStatus> {
        CaseStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True for `done` and `failed`: nothing more will happen to the case by itself.
    pub fn is_final(self) -> bool {
        matches!(self, CaseStatus::Done | CaseStatus::Failed)
    }
}

/// Where one stage of a case stands. Stored as lower-case text in `stage_runs.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    Running,
    Done,
    Failed,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Running => "running",
            StageStatus::Done => "done",
            StageStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<StageStatus> {
        [StageStatus::Running, StageStatus::Done, StageStatus::Failed].into_iter().find(|st| st.as_str() == s)
    }
}

/// Event kinds; each maps to the last tokens of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    ScanIngested,
    ScanPreprocessed,
    ScanAnalyzed,
    CaseFailed,
    /// Labels (pseudo or clinician) of a case were added to the training data.
    DatasetUpdated,
    /// A case's report was stored (or a newer version of it).
    ReportReady,
}

/// Subject prefix of events that belong to no tenant (the model registry); `_` can never
/// start a tenant id, so these never collide with a hospital's subjects.
pub const MODELS_SUBJECT_PREFIX: &str = "gmmas._models";

/// Events of the model registry (not per tenant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelEvent {
    /// A training run produced a model that awaits the evaluation gate.
    Candidate,
    /// A model became current for its role (by the gate or a rollback).
    Promoted,
}

impl ModelEvent {
    pub fn subject(self) -> String {
        match self {
            ModelEvent::Candidate => format!("{MODELS_SUBJECT_PREFIX}.model.candidate"),
            ModelEvent::Promoted => format!("{MODELS_SUBJECT_PREFIX}.model.promoted"),
        }
    }
}

impl Event {
    pub fn suffix(self) -> &'static str {
        match self {
            Event::ScanIngested => "scan.ingested",
            Event::ScanPreprocessed => "scan.preprocessed",
            Event::ScanAnalyzed => "scan.analyzed",
            Event::CaseFailed => "case.failed",
            Event::DatasetUpdated => "dataset.updated",
            Event::ReportReady => "report.ready",
        }
    }

    /// Subject for one tenant: `gmmas.<tenant>.<suffix>`.
    pub fn subject(self, tenant: &TenantId) -> String {
        format!("gmmas.{}.{}", tenant.as_str(), self.suffix())
    }

    /// Subject filter matching every tenant, for consumers.
    pub fn all_tenants(self) -> String {
        format!("gmmas.*.{}", self.suffix())
    }

    /// Message id for de-duplication: one per (case, event).
    pub fn msg_id(self, case_id: Uuid) -> String {
        format!("{case_id}:{}", self.suffix())
    }
}

/// Durable consumer names, one per consuming service.
pub mod consumers {
    pub const PREPROCESS: &str = "preprocess";
    pub const INFER: &str = "infer";
    pub const CURATE: &str = "curate";
    pub const REPORT: &str = "report";
}

/// Errors raised while checking identifiers or decoding messages.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("tenant id {0:?} is invalid: expected 1-63 characters of a-z, 0-9 or '-', starting with a letter or digit")]
    BadTenant(String),
    #[error("case reference is invalid: expected 1-128 characters of A-Z, a-z, 0-9, '.', '_' or '-'")]
    BadCaseRef,
    #[error("message could not be decoded: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("message could not be encoded: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// A hospital (tenant). Goes into subjects, so it is restricted to a safe alphabet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    pub fn new(s: &str) -> Result<Self, ContractError> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-');
        if ok { Ok(TenantId(s.to_string())) } else { Err(ContractError::BadTenant(s.to_string())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = ContractError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        TenantId::new(&s)
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> String {
        t.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a hospital's own case reference (kept in the database, never logged).
pub fn validate_case_ref(s: &str) -> Result<(), ContractError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(ContractError::BadCaseRef) }
}

/// A stored object: its key in a bucket and the sha256 of its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub bucket: String,
    pub key: String,
    pub sha256: String,
    pub size: u64,
}

/// One uploaded input volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeRef {
    /// `t1`, `t1ce`, `t2` or `flair`.
    pub modality: String,
    pub object: ObjectRef,
    pub dims: [u32; 3],
    pub voxel_mm: [f32; 3],
}

/// `gmmas.<tenant>.scan.ingested`: validated volumes are in the object store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanIngested {
    pub schema_version: u32,
    pub tenant: TenantId,
    pub case_id: Uuid,
    pub volumes: Vec<VolumeRef>,
    pub ingested_at: DateTime<Utc>,
}

/// `gmmas.<tenant>.scan.preprocessed`: the normalized tensor is in the object store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanPreprocessed {
    pub schema_version: u32,
    pub tenant: TenantId,
    pub case_id: Uuid,
    /// The prepared tensor (channels, crop, and the geometry to map results back).
    pub prepared: ObjectRef,
    /// Modalities present, in `t1, t1ce, t2, flair` order of those given.
    pub modalities: Vec<String>,
    /// sha256 of each input volume, keyed by modality, carried to the result.
    pub input_sha256: Vec<(String, String)>,
    pub preprocessed_at: DateTime<Utc>,
    /// The brain mask (NIfTI, the input's grid) when the skull was stripped here.
    #[serde(default)]
    pub brain_mask: Option<ObjectRef>,
    /// How the skull was stripped: the brain-extraction network's version, `classical`, or
    /// `none (already skull-stripped)`; empty from older writers.
    #[serde(default)]
    pub skull_strip: String,
}

/// Class probabilities of the four classification tasks.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Probabilities {
    pub grade_gbm: f32,
    pub idh_mutant: f32,
    pub codel_1p19q: f32,
    pub mgmt_methylated: f32,
}

/// Volumes (mL) and proportions of the tumor sub-regions (BraTS labels: 1 necrotic /
/// non-enhancing core, 2 edema, 4 enhancing tumour).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegionVolumes {
    pub ncr_ml: f64,
    pub ed_ml: f64,
    pub et_ml: f64,
    /// Whole tumour: NCR + ED + ET.
    pub wt_ml: f64,
    /// Tumour core: NCR + ET.
    pub tc_ml: f64,
    /// Fractions of WT (0 when WT is empty).
    pub ncr_fraction: f64,
    pub ed_fraction: f64,
    pub et_fraction: f64,
}

/// `gmmas.<tenant>.scan.analyzed`: the analysis is committed to the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanAnalyzed {
    pub schema_version: u32,
    pub tenant: TenantId,
    pub case_id: Uuid,
    pub analysis_id: Uuid,
    pub model_version: String,
    pub segmentation: ObjectRef,
    pub regions: RegionVolumes,
    pub probabilities: Probabilities,
    /// Added after the first draft of the schema: older writers leave it out.
    #[serde(default)]
    pub missing_modalities: Vec<String>,
    pub analyzed_at: DateTime<Utc>,
    /// MC-Dropout passes behind the probabilities (0 = one deterministic pass).
    #[serde(default)]
    pub mc_passes: u32,
    /// Standard deviation of each probability over the MC passes (eq. 6), when `mc_passes > 1`.
    #[serde(default)]
    pub probabilities_std: Option<Probabilities>,
    /// Per-voxel uncertainty map (NIfTI, the input's grid), when `mc_passes > 1`.
    #[serde(default)]
    pub uncertainty: Option<ObjectRef>,
    /// Mean per-voxel uncertainty inside the predicted whole tumour, when `mc_passes > 1`.
    #[serde(default)]
    pub mean_uncertainty_wt: Option<f32>,
    /// Where the model ran (`Cpu`, `Cuda(0)`).
    #[serde(default)]
    pub device: String,
    /// Wall time of the model, in ms.
    #[serde(default)]
    pub inference_ms: u64,
    /// sha256 of every input (the modalities and the preprocessed tensor) behind this result.
    #[serde(default)]
    pub input_sha256: Vec<(String, String)>,
    /// The brain mask the case was skull-stripped with, when it was (from preprocess).
    #[serde(default)]
    pub brain_mask: Option<ObjectRef>,
    /// How the skull was stripped (see [`ScanPreprocessed::skull_strip`]).
    #[serde(default)]
    pub skull_strip: String,
}

/// `gmmas.<tenant>.case.failed`: a stage gave up on a case; `reason` is readable by a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseFailed {
    pub schema_version: u32,
    pub tenant: TenantId,
    pub case_id: Uuid,
    pub stage: Stage,
    pub reason: String,
    pub failed_at: DateTime<Utc>,
}

/// Why a labelled case entered the training data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelSource {
    /// Pseudo-labels that passed the dual threshold (paper III-F, Stage I).
    Pseudo,
    /// A clinician's labels (they always win over pseudo-labels).
    Clinician,
}

/// `gmmas.<tenant>.dataset.updated`: a case's labels were recorded for training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetUpdated {
    pub schema_version: u32,
    pub tenant: TenantId,
    pub case_id: Uuid,
    pub source: LabelSource,
    /// Model that produced pseudo-labels (empty for clinician labels).
    pub model_version: String,
    /// Tasks whose label was accepted (`segmentation`, `grade_gbm`, `idh_mutant`, ...).
    pub accepted: Vec<String>,
    /// Tasks whose pseudo-label was rejected by the thresholds.
    pub rejected: Vec<String>,
    /// Fraction of the case's voxels whose pseudo-label was accepted.
    pub accepted_voxel_fraction: f64,
    /// Cases with accepted labels in the training data, after this one.
    pub curated_cases: u64,
    pub updated_at: DateTime<Utc>,
}

/// `gmmas._models.model.candidate` / `.model.promoted`: the registry changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelChanged {
    pub schema_version: u32,
    pub version: String,
    /// `complete` or `incomplete`.
    pub role: String,
    /// The model it replaces (promotion) or was trained from (candidate).
    pub previous: Option<String>,
    /// `gate`, `rollback`, `candidate`.
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// `gmmas.<tenant>.report.ready`: a report of a case was stored; `version` counts its
/// regenerations (1 = first), `path` says what wrote it (`llm` or `fallback`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportReady {
    pub schema_version: u32,
    pub tenant: TenantId,
    pub case_id: Uuid,
    pub analysis_id: Uuid,
    pub report_id: Uuid,
    pub version: u32,
    /// `llm` (the local model's text, validated) or `fallback` (built from the knowledge-base rules).
    pub path: String,
    /// The LLM that wrote it, empty for the fallback.
    #[serde(default)]
    pub llm_model: String,
    /// Version (hash) of the knowledge base the report is grounded in.
    pub kb_version: String,
    pub created_at: DateTime<Utc>,
}

/// What every per-case message tells: which tenant and case it is about. Stage workers use it
/// to check a message against the database row of its case before acting on it.
pub trait CaseMessage {
    fn tenant(&self) -> &TenantId;
    fn case_id(&self) -> Uuid;
}

macro_rules! case_message {
    ($($t:ty),*) => {$(
        impl CaseMessage for $t {
            fn tenant(&self) -> &TenantId {
                &self.tenant
            }
            fn case_id(&self) -> Uuid {
                self.case_id
            }
        }
    )*};
}
case_message!(ScanIngested, ScanPreprocessed, ScanAnalyzed, CaseFailed, DatasetUpdated, ReportReady);

/// The tenant token of a GMMAS subject (`gmmas.<tenant>.…`), if it has one.
pub fn subject_tenant(subject: &str) -> Option<&str> {
    let mut parts = subject.split('.');
    (parts.next() == Some("gmmas")).then(|| parts.next()).flatten()
}

/// Encodes a message as MessagePack with named fields.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ContractError> {
    Ok(rmp_serde::to_vec_named(msg)?)
}

/// Decodes a MessagePack message; unknown fields are ignored.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ContractError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::new("hospital-a").unwrap()
    }

    #[test]
    fn subjects_carry_the_tenant() {
        let t = tenant();
        assert_eq!(Event::ScanIngested.subject(&t), "gmmas.hospital-a.scan.ingested");
        assert_eq!(Event::CaseFailed.all_tenants(), "gmmas.*.case.failed");
        let id = Uuid::nil();
        assert_ne!(Event::ScanIngested.msg_id(id), Event::ScanAnalyzed.msg_id(id));
    }

    #[test]
    fn statuses_round_trip_and_subject_tenant() {
        for st in CaseStatus::ALL {
            assert_eq!(CaseStatus::parse(st.as_str()), Some(st));
        }
        assert!(CaseStatus::Failed.is_final() && !CaseStatus::Analyzing.is_final());
        assert_eq!(StageStatus::parse("running"), Some(StageStatus::Running));
        assert_eq!(StageStatus::parse("x"), None);
        assert_eq!(subject_tenant("gmmas.hospital-a.scan.ingested"), Some("hospital-a"));
        assert_eq!(subject_tenant("other.a.b"), None);
    }

    #[test]
    fn tenant_and_case_ref_validation() {
        assert!(TenantId::new("a").is_ok());
        for bad in ["", "A", "a.b", "a*", "-a", "a>b", &"x".repeat(64)] {
            assert!(TenantId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_case_ref("Brats18_2013_11_1").is_ok());
        assert!(validate_case_ref("../etc").is_err());
        assert!(validate_case_ref("").is_err());
        // A tenant that fails validation cannot be smuggled in through a message.
        #[derive(Serialize)]
        struct Raw {
            tenant: String,
        }
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Parsed {
            tenant: TenantId,
        }
        let bytes = encode(&Raw { tenant: "bad.tenant".into() }).unwrap();
        assert!(decode::<Parsed>(&bytes).is_err());
    }

    #[test]
    fn round_trip_with_named_fields() {
        let msg = CaseFailed {
            schema_version: SCHEMA_VERSION,
            tenant: tenant(),
            case_id: Uuid::new_v4(),
            stage: Stage::Preprocess,
            reason: "flair: header field dim[1]=0".into(),
            failed_at: Utc::now(),
        };
        let bytes = encode(&msg).unwrap();
        // Named fields: the field names are in the bytes.
        assert!(bytes.windows(6).any(|w| w == b"reason"));
        assert_eq!(decode::<CaseFailed>(&bytes).unwrap(), msg);
    }

    /// A later schema adds a field; this build must still read it.
    #[test]
    fn older_reader_accepts_newer_message() {
        #[derive(Serialize)]
        struct CaseFailedV2 {
            schema_version: u32,
            tenant: String,
            case_id: Uuid,
            stage: String,
            reason: String,
            failed_at: DateTime<Utc>,
            retry_after_s: u32,
            detail: Vec<String>,
        }
        let newer = CaseFailedV2 {
            schema_version: SCHEMA_VERSION + 1,
            tenant: "hospital-a".into(),
            case_id: Uuid::new_v4(),
            stage: "infer".into(),
            reason: "out of memory".into(),
            failed_at: Utc::now(),
            retry_after_s: 30,
            detail: vec!["x".into()],
        };
        let got: CaseFailed = decode(&encode(&newer).unwrap()).unwrap();
        assert_eq!(got.reason, "out of memory");
        assert_eq!(got.stage, Stage::Infer);
        assert_eq!(got.schema_version, SCHEMA_VERSION + 1);
    }

    /// A field this build added (`missing_modalities`) is absent from an older writer's message.
    #[test]
    fn newer_reader_fills_defaults_for_older_message() {
        #[derive(Serialize)]
        struct AnalyzedOlder {
            schema_version: u32,
            tenant: String,
            case_id: Uuid,
            analysis_id: Uuid,
            model_version: String,
            segmentation: ObjectRef,
            regions: RegionVolumes,
            probabilities: Probabilities,
            analyzed_at: DateTime<Utc>,
        }
        let old = AnalyzedOlder {
            schema_version: 0,
            tenant: "h".into(),
            case_id: Uuid::new_v4(),
            analysis_id: Uuid::new_v4(),
            model_version: "m@1".into(),
            segmentation: ObjectRef { bucket: "b".into(), key: "k".into(), sha256: "s".into(), size: 1 },
            regions: RegionVolumes { wt_ml: 3.5, ..Default::default() },
            probabilities: Probabilities { idh_mutant: 0.25, ..Default::default() },
            analyzed_at: Utc::now(),
        };
        let got: ScanAnalyzed = decode(&encode(&old).unwrap()).unwrap();
        assert_eq!(got.model_version, "m@1");
        assert_eq!(got.regions.wt_ml, 3.5);
        assert_eq!(got.probabilities.idh_mutant, 0.25);
        assert!(got.missing_modalities.is_empty());
    }
}
