//! Training data: BraTS case folders (2018-2021 or 2023 naming) plus labels CSVs, split into
//! train / val / test by a split file or a seeded k-fold, validated up front and cached in memory.
//!
//! [`Dataset::load`] reads, checks and preprocesses every case before any training starts:
//! each unreadable or missing file, grid mismatch, unknown label value or failed
//! preprocessing is collected, and all of them are reported together in one [`DataError`]
//! (by case name and path), or the bad cases are skipped with a warning when
//! `skip_bad_cases` is set. Nothing that can fail is left for the middle of an epoch.
//!
//! Cases are prepared exactly as the inference service prepares them
//! ([`gmmas_imaging::prepare`] with default options: RAS, 1 mm, brain crop, z-score), so the
//! network trains on what it will see. Segmentations are stored as network classes 0..3
//! (0 background, 1 NCR, 2 ED, 3 ET).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use gmmas_imaging::brats::{CaseFiles, CaseLabels};
use gmmas_imaging::{Limits, Modality, PrepOptions};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{MODALITIES, TASK_NAMES, TASKS};
use crate::partial::{SEG_IGNORE, SEG_TUMOUR, SegSupervision};
use crate::weights::sha256_hex;

/// Which part of the data a case belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subset {
    /// Used for gradient steps.
    Train,
    /// Used to monitor training (model selection).
    Val,
    /// Held out for the final evaluation.
    Test,
}

impl Subset {
    /// Parses `train`, `val` / `valid` / `validation`, `test`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" | "training" => Some(Self::Train),
            "val" | "valid" | "validation" => Some(Self::Val),
            "test" | "testing" => Some(Self::Test),
            _ => None,
        }
    }

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Val => "val",
            Self::Test => "test",
        }
    }
}

/// How cases are split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SplitConfig {
    /// Every case is a training case (no validation).
    #[default]
    All,
    /// A text / CSV file with one `case,subset` row per line (`,`, tab, `;` or spaces
    /// between; `#` starts a comment; an optional header row). Cases the file does not
    /// name are left out with a warning.
    File {
        /// The split file.
        path: PathBuf,
    },
    /// Deterministic k-fold: case names sorted, shuffled with `seed`, case `i` of the
    /// shuffled list goes to fold `i % k`; fold `fold` is validation, the rest training.
    KFold {
        /// Number of folds (>= 2).
        k: usize,
        /// Validation fold (0-based, < k).
        fold: usize,
        /// Shuffle seed.
        #[serde(default)]
        seed: u64,
    },
}

fn default_required() -> Vec<String> {
    Modality::ALL.iter().map(|m| m.as_str().to_string()).collect()
}

fn default_true() -> bool {
    true
}

/// Where the data is and how to read it (the `[data]` table of a run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Case folders, or folders whose sub-folders are case folders (both may be mixed).
    pub dirs: Vec<PathBuf>,
    /// Labels CSVs (grade, IDH, 1p/19q, MGMT; blank = unknown); merged, first wins.
    #[serde(default)]
    pub labels: Vec<PathBuf>,
    /// Train / val / test assignment.
    #[serde(default)]
    pub split: SplitConfig,
    /// Skip bad cases with a warning instead of failing.
    #[serde(default)]
    pub skip_bad_cases: bool,
    /// Every case must have a segmentation (training: yes; evaluation of classification
    /// only: no).
    #[serde(default = "default_true")]
    pub require_seg: bool,
    /// Modalities every case must have (default all four; `[]` accepts any subset).
    #[serde(default = "default_required")]
    pub required_modalities: Vec<String>,
    /// Cases whose prepared grid has more voxels than this are prepared at a coarser
    /// isotropic spacing (recorded per case). None = always 1 mm, as inference does.
    #[serde(default)]
    pub max_case_voxels: Option<usize>,
    /// Use only the first N cases (sorted by name) — for quick runs.
    #[serde(default)]
    pub max_cases: Option<usize>,
    /// Loader threads (0 = available parallelism).
    #[serde(default)]
    pub threads: usize,
    /// Folders (like `dirs`) whose cases are always training cases: never in a k-fold
    /// validation fold and kept even when a split file does not name them (e.g. the
    /// whole-tumour-only cases added to every fold). The k-fold assignment of the other
    /// cases is the same as without them.
    #[serde(default)]
    pub train_only_dirs: Vec<PathBuf>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dirs: Vec::new(),
            labels: Vec::new(),
            split: SplitConfig::All,
            skip_bad_cases: false,
            require_seg: true,
            required_modalities: default_required(),
            max_case_voxels: None,
            max_cases: None,
            threads: 0,
            train_only_dirs: Vec::new(),
        }
    }
}

impl DataConfig {
    /// Resolves relative paths against `base` (the config file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| *p = join_clean(base, p);
        self.dirs.iter_mut().for_each(fix);
        self.labels.iter_mut().for_each(fix);
        self.train_only_dirs.iter_mut().for_each(fix);
        if let SplitConfig::File { path } = &mut self.split {
            fix(path);
        }
    }
}

