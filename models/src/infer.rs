//! Whole-case inference: padding or Gaussian-weighted sliding windows, MC-Dropout passes,
//! label mapping to BraTS values and window-mass-weighted task probabilities.
//!
//! Windows are processed `batch` at a time and accumulated into preallocated
//! whole-volume buffers, so memory is bounded by one window batch plus the buffers.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::ModelError;
use crate::config::{BACKBONE_STRIDE, MODALITIES, ModelConfig, SEG_CLASSES, TASKS};
use crate::net::{DecoderCrop, Encoded, GlobalContext, Net, NetOutput};

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
    /// Cleanup of the predicted labels (default: the tumor filter of Algorithm 1).
    pub postprocess: crate::PostProcess,
    /// Test-time augmentation: the case is analysed in all eight mirrorings (x, y, z flips)
    /// and the un-mirrored class and task probabilities are averaged (8x the time).
    pub tta_flips: bool,
    /// Small-ET rule: when the predicted enhancing tumour has fewer voxels than this, it is
    /// relabelled as necrosis (0 = off). Applied after `postprocess`.
    pub min_et_voxels: usize,
    /// MC passes after the first run the decoder only over the box where the first pass
    /// finds tumour (foreground probability above 0.05, grown by 4 voxels, plus 24 voxels of
    /// context that are computed and discarded); elsewhere every pass keeps the first pass's
    /// probabilities, so the uncertainty there is 0. Off: every pass covers every voxel.
    #[serde(default = "default_true")]
    pub mc_roi: bool,
    /// MC passes run together in one forward (0 = all at once). More uses more memory.
    #[serde(default)]
    pub mc_batch: usize,
    /// What the network reads in place of a missing sequence.
    #[serde(default)]
    pub missing_fill: crate::missing::MissingFill,
    /// Half precision on CUDA (libtorch autocast: convolutions and matrix products in fp16,
    /// reductions and softmax in fp32). Refused on the CPU.
    #[serde(default)]
    pub half: bool,
    /// Which statistics the BatchNorm layers normalise with.
    #[serde(default)]
    pub norm_stats: NormStats,
}

/// The statistics BatchNorm normalises with at inference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormStats {
    /// The running averages learnt in training (the usual evaluation mode).
    #[default]
    Running,
    /// The case's own statistics at every layer, for every case (MC passes then decode every
    /// voxel, so that a pass never normalises over the tumour's box alone).
    Case,
    /// The case's own statistics when a sequence is missing (the running averages were
    /// gathered mostly on complete inputs, whose feature statistics differ), else running.
    CaseIfMissing,
}

impl NormStats {
    /// Whether a case with this presence mask is normalised by its own statistics.
    pub fn case_for(self, present: [bool; crate::config::MODALITIES]) -> bool {
        match self {
            Self::Running => false,
            Self::Case => true,
            Self::CaseIfMissing => present.iter().any(|p| !p),
        }
    }

