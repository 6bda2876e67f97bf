//! Partial segmentation labels as a first-class kind: a voxel target is a class (0..3), "some
//! tumour, sub-region unknown" (a whole-tumour mask) or ignored; the losses here score each kind.
//!
//! Voxel target values (network classes, as in [`crate::data::CaseData::seg`] and
//! [`crate::train::Batch::seg`]):
//! - `0..=3`: background, NCR, ED, ET (full supervision);
//! - [`SEG_TUMOUR`] (4): inside the whole tumour, sub-region unknown (e.g. `*_wt.nii.gz`);
//! - anything else, [`SEG_IGNORE`] (255) by convention (or `-1` in an `i64` tensor): no
//!   supervision at that voxel (a rejected pseudo-label, a case without a segmentation).
//!
//! Scoring. A whole-tumour voxel is supervised through the union of the tumour channels only:
//! its cross-entropy term is `-log(p1 + p2 + p3) = -log(1 - p0)`, whose gradient raises the
//! three tumour logits together (each in proportion to its own probability) and never lowers
//! NCR or ET; in the Dice loss it counts for the background class (it is known not to be
//! background) and is left out of the NCR / ED / ET terms. An ignored voxel is left out of
//! every term: it is not treated as background. With only `0..=3` present both losses equal
//! the plain eq. (4) Dice and the voxel cross-entropy of [`crate::loss`].

use tch::{Kind, Tensor};

use crate::loss::one_hot_channels;

/// Voxel target: tumour of unknown sub-region (whole-tumour supervision).
pub const SEG_TUMOUR: u8 = 4;
/// Voxel target: no supervision (any value outside `0..=4` is treated the same way).
pub const SEG_IGNORE: u8 = 255;

/// What segmentation supervision a case carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SegSupervision {
    /// Every voxel has a class 0..3.
    #[default]
    Full,
    /// Background vs whole tumour only (values 0 and [`SEG_TUMOUR`]).
    WholeTumour,
    /// Some voxels are ignored (pseudo-labels accepted at some voxels).
    Partial,
    /// No segmentation at all (every voxel ignored).
    None,
}

impl SegSupervision {
    /// The kind of a network-class target volume (`0..=3`, [`SEG_TUMOUR`], ignore).
    pub fn of(seg: &[u8]) -> Self {
        let (mut any_class, mut any_tumour, mut any_ignore) = (false, false, false);
        for &v in seg {
            match v {
                0..=3 => any_class = true,
                SEG_TUMOUR => any_tumour = true,
                _ => any_ignore = true,
            }
        }
        match (any_class || any_tumour, any_ignore, any_tumour) {
            (false, _, _) => Self::None,
            (true, true, _) => Self::Partial,
            (true, false, true) => Self::WholeTumour,
            (true, false, false) => Self::Full,
        }
    }
}

/// Masks of a target `[B, ...]` (any integer kind): known class, whole-tumour voxel.
fn masks(target: &Tensor, classes: i64) -> (Tensor, Tensor) {
    let known = target.ge(0).logical_and(&target.le(classes - 1));
    let tumour = target.eq(i64::from(SEG_TUMOUR));
    (known, tumour)
}

/// Soft Dice loss of eq. (4) with partial targets (see the module docs): per class `j`,
/// `1 - mean_j 2 I_j / (|Y_j| + |Ŷ_j| + eps)` where the sums run over the voxels whose
/// membership in class `j` is known (background: known classes and whole-tumour voxels;
/// NCR / ED / ET: known classes only).
pub fn dice_loss(logits: &Tensor, target: &Tensor, eps: f64) -> Tensor {
    let c = logits.size()[1];
    let probs = logits.softmax(1, Kind::Float);
    let (known, tumour) = masks(target, c);
    let safe = target.to_kind(Kind::Int64).clamp(0, c - 1);
    let known_f = known.unsqueeze(1).to_kind(Kind::Float);
    let onehot = one_hot_channels(&safe, c) * &known_f;
    let bg_mask = known.logical_or(&tumour).unsqueeze(1).to_kind(Kind::Float);
    let mut shape = known_f.size();
    shape[1] = c - 1;
    let mask = Tensor::cat(&[bg_mask, known_f.expand(shape.as_slice(), false)], 1);
    let p = probs * mask;
    let dims: Vec<i64> = std::iter::once(0).chain(2..logits.dim() as i64).collect();
    let inter = (&p * &onehot).sum_dim_intlist(dims.as_slice(), false, Kind::Float);
    let denom = p.sum_dim_intlist(dims.as_slice(), false, Kind::Float)
        + onehot.sum_dim_intlist(dims.as_slice(), false, Kind::Float)
        + eps;
    1.0 - (inter * 2.0 / denom).mean(Kind::Float)
}

