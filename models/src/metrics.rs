//! Evaluation metrics of section IV: Dice and HD95 per BraTS region (WT, TC, ET, ED) on label
//! volumes with voxel spacing; AUC, accuracy, F1 and ECE with reliability bins per task.
//!
//! Conventions (the BraTS evaluation's where it has one):
//! - Label volumes hold BraTS values 0, 1 (NCR), 2 (ED), 4 (ET); 3 also counts as ET.
//! - Dice of a region empty in both prediction and truth is 1; empty in exactly one, 0.
//! - HD95 is the 95th percentile (linear interpolation) of the pooled symmetric surface
//!   distances in mm (the `medpy` definition); surfaces are the mask voxels with a
//!   6-neighbour outside the mask (or on the volume edge). Both empty: 0; exactly one
//!   empty: undefined (`None`), which [`Summary`] counts separately instead of averaging a
//!   made-up penalty.
//! - Binary tasks take `p = P(positive)`; the decision threshold is 0.5.
//! - ECE is the top-label ECE of Guo et al. 2017 (confidence `max(p, 1 - p)` against whether
//!   the thresholded prediction is right), with equal-width bins over `[0, 1]`; the
//!   reliability curve reports, per bin of `p`, the mean `p` and the observed positive rate
//!   (the calibration curve of the paper's Fig. 5).

pub use gmmas_imaging::distance::squared_distance_map;
use serde::{Deserialize, Serialize};

/// A BraTS evaluation region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Region {
    /// Whole tumour: labels 1, 2, 4.
    WT,
    /// Tumour core: labels 1, 4.
    TC,
    /// Enhancing tumour: label 4.
    ET,
    /// Edema: label 2 (the paper's "edema region").
    ED,
}

impl Region {
    /// All regions in report order.
    pub const ALL: [Region; 4] = [Region::WT, Region::TC, Region::ET, Region::ED];

    /// Short name (`WT`, `TC`, `ET`, `ED`).
    pub fn as_str(self) -> &'static str {
        match self {
            Region::WT => "WT",
            Region::TC => "TC",
            Region::ET => "ET",
            Region::ED => "ED",
        }
    }

    /// Whether a BraTS label value belongs to the region (3 counts as ET).
    pub fn contains(self, label: u8) -> bool {
        match self {
            Region::WT => matches!(label, 1..=4),
            Region::TC => matches!(label, 1 | 3 | 4),
            Region::ET => matches!(label, 3 | 4),
            Region::ED => label == 2,
        }
    }

    /// Binary mask of the region.
    pub fn mask(self, labels: &[u8]) -> Vec<bool> {
        labels.iter().map(|&l| self.contains(l)).collect()
    }
}

/// Dice coefficient of `region` between two label volumes of equal length.
///
/// # Panics
/// When the lengths differ (a programming error: both come from the same grid).
pub fn dice(pred: &[u8], truth: &[u8], region: Region) -> f64 {
    assert_eq!(pred.len(), truth.len(), "dice: volumes of different size");
    let (mut inter, mut p, mut t) = (0u64, 0u64, 0u64);
    for (&a, &b) in pred.iter().zip(truth) {
        let (x, y) = (region.contains(a), region.contains(b));
        inter += u64::from(x && y);
        p += u64::from(x);
        t += u64::from(y);
    }
    if p + t == 0 { 1.0 } else { 2.0 * inter as f64 / (p + t) as f64 }
}

/// Voxels of `mask` (x fastest, `dims = [nx, ny, nz]`) with a 6-neighbour outside the mask
/// or on the volume edge.
pub fn surface(mask: &[bool], dims: [usize; 3]) -> Vec<bool> {
    let [nx, ny, nz] = dims;
    let mut out = vec![false; mask.len()];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let i = x + nx * (y + ny * z);
                if !mask[i] {
                    continue;
                }
                let edge = x == 0 || y == 0 || z == 0 || x + 1 == nx || y + 1 == ny || z + 1 == nz;
                out[i] = edge
                    || !mask[i - 1]
                    || !mask[i + 1]
                    || !mask[i - nx]
                    || !mask[i + nx]
                    || !mask[i - nx * ny]
                    || !mask[i + nx * ny];
            }
        }
    }
    out
}

