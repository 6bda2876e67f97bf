//! `Analyzer`: a loaded (or freshly seeded) GMMAS model, one or more replicas of it each behind
//! a mutex, the seam the services use; weights live in `<name>.safetensors` with a `.json` sidecar.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tch::{Device, nn};

use crate::ModelError;
use crate::config::{MODALITIES, ModelConfig, TASKS};
use crate::infer::{self, InferOptions, Prediction};
use crate::net::{self, Net};
use crate::ssl::pseudo::{DistributionAligner, PseudoLabelOptions, PseudoLabels};
use crate::weights;

/// File format tag written into the sidecar.
pub const FORMAT: &str = "gmmas-models/1";

/// Contents of the `<name>.json` sidecar written beside `<name>.safetensors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Format tag (`gmmas-models/1`).
    #[serde(default)]
    pub format: String,
    /// Model name (first half of the version string).
    pub name: String,
    /// Network configuration.
    pub config: ModelConfig,
    /// Creation time, RFC 3339 UTC.
    #[serde(default)]
    pub created: String,
    /// Hex sha256 of the weights file (checked on load when present).
    #[serde(default)]
    pub weights_sha256: String,
    /// Parameter count.
    #[serde(default)]
    pub parameters: usize,
    /// Free-form training notes (data, steps, losses, ...).
    #[serde(default)]
    pub training: serde_json::Value,
    /// Per-task temperature of the task logits (paper III-F; None = uncalibrated). The
    /// weights file carries the same values in its `temperature` metadata, which is what
    /// loading uses (and what the version hashes); the two must agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<[f64; TASKS]>,
}

struct Inner {
    vs: nn::VarStore,
    net: Net,
}

/// A GMMAS model ready for inference. `Send + Sync`: each call to [`Analyzer::analyze`] takes
/// one replica of the network (weights copied, see [`Analyzer::set_replicas`]); with one
/// replica, calls are serialised (libtorch parallelises inside one call).
pub struct Analyzer {
    name: String,
    version: String,
    cfg: ModelConfig,
    device: Device,
    training: serde_json::Value,
    parameters: usize,
    temperature: [f64; TASKS],
    inner: Vec<Mutex<Inner>>,
    /// Replica that a caller finding every replica busy waits for next (round robin).
    next: AtomicUsize,
}

impl std::fmt::Debug for Analyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analyzer")
            .field("version", &self.version)
            .field("device", &self.device)
            .field("parameters", &self.parameters)
            .field("temperature", &self.temperature)
            .finish_non_exhaustive()
    }
}

/// Metadata key of the per-task temperature in the weights file.
pub const TEMPERATURE_KEY: &str = "temperature";

/// Whether `t` is the uncalibrated temperature (all 1).
fn is_unit(t: &[f64; TASKS]) -> bool {
    t.iter().all(|&v| v == 1.0)
}

/// Metadata of the weights file: the format tag, plus the temperature (a JSON array) when it
/// is not all 1 — so uncalibrated weights keep their bytes and version, calibrated ones get
/// a version of their own.
fn safetensors_metadata(temperature: &[f64; TASKS]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::from([("format".to_string(), FORMAT.to_string())]);
    if !is_unit(temperature) {
        m.insert(TEMPERATURE_KEY.to_string(), serde_json::json!(temperature).to_string());
    }
    m
}

fn check_temperature(t: &[f64; TASKS]) -> Result<(), String> {
    match t.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
        Some(v) => Err(format!("temperature {v} must be a positive number")),
        None => Ok(()),
    }
}

/// The temperature stored in safetensors `bytes` (all 1 when absent).
fn temperature_from_weights(bytes: &[u8]) -> Result<[f64; TASKS], String> {
    let meta = weights::read_metadata(bytes)?;
    let Some(text) = meta.get(TEMPERATURE_KEY) else { return Ok([1.0; TASKS]) };
    let t: [f64; TASKS] = serde_json::from_str(text)
        .map_err(|e| format!("metadata {TEMPERATURE_KEY} {text:?}: expected {TASKS} numbers ({e})"))?;
    check_temperature(&t)?;
    Ok(t)
}

