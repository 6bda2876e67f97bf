//! Stage I of the semi-supervised method (paper III-F): pseudo-labels from MC-Dropout passes,
//! with distribution alignment and the dual threshold (uncertainty < u_max, confidence > c_min).
//!
//! For one prepared case (the input of [`crate::Analyzer::analyze`]) the model runs
//! `mc_passes` MC-Dropout passes ([`crate::infer::run_stats`]). Per classification task:
//! P(positive) of every pass is distribution-aligned ([`DistributionAligner`], ReMixMatch
//! style, paper ref. [39]); the mean is the prediction, the standard deviation over passes
//! its epistemic uncertainty (eq. 6) and `max(p, 1 - p)` its confidence; the label is kept
//! only when uncertainty < `u_max` AND confidence > `c_min`. Per voxel: the class of the
//! highest mean probability, its mean probability as confidence and the standard deviation
//! of that class's probability over the passes as uncertainty; voxels failing either
//! threshold are ignored by the training losses ([`crate::partial::SEG_IGNORE`]).
//!
//! Segmentation probabilities are not distribution-aligned (the voxel class prior is not a
//! per-case quantity); only the task heads are.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::config::{SEG_CLASSES, TASK_NAMES, TASKS};
use crate::infer::PassStats;
use crate::partial::{SEG_IGNORE, SegSupervision};

fn default_passes() -> usize {
    8
}
fn default_u_max() -> f64 {
    0.1
}
fn default_c_min() -> f64 {
    0.95
}
fn default_overlap() -> f32 {
    0.5
}
fn yes() -> bool {
    true
}

/// Thresholds and settings of Stage I (the `[ssl.pseudo]` table of a run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PseudoLabelOptions {
    /// MC-Dropout passes (at least 2 for an uncertainty).
    #[serde(default = "default_passes")]
    pub mc_passes: usize,
    /// A task label is kept only when its uncertainty (std over passes) is below this (paper: 0.1).
    #[serde(default = "default_u_max")]
    pub u_max: f64,
    /// ... and its confidence `max(p, 1 - p)` is above this (paper: 0.95).
    #[serde(default = "default_c_min")]
    pub c_min: f64,
    /// A voxel is kept only when the std of its class probability is below this.
    #[serde(default = "default_u_max")]
    pub voxel_u_max: f64,
    /// ... and its class probability is above this.
    #[serde(default = "default_c_min")]
    pub voxel_c_min: f64,
    /// Seed of the dropout masks (the same seed gives the same pseudo-labels).
    #[serde(default)]
    pub seed: u64,
    /// Sliding-window overlap (as [`crate::InferOptions::overlap`]).
    #[serde(default = "default_overlap")]
    pub overlap: f32,
    /// Distribution alignment of the task probabilities on / off.
    #[serde(default = "yes")]
    pub align: bool,
}

impl Default for PseudoLabelOptions {
    fn default() -> Self {
        Self {
            mc_passes: default_passes(),
            u_max: default_u_max(),
            c_min: default_c_min(),
            voxel_u_max: default_u_max(),
            voxel_c_min: default_c_min(),
            seed: 0,
            overlap: default_overlap(),
            align: true,
        }
    }
}

impl PseudoLabelOptions {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.mc_passes < 2 {
            return bad(format!("mc_passes {} must be at least 2 (an uncertainty needs passes)", self.mc_passes));
        }
        for (name, v) in [
            ("u_max", self.u_max),
            ("c_min", self.c_min),
            ("voxel_u_max", self.voxel_u_max),
            ("voxel_c_min", self.voxel_c_min),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{name} {v} must be in [0, 1]"));
            }
        }
        if !(0.0..1.0).contains(&self.overlap) {
            return bad(format!("overlap {} must be in [0, 1)", self.overlap));
        }
        Ok(())
    }
}

fn default_window() -> usize {
    128
}

