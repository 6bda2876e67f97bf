//! The learning loop end to end: unlabeled cases flow through the running system, curate
//! pseudo-labels them, train produces a candidate, the gate decides, infer switches to the
//! promoted model, a rollback switches back; a candidate that fails the gate is never served;
//! a training run killed mid-way resumes from its stored checkpoint.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use std::path::Path;
use std::time::{Duration, Instant};

use gmmas_e2e::{System, phantom_files};
use serde_json::Value;

const TENANT: &str = "hospital-a";
const DIMS: [usize; 3] = [48, 48, 40];
const ALL: [&str; 6] = ["ingest", "preprocess", "infer", "api", "curate", "train"];

/// Labelled reference data, the fixed evaluation set and the base run config, in `dir`.
fn training_files(dir: &Path) -> String {
    let labelled = dir.join("labelled");
    let eval = dir.join("eval");
    gmmas_phantom::write_dataset(2, 100, DIMS, &labelled).unwrap();
    gmmas_phantom::write_dataset(2, 200, DIMS, &eval).unwrap();
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"gmmas-tiny-loop\"\nout = \"out\"\nthreads = 1\ndevice = \"cpu\"\nvalidate_every = 0\n\n\
             [data]\ndirs = [\"{l}\"]\nlabels = [\"{l}/labels.csv\"]\nthreads = 1\n\n\
             [model]\nprofile = \"tiny\"\n\n\
             [train]\noptimizer = \"adamw\"\nlr = 3e-3\nsteps = 4\nbatch_size = 1\n\n\
             [ssl]\nunlabeled_batch_size = 1\n",
            l = labelled.display()
        ),
    )
    .unwrap();
    config.display().to_string()
}

fn env<'a>(dir: &'a Path, config: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = [
        ("GMMAS_RUN_CONFIG", config.to_string()),
        ("GMMAS_EVAL_DIR", dir.join("eval").display().to_string()),
        ("GMMAS_MC_PASSES", "3".into()),
        // Loose thresholds: an untrained tiny model is never 95 % sure; the rule is the same.
        ("GMMAS_U_MAX", "0.5".into()),
        ("GMMAS_C_MIN", "0.5".into()),
        ("GMMAS_VOXEL_U_MAX", "0.5".into()),
        ("GMMAS_VOXEL_C_MIN", "0.3".into()),
        ("GMMAS_MIN_TUMOUR_ACCEPTED", "0".into()),
        ("GMMAS_STAGE1_STEPS", "4".into()),
        ("GMMAS_STAGE2_STEPS", "2".into()),
        ("GMMAS_STEPS_PER_EPOCH", "2".into()),
        ("GMMAS_MIN_NEW_CASES", "3".into()),
        ("GMMAS_POLL_S", "1".into()),
        ("GMMAS_LEASE_S", "4".into()),
        ("GMMAS_GATE_TASKS", "".into()),
        ("GMMAS_GATE_DICE_MARGIN", "0.05".into()),
        ("GMMAS_MODEL_POLL_S", "1".into()),
        ("GMMAS_DEVICE", "cpu".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, x) in extra {
        v.retain(|(key, _)| key != k);
        v.push((k.to_string(), x.to_string()));
    }
    v
}

async fn start(dir: &Path, extra: &[(&str, &str)]) -> System {
    let config = training_files(dir);
    let env = env(dir, &config, extra);
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    System::start_with(&refs, &ALL).await.unwrap()
}

async fn analyze(sys: &System, seed: u64, name: &str) -> Value {
    let (_, files) = phantom_files(seed, DIMS);
    let (status, body) = sys.upload(TENANT, name, files).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let view = sys.wait_case(TENANT, body["case_id"].as_str().unwrap(), Duration::from_secs(120)).await.unwrap();
    assert_eq!(view["status"], "done", "{view}");
    view
}