    /// From its name: `running`, `case` or `case-if-missing`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(Self::Running),
            "case" => Some(Self::Case),
            "case-if-missing" => Some(Self::CaseIfMissing),
            _ => None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// Foreground probability above which the first MC pass marks the region of interest.
const ROI_THRESHOLD: f64 = 0.05;
/// Voxels added around the region of interest before its MC passes are kept.
const ROI_MARGIN: i64 = 4;
/// Voxels of decoder context computed around the kept region and discarded: the decoder's
/// border effects (zero padding, clamped upsampling) reach about 16 voxels into a crop.
const ROI_CONTEXT: i64 = 24;

impl Default for InferOptions {
    fn default() -> Self {
        Self {
            overlap: 0.5,
            mc_passes: 0,
            batch: 1,
            postprocess: crate::PostProcess::default(),
            tta_flips: false,
            min_et_voxels: 0,
            mc_roi: true,
            mc_batch: 1,
            missing_fill: crate::missing::MissingFill::Zero,
            half: false,
            norm_stats: NormStats::Running,
        }
    }
}

/// The eight mirrorings `[x, y, z]` of flip test-time augmentation, identity first.
pub const FLIPS: [[bool; 3]; 8] = [
    [false, false, false],
    [true, false, false],
    [false, true, false],
    [false, false, true],
    [true, true, false],
    [true, false, true],
    [false, true, true],
    [true, true, true],
];

/// Tensor dimensions of mirroring `f` for a tensor whose last three dimensions are z, y, x.
fn flip_dims(f: [bool; 3], rank: i64) -> Vec<i64> {
    [(f[0], rank - 1), (f[1], rank - 2), (f[2], rank - 3)].iter().filter(|(on, _)| *on).map(|(_, d)| *d).collect()
}

fn mirrored(t: Tensor, f: [bool; 3]) -> Tensor {
    let dims = flip_dims(f, t.dim() as i64);
    if dims.is_empty() { t } else { t.flip(dims.as_slice()) }
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

/// Sums over all windows and passes.
struct Accumulated {
    /// Sum over passes of the Gaussian-weighted class probabilities `[4, nz, ny, nx]`.
    probs: Tensor,
    /// Per pass, the Gaussian-weighted foreground probability `[nz, ny, nx]` (MC only).
    fg: Vec<Tensor>,
    /// Per pass, the window-mass-weighted task probabilities.
    tasks: Vec<[f64; TASKS]>,
}

struct Engine<'a> {
    net: &'a Net,
    padded: Tensor,
    shape: [usize; 3],
    plan: WindowPlan,
    gauss: Tensor,
    present: [bool; MODALITIES],
    global: Option<crate::net::GlobalFeatures>,
    batch: usize,
    /// Per-task temperature `[1, TASKS, 1]` dividing the task logits (None = all 1).
    temperature: Option<Tensor>,
    /// MC passes after the first decode only the region of interest ([`InferOptions::mc_roi`]).
    mc_roi: bool,
    /// MC passes per forward ([`InferOptions::mc_batch`]; 0 = all).
    mc_batch: usize,
}

/// Where the later MC passes of one window decode: the decoder crop and, inside it, the box
/// whose probabilities they keep (window voxels `[z, y, x]`; None when the first pass found
/// no tumour in the window).
struct Roi {
    crop: DecoderCrop,
    keep: Option<([i64; 3], [i64; 3])>,
}

/// Whole-volume sums that the windows of every pass add to.
struct Sums {
    probs: Tensor,
    fg: Vec<Tensor>,
    votes: TaskVotes,
}

impl Engine<'_> {
    /// Each window's box in the volume, as fractions (lo z, y, x, hi z, y, x) for the global branch.
    fn boxes(&self, starts: &[[usize; 3]]) -> Vec<[f32; 6]> {
        starts
            .iter()
            .map(|s| {
                let lo: [f32; 3] = std::array::from_fn(|a| s[a] as f32 / self.shape[a] as f32);
                let hi: [f32; 3] = std::array::from_fn(|a| (s[a] + self.plan.window[a]) as f32 / self.shape[a] as f32);
                [lo[0], lo[1], lo[2], hi[0], hi[1], hi[2]]
            })
            .collect()
    }

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

    fn region(t: &Tensor, first: i64, start: [usize; 3], len: [i64; 3]) -> Tensor {
        t.narrow(first, start[0] as i64, len[0]).narrow(first + 1, start[1] as i64, len[1]).narrow(
            first + 2,
            start[2] as i64,
            len[2],
        )
    }

    /// The encoder's features of a batch of windows (one stack of crops), and the windows'
    /// boxes for the global branch.
    fn encode(&self, chunk: &[[usize; 3]]) -> Result<(Encoded, Vec<[f32; 6]>), ModelError> {
        let w = self.plan.window.map(|v| v as i64);
        let crops: Vec<Tensor> = chunk.iter().map(|s| Self::region(&self.padded, 2, *s, w)).collect();
        let x = Tensor::cat(&crops, 0);
        drop(crops);
        let mut enc = self.net.encode(&x, &[self.present], false)?;
        enc.drop_stem();
        Ok((enc, self.boxes(chunk)))
    }

    /// One pass of the heads (dropout on when `mc`): the class probabilities `[B, C, z, y, x]`
    /// and the positive-class probability of each task, window-major, with each task's logits
    /// divided by its temperature.
    fn pass(&self, enc: &Encoded, ctx: Option<GlobalContext<'_>>, mc: bool) -> Result<(Tensor, Vec<f32>), ModelError> {
        self.probabilities(self.net.head(enc, ctx, false, mc)?)
    }

    /// Class probabilities and temperature-scaled task probabilities of a head's output.
    fn probabilities(&self, out: NetOutput) -> Result<(Tensor, Vec<f32>), ModelError> {
        let p = out.seg.softmax(1, Kind::Float);
        drop(out.seg);
        let logits = match &self.temperature {
            Some(t) => &out.tasks / t,
            None => out.tasks,
        };
        let task_p = logits.softmax(-1, Kind::Float).select(2, 1).to_device(Device::Cpu);
        Ok((p, Vec::<f32>::try_from(&task_p.flatten(0, -1))?))
    }

