//! Whether MC-Dropout uncertainty tracks error: voxel AUROC for finding wrong voxels, ECE within
//! uncertainty bins (paper Fig. 5c), and case-level scores on inputs unlike the training data.
//!
//! Conventions (out-of-distribution inputs: [`Variant`], sequences swapped or heavy noise):
//! - Voxel maps come from [`crate::Analyzer::voxel_mc`] ([`VoxelMc`]); a voxel is *wrong* when the
//!   argmax of the MC-mean class probabilities (no label cleanup) differs from the expert class.
//! - Three voxel uncertainties ([`VoxelMeasure`]): predictive entropy of the MC mean (nats),
//!   mutual information (entropy minus mean single-pass entropy; the epistemic part), and the
//!   standard deviation over passes of the chosen class's probability (the paper's eq. 6).
//! - The brain is where any prepared channel is non-zero; the tumour region of a case is the
//!   union of its predicted and expert whole tumour.
//! - AUROC is the rank-sum statistic with ties counted one half.
//! - ECE inside an uncertainty bin is the top-label ECE (confidence against correctness, equal-
//!   width confidence bins) of the samples in that bin; bins are equal-count (quantile) bins of
//!   the pooled uncertainty, edges shared by tied values merged.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::config::{MODALITIES, MODALITY_NAMES, TASKS};
pub use crate::infer::VoxelMc;

/// A voxel uncertainty measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoxelMeasure {
    /// Predictive entropy of the MC-mean class distribution (nats).
    Entropy,
    /// Mutual information between prediction and dropout mask (nats).
    MutualInfo,
    /// Standard deviation over passes of the chosen class's probability.
    ClassStd,
}

impl VoxelMeasure {
    /// Every measure, in report order.
    pub const ALL: [VoxelMeasure; 3] = [VoxelMeasure::Entropy, VoxelMeasure::MutualInfo, VoxelMeasure::ClassStd];

    /// Name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            VoxelMeasure::Entropy => "entropy",
            VoxelMeasure::MutualInfo => "mutual_info",
            VoxelMeasure::ClassStd => "class_std",
        }
    }

    /// This measure's map in `mc`.
    pub fn of(self, mc: &VoxelMc) -> &[f32] {
        match self {
            VoxelMeasure::Entropy => &mc.entropy,
            VoxelMeasure::MutualInfo => &mc.mutual_info,
            VoxelMeasure::ClassStd => &mc.class_std,
        }
    }
}

/// AUROC of `scores` for telling `positives` from the rest (rank-sum, ties one half); None
/// when either class is absent.
pub fn auroc(scores: &[f32], positives: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), positives.len(), "auroc: length mismatch");
    let mut pairs: Vec<(f32, bool)> = scores.iter().copied().zip(positives.iter().copied()).collect();
    pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    auroc_sorted(&pairs)
}

/// [`auroc`] of pairs already sorted by score.
fn auroc_sorted(pairs: &[(f32, bool)]) -> Option<f64> {
    let pos = pairs.iter().filter(|p| p.1).count();
    let neg = pairs.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    // Sum over positives of (negatives strictly below + half the tied negatives).
    let mut below_neg = 0u64;
    let mut acc = 0f64;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            j += 1;
        }
        let tied_pos = pairs[i..j].iter().filter(|p| p.1).count() as u64;
        let tied_neg = (j - i) as u64 - tied_pos;
        acc += tied_pos as f64 * (below_neg as f64 + tied_neg as f64 / 2.0);
        below_neg += tied_neg;
        i = j;
    }
    Some(acc / (pos as f64 * neg as f64))
}

/// Interior edges of `bins` equal-count bins of `values` (at most `bins - 1`, increasing, no
/// duplicates: a value shared by many samples never straddles two bins).
pub fn quantile_edges(values: &[f32], bins: usize) -> Vec<f64> {
    if values.is_empty() || bins < 2 {
        return Vec::new();
    }
    let mut v = values.to_vec();
    v.sort_unstable_by(f32::total_cmp);
    let mut edges: Vec<f64> = Vec::with_capacity(bins - 1);
    for k in 1..bins {
        let e = f64::from(v[(k * v.len() / bins).min(v.len() - 1)]);
        // A bin is [lo, hi): an edge at the minimum would leave the first bin empty.
        if e > f64::from(v[0]) && edges.last().is_none_or(|&last| e > last) {
            edges.push(e);
        }
    }
    edges
}

