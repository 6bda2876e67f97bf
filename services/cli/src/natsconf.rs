//! `gmmas nats-config`: writes a nats-server configuration with one user per service and only
//! the subjects that service needs, plus a password file per user (kept when already there).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use gmmas_runtime::bus_auth;

#[derive(Args)]
pub struct NatsConfigArgs {
    /// Folder for the password files (`<user>.password`, mode 0600), created when missing.
    #[arg(long)]
    pub secrets: PathBuf,
    /// Output nats-server configuration file.
    #[arg(long)]
    pub out: PathBuf,
    /// Address the server listens on.
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub listen: String,
    /// JetStream storage folder.
    #[arg(long)]
    pub store_dir: PathBuf,
    /// Server certificate (PEM); with --tls-key, the server speaks TLS only.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that must sign client certificates; clients then need one.
    #[arg(long, requires = "tls_cert")]
    pub tls_verify_ca: Option<PathBuf>,
}

pub fn run(args: NatsConfigArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.secrets).with_context(|| format!("creating {}", args.secrets.display()))?;
    let mut passwords = Vec::new();
    for g in bus_auth::grants() {
        passwords.push((g.service.to_string(), password(&args.secrets, g.service)?));
    }
    let admin = password(&args.secrets, "admin")?;
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(bus_auth::ServerTls {
            cert_file: abs(cert),
            key_file: abs(key),
            verify_ca_file: args.tls_verify_ca.as_deref().map(abs),
        }),
        _ => None,
    };
    let conf = bus_auth::server_config(&args.listen, &abs(&args.store_dir), &passwords, &admin, tls.as_ref());
    write_private(&args.out, conf.as_bytes())?;
    println!(
        "wrote {} ({} service users and admin; passwords in {})",
        args.out.display(),
        passwords.len(),
        args.secrets.display()
    );
    Ok(())
}

/// The password in `<dir>/<user>.password`, made (random, 32 hex digits) when missing.
fn password(dir: &Path, user: &str) -> anyhow::Result<String> {
    let path = dir.join(format!("{user}.password"));
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_string();
        if !existing.is_empty() {
            return Ok(existing);
        }
    }
    let mut raw = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("reading /dev/urandom for a password")?;
    let pw = hex::encode(raw);
    write_private(&path, pw.as_bytes())?;
    Ok(pw)
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))
}
