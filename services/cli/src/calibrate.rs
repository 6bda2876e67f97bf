//! `gmmas calibrate`: fits one temperature per classification task on validation cases
//! (paper III-F) and writes the calibrated model (new version) with the fit in its notes.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use gmmas_models::calibrate::fit_temperatures;
use gmmas_models::config::TASKS;
use gmmas_models::fit::{EvalOptions, evaluate};
use gmmas_models::{Analyzer, InferOptions};

#[derive(Args)]
pub struct CalibrateArgs {
    /// Model weights to calibrate (`.safetensors` with its `.json` card beside it).
    #[arg(long)]
    pub model: PathBuf,
    /// Output `.safetensors` path of the calibrated model (a `.json` card is written beside it).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub cases: crate::cases::CaseArgs,
    #[command(flatten)]
    pub compute: crate::cases::ComputeArgs,
}

pub fn run(args: CalibrateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.cases.labels.is_empty(), "--labels is required: the temperatures are fitted on known labels");
    let device = args.compute.device()?;
    let loaded = Analyzer::load(&args.model, device).with_context(|| format!("loading {}", args.model.display()))?;
    let version_in = loaded.version().to_string();
    let previous = loaded.temperature();
    // Fit on the uncalibrated outputs: a model calibrated before is reset to T = 1 first, so
    // the new temperatures replace the old ones instead of compounding them.
    let model = loaded.with_temperature([1.0; TASKS])?;
    let (data, indices) = args.cases.load(args.compute.threads, "calibrate on")?;
    let opts = EvalOptions { infer: InferOptions::default(), hd95: false, ..EvalOptions::default() };
    eprintln!("running {} on {} case(s) (deterministic pass)", model.version(), indices.len());
    let progress = crate::progress::Progress::new(indices.len(), "cases");
    let report = evaluate(&model, &data, &indices, &opts, |c| {
        progress.item(&format!("{}: P {:?} ({:.1} s)", c.name, c.probabilities, c.seconds));
    })?;
    progress.finish();
    let pairs: [Vec<(f64, bool)>; TASKS] = std::array::from_fn(|t| {
        report.cases.iter().filter_map(|c| c.labels[t].map(|y| (f64::from(c.probabilities[t]), y))).collect()
    });
    let fits = fit_temperatures(&pairs);
    let temperature = fits.clone().map(|f| f.temperature);
    for f in &fits {
        eprintln!("  {}: T = {:.4} ({})", f.task, f.temperature, f.note);
    }
    if temperature.iter().all(|&t| t == 1.0) {
        eprintln!("note: every temperature is 1: the output has the uncalibrated weights and version");
    }
    let mut calibrated = model.with_temperature(temperature)?;
    let cases: Vec<&str> = report.cases.iter().map(|c| c.name.as_str()).collect();
    let calibration = serde_json::json!({
        "method": "temperature scaling (binary NLL of sigmoid(logit / T) per task, golden-section on ln T in [-4, 4])",
        "from_model": version_in,
        "previous_temperature": previous,
        "data_sha256": data.sha256(),
        "subset": args.cases.subset,
        "split": args.cases.split,
        "cases": cases,
        "temperature": temperature,
        "tasks": fits,
    });
    let notes = match calibrated.training_notes().clone() {
        serde_json::Value::Object(mut m) => {
            m.insert("calibration".into(), calibration.clone());
            serde_json::Value::Object(m)
        }
        serde_json::Value::Null => serde_json::json!({ "calibration": calibration }),
        other => serde_json::json!({ "notes": other, "calibration": calibration }),
    };
    calibrated.set_training_notes(notes);
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    calibrated.save(&args.out).with_context(|| format!("writing {}", args.out.display()))?;
    let summary = serde_json::json!({
        "model_in": args.model,
        "version_in": version_in,
        "model_out": args.out,
        "card_out": gmmas_models::analyzer::sidecar_path(Path::new(&args.out)),
        "version_out": calibrated.version(),
        "cases": cases.len(),
        "temperature": temperature,
        "tasks": fits,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
