//! `gmmas analyze`: the whole pipeline in one process, without NATS or PostgreSQL, for a folder
//! in BraTS naming or a DICOM study; writes `<name>_seg.nii.gz` and `<name>_analysis.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use gmmas_dicom::{Manifest, NativeGrid, Override, StudyOptions};
use gmmas_imaging::{Limits, Modality, PrepOptions, Volume};
use gmmas_models::{Analyzer, InferOptions};
use serde_json::json;

#[derive(Args)]
pub struct AnalyzeArgs {
    /// Case folder: `*_t1/_t1ce/_t2/_flair.nii[.gz]` or `*-t1n/-t1c/-t2w/-t2f` (any non-empty
    /// subset), or a DICOM study: a folder of DICOM files or a zip archive of one.
    pub case_dir: PathBuf,
    /// DICOM: the sequence of a series, by its SeriesNumber (`5=t1ce`, `9=ignore`); repeatable.
    /// Without it, series are identified from their names, contrast and timing tags.
    #[arg(long = "series", value_name = "NUMBER=SEQUENCE", value_parser = parse_override)]
    pub series: Vec<Override>,
    /// DICOM: the sequence whose grid the others are resampled onto (t1, t1ce, t2 or flair).
    #[arg(long, default_value = "t1ce", value_parser = parse_modality)]
    pub reference: Modality,
    /// DICOM: combine the series through the scanner's coordinates alone, without rigid
    /// co-registration to the reference.
    #[arg(long)]
    pub no_register: bool,
    /// Skull stripping: `auto` (when any sequence is not skull-stripped), `always`, or `never`
    /// (unstripped input is refused with the reason).
    #[arg(long, default_value = "auto")]
    pub skull_strip: String,
    /// Brain-extraction network (TorchScript, converted by scripts/setup.sh). Default:
    /// `GMMAS_BRAIN_MODEL_PATH`, else `hd-bet-fold0.pt` among the bundled weights; without one,
    /// the classical extractor, and the analysis says so.
    #[arg(long)]
    pub brain_model: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Model weights (`.safetensors` with its `.json` card beside it). Default: the bundled model,
    /// or the bundled adaptation-module model when a sequence is missing.
    #[arg(long, env = "GMMAS_MODEL_PATH")]
    pub model: Option<PathBuf>,
    /// `auto`, `cpu` or `cuda`.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// MC-Dropout passes (0 = one deterministic pass).
    #[arg(long, default_value_t = 0)]
    pub mc_passes: usize,
    #[command(flatten)]
    pub infer: InferFlags,
}

/// Inference settings shared by `analyze`, `eval` and `eval-missing`.
#[derive(Args, Debug, Clone)]
pub struct InferFlags {
    /// Label cleanup: tumor-filter (Algorithm 1), largest-component or none.
    #[arg(long, default_value = "tumor-filter")]
    pub postprocess: String,
    /// Flip test-time augmentation: average the eight mirrorings of the case (8x the time).
    #[arg(long)]
    pub tta: bool,
    /// Small-ET rule: a predicted enhancing tumour of fewer voxels becomes necrosis (0 = off).
    #[arg(long, default_value_t = 0)]
    pub min_et_voxels: usize,
    /// MC passes after the first decode every voxel, not only the tumour's box (slower; the
    /// uncertainty away from the tumour is then measured instead of 0).
    #[arg(long)]
    pub mc_full: bool,
    /// MC passes per forward (0 = all at once; fewer use less memory).
    #[arg(long, default_value_t = 1)]
    pub mc_batch: usize,
    /// In place of a missing sequence: `zero` (left out of the stems' average) or
    /// `substitute` (a present sequence of similar contrast: T2 for FLAIR, T1 for T1CE, ...).
    #[arg(long, default_value = "zero")]
    pub fill: String,
    /// Half precision (fp16 autocast; CUDA only).
    #[arg(long)]
    pub half: bool,
    /// BatchNorm statistics: `running` (learnt in training), `case` (the case's own) or
    /// `case-if-missing` (the case's own when a sequence is missing).
    #[arg(long, default_value = "running")]
    pub norm_stats: String,
}

