//! The train service binary: loads configuration and runs [`gmmas_train::run`]. It exits
//! without waiting for a training step in progress (the run resumes from its checkpoint).

fn main() {
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("gmmas-train: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let config: gmmas_train::TrainServiceConfig = gmmas_runtime::load_config()?;
    gmmas_train::run(config).await
}
