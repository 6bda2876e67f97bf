//! The `gmmas` command line: one-process analysis of a case folder, phantom generation,
//! the local system (`gmmas up`), training and evaluation, the model registry, and the benchmark.

mod access;
mod analyze;
mod bench;
mod bench_mc;
mod bench_torch;
mod calibrate;
mod cases;
mod dicom;
mod eval;
mod missing;
mod models;
mod natsconf;
mod progress;
mod skull;
mod train;
mod uncertainty;
mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "gmmas", version, about = "Glioma multimodal MRI analysis")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Analyze one case (BraTS-named NIfTI folder, or a DICOM study) in this process:
    /// segmentation NIfTI + JSON.
    Analyze(analyze::AnalyzeArgs),
    /// Show what GMMAS takes from a DICOM study: each series, its identified sequence and why.
    DicomInfo(dicom::DicomInfoArgs),
    /// Write a NIfTI case as a DICOM study (one series per sequence, in chosen planes).
    ToDicom(dicom::ToDicomArgs),
    /// Write a label map on a DICOM series' own grid as a DICOM SEG referencing that series.
    ToSeg(dicom::ToSegArgs),
    /// Agreement of two segmentations of the same space (Dice per region), grids may differ.
    SegAgreement(dicom::SegAgreementArgs),
    /// Skull-strip one image (HD-BET network, or --classical); scores it against --truth.
    BrainMask(skull::BrainMaskArgs),
    /// Put a skull-stripped case back inside a real head (for testing skull stripping).
    AddSkull(skull::AddSkullArgs),
    /// Write synthetic cases in BraTS layout plus labels.csv.
    Phantom {
        /// Number of cases.
        #[arg(long, default_value_t = 1)]
        n: usize,
        /// Seed; the same seed writes the same files.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Grid size as X,Y,Z voxels (1 mm).
        #[arg(long, default_value = "240,240,155", value_parser = parse_dims)]
        dims: [usize; 3],
        /// `glioma`; or, for inputs unlike the training data, the same brains without the
        /// glioma: `lesion-free`, or `non-glioma` (a sharply bounded lesion, bright on T1 and
        /// dark on T2 / FLAIR, no edema or enhancement).
        #[arg(long, default_value = "glioma", value_parser = parse_kind)]
        kind: gmmas_phantom::PhantomKind,
    },
    /// Start every service locally, analyze the bundled example case, keep serving until Ctrl-C.
    Up(up::UpArgs),
    /// Time each stage on one full-size case and compare preprocessing with the Python baseline.
    Bench(bench::BenchArgs),
    /// Train a model from a TOML run config (data validation, checkpoints, final model + card).
    Train(train::TrainArgs),
    /// Evaluate a model on case folders: Dice / HD95 per region, AUC / accuracy / F1 / ECE per task.
    Eval(eval::EvalArgs),
    /// Fit one temperature per task on validation cases and write the calibrated model.
    Calibrate(calibrate::CalibrateArgs),
    /// MC-Dropout uncertainty against error: voxel AUROC for wrong voxels, ECE within uncertainty
    /// bins (Fig. 5c analogue), case-level uncertainty on swapped sequences, noise and other inputs.
    Uncertainty(uncertainty::UncertaintyArgs),
    /// Evaluate training runs with sequences removed: Dice and AUC per combination, ROC figures.
    EvalMissing(missing::EvalMissingArgs),
    /// Draw a PNG: axial, coronal and sagittal slices through the tumor, the image, the
    /// prediction and (when the case folder has one) the expert segmentation side by side.
    Overlay {
        /// Case folder (BraTS naming); its `_seg` file, if any, is the expert mask.
        #[arg(long)]
        case: PathBuf,
        /// Predicted segmentation NIfTI (e.g. from `gmmas analyze`).
        #[arg(long)]
        pred: PathBuf,
        /// Sequence drawn underneath.
        #[arg(long, default_value = "flair")]
        modality: String,
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
    },
    /// The model registry: list, roll back.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Print the API's OpenAPI 3 document (JSON).
    Openapi,
    /// Bearer tokens for the API (standalone install: signed with the API's key file).
    #[command(subcommand)]
    Token(access::TokenCommand),
    /// Tenants (hospitals): create, list.
    #[command(subcommand)]
    Tenant(access::TenantCommand),
    /// Apply the database migrations (run with the migrations role; services may then run as
    /// the least-privilege service role with migrate_on_start=false).
    Migrate {
        /// PostgreSQL URL of the migrations role.
        #[arg(long, env = "GMMAS_MIGRATIONS_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Write a nats-server configuration with one least-privilege user per service, and their
    /// password files.
    NatsConfig(natsconf::NatsConfigArgs),
    /// Write a model with freshly initialized weights (for development and training starts).
    InitModel {
        /// Profile name (tiny, small, paper).
        #[arg(long, default_value = "small")]
        profile: String,
        #[arg(long, default_value_t = 0)]
        seed: i64,
        /// Output `.safetensors` path (a `.json` card is written beside it).
        #[arg(long)]
        out: PathBuf,
    },
}