impl InferFlags {
    /// The inference options these flags select (`mc_passes` as given).
    pub fn options(&self, mc_passes: usize) -> anyhow::Result<InferOptions> {
        let postprocess = match self.postprocess.as_str() {
            "tumor-filter" => gmmas_models::PostProcess::TumorFilter,
            "largest-component" => gmmas_models::PostProcess::LargestComponent,
            "none" => gmmas_models::PostProcess::None,
            other => anyhow::bail!("--postprocess {other:?}: expected tumor-filter, largest-component or none"),
        };
        let missing_fill = match self.fill.as_str() {
            "zero" => gmmas_models::missing::MissingFill::Zero,
            "substitute" => gmmas_models::missing::MissingFill::Substitute,
            other => anyhow::bail!("--fill {other:?}: expected zero or substitute"),
        };
        let norm_stats = gmmas_models::NormStats::parse(&self.norm_stats).ok_or_else(|| {
            anyhow::anyhow!("--norm-stats {:?}: expected running, case or case-if-missing", self.norm_stats)
        })?;
        Ok(InferOptions {
            mc_passes,
            postprocess,
            tta_flips: self.tta,
            min_et_voxels: self.min_et_voxels,
            mc_roi: !self.mc_full,
            mc_batch: self.mc_batch,
            missing_fill,
            half: self.half,
            norm_stats,
            ..InferOptions::default()
        })
    }
}

fn parse_override(s: &str) -> Result<Override, String> {
    s.parse()
}

fn parse_modality(s: &str) -> Result<Modality, String> {
    Modality::parse(s).ok_or_else(|| format!("{s:?}: expected t1, t1ce, t2 or flair"))
}

/// A case's volumes on one grid, how they were read and their input hashes.
struct Loaded {
    name: String,
    inputs: Vec<(Modality, Volume)>,
    hashes: serde_json::Map<String, serde_json::Value>,
    /// For a DICOM study: each sequence's own grid and the conversion's record.
    dicom: Option<(Vec<NativeGrid>, Manifest)>,
}

/// True when `path` is a zip archive or a folder holding DICOM files but no BraTS-named NIfTI.
fn is_dicom_study(path: &Path) -> bool {
    if path.is_file() {
        return gmmas_dicom::source::is_zip(path);
    }
    gmmas_imaging::brats::discover_case(path).is_err() && gmmas_dicom::source::holds_dicom(path)
}

fn load(args: &AnalyzeArgs) -> anyhow::Result<Loaded> {
    if is_dicom_study(&args.case_dir) {
        let opts =
            StudyOptions { overrides: args.series.clone(), reference: args.reference, ..StudyOptions::default() };
        let conv = gmmas_dicom::convert_path(&args.case_dir, &opts)
            .with_context(|| format!("reading the DICOM study {}", args.case_dir.display()))?;
        for w in &conv.manifest.warnings {
            eprintln!("warning: {w}");
        }
        let mut hashes = serde_json::Map::new();
        for (m, h) in &conv.input_sha256 {
            hashes.insert(m.as_str().into(), json!(h));
        }
        // Named from the series' content, never from the folder (which may carry a patient name).
        let all: String = conv.input_sha256.iter().map(|(_, h)| h.as_str()).collect();
        let name = format!("study-{}", &gmmas_contracts::sha256_hex(all.as_bytes())[..12]);
        return Ok(Loaded { name, inputs: conv.volumes, hashes, dicom: Some((conv.native, conv.manifest)) });
    }
    if !args.series.is_empty() {
        anyhow::bail!("--series names DICOM series, but {} is a NIfTI case folder", args.case_dir.display());
    }
    let files = gmmas_imaging::brats::discover_case(&args.case_dir)?;
    let limits = Limits::default();
    let mut inputs = Vec::new();
    let mut hashes = serde_json::Map::new();
    for (m, path) in &files.modalities {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        hashes.insert(m.as_str().into(), json!(gmmas_runtime::bus::sha256_hex(&bytes)));
        let v = gmmas_imaging::read_volume(&bytes, &limits)
            .with_context(|| format!("{} ({})", m.as_str(), path.display()))?;
        inputs.push((*m, v));
    }
    for pair in inputs.windows(2) {
        gmmas_imaging::same_grid(&inputs[0].1.grid, &pair[1].1.grid)
            .with_context(|| format!("{} is not on the grid of {}", pair[1].0.as_str(), inputs[0].0.as_str()))?;
    }
    Ok(Loaded { name: files.name, inputs, hashes, dicom: None })
}

