//! Network hyper-parameters (`ModelConfig`) and the named profiles tiny / small / medium /
//! paper. Every size the network uses comes from here; the config is stored beside the weights.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Number of MRI modalities, in the order t1, t1ce, t2, flair.
pub const MODALITIES: usize = 4;
/// Modality names in channel order.
pub const MODALITY_NAMES: [&str; MODALITIES] = ["t1", "t1ce", "t2", "flair"];
/// Segmentation classes: background, NCR, ED, ET (network indices 0..3).
pub const SEG_CLASSES: usize = 4;
/// Classification tasks, in head order.
pub const TASKS: usize = 4;
/// Task names in head order.
pub const TASK_NAMES: [&str; TASKS] = ["grade_gbm", "idh_mutant", "codel_1p19q", "mgmt_methylated"];
/// Total down-sampling factor of the backbone encoder (three stride-2 stages).
pub const BACKBONE_STRIDE: usize = 8;
/// Total down-sampling factor of the global U-Net (two stride-2 stages).
pub const GLOBAL_STRIDE: usize = 4;

/// All sizes of the GMMAS network. Spatial triples are `[depth, height, width]` = `[z, y, x]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Model family name, used in versions and file metadata (e.g. `gmmas-small`).
    pub name: String,
    /// Training patch size; the positional embedding is sized for `patch / 8`.
    pub patch: [usize; 3],
    /// Largest window used at inference. Volumes up to this size (rounded up to a
    /// multiple of 8) are processed in one pass, larger ones with a sliding window of
    /// this size. Must be at least `patch` on every axis.
    pub infer_window: [usize; 3],
    /// Encoder widths per level; `channels[0]` is also the width of each modality stem.
    pub channels: [usize; 4],
    /// Residual blocks per encoder level.
    pub enc_blocks: [usize; 4],
    /// Transformer bottleneck on (GMMAS) or off (the "ConvNet" ablation).
    pub transformer: bool,
    /// Token embedding width.
    pub embed_dim: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Attention heads (must divide `embed_dim`).
    pub heads: usize,
    /// Hidden width of the transformer MLP as a multiple of `embed_dim`.
    pub mlp_ratio: usize,
    /// Global-feature branch (U-Net over the down-sampled whole volume) on/off.
    pub global_branch: bool,
    /// Size the whole volume is resampled to for the global branch (multiple of 4).
    pub global_size: [usize; 3],
    /// Global U-Net widths per level.
    pub global_channels: [usize; 3],
    /// Width of the shared "Summarize" layer of the classifier (branches use half).
    pub cls_hidden: usize,
    /// Dropout probability (transformer MLP, bottleneck, classifier); MC-Dropout uses it.
    pub dropout: f64,
    /// Element-wise dropout on the three decoder levels' features (0 = off, the default, so
    /// configs and bundled weights written before this setting keep their meaning and
    /// bytes). It has no variables; it makes MC-Dropout voxel uncertainty informative, which
    /// the pseudo-label voxel selection of [`crate::ssl`] needs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub decoder_dropout: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

impl ModelConfig {
    /// Test-sized profile: 32^3 patches, 8..64 channels, one 2-head transformer layer.
    pub fn tiny() -> Self {
        let small = Self::small();
        Self {
            name: "gmmas-tiny".into(),
            patch: [32; 3],
            infer_window: [32; 3],
            // Half of `small`'s widths.
            channels: small.channels.map(|c| c / 2),
            global_channels: small.global_channels.map(|c| c / 2),
            embed_dim: 32,
            layers: 1,
            heads: 2,
            global_size: [16; 3],
            cls_hidden: 32,
            ..small
        }
    }

    /// CPU default: 16-channel stems, 96^3 training patches, 128-wide 2-layer transformer.
    /// Whole cropped brains (up to 160x192x160) are analysed in one window.
    pub fn small() -> Self {
        Self {
            name: "gmmas-small".into(),
            patch: [96, 96, 96],
            infer_window: [160, 192, 160],
            channels: [16, 32, 64, 128],
            enc_blocks: [1, 1, 1, 1],
            transformer: true,
            embed_dim: 128,
            layers: 2,
            heads: 4,
            mlp_ratio: 2,
            global_branch: true,
            global_size: [48, 48, 48],
            global_channels: [8, 16, 32],
            cls_hidden: 64,
            dropout: 0.1,
            decoder_dropout: 0.0,
        }
    }

    /// Between `small` and `paper`, sized to train usefully in about two hours on a 2-core
    /// CPU at 80³ crops: `small` with a wider transformer (256, 3 layers), deeper lower encoder,
    /// dropout on the decoder path (0.1) so that MC-Dropout uncertainty reaches the voxels.
    pub fn medium() -> Self {
        Self {
            name: "gmmas-medium".into(),
            patch: [80, 80, 80],
            enc_blocks: [1, 1, 2, 2],
            embed_dim: 256,
            layers: 3,
            cls_hidden: 128,
            decoder_dropout: 0.1,
            ..Self::small()
        }
    }