/// `base.join(p)` for a relative `p` (else `p`), with `a/..` pairs removed lexically.
pub fn join_clean(base: &Path, p: &Path) -> PathBuf {
    use std::path::Component;
    let joined = if p.is_relative() { base.join(p) } else { p.to_path_buf() };
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.is_empty() { PathBuf::from(".") } else { out.iter().collect() }
}

/// One problem found while validating the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseProblem {
    /// Case name (or the folder / file name when no case name is known).
    pub case: String,
    /// The offending file or folder.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for CaseProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "case {} ({}): {}", self.case, self.path.display(), self.message)
    }
}

/// Every problem of a dataset, reported at once.
#[derive(Debug, Clone, PartialEq)]
pub struct DataError {
    /// The problems, in case order.
    pub problems: Vec<CaseProblem>,
}

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} problem(s) in the training data (fix them, or set skip_bad_cases = true to \
             leave those cases out):",
            self.problems.len()
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DataError {}

/// A voxel box `(lo, hi)`, `hi` exclusive, per axis x / y / z.
pub type BBox = ([usize; 3], [usize; 3]);

/// A validated, preprocessed case held in memory.
#[derive(Debug, Clone)]
pub struct CaseData {
    /// Case name (file prefix).
    pub name: String,
    /// Case folder.
    pub dir: PathBuf,
    /// Prepared grid `[nx, ny, nz]`.
    pub dims: [usize; 3],
    /// Voxel size in mm of the prepared grid per axis.
    pub spacing: [f64; 3],
    /// Modality presence (t1, t1ce, t2, flair).
    pub present: [bool; MODALITIES],
    /// Four channels, channel-major, each x fastest; absent channels are zeros.
    pub image: Vec<f32>,
    /// Network classes 0..3 (0 bg, 1 NCR, 2 ED, 3 ET) per voxel, or partial targets
    /// ([`SEG_TUMOUR`] inside a whole-tumour mask, [`SEG_IGNORE`] where nothing is known);
    /// all [`SEG_IGNORE`] without any segmentation file.
    pub seg: Vec<u8>,
    /// Whether a full (sub-region) segmentation file was given: the cases whose Dice per
    /// region can be scored.
    pub has_seg: bool,
    /// What segmentation supervision `seg` carries (full, whole tumour, partial, none).
    pub supervision: SegSupervision,
    /// Labels of the four tasks (grade GBM, IDH mutant, 1p/19q codeleted, MGMT methylated).
    pub tasks: [Option<bool>; TASKS],
    /// Tumour bounding box `(lo, hi)` in voxels (`hi` exclusive), x/y/z; None without tumour.
    pub tumor_bbox: Option<BBox>,
    /// Number of tumour voxels.
    pub tumor_voxels: usize,
    /// `(role, sha256)` of each file read (`t1`, ..., `seg`).
    pub file_sha256: Vec<(String, String)>,
    /// sha256 over the file hashes.
    pub sha256: String,
}

impl CaseData {
    /// Voxels per channel.
    pub fn voxels(&self) -> usize {
        self.dims.iter().product()
    }

    /// The segmentation in BraTS values (0, 1, 2, 4).
    pub fn brats_labels(&self) -> Vec<u8> {
        self.seg.iter().map(|&c| if c == 3 { 4 } else { c }).collect()
    }
}

/// Counts of the labelled classes of each task in one subset and the eq. (5) weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassBalance {
    /// `[negatives, positives]` per task.
    pub counts: [[usize; 2]; TASKS],
    /// `[w_negative, w_positive]` per task (see [`class_weights`]).
    pub weights: [[f64; 2]; TASKS],
}

/// The class weights of eq. (5) from label counts.
///
/// The paper writes `w_i = n_i / sum_j n_j` but states the intent that "the model focuses on
/// fewer categories"; that formula would weigh the majority class more. We use the inverse
/// frequency `w_i = N / (C n_i)` (C = 2), which gives the minority class the larger weight
/// and reduces to `[1, 1]` for balanced data. A task with an empty class (or no labels)
/// gets `[1, 1]`.
pub fn class_weights(counts: [usize; 2]) -> [f64; 2] {
    let n = counts[0] + counts[1];
    if counts[0] == 0 || counts[1] == 0 {
        return [1.0, 1.0];
    }
    counts.map(|c| n as f64 / (2.0 * c as f64))
}

/// The loaded data.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Cases sorted by name.
    pub cases: Vec<CaseData>,
    /// Subset of each case (same order as `cases`).
    pub subsets: Vec<Subset>,
    /// Non-fatal findings (skipped cases, unlabelled cases, cases left out of the split...).
    pub warnings: Vec<String>,
    /// Problems of the cases left out with `skip_bad_cases`.
    pub skipped: Vec<CaseProblem>,
}

fn problem(case: &str, path: &Path, message: impl Into<String>) -> CaseProblem {
    CaseProblem { case: case.to_string(), path: path.to_path_buf(), message: message.into() }
}