/// Writes `labels` (on the series' own grid) as a DICOM SEG referencing the series
/// (`<case>_seg_<seq>-native.dcm`); `None` when there is no tumour to export.
fn write_dicom_seg(
    out_dir: &Path,
    name: &str,
    n: &NativeGrid,
    labels: &gmmas_imaging::LabelVolume,
    model_version: &str,
) -> anyhow::Result<Option<String>> {
    if labels.data.iter().all(|&v| v == 0) {
        eprintln!("note: no tumour segmented: no DICOM SEG written for the {} series", n.sequence);
        return Ok(None);
    }
    let bytes = gmmas_dicom::write_seg(&n.source, labels, model_version)
        .with_context(|| format!("writing the DICOM SEG of {}", n.source.name()))?;
    let file = format!("{name}_seg_{}-native.dcm", n.sequence.as_str());
    std::fs::write(out_dir.join(&file), bytes).with_context(|| format!("writing {file}"))?;
    Ok(Some(file))
}

/// Writes the segmentation (and uncertainty map) on each DICOM series' own grid where it differs
/// from the analysis grid, and a DICOM SEG for every series; returns
/// `{sequence: {segmentation, uncertainty}}` and `{sequence: dicom_seg}` file names.
fn write_native(
    out_dir: &Path,
    name: &str,
    native: &[NativeGrid],
    seg_nifti: &[u8],
    uncertainty_nifti: Option<&[u8]>,
    model_version: &str,
) -> anyhow::Result<(serde_json::Value, serde_json::Value)> {
    let limits = Limits::default();
    let seg = gmmas_imaging::read_labels(seg_nifti, &limits).context("reading back the segmentation")?;
    let unc = uncertainty_nifti
        .map(|b| gmmas_imaging::read_volume(b, &limits))
        .transpose()
        .context("reading back the uncertainty map")?;
    let mut files = serde_json::Map::new();
    let mut dicom_segs = serde_json::Map::new();
    for n in native {
        let (m, grid) = (n.sequence, &n.grid);
        if gmmas_imaging::same_grid(&n.in_reference, &seg.grid).is_ok() {
            // The analysis grid is this series' own: only the DICOM SEG is new.
            let mut s = seg.clone();
            s.grid = grid.clone();
            dicom_segs.insert(m.as_str().into(), json!(write_dicom_seg(out_dir, name, n, &s, model_version)?));
            continue;
        }
        // Resampled where the series' voxels lie in the analysis world, written with the
        // series' own affine (so it overlays the series in a viewer).
        let mut s = gmmas_imaging::resample::resample_labels(&seg, &n.in_reference)?;
        s.grid = grid.clone();
        let seg_file = format!("{name}_seg_{}-native.nii.gz", m.as_str());
        std::fs::write(out_dir.join(&seg_file), gmmas_imaging::write_labels(&s, true))
            .with_context(|| format!("writing {seg_file}"))?;
        dicom_segs.insert(m.as_str().into(), json!(write_dicom_seg(out_dir, name, n, &s, model_version)?));
        let mut entry = json!({ "segmentation": seg_file, "dims": grid.dims });
        if let Some(u) = &unc {
            let mut r = gmmas_imaging::resample::resample_linear(u, &n.in_reference)?;
            r.grid = grid.clone();
            let unc_file = format!("{name}_uncertainty_{}-native.nii.gz", m.as_str());
            std::fs::write(out_dir.join(&unc_file), gmmas_imaging::write_volume(&r, true))
                .with_context(|| format!("writing {unc_file}"))?;
            entry["uncertainty"] = json!(unc_file);
        }
        files.insert(m.as_str().into(), entry);
    }
    Ok((serde_json::Value::Object(files), serde_json::Value::Object(dicom_segs)))
}

/// Strips the skull when `--skull-strip` says so (see [`gmmas_models::strip_case`]); loads the
/// brain-extraction network only when a mask is needed.
fn skull_strip(
    args: &AnalyzeArgs,
    inputs: &mut [(Modality, Volume)],
    device: gmmas_models::Device,
) -> anyhow::Result<(Option<gmmas_imaging::LabelVolume>, gmmas_models::StripReport)> {
    let policy: gmmas_models::SkullStrip = args.skull_strip.parse()?;
    let extractor = if gmmas_models::needs_stripping(inputs, policy) {
        match args.brain_model.clone().or_else(gmmas_models::default_brain_model_path) {
            Some(p) => Some(gmmas_models::BrainExtractor::load(&p, device)?),
            None => {
                eprintln!("warning: no brain-extraction network (run scripts/setup.sh): using the classical extractor");
                None
            }
        }
    } else {
        None
    };
    let (mask, report) = gmmas_models::strip_case(inputs, policy, extractor.as_ref())?;
    if let Some(ml) = report.brain_ml {
        eprintln!("skull stripped with {} on {:?}: brain {ml:.0} mL", report.method, report.source_sequence);
    }
    Ok((mask, report))
}

