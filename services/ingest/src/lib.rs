//! Ingest: the upload service. Accepts one case (1-4 NIfTI modalities) over HTTP through the
//! shared upload path ([`gmmas_upload`]) behind its own listener and token checks.

use std::sync::Arc;

use anyhow::Context;
use gmmas_runtime::worker::StageRuntime;
use gmmas_runtime::{CommonConfig, Shutdown};
use gmmas_upload::{AdmissionConfig, Ingestor, routes};
use serde::{Deserialize, Serialize};

/// Configuration of the ingest service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct IngestConfig {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Largest accepted upload (all files of one case), in MiB.
    pub max_upload_mib: u64,
    /// Largest accepted volume, in voxels.
    pub max_voxels: u64,
    /// Admission limits.
    #[serde(flatten)]
    pub admission: AdmissionConfig,
    /// Bearer tokens and request checks of the upload endpoint.
    #[serde(flatten)]
    pub auth: gmmas_runtime::auth::AuthConfig,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            common: CommonConfig { http_addr: "127.0.0.1:8081".into(), ..Default::default() },
            max_upload_mib: 1024,
            max_voxels: 512 * 512 * 512,
            admission: AdmissionConfig::default(),
            auth: gmmas_runtime::auth::AuthConfig::default(),
        }
    }
}

/// Runs the ingest service until SIGTERM.
pub async fn run(config: IngestConfig) -> anyhow::Result<()> {
    gmmas_runtime::telemetry::init("ingest", &config.common.log_format);
    let shutdown = Shutdown::on_signals();
    let rt = StageRuntime::start(&config.common, "ingest", &shutdown).await?;
    let health = rt.health_routes();
    let access = gmmas_runtime::access::Access::new(&config.auth, &config.common.http_addr, rt.db.clone())
        .await
        .context("setting up the API's token verification")?;
    let ingestor = Arc::new(Ingestor::with_admission(rt, config.max_upload_mib, config.max_voxels, config.admission));
    let router = gmmas_runtime::access::protect(routes(ingestor).merge(health), access, &config.auth);
    gmmas_runtime::http::serve_until_shutdown(&config.common, router, shutdown).await
}
