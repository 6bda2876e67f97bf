//! Whole-case inference: padding or Gaussian-weighted sliding windows, MC-Dropout passes,
//! label mapping to BraTS values and window-mass-weighted task probabilities.
//!
//! Windows are processed `batch` at a time and accumulated into preallocated
//! whole-volume buffers, so memory is bounded by one window batch plus the buffers.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::ModelError;
use crate::config::{BACKBONE_STRIDE, MODALITIES, ModelConfig, SEG_CLASSES, TASKS};
use crate::net::{GlobalContext, Net};

/// Probability of the positive class of each task.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct TaskProbabilities {
    /// P(GBM) for grade (GBM vs LGG).
    pub grade_gbm: f32,
    /// P(IDH mutant).
    pub idh_mutant: f32,
    /// P(1p/19q codeleted).
    pub codel_1p19q: f32,
    /// P(MGMT promoter methylated).
    pub mgmt_methylated: f32,
}

impl TaskProbabilities {
    /// From values in task head order (grade, IDH, 1p/19q, MGMT).
    pub fn from_array(v: [f32; TASKS]) -> Self {
        Self { grade_gbm: v[0], idh_mutant: v[1], codel_1p19q: v[2], mgmt_methylated: v[3] }
    }

    /// Values in task head order (grade, IDH, 1p/19q, MGMT).
    pub fn to_array(&self) -> [f32; TASKS] {
        [self.grade_gbm, self.idh_mutant, self.codel_1p19q, self.mgmt_methylated]
    }
}

/// Options of [`crate::Analyzer::analyze`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InferOptions {
    /// Fraction of a window shared with its neighbour when sliding (in `[0, 1)`).
    pub overlap: f32,
    /// MC-Dropout passes; 0 = one deterministic pass, >1 also yields uncertainties.
    pub mc_passes: usize,
    /// Windows per forward pass (0 is treated as 1).
    pub batch: usize,
}

impl Default for InferOptions {
    fn default() -> Self {
        Self { overlap: 0.5, mc_passes: 0, batch: 1 }
    }
}

/// Result of analysing one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// BraTS labels 0 (background), 1 (NCR), 2 (ED), 4 (ET), same layout as the input voxels.
    pub labels: Vec<u8>,
    /// Task probabilities (mean over MC passes when `mc_passes > 0`).
    pub probabilities: TaskProbabilities,
    /// Per-voxel std of the foreground probability over MC passes (when `mc_passes > 1`).
    pub uncertainty: Option<Vec<f32>>,
    /// Std of the task probabilities over MC passes (when `mc_passes > 1`).
    pub task_std: Option<TaskProbabilities>,
}

/// Where windows go on a volume.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowPlan {
    /// Window size `[z, y, x]` (multiples of 8).
    pub window: [usize; 3],
    /// Window start positions per axis `[z, y, x]`.
    pub starts: [Vec<usize>; 3],
}

impl WindowPlan {
    /// Number of windows.
    pub fn len(&self) -> usize {
        self.starts.iter().map(Vec::len).product()
    }

