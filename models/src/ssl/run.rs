//! How `gmmas train` runs the semi-supervised modes: Stage I pseudo-labels the unlabeled set
//! before training; Stage II and FixMatch get a second, weakly augmented batch stream.
//!
//! Called by [`crate::fit::fit`]; kept here so the training loop only gains the hooks.

use std::path::Path;
use std::sync::Arc;

use crate::adapt::TrainMode;
use crate::analyzer::Analyzer;
use crate::augment::{AugmentConfig, Sampler};
use crate::config::ModelConfig;
use crate::data::{Dataset, Subset};
use crate::fit::{FitError, TrainRunConfig};
use crate::ssl::{DistributionAligner, load_unlabeled, pseudo_label_dataset};

/// Prefix given to unlabeled case names (they may repeat labelled names, e.g. two phantom sets).
pub const UNLABELED_PREFIX: &str = "unl-";

/// What the SSL modes add to a run.
pub(crate) struct SslSetup {
    /// Stage II / FixMatch: the sampler of weakly augmented unlabeled patches.
    pub unlabeled: Option<Sampler>,
}

/// Prepares the SSL part of a run: for `ssl-pseudo`, pseudo-labels the unlabeled set with the
/// labeller, appends the cases to `data` as training cases and writes
/// `<out>/pseudo_labels.json`; for `ssl-consistency` / `fixmatch`, loads the unlabeled set
/// (labels discarded) and returns its sampler. Nothing for the other modes.
// Long on purpose: the semi-supervised modes' set-up in the paper's order (labeller, pseudo labels, unlabeled sampler), sharing the loaded labeller.
pub(crate) fn prepare(
    cfg: &TrainRunConfig,
    data: &mut Dataset,
    model_cfg: &ModelConfig,
    device: tch::Device,
    out: &Path,
    say: &dyn Fn(&str),
) -> Result<SslSetup, FitError> {
    let mode = cfg.train.mode;
    if !matches!(mode, TrainMode::SslPseudo | TrainMode::SslConsistency | TrainMode::FixMatch) {
        return Ok(SslSetup { unlabeled: None });
    }
    let ssl = &cfg.ssl;
    let unl_cfg = ssl
        .unlabeled
        .as_ref()
        .ok_or_else(|| FitError::Config(format!("train.mode = \"{}\" needs [ssl.unlabeled] dirs", mode.as_str())))?;
    let mut unl_cfg = unl_cfg.clone();
    if unl_cfg.threads == 0 {
        unl_cfg.threads = cfg.threads;
    }
    let mut unl = load_unlabeled(&unl_cfg)?;
    for c in &mut unl.cases {
        c.name = format!("{UNLABELED_PREFIX}{}", c.name);
    }
    for s in &mut unl.subsets {
        *s = Subset::Train;
    }
    say(&format!("ssl: {} unlabeled case(s) (labels discarded)", unl.cases.len()));
    if unl.cases.is_empty() {
        return Err(FitError::Config("ssl.unlabeled holds no case".into()));
    }
    if mode == TrainMode::SslPseudo {
        let path = ssl.labeller.as_ref().or(cfg.model.init.as_ref()).ok_or_else(|| {
            FitError::Config("ssl-pseudo needs the labelling model: set ssl.labeller or model.init".into())
        })?;
        let mut labeller = Analyzer::load(path, device)?;
        if let Some(d) = ssl.labeller_decoder_dropout {
            labeller.set_decoder_dropout(d)?;
        }
        let labelled: Vec<_> = data.indices(Subset::Train).iter().map(|&i| data.cases[i].tasks).collect();
        let mut aligner = DistributionAligner::from_labels(&labelled, ssl.align_window)?;
        let t0 = std::time::Instant::now();
        let summary = pseudo_label_dataset(&labeller, &mut unl, &ssl.pseudo, Some(&mut aligner), |name, p| {
            let tasks: Vec<String> = p
                .tasks
                .iter()
                .map(|d| {
                    format!(
                        "{} p {:.2} u {:.3} {}",
                        d.task.split('_').next().unwrap_or(&d.task),
                        d.probability,
                        d.uncertainty,
                        if d.accepted { "kept" } else { "dropped" }
                    )
                })
                .collect();
            say(&format!(
                "ssl-pseudo {name}: voxels kept {:.1}% ({} tumour of {} predicted) | {}",
                100.0 * p.counts.accepted_voxels as f64 / p.counts.voxels.max(1) as f64,
                p.counts.accepted_tumour_voxels,
                p.counts.predicted_tumour_voxels,
                tasks.join(", ")
            ));
        })?;
        let report = serde_json::json!({
            "labeller": labeller.version(),
            "options": ssl.pseudo,
            "aligner": aligner,
            "seconds": t0.elapsed().as_secs_f64(),
            "cases": summary,
        });
        let path = out.join("pseudo_labels.json");
        let bytes = serde_json::to_vec_pretty(&report).map_err(|e| FitError::Training(e.to_string()))?;
        std::fs::write(&path, bytes).map_err(|source| FitError::Io { path: path.clone(), source })?;
        data.cases.append(&mut unl.cases);
        data.subsets.append(&mut unl.subsets);
        return Ok(SslSetup { unlabeled: None });
    }
    // Weak augmentation of the teacher's view: random crop (the sampler's) and flips.
    let weak = AugmentConfig { flip_p: cfg.augment.flip_p, ..AugmentConfig::none() };
    let idx: Vec<usize> = (0..unl.cases.len()).collect();
    let sampler =
        Sampler::new(Arc::new(unl), idx, weak, model_cfg, ssl.unlabeled_batch_size, cfg.seed ^ 0x005E_ED0F_0001)?;
    Ok(SslSetup { unlabeled: Some(sampler) })
}