/// Sidecar path for a weights path: `<name>.safetensors` -> `<name>.json`.
pub fn sidecar_path(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

impl Analyzer {
    /// `input` with its dims and present sequences, and this model's temperatures.
    fn case<'a>(&self, input: &'a [f32], dims: [usize; 3], present: [bool; MODALITIES]) -> infer::CaseInput<'a> {
        infer::CaseInput { input, dims, present, temperature: self.temperature }
    }

    /// A freshly initialised model (deterministic in `seed`), named `<cfg.name>-seed<seed>`.
    pub fn new_seeded(cfg: ModelConfig, seed: i64, device: Device) -> Result<Self, ModelError> {
        let (vs, net) = net::build(&cfg, device, Some(seed as u64))?;
        let name = format!("{}-seed{seed}", cfg.name);
        Self::from_parts(name, vs, net, serde_json::Value::Null)
    }

    /// Wraps a var store and network (e.g. from the trainer); the version is computed from
    /// the serialised weights.
    pub(crate) fn from_parts(
        name: String,
        vs: nn::VarStore,
        net: Net,
        training: serde_json::Value,
    ) -> Result<Self, ModelError> {
        if name.is_empty() || name.contains('@') {
            return Err(ModelError::Config(format!("model name {name:?} must be non-empty without '@'")));
        }
        let temperature = [1.0; TASKS];
        let bytes = weights::to_safetensors(&vs, &safetensors_metadata(&temperature))?;
        let version = format!("{name}@{}", weights::short_sha(&bytes));
        let cfg = net.config().clone();
        let parameters = net::parameter_count(&vs);
        let device = vs.device();
        Ok(Self {
            name,
            version,
            cfg,
            device,
            training,
            parameters,
            temperature,
            inner: vec![Mutex::new(Inner { vs, net })],
            next: AtomicUsize::new(0),
        })
    }

    /// Loads `<name>.safetensors` and its `<name>.json` sidecar. Errors name the file and
    /// what is wrong with it (missing, corrupt, missing tensor, wrong shape for var X, ...).
    pub fn load(weights_path: &Path, device: Device) -> Result<Self, ModelError> {
        let meta_path = sidecar_path(weights_path);
        let read = |p: &Path| std::fs::read(p).map_err(|source| ModelError::Io { path: p.to_path_buf(), source });
        let bytes = read(weights_path)?;
        let meta_bytes = read(&meta_path)?;
        let meta: ModelMeta = serde_json::from_slice(&meta_bytes).map_err(|e| ModelError::Weights {
            path: meta_path.clone(),
            reason: format!("invalid model metadata: {e}"),
        })?;
        meta.config.validate().map_err(|e| ModelError::Weights { path: meta_path.clone(), reason: e.to_string() })?;
        let (vs, net) = net::build(&meta.config, device, None)?;
        weights::load_safetensors(&vs, &bytes)
            .map_err(|reason| ModelError::Weights { path: weights_path.to_path_buf(), reason })?;
        let temperature = temperature_from_weights(&bytes)
            .map_err(|reason| ModelError::Weights { path: weights_path.to_path_buf(), reason })?;
        if meta.temperature.unwrap_or([1.0; TASKS]) != temperature {
            return Err(ModelError::Weights {
                path: meta_path.clone(),
                reason: format!(
                    "temperature {:?} differs from {temperature:?} stored in {}",
                    meta.temperature,
                    weights_path.display()
                ),
            });
        }
        let sha = weights::sha256_hex(&bytes);
        if !meta.weights_sha256.is_empty() && meta.weights_sha256 != sha {
            return Err(ModelError::Weights {
                path: weights_path.to_path_buf(),
                reason: format!(
                    "sha256 {sha} does not match {} recorded in {}",
                    meta.weights_sha256,
                    meta_path.display()
                ),
            });
        }
        let parameters = net::parameter_count(&vs);
        Ok(Self {
            version: format!("{}@{}", meta.name, &sha[..12]),
            name: meta.name,
            cfg: meta.config,
            device,
            training: meta.training,
            parameters,
            temperature,
            inner: vec![Mutex::new(Inner { vs, net })],
            next: AtomicUsize::new(0),
        })
    }

    /// Writes `<name>.safetensors` and the `<name>.json` sidecar (each via a temporary file
    /// and a rename). Loading the result gives the same version.
    pub fn save(&self, weights_path: &Path) -> Result<(), ModelError> {
        let bytes = {
            let inner = self.lock();
            weights::to_safetensors(&inner.vs, &safetensors_metadata(&self.temperature))?
        };
        let meta = ModelMeta {
            format: FORMAT.into(),
            name: self.name.clone(),
            config: self.cfg.clone(),
            created: now_rfc3339(),
            weights_sha256: weights::sha256_hex(&bytes),
            parameters: self.parameters,
            training: self.training.clone(),
            temperature: (!is_unit(&self.temperature)).then_some(self.temperature),
        };
        let meta_bytes = serde_json::to_vec_pretty(&meta).map_err(|e| ModelError::Internal(e.to_string()))?;
        write_atomic(weights_path, &bytes)?;
        write_atomic(&sidecar_path(weights_path), &meta_bytes)
    }

    /// `<name>@<first 12 hex of sha256 of the safetensors bytes>`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Model name (the part of the version before `@`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Network configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Device the weights live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Number of trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.parameters
    }

    /// Training notes stored in the sidecar.
    pub fn training_notes(&self) -> &serde_json::Value {
        &self.training
    }

    /// Replaces the training notes written by [`Analyzer::save`].
    pub fn set_training_notes(&mut self, notes: serde_json::Value) {
        self.training = notes;
    }

    /// Per-task temperature dividing the task logits (grade, IDH, 1p/19q, MGMT); all 1 for an
    /// uncalibrated model.
    pub fn temperature(&self) -> [f64; TASKS] {
        self.temperature
    }

    /// The same weights with per-task temperature `t` (see [`crate::calibrate`]); the version
    /// is recomputed, so a calibrated copy has a version of its own (and all-1 gives back
    /// the uncalibrated one).
    pub fn with_temperature(mut self, t: [f64; TASKS]) -> Result<Self, ModelError> {
        check_temperature(&t).map_err(ModelError::Config)?;
        let bytes = weights::to_safetensors(&self.lock().vs, &safetensors_metadata(&t))?;
        self.version = format!("{}@{}", self.name, weights::short_sha(&bytes));
        self.temperature = t;
        Ok(self)
    }

    /// Sets the decoder dropout used by MC-Dropout passes ([`ModelConfig::decoder_dropout`]).
    /// It is not a weight: the version (a hash of the weights) does not change, the saved
    /// config does.
    pub fn set_decoder_dropout(&mut self, p: f64) -> Result<(), ModelError> {
        for replica in &mut self.inner {
            replica.get_mut().unwrap_or_else(|e| e.into_inner()).net.set_decoder_dropout(p)?;
        }
        self.cfg.decoder_dropout = p;
        Ok(())
    }

    /// Renames the model (the version keeps the weights hash).
    pub fn rename(&mut self, name: &str) -> Result<(), ModelError> {
        if name.is_empty() || name.contains('@') {
            return Err(ModelError::Config(format!("model name {name:?} must be non-empty without '@'")));
        }
        let hash = self.version.rsplit('@').next().unwrap_or_default().to_string();
        self.name = name.to_string();
        self.version = format!("{name}@{hash}");
        Ok(())
    }

    /// Normalised eq. (1) modality weights of the backbone stem for a presence mask.
    pub fn modality_weights(&self, present: [bool; MODALITIES]) -> Vec<f32> {
        self.lock().net.modality_weights(present)
    }

    /// Copies this model's weights into `vs` (same config).
    pub(crate) fn copy_weights_into(&self, vs: &mut nn::VarStore) -> Result<(), ModelError> {
        vs.copy(&self.lock().vs)?;
        Ok(())
    }

    /// A free replica, or (all busy) the next one in turn once it is free.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        for replica in &self.inner {
            match replica.try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(e)) => return e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.inner.len();
        self.inner[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of replicas: how many analyses run at once.
    pub fn replicas(&self) -> usize {
        self.inner.len()
    }

    /// Keeps `n` (at least 1) replicas of the network, each a copy of the weights on this
    /// model's device, so that `n` callers analyse at once (an infer service with `workers =
    /// n`). Memory: one set of weights per replica, plus each running call's activations.
    pub fn set_replicas(&mut self, n: usize) -> Result<(), ModelError> {
        let n = n.max(1);
        self.inner.truncate(n);
        while self.inner.len() < n {
            let (mut vs, net) = net::build(&self.cfg, self.device, None)?;
            self.copy_weights_into(&mut vs)?;
            self.inner.push(Mutex::new(Inner { vs, net }));
        }
        Ok(())
    }

    /// Segments one case and predicts the four tasks.
    ///
    /// `input` holds 4 channels (t1, t1ce, t2, flair), channel-major, each x-fastest
    /// (`idx = x + nx * (y + ny * z)`, `dims = [nx, ny, nz]`); absent channels are zeros and
    /// `present` marks them. Volumes up to `config().infer_window` run as one padded window,
    /// larger ones as Gaussian-weighted sliding windows with `opts.overlap`. Task
    /// probabilities are the mean of the per-window head probabilities weighted by each
    /// window's Gaussian-weighted foreground probability mass (plain mean without foreground).
    pub fn analyze(
        &self,
        input: &[f32],
        dims: [usize; 3],
        present: [bool; MODALITIES],
        opts: &InferOptions,
    ) -> Result<Prediction, ModelError> {
        infer::validate_input(input, dims, present, opts)?;
        let filled = match opts.missing_fill {
            crate::missing::MissingFill::Zero => None,
            crate::missing::MissingFill::Substitute => {
                crate::missing::substitute(input, dims.iter().product(), present)
            }
        };
        let (input, present) = filled.as_ref().map_or((input, present), |(v, p)| (v.as_slice(), *p));
        if opts.half && !self.device.is_cuda() {
            return Err(ModelError::Input(format!(
                "half precision runs on CUDA only; this model is on {:?}",
                self.device
            )));
        }
        let inner = self.lock();
        let device = self.device;
        let case_norm = opts.norm_stats.case_for(present);
        // A decoder run on the tumour's box alone would normalise by the box's statistics.
        let opts = &InferOptions { mc_roi: opts.mc_roi && !case_norm, ..*opts };
        let run = || {
            crate::net::with_case_norm(case_norm, || {
                tch::no_grad(|| infer::run(&inner.net, device, self.case(input, dims, present), opts))
            })
        };
        guarded(|| if opts.half { tch::autocast(true, run) } else { run() })
    }

    /// Stage I of the semi-supervised method (paper III-F, [`crate::ssl::pseudo`]): runs
    /// `opts.mc_passes` MC-Dropout passes on one prepared case (the same `input`, `dims`,
    /// `present` as [`Analyzer::analyze`]) and returns the pseudo-labels that pass the dual
    /// threshold: per task (uncertainty < `u_max` and confidence > `c_min`, after
    /// distribution alignment through `aligner` when given, which also records this case's
    /// prediction) and per voxel (a voxel accept mask; the rest is ignored in training).
    ///
    /// Deterministic for `opts.seed`: the dropout masks come from a hash of the seed
    /// ([`crate::net::with_seeded_dropout`]), not from libtorch's shared generator. Voxel uncertainty is only informative for a model with
    /// `decoder_dropout > 0`.
    pub fn pseudo_label(
        &self,
        input: &[f32],
        dims: [usize; 3],
        present: [bool; MODALITIES],
        opts: &PseudoLabelOptions,
        aligner: Option<&mut DistributionAligner>,
    ) -> Result<PseudoLabels, ModelError> {
        opts.validate()?;
        let iopts = InferOptions { overlap: opts.overlap, ..InferOptions::default() };
        infer::validate_input(input, dims, present, &iopts)?;
        let stats = {
            let inner = self.lock();
            let device = self.device;
            guarded(|| {
                let run = || {
                    let case = self.case(input, dims, present);
                    let how = infer::McPasses { overlap: opts.overlap, passes: opts.mc_passes, mc: true };
                    infer::run_stats(&inner.net, device, case, how)
                };
                tch::no_grad(|| net::with_seeded_dropout(opts.seed, run))
            })?
        };
        crate::ssl::pseudo::select(&stats, dims, opts, aligner, &self.version)
    }
}

