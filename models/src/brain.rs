//! Skull stripping: the HD-BET brain-extraction network (fold 0, TorchScript converted once at
//! set-up by `scripts/brain-model.py`) run with libtorch, and the policy that decides per case.
//!
//! The network was trained on tumour patients with T1, T1ce, T2 and FLAIR; it sees one sequence
//! at 1.5 mm, z-scored over the whole volume. Without its weights the classical extractor of
//! [`gmmas_imaging::brainmask`] is used, and the result says so.

use std::path::{Path, PathBuf};

use gmmas_imaging::brainmask::{self, grid_at_spacing};
use gmmas_imaging::resample::resample_linear;
use gmmas_imaging::{LabelVolume, Modality, Volume};
use tch::{CModule, Device, Kind, Tensor};

use crate::ModelError;

/// File name of the converted network in [`crate::weights_dir`].
pub const BRAIN_MODEL_FILE: &str = "hd-bet-fold0.pt";
/// The resolution the network was trained at.
const NET_SPACING_MM: f32 = 1.5;
/// Input sizes must be multiples of this (four stride-2 levels) and at least [`NET_MIN`].
const NET_DIVISOR: usize = 16;
const NET_MIN: usize = 128;
/// The network's mask is grown by this margin: it stops at the cortex, while a tumour or the CSF
/// at the brain's surface must never be cut off (measured on the MNI152 head and on real cases
/// in a head: `models/results/skullstrip/`).
pub const BRAIN_MARGIN_MM: f32 = 2.0;

/// The converted network: `GMMAS_BRAIN_MODEL_PATH` when set (empty = none), else
/// [`BRAIN_MODEL_FILE`] in [`crate::weights_dir`] when it exists.
pub fn default_brain_model_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("GMMAS_BRAIN_MODEL_PATH") {
        return (!p.is_empty()).then(|| PathBuf::from(p));
    }
    let p = crate::weights_dir().join(BRAIN_MODEL_FILE);
    p.exists().then_some(p)
}

/// sha256 of the weights behind the module at `path`: the original state dict's, from the
/// `.json` the conversion writes beside it (the traced file itself differs between conversions),
/// else the file's own.
fn weights_sha256(path: &Path) -> Result<String, ModelError> {
    let sidecar = path.with_extension("json");
    if let Ok(text) = std::fs::read(&sidecar) {
        let meta: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| ModelError::Weights { path: sidecar.clone(), reason: format!("invalid JSON: {e}") })?;
        if let Some(sha) = meta["weights_sha256"].as_str().filter(|s| s.len() >= 12) {
            return Ok(sha.to_string());
        }
    }
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    Ok(crate::weights::sha256_hex(&bytes))
}

/// Sets every subnormal float parameter of `module` (magnitude below `f32::MIN_POSITIVE`) to zero
/// in place and returns how many there were.
///
/// Close to half of HD-BET's fold-0 weights are subnormal. They change no output (their products
/// with activations lie far below float precision), but on CPUs that handle subnormals slowly they
/// made the network 25x slower (`models/results/skullstrip/slowdown-2026-12-03.md`). Modules
/// converted before `scripts/brain-model.py` zeroed them itself still hold them, hence this.
fn zero_subnormal_parameters(module: &CModule) -> Result<i64, tch::TchError> {
    zero_subnormal(module.named_parameters()?.into_iter().map(|(_, t)| t), true)
}

/// Counts the subnormal values of float `tensors` and, with `zero`, sets them to zero in place.
fn zero_subnormal(tensors: impl IntoIterator<Item = Tensor>, zero: bool) -> Result<i64, tch::TchError> {
    let tiny = f64::from(f32::MIN_POSITIVE);
    tch::no_grad(|| {
        let mut count = 0;
        for mut t in tensors {
            if !matches!(t.kind(), Kind::Float | Kind::Double) {
                continue;
            }
            let mask = t.f_abs()?.f_lt(tiny)?.f_logical_and(&t.f_ne(0.0)?)?;
            count += mask.f_sum(Kind::Int64)?.f_int64_value(&[])?;
            if zero {
                let _ = t.f_masked_fill_(&mask, 0.0)?;
            }
        }
        Ok(count)
    })
}

/// The brain-extraction network, loaded.
pub struct BrainExtractor {
    subnormal_zeroed: i64,
    module: CModule,
    device: Device,
    version: String,
}

impl std::fmt::Debug for BrainExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrainExtractor").field("version", &self.version).field("device", &self.device).finish()
    }
}