#[cfg(test)]
mod tests {
    use crate::fit::{FitOptions, TrainRunConfig, fit};
    use std::path::Path;

    fn config(root: &Path, out: &str, extra: &str) -> TrainRunConfig {
        let text = format!(
            r#"
seed = 3
out = "{out}"
threads = 2
device = "cpu"

[data]
dirs = ["labelled"]
labels = ["labelled/labels.csv"]

[model]
profile = "tiny"
decoder_dropout = 0.2
{extra}
"#
        );
        TrainRunConfig::from_toml(&text, root).unwrap()
    }

    /// Every bundled run config (the SSL ones included) parses and passes the checks.
    #[test]
    fn bundled_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for d in [dir.clone(), dir.join("ssl-table")] {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "toml") {
                    let c = TrainRunConfig::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                    c.check().unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                    c.model.resolve().unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                    n += 1;
                }
            }
        }
        assert!(n >= 17, "{n} configs");
    }

    /// The three SSL modes run end to end through `fit` on tiny phantoms: Stage I writes its
    /// decisions and trains on the pseudo-labelled cases, Stage II and FixMatch log the
    /// unlabeled loss every epoch.
    #[test]
    fn ssl_modes_run_through_fit() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        gmmas_phantom::write_dataset(2, 11, [40, 40, 32], &r.join("labelled")).unwrap();
        gmmas_phantom::write_dataset(3, 12, [40, 40, 32], &r.join("unlabeled")).unwrap();
        let quiet = FitOptions { resume: false, quiet: true };
        let base = fit(&config(r, "sup", "[train]\nsteps = 2\nbatch_size = 1\n"), &quiet).unwrap();
        let unl = "[ssl.unlabeled]\ndirs = [\"unlabeled\"]\n";
        // Stage I: loose thresholds so that an untrained model keeps some voxels.
        let pseudo = format!(
            "init = \"sup/model.safetensors\"\n[train]\nmode = \"ssl-pseudo\"\nsteps = 2\nbatch_size = 1\n\
             {unl}[ssl.pseudo]\nmc_passes = 2\nvoxel_c_min = 0.3\nvoxel_u_max = 0.5\n"
        );
        let p = fit(&config(r, "pseudo", &pseudo), &quiet).unwrap();
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(r.join("pseudo/pseudo_labels.json")).unwrap()).unwrap();
        assert_eq!(report["labeller"], base.model_version.as_str());
        assert_eq!(report["cases"].as_array().unwrap().len(), 3);
        assert!(report["cases"][0]["counts"]["accepted_voxels"].as_u64().unwrap() > 0);
        let manifest = std::fs::read_to_string(r.join("pseudo/data_manifest.json")).unwrap();
        assert!(manifest.contains("unl-Phantom_0002"));
        assert!(p.model_path.exists());
        // Stage II and FixMatch.
        for mode in ["ssl-consistency", "fixmatch"] {
            let text = format!(
                "init = \"sup/model.safetensors\"\n[train]\nmode = \"{mode}\"\nsteps = 2\nbatch_size = 1\n{unl}\
                 [ssl.consistency]\nconfidence = 0.5\n"
            );
            let out = format!("run-{mode}");
            fit(&config(r, &out, &text), &quiet).unwrap();
            let log = std::fs::read_to_string(r.join(&out).join("train_log.jsonl")).unwrap();
            let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
            assert!(last["loss"]["consistency"].as_f64().is_some(), "{mode}: {last}");
        }
        // A mode that needs unlabeled data refuses to start without it.
        let err = fit(&config(r, "bad", "[train]\nmode = \"ssl-consistency\"\nsteps = 1\n"), &quiet).unwrap_err();
        assert!(err.to_string().contains("ssl.unlabeled"), "{err}");
    }
}