    /// The sizes of the paper: 128^3 crops, 16-channel stems, encoder 16/32/64/128,
    /// 512-wide embedding, 4 transformer layers with 4 heads (as the paper states).
    pub fn paper() -> Self {
        Self {
            name: "gmmas-paper".into(),
            patch: [128, 128, 128],
            infer_window: [128, 128, 128],
            enc_blocks: [1, 2, 2, 2],
            embed_dim: 512,
            layers: 4,
            mlp_ratio: 4,
            global_size: [64, 64, 64],
            global_channels: [16, 32, 64],
            cls_hidden: 256,
            ..Self::small()
        }
    }

    /// Looks a profile up by name (`tiny`, `small`, `paper`).
    pub fn profile(name: &str) -> Result<Self, ModelError> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "small" => Ok(Self::small()),
            "medium" => Ok(Self::medium()),
            "paper" => Ok(Self::paper()),
            other => {
                Err(ModelError::Config(format!("unknown profile {other:?} (expected tiny, small, medium or paper)")))
            }
        }
    }

    /// Same config with the transformer switched on/off ("ConvNet" ablation when off).
    pub fn with_transformer(mut self, on: bool) -> Self {
        self.transformer = on;
        self
    }

    /// Same config with the global branch switched on/off.
    pub fn with_global_branch(mut self, on: bool) -> Self {
        self.global_branch = on;
        self
    }

    /// Same config with another dropout probability.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self
    }

    /// Same config with another decoder dropout probability.
    pub fn with_decoder_dropout(mut self, p: f64) -> Self {
        self.decoder_dropout = p;
        self
    }

    /// Width of the bottleneck feature map handed to the decoder and classifier.
    pub fn bottleneck_width(&self) -> usize {
        if self.transformer { self.embed_dim } else { self.channels[3] }
    }

    /// Token grid of the positional embedding (`patch / 8`).
    pub fn token_grid(&self) -> [usize; 3] {
        self.patch.map(|p| p / BACKBONE_STRIDE)
    }

    /// Checks that all sizes are consistent.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.name.is_empty() || self.name.contains(['@', '/', '\\']) {
            return bad(format!("name {:?} must be non-empty without '@', '/', '\\'", self.name));
        }
        for a in 0..3 {
            if self.patch[a] == 0 || !self.patch[a].is_multiple_of(BACKBONE_STRIDE) {
                return bad(format!("patch {:?} must be positive multiples of 8", self.patch));
            }
            if !self.infer_window[a].is_multiple_of(BACKBONE_STRIDE) || self.infer_window[a] < self.patch[a] {
                return bad(format!(
                    "infer_window {:?} must be multiples of 8 and >= patch {:?}",
                    self.infer_window, self.patch
                ));
            }
            if self.global_branch && (self.global_size[a] == 0 || !self.global_size[a].is_multiple_of(GLOBAL_STRIDE)) {
                return bad(format!("global_size {:?} must be positive multiples of 4", self.global_size));
            }
        }
        if self.channels.contains(&0) || self.global_channels.contains(&0) {
            return bad("channel widths must be positive".into());
        }
        if self.transformer {
            if self.embed_dim == 0 || self.heads == 0 || !self.embed_dim.is_multiple_of(self.heads) {
                return bad(format!(
                    "embed_dim {} must be a positive multiple of heads {}",
                    self.embed_dim, self.heads
                ));
            }
            if self.mlp_ratio == 0 {
                return bad("mlp_ratio must be positive".into());
            }
        }
        if self.cls_hidden < 2 {
            return bad("cls_hidden must be at least 2".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        if !(0.0..1.0).contains(&self.decoder_dropout) {
            return bad(format!("decoder_dropout {} must be in [0, 1)", self.decoder_dropout));
        }
        Ok(())
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self::small()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_valid_and_round_trip() {
        for name in ["tiny", "small", "medium", "paper"] {
            let c = ModelConfig::profile(name).unwrap();
            c.validate().unwrap();
            let s = serde_json::to_string(&c).unwrap();
            let back: ModelConfig = serde_json::from_str(&s).unwrap();
            assert_eq!(back, c);
        }
        assert!(ModelConfig::profile("huge").is_err());
        // Off by default and not serialised when off: older configs read back unchanged.
        assert!(!serde_json::to_string(&ModelConfig::small()).unwrap().contains("decoder_dropout"));
        let on = ModelConfig::tiny().with_decoder_dropout(0.2);
        let back: ModelConfig = serde_json::from_str(&serde_json::to_string(&on).unwrap()).unwrap();
        assert_eq!(back.decoder_dropout, 0.2);
        let mut c = ModelConfig::tiny();
        c.patch = [30, 32, 32];
        assert!(c.validate().is_err());
    }
}