/// Percentile `q` in `[0, 100]` with linear interpolation (numpy's default); None when empty.
pub fn percentile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let pos = (q / 100.0).clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(values[lo] + (values[hi] - values[lo]) * (pos - lo as f64))
}

/// 95th-percentile Hausdorff distance (mm) of `region` between two label volumes on the grid
/// `dims = [nx, ny, nz]` with voxel `spacing` (mm per axis). See the module docs for the
/// empty-mask conventions.
pub fn hd95(pred: &[u8], truth: &[u8], dims: [usize; 3], spacing: [f64; 3], region: Region) -> Option<f64> {
    let n = dims.iter().product::<usize>();
    assert!(pred.len() == n && truth.len() == n, "hd95: volumes do not match dims {dims:?}");
    let (pm, tm) = (region.mask(pred), region.mask(truth));
    let (pe, te) = (!pm.contains(&true), !tm.contains(&true));
    if pe && te {
        return Some(0.0);
    }
    if pe || te {
        return None;
    }
    let (ps, ts) = (surface(&pm, dims), surface(&tm, dims));
    let to_truth = squared_distance_map(&ts, dims, spacing);
    let to_pred = squared_distance_map(&ps, dims, spacing);
    let mut d: Vec<f64> = ps
        .iter()
        .zip(&to_truth)
        .filter(|(s, _)| **s)
        .map(|(_, d)| d.sqrt())
        .chain(ts.iter().zip(&to_pred).filter(|(s, _)| **s).map(|(_, d)| d.sqrt()))
        .collect();
    percentile(&mut d, 95.0)
}

/// Dice and HD95 of one case for every region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionScores {
    /// Dice per region in [`Region::ALL`] order.
    pub dice: [f64; 4],
    /// HD95 (mm) per region; None when exactly one of prediction and truth is empty.
    pub hd95: [Option<f64>; 4],
}

/// Dice and HD95 for all four regions.
pub fn region_scores(pred: &[u8], truth: &[u8], dims: [usize; 3], spacing: [f64; 3]) -> RegionScores {
    RegionScores {
        dice: Region::ALL.map(|r| dice(pred, truth, r)),
        hd95: Region::ALL.map(|r| hd95(pred, truth, dims, spacing, r)),
    }
}

/// Mean, standard deviation (population) and count of a list of values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Mean (NaN-free: 0 when `n == 0`).
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Number of values averaged.
    pub n: usize,
    /// Number of undefined values left out (e.g. HD95 with one empty mask).
    pub undefined: usize,
}

impl Summary {
    /// Summarises the defined values.
    pub fn of(values: impl IntoIterator<Item = Option<f64>>) -> Self {
        let mut v = Vec::new();
        let mut undefined = 0;
        for x in values {
            match x {
                Some(x) if x.is_finite() => v.push(x),
                _ => undefined += 1,
            }
        }
        let n = v.len();
        if n == 0 {
            return Self { mean: 0.0, std: 0.0, n, undefined };
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        Self { mean, std: var.sqrt(), n, undefined }
    }
}

/// Area under the ROC curve from the rank-sum (Mann-Whitney U) statistic, ties counted as
/// one half (average ranks). None when either class is absent.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len(), "auc: length mismatch");
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        // Ranks i+1..=j+1 share their average.
        let avg = (i + j + 2) as f64 / 2.0;
        for &k in &idx[i..=j] {
            if labels[k] {
                rank_sum_pos += avg;
            }
        }
        i = j + 1;
    }
    let u = rank_sum_pos - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos * neg) as f64)
}

