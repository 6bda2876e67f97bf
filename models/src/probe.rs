//! Fixed workloads for benchmarks that compare this network with other implementations: a
//! seeded logit check, a whole-volume inference probe and a random training batch.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::ModelError;
use crate::train::{Batch, TrainConfig, Trainer};

/// Writes the eval-mode outputs of the model at `model` on a seeded `[1, 4, 32, 48, 40]` input
/// to `path` (safetensors: `input`, `present`, `seg`, `tasks`), for a replica to compare.
pub fn write_logit_check(model: &Path, path: &Path) -> Result<(), ModelError> {
    tch::manual_seed(7);
    let x = Tensor::randn([1, 4, 32, 48, 40], (Kind::Float, Device::Cpu));
    let trainer = Trainer::from_weights(model, TrainConfig::default(), Device::Cpu)?;
    let out = tch::no_grad(|| trainer.net().forward(&x, &[[true; 4]], None, false, false))?;
    let present = Tensor::ones([1, 4], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(&[("input", &x), ("present", &present), ("seg", &out.seg), ("tasks", &out.tasks)], path)?;
    Ok(())
}

/// One whole-volume forward pass (eval mode, no gradient) of the model at `model` on a seeded
/// random input of `[1, 4, d, h, w]`.
pub struct InferenceProbe {
    trainer: Trainer,
    x: Tensor,
}

impl InferenceProbe {
    pub fn new(model: &Path, [d, h, w]: [i64; 3]) -> Result<Self, ModelError> {
        let trainer = Trainer::from_weights(model, TrainConfig::default(), Device::Cpu)?;
        tch::manual_seed(0);
        let x = Tensor::randn([1, 4, d, h, w], (Kind::Float, Device::Cpu));
        Ok(Self { trainer, x })
    }

    /// Runs the forward pass once.
    pub fn run(&self) -> Result<(), ModelError> {
        tch::no_grad(|| self.trainer.net().forward(&self.x, &[[true; 4]], None, false, false))?;
        Ok(())
    }
}

/// A random training batch of `b` patches of `[d, h, w]`: image, labels 0..3 and three of the
/// four task labels (what `models/bench/torch_net.py` builds too).
pub fn random_train_batch(b: i64, [d, h, w]: [i64; 3]) -> Batch {
    Batch {
        image: Tensor::randn([b, 4, d, h, w], (Kind::Float, Device::Cpu)),
        seg: Tensor::randint(4, [b, d, h, w], (Kind::Int64, Device::Cpu)),
        tasks: vec![[Some(true), Some(false), None, Some(true)]; b as usize],
        present: vec![[true; 4]; b as usize],
        global: None,
        soft: None,
    }
}
