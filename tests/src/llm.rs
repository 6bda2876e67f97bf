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
    start_server(chat_gguf(), port, &["-c", "4096", "-np", "1"], CHAT_MODEL, "llama-server (chat)", log).await
}

/// Starts llama-server with the embedding model, when it is installed.
pub async fn start_embed(log: &std::path::Path) -> anyhow::Result<Option<Proc>> {
    if !has_embeddings() {
        return Ok(None);
    }
    let port = supervise::free_port()?;
    let what = "llama-server (embeddings)";
    Ok(Some(start_server(embed_gguf(), port, &["--embeddings"], EMBED_MODEL, what, log).await?))
}

/// Starts llama-server on one thread with `model` served as `alias`, and waits for its health.
async fn start_server(
    model: PathBuf,
    port: u16,
    args: &[&str],
    alias: &str,
    what: &str,
    log: &std::path::Path,
) -> anyhow::Result<Proc> {
    let file = std::fs::File::create(log)?;
    let mut child = Command::new(server_bin())
        .arg("-m")
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "-t", "1", "--alias", alias])
        .args(args)
        .stdout(file.try_clone()?)
        .stderr(file)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let url = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{url}/health"), &mut child, what, Duration::from_secs(60)).await?;
    Ok(Proc { url, port, child })
}

/// The local LLM a report test talks to: the chat server, the embedding server when it is
/// installed, and the Ollama bridge in front of both.
pub struct Stack {
    pub chat: Proc,
    pub embed: Option<Proc>,
    pub bridge: Proc,
}

impl Stack {
    /// Starts all three, with their logs in `dir`.
    pub async fn start(dir: &std::path::Path) -> anyhow::Result<Stack> {
        let chat = start_chat(None, &dir.join("chat.log")).await?;
        let embed = start_embed(&dir.join("embed.log")).await?;
        let bridge = start_bridge(&chat, embed.as_ref(), None, &dir.join("bridge.log")).await?;
        Ok(Stack { chat, embed, bridge })
    }

    /// The report service's settings for this stack, with the seconds one LLM call may take and
    /// the bus's ack wait.
    pub fn report_env(&self, llm_timeout_s: u64, ack_wait_s: u64) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("GMMAS_LLM_BACKEND", "ollama".to_string()),
            ("GMMAS_LLM_URL", self.bridge.url.clone()),
            ("GMMAS_LLM_MODEL", CHAT_MODEL.to_string()),
            ("GMMAS_LLM_TIMEOUT_S", llm_timeout_s.to_string()),
            ("GMMAS_ACK_WAIT_S", ack_wait_s.to_string()),
        ];
        if self.embed.is_some() {
            env.push(("GMMAS_EMBED_URL", self.bridge.url.clone()));
            env.push(("GMMAS_EMBED_MODEL", EMBED_MODEL.to_string()));
        }
        env
    }

    /// Stops the bridge, then the servers.
    pub async fn stop(self) {
        self.bridge.stop().await;
        if let Some(e) = self.embed {
            e.stop().await;
        }
        self.chat.stop().await;
    }
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