/// ROC curve as `(false positive rate, true positive rate)` points: thresholds sweep the
/// distinct scores from high to low, tied scores enter together (one diagonal step), so the
/// curve starts at `(0, 0)`, ends at `(1, 1)` and its trapezoid area equals [`auc`]. None when
/// either class is absent.
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Option<Vec<(f64, f64)>> {
    assert_eq!(scores.len(), labels.len(), "roc_curve: length mismatch");
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && scores[idx[j]] == scores[idx[i]] {
            if labels[idx[j]] {
                tp += 1;
            } else {
                fp += 1;
            }
            j += 1;
        }
        points.push((fp as f64 / neg as f64, tp as f64 / pos as f64));
        i = j;
    }
    Some(points)
}

/// Trapezoid area under a polyline of `(x, y)` points (e.g. a [`roc_curve`]).
pub fn trapezoid_area(points: &[(f64, f64)]) -> f64 {
    points.windows(2).map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0).sum()
}

/// Confusion counts at threshold 0.5 (`p >= 0.5` predicts positive).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    /// True positives.
    pub tp: usize,
    /// False positives.
    pub fp: usize,
    /// True negatives.
    pub tn: usize,
    /// False negatives.
    pub fn_: usize,
}

impl Confusion {
    /// Counts over `probs` (P(positive)) and `labels`.
    pub fn of(probs: &[f64], labels: &[bool]) -> Self {
        assert_eq!(probs.len(), labels.len(), "confusion: length mismatch");
        let mut c = Self::default();
        for (&p, &l) in probs.iter().zip(labels) {
            match (p >= 0.5, l) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        c
    }

    /// Fraction correct; None without samples.
    pub fn accuracy(&self) -> Option<f64> {
        let n = self.tp + self.fp + self.tn + self.fn_;
        (n > 0).then(|| (self.tp + self.tn) as f64 / n as f64)
    }

    /// F1 of the positive class; None when there is neither a positive label nor a positive
    /// prediction (precision and recall both undefined).
    pub fn f1(&self) -> Option<f64> {
        let d = 2 * self.tp + self.fp + self.fn_;
        (d > 0).then(|| 2.0 * self.tp as f64 / d as f64)
    }
}

/// Accuracy at threshold 0.5; None without samples.
pub fn accuracy(probs: &[f64], labels: &[bool]) -> Option<f64> {
    Confusion::of(probs, labels).accuracy()
}

/// F1 of the positive class at threshold 0.5 (see [`Confusion::f1`]).
pub fn f1(probs: &[f64], labels: &[bool]) -> Option<f64> {
    Confusion::of(probs, labels).f1()
}

/// One equal-width bin of a calibration analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// Lower edge (inclusive).
    pub lo: f64,
    /// Upper edge (exclusive; the last bin includes 1).
    pub hi: f64,
    /// Samples in the bin.
    pub count: usize,
    /// Mean value binned on (confidence for ECE bins, P(positive) for the curve).
    pub mean_predicted: f64,
    /// Accuracy (ECE bins) or observed positive rate (reliability curve).
    pub observed: f64,
}

/// Top-label ECE plus the reliability curve of `P(positive)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Expected calibration error: `sum_b n_b / N * |acc_b - conf_b|` over confidence bins.
    pub ece: f64,
    /// Confidence bins behind `ece` (empty bins left out).
    pub ece_bins: Vec<CalibrationBin>,
    /// Reliability curve: bins of `P(positive)` with the observed positive rate (empty bins
    /// left out).
    pub curve: Vec<CalibrationBin>,
}

fn bin_of(v: f64, bins: usize) -> usize {
    ((v.clamp(0.0, 1.0) * bins as f64).floor() as usize).min(bins - 1)
}