/// Voxel cross-entropy with partial targets: `-log p_y` at known voxels, `-log(1 - p0)` at
/// whole-tumour voxels, nothing at ignored ones; the mean over the supervised voxels (a
/// zero that keeps the graph when there is none).
pub fn cross_entropy(logits: &Tensor, target: &Tensor) -> Tensor {
    let c = logits.size()[1];
    let (known, tumour) = masks(target, c);
    let logp = logits.log_softmax(1, Kind::Float);
    let safe = target.to_kind(Kind::Int64).clamp(0, c - 1);
    let picked = logp.gather(1, &safe.unsqueeze(1), false).squeeze_dim(1);
    // log(p1 + ... + p_{C-1}) = logsumexp of the tumour log-probabilities.
    let log_tumour = logp.narrow(1, 1, c - 1).logsumexp([1i64].as_slice(), false);
    let zero = picked.zeros_like();
    let known_f = known.to_kind(Kind::Float);
    let tumour_f = tumour.to_kind(Kind::Float);
    let per_voxel = picked.where_self(&known, &zero) * &known_f + log_tumour.where_self(&tumour, &zero) * &tumour_f;
    let count = (known_f + tumour_f).sum(Kind::Float).clamp_min(1.0);
    -per_voxel.sum(Kind::Float) / count
}

