//! In-process tests of the API's handlers and routes: `gmmas_api::routes` served from this test
//! process on a fresh database and a real NATS, with no service processes running.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use std::sync::Arc;
use std::time::Duration;

use gmmas_contracts::http::{CaseCreated, CaseSummary, CaseView, ErrorBody};
use gmmas_e2e::{System, phantom_files};

/// NATS and a migrated database, and the API's routes listening in this process.
async fn api_in_process() -> (System, String) {
    let sys = System::start_with(&[], &[]).await.unwrap();
    // No service ran the migrations on this fresh database.
    gmmas_runtime::db::connect_with(&sys.db_url, Duration::from_secs(10), true).await.unwrap();
    let rt = sys.runtime(|_| {}).await.unwrap();
    let ingestor = Arc::new(gmmas_upload::Ingestor::new(rt.clone(), 64, 50_000_000));
    let router =
        gmmas_api::routes(rt.db.clone(), rt.bus.clone(), ingestor, gmmas_runtime::auth::AuthConfig::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    sys.create_tenant("acme").await.unwrap();
    (sys, base)
}

fn form(files: Vec<(&str, Vec<u8>)>) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new().text("case_ref", "in-process-1");
    for (name, bytes) in files {
        form = form.part(name.to_string(), reqwest::multipart::Part::bytes(bytes).file_name(format!("{name}.nii.gz")));
    }
    form
}

#[tokio::test]
async fn upload_then_read_the_case_through_the_routes() {
    let (sys, base) = api_in_process().await;
    let http = reqwest::Client::new();
    let (_, files) = phantom_files(3, [32, 32, 24]);
    let resp = http.post(format!("{base}/api/v1/tenants/acme/cases")).multipart(form(files)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let created: CaseCreated = resp.json().await.unwrap();
    assert_eq!(created.tenant, "acme");
    assert_eq!(created.modalities.len(), 4);

    // The case row and its outbox event were committed together (no relay runs here).
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(&sys.db).await.unwrap();
    assert_eq!(pending, 1, "one scan.ingested event waits in the outbox");

    let case: CaseView = http
        .get(format!("{base}/api/v1/tenants/acme/cases/{}", created.case_id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(case.case_id, created.case_id);
    assert_eq!(case.case_ref, "in-process-1");
    assert!(case.analysis.is_none());

    let list: Vec<CaseSummary> =
        http.get(format!("{base}/api/v1/tenants/acme/cases")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].case_id, created.case_id);

    // Another tenant sees nothing of it.
    let resp = http.get(format!("{base}/api/v1/tenants/other/cases/{}", created.case_id)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    sys.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_file_named_and_nothing_stored() {
    let (sys, base) = api_in_process().await;
    let http = reqwest::Client::new();
    let (_, mut files) = phantom_files(4, [32, 32, 24]);
    files[1].1 = b"not a nifti file".to_vec();
    let bad = files[1].0;
    let resp = http.post(format!("{base}/api/v1/tenants/acme/cases")).multipart(form(files)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: ErrorBody = resp.json().await.unwrap();
    assert_eq!(body.status, 400);
    assert!(body.error.contains(bad), "the error names the {bad} file: {}", body.error);
    let cases: i64 = sqlx::query_scalar("SELECT count(*) FROM cases").fetch_one(&sys.db).await.unwrap();
    assert_eq!(cases, 0, "a refused upload leaves no case behind");

    let resp = http.get(format!("{base}/api/v1/tenants/acme/cases/not-a-uuid")).send().await.unwrap();
    assert_eq!(resp.status().as_u16() / 100, 4);
    sys.shutdown().await;
}