/// Index of the bin of `u` given interior `edges` (bins are `[lo, hi)`).
pub fn bin_index(u: f64, edges: &[f64]) -> usize {
    edges.partition_point(|&e| e <= u)
}

/// Top-label ECE of `(confidence, correct)` samples with `bins` equal-width confidence bins
/// over `[0, 1]`; None without samples.
pub fn top_label_ece(confidence: &[f32], correct: &[bool], bins: usize) -> Option<f64> {
    assert_eq!(confidence.len(), correct.len(), "top_label_ece: length mismatch");
    if confidence.is_empty() || bins == 0 {
        return None;
    }
    let mut acc = ConfidenceBins::new(bins);
    for (&c, &ok) in confidence.iter().zip(correct) {
        acc.add(f64::from(c), ok);
    }
    acc.ece()
}

/// Counts per equal-width confidence bin (the inside of one uncertainty bin).
#[derive(Debug, Clone)]
struct ConfidenceBins {
    count: Vec<u64>,
    conf: Vec<f64>,
    correct: Vec<u64>,
}

impl ConfidenceBins {
    fn new(bins: usize) -> Self {
        Self { count: vec![0; bins], conf: vec![0.0; bins], correct: vec![0; bins] }
    }

    fn add(&mut self, confidence: f64, correct: bool) {
        let n = self.count.len();
        let b = ((confidence.clamp(0.0, 1.0) * n as f64).floor() as usize).min(n - 1);
        self.count[b] += 1;
        self.conf[b] += confidence;
        self.correct[b] += u64::from(correct);
    }

    fn total(&self) -> u64 {
        self.count.iter().sum()
    }

    fn ece(&self) -> Option<f64> {
        let n = self.total();
        if n == 0 {
            return None;
        }
        let gap: f64 = (0..self.count.len())
            .filter(|&b| self.count[b] > 0)
            .map(|b| (self.correct[b] as f64 - self.conf[b]).abs())
            .sum();
        Some(gap / n as f64)
    }
}

/// One uncertainty bin of the Fig. 5c analogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UncertaintyBin {
    /// Lower edge (inclusive; None for the first bin).
    pub lo: Option<f64>,
    /// Upper edge (exclusive; None for the last bin).
    pub hi: Option<f64>,
    /// Samples in the bin.
    pub count: u64,
    /// Mean uncertainty of the samples.
    pub mean_uncertainty: f64,
    /// Mean confidence.
    pub mean_confidence: f64,
    /// Fraction of wrong samples.
    pub error_rate: f64,
    /// Top-label ECE of the samples in the bin.
    pub ece: f64,
}

/// ECE and error rate within uncertainty bins: samples are `(uncertainty, confidence,
/// correct)`; `edges` are the interior bin edges (e.g. from [`quantile_edges`]); each bin's ECE
/// uses `confidence_bins` equal-width confidence bins. Empty bins are left out.
pub fn ece_by_uncertainty(
    uncertainty: &[f32],
    confidence: &[f32],
    correct: &[bool],
    edges: &[f64],
    confidence_bins: usize,
) -> Vec<UncertaintyBin> {
    assert!(
        uncertainty.len() == confidence.len() && confidence.len() == correct.len(),
        "ece_by_uncertainty: length mismatch"
    );
    let nb = edges.len() + 1;
    let mut inner: Vec<ConfidenceBins> = (0..nb).map(|_| ConfidenceBins::new(confidence_bins.max(1))).collect();
    let mut u_sum = vec![0f64; nb];
    for ((&u, &c), &ok) in uncertainty.iter().zip(confidence).zip(correct) {
        let b = bin_index(f64::from(u), edges);
        inner[b].add(f64::from(c), ok);
        u_sum[b] += f64::from(u);
    }
    (0..nb)
        .filter_map(|b| {
            let n = inner[b].total();
            let ece = inner[b].ece()?;
            let right: u64 = inner[b].correct.iter().sum();
            Some(UncertaintyBin {
                lo: b.checked_sub(1).map(|i| edges[i]),
                hi: edges.get(b).copied(),
                count: n,
                mean_uncertainty: u_sum[b] / n as f64,
                mean_confidence: inner[b].conf.iter().sum::<f64>() / n as f64,
                error_rate: 1.0 - right as f64 / n as f64,
                ece,
            })
        })
        .collect()
}

/// Brain mask of a prepared image (channel-major, `voxels` per channel): any channel non-zero.
pub fn brain_mask(image: &[f32], voxels: usize) -> Vec<bool> {
    let mut brain = vec![false; voxels];
    for ch in image.chunks(voxels) {
        for (b, &v) in brain.iter_mut().zip(ch) {
            *b |= v != 0.0;
        }
    }
    brain
}

