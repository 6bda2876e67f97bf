//! `gmmas to-dicom` (a NIfTI case written as a DICOM study, to try the DICOM path),
//! `gmmas dicom-info` (what GMMAS would take from a study, without analysing it) and
//! `gmmas to-seg` (a label map on a series' grid written as a DICOM SEG referencing it).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use gmmas_dicom::synth::{SynthSeries, write_files, write_series};
use gmmas_dicom::{Override, StudyOptions};
use gmmas_imaging::Limits;

#[derive(Args)]
pub struct ToDicomArgs {
    /// NIfTI case folder (BraTS naming).
    pub case_dir: PathBuf,
    /// Output folder: one sub-folder of DICOM files per series.
    #[arg(long)]
    pub out: PathBuf,
    /// Plane of each sequence's series, in T1, T1ce, T2, FLAIR order: axial, coronal or sagittal
    /// (slices along the volume's third, second or first voxel axis).
    #[arg(long, value_delimiter = ',', default_value = "axial,sagittal,coronal,axial")]
    pub planes: Vec<String>,
}

/// Series descriptions a scanner might write, one per sequence.
const DESCRIPTIONS: [&str; 4] = ["t1_se_tra", "t1_mprage_post_gd", "t2_tse", "t2_tirm_dark-fluid"];

pub fn to_dicom(args: ToDicomArgs) -> anyhow::Result<()> {
    let files = gmmas_imaging::brats::discover_case(&args.case_dir)?;
    for (i, (m, path)) in files.modalities.iter().enumerate() {
        let plane = args.planes.get(m.index()).map(String::as_str).unwrap_or("axial");
        let axis = match plane {
            "axial" => 2,
            "coronal" => 1,
            "sagittal" => 0,
            other => anyhow::bail!("--planes: {other:?}: expected axial, coronal or sagittal"),
        };
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let v =
            gmmas_imaging::read_volume(&bytes, &Limits::default()).with_context(|| format!("{}", path.display()))?;
        let series = SynthSeries::new(i as i64 + 2, DESCRIPTIONS[m.index()], axis);
        let written = write_series(&v, &series)?;
        write_files(&args.out, &written)?;
        println!(
            "series {} \"{}\": {} ({plane}, {} files)",
            series.series_number,
            series.description,
            m,
            written.len()
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct DicomInfoArgs {
    /// A folder of DICOM files or a zip archive of one.
    pub study: PathBuf,
    /// The sequence of a series, by its SeriesNumber (`5=t1ce`, `9=ignore`); repeatable.
    #[arg(long = "series", value_name = "NUMBER=SEQUENCE", value_parser = |s: &str| s.parse::<Override>())]
    pub series: Vec<Override>,
}

pub fn info(args: DicomInfoArgs) -> anyhow::Result<()> {
    let opts = StudyOptions { overrides: args.series, ..StudyOptions::default() };
    let conv =
        gmmas_dicom::convert_path(&args.study, &opts).with_context(|| format!("reading {}", args.study.display()))?;
    println!("{}", serde_json::to_string_pretty(&conv.manifest)?);
    Ok(())
}

#[derive(Args)]
pub struct SegAgreementArgs {
    /// Reference segmentation (NIfTI labels).
    pub a: PathBuf,
    /// Segmentation to compare; resampled onto `a`'s grid through world coordinates (nearest
    /// neighbour), so the two may be on different grids of the same space.
    pub b: PathBuf,
}

/// Prints `{ "voxels_equal": …, "dice": { "wt": …, "tc": …, "et": … } }` for two segmentations.
pub fn seg_agreement(args: SegAgreementArgs) -> anyhow::Result<()> {
    let limits = Limits::default();
    let read = |p: &PathBuf| -> anyhow::Result<gmmas_imaging::LabelVolume> {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        gmmas_imaging::read_labels(&bytes, &limits).with_context(|| format!("{}", p.display()))
    };
    let a = read(&args.a)?;
    let b = gmmas_imaging::resample::resample_labels(&read(&args.b)?, &a.grid)?;
    let equal = a.data.iter().zip(&b.data).filter(|(x, y)| x == y).count() as f64 / a.data.len().max(1) as f64;
    let dice = |r| gmmas_models::metrics::dice(&b.data, &a.data, r);
    use gmmas_models::metrics::Region;
    let out = serde_json::json!({
        "voxels_equal": equal,
        "dice": { "wt": dice(Region::WT), "tc": dice(Region::TC), "et": dice(Region::ET) },
    });
    println!("{out}");
    Ok(())
}

#[derive(Args)]
pub struct ToSegArgs {
    /// Folder holding the DICOM files of the one series the labels were made on.
    #[arg(long)]
    pub series: PathBuf,
    /// Label map (NIfTI, BraTS labels 0, 1, 2, 4) on that series' own grid, e.g. the
    /// `_seg_<sequence>-native.nii.gz` of `gmmas analyze`.
    #[arg(long)]
    pub labels: PathBuf,
    /// Output DICOM SEG file.
    #[arg(long)]
    pub out: PathBuf,
    /// Algorithm version written into the SEG.
    #[arg(long, default_value = concat!("gmmas ", env!("CARGO_PKG_VERSION")))]
    pub model_version: String,
}

/// Writes `--labels` as a DICOM SEG of the series in `--series`.
pub fn to_seg(args: ToSegArgs) -> anyhow::Result<()> {
    let files = gmmas_dicom::source::read_dir(&args.series, &gmmas_dicom::SourceLimits::default())?;
    let source = gmmas_dicom::SegSource::from_files(files).with_context(|| format!("{}", args.series.display()))?;
    let bytes = std::fs::read(&args.labels).with_context(|| format!("reading {}", args.labels.display()))?;
    let labels =
        gmmas_imaging::read_labels(&bytes, &Limits::default()).with_context(|| format!("{}", args.labels.display()))?;
    let seg = gmmas_dicom::write_seg(&source, &labels, &args.model_version)?;
    std::fs::write(&args.out, seg).with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {} (DICOM SEG of {})", args.out.display(), source.name());
    Ok(())
}
