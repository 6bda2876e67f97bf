//! In-process tests of the services' handlers: the API's routes, the preprocess, infer and
//! curate stage workers and the train service's trainer run inside this test process on a fresh
//! database and a real NATS, with no service process started.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use std::sync::Arc;
use std::time::Duration;

use gmmas_contracts::http::{CaseCreated, CaseSummary, CaseView, ErrorBody};
use gmmas_e2e::{System, phantom_files, tiny_model};
use gmmas_runtime::worker::StageRuntime;
use gmmas_runtime::{CommonConfig, Shutdown};

fn common(sys: &System) -> CommonConfig {
    CommonConfig { nats_url: sys.nats_url.clone(), database_url: sys.db_url.clone(), ..Default::default() }
}

/// NATS and a fresh database, and the API's routes listening in this process on a real stage
/// runtime (migrations, outbox relay) that stops with `shutdown`.
async fn api_in_process(shutdown: &Shutdown) -> (System, String) {
    let sys = System::start_with(&[], &[]).await.unwrap();
    let rt = StageRuntime::start(&common(&sys), "api", shutdown).await.unwrap();
    let ingestor = Arc::new(gmmas_upload::Ingestor::new(rt.clone(), 64, 50_000_000));
    let router =
        gmmas_api::routes(rt.db.clone(), rt.bus.clone(), ingestor, gmmas_runtime::auth::AuthConfig::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    sys.create_tenant("acme").await.unwrap();
    (sys, base)
}

/// Uploads `files` (form field name -> bytes) as one case of tenant `acme`.
async fn post_case(http: &reqwest::Client, base: &str, files: Vec<(&str, Vec<u8>)>) -> reqwest::Response {
    let mut form = reqwest::multipart::Form::new().text("case_ref", "in-process-1");
    for (name, bytes) in files {
        form = form.part(name.to_string(), reqwest::multipart::Part::bytes(bytes).file_name(format!("{name}.nii.gz")));
    }
    http.post(format!("{base}/api/v1/tenants/acme/cases")).multipart(form).send().await.unwrap()
}

#[tokio::test]
async fn upload_then_read_the_case_through_the_routes() {
    let shutdown = Shutdown::new();
    let (sys, base) = api_in_process(&shutdown).await;
    let http = reqwest::Client::new();
    let (_, files) = phantom_files(3, [32, 32, 24]);
    let resp = post_case(&http, &base, files).await;
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
    shutdown.trigger();
    sys.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_file_named_and_nothing_stored() {
    let shutdown = Shutdown::new();
    let (sys, base) = api_in_process(&shutdown).await;
    let http = reqwest::Client::new();
    let (_, mut files) = phantom_files(4, [32, 32, 24]);
    files[1].1 = b"not a nifti file".to_vec();
    let bad = files[1].0;
    let resp = post_case(&http, &base, files).await;
    assert_eq!(resp.status().as_u16(), 400);
    let body: ErrorBody = resp.json().await.unwrap();
    assert_eq!(body.status, 400);
    assert!(body.error.contains(bad), "the error names the {bad} file: {}", body.error);
    let cases: i64 = sqlx::query_scalar("SELECT count(*) FROM cases").fetch_one(&sys.db).await.unwrap();
    assert_eq!(cases, 0, "a refused upload leaves no case behind");

    let resp = http.get(format!("{base}/api/v1/tenants/acme/cases/not-a-uuid")).send().await.unwrap();
    assert_eq!(resp.status().as_u16() / 100, 4);
    shutdown.trigger();
    sys.shutdown().await;
}

#[tokio::test]
async fn stage_workers_analyse_and_curate_a_case_in_process() {
    let shutdown = Shutdown::new();
    let (sys, base) = api_in_process(&shutdown).await;
    let dir = tempfile::tempdir().unwrap();
    let weights = tiny_model(dir.path()).unwrap();

    let rt = StageRuntime::start(&common(&sys), "preprocess", &shutdown).await.unwrap();
    let preprocessor = gmmas_preprocess::Preprocessor {
        opts: gmmas_imaging::PrepOptions::default(),
        limits: gmmas_imaging::Limits::default(),
        strip: gmmas_models::SkullStrip::Auto,
        extractor: None,
    };
    let pre = tokio::spawn(gmmas_runtime::worker::run(rt, Arc::new(preprocessor), shutdown.clone()));
    let rt = StageRuntime::start(&common(&sys), "infer", &shutdown).await.unwrap();
    // Registered as the current model, as the infer service does, so that curate finds it.
    let model = gmmas_modelstore::load_current(
        &rt.bus,
        &rt.db,
        Some(weights.as_path()),
        gmmas_models::Device::Cpu,
        gmmas_modelstore::Role::Complete,
    )
    .await
    .unwrap()
    .unwrap();
    let version = model.version().to_string();
    let inferrer = gmmas_infer::Inferrer::new(model, None, gmmas_models::InferOptions::default(), None);
    let inf = tokio::spawn(gmmas_runtime::worker::run(rt, Arc::new(inferrer), shutdown.clone()));
    // Loose thresholds: an untrained tiny model is never 95 % sure; the rule is the same.
    let curate_cfg = gmmas_curate::CurateConfig {
        mc_passes: 2,
        u_max: 0.5,
        c_min: 0.5,
        voxel_u_max: 0.5,
        voxel_c_min: 0.3,
        min_tumour_accepted: 0.0,
        device: "cpu".into(),
        ..Default::default()
    };
    let curator = gmmas_curate::Curator::new(&curate_cfg).unwrap();
    let rt = StageRuntime::start(&common(&sys), "curate", &shutdown).await.unwrap();
    let cur = tokio::spawn(gmmas_runtime::worker::run(rt, Arc::new(curator), shutdown.clone()));

    let http = reqwest::Client::new();
    let (_, files) = phantom_files(5, [32, 32, 24]);
    let resp = post_case(&http, &base, files).await;
    assert_eq!(resp.status().as_u16(), 201);
    let created: CaseCreated = resp.json().await.unwrap();

    let url = format!("{base}/api/v1/tenants/acme/cases/{}", created.case_id);
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let case = loop {
        let case: CaseView = http.get(&url).send().await.unwrap().json().await.unwrap();
        if case.status == "done" || case.status == "failed" {
            break case;
        }
        assert!(std::time::Instant::now() < deadline, "case still {} after 180 s", case.status);
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(case.status, "done", "error: {:?}", case.error);
    let analysis = case.analysis.expect("a done case has its analysis");
    assert_eq!(analysis.model_version, version, "the result records the model that produced it");
    let hashes = analysis.input_sha256.as_object().expect("input hashes by name");
    for name in ["t1", "t1ce", "t2", "flair", "preprocessed"] {
        let h = hashes.get(name).and_then(|v| v.as_str()).unwrap_or_default();
        assert_eq!(h.len(), 64, "the result records the sha256 of {name}: {hashes:?}");
    }
    let stages: Vec<&str> = case.stages.iter().map(|s| s.stage.as_str()).collect();
    assert!(stages.contains(&"preprocess") && stages.contains(&"infer"), "{stages:?}");

    // Curate decides on the analysed case: one pseudo-label row per task, by the same model.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let versions: Vec<String> = loop {
        let rows: Vec<String> = sqlx::query_scalar("SELECT model_version FROM pseudo_labels WHERE case_id = $1")
            .bind(created.case_id)
            .fetch_all(&sys.db)
            .await
            .unwrap();
        if !rows.is_empty() {
            break rows;
        }
        assert!(std::time::Instant::now() < deadline, "no pseudo-label decision after 180 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(versions.iter().all(|v| *v == version), "{versions:?}");
    let accepted: i64 = sqlx::query_scalar("SELECT count(*) FROM pseudo_labels WHERE case_id = $1 AND accepted")
        .bind(created.case_id)
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert!(accepted > 0, "with loose thresholds some pseudo-label is accepted");

    // The train service's trainer, in this process: one check starts a run on the curated case,
    // trains both stages from the current model, registers the candidate and lets the gate decide.
    let rt = StageRuntime::start(&common(&sys), "train", &shutdown).await.unwrap();
    let train_cfg = train_config(dir.path());
    let trainer = gmmas_train::runs::Trainer::new(rt, train_cfg, uuid::Uuid::new_v4()).unwrap();
    tokio::time::timeout(Duration::from_secs(300), trainer.tick()).await.unwrap().unwrap();
    let (status, parent, candidate, checkpoints): (String, String, Option<String>, serde_json::Value) =
        sqlx::query_as("SELECT status, parent_version, candidate_version, checkpoints FROM train_runs")
            .fetch_one(&sys.db)
            .await
            .unwrap();
    assert!(status == "promoted" || status == "rejected", "run ended {status}");
    assert_eq!(parent, version, "the run trains from the serving model");
    let candidate = candidate.expect("the run names its candidate");
    assert_ne!(candidate, version);
    for stage in ["stage1", "stage2"] {
        assert!(checkpoints.get(stage).is_some(), "{stage} checkpointed: {checkpoints}");
    }
    let (origin, recorded_parent): (String, Option<String>) =
        sqlx::query_as("SELECT origin, parent_version FROM model_registry WHERE version = $1")
            .bind(&candidate)
            .fetch_one(&sys.db)
            .await
            .unwrap();
    assert_eq!((origin.as_str(), recorded_parent.as_deref()), ("trained", Some(version.as_str())));
    // A second check finds nothing new to train on.
    trainer.tick().await.unwrap();
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM train_runs").fetch_one(&sys.db).await.unwrap();
    assert_eq!(runs, 1);

    // Shutdown: every worker stops taking work and returns cleanly.
    shutdown.trigger();
    for worker in [pre, inf, cur] {
        tokio::time::timeout(Duration::from_secs(30), worker).await.unwrap().unwrap().unwrap();
    }
    sys.shutdown().await;
}

/// The train service's settings for a quick run: a base run config (tiny profile, two labelled
/// phantoms), two evaluation phantoms, two steps per stage, one new case enough.
fn train_config(dir: &std::path::Path) -> gmmas_train::TrainServiceConfig {
    const DIMS: [usize; 3] = [32, 32, 24];
    let labelled = dir.join("labelled");
    let eval = dir.join("eval");
    gmmas_phantom::write_dataset(2, 100, DIMS, &labelled).unwrap();
    gmmas_phantom::write_dataset(2, 200, DIMS, &eval).unwrap();
    let run_config = dir.join("run.toml");
    std::fs::write(
        &run_config,
        format!(
            "name = \"gmmas-tiny-in-process\"\nout = \"out\"\nthreads = 1\ndevice = \"cpu\"\nvalidate_every = 0\n\n\
             [data]\ndirs = [\"{l}\"]\nlabels = [\"{l}/labels.csv\"]\nthreads = 1\n\n\
             [model]\nprofile = \"tiny\"\n\n\
             [train]\noptimizer = \"adamw\"\nlr = 3e-3\nsteps = 2\nbatch_size = 1\n\n\
             [ssl]\nunlabeled_batch_size = 1\n",
            l = labelled.display()
        ),
    )
    .unwrap();
    gmmas_train::TrainServiceConfig {
        run_config: run_config.display().to_string(),
        eval_dir: eval.display().to_string(),
        stage1_steps: 2,
        stage2_steps: 2,
        steps_per_epoch: 2,
        min_new_cases: 1,
        gate_tasks: Vec::new(),
        gate_dice_margin: 1.0,
        device: "cpu".into(),
        threads: 1,
        ..Default::default()
    }
}
