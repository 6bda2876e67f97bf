//! The curate service binary: loads configuration and runs [`gmmas_curate::run`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: gmmas_curate::CurateConfig = gmmas_runtime::load_config()?;
    gmmas_curate::run(config).await
}