/// An input unlike the training data, made from a prepared case.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Variant {
    /// The case as it is.
    Original,
    /// Two sequences exchanged (channel indices in t1, t1ce, t2, flair order).
    Swap(usize, usize),
    /// Gaussian noise of this standard deviation (in z-score units) added to brain voxels.
    Noise(f64),
}

impl Variant {
    /// Parses `original`, `swap-<a>-<b>` (sequence names) or `noise-<sigma>`.
    pub fn parse(s: &str) -> Result<Variant, ModelError> {
        let bad = || {
            ModelError::Input(format!(
                "variant {s:?}: expected original, swap-<a>-<b> (t1, t1ce, t2, flair) or noise-<sd>"
            ))
        };
        if s == "original" {
            return Ok(Variant::Original);
        }
        if let Some(rest) = s.strip_prefix("swap-") {
            let (a, b) = rest.split_once('-').ok_or_else(bad)?;
            let idx = |n: &str| MODALITY_NAMES.iter().position(|m| *m == n);
            let (Some(a), Some(b)) = (idx(a), idx(b)) else { return Err(bad()) };
            if a == b {
                return Err(bad());
            }
            return Ok(Variant::Swap(a, b));
        }
        if let Some(sd) = s.strip_prefix("noise-") {
            let sd: f64 = sd.parse().map_err(|_| bad())?;
            if !(sd.is_finite() && sd > 0.0) {
                return Err(bad());
            }
            return Ok(Variant::Noise(sd));
        }
        Err(bad())
    }

    /// The name [`Variant::parse`] reads.
    pub fn name(&self) -> String {
        match *self {
            Variant::Original => "original".into(),
            Variant::Swap(a, b) => format!("swap-{}-{}", MODALITY_NAMES[a], MODALITY_NAMES[b]),
            Variant::Noise(sd) => format!("noise-{sd}"),
        }
    }

    /// The variant of a prepared `image` (channel-major, `voxels` per channel) and its
    /// presence flags; noise is drawn from `seed` and added to brain voxels only.
    pub fn apply(
        &self,
        image: &[f32],
        present: [bool; MODALITIES],
        voxels: usize,
        seed: u64,
    ) -> (Vec<f32>, [bool; MODALITIES]) {
        assert_eq!(image.len(), MODALITIES * voxels, "Variant::apply: image size");
        let mut out = image.to_vec();
        let mut present = present;
        match *self {
            Variant::Original => {}
            Variant::Swap(a, b) => {
                let (lo, hi) = (a.min(b), a.max(b));
                let (first, second) = out.split_at_mut(hi * voxels);
                first[lo * voxels..(lo + 1) * voxels].swap_with_slice(&mut second[..voxels]);
                present.swap(a, b);
            }
            Variant::Noise(sd) => {
                let brain = brain_mask(image, voxels);
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                for (c, ch) in out.chunks_mut(voxels).enumerate() {
                    if !present[c] {
                        continue;
                    }
                    for (v, &b) in ch.iter_mut().zip(&brain) {
                        if b {
                            *v += (sd * standard_normal(&mut rng)) as f32;
                        }
                    }
                }
            }
        }
        (out, present)
    }
}

/// One standard normal draw (Box-Muller).
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Case-level uncertainty of one prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseUncertainty {
    /// Mean voxel predictive entropy over the brain (nats).
    pub brain_entropy: f64,
    /// Mean voxel mutual information over the brain (nats).
    pub brain_mutual_info: f64,
    /// Mean voxel class std over the brain.
    pub brain_class_std: f64,
    /// Mean voxel predictive entropy over the predicted whole tumour (None when none is predicted).
    pub tumour_entropy: Option<f64>,
    /// Mean voxel class std over the predicted whole tumour (None when none is predicted).
    pub tumour_class_std: Option<f64>,
    /// Predicted whole tumour in mL (argmax of the MC mean, no cleanup).
    pub predicted_tumour_ml: f64,
    /// MC-mean P(positive) per task.
    pub task_mean: [f64; TASKS],
    /// Std over passes of P(positive) per task (the paper's task uncertainty).
    pub task_std: [f64; TASKS],
    /// Mean over the four tasks of `task_std`.
    pub task_std_mean: f64,
    /// Mean over the four tasks of the binary entropy of `task_mean` (nats).
    pub task_entropy_mean: f64,
}