/// Distribution alignment (ReMixMatch, paper ref. [39]) of the task probabilities: each
/// P(positive) `p` is scaled by `target / running mean of predicted p` (and `1 - p` by the
/// complementary ratio) and renormalised. The running mean is over the last `window`
/// observed predictions. Plain data, serialisable, so a service can persist it between
/// calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistributionAligner {
    /// Target marginal P(positive) per task (e.g. the labelled set's positive rate).
    pub target: [f64; TASKS],
    /// Number of recent predictions in the running mean.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Recent predictions, oldest first (at most `window`).
    #[serde(default)]
    pub history: VecDeque<[f64; TASKS]>,
}

/// Probabilities are clamped to `[EPS, 1 - EPS]` inside the alignment.
const EPS: f64 = 1e-6;

impl DistributionAligner {
    /// An aligner towards `target` over the last `window` predictions.
    pub fn new(target: [f64; TASKS], window: usize) -> Result<Self, ModelError> {
        if window == 0 {
            return Err(ModelError::Config("distribution alignment window must be positive".into()));
        }
        if let Some(t) = target.iter().find(|t| !(t.is_finite() && (0.0..=1.0).contains(*t))) {
            return Err(ModelError::Config(format!("target marginal {t} must be in [0, 1]")));
        }
        Ok(Self { target, window, history: VecDeque::new() })
    }

    /// Target = positive rate of each task among `labels`, Laplace-smoothed
    /// (`(positives + 1) / (labelled + 2)`; 0.5 for a task without labels). Without the
    /// smoothing a task whose few labels are all of one class would get a target of 0 or 1,
    /// and alignment would then force every prediction to that class with full confidence.
    pub fn from_labels(labels: &[[Option<bool>; TASKS]], window: usize) -> Result<Self, ModelError> {
        let target = std::array::from_fn(|t| {
            let known: Vec<bool> = labels.iter().filter_map(|l| l[t]).collect();
            (known.iter().filter(|&&b| b).count() as f64 + 1.0) / (known.len() as f64 + 2.0)
        });
        Self::new(target, window)
    }

    /// Adds one prediction to the running window.
    pub fn observe(&mut self, p: [f64; TASKS]) {
        self.history.push_back(p);
        while self.history.len() > self.window.max(1) {
            self.history.pop_front();
        }
    }

    /// Mean predicted P(positive) per task over the window (the target when empty).
    pub fn running_mean(&self) -> [f64; TASKS] {
        if self.history.is_empty() {
            return self.target;
        }
        let n = self.history.len() as f64;
        std::array::from_fn(|t| self.history.iter().map(|p| p[t]).sum::<f64>() / n)
    }

    /// Aligned P(positive) per task.
    pub fn align(&self, p: [f64; TASKS]) -> [f64; TASKS] {
        let mean = self.running_mean();
        std::array::from_fn(|t| {
            let m = mean[t].clamp(EPS, 1.0 - EPS);
            let target = self.target[t].clamp(EPS, 1.0 - EPS);
            let pos = p[t].clamp(0.0, 1.0) * target / m;
            let neg = (1.0 - p[t].clamp(0.0, 1.0)) * (1.0 - target) / (1.0 - m);
            if pos + neg > 0.0 { pos / (pos + neg) } else { p[t] }
        })
    }
}

/// The Stage I decision for one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDecision {
    /// Task name (`grade_gbm`, ...).
    pub task: String,
    /// Mean P(positive) over the passes before alignment.
    pub raw_probability: f64,
    /// Mean P(positive) over the passes after alignment (what the label is read from).
    pub probability: f64,
    /// Std of the (aligned) P(positive) over the passes (eq. 6).
    pub uncertainty: f64,
    /// `max(probability, 1 - probability)`.
    pub confidence: f64,
    /// The predicted label (`probability > 0.5`).
    pub label: bool,
    /// Whether the label passed both thresholds.
    pub accepted: bool,
}

