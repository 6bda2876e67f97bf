//! The two-stage semi-supervised method of paper III-F: Stage I uncertainty-filtered
//! pseudo-labels ([`pseudo`]), Stage II weak-to-strong consistency with an EMA teacher ([`consistency`]).
//!
//! Services call [`crate::Analyzer::pseudo_label`] (one prepared case in, a
//! [`pseudo::PseudoLabels`] out, with an optional persisted [`pseudo::DistributionAligner`]);
//! `gmmas train` runs the stages as `[train] mode`s (`ssl-pseudo`, `ssl-consistency`,
//! `fixmatch`) with the `[ssl]` table of a run config ([`SslConfig`]). This module also holds
//! the dataset helpers those modes use: loading an unlabeled set with every label discarded,
//! and turning a case into a pseudo-labelled training case.

pub mod consistency;
pub mod pseudo;
pub(crate) mod run;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::analyzer::Analyzer;
use crate::config::TASKS;
use crate::data::{CaseData, DataConfig, DataError, Dataset, tumor_extent};
use crate::partial::{SEG_IGNORE, SegSupervision};

pub use consistency::{Consistency, ConsistencyConfig, ConsistencyReport, EmaTeacher};
pub use pseudo::{DistributionAligner, PseudoCounts, PseudoLabelOptions, PseudoLabels, TaskDecision};

fn d_window() -> usize {
    128
}
fn d_batch() -> usize {
    2
}

/// The `[ssl]` table of a run config (used by the `ssl-pseudo`, `ssl-consistency` and
/// `fixmatch` modes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SslConfig {
    /// The unlabeled cases (`[ssl.unlabeled]`, a data table: `dirs`, ...). Their
    /// segmentations and labels CSVs are never read for training: every label is discarded.
    pub unlabeled: Option<DataConfig>,
    /// Stage I: the model that pseudo-labels the unlabeled set (default: `model.init`).
    pub labeller: Option<PathBuf>,
    /// Stage I: decoder dropout of the labeller's MC passes (default: its own setting). Lets
    /// a model trained without decoder dropout (e.g. the bundled `gmmas-small`) give voxel
    /// uncertainty.
    pub labeller_decoder_dropout: Option<f64>,
    /// Stage I thresholds (`[ssl.pseudo]`).
    #[serde(default)]
    pub pseudo: PseudoLabelOptions,
    /// Stage I: distribution-alignment window (predictions in the running mean).
    #[serde(default = "d_window")]
    pub align_window: usize,
    /// Stage II settings (`[ssl.consistency]`).
    #[serde(default)]
    pub consistency: ConsistencyConfig,
    /// Stage II: unlabeled patches per step.
    #[serde(default = "d_batch")]
    pub unlabeled_batch_size: usize,
}

impl Default for SslConfig {
    fn default() -> Self {
        Self {
            unlabeled: None,
            labeller: None,
            labeller_decoder_dropout: None,
            pseudo: PseudoLabelOptions::default(),
            align_window: d_window(),
            consistency: ConsistencyConfig::default(),
            unlabeled_batch_size: d_batch(),
        }
    }
}

impl SslConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.pseudo.validate()?;
        self.consistency.validate()?;
        if self.align_window == 0 || self.unlabeled_batch_size == 0 {
            return Err(ModelError::Config("ssl.align_window and ssl.unlabeled_batch_size must be positive".into()));
        }
        Ok(())
    }
}

/// Loads the unlabeled cases of `cfg` and discards every label they may carry: no labels CSV
/// is read, segmentations are replaced by "ignored" and tasks by None (so a phantom or
/// BraTS folder can stand for unlabeled data without leaking its labels).
pub fn load_unlabeled(cfg: &DataConfig) -> Result<Dataset, DataError> {
    let mut c = cfg.clone();
    c.labels.clear();
    c.require_seg = false;
    let mut data = Dataset::load(&c)?;
    for case in &mut data.cases {
        forget_labels(case);
    }
    Ok(data)
}

