//! The run config of a training program (`[data]`, `[model]`, `[train]`, `[augment]`, `[adapt]`,
//! `[ssl]` tables): parsing, path resolution, defaults and the checks parsing cannot do.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{FitError, io_err};
use crate::adapt::{AdaptConfig, TrainMode};
use crate::augment::AugmentConfig;
use crate::config::{ModelConfig, TASKS};
use crate::data::{ClassBalance, DataConfig, Subset, join_clean};
use crate::train::{OptimizerKind, TrainConfig};

/// Learning-rate schedule over the run's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Constant.
    Constant,
    /// `lr * (1 - t / T)^power` (nnU-Net's poly decay; the paper's "gradually reducing").
    #[default]
    Poly,
    /// `min_lr + (lr - min_lr) (1 + cos(pi t / T)) / 2`.
    Cosine,
}

/// Whether eq. (5) class weights come from the training labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeightMode {
    /// Inverse frequency from the training set (see [`crate::data::class_weights`]).
    #[default]
    Auto,
    /// `[1, 1]` for every task.
    None,
}

/// The network to train (the `[model]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Profile name (`tiny`, `small`, `paper`); ignored when `config` is given.
    pub profile: Option<String>,
    /// A full network configuration (`[model.config]`).
    pub config: Option<ModelConfig>,
    /// Override of the training patch `[d, h, w]` (multiples of 8).
    pub patch: Option<[usize; 3]>,
    /// Override of the inference window `[d, h, w]`.
    pub infer_window: Option<[usize; 3]>,
    /// Transformer bottleneck on / off.
    pub transformer: Option<bool>,
    /// Global branch on / off.
    pub global_branch: Option<bool>,
    /// Dropout probability.
    pub dropout: Option<f64>,
    /// Decoder dropout probability (0 = off; see [`ModelConfig::decoder_dropout`]).
    #[serde(default)]
    pub decoder_dropout: Option<f64>,
    /// Start from these weights (fine-tuning) instead of a seeded initialisation.
    pub init: Option<PathBuf>,
}

impl ModelSection {
    /// The resolved network configuration.
    pub fn resolve(&self) -> Result<ModelConfig, FitError> {
        let mut cfg = match (&self.config, &self.profile) {
            (Some(c), _) => c.clone(),
            (None, Some(p)) => ModelConfig::profile(p)?,
            (None, None) => ModelConfig::small(),
        };
        if let Some(p) = self.patch {
            cfg.patch = p;
            if self.infer_window.is_none() {
                cfg.infer_window = std::array::from_fn(|a| cfg.infer_window[a].max(p[a]));
            }
        }
        if let Some(w) = self.infer_window {
            cfg.infer_window = w;
        }
        if let Some(t) = self.transformer {
            cfg.transformer = t;
        }
        if let Some(g) = self.global_branch {
            cfg.global_branch = g;
        }
        if let Some(d) = self.dropout {
            cfg.dropout = d;
        }
        if let Some(d) = self.decoder_dropout {
            cfg.decoder_dropout = d;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

fn default_batch() -> usize {
    2
}
fn default_prefetch() -> usize {
    2
}
fn default_one() -> usize {
    1
}
fn default_poly() -> f64 {
    0.9
}

/// Optimisation settings (the `[train]` table). Unset loss / optimiser fields take
/// [`TrainConfig::default`]'s values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// What is optimised: `supervised` (default), or an adaptation stage: `distill`,
    /// `contrastive`, `finetune` (see [`crate::adapt`]).
    #[serde(default)]
    pub mode: TrainMode,
    /// `sgd` or `adamw`.
    pub optimizer: Option<OptimizerKind>,
    /// Peak learning rate.
    pub lr: Option<f64>,
    /// SGD momentum.
    pub momentum: Option<f64>,
    /// Weight decay.
    pub weight_decay: Option<f64>,
    /// Learning rate of the eq. (7) `log sigma` parameters.
    pub sigma_lr: Option<f64>,
    /// Gradient-norm clip (0 = off).
    pub grad_clip: Option<f64>,
    /// Weight of the voxel cross-entropy added to the Dice loss.
    pub seg_ce_weight: Option<f64>,
    /// Weight of the global-branch Dice loss.
    pub global_seg_weight: Option<f64>,
    /// Dice epsilon.
    pub dice_eps: Option<f64>,
    /// eq. (7) on / off.
    pub uncertainty_weighting: Option<bool>,
    /// Class weights of eq. (5).
    #[serde(default)]
    pub class_weights: ClassWeightMode,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: Schedule,
    /// Exponent of the poly schedule.
    #[serde(default = "default_poly")]
    pub poly_power: f64,
    /// Floor of the cosine schedule.
    #[serde(default)]
    pub min_lr: f64,
    /// Linear warm-up steps.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Epochs (one epoch = `steps_per_epoch` steps); exclusive with `steps`.
    pub epochs: Option<usize>,
    /// Total steps; exclusive with `epochs`.
    pub steps: Option<usize>,
    /// Steps per epoch (default: one pass over the training cases).
    pub steps_per_epoch: Option<usize>,
    /// Samples per step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Batches prepared ahead by the augmentation thread.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Checkpoint every N epochs (and at the end).
    #[serde(default = "default_one")]
    pub checkpoint_every: usize,
    /// Train the segmentation loss (default true; false for a classification-only ablation).
    #[serde(default)]
    pub segmentation: Option<bool>,
    /// Classification tasks trained, `[grade, idh, codel, mgmt]` (default all; one true =
    /// single-task ablation).
    #[serde(default)]
    pub tasks: Option<[bool; TASKS]>,
    /// Decay of the exponential moving average of the weights that the saved model gets
    /// (e.g. 0.999; unset = the last weights).
    #[serde(default)]
    pub weight_ema: Option<f64>,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            mode: TrainMode::Supervised,
            optimizer: None,
            lr: None,
            momentum: None,
            weight_decay: None,
            sigma_lr: None,
            grad_clip: None,
            seg_ce_weight: None,
            global_seg_weight: None,
            dice_eps: None,
            uncertainty_weighting: None,
            class_weights: ClassWeightMode::Auto,
            schedule: Schedule::Poly,
            poly_power: 0.9,
            min_lr: 0.0,
            warmup_steps: 0,
            epochs: None,
            steps: None,
            steps_per_epoch: None,
            batch_size: 2,
            prefetch: 2,
            checkpoint_every: 1,
            segmentation: None,
            tasks: None,
            weight_ema: None,
        }
    }
}