    /// Runs every window once through the encoder and `passes` times through the rest of
    /// the network (dropout on when `mc`), accumulating into whole-volume buffers.
    fn run(&self, passes: usize, mc: bool) -> Result<Accumulated, ModelError> {
        let [nz, ny, nx] = self.shape.map(|v| v as i64);
        let device = self.padded.device();
        let mut sums = Sums {
            probs: Tensor::zeros([SEG_CLASSES as i64, nz, ny, nx], (Kind::Float, device)),
            fg: if passes > 1 {
                (0..passes).map(|_| Tensor::zeros([nz, ny, nx], (Kind::Float, device))).collect()
            } else {
                Vec::new()
            },
            votes: TaskVotes::new(passes),
        };
        let windows = self.windows();
        let roi = mc && passes > 1 && self.mc_roi;
        for chunk in windows.chunks(self.batch.max(1)) {
            let (enc, boxes) = self.encode(chunk)?;
            let ctx = self.global.as_ref().map(|features| GlobalContext { features, boxes: &boxes });
            if roi {
                self.run_roi(&enc, &boxes, chunk, passes, &mut sums)?;
                continue;
            }
            for k in 0..passes {
                let (p_all, task_p) = self.pass(&enc, ctx, mc)?;
                for (i, s) in chunk.iter().enumerate() {
                    self.add(&mut sums, k, *s, &p_all.get(i as i64), &task_p[i * TASKS..(i + 1) * TASKS]);
                }
            }
        }
        Ok(Accumulated { probs: sums.probs, fg: sums.fg, tasks: sums.votes.finish(windows.len()) })
    }

    /// Adds pass `k`'s class probabilities `[C, z, y, x]` of the window at `s` (Gaussian
    /// weighted) and its task vote.
    fn add(&self, sums: &mut Sums, k: usize, s: [usize; 3], p: &Tensor, task_p: &[f32]) {
        let v = self.valid(s);
        let g = Self::region(&self.gauss, 0, [0; 3], v);
        let p = Self::region(p, 1, [0; 3], v);
        let gp = &p * &g;
        let _ = Self::region(&sums.probs, 1, s, v).g_add_(&gp);
        let fg_w = &g - gp.get(0);
        // Per-pass foreground maps are kept only with more than one pass.
        if let Some(fg_k) = sums.fg.get(k) {
            let _ = Self::region(fg_k, 0, s, v).g_add_(&fg_w);
        }
        sums.votes.add(k, fg_w.sum(Kind::Double).double_value(&[]), task_p);
    }

    /// MC passes of a batch of windows with [`InferOptions::mc_roi`]: the first pass over the
    /// whole windows, then per window the other passes, `mc_batch` at a time, with the decoder
    /// on the window's region of interest only.
    fn run_roi(
        &self,
        enc: &Encoded,
        boxes: &[[f32; 6]],
        chunk: &[[usize; 3]],
        passes: usize,
        sums: &mut Sums,
    ) -> Result<(), ModelError> {
        let ctx = self.global.as_ref().map(|features| GlobalContext { features, boxes });
        let (out, fusion) = self.net.head_with_fusion(enc, ctx, true)?;
        let (p_all, task_p) = self.probabilities(out)?;
        let per_forward = if self.mc_batch == 0 { passes - 1 } else { self.mc_batch.min(passes - 1) };
        for (i, s) in chunk.iter().enumerate() {
            let p0 = p_all.get(i as i64);
            self.add(sums, 0, *s, &p0, &task_p[i * TASKS..(i + 1) * TASKS]);
            let roi = self.roi(&p0, *s)?;
            let one = enc.sample(i as i64);
            let fusion_i = fusion.as_ref().map(|f| f.narrow(0, i as i64, 1));
            let mut k = 1;
            while k < passes {
                let n = per_forward.min(passes - k);
                let copies = one.copies(n as i64)?;
                let boxes_n = vec![boxes[i]; n];
                let ctx_n = self.global.as_ref().map(|features| GlobalContext { features, boxes: &boxes_n });
                let out = self.net.head_crop(&copies, ctx_n, true, roi.crop, fusion_i.as_ref())?;
                let (p_crop, task_n) = self.probabilities(out)?;
                for j in 0..n {
                    let p = match roi.keep {
                        None => p0.shallow_clone(),
                        Some((lo, size)) => {
                            let p = p0.copy();
                            let at: [i64; 3] = std::array::from_fn(|a| lo[a] - roi.crop.lo[a]);
                            let src = p_crop
                                .get(j as i64)
                                .narrow(1, at[0], size[0])
                                .narrow(2, at[1], size[1])
                                .narrow(3, at[2], size[2]);
                            p.narrow(1, lo[0], size[0]).narrow(2, lo[1], size[1]).narrow(3, lo[2], size[2]).copy_(&src);
                            p
                        }
                    };
                    self.add(sums, k + j, *s, &p, &task_n[j * TASKS..(j + 1) * TASKS]);
                }
                k += n;
            }
        }
        Ok(())
    }

