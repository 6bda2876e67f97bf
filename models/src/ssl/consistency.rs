//! Stage II of the semi-supervised method (paper III-F, after UniMatch V2): an EMA teacher
//! labels weakly augmented unlabeled patches; the student learns them from strong views.
//!
//! Per unlabeled batch (the sampler's weak augmentation: random crop, flips; resizing is
//! the global branch's whole-volume resampling):
//! 1. the EMA teacher (eval mode, no dropout, no gradient) predicts class and task
//!    probabilities on the weak patches;
//! 2. strong views are made from the weak patches: brightness / contrast jitter on the brain
//!    voxels of each present sequence (MRI has no colour, so no saturation or hue), Gaussian
//!    blur, and CutMix (a random box taken from the next sample of the batch; the teacher's
//!    probabilities are mixed with the same box);
//! 3. the student runs two strong views whose deepest encoder features are multiplied by two
//!    complementary channel-dropout masks (a Bernoulli(0.5) draw per channel and sample, and
//!    its complement, each scaled by 2): the two forwards see disjoint channel sets that
//!    together make up all of them;
//! 4. loss per stream = voxel cross-entropy against the teacher's argmax at voxels where the
//!    teacher's probability exceeds `confidence` (other voxels ignored, see
//!    [`crate::partial`]) + cross-entropy of each task on samples whose teacher P(positive)
//!    is above `confidence` or below `1 - confidence` (not on CutMix batches, whose task
//!    labels are ambiguous); the two streams are averaged.
//!
//! After every optimiser step the teacher moves towards the student:
//! `teacher = d * teacher + (1 - d) * student` for every variable and BatchNorm statistic.
//! FixMatch (the single-threshold baseline) is the same loop with `d = 0` (the teacher is the
//! current student) and one strong view without feature dropout.

use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor, nn};

use crate::ModelError;
use crate::config::{MODALITIES, ModelConfig, TASKS};
use crate::net::{self, GlobalContext, Net, NetOutput};
use crate::partial;

fn d_ema() -> f64 {
    0.99
}
fn d_conf() -> f64 {
    0.95
}
fn d_one() -> f64 {
    1.0
}
fn d_true() -> bool {
    true
}
fn d_brightness() -> f64 {
    0.2
}
fn d_contrast() -> f64 {
    0.25
}
fn d_half() -> f64 {
    0.5
}
fn d_sigma() -> [f64; 2] {
    [0.5, 1.5]
}

/// Settings of Stage II (keys of the `[ssl]` table of a run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyConfig {
    /// EMA decay `d` of the teacher (0 = the teacher is the current student, FixMatch).
    #[serde(default = "d_ema")]
    pub ema_decay: f64,
    /// Teacher confidence a voxel or task needs to be learnt from.
    #[serde(default = "d_conf")]
    pub confidence: f64,
    /// Weight of the unlabeled loss next to the supervised objective.
    #[serde(default = "d_one")]
    pub unlabeled_weight: f64,
    /// Two student streams with complementary channel-dropout masks (UniMatch V2); false =
    /// one strong stream without feature dropout.
    #[serde(default = "d_true")]
    pub feature_dropout: bool,
    /// Learn the task heads from confident teacher tasks too.
    #[serde(default = "d_true")]
    pub task_consistency: bool,
    /// Brightness: an offset drawn in `[-b, b]` (z-score units) per sample and sequence.
    #[serde(default = "d_brightness")]
    pub brightness: f64,
    /// Contrast: a factor drawn in `[1 - c, 1 + c]` per sample and sequence.
    #[serde(default = "d_contrast")]
    pub contrast: f64,
    /// Probability of a Gaussian blur per view.
    #[serde(default = "d_half")]
    pub blur_p: f64,
    /// Range of the blur's sigma in voxels.
    #[serde(default = "d_sigma")]
    pub blur_sigma: [f64; 2],
    /// Probability of CutMix per batch (needs at least two samples).
    #[serde(default = "d_half")]
    pub cutmix_p: f64,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        Self {
            ema_decay: d_ema(),
            confidence: d_conf(),
            unlabeled_weight: d_one(),
            feature_dropout: true,
            task_consistency: true,
            brightness: d_brightness(),
            contrast: d_contrast(),
            blur_p: d_half(),
            blur_sigma: d_sigma(),
            cutmix_p: d_half(),
        }
    }
}