/// Waits until the single training run is no longer running; returns (status, row as JSON).
async fn wait_run(sys: &System, timeout: Duration) -> (String, Value) {
    let start = Instant::now();
    loop {
        let row: Option<(String, Value)> = sqlx::query_as(
            "SELECT status, json_build_object('candidate', candidate_version, 'parent', parent_version,
                    'resumes', resumes, 'checkpoints', checkpoints, 'error', error, 'data', data_sha256)
             FROM train_runs ORDER BY started_at DESC LIMIT 1",
        )
        .fetch_optional(&sys.db)
        .await
        .unwrap();
        if let Some((status, row)) = row
            && status != "running"
        {
            return (status, row);
        }
        if start.elapsed() > timeout {
            panic!("{}", sys.with_logs(anyhow::anyhow!("no training run finished after {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn curated(sys: &System, case_id: &str) {
    for _ in 0..600 {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT status FROM stage_runs WHERE case_id = $1::uuid AND stage = 'curate'")
                .bind(case_id)
                .fetch_optional(&sys.db)
                .await
                .unwrap();
        match row.as_ref().map(|(s,)| s.as_str()) {
            Some("done") => return,
            Some("failed") => panic!("{}", sys.with_logs(anyhow::anyhow!("curate failed for {case_id}"))),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{}", sys.with_logs(anyhow::anyhow!("case {case_id} never curated")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlabeled_cases_train_a_model_the_gate_promotes_infer_switches_and_a_rollback_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut sys = start(dir.path(), &[]).await;
    let mut first = Vec::new();
    for (i, seed) in [301u64, 302, 303].into_iter().enumerate() {
        let view = analyze(&sys, seed, &format!("unl-{i}")).await;
        first.push(view);
    }
    let parent = first[0]["analysis"]["model_version"].as_str().unwrap().to_string();
    for v in &first {
        assert_eq!(v["analysis"]["model_version"], parent.as_str());
        curated(&sys, v["case_id"].as_str().unwrap()).await;
    }
    // Curate stored pseudo-labels for each case with the model that analyzed it.
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM pseudo_labels WHERE model_version = $1")
        .bind(&parent)
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert_eq!(rows, 15, "3 cases x (segmentation + 4 tasks)");

    let (status, run) = wait_run(&sys, Duration::from_secs(600)).await;
    assert_eq!(status, "promoted", "{run}");
    let candidate = run["candidate"].as_str().unwrap().to_string();
    assert_ne!(candidate, parent);
    let (_, models) = sys.get_json("/api/v1/models").await.unwrap();
    let m = models.as_array().unwrap().iter().find(|m| m["version"] == candidate.as_str()).unwrap().clone();
    assert_eq!(m["status"], "current", "{m}");
    assert_eq!(m["origin"], "trained");
    assert_eq!(m["parent_version"], parent.as_str());
    assert_eq!(m["data_sha256"], run["data"]);
    assert!(
        m["metrics"]["candidate"]["dice_mean"].is_number() && m["metrics"]["current"]["dice_mean"].is_number(),
        "{m}"
    );
    assert!(m["decision"].as_str().unwrap().starts_with("promoted"), "{m}");

    // Infer follows the registry: the next case is analyzed by the candidate, the earlier ones
    // keep the version that produced them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = analyze(&sys, 304, "after-promotion").await;
    assert_eq!(after["analysis"]["model_version"], candidate.as_str(), "{after}");
    let (_, again) = sys
        .get_json(&format!("/api/v1/tenants/{TENANT}/cases/{}", first[0]["case_id"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(again["analysis"]["model_version"], parent.as_str());
    curated(&sys, after["case_id"].as_str().unwrap()).await;

    // Rollback over the API: the parent is current again, the candidate's pseudo-labels stale.
    let resp = sys.request(reqwest::Method::POST, "/api/v1/models/complete/rollback").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["rolled_back"].as_str(), body["current"].as_str()),
        (Some(candidate.as_str()), Some(parent.as_str()))
    );
    let (fresh,): (i64,) = sqlx::query_as("SELECT count(*) FROM pseudo_labels WHERE model_version = $1 AND NOT stale")
        .bind(&candidate)
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert_eq!(fresh, 0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rolled = analyze(&sys, 305, "after-rollback").await;
    assert_eq!(rolled["analysis"]["model_version"], parent.as_str());
    // The loop is visible in the metrics.
    let curate = sys.metrics("curate").await.unwrap();
    assert!(
        curate.contains("gmmas_pseudo_labels_total{decision=\"accepted\",task=\"segmentation\",service=\"curate\"}"),
        "{curate}"
    );
    let train = sys.metrics("train").await.unwrap();
    assert!(train.contains("gmmas_training_runs_total{outcome=\"promoted\",service=\"train\"} 1"), "{train}");
    let api = sys.metrics("api").await.unwrap();
    assert!(api.contains("gmmas_model_changes_total{change=\"rolled_back\",service=\"api\"} 1"), "{api}");
    // A second rollback has nothing left to return to: 409 with the reason.
    let resp = sys.request(reqwest::Method::POST, "/api/v1/models/complete/rollback").send().await.unwrap();
    assert_eq!(resp.status(), 409);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_that_fails_the_gate_is_rejected_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    // The gate demands a Dice gain no model can show.
    let sys = start(dir.path(), &[("GMMAS_GATE_DICE_MARGIN", "-1.0")]).await;
    let mut parent = String::new();
    for (i, seed) in [311u64, 312, 313].into_iter().enumerate() {
        let v = analyze(&sys, seed, &format!("unl-{i}")).await;
        parent = v["analysis"]["model_version"].as_str().unwrap().to_string();
    }
    let (status, run) = wait_run(&sys, Duration::from_secs(600)).await;
    assert_eq!(status, "rejected", "{run}");
    assert!(run["error"].as_str().unwrap().contains("mean Dice"), "{run}");
    let (_, models) = sys.get_json("/api/v1/models").await.unwrap();
    let cand = models.as_array().unwrap().iter().find(|m| m["version"] == run["candidate"]).unwrap().clone();
    assert_eq!(cand["status"], "rejected", "{cand}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = analyze(&sys, 314, "after-rejection").await;
    assert_eq!(v["analysis"]["model_version"], parent.as_str());
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_run_killed_mid_way_resumes_from_its_stored_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut sys =
        start(dir.path(), &[("GMMAS_STAGE1_STEPS", "12"), ("GMMAS_STAGE2_STEPS", "0"), ("GMMAS_LEASE_S", "3")]).await;
    for (i, seed) in [321u64, 322, 323].into_iter().enumerate() {
        analyze(&sys, seed, &format!("unl-{i}")).await;
    }
    // Wait for a stored checkpoint, then kill the trainer without warning.
    let start = Instant::now();
    loop {
        let step: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT (checkpoints->'stage1'->>'step')::bigint FROM train_runs WHERE status = 'running'")
                .fetch_optional(&sys.db)
                .await
                .unwrap();
        if let Some((Some(s),)) = step
            && s >= 2
        {
            assert!(s < 12, "the run finished before it could be interrupted");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "{}",
            sys.with_logs(anyhow::anyhow!("no checkpoint stored"))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sys.service("train").child.start_kill().unwrap();
    sys.service("train").child.wait().await.unwrap();
    sys.start_service("train").await.unwrap();
    let (status, run) = wait_run(&sys, Duration::from_secs(600)).await;
    assert!(matches!(status.as_str(), "promoted" | "rejected"), "{status}: {run}");
    assert_eq!(run["resumes"], 1, "{run}");
    assert_eq!(run["checkpoints"]["stage1"]["step"], 12, "{run}");
    let log = std::fs::read_to_string(&sys.service("train").log).unwrap();
    assert!(log.contains("resuming from the stored checkpoint"), "{log}");
    sys.shutdown().await;
}