    /// The region of interest of the window at `s` from its first pass's class
    /// probabilities `[C, z, y, x]`.
    fn roi(&self, p0: &Tensor, s: [usize; 3]) -> Result<Roi, ModelError> {
        let v = self.valid(s);
        let w = self.plan.window.map(|x| x as i64);
        let stride = BACKBONE_STRIDE as i64;
        let fg = Self::region(&p0.get(0), 0, [0; 3], v).lt(1.0 - ROI_THRESHOLD);
        let along = |keep: usize| -> Result<Option<(i64, i64)>, ModelError> {
            let others: Vec<i64> = (0..3).filter(|&a| a != keep).map(|a| a as i64).collect();
            let hit = fg.any_dims(others.as_slice(), false).nonzero().to_device(Device::Cpu);
            let idx = Vec::<i64>::try_from(&hit.flatten(0, -1))?;
            Ok(idx.first().copied().zip(idx.last().copied()))
        };
        let mut keep_lo = [0; 3];
        let mut keep_size = [0; 3];
        let mut crop = DecoderCrop { lo: [0; 3], size: [stride; 3] };
        for a in 0..3 {
            let Some((first, last)) = along(a)? else {
                // No tumour in this window: the later passes only need the classifier; the
                // smallest crop keeps the decoder's cost negligible.
                return Ok(Roi { crop, keep: None });
            };
            let lo = (first - ROI_MARGIN).max(0);
            let hi = (last + 1 + ROI_MARGIN).min(v[a]);
            keep_lo[a] = lo;
            keep_size[a] = hi - lo;
            let c_lo = ((lo - ROI_CONTEXT).max(0) / stride) * stride;
            let c_hi = ((hi + ROI_CONTEXT + stride - 1) / stride * stride).min(w[a]);
            crop.lo[a] = c_lo;
            crop.size[a] = c_hi - c_lo;
        }
        Ok(Roi { crop, keep: Some((keep_lo, keep_size)) })
    }
}

/// Each pass's case-level task probabilities, averaged over the windows with each window's
/// foreground mass as its weight (the plain mean when a pass saw no foreground).
struct TaskVotes {
    weighted: Vec<[f64; TASKS]>,
    plain: Vec<[f64; TASKS]>,
    mass: Vec<f64>,
}

impl TaskVotes {
    fn new(passes: usize) -> Self {
        TaskVotes { weighted: vec![[0.0; TASKS]; passes], plain: vec![[0.0; TASKS]; passes], mass: vec![0.0; passes] }
    }

    /// Adds one window's vote in pass `k`: its foreground mass and task probabilities.
    fn add(&mut self, k: usize, mass: f64, task_p: &[f32]) {
        self.mass[k] += mass;
        for (t, &p) in task_p.iter().enumerate().take(TASKS) {
            self.weighted[k][t] += mass * f64::from(p);
            self.plain[k][t] += f64::from(p);
        }
    }

    fn finish(self, windows: usize) -> Vec<[f64; TASKS]> {
        (0..self.mass.len())
            .map(|k| {
                if self.mass[k] > 1.0 {
                    self.weighted[k].map(|v| v / self.mass[k])
                } else {
                    self.plain[k].map(|v| v / windows as f64)
                }
            })
            .collect()
    }
}

/// One prepared case as the network reads it: the channels (channel-major, x fastest), their
/// dims, which sequences are present, and each task's temperature.
#[derive(Debug, Clone, Copy)]
pub struct CaseInput<'a> {
    pub input: &'a [f32],
    pub dims: [usize; 3],
    pub present: [bool; MODALITIES],
    pub temperature: [f64; TASKS],
}

/// How MC-Dropout passes run: the sliding-window overlap, the number of passes (at least one
/// runs), and whether dropout is on (`mc`; off gives repeated deterministic passes).
#[derive(Debug, Clone, Copy)]
pub struct McPasses {
    pub overlap: f32,
    pub passes: usize,
    pub mc: bool,
}

