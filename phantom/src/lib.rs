//! Deterministic synthetic BraTS-like cases (phantoms) on a warped normal-brain anatomy, with MRI
//! contrasts from signal equations; same config, seed and anatomy give byte-identical output.

mod anatomy;
mod render;
mod shapes;
pub mod skull;
mod spec;

pub use anatomy::{AnatomySource, TEMPLATE_ENV, TEMPLATE_FILE};

use gmmas_imaging::brats::{CaseLabels, write_labels_csv};
use gmmas_imaging::nifti::{Datatype, write_labels, write_volume_as};
use gmmas_imaging::{ImagingError, LabelVolume, Modality, Volume};
use std::collections::BTreeMap;
use std::path::Path;

/// Smallest and largest accepted phantom dimension.
pub const MIN_DIM: usize = 16;
pub const MAX_DIM: usize = 512;

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhantomConfig {
    /// Grid size; 1 mm isotropic voxels. Default `[240, 240, 155]` (BraTS).
    pub dims: [usize; 3],
    pub seed: u64,
}

impl Default for PhantomConfig {
    fn default() -> Self {
        PhantomConfig { dims: [240, 240, 155], seed: 0 }
    }
}

/// A generated case: four co-registered modalities, the segmentation and class labels.
#[derive(Clone, Debug)]
pub struct PhantomCase {
    /// T1, T1ce, T2, FLAIR (in that order); integer-valued, background exactly 0.
    pub volumes: Vec<(Modality, Volume)>,
    /// Labels 0, 1 (NCR), 2 (ED), 4 (ET).
    pub seg: LabelVolume,
    /// Reported labels, with some label noise and unknowns (what a labels CSV would hold).
    pub labels: CaseLabels,
    /// The classes that actually drove the image features.
    pub truth: CaseLabels,
    /// The normal-brain anatomy the case was built on.
    pub anatomy: AnatomySource,
}

/// The anatomy [`generate`] builds on in this process: the asldro template when found (looked for
/// once: `$GMMAS_ANATOMY_TEMPLATE`, the asldro package in `$VIRTUAL_ENV`, then
/// `../shared/data/templates/` from the current and the crate directory), else the procedural
/// brain. Set `GMMAS_ANATOMY_TEMPLATE=procedural` to force the latter.
pub fn anatomy() -> AnatomySource {
    anatomy::global().source
}

/// Path of the template file in use, if any.
pub fn anatomy_path() -> Option<&'static Path> {
    anatomy::global().path.as_deref()
}

fn render_with(cfg: &PhantomConfig, anat: &'static anatomy::Anatomy) -> render::Rendered {
    render::render(&spec::sample(cfg, anat))
}

/// What a phantom holds. The two non-glioma kinds are the glioma case of the same seed with
/// the glioma taken out (same brain, scanner and noise), for testing inputs unlike the
/// training data; their segmentation is empty and their class labels unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PhantomKind {
    /// A glioma with NCR / ED / ET (the default).
    #[default]
    Glioma,
    /// A normal brain without any lesion.
    LesionFree,
    /// A sharply bounded, homogeneous lesion bright on T1 / T1ce and dark on T2 / FLAIR (short
    /// T1 and T2, like blood products or fat), without edema, enhancement or mass effect.
    NonGlioma,
}

impl PhantomKind {
    /// Parses `glioma`, `lesion-free` or `non-glioma`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "glioma" => Some(Self::Glioma),
            "lesion-free" => Some(Self::LesionFree),
            "non-glioma" => Some(Self::NonGlioma),
            _ => None,
        }
    }

    /// The name [`PhantomKind::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Glioma => "glioma",
            Self::LesionFree => "lesion-free",
            Self::NonGlioma => "non-glioma",
        }
    }
}

/// Generates one case of `kind`, or errors when a dimension is outside `MIN_DIM..=MAX_DIM`.
pub fn try_generate_kind(cfg: &PhantomConfig, kind: PhantomKind) -> Result<PhantomCase, ImagingError> {
    if kind == PhantomKind::Glioma {
        return try_generate(cfg);
    }
    for (i, &d) in cfg.dims.iter().enumerate() {
        if !(MIN_DIM..=MAX_DIM).contains(&d) {
            return Err(ImagingError::invalid(format!("phantom dims[{i}]"), d, format!("{MIN_DIM}..={MAX_DIM}")));
        }
    }
    let spec = spec::without_glioma(spec::sample(cfg, anatomy::global()), kind == PhantomKind::NonGlioma);
    Ok(render::render(&spec).case)
}

