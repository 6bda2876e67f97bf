//! Losses of III-D: multi-class soft Dice on softmax (eq. 4), class-weighted cross-entropy
//! (eq. 5) and the uncertainty-weighted multi-task sum (eq. 7) with per-task label masks.

use tch::{Kind, Tensor};

use crate::config::SEG_CLASSES;

/// Multi-class soft Dice loss of eq. (4) on the softmax of `logits` `[B, C, ...]` against
/// integer labels `target` `[B, ...]` (classes `0..C`). Sums run over the batch and all
/// voxels per class; the loss is `1 - mean_j 2 I_j / (|Y_j| + |Ŷ_j| + eps)`.
pub fn dice_loss(logits: &Tensor, target: &Tensor, eps: f64) -> Tensor {
    let c = logits.size()[1];
    let probs = logits.softmax(1, Kind::Float);
    let onehot = one_hot_channels(target, c);
    let dims: Vec<i64> = std::iter::once(0).chain(2..logits.dim() as i64).collect();
    let inter = (&probs * &onehot).sum_dim_intlist(dims.as_slice(), false, Kind::Float);
    let denom = probs.sum_dim_intlist(dims.as_slice(), false, Kind::Float)
        + onehot.sum_dim_intlist(dims.as_slice(), false, Kind::Float)
        + eps;
    1.0 - (inter * 2.0 / denom).mean(Kind::Float)
}

/// Per-class Dice coefficients of hard predictions (argmax of `logits`) vs `target`
/// (classes absent from both count as 1).
pub fn dice_scores(logits: &Tensor, target: &Tensor) -> Vec<f64> {
    let pred = logits.argmax(1, false);
    (0..logits.size()[1])
        .map(|j| {
            let p = pred.eq(j);
            let t = target.eq(j);
            let inter = p.logical_and(&t).sum(Kind::Double).double_value(&[]);
            let total = p.sum(Kind::Double).double_value(&[]) + t.sum(Kind::Double).double_value(&[]);
            if total == 0.0 { 1.0 } else { 2.0 * inter / total }
        })
        .collect()
}

/// `[B, ...]` integer labels to `[B, C, ...]` float one-hot.
pub fn one_hot_channels(target: &Tensor, classes: i64) -> Tensor {
    let nd = target.dim() as i64;
    let mut perm: Vec<i64> = vec![0, nd];
    perm.extend(1..nd);
    target.one_hot(classes).permute(perm.as_slice()).to_kind(Kind::Float)
}

/// Voxel-wise (unweighted) cross-entropy of segmentation logits `[B, C, ...]`.
pub fn seg_cross_entropy(logits: &Tensor, target: &Tensor) -> Tensor {
    let logp = logits.log_softmax(1, Kind::Float);
    -logp.gather(1, &target.unsqueeze(1), false).mean(Kind::Float)
}

/// Class-weighted cross-entropy of eq. (5) for logits `[N, K]` and labels `[N]`:
/// mean over samples of `-w_y log p_y`.
pub fn weighted_cross_entropy(logits: &Tensor, target: &Tensor, weights: &[f64]) -> Tensor {
    let logp = logits.log_softmax(-1, Kind::Float);
    let w = Tensor::from_slice(weights).to_kind(Kind::Float).to_device(logits.device());
    let picked = logp.gather(1, &target.unsqueeze(1), false).squeeze_dim(1);
    -(picked * w.index_select(0, target)).mean(Kind::Float)
}

/// Cross-entropy of two-class logits `[N, 2]` against soft targets `soft` `[N]` (the
/// probability of the positive class, e.g. a Tumor-CutMix mix `q = [1 - s, s]`):
/// mean over samples of `-(w_0 (1 - s) log p_0 + w_1 s log p_1)`. With `s` in {0, 1} this is
/// [`weighted_cross_entropy`].
pub fn soft_weighted_cross_entropy(logits: &Tensor, soft: &Tensor, weights: &[f64; 2]) -> Tensor {
    let logp = logits.log_softmax(-1, Kind::Float);
    let s = soft.to_kind(Kind::Float).to_device(logits.device());
    let q = Tensor::stack(&[(1.0 - &s) * weights[0], s * weights[1]], 1);
    -(logp * q).sum_dim_intlist([1i64].as_slice(), false, Kind::Float).mean(Kind::Float)
}

