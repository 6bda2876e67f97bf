//! The missing-modality adaptation module (paper III-E): the training modes, the SimSiam
//! projector and predictor, the random modality subsets and the stage losses (eqs. 10, 11).
//!
//! Stages, each a `[train] mode` of `gmmas train` starting from the previous stage's model:
//! 1. `distill`: knowledge self-distillation. Every batch goes through the network twice, with
//!    all of its sequences (teacher pathway) and with a random non-empty strict subset of them
//!    (student pathway). Loss = supervised objective of the full pathway + segmentation loss of
//!    the partial pathway + MSE (eq. 10) between the two pathways' feature maps at the
//!    encoder's first and last convolutions and the decoder's first convolution. The teacher's
//!    maps are detached: the student moves towards the teacher, not the reverse.
//! 2. `contrastive`: SimSiam fine-tuning of the convolutional encoder. The case's sequences are
//!    split at random into two non-empty groups; each view is encoded, globally average-pooled,
//!    projected (three linear layers) and predicted (two linear layers); loss = eq. (11) as a
//!    negative cosine, symmetric, with stop-gradient on the projector outputs. Needs no labels.
//! 3. `finetune`: the supervised objective with the convolutional encoder frozen (eval-mode
//!    BatchNorm, no gradient), so its weights and running statistics stay bit-identical.

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::config::MODALITIES;

/// What a training run optimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrainMode {
    /// The multi-task objective (eq. 7) on every batch ("vanilla" training).
    #[default]
    Supervised,
    /// Adaptation stage 1: full vs dropped-modality pathways, feature MSE + supervision.
    Distill,
    /// Adaptation stage 2: SimSiam on two modality subsets of the same case.
    Contrastive,
    /// Adaptation stage 3: supervised fine-tuning with the convolutional encoder frozen.
    Finetune,
    /// Semi-supervised Stage I ([`crate::ssl::pseudo`]): the unlabeled set is pseudo-labelled
    /// once by the labeller model, then eq. (7) trains on labelled + accepted pseudo-labels.
    #[serde(rename = "ssl-pseudo")]
    SslPseudo,
    /// Semi-supervised Stage II ([`crate::ssl::consistency`]): eq. (7) on labelled batches +
    /// weak-to-strong consistency with an EMA teacher and complementary feature dropout.
    #[serde(rename = "ssl-consistency")]
    SslConsistency,
    /// The FixMatch baseline: one confidence threshold, teacher = current student, one
    /// strong view, no feature dropout, no uncertainty, no distribution alignment.
    #[serde(rename = "fixmatch")]
    FixMatch,
}

impl TrainMode {
    /// Name as written in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Supervised => "supervised",
            Self::Distill => "distill",
            Self::Contrastive => "contrastive",
            Self::Finetune => "finetune",
            Self::SslPseudo => "ssl-pseudo",
            Self::SslConsistency => "ssl-consistency",
            Self::FixMatch => "fixmatch",
        }
    }

    /// Whether the mode learns from an unlabeled batch every step (Stage II, FixMatch).
    pub fn uses_unlabeled_batches(self) -> bool {
        matches!(self, Self::SslConsistency | Self::FixMatch)
    }
}

fn one() -> f64 {
    1.0
}
fn projector_dim() -> usize {
    256
}
fn predictor_dim() -> usize {
    64
}

/// Settings of the adaptation stages (the `[adapt]` table of a run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptConfig {
    /// Weight of the eq. (10) feature MSE (summed over the three tapped maps).
    #[serde(default = "one")]
    pub distill_weight: f64,
    /// Weight of the partial pathway's segmentation loss.
    #[serde(default = "one")]
    pub partial_seg_weight: f64,
    /// Width of the SimSiam projector (all three layers).
    #[serde(default = "projector_dim")]
    pub projector_dim: usize,
    /// Bottleneck width of the SimSiam predictor.
    #[serde(default = "predictor_dim")]
    pub predictor_dim: usize,
}

impl Default for AdaptConfig {
    fn default() -> Self {
        Self { distill_weight: 1.0, partial_seg_weight: 1.0, projector_dim: 256, predictor_dim: 64 }
    }
}

impl AdaptConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), crate::ModelError> {
        let bad = |m: String| Err(crate::ModelError::Config(m));
        if !(self.distill_weight >= 0.0 && self.partial_seg_weight >= 0.0) {
            return bad("adapt.distill_weight and adapt.partial_seg_weight must be >= 0".into());
        }
        if self.projector_dim < 2 || self.predictor_dim < 1 {
            return bad("adapt.projector_dim must be >= 2 and adapt.predictor_dim >= 1".into());
        }
        Ok(())
    }
}

