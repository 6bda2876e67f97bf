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

mod case;
mod config;
mod error;
mod load;
#[cfg(test)]
mod tests;

pub use case::{BBox, CaseData, ClassBalance, class_weights, tumor_extent};
pub use config::{DataConfig, SplitConfig, Subset, join_clean, kfold_assign, read_split_file};
pub use error::{CaseProblem, DataError};

use error::problem;
use load::{LoadOptions, discover, load_case, panic_message, tasks_of};

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use gmmas_imaging::brats::CaseLabels;
use gmmas_imaging::{Limits, Modality};
use sha2::{Digest, Sha256};

use crate::config::{TASK_NAMES, TASKS};

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