impl TrainSection {
    /// The trainer's settings, with eq. (5) weights from `balance`.
    pub fn train_config(&self, balance: &ClassBalance) -> TrainConfig {
        // Field by field, so that fields added to `TrainConfig` keep their defaults.
        let mut t = TrainConfig::default();
        t.optimizer = self.optimizer.unwrap_or(t.optimizer);
        t.lr = self.lr.unwrap_or(t.lr);
        t.momentum = self.momentum.unwrap_or(t.momentum);
        t.weight_decay = self.weight_decay.unwrap_or(t.weight_decay);
        t.sigma_lr = self.sigma_lr.unwrap_or(t.sigma_lr);
        t.grad_clip = match self.grad_clip {
            Some(c) if c <= 0.0 => None,
            Some(c) => Some(c),
            None => t.grad_clip,
        };
        t.task_class_weights = match self.class_weights {
            ClassWeightMode::Auto => balance.weights,
            ClassWeightMode::None => [[1.0, 1.0]; TASKS],
        };
        t.seg_ce_weight = self.seg_ce_weight.unwrap_or(t.seg_ce_weight);
        t.global_seg_weight = self.global_seg_weight.unwrap_or(t.global_seg_weight);
        t.dice_eps = self.dice_eps.unwrap_or(t.dice_eps);
        t.uncertainty_weighting = self.uncertainty_weighting.unwrap_or(t.uncertainty_weighting);
        t.segmentation = self.segmentation.unwrap_or(t.segmentation);
        t.tasks = self.tasks.unwrap_or(t.tasks);
        t.weight_ema = self.weight_ema;
        t
    }

    /// Learning rate at `step` of `total` for peak `lr`.
    pub fn lr_at(&self, lr: f64, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let t = ((step - self.warmup_steps) as f64 / span).clamp(0.0, 1.0);
        match self.schedule {
            Schedule::Constant => lr,
            Schedule::Poly => lr * (1.0 - t).powf(self.poly_power),
            Schedule::Cosine => self.min_lr + (lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
        }
    }
}

fn default_device() -> String {
    "auto".into()
}

fn default_validate_on() -> Subset {
    Subset::Val
}

/// A whole training run (one TOML file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRunConfig {
    /// Model name written into the card (default: the network config's name).
    pub name: Option<String>,
    /// Seed of the initialisation, the split shuffles and the augmentation stream.
    #[serde(default)]
    pub seed: u64,
    /// Output folder (relative paths are relative to the config file).
    pub out: PathBuf,
    /// libtorch CPU threads (0 = libtorch's default).
    #[serde(default)]
    pub threads: usize,
    /// `auto`, `cpu`, `cuda`, `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Validate every N epochs (0 = only at the end).
    #[serde(default = "default_one")]
    pub validate_every: usize,
    /// Which cases to validate on: `val` (default) or `train` (to watch fitting).
    #[serde(default = "default_validate_on")]
    pub validate_on: Subset,
    /// Validate on at most this many cases (the first ones by name).
    pub validate_max_cases: Option<usize>,
    /// Stop early once the validation WT Dice reaches this.
    pub stop_at_wt_dice: Option<f64>,
    /// Training-time budget in seconds (all processes of a resumed run together): the
    /// learning-rate schedule follows the elapsed share of it (or of the steps, whichever is
    /// further along) and the run ends, validated and saved, when it is spent. The steps
    /// are then an upper bound.
    #[serde(default)]
    pub max_train_seconds: Option<f64>,
    /// Data.
    pub data: DataConfig,
    /// Network.
    #[serde(default)]
    pub model: ModelSection,
    /// Optimisation.
    #[serde(default)]
    pub train: TrainSection,
    /// Augmentation.
    #[serde(default)]
    pub augment: AugmentConfig,
    /// Settings of the adaptation stages (`train.mode` other than `supervised`).
    #[serde(default)]
    pub adapt: AdaptConfig,
    /// Settings of the semi-supervised modes (`ssl-pseudo`, `ssl-consistency`, `fixmatch`).
    #[serde(default)]
    pub ssl: crate::ssl::SslConfig,
}

