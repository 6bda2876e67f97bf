//! The api service binary: loads configuration and runs [`gmmas_api::run`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: gmmas_api::ApiConfig = gmmas_runtime::load_config()?;
    gmmas_api::run(config).await
}
