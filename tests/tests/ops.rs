//! Operations, end to end: the services run from the container image's layout and settings
//! (deploy/docker), every live `/metrics` passes `promtool check metrics`, and a real Prometheus
//! scrapes the running system and answers a query for the case counter.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gmmas_e2e::{System, phantom_files};
use gmmas_runtime::supervise;

const TENANT: &str = "ops-site";
/// The services of one site, in start order.
const SERVICES: [&str; 5] = ["ingest", "preprocess", "infer", "api", "report"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `ENV` settings of the Dockerfile's runtime stage, continuation lines joined.
fn image_env(dockerfile: &str) -> BTreeMap<String, String> {
    let stage = dockerfile.split("AS runtime").nth(1).expect("a runtime stage");
    let joined = stage.replace("\\\n", " ");
    let mut env = BTreeMap::new();
    for line in joined.lines().filter_map(|l| l.trim().strip_prefix("ENV ")) {
        for pair in line.split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV key=value");
            env.insert(k.to_string(), v.to_string());
        }
    }
    env
}

/// The asldro template of this machine's venv, when set-up installed it.
fn local_template() -> Option<PathBuf> {
    let venv = std::env::var_os("VIRTUAL_ENV")?;
    let lib = Path::new(&venv).join("lib");
    std::fs::read_dir(lib).ok()?.flatten().find_map(|e| {
        let p = e.path().join("site-packages/asldro/data/hrgt_icbm_2009a_nls_3t.nii.gz");
        p.exists().then_some(p)
    })
}

/// The brain-extraction network set-up converted: `GMMAS_BRAIN_MODEL_PATH`, else the cache's.
fn local_brain_model() -> Option<PathBuf> {
    if let Some(p) = gmmas_models::default_brain_model_path() {
        return Some(p);
    }
    let cache = std::env::var_os("GMMAS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/gmmas")))?;
    let p = cache.join("brain").join(gmmas_models::brain::BRAIN_MODEL_FILE);
    p.exists().then_some(p)
}

