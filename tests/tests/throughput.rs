//! Throughput: a queue of cases uploaded at once and analysed by the running services, with each
//! case's latency and stage compute and each service's memory sampled while the queue drains.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

// CI runs 1 infer worker on a queue of 3 small phantoms (tiny seeded model). The measurement,
// written up in tests/results/throughput/README.md:
//
//   GMMAS_THROUGHPUT_CASES=20 GMMAS_THROUGHPUT_WORKERS=1,2 GMMAS_THROUGHPUT_OUT=tests/results/throughput \
//       cargo test --release -p gmmas-e2e --test throughput -- --nocapture
//
// With GMMAS_THROUGHPUT_CASES set the input is the real case Brats18_2013_11_1 (a full-size
// phantom when ../shared/data is absent; the output says which), the model the bundled one and
// libtorch's thread count its default (GMMAS_THROUGHPUT_THREADS sets it). For each infer worker
// count the system (api, preprocess, infer) is started afresh and runs, one after the other: a
// first case (cold), a case alone (a queue of 1), then the queue of N uploaded at once.
// GMMAS_THROUGHPUT_OUT receives workers-<n>.json (per case timings, samples every 0.5 s of the
// queue and of each service's VmRSS/VmHWM) and the charts; `-- --ignored redraw` draws the
// charts again from those files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use gmmas_e2e::{System, phantom_files};
use gmmas_plot::{BLACK, BLUE, Corner, Figure, GREEN, GREY, Mark, ORANGE, RED};
use serde_json::{Value, json};

const TENANT: &str = "throughput";
/// What a case needs to reach `done`: the API takes the upload (the ingest code runs in it).
const SERVICES: [&str; 3] = ["api", "preprocess", "infer"];
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
const CI_DIMS: [usize; 3] = [64, 64, 48];

type Files = Vec<(&'static str, Vec<u8>)>;

/// The case every upload sends, and what it is.
struct Input {
    name: String,
    kind: &'static str,
    files: Files,
}

impl Input {
    fn mib(&self) -> f64 {
        self.files.iter().map(|(_, b)| b.len()).sum::<usize>() as f64 / 1048576.0
    }
}

/// Memory of one process from /proc: (VmRSS, VmHWM) in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(String::new, |m| m.trim().to_string())
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// n, mean, median, p95 (nearest rank), min, max.
fn stats(v: &[f64]) -> Value {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Value::Null;
    }
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    json!({
        "n": v.len(), "mean": v.iter().sum::<f64>() / v.len() as f64, "median": rank(0.5), "p95": rank(0.95),
        "min": v[0], "max": v[v.len() - 1],
    })
}

/// Uploads one case through the API, retrying after a 429; returns its id, when the upload
/// began and how long the request took.
async fn upload(api: &str, token: &str, case_ref: &str, files: &Files) -> (String, DateTime<Utc>, f64) {
    let client = reqwest::Client::new();
    let began = Utc::now();
    let t = Instant::now();
    loop {
        let mut form = reqwest::multipart::Form::new().text("case_ref", case_ref.to_string());
        for (name, bytes) in files {
            form = form.part(name.to_string(), reqwest::multipart::Part::bytes(bytes.clone()).file_name("x.nii.gz"));
        }
        let resp = client
            .post(format!("{api}/api/v1/tenants/{TENANT}/cases"))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            201 => {
                let body: Value = resp.json().await.unwrap();
                return (body["case_id"].as_str().unwrap().to_string(), began, t.elapsed().as_secs_f64());
            }
            429 => {
                let wait = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            s => panic!("upload {case_ref}: {s} {}", resp.text().await.unwrap_or_default()),
        }
    }
}

/// Start and end of a stage of a case view.
fn stage_span(view: &Value, stage: &str) -> (DateTime<Utc>, DateTime<Utc>) {
    let row = view["stages"].as_array().unwrap().iter().find(|s| s["stage"] == stage);
    let row = row.unwrap_or_else(|| panic!("no {stage} stage in {view}"));
    let at = |k: &str| row[k].as_str().unwrap_or_else(|| panic!("{stage}.{k} in {view}")).parse().unwrap();
    (at("started_at"), at("finished_at"))
}