/// Case-level names of the [`CaseUncertainty`] scores compared between inputs.
pub const CASE_SCORES: [&str; 6] =
    ["brain_entropy", "brain_mutual_info", "brain_class_std", "tumour_entropy", "task_std_mean", "task_entropy_mean"];

impl CaseUncertainty {
    /// The value of the score `name` (one of [`CASE_SCORES`]).
    pub fn score(&self, name: &str) -> Option<f64> {
        match name {
            "brain_entropy" => Some(self.brain_entropy),
            "brain_mutual_info" => Some(self.brain_mutual_info),
            "brain_class_std" => Some(self.brain_class_std),
            "tumour_entropy" => self.tumour_entropy,
            "task_std_mean" => Some(self.task_std_mean),
            "task_entropy_mean" => Some(self.task_entropy_mean),
            _ => None,
        }
    }
}

/// Mean and population std of the `(MC passes)` task probabilities.
pub fn task_mean_std(tasks: &[[f64; TASKS]]) -> ([f64; TASKS], [f64; TASKS]) {
    let n = tasks.len().max(1) as f64;
    let mean: [f64; TASKS] = std::array::from_fn(|t| tasks.iter().map(|p| p[t]).sum::<f64>() / n);
    let std = std::array::from_fn(|t| (tasks.iter().map(|p| (p[t] - mean[t]).powi(2)).sum::<f64>() / n).sqrt());
    (mean, std)
}

/// Binary entropy of `p` in nats.
pub fn binary_entropy(p: f64) -> f64 {
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    -(p * p.ln() + (1.0 - p) * (1.0 - p).ln())
}

/// Case-level uncertainty of `mc` over `brain` (voxels of `voxel_ml` mL each).
pub fn case_uncertainty(mc: &VoxelMc, brain: &[bool], voxel_ml: f64) -> CaseUncertainty {
    let mean_over = |v: &[f32], mask: &dyn Fn(usize) -> bool| {
        let (s, n) = v
            .iter()
            .enumerate()
            .filter(|(i, _)| mask(*i))
            .fold((0f64, 0usize), |(s, n), (_, &x)| (s + f64::from(x), n + 1));
        (n > 0).then(|| s / n as f64)
    };
    let in_brain = |i: usize| brain[i];
    let in_tumour = |i: usize| mc.classes[i] != 0;
    let tumour_voxels = mc.classes.iter().filter(|&&c| c != 0).count();
    let (task_mean, task_std) = task_mean_std(&mc.tasks);
    CaseUncertainty {
        brain_entropy: mean_over(&mc.entropy, &in_brain).unwrap_or(0.0),
        brain_mutual_info: mean_over(&mc.mutual_info, &in_brain).unwrap_or(0.0),
        brain_class_std: mean_over(&mc.class_std, &in_brain).unwrap_or(0.0),
        tumour_entropy: mean_over(&mc.entropy, &in_tumour),
        tumour_class_std: mean_over(&mc.class_std, &in_tumour),
        predicted_tumour_ml: tumour_voxels as f64 * voxel_ml,
        task_mean,
        task_std,
        task_std_mean: task_std.iter().sum::<f64>() / TASKS as f64,
        task_entropy_mean: task_mean.iter().map(|&p| binary_entropy(p)).sum::<f64>() / TASKS as f64,
    }
}

/// Voxel AUROC of each measure for finding wrong voxels in one region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionAuroc {
    /// Voxels scored.
    pub voxels: u64,
    /// Wrong voxels among them.
    pub wrong: u64,
    /// AUROC per measure, in [`VoxelMeasure::ALL`] order (None without both kinds of voxel).
    pub auroc: Vec<(VoxelMeasure, Option<f64>)>,
}

/// Voxel scores of one case against its expert segmentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseVoxelScores {
    /// Over brain voxels.
    pub brain: RegionAuroc,
    /// Over the union of predicted and expert whole tumour.
    pub tumour_region: RegionAuroc,
}

/// Whether a voxel is wrong: predicted class differs from the expert class (`truth`, network
/// classes 0..3).
fn wrong_voxels(mc: &VoxelMc, truth: &[u8]) -> Vec<bool> {
    mc.classes.iter().zip(truth).map(|(p, t)| p != t).collect()
}