/// Installs the binaries with `deploy/docker/install.sh` under `root/opt/gmmas`, puts `model`
/// where the image's bundled model is, and makes the tree read-only; returns the image's
/// settings with `/opt/gmmas` moved under `root`.
fn install_image_layout(root: &Path, model: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let prefix = root.join("opt/gmmas");
    let mut cmd = Command::new(repo().join("deploy/docker/install.sh"));
    cmd.arg(supervise::bin_dir()?).arg(&prefix);
    if let Some(t) = local_template() {
        cmd.arg(t);
    }
    let out = cmd.output().context("running install.sh")?;
    if !out.status.success() {
        bail!("install.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let dockerfile = std::fs::read_to_string(repo().join("deploy/docker/Dockerfile"))?;
    let env = image_env(&dockerfile);
    // The image's bundled model, replaced by a tiny one: fast, and its version proves which file ran.
    let bundled = env["GMMAS_MODEL_PATH"].replace("/opt/gmmas", &prefix.display().to_string());
    std::fs::copy(model, &bundled).with_context(|| format!("copying the model to {bundled}"))?;
    // Its description beside it (architecture, version), as every bundled model has.
    std::fs::copy(model.with_extension("json"), Path::new(&bundled).with_extension("json"))?;
    // The image's brain-extraction network: this machine's, converted by scripts/setup.sh.
    let brain = env["GMMAS_BRAIN_MODEL_PATH"].replace("/opt/gmmas", &prefix.display().to_string());
    let local = local_brain_model().context("no brain-extraction network: run scripts/setup.sh")?;
    std::fs::copy(&local, &brain).with_context(|| format!("copying {} to {brain}", local.display()))?;
    if local.with_extension("json").exists() {
        std::fs::copy(local.with_extension("json"), Path::new(&brain).with_extension("json"))?;
    }
    let status = Command::new("chmod").args(["-R", "a-w"]).arg(&prefix).status()?;
    assert!(status.success());
    let prefix_s = prefix.display().to_string();
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    Ok(env
        .into_iter()
        // The process environment's PATH and library path stay this machine's.
        .filter(|(k, _)| !matches!(k.as_str(), "PATH" | "LD_LIBRARY_PATH" | "GMMAS_HTTP_ADDR"))
        .map(|(k, v)| {
            let v = if k == "TMPDIR" { tmp.display().to_string() } else { v.replace("/opt/gmmas", &prefix_s) };
            (k, v)
        })
        .collect())
}

fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if path.is_empty() {
        bail!("{name} is not installed; scripts/setup.sh installs Debian's prometheus package, which has it");
    }
    Ok(PathBuf::from(path))
}

async fn prometheus_query(base: &str, q: &str) -> anyhow::Result<serde_json::Value> {
    let v: serde_json::Value =
        reqwest::Client::new().get(format!("{base}/api/v1/query")).query(&[("query", q)]).send().await?.json().await?;
    Ok(v["data"]["result"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_layout_runs_and_prometheus_scrapes_it() {
    let promtool = tool("promtool").unwrap();
    let prometheus = tool("prometheus").unwrap();
    let mut sys = System::start_with(&[], &[]).await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let model = gmmas_e2e::tiny_model(root.path()).unwrap();
    let tiny_version = gmmas_models::Analyzer::load(&model, gmmas_models::Device::Cpu).unwrap().version().to_string();
    let env = install_image_layout(root.path(), &model).unwrap();
    let bin = root.path().join("opt/gmmas/bin");
    // The image's settings, with this test's bus and database; run from a folder of no source tree.
    let mut extra = env.clone();
    extra.retain(|(k, _)| k != "GMMAS_MIGRATE_ON_START" && k != "GMMAS_INCOMPLETE_MODEL_PATH");
    // Sweeps (and the storage statistics read with them) every two seconds.
    extra.push(("GMMAS_SWEEP_INTERVAL_S".into(), "2".into()));
    for name in SERVICES {
        sys.start_service_from(&bin, name, &extra, Some(root.path())).await.unwrap();
    }

    let (_, files) = phantom_files(11, [64, 64, 48]);
    let (status, created) = sys.upload(TENANT, "ops-001", files).await.unwrap();
    assert_eq!(status, 201, "{created}");
    let id = created["case_id"].as_str().unwrap().to_string();
    let view = sys.wait_case(TENANT, &id, Duration::from_secs(180)).await.unwrap();
    assert_eq!(view["status"], "done", "{view}");
    // The model the image's settings name ran (not the source tree's bundled one).
    assert_eq!(view["analysis"]["model_version"], tiny_version.as_str(), "{view}");

    // Every live /metrics passes promtool's lint.
    let dir = root.path().join("metrics");
    std::fs::create_dir_all(&dir).unwrap();
    for name in SERVICES {
        let text = sys.metrics(name).await.unwrap();
        assert!(text.contains("gmmas_"), "{name}: {text}");
        let out = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(write(&dir, name, &text)).unwrap())
            .output()
            .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics on {name}: {said}");
    }
    let infer = sys.metrics("infer").await.unwrap();
    let has = |name: &str, labels: &[&str], value: &str| {
        infer.lines().any(|l| {
            l.starts_with(&format!("{name}{{"))
                && labels.iter().all(|x| l.contains(x))
                && l.ends_with(&format!(" {value}"))
        })
    };
    let version = format!(r#"version="{tiny_version}""#);
    assert!(has("gmmas_model_info", &[r#"role="complete""#, &version], "1"), "{infer}");
    assert!(has("gmmas_inference_pass_seconds_count", &[r#"device="cpu""#], "1"), "{infer}");
    assert!(has("gmmas_consumer_pending_messages", &[r#"consumer="infer""#], "0"), "{infer}");
    // The object store holds the case's volumes, and the bus's storage counts them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ingest = sys.metrics("ingest").await.unwrap();
    let gauge = |name: &str| -> f64 {
        ingest
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let logs = || sys.with_logs(anyhow::anyhow!("storage statistics"));
    assert!(gauge("gmmas_object_store_bytes{bucket=\"gmmas-volumes\"") > 1000.0, "{ingest}\n{:#}", logs());
    assert!(gauge("gmmas_jetstream_storage_bytes") > 1000.0, "{ingest}\n{:#}", logs());
    // A real Prometheus scrapes every service (API and ingest with an ml-engineer token).
    let token = dir.join("token");
    std::fs::write(&token, sys.token("ops", "ml-engineer")).unwrap();
    // One static target per service, labelled with its name as the chart's ServiceMonitors do.
    let targets: String = sys
        .services
        .iter()
        .map(|s| format!("      - targets: [\"{}\"]\n        labels: {{ service: {} }}\n", s.http_addr, s.name))
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gmmas\n    honor_labels: true\n    authorization:\n      type: Bearer\n      credentials_file: {}\n    static_configs:\n{targets}",
        token.display(),
    );
    let conf = write(&dir, "prometheus.yml", &config);
    let port = supervise::free_port().unwrap();
    let mut prom = tokio::process::Command::new(&prometheus)
        .arg(format!("--config.file={}", conf.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let (up, done) = loop {
        let up = prometheus_query(&base, "sum(up{job=\"gmmas\"})").await.ok();
        let done = prometheus_query(&base, "sum(gmmas_messages_total{stage=\"infer\",outcome=\"done\"})").await.ok();
        let value = |r: &Option<serde_json::Value>| {
            r.as_ref().and_then(|r| r[0]["value"][1].as_str().and_then(|s| s.parse::<f64>().ok())).unwrap_or(0.0)
        };
        let (u, d) = (value(&up), value(&done));
        if (u >= SERVICES.len() as f64 && d >= 1.0) || started.elapsed() > Duration::from_secs(90) {
            break (u, d);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    assert_eq!(up, SERVICES.len() as f64, "every target up; prometheus log:\n{log}");
    assert_eq!(done, 1.0, "the case counter as Prometheus scraped it");
    // With GMMAS_DASHBOARD_PNG set, the operations dashboard is drawn from this Prometheus.
    // More traffic first: a stream of cases over a few minutes, one of them bad input.
    if let Ok(png) = std::env::var("GMMAS_DASHBOARD_PNG") {
        let mut ids = Vec::new();
        for seed in 0..8u64 {
            let (_, mut files) = phantom_files(20 + seed, [64, 64, 48]);
            if seed == 5 {
                files[0].1 = b"not a NIfTI file".to_vec();
            }
            let (status, created) = sys.upload(TENANT, &format!("ops-load-{seed}"), files).await.unwrap();
            if status == 201 {
                ids.push(created["case_id"].as_str().unwrap().to_string());
            }
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
        for id in ids {
            sys.wait_case(TENANT, &id, Duration::from_secs(180)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(20)).await;
        let python = std::env::var("GMMAS_OPS_PYTHON").unwrap_or_else(|_| "python3".into());
        let status = Command::new(python)
            .arg(repo().join("scripts/render-dashboard.py"))
            .args(["--prometheus", &base, "--minutes", "5", "--out", &png])
            .arg("--dashboard")
            .arg(repo().join("helm/gmmas/files/dashboards/gmmas.json"))
            .status()
            .unwrap();
        assert!(status.success());
    }
    let _ = prom.kill().await;
    sys.shutdown().await;
    // Writable again, so that the temporary folder can be removed.
    let _ = Command::new("chmod").args(["-R", "u+w"]).arg(root.path()).status();
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn the_dockerfile_env_is_read() {
    let env = image_env(&std::fs::read_to_string(repo().join("deploy/docker/Dockerfile")).unwrap());
    assert_eq!(env["GMMAS_SHARE_DIR"], "/opt/gmmas/share");
    assert!(env["GMMAS_MODEL_PATH"].starts_with("/opt/gmmas/share/weights/"));
}