/// Removes every label of `case` (segmentation, whole-tumour mask, task labels).
pub fn forget_labels(case: &mut CaseData) {
    case.seg.fill(SEG_IGNORE);
    case.has_seg = false;
    case.supervision = SegSupervision::None;
    case.tasks = [None; TASKS];
    case.tumor_bbox = None;
    case.tumor_voxels = 0;
}

/// Makes `case` a pseudo-labelled training case: its segmentation target becomes the
/// accepted voxels of `p` (the rest ignored) and its task labels the accepted ones.
pub fn apply_pseudo_labels(case: &mut CaseData, p: &PseudoLabels) -> Result<(), ModelError> {
    if p.dims != case.dims || p.target.len() != case.voxels() {
        return Err(ModelError::Input(format!(
            "pseudo-labels of grid {:?} for case {} of grid {:?}",
            p.dims, case.name, case.dims
        )));
    }
    case.seg.clone_from(&p.target);
    case.has_seg = false;
    case.supervision = p.supervision();
    case.tasks = p.task_labels();
    let (bbox, voxels) = tumor_extent(&case.seg, case.dims);
    case.tumor_bbox = bbox;
    case.tumor_voxels = voxels;
    Ok(())
}

/// Stage I over a dataset: pseudo-labels every case of `data` with `model` (MC-Dropout
/// passes, distribution alignment through `aligner`, the dual threshold of `opts`), applies
/// them, and returns each case's decisions (voxel maps dropped). `progress` sees each case.
pub fn pseudo_label_dataset(
    model: &Analyzer,
    data: &mut Dataset,
    opts: &PseudoLabelOptions,
    mut aligner: Option<&mut DistributionAligner>,
    mut progress: impl FnMut(&str, &PseudoLabels),
) -> Result<Vec<CaseSummary>, ModelError> {
    let mut out = Vec::with_capacity(data.cases.len());
    for case in &mut data.cases {
        let p = model
            .pseudo_label(&case.image, case.dims, case.present, opts, aligner.as_deref_mut())
            .map_err(|e| ModelError::Input(format!("case {}: {e}", case.name)))?;
        progress(&case.name, &p);
        apply_pseudo_labels(case, &p)?;
        out.push(CaseSummary { case: case.name.clone(), model: p.model.clone(), counts: p.counts, tasks: p.tasks });
    }
    Ok(out)
}