/// Uncertainty-weighted multi-task loss of eq. (7) with `s_i = log sigma_i`:
/// `sum_i exp(-2 s_i) / 2 * L_i + s_i` over the tasks that have a loss (None contributes
/// nothing, so neither the task nor its sigma receives gradient).
pub fn uncertainty_weighted(losses: &[Option<Tensor>], log_sigma: &Tensor) -> Option<Tensor> {
    let mut total: Option<Tensor> = None;
    for (i, l) in losses.iter().enumerate() {
        let Some(l) = l else { continue };
        let s = log_sigma.get(i as i64);
        let term = (&s * -2.0).exp() * 0.5 * l + &s;
        total = Some(match total {
            Some(t) => t + term,
            None => term,
        });
    }
    total
}

/// Nearest-neighbour resampling of integer labels `[B, D, H, W]` to `size`.
pub fn resample_labels(target: &Tensor, size: [i64; 3]) -> Tensor {
    if target.size()[1..] == size[..] {
        return target.shallow_clone();
    }
    target
        .unsqueeze(1)
        .to_kind(Kind::Float)
        .upsample_nearest3d(size, None, None, None)
        .squeeze_dim(1)
        .to_kind(Kind::Int64)
}

/// Number of segmentation classes the losses expect.
pub const CLASSES: i64 = SEG_CLASSES as i64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_is_zero_for_perfect_confident_logits() {
        let target = Tensor::from_slice(&[0i64, 1, 2, 3, 1, 0, 0, 2]).view([1, 2, 2, 2]);
        let logits = one_hot_channels(&target, 4) * 50.0;
        let l = dice_loss(&logits, &target, 1e-5).double_value(&[]);
        assert!(l.abs() < 1e-4, "{l}");
        let bad = dice_loss(&(-logits), &target, 1e-5).double_value(&[]);
        assert!(bad > 0.9, "{bad}");
        assert_eq!(dice_scores(&(one_hot_channels(&target, 4) * 5.0), &target), vec![1.0; 4]);
    }

    #[test]
    fn weighted_ce_matches_hand_computation() {
        let logits = Tensor::from_slice(&[0.0f32, 0.0, 2.0, 0.0]).view([2, 2]);
        let target = Tensor::from_slice(&[1i64, 0]);
        let l = weighted_cross_entropy(&logits, &target, &[2.0, 0.5]).double_value(&[]);
        let p0 = (2f64.exp() / (2f64.exp() + 1.0)).ln();
        let want = (0.5 * 2f64.ln() + 2.0 * -p0) / 2.0;
        assert!((l - want).abs() < 1e-5, "{l} vs {want}");
    }

    #[test]
    fn soft_ce_equals_hard_ce_at_hard_targets_and_mixes_linearly() {
        let logits = Tensor::from_slice(&[0.3f32, -1.0, 2.0, 0.5, -0.7, 0.1]).view([3, 2]);
        let w = [0.8, 1.7];
        let hard = Tensor::from_slice(&[1i64, 0, 1]);
        let a = weighted_cross_entropy(&logits, &hard, &w).double_value(&[]);
        let b = soft_weighted_cross_entropy(&logits, &Tensor::from_slice(&[1.0f32, 0.0, 1.0]), &w).double_value(&[]);
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        // A 30 % target is the 30/70 mix of the two hard losses, sample by sample.
        let one = logits.narrow(0, 0, 1);
        let pos = weighted_cross_entropy(&one, &Tensor::from_slice(&[1i64]), &w).double_value(&[]);
        let neg = weighted_cross_entropy(&one, &Tensor::from_slice(&[0i64]), &w).double_value(&[]);
        let mix = soft_weighted_cross_entropy(&one, &Tensor::from_slice(&[0.3f32]), &w).double_value(&[]);
        assert!((mix - (0.3 * pos + 0.7 * neg)).abs() < 1e-6, "{mix}");
    }

    #[test]
    fn uncertainty_weighting_skips_missing_tasks() {
        let s = Tensor::from_slice(&[0.0f32, 1.0]).set_requires_grad(true);
        let total = uncertainty_weighted(&[Some(Tensor::from(2.0f32)), None], &s).unwrap();
        assert!((total.double_value(&[]) - 1.0).abs() < 1e-6);
        total.backward();
        let g = Vec::<f32>::try_from(&s.grad()).unwrap();
        assert!((g[0] - (-2.0 * 0.5 * 2.0 + 1.0)).abs() < 1e-6);
        assert_eq!(g[1], 0.0);
        assert!(uncertainty_weighted(&[None, None], &s).is_none());
    }
}