fn binned(values: &[f64], hits: &[f64], bins: usize) -> Vec<CalibrationBin> {
    let mut count = vec![0usize; bins];
    let mut sum_v = vec![0.0; bins];
    let mut sum_h = vec![0.0; bins];
    for (&v, &h) in values.iter().zip(hits) {
        let b = bin_of(v, bins);
        count[b] += 1;
        sum_v[b] += v;
        sum_h[b] += h;
    }
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| CalibrationBin {
            lo: b as f64 / bins as f64,
            hi: (b + 1) as f64 / bins as f64,
            count: count[b],
            mean_predicted: sum_v[b] / count[b] as f64,
            observed: sum_h[b] / count[b] as f64,
        })
        .collect()
}

/// ECE and reliability curve with `bins` equal-width bins; None without samples.
pub fn calibration(probs: &[f64], labels: &[bool], bins: usize) -> Option<Calibration> {
    assert_eq!(probs.len(), labels.len(), "calibration: length mismatch");
    if probs.is_empty() || bins == 0 {
        return None;
    }
    let conf: Vec<f64> = probs.iter().map(|&p| p.max(1.0 - p)).collect();
    let correct: Vec<f64> = probs.iter().zip(labels).map(|(&p, &l)| f64::from(u8::from((p >= 0.5) == l))).collect();
    let ece_bins = binned(&conf, &correct, bins);
    let n = probs.len() as f64;
    let ece = ece_bins.iter().map(|b| b.count as f64 / n * (b.observed - b.mean_predicted).abs()).sum();
    let positive: Vec<f64> = labels.iter().map(|&l| f64::from(u8::from(l))).collect();
    Some(Calibration { ece, ece_bins, curve: binned(probs, &positive, bins) })
}

/// All classification metrics of one task over the cases that carry its label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMetrics {
    /// Labelled cases.
    pub n: usize,
    /// Positive cases among them.
    pub positives: usize,
    /// ROC AUC (None with a single class).
    pub auc: Option<f64>,
    /// Accuracy at 0.5.
    pub accuracy: Option<f64>,
    /// F1 of the positive class at 0.5.
    pub f1: Option<f64>,
    /// Confusion counts at 0.5.
    pub confusion: Confusion,
    /// ECE and reliability bins (10 bins).
    pub calibration: Option<Calibration>,
}

