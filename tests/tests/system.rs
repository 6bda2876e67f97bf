//! End-to-end: HTTP upload -> ingest -> NATS JetStream -> preprocess -> infer (tch) ->
//! PostgreSQL -> HTTP, with every service a real process, plus crash and bad-input behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use std::time::Duration;

use gmmas_e2e::{System, phantom_files};
use gmmas_imaging::Limits;

const TENANT: &str = "hospital-a";
const DIMS: [usize; 3] = [64, 64, 48];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_case_is_analyzed_and_readable_from_the_api() {
    let mut sys = System::start(&[]).await.unwrap();
    let (phantom, files) = phantom_files(3, DIMS);
    let (status, created) = sys.upload(TENANT, "case-001", files.clone()).await.unwrap();
    assert_eq!(status, 201, "{created}");
    let id = created["case_id"].as_str().unwrap().to_string();

    let view = sys.wait_case(TENANT, &id, Duration::from_secs(120)).await.unwrap();
    assert_eq!(view["status"], "done", "{view}");
    let stages: Vec<&str> = view["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["ingest", "preprocess", "infer"]);
    assert!(view["stages"].as_array().unwrap().iter().all(|s| s["status"] == "done" && s["duration_ms"].is_i64()));
    let a = &view["analysis"];
    assert!(a["model_version"].as_str().unwrap().contains("tiny-seed1@"), "{a}");
    // Every input's hash is recorded with the result.
    for (m, bytes) in &files {
        assert_eq!(a["input_sha256"][m], gmmas_runtime::bus::sha256_hex(bytes), "{m}");
    }
    for p in ["grade_gbm", "idh_mutant", "codel_1p19q", "mgmt_methylated"] {
        let v = a["probabilities"][p].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{p}={v}");
    }
    assert_eq!(a["missing_modalities"].as_array().unwrap().len(), 0);

    // The segmentation downloads as NIfTI on exactly the input grid, with BraTS labels only,
    // and the stored volumes agree with it.
    let seg = sys.request(reqwest::Method::GET, a["segmentation_url"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(seg.status(), 200);
    let seg = gmmas_imaging::read_labels(&seg.bytes().await.unwrap(), &Limits::default()).unwrap();
    let input_grid = &phantom.volumes[0].1.grid;
    gmmas_imaging::same_grid(&seg.grid, input_grid).unwrap();
    assert!(seg.data.iter().all(|l| matches!(l, 0 | 1 | 2 | 4)));
    let stats = gmmas_imaging::region_stats(&seg);
    assert!((stats.wt_ml - a["regions"]["wt_ml"].as_f64().unwrap()).abs() < 1e-6);

    // Listing, duplicates, tenants kept apart, unknown cases.
    let (_, list) = sys.get_json(&format!("/api/v1/tenants/{TENANT}/cases")).await.unwrap();
    assert!(list.as_array().unwrap().iter().any(|c| c["case_id"] == id.as_str()));
    let (status, body) = sys.upload(TENANT, "case-001", files.clone()).await.unwrap();
    assert_eq!(status, 409, "{body}");
    let (status, _) = sys.get_json(&format!("/api/v1/tenants/other-hospital/cases/{id}")).await.unwrap();
    assert_eq!(status, 404);

    // Every service exposes health and metrics; infer counted the message.
    for s in &sys.services {
        assert_eq!(gmmas_runtime::supervise::http_status(&s.http_addr, "/healthz").await.unwrap(), 200);
    }
    let infer_addr = sys.service("infer").http_addr.clone();
    let metrics = reqwest::get(format!("http://{infer_addr}/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("gmmas_messages_total{outcome=\"done\",stage=\"infer\",service=\"infer\"} 1"),
        "{metrics}"
    );

    // The audit log saw the case created and analyzed (beside the API's reads of it).
    let actions: Vec<(String,)> =
        sqlx::query_as("SELECT action FROM audit_log WHERE case_id = $1::uuid AND action NOT LIKE 'GET %' ORDER BY id")
            .bind(&id)
            .fetch_all(&sys.db)
            .await
            .unwrap();
    assert_eq!(actions.into_iter().map(|(a,)| a).collect::<Vec<_>>(), ["case.created", "case.analyzed"]);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_clear_errors_and_the_next_case_still_goes_through() {
    let sys = System::start(&[]).await.unwrap();
    let (_, good) = phantom_files(5, DIMS);
    let flair = good.iter().find(|(m, _)| *m == "flair").unwrap().1.clone();

    // Truncated .nii.gz
    let truncated = flair[..flair.len() / 2].to_vec();
    let (status, body) = sys.upload(TENANT, "bad-truncated", vec![("flair", truncated)]).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("flair:"), "{body}");

    // Not a NIfTI file at all
    let (status, body) =
        sys.upload(TENANT, "bad-text", vec![("t1", b"patient scan, see attached".to_vec())]).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("t1:"), "{body}");

    // Modalities on different grids
    let (_, other) = phantom_files(6, [64, 64, 40]);
    let t2_other = other.iter().find(|(m, _)| *m == "t2").unwrap().1.clone();
    let (status, body) =
        sys.upload(TENANT, "bad-grid", vec![("flair", flair.clone()), ("t2", t2_other)]).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("grid"), "{body}");

    // A header claiming a 1000^3 volume: refused from the header alone.
    let mut small = gmmas_phantom::generate(&gmmas_phantom::PhantomConfig { dims: [16, 16, 16], seed: 1 });
    let mut huge = gmmas_imaging::write_volume(&small.volumes.remove(0).1, false);
    for i in 0..3 {
        huge[42 + 2 * i..44 + 2 * i].copy_from_slice(&1000i16.to_le_bytes());
    }
    let (status, body) = sys.upload(TENANT, "bad-huge", vec![("t1", huge)]).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("1000"), "{body}");

    // NaN voxels
    let mut nan_case = gmmas_phantom::generate(&gmmas_phantom::PhantomConfig { dims: DIMS, seed: 9 });
    let mut v = nan_case.volumes.remove(0).1;
    v.data[1234] = f32::NAN;
    let (status, body) =
        sys.upload(TENANT, "bad-nan", vec![("t1", gmmas_imaging::write_volume(&v, true))]).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().to_lowercase().contains("nan")
            || body["error"].as_str().unwrap().contains("finite"),
        "{body}"
    );

    // Valid files but nothing in them (an empty brain): accepted, then failed with a reason.
    let mut empty = v.clone();
    empty.data.iter_mut().for_each(|x| *x = 0.0);
    let (status, body) =
        sys.upload(TENANT, "bad-empty", vec![("t1", gmmas_imaging::write_volume(&empty, true))]).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let failed = sys.wait_case(TENANT, body["case_id"].as_str().unwrap(), Duration::from_secs(60)).await.unwrap();
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error_stage"], "preprocess");
    assert!(failed["error"].as_str().unwrap().contains("empty"), "{failed}");

    // No case rows for the refused uploads, and the services are still up: a good case completes.
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM cases").fetch_one(&sys.db).await.unwrap();
    assert_eq!(n, 1);
    let (status, body) = sys.upload(TENANT, "good-after-bad", good).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let view = sys.wait_case(TENANT, body["case_id"].as_str().unwrap(), Duration::from_secs(120)).await.unwrap();
    assert_eq!(view["status"], "done", "{view}");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_held_by_a_killed_infer_process_completes_exactly_once() {
    // Short ack wait so the redelivery comes quickly after the crash.
    let mut sys = System::start(&[("GMMAS_ACK_WAIT_S", "3")]).await.unwrap();
    // A larger case so that inference takes long enough to be interrupted.
    let (_, files) = phantom_files(8, [160, 160, 120]);
    let (status, body) = sys.upload(TENANT, "crash-1", files).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let id = body["case_id"].as_str().unwrap().to_string();

    // Wait until infer has taken the case, then kill it without warning.
    let status = sys.wait_stage_taken(&id, "infer", Duration::from_secs(120)).await.unwrap();
    assert_eq!(status, "running", "infer finished before it could be interrupted");
    sys.service("infer").child.start_kill().unwrap();
    sys.service("infer").child.wait().await.unwrap();
    sys.start_service("infer").await.unwrap();

    let view = sys.wait_case(TENANT, &id, Duration::from_secs(300)).await.unwrap();
    assert_eq!(view["status"], "done", "{view}");
    let infer = view["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "infer").unwrap();
    assert!(infer["attempts"].as_i64().unwrap() >= 2, "{infer}");
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM analyses WHERE case_id = $1::uuid")
        .bind(&id)
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert_eq!(n, 1);

    // Exactly one scan.analyzed message reached the stream for this case.
    let client = async_nats::connect(&sys.nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(gmmas_contracts::STREAM).await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: format!("gmmas.{TENANT}.scan.analyzed"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(10).expires(Duration::from_secs(2)).messages().await.unwrap();
    let mut count = 0;
    use futures::StreamExt;
    while let Some(Ok(m)) = batch.next().await {
        let msg: gmmas_contracts::ScanAnalyzed = gmmas_contracts::decode(&m.payload).unwrap();
        if msg.case_id.to_string() == id {
            count += 1;
        }
    }
    assert_eq!(count, 1);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_infer_finish_the_case_it_holds_then_exit() {
    let mut sys = System::start(&[]).await.unwrap();
    let (_, files) = phantom_files(12, [160, 160, 120]);
    let (status, body) = sys.upload(TENANT, "sigterm-1", files).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let id = body["case_id"].as_str().unwrap().to_string();
    let status = sys.wait_stage_taken(&id, "infer", Duration::from_secs(120)).await.unwrap();
    assert_eq!(status, "running", "infer finished before the signal could be sent");
    let infer = sys.service("infer");
    let pid = infer.child.id().unwrap();
    assert!(std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap().success());
    let exit = tokio::time::timeout(Duration::from_secs(120), infer.child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "infer exited with {exit}");
    // The case was finished by the process that held it, on its first attempt.
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM stage_runs WHERE case_id = $1::uuid AND stage = 'infer'")
            .bind(&id)
            .fetch_one(&sys.db)
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("done", 1));
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flair_only_case_with_mc_dropout_reports_missing_sequences_and_uncertainty() {
    let sys = System::start(&[("GMMAS_MC_PASSES", "3")]).await.unwrap();
    let (phantom, files) = phantom_files(21, DIMS);
    let flair: Vec<_> = files.into_iter().filter(|(m, _)| *m == "flair").collect();
    let (status, body) = sys.upload(TENANT, "flair-only", flair).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let view = sys.wait_case(TENANT, body["case_id"].as_str().unwrap(), Duration::from_secs(120)).await.unwrap();
    assert_eq!(view["status"], "done", "{view}");
    assert_eq!(view["modalities"], serde_json::json!(["flair"]));
    let a = &view["analysis"];
    assert_eq!(a["missing_modalities"], serde_json::json!(["t1", "t1ce", "t2"]));
    // A case missing sequences goes to the model registered for incomplete inputs.
    assert!(a["model_version"].as_str().unwrap().contains("tiny-seed7@"), "{a}");
    assert_eq!(a["mc_passes"], 3);
    let std = &a["probabilities_std"];
    for p in ["grade_gbm", "idh_mutant", "codel_1p19q", "mgmt_methylated"] {
        let v = std[p].as_f64().unwrap();
        assert!((0.0..=0.5).contains(&v), "{p} std {v}");
    }
    let url = a["uncertainty_url"].as_str().unwrap();
    let bytes = sys.request(reqwest::Method::GET, url).send().await.unwrap().bytes().await.unwrap();
    let map = gmmas_imaging::read_volume(&bytes, &Limits::default()).unwrap();
    gmmas_imaging::same_grid(&map.grid, &phantom.volumes[0].1.grid).unwrap();
    assert!(map.data.iter().all(|v| (0.0..=0.5).contains(v)));
    assert!(map.data.iter().any(|v| *v > 0.0), "MC passes all identical");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_bundled_model_supersedes_the_older_bundled_one() {
    let mut sys = System::start(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("tiny2.safetensors");
    let cfg = gmmas_models::ModelConfig::profile("tiny").unwrap();
    let model = gmmas_models::Analyzer::new_seeded(cfg, 2, gmmas_models::Device::Cpu).unwrap();
    model.save(&newer).unwrap();
    let newer_version = model.version().to_string();

    // Restart infer with a new bundled release: it becomes current, the old one is retired.
    supervise_stop(&mut sys, "infer").await;
    sys.set_env("GMMAS_MODEL_PATH", &newer.display().to_string());
    sys.start_service("infer").await.unwrap();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT version, status FROM model_registry WHERE role = 'complete' ORDER BY created_at")
            .fetch_all(&sys.db)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0].0.contains("tiny-seed1@") && rows[0].1 == "retired", "{rows:?}");
    assert_eq!((rows[1].0.as_str(), rows[1].1.as_str()), (newer_version.as_str(), "current"));
    // The model for incomplete inputs is its own role and stayed current.
    let incomplete: Vec<(String, String)> =
        sqlx::query_as("SELECT version, status FROM model_registry WHERE role = 'incomplete'")
            .fetch_all(&sys.db)
            .await
            .unwrap();
    assert_eq!(incomplete.len(), 1, "{incomplete:?}");
    assert!(incomplete[0].0.contains("tiny-seed7@") && incomplete[0].1 == "current", "{incomplete:?}");
    let (_, files) = phantom_files(4, DIMS);
    let (status, body) = sys.upload(TENANT, "after-upgrade", files).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let view = sys.wait_case(TENANT, body["case_id"].as_str().unwrap(), Duration::from_secs(120)).await.unwrap();
    assert_eq!(view["analysis"]["model_version"], newer_version.as_str());

    // A hospital-trained current model is never replaced by a bundle.
    sqlx::query("UPDATE model_registry SET origin = 'trained' WHERE status = 'current'")
        .execute(&sys.db)
        .await
        .unwrap();
    supervise_stop(&mut sys, "infer").await;
    sys.set_env("GMMAS_MODEL_PATH", &gmmas_e2e::tiny_model(dir.path()).unwrap().display().to_string());
    sys.start_service("infer").await.unwrap();
    let (current,): (String,) =
        sqlx::query_as("SELECT version FROM model_registry WHERE status = 'current' AND role = 'complete'")
            .fetch_one(&sys.db)
            .await
            .unwrap();
    assert_eq!(current, newer_version);
    sys.shutdown().await;
}

async fn supervise_stop(sys: &mut System, name: &str) {
    gmmas_runtime::supervise::stop(sys.service(name), Duration::from_secs(10)).await;
}