/// Voxel and task counts of one pseudo-labelled case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PseudoCounts {
    /// Voxels of the prepared grid.
    pub voxels: usize,
    /// Voxels accepted (both thresholds).
    pub accepted_voxels: usize,
    /// Accepted voxels labelled tumour (NCR, ED or ET).
    pub accepted_tumour_voxels: usize,
    /// Voxels predicted tumour (any confidence).
    pub predicted_tumour_voxels: usize,
    /// Voxels failing the uncertainty threshold.
    pub rejected_uncertain_voxels: usize,
    /// Voxels failing the confidence threshold.
    pub rejected_unconfident_voxels: usize,
    /// Tasks whose label was accepted.
    pub accepted_tasks: usize,
}

/// Stage I output for one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PseudoLabels {
    /// Version of the model that labelled it (`name@hash`).
    pub model: String,
    /// Prepared grid `[nx, ny, nz]`.
    pub dims: [usize; 3],
    /// Predicted BraTS labels (0, 1, 2, 4) at every voxel (accepted or not), x fastest.
    pub labels: Vec<u8>,
    /// Voxel accept mask (both thresholds passed).
    pub accept: Vec<bool>,
    /// Training target: network classes 0..3 at accepted voxels, [`SEG_IGNORE`] elsewhere.
    pub target: Vec<u8>,
    /// Voxel uncertainty: std over the passes of the chosen class's probability.
    pub voxel_uncertainty: Vec<f32>,
    /// Voxel confidence: mean probability of the chosen class.
    pub voxel_confidence: Vec<f32>,
    /// Per task decision (grade, IDH, 1p/19q, MGMT).
    pub tasks: Vec<TaskDecision>,
    /// Counts.
    pub counts: PseudoCounts,
    /// The options used.
    pub options: PseudoLabelOptions,
}

impl PseudoLabels {
    /// Accepted task labels (None where rejected), in head order.
    pub fn task_labels(&self) -> [Option<bool>; TASKS] {
        std::array::from_fn(|t| self.tasks.get(t).and_then(|d| d.accepted.then_some(d.label)))
    }

    /// What segmentation supervision [`PseudoLabels::target`] carries.
    pub fn supervision(&self) -> SegSupervision {
        SegSupervision::of(&self.target)
    }
}

/// Mean and population std of values.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
    (m, var.sqrt())
}

