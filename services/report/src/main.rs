//! The report service binary: loads configuration and runs [`gmmas_report::run`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: gmmas_report::ReportConfig = gmmas_runtime::load_config()?;
    gmmas_report::run(config).await
}