fn region_auroc(mc: &VoxelMc, wrong: &[bool], mask: &[bool]) -> RegionAuroc {
    let w: Vec<bool> = wrong.iter().zip(mask).filter(|(_, m)| **m).map(|(w, _)| *w).collect();
    let auroc = VoxelMeasure::ALL
        .iter()
        .map(|&m| {
            let s: Vec<f32> = m.of(mc).iter().zip(mask).filter(|(_, k)| **k).map(|(s, _)| *s).collect();
            (m, auroc(&s, &w))
        })
        .collect();
    RegionAuroc { voxels: w.len() as u64, wrong: w.iter().filter(|&&x| x).count() as u64, auroc }
}

fn check_truth(mc: &VoxelMc, truth: &[u8], brain: &[bool]) -> Result<(), ModelError> {
    if truth.len() != mc.classes.len() || brain.len() != mc.classes.len() {
        return Err(ModelError::Input(format!(
            "truth has {} voxels, brain {}, prediction {}",
            truth.len(),
            brain.len(),
            mc.classes.len()
        )));
    }
    if let Some(v) = truth.iter().find(|&&t| t > 3) {
        return Err(ModelError::Input(format!("truth class {v}: expected a full segmentation (classes 0..3)")));
    }
    Ok(())
}

/// Voxel AUROC of `mc` against `truth` (network classes 0..3) within the brain and within the
/// tumour region.
pub fn case_voxel_scores(mc: &VoxelMc, truth: &[u8], brain: &[bool]) -> Result<CaseVoxelScores, ModelError> {
    check_truth(mc, truth, brain)?;
    let wrong = wrong_voxels(mc, truth);
    let region: Vec<bool> =
        mc.classes.iter().zip(truth).zip(brain).map(|((&p, &t), &b)| b && (p != 0 || t != 0)).collect();
    Ok(CaseVoxelScores { brain: region_auroc(mc, &wrong, brain), tumour_region: region_auroc(mc, &wrong, &region) })
}

/// Brain voxels of many cases pooled, for the pooled AUROC and the Fig. 5c bins.
#[derive(Debug, Clone, Default)]
pub struct VoxelPool {
    /// Per measure (in [`VoxelMeasure::ALL`] order), the uncertainty of every pooled voxel.
    pub uncertainty: [Vec<f32>; 3],
    /// Confidence of every pooled voxel.
    pub confidence: Vec<f32>,
    /// Whether it is correct.
    pub correct: Vec<bool>,
    /// Whether it lies in its case's tumour region.
    pub tumour_region: Vec<bool>,
}

/// Pooled voxel results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PooledVoxelReport {
    /// AUROC over all pooled brain voxels.
    pub brain: RegionAuroc,
    /// AUROC over all pooled tumour-region voxels.
    pub tumour_region: RegionAuroc,
    /// ECE of all pooled brain voxels (10 confidence bins).
    pub ece: Option<f64>,
    /// Per measure, the equal-count uncertainty bins with ECE and error rate.
    pub bins: Vec<(VoxelMeasure, Vec<UncertaintyBin>)>,
}

impl VoxelPool {
    /// Adds the brain voxels of one case.
    pub fn add(&mut self, mc: &VoxelMc, truth: &[u8], brain: &[bool]) -> Result<(), ModelError> {
        check_truth(mc, truth, brain)?;
        for (k, m) in VoxelMeasure::ALL.iter().enumerate() {
            self.uncertainty[k].extend(m.of(mc).iter().zip(brain).filter(|(_, b)| **b).map(|(u, _)| *u));
        }
        for i in (0..brain.len()).filter(|&i| brain[i]) {
            self.confidence.push(mc.confidence[i]);
            self.correct.push(mc.classes[i] == truth[i]);
            self.tumour_region.push(mc.classes[i] != 0 || truth[i] != 0);
        }
        Ok(())
    }

    /// Pooled AUROC, ECE and `bins` equal-count uncertainty bins per measure.
    pub fn report(&self, bins: usize) -> PooledVoxelReport {
        let wrong: Vec<bool> = self.correct.iter().map(|c| !c).collect();
        let region = |mask: Option<&[bool]>| {
            let keep = |i: usize| mask.is_none_or(|m| m[i]);
            let w: Vec<bool> = (0..wrong.len()).filter(|&i| keep(i)).map(|i| wrong[i]).collect();
            let auroc = VoxelMeasure::ALL
                .iter()
                .enumerate()
                .map(|(k, &m)| {
                    let s: Vec<f32> = (0..wrong.len()).filter(|&i| keep(i)).map(|i| self.uncertainty[k][i]).collect();
                    (m, auroc(&s, &w))
                })
                .collect();
            RegionAuroc { voxels: w.len() as u64, wrong: w.iter().filter(|&&x| x).count() as u64, auroc }
        };
        let bins = VoxelMeasure::ALL
            .iter()
            .enumerate()
            .map(|(k, &m)| {
                let edges = quantile_edges(&self.uncertainty[k], bins);
                (m, ece_by_uncertainty(&self.uncertainty[k], &self.confidence, &self.correct, &edges, 10))
            })
            .collect();
        PooledVoxelReport {
            brain: region(None),
            tumour_region: region(Some(&self.tumour_region)),
            ece: top_label_ece(&self.confidence, &self.correct, 10),
            bins,
        }
    }
}

