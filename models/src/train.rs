//! Training: `Batch` (patches, labels, per-sample task targets and modality masks), the
//! `Trainer` with SGD or AdamW, and the uncertainty-weighted multi-task objective.
//!
//! Objective: segmentation task loss = Dice (eq. 4) [+ optional voxel CE] [+ global-branch
//! Dice on down-sampled labels]; each classification task = weighted CE (eq. 5) over the
//! samples that carry its label; all combined by eq. (7) with learnable `log sigma`. The
//! adaptation stages of [`crate::adapt`] (distill, contrastive, finetune) are other modes of
//! the same trainer.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn, nn::OptimizerConfig};

use crate::ModelError;
use crate::adapt::{self, AdaptConfig, SimSiamHeads, TrainMode};
use crate::analyzer::Analyzer;
use crate::config::{MODALITIES, ModelConfig, SEG_CLASSES, TASKS};
use crate::loss;
use crate::net::{self, FeatureTaps, GlobalContext, Net, NetOutput};
use crate::partial;

/// Prefix of the convolutional encoder's variables (stems and residual levels), the part the
/// `finetune` stage freezes.
pub const ENCODER_PREFIX: &str = "encoder.";

/// Optimiser choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum (the paper's optimiser).
    Sgd,
    /// AdamW (decoupled weight decay).
    AdamW,
}

/// Training hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Learning rate of the network.
    pub lr: f64,
    /// SGD momentum (ignored by AdamW).
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Learning rate of the task `log sigma` parameters (no weight decay).
    pub sigma_lr: f64,
    /// Gradient-norm clipping (None = off).
    pub grad_clip: Option<f64>,
    /// Class weights `[negative, positive]` of eq. (5) per task (grade, IDH, 1p/19q, MGMT).
    pub task_class_weights: [[f64; 2]; TASKS],
    /// Weight of a voxel-wise cross-entropy added to the Dice loss (default 1; 0 = the
    /// pure eq. (4) Dice objective, which converges much more slowly on small tumours).
    pub seg_ce_weight: f64,
    /// Weight of the global-branch Dice loss on down-sampled labels.
    pub global_seg_weight: f64,
    /// Dice epsilon of eq. (4).
    pub dice_eps: f64,
    /// Use eq. (7) (learnable sigmas); when false tasks are summed with weight 1.
    pub uncertainty_weighting: bool,
    /// Whether the segmentation loss is trained (false with one task on = a single-task
    /// classification ablation).
    #[serde(default = "enabled")]
    pub segmentation: bool,
    /// Which classification tasks are trained (grade, IDH, 1p/19q, MGMT); a disabled task
    /// contributes nothing, like a missing label (single-task ablations).
    #[serde(default = "all_enabled")]
    pub tasks: [bool; TASKS],
    /// Decay of an exponential moving average of the weights (e.g. 0.999); the average is
    /// what [`Trainer::analyzer`] hands out and so what a run saves as its model, while
    /// checkpoints keep the raw weights. None = off.
    #[serde(default)]
    pub weight_ema: Option<f64>,
}

fn enabled() -> bool {
    true
}

fn all_enabled() -> [bool; TASKS] {
    [true; TASKS]
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            optimizer: OptimizerKind::AdamW,
            lr: 1e-3,
            momentum: 0.9,
            weight_decay: 1e-5,
            sigma_lr: 1e-2,
            grad_clip: Some(5.0),
            task_class_weights: [[1.0, 1.0]; TASKS],
            seg_ce_weight: 1.0,
            global_seg_weight: 0.5,
            dice_eps: 1e-5,
            uncertainty_weighting: true,
            segmentation: true,
            tasks: [true; TASKS],
            weight_ema: None,
        }
    }
}

impl TrainConfig {
    /// The paper's setting: SGD, learning rate 1e-4 (decay it with [`Trainer::set_lr`]).
    pub fn paper() -> Self {
        Self { optimizer: OptimizerKind::Sgd, lr: 1e-4, weight_decay: 1e-5, ..Self::default() }
    }
}

/// Whole-volume inputs of the global branch for a batch.
#[derive(Debug)]
pub struct GlobalBatch {
    /// Whole volumes resampled to `global_size`: `[B, 4, G..]`.
    pub image: Tensor,
    /// Down-sampled labels `[B, G..]` (classes 0..3).
    pub seg: Tensor,
    /// Region of the whole volume each patch covers, `[z0, y0, x0, z1, y1, x1]` in fractions.
    pub boxes: Vec<[f32; 6]>,
}

/// One training batch.
#[derive(Debug)]
pub struct Batch {
    /// Patches `[B, 4, D, H, W]` (float, absent modalities zero).
    pub image: Tensor,
    /// Labels `[B, D, H, W]`: classes 0..3 (background, NCR, ED, ET), or partial targets
    /// ([`crate::partial::SEG_TUMOUR`] = whole tumour, sub-region unknown; any other value,
    /// e.g. -1 or 255 = ignored).
    pub seg: Tensor,
    /// Per sample, per task (grade GBM, IDH mutant, 1p/19q codeleted, MGMT methylated).
    pub tasks: Vec<[Option<bool>; TASKS]>,
    /// Per sample modality presence (t1, t1ce, t2, flair).
    pub present: Vec<[bool; MODALITIES]>,
    /// Whole-volume inputs for the global branch; None = treat each patch as the volume.
    pub global: Option<GlobalBatch>,
    /// Soft targets P(positive) per sample and task (a Tumor-CutMix mix); when given, the
    /// classification loss uses them instead of `tasks` (a row's None = no label).
    pub soft: Option<Vec<[Option<f32>; TASKS]>>,
}

