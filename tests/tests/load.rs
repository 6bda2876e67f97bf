//! Load: many concurrent uploads over loopback. Clients that get 429 wait for Retry-After and
//! try again; every upload must end accepted (0 errors), the 429s must show in the metrics,
//! and the peak memory of the api and ingest processes (half the uploads each) is printed.
//!
//! CI runs 24 uploads; `GMMAS_LOAD_UPLOADS=100 cargo test --release -p gmmas-e2e --test load
//! -- --nocapture` runs the full version.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use std::time::{Duration, Instant};

use gmmas_e2e::{System, phantom_files};

const TENANT: &str = "hospital-a";

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_all_succeed_with_backpressure_and_bounded_memory() {
    let n: usize = std::env::var("GMMAS_LOAD_UPLOADS").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    // Only the upload path runs: nothing downstream competes for the two cores.
    let mut sys = System::start_with(&[("GMMAS_MAX_CONCURRENT_UPLOADS", "4")], &["ingest", "api"]).await.unwrap();
    sys.create_tenant(TENANT).await.unwrap();
    let (_, files) = phantom_files(77, [160, 160, 120]);
    let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let ingest = format!("http://{}/v1", sys.service("ingest").http_addr);
    for i in 0..n {
        // Half through the API, half straight to ingest: both run the same upload path.
        let base = if i % 2 == 0 { format!("{}/api/v1", sys.api) } else { ingest.clone() };
        let files = files.clone();
        let token = sys.token(TENANT, "clinician");
        tasks.spawn(async move {
            let client = reqwest::Client::new();
            let mut throttled = 0u32;
            loop {
                let mut form = reqwest::multipart::Form::new().text("case_ref", format!("load-{i:03}"));
                for (name, b) in &files {
                    form =
                        form.part(name.to_string(), reqwest::multipart::Part::bytes(b.clone()).file_name("x.nii.gz"));
                }
                let resp = client
                    .post(format!("{base}/tenants/{TENANT}/cases"))
                    .bearer_auth(&token)
                    .multipart(form)
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 201 => return Ok(throttled),
                    Ok(r) if r.status() == 429 => {
                        throttled += 1;
                        let wait: u64 =
                            r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1);
                        // Spread the retries a little so that they do not arrive together.
                        tokio::time::sleep(Duration::from_millis(wait * 200 + (i as u64 % 7) * 50)).await;
                    }
                    Ok(r) => return Err(format!("upload {i}: {} {}", r.status(), r.text().await.unwrap_or_default())),
                    Err(e) => return Err(format!("upload {i}: {e}")),
                }
            }
        });
    }
    let mut errors = Vec::new();
    let mut throttled = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(t) => throttled += t,
            Err(e) => errors.push(e),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    assert!(errors.is_empty(), "{errors:?}");
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM cases").fetch_one(&sys.db).await.unwrap();
    assert_eq!(count as usize, n);
    let mut rejected = 0.0;
    for name in ["api", "ingest"] {
        let metrics = sys.metrics(name).await.unwrap();
        rejected += metrics
            .lines()
            .filter(|l| l.starts_with("gmmas_http_rejected_total{reason=\"busy\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert_eq!(rejected as u32, throttled);
    let api_rss = peak_rss_mib(sys.service("api").child.id().unwrap());
    let ingest_rss = peak_rss_mib(sys.service("ingest").child.id().unwrap());
    eprintln!(
        "load: {n} concurrent uploads of {:.1} MiB each (half to api, half to ingest), 0 errors, {throttled} \
         answered 429 then retried, {seconds:.1} s, peak RSS api {api_rss:.0} MiB, ingest {ingest_rss:.0} MiB",
        bytes as f64 / 1048576.0
    );
    sys.shutdown().await;
}