/// How a case-level score separates in-distribution inputs from one kind of other input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodComparison {
    /// Cases with the score on both sides.
    pub n_in: usize,
    /// Other inputs with the score.
    pub n_out: usize,
    /// Mean score in distribution (None without any).
    pub mean_in: Option<f64>,
    /// Mean score on the other inputs (None without any, e.g. no predicted tumour).
    pub mean_out: Option<f64>,
    /// AUROC of the score for telling the other inputs (positive) from the in-distribution ones.
    pub auroc: Option<f64>,
    /// When paired (a variant of each case): cases whose variant scored higher than the case.
    pub paired_higher: Option<usize>,
    /// When paired: pairs with the score on both sides.
    pub n_pairs: Option<usize>,
}

/// Compares `inside` and `outside` scores (None entries are left out); `paired` when
/// `outside[i]` is a variant of `inside[i]`.
pub fn compare_scores(inside: &[Option<f64>], outside: &[Option<f64>], paired: bool) -> OodComparison {
    let a: Vec<f64> = inside.iter().flatten().copied().collect();
    let b: Vec<f64> = outside.iter().flatten().copied().collect();
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let both: Vec<(f64, f64)> = inside.iter().zip(outside).filter_map(|(x, y)| Some(((*x)?, (*y)?))).collect();
    let paired_higher = paired.then(|| both.iter().filter(|(x, y)| y > x).count());
    let n_pairs = paired.then_some(both.len());
    OodComparison {
        n_in: a.len(),
        n_out: b.len(),
        mean_in: mean(&a),
        mean_out: mean(&b),
        auroc: auroc_f64(&a, &b),
        paired_higher,
        n_pairs,
    }
}