impl Analyzer {
    /// Voxel-wise MC-Dropout statistics of one prepared case (the same `input`, `dims`,
    /// `present` as [`Analyzer::analyze`]): `passes` passes with dropout on, masks drawn from
    /// `seed` ([`crate::net::with_seeded_dropout`]); see [`crate::uncertainty`].
    pub fn voxel_mc(
        &self,
        input: &[f32],
        dims: [usize; 3],
        present: [bool; MODALITIES],
        overlap: f32,
        passes: usize,
        seed: u64,
    ) -> Result<infer::VoxelMc, ModelError> {
        if passes < 2 {
            return Err(ModelError::Input(format!("{passes} MC passes: an uncertainty needs at least 2")));
        }
        let iopts = InferOptions { overlap, ..InferOptions::default() };
        infer::validate_input(input, dims, present, &iopts)?;
        let inner = self.lock();
        let device = self.device;
        guarded(|| {
            let run = || {
                let how = infer::McPasses { overlap, passes, mc: true };
                infer::run_voxel_mc(&inner.net, device, self.case(input, dims, present), how)
            };
            tch::no_grad(|| net::with_seeded_dropout(seed, run))
        })
    }
}

/// Runs `f`, turning a libtorch panic into [`ModelError::Internal`].
fn guarded<T>(f: impl FnOnce() -> Result<T, ModelError>) -> Result<T, ModelError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(ModelError::Internal(format!("forward pass failed: {msg}")))
        }
    }
}