impl Batch {
    fn validate(&self) -> Result<i64, ModelError> {
        let s = self.image.size();
        let bad = |m: String| Err(ModelError::Input(m));
        if s.len() != 5 || s[1] != MODALITIES as i64 {
            return bad(format!("batch image must be [B, 4, D, H, W], got {s:?}"));
        }
        let b = s[0];
        let want = [b, s[2], s[3], s[4]];
        if self.seg.size() != want {
            return bad(format!("batch seg must be {want:?}, got {:?}", self.seg.size()));
        }
        if self.tasks.len() as i64 != b || self.present.len() as i64 != b {
            return bad(format!(
                "batch of {b} has {} task rows and {} presence masks",
                self.tasks.len(),
                self.present.len()
            ));
        }
        if let Some(g) = &self.global
            && (g.boxes.len() as i64 != b || g.image.size()[0] != b || g.seg.size()[0] != b)
        {
            return bad("global batch does not match the batch size".into());
        }
        if let Some(soft) = &self.soft {
            if soft.len() as i64 != b {
                return bad(format!("batch of {b} has {} soft-target rows", soft.len()));
            }
            if let Some(v) = soft.iter().flatten().flatten().find(|v| !(0.0..=1.0).contains(*v)) {
                return bad(format!("soft target {v} is not a probability in [0, 1]"));
            }
        }
        Ok(b)
    }
}

/// Losses of one step (plain numbers, before and after weighting).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLosses {
    /// Total objective (eq. 7).
    pub total: f64,
    /// Segmentation task loss (Dice [+ CE] [+ global Dice]).
    pub seg: f64,
    /// Dice loss of the backbone segmentation.
    pub seg_dice: f64,
    /// Dice loss of the global branch (when on).
    pub global_dice: Option<f64>,
    /// Weighted CE per task (None when no sample in the batch has that label).
    pub tasks: [Option<f64>; TASKS],
    /// Current sigma per task (segmentation first).
    pub sigma: [f64; TASKS + 1],
    /// `distill`: eq. (10) feature MSE summed over the tapped maps.
    #[serde(default)]
    pub distill: Option<f64>,
    /// `distill`: segmentation loss of the dropped-modality pathway.
    #[serde(default)]
    pub partial_seg: Option<f64>,
    /// `contrastive`: eq. (11) loss (negative cosine, -1 at best).
    #[serde(default)]
    pub contrastive: Option<f64>,
    /// `ssl-consistency` / `fixmatch`: the unlabeled (weak-to-strong) loss and its numbers.
    #[serde(default)]
    pub consistency: Option<crate::ssl::ConsistencyReport>,
}

/// One forward pass of a batch with the targets it is scored against.
struct Pass {
    out: NetOutput,
    taps: Option<FeatureTaps>,
    seg: Tensor,
    global_target: Option<Tensor>,
}

/// SimSiam heads of the contrastive stage with their own variables and optimiser.
struct Ssl {
    _vs: nn::VarStore,
    heads: SimSiamHeads,
    opt: nn::Optimizer,
}

/// Trains a GMMAS network.
pub struct Trainer {
    cfg: ModelConfig,
    tcfg: TrainConfig,
    vs: nn::VarStore,
    net: Net,
    mtl_vs: nn::VarStore,
    log_sigma: Tensor,
    opt: nn::Optimizer,
    mtl_opt: nn::Optimizer,
    steps: usize,
    seed: i64,
    mode: TrainMode,
    adapt: AdaptConfig,
    ssl: Option<Ssl>,
    frozen: Vec<String>,
    consistency: Option<crate::ssl::Consistency>,
    /// Exponential moving average of the weights (`TrainConfig::weight_ema`).
    averaged: Option<crate::ssl::EmaTeacher>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").field("model", &self.cfg.name).field("steps", &self.steps).finish_non_exhaustive()
    }
}

fn optimizer(
    vs: &nn::VarStore,
    kind: OptimizerKind,
    lr: f64,
    momentum: f64,
    wd: f64,
) -> Result<nn::Optimizer, ModelError> {
    Ok(match kind {
        OptimizerKind::Sgd => nn::Sgd { momentum, dampening: 0.0, wd, nesterov: false }.build(vs, lr)?,
        OptimizerKind::AdamW => nn::AdamW { wd, ..Default::default() }.build(vs, lr)?,
    })
}

impl Trainer {
    /// A trainer for a freshly seeded network.
    pub fn new(cfg: ModelConfig, tcfg: TrainConfig, seed: i64, device: Device) -> Result<Self, ModelError> {
        let (vs, net) = net::build(&cfg, device, Some(seed as u64))?;
        Self::from_parts(cfg, tcfg, vs, net, seed)
    }

    /// A trainer starting from saved weights (fine-tuning).
    pub fn from_weights(weights: &std::path::Path, tcfg: TrainConfig, device: Device) -> Result<Self, ModelError> {
        let a = Analyzer::load(weights, device)?;
        let cfg = a.config().clone();
        let (mut vs, net) = net::build(&cfg, device, None)?;
        a.copy_weights_into(&mut vs)?;
        Self::from_parts(cfg, tcfg, vs, net, 0)
    }

    fn from_parts(
        cfg: ModelConfig,
        tcfg: TrainConfig,
        vs: nn::VarStore,
        net: Net,
        seed: i64,
    ) -> Result<Self, ModelError> {
        let device = vs.device();
        let mtl_vs = nn::VarStore::new(device);
        let log_sigma = mtl_vs.root().var("log_sigma", &[TASKS as i64 + 1], nn::Init::Const(0.0));
        let opt = optimizer(&vs, tcfg.optimizer, tcfg.lr, tcfg.momentum, tcfg.weight_decay)?;
        let mtl_opt = optimizer(&mtl_vs, tcfg.optimizer, tcfg.sigma_lr, tcfg.momentum, 0.0)?;
        let averaged = match tcfg.weight_ema {
            Some(d) => Some(crate::ssl::EmaTeacher::new(&vs, &cfg, d)?),
            None => None,
        };
        Ok(Self {
            cfg,
            tcfg,
            vs,
            net,
            mtl_vs,
            log_sigma,
            opt,
            mtl_opt,
            steps: 0,
            seed,
            mode: TrainMode::Supervised,
            adapt: AdaptConfig::default(),
            ssl: None,
            frozen: Vec::new(),
            consistency: None,
            averaged,
        })
    }