    /// True when there is no window (never for a valid plan).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Plans windows for a volume of `shape = [nz, ny, nx]`.
///
/// Per axis the window is the volume rounded up to a multiple of 8, clamped to
/// `[patch, infer_window]`. A volume not larger than the window gets one (zero-padded)
/// window; a larger one gets evenly spaced windows with step at most `window * (1 - overlap)`.
pub fn plan_windows(cfg: &ModelConfig, shape: [usize; 3], overlap: f32) -> WindowPlan {
    let mut window = [0; 3];
    let starts = std::array::from_fn(|a| {
        let n = shape[a];
        let w = n.div_ceil(BACKBONE_STRIDE) * BACKBONE_STRIDE;
        let w = w.clamp(cfg.patch[a], cfg.infer_window[a]);
        window[a] = w;
        if n <= w {
            return vec![0];
        }
        let step = ((w as f32 * (1.0 - overlap)).floor() as usize).max(1);
        let count = (n - w).div_ceil(step) + 1;
        (0..count).map(|i| ((n - w) as f64 * i as f64 / (count - 1) as f64).round() as usize).collect()
    });
    WindowPlan { window, starts }
}

/// Gaussian importance map (sigma = 1/8 of the window per axis, max 1, floor 1e-3).
fn gaussian(window: [usize; 3], device: Device) -> Tensor {
    let axis = |w: usize| {
        let c = (w as f64 - 1.0) / 2.0;
        let s = w as f64 / 8.0;
        let v: Vec<f32> = (0..w).map(|i| (-0.5 * ((i as f64 - c) / s).powi(2)).exp() as f32).collect();
        Tensor::from_slice(&v)
    };
    let g = axis(window[0]).view([-1, 1, 1]) * axis(window[1]).view([1, -1, 1]) * axis(window[2]).view([1, 1, -1]);
    let g = &g / g.max();
    g.clamp_min(1e-3).to_device(device)
}

/// Input checks shared by the analyzer.
pub fn validate_input(
    input: &[f32],
    dims: [usize; 3],
    present: [bool; MODALITIES],
    opts: &InferOptions,
) -> Result<(), ModelError> {
    if dims.contains(&0) {
        return Err(ModelError::Input(format!("dims {dims:?} must be positive")));
    }
    let voxels = dims.iter().product::<usize>();
    if input.len() != MODALITIES * voxels {
        return Err(ModelError::Input(format!(
            "input has {} values, expected 4 x {} x {} x {} = {}",
            input.len(),
            dims[0],
            dims[1],
            dims[2],
            MODALITIES * voxels
        )));
    }
    if !present.iter().any(|&p| p) {
        return Err(ModelError::Input("no modality present".into()));
    }
    if !(0.0..1.0).contains(&opts.overlap) {
        return Err(ModelError::Input(format!("overlap {} must be in [0, 1)", opts.overlap)));
    }
    if let Some(i) = input.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::Input(format!("non-finite value at index {i}")));
    }
    Ok(())
}

/// One pass over all windows; returns normalised class probabilities `[4, nz, ny, nx]`
/// and the mass-weighted task probabilities.
struct PassResult {
    probs: Tensor,
    tasks: [f64; TASKS],
}

struct Engine<'a> {
    net: &'a Net,
    padded: Tensor,
    shape: [usize; 3],
    plan: WindowPlan,
    gauss: Tensor,
    weight_sum: Tensor,
    present: [bool; MODALITIES],
    global: Option<crate::net::GlobalFeatures>,
    batch: usize,
}