/// The Stage I decisions from MC-Dropout statistics (pure; see the module docs). When
/// `aligner` is given (and `opts.align`), the case's mean raw prediction is added to its
/// window first, then every pass is aligned with the updated running mean.
// Long on purpose: the Stage I decision rule of the paper for one case, step by step on the same statistics.
pub fn select(
    stats: &PassStats,
    dims: [usize; 3],
    opts: &PseudoLabelOptions,
    aligner: Option<&mut DistributionAligner>,
    model: &str,
) -> Result<PseudoLabels, ModelError> {
    opts.validate()?;
    let voxels: usize = dims.iter().product();
    if stats.mean.len() != SEG_CLASSES * voxels || stats.std.len() != stats.mean.len() {
        return Err(ModelError::Input(format!(
            "statistics hold {} / {} values, expected {} x {voxels}",
            stats.mean.len(),
            stats.std.len(),
            SEG_CLASSES
        )));
    }
    if stats.tasks.is_empty() {
        return Err(ModelError::Input("no pass statistics".into()));
    }
    // Tasks.
    let raw: Vec<[f64; TASKS]> = stats.tasks.clone();
    let raw_mean: [f64; TASKS] = std::array::from_fn(|t| mean_std(&raw.iter().map(|p| p[t]).collect::<Vec<_>>()).0);
    let aligned: Vec<[f64; TASKS]> = match aligner {
        Some(a) if opts.align => {
            a.observe(raw_mean);
            raw.iter().map(|p| a.align(*p)).collect()
        }
        _ => raw.clone(),
    };
    let mut tasks = Vec::with_capacity(TASKS);
    for (t, name) in TASK_NAMES.iter().enumerate() {
        let (p, u) = mean_std(&aligned.iter().map(|a| a[t]).collect::<Vec<_>>());
        let confidence = p.max(1.0 - p);
        tasks.push(TaskDecision {
            task: (*name).to_string(),
            raw_probability: raw_mean[t],
            probability: p,
            uncertainty: u,
            confidence,
            label: p > 0.5,
            accepted: u < opts.u_max && confidence > opts.c_min,
        });
    }
    // Voxels.
    let mut labels = vec![0u8; voxels];
    let mut accept = vec![false; voxels];
    let mut target = vec![SEG_IGNORE; voxels];
    let mut unc = vec![0f32; voxels];
    let mut conf = vec![0f32; voxels];
    let mut counts = PseudoCounts {
        voxels,
        accepted_voxels: 0,
        accepted_tumour_voxels: 0,
        predicted_tumour_voxels: 0,
        rejected_uncertain_voxels: 0,
        rejected_unconfident_voxels: 0,
        accepted_tasks: tasks.iter().filter(|d| d.accepted).count(),
    };
    for i in 0..voxels {
        let mut best = 0;
        for c in 1..SEG_CLASSES {
            if stats.mean[c * voxels + i] > stats.mean[best * voxels + i] {
                best = c;
            }
        }
        let (c, u) = (stats.mean[best * voxels + i], stats.std[best * voxels + i]);
        conf[i] = c;
        unc[i] = u;
        labels[i] = if best == 3 { 4 } else { best as u8 };
        if best != 0 {
            counts.predicted_tumour_voxels += 1;
        }
        let certain = f64::from(u) < opts.voxel_u_max;
        let confident = f64::from(c) > opts.voxel_c_min;
        counts.rejected_uncertain_voxels += usize::from(!certain);
        counts.rejected_unconfident_voxels += usize::from(!confident);
        if certain && confident {
            accept[i] = true;
            target[i] = best as u8;
            counts.accepted_voxels += 1;
            counts.accepted_tumour_voxels += usize::from(best != 0);
        }
    }
    Ok(PseudoLabels {
        model: model.to_string(),
        dims,
        labels,
        accept,
        target,
        voxel_uncertainty: unc,
        voxel_confidence: conf,
        tasks,
        counts,
        options: opts.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Statistics of a 2x1x1 grid: voxel 0 background (certain), voxel 1 ET.
    fn stats(tasks: Vec<[f64; TASKS]>, voxel_std: f32) -> PassStats {
        // Class-major: [bg0, bg1, ncr0, ncr1, ed0, ed1, et0, et1].
        let mean = vec![0.99, 0.01, 0.0, 0.0, 0.01, 0.02, 0.0, 0.97];
        let mut std = vec![0.0; 8];
        std[7] = voxel_std;
        PassStats { mean, std, tasks }
    }

    #[test]
    fn thresholds_are_respected() {
        // Grade: confident and stable -> accepted. IDH: mean 0.96 but one pass at 0.6 -> std 0.12
        // (forced high uncertainty) -> rejected although confident. 1p/19q: stable but 0.9 ->
        // rejected by confidence. MGMT: flips between passes -> both fail.
        let mut passes = vec![[0.99, 1.0, 0.9, 0.99]; 9];
        passes.push([0.99, 0.6, 0.9, 0.01]);
        let opts = PseudoLabelOptions { align: false, ..PseudoLabelOptions::default() };
        let p = select(&stats(passes.clone(), 0.2), [2, 1, 1], &opts, None, "m@0").unwrap();
        let d = &p.tasks;
        assert!(d[0].accepted && d[0].label);
        assert!((d[1].uncertainty - 0.12).abs() < 1e-9 && d[1].confidence > 0.95 && !d[1].accepted);
        assert!(d[2].uncertainty < 1e-9 && !d[2].accepted);
        assert!(!d[3].accepted);
        for t in d {
            assert_eq!(t.accepted, t.uncertainty < opts.u_max && t.confidence > opts.c_min);
        }
        assert_eq!(p.task_labels(), [Some(true), None, None, None]);
        // Voxel 1 (ET, p 0.97) fails the uncertainty threshold at std 0.2, passes at 0.05.
        assert_eq!(p.accept, vec![true, false]);
        assert_eq!(p.target, vec![0, SEG_IGNORE]);
        assert_eq!(p.labels, vec![0, 4]);
        assert_eq!((p.counts.accepted_voxels, p.counts.rejected_uncertain_voxels), (1, 1));
        let p = select(&stats(passes.clone(), 0.05), [2, 1, 1], &opts, None, "m@0").unwrap();
        assert_eq!(p.target, vec![0, 3]);
        assert_eq!(p.counts.accepted_tumour_voxels, 1);
        // Looser task thresholds accept IDH too; stricter voxel confidence rejects voxel 1.
        let loose = PseudoLabelOptions { u_max: 0.2, voxel_c_min: 0.98, ..opts.clone() };
        let p = select(&stats(passes, 0.05), [2, 1, 1], &loose, None, "m@0").unwrap();
        assert!(p.tasks[1].accepted);
        assert_eq!(p.target, vec![0, SEG_IGNORE]);
        assert_eq!(p.counts.rejected_unconfident_voxels, 1);
    }

    #[test]
    fn aligner_moves_a_skewed_running_distribution_toward_the_target() {
        let mut a = DistributionAligner::new([0.5, 0.2, 0.5, 0.5], 4).unwrap();
        // The model predicts positive far too often: running mean 0.8 for grade, 0.6 for IDH.
        for _ in 0..6 {
            a.observe([0.8, 0.6, 0.5, 0.5]);
        }
        assert_eq!(a.history.len(), 4);
        let raw = [0.8, 0.6, 0.5, 0.7];
        let out = a.align(raw);
        assert!((out[0] - 0.5).abs() < 1e-9, "{out:?}");
        assert!((out[1] - 0.2).abs() < 1e-9, "{out:?}");
        assert!((out[2] - 0.5).abs() < 1e-12);
        // Running mean already at the target marginal: unchanged.
        assert!((out[3] - 0.7).abs() < 1e-12);
        // Aligning a batch of skewed predictions brings their mean closer to the target.
        let batch = [[0.9, 0.7, 0.5, 0.5], [0.7, 0.5, 0.5, 0.5], [0.8, 0.6, 0.5, 0.5]];
        let mean = |v: &[[f64; TASKS]], t: usize| v.iter().map(|p| p[t]).sum::<f64>() / v.len() as f64;
        let aligned: Vec<[f64; TASKS]> = batch.iter().map(|p| a.align(*p)).collect();
        for t in 0..2 {
            assert!((mean(&aligned, t) - a.target[t]).abs() < (mean(&batch, t) - a.target[t]).abs());
        }
        // Persistable.
        let back: DistributionAligner = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
        assert!(DistributionAligner::new([0.5; TASKS], 0).is_err());
        let from = DistributionAligner::from_labels(&[[Some(true), None, None, None]; 3], 8).unwrap();
        assert_eq!(from.target, [0.8, 0.5, 0.5, 0.5]);
    }

    #[test]
    fn select_aligns_through_the_aligner_window() {
        let mut a = DistributionAligner::new([0.5; TASKS], 8).unwrap();
        let opts = PseudoLabelOptions::default();
        let p = select(&stats(vec![[0.97; TASKS]; 4], 0.0), [2, 1, 1], &opts, Some(&mut a), "m@0").unwrap();
        // The first observation defines the running mean: aligned straight to the target.
        assert_eq!(a.history.len(), 1);
        assert!((p.tasks[0].probability - 0.5).abs() < 1e-9 && !p.tasks[0].accepted);
        assert!((p.tasks[0].raw_probability - 0.97).abs() < 1e-9);
        assert!(PseudoLabelOptions { mc_passes: 1, ..opts }.validate().is_err());
    }
}