/// Generates one case, or errors when a dimension is outside `MIN_DIM..=MAX_DIM`.
pub fn try_generate(cfg: &PhantomConfig) -> Result<PhantomCase, ImagingError> {
    for (i, &d) in cfg.dims.iter().enumerate() {
        if !(MIN_DIM..=MAX_DIM).contains(&d) {
            return Err(ImagingError::invalid(format!("phantom dims[{i}]"), d, format!("{MIN_DIM}..={MAX_DIM}")));
        }
    }
    Ok(render_with(cfg, anatomy::global()).case)
}

/// Generates one case; dimensions are clamped to `MIN_DIM..=MAX_DIM`.
pub fn generate(cfg: &PhantomConfig) -> PhantomCase {
    let cfg = PhantomConfig { dims: cfg.dims.map(|d| d.clamp(MIN_DIM, MAX_DIM)), seed: cfg.seed };
    render_with(&cfg, anatomy::global()).case
}

/// Writes `<dir>/<name>/<name>_{t1,t1ce,t2,flair}.nii.gz` (int16) and `<name>_seg.nii.gz` (uint8).
pub fn write_brats_case(c: &PhantomCase, dir: &Path, name: &str) -> Result<(), ImagingError> {
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(ImagingError::invalid(
            "case name",
            format!("{name:?}"),
            "a non-empty file name without path separators",
        ));
    }
    let case_dir = dir.join(name);
    std::fs::create_dir_all(&case_dir).map_err(|e| ImagingError::io(&case_dir, e))?;
    let files: Vec<(String, Result<Vec<u8>, ImagingError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = c
            .volumes
            .iter()
            .map(|(m, v)| {
                s.spawn(move || (format!("{name}_{}.nii.gz", m.as_str()), write_volume_as(v, Datatype::I16, true)))
            })
            .collect();
        let mut out: Vec<_> = handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            })
            .collect();
        out.push((format!("{name}_seg.nii.gz"), Ok(write_labels(&c.seg, true))));
        out
    });
    for (file, bytes) in files {
        let path = case_dir.join(&file);
        let bytes = bytes.map_err(|e| e.in_file(&path))?;
        std::fs::write(&path, bytes).map_err(|e| ImagingError::io(&path, e))?;
    }
    Ok(())
}

/// Seed of case `i` of a dataset generated from `seed`.
pub fn case_seed(seed: u64, i: usize) -> u64 {
    let mut z = seed ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z ^ (z >> 29)
}

/// Writes `n` cases named `Phantom_0000`, ... under `out` plus `out/labels.csv` (reported labels).
/// Returns the case names.
pub fn write_dataset(n: usize, seed: u64, dims: [usize; 3], out: &Path) -> Result<Vec<String>, ImagingError> {
    write_dataset_kind(n, seed, dims, PhantomKind::Glioma, out)
}

/// [`write_dataset`] for phantoms of `kind` (the same seeds give the same brains as the
/// glioma dataset, without the glioma).
pub fn write_dataset_kind(
    n: usize,
    seed: u64,
    dims: [usize; 3],
    kind: PhantomKind,
    out: &Path,
) -> Result<Vec<String>, ImagingError> {
    write_dataset_with_progress(n, seed, dims, kind, out, |_, _| {})
}