impl ConsistencyConfig {
    /// The FixMatch baseline: teacher = current student, one strong view, no feature dropout.
    pub fn fixmatch(mut self) -> Self {
        self.ema_decay = 0.0;
        self.feature_dropout = false;
        self
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(format!("ssl.ema_decay {} must be in [0, 1)", self.ema_decay));
        }
        if !(0.5..1.0).contains(&self.confidence) {
            return bad(format!("ssl.confidence {} must be in [0.5, 1)", self.confidence));
        }
        if !(self.unlabeled_weight >= 0.0 && self.unlabeled_weight.is_finite()) {
            return bad(format!("ssl.unlabeled_weight {} must be >= 0", self.unlabeled_weight));
        }
        for (name, v) in [("blur_p", self.blur_p), ("cutmix_p", self.cutmix_p), ("contrast", self.contrast)] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("ssl.{name} {v} must be in [0, 1]"));
            }
        }
        if !(self.brightness >= 0.0 && self.blur_sigma[0] > 0.0 && self.blur_sigma[1] >= self.blur_sigma[0]) {
            return bad("ssl.brightness must be >= 0 and blur_sigma an increasing positive range".into());
        }
        Ok(())
    }
}

/// The EMA teacher: its own copy of the network's variables.
pub struct EmaTeacher {
    vs: nn::VarStore,
    net: Net,
    decay: f64,
}

impl std::fmt::Debug for EmaTeacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmaTeacher").field("decay", &self.decay).finish_non_exhaustive()
    }
}

impl EmaTeacher {
    /// A teacher starting as a copy of `student` (a network of `cfg`).
    pub fn new(student: &nn::VarStore, cfg: &ModelConfig, decay: f64) -> Result<Self, ModelError> {
        if !(0.0..1.0).contains(&decay) {
            return Err(ModelError::Config(format!("EMA decay {decay} must be in [0, 1)")));
        }
        let (mut vs, net) = net::build(cfg, student.device(), None)?;
        vs.copy(student)?;
        vs.freeze();
        Ok(Self { vs, net, decay })
    }

    /// `teacher = d * teacher + (1 - d) * student` for every variable (BatchNorm running
    /// statistics included).
    pub fn update(&mut self, student: &nn::VarStore) -> Result<(), ModelError> {
        let src = student.variables();
        let d = self.decay;
        tch::no_grad(|| -> Result<(), ModelError> {
            for (name, mut t) in self.vs.variables() {
                let s =
                    src.get(&name).ok_or_else(|| ModelError::Internal(format!("student has no variable {name}")))?;
                let next = &t * d + s.detach() * (1.0 - d);
                t.f_copy_(&next)?;
            }
            Ok(())
        })
    }

    /// The teacher's variables.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The EMA decay.
    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// Class probabilities `[B, 4, D, H, W]` and task P(positive) `[B, TASKS]` on `image`
    /// (eval mode, no dropout, no gradient; each patch is its own whole volume).
    pub fn predict(&self, image: &Tensor, present: &[[bool; MODALITIES]]) -> Result<(Tensor, Tensor), ModelError> {
        tch::no_grad(|| {
            let out = forward(&self.net, image, present, None, false)?;
            Ok((out.seg.softmax(1, Kind::Float), out.tasks.softmax(-1, Kind::Float).select(2, 1)))
        })
    }
}

/// Stage II state held by the trainer.
#[derive(Debug)]
pub struct Consistency {
    /// The teacher.
    pub teacher: EmaTeacher,
    /// Settings.
    pub cfg: ConsistencyConfig,
}