// Long on purpose: a command's sequence: read, prepare, analyse, write outputs; its steps share the case.
pub fn run(args: AnalyzeArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let Loaded { name, mut inputs, hashes, dicom } = load(&args)?;
    let t_load = t0.elapsed();
    let device = gmmas_models::parse_device(&args.device)?;
    let (brain_mask, strip) = skull_strip(&args, &mut inputs, device)?;
    let t_strip = t0.elapsed() - t_load;
    let refs: Vec<_> = inputs.iter().map(|(m, v)| (*m, v)).collect();
    let prepared = gmmas_imaging::prepare(&refs, &PrepOptions::default())?;
    let t_prep = t0.elapsed() - t_load - t_strip;

    // Without --model: the bundled model, or the adaptation-module model when a sequence is missing.
    let model_path = args.model.unwrap_or_else(|| {
        let present = gmmas_imaging::Modality::ALL.map(|m| inputs.iter().any(|(x, _)| *x == m));
        match gmmas_models::default_adapted_model_path() {
            Some(p) if gmmas_models::needs_adapted_model(present) => p,
            _ => gmmas_models::default_model_path(),
        }
    });
    let model = Analyzer::load(&model_path, device)?;
    let opts = args.infer.options(args.mc_passes)?;
    let out = gmmas_models::analyze_prepared(&model, &prepared, &opts)?;

    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let seg_path = args.out.join(format!("{name}_seg.nii.gz"));
    std::fs::write(&seg_path, &out.seg_nifti).with_context(|| format!("writing {}", seg_path.display()))?;
    let uncertainty_file = match &out.uncertainty_nifti {
        Some(bytes) => {
            let p = args.out.join(format!("{name}_uncertainty.nii.gz"));
            std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
            p.file_name().map(|f| f.to_string_lossy().to_string())
        }
        None => None,
    };
    let brain_mask_file = match &brain_mask {
        Some(mask) => {
            let p = args.out.join(format!("{name}_brain-mask.nii.gz"));
            std::fs::write(&p, gmmas_imaging::write_labels(mask, true))
                .with_context(|| format!("writing {}", p.display()))?;
            p.file_name().map(|f| f.to_string_lossy().to_string())
        }
        None => None,
    };
    let present: Vec<&str> = inputs.iter().map(|(m, _)| m.as_str()).collect();
    let missing: Vec<&str> =
        gmmas_imaging::Modality::ALL.iter().map(|m| m.as_str()).filter(|m| !present.contains(m)).collect();
    let mut report = json!({
        "case": name,
        "model_version": model.version(),
        "device": format!("{:?}", model.device()),
        "input_sha256": hashes,
        "modalities": present,
        "missing_modalities": missing,
        "segmentation": seg_path.file_name().map(|f| f.to_string_lossy().to_string()),
        "segmentation_sha256": gmmas_runtime::bus::sha256_hex(&out.seg_nifti),
        "regions": out.regions,
        "probabilities": out.probabilities,
        "mc_passes": args.mc_passes,
        "tta_flips": opts.tta_flips,
        "min_et_voxels": opts.min_et_voxels,
        "postprocess": args.infer.postprocess,
        "probabilities_std": out.probabilities_std,
        "uncertainty": uncertainty_file,
        "mean_uncertainty_wt": out.mean_uncertainty_wt,
        "skull_strip": strip,
        "brain_mask": brain_mask_file,
        "timings_ms": {
            "load": t_load.as_millis() as u64,
            "skull_strip": t_strip.as_millis() as u64,
            "preprocess": t_prep.as_millis() as u64,
            "inference": out.inference_ms as u64,
            "total": t0.elapsed().as_millis() as u64,
        },
        "analyzed_at": chrono::Utc::now(),
    });
    if let Some((native, manifest)) = &dicom {
        report["dicom"] = serde_json::to_value(manifest)?;
        let (native_space, dicom_seg) =
            write_native(&args.out, &name, native, &out.seg_nifti, out.uncertainty_nifti.as_deref(), model.version())?;
        report["native_space"] = native_space;
        report["dicom_seg"] = dicom_seg;
    }
    let json_path = args.out.join(format!("{name}_analysis.json"));
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("wrote {} and {}", seg_path.display(), json_path.display());
    Ok(())
}
