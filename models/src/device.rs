//! Where the network runs and where the released weights are: device selection from a setting,
//! libtorch's CPU thread count, and the path of the bundled default model.

use std::path::PathBuf;

pub use tch::Device;

use crate::ModelError;

/// File name of the model the product ships, under `models/weights/`.
pub const DEFAULT_MODEL_FILE: &str = "gmmas-small.safetensors";
/// File name of the shipped model trained with the missing-modality adaptation module, used for
/// cases that lack a sequence.
pub const ADAPTED_MODEL_FILE: &str = "gmmas-small-adapted.safetensors";

/// `auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device, ModelError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "auto" | "" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => {
            if tch::Cuda::is_available() {
                Ok(Device::Cuda(0))
            } else {
                Err(ModelError::Config("device `cuda` requested but no CUDA device is available".into()))
            }
        }
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) if (n as i64) < tch::Cuda::device_count() => Ok(Device::Cuda(n)),
            Some(n) => Err(ModelError::Config(format!("device cuda:{n} does not exist"))),
            None => Err(ModelError::Config(format!("device {other:?}: expected auto, cpu, cuda or cuda:N"))),
        },
    }
}

/// Sets libtorch's intra-op CPU threads.
pub fn set_threads(n: usize) {
    if n > 0 {
        tch::set_num_threads(n as i32);
    }
}

/// Where the bundled weights are: `weights/` of an installation's data folder
/// ([`gmmas_imaging::share_dir`]) when there is one, else `models/weights` of this source tree.
pub fn weights_dir() -> PathBuf {
    match gmmas_imaging::share_dir() {
        Some(share) => share.join("weights"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights"),
    }
}

/// The bundled model: `GMMAS_MODEL_PATH` when set, else `gmmas-small.safetensors` in
/// [`weights_dir`].
pub fn default_model_path() -> PathBuf {
    if let Ok(p) = std::env::var("GMMAS_MODEL_PATH") {
        return PathBuf::from(p);
    }
    weights_dir().join(DEFAULT_MODEL_FILE)
}

/// The bundled model for incomplete inputs: `GMMAS_INCOMPLETE_MODEL_PATH` when set (empty = none),
/// else `gmmas-small-adapted.safetensors` in [`weights_dir`] when it exists.
pub fn default_adapted_model_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("GMMAS_INCOMPLETE_MODEL_PATH") {
        return (!p.is_empty()).then(|| PathBuf::from(p));
    }
    let p = weights_dir().join(ADAPTED_MODEL_FILE);
    p.exists().then_some(p)
}

/// Whether a case with these sequences present should go to the adapted model: any of the four
/// is missing.
pub fn needs_adapted_model(present: [bool; crate::config::MODALITIES]) -> bool {
    present.iter().any(|p| !p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_inputs_go_to_the_adapted_model() {
        assert!(!needs_adapted_model([true; 4]));
        assert!(needs_adapted_model([false, false, false, true]));
        assert!(needs_adapted_model([true, false, true, true]));
    }

    #[test]
    fn device_names() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("tpu").is_err());
        if !tch::Cuda::is_available() {
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
            assert!(parse_device("cuda").is_err());
        }
    }
}