impl TaskMetrics {
    /// Metrics of `(P(positive), label)` pairs.
    pub fn of(pairs: &[(f64, bool)]) -> Self {
        let probs: Vec<f64> = pairs.iter().map(|p| p.0).collect();
        let labels: Vec<bool> = pairs.iter().map(|p| p.1).collect();
        let confusion = Confusion::of(&probs, &labels);
        Self {
            n: pairs.len(),
            positives: labels.iter().filter(|&&l| l).count(),
            auc: auc(&probs, &labels),
            accuracy: confusion.accuracy(),
            f1: confusion.f1(),
            confusion,
            calibration: calibration(&probs, &labels, 10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn dice_on_three_voxels() {
        let pred = [4u8, 1, 0];
        let truth = [4u8, 2, 0];
        assert!(close(dice(&pred, &truth, Region::WT), 1.0));
        assert!(close(dice(&pred, &truth, Region::TC), 2.0 / 3.0));
        assert!(close(dice(&pred, &truth, Region::ET), 1.0));
        assert!(close(dice(&pred, &truth, Region::ED), 0.0));
        // Empty in both: 1; BraTS 2023 label 3 is ET.
        assert!(close(dice(&[0, 0, 0], &[0, 0, 0], Region::ET), 1.0));
        assert!(close(dice(&[3, 0, 0], &[4, 0, 0], Region::ET), 1.0));
    }

    /// A `side`^3 cube starting at `lo` in an `n`^3 grid.
    fn cube(n: usize, lo: [usize; 3], side: usize) -> Vec<u8> {
        let mut v = vec![0u8; n * n * n];
        for z in lo[2]..lo[2] + side {
            for y in lo[1]..lo[1] + side {
                for x in lo[0]..lo[0] + side {
                    v[x + n * (y + n * z)] = 2;
                }
            }
        }
        v
    }

    #[test]
    fn hd95_of_two_cubes_offset_by_two_voxels() {
        // 3^3 cubes at x 3..6 and 5..8: each surface has 26 voxels; A's x=5 face lies on B's
        // surface (0), its middle layer (8 voxels) is 1 away, its x=3 face (9) is 2 away, and
        // symmetrically: 18 zeros, 16 ones, 18 twos. The 95th percentile (index 48.45 of 52
        // sorted values) is 2.
        let n = 12;
        let a = cube(n, [3, 4, 4], 3);
        let b = cube(n, [5, 4, 4], 3);
        let d = hd95(&a, &b, [n; 3], [1.0; 3], Region::WT).unwrap();
        assert!(close(d, 2.0), "{d}");
        let d = hd95(&a, &b, [n; 3], [2.0, 1.0, 1.0], Region::ED).unwrap();
        assert!(close(d, 4.0), "{d}");
        assert_eq!(hd95(&a, &a, [n; 3], [1.0; 3], Region::WT), Some(0.0));
        // Empty conventions.
        let empty = vec![0u8; n * n * n];
        assert_eq!(hd95(&empty, &empty, [n; 3], [1.0; 3], Region::WT), Some(0.0));
        assert_eq!(hd95(&a, &empty, [n; 3], [1.0; 3], Region::WT), None);
        assert_eq!(hd95(&a, &b, [n; 3], [1.0; 3], Region::ET), Some(0.0));
    }

    #[test]
    fn distance_map_matches_brute_force() {
        let dims = [7, 5, 6];
        let n: usize = dims.iter().product();
        let spacing = [1.0, 2.0, 0.5];
        let feats: Vec<bool> = (0..n).map(|i| i % 17 == 3 || i == 100).collect();
        let d = squared_distance_map(&feats, dims, spacing);
        let coord = |i: usize| {
            [
                (i % dims[0]) as f64 * spacing[0],
                (i / dims[0] % dims[1]) as f64 * spacing[1],
                (i / (dims[0] * dims[1])) as f64 * spacing[2],
            ]
        };
        for (i, &di) in d.iter().enumerate() {
            let want = (0..n)
                .filter(|&j| feats[j])
                .map(|j| {
                    let (a, b) = (coord(i), coord(j));
                    (0..3).map(|k| (a[k] - b[k]).powi(2)).sum::<f64>()
                })
                .fold(f64::INFINITY, f64::min);
            assert!((di - want).abs() < 1e-9, "voxel {i}: {di} vs {want}");
        }
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        // numpy.percentile([1,2,3,4], 95) = 3.85
        assert!(close(percentile(&mut v, 95.0).unwrap(), 3.85));
        assert!(percentile(&mut [], 50.0).is_none());
    }

    #[test]
    fn auc_with_a_tie() {
        // Pairs (pos, neg): 0.4 vs 0.1 -> 1, 0.4 vs 0.4 -> 1/2, 0.8 vs 0.1 -> 1, 0.8 vs 0.4 -> 1.
        let s = [0.1, 0.4, 0.4, 0.8];
        let l = [false, false, true, true];
        assert!(close(auc(&s, &l).unwrap(), 3.5 / 4.0));
        assert!(auc(&s, &[true; 4]).is_none());
        assert!(close(auc(&[0.9, 0.1], &[false, true]).unwrap(), 0.0));
    }

    #[test]
    fn roc_curve_by_hand() {
        // Scores high to low: 0.9 (pos), 0.8 (neg), 0.6 (pos, neg tied), 0.3 (pos), 0.1 (neg).
        // 3 positives, 3 negatives: thresholds give (0,1/3), (1/3,1/3), (2/3,2/3), (2/3,1),
        // (1,1) after the start (0,0).
        let s = [0.6, 0.1, 0.9, 0.3, 0.8, 0.6];
        let l = [true, false, true, true, false, false];
        let r = roc_curve(&s, &l).unwrap();
        let want = [
            (0.0, 0.0),
            (0.0, 1.0 / 3.0),
            (1.0 / 3.0, 1.0 / 3.0),
            (2.0 / 3.0, 2.0 / 3.0),
            (2.0 / 3.0, 1.0),
            (1.0, 1.0),
        ];
        assert_eq!(r.len(), want.len());
        for (a, b) in r.iter().zip(want) {
            assert!(close(a.0, b.0) && close(a.1, b.1), "{r:?}");
        }
        // Area: 1/3 * 1/3 + 1/3 * (1/3 + 2/3) / 2 + 1/3 * 1 = 1/9 + 1/6 + 1/3 = 11/18.
        assert!(close(trapezoid_area(&r), 11.0 / 18.0));
        assert!(close(trapezoid_area(&r), auc(&s, &l).unwrap()));
        // The tie example of `auc_with_a_tie` and a pseudo-random one with many ties agree too.
        let (s2, l2) = ([0.1, 0.4, 0.4, 0.8], [false, false, true, true]);
        assert!(close(trapezoid_area(&roc_curve(&s2, &l2).unwrap()), auc(&s2, &l2).unwrap()));
        let s3: Vec<f64> = (0..200).map(|i| ((i * 37 % 101) / 10) as f64).collect();
        let l3: Vec<bool> = (0..200).map(|i| (i * 53 % 7) < 3).collect();
        let r3 = roc_curve(&s3, &l3).unwrap();
        assert!(close(trapezoid_area(&r3), auc(&s3, &l3).unwrap()));
        assert_eq!((r3[0], *r3.last().unwrap()), ((0.0, 0.0), (1.0, 1.0)));
        assert!(r3.windows(2).all(|w| w[1].0 >= w[0].0 && w[1].1 >= w[0].1));
        assert!(roc_curve(&s, &[true; 6]).is_none());
    }

    #[test]
    fn accuracy_and_f1() {
        let p = [0.9, 0.6, 0.2, 0.4, 0.5];
        let l = [true, false, false, true, true];
        // tp = 2 (0.9, 0.5), fp = 1 (0.6), tn = 1 (0.2), fn = 1 (0.4)
        assert!(close(accuracy(&p, &l).unwrap(), 3.0 / 5.0));
        assert!(close(f1(&p, &l).unwrap(), 4.0 / 6.0));
        assert!(f1(&[0.1], &[false]).is_none());
    }

    #[test]
    fn ece_on_five_samples() {
        // Confidences: 0.92 right, 0.81 wrong, 0.75 right, 0.66 right, 0.62 wrong.
        // Bins: [0.6,0.7) {0.66, 0.62}: conf 0.64, acc 0.5 -> 0.14 * 2/5;
        // [0.7,0.8) 0.25 / 5; [0.8,0.9) 0.81 / 5; [0.9,1] 0.08 / 5. ECE = 1.42 / 5.
        let p = [0.92, 0.81, 0.25, 0.66, 0.38];
        let l = [true, false, false, true, true];
        let c = calibration(&p, &l, 10).unwrap();
        assert!((c.ece - 1.42 / 5.0).abs() < 1e-9, "{}", c.ece);
        assert_eq!(c.ece_bins.len(), 4);
        assert_eq!(c.ece_bins[0].count, 2);
        // Curve: P(positive) 0.25 (neg), 0.38 (pos), 0.66 (pos), 0.81 (neg), 0.92 (pos).
        let rates: Vec<f64> = c.curve.iter().map(|b| b.observed).collect();
        assert_eq!(rates, vec![0.0, 1.0, 1.0, 0.0, 1.0]);
        let m = TaskMetrics::of(&p.iter().copied().zip(l).collect::<Vec<_>>());
        assert_eq!((m.n, m.positives), (5, 3));
    }

    #[test]
    fn summary_skips_undefined() {
        let s = Summary::of([Some(1.0), None, Some(3.0)]);
        assert!(close(s.mean, 2.0) && close(s.std, 1.0));
        assert_eq!((s.n, s.undefined), (2, 1));
    }
}
