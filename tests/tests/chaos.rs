//! The fault harness: cases flow through the running system while a randomly chosen service is
//! killed with SIGKILL every few seconds, NATS is killed and restarted once and PostgreSQL is
//! restarted once. Afterwards every case is `done` or `failed` with a reason (none stuck),
//! each done case has exactly one analysis, no event was published twice, and the object
//! store holds exactly the objects the database references.
//!
//! CI runs 12 cases; `GMMAS_CHAOS_CASES=50 cargo test --release -p gmmas-e2e --test chaos`
//! runs the full version.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use gmmas_contracts::{self as contracts, ScanAnalyzed};
use gmmas_e2e::{PrivatePg, System, phantom_files};
use rand::SeedableRng;
use rand::seq::SliceRandom;

const TENANT: &str = "hospital-a";
const DIMS: [usize; 3] = [48, 48, 40];

/// Uploads until the system answers (a killed api or a restarting database refuses for a
/// while); a 409 means an earlier try went through. Returns the case id.
async fn upload_until_accepted(sys: &System, case_ref: &str, files: Vec<(&'static str, Vec<u8>)>) -> String {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok((status, body)) = sys.upload(TENANT, case_ref, files.clone()).await {
            match status {
                201 => return body["case_id"].as_str().unwrap().to_string(),
                409 => {
                    let row: Option<(uuid::Uuid,)> = sqlx::query_as("SELECT id FROM cases WHERE case_ref = $1")
                        .bind(case_ref)
                        .fetch_optional(&sys.db)
                        .await
                        .ok()
                        .flatten();
                    if let Some((id,)) = row {
                        return id.to_string();
                    }
                }
                _ => {}
            }
        }
        assert!(Instant::now() < deadline, "upload of {case_ref} never accepted");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cases_survive_killed_services_and_restarted_nats_and_postgres() {
    let n: usize = std::env::var("GMMAS_CHAOS_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let pg = PrivatePg::start().unwrap();
    let mut sys = System::start_on(
        &pg.url(),
        &[
            ("GMMAS_ACK_WAIT_S", "4"),
            ("GMMAS_RETRY_BACKOFF_S", "0.5"),
            ("GMMAS_RETRY_BACKOFF_MAX_S", "5"),
            ("GMMAS_MAX_DELIVER", "20"),
            ("GMMAS_SWEEP_INTERVAL_S", "2"),
            ("GMMAS_STALE_AFTER_S", "20"),
            ("GMMAS_MAX_REDRIVES", "5"),
            ("GMMAS_ORPHAN_GRACE_S", "5"),
        ],
        &gmmas_runtime::supervise::SERVICES,
    )
    .await
    .unwrap();
    let started = Instant::now();
    // Kills cycle through every kind of service, in a random order each round.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20261201);
    let mut order: Vec<&str> = Vec::new();
    let mut ids = Vec::new();
    let mut kills: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut nats_restarted, mut pg_restarted) = (false, false);
    for i in 0..n {
        let (_, files) = phantom_files(1000 + i as u64, DIMS);
        ids.push(upload_until_accepted(&sys, &format!("chaos-{i:03}"), files).await);
        // Every other case: SIGKILL a random service and start it again.
        if i % 2 == 1 {
            if order.is_empty() {
                order = gmmas_runtime::supervise::SERVICES.to_vec();
                order.shuffle(&mut rng);
            }
            let name = order.pop().unwrap();
            sys.service(name).child.start_kill().unwrap();
            sys.service(name).child.wait().await.unwrap();
            *kills.entry(name).or_default() += 1;
            sys.start_service(name).await.unwrap();
            if name == "api" {
                sys.api = format!("http://{}", sys.service("api").http_addr);
            }
        }
        if i == n / 3 && !nats_restarted {
            sys.restart_nats().await.unwrap();
            nats_restarted = true;
        }
        if i == 2 * n / 3 && !pg_restarted {
            pg.restart().unwrap();
            pg_restarted = true;
        }
    }
    // Everything settles: every case done or failed with a reason.
    let deadline = Instant::now() + Duration::from_secs(600);
    let open: Vec<(uuid::Uuid, String)> = loop {
        let open: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT id, status FROM cases WHERE status NOT IN ('done', 'failed')")
                .fetch_all(&sys.db)
                .await
                .unwrap_or_default();
        if open.is_empty() || Instant::now() > deadline {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(open.is_empty(), "{}", sys.with_logs(anyhow::anyhow!("stuck cases: {open:?}")));
    let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT c.status, c.error, (SELECT count(*) FROM analyses a WHERE a.case_id = c.id) FROM cases c",
    )
    .fetch_all(&sys.db)
    .await
    .unwrap();
    assert_eq!(rows.len(), n);
    let mut done = 0;
    for (status, error, analyses) in &rows {
        match status.as_str() {
            "done" => {
                assert_eq!(*analyses, 1);
                done += 1;
            }
            _ => assert!(error.as_deref().is_some_and(|e| !e.is_empty()) && *analyses == 0, "{status} {error:?}"),
        }
    }
    // No event twice: one scan.analyzed per done case.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let analyzed = sys.stream_messages(&format!("gmmas.{TENANT}.scan.analyzed")).await.unwrap();
    let cases: Vec<String> =
        analyzed.iter().map(|p| contracts::decode::<ScanAnalyzed>(p).unwrap().case_id.to_string()).collect();
    let unique: BTreeSet<&String> = cases.iter().collect();
    assert_eq!((cases.len(), unique.len()), (done, done), "scan.analyzed events per done case");
    // No orphan objects once the sweeper has had its grace period.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut bad = Vec::new();
        for id in &ids {
            let (extra, missing) = sys.object_mismatch(TENANT, id).await.unwrap();
            if !extra.is_empty() || !missing.is_empty() {
                bad.push((id.clone(), extra, missing));
            }
        }
        if bad.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "objects out of step with the ledger: {bad:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "chaos: {n} cases, {done} done, {} failed, kills {kills:?}, NATS and PostgreSQL restarted once, {:.0} s",
        n - done,
        started.elapsed().as_secs_f64()
    );
    sys.shutdown().await;
}