    /// Switches the trainer to `mode` (an adaptation stage, or plain supervised training).
    /// `finetune` freezes the convolutional encoder (no gradient, eval-mode BatchNorm);
    /// `contrastive` adds the SimSiam projector and predictor.
    pub fn with_mode(mut self, mode: TrainMode, adapt: AdaptConfig) -> Result<Self, ModelError> {
        adapt.validate()?;
        // Unfreeze what an earlier `finetune` froze, then freeze the trainable encoder
        // tensors (BatchNorm running statistics are buffers and stay as they are).
        let vars = self.vs.variables();
        for name in self.frozen.drain(..) {
            if let Some(v) = vars.get(&name) {
                let _ = v.set_requires_grad(true);
            }
        }
        if mode == TrainMode::Finetune {
            for (name, var) in &vars {
                if name.starts_with(ENCODER_PREFIX) && var.requires_grad() {
                    let _ = var.set_requires_grad(false);
                    self.frozen.push(name.clone());
                }
            }
        }
        self.ssl = if mode == TrainMode::Contrastive {
            let vs = nn::VarStore::new(self.vs.device());
            let heads = SimSiamHeads::new(&vs.root(), self.cfg.channels[3], &adapt);
            let opt = optimizer(&vs, self.tcfg.optimizer, self.tcfg.lr, self.tcfg.momentum, self.tcfg.weight_decay)?;
            Some(Ssl { _vs: vs, heads, opt })
        } else {
            None
        };
        self.mode = mode;
        self.adapt = adapt;
        Ok(self)
    }

    /// Adds Stage II (weak-to-strong consistency): an EMA teacher starting as a copy of the
    /// current weights. Unlabeled batches passed to [`Trainer::step_with`] are then learnt
    /// from; after every step the teacher moves towards the student.
    pub fn with_consistency(mut self, cfg: crate::ssl::ConsistencyConfig) -> Result<Self, ModelError> {
        cfg.validate()?;
        let teacher = crate::ssl::EmaTeacher::new(&self.vs, &self.cfg, cfg.ema_decay)?;
        self.consistency = Some(crate::ssl::Consistency { teacher, cfg });
        Ok(self)
    }

    /// The Stage II teacher, when [`Trainer::with_consistency`] added one.
    pub fn teacher(&self) -> Option<&crate::ssl::EmaTeacher> {
        self.consistency.as_ref().map(|c| &c.teacher)
    }

    /// Sets the decoder dropout probability (no variables: the weights stay as they are).
    pub fn set_decoder_dropout(&mut self, p: f64) -> Result<(), ModelError> {
        self.net.set_decoder_dropout(p)?;
        self.cfg.decoder_dropout = p;
        Ok(())
    }

    /// The training mode.
    pub fn mode(&self) -> TrainMode {
        self.mode
    }