fn parse_kind(s: &str) -> Result<gmmas_phantom::PhantomKind, String> {
    gmmas_phantom::PhantomKind::parse(s).ok_or_else(|| format!("expected glioma, lesion-free or non-glioma, got {s:?}"))
}

pub fn parse_dims(s: &str) -> Result<[usize; 3], String> {
    let parts: Vec<usize> =
        s.split(',').map(|p| p.trim().parse::<usize>().map_err(|e| format!("{p:?}: {e}"))).collect::<Result<_, _>>()?;
    match parts.as_slice() {
        [x, y, z] if *x >= 16 && *y >= 16 && *z >= 16 => Ok([*x, *y, *z]),
        _ => Err(format!("expected X,Y,Z with each at least 16, got {s:?}")),
    }
}

/// Runs the command; an error prints as its message and causes, one per line (with the
/// backtrace only when `GMMAS_BACKTRACE=1`), and the exit status is 1.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if std::env::var("GMMAS_BACKTRACE").is_ok_and(|v| v == "1") => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("Error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Analyze(args) => analyze::run(args),
        Command::DicomInfo(args) => dicom::info(args),
        Command::ToDicom(args) => dicom::to_dicom(args),
        Command::ToSeg(args) => dicom::to_seg(args),
        Command::SegAgreement(args) => dicom::seg_agreement(args),
        Command::BrainMask(args) => skull::brain_mask(args),
        Command::AddSkull(args) => skull::add_skull(args),
        Command::Phantom { n, seed, out, dims, kind } => {
            let progress = progress::Progress::new(n, "phantoms");
            let names =
                gmmas_phantom::write_dataset_with_progress(n, seed, dims, kind, &out, |_, name| progress.item(name))?;
            progress.finish();
            println!("wrote {} case(s) and labels.csv to {}", names.len(), out.display());
            Ok(())
        }
        Command::Up(args) => tokio::runtime::Runtime::new()?.block_on(up::run(args)),
        Command::Migrate { database_url } => {
            let url = database_url
                .or_else(|| std::env::var("GMMAS_DATABASE_URL").ok())
                .unwrap_or_else(|| gmmas_runtime::CommonConfig::default().database_url);
            tokio::runtime::Runtime::new()?.block_on(async {
                let pool = gmmas_runtime::db::connect_with(&url, std::time::Duration::from_secs(30), true).await?;
                let (n,): (i64,) =
                    sqlx::query_as("SELECT count(*) FROM _sqlx_migrations WHERE success").fetch_one(&pool).await?;
                println!("database schema up to date: {n} migrations applied");
                anyhow::Ok(())
            })
        }
        Command::NatsConfig(args) => natsconf::run(args),
        Command::Models(cmd) => tokio::runtime::Runtime::new()?.block_on(models::run(cmd)),
        Command::Token(cmd) => access::token(cmd),
        Command::Openapi => {
            // The document the API serves, as committed beside it (a test of the api crate keeps
            // the two equal; `gmmas-api openapi` regenerates it).
            println!("{}", include_str!("../../api/openapi.json").trim_end());
            Ok(())
        }
        Command::Tenant(cmd) => tokio::runtime::Runtime::new()?.block_on(access::tenant(cmd)),
        Command::Bench(args) => bench::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::EvalMissing(args) => missing::run(args),
        Command::Uncertainty(args) => uncertainty::run(args),
        Command::Overlay { case, pred, modality, out } => overlay(&case, &pred, &modality, &out),
        Command::InitModel { profile, seed, out } => {
            let cfg = gmmas_models::ModelConfig::profile(&profile)?;
            let model = gmmas_models::Analyzer::new_seeded(cfg, seed, gmmas_models::Device::Cpu)?;
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            model.save(&out)?;
            println!("{} -> {}", model.version(), out.display());
            Ok(())
        }
    }
}

fn overlay(
    case: &std::path::Path,
    pred: &std::path::Path,
    modality: &str,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let limits = gmmas_imaging::Limits::default();
    let files = gmmas_imaging::brats::discover_case(case)?;
    let wanted = gmmas_imaging::Modality::parse(modality).context("--modality: expected t1, t1ce, t2 or flair")?;
    let (_, path) = files
        .modalities
        .iter()
        .find(|(m, _)| *m == wanted)
        .with_context(|| format!("{} has no {modality} volume", case.display()))?;
    let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let image = gmmas_imaging::read_volume(&read(path)?, &limits)?;
    let predicted = gmmas_imaging::read_labels(&read(pred)?, &limits)?;
    gmmas_imaging::same_grid(&image.grid, &predicted.grid).context("prediction and image grids differ")?;
    let truth = match &files.seg {
        Some(p) => Some(gmmas_imaging::brats::read_seg_brats(&read(p)?, &limits)?),
        None => None,
    };
    let png = gmmas_plot::overlay::render_png(&image, &modality.to_uppercase(), &predicted, truth.as_ref())?;
    std::fs::write(out, png).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} (columns: {modality}, prediction{})",
        out.display(),
        if truth.is_some() { ", expert" } else { "" }
    );
    Ok(())
}