/// Number of supervised voxels of a target (known class or whole tumour).
pub fn supervised_voxels(target: &Tensor, classes: i64) -> i64 {
    let (known, tumour) = masks(target, classes);
    known.logical_or(&tumour).sum(Kind::Int64).int64_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn logits(seed: i64, b: i64, n: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn([b, 4, n, n, n], (Kind::Float, Device::Cpu))
    }

    #[test]
    fn full_labels_give_the_plain_losses() {
        let l = logits(1, 2, 6);
        tch::manual_seed(2);
        let t = Tensor::randint(4, [2, 6, 6, 6], (Kind::Int64, Device::Cpu));
        let a = dice_loss(&l, &t, 1e-5).double_value(&[]);
        let b = crate::loss::dice_loss(&l, &t, 1e-5).double_value(&[]);
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        let a = cross_entropy(&l, &t).double_value(&[]);
        let b = crate::loss::seg_cross_entropy(&l, &t).double_value(&[]);
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }

    /// Ignored voxels leak nothing: the loss does not depend on the logits there (zero
    /// gradient), and it equals the loss of the supervised voxels alone.
    #[test]
    fn ignored_voxels_contribute_nothing() {
        let l = logits(3, 1, 8).set_requires_grad(true);
        tch::manual_seed(4);
        let full = Tensor::randint(4, [1, 8, 8, 8], (Kind::Int64, Device::Cpu));
        // Ignore the upper half along z (both -1 and 255 mean ignore).
        let t = full.copy();
        let _ = t.narrow(1, 4, 2).fill_(-1);
        let _ = t.narrow(1, 6, 2).fill_(i64::from(SEG_IGNORE));
        for f in [dice_loss as fn(&Tensor, &Tensor, f64) -> Tensor, |l: &Tensor, t: &Tensor, _| cross_entropy(l, t)] {
            let loss = f(&l, &t, 1e-5);
            let g = Tensor::run_backward(&[&loss], &[&l], false, false).remove(0);
            let leak = g.narrow(2, 4, 4).abs().max().double_value(&[]);
            assert_eq!(leak, 0.0, "gradient reached ignored voxels");
            assert!(g.narrow(2, 0, 4).abs().max().double_value(&[]) > 0.0);
            // Same value as the supervised half alone.
            let half = f(&l.narrow(2, 0, 4), &t.narrow(1, 0, 4), 1e-5).double_value(&[]);
            assert!((loss.double_value(&[]) - half).abs() < 1e-6);
            // And it differs from treating those voxels as background (the old behaviour).
            let as_bg = f(&l, &t.clamp(0, 3).where_self(&t.ge(0).logical_and(&t.le(3)), &t.zeros_like()), 1e-5);
            assert!((as_bg.double_value(&[]) - half).abs() > 1e-4);
        }
        // Nothing supervised: zero, with a graph.
        let none = Tensor::full([1, 8, 8, 8], -1, (Kind::Int64, Device::Cpu));
        assert_eq!(cross_entropy(&l, &none).double_value(&[]), 0.0);
        assert_eq!(supervised_voxels(&none, 4), 0);
        assert_eq!(supervised_voxels(&t, 4), 4 * 64);
    }

    /// Whole-tumour supervision must not teach that NCR / ET are absent: one gradient step
    /// on a whole-tumour target raises background-vs-tumour separation and never lowers the
    /// probability of NCR or ET inside the tumour. Labelling the same voxels as edema (the
    /// naive "WT = one class" encoding) does lower them, so the check can fail.
    #[test]
    fn whole_tumour_target_does_not_push_ncr_or_et_down() {
        let n = 6;
        let base = logits(5, 1, n) * 0.5;
        // Tumour in the centre cube, background elsewhere.
        let wt = Tensor::zeros([1, n, n, n], (Kind::Int64, Device::Cpu));
        let _ = wt.narrow(1, 1, 4).narrow(2, 1, 4).narrow(3, 1, 4).fill_(i64::from(SEG_TUMOUR));
        let inside = wt.eq(i64::from(SEG_TUMOUR)).unsqueeze(1);
        let step = |target: &Tensor| -> Tensor {
            let l = base.copy().set_requires_grad(true);
            let loss = dice_loss(&l, target, 1e-5) + cross_entropy(&l, target);
            let g = Tensor::run_backward(&[&loss], &[&l], false, false).remove(0);
            (&l - g * 5.0).detach().softmax(1, Kind::Float)
        };
        let before = base.softmax(1, Kind::Float);
        let mean_in = |p: &Tensor, c: i64| {
            let pc = p.narrow(1, c, 1);
            (pc * inside.to_kind(Kind::Float)).sum(Kind::Float).double_value(&[])
                / inside.sum(Kind::Float).double_value(&[])
        };
        let after = step(&wt);
        for c in [1, 3] {
            assert!(mean_in(&after, c) > mean_in(&before, c), "class {c} went down under WT supervision");
        }
        assert!(mean_in(&after, 0) < mean_in(&before, 0));
        // The naive encoding (tumour = ED) lowers NCR and ET.
        let naive = wt.where_self(&wt.ne(i64::from(SEG_TUMOUR)), &wt.full_like(2));
        let after = step(&naive);
        assert!(mean_in(&after, 1) < mean_in(&before, 1) && mean_in(&after, 3) < mean_in(&before, 3));
    }

    #[test]
    fn supervision_kind_of_a_volume() {
        assert_eq!(SegSupervision::of(&[0, 1, 2, 3]), SegSupervision::Full);
        assert_eq!(SegSupervision::of(&[0, 4, 4]), SegSupervision::WholeTumour);
        assert_eq!(SegSupervision::of(&[0, 2, 255]), SegSupervision::Partial);
        assert_eq!(SegSupervision::of(&[255, 255]), SegSupervision::None);
    }
}