/// Numbers of one consistency step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConsistencyReport {
    /// Unlabeled loss (mean over streams).
    pub loss: f64,
    /// Fraction of unlabeled voxels the teacher was confident about.
    pub confident_voxels: f64,
    /// Confident (sample, task) pairs learnt from.
    pub confident_tasks: usize,
    /// Whether CutMix was applied.
    pub cutmix: bool,
}

/// Two complementary channel masks `[B, C]`: `a` keeps a Bernoulli(0.5) draw of channels
/// (scaled by 2), `b` keeps exactly the others (scaled by 2); `a / 2 + b / 2 = 1`, `a * b = 0`.
pub fn complementary_masks(batch: i64, channels: i64, rng: &mut impl Rng) -> (Tensor, Tensor) {
    let keep: Vec<f32> = (0..batch * channels).map(|_| if rng.random::<bool>() { 2.0 } else { 0.0 }).collect();
    let a = Tensor::from_slice(&keep).view([batch, channels]);
    let b = a.full_like(2.0) - &a;
    (a, b)
}

/// Separable Gaussian blur of `[B, C, D, H, W]` with `sigma` voxels (zero padding).
pub fn gaussian_blur(x: &Tensor, sigma: f64) -> Tensor {
    let r = (2.0 * sigma).ceil().max(1.0) as i64;
    let w: Vec<f32> = (-r..=r).map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp() as f32).collect();
    let sum: f32 = w.iter().sum();
    let w: Vec<f32> = w.iter().map(|v| v / sum).collect();
    let c = x.size()[1];
    let k = 2 * r + 1;
    let kern = Tensor::from_slice(&w).to_device(x.device()).to_kind(x.kind());
    let mut y = x.shallow_clone();
    for axis in 0..3 {
        let mut shape = [1i64; 5];
        shape[2 + axis] = k;
        let mut pad = [0i64; 3];
        pad[axis] = r;
        let wk = kern.view(shape.as_slice()).repeat([c, 1, 1, 1, 1]);
        y = y.conv3d::<Tensor>(&wk, None, [1, 1, 1], pad, [1, 1, 1], c);
    }
    y
}

/// A CutMix box `(lo, len)` per spatial axis `[z, y, x]`.
pub type CutBox = ([i64; 3], [i64; 3]);

/// `t` (`[B, ...spatial]` with spatial axes last) with the box replaced by the next sample's
/// content (sample `i` takes sample `(i + 1) % B`).
pub fn apply_cutmix(t: &Tensor, cut: &CutBox) -> Tensor {
    let nd = t.dim() as i64;
    let donor = t.roll([-1i64].as_slice(), [0i64].as_slice());
    let mask = t.zeros_like().to_kind(Kind::Bool);
    let (lo, len) = cut;
    let _ = mask.narrow(nd - 3, lo[0], len[0]).narrow(nd - 2, lo[1], len[1]).narrow(nd - 1, lo[2], len[2]).fill_(1);
    donor.where_self(&mask, t)
}

/// A strong view of weak patches `[B, 4, D, H, W]`: brightness / contrast on non-zero voxels
/// of present sequences, then (with `blur_p`) a Gaussian blur, then the CutMix box if any.
pub fn strong_view(
    weak: &Tensor,
    present: &[[bool; MODALITIES]],
    cfg: &ConsistencyConfig,
    cut: Option<&CutBox>,
    rng: &mut impl Rng,
) -> Tensor {
    let b = weak.size()[0];
    let mut scale = Vec::with_capacity((b as usize) * MODALITIES);
    let mut shift = Vec::with_capacity(scale.capacity());
    for i in 0..b as usize {
        for c in 0..MODALITIES {
            let s = 1.0 + cfg.contrast * (2.0 * rng.random::<f64>() - 1.0);
            let o = cfg.brightness * (2.0 * rng.random::<f64>() - 1.0);
            let on = present.get(i).or(present.first()).is_some_and(|p| p[c]);
            scale.push(if on { s as f32 } else { 1.0 });
            shift.push(if on { o as f32 } else { 0.0 });
        }
    }
    let dev = weak.device();
    let scale = Tensor::from_slice(&scale).view([b, MODALITIES as i64, 1, 1, 1]).to_device(dev);
    let shift = Tensor::from_slice(&shift).view([b, MODALITIES as i64, 1, 1, 1]).to_device(dev);
    let brain = weak.ne(0.0).to_kind(Kind::Float);
    let mut x = weak * &scale + shift * &brain;
    let blur: f64 = rng.random();
    let sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * rng.random::<f64>();
    if blur < cfg.blur_p {
        x = gaussian_blur(&x, sigma);
    }
    match cut {
        Some(c) => apply_cutmix(&x, c),
        None => x,
    }
}