/// A random non-empty strict subset of the present sequences (the student pathway's input).
/// With a single sequence present there is nothing to drop and the mask comes back unchanged.
pub fn random_partial(present: [bool; MODALITIES], rng: &mut impl Rng) -> [bool; MODALITIES] {
    let mut idx: Vec<usize> = (0..MODALITIES).filter(|&m| present[m]).collect();
    if idx.len() < 2 {
        return present;
    }
    idx.shuffle(rng);
    let keep = rng.random_range(1..idx.len());
    let mut out = [false; MODALITIES];
    for &m in &idx[..keep] {
        out[m] = true;
    }
    out
}

/// Splits the present sequences at random into two non-empty disjoint groups (the two SimSiam
/// views). With a single sequence present both views get it.
pub fn random_split(present: [bool; MODALITIES], rng: &mut impl Rng) -> ([bool; MODALITIES], [bool; MODALITIES]) {
    let mut idx: Vec<usize> = (0..MODALITIES).filter(|&m| present[m]).collect();
    if idx.len() < 2 {
        return (present, present);
    }
    idx.shuffle(rng);
    let cut = rng.random_range(1..idx.len());
    let (mut a, mut b) = ([false; MODALITIES], [false; MODALITIES]);
    for (k, &m) in idx.iter().enumerate() {
        if k < cut {
            a[m] = true;
        } else {
            b[m] = true;
        }
    }
    (a, b)
}

/// Zeroes the channels of `image` (`[B, 4, ...]`) that `masks` (one per sample) mark absent.
pub fn mask_channels(image: &Tensor, masks: &[[bool; MODALITIES]]) -> Tensor {
    let flat: Vec<f32> = masks.iter().flat_map(|m| m.map(|p| if p { 1.0 } else { 0.0 })).collect();
    let mut shape = vec![masks.len() as i64, MODALITIES as i64];
    shape.extend(std::iter::repeat_n(1, image.dim() - 2));
    image * Tensor::from_slice(&flat).to_device(image.device()).view(shape.as_slice())
}

/// eq. (10): mean squared difference between the teacher (full input, detached) and student
/// (partial input) feature maps, averaged over elements, summed over the tapped maps. Each
/// map's term is divided by the teacher map's mean square, so maps of different magnitude
/// weigh alike and the loss cannot fall (or explode) by rescaling features.
pub fn distill_mse(teacher: &[Tensor], student: &[Tensor]) -> Tensor {
    let terms: Vec<Tensor> = teacher
        .iter()
        .zip(student)
        .map(|(t, s)| {
            let t = t.detach();
            let scale = t.square().mean(Kind::Float) + 1e-6;
            s.mse_loss(&t, tch::Reduction::Mean) / scale
        })
        .collect();
    Tensor::stack(&terms, 0).sum(Kind::Float)
}

/// eq. (11) as a loss: `-(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2`, averaged over the batch.
/// It lies in [-1, 1]; -1 means both views map to the same direction.
pub fn simsiam_loss(p1: &Tensor, z1: &Tensor, p2: &Tensor, z2: &Tensor) -> Tensor {
    let cos = |p: &Tensor, z: &Tensor| Tensor::cosine_similarity(p, &z.detach(), 1, 1e-8).mean(Kind::Float);
    (cos(p1, z2) + cos(p2, z1)) * -0.5
}

/// The SimSiam projector (three linear layers) and predictor (two), on pooled encoder
/// features. LayerNorm stands in for SimSiam's BatchNorm: batches here hold one or two cases.
#[derive(Debug)]
pub struct SimSiamHeads {
    projector: [nn::Linear; 3],
    projector_norm: [nn::LayerNorm; 3],
    predictor: [nn::Linear; 2],
    predictor_norm: nn::LayerNorm,
}

