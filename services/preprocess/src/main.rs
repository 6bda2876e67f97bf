//! The preprocess service binary: loads configuration and runs [`gmmas_preprocess::run`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: gmmas_preprocess::PreprocessConfig = gmmas_runtime::load_config()?;
    gmmas_preprocess::run(config).await
}
