//! `gmmas brain-mask` (skull stripping of one image, scored against a known mask when given)
//! and `gmmas add-skull` (a skull-stripped case put back inside a real head, for testing).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use gmmas_imaging::brainmask::{classical_brain_mask, dice};
use gmmas_imaging::{Limits, Modality};
use gmmas_models::BrainExtractor;
use serde_json::json;

#[derive(Args)]
pub struct BrainMaskArgs {
    /// One MRI volume (NIfTI) of a head with its skull.
    pub image: PathBuf,
    /// Where to write the brain mask (NIfTI, 1 = brain).
    #[arg(long)]
    pub out: PathBuf,
    /// A known brain mask of the same grid: prints the Dice overlap with it.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Use the classical extractor instead of the network.
    #[arg(long)]
    pub classical: bool,
    /// Average the network over the eight mirrorings of the image (8x the time).
    #[arg(long)]
    pub mirror: bool,
    /// Brain-extraction network. Default: `GMMAS_BRAIN_MODEL_PATH`, else the bundled one.
    #[arg(long)]
    pub brain_model: Option<PathBuf>,
    /// `auto`, `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn read_volume(p: &PathBuf) -> anyhow::Result<gmmas_imaging::Volume> {
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    gmmas_imaging::read_volume(&bytes, &Limits::default()).with_context(|| p.display().to_string())
}

fn read_mask(p: &PathBuf) -> anyhow::Result<gmmas_imaging::LabelVolume> {
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    gmmas_imaging::read_labels(&bytes, &Limits::default()).with_context(|| p.display().to_string())
}

/// Runs `gmmas brain-mask`; prints one JSON object (method, seconds, brain volume, Dice).
pub fn brain_mask(args: BrainMaskArgs) -> anyhow::Result<()> {
    let image = read_volume(&args.image)?;
    let t = Instant::now();
    let (mask, method) = if args.classical {
        (classical_brain_mask(&image)?, "classical".to_string())
    } else {
        let path = args
            .brain_model
            .clone()
            .or_else(gmmas_models::default_brain_model_path)
            .context("no brain-extraction network: run scripts/setup.sh, pass --brain-model, or use --classical")?;
        let x = BrainExtractor::load(&path, gmmas_models::parse_device(&args.device)?)?;
        let mask = x.mask(&image, args.mirror)?;
        (mask, format!("{}{}", x.version(), if args.mirror { " (mirrored x8)" } else { "" }))
    };
    let seconds = t.elapsed().as_secs_f64();
    std::fs::write(&args.out, gmmas_imaging::write_labels(&mask, true))
        .with_context(|| format!("writing {}", args.out.display()))?;
    let got: Vec<bool> = mask.data.iter().map(|&m| m != 0).collect();
    let voxels = got.iter().filter(|&&b| b).count();
    let mut out = json!({
        "method": method,
        "seconds": (seconds * 10.0).round() / 10.0,
        "cpus": cpus(),
        "dims": image.grid.dims,
        "brain_ml": (voxels as f64 * mask.grid.voxel_ml() * 10.0).round() / 10.0,
    });
    if let Some(t) = &args.truth {
        let truth = read_mask(t)?;
        gmmas_imaging::same_grid(&truth.grid, &mask.grid).context("--truth is not on the image's grid")?;
        let want: Vec<bool> = truth.data.iter().map(|&m| m != 0).collect();
        out["dice"] = json!((dice(&got, &want) * 10_000.0).round() / 10_000.0);
    }
    println!("{out}");
    Ok(())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[derive(Args)]
pub struct AddSkullArgs {
    /// Skull-stripped case folder (BraTS naming).
    pub case_dir: PathBuf,
    /// Head image with its skull (NIfTI), e.g. the MNI152 T1 template.
    #[arg(long)]
    pub head: PathBuf,
    /// The head's brain mask (NIfTI, same grid as --head).
    #[arg(long)]
    pub head_mask: PathBuf,
    /// Output folder: the case's sequences with the head around the brain, same names.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the air noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `gmmas add-skull`.
pub fn add_skull(args: AddSkullArgs) -> anyhow::Result<()> {
    let files = gmmas_imaging::brats::discover_case(&args.case_dir)?;
    let mut case: Vec<(Modality, gmmas_imaging::Volume)> = Vec::new();
    for (m, p) in &files.modalities {
        case.push((*m, read_volume(p)?));
    }
    let head = read_volume(&args.head)?;
    let mask = read_mask(&args.head_mask)?;
    gmmas_imaging::same_grid(&head.grid, &mask.grid).context("--head-mask is not on --head's grid")?;
    let headed = gmmas_phantom::skull::embed_in_head(&case, &head, &mask, args.seed)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    for (m, v) in &headed {
        let p = args.out.join(format!("{}_{}.nii.gz", files.name, m.as_str()));
        std::fs::write(&p, gmmas_imaging::write_volume(v, true)).with_context(|| format!("writing {}", p.display()))?;
        println!("{}", p.display());
    }
    Ok(())
}
