//! Loading the cases a command scores (`eval`, `calibrate`, `eval-missing`): data folders,
//! labels and an optional split, every problem reported, warnings printed.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use gmmas_models::data::{DataConfig, Dataset, SplitConfig, Subset};

/// The labelled cases a command scores (`eval`, `calibrate`): data folders, labels and an
/// optional split subset.
#[derive(Args, Debug, Clone)]
pub struct CaseArgs {
    /// Case folder, or a folder of case folders (repeatable).
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Labels CSV (repeatable); blank cells are unknown.
    #[arg(long)]
    pub labels: Vec<PathBuf>,
    /// Split file (`case,subset` rows, e.g. a run's split.csv); with --subset, only those
    /// cases are used.
    #[arg(long)]
    pub split: Option<PathBuf>,
    /// Subset of the split file to use (`train`, `val`, `test`; calibrate on `val`, never on
    /// the training cases).
    #[arg(long, requires = "split")]
    pub subset: Option<String>,
    /// Leave out unreadable cases with a warning instead of failing.
    #[arg(long)]
    pub skip_bad_cases: bool,
}

impl CaseArgs {
    /// Loads the cases and returns them with the indices of `--subset` (see [`chosen`]).
    pub fn load(&self, threads: usize, purpose: &str) -> anyhow::Result<(Dataset, Vec<usize>)> {
        let data = load(&self.data, &self.labels, split_of(&self.split), self.skip_bad_cases, threads)?;
        let indices = chosen(&data, self.subset.as_deref(), purpose)?;
        Ok((data, indices))
    }
}

/// Where the network runs: the device and libtorch's thread count.
#[derive(Args, Debug, Clone)]
pub struct ComputeArgs {
    /// `auto`, `cpu` or `cuda`.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// libtorch threads (0 = default).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl ComputeArgs {
    /// Sets libtorch's threads and returns the chosen device.
    pub fn device(&self) -> anyhow::Result<gmmas_models::Device> {
        gmmas_models::set_threads(self.threads);
        Ok(gmmas_models::parse_device(&self.device)?)
    }
}

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