impl McPasses {
    fn engine<'a>(
        &self,
        net: &'a Net,
        device: Device,
        case: CaseInput<'_>,
    ) -> Result<(Engine<'a>, Tensor), ModelError> {
        let opts = InferOptions { overlap: self.overlap, mc_passes: 0, ..InferOptions::default() };
        setup(net, device, case, &opts)
    }
}

/// Runs the whole inference for one case (`input` channel-major, x fastest); the task logits
/// of every pass are divided by `temperature` (per task, see [`crate::calibrate`]). Must be
/// called with gradients disabled.
pub fn run(net: &Net, device: Device, case: CaseInput<'_>, opts: &InferOptions) -> Result<Prediction, ModelError> {
    let CaseInput { input, dims, .. } = case;
    let passes = opts.mc_passes.max(1);
    let flips: &[[bool; 3]] = if opts.tta_flips { &FLIPS } else { &FLIPS[..1] };
    let [nx, ny, nz] = dims.map(|v| v as i64);
    let mut probs: Option<Tensor> = None;
    let mut fg: Vec<Tensor> = Vec::new();
    let mut tasks = vec![[0f64; TASKS]; passes];
    let mut ones = None;
    for &f in flips {
        // The mirrored input (the volume is channel-major [4, z, y, x]).
        let flipped;
        let src = if f.contains(&true) {
            let t = Tensor::from_slice(input).view([MODALITIES as i64, nz, ny, nx]);
            flipped = Vec::<f32>::try_from(&mirrored(t, f).contiguous().flatten(0, -1))?;
            &flipped[..]
        } else {
            input
        };
        let (engine, weight_sum) = setup(net, device, CaseInput { input: src, ..case }, opts)?;
        let acc = engine.run(passes, opts.mc_passes > 0)?;
        drop(engine);
        // Normalised per mirroring, then mirrored back and summed.
        let p = mirrored(acc.probs / (&weight_sum * passes as f64), f);
        probs = Some(match probs {
            Some(sum) => sum + p,
            None => p,
        });
        for (k, x) in acc.fg.into_iter().enumerate() {
            let x = mirrored(x / &weight_sum, f);
            if k < fg.len() {
                fg[k] = &fg[k] + x;
            } else {
                fg.push(x);
            }
        }
        for (k, t) in acc.tasks.iter().enumerate() {
            for j in 0..TASKS {
                tasks[k][j] += t[j];
            }
        }
        ones.get_or_insert_with(|| weight_sum.ones_like());
    }
    let (Some(probs), Some(ones)) = (probs, ones) else {
        return Err(ModelError::Internal("no inference pass ran".into()));
    };
    let n = flips.len() as f64;
    let fg = fg.into_iter().map(|x| x / n).collect();
    let tasks = tasks.into_iter().map(|t| t.map(|v| v / n)).collect();
    finish(probs / n, fg, tasks, ones, dims, opts)
}

/// Per-voxel and per-task statistics over MC-Dropout passes (for Stage I pseudo-labels,
/// [`crate::ssl::pseudo`]).
#[derive(Debug, Clone)]
pub struct PassStats {
    /// Mean over passes of the class probabilities, class-major `[4][voxels]`, each x fastest.
    pub mean: Vec<f32>,
    /// Standard deviation over passes (eq. 6) of each class probability, same layout.
    pub std: Vec<f32>,
    /// P(positive) of every task in every pass (temperature applied).
    pub tasks: Vec<[f64; TASKS]>,
}