/// One finished case: where its time went. The stages' spans come from the case view
/// (`stage_runs`); ingest's compute is the upload's start to its commit.
fn case_timing(view: &Value, began: DateTime<Utc>, upload_s: f64, zero: DateTime<Utc>) -> Value {
    assert_eq!(view["status"], "done", "{view}");
    let seg = view["analysis"]["segmentation_sha256"].as_str().unwrap_or_default();
    assert_eq!(seg.len(), 64, "no segmentation: {view}");
    let (_, ingested) = stage_span(view, "ingest");
    let (p0, p1) = stage_span(view, "preprocess");
    let (i0, i1) = stage_span(view, "infer");
    let ingest_s = seconds(began, ingested);
    let preprocess_s = seconds(p0, p1);
    let infer_s = seconds(i0, i1);
    let compute_s = ingest_s + preprocess_s + infer_s;
    let latency_s = seconds(began, i1);
    let attempts: Vec<i64> =
        view["stages"].as_array().unwrap().iter().map(|s| s["attempts"].as_i64().unwrap()).collect();
    json!({
        "case_ref": view["case_ref"], "uploaded_at_s": seconds(zero, began), "done_at_s": seconds(zero, i1),
        "upload_request_s": upload_s, "ingest_s": ingest_s, "preprocess_s": preprocess_s, "infer_s": infer_s,
        "inference_ms": view["analysis"]["inference_ms"], "compute_s": compute_s,
        "wait_before_preprocess_s": seconds(ingested, p0), "wait_before_infer_s": seconds(p1, i0),
        "latency_s": latency_s, "latency_over_compute": latency_s / compute_s, "attempts": attempts,
    })
}

async fn case_view(sys: &System, id: &str) -> Value {
    let (status, view) = sys.get_json(&format!("/api/v1/tenants/{TENANT}/cases/{id}")).await.unwrap();
    assert_eq!(status, 200, "{view}");
    view
}

/// One case uploaded alone; the client watches its row every 20 ms for the result.
async fn lone_case(sys: &System, token: &str, case_ref: &str, files: &Files) -> Value {
    let (id, began, upload_s) = upload(&sys.api, token, case_ref, files).await;
    let deadline = Instant::now() + Duration::from_secs(600);
    let seen = loop {
        let (status,): (String,) =
            sqlx::query_as("SELECT status FROM cases WHERE id = $1::uuid").bind(&id).fetch_one(&sys.db).await.unwrap();
        if status == "done" || status == "failed" {
            break Utc::now();
        }
        assert!(Instant::now() < deadline, "{}", sys.with_logs(anyhow::anyhow!("{case_ref} not done")));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut timing = case_timing(&case_view(sys, &id).await, began, upload_s, began);
    let seen_s = seconds(began, seen);
    timing["seen_by_client_s"] = json!(seen_s);
    timing["seen_over_compute"] = json!(seen_s / timing["compute_s"].as_f64().unwrap());
    timing
}

/// Every [`SAMPLE_EVERY`] until `stop`: the queue (the `n` queued cases without a result, and
/// those there by status) and each service's VmRSS/VmHWM.
async fn sample(
    sys_db: sqlx::PgPool,
    pids: Vec<(String, u32)>,
    n: usize,
    zero: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<Value> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let t = zero.elapsed().as_secs_f64();
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM cases WHERE case_ref LIKE 'queue-%' GROUP BY status")
                .fetch_all(&sys_db)
                .await
                .unwrap_or_default();
        let count = |s: &str| rows.iter().find(|(k, _)| k == s).map_or(0, |(_, c)| *c);
        let finished = (count("done") + count("failed")) as usize;
        let memory: serde_json::Map<String, Value> = pids
            .iter()
            .map(|(name, pid)| {
                let (rss, hwm) = memory_mib(*pid);
                (name.clone(), json!({"rss_mib": rss, "hwm_mib": hwm}))
            })
            .collect();
        samples.push(json!({
            "t_s": t, "not_done": n.saturating_sub(finished), "received": count("received"),
            "preprocessing": count("preprocessing"), "analyzing": count("analyzing"), "memory": memory,
        }));
    }
    samples
}

