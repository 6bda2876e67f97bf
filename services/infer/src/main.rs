//! The infer service binary: loads configuration and runs [`gmmas_infer::run`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: gmmas_infer::InferConfig = gmmas_runtime::load_config()?;
    gmmas_infer::run(config).await
}