/// Runs `passes` MC-Dropout passes (dropout on when `mc`) and returns the per-class mean and
/// standard deviation of every voxel plus each pass's task probabilities. Passes run one
/// after the other over all windows (the encoder is recomputed per pass) so only three
/// whole-volume class buffers are held. Must be called with gradients disabled.
pub fn run_stats(net: &Net, device: Device, case: CaseInput<'_>, how: McPasses) -> Result<PassStats, ModelError> {
    let (engine, weight_sum) = how.engine(net, device, case)?;
    let (passes, mc) = (how.passes.max(1), how.mc);
    let mut mean: Option<Tensor> = None;
    let mut m2: Option<Tensor> = None;
    let mut tasks = Vec::with_capacity(passes);
    for k in 0..passes {
        let acc = engine.run(1, mc)?;
        let x = acc.probs / &weight_sum;
        tasks.push(acc.tasks.first().copied().unwrap_or([0.0; TASKS]));
        // Welford: exactly zero spread when every pass agrees.
        match (&mut mean, &mut m2) {
            (Some(mu), Some(m2)) => {
                let delta = &x - &*mu;
                let _ = mu.g_add_(&(&delta / (k + 1) as f64));
                let _ = m2.g_add_(&(&delta * (&x - &*mu)));
            }
            _ => {
                m2 = Some(x.zeros_like());
                mean = Some(x);
            }
        }
    }
    let (Some(mean), Some(m2)) = (mean, m2) else {
        return Err(ModelError::Internal("no MC pass ran".into()));
    };
    let std = (m2 / passes as f64).sqrt();
    let flat = |t: Tensor| Vec::<f32>::try_from(&t.to_device(Device::Cpu).flatten(0, -1));
    Ok(PassStats { mean: flat(mean)?, std: flat(std)?, tasks })
}

/// The engine and the whole-volume sum of window weights for one case.
fn setup<'a>(
    net: &'a Net,
    device: Device,
    case: CaseInput<'_>,
    opts: &InferOptions,
) -> Result<(Engine<'a>, Tensor), ModelError> {
    let CaseInput { input, dims, present, temperature } = case;
    validate_input(input, dims, present, opts)?;
    if let Some(t) = temperature.iter().find(|t| !(t.is_finite() && **t > 0.0)) {
        return Err(ModelError::Input(format!("temperature {t} must be a positive number")));
    }
    let cfg = net.config();
    let [nx, ny, nz] = dims;
    let shape = [nz, ny, nx];
    let plan = plan_windows(cfg, shape, opts.overlap);
    let volume =
        Tensor::from_slice(input).view([1, MODALITIES as i64, nz as i64, ny as i64, nx as i64]).to_device(device);
    let global =
        if cfg.global_branch { net.global_features(&net.global_input(&volume), &[present], false)? } else { None };
    let pad: [i64; 3] = std::array::from_fn(|a| plan.window[a].saturating_sub(shape[a]) as i64);
    let padded =
        if pad.iter().any(|&p| p > 0) { volume.constant_pad_nd([0, pad[2], 0, pad[1], 0, pad[0]]) } else { volume };
    let gauss = gaussian(plan.window, device);
    let temperature = if temperature.iter().all(|&t| t == 1.0) {
        None
    } else {
        let t: Vec<f32> = temperature.iter().map(|&t| t as f32).collect();
        Some(Tensor::from_slice(&t).view([1, TASKS as i64, 1]).to_device(device))
    };
    let engine = Engine {
        net,
        padded,
        shape,
        plan,
        gauss,
        present,
        global,
        batch: opts.batch.max(1),
        temperature,
        mc_roi: opts.mc_roi,
        mc_batch: opts.mc_batch,
    };
    let mut weight_sum = Tensor::zeros([nz as i64, ny as i64, nx as i64], (Kind::Float, device));
    for s in engine.windows() {
        let v = engine.valid(s);
        let g = Engine::region(&engine.gauss, 0, [0; 3], v);
        let _ = Engine::region(&weight_sum, 0, s, v).g_add_(&g);
    }
    let _ = weight_sum.clamp_min_(1e-6);
    Ok((engine, weight_sum))
}

