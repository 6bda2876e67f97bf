//! `gmmas eval`: runs a model on every case of a data folder (full volumes, as `analyze` does)
//! and writes `eval.json` and `eval.md` with Dice / HD95 per region and AUC / accuracy / F1 / ECE.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use gmmas_models::Analyzer;
use gmmas_models::fit::{EvalOptions, evaluate};
use gmmas_plot::{BLUE, Corner, Figure, GREY, Mark};

#[derive(Args)]
pub struct EvalArgs {
    /// Model weights (`.safetensors` with its `.json` card beside it).
    #[arg(long)]
    pub model: PathBuf,
    /// Output folder for eval.json and eval.md.
    #[arg(long)]
    pub out: PathBuf,
    /// MC-Dropout passes (0 = one deterministic pass).
    #[arg(long, default_value_t = 0)]
    pub mc_passes: usize,
    /// Skip HD95 (faster).
    #[arg(long)]
    pub no_hd95: bool,
    #[command(flatten)]
    pub infer: crate::analyze::InferFlags,
    #[command(flatten)]
    pub cases: crate::cases::CaseArgs,
    #[command(flatten)]
    pub compute: crate::cases::ComputeArgs,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let device = args.compute.device()?;
    let model = Analyzer::load(&args.model, device)?;
    let (data, indices) = args.cases.load(args.compute.threads, "evaluate")?;
    let opts =
        EvalOptions { infer: args.infer.options(args.mc_passes)?, hd95: !args.no_hd95, ..EvalOptions::default() };
    eprintln!("evaluating {} on {} case(s)", model.version(), indices.len());
    let progress = crate::progress::Progress::new(indices.len(), "cases");
    let report = evaluate(&model, &data, &indices, &opts, |c| {
        progress.item(&format!(
            "{}: Dice WT {:.3} TC {:.3} ET {:.3} ({:.1} s)",
            c.name, c.dice[0], c.dice[1], c.dice[2], c.seconds
        ));
    })?;
    progress.finish();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut json = serde_json::to_value(&report)?;
    json["data_sha256"] = serde_json::json!(data.sha256());
    json["subset"] = serde_json::json!(args.cases.subset);
    json["skipped"] = serde_json::json!(data.skipped);
    json["inference"] = serde_json::json!({
        "postprocess": args.infer.postprocess,
        "tta_flips": args.infer.tta,
        "min_et_voxels": args.infer.min_et_voxels,
        "mc_passes": args.mc_passes,
    });
    let json_path = args.out.join("eval.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let title = format!("Evaluation of {}", model.version());
    let md_path = args.out.join("eval.md");
    std::fs::write(&md_path, report.markdown(&title)).with_context(|| format!("writing {}", md_path.display()))?;
    // Reliability curves: observed positive rate against mean predicted probability per bin
    // (blue), the diagonal of perfect calibration (grey); dot size does not encode counts.
    for t in &report.tasks {
        let Some(cal) = &t.metrics.calibration else { continue };
        let mut chart = Figure::new(
            format!("Reliability of {} ({})", t.task, model.version()),
            "mean predicted probability (bin)",
            "observed positive rate",
        )
        .size(560, 460)
        .x_range(0.0, 1.0)
        .y_range(0.0, 1.0)
        .legend_at(Corner::UpperLeft);
        chart.add("perfect calibration", &[(0.0, 0.0), (1.0, 1.0)], GREY, Mark::Dashed);
        let pts: Vec<(f64, f64)> = cal.curve.iter().map(|b| (b.mean_predicted, b.observed)).collect();
        chart.add("model", &pts, BLUE, Mark::LineDots);
        let png = args.out.join(format!("reliability_{}.png", t.task));
        std::fs::write(&png, chart.to_png()?).with_context(|| format!("writing {}", png.display()))?;
    }
    for r in &report.regions {
        println!(
            "{}: Dice {:.3} ± {:.3}  HD95 {:.2} ± {:.2} mm (n={})",
            r.region, r.dice.mean, r.dice.std, r.hd95.mean, r.hd95.std, r.dice.n
        );
    }
    eprintln!("wrote {} and {}", json_path.display(), md_path.display());
    Ok(())
}