    /// Seeded per step, so dropped-modality draws are the same after a resume.
    fn step_rng(&self) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64((self.seed as u64) ^ (self.steps as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// The network.
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// The network's variables.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The `log sigma` parameters of eq. (7) (segmentation first, then the four tasks).
    pub fn log_sigma(&self) -> &Tensor {
        &self.log_sigma
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Sets the learning rate of the network optimiser.
    pub fn set_lr(&mut self, lr: f64) {
        self.tcfg.lr = lr;
        self.opt.set_lr(lr);
        if let Some(ssl) = &mut self.ssl {
            ssl.opt.set_lr(lr);
        }
    }

    /// Current eq. (7) sigma per task (segmentation first).
    fn sigmas(&self) -> Result<[f64; TASKS + 1], ModelError> {
        let v = Vec::<f64>::try_from(&self.log_sigma.detach().exp().to_kind(Kind::Double).to_device(Device::Cpu))?;
        let mut sig = [1.0; TASKS + 1];
        sig.copy_from_slice(&v[..TASKS + 1]);
        Ok(sig)
    }

    /// One forward pass of `batch`, with the sequences of `masks` only when given (their
    /// channels zeroed in the patch and the whole volume). `taps` keeps the distillation maps.
    fn pass(
        &self,
        batch: &Batch,
        masks: Option<&[[bool; MODALITIES]]>,
        train: bool,
        taps: bool,
    ) -> Result<Pass, ModelError> {
        let device = self.vs.device();
        let present = masks.unwrap_or(&batch.present);
        let mut image = batch.image.to_device(device).to_kind(Kind::Float);
        if let Some(m) = masks {
            image = adapt::mask_channels(&image, m);
        }
        let seg = batch.seg.to_device(device).to_kind(Kind::Int64);
        let b = seg.size()[0];

        // Global branch inputs (explicit, or the patch itself as the whole volume).
        let (global_feats, global_target, boxes) = match (&batch.global, self.cfg.global_branch) {
            (_, false) => (None, None, Vec::new()),
            (Some(g), true) => {
                let mut low = g.image.to_device(device).to_kind(Kind::Float);
                if let Some(m) = masks {
                    low = adapt::mask_channels(&low, m);
                }
                let f = self.net.global_features(&low, present, train)?;
                (f, Some(g.seg.to_device(device).to_kind(Kind::Int64)), g.boxes.clone())
            }
            (None, true) => {
                let f = self.net.global_features(&self.net.global_input(&image), present, train)?;
                let size = self.cfg.global_size.map(|v| v as i64);
                (f, Some(loss::resample_labels(&seg, size)), vec![[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]; b as usize])
            }
        };
        let ctx = global_feats.as_ref().map(|features| GlobalContext { features, boxes: &boxes });
        let (out, taps) = if taps {
            let (out, t) = self.net.forward_tapped(&image, present, ctx, train)?;
            (out, Some(t))
        } else if self.mode == TrainMode::Finetune {
            // Frozen encoder: running statistics are used and left untouched.
            let enc = tch::no_grad(|| self.net.encode(&image, present, false))?;
            (self.net.head(&enc, ctx, train, false)?, None)
        } else {
            (self.net.forward(&image, present, ctx, train, false)?, None)
        };
        Ok(Pass { out, taps, seg, global_target })
    }

    /// Segmentation task loss of a pass: (total, backbone Dice loss, global Dice loss).
    fn seg_loss(&self, pass: &Pass) -> (Tensor, Tensor, Option<f64>) {
        let t = &self.tcfg;
        // Partial targets (whole-tumour voxels, ignored voxels) are scored by `partial`; with
        // full labels these are the plain eq. (4) Dice and voxel cross-entropy.
        let dice = partial::dice_loss(&pass.out.seg, &pass.seg, t.dice_eps);
        let mut seg_terms = vec![dice.shallow_clone()];
        if t.seg_ce_weight > 0.0 {
            seg_terms.push(partial::cross_entropy(&pass.out.seg, &pass.seg) * t.seg_ce_weight);
        }
        let mut global_dice = None;
        if let (Some(gl), Some(gt)) = (&pass.out.global_seg, &pass.global_target) {
            let d = partial::dice_loss(gl, gt, t.dice_eps);
            global_dice = Some(d.double_value(&[]));
            if t.global_seg_weight > 0.0 {
                seg_terms.push(d * t.global_seg_weight);
            }
        }
        (Tensor::stack(&seg_terms, 0).sum(Kind::Float), dice, global_dice)
    }

    /// The multi-task objective (eq. 7) of a pass.
    fn supervised(&self, pass: &Pass, batch: &Batch) -> Result<(Tensor, StepLosses), ModelError> {
        let device = self.vs.device();
        let t = &self.tcfg;
        let out = &pass.out;
        let (seg_loss, dice, global_dice) = self.seg_loss(pass);
        let mut losses: Vec<Option<Tensor>> = vec![t.segmentation.then(|| seg_loss.shallow_clone())];
        let mut task_values = [None; TASKS];
        for (task, value) in task_values.iter_mut().enumerate() {
            // Soft targets when the batch has them (hard labels are 0 / 1), else the labels.
            let (idx, targets): (Vec<i64>, Vec<f32>) = match &batch.soft {
                Some(soft) => soft.iter().enumerate().filter_map(|(i, row)| row[task].map(|s| (i as i64, s))).unzip(),
                None => batch
                    .tasks
                    .iter()
                    .enumerate()
                    .filter_map(|(i, row)| row[task].map(|y| (i as i64, f32::from(u8::from(y)))))
                    .unzip(),
            };
            if idx.is_empty() || !t.tasks[task] {
                losses.push(None);
                continue;
            }
            let idx = Tensor::from_slice(&idx).to_device(device);
            let targets = Tensor::from_slice(&targets).to_device(device);
            let logits = out.tasks.select(1, task as i64).index_select(0, &idx);
            let l = loss::soft_weighted_cross_entropy(&logits, &targets, &t.task_class_weights[task]);
            *value = Some(l.double_value(&[]));
            losses.push(Some(l));
        }
        let total = if t.uncertainty_weighting {
            loss::uncertainty_weighted(&losses, &self.log_sigma)
        } else {
            losses.iter().flatten().map(Tensor::shallow_clone).reduce(|a, b| a + b)
        }
        // Nothing to learn from this batch (e.g. a single-task run and no sample has that label):
        // a zero that still reaches the graph, so the step is a no-op rather than an error.
        .unwrap_or_else(|| out.tasks.sum(Kind::Float) * 0.0);
        let sig = self.sigmas()?;
        let report = StepLosses {
            total: total.double_value(&[]),
            seg: seg_loss.double_value(&[]),
            seg_dice: dice.double_value(&[]),
            global_dice,
            tasks: task_values,
            sigma: sig,
            distill: None,
            partial_seg: None,
            contrastive: None,
            consistency: None,
        };
        Ok((total, report))
    }

    /// Forward pass and objective with gradients tracked (nothing is updated).
    /// `train` selects BatchNorm batch statistics and dropout. Supervised and `finetune`
    /// runs use eq. (7); the adaptation stages add their own terms (see [`crate::adapt`]).
    pub fn objective(&self, batch: &Batch, train: bool) -> Result<(Tensor, StepLosses), ModelError> {
        batch.validate()?;
        match self.mode {
            TrainMode::Supervised
            | TrainMode::Finetune
            | TrainMode::SslPseudo
            | TrainMode::SslConsistency
            | TrainMode::FixMatch => {
                let pass = self.pass(batch, None, train, false)?;
                self.supervised(&pass, batch)
            }
            TrainMode::Distill => self.distill_objective(batch, train),
            TrainMode::Contrastive => self.contrastive_objective(batch, train),
        }
    }

    fn distill_objective(&self, batch: &Batch, train: bool) -> Result<(Tensor, StepLosses), ModelError> {
        let full = self.pass(batch, None, train, true)?;
        let (sup, mut report) = self.supervised(&full, batch)?;
        let mut rng = self.step_rng();
        let masks: Vec<[bool; MODALITIES]> =
            batch.present.iter().map(|&p| adapt::random_partial(p, &mut rng)).collect();
        let partial = self.pass(batch, Some(&masks), train, true)?;
        let (pseg, _, _) = self.seg_loss(&partial);
        let (teacher, student) = match (&full.taps, &partial.taps) {
            (Some(t), Some(s)) => (t.all(), s.all()),
            _ => return Err(ModelError::Internal("distillation pass without feature taps".into())),
        };
        let mse = adapt::distill_mse(&teacher, &student);
        report.distill = Some(mse.double_value(&[]));
        report.partial_seg = Some(pseg.double_value(&[]));
        let total = sup + pseg * self.adapt.partial_seg_weight + mse * self.adapt.distill_weight;
        report.total = total.double_value(&[]);
        Ok((total, report))
    }

    fn contrastive_objective(&self, batch: &Batch, train: bool) -> Result<(Tensor, StepLosses), ModelError> {
        let ssl = self.ssl.as_ref().ok_or_else(|| ModelError::Internal("contrastive mode without heads".into()))?;
        let device = self.vs.device();
        let image = batch.image.to_device(device).to_kind(Kind::Float);
        let mut rng = self.step_rng();
        let (a, b): (Vec<_>, Vec<_>) = batch.present.iter().map(|&p| adapt::random_split(p, &mut rng)).unzip();
        let view = |masks: &[[bool; MODALITIES]]| -> Result<(Tensor, Tensor), ModelError> {
            let enc = self.net.encode(&adapt::mask_channels(&image, masks), masks, train)?;
            let z = ssl.heads.project(&self.net.encoder_embedding(&enc));
            let p = ssl.heads.predict(&z);
            Ok((z, p))
        };
        let (z1, p1) = view(&a)?;
        let (z2, p2) = view(&b)?;
        let total = adapt::simsiam_loss(&p1, &z1, &p2, &z2);
        let value = total.double_value(&[]);
        let sig = self.sigmas()?;
        let report = StepLosses {
            total: value,
            seg: 0.0,
            seg_dice: 0.0,
            global_dice: None,
            tasks: [None; TASKS],
            sigma: sig,
            distill: None,
            partial_seg: None,
            contrastive: Some(value),
            consistency: None,
        };
        Ok((total, report))
    }

    /// One optimisation step on `batch`.
    pub fn step(&mut self, batch: &Batch) -> Result<StepLosses, ModelError> {
        self.step_with(batch, None)
    }

    /// One optimisation step on a labelled `batch` and, with Stage II on
    /// ([`Trainer::with_consistency`]), an `unlabeled` batch (its labels are not read):
    /// objective = eq. (7) on `batch` + `unlabeled_weight` x the consistency loss; then the
    /// EMA teacher update.
    pub fn step_with(&mut self, batch: &Batch, unlabeled: Option<&Batch>) -> Result<StepLosses, ModelError> {
        self.opt.zero_grad();
        self.mtl_opt.zero_grad();
        if let Some(ssl) = &mut self.ssl {
            ssl.opt.zero_grad();
        }
        let (sup_total, mut report) = self.objective(batch, true)?;
        let total = match (&self.consistency, unlabeled) {
            (Some(c), Some(u)) => {
                let image = u.image.to_device(self.vs.device()).to_kind(Kind::Float);
                let mut rng = ChaCha8Rng::seed_from_u64(self.step_rng().random::<u64>() ^ 0x55D1);
                let (l, r) = crate::ssl::consistency::objective(&self.net, c, &image, &u.present, true, &mut rng)?;
                let total = sup_total + l * c.cfg.unlabeled_weight;
                report.total = total.double_value(&[]);
                report.consistency = Some(r);
                total
            }
            _ => sup_total,
        };
        if !report.total.is_finite() {
            return Err(ModelError::Internal(format!("non-finite loss at step {}", self.steps)));
        }
        total.backward();
        if let Some(c) = self.tcfg.grad_clip {
            self.opt.clip_grad_norm(c);
        }
        self.opt.step();
        if let Some(ssl) = &mut self.ssl {
            ssl.opt.step();
        }
        if self.tcfg.uncertainty_weighting && self.mode != TrainMode::Contrastive {
            self.mtl_opt.step();
        }
        if let Some(c) = &mut self.consistency {
            c.teacher.update(&self.vs)?;
        }
        if let Some(a) = &mut self.averaged {
            a.update(&self.vs)?;
        }
        self.steps += 1;
        Ok(report)
    }

    /// An [`Analyzer`] holding a copy of the model's weights, named `name`: the weight
    /// average when `weight_ema` is set, else the current weights. The training notes get
    /// the step count, seed, configs and which weights these are.
    pub fn analyzer(&self, name: &str, notes: serde_json::Value) -> Result<Analyzer, ModelError> {
        match &self.averaged {
            Some(a) => self.analyzer_of(a.var_store(), "ema", name, notes),
            None => self.analyzer_of(&self.vs, "raw", name, notes),
        }
    }

    /// Like [`Trainer::analyzer`] but always the current (raw) weights: what a checkpoint
    /// keeps so that a resumed run continues exactly.
    pub fn raw_analyzer(&self, name: &str, notes: serde_json::Value) -> Result<Analyzer, ModelError> {
        self.analyzer_of(&self.vs, "raw", name, notes)
    }

    /// The weight average, when `weight_ema` is set.
    pub fn weight_average(&self) -> Option<&crate::ssl::EmaTeacher> {
        self.averaged.as_ref()
    }

    fn analyzer_of(
        &self,
        src: &nn::VarStore,
        which: &str,
        name: &str,
        notes: serde_json::Value,
    ) -> Result<Analyzer, ModelError> {
        let (vs, net) = net::build(&self.cfg, self.vs.device(), None)?;
        let mut vs = vs;
        vs.copy(src)?;
        let notes = serde_json::json!({
            "weights": which,
            "steps": self.steps,
            "seed": self.seed,
            "train_config": self.tcfg,
            "mode": self.mode,
            "sigma": Vec::<f64>::try_from(&self.log_sigma.detach().exp().to_kind(Kind::Double).to_device(Device::Cpu)).unwrap_or_default(),
            "notes": notes,
        });
        Analyzer::from_parts(name.to_string(), vs, net, notes)
    }

    /// Saves the current weights as `<path>` + sidecar (see [`Analyzer::save`]).
    pub fn save(&self, path: &std::path::Path, name: &str, notes: serde_json::Value) -> Result<(), ModelError> {
        self.analyzer(name, notes)?.save(path)
    }

    /// Number of segmentation classes trained.
    pub fn classes(&self) -> usize {
        SEG_CLASSES
    }

    /// The `log sigma` var store (separate optimiser, no weight decay).
    pub fn sigma_store(&self) -> &nn::VarStore {
        &self.mtl_vs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InferOptions;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Synthetic 4-channel volume `[4, n, n, n]` (x fastest) with a tumour: edema shell,
    /// enhancing core and necrotic centre; labels use network classes 0..3.
    fn synthetic(n: usize, center: [f32; 3], radius: f32, seed: u64) -> (Vec<f32>, Vec<i64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let vox = n * n * n;
        let mut img = vec![0f32; 4 * vox];
        let mut seg = vec![0i64; vox];
        for z in 0..n {
            for y in 0..n {
                for x in 0..n {
                    let i = x + n * (y + n * z);
                    let d = ((x as f32 - center[0]).powi(2)
                        + (y as f32 - center[1]).powi(2)
                        + (z as f32 - center[2]).powi(2))
                    .sqrt();
                    let label = if d < 0.3 * radius {
                        1
                    } else if d < 0.55 * radius {
                        3
                    } else if d < radius {
                        2
                    } else {
                        0
                    };
                    seg[i] = label;
                    // t1, t1ce, t2, flair offsets per class (bg, NCR, ED, ET).
                    let offs: [[f32; 4]; 4] =
                        [[0.0, 0.0, 0.0, 0.0], [-1.0, -1.0, 1.0, 0.5], [-0.3, 0.2, 1.5, 2.0], [-0.5, 2.0, 0.8, 1.0]];
                    for c in 0..4 {
                        let texture = (0.4 * x as f32 + 0.3 * c as f32).sin() * 0.2;
                        img[c * vox + i] = offs[label as usize][c] + texture + rng.random_range(-0.2..0.2);
                    }
                }
            }
        }
        (img, seg)
    }

    fn batch_of(items: &[(Vec<f32>, Vec<i64>)], n: i64, tasks: Vec<[Option<bool>; TASKS]>) -> Batch {
        let imgs: Vec<Tensor> = items.iter().map(|(i, _)| Tensor::from_slice(i).view([1, 4, n, n, n])).collect();
        let segs: Vec<Tensor> = items.iter().map(|(_, s)| Tensor::from_slice(s).view([1, n, n, n])).collect();
        Batch {
            image: Tensor::cat(&imgs, 0),
            seg: Tensor::cat(&segs, 0),
            present: vec![[true; MODALITIES]; items.len()],
            tasks,
            global: None,
            soft: None,
        }
    }

    fn random_batch(tasks: Vec<[Option<bool>; TASKS]>) -> Batch {
        let b = tasks.len() as i64;
        tch::manual_seed(11);
        Batch {
            image: Tensor::randn([b, 4, 32, 32, 32], (Kind::Float, Device::Cpu)),
            seg: Tensor::randint(4, [b, 32, 32, 32], (Kind::Int64, Device::Cpu)),
            present: vec![[true; MODALITIES]; b as usize],
            tasks,
            global: None,
            soft: None,
        }
    }

    fn grad_norm(t: &Tensor) -> Option<f64> {
        let g = t.grad();
        g.defined().then(|| g.abs().sum(Kind::Double).double_value(&[]))
    }

    #[test]
    fn gradients_reach_every_parameter() {
        for cfg in [ModelConfig::tiny(), ModelConfig::tiny().with_transformer(false)] {
            let trainer = Trainer::new(cfg, TrainConfig::default(), 4, Device::Cpu).unwrap();
            let batch = random_batch(vec![
                [Some(true), Some(false), Some(true), Some(false)],
                [Some(false), Some(true), Some(false), Some(true)],
            ]);
            let (total, report) = trainer.objective(&batch, true).unwrap();
            assert!(report.tasks.iter().all(Option::is_some));
            assert!(report.global_dice.is_some());
            total.backward();
            let mut dead = Vec::new();
            for (name, var) in trainer.var_store().variables() {
                if var.requires_grad() && !grad_norm(&var).is_some_and(|g| g > 0.0) {
                    dead.push(name);
                }
            }
            assert!(dead.is_empty(), "parameters without gradient: {dead:?}");
            let g = Vec::<f32>::try_from(&trainer.log_sigma().grad()).unwrap();
            assert!(g.iter().all(|&v| v != 0.0), "{g:?}");
        }
    }

    #[test]
    fn missing_label_gives_zero_gradient_to_its_head() {
        let trainer = Trainer::new(ModelConfig::tiny(), TrainConfig::default(), 4, Device::Cpu).unwrap();
        // 1p/19q unlabeled everywhere; grade labeled for the first sample only.
        let batch =
            random_batch(vec![[Some(true), Some(false), None, Some(true)], [None, Some(true), None, Some(false)]]);
        let (total, report) = trainer.objective(&batch, true).unwrap();
        assert!(report.tasks[2].is_none() && report.tasks[0].is_some());
        total.backward();
        for (name, var) in trainer.var_store().variables() {
            if name.starts_with("classifier.codel_1p19q.") {
                assert!(grad_norm(&var).unwrap_or(0.0) == 0.0, "{name} got gradient");
            }
            if name.starts_with("classifier.idh_mutant.") || name.starts_with("classifier.grade_gbm.") {
                assert!(grad_norm(&var).unwrap_or(0.0) > 0.0, "{name} got no gradient");
            }
        }
        let g = Vec::<f32>::try_from(&trainer.log_sigma().grad()).unwrap();
        assert_eq!(g[3], 0.0);
        assert!(g[1] != 0.0 && g[2] != 0.0);

        // The grade loss only sees sample 0: same value as a batch of sample 0 alone.
        let only0 = Batch {
            image: batch.image.narrow(0, 0, 1),
            seg: batch.seg.narrow(0, 0, 1),
            present: vec![[true; 4]],
            tasks: vec![[Some(true), None, None, None]],
            global: None,
            soft: None,
        };
        let out = tch::no_grad(|| trainer.net().forward(&batch.image, &batch.present, None, false, false)).unwrap();
        let want = loss::weighted_cross_entropy(
            &out.tasks.select(1, 0).narrow(0, 0, 1),
            &Tensor::from_slice(&[1i64]),
            &[1.0, 1.0],
        );
        let (_, r0) = tch::no_grad(|| trainer.objective(&only0, false)).unwrap();
        let (_, rb) = tch::no_grad(|| trainer.objective(&batch, false)).unwrap();
        assert!((r0.tasks[0].unwrap() - want.double_value(&[])).abs() < 1e-5);
        assert!((rb.tasks[0].unwrap() - want.double_value(&[])).abs() < 1e-5);
    }

    #[test]
    fn soft_targets_reach_the_classification_loss() {
        let trainer = Trainer::new(ModelConfig::tiny(), TrainConfig::default(), 5, Device::Cpu).unwrap();
        let mut batch = random_batch(vec![[Some(true), None, None, None]]);
        let loss_at = |batch: &Batch| tch::no_grad(|| trainer.objective(batch, false)).unwrap().1.tasks[0].unwrap();
        let hard_pos = loss_at(&batch);
        batch.soft = Some(vec![[Some(0.0), None, None, None]]);
        let hard_neg = loss_at(&batch);
        batch.soft = Some(vec![[Some(0.25), None, None, None]]);
        let mixed = loss_at(&batch);
        assert!((hard_pos - hard_neg).abs() > 1e-4, "the two classes must differ: {hard_pos} {hard_neg}");
        assert!((mixed - (0.25 * hard_pos + 0.75 * hard_neg)).abs() < 1e-5, "{mixed}");
        // Soft rows replace the hard labels: no soft value = no loss for the task.
        batch.soft = Some(vec![[None; TASKS]]);
        assert!(tch::no_grad(|| trainer.objective(&batch, false)).unwrap().1.tasks[0].is_none());
        batch.soft = Some(vec![[Some(1.5), None, None, None]]);
        assert!(trainer.objective(&batch, false).is_err());
    }

    #[test]
    fn weight_average_is_what_the_model_gets_and_checkpoints_keep_the_raw_weights() {
        let tcfg = TrainConfig { weight_ema: Some(0.5), ..TrainConfig::default() };
        let mut trainer = Trainer::new(ModelConfig::tiny(), tcfg, 6, Device::Cpu).unwrap();
        let start = snapshot(trainer.var_store(), "");
        let batch = random_batch(vec![[Some(true), Some(false), None, None]]);
        trainer.step(&batch).unwrap();
        let raw = snapshot(trainer.var_store(), "");
        let avg = snapshot(trainer.weight_average().unwrap().var_store(), "");
        let weights_of = |a: Analyzer| {
            let (mut vs, _) = net::build(&ModelConfig::tiny(), Device::Cpu, None).unwrap();
            a.copy_weights_into(&mut vs).unwrap();
            snapshot(&vs, "")
        };
        let saved = weights_of(trainer.analyzer("m", serde_json::Value::Null).unwrap());
        let ckpt = weights_of(trainer.raw_analyzer("m", serde_json::Value::Null).unwrap());
        assert_eq!(saved, avg);
        assert_eq!(ckpt, raw);
        assert_ne!(avg, raw);
        // After one step with decay 0.5 the average is halfway between the start and the step.
        let conv = "encoder.stem";
        let pick = |s: &[(String, Vec<u8>)]| -> Vec<f32> {
            let (_, bytes) = s.iter().find(|(n, _)| n.starts_with(conv) && n.ends_with("weight")).unwrap();
            bytes.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        let (s0, s1, m) = (pick(&start), pick(&raw), pick(&avg));
        for i in 0..s0.len() {
            assert!((m[i] - 0.5 * (s0[i] + s1[i])).abs() < 1e-6);
        }
        assert!(
            Trainer::new(
                ModelConfig::tiny(),
                TrainConfig { weight_ema: Some(1.0), ..TrainConfig::default() },
                6,
                Device::Cpu
            )
            .is_err()
        );
    }

    #[test]
    fn single_task_ablation_trains_only_that_head() {
        let tcfg = TrainConfig { segmentation: false, tasks: [false, true, false, false], ..TrainConfig::default() };
        let trainer = Trainer::new(ModelConfig::tiny(), tcfg, 4, Device::Cpu).unwrap();
        let batch = random_batch(vec![
            [Some(true), Some(false), Some(true), Some(true)],
            [Some(false), Some(true), None, None],
        ]);
        let (total, report) = trainer.objective(&batch, true).unwrap();
        assert!(report.tasks[1].is_some() && report.tasks[0].is_none() && report.tasks[3].is_none());
        total.backward();
        for (name, var) in trainer.var_store().variables() {
            let g = grad_norm(&var).unwrap_or(0.0);
            if name.starts_with("classifier.idh_mutant.") {
                assert!(g > 0.0, "{name} got no gradient");
            }
            if name.starts_with("classifier.grade_gbm.") || name.starts_with("classifier.mgmt_methylated.") {
                assert_eq!(g, 0.0, "{name} got gradient");
            }
        }
        let g = Vec::<f32>::try_from(&trainer.log_sigma().grad()).unwrap();
        assert_eq!((g[0], g[1], g[3], g[4]), (0.0, 0.0, 0.0, 0.0));
        assert!(g[2] != 0.0);
        // A batch without an IDH label has nothing to learn: zero loss, no error.
        let none = random_batch(vec![[Some(true), None, None, None]]);
        let (total, _) = trainer.objective(&none, true).unwrap();
        assert_eq!(total.double_value(&[]), 0.0);
    }

    #[test]
    fn tiny_profile_overfits_two_synthetic_volumes() {
        let n = 32usize;
        let vols = [synthetic(n, [12.0, 14.0, 16.0], 9.0, 1), synthetic(n, [19.0, 17.0, 13.0], 7.0, 2)];
        let batch = batch_of(
            &vols,
            n as i64,
            vec![[Some(true), Some(false), None, Some(true)], [Some(false), Some(true), Some(true), None]],
        );
        let tcfg = TrainConfig { lr: 3e-3, ..TrainConfig::default() };
        let mut trainer = Trainer::new(ModelConfig::tiny(), tcfg, 1, Device::Cpu).unwrap();
        let start = std::time::Instant::now();
        let mut best = 0.0;
        let mut first = None;
        for step in 1..=150 {
            let l = trainer.step(&batch).unwrap();
            first.get_or_insert(l.seg_dice);
            if step % 5 != 0 || step < 20 {
                continue;
            }
            let a = trainer.analyzer("overfit", serde_json::Value::Null).unwrap();
            let dice: Vec<f64> = vols
                .iter()
                .map(|(img, seg)| {
                    let p = a.analyze(img, [n; 3], [true; 4], &InferOptions::default()).unwrap();
                    let (mut inter, mut total) = (0.0, 0.0);
                    for (pl, tl) in p.labels.iter().zip(seg) {
                        let (pf, tf) = (*pl != 0, *tl != 0);
                        inter += f64::from(u8::from(pf && tf));
                        total += f64::from(u8::from(pf)) + f64::from(u8::from(tf));
                    }
                    2.0 * inter / total
                })
                .collect();
            let worst = dice.iter().cloned().fold(f64::INFINITY, f64::min);
            eprintln!("step {step}: loss {:.4} fg dice {dice:?} ({:.1?})", l.total, start.elapsed());
            best = worst;
            if worst > 0.9 {
                assert!(l.seg_dice < first.unwrap());
                return;
            }
        }
        panic!("foreground Dice only reached {best:.3} in 150 steps");
    }

    fn snapshot(vs: &nn::VarStore, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = vs
            .variables()
            .into_iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, t)| {
                let flat = t.detach().to_kind(Kind::Float).flatten(0, -1);
                let v = Vec::<f32>::try_from(&flat).unwrap();
                (n, v.iter().flat_map(|x| x.to_le_bytes()).collect())
            })
            .collect();
        out.sort();
        out
    }

    fn adaptation_batch() -> Batch {
        let n = 32usize;
        let vols = [synthetic(n, [12.0, 14.0, 16.0], 9.0, 1), synthetic(n, [19.0, 17.0, 13.0], 7.0, 2)];
        batch_of(&vols, n as i64, vec![[Some(true), Some(false), None, None], [Some(false), Some(true), None, None]])
    }

    fn mean(v: &[f64]) -> f64 {
        v.iter().sum::<f64>() / v.len() as f64
    }

    /// Each adaptation stage's own loss goes down over a short run on a fixed batch.
    #[test]
    fn adaptation_stage_losses_decrease() {
        let batch = adaptation_batch();
        let tcfg = TrainConfig { lr: 2e-3, ..TrainConfig::default() };
        // Stage 1: feature MSE between pathways and the partial pathway's segmentation loss.
        let mut t = Trainer::new(ModelConfig::tiny(), tcfg.clone(), 3, Device::Cpu)
            .unwrap()
            .with_mode(TrainMode::Distill, AdaptConfig::default())
            .unwrap();
        let (mut mse, mut pseg, mut total) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..30 {
            let l = t.step(&batch).unwrap();
            mse.push(l.distill.unwrap());
            pseg.push(l.partial_seg.unwrap());
            total.push(l.total);
        }
        eprintln!("distill mse {mse:.3?}\npartial seg {pseg:.3?}\ntotal {total:.3?}");
        let (head, tail) = (..5, 25..);
        assert!(mean(&total[tail.clone()]) < mean(&total[head]));
        assert!(mean(&pseg[tail.clone()]) < mean(&pseg[head]));
        assert!(mean(&mse[tail]) < mean(&mse[head]));

        // Stage 2: SimSiam loss of the two modality views (starts near 0, best is -1).
        let w = tempfile::tempdir().unwrap();
        let path = w.path().join("stage1.safetensors");
        t.save(&path, "stage1", serde_json::Value::Null).unwrap();
        let mut c = Trainer::from_weights(&path, tcfg.clone(), Device::Cpu)
            .unwrap()
            .with_mode(TrainMode::Contrastive, AdaptConfig::default())
            .unwrap();
        let head_before = snapshot(c.var_store(), "decoder.");
        let enc_before = snapshot(c.var_store(), ENCODER_PREFIX);
        let cl: Vec<f64> = (0..20).map(|_| c.step(&batch).unwrap().contrastive.unwrap()).collect();
        eprintln!("contrastive {cl:.3?}");
        assert!(mean(&cl[15..]) < mean(&cl[..5]) - 0.05, "{cl:?}");
        assert!(cl.iter().all(|v| (-1.0..=1.0).contains(v)));
        // Only the encoder (and the heads, outside the model) learn in stage 2.
        assert_eq!(snapshot(c.var_store(), "decoder."), head_before);
        assert_ne!(snapshot(c.var_store(), ENCODER_PREFIX), enc_before);

        // Stage 3: supervised objective with the encoder frozen.
        c.save(&path, "stage2", serde_json::Value::Null).unwrap();
        let mut f = Trainer::from_weights(&path, tcfg, Device::Cpu)
            .unwrap()
            .with_mode(TrainMode::Finetune, AdaptConfig::default())
            .unwrap();
        let sup: Vec<f64> = (0..20).map(|_| f.step(&batch).unwrap().seg).collect();
        eprintln!("finetune seg {sup:.3?}");
        assert!(mean(&sup[15..]) < mean(&sup[..5]));
    }

    /// Stage 3 leaves every encoder tensor (weights, BatchNorm running statistics, the eq. (1)
    /// fusion logits) bit-identical while the rest of the network changes.
    #[test]
    fn finetune_leaves_encoder_bit_identical() {
        let batch = adaptation_batch();
        let mut t = Trainer::new(ModelConfig::tiny(), TrainConfig::default(), 9, Device::Cpu)
            .unwrap()
            .with_mode(TrainMode::Finetune, AdaptConfig::default())
            .unwrap();
        let enc = snapshot(t.var_store(), ENCODER_PREFIX);
        assert!(enc.iter().any(|(n, _)| n.contains("running_mean")) && enc.iter().any(|(n, _)| n.contains("stem")));
        let rest = snapshot(t.var_store(), "decoder.");
        let cls = snapshot(t.var_store(), "classifier.");
        for _ in 0..3 {
            t.step(&batch).unwrap();
        }
        assert_eq!(snapshot(t.var_store(), ENCODER_PREFIX), enc, "an encoder tensor changed");
        assert_ne!(snapshot(t.var_store(), "decoder."), rest);
        assert_ne!(snapshot(t.var_store(), "classifier."), cls);
        // Switching back to supervised training unfreezes it.
        let mut t = t.with_mode(TrainMode::Supervised, AdaptConfig::default()).unwrap();
        t.step(&batch).unwrap();
        assert_ne!(snapshot(t.var_store(), ENCODER_PREFIX), enc);
    }
}