/// Labels, uncertainty and task probabilities from the accumulated passes.
fn finish(
    probs: Tensor,
    fg: Vec<Tensor>,
    pass_tasks: Vec<[f64; TASKS]>,
    weight_sum: Tensor,
    dims: [usize; 3],
    opts: &InferOptions,
) -> Result<Prediction, ModelError> {
    let passes = pass_tasks.len().max(1);
    let (uncertainty, task_std) = if passes > 1 {
        // Welford over passes: exactly zero when every pass agrees.
        let mut mean = weight_sum.zeros_like();
        let mut m2 = weight_sum.zeros_like();
        for (k, fg) in fg.iter().enumerate() {
            let x = fg / &weight_sum;
            let delta = &x - &mean;
            let _ = mean.g_add_(&(&delta / (k + 1) as f64));
            let _ = m2.g_add_(&(&delta * (&x - &mean)));
        }
        let std = (m2 / passes as f64).sqrt().to_device(Device::Cpu);
        let std = Vec::<f32>::try_from(&std.flatten(0, -1))?;
        let mut t_mean = [0f64; TASKS];
        let mut t_m2 = [0f64; TASKS];
        for (k, p) in pass_tasks.iter().enumerate() {
            for t in 0..TASKS {
                let delta = p[t] - t_mean[t];
                t_mean[t] += delta / (k + 1) as f64;
                t_m2[t] += delta * (p[t] - t_mean[t]);
            }
        }
        let t_std = t_m2.map(|m2| (m2 / passes as f64).sqrt() as f32);
        (Some(std), Some(TaskProbabilities::from_array(t_std)))
    } else {
        (None, None)
    };
    let mut tasks = [0f64; TASKS];
    for p in &pass_tasks {
        for t in 0..TASKS {
            tasks[t] += p[t] / passes as f64;
        }
    }
    let labels = probs.argmax(0, false).to_kind(Kind::Uint8).to_device(Device::Cpu);
    let mut labels = Vec::<u8>::try_from(&labels.flatten(0, -1))?;
    for l in &mut labels {
        if *l == 3 {
            *l = 4;
        }
    }
    crate::postprocess::apply(opts.postprocess, &mut labels, dims);
    crate::postprocess::small_et_to_ncr(&mut labels, opts.min_et_voxels);
    Ok(Prediction {
        labels,
        probabilities: TaskProbabilities::from_array(tasks.map(|v| v as f32)),
        uncertainty,
        task_std,
    })
}

/// Voxel-wise MC-Dropout statistics of one case (see [`run_voxel_mc`]); every map is x fastest
/// on the prepared grid.
#[derive(Debug, Clone)]
pub struct VoxelMc {
    /// Argmax of the MC-mean class probabilities, network classes 0 bg, 1 NCR, 2 ED, 3 ET (no
    /// label cleanup).
    pub classes: Vec<u8>,
    /// MC-mean probability of that class (the top-label confidence).
    pub confidence: Vec<f32>,
    /// Predictive entropy (nats) of the MC-mean class distribution, in `[0, ln 4]`.
    pub entropy: Vec<f32>,
    /// Mutual information between prediction and dropout mask: the predictive entropy minus
    /// the mean entropy of the single passes (nats, >= 0).
    pub mutual_info: Vec<f32>,
    /// Standard deviation over passes of the probability of the argmax class (eq. 6 of the
    /// paper applied per voxel, as the Stage I voxel selection uses it).
    pub class_std: Vec<f32>,
    /// P(positive) of every task in every pass (temperature applied).
    pub tasks: Vec<[f64; TASKS]>,
}

/// Gaussian-weighted sums over windows of the per-window MC mean `[4, vol]`, per-class std
/// `[4, vol]` and mean single-pass entropy `[vol]`, plus each pass's task probabilities.
type VoxelSums = (Tensor, Tensor, Tensor, Vec<[f64; TASKS]>);