impl Engine<'_> {
    fn windows(&self) -> Vec<[usize; 3]> {
        let s = &self.plan.starts;
        let mut out = Vec::with_capacity(self.plan.len());
        for &z in &s[0] {
            for &y in &s[1] {
                for &x in &s[2] {
                    out.push([z, y, x]);
                }
            }
        }
        out
    }

    fn valid(&self, start: [usize; 3]) -> [i64; 3] {
        std::array::from_fn(|a| self.plan.window[a].min(self.shape[a] - start[a]) as i64)
    }

    fn pass(&self, mc: bool) -> Result<PassResult, ModelError> {
        let [nz, ny, nx] = self.shape.map(|v| v as i64);
        let w = self.plan.window.map(|v| v as i64);
        let acc = Tensor::zeros([SEG_CLASSES as i64, nz, ny, nx], (Kind::Float, self.padded.device()));
        let mut task_weighted = [0f64; TASKS];
        let mut task_plain = [0f64; TASKS];
        let mut mass_total = 0f64;
        let windows = self.windows();
        for chunk in windows.chunks(self.batch.max(1)) {
            let crops: Vec<Tensor> = chunk
                .iter()
                .map(|s| {
                    self.padded
                        .narrow(2, s[0] as i64, w[0])
                        .narrow(3, s[1] as i64, w[1])
                        .narrow(4, s[2] as i64, w[2])
                })
                .collect();
            let x = Tensor::cat(&crops, 0);
            drop(crops);
            let boxes: Vec<[f32; 6]> = chunk
                .iter()
                .map(|s| {
                    let lo: [f32; 3] = std::array::from_fn(|a| s[a] as f32 / self.shape[a] as f32);
                    let hi: [f32; 3] = std::array::from_fn(|a| (s[a] + self.plan.window[a]) as f32 / self.shape[a] as f32);
                    [lo[0], lo[1], lo[2], hi[0], hi[1], hi[2]]
                })
                .collect();
            let ctx = self.global.as_ref().map(|features| GlobalContext { features, boxes: &boxes });
            let out = self.net.forward(&x, &[self.present], ctx, false, mc)?;
            drop(x);
            let probs = out.seg.softmax(1, Kind::Float);
            drop(out.seg);
            let task_p = out.tasks.softmax(-1, Kind::Float).select(2, 1).to_device(Device::Cpu);
            let task_p = Vec::<f32>::try_from(&task_p.flatten(0, -1))?;
            for (i, s) in chunk.iter().enumerate() {
                let v = self.valid(*s);
                let g = self.gauss.narrow(0, 0, v[0]).narrow(1, 0, v[1]).narrow(2, 0, v[2]);
                let p = probs.get(i as i64).narrow(1, 0, v[0]).narrow(2, 0, v[1]).narrow(3, 0, v[2]);
                let weighted = &p * &g;
                let mass = (&g - weighted.get(0)).sum(Kind::Double).double_value(&[]);
                let mut dst = acc
                    .narrow(1, s[0] as i64, v[0])
                    .narrow(2, s[1] as i64, v[1])
                    .narrow(3, s[2] as i64, v[2]);
                let _ = dst.g_add_(&weighted);
                mass_total += mass;
                for t in 0..TASKS {
                    let pt = task_p[i * TASKS + t] as f64;
                    task_weighted[t] += mass * pt;
                    task_plain[t] += pt;
                }
            }
        }
        let mut probs = acc;
        let _ = probs.g_div_(&self.weight_sum);
        // Weight by foreground mass; without any foreground use the plain mean.
        let tasks = if mass_total > 1.0 {
            task_weighted.map(|v| v / mass_total)
        } else {
            task_plain.map(|v| v / windows.len() as f64)
        };
        Ok(PassResult { probs, tasks })
    }
}