impl SimSiamHeads {
    /// Heads for `input`-wide pooled features.
    pub fn new(p: &nn::Path, input: usize, cfg: &AdaptConfig) -> Self {
        let (d, h) = (cfg.projector_dim as i64, cfg.predictor_dim as i64);
        let lin = |name: &str, i: i64, o: i64| nn::linear(p / name, i, o, Default::default());
        let ln = |name: &str, w: i64, affine: bool| {
            nn::layer_norm(p / name, vec![w], nn::LayerNormConfig { elementwise_affine: affine, ..Default::default() })
        };
        Self {
            projector: [lin("proj1", input as i64, d), lin("proj2", d, d), lin("proj3", d, d)],
            projector_norm: [ln("proj1_ln", d, true), ln("proj2_ln", d, true), ln("proj3_ln", d, false)],
            predictor: [lin("pred1", d, h), lin("pred2", h, d)],
            predictor_norm: ln("pred1_ln", h, true),
        }
    }

    /// Projector output `z`.
    pub fn project(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for (k, (l, n)) in self.projector.iter().zip(&self.projector_norm).enumerate() {
            h = n.forward(&l.forward(&h));
            if k < 2 {
                h = h.relu();
            }
        }
        h
    }

    /// Predictor output `p` for a projector output.
    pub fn predict(&self, z: &Tensor) -> Tensor {
        let h = self.predictor_norm.forward(&self.predictor[0].forward(z)).relu();
        self.predictor[1].forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use tch::Device;

    #[test]
    fn partial_and_split_masks_are_valid() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..400 {
            let p = random_partial([true; 4], &mut rng);
            let n = p.iter().filter(|&&b| b).count();
            assert!((1..4).contains(&n), "{p:?}");
            seen.insert(p);
            let (a, b) = random_split([true, false, true, true], &mut rng);
            assert!(a.iter().any(|&v| v) && b.iter().any(|&v| v));
            assert!(!a[1] && !b[1], "an absent sequence was used");
            assert!((0..4).all(|m| !(a[m] && b[m])), "views overlap: {a:?} {b:?}");
            assert_eq!((0..4).filter(|&m| a[m] || b[m]).count(), 3);
        }
        // Every non-empty strict subset of four sequences is drawn (14 of them).
        assert_eq!(seen.len(), 14);
        let one = [false, false, false, true];
        assert_eq!(random_partial(one, &mut rng), one);
        assert_eq!(random_split(one, &mut rng), (one, one));
    }

    #[test]
    fn masking_zeroes_only_absent_channels() {
        let x = Tensor::ones([2, 4, 2, 2, 2], (Kind::Float, Device::Cpu));
        let m = mask_channels(&x, &[[true, false, true, true], [false, false, false, true]]);
        let sums =
            Vec::<f32>::try_from(m.sum_dim_intlist(&[2i64, 3, 4][..], false, Kind::Float).flatten(0, 1)).unwrap();
        assert_eq!(sums, vec![8.0, 0.0, 8.0, 8.0, 0.0, 0.0, 0.0, 8.0]);
    }

    #[test]
    fn losses_match_hand_values() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([1, 4]);
        let b = Tensor::from_slice(&[1.0f32, 0.0, 3.0, 6.0]).view([1, 4]);
        // (0 + 4 + 0 + 4) / 4 = 2 per map over a teacher mean square of 30 / 4, two maps.
        let mse = distill_mse(&[a.shallow_clone(), a.shallow_clone()], &[b.shallow_clone(), b.shallow_clone()]);
        assert!((mse.double_value(&[]) - 2.0 * 2.0 / 7.5).abs() < 1e-5);
        // Scale-free: scaling both maps leaves it unchanged.
        let big = distill_mse(&[&a * 10.0], &[&b * 10.0]).double_value(&[]);
        assert!((big - 2.0 / 7.5).abs() < 1e-4);
        let same = simsiam_loss(&a, &a, &a, &a).double_value(&[]);
        assert!((same + 1.0).abs() < 1e-6);
        let neg = a.neg();
        assert!((simsiam_loss(&a, &neg, &a, &neg).double_value(&[]) - 1.0).abs() < 1e-6);
        // Stop-gradient: z gets no gradient through the loss.
        let p = a.set_requires_grad(true);
        let z = b.set_requires_grad(true);
        simsiam_loss(&p, &z, &p, &z).backward();
        assert!(p.grad().defined() && !z.grad().defined());
    }

    #[test]
    fn heads_shape() {
        let vs = nn::VarStore::new(Device::Cpu);
        let h = SimSiamHeads::new(&vs.root(), 16, &AdaptConfig::default());
        let z = h.project(&Tensor::randn([2, 16], (Kind::Float, Device::Cpu)));
        assert_eq!(z.size(), [2, 256]);
        assert_eq!(h.predict(&z).size(), [2, 256]);
    }
}
