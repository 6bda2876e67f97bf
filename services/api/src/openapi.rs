//! The API's OpenAPI 3 document, generated from the handlers' annotations and the shared HTTP
//! types, served at `/api/v1/openapi.json` and kept in `services/api/openapi.json`.

use axum::Json;
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{admin, learning, report};

/// Where the document is served.
pub const PATH: &str = "/api/v1/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "GMMAS API",
        description = "Glioma multimodal MRI analysis: upload a case, read the segmentation, grade, IDH, \
                       1p/19q and MGMT results with their uncertainty, correct labels, read reports. \
                       Research use only; not a medical device. Every route but this document, \
                       /healthz and /readyz needs a bearer token (JWT) whose tenant is the path's."
    ),
    paths(
        gmmas_upload::upload,
        crate::list_cases,
        crate::get_case,
        crate::segmentation,
        crate::uncertainty,
        crate::brain_mask,
        crate::native::native_volume,
        crate::viewer::volume,
        learning::put_classes,
        learning::put_segmentation,
        learning::list_models,
        learning::rollback,
        report::report_json,
        report::report_html,
        admin::create_tenant,
        admin::list_tenants,
        admin::issue_token,
        admin::audit_trail,
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "cases", description = "Upload and results (role clinician)"),
        (name = "labels", description = "A clinician's corrections, ground truth for the learning loop"),
        (name = "reports", description = "Guideline-grounded reports"),
        (name = "models", description = "Model registry (role ml-engineer)"),
        (name = "admin", description = "Tenants and tokens (role admin); audit trail (clinician or admin)"),
    )
)]
pub struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// The document as pretty JSON (what is served and committed).
#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "the document is generated from types and always serialises"
)]
pub fn document() -> String {
    ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serialises")
}

/// `GET /api/v1/openapi.json` (no token: it describes the API, not any patient).
#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "the document is generated from types and always serialises"
)]
pub fn routes() -> axum::Router {
    axum::Router::new().route(
        PATH,
        get(|| async {
            let doc: serde_json::Value = serde_json::from_str(&document()).expect("valid JSON");
            Json(doc)
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed document is the generated one: a route or type change that is not
    /// reflected in `services/api/openapi.json` fails here (regenerate with `gmmas-api openapi`).
    #[test]
    fn committed_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed.trim_end() == document().trim_end(),
            "{} is out of date: run `gmmas-api openapi > services/api/openapi.json`",
            path.display()
        );
    }

    #[test]
    fn every_operation_needs_a_token_and_names_its_errors() {
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() >= 13, "{}", paths.len());
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                assert!(op["security"].as_array().is_some_and(|s| !s.is_empty()), "{method} {path}: no security");
                assert!(op["responses"].get("401").is_some(), "{method} {path}: no 401");
            }
        }
    }
}