/// The queue: `n` uploads at once, sampled until every case has its result.
async fn queue(sys: &mut System, token: &str, n: usize, files: &Arc<Files>) -> Value {
    let pids: Vec<(String, u32)> =
        SERVICES.iter().map(|s| (s.to_string(), sys.service(s).child.id().unwrap())).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let zero = Instant::now();
    let zero_utc = Utc::now();
    let sampler = tokio::spawn(sample(sys.db.clone(), pids, n, zero, stop.clone()));
    let mut uploads = tokio::task::JoinSet::new();
    for i in 0..n {
        let (api, token, files) = (sys.api.clone(), token.to_string(), files.clone());
        uploads.spawn(async move {
            let case_ref = format!("queue-{i:03}");
            let (id, began, upload_s) = upload(&api, &token, &case_ref, &files).await;
            (id, began, upload_s)
        });
    }
    let uploaded = uploads.join_all().await;
    let deadline = Instant::now() + Duration::from_secs(120 + 120 * n as u64);
    loop {
        let (finished,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM cases WHERE case_ref LIKE 'queue-%' AND status IN ('done', 'failed')")
                .fetch_one(&sys.db)
                .await
                .unwrap();
        if finished as usize == n {
            break;
        }
        assert!(Instant::now() < deadline, "{}", sys.with_logs(anyhow::anyhow!("{finished} of {n} done")));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // One more sample with the queue empty, then stop.
    tokio::time::sleep(SAMPLE_EVERY).await;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap();
    let mut cases = Vec::new();
    for (id, began, upload_s) in &uploaded {
        cases.push(case_timing(&case_view(sys, id).await, *began, *upload_s, zero_utc));
    }
    cases.sort_by(|a, b| a["done_at_s"].as_f64().unwrap().total_cmp(&b["done_at_s"].as_f64().unwrap()));
    let first = cases.iter().map(|c| c["uploaded_at_s"].as_f64().unwrap()).fold(f64::INFINITY, f64::min);
    let last = cases.iter().map(|c| c["done_at_s"].as_f64().unwrap()).fold(0.0, f64::max);
    let field = |k: &str| cases.iter().map(|c| c[k].as_f64().unwrap()).collect::<Vec<f64>>();
    let max_rss: serde_json::Map<String, Value> = SERVICES
        .iter()
        .map(|s| {
            let m = samples.iter().map(|x| x["memory"][s]["rss_mib"].as_f64().unwrap()).fold(0.0, f64::max);
            (s.to_string(), json!(m))
        })
        .collect();
    json!({
        "cases": n, "wall_s": last - first, "cases_per_min": n as f64 * 60.0 / (last - first),
        "latency_s": stats(&field("latency_s")), "compute_s": stats(&field("compute_s")),
        "preprocess_s": stats(&field("preprocess_s")), "infer_s": stats(&field("infer_s")),
        "upload_request_s": stats(&field("upload_request_s")), "max_rss_mib": max_rss,
        "per_case": cases, "samples": samples,
    })
}

/// One infer worker count: a fresh system, a cold case, a lone case, then the queue.
async fn run(workers: usize, n: usize, input: &Input, full: bool, env: &[(&str, &str)]) -> Value {
    let load_before = loadavg();
    let mut sys = System::start_with(env, &SERVICES[..2]).await.unwrap();
    sys.start_service_with("infer", &[("GMMAS_WORKERS".into(), workers.to_string())]).await.unwrap();
    sys.create_tenant(TENANT).await.unwrap();
    let token = sys.token(TENANT, "clinician");
    let cold = lone_case(&sys, &token, "cold", &input.files).await;
    let alone = lone_case(&sys, &token, "alone", &input.files).await;
    let files = Arc::new(input.files.clone());
    let q = queue(&mut sys, &token, n, &files).await;
    let peak: serde_json::Map<String, Value> =
        SERVICES.iter().map(|s| (s.to_string(), json!(memory_mib(sys.service(s).child.id().unwrap()).1))).collect();
    // What the services ran with: this test's setting when it made one, else the harness's.
    let setting =
        |k: &str| env.iter().rev().find(|(key, _)| *key == k).map(|(_, v)| v.to_string()).or_else(|| sys.env_value(k));
    let model = setting("GMMAS_MODEL_PATH").unwrap_or_default();
    let threads = setting("GMMAS_THREADS").unwrap_or_default();
    sys.shutdown().await;
    json!({
        "date": Utc::now().to_rfc3339(), "infer_workers": workers, "queue": n,
        "input": {"name": input.name, "kind": input.kind, "mib": input.mib()},
        "model": Path::new(&model).file_name().map(|f| f.to_string_lossy().to_string()),
        "libtorch_threads": threads, "full": full,
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "cpu": cpu_model(),
                    "loadavg_before": load_before, "loadavg_after": loadavg()},
        "cold_case": cold, "alone": alone, "queue_run": q, "peak_rss_mib": peak,
    })
}

fn print_run(r: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let q = &r["queue_run"];
    let a = &r["alone"];
    let c = &r["cold_case"];
    eprintln!(
        "throughput: {} ({}, {:.1} MiB), model {}, libtorch threads {}, {} infer worker(s), {} cpus, load {} -> {}",
        r["input"]["name"].as_str().unwrap(),
        r["input"]["kind"].as_str().unwrap(),
        f(&r["input"]["mib"]),
        r["model"].as_str().unwrap_or("?"),
        r["libtorch_threads"].as_str().unwrap_or("?"),
        r["infer_workers"],
        r["machine"]["cpus"],
        r["machine"]["loadavg_before"].as_str().unwrap(),
        r["machine"]["loadavg_after"].as_str().unwrap(),
    );
    for (what, t) in [("cold first case", c), ("a case alone", a)] {
        eprintln!(
            "  {what}: upload -> result {:.2} s (seen by the client {:.2} s); stage compute {:.2} s = ingest {:.2} + \
             preprocess {:.2} + infer {:.2} (network {} ms); e2e / compute {:.3} ({:.3} as seen)",
            f(&t["latency_s"]),
            f(&t["seen_by_client_s"]),
            f(&t["compute_s"]),
            f(&t["ingest_s"]),
            f(&t["preprocess_s"]),
            f(&t["infer_s"]),
            t["inference_ms"],
            f(&t["latency_over_compute"]),
            f(&t["seen_over_compute"]),
        );
    }
    let l = &q["latency_s"];
    eprintln!(
        "  queue of {}: {:.1} s, {:.2} cases/min; upload -> result mean {:.1} s, median {:.1} s, p95 {:.1} s; \
         infer stage median {:.2} s, preprocess median {:.2} s",
        q["cases"],
        f(&q["wall_s"]),
        f(&q["cases_per_min"]),
        f(&l["mean"]),
        f(&l["median"]),
        f(&l["p95"]),
        f(&q["infer_s"]["median"]),
        f(&q["preprocess_s"]["median"]),
    );
    let peaks: Vec<String> = SERVICES
        .iter()
        .map(|s| format!("{s} {:.0} MiB (queue max RSS {:.0})", f(&r["peak_rss_mib"][s]), f(&q["max_rss_mib"][s])))
        .collect();
    eprintln!("  peak RSS (VmHWM): {}", peaks.join(", "));
}

fn colour(workers: u64) -> [u8; 3] {
    [BLUE, RED, GREEN, ORANGE][(workers.saturating_sub(1) as usize).min(3)]
}

fn label(workers: u64) -> String {
    format!("{workers} infer worker{}", if workers == 1 { "" } else { "s" })
}

/// The charts of the runs: latency by queue position, the queue draining, memory over time
/// and infer's memory against the queue.
fn draw(out: &Path, runs: &[Value]) -> anyhow::Result<()> {
    let pts = |v: &[Value], x: &dyn Fn(&Value) -> f64, y: &dyn Fn(&Value) -> f64| -> Vec<(f64, f64)> {
        v.iter().map(|p| (x(p), y(p))).collect()
    };
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let r0 = &runs[0];
    let what = format!("{}, {}", r0["input"]["name"].as_str().unwrap_or("?"), r0["model"].as_str().unwrap_or("?"));
    let n = r0["queue"].as_u64().unwrap_or(0);

    let mut latency = Figure::new(
        format!("Upload → result of each case, {n} uploaded at once ({what})"),
        "cases finished (the k-th result)",
        "upload → result (s)",
    )
    .size(900, 540)
    .legend_at(Corner::UpperLeft);
    for r in runs {
        let w = r["infer_workers"].as_u64().unwrap();
        let cases = r["queue_run"]["per_case"].as_array().unwrap();
        let p: Vec<(f64, f64)> =
            cases.iter().enumerate().map(|(k, c)| ((k + 1) as f64, num(&c["latency_s"]))).collect();
        latency.add(&label(w), &p, colour(w), Mark::LineDots);
    }
    let alone = num(&r0["alone"]["latency_s"]);
    let ideal: Vec<(f64, f64)> = (1..=n).map(|k| (k as f64, k as f64 * alone)).collect();
    latency.add(&format!("k × one case alone ({alone:.1} s, {})", label(1)), &ideal, GREY, Mark::Dashed);
    std::fs::write(out.join("latency.png"), latency.to_png()?)?;

    let mut drain = Figure::new(
        format!("Cases without a result while a queue of {n} drains ({what})"),
        "time since the queue was uploaded (s)",
        "cases not done",
    )
    .size(900, 540);
    for r in runs {
        let w = r["infer_workers"].as_u64().unwrap();
        let s = r["queue_run"]["samples"].as_array().unwrap();
        drain.add(&label(w), &pts(s, &|p| num(&p["t_s"]), &|p| num(&p["not_done"])), colour(w), Mark::Line);
    }
    std::fs::write(out.join("queue.png"), drain.to_png()?)?;

    // Room above the highest line for the legend; each (service, workers) its own colour.
    let rss_max = runs
        .iter()
        .flat_map(|r| r["queue_run"]["samples"].as_array().unwrap().iter())
        .flat_map(|p| SERVICES.map(|s| num(&p["memory"][s]["rss_mib"])))
        .fold(1.0, f64::max);
    let mut memory = Figure::new(
        format!("Resident memory (VmRSS) of each service while a queue of {n} drains"),
        "time since the queue was uploaded (s)",
        "VmRSS (MiB)",
    )
    .size(900, 540)
    .y_range(0.0, rss_max * 1.6)
    .legend_at(Corner::UpperRight);
    for r in runs {
        let w = r["infer_workers"].as_u64().unwrap();
        let s = r["queue_run"]["samples"].as_array().unwrap();
        let colours = if w == 1 { [BLUE, GREEN, ORANGE] } else { [RED, BLACK, GREY] };
        for (svc, c) in ["infer", "preprocess", "api"].into_iter().zip(colours) {
            let p = pts(s, &|p| num(&p["t_s"]), &|p| num(&p["memory"][svc]["rss_mib"]));
            memory.add(&format!("{svc}, {}", label(w)), &p, c, Mark::Line);
        }
    }
    std::fs::write(out.join("memory.png"), memory.to_png()?)?;

    let mut by_queue = Figure::new(
        format!("Infer's resident memory against the cases not yet done (queue of {n})"),
        "cases not done",
        "infer VmRSS (MiB)",
    )
    .size(900, 540)
    .y_range(0.0, rss_max * 1.1)
    .legend_at(Corner::LowerRight);
    for r in runs {
        let w = r["infer_workers"].as_u64().unwrap();
        let s = r["queue_run"]["samples"].as_array().unwrap();
        let p = pts(s, &|p| num(&p["not_done"]), &|p| num(&p["memory"]["infer"]["rss_mib"]));
        by_queue.add(&label(w), &p, colour(w), Mark::Dots);
    }
    std::fs::write(out.join("memory-vs-queue.png"), by_queue.to_png()?)?;
    Ok(())
}

/// GMMAS_THROUGHPUT_OUT, a relative path taken from the workspace root (tests run in `tests/`).
fn out_dir() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("GMMAS_THROUGHPUT_OUT")?);
    Some(if p.is_relative() { Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join(p) } else { p })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_of_cases_drains_with_timings_and_memory_recorded() {
    let cases_env = std::env::var("GMMAS_THROUGHPUT_CASES").ok();
    let full = cases_env.is_some();
    let n: usize = cases_env.and_then(|v| v.parse().ok()).unwrap_or(3);
    let workers: Vec<usize> = std::env::var("GMMAS_THROUGHPUT_WORKERS")
        .unwrap_or_else(|_| "1".into())
        .split(',')
        .map(|w| w.trim().parse().expect("GMMAS_THROUGHPUT_WORKERS: numbers separated by commas"))
        .collect();
    let input = if full {
        let (name, volumes) = gmmas_e2e::real_case_or_phantom();
        let kind = if name.starts_with("phantom") { "phantom, ../shared/data absent" } else { "real case" };
        let files = volumes.iter().map(|(m, v)| (m.as_str(), gmmas_imaging::write_volume(v, true))).collect();
        Input { name, kind, files }
    } else {
        let (_, files) = phantom_files(21, CI_DIMS);
        Input { name: format!("phantom {}x{}x{}", CI_DIMS[0], CI_DIMS[1], CI_DIMS[2]), kind: "phantom", files }
    };
    let bundled = gmmas_models::default_model_path().display().to_string();
    let adapted = gmmas_models::default_adapted_model_path().map(|p| p.display().to_string()).unwrap_or_default();
    let threads = std::env::var("GMMAS_THROUGHPUT_THREADS").unwrap_or_else(|_| "0".into());
    let uploads = n.max(8).to_string();
    let mut env: Vec<(&str, &str)> = vec![("GMMAS_MAX_CONCURRENT_UPLOADS", &uploads)];
    if full {
        env.extend([
            ("GMMAS_MODEL_PATH", bundled.as_str()),
            ("GMMAS_INCOMPLETE_MODEL_PATH", adapted.as_str()),
            ("GMMAS_THREADS", threads.as_str()),
        ]);
    }
    let out = out_dir();
    let mut runs = Vec::new();
    for &w in &workers {
        let r = run(w, n, &input, full, &env).await;
        print_run(&r);
        for case in r["queue_run"]["per_case"].as_array().unwrap().iter().chain([&r["cold_case"], &r["alone"]]) {
            for k in ["ingest_s", "preprocess_s", "infer_s"] {
                assert!(case[k].as_f64().unwrap() > 0.0, "{k} not positive: {case}");
            }
            assert!(case["inference_ms"].is_u64(), "{case}");
            // The stages run one after the other inside the case's upload -> result.
            assert!(case["latency_s"].as_f64().unwrap() >= case["compute_s"].as_f64().unwrap(), "{case}");
        }
        if let Some(dir) = &out {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(format!("workers-{w}.json")), serde_json::to_vec_pretty(&r).unwrap()).unwrap();
        }
        runs.push(r);
    }
    if let Some(dir) = &out {
        draw(dir, &runs).unwrap();
        eprintln!("throughput: wrote {}", dir.display());
    }
}

#[test]
#[ignore = "draws the charts again from GMMAS_THROUGHPUT_OUT/workers-*.json"]
fn redraw() {
    let dir = out_dir().expect("GMMAS_THROUGHPUT_OUT");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|f| f.to_string_lossy().starts_with("workers-")))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let runs: Vec<Value> = files.iter().map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()).collect();
    assert!(!runs.is_empty(), "no workers-*.json in {}", dir.display());
    runs.iter().for_each(print_run);
    draw(&dir, &runs).unwrap();
}