impl Engine<'_> {
    /// Per window: the encoder once, `passes` heads (dropout on when `mc`); the per-window
    /// mean, per-class std and mean single-pass entropy are blended across windows with the
    /// Gaussian weights (exact when the volume fits one window, the normal case of the
    /// `small` profile).
    // Long on purpose: the sliding-window loop over MC passes with its running sums; the sums are the loop's shared state.
    fn run_voxel_mc(&self, passes: usize, mc: bool) -> Result<VoxelSums, ModelError> {
        let [nz, ny, nx] = self.shape.map(|v| v as i64);
        let device = self.padded.device();
        let probs = Tensor::zeros([SEG_CLASSES as i64, nz, ny, nx], (Kind::Float, device));
        let stds = Tensor::zeros([SEG_CLASSES as i64, nz, ny, nx], (Kind::Float, device));
        let pass_entropy = Tensor::zeros([nz, ny, nx], (Kind::Float, device));
        let mut votes = TaskVotes::new(passes);
        let windows = self.windows();
        for chunk in windows.chunks(self.batch.max(1)) {
            let (enc, boxes) = self.encode(chunk)?;
            let ctx = self.global.as_ref().map(|features| GlobalContext { features, boxes: &boxes });
            // Welford over passes per window: mean and M2 of the class probabilities.
            let mut mean: Option<Tensor> = None;
            let mut m2: Option<Tensor> = None;
            let mut ent_sum: Option<Tensor> = None;
            for k in 0..passes {
                let (p, task_p) = self.pass(&enc, ctx, mc)?;
                for (i, s) in chunk.iter().enumerate() {
                    let v = self.valid(*s);
                    let g = Self::region(&self.gauss, 0, [0; 3], v);
                    let pi = Self::region(&p.get(i as i64), 1, [0; 3], v);
                    let m = (&g - &g * pi.get(0)).sum(Kind::Double).double_value(&[]);
                    votes.add(k, m, &task_p[i * TASKS..(i + 1) * TASKS]);
                }
                let h = -(&p * p.clamp_min(1e-12).log()).sum_dim_intlist(1, false, Kind::Float);
                ent_sum = Some(match ent_sum {
                    Some(e) => e + h,
                    None => h,
                });
                match (&mut mean, &mut m2) {
                    (Some(mu), Some(m2)) => {
                        let delta = &p - &*mu;
                        let _ = mu.g_add_(&(&delta / (k + 1) as f64));
                        let _ = m2.g_add_(&(&delta * (&p - &*mu)));
                    }
                    _ => {
                        m2 = Some(p.zeros_like());
                        mean = Some(p);
                    }
                }
            }
            let (Some(mean), Some(m2), Some(ent_sum)) = (mean, m2, ent_sum) else {
                return Err(ModelError::Internal("no MC pass ran".into()));
            };
            let std = (m2 / passes as f64).sqrt();
            let ent = ent_sum / passes as f64;
            for (i, s) in chunk.iter().enumerate() {
                let v = self.valid(*s);
                let g = Self::region(&self.gauss, 0, [0; 3], v);
                let i = i as i64;
                let _ = Self::region(&probs, 1, *s, v).g_add_(&(Self::region(&mean.get(i), 1, [0; 3], v) * &g));
                let _ = Self::region(&stds, 1, *s, v).g_add_(&(Self::region(&std.get(i), 1, [0; 3], v) * &g));
                let _ = Self::region(&pass_entropy, 0, *s, v).g_add_(&(Self::region(&ent.get(i), 0, [0; 3], v) * &g));
            }
        }
        Ok((probs, stds, pass_entropy, votes.finish(windows.len())))
    }
}

/// Runs `passes` MC-Dropout passes (dropout on when `mc`; the encoder runs once per window)
/// and returns the voxel maps of [`VoxelMc`]. Must be called with gradients disabled.
pub fn run_voxel_mc(net: &Net, device: Device, case: CaseInput<'_>, how: McPasses) -> Result<VoxelMc, ModelError> {
    let (engine, weight_sum) = how.engine(net, device, case)?;
    let (passes, mc) = (how.passes.max(1), how.mc);
    let (probs, stds, pass_entropy, tasks) = engine.run_voxel_mc(passes, mc)?;
    drop(engine);
    let mean = probs / &weight_sum;
    let stds = stds / &weight_sum;
    let pass_entropy = pass_entropy / &weight_sum;
    let (confidence, classes) = mean.max_dim(0, false);
    let class_std = stds.gather(0, &classes.unsqueeze(0), false).squeeze_dim(0);
    let entropy = -(&mean * mean.clamp_min(1e-12).log()).sum_dim_intlist(0, false, Kind::Float);
    let mutual_info = (&entropy - pass_entropy).clamp_min(0.0);
    let flat_f = |t: Tensor| Vec::<f32>::try_from(&t.to_device(Device::Cpu).flatten(0, -1));
    Ok(VoxelMc {
        classes: Vec::<u8>::try_from(&classes.to_kind(Kind::Uint8).to_device(Device::Cpu).flatten(0, -1))?,
        confidence: flat_f(confidence)?,
        entropy: flat_f(entropy)?,
        mutual_info: flat_f(mutual_info)?,
        class_std: flat_f(class_std)?,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_stats_choose_by_presence_and_parse_their_names() {
        let full = [true; 4];
        let no_flair = [true, true, true, false];
        assert!(!NormStats::Running.case_for(no_flair));
        assert!(NormStats::Case.case_for(full));
        assert!(!NormStats::CaseIfMissing.case_for(full));
        assert!(NormStats::CaseIfMissing.case_for(no_flair));
        for s in [NormStats::Running, NormStats::Case, NormStats::CaseIfMissing] {
            let name = serde_json::to_value(s).unwrap();
            assert_eq!(NormStats::parse(name.as_str().unwrap()), Some(s), "{name}");
        }
        assert_eq!(NormStats::parse("batch"), None);
        let old: InferOptions = serde_json::from_str(
            r#"{"overlap":0.5,"mc_passes":0,"batch":1,"postprocess":"tumor_filter","tta_flips":false,"min_et_voxels":0}"#,
        )
        .unwrap();
        assert_eq!(old.norm_stats, NormStats::Running, "options saved before the field read as running");
    }

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
