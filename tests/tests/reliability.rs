//! No case lost, none stuck, none corrupted: the attempt cap, the outbox after a crash between
//! commit and publish, two attempts racing on one case, forged messages, and the sweeper.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use std::sync::Arc;
use std::time::Duration;

use gmmas_contracts::{self as contracts, ScanAnalyzed, ScanIngested, ScanPreprocessed, TenantId};
use gmmas_e2e::{System, phantom_files, tiny_model};
use gmmas_imaging::Modality;
use gmmas_runtime::worker::{self, Outcome};

const TENANT: &str = "hospital-a";
const DIMS: [usize; 3] = [48, 48, 40];

async fn count(sys: &System, sql: &str, id: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).bind(id).fetch_one(&sys.db).await.unwrap();
    n
}

/// The message a stage recorded (and published) for a case.
async fn stage_output(sys: &System, id: &str, stage: &str) -> Vec<u8> {
    let (out,): (Vec<u8>,) = sqlx::query_as("SELECT output FROM stage_runs WHERE case_id = $1::uuid AND stage = $2")
        .bind(id)
        .bind(stage)
        .fetch_one(&sys.db)
        .await
        .unwrap();
    out
}

async fn wait_stage_done(sys: &System, id: &str, stage: &str) {
    for _ in 0..600 {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT status FROM stage_runs WHERE case_id = $1::uuid AND stage = $2")
                .bind(id)
                .bind(stage)
                .fetch_optional(&sys.db)
                .await
                .unwrap();
        if row.is_some_and(|(s,)| s == "done") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{}", sys.with_logs(anyhow::anyhow!("stage {stage} of {id} never finished")));
}

/// Sum of the samples of the series whose line starts with `prefix`.
fn sum_metric(text: &str, prefix: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_end_as_failed_with_the_reason_after_the_attempt_cap() {
    // Every inference overruns its deadline: transient, retried, then given up on.
    let sys = System::start(&[
        ("GMMAS_INFERENCE_DEADLINE_S", "0.001"),
        ("GMMAS_MAX_DELIVER", "3"),
        ("GMMAS_RETRY_BACKOFF_S", "0.2"),
    ])
    .await
    .unwrap();
    let (_, files) = phantom_files(2, DIMS);
    let (status, body) = sys.upload(TENANT, "cap-1", files).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let id = body["case_id"].as_str().unwrap().to_string();
    let view = sys.wait_case(TENANT, &id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["error_stage"], "infer", "{view}");
    let error = view["error"].as_str().unwrap();
    assert!(error.contains("gave up after 3 attempts") && error.contains("deadline"), "{error}");
    let infer = view["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "infer").unwrap().clone();
    assert_eq!(infer["attempts"], 3, "{infer}");
    assert_eq!(infer["status"], "failed", "{infer}");
    // One case.failed event, no analysis, and nothing of the failed attempts left in the store.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failed = sys.stream_messages(&format!("gmmas.{TENANT}.case.failed")).await.unwrap();
    let failed: Vec<contracts::CaseFailed> = failed.iter().map(|p| contracts::decode(p).unwrap()).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].case_id.to_string(), id);
    assert_eq!(count(&sys, "SELECT count(*) FROM analyses WHERE case_id = $1::uuid", &id).await, 0);
    let (extra, missing) = sys.object_mismatch(TENANT, &id).await.unwrap();
    assert!(extra.is_empty() && missing.is_empty(), "orphans {extra:?}, lost {missing:?}");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_publish_still_completes() {
    let sys = System::start(&[]).await.unwrap();
    // An ingest that commits and then never publishes (its process "died"): the outbox row is
    // all that is left, and the running services' relays must carry the case on.
    let rt = sys.runtime(|_| {}).await.unwrap();
    let ingestor = gmmas_upload::Ingestor::new(rt, 64, 1 << 24);
    let (_, files) = phantom_files(4, DIMS);
    let upload = gmmas_upload::Upload {
        tenant: TenantId::new(TENANT).unwrap(),
        case_ref: "crash-after-commit".into(),
        files: files
            .into_iter()
            .map(|(m, b)| {
                (Modality::parse(m).unwrap(), gmmas_upload::Spooled::from_bytes(&std::env::temp_dir(), &b).unwrap())
            })
            .collect(),
        study: None,
        series: Vec::new(),
    };
    sys.create_tenant(TENANT).await.unwrap();
    let created = ingestor.ingest(upload).await.unwrap();
    let id = created.case_id.to_string();
    let view = sys.wait_case(TENANT, &id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(view["status"], "done", "{view}");
    let (pending,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(&sys.db).await.unwrap();
    assert_eq!(pending, 0);
    let ingested = sys.stream_messages(&format!("gmmas.{TENANT}.scan.ingested")).await.unwrap();
    assert_eq!(ingested.len(), 1);
    let msg: ScanIngested = contracts::decode(&ingested[0]).unwrap();
    assert_eq!(msg.case_id, created.case_id);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_attempts_leave_one_consistent_analysis() {
    let mut sys = System::start(&[]).await.unwrap();
    sys.stop_service("infer").await;
    let (_, files) = phantom_files(5, DIMS);
    let (status, body) = sys.upload(TENANT, "race-1", files).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let id = body["case_id"].as_str().unwrap().to_string();
    wait_stage_done(&sys, &id, "preprocess").await;
    let payload = stage_output(&sys, &id, "preprocess").await;
    let msg: ScanPreprocessed = contracts::decode(&payload).unwrap();
    let subject = contracts::Event::ScanPreprocessed.subject(&msg.tenant);

    // Two attempts at the same message at once, as after a lost progress ack.
    let dir = tempfile::tempdir().unwrap();
    let model = gmmas_models::Analyzer::load(&tiny_model(dir.path()).unwrap(), gmmas_models::Device::Cpu).unwrap();
    let worker = Arc::new(gmmas_infer::Inferrer::new(model, None, gmmas_models::InferOptions::default(), None));
    let rt = sys.runtime(|_| {}).await.unwrap();
    let (a, b) = tokio::join!(
        worker::handle(&rt, worker.as_ref(), &subject, &payload),
        worker::handle(&rt, worker.as_ref(), &subject, &payload)
    );
    let mut outcomes = [a.1, b.1];
    outcomes.sort_by_key(|o| o.as_str());
    assert_eq!(outcomes, [Outcome::Done, Outcome::Duplicate]);

    // One analysis, whose stored segmentation matches its recorded hash; no orphan objects.
    assert_eq!(count(&sys, "SELECT count(*) FROM analyses WHERE case_id = $1::uuid", &id).await, 1);
    let (key, sha): (String, String) =
        sqlx::query_as("SELECT seg_object_key, seg_sha256 FROM analyses WHERE case_id = $1::uuid")
            .bind(&id)
            .fetch_one(&sys.db)
            .await
            .unwrap();
    let out = stage_output(&sys, &id, "infer").await;
    let analyzed: ScanAnalyzed = contracts::decode(&out).unwrap();
    assert_eq!(
        (analyzed.segmentation.key.as_str(), analyzed.segmentation.sha256.as_str()),
        (key.as_str(), sha.as_str())
    );
    let seg = sys
        .request(reqwest::Method::GET, &format!("/api/v1/tenants/{TENANT}/cases/{id}/segmentation"))
        .send()
        .await
        .unwrap();
    assert_eq!(seg.status(), 200);
    assert_eq!(gmmas_runtime::bus::sha256_hex(&seg.bytes().await.unwrap()), sha);
    let (extra, missing) = sys.object_mismatch(TENANT, &id).await.unwrap();
    assert!(extra.is_empty() && missing.is_empty(), "orphans {extra:?}, lost {missing:?}");
    let view = sys.wait_case(TENANT, &id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(view["status"], "done");
    // The services' relays publish the one scan.analyzed event.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sys.stream_messages(&format!("gmmas.{TENANT}.scan.analyzed")).await.unwrap().len(), 1);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_messages_naming_another_tenants_objects_are_refused() {
    let mut sys = System::start(&[]).await.unwrap();
    let (_, files) = phantom_files(6, DIMS);
    let (_, body) = sys.upload(TENANT, "victim", files).await.unwrap();
    let victim = body["case_id"].as_str().unwrap().to_string();
    sys.wait_case(TENANT, &victim, Duration::from_secs(120)).await.unwrap();
    let victim_out = stage_output(&sys, &victim, "preprocess").await;
    let victim_msg: ScanPreprocessed = contracts::decode(&victim_out).unwrap();

    // The attacker's own case waits at infer.
    sys.stop_service("infer").await;
    let other = TenantId::new("hospital-b").unwrap();
    let (_, files) = phantom_files(16, DIMS);
    let (_, body) = sys.upload(other.as_str(), "mine", files).await.unwrap();
    let mine = body["case_id"].as_str().unwrap().to_string();
    wait_stage_done(&sys, &mine, "preprocess").await;
    let client = async_nats::connect(&sys.nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let publish = |subject: String, msg: ScanPreprocessed, id: &str| {
        let js = js.clone();
        let id = id.to_string();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(contracts::MSG_ID_HEADER, id.as_str());
            let payload = contracts::encode(&msg).unwrap();
            js.publish_with_headers(subject, headers, payload.into()).await.unwrap().await.unwrap();
        }
    };
    // (1) my case, pointing at the victim's tensor; (2) the victim's case on my subject;
    // (3) the victim's own message, replayed on my subject.
    let mut forged = victim_msg.clone();
    forged.tenant = other.clone();
    forged.case_id = mine.parse().unwrap();
    publish(contracts::Event::ScanPreprocessed.subject(&other), forged, "forged-1").await;
    let mut forged = victim_msg.clone();
    forged.tenant = other.clone();
    publish(contracts::Event::ScanPreprocessed.subject(&other), forged, "forged-2").await;
    publish(contracts::Event::ScanPreprocessed.subject(&other), victim_msg.clone(), "forged-3").await;

    sys.start_service("infer").await.unwrap();
    let view = sys.wait_case(other.as_str(), &mine, Duration::from_secs(120)).await.unwrap();
    assert_eq!(view["status"], "done", "{view}");
    // My case was analyzed from my own tensor, the victim's case was not touched again.
    let mine_out = stage_output(&sys, &mine, "preprocess").await;
    let mine_msg: ScanPreprocessed = contracts::decode(&mine_out).unwrap();
    assert_eq!(view["analysis"]["input_sha256"]["preprocessed"], mine_msg.prepared.sha256.as_str());
    assert_ne!(mine_msg.prepared.sha256, victim_msg.prepared.sha256);
    assert_eq!(count(&sys, "SELECT count(*) FROM analyses WHERE case_id = $1::uuid", &victim).await, 1);
    let metrics = sys.metrics("infer").await.unwrap();
    assert!(
        metrics.contains("gmmas_messages_total{outcome=\"refused\",stage=\"infer\",service=\"infer\"} 3"),
        "{metrics}"
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_case_is_redriven_then_failed_with_a_reason() {
    let mut sys =
        System::start(&[("GMMAS_STALE_AFTER_S", "2"), ("GMMAS_SWEEP_INTERVAL_S", "1"), ("GMMAS_MAX_REDRIVES", "1")])
            .await
            .unwrap();
    // Nobody preprocesses: the case makes no progress.
    sys.stop_service("preprocess").await;
    let (_, files) = phantom_files(7, DIMS);
    let (_, body) = sys.upload(TENANT, "stale-1", files).await.unwrap();
    let id = body["case_id"].as_str().unwrap().to_string();
    let view = sys.wait_case(TENANT, &id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["error_stage"], "preprocess");
    assert!(view["error"].as_str().unwrap().contains("no progress at stage preprocess"), "{view}");
    let (redrives,): (i32,) =
        sqlx::query_as("SELECT redrives FROM cases WHERE id = $1::uuid").bind(&id).fetch_one(&sys.db).await.unwrap();
    assert_eq!(redrives, 1);
    // The original event and the one re-drive are both in the stream (distinct message ids).
    let ingested = sys.stream_messages(&format!("gmmas.{TENANT}.scan.ingested")).await.unwrap();
    assert_eq!(ingested.len(), 2);
    let mut redriven = 0.0;
    for name in ["api", "ingest", "infer"] {
        redriven += sum_metric(&sys.metrics(name).await.unwrap(), "gmmas_sweeper_actions_total{action=\"redrive\"");
    }
    assert_eq!(redriven, 1.0);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_off_and_a_full_backlog_answers_429() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sys = System::start(&[("GMMAS_HEADER_TIMEOUT_S", "1"), ("GMMAS_MAX_BACKLOG", "1")]).await.unwrap();
    // A client that trickles its headers and never finishes them is disconnected.
    let addr = sys.service("api").http_addr.clone();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    let mut buf = [0u8; 256];
    // Generous bounds: with several systems under test on two cores the server may be slow to
    // act, but without the header timeout the client would stay connected for request_timeout_s.
    while started.elapsed() < Duration::from_secs(30) {
        if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
            closed = true;
            break;
        }
        match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(closed, "the slow client was still connected after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(25), "cut off only after {:?}", started.elapsed());
    // The server still answers others.
    assert_eq!(gmmas_runtime::supervise::http_status(&addr, "/healthz").await.unwrap(), 200);

    // Backpressure: with nobody preprocessing, one open case fills the backlog.
    sys.stop_service("preprocess").await;
    let (_, files) = phantom_files(9, DIMS);
    let (status, body) = sys.upload(TENANT, "backlog-1", files.clone()).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let mut form = reqwest::multipart::Form::new().text("case_ref", "backlog-2");
    for (name, bytes) in files {
        form = form.part(name.to_string(), reqwest::multipart::Part::bytes(bytes).file_name("x.nii.gz"));
    }
    let resp = sys
        .request(reqwest::Method::POST, &format!("/api/v1/tenants/{TENANT}/cases"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "30");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("waiting for analysis"), "{body}");
    let metrics = sys.metrics("api").await.unwrap();
    assert!(metrics.contains("gmmas_http_rejected_total{reason=\"backlog\",service=\"api\"} 1"), "{metrics}");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_limit_applies_to_each_file_and_spools_leave_nothing_behind() {
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().display().to_string();
    let env = [("GMMAS_MAX_UPLOAD_MIB", "1"), ("GMMAS_SPOOL_DIR", spool_dir.as_str())];
    let sys = System::start_with(&env, &["ingest", "api"]).await.unwrap();
    let limits = gmmas_imaging::Limits::default();
    let raw = |dims: [usize; 3], seed: u64| -> Vec<(&'static str, Vec<u8>)> {
        let (_, files) = phantom_files(seed, dims);
        files
            .into_iter()
            .map(|(m, gz)| (m, gmmas_imaging::write_volume(&gmmas_imaging::read_volume(&gz, &limits).unwrap(), false)))
            .collect()
    };
    // Four uncompressed files of 0.75 MiB: 3 MiB in all, each under the 1 MiB limit.
    let files = raw([64, 64, 48], 31);
    assert!(
        files.iter().all(|(_, b)| b.len() < 1 << 20) && files.iter().map(|(_, b)| b.len()).sum::<usize>() > 2 << 20
    );
    let (status, body) = sys.upload(TENANT, "per-file-ok", files).await.unwrap();
    assert_eq!(status, 201, "{body}");
    // One file over the limit: 413 naming it, no case, no object.
    let mut files = raw([48, 48, 40], 32);
    files[2].1 = raw([80, 80, 48], 33).swap_remove(2).1;
    assert!(files[2].1.len() > 1 << 20);
    let name = files[2].0;
    let (status, body) = sys.upload(TENANT, "per-file-too-big", files).await.unwrap();
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains(name), "{body}");
    let (cases,): (i64,) = sqlx::query_as("SELECT count(*) FROM cases WHERE case_ref = 'per-file-too-big'")
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert_eq!(cases, 0);
    // Spool files go with their upload, accepted or refused.
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0, "spool files left behind");
    sys.shutdown().await;
}
