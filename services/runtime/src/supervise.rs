//! Starting GMMAS service processes on one machine and waiting until they are ready; used by
//! `gmmas up` and by the end-to-end tests, so both run the system the same way.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// The service binaries, in start order.
pub const SERVICES: [&str; 4] = ["ingest", "preprocess", "infer", "api"];

/// What `gmmas up` runs: the case services plus curate (pseudo-labels from every analysis).
/// `train` needs a base config and an evaluation set and is started on its own.
pub const UP_SERVICES: [&str; 5] = ["ingest", "preprocess", "infer", "curate", "api"];

/// One started service process.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub http_addr: String,
    pub child: Child,
    pub log: PathBuf,
}

/// Where the service binaries are: next to the running executable (or its parent, for tests
/// that run from `target/<profile>/deps`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for _ in 0..2 {
        if dir.join("gmmas-ingest").exists() {
            return Ok(dir);
        }
        match dir.parent() {
            Some(p) => dir = p.to_path_buf(),
            None => break,
        }
    }
    bail!(
        "service binaries (gmmas-ingest, ...) not found next to {}; run `cargo build --release --workspace --bins` first",
        exe.display()
    )
}

/// Starts `gmmas-<name>` with `env` plus `GMMAS_HTTP_ADDR=http_addr`, logging to `log_dir/<name>.log`.
pub fn start(name: &str, http_addr: &str, env: &[(String, String)], log_dir: &Path) -> anyhow::Result<Service> {
    start_from(&bin_dir()?, name, http_addr, env, log_dir, None)
}

/// [`start`] with the binary taken from `bin_dir` and, when given, run in `cwd` (an installed
/// layout such as the container image's, away from any source tree).
pub fn start_from(
    bin_dir: &Path,
    name: &str,
    http_addr: &str,
    env: &[(String, String)],
    log_dir: &Path,
    cwd: Option<&Path>,
) -> anyhow::Result<Service> {
    let bin = bin_dir.join(format!("gmmas-{name}"));
    std::fs::create_dir_all(log_dir)?;
    let log = log_dir.join(format!("{name}.log"));
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
    let mut cmd = Command::new(&bin);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let child = cmd
        .envs(env.iter().cloned())
        .env("GMMAS_HTTP_ADDR", http_addr)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Service { name: name.into(), http_addr: http_addr.into(), child, log })
}

/// Waits until `GET /readyz` answers 200, or the process exits, or `timeout` passes.
pub async fn wait_ready(svc: &mut Service, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = svc.child.try_wait()? {
            bail!("{} exited ({status}) during start-up; see {}", svc.name, svc.log.display());
        }
        if http_status(&svc.http_addr, "/readyz").await.ok() == Some(200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} was not ready after {:?}; see {}", svc.name, timeout, svc.log.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Minimal HTTP/1.0 GET returning the status code (no client library needed for a probe).
pub async fn http_status(addr: &str, path: &str) -> anyhow::Result<u16> {
    let mut stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await??;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("malformed HTTP status line")
}

/// Sends SIGTERM, waits up to `grace`, then kills.
pub async fn stop(svc: &mut Service, grace: Duration) {
    if let Some(pid) = svc.child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, svc.child.wait()).await.is_err() {
        let _ = svc.child.kill().await;
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
