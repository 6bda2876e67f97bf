//! The `[data]` table of a run config: where the cases and labels are, which sequences are
//! required, and how cases are split (split file or seeded k-fold).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gmmas_imaging::Modality;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::error::{CaseProblem, problem};

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

pub(super) fn default_required() -> Vec<String> {
    Modality::ALL.iter().map(|m| m.as_str().to_string()).collect()
}

pub(super) fn default_true() -> bool {
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