impl TrainRunConfig {
    /// Parses TOML text; relative paths are resolved against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, FitError> {
        let mut cfg: Self = toml::from_str(text).map_err(|e| FitError::Config(e.to_string()))?;
        cfg.data.resolve_paths(base);
        cfg.out = join_clean(base, &cfg.out);
        if let Some(p) = &mut cfg.model.init {
            *p = join_clean(base, p);
        }
        if let Some(u) = &mut cfg.ssl.unlabeled {
            u.resolve_paths(base);
        }
        if let Some(p) = &mut cfg.ssl.labeller {
            *p = join_clean(base, p);
        }
        Ok(cfg)
    }

    /// Reads a TOML run config file.
    pub fn load(path: &Path) -> Result<Self, FitError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base).map_err(|e| match e {
            FitError::Config(m) => FitError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// The resolved config as TOML.
    pub fn to_toml(&self) -> Result<String, FitError> {
        toml::to_string_pretty(self).map_err(|e| FitError::Config(e.to_string()))
    }

    /// Checks the settings that parsing cannot (ranges, exclusive fields, the network config).
    pub fn check(&self) -> Result<(), FitError> {
        let t = &self.train;
        let bad = |m: String| Err(FitError::Config(m));
        match (t.epochs, t.steps) {
            (Some(_), Some(_)) => return bad("set either train.epochs or train.steps, not both".into()),
            (None, None) => return bad("set train.epochs or train.steps".into()),
            (Some(0), _) | (_, Some(0)) => return bad("train.epochs / train.steps must be positive".into()),
            _ => {}
        }
        if t.batch_size == 0 || t.steps_per_epoch == Some(0) {
            return bad("train.batch_size and train.steps_per_epoch must be positive".into());
        }
        if let Some(lr) = t.lr
            && !(lr.is_finite() && lr > 0.0)
        {
            return bad(format!("train.lr = {lr}: expected a positive number"));
        }
        if let Some(m) = self.max_train_seconds
            && !(m.is_finite() && m > 0.0)
        {
            return bad(format!("max_train_seconds = {m}: expected a positive number of seconds"));
        }
        if let Some(d) = t.weight_ema
            && !(0.0..1.0).contains(&d)
        {
            return bad(format!("train.weight_ema = {d}: expected a decay in [0, 1)"));
        }
        if let Some(n) = &self.name
            && (n.is_empty() || n.contains(['@', '/', '\\']))
        {
            return bad(format!("name {n:?} must be non-empty without '@', '/', '\\'"));
        }
        self.augment.validate()?;
        self.adapt.validate()?;
        self.ssl.validate()?;
        if matches!(t.mode, TrainMode::SslPseudo | TrainMode::SslConsistency | TrainMode::FixMatch)
            && self.ssl.unlabeled.is_none()
        {
            return bad(format!(
                "train.mode = \"{}\" needs [ssl.unlabeled] (dirs of unlabeled cases)",
                t.mode.as_str()
            ));
        }
        if t.mode == TrainMode::SslPseudo && self.ssl.labeller.is_none() && self.model.init.is_none() {
            return bad("train.mode = \"ssl-pseudo\" needs the labelling model: ssl.labeller or model.init".into());
        }
        if matches!(t.mode, TrainMode::Contrastive | TrainMode::Finetune) && self.model.init.is_none() {
            return bad(format!(
                "train.mode = \"{}\" continues an earlier stage: set model.init to that stage's model",
                t.mode.as_str()
            ));
        }
        Ok(())
    }
}
