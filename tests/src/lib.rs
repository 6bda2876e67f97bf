//! The end-to-end harness: a private nats-server on a free port, a fresh PostgreSQL database,
//! and every service started as its own process from the release binaries (like `gmmas up`).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

pub mod llm;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gmmas_phantom::{PhantomCase, PhantomConfig, generate};
use gmmas_runtime::supervise::{self, Service};
use gmmas_runtime::worker::StageRuntime;
use serde_json::Value;
use sqlx::PgPool;
use tokio::process::{Child, Command};

/// A running GMMAS system, torn down on drop.
pub struct System {
    pub api: String,
    pub nats_url: String,
    pub db_url: String,
    pub db: PgPool,
    pub services: Vec<Service>,
    env: Vec<(String, String)>,
    logs: PathBuf,
    admin_url: String,
    db_name: String,
    nats: Child,
    pub nats_port: u16,
    nats_conf: Option<PathBuf>,
    /// The HS256 key the API verifies tokens with (the harness acts as the token issuer).
    auth_key: Vec<u8>,
    _dir: tempfile::TempDir,
}

/// Base URL of a PostgreSQL server where test databases may be created.
pub fn admin_url() -> String {
    std::env::var("GMMAS_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Writes a tiny seeded model (fast on CPU) and returns its path.
pub fn tiny_model(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("tiny.safetensors");
    if !path.exists() {
        let cfg = gmmas_models::ModelConfig::profile("tiny")?;
        gmmas_models::Analyzer::new_seeded(cfg, 1, gmmas_models::Device::Cpu)?.save(&path)?;
    }
    Ok(path)
}

/// Writes a second tiny seeded model, registered for cases missing a sequence, and returns its path.
pub fn tiny_incomplete_model(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("tiny-incomplete.safetensors");
    if !path.exists() {
        let cfg = gmmas_models::ModelConfig::profile("tiny")?;
        gmmas_models::Analyzer::new_seeded(cfg, 7, gmmas_models::Device::Cpu)?.save(&path)?;
    }
    Ok(path)
}

impl System {
    /// Starts NATS, a fresh database and the four case services; `extra` env applies to every service.
    pub async fn start(extra: &[(&str, &str)]) -> anyhow::Result<System> {
        Self::start_with(extra, &supervise::SERVICES).await
    }

    /// Starts NATS, a fresh database and the named services (in order; `api` sets [`System::api`]).
    pub async fn start_with(extra: &[(&str, &str)], services: &[&str]) -> anyhow::Result<System> {
        Self::start_on(&admin_url(), extra, services).await
    }

    /// As [`System::start_with`], on the PostgreSQL server at `admin_url`.
    pub async fn start_on(admin_url: &str, extra: &[(&str, &str)], services: &[&str]) -> anyhow::Result<System> {
        let dir = tempfile::tempdir()?;
        let port = supervise::free_port()?;
        let nats = start_nats(dir.path(), port).await?;
        let nats_url = format!("nats://127.0.0.1:{port}");

        let admin_url = admin_url.to_string();
        let db_name = format!("gmmas_test_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPool::connect(&admin_url).await.with_context(|| format!("connecting to {admin_url}"))?;
        let create = format!("CREATE DATABASE {db_name}");
        sqlx::query(&create).execute(&admin).await?;
        admin.close().await;
        let db_url = format!("{}/{db_name}", admin_url.rsplit_once('/').map(|(a, _)| a).unwrap_or(&admin_url));

        let model = tiny_model(dir.path())?;
        let auth_key = hex::encode(rand::random::<[u8; 32]>()).into_bytes();
        let key_file = dir.path().join("api-jwt.key");
        std::fs::write(&key_file, &auth_key)?;
        let mut env: Vec<(String, String)> = vec![
            ("GMMAS_AUTH_KEY_FILE".into(), key_file.display().to_string()),
            ("GMMAS_NATS_URL".into(), nats_url.clone()),
            ("GMMAS_DATABASE_URL".into(), db_url.clone()),
            ("GMMAS_MODEL_PATH".into(), model.display().to_string()),
            ("GMMAS_INCOMPLETE_MODEL_PATH".into(), tiny_incomplete_model(dir.path())?.display().to_string()),
            ("GMMAS_THREADS".into(), "1".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let logs = dir.path().join("logs");
        let mut sys = System {
            api: String::new(),
            nats_url,
            db: gmmas_runtime::db::connect(&db_url, Duration::from_secs(10)).await?,
            db_url,
            services: Vec::new(),
            env,
            logs,
            admin_url,
            db_name,
            nats,
            nats_port: port,
            nats_conf: None,
            auth_key,
            _dir: dir,
        };
        for name in services {
            sys.start_service(name).await?;
        }
        if services.contains(&"api") {
            sys.api = format!("http://{}", sys.service("api").http_addr);
        }
        Ok(sys)
    }

    /// Starts (or restarts) one service on a fresh port.
    pub async fn start_service(&mut self, name: &str) -> anyhow::Result<()> {
        self.start_service_with(name, &[]).await
    }

    /// [`System::start_service`] with environment of this service alone on top.
    pub async fn start_service_with(&mut self, name: &str, extra: &[(String, String)]) -> anyhow::Result<()> {
        let bin = supervise::bin_dir()?;
        self.start_service_from(&bin, name, extra, None).await
    }

    /// [`System::start_service_with`] with the binary from `bin_dir`, run in `cwd` when given.
    pub async fn start_service_from(
        &mut self,
        bin_dir: &std::path::Path,
        name: &str,
        extra: &[(String, String)],
        cwd: Option<&std::path::Path>,
    ) -> anyhow::Result<()> {
        self.services.retain(|s| s.name != name);
        let addr = format!("127.0.0.1:{}", supervise::free_port()?);
        let mut env = self.env.clone();
        env.extend(extra.iter().cloned());
        let mut svc = supervise::start_from(bin_dir, name, &addr, &env, &self.logs, cwd)?;
        supervise::wait_ready(&mut svc, Duration::from_secs(60)).await.map_err(|e| self.with_logs(e))?;
        self.services.push(svc);
        if name == "api" {
            self.api = format!("http://{addr}");
        }
        Ok(())
    }

    /// Sets an environment variable for services started from now on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    pub fn service(&mut self, name: &str) -> &mut Service {
        self.services.iter_mut().find(|s| s.name == name).expect("service started")
    }

    /// The error with the tail of every service log, for failing tests.
    pub fn with_logs(&self, e: anyhow::Error) -> anyhow::Error {
        let mut text = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.logs) {
            for entry in entries.flatten() {
                let body = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = body.lines().rev().take(15).collect();
                text.push_str(&format!("\n--- {} ---\n", entry.path().display()));
                for l in tail.into_iter().rev() {
                    text.push_str(l);
                    text.push('\n');
                }
            }
        }
        e.context(text)
    }

    /// A signed API token for `tenant` with `role` (clinician, ml-engineer, admin), valid 1 h.
    pub fn token(&self, tenant: &str, role: &str) -> String {
        use gmmas_runtime::auth;
        let role = auth::Role::parse(role).expect("a GMMAS role");
        let t = gmmas_contracts::TenantId::new(tenant).expect("a valid tenant id");
        auth::issue(
            &self.auth_key,
            &auth::AuthConfig::default(),
            &format!("test-{role}"),
            &t,
            role,
            Duration::from_secs(3600),
        )
        .expect("signing a token")
    }

    /// Signs arbitrary claims with the system's key (for expired or otherwise unusual tokens).
    pub fn sign(&self, claims: &gmmas_runtime::auth::Claims) -> String {
        gmmas_runtime::auth::sign(&self.auth_key, claims).expect("signing claims")
    }

    /// The value of an environment variable the services are started with.
    pub fn env_value(&self, key: &str) -> Option<String> {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    /// The token the harness sends to `path`: a clinician of the tenant the path names, an
    /// ml-engineer for the registry, training runs and metrics, an admin for `/api/v1/admin`.
    pub fn token_for_path(&self, path: &str) -> String {
        let segs: Vec<&str> = path.split('?').next().unwrap_or("").split('/').collect();
        match segs.as_slice() {
            ["", "api", "v1", "tenants", t, ..] => self.token(t, "clinician"),
            ["", "api", "v1", "admin", ..] => self.token("admin", "admin"),
            _ => self.token("ops", "ml-engineer"),
        }
    }

    /// A request to the API at `path` carrying [`System::token_for_path`].
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new().request(method, format!("{}{path}", self.api)).bearer_auth(self.token_for_path(path))
    }

    /// Creates a tenant (as an administrator would); an existing one is left as it is.
    pub async fn create_tenant(&self, tenant: &str) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO tenants (id, created_by) VALUES ($1, 'test') ON CONFLICT DO NOTHING")
            .bind(tenant)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// Uploads files (form field name -> bytes) as one case (creating the tenant when needed).
    pub async fn upload(
        &self,
        tenant: &str,
        case_ref: &str,
        files: Vec<(&str, Vec<u8>)>,
    ) -> anyhow::Result<(u16, Value)> {
        self.create_tenant(tenant).await?;
        let mut form = reqwest::multipart::Form::new().text("case_ref", case_ref.to_string());
        for (name, bytes) in files {
            form = form.part(name.to_string(), reqwest::multipart::Part::bytes(bytes).file_name("x.nii.gz"));
        }
        let resp = self
            .request(reqwest::Method::POST, &format!("/api/v1/tenants/{tenant}/cases"))
            .multipart(form)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    pub async fn get_json(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let resp = self.request(reqwest::Method::GET, path).send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// Polls a case until it is `done` or `failed`.
    pub async fn wait_case(&self, tenant: &str, case_id: &str, timeout: Duration) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            let (_, v) = self.get_json(&format!("/api/v1/tenants/{tenant}/cases/{case_id}")).await?;
            if matches!(v["status"].as_str(), Some("done" | "failed")) {
                return Ok(v);
            }
            if start.elapsed() > timeout {
                return Err(self.with_logs(anyhow::anyhow!("case {case_id} not finished after {timeout:?}: {v}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `stage` of a case has been taken (a `stage_runs` row exists) and returns its status.
    pub async fn wait_stage_taken(&self, case_id: &str, stage: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let row: Option<(String,)> =
                sqlx::query_as("SELECT status FROM stage_runs WHERE case_id = $1::uuid AND stage = $2")
                    .bind(case_id)
                    .bind(stage)
                    .fetch_optional(&self.db)
                    .await?;
            if let Some((status,)) = row {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(self.with_logs(anyhow::anyhow!("{stage} never took case {case_id}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the NATS server (SIGKILL) and starts it again on the same port and store (and
    /// configuration, when it has one).
    pub async fn restart_nats(&mut self) -> anyhow::Result<()> {
        self.nats.start_kill()?;
        self.nats.wait().await?;
        self.nats = match &self.nats_conf {
            Some(conf) => start_nats_conf(conf, &self.logs, self.nats_port).await?,
            None => start_nats(self._dir.path(), self.nats_port).await?,
        };
        Ok(())
    }

    /// Replaces the NATS server with one run from `conf` (which must listen on
    /// [`System::nats_port`]); it logs to `nats.log` beside the services' logs.
    pub async fn restart_nats_with(&mut self, conf: &std::path::Path) -> anyhow::Result<()> {
        self.nats_conf = Some(conf.to_path_buf());
        self.restart_nats().await
    }

    /// This system's scratch folder (removed with it).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Stops one service (SIGTERM, then kill) and forgets it.
    pub async fn stop_service(&mut self, name: &str) {
        if let Some(svc) = self.services.iter_mut().find(|s| s.name == name) {
            supervise::stop(svc, Duration::from_secs(20)).await;
        }
        self.services.retain(|s| s.name != name);
    }

    /// A stage runtime in this test process, on the system's bus and database, with no relay
    /// listening: what it commits is published only by the services' own relays. `overrides`
    /// adjusts its settings.
    pub async fn runtime(
        &self,
        overrides: impl FnOnce(&mut gmmas_runtime::CommonConfig),
    ) -> anyhow::Result<StageRuntime> {
        let mut config = gmmas_runtime::CommonConfig {
            nats_url: self.nats_url.clone(),
            database_url: self.db_url.clone(),
            ..Default::default()
        };
        overrides(&mut config);
        Ok(StageRuntime {
            bus: gmmas_runtime::bus::Bus::connect_with(&config).await?,
            db: self.db.clone(),
            metrics: gmmas_runtime::metrics::Metrics::new("test"),
            relay: gmmas_runtime::outbox::RelayHandle::default(),
            config,
        })
    }

    /// Payloads of every message in the stream on `subject`, oldest first.
    pub async fn stream_messages(&self, subject: &str) -> anyhow::Result<Vec<bytes::Bytes>> {
        use futures::StreamExt;
        let client = async_nats::connect(&self.nats_url).await?;
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(gmmas_contracts::STREAM).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                filter_subject: subject.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut out = Vec::new();
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(100)
                .expires(Duration::from_millis(500))
                .messages()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let before = out.len();
            while let Some(Ok(m)) = batch.next().await {
                out.push(m.payload.clone());
            }
            if out.len() == before {
                return Ok(out);
            }
        }
    }

    /// A service's Prometheus text.
    pub async fn metrics(&mut self, name: &str) -> anyhow::Result<String> {
        let addr = self.service(name).http_addr.clone();
        let token = self.token("ops", "ml-engineer");
        Ok(reqwest::Client::new().get(format!("http://{addr}/metrics")).bearer_auth(token).send().await?.text().await?)
    }

    /// Objects the ledger and the store disagree on for a case's prefix: (in the store but not
    /// live in the ledger, live in the ledger but not in the store).
    pub async fn object_mismatch(&self, tenant: &str, case_id: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let bus = gmmas_runtime::bus::Bus::connect(&self.nats_url).await?;
        let prefix = format!("{tenant}/{case_id}/");
        let stored: std::collections::BTreeSet<String> = bus
            .list_keys(gmmas_contracts::VOLUMES_BUCKET)
            .await?
            .into_iter()
            .filter(|k| k.starts_with(&prefix))
            .collect();
        let live: Vec<(String,)> =
            sqlx::query_as("SELECT key FROM objects WHERE state = 'live' AND key LIKE $1 || '%'")
                .bind(&prefix)
                .fetch_all(&self.db)
                .await?;
        let live: std::collections::BTreeSet<String> = live.into_iter().map(|(k,)| k).collect();
        Ok((stored.difference(&live).cloned().collect(), live.difference(&stored).cloned().collect()))
    }

    /// Stops every service (SIGTERM) and drops the test database.
    pub async fn shutdown(mut self) {
        for s in self.services.iter_mut() {
            supervise::stop(s, Duration::from_secs(10)).await;
        }
        self.db.close().await;
        if let Ok(admin) = PgPool::connect(&self.admin_url).await {
            let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name);
            let _ = sqlx::query(&drop).execute(&admin).await;
        }
    }
}

async fn start_nats(dir: &std::path::Path, port: u16) -> anyhow::Result<Child> {
    let nats = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.join("nats"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting nats-server (is it installed? scripts/setup.sh installs it)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("nats-server did not listen on {port}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(nats)
}

async fn start_nats_conf(conf: &std::path::Path, logs: &std::path::Path, port: u16) -> anyhow::Result<Child> {
    std::fs::create_dir_all(logs)?;
    let nats = Command::new("nats-server")
        .arg("-c")
        .arg(conf)
        .arg("-l")
        .arg(logs.join("nats.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting nats-server with a configuration file")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("nats-server ({}) did not listen on {port}", conf.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(nats)
}

/// A PostgreSQL server of this test alone (so that it can be restarted), stopped on drop.
pub struct PrivatePg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePg {
    /// initdb + start on a free port (as the `postgres` user when running as root).
    pub fn start() -> anyhow::Result<PrivatePg> {
        let initdb = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL binaries (scripts/setup.sh installs them)")?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .max()
            .context("no initdb under /usr/lib/postgresql/*/bin")?;
        let dir = tempfile::tempdir()?;
        let as_postgres = std::process::Command::new("id").arg("-u").output()?.stdout.starts_with(b"0\n");
        if as_postgres {
            std::process::Command::new("chown").args(["-R", "postgres"]).arg(dir.path()).status()?;
        }
        let pg = PrivatePg { dir, bin: initdb, port: supervise::free_port()?, as_postgres };
        let data = pg.data();
        pg.run("initdb", &["-D", &data, "-U", "postgres", "-A", "trust"])?;
        pg.ctl("start")?;
        Ok(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let bin = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        } else {
            std::process::Command::new(&bin)
        };
        let out = cmd.args(args).output().with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            bail!("{tool} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    fn ctl(&self, action: &str) -> anyhow::Result<()> {
        let data = self.data();
        let log = self.dir.path().join("server.log").display().to_string();
        let opts = format!("-h 127.0.0.1 -p {} -k {}", self.port, self.dir.path().display());
        self.run("pg_ctl", &["-D", &data, "-l", &log, "-w", "-m", "fast", "-o", &opts, action])
    }

    /// Restarts the server (fast shutdown: open connections are cut).
    pub fn restart(&self) -> anyhow::Result<()> {
        self.ctl("restart")
    }

    /// Admin URL (database `postgres`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}

/// A small phantom case and its files encoded as `.nii.gz`, by modality name.
pub fn phantom_files(seed: u64, dims: [usize; 3]) -> (PhantomCase, Vec<(&'static str, Vec<u8>)>) {
    let case = generate(&PhantomConfig { dims, seed });
    let files = case.volumes.iter().map(|(m, v)| (m.as_str(), gmmas_imaging::write_volume(v, true))).collect();
    (case, files)
}

/// The project's real cases, when present: `GMMAS_SHARED_DATA` when set (only there), else
/// `../shared/data` beside the checkout.
pub fn shared_data() -> Option<PathBuf> {
    let dir = match std::env::var_os("GMMAS_SHARED_DATA") {
        Some(p) => PathBuf::from(p),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
    };
    dir.join("brats").is_dir().then_some(dir)
}

/// The four sequences of the real case `Brats18_2013_11_1` when the shared data is here, else
/// of a full-size phantom (seed 13), with its name.
pub fn real_case_or_phantom() -> (String, Vec<(gmmas_imaging::Modality, gmmas_imaging::Volume)>) {
    let Some(dir) = shared_data().map(|d| d.join("brats/Brats18_2013_11_1")) else {
        eprintln!("../shared/data absent (set GMMAS_SHARED_DATA): using a phantom");
        return ("phantom-13".into(), generate(&PhantomConfig { dims: [240, 240, 155], seed: 13 }).volumes);
    };
    let volumes = gmmas_imaging::Modality::ALL
        .iter()
        .map(|m| {
            let p = dir.join(format!("Brats18_2013_11_1_{}.nii.gz", m.as_str()));
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (
                *m,
                gmmas_imaging::read_volume(&bytes, &gmmas_imaging::Limits::default())
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            )
        })
        .collect();
    ("Brats18_2013_11_1".into(), volumes)
}
