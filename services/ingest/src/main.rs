//! The ingest service binary: loads configuration and runs [`gmmas_ingest::run`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: gmmas_ingest::IngestConfig = gmmas_runtime::load_config()?;
    gmmas_ingest::run(config).await
}
