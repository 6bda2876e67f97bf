//! `gmmas train --config FILE [--resume]`: runs the training program of `gmmas_models::fit`
//! (data validation, augmented batches, checkpoints, the final model and its card).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use gmmas_models::fit::{FitOptions, TrainRunConfig, fit};

#[derive(Args)]
pub struct TrainArgs {
    /// Run config (TOML; see `models/configs/`). Relative paths in it are relative to the file.
    #[arg(long)]
    pub config: PathBuf,
    /// Continue from `<out>/checkpoint.safetensors` (weights, step, task sigmas).
    #[arg(long)]
    pub resume: bool,
    /// Override the config's output folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override the config's device (`auto`, `cpu`, `cuda`, `cuda:N`).
    #[arg(long)]
    pub device: Option<String>,
    /// Override the config's total steps (clears `epochs`).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Override the config's libtorch thread count.
    #[arg(long)]
    pub threads: Option<usize>,
    /// No per-epoch lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let mut cfg =
        TrainRunConfig::load(&args.config).with_context(|| format!("reading run config {}", args.config.display()))?;
    if let Some(out) = args.out {
        cfg.out = out;
    }
    if let Some(d) = args.device {
        cfg.device = d;
    }
    if let Some(s) = args.steps {
        cfg.train.steps = Some(s);
        cfg.train.epochs = None;
    }
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    let report = fit(&cfg, &FitOptions { resume: args.resume, quiet: args.quiet })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