impl BrainExtractor {
    /// Loads the TorchScript module at `path` onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self, ModelError> {
        let sha = weights_sha256(path)?;
        let mut module = CModule::load_on_device(path, device).map_err(|e| ModelError::Weights {
            path: path.to_path_buf(),
            reason: format!("not a TorchScript brain-extraction module (run scripts/setup.sh): {e}"),
        })?;
        module.set_eval();
        let subnormal_zeroed = zero_subnormal_parameters(&module).map_err(|e| ModelError::Weights {
            path: path.to_path_buf(),
            reason: format!("cannot read the module's parameters: {e}"),
        })?;
        Ok(Self { module, device, version: format!("hd-bet-fold0@{}", &sha[..12]), subnormal_zeroed })
    }

    /// How many of the module's parameter values are subnormal now (zero after [`Self::load`]).
    pub fn subnormal_parameters(&self) -> Result<i64, ModelError> {
        let params = self.module.named_parameters().map_err(|e| ModelError::Input(e.to_string()))?;
        zero_subnormal(params.into_iter().map(|(_, t)| t), false).map_err(|e| ModelError::Input(e.to_string()))
    }

    /// How many subnormal parameter values [`Self::load`] set to zero (none for a module that
    /// `scripts/brain-model.py` converted since it started doing so itself).
    pub fn subnormal_zeroed(&self) -> i64 {
        self.subnormal_zeroed
    }

    /// Names the weights: `hd-bet-fold0@` and the first 12 hex digits of the original weights'
    /// sha256 (recorded beside the module at conversion; else the module file's own).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Brain probability (0..=1) of every voxel of `v`, on `v`'s grid. `mirror` averages the
    /// eight flips of the input (test-time augmentation; 8x the time).
    pub fn probability(&self, v: &Volume, mirror: bool) -> Result<Volume, ModelError> {
        let low = grid_at_spacing(&v.grid, NET_SPACING_MM);
        let r = resample_linear(v, &low).map_err(|e| ModelError::Input(e.to_string()))?;
        let [nx, ny, nz] = low.dims;
        let n = r.data.len() as f64;
        let mean = r.data.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = r.data.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
        if !(var.is_finite() && var > 0.0) {
            return Err(ModelError::Input("brain extraction: the volume is constant or not finite".into()));
        }
        let std = var.sqrt();
        let pad = |d: usize| d.div_ceil(NET_DIVISOR).max(NET_MIN / NET_DIVISOR) * NET_DIVISOR;
        let [px, py, pz] = [pad(nx), pad(ny), pad(nz)];
        // Upper padding with the corner value, as the network's training code did.
        let corner = ((f64::from(r.data[0]) - mean) / std) as f32;
        let mut input = vec![corner; px * py * pz];
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    input[x + px * (y + py * z)] = ((f64::from(r.data[x + nx * (y + ny * z)]) - mean) / std) as f32;
                }
            }
        }
        let prob = tch::no_grad(|| -> Result<Tensor, ModelError> {
            let t = Tensor::from_slice(&input).view([1, 1, pz as i64, py as i64, px as i64]).to_device(self.device);
            let flips: &[&[i64]] =
                if mirror { &[&[], &[4], &[3], &[3, 4], &[2], &[2, 4], &[2, 3], &[2, 3, 4]] } else { &[&[]] };
            let mut sum: Option<Tensor> = None;
            for dims in flips {
                let x = if dims.is_empty() { t.shallow_clone() } else { t.flip(*dims) };
                let out = self.module.forward_ts(&[x])?;
                let out = if dims.is_empty() { out } else { out.flip(*dims) };
                let p = out.select(1, 1);
                sum = Some(match sum {
                    Some(s) => s + p,
                    None => p,
                });
            }
            let s = sum.ok_or_else(|| ModelError::Internal("no forward pass".into()))?;
            Ok((s / flips.len() as f64)
                .narrow(1, 0, nz as i64)
                .narrow(2, 0, ny as i64)
                .narrow(3, 0, nx as i64)
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous())
        })?;
        let data = Vec::<f32>::try_from(prob.flatten(0, -1))?;
        let low_prob = Volume::new(low, data).map_err(|e| ModelError::Internal(e.to_string()))?;
        resample_linear(&low_prob, &v.grid).map_err(|e| ModelError::Internal(e.to_string()))
    }

    /// The brain mask of `v` (1 = brain) on `v`'s grid: probability above one half, its largest
    /// component grown by [`BRAIN_MARGIN_MM`], cavities filled.
    pub fn mask(&self, v: &Volume, mirror: bool) -> Result<LabelVolume, ModelError> {
        let p = self.probability(v, mirror)?;
        let dims = v.grid.dims;
        let brain: Vec<bool> = p.data.iter().map(|&x| x > 0.5).collect();
        let brain = brainmask::dilate(&brainmask::largest_component(&brain, dims), &v.grid, BRAIN_MARGIN_MM);
        let brain = brainmask::fill_holes(&brain, dims);
        LabelVolume::new(v.grid.clone(), brain.into_iter().map(u8::from).collect())
            .map_err(|e| ModelError::Internal(e.to_string()))
    }
}

/// When to strip the skull.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SkullStrip {
    /// When any sequence is detected as not skull-stripped.
    #[default]
    Auto,
    /// Always (the input is known to have its skull).
    Always,
    /// Never: unstripped input is refused with the reason.
    Never,
}

impl std::str::FromStr for SkullStrip {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Self::Auto),
            "always" | "on" | "yes" => Ok(Self::Always),
            "never" | "off" | "no" => Ok(Self::Never),
            other => Err(ModelError::Config(format!("skull stripping {other:?}: expected auto, always or never"))),
        }
    }
}

