//! A real local LLM for the report tests: llama.cpp's llama-server with SmolLM2-135M (chat) and
//! all-MiniLM-L6-v2 (embeddings), as installed by `scripts/llm.sh install`, and the Ollama bridge
//! in front of them; every process on a free port, killed on drop.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gmmas_runtime::supervise;
use tokio::process::{Child, Command};

/// Name the chat model is served under.
pub const CHAT_MODEL: &str = "smollm2:135m";
/// Name the embedding model is served under.
pub const EMBED_MODEL: &str = "all-minilm";

/// Where `scripts/llm.sh` caches the server and the models.
pub fn llm_dir() -> PathBuf {
    if let Ok(d) = std::env::var("GMMAS_LLM_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var("GMMAS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/gmmas"));
    cache.join("llm")
}

pub fn server_bin() -> PathBuf {
    llm_dir().join("bin/llama-server")
}

pub fn chat_gguf() -> PathBuf {
    llm_dir().join("models/smollm2-135m-instruct-q4_1.gguf")
}

pub fn embed_gguf() -> PathBuf {
    llm_dir().join("models/all-minilm-l6-v2-f16.gguf")
}

/// True when the embedding model was converted (`scripts/llm.sh install`).
pub fn has_embeddings() -> bool {
    embed_gguf().exists()
}

/// sha256 of the chat model file (what the bridge reports as its digest).
pub fn chat_digest() -> anyhow::Result<String> {
    use sha2::Digest;
    Ok(hex::encode(sha2::Sha256::digest(std::fs::read(chat_gguf())?)))
}

/// A running process of the local LLM stack.
pub struct Proc {
    pub url: String,
    pub port: u16,
    child: Child,
}

impl Proc {
    /// Stops it (SIGKILL) and waits.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

async fn wait_http(url: &str, child: &mut Child, what: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited during start-up ({status})");
        }
        if let Ok(r) = reqwest::get(url).await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} not ready at {url} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn check_installed() -> anyhow::Result<()> {
    if !server_bin().exists() || !chat_gguf().exists() {
        bail!(
            "the local LLM is not installed under {} (scripts/llm.sh install builds llama-server and fetches the model)",
            llm_dir().display()
        );
    }
    Ok(())
}

/// Starts llama-server with the chat model on `port` (a free one when `None`).
pub async fn start_chat(port: Option<u16>, log: &std::path::Path) -> anyhow::Result<Proc> {
    check_installed()?;
    let port = match port {
        Some(p) => p,
        None => supervise::free_port()?,
    };
    let file = std::fs::File::create(log)?;
    let mut child = Command::new(server_bin())
        .arg("-m")
        .arg(chat_gguf())
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "-c", "4096", "-np", "1", "-t", "1"])
        .args(["--alias", CHAT_MODEL])
        .stdout(file.try_clone()?)
        .stderr(file)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting llama-server")?;
    let url = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{url}/health"), &mut child, "llama-server (chat)", Duration::from_secs(60)).await?;
    Ok(Proc { url, port, child })
}

/// Starts llama-server with the embedding model, when it is installed.
pub async fn start_embed(log: &std::path::Path) -> anyhow::Result<Option<Proc>> {
    if !has_embeddings() {
        return Ok(None);
    }
    let port = supervise::free_port()?;
    let file = std::fs::File::create(log)?;
    let mut child = Command::new(server_bin())
        .arg("-m")
        .arg(embed_gguf())
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--embeddings", "-t", "1"])
        .args(["--alias", EMBED_MODEL])
        .stdout(file.try_clone()?)
        .stderr(file)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting llama-server (embeddings)")?;
    let url = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{url}/health"), &mut child, "llama-server (embeddings)", Duration::from_secs(60)).await?;
    Ok(Some(Proc { url, port, child }))
}

/// Starts the Ollama bridge in front of `chat` (and `embed`), with an optional fault.
pub async fn start_bridge(
    chat: &Proc,
    embed: Option<&Proc>,
    fault: Option<&str>,
    log: &std::path::Path,
) -> anyhow::Result<Proc> {
    let bin = supervise::bin_dir()?.join("gmmas-ollama-bridge");
    let port = supervise::free_port()?;
    let file = std::fs::File::create(log)?;
    let mut cmd = Command::new(&bin);
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--upstream", &chat.url, "--model", CHAT_MODEL])
        .arg("--model-file")
        .arg(chat_gguf());
    if let Some(e) = embed {
        cmd.args(["--embed-upstream", &e.url, "--embed-model", EMBED_MODEL])
            .arg("--embed-model-file")
            .arg(embed_gguf());
    }
    if let Some(f) = fault {
        cmd.args(["--fault", f]);
    }
    let mut child = cmd
        .stdout(file.try_clone()?)
        .stderr(file)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let url = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{url}/api/tags"), &mut child, "ollama bridge", Duration::from_secs(30)).await?;
    Ok(Proc { url, port, child })
}