/// AUROC with f64 scores (case-level, few values) so that close scores are not merged by f32.
fn auroc_f64(negatives: &[f64], positives: &[f64]) -> Option<f64> {
    if negatives.is_empty() || positives.is_empty() {
        return None;
    }
    let mut acc = 0.0;
    for &p in positives {
        for &n in negatives {
            acc += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(acc / (negatives.len() * positives.len()) as f64)
}

/// One labelled task prediction of a case for the case-level Fig. 5c analogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPoint {
    /// Case name.
    pub case: String,
    /// Task name.
    pub task: String,
    /// MC-mean P(positive).
    pub p: f64,
    /// Std over passes of P(positive).
    pub std: f64,
    /// The label.
    pub label: bool,
}

/// ECE and error rate of task predictions within `bins` equal-count bins of their MC std.
pub fn task_bins(points: &[TaskPoint], bins: usize) -> Vec<UncertaintyBin> {
    let u: Vec<f32> = points.iter().map(|p| p.std as f32).collect();
    let conf: Vec<f32> = points.iter().map(|p| p.p.max(1.0 - p.p) as f32).collect();
    let correct: Vec<bool> = points.iter().map(|p| (p.p >= 0.5) == p.label).collect();
    let edges = quantile_edges(&u, bins);
    ece_by_uncertainty(&u, &conf, &correct, &edges, 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_matches_hand_counts_and_handles_ties() {
        // Perfect and reversed separation.
        assert_eq!(auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), Some(1.0));
        assert_eq!(auroc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), Some(0.0));
        // Positives 0.5, 0.3; negatives 0.4, 0.1: pairs (0.5>0.4, 0.5>0.1, 0.3<0.4, 0.3>0.1) = 3/4.
        assert_eq!(auroc(&[0.5, 0.4, 0.3, 0.1], &[true, false, true, false]), Some(0.75));
        // A tie between a positive and a negative counts one half: (1 + 0.5) / 2.
        assert_eq!(auroc(&[0.5, 0.5, 0.1], &[true, false, false]), Some(0.75));
        // All scores equal: chance.
        assert_eq!(auroc(&[0.3; 6], &[true, false, true, false, false, false]), Some(0.5));
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
        // Agrees with the rank-sum AUC of the metrics module on a random-looking set.
        let scores: Vec<f32> = (0..200).map(|i| ((i * 37 % 101) as f32 / 10.0).floor()).collect();
        let labels: Vec<bool> = (0..200).map(|i| (i * 13 % 7) < 3).collect();
        let s64: Vec<f64> = scores.iter().map(|&s| f64::from(s)).collect();
        let reference = crate::metrics::auc(&s64, &labels).unwrap();
        assert!((auroc(&scores, &labels).unwrap() - reference).abs() < 1e-12);
    }

    #[test]
    fn quantile_edges_give_equal_counts_and_merge_ties() {
        let v: Vec<f32> = (0..100).map(|i| i as f32).collect();
        assert_eq!(quantile_edges(&v, 4), vec![25.0, 50.0, 75.0]);
        assert_eq!(bin_index(24.9, &[25.0, 50.0, 75.0]), 0);
        assert_eq!(bin_index(25.0, &[25.0, 50.0, 75.0]), 1);
        assert_eq!(bin_index(99.0, &[25.0, 50.0, 75.0]), 3);
        // 70 % zeros: no edge at 0 (the first bin holds every zero), the rest split.
        let mut w = vec![0.0f32; 70];
        w.extend((1..=30).map(|i| i as f32));
        let e = quantile_edges(&w, 5);
        assert_eq!(e, vec![11.0]);
        assert!(quantile_edges(&[1.0; 10], 4).is_empty());
    }

    #[test]
    fn ece_within_uncertainty_bins_is_computed_per_bin() {
        // Bin 0 (u < 0.5): confidence 0.9, all right -> ECE 0.1, error 0.
        // Bin 1 (u >= 0.5): confidence 0.8, half right -> ECE 0.3, error 0.5.
        let u = [0.1f32, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9];
        let conf = [0.9f32, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8];
        let ok = [true, true, true, true, true, false, true, false];
        let bins = ece_by_uncertainty(&u, &conf, &ok, &[0.5], 10);
        assert_eq!(bins.len(), 2);
        assert_eq!(bins[0].count, 4);
        assert!((bins[0].ece - 0.1).abs() < 1e-6, "{:?}", bins[0]);
        assert_eq!(bins[0].error_rate, 0.0);
        assert!((bins[0].mean_uncertainty - 0.25).abs() < 1e-6);
        assert_eq!(bins[0].hi, Some(0.5));
        assert_eq!(bins[1].lo, Some(0.5));
        assert!((bins[1].ece - 0.3).abs() < 1e-6, "{:?}", bins[1]);
        assert!((bins[1].error_rate - 0.5).abs() < 1e-12);
        // Inside one uncertainty bin, confidence sub-bins: 0.95 all right (gap 0.05 on 2),
        // 0.55 all wrong (gap 0.55 on 2): ECE = (0.1 + 1.1) / 4 = 0.3.
        let b = ece_by_uncertainty(&[0.0; 4], &[0.95, 0.95, 0.55, 0.55], &[true, true, false, false], &[], 10);
        assert!((b[0].ece - 0.3).abs() < 1e-6, "{:?}", b);
        // Sub-bins do not average out: the same gaps with a single confidence bin cancel.
        let one = top_label_ece(&[0.95, 0.95, 0.55, 0.55], &[true, true, false, false], 1).unwrap();
        assert!((one - 0.25).abs() < 1e-6, "{one}");
    }

    #[test]
    fn variants_swap_channels_and_add_noise_inside_the_brain() {
        let voxels = 6;
        let mut image = vec![0f32; 4 * voxels];
        for c in 0..4 {
            for v in 0..4 {
                image[c * voxels + v] = (10 * c + v) as f32 + 1.0;
            }
        }
        let present = [true; 4];
        let v = Variant::parse("swap-t1ce-flair").unwrap();
        assert_eq!(v, Variant::Swap(1, 3));
        assert_eq!(v.name(), "swap-t1ce-flair");
        let (s, p) = v.apply(&image, present, voxels, 0);
        assert_eq!(&s[voxels..2 * voxels], &image[3 * voxels..]);
        assert_eq!(&s[3 * voxels..], &image[voxels..2 * voxels]);
        assert_eq!(&s[..voxels], &image[..voxels]);
        assert_eq!(p, present);
        let (_, p) = Variant::Swap(0, 2).apply(&image, [true, true, false, true], voxels, 0);
        assert_eq!(p, [false, true, true, true]);
        let (n, _) = Variant::parse("noise-1").unwrap().apply(&image, present, voxels, 7);
        for c in 0..4 {
            for i in 0..voxels {
                let (a, b) = (image[c * voxels + i], n[c * voxels + i]);
                if i < 4 { assert_ne!(a, b) } else { assert_eq!(b, 0.0, "outside the brain") }
            }
        }
        assert_eq!(n, Variant::Noise(1.0).apply(&image, present, voxels, 7).0);
        assert!(Variant::parse("swap-t1-t1").is_err());
        assert!(Variant::parse("noise--1").is_err());
        assert!(Variant::parse("blur").is_err());
    }

    fn mc(classes: Vec<u8>, entropy: Vec<f32>) -> VoxelMc {
        VoxelMc {
            confidence: entropy.iter().map(|h| 1.0 - h / 2.0).collect(),
            mutual_info: entropy.iter().map(|h| h / 4.0).collect(),
            class_std: entropy.iter().map(|h| h / 10.0).collect(),
            classes,
            entropy,
            tasks: vec![[0.2, 0.5, 0.5, 0.9], [0.4, 0.5, 0.7, 0.9]],
        }
    }

    #[test]
    fn case_scores_pool_and_comparisons() {
        // 6 voxels, the last outside the brain; the wrong voxels are the most uncertain ones.
        let m = mc(vec![0, 0, 2, 2, 1, 0], vec![0.0, 0.1, 0.2, 0.9, 0.8, 0.0]);
        let truth = [0u8, 0, 2, 1, 3, 0];
        let brain = [true, true, true, true, true, false];
        let s = case_voxel_scores(&m, &truth, &brain).unwrap();
        assert_eq!((s.brain.voxels, s.brain.wrong), (5, 2));
        assert!(s.brain.auroc.iter().all(|(_, a)| *a == Some(1.0)));
        assert_eq!((s.tumour_region.voxels, s.tumour_region.wrong), (3, 2));
        let u = case_uncertainty(&m, &brain, 0.001);
        assert!((u.brain_entropy - 2.0 / 5.0).abs() < 1e-6);
        assert!((u.tumour_entropy.unwrap() - (0.2 + 0.9 + 0.8) / 3.0).abs() < 1e-6);
        assert!((u.predicted_tumour_ml - 0.003).abs() < 1e-12);
        assert!((u.task_std[0] - 0.1).abs() < 1e-12 && u.task_std[1] == 0.0);
        assert!((u.task_mean[2] - 0.6).abs() < 1e-12);
        assert_eq!(u.score("task_std_mean"), Some(u.task_std_mean));
        assert!(case_voxel_scores(&m, &[0, 0, 2, 1, 4, 0], &brain).is_err());

        let mut pool = VoxelPool::default();
        pool.add(&m, &truth, &brain).unwrap();
        pool.add(&m, &truth, &brain).unwrap();
        let r = pool.report(2);
        assert_eq!((r.brain.voxels, r.brain.wrong), (10, 4));
        assert_eq!(r.brain.auroc[0], (VoxelMeasure::Entropy, Some(1.0)));
        let (_, bins) = &r.bins[0];
        assert_eq!(bins.iter().map(|b| b.count).sum::<u64>(), 10);
        assert!(bins.last().unwrap().error_rate > bins[0].error_rate);

        let c = compare_scores(&[Some(1.0), Some(2.0), None], &[Some(3.0), Some(1.5), Some(9.0)], true);
        assert_eq!((c.n_in, c.n_out), (2, 3));
        assert_eq!((c.mean_in, c.mean_out), (Some(1.5), Some(13.5 / 3.0)));
        assert_eq!(compare_scores(&[Some(1.0)], &[None], false).mean_out, None);
        // Pairs out>in: (3>1, 3>2, 1.5>1, 1.5<2, 9>1, 9>2) = 5/6.
        assert!((c.auroc.unwrap() - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!((c.paired_higher, c.n_pairs), (Some(1), Some(2)));
        let pts: Vec<TaskPoint> = (0..8)
            .map(|i| TaskPoint { case: format!("c{i}"), task: "grade_gbm".into(), p: 0.9, std: i as f64, label: i < 6 })
            .collect();
        let b = task_bins(&pts, 2);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].error_rate, 0.0);
        assert!((b[1].error_rate - 0.5).abs() < 1e-12);
    }
}
