//! Loading the cases a command scores (`eval`, `calibrate`, `eval-missing`): data folders,
//! labels and an optional split, every problem reported, warnings printed.

use std::path::PathBuf;

use anyhow::Context;
use gmmas_models::data::{DataConfig, Dataset, SplitConfig, Subset};

/// Loads the cases of `dirs` (with `labels`), limited by `split`; segmentations are optional.
pub fn load(
    dirs: &[PathBuf],
    labels: &[PathBuf],
    split: SplitConfig,
    skip_bad_cases: bool,
    threads: usize,
) -> anyhow::Result<Dataset> {
    let cfg = DataConfig {
        dirs: dirs.to_vec(),
        labels: labels.to_vec(),
        split,
        skip_bad_cases,
        require_seg: false,
        required_modalities: Vec::new(),
        threads,
        ..DataConfig::default()
    };
    let data = Dataset::load(&cfg)?;
    for w in &data.warnings {
        eprintln!("warning: {w}");
    }
    Ok(data)
}

/// The split file as a `SplitConfig` (every case without one).
pub fn split_of(path: &Option<PathBuf>) -> SplitConfig {
    path.clone().map_or(SplitConfig::All, |path| SplitConfig::File { path })
}

/// Indices of the cases of `--subset` (all cases without one); an empty choice is an error
/// saying what the cases were for.
pub fn chosen(data: &Dataset, subset: Option<&str>, purpose: &str) -> anyhow::Result<Vec<usize>> {
    let indices = match subset {
        Some(s) => {
            let s = Subset::parse(s).with_context(|| format!("--subset {s:?}: expected train, val or test"))?;
            data.indices(s)
        }
        None => (0..data.cases.len()).collect(),
    };
    anyhow::ensure!(!indices.is_empty(), "no case to {purpose}");
    Ok(indices)
}
