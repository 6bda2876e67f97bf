//! The api service binary: loads configuration and runs [`gmmas_api::run`]; `gmmas-api openapi`
//! prints the API's OpenAPI document instead (what `services/api/openapi.json` holds).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("openapi") {
        println!("{}", gmmas_api::openapi::document());
        return Ok(());
    }
    let config: gmmas_api::ApiConfig = gmmas_runtime::load_config()?;
    gmmas_api::run(config).await
}
