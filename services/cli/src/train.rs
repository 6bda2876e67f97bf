//! `gmmas train --config FILE [--resume]`: runs the training program of `gmmas_models::fit`
//! (data validation, augmented batches, checkpoints, the final model and its card).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use gmmas_models::data::SplitConfig;
use gmmas_models::fit::{FitOptions, TrainRunConfig, fit};
use gmmas_plot::{BLUE, Figure, Mark, ORANGE, RED};

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
    /// Override the fold of a `kfold` split (cross-validation runs share one config).
    #[arg(long)]
    pub fold: Option<usize>,
    /// Override `model.init`: start from these weights (the previous adaptation stage).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Override `[train] mode` (`supervised`, `distill`, `contrastive`, `finetune`, or the
    /// semi-supervised `ssl-pseudo`, `ssl-consistency`, `fixmatch`).
    #[arg(long)]
    pub mode: Option<String>,
    /// Override the Stage I labelling model (`ssl.labeller`) of an `ssl-pseudo` run.
    #[arg(long)]
    pub labeller: Option<PathBuf>,
    /// Override `max_train_seconds`: stop (validated, saved) when this much training time is
    /// spent; the learning-rate schedule follows the clock.
    #[arg(long)]
    pub max_seconds: Option<f64>,
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
    if let Some(init) = args.init {
        cfg.model.init = Some(init);
    }
    if let Some(m) = args.mode {
        cfg.train.mode = serde_json::from_value(serde_json::Value::String(m.clone())).map_err(|_| {
            anyhow::anyhow!(
                "--mode {m:?}: expected supervised, distill, contrastive, finetune, ssl-pseudo, ssl-consistency or fixmatch"
            )
        })?;
    }
    if let Some(m) = args.max_seconds {
        cfg.max_train_seconds = Some(m);
    }
    if let Some(l) = args.labeller {
        cfg.ssl.labeller = Some(l);
    }
    if let Some(f) = args.fold {
        match &mut cfg.data.split {
            SplitConfig::KFold { k, fold, .. } => {
                anyhow::ensure!(f < *k, "--fold {f}: the config's split has k = {k} folds (0..{})", *k - 1);
                *fold = f;
            }
            _ => anyhow::bail!("--fold needs a config whose data.split is kind = \"kfold\""),
        }
    }
    let report = fit(&cfg, &FitOptions { resume: args.resume, quiet: args.quiet })?;
    let out_dir = report.model_path.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    if let Err(e) = training_curves(&out_dir) {
        eprintln!("training curves not drawn: {e:#}");
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// `training_curves.png` from `train_log.jsonl`: total loss (red), segmentation Dice loss
/// (orange) and validation WT Dice (blue dots) per epoch.
fn training_curves(dir: &std::path::Path) -> anyhow::Result<()> {
    let log = std::fs::read_to_string(dir.join("train_log.jsonl")).context("reading train_log.jsonl")?;
    let rows: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let series = |f: &dyn Fn(&serde_json::Value) -> Option<f64>| -> Vec<(f64, f64)> {
        rows.iter().filter_map(|r| Some((r["epoch"].as_f64()?, f(r)?))).collect()
    };
    let total = series(&|r| r["loss"]["total"].as_f64());
    let dice_loss = series(&|r| r["loss"]["seg_dice"].as_f64());
    let val_wt = series(&|r| r["val"]["dice"][0].as_f64());
    let ys = total.iter().chain(&dice_loss).chain(&val_wt).map(|p| p.1);
    let (lo, hi) = ys.fold((0.0f64, 1.0f64), |(a, b), y| (a.min(y), b.max(y)));
    let epochs = rows.len().max(2) as f64;
    let mut chart = Figure::new("Training curves", "epoch", "loss / Dice")
        .size(640, 420)
        .x_range(1.0, epochs)
        .y_range(lo.floor(), hi.ceil());
    chart.add("total loss", &total, RED, Mark::Line);
    chart.add("segmentation Dice loss", &dice_loss, ORANGE, Mark::Line);
    chart.add("validation WT Dice", &val_wt, BLUE, Mark::Dots);
    let path = dir.join("training_curves.png");
    std::fs::write(&path, chart.to_png()?).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
