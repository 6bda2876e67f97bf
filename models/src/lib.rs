//! The GMMAS network (tch / libtorch): multi-modal CNN-transformer segmentation and
//! multi-task glioma classification, with inference (`Analyzer`), losses and training.
//!
//! Modules: [`config`] (sizes and profiles), [`net`] (the network), [`weights`] (init and
//! safetensors I/O), [`infer`] (sliding-window inference), [`analyzer`] (the seam other
//! crates use), [`device`] (device and thread settings), [`loss`] and [`train`];
//! [`partial`] (whole-tumour and ignored-voxel targets) and [`ssl`] (the two-stage
//! semi-supervised method of paper III-F: pseudo-labels, weak-to-strong consistency);
//! [`uncertainty`] (whether MC-Dropout uncertainty tracks error and rises off-distribution).

pub mod adapt;
pub mod analyzer;
pub mod augment;
pub mod brain;
pub mod calibrate;
pub mod case;
pub mod config;
pub mod data;
pub mod device;
pub mod fit;
pub mod infer;
pub mod loss;
pub mod metrics;
pub mod missing;
pub mod net;
pub mod partial;
pub mod postprocess;
pub mod probe;
pub mod ssl;
pub mod train;
pub mod uncertainty;
pub mod weights;

pub use analyzer::{Analyzer, ModelMeta};
pub use brain::{BrainExtractor, SkullStrip, StripReport, default_brain_model_path, needs_stripping, strip_case};
pub use case::{CaseAnalysis, analyze_prepared};
pub use config::ModelConfig;
pub use device::{
    Device, default_adapted_model_path, default_model_path, needs_adapted_model, parse_device, set_threads, weights_dir,
};
pub use infer::{InferOptions, NormStats, Prediction, TaskProbabilities};
pub use postprocess::PostProcess;
pub use train::{Batch, StepLosses, TrainConfig, Trainer};

use std::path::PathBuf;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A libtorch call failed.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A weights or metadata file is missing pieces, has wrong shapes or is corrupt.
    #[error("{}: {reason}", path.display())]
    Weights {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Invalid model configuration.
    #[error("invalid model config: {0}")]
    Config(String),
    /// Invalid input volume, options or batch.
    #[error("invalid input: {0}")]
    Input(String),
    /// Unexpected internal failure (e.g. a libtorch panic during a forward pass).
    #[error("internal error: {0}")]
    Internal(String),
}
