//! `gmmas up`: starts every service as its own process against the configured NATS and
//! PostgreSQL, analyzes the example case through the HTTP API, prints it, serves until Ctrl-C.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use gmmas_contracts::http::{CaseCreated, CaseView};
use gmmas_imaging::LabelVolume;
use gmmas_phantom::{PhantomConfig, generate};
use gmmas_runtime::auth::Role;
use gmmas_runtime::supervise;

#[derive(Args)]
pub struct UpArgs {
    /// Address of the clinicians' API.
    #[arg(long, env = "GMMAS_API_ADDR", default_value = "127.0.0.1:8080")]
    pub api_addr: String,
    /// Folder for logs and run state.
    #[arg(long, default_value = ".gmmas")]
    pub state_dir: PathBuf,
    /// Tenant the example case is filed under.
    #[arg(long, default_value = "example-hospital")]
    pub tenant: String,
    /// Seed of the example phantom case.
    #[arg(long, default_value_t = 7)]
    pub example_seed: u64,
    /// Analyze this case folder (BraTS naming) instead of the example phantom.
    #[arg(long)]
    pub case_dir: Option<PathBuf>,
    /// Exit after the example instead of serving until Ctrl-C.
    #[arg(long)]
    pub once: bool,
    /// Database URL the services use (a role without DDL rights; migrations are applied first
    /// with GMMAS_DATABASE_URL). Unset: the services use GMMAS_DATABASE_URL and migrate.
    #[arg(long, env = "GMMAS_UP_DATABASE_URL")]
    pub service_database_url: Option<String>,
    /// A NATS server with one user per service (`gmmas nats-config`); unset: GMMAS_NATS_URL
    /// without credentials.
    #[arg(long, env = "GMMAS_UP_NATS_URL", requires = "nats_secrets")]
    pub secure_nats_url: Option<String>,
    /// Folder of the services' NATS password files (`<service>.password`).
    #[arg(long, env = "GMMAS_UP_NATS_SECRETS")]
    pub nats_secrets: Option<PathBuf>,
    /// CA certificate of the secured NATS server.
    #[arg(long, env = "GMMAS_UP_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// HS256 key that signs and verifies the API's tokens; made (0600) under
    /// `<state-dir>/secrets/api-jwt.key` when unset and missing.
    #[arg(long, env = "GMMAS_AUTH_KEY_FILE")]
    pub auth_key_file: Option<PathBuf>,
}