/// Stage I decisions of one case without the voxel maps (what `pseudo_labels.json` holds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseSummary {
    /// Case name.
    pub case: String,
    /// Labelling model version.
    pub model: String,
    /// Voxel and task counts.
    pub counts: PseudoCounts,
    /// Task decisions.
    pub tasks: Vec<TaskDecision>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InferOptions;
    use crate::config::ModelConfig;
    use tch::Device;

    fn phantom_case(dims: [usize; 3]) -> (Vec<f32>, [usize; 3]) {
        let case = gmmas_phantom::generate(&gmmas_phantom::PhantomConfig { dims, seed: 3 });
        let refs: Vec<_> = case.volumes.iter().map(|(m, v)| (*m, v)).collect();
        let p = gmmas_imaging::prepare(&refs, &gmmas_imaging::PrepOptions::default()).unwrap();
        (p.data, p.dims)
    }

    /// Through the Analyzer: the voxel uncertainty varies once decoder dropout is on, the
    /// output is deterministic for a seed (and changes with it), the thresholds hold per voxel,
    /// and a model forced to high uncertainty (heavy dropout) has its voxels rejected.
    #[test]
    fn analyzer_pseudo_labels_are_seeded_and_thresholded() {
        let (img, dims) = phantom_case([40, 40, 32]);
        let cfg = ModelConfig::tiny().with_decoder_dropout(0.2);
        let a = Analyzer::new_seeded(cfg.clone(), 7, Device::Cpu).unwrap();
        let opts = PseudoLabelOptions { mc_passes: 4, seed: 11, voxel_c_min: 0.3, ..PseudoLabelOptions::default() };
        let p1 = a.pseudo_label(&img, dims, [true; 4], &opts, None).unwrap();
        let p2 = a.pseudo_label(&img, dims, [true; 4], &opts, None).unwrap();
        assert!(p1 == p2, "same seed, different pseudo-labels");
        let p3 = a.pseudo_label(&img, dims, [true; 4], &PseudoLabelOptions { seed: 12, ..opts.clone() }, None).unwrap();
        assert_ne!(p1.voxel_uncertainty, p3.voxel_uncertainty);
        let u = &p1.voxel_uncertainty;
        let (lo, hi) = u.iter().fold((f32::MAX, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
        assert!(hi > 10.0 * lo.max(1e-6) && hi > 1e-3, "voxel uncertainty does not vary: {lo}..{hi}");
        for (i, &ui) in u.iter().enumerate() {
            let ok = f64::from(ui) < opts.voxel_u_max && f64::from(p1.voxel_confidence[i]) > opts.voxel_c_min;
            assert_eq!(p1.accept[i], ok);
            assert_eq!(p1.target[i] == SEG_IGNORE, !ok);
        }
        assert_eq!(p1.model, a.version());
        // Without decoder dropout the segmentation is (nearly) certain everywhere.
        let plain = Analyzer::new_seeded(ModelConfig::tiny(), 7, Device::Cpu).unwrap();
        let q = plain.pseudo_label(&img, dims, [true; 4], &opts, None).unwrap();
        let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        // Forced high uncertainty: heavy dropout everywhere rejects more voxels.
        let heavy =
            Analyzer::new_seeded(ModelConfig::tiny().with_dropout(0.7).with_decoder_dropout(0.7), 7, Device::Cpu)
                .unwrap();
        let h = heavy.pseudo_label(&img, dims, [true; 4], &opts, None).unwrap();
        assert!(mean(&h.voxel_uncertainty) > mean(&p1.voxel_uncertainty));
        assert!(mean(&p1.voxel_uncertainty) > mean(&q.voxel_uncertainty));
        assert!(h.counts.rejected_uncertain_voxels > p1.counts.rejected_uncertain_voxels);
        // The deterministic analysis is untouched by the new setting (no MC passes).
        let d1 = a.analyze(&img, dims, [true; 4], &InferOptions::default()).unwrap();
        let d2 = a.analyze(&img, dims, [true; 4], &InferOptions::default()).unwrap();
        assert_eq!(d1, d2);
    }

    #[test]
    fn forget_and_apply_pseudo_labels() {
        let d = tempfile::tempdir().unwrap();
        gmmas_phantom::write_dataset(2, 5, [40, 40, 32], d.path()).unwrap();
        let data = load_unlabeled(&DataConfig {
            dirs: vec![d.path().to_path_buf()],
            labels: vec![d.path().join("labels.csv")],
            ..DataConfig::default()
        })
        .unwrap();
        for c in &data.cases {
            assert!(c.seg.iter().all(|&v| v == SEG_IGNORE) && c.tasks == [None; TASKS] && !c.has_seg);
            assert_eq!(c.supervision, SegSupervision::None);
        }
        let mut data = data;
        let a = Analyzer::new_seeded(ModelConfig::tiny().with_decoder_dropout(0.1), 1, Device::Cpu).unwrap();
        let opts = PseudoLabelOptions { mc_passes: 2, voxel_c_min: 0.3, c_min: 0.5, u_max: 1.0, ..Default::default() };
        let mut aligner = DistributionAligner::new([0.5; TASKS], 8).unwrap();
        let mut seen = 0;
        let summary = pseudo_label_dataset(&a, &mut data, &opts, Some(&mut aligner), |_, _| seen += 1).unwrap();
        assert_eq!((seen, summary.len(), aligner.history.len()), (2, 2, 2));
        for (c, s) in data.cases.iter().zip(&summary) {
            let accepted = c.seg.iter().filter(|&&v| v != SEG_IGNORE).count();
            assert_eq!(accepted, s.counts.accepted_voxels);
            assert_eq!(c.tasks.iter().filter(|t| t.is_some()).count(), s.counts.accepted_tasks);
        }
    }
}