/// [`write_dataset_kind`], calling `written(i, name)` after each case is on disk.
pub fn write_dataset_with_progress(
    n: usize,
    seed: u64,
    dims: [usize; 3],
    kind: PhantomKind,
    out: &Path,
    mut written: impl FnMut(usize, &str),
) -> Result<Vec<String>, ImagingError> {
    std::fs::create_dir_all(out).map_err(|e| ImagingError::io(out, e))?;
    let mut names = Vec::with_capacity(n);
    let mut labels = BTreeMap::new();
    for i in 0..n {
        let name = format!("Phantom_{i:04}");
        let case = try_generate_kind(&PhantomConfig { dims, seed: case_seed(seed, i) }, kind)?;
        write_brats_case(&case, out, &name)?;
        labels.insert(name.clone(), case.labels);
        written(i, &name);
        names.push(name);
    }
    write_labels_csv(&out.join("labels.csv"), &labels)?;
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gmmas_imaging::Limits;
    use gmmas_imaging::brats::{discover_case, load_case, read_labels_csv};
    use gmmas_imaging::nifti::write_volume;
    use gmmas_imaging::region_stats;

    const SMALL: [usize; 3] = [48, 48, 40];

    fn small(seed: u64) -> PhantomCase {
        generate(&PhantomConfig { dims: SMALL, seed })
    }

    fn bytes(c: &PhantomCase) -> Vec<u8> {
        let mut out = Vec::new();
        for (_, v) in &c.volumes {
            out.extend(write_volume(v, false));
        }
        out.extend(gmmas_imaging::nifti::write_labels(&c.seg, false));
        out
    }

    #[test]
    fn deterministic_per_seed() {
        let a = small(11);
        let b = small(11);
        assert_eq!(bytes(&a), bytes(&b));
        assert_eq!(a.labels, b.labels);
        let c = small(12);
        assert_ne!(bytes(&a), bytes(&c));
        // Written files are byte-identical too.
        let t = tempfile::tempdir().unwrap();
        write_brats_case(&a, t.path(), "one").unwrap();
        write_brats_case(&b, t.path(), "two").unwrap();
        for suffix in ["t1", "t1ce", "t2", "flair", "seg"] {
            let x = std::fs::read(t.path().join(format!("one/one_{suffix}.nii.gz"))).unwrap();
            let y = std::fs::read(t.path().join(format!("two/two_{suffix}.nii.gz"))).unwrap();
            assert_eq!(x, y, "{suffix}");
        }
    }

    /// Structure every phantom must have: four int16-range modalities on one grid, labels
    /// 1, 2 and 4 present, skull-stripped (background exactly 0 in all modalities), the tumour
    /// inside the brain, the brain clear of every grid face, codeletion only with IDH mutation.
    fn check_well_formed(c: &PhantomCase, what: &str) {
        assert_eq!(c.volumes.len(), 4);
        let mut counts = [0usize; 256];
        for &l in &c.seg.data {
            counts[l as usize] += 1;
        }
        for l in [1, 2, 4] {
            assert!(counts[l] > 0, "{what}: label {l} missing: {:?}", &counts[..5]);
        }
        assert_eq!(counts[0] + counts[1] + counts[2] + counts[4], c.seg.data.len());
        for (k, (m, v)) in c.volumes.iter().enumerate() {
            assert_eq!(*m, Modality::ALL[k]);
            assert_eq!(v.grid, c.seg.grid);
            assert!(v.data.iter().all(|x| x.fract() == 0.0 && (0.0..=32767.0).contains(x)));
        }
        let t1 = &c.volumes[0].1.data;
        for (i, &x) in t1.iter().enumerate() {
            let brain = x != 0.0;
            assert!(c.volumes.iter().all(|(_, v)| (v.data[i] != 0.0) == brain));
            assert!(brain || c.seg.data[i] == 0, "{what}: tumour outside the brain");
        }
        let [nx, ny, nz] = c.seg.grid.dims;
        assert!((0..nx * ny).all(|i| t1[i] == 0.0), "{what}: bottom slice is background");
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    if x == 0 || y == 0 || z == 0 || x == nx - 1 || y == ny - 1 || z == nz - 1 {
                        assert_eq!(t1[x + nx * (y + ny * z)], 0.0, "{what}: brain on a face");
                    }
                }
            }
        }
        if c.labels.codel_1p19q == Some(true) {
            assert_eq!(c.labels.idh_mutant, Some(true));
        }
        if c.truth.codel_1p19q == Some(true) {
            assert_eq!(c.truth.idh_mutant, Some(true));
        }
    }

    #[test]
    fn non_glioma_kinds_keep_the_brain_and_change_only_the_lesion() {
        let cfg = PhantomConfig { dims: [64, 64, 48], seed: 5 };
        let glioma = try_generate_kind(&cfg, PhantomKind::Glioma).unwrap();
        assert_eq!(bytes(&glioma), bytes(&generate(&cfg)));
        let free = try_generate_kind(&cfg, PhantomKind::LesionFree).unwrap();
        let other = try_generate_kind(&cfg, PhantomKind::NonGlioma).unwrap();
        for c in [&free, &other] {
            assert!(c.seg.data.iter().all(|&l| l == 0));
            assert_eq!(c.labels, CaseLabels::default());
            assert_eq!(c.truth, CaseLabels::default());
        }
        // The lesion is where the two differ: bright on T1 / T1ce, dark on T2 / FLAIR.
        let n = free.seg.data.len();
        let lesion: Vec<usize> =
            (0..n).filter(|&i| (0..4).any(|k| free.volumes[k].1.data[i] != other.volumes[k].1.data[i])).collect();
        assert!(lesion.len() > 200, "{} lesion voxels", lesion.len());
        let mean = |c: &PhantomCase, k: usize| lesion.iter().map(|&i| f64::from(c.volumes[k].1.data[i])).sum::<f64>();
        assert!(mean(&other, 0) > 1.2 * mean(&free, 0), "T1");
        assert!(mean(&other, 1) > 1.1 * mean(&free, 1), "T1ce");
        assert!(mean(&other, 2) < 0.8 * mean(&free, 2), "T2");
        assert!(mean(&other, 3) < 0.8 * mean(&free, 3), "FLAIR");
        assert_eq!(PhantomKind::parse("non-glioma"), Some(PhantomKind::NonGlioma));
        assert_eq!(PhantomKind::parse(PhantomKind::LesionFree.as_str()), Some(PhantomKind::LesionFree));
        assert!(try_generate_kind(&PhantomConfig { dims: [8, 64, 64], seed: 1 }, PhantomKind::NonGlioma).is_err());
    }

    #[test]
    fn small_phantoms_are_well_formed() {
        for seed in 0..24 {
            let c = small(seed);
            assert_eq!(c.anatomy, anatomy());
            check_well_formed(&c, &format!("seed {seed}"));
        }
    }

    #[test]
    fn procedural_fallback_is_well_formed() {
        for seed in 0..12 {
            let cfg = PhantomConfig { dims: SMALL, seed };
            let c = render_with(&cfg, anatomy::procedural()).case;
            assert_eq!(c.anatomy, AnatomySource::Procedural);
            check_well_formed(&c, &format!("procedural seed {seed}"));
        }
        // Tiny grids still hold a whole brain.
        for seed in 0..4 {
            let c = render_with(&PhantomConfig { dims: [16; 3], seed }, anatomy::procedural()).case;
            assert!(c.volumes[0].1.data.iter().any(|&v| v > 0.0));
        }
    }

    /// Mean of `v` over voxels of normal tissue `t` (1 GM, 2 WM, 3 CSF).
    fn tissue_mean(v: &Volume, tissue: &[u8], t: u8) -> f64 {
        let (s, n) = v
            .data
            .iter()
            .zip(tissue)
            .filter(|(_, l)| **l == t)
            .fold((0.0, 0usize), |(s, n), (x, _)| (s + f64::from(*x), n + 1));
        assert!(n > 20, "tissue {t}: {n} voxels");
        s / n as f64
    }

    fn check_contrasts(anat: &'static anatomy::Anatomy) {
        for seed in 0..4 {
            let r = render_with(&PhantomConfig { dims: [96, 96, 64], seed: 300 + seed }, anat);
            let c = &r.case;
            let m = |k: usize, t: u8| tissue_mean(&c.volumes[k].1, &r.tissue, t);
            let (gm, wm, csf) = (1, 2, 3);
            let what = format!("{:?} seed {seed}", anat.source);
            println!("{what}: {:?}", (0..4).map(|k| [gm, wm, csf].map(|t| m(k, t).round())).collect::<Vec<_>>());
            assert!(m(0, wm) > m(0, gm) && m(0, gm) > m(0, csf), "T1w: {what}");
            assert!(m(1, wm) > m(1, gm) && m(1, gm) > m(1, csf), "T1ce: {what}");
            assert!(m(2, csf) > m(2, gm) && m(2, gm) > m(2, wm), "T2w: {what}");
            let fl = &c.volumes[3].1;
            assert!(m(3, csf) < 0.5 * m(3, wm), "FLAIR CSF dark: {what}");
            assert!(mean_in(fl, &c.seg, 2) > 1.2 * m(3, wm), "FLAIR edema bright: {what}");
            let t2 = &c.volumes[2].1;
            assert!(mean_in(t2, &c.seg, 2) > m(2, gm), "T2w edema bright: {what}");
        }
    }

    #[test]
    fn tissue_contrasts_follow_the_signal_equations() {
        check_contrasts(anatomy::procedural());
        if anatomy() == AnatomySource::Template {
            check_contrasts(anatomy::global());
        } else {
            println!("notice: no {TEMPLATE_FILE}; template contrast checks skipped");
        }
    }

    /// Case-level feature frequencies by class, from the sampled descriptions (no rendering).
    #[test]
    fn label_feature_table_frequencies() {
        let anat = anatomy::global();
        let n = 3000;
        // [count, ring, mismatch, frontal, cortical, calcified, multifocal]
        let mut by: BTreeMap<&str, [usize; 7]> = BTreeMap::new();
        let mut flips = [0usize; 2];
        for seed in 0..n {
            let s = spec::sample(&PhantomConfig { dims: SMALL, seed }, anat);
            let (t, f) = (s.truth, s.features);
            assert!(!t.codel || t.idh, "codeletion only with IDH mutation");
            assert!(!f.ring || t.gbm, "ring enhancement only in grade 4");
            let class = if t.gbm {
                "gbm"
            } else if t.codel {
                "lgg-idh-codel"
            } else if t.idh {
                "lgg-idh"
            } else {
                "lgg-wt"
            };
            let e = by.entry(class).or_default();
            for (k, v) in
                [true, f.ring, f.mismatch, f.frontal, f.cortical, f.calcified, f.multifocal].into_iter().enumerate()
            {
                e[k] += usize::from(v);
            }
            flips[0] += usize::from(s.reported.grade_gbm != Some(t.gbm));
            flips[1] += usize::from(s.reported.idh_mutant != Some(t.idh));
        }
        let rate = |c: &str, k: usize| by[c][k] as f64 / by[c][0] as f64;
        println!("{by:?}");
        assert!(rate("gbm", 1) > 0.8, "GBM ring");
        assert!(rate("lgg-idh", 2) > 0.65, "mismatch in IDH-mutant astrocytoma");
        assert!(rate("lgg-wt", 2) < 0.15 && rate("lgg-idh-codel", 2) < 0.25);
        assert!(rate("lgg-idh", 3) > 0.65 && rate("lgg-wt", 3) < 0.4, "frontal");
        assert!(rate("lgg-idh-codel", 4) > 0.7 && rate("lgg-wt", 4) < 0.25, "cortical");
        assert!(rate("lgg-idh-codel", 5) > 0.4 && rate("lgg-idh", 5) < 0.1, "calcified");
        assert!(rate("gbm", 6) > 2.0 * rate("lgg-wt", 6).max(0.02), "multifocal");
        // Label noise: a few percent of reported grades and IDH states are wrong.
        for f in flips {
            let r = f as f64 / n as f64;
            assert!(r > 0.01 && r < 0.06, "label noise {r}");
        }
    }

    fn mean_in(v: &Volume, seg: &LabelVolume, label: u8) -> f64 {
        let (s, n) = v
            .data
            .iter()
            .zip(&seg.data)
            .filter(|(_, l)| **l == label)
            .fold((0.0, 0usize), |(s, n), (x, _)| (s + f64::from(*x), n + 1));
        s / n.max(1) as f64
    }

    fn brain_mean(v: &Volume, seg: &LabelVolume) -> f64 {
        let (s, n) = v
            .data
            .iter()
            .zip(&seg.data)
            .filter(|(x, l)| **x != 0.0 && **l == 0)
            .fold((0.0, 0usize), |(s, n), (x, _)| (s + f64::from(*x), n + 1));
        s / n.max(1) as f64
    }

    #[test]
    fn class_features_over_many_phantoms() {
        let cases: Vec<PhantomCase> = (0..40).map(|s| small(1000 + s)).collect();
        let mut et = [(0.0, 0usize); 2]; // [LGG, GBM]
        let mut wt = [(0.0, 0usize); 2];
        let mut y = [(0.0, 0usize); 2]; // [IDH-wt, IDH-mutant]
        let mut mismatch = [(0.0, 0usize); 2];
        for c in &cases {
            let gbm = c.truth.grade_gbm == Some(true);
            let idh = c.truth.idh_mutant == Some(true);
            let r = region_stats(&c.seg);
            let add = |acc: &mut (f64, usize), v: f64| {
                acc.0 += v;
                acc.1 += 1;
            };
            add(&mut et[gbm as usize], r.et_ml);
            add(&mut wt[gbm as usize], r.wt_ml);
            // Tumour centroid in world y (anterior is +y).
            let [nx, ny, _] = c.seg.grid.dims;
            let (mut sy, mut n) = (0.0, 0usize);
            for (i, &l) in c.seg.data.iter().enumerate() {
                if l != 0 {
                    sy += c.seg.grid.world([0.0, ((i / nx) % ny) as f64, 0.0])[1];
                    n += 1;
                }
            }
            add(&mut y[idh as usize], sy / n as f64);
            // T2-FLAIR mismatch inside the non-enhancing core (label 1), relative to normal brain.
            let t2 = &c.volumes[2].1;
            let fl = &c.volumes[3].1;
            let ratio =
                (mean_in(fl, &c.seg, 1) / brain_mean(fl, &c.seg)) / (mean_in(t2, &c.seg, 1) / brain_mean(t2, &c.seg));
            add(&mut mismatch[idh as usize], ratio);
            // Enhancement: ET brighter than ED on T1ce, edema bright on FLAIR.
            let t1ce = &c.volumes[1].1;
            assert!(mean_in(t1ce, &c.seg, 4) > mean_in(t1ce, &c.seg, 2));
            assert!(mean_in(fl, &c.seg, 2) > brain_mean(fl, &c.seg));
        }
        let mean = |a: (f64, usize)| a.0 / a.1.max(1) as f64;
        println!(
            "ET ml [LGG, GBM] {:.2?}; centroid y [IDH-wt, IDH-mut] {:.2?}; mismatch {:.3?}",
            et.map(mean),
            y.map(mean),
            mismatch.map(mean)
        );
        for group in [et, y] {
            assert!(group[0].1 >= 5 && group[1].1 >= 5, "both classes sampled: {group:?}");
        }
        assert!(mean(et[1]) > 2.0 * mean(et[0]), "ET GBM {et:?} vs LGG");
        assert!(mean(y[1]) > mean(y[0]) + 2.0, "IDH-mutant more frontal: {y:?}");
        assert!(mean(mismatch[1]) < mean(mismatch[0]), "T2-FLAIR mismatch: {mismatch:?}");
    }

    #[test]
    fn full_size_case() {
        let t = std::time::Instant::now();
        let c = generate(&PhantomConfig::default());
        println!(
            "240x240x155 on {:?} anatomy: {:.2} s (including the one-time load)",
            c.anatomy,
            t.elapsed().as_secs_f64()
        );
        check_well_formed(&c, "full size");
        assert_eq!(c.seg.grid.dims, [240, 240, 155]);
        assert_eq!(c.seg.grid.affine[0][0], 1.0);
        let r = region_stats(&c.seg);
        assert!(r.ncr_ml > 0.0 && r.ed_ml > 0.0 && r.et_ml > 0.0, "{r:?}");
        assert!(r.wt_ml > 5.0 && r.wt_ml < 400.0, "{r:?}");
    }

    #[test]
    fn dataset_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let names = write_dataset(3, 5, [32, 32, 24], t.path()).unwrap();
        assert_eq!(names, ["Phantom_0000", "Phantom_0001", "Phantom_0002"]);
        let labels = read_labels_csv(&t.path().join("labels.csv")).unwrap();
        assert_eq!(labels.len(), 3);
        for (i, name) in names.iter().enumerate() {
            let files = discover_case(&t.path().join(name)).unwrap();
            assert_eq!(&files.name, name);
            assert_eq!(files.modalities.len(), 4);
            let loaded = load_case(&files, &Limits::default()).unwrap();
            let direct = try_generate(&PhantomConfig { dims: [32, 32, 24], seed: case_seed(5, i) }).unwrap();
            for ((m, v), (dm, dv)) in loaded.volumes.iter().zip(&direct.volumes) {
                assert_eq!(m, dm);
                assert_eq!(v, dv);
            }
            assert_eq!(loaded.seg.unwrap(), direct.seg);
            assert_eq!(labels[name], direct.labels);
        }
        assert!(try_generate(&PhantomConfig { dims: [8, 48, 48], seed: 0 }).is_err());
        let clamped = generate(&PhantomConfig { dims: [0, 20, 20], seed: 0 });
        assert_eq!(clamped.seg.grid.dims, [MIN_DIM, 20, 20]);
        assert!(write_brats_case(&clamped, t.path(), "../x").is_err());
    }
}