impl UpArgs {
    /// The environment of one service: its database role and its own bus user, when set up.
    fn service_env(&self, name: &str, key_file: &std::path::Path) -> Vec<(String, String)> {
        let mut env = vec![("GMMAS_LOG_FORMAT".to_string(), "json".to_string())];
        if matches!(name, "api" | "ingest") {
            env.push(("GMMAS_AUTH_KEY_FILE".into(), key_file.display().to_string()));
        }
        if let Some(url) = &self.service_database_url {
            env.push(("GMMAS_DATABASE_URL".into(), url.clone()));
            env.push(("GMMAS_MIGRATE_ON_START".into(), "false".into()));
        }
        if let (Some(url), Some(secrets)) = (&self.secure_nats_url, &self.nats_secrets) {
            env.push(("GMMAS_NATS_URL".into(), url.clone()));
            env.push(("GMMAS_NATS_USER".into(), name.into()));
            let pw = secrets.join(format!("{name}.password"));
            env.push(("GMMAS_NATS_PASSWORD_FILE".into(), pw.display().to_string()));
            if let Some(ca) = &self.nats_ca {
                env.push(("GMMAS_NATS_TLS_CA_FILE".into(), ca.display().to_string()));
            }
        }
        env
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let logs = args.state_dir.join("logs");
    let mut services = Vec::new();
    let result = async {
        let key_file = match &args.auth_key_file {
            Some(k) => k.clone(),
            None => ensure_key_file(&args.state_dir.join("secrets").join("api-jwt.key"))?,
        };
        // Migrations (the services may not run DDL) and the example tenant, as the migrations role.
        let url =
            std::env::var("GMMAS_DATABASE_URL").unwrap_or_else(|_| gmmas_runtime::CommonConfig::default().database_url);
        let admin_db = gmmas_runtime::db::connect_with(&url, Duration::from_secs(30), true).await?;
        sqlx::query("INSERT INTO tenants (id, created_by) VALUES ($1, 'gmmas up') ON CONFLICT DO NOTHING")
            .bind(&args.tenant)
            .execute(&admin_db)
            .await
            .context("creating the example tenant")?;
        admin_db.close().await;
        let secured = if args.secure_nats_url.is_some() { ", each as its own NATS user over TLS" } else { "" };
        let role = if args.service_database_url.is_some() { " and the database role without DDL" } else { "" };
        if !secured.is_empty() || !role.is_empty() {
            println!("Services run least-privileged{secured}{role}.");
        }
        for (i, name) in supervise::UP_SERVICES.iter().enumerate() {
            let addr = if *name == "api" { args.api_addr.clone() } else { format!("127.0.0.1:{}", 8081 + i) };
            let env = args.service_env(name, &key_file);
            let mut svc = supervise::start(name, &addr, &env, &logs)?;
            supervise::wait_ready(&mut svc, Duration::from_secs(120)).await?;
            println!("  {name:<10} ready on http://{addr}  (log {})", svc.log.display());
            services.push(svc);
        }
        // The report service (local LLM when configured, deterministic fallback otherwise).
        let addr = "127.0.0.1:8086".to_string();
        let mut svc = supervise::start("report", &addr, &args.service_env("report", &key_file), &logs)?;
        supervise::wait_ready(&mut svc, Duration::from_secs(120)).await?;
        println!("  {:<10} ready on http://{addr}  (log {})", "report", svc.log.display());
        services.push(svc);
        let api = format!("http://{}", args.api_addr);
        let client = clinician_client(&args, &key_file)?;
        let (case, truth) = submit_example(&client, &args, &api).await?;
        println!("\nExample case {case} submitted; waiting for the analysis...");
        let view = wait_done(&client, &api, &args.tenant, &case, Duration::from_secs(900)).await?;
        print_result(&view, &api, &args.tenant);
        if let Some(truth) = truth {
            compare_with_truth(&client, &view, &api, &truth).await?;
        }
        print_report(&client, &api, &args.tenant, &case).await;
        let token_file = args.state_dir.join("secrets").join("viewer-clinician.token");
        let token = issue(&key_file, &args.tenant, "viewer", Role::Clinician, Duration::from_secs(8 * 3600))?;
        write_private(&token_file, token.as_bytes())?;
        // Prometheus reads the API's and ingest's /metrics with an ml-engineer token (deploy/prometheus.yml).
        let metrics = issue(&key_file, &args.tenant, "prometheus", Role::MlEngineer, Duration::from_secs(30 * 86_400))?;
        write_private(&args.state_dir.join("secrets").join("metrics-ml-engineer.token"), metrics.as_bytes())?;
        println!("viewer           {api}/viewer/  (log in with the token in {}, valid 8 h;", token_file.display());
        println!(
            "                 more: gmmas token issue --tenant {} --role clinician --key-file {})",
            args.tenant,
            key_file.display()
        );
        if !args.once {
            println!("\nServing. API: {api}/api/v1/tenants/{}/cases   Ctrl-C stops everything.", args.tenant);
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        anyhow::Ok(())
    }
    .await;
    println!("\nStopping services...");
    for svc in services.iter_mut().rev() {
        supervise::stop(svc, Duration::from_secs(15)).await;
    }
    result
}

/// The API's signing key at `path`, made (32 random bytes, hex, mode 0600) when missing.
fn ensure_key_file(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    if !path.exists() {
        let key: [u8; 32] = rand::random();
        write_private(path, hex::encode(key).as_bytes())?;
    }
    Ok(path.to_path_buf())
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))
}

fn issue(key_file: &std::path::Path, tenant: &str, subject: &str, role: Role, ttl: Duration) -> anyhow::Result<String> {
    use gmmas_runtime::auth;
    let key = auth::read_key_file(key_file)?;
    let t = gmmas_contracts::TenantId::new(tenant).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
    Ok(auth::issue(&key, &auth::AuthConfig::default(), subject, &t, role, ttl)?)
}

/// An HTTP client that sends a clinician token of the example tenant on every request.
fn clinician_client(args: &UpArgs, key_file: &std::path::Path) -> anyhow::Result<reqwest::Client> {
    let token = issue(key_file, &args.tenant, "gmmas-up", Role::Clinician, Duration::from_secs(3600))?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
    Ok(reqwest::Client::builder().default_headers(headers).build()?)
}