/// A random CutMix box: each side a fraction in `[0.3, 0.7]` of the patch.
pub fn random_box(spatial: [i64; 3], rng: &mut impl Rng) -> CutBox {
    let mut lo = [0i64; 3];
    let mut len = [0i64; 3];
    for a in 0..3 {
        let f = 0.3 + 0.4 * rng.random::<f64>();
        len[a] = ((spatial[a] as f64 * f).round() as i64).clamp(1, spatial[a]);
        lo[a] = rng.random_range(0..=spatial[a] - len[a]);
    }
    (lo, len)
}

/// Full forward of `net` on `image`, each patch its own whole volume for the global branch,
/// with the deepest encoder features masked by `mask` when given.
fn forward(
    net: &Net,
    image: &Tensor,
    present: &[[bool; MODALITIES]],
    mask: Option<&Tensor>,
    train: bool,
) -> Result<NetOutput, ModelError> {
    let mut enc = net.encode(image, present, train)?;
    if let Some(m) = mask {
        enc = enc.with_channel_mask(m);
    }
    let b = image.size()[0] as usize;
    let full = vec![[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]; b];
    let feats = if net.config().global_branch {
        let masks: Vec<[bool; MODALITIES]> = if present.len() == 1 { vec![present[0]; b] } else { present.to_vec() };
        net.global_features(&net.global_input(image), &masks, train)?
    } else {
        None
    };
    let ctx = feats.as_ref().map(|features| GlobalContext { features, boxes: &full });
    net.head(&enc, ctx, train, false)
}

/// The unlabeled loss of one batch for `student` (see the module docs). `image` must be on
/// the student's device.
pub fn objective(
    student: &Net,
    state: &Consistency,
    image: &Tensor,
    present: &[[bool; MODALITIES]],
    train: bool,
    rng: &mut impl Rng,
) -> Result<(Tensor, ConsistencyReport), ModelError> {
    let cfg = &state.cfg;
    let size = image.size();
    let b = size[0];
    let (seg_p, task_p) = state.teacher.predict(image, present)?;
    let cut_draw: f64 = rng.random();
    let spatial = [size[2], size[3], size[4]];
    let cut = (b >= 2 && cut_draw < cfg.cutmix_p).then(|| random_box(spatial, rng));
    let seg_p = match &cut {
        Some(c) => apply_cutmix(&seg_p, c),
        None => seg_p,
    };
    let (conf, label) = seg_p.max_dim(1, false);
    let confident = conf.gt(cfg.confidence);
    let target = label.where_self(&confident, &label.full_like(-1));
    let confident_voxels = confident.to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    // Confident tasks (not on CutMix batches).
    let mut pairs: Vec<(i64, i64, i64)> = Vec::new();
    if cfg.task_consistency && cut.is_none() {
        let p = Vec::<f32>::try_from(&task_p.to_device(tch::Device::Cpu).flatten(0, -1))?;
        for i in 0..b {
            for t in 0..TASKS as i64 {
                let v = f64::from(p[(i * TASKS as i64 + t) as usize]);
                if v > cfg.confidence {
                    pairs.push((i, t, 1));
                } else if v < 1.0 - cfg.confidence {
                    pairs.push((i, t, 0));
                }
            }
        }
    }
    let streams: Vec<Option<Tensor>> = if cfg.feature_dropout {
        let (m1, m2) = complementary_masks(b, student_channels(student), rng);
        vec![Some(m1), Some(m2)]
    } else {
        vec![None]
    };
    let n_streams = streams.len() as f64;
    let mut total: Option<Tensor> = None;
    for mask in &streams {
        let view = strong_view(image, present, cfg, cut.as_ref(), rng);
        let out = forward(student, &view, present, mask.as_ref(), train)?;
        let seg_loss = partial::cross_entropy(&out.seg, &target);
        let l = if pairs.is_empty() {
            seg_loss
        } else {
            let dev = out.tasks.device();
            let rows = Tensor::from_slice(&pairs.iter().map(|p| p.0).collect::<Vec<_>>()).to_device(dev);
            let cols = Tensor::from_slice(&pairs.iter().map(|p| p.1).collect::<Vec<_>>()).to_device(dev);
            let ys = Tensor::from_slice(&pairs.iter().map(|p| p.2).collect::<Vec<_>>()).to_device(dev);
            let logits = out.tasks.index(&[Some(rows), Some(cols)]);
            seg_loss + logits.cross_entropy_for_logits(&ys)
        };
        total = Some(match total {
            Some(t) => t + l,
            None => l,
        });
    }
    let total = total.ok_or_else(|| ModelError::Internal("no student stream".into()))? / n_streams;
    let report = ConsistencyReport {
        loss: total.double_value(&[]),
        confident_voxels,
        confident_tasks: pairs.len(),
        cutmix: cut.is_some(),
    };
    Ok((total, report))
}