/// Writes `bytes` to `path` through a temporary file beside it and a rename, so a reader
/// never sees half a file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let io = |source| ModelError::Io { path: path.to_path_buf(), source };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::TaskProbabilities;
    use tch::Tensor;

    fn assert_send_sync<T: Send + Sync>() {}

    /// A smooth synthetic case with a bright blob.
    fn case(dims: [usize; 3], present: [bool; 4]) -> Vec<f32> {
        let n = dims.iter().product::<usize>();
        let mut v = vec![0f32; 4 * n];
        for c in 0..4 {
            if !present[c] {
                continue;
            }
            for z in 0..dims[2] {
                for y in 0..dims[1] {
                    for x in 0..dims[0] {
                        let d = (x as f32 - 10.0).powi(2) + (y as f32 - 12.0).powi(2) + (z as f32 - 9.0).powi(2);
                        let val = (0.3 * x as f32 + 0.2 * c as f32).sin() + 3.0 * (-d / 30.0).exp();
                        v[c * n + x + dims[0] * (y + dims[1] * z)] = val;
                    }
                }
            }
        }
        v
    }

    fn check_labels(p: &Prediction, n: usize) {
        assert_eq!(p.labels.len(), n);
        assert!(p.labels.iter().all(|l| matches!(l, 0 | 1 | 2 | 4)));
        for v in p.probabilities.to_array() {
            assert!((0.0..=1.0).contains(&v), "{v}");
        }
    }

    #[test]
    fn analyzer_is_send_sync_and_versioned() {
        assert_send_sync::<Analyzer>();
        let a = Analyzer::new_seeded(ModelConfig::tiny(), 7, Device::Cpu).unwrap();
        let (name, hash) = a.version().split_once('@').unwrap();
        assert_eq!(name, "gmmas-tiny-seed7");
        assert_eq!(hash.len(), 12);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
        let b = Analyzer::new_seeded(ModelConfig::tiny(), 7, Device::Cpu).unwrap();
        assert_eq!(a.version(), b.version());
        let c = Analyzer::new_seeded(ModelConfig::tiny(), 8, Device::Cpu).unwrap();
        assert_ne!(a.version().split('@').nth(1), c.version().split('@').nth(1));
        assert!(a.parameter_count() > 0);
    }

    #[test]
    fn analyze_larger_and_smaller_than_patch() {
        let a = Analyzer::new_seeded(ModelConfig::tiny(), 1, Device::Cpu).unwrap();
        let opts = InferOptions::default();
        let dims = [45, 38, 33];
        let present = [true, false, true, true];
        let n = dims.iter().product();
        let p = a.analyze(&case(dims, present), dims, present, &opts).unwrap();
        check_labels(&p, n);
        assert!(p.uncertainty.is_none() && p.task_std.is_none());
        // Batched windows give the same result.
        let pb = a.analyze(&case(dims, present), dims, present, &InferOptions { batch: 3, ..opts }).unwrap();
        assert_eq!(pb.labels, p.labels);
        let dims = [20, 17, 9];
        let p = a.analyze(&case(dims, [true; 4]), dims, [true; 4], &opts).unwrap();
        check_labels(&p, 20 * 17 * 9);
        // Bad inputs are rejected with a message.
        assert!(a.analyze(&[0.0; 10], dims, [true; 4], &opts).is_err());
        assert!(a.analyze(&case(dims, [true; 4]), dims, [false; 4], &opts).is_err());
        let bad = InferOptions { overlap: 1.0, ..opts };
        assert!(a.analyze(&case(dims, [true; 4]), dims, [true; 4], &bad).is_err());
    }

    /// Flip TTA averages over the whole mirroring group, so analysing a mirrored case gives
    /// the mirrored result; and it is not a no-op.
    #[test]
    fn flip_tta_of_a_mirrored_case_is_the_mirrored_result() {
        let a = Analyzer::new_seeded(ModelConfig::tiny(), 2, Device::Cpu).unwrap();
        // One window, no padding: the only asymmetry would be the TTA itself.
        let dims = [32, 32, 32];
        let input = case(dims, [true; 4]);
        let n = 32 * 32 * 32;
        let mirror_x = |v: &[f32], channels: usize| -> Vec<f32> {
            let mut out = v.to_vec();
            for c in 0..channels {
                for r in 0..32 * 32 {
                    for x in 0..32 {
                        out[c * n + r * 32 + x] = v[c * n + r * 32 + 31 - x];
                    }
                }
            }
            out
        };
        let tta = InferOptions { tta_flips: true, postprocess: crate::PostProcess::None, ..InferOptions::default() };
        let p = a.analyze(&input, dims, [true; 4], &tta).unwrap();
        let q = a.analyze(&mirror_x(&input, 4), dims, [true; 4], &tta).unwrap();
        let back: Vec<f32> = mirror_x(&q.labels.iter().map(|&l| f32::from(l)).collect::<Vec<_>>(), 1);
        let agree = p.labels.iter().zip(&back).filter(|(a, b)| f32::from(**a) == **b).count();
        assert!(agree as f64 >= 0.999 * n as f64, "{agree} of {n}");
        for (x, y) in p.probabilities.to_array().iter().zip(q.probabilities.to_array()) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
        let plain =
            a.analyze(&input, dims, [true; 4], &InferOptions { postprocess: crate::PostProcess::None, ..tta }).unwrap();
        let no_tta = a
            .analyze(
                &input,
                dims,
                [true; 4],
                &InferOptions { tta_flips: false, postprocess: crate::PostProcess::None, ..tta },
            )
            .unwrap();
        assert_eq!(plain.labels, p.labels);
        let diff: f32 =
            p.probabilities.to_array().iter().zip(no_tta.probabilities.to_array()).map(|(x, y)| (x - y).abs()).sum();
        assert!(diff > 1e-6, "TTA changed nothing");
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let a = Analyzer::new_seeded(ModelConfig::tiny().with_transformer(false), 3, Device::Cpu).unwrap();
        a.save(&path).unwrap();
        assert!(dir.path().join("m.json").exists());
        let b = Analyzer::load(&path, Device::Cpu).unwrap();
        assert_eq!(a.version(), b.version());
        assert_eq!(a.config(), b.config());
        let dims = [40, 24, 16];
        let input = case(dims, [true; 4]);
        let opts = InferOptions::default();
        let pa = a.analyze(&input, dims, [true; 4], &opts).unwrap();
        let pb = b.analyze(&input, dims, [true; 4], &opts).unwrap();
        assert_eq!(pa, pb);
        // Saving the loaded model again writes identical weights.
        let path2 = dir.path().join("again.safetensors");
        b.save(&path2).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&path2).unwrap());
    }

    #[test]
    fn temperature_is_persisted_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let a = Analyzer::new_seeded(ModelConfig::tiny(), 4, Device::Cpu).unwrap();
        assert_eq!(a.temperature(), [1.0; TASKS]);
        let plain = a.version().to_string();
        let t = [2.0, 0.5, 1.0, 3.25];
        let c = a.with_temperature(t).unwrap();
        assert_eq!(c.temperature(), t);
        assert_ne!(c.version(), plain);
        assert!(c.version().starts_with("gmmas-tiny-seed4@"));
        let path = dir.path().join("cal.safetensors");
        c.save(&path).unwrap();
        let meta: ModelMeta = serde_json::from_slice(&std::fs::read(dir.path().join("cal.json")).unwrap()).unwrap();
        assert_eq!(meta.temperature, Some(t));
        let md = weights::read_metadata(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(serde_json::from_str::<[f64; TASKS]>(&md[TEMPERATURE_KEY]).unwrap(), t);
        let b = Analyzer::load(&path, Device::Cpu).unwrap();
        assert_eq!((b.temperature(), b.version()), (t, c.version()));
        // Back to T = 1: the uncalibrated version again, and no temperature in the files.
        let u = b.with_temperature([1.0; TASKS]).unwrap();
        assert_eq!(u.version(), plain);
        let upath = dir.path().join("plain.safetensors");
        u.save(&upath).unwrap();
        let meta: ModelMeta = serde_json::from_slice(&std::fs::read(dir.path().join("plain.json")).unwrap()).unwrap();
        assert_eq!(meta.temperature, None);
        assert!(!weights::read_metadata(&std::fs::read(&upath).unwrap()).unwrap().contains_key(TEMPERATURE_KEY));
        // Invalid temperatures are refused; a sidecar disagreeing with the weights fails to load.
        assert!(Analyzer::load(&upath, Device::Cpu).unwrap().with_temperature([1.0, 0.0, 1.0, 1.0]).is_err());
        let mut meta: ModelMeta = serde_json::from_slice(&std::fs::read(dir.path().join("cal.json")).unwrap()).unwrap();
        meta.temperature = Some([1.0; TASKS]);
        std::fs::write(dir.path().join("cal.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
        let e = Analyzer::load(&path, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("cal.json") && e.contains("temperature"), "{e}");
    }

    #[test]
    fn temperature_softens_task_probabilities() {
        use rand::{Rng, SeedableRng};
        let dims = [32, 32, 32];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let input: Vec<f32> = (0..4 * 32 * 32 * 32).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let opts = InferOptions::default();
        let a = Analyzer::new_seeded(ModelConfig::tiny(), 5, Device::Cpu).unwrap();
        let p1 = a.analyze(&input, dims, [true; 4], &opts).unwrap();
        let a2 = a.with_temperature([2.0; TASKS]).unwrap();
        let p2 = a2.analyze(&input, dims, [true; 4], &opts).unwrap();
        assert_eq!(p1.labels, p2.labels, "temperature must not touch the segmentation");
        for (x, y) in p1.probabilities.to_array().iter().zip(p2.probabilities.to_array()) {
            assert!((y - 0.5).abs() < (x - 0.5).abs(), "T=1 {x} vs T=2 {y}");
            // One window: exactly sigmoid(logit / 2).
            let want = crate::calibrate::apply_temperature(f64::from(*x), 2.0);
            assert!((f64::from(y) - want).abs() < 1e-4, "{y} vs {want}");
        }
        // Applied inside MC-dropout passes too: with the same dropout masks (seeded per thread,
        // so tests running beside this one cannot draw from the generator in between), a
        // stochastic pass at T = 2 is the T = 1 pass rescaled.
        let mc = InferOptions { mc_passes: 1, ..opts };
        let d1 = Analyzer::new_seeded(ModelConfig::tiny().with_dropout(0.3), 5, Device::Cpu).unwrap();
        let m1 = crate::net::with_seeded_dropout(1, || d1.analyze(&input, dims, [true; 4], &mc)).unwrap();
        let d2 = d1.with_temperature([2.0; TASKS]).unwrap();
        let m2 = crate::net::with_seeded_dropout(1, || d2.analyze(&input, dims, [true; 4], &mc)).unwrap();
        for (x, y) in m1.probabilities.to_array().iter().zip(m2.probabilities.to_array()) {
            let want = crate::calibrate::apply_temperature(f64::from(*x), 2.0);
            assert!((f64::from(y) - want).abs() < 1e-4, "MC pass: {y} vs {want}");
        }
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.safetensors");
        let e = Analyzer::load(&missing, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("nope.safetensors"), "{e}");

        let path = dir.path().join("m.safetensors");
        let a = Analyzer::new_seeded(ModelConfig::tiny(), 3, Device::Cpu).unwrap();
        a.save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();

        // Truncated weights.
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let e = Analyzer::load(&path, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("m.safetensors"), "{e}");
        // Garbage weights.
        std::fs::write(&path, b"garbage").unwrap();
        let e = Analyzer::load(&path, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("m.safetensors") && e.contains("not a safetensors"), "{e}");
        // A flipped data byte fails the checksum.
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x55;
        std::fs::write(&path, &flipped).unwrap();
        let e = Analyzer::load(&path, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("m.safetensors") && e.contains("sha256"), "{e}");

        // Sidecar describing another shape.
        std::fs::write(&path, &bytes).unwrap();
        let meta_path = dir.path().join("m.json");
        let mut meta: ModelMeta = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
        meta.config.channels[3] = 48;
        std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
        let e = Analyzer::load(&path, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("m.safetensors") && e.contains("wrong shape for var"), "{e}");
        // Corrupt and missing sidecar.
        std::fs::write(&meta_path, b"{").unwrap();
        let e = Analyzer::load(&path, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("m.json"), "{e}");
        std::fs::remove_file(&meta_path).unwrap();
        let e = Analyzer::load(&path, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("m.json"), "{e}");
    }

    #[test]
    fn mc_dropout_spread() {
        let dims = [40, 20, 16];
        let input = case(dims, [true; 4]);
        let opts = InferOptions { mc_passes: 3, ..Default::default() };
        let a = Analyzer::new_seeded(ModelConfig::tiny().with_dropout(0.3), 2, Device::Cpu).unwrap();
        let p = a.analyze(&input, dims, [true; 4], &opts).unwrap();
        let u = p.uncertainty.as_ref().unwrap();
        assert_eq!(u.len(), 40 * 20 * 16);
        assert!(u.iter().any(|&v| v > 0.0), "MC passes did not differ");
        assert!(u.iter().all(|v| v.is_finite() && *v >= 0.0));
        assert!(p.task_std.unwrap().to_array().iter().any(|&v| v > 0.0));
        // One stochastic pass: no uncertainty, but a valid prediction.
        let one = a.analyze(&input, dims, [true; 4], &InferOptions { mc_passes: 1, ..opts }).unwrap();
        assert!(one.uncertainty.is_none());

        let a0 = Analyzer::new_seeded(ModelConfig::tiny().with_dropout(0.0), 2, Device::Cpu).unwrap();
        let p0 = a0.analyze(&input, dims, [true; 4], &InferOptions { mc_roi: false, ..opts }).unwrap();
        assert!(p0.uncertainty.unwrap().iter().all(|&v| v == 0.0));
        assert_eq!(p0.task_std, Some(TaskProbabilities::default()));
        let det = a0.analyze(&input, dims, [true; 4], &InferOptions::default()).unwrap();
        assert_eq!(det.labels, p0.labels);
    }

    #[test]
    fn mc_passes_on_the_region_of_interest_agree_with_full_passes() {
        let dims = [40, 32, 24];
        let input = case(dims, [true; 4]);
        let full =
            InferOptions { mc_passes: 4, mc_roi: false, postprocess: crate::PostProcess::None, ..Default::default() };
        let roi = InferOptions { mc_roi: true, ..full };
        // Without dropout every pass must reproduce the first, on the crop as over the window.
        let a0 = Analyzer::new_seeded(ModelConfig::tiny().with_dropout(0.0), 4, Device::Cpu).unwrap();
        let pf = a0.analyze(&input, dims, [true; 4], &full).unwrap();
        let pr = a0.analyze(&input, dims, [true; 4], &roi).unwrap();
        assert_eq!(pf.labels, pr.labels);
        let worst = pr.uncertainty.unwrap().into_iter().fold(0f32, f32::max);
        assert!(worst < 1e-4, "passes on the crop differ from the first by {worst}");
        // With dropout: every grouping of the passes runs and spreads.
        let a = Analyzer::new_seeded(ModelConfig::tiny().with_dropout(0.2).with_decoder_dropout(0.1), 4, Device::Cpu)
            .unwrap();
        for batch in [0, 1, 2] {
            let pr = a.analyze(&input, dims, [true; 4], &InferOptions { mc_batch: batch, ..roi }).unwrap();
            check_labels(&pr, input.len() / 4);
            let u = pr.uncertainty.as_ref().unwrap();
            assert!(u.iter().all(|v| v.is_finite() && *v >= 0.0) && u.iter().any(|&v| v > 0.0), "mc_batch {batch}");
            assert!(pr.task_std.unwrap().to_array().iter().any(|&v| v > 0.0));
        }

        // A network that finds no tumour: the later passes decode nothing, so the voxels keep
        // the first pass (uncertainty exactly 0) while the classifier still varies.
        let mut quiet =
            Analyzer::new_seeded(ModelConfig::tiny().with_dropout(0.3).with_decoder_dropout(0.1), 5, Device::Cpu)
                .unwrap();
        tch::no_grad(|| {
            let inner = quiet.inner[0].get_mut().unwrap();
            let mut vars = inner.vs.variables();
            let bias = vars.iter_mut().find(|(k, _)| k.ends_with("decoder.seg_head.bias")).map(|(_, v)| v).unwrap();
            bias.copy_(&Tensor::from_slice(&[40f32, -40.0, -40.0, -40.0]));
        });
        let p = quiet.analyze(&input, dims, [true; 4], &roi).unwrap();
        assert!(p.labels.iter().all(|&l| l == 0));
        assert!(p.uncertainty.unwrap().iter().all(|&v| v == 0.0));
        assert!(p.task_std.unwrap().to_array().iter().any(|&v| v > 0.0));
    }

    #[test]
    fn replicas_analyse_at_once_with_the_same_result() {
        let dims = [24, 24, 16];
        let input = case(dims, [true; 4]);
        let mut a = Analyzer::new_seeded(ModelConfig::tiny(), 6, Device::Cpu).unwrap();
        let opts = InferOptions::default();
        let one = a.analyze(&input, dims, [true; 4], &opts).unwrap();
        let e = a.analyze(&input, dims, [true; 4], &InferOptions { half: true, ..opts }).unwrap_err().to_string();
        assert!(e.contains("CUDA only"), "{e}");
        let version = a.version().to_string();
        a.set_replicas(2).unwrap();
        assert_eq!(a.replicas(), 2);
        assert_eq!(a.version(), version);
        let a = std::sync::Arc::new(a);
        let results: Vec<Prediction> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..4)
                .map(|_| {
                    let (a, input) = (a.clone(), &input);
                    s.spawn(move || a.analyze(input, dims, [true; 4], &opts).unwrap())
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        for p in results {
            assert_eq!(p.labels, one.labels);
            assert_eq!(p.probabilities, one.probabilities);
        }
    }
}