/// Waits for the case's report and says which path wrote it and where to read it.
async fn print_report(client: &reqwest::Client, api: &str, tenant: &str, case: &str) {
    let url = format!("{api}/api/v1/tenants/{tenant}/cases/{case}/report");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(600) {
        if let Ok(resp) = client.get(&url).send().await
            && resp.status().is_success()
            && let Ok(r) = resp.json::<serde_json::Value>().await
        {
            let how = match r["path"].as_str() {
                Some("llm") => {
                    format!("written by the local LLM {} and validated", r["llm"]["model"].as_str().unwrap_or("?"))
                }
                _ => format!("deterministic fallback ({})", r["fallback_reason"].as_str().unwrap_or("?")),
            };
            println!(
                "report           {how}, {} ms, knowledge base {}",
                r["duration_ms"],
                r["kb_version"].as_str().unwrap_or("?")
            );
            println!("report page      {url}.html");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("report           not ready after 600 s; see the report service log");
}

/// Uploads the example; returns its case id and, for the phantom, its true segmentation.
async fn submit_example(
    client: &reqwest::Client,
    args: &UpArgs,
    api: &str,
) -> anyhow::Result<(String, Option<LabelVolume>)> {
    let mut form = reqwest::multipart::Form::new();
    let case_ref;
    let mut truth = None;
    if let Some(dir) = &args.case_dir {
        let files = gmmas_imaging::brats::discover_case(dir)?;
        case_ref = format!("{}-{}", files.name, chrono::Utc::now().format("%Y%m%dT%H%M%S"));
        for (m, path) in files.modalities {
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            form = form.part(m.as_str(), reqwest::multipart::Part::bytes(bytes).file_name("volume.nii.gz"));
        }
    } else {
        let seed = args.example_seed;
        let case =
            tokio::task::spawn_blocking(move || generate(&PhantomConfig { dims: [240, 240, 155], seed })).await?;
        case_ref = format!("example-phantom-{seed}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S"));
        for (m, v) in &case.volumes {
            let bytes = gmmas_imaging::write_volume(v, true);
            form = form.part(m.as_str(), reqwest::multipart::Part::bytes(bytes).file_name("volume.nii.gz"));
        }
        truth = Some(case.seg);
    }
    form = form.text("case_ref", case_ref);
    let resp = client
        .post(format!("{api}/api/v1/tenants/{}/cases", args.tenant))
        .multipart(form)
        .send()
        .await
        .context("uploading the example case")?;
    let status = resp.status();
    if !status.is_success() {
        bail!("upload refused ({status}): {}", resp.text().await.unwrap_or_default());
    }
    let created: CaseCreated = resp.json().await.context("reading the upload answer")?;
    Ok((created.case_id.to_string(), truth))
}

/// Downloads the segmentation and scores it against the phantom's known tumor.
async fn compare_with_truth(
    client: &reqwest::Client,
    view: &CaseView,
    api: &str,
    truth: &LabelVolume,
) -> anyhow::Result<()> {
    let analysis = view.analysis.as_ref().context("the case has no analysis")?;
    let url = format!("{api}{}", analysis.segmentation_url);
    let bytes = client.get(&url).send().await?.error_for_status()?.bytes().await?;
    let pred = gmmas_imaging::read_labels(&bytes, &gmmas_imaging::Limits::default())?;
    gmmas_imaging::same_grid(&pred.grid, &truth.grid).context("segmentation grid")?;
    let dice = |set: &dyn Fn(u8) -> bool| {
        let (mut both, mut sum) = (0usize, 0usize);
        for (p, t) in pred.data.iter().zip(&truth.data) {
            let (p, t) = (set(*p), set(*t));
            both += usize::from(p && t);
            sum += usize::from(p) + usize::from(t);
        }
        if sum == 0 { 1.0 } else { 2.0 * both as f64 / sum as f64 }
    };
    let truth_stats = gmmas_imaging::region_stats(truth);
    println!(
        "vs the phantom's true tumor ({:.1} mL): Dice WT {:.3}  TC {:.3}  ET {:.3}",
        truth_stats.wt_ml,
        dice(&|l| l != 0),
        dice(&|l| l == 1 || l == 4),
        dice(&|l| l == 4)
    );
    Ok(())
}

async fn wait_done(
    client: &reqwest::Client,
    api: &str,
    tenant: &str,
    case: &str,
    timeout: Duration,
) -> anyhow::Result<CaseView> {
    let start = Instant::now();
    loop {
        let resp = client.get(format!("{api}/api/v1/tenants/{tenant}/cases/{case}")).send().await?;
        if !resp.status().is_success() {
            bail!("reading the case: {} {}", resp.status(), resp.text().await.unwrap_or_default());
        }
        let view: CaseView = resp.json().await.context("reading the case view")?;
        match view.status.as_str() {
            "done" => return Ok(view),
            "failed" => {
                bail!("the case failed at {}: {}", view.error_stage.unwrap_or_default(), view.error.unwrap_or_default())
            }
            s if start.elapsed() > timeout => bail!("no result after {timeout:?} (status {s})"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn print_result(view: &CaseView, api: &str, tenant: &str) {
    println!("\n== Analysis of case {} ==", view.case_id);
    let Some(a) = &view.analysis else {
        println!("no analysis");
        return;
    };
    println!("model            {}", a.model_version);
    for s in &view.stages {
        let ms = s.duration_ms.map_or_else(|| "-".to_string(), |d| d.to_string());
        println!("stage {:<10} {:<8} {ms} ms", s.stage, s.status);
    }
    let (r, p) = (&a.regions, &a.probabilities);
    println!(
        "whole tumor      {:.1} mL  (NCR {:.1} mL {:.0}%, ED {:.1} mL {:.0}%, ET {:.1} mL {:.0}%)",
        r.wt_ml,
        r.ncr_ml,
        100.0 * r.ncr_fraction,
        r.ed_ml,
        100.0 * r.ed_fraction,
        r.et_ml,
        100.0 * r.et_fraction
    );
    println!(
        "P(GBM) {:.2}   P(IDH-mutant) {:.2}   P(1p/19q codeleted) {:.2}   P(MGMT methylated) {:.2}",
        p.grade_gbm, p.idh_mutant, p.codel_1p19q, p.mgmt_methylated
    );
    println!("case JSON        {api}/api/v1/tenants/{tenant}/cases/{}", view.case_id);
    println!("segmentation     {api}{}", a.segmentation_url);
    println!("Research use only: not a medical device; results must be reviewed by a clinician.");
}