/// Finds case folders: a folder with BraTS files is a case; otherwise each non-hidden
/// sub-folder is one.
fn discover(dirs: &[PathBuf], problems: &mut Vec<CaseProblem>) -> Vec<(PathBuf, CaseFiles)> {
    let mut out = Vec::new();
    for dir in dirs {
        let label =
            dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string());
        if !dir.is_dir() {
            problems.push(problem(&label, dir, "data folder not found"));
            continue;
        }
        if let Ok(files) = gmmas_imaging::brats::discover_case(dir) {
            out.push((dir.clone(), files));
            continue;
        }
        let mut subs: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                .collect(),
            Err(e) => {
                problems.push(problem(&label, dir, format!("cannot list folder: {e}")));
                continue;
            }
        };
        subs.sort();
        if subs.is_empty() {
            problems.push(problem(&label, dir, "no BraTS case here: expected case files or case sub-folders"));
        }
        for sub in subs {
            let name = sub.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match gmmas_imaging::brats::discover_case(&sub) {
                Ok(files) => out.push((sub, files)),
                Err(e) => problems.push(problem(&name, &sub, e.to_string())),
            }
        }
    }
    out
}

/// Reads a split file into case -> subset; errors name the line.
pub fn read_split_file(path: &Path) -> Result<BTreeMap<String, Subset>, CaseProblem> {
    let bad = |m: String| problem("split file", path, m);
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut out = BTreeMap::new();
    let mut first = true;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> =
            line.split(|c: char| c == ',' || c == ';' || c.is_whitespace()).filter(|f| !f.is_empty()).collect();
        let header = std::mem::replace(&mut first, false);
        if fields.len() != 2 {
            return Err(bad(format!("line {}: expected `case,subset`, got {line:?}", i + 1)));
        }
        let Some(subset) = Subset::parse(fields[1]) else {
            if header {
                continue;
            }
            return Err(bad(format!("line {}: subset {:?}: expected train, val or test", i + 1, fields[1])));
        };
        if out.insert(fields[0].to_string(), subset).is_some() {
            return Err(bad(format!("line {}: case {} listed twice", i + 1, fields[0])));
        }
    }
    Ok(out)
}

/// Deterministic k-fold assignment of `names` (any order): sorted, shuffled with `seed`,
/// position `i` goes to fold `i % k`.
pub fn kfold_assign(names: &[String], k: usize, fold: usize, seed: u64) -> Vec<Subset> {
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| names[a].cmp(&names[b]));
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut out = vec![Subset::Train; names.len()];
    for (pos, &i) in order.iter().enumerate() {
        if pos % k.max(1) == fold {
            out[i] = Subset::Val;
        }
    }
    out
}

fn tasks_of(l: &CaseLabels) -> [Option<bool>; TASKS] {
    [l.grade_gbm, l.idh_mutant, l.codel_1p19q, l.mgmt_methylated]
}

/// Tumour bounding box and voxel count of network classes `seg` on `dims` (classes 1..3
/// and whole-tumour voxels; ignored voxels are not tumour).
pub fn tumor_extent(seg: &[u8], dims: [usize; 3]) -> (Option<BBox>, usize) {
    let [nx, ny, _] = dims;
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    let mut count = 0;
    for (i, &c) in seg.iter().enumerate() {
        if !(1..=SEG_TUMOUR).contains(&c) {
            continue;
        }
        count += 1;
        let p = [i % nx, i / nx % ny, i / (nx * ny)];
        for a in 0..3 {
            lo[a] = lo[a].min(p[a]);
            hi[a] = hi[a].max(p[a] + 1);
        }
    }
    ((count > 0).then_some((lo, hi)), count)
}

struct LoadOptions<'a> {
    require_seg: bool,
    required: &'a [Modality],
    max_voxels: Option<usize>,
    limits: Limits,
}