/// Runs the whole inference for one case (`input` channel-major, x fastest). Must be called
/// with gradients disabled.
pub fn run(
    net: &Net,
    device: Device,
    input: &[f32],
    dims: [usize; 3],
    present: [bool; MODALITIES],
    opts: &InferOptions,
) -> Result<Prediction, ModelError> {
    validate_input(input, dims, present, opts)?;
    let cfg = net.config();
    let [nx, ny, nz] = dims;
    let shape = [nz, ny, nx];
    let plan = plan_windows(cfg, shape, opts.overlap);
    let volume = Tensor::from_slice(input).view([1, MODALITIES as i64, nz as i64, ny as i64, nx as i64]).to_device(device);
    let global = if cfg.global_branch {
        net.global_features(&net.global_input(&volume), &[present], false)?
    } else {
        None
    };
    let pad: [i64; 3] = std::array::from_fn(|a| plan.window[a].saturating_sub(shape[a]) as i64);
    let padded = if pad.iter().any(|&p| p > 0) {
        volume.constant_pad_nd([0, pad[2], 0, pad[1], 0, pad[0]])
    } else {
        volume
    };
    let gauss = gaussian(plan.window, device);
    let mut engine = Engine {
        net,
        padded,
        shape,
        plan,
        gauss,
        weight_sum: Tensor::new(),
        present,
        global,
        batch: opts.batch.max(1),
    };
    let mut weight_sum = Tensor::zeros([nz as i64, ny as i64, nx as i64], (Kind::Float, device));
    for s in engine.windows() {
        let v = engine.valid(s);
        let g = engine.gauss.narrow(0, 0, v[0]).narrow(1, 0, v[1]).narrow(2, 0, v[2]);
        let mut dst = weight_sum.narrow(0, s[0] as i64, v[0]).narrow(1, s[1] as i64, v[1]).narrow(2, s[2] as i64, v[2]);
        let _ = dst.g_add_(&g);
    }
    let _ = weight_sum.clamp_min_(1e-6);
    engine.weight_sum = weight_sum;

    let passes = opts.mc_passes.max(1);
    let mc = opts.mc_passes > 0;
    let (probs, tasks, uncertainty, task_std) = if passes == 1 {
        let r = engine.pass(mc)?;
        (r.probs, r.tasks, None, None)
    } else {
        // Welford accumulation: exact zeros when every pass agrees.
        let mut sum: Option<Tensor> = None;
        let mut fg_mean: Option<Tensor> = None;
        let mut fg_m2: Option<Tensor> = None;
        let mut t_mean = [0f64; TASKS];
        let mut t_m2 = [0f64; TASKS];
        for k in 1..=passes {
            let r = engine.pass(true)?;
            let fg = 1.0 - r.probs.get(0);
            match (&mut sum, &mut fg_mean, &mut fg_m2) {
                (Some(s), Some(m), Some(m2)) => {
                    let _ = s.g_add_(&r.probs);
                    let delta = &fg - &*m;
                    let _ = m.g_add_(&(&delta / k as f64));
                    let _ = m2.g_add_(&(&delta * (&fg - &*m)));
                }
                _ => {
                    fg_m2 = Some(fg.zeros_like());
                    fg_mean = Some(fg);
                    sum = Some(r.probs);
                }
            }
            for t in 0..TASKS {
                let delta = r.tasks[t] - t_mean[t];
                t_mean[t] += delta / k as f64;
                t_m2[t] += delta * (r.tasks[t] - t_mean[t]);
            }
        }
        let probs = sum.ok_or_else(|| ModelError::Internal("no MC pass ran".into()))? / passes as f64;
        let std = (fg_m2.ok_or_else(|| ModelError::Internal("no MC pass ran".into()))? / passes as f64).sqrt();
        let std = Vec::<f32>::try_from(&std.to_device(Device::Cpu).flatten(0, -1))?;
        let task_std = t_m2.map(|m2| ((m2 / passes as f64).sqrt()) as f32);
        (probs, t_mean, Some(std), Some(TaskProbabilities::from_array(task_std)))
    };
    let labels = probs.argmax(0, false).to_kind(Kind::Uint8).to_device(Device::Cpu);
    let mut labels = Vec::<u8>::try_from(&labels.flatten(0, -1))?;
    for l in &mut labels {
        if *l == 3 {
            *l = 4;
        }
    }
    Ok(Prediction {
        labels,
        probabilities: TaskProbabilities::from_array(tasks.map(|v| v as f32)),
        uncertainty,
        task_std,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_plan_covers_volume() {
        let cfg = ModelConfig::tiny();
        let p = plan_windows(&cfg, [20, 40, 70], 0.5);
        assert_eq!(p.window, [32, 32, 32]);
        assert_eq!(p.starts[0], vec![0]);
        assert_eq!(p.starts[1], vec![0, 8]);
        assert_eq!(*p.starts[2].last().unwrap(), 70 - 32);
        for w in p.starts[2].windows(2) {
            assert!(w[1] - w[0] <= 16);
        }
        let small = ModelConfig::small();
        let p = plan_windows(&small, [150, 190, 160], 0.5);
        assert_eq!(p.window, [152, 192, 160]);
        assert_eq!(p.len(), 1);
    }
}