fn student_channels(net: &Net) -> i64 {
    net.config().channels[3] as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use tch::Device;

    #[test]
    fn ema_update_is_exact() {
        let cfg = ModelConfig::tiny();
        let (student, _) = net::build(&cfg, Device::Cpu, Some(1)).unwrap();
        // A teacher that differs from the student (another seed), so every variable moves.
        let (other, _) = net::build(&cfg, Device::Cpu, Some(2)).unwrap();
        let mut teacher = EmaTeacher::new(&other, &cfg, 0.9).unwrap();
        let before: Vec<(String, Tensor)> =
            teacher.var_store().variables().into_iter().map(|(n, v)| (n, v.detach().copy())).collect();
        teacher.update(&student).unwrap();
        let s = student.variables();
        let after = teacher.var_store().variables();
        let mut checked = 0;
        for (name, t0) in before {
            let want = &t0 * 0.9 + s[&name].detach() * (1.0 - 0.9);
            let diff = (&after[&name] - want).abs().max().double_value(&[]);
            assert_eq!(diff, 0.0, "{name}");
            let moved = (&after[&name] - &t0).abs().max().double_value(&[]);
            assert!(moved > 0.0 || (&t0 - &s[&name]).abs().max().double_value(&[]) == 0.0, "{name} did not move");
            checked += 1;
        }
        assert!(checked > 50);
        assert!(teacher.var_store().variables().keys().any(|n| n.ends_with("running_var")));
        assert!(EmaTeacher::new(&student, &cfg, 1.0).is_err());
        // Decay 0: the teacher becomes the student (FixMatch).
        let mut copy = EmaTeacher::new(&other, &cfg, 0.0).unwrap();
        copy.update(&student).unwrap();
        for (name, v) in copy.var_store().variables() {
            assert_eq!((&v - &s[&name]).abs().max().double_value(&[]), 0.0, "{name}");
        }
    }

    #[test]
    fn complementary_masks_partition_the_channels() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (a, b) = complementary_masks(3, 64, &mut rng);
        assert_eq!(a.size(), [3, 64]);
        let sum = (&a / 2.0 + &b / 2.0 - 1.0).abs().max().double_value(&[]);
        assert_eq!(sum, 0.0);
        assert_eq!((&a * &b).abs().max().double_value(&[]), 0.0);
        let kept = a.gt(0.0).sum(Kind::Int64).int64_value(&[]);
        assert!(kept > 64 && kept < 128, "{kept} of 192 kept: not a fair draw");
        // Applied to features: the two streams' deepest maps add up to twice the original.
        let cfg = ModelConfig::tiny();
        let (_vs, net) = net::build(&cfg, Device::Cpu, Some(1)).unwrap();
        let x = Tensor::randn([3, 4, 32, 32, 32], (Kind::Float, Device::Cpu));
        tch::no_grad(|| {
            let enc = net.encode(&x, &[[true; 4]], false).unwrap();
            assert_eq!(enc.deepest_channels(), 64);
            let ea = enc.with_channel_mask(&a);
            let eb = enc.with_channel_mask(&b);
            let ya = net.encoder_embedding(&ea);
            let yb = net.encoder_embedding(&eb);
            let y = net.encoder_embedding(&enc);
            assert!((ya + yb - y * 2.0).abs().max().double_value(&[]) < 1e-5);
        });
    }

    #[test]
    fn strong_views_and_cutmix() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let cfg = ConsistencyConfig { blur_p: 1.0, ..ConsistencyConfig::default() };
        let x = Tensor::randn([2, 4, 16, 16, 16], (Kind::Float, Device::Cpu));
        let _ = x.narrow(2, 0, 2).fill_(0.0);
        let present = [[true, true, false, true]; 2];
        let cut = random_box([16, 16, 16], &mut rng);
        let v = strong_view(&x, &present, &cfg, Some(&cut), &mut rng);
        assert_eq!(v.size(), x.size());
        assert!((&v - &x).abs().max().double_value(&[]) > 0.0);
        // CutMix: inside the box sample 0 holds sample 1.
        let y = apply_cutmix(&x, &cut);
        let (lo, len) = cut;
        let region = |t: &Tensor| t.narrow(1, lo[0], len[0]).narrow(2, lo[1], len[1]).narrow(3, lo[2], len[2]);
        assert_eq!((region(&y.get(0)) - region(&x.get(1))).abs().max().double_value(&[]), 0.0);
        assert!((y.get(0).sum(Kind::Double) - x.get(0).sum(Kind::Double)).abs().double_value(&[]) > 0.0);
        // Blur keeps a constant volume's interior constant.
        let ones = Tensor::ones([1, 4, 12, 12, 12], (Kind::Float, Device::Cpu));
        let blurred = gaussian_blur(&ones, 1.0);
        let centre = blurred.narrow(2, 4, 4).narrow(3, 4, 4).narrow(4, 4, 4);
        assert!((centre - 1.0).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn objective_uses_only_confident_teacher_voxels() {
        let cfg = ModelConfig::tiny();
        let (vs, student) = net::build(&cfg, Device::Cpu, Some(1)).unwrap();
        let teacher = EmaTeacher::new(&vs, &cfg, 0.99).unwrap();
        let x = Tensor::randn([2, 4, 32, 32, 32], (Kind::Float, Device::Cpu));
        let present = [[true; 4]];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // A threshold nobody reaches: no voxel, no task, zero loss.
        let strict = Consistency { teacher, cfg: ConsistencyConfig { confidence: 0.999_999, ..Default::default() } };
        let (l, r) = objective(&student, &strict, &x, &present, true, &mut rng).unwrap();
        assert_eq!(r.confident_voxels, 0.0);
        assert_eq!(r.confident_tasks, 0);
        assert_eq!(l.double_value(&[]), 0.0);
        // The lowest threshold: the voxels whose top class beats 0.5 are learnt from, with
        // gradient into the student.
        let teacher = EmaTeacher::new(&vs, &cfg, 0.99).unwrap();
        let loose =
            Consistency { teacher, cfg: ConsistencyConfig { confidence: 0.5, cutmix_p: 0.0, ..Default::default() } };
        let (l, r) = objective(&student, &loose, &x, &present, true, &mut rng).unwrap();
        assert!(r.confident_voxels > 0.0 && r.confident_tasks > 0 && l.double_value(&[]) > 0.0, "{r:?}");
        l.backward();
        let g = vs.variables()["decoder.seg_head.weight"].grad();
        assert!(g.defined() && g.abs().sum(Kind::Double).double_value(&[]) > 0.0);
        // The teacher gets no gradient.
        for (_, v) in loose.teacher.var_store().variables() {
            assert!(!v.requires_grad());
        }
    }
}