/// Whether [`strip_case`] would compute a mask for these inputs under `policy` (so a caller
/// loads the network only when it will be used).
pub fn needs_stripping(inputs: &[(Modality, Volume)], policy: SkullStrip) -> bool {
    let refs: Vec<(Modality, &Volume)> = inputs.iter().map(|(m, v)| (*m, v)).collect();
    match policy {
        SkullStrip::Always => true,
        SkullStrip::Never => false,
        SkullStrip::Auto => gmmas_imaging::check_skull_stripped(&refs).is_err(),
    }
}

/// What skull stripping did to a case.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StripReport {
    /// `none (already skull-stripped)`, `none (disabled)`, the network's version, or `classical`.
    pub method: String,
    /// The sequence the mask was computed on.
    pub source_sequence: Option<String>,
    /// Share of non-zero voxels on the field of view's faces, per sequence, before stripping.
    pub edge_nonzero_percent: Vec<(String, f64)>,
    /// Brain volume of the mask in millilitres.
    pub brain_ml: Option<f64>,
}

/// Order in which a sequence is chosen to compute the mask on.
const MASK_SOURCE_ORDER: [Modality; 4] = [Modality::T1, Modality::T1ce, Modality::Flair, Modality::T2];

/// Strips the skull from every sequence of a co-registered case (same grid) when `policy` says
/// so: the mask is computed once, on T1 when present (else T1ce, FLAIR, T2), with `extractor`
/// or, when it is `None`, the classical fallback, and applied to all sequences. Returns the mask
/// (None when untouched) and what was done.
pub fn strip_case(
    inputs: &mut [(Modality, Volume)],
    policy: SkullStrip,
    extractor: Option<&BrainExtractor>,
) -> Result<(Option<LabelVolume>, StripReport), ModelError> {
    let edges: Vec<(String, f64)> = inputs
        .iter()
        .map(|(m, v)| (m.as_str().to_string(), 100.0 * gmmas_imaging::background::edge_nonzero_fraction(v)))
        .collect();
    let refs: Vec<(Modality, &Volume)> = inputs.iter().map(|(m, v)| (*m, v)).collect();
    let stripped = gmmas_imaging::check_skull_stripped(&refs);
    let untouched = |method: &str| StripReport {
        method: method.into(),
        source_sequence: None,
        edge_nonzero_percent: edges.clone(),
        brain_ml: None,
    };
    match (policy, &stripped) {
        (SkullStrip::Never, Ok(())) => return Ok((None, untouched("none (disabled)"))),
        (SkullStrip::Never, Err(e)) => return Err(ModelError::Input(e.to_string())),
        (SkullStrip::Auto, Ok(())) => return Ok((None, untouched("none (already skull-stripped)"))),
        _ => {}
    }
    let source = MASK_SOURCE_ORDER
        .iter()
        .find_map(|m| inputs.iter().position(|(x, _)| x == m))
        .ok_or_else(|| ModelError::Input("skull stripping: no sequence to compute the brain mask on".into()))?;
    let (source_modality, source_volume) = (&inputs[source].0, &inputs[source].1);
    let (mask, method) = match extractor {
        Some(x) => (x.mask(source_volume, false)?, x.version().to_string()),
        None => (
            brainmask::classical_brain_mask(source_volume).map_err(|e| ModelError::Input(e.to_string()))?,
            "classical".to_string(),
        ),
    };
    let voxels = mask.data.iter().filter(|&&m| m != 0).count();
    if voxels == 0 {
        return Err(ModelError::Input(format!(
            "skull stripping found no brain in {} (is it a brain MRI?)",
            source_modality.as_str()
        )));
    }
    let brain_ml = voxels as f64 * mask.grid.voxel_ml();
    let source_sequence = Some(source_modality.as_str().to_string());
    for (m, v) in inputs.iter_mut() {
        brainmask::apply_mask(v, &mask)
            .map_err(|e| ModelError::Input(format!("{}: {e} (sequences must share one grid)", m.as_str())))?;
    }
    Ok((Some(mask), StripReport { method, source_sequence, edge_nonzero_percent: edges, brain_ml: Some(brain_ml) }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn subnormal_values_are_counted_and_zeroed_in_place_and_nothing_else_changes() {
        let sub = f32::MIN_POSITIVE / 4.0;
        let a = Tensor::from_slice(&[1.0f32, sub, -sub, 0.0, -2.5, f32::MIN_POSITIVE]);
        let b = Tensor::from_slice(&[3i64, 0, 1]);
        let view = a.shallow_clone();
        assert_eq!(zero_subnormal([a.shallow_clone(), b], false).unwrap(), 2);
        assert_eq!(Vec::<f32>::try_from(&view).unwrap()[1], sub, "counting alone changes nothing");
        assert_eq!(zero_subnormal([a.shallow_clone()], true).unwrap(), 2);
        assert_eq!(Vec::<f32>::try_from(&view).unwrap(), vec![1.0, 0.0, 0.0, 0.0, -2.5, f32::MIN_POSITIVE]);
        assert_eq!(zero_subnormal([a], false).unwrap(), 0);
    }
}