/// Reads, checks and prepares one case; every problem found is returned.
// Long on purpose: one case's checks (files, headers, grids, labels, values) run in a row and each adds to the same problem list, so that a user sees every problem of a case at once.
fn load_case(
    dir: &Path,
    files: &CaseFiles,
    opts: &LoadOptions<'_>,
) -> Result<(CaseData, Vec<String>), Vec<CaseProblem>> {
    let name = &files.name;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut hashes = Vec::new();
    for m in opts.required {
        if !files.modalities.iter().any(|(fm, _)| fm == m) {
            problems.push(problem(name, dir, format!("missing {} image (required_modalities)", m.as_str())));
        }
    }
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read: {e}"));
    let mut volumes = Vec::new();
    for (m, path) in &files.modalities {
        match read(path).and_then(|bytes| {
            let sha = sha256_hex(&bytes);
            gmmas_imaging::read_volume(&bytes, &opts.limits).map(|v| (v, sha)).map_err(|e| e.to_string())
        }) {
            Ok((v, sha)) => {
                hashes.push((m.as_str().to_string(), sha));
                volumes.push((*m, v, path.clone()));
            }
            Err(e) => problems.push(problem(name, path, e)),
        }
    }
    // A whole-tumour mask (`<case>_wt.nii.gz`) stands in for a missing segmentation: its
    // tumour voxels become SEG_TUMOUR targets (sub-region unknown).
    let wt_path = if files.seg.is_none() { whole_tumour_file(dir, name) } else { None };
    let seg = match &files.seg {
        None if wt_path.is_some() => {
            let path = wt_path.clone().unwrap_or_default();
            match read(&path).and_then(|bytes| {
                let sha = sha256_hex(&bytes);
                gmmas_imaging::read_labels(&bytes, &opts.limits).map(|v| (v, sha)).map_err(|e| e.to_string())
            }) {
                Ok((mut v, sha)) => {
                    hashes.push(("wt".to_string(), sha));
                    for x in &mut v.data {
                        *x = if *x != 0 { SEG_TUMOUR } else { 0 };
                    }
                    Some((v, path))
                }
                Err(e) => {
                    problems.push(problem(name, &path, e));
                    None
                }
            }
        }
        None if opts.require_seg => {
            problems.push(problem(
                name,
                dir,
                "no segmentation (<case>_seg.nii.gz or <case>-seg.nii.gz, or a whole-tumour <case>_wt.nii.gz)",
            ));
            None
        }
        None => None,
        Some(path) => match read(path).and_then(|bytes| {
            let sha = sha256_hex(&bytes);
            gmmas_imaging::brats::read_seg_brats(&bytes, &opts.limits).map(|v| (v, sha)).map_err(|e| e.to_string())
        }) {
            Ok((v, sha)) => {
                hashes.push(("seg".to_string(), sha));
                Some((v, path.clone()))
            }
            Err(e) => {
                problems.push(problem(name, path, e));
                None
            }
        },
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let Some((_, _, first_path)) = volumes.first() else {
        return Err(vec![problem(name, dir, "no image file")]);
    };
    let grid = &volumes[0].1.grid;
    for (m, v, path) in &volumes[1..] {
        if let Err(e) = gmmas_imaging::same_grid(grid, &v.grid) {
            problems.push(problem(
                name,
                path,
                format!("{} is not on the grid of {}: {e}", m.as_str(), first_path.display()),
            ));
        }
    }
    if let Some((s, path)) = &seg
        && let Err(e) = gmmas_imaging::same_grid(grid, &s.grid)
    {
        problems.push(problem(name, path, format!("segmentation is not on the grid of {}: {e}", first_path.display())));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let refs: Vec<(Modality, &gmmas_imaging::Volume)> = volumes.iter().map(|(m, v, _)| (*m, v)).collect();
    let mut popts = PrepOptions::default();
    let mut prepared = gmmas_imaging::prepare(&refs, &popts).map_err(|e| vec![problem(name, dir, e.to_string())])?;
    if let Some(max) = opts.max_voxels {
        let n: usize = prepared.dims.iter().product();
        if n > max && max > 0 {
            let factor = (n as f64 / max as f64).cbrt();
            popts.spacing_mm = ((popts.spacing_mm as f64 * factor * 10.0).ceil() / 10.0) as f32;
            prepared = gmmas_imaging::prepare(&refs, &popts).map_err(|e| vec![problem(name, dir, e.to_string())])?;
            warnings
                .push(format!("case {name}: {n} voxels > max_case_voxels {max}: prepared at {} mm", popts.spacing_mm));
        }
    }
    let g = &prepared.geometry;
    let spacing = if g.resampled { [g.spacing_mm; 3] } else { g.canonical_spacing };
    let voxels: usize = prepared.dims.iter().product();
    let seg_classes = match &seg {
        Some((s, path)) => {
            let l = gmmas_imaging::prepare_labels(s, g).map_err(|e| vec![problem(name, path, e.to_string())])?;
            if !g.resampled {
                let before = s.data.iter().filter(|&&v| v != 0).count();
                let after = l.iter().filter(|&&v| v != 0).count();
                if after < before {
                    warnings.push(format!(
                        "case {name}: {} tumour voxel(s) lie outside the brain crop and are \
                         not trained on",
                        before - after
                    ));
                }
            }
            let whole_tumour = wt_path.is_some();
            let mut out = Vec::with_capacity(l.len());
            for (i, v) in l.iter().enumerate() {
                out.push(match v {
                    0 => 0u8,
                    4 if whole_tumour => SEG_TUMOUR,
                    1 => 1,
                    2 => 2,
                    3 | 4 => 3,
                    // Pseudo-labels carry the voxels they did not accept as 255: no supervision.
                    &SEG_IGNORE => SEG_IGNORE,
                    other => {
                        return Err(vec![problem(
                            name,
                            path,
                            format!("label value {other} at prepared voxel {i}: expected 0, 1, 2, 4 (or 255, ignored)"),
                        )]);
                    }
                });
            }
            out
        }
        None => vec![SEG_IGNORE; voxels],
    };
    let supervision = SegSupervision::of(&seg_classes);
    let (tumor_bbox, tumor_voxels) = tumor_extent(&seg_classes, prepared.dims);
    let mut h = Sha256::new();
    for (role, sha) in &hashes {
        h.update(format!("{role}={sha}\n").as_bytes());
    }
    Ok((
        CaseData {
            name: name.clone(),
            dir: dir.to_path_buf(),
            dims: prepared.dims,
            spacing,
            present: prepared.present,
            image: prepared.data,
            seg: seg_classes,
            has_seg: seg.is_some() && wt_path.is_none() && supervision == SegSupervision::Full,
            supervision,
            tasks: [None; TASKS],
            tumor_bbox,
            tumor_voxels,
            file_sha256: hashes,
            sha256: hex::encode(h.finalize()),
        },
        warnings,
    ))
}

/// `<dir>/<name>_wt.nii.gz` (or `.nii`, or `-wt`) when it exists: a whole-tumour mask.
fn whole_tumour_file(dir: &Path, name: &str) -> Option<PathBuf> {
    ["_wt.nii.gz", "_wt.nii", "-wt.nii.gz", "-wt.nii"]
        .iter()
        .map(|suffix| dir.join(format!("{name}{suffix}")))
        .find(|p| p.is_file())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

impl Dataset {
    /// Finds, reads, validates and prepares every case of `cfg`, then assigns subsets.
    /// All problems are returned together (or the bad cases skipped, see
    /// [`DataConfig::skip_bad_cases`]).
    // Long on purpose: every case is read in parallel and every problem of every case is collected before deciding (report all, or skip the bad ones), then subsets are assigned; the phases share the per-case results.
    pub fn load(cfg: &DataConfig) -> Result<Self, DataError> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let mut required = Vec::new();
        for m in &cfg.required_modalities {
            match Modality::parse(m) {
                Some(m) => required.push(m),
                None => problems.push(problem(
                    "config",
                    Path::new("required_modalities"),
                    format!("unknown modality {m:?}: expected t1, t1ce, t2 or flair"),
                )),
            }
        }
        if cfg.dirs.is_empty() {
            problems.push(problem("config", Path::new("dirs"), "no data folder given"));
        }
        // Labels.
        let mut labels: BTreeMap<String, CaseLabels> = BTreeMap::new();
        for path in &cfg.labels {
            match gmmas_imaging::brats::read_labels_csv(path) {
                Ok(map) => {
                    for (k, v) in map {
                        if let Some(prev) = labels.get(&k) {
                            if *prev != v {
                                warnings.push(format!("case {k}: labels differ between CSVs; keeping the first"));
                            }
                        } else {
                            labels.insert(k, v);
                        }
                    }
                }
                Err(e) => problems.push(problem("labels", path, e.to_string())),
            }
        }
        let split_map = match &cfg.split {
            SplitConfig::File { path } => match read_split_file(path) {
                Ok(m) => Some(m),
                Err(p) => {
                    problems.push(p);
                    None
                }
            },
            SplitConfig::KFold { k, fold, .. } if *k < 2 || fold >= k => {
                problems.push(problem(
                    "config",
                    Path::new("split"),
                    format!("k-fold k={k} fold={fold}: expected k >= 2 and fold < k"),
                ));
                None
            }
            _ => None,
        };

        let mut found = discover(&cfg.dirs, &mut problems);
        let extra = discover(&cfg.train_only_dirs, &mut problems);
        let train_only: std::collections::BTreeSet<String> = extra.iter().map(|(_, f)| f.name.clone()).collect();
        found.extend(extra);
        found.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        let mut seen = BTreeMap::new();
        found.retain(|(dir, f)| {
            if let Some(prev) = seen.insert(f.name.clone(), dir.clone()) {
                problems.push(problem(&f.name, dir, format!("duplicate case name (also in {})", prev.display())));
                false
            } else {
                true
            }
        });
        if let Some(map) = &split_map {
            let before = found.len();
            found.retain(|(_, f)| map.contains_key(&f.name) || train_only.contains(&f.name));
            if found.len() < before {
                warnings.push(format!("{} case(s) not named in the split file are left out", before - found.len()));
            }
            let names: BTreeSet<&String> = seen.keys().collect();
            let unknown: Vec<&String> = map.keys().filter(|k| !names.contains(k)).collect();
            if !unknown.is_empty() {
                warnings.push(format!(
                    "split file names {} case(s) not found in the data folders: {}",
                    unknown.len(),
                    unknown.iter().take(10).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if let Some(max) = cfg.max_cases {
            found.truncate(max);
        }

        // Load in parallel (a shared work index; results kept in case order).
        let opts = LoadOptions {
            require_seg: cfg.require_seg,
            required: &required,
            max_voxels: cfg.max_case_voxels,
            limits: Limits::default(),
        };
        let threads =
            if cfg.threads > 0 { cfg.threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) }
                .min(found.len().max(1));
        let next = AtomicUsize::new(0);
        let results: Vec<std::sync::Mutex<Option<_>>> = found.iter().map(|_| std::sync::Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((dir, files)) = found.get(i) else {
                            break;
                        };
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load_case(dir, files, &opts)))
                            .unwrap_or_else(|p| {
                                Err(vec![problem(
                                    &files.name,
                                    dir,
                                    format!("internal error while loading: {}", panic_message(&*p)),
                                )])
                            });
                        *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                    }
                });
            }
        });
        let mut cases = Vec::new();
        let mut case_problems = Vec::new();
        for r in results {
            match r.into_inner().unwrap_or_else(|e| e.into_inner()) {
                Some(Ok((c, w))) => {
                    warnings.extend(w);
                    cases.push(c);
                }
                Some(Err(p)) => case_problems.extend(p),
                None => {}
            }
        }
        let mut skipped = Vec::new();
        if cfg.skip_bad_cases {
            for p in &case_problems {
                warnings.push(format!("skipping bad case: {p}"));
            }
            skipped = case_problems;
        } else {
            problems.extend(case_problems);
        }
        if !problems.is_empty() {
            return Err(DataError { problems });
        }
        if cases.is_empty() {
            return Err(DataError { problems: vec![problem("dataset", Path::new(""), "no usable case")] });
        }

        // Labels and subsets.
        let mut unlabelled = 0;
        for c in &mut cases {
            match labels.get(&c.name) {
                Some(l) => c.tasks = tasks_of(l),
                None => unlabelled += 1,
            }
        }
        if !cfg.labels.is_empty() && unlabelled > 0 {
            warnings
                .push(format!("{unlabelled} case(s) have no row in the labels CSV(s): their task labels are unknown"));
        }
        let subsets = match (&cfg.split, &split_map) {
            (SplitConfig::File { .. }, Some(map)) => cases
                .iter()
                .map(|c| match map.get(&c.name) {
                    Some(s) => *s,
                    None if train_only.contains(&c.name) => Subset::Train,
                    None => Subset::Test,
                })
                .collect(),
            (SplitConfig::KFold { k, fold, seed }, _) => {
                let names: Vec<String> =
                    cases.iter().filter(|c| !train_only.contains(&c.name)).map(|c| c.name.clone()).collect();
                let mut folded = kfold_assign(&names, *k, *fold, *seed).into_iter();
                cases
                    .iter()
                    .map(|c| {
                        if train_only.contains(&c.name) {
                            Subset::Train
                        } else {
                            folded.next().unwrap_or(Subset::Train)
                        }
                    })
                    .collect()
            }
            _ => vec![Subset::Train; cases.len()],
        };
        Ok(Self { cases, subsets, warnings, skipped })
    }

    /// Indices of the cases in `subset`.
    pub fn indices(&self, subset: Subset) -> Vec<usize> {
        (0..self.cases.len()).filter(|&i| self.subsets[i] == subset).collect()
    }

    /// Label counts and eq. (5) weights of the cases `indices`.
    pub fn class_balance(&self, indices: &[usize]) -> ClassBalance {
        let mut counts = [[0usize; 2]; TASKS];
        for &i in indices {
            for (t, c) in counts.iter_mut().enumerate() {
                if let Some(y) = self.cases[i].tasks[t] {
                    c[usize::from(y)] += 1;
                }
            }
        }
        ClassBalance { counts, weights: counts.map(class_weights) }
    }

    /// sha256 over every case's name, file hashes and task labels (cases in name order).
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        for c in &self.cases {
            let t: Vec<String> = c.tasks.iter().map(|v| v.map_or("-".into(), |b| u8::from(b).to_string())).collect();
            h.update(format!("{}={};labels={}\n", c.name, c.sha256, t.join("")).as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// A JSON description: data hash, and per case its subset, dims, modalities, labels and
    /// file hashes.
    pub fn manifest(&self) -> serde_json::Value {
        let cases: Vec<serde_json::Value> = self
            .cases
            .iter()
            .zip(&self.subsets)
            .map(|(c, s)| {
                let tasks: serde_json::Map<String, serde_json::Value> = TASK_NAMES
                    .iter()
                    .zip(c.tasks)
                    .map(|(n, v)| (n.to_string(), serde_json::json!(v)))
                    .collect();
                serde_json::json!({
                    "name": c.name,
                    "dir": c.dir,
                    "subset": s,
                    "dims": c.dims,
                    "spacing_mm": c.spacing,
                    "present": c.present,
                    "tumor_voxels": c.tumor_voxels,
                    "labels": tasks,
                    "sha256": c.sha256,
                    "files": c.file_sha256.iter().map(|(r, h)| serde_json::json!({"role": r, "sha256": h})).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "data_sha256": self.sha256(),
            "cases": cases,
            "warnings": self.warnings,
            "skipped": self.skipped,
        })
    }

    /// Looks a case up by name.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.cases.iter().position(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phantoms(n: usize, dims: [usize; 3]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        gmmas_phantom::write_dataset(n, 5, dims, dir.path()).unwrap();
        dir
    }

    fn cfg(dir: &Path) -> DataConfig {
        DataConfig { dirs: vec![dir.to_path_buf()], labels: vec![dir.join("labels.csv")], ..DataConfig::default() }
    }

    /// A case with only FLAIR + T1 and a whole-tumour mask (like `../shared/data/weak/`)
    /// loads as whole-tumour supervision: tumour voxels SEG_TUMOUR, no sub-region classes,
    /// not scored as a full segmentation; a case without any mask is all ignored.
    #[test]
    fn whole_tumour_mask_and_missing_segmentation_are_partial_targets() {
        let d = phantoms(2, [40, 40, 32]);
        let case_dir = d.path().join("Phantom_0000");
        let seg_path = case_dir.join("Phantom_0000_seg.nii.gz");
        let seg = gmmas_imaging::read_labels(&std::fs::read(&seg_path).unwrap(), &Limits::default()).unwrap();
        let tumour = seg.data.iter().filter(|&&v| v != 0).count();
        let wt = gmmas_imaging::LabelVolume {
            grid: seg.grid.clone(),
            data: seg.data.iter().map(|&v| u8::from(v != 0)).collect(),
        };
        std::fs::write(case_dir.join("Phantom_0000_wt.nii.gz"), gmmas_imaging::write_labels(&wt, true)).unwrap();
        for f in ["seg", "t1ce", "t2"] {
            std::fs::remove_file(case_dir.join(format!("Phantom_0000_{f}.nii.gz"))).unwrap();
        }
        std::fs::remove_file(d.path().join("Phantom_0001/Phantom_0001_seg.nii.gz")).unwrap();
        let mut c = cfg(d.path());
        c.required_modalities = Vec::new();
        // Without require_seg the case without any mask loads too.
        c.require_seg = false;
        let ds = Dataset::load(&c).unwrap();
        let weak = &ds.cases[0];
        assert_eq!(weak.supervision, SegSupervision::WholeTumour);
        assert!(!weak.has_seg);
        assert_eq!(weak.present, [true, false, false, true]);
        assert!(weak.seg.iter().all(|&v| v == 0 || v == SEG_TUMOUR));
        assert_eq!(weak.tumor_voxels, weak.seg.iter().filter(|&&v| v == SEG_TUMOUR).count());
        assert!(weak.tumor_voxels > 0 && weak.tumor_voxels <= tumour);
        let none = &ds.cases[1];
        assert_eq!(none.supervision, SegSupervision::None);
        assert!(none.seg.iter().all(|&v| v == SEG_IGNORE) && none.tumor_bbox.is_none());
        // With require_seg the whole-tumour case still counts as segmented; the other does not.
        c.require_seg = true;
        let err = Dataset::load(&c).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].case, "Phantom_0001");
    }

    #[test]
    fn loads_phantoms_with_labels_and_hashes() {
        let d = phantoms(3, [40, 40, 32]);
        let ds = Dataset::load(&cfg(d.path())).unwrap();
        assert_eq!(ds.cases.len(), 3);
        assert_eq!(ds.cases[0].name, "Phantom_0000");
        for c in &ds.cases {
            assert_eq!(c.image.len(), 4 * c.voxels());
            assert_eq!(c.seg.len(), c.voxels());
            assert!(c.seg.iter().all(|&v| v <= 3));
            assert!(c.tumor_voxels > 0 && c.tumor_bbox.is_some());
            assert_eq!(c.file_sha256.len(), 5);
            assert_eq!(c.spacing, [1.0; 3]);
        }
        assert!(ds.cases.iter().any(|c| c.tasks.iter().any(Option::is_some)));
        let again = Dataset::load(&cfg(d.path())).unwrap();
        assert_eq!(ds.sha256(), again.sha256());
        assert_eq!(ds.indices(Subset::Train), vec![0, 1, 2]);
        // Very large cases are prepared at a coarser spacing.
        let mut c = cfg(d.path());
        c.max_case_voxels = Some(4000);
        c.max_cases = Some(1);
        let small = Dataset::load(&c).unwrap();
        let case = &small.cases[0];
        assert!(case.spacing[0] > 1.0 && case.voxels() < ds.cases[0].voxels(), "{:?}", case.spacing);
        assert_eq!(case.seg.len(), case.voxels());
        assert!(small.warnings.iter().any(|w| w.contains("max_case_voxels")));
    }

    /// Train-only folders join every fold's training cases and leave the k-fold assignment
    /// of the other cases as it was; a split file need not name them.
    #[test]
    fn train_only_cases_are_always_training_cases() {
        let d = phantoms(5, [24, 24, 16]);
        let extra = tempfile::tempdir().unwrap();
        gmmas_phantom::write_dataset(2, 9, [24, 24, 16], extra.path()).unwrap();
        for i in 0..2 {
            let old = extra.path().join(format!("Phantom_000{i}"));
            for f in std::fs::read_dir(&old).unwrap() {
                let f = f.unwrap().path();
                let name = f.file_name().unwrap().to_string_lossy().replace("Phantom", "Extra");
                std::fs::rename(&f, old.join(name)).unwrap();
            }
            std::fs::rename(&old, extra.path().join(format!("Extra_000{i}"))).unwrap();
        }
        for fold in 0..5 {
            let mut plain = cfg(d.path());
            plain.split = SplitConfig::KFold { k: 5, fold, seed: 2 };
            let base = Dataset::load(&plain).unwrap();
            let mut with = plain.clone();
            with.train_only_dirs = vec![extra.path().to_path_buf()];
            let ds = Dataset::load(&with).unwrap();
            assert_eq!(ds.cases.len(), 7);
            let subset_of =
                |ds: &Dataset, name: &str| ds.subsets[ds.cases.iter().position(|c| c.name == name).unwrap()];
            for c in &base.cases {
                assert_eq!(subset_of(&ds, &c.name), subset_of(&base, &c.name), "fold {fold} {}", c.name);
            }
            assert_eq!(subset_of(&ds, "Extra_0000"), Subset::Train);
            assert_eq!(subset_of(&ds, "Extra_0001"), Subset::Train);
        }
        let split = d.path().join("split.csv");
        std::fs::write(&split, "case,subset\nPhantom_0000,val\nPhantom_0001,train\n").unwrap();
        let mut file = cfg(d.path());
        file.split = SplitConfig::File { path: split };
        file.train_only_dirs = vec![extra.path().to_path_buf()];
        let ds = Dataset::load(&file).unwrap();
        let names: Vec<&str> = ds.cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Extra_0000", "Extra_0001", "Phantom_0000", "Phantom_0001"]);
        assert_eq!(ds.subsets, [Subset::Train, Subset::Train, Subset::Val, Subset::Train]);
    }

    #[test]
    fn reports_every_bad_case_by_name() {
        let d = phantoms(5, [32, 32, 24]);
        let root = d.path();
        let case = |i: usize, suffix: &str| root.join(format!("Phantom_000{i}/Phantom_000{i}_{suffix}.nii.gz"));
        // 0: segmentation deleted; 1: t2 corrupt; 2: flair on another grid;
        // 3: label value 7 in the segmentation; 4: good.
        std::fs::remove_file(case(0, "seg")).unwrap();
        std::fs::write(case(1, "t2"), b"not a nifti file at all").unwrap();
        let other = gmmas_phantom::generate(&gmmas_phantom::PhantomConfig { dims: [30, 32, 24], seed: 1 });
        std::fs::write(case(2, "flair"), gmmas_imaging::write_volume(&other.volumes[3].1, true)).unwrap();
        let mut seg =
            gmmas_imaging::brats::read_seg_brats(&std::fs::read(case(3, "seg")).unwrap(), &Limits::default()).unwrap();
        seg.data[5] = 7;
        std::fs::write(case(3, "seg"), gmmas_imaging::write_labels(&seg, true)).unwrap();

        let err = Dataset::load(&cfg(root)).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 4, "{text}");
        let names: Vec<&str> = err.problems.iter().map(|p| p.case.as_str()).collect();
        assert_eq!(names, ["Phantom_0000", "Phantom_0001", "Phantom_0002", "Phantom_0003"]);
        assert!(text.contains("no segmentation"), "{text}");
        assert!(text.contains("Phantom_0001_t2.nii.gz"), "{text}");
        assert!(text.contains("Phantom_0002_flair.nii.gz") && text.contains("grid"), "{text}");
        assert!(text.contains("Phantom_0003_seg.nii.gz") && text.contains("label value 7"), "{text}");

        // Skipping keeps the good case and explains the rest.
        let mut c = cfg(root);
        c.skip_bad_cases = true;
        let ds = Dataset::load(&c).unwrap();
        assert_eq!(ds.cases.len(), 1);
        assert_eq!(ds.cases[0].name, "Phantom_0004");
        assert_eq!(ds.skipped.len(), 4);
        assert!(ds.warnings.iter().any(|w| w.contains("Phantom_0002")));

        // A missing modality breaks the default "all four" requirement only.
        std::fs::remove_file(case(4, "t1")).unwrap();
        let err = Dataset::load(&cfg(root)).unwrap_err();
        assert!(err.to_string().contains("missing t1 image"), "{err}");
        c.skip_bad_cases = false;
        c.required_modalities.clear();
        c.dirs = vec![root.join("Phantom_0004")];
        let ds = Dataset::load(&c).unwrap();
        assert_eq!(ds.cases[0].present, [false, true, true, true]);
    }

    #[test]
    fn split_file_and_kfold() {
        let d = phantoms(4, [24, 24, 20]);
        let split = d.path().join("split.csv");
        std::fs::write(&split, "case,subset\nPhantom_0000,train\nPhantom_0001 val # comment\nPhantom_0002;test\n")
            .unwrap();
        let mut c = cfg(d.path());
        c.split = SplitConfig::File { path: split.clone() };
        let ds = Dataset::load(&c).unwrap();
        assert_eq!(ds.cases.len(), 3);
        assert_eq!(ds.subsets, vec![Subset::Train, Subset::Val, Subset::Test]);
        assert!(ds.warnings.iter().any(|w| w.contains("not named")));
        std::fs::write(&split, "Phantom_0000,train\nPhantom_0001,banana\n").unwrap();
        let e = Dataset::load(&c).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("banana"), "{e}");

        let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        let a = kfold_assign(&names, 5, 1, 3);
        assert_eq!(a, kfold_assign(&names, 5, 1, 3));
        assert_eq!(a.iter().filter(|s| **s == Subset::Val).count(), 2);
        // Folds partition the cases.
        let mut count = [0; 10];
        for f in 0..5 {
            for (i, s) in kfold_assign(&names, 5, f, 3).iter().enumerate() {
                count[i] += usize::from(*s == Subset::Val);
            }
        }
        assert!(count.iter().all(|&c| c == 1));
    }

    #[test]
    fn inverse_frequency_weights() {
        assert_eq!(class_weights([3, 1]), [4.0 / 6.0, 2.0]);
        assert_eq!(class_weights([2, 2]), [1.0, 1.0]);
        assert_eq!(class_weights([0, 5]), [1.0, 1.0]);
    }
}
