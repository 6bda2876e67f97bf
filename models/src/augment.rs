//! Data augmentation of III-B and Fig. A13 and batch assembly: tumour-protect crop, flips,
//! rotation / zoom, gamma, intensity shift / scale, modality drop or shuffle, Tumor-CutMix.
//!
//! Every batch is a pure function of `(seed, step)`: the cases of step `s` come from a
//! per-epoch permutation seeded by `(seed, epoch)`, and each sample's augmentation from a
//! ChaCha8 stream seeded by `(seed, step, slot)`. A resumed run therefore sees exactly the
//! batches an uninterrupted run would have seen, whatever thread produced them.
//!
//! Choices where the paper is silent or our network differs:
//! - Flips default to the left-right axis only: the phantoms (and the clinical prior) tie
//!   IDH to frontal location, which an anterior-posterior flip would destroy. `flip_p`
//!   sets a probability per axis.
//! - "Channel shuffle" (teach the model not to rely on a modality order) does not transfer
//!   literally: each modality has its own stem (eq. 1), so a shuffle would feed T1 into the
//!   FLAIR stem. We offer `modality_drop_p` (drop a random non-empty proper subset of the
//!   present modalities, marking them absent — what the fusion must cope with in the clinic)
//!   and `modality_permute_p` (the literal shuffle among present channels), both off by
//!   default.
//! - Tumor-CutMix pastes the donor's tumour voxels (its segmentation mask, image and
//!   labels) into the host. `cutmix_placement = "donor"` (default) keeps the donor's
//!   volume-relative position (location cues such as IDH's frontal preference survive);
//!   `"random"` is the paper's paste at a random place whose centre lies in the host's
//!   brain. Both cases must have the same modalities. The class target of each task becomes
//!   the tumour-volume share `lambda` of the donor (`soft = lambda * donor + (1 - lambda) *
//!   host`), which the classification loss consumes as a soft target ([`crate::Batch::soft`]);
//!   the hard label (for metrics) is drawn from Bernoulli(`soft`). A mix with an unknown
//!   label stays unknown unless one side's share is 0.
//! - Rotation (about all three axes, `rotate_deg`) and isotropic zoom (`scale_range`) are
//!   applied to the whole volume about its centre: trilinear for images, nearest for labels,
//!   zero outside. Gamma (`gamma_range`) acts per present channel on the brain voxels,
//!   rescaled to [0, 1] and back, so their range and order are kept. All three are off by
//!   default (earlier configs train exactly as before).
//! - When the volume is smaller than the patch along an axis, the patch starts at 0 and is
//!   zero-padded at the end, as inference pads its window; the global-branch box then runs
//!   past 1, as at inference.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::ModelError;
use crate::config::{MODALITIES, ModelConfig, TASKS};
use crate::data::{CaseData, Dataset, tumor_extent};
use crate::train::{Batch, GlobalBatch};

/// Augmentation settings (the `[augment]` table of a run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Probability that a crop is placed to contain the tumour bounding box (or as much of
    /// it as fits); otherwise the crop is uniform.
    pub tumor_protect_p: f64,
    /// Flip probability per axis (x = left-right, y = anterior-posterior, z = inferior-superior).
    pub flip_p: [f64; 3],
    /// Per-channel additive shift drawn from `U(-s, s)` (z-score units), brain voxels only.
    pub intensity_shift: f64,
    /// Per-channel scale drawn from `U(1 - s, 1 + s)`, brain voxels only.
    pub intensity_scale: f64,
    /// Probability of dropping a random non-empty proper subset of the present modalities.
    pub modality_drop_p: f64,
    /// Probability of permuting the data among the present channels (literal channel shuffle).
    pub modality_permute_p: f64,
    /// Probability of Tumor-CutMix with another training case.
    pub cutmix_p: f64,
    /// Where CutMix pastes the donor's tumour.
    pub cutmix_placement: CutMixPlacement,
    /// Probability of a rotation about all three axes.
    pub rotate_p: f64,
    /// Largest rotation per axis, degrees (drawn from `U(-d, d)`).
    pub rotate_deg: f64,
    /// Probability of an isotropic zoom.
    pub scale_p: f64,
    /// Zoom factor range (> 1 enlarges the anatomy).
    pub scale_range: [f64; 2],
    /// Probability of a gamma change per present channel.
    pub gamma_p: f64,
    /// Gamma range (drawn uniformly).
    pub gamma_range: [f64; 2],
}

/// Where Tumor-CutMix pastes the donor's tumour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CutMixPlacement {
    /// At the donor's volume-relative position.
    #[default]
    Donor,
    /// At a random position whose centre is a brain voxel of the host.
    Random,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            tumor_protect_p: 0.8,
            flip_p: [0.5, 0.0, 0.0],
            intensity_shift: 0.1,
            intensity_scale: 0.1,
            modality_drop_p: 0.0,
            modality_permute_p: 0.0,
            cutmix_p: 0.3,
            cutmix_placement: CutMixPlacement::Donor,
            rotate_p: 0.0,
            rotate_deg: 15.0,
            scale_p: 0.0,
            scale_range: [0.85, 1.15],
            gamma_p: 0.0,
            gamma_range: [0.7, 1.5],
        }
    }
}

impl AugmentConfig {
    /// Random crops only (no flips, intensity changes, modality changes or CutMix).
    pub fn none() -> Self {
        Self {
            tumor_protect_p: 0.0,
            flip_p: [0.0; 3],
            intensity_shift: 0.0,
            intensity_scale: 0.0,
            cutmix_p: 0.0,
            rotate_deg: 0.0,
            scale_range: [1.0, 1.0],
            gamma_range: [1.0, 1.0],
            // Modality drop and shuffle, rotation, scaling and gamma are off by default too.
            ..Self::default()
        }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ModelError> {
        let probs = [
            ("tumor_protect_p", self.tumor_protect_p),
            ("flip_p[0]", self.flip_p[0]),
            ("flip_p[1]", self.flip_p[1]),
            ("flip_p[2]", self.flip_p[2]),
            ("modality_drop_p", self.modality_drop_p),
            ("modality_permute_p", self.modality_permute_p),
            ("cutmix_p", self.cutmix_p),
            ("rotate_p", self.rotate_p),
            ("scale_p", self.scale_p),
            ("gamma_p", self.gamma_p),
        ];
        for (name, p) in probs {
            if !(0.0..=1.0).contains(&p) {
                return Err(ModelError::Config(format!("augment.{name} = {p}: expected a probability in [0, 1]")));
            }
        }
        if !(0.0..1.0).contains(&self.intensity_scale) || self.intensity_shift.is_nan() || self.intensity_shift < 0.0 {
            return Err(ModelError::Config(format!(
                "augment.intensity_scale = {} / intensity_shift = {}: expected scale in [0, 1) and shift >= 0",
                self.intensity_scale, self.intensity_shift
            )));
        }
        if !(0.0..=90.0).contains(&self.rotate_deg) {
            return Err(ModelError::Config(format!(
                "augment.rotate_deg = {}: expected degrees in [0, 90]",
                self.rotate_deg
            )));
        }
        for (name, [lo, hi], min) in [("scale_range", self.scale_range, 0.5), ("gamma_range", self.gamma_range, 0.1)] {
            if !(lo >= min && hi >= lo && hi <= 4.0) {
                return Err(ModelError::Config(format!(
                    "augment.{name} = [{lo}, {hi}]: expected an increasing range within [{min}, 4]"
                )));
            }
        }
        Ok(())
    }
}

/// A whole (augmented) volume being worked on, x fastest, `dims = [nx, ny, nz]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume4 {
    /// Grid.
    pub dims: [usize; 3],
    /// Four channels, channel-major.
    pub image: Vec<f32>,
    /// Network classes 0..3.
    pub seg: Vec<u8>,
    /// Modality presence.
    pub present: [bool; MODALITIES],
}

impl Volume4 {
    /// A copy of a cached case.
    pub fn of(c: &CaseData) -> Self {
        Self { dims: c.dims, image: c.image.clone(), seg: c.seg.clone(), present: c.present }
    }

    fn voxels(&self) -> usize {
        self.dims.iter().product()
    }
}

/// What Tumor-CutMix did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CutMixInfo {
    /// Donor tumour voxels pasted.
    pub donor_voxels: usize,
    /// Host tumour voxels left after the paste.
    pub host_voxels: usize,
    /// Donor share of the composite tumour volume.
    pub share: f64,
    /// Where the donor box landed in the host (lower corner, x/y/z).
    pub offset: [usize; 3],
}

/// Pastes `donor`'s tumour voxels into `host` (where: `placement`; `rng` draws the random
/// place). Returns None when the donor has no tumour or other modalities.
pub fn tumor_cutmix(
    host: &mut Volume4,
    donor: &CaseData,
    placement: CutMixPlacement,
    rng: &mut impl Rng,
) -> Option<CutMixInfo> {
    let (lo, hi) = donor.tumor_bbox?;
    if donor.present != host.present {
        return None;
    }
    let mut lo = lo;
    let mut size: [usize; 3] = std::array::from_fn(|a| hi[a] - lo[a]);
    let mut offset = [0usize; 3];
    for a in 0..3 {
        // Shrink a box larger than the host around its centre.
        if size[a] > host.dims[a] {
            lo[a] += (size[a] - host.dims[a]) / 2;
            size[a] = host.dims[a];
        }
        let centre = (lo[a] as f64 + size[a] as f64 / 2.0) / donor.dims[a] as f64;
        let start = (centre * host.dims[a] as f64 - size[a] as f64 / 2.0).round();
        offset[a] = (start.max(0.0) as usize).min(host.dims[a] - size[a]);
    }
    if placement == CutMixPlacement::Random {
        // A few tries for a box whose centre is a brain voxel; else the donor's position.
        let n = host.voxels();
        let [hx, hy, _] = host.dims;
        for _ in 0..32 {
            let cand: [usize; 3] = std::array::from_fn(|a| rng.random_range(0..=host.dims[a] - size[a]));
            let c: [usize; 3] = std::array::from_fn(|a| cand[a] + size[a] / 2);
            let i = c[0] + hx * (c[1] + hy * c[2]);
            if (0..MODALITIES).any(|ch| host.present[ch] && host.image[ch * n + i] != 0.0) {
                offset = cand;
                break;
            }
        }
    }
    let [dx, dy, _] = donor.dims;
    let [hx, hy, _] = host.dims;
    let (dn, hn) = (donor.voxels(), host.voxels());
    let mut pasted = 0usize;
    for z in 0..size[2] {
        for y in 0..size[1] {
            for x in 0..size[0] {
                let di = (lo[0] + x) + dx * ((lo[1] + y) + dy * (lo[2] + z));
                let label = donor.seg[di];
                // Tumour voxels only (classes 1..3 or whole tumour; not ignored ones).
                if !(1..=crate::partial::SEG_TUMOUR).contains(&label) {
                    continue;
                }
                let hi_ = (offset[0] + x) + hx * ((offset[1] + y) + hy * (offset[2] + z));
                host.seg[hi_] = label;
                for c in 0..MODALITIES {
                    host.image[c * hn + hi_] = donor.image[c * dn + di];
                }
                pasted += 1;
            }
        }
    }
    let total = host.seg.iter().filter(|&&v| (1..=crate::partial::SEG_TUMOUR).contains(&v)).count();
    let host_voxels = total - pasted;
    Some(CutMixInfo {
        donor_voxels: pasted,
        host_voxels,
        share: if total > 0 { pasted as f64 / total as f64 } else { 0.0 },
        offset,
    })
}

/// Mixed task targets: `(hard, soft)` per task for donor share `share` (see module docs).
pub fn mix_targets(
    host: [Option<bool>; TASKS],
    donor: [Option<bool>; TASKS],
    share: f64,
    rng: &mut impl Rng,
) -> ([Option<bool>; TASKS], [Option<f32>; TASKS]) {
    let mut hard = [None; TASKS];
    let mut soft = [None; TASKS];
    for t in 0..TASKS {
        let s = match (host[t], donor[t]) {
            (Some(h), Some(d)) => Some(share * f64::from(u8::from(d)) + (1.0 - share) * f64::from(u8::from(h))),
            (Some(h), None) if share <= 0.0 => Some(f64::from(u8::from(h))),
            (None, Some(d)) if share >= 1.0 => Some(f64::from(u8::from(d))),
            _ => None,
        };
        // Always draw, so that later draws do not depend on which labels are known.
        let u: f64 = rng.random();
        if let Some(s) = s {
            soft[t] = Some(s as f32);
            hard[t] = Some(u < s);
        }
    }
    (hard, soft)
}

/// Flips the volume along axis `a` (0 = x, 1 = y, 2 = z) in place.
pub fn flip(v: &mut Volume4, axis: usize) {
    let [nx, ny, nz] = v.dims;
    let n = v.voxels();
    let idx = |x: usize, y: usize, z: usize| x + nx * (y + ny * z);
    let mirror = |x: usize, y: usize, z: usize| match axis {
        0 => idx(nx - 1 - x, y, z),
        1 => idx(x, ny - 1 - y, z),
        _ => idx(x, y, nz - 1 - z),
    };
    let lim = match axis {
        0 => [nx / 2, ny, nz],
        1 => [nx, ny / 2, nz],
        _ => [nx, ny, nz / 2],
    };
    for z in 0..lim[2] {
        for y in 0..lim[1] {
            for x in 0..lim[0] {
                let (i, j) = (idx(x, y, z), mirror(x, y, z));
                v.seg.swap(i, j);
                for c in 0..MODALITIES {
                    v.image.swap(c * n + i, c * n + j);
                }
            }
        }
    }
}

/// Rotates the volume by `degrees` about the x, y and z axes (in that order) and zooms it
/// by `zoom` about its centre: trilinear for the images, nearest for the labels, zero
/// outside the source.
pub fn rotate_zoom(v: &mut Volume4, degrees: [f64; 3], zoom: f64) {
    let [nx, ny, nz] = v.dims;
    let n = v.voxels();
    let (sx, cx) = degrees[0].to_radians().sin_cos();
    let (sy, cy) = degrees[1].to_radians().sin_cos();
    let (sz, cz) = degrees[2].to_radians().sin_cos();
    let rx = [[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]];
    let ry = [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]];
    let rz = [[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]];
    let mul = |a: [[f64; 3]; 3], b: [[f64; 3]; 3]| -> [[f64; 3]; 3] {
        std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| a[i][k] * b[k][j]).sum()))
    };
    let r = mul(rz, mul(ry, rx));
    // Output voxel p samples the source at c + R^T (p - c) / zoom.
    let inv: [[f64; 3]; 3] = std::array::from_fn(|i| std::array::from_fn(|j| r[j][i] / zoom));
    let centre = [(nx as f64 - 1.0) / 2.0, (ny as f64 - 1.0) / 2.0, (nz as f64 - 1.0) / 2.0];
    let present: Vec<usize> = (0..MODALITIES).filter(|&c| v.present[c]).collect();
    let mut image = vec![0f32; v.image.len()];
    let mut seg = vec![0u8; n];
    let at = |x: usize, y: usize, z: usize| x + nx * (y + ny * z);
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let d = [x as f64 - centre[0], y as f64 - centre[1], z as f64 - centre[2]];
                let s: [f64; 3] =
                    std::array::from_fn(|i| centre[i] + inv[i][0] * d[0] + inv[i][1] * d[1] + inv[i][2] * d[2]);
                let o = at(x, y, z);
                let near = s.map(f64::round);
                if (0..3).all(|i| near[i] >= 0.0 && near[i] <= [nx, ny, nz][i] as f64 - 1.0) {
                    seg[o] = v.seg[at(near[0] as usize, near[1] as usize, near[2] as usize)];
                }
                let lo = s.map(f64::floor);
                if (0..3).any(|i| lo[i] < 0.0 || lo[i] + 1.0 > [nx, ny, nz][i] as f64 - 1.0) {
                    // Border: nearest neighbour inside, zero outside.
                    if (0..3).all(|i| near[i] >= 0.0 && near[i] <= [nx, ny, nz][i] as f64 - 1.0) {
                        let src = at(near[0] as usize, near[1] as usize, near[2] as usize);
                        for &c in &present {
                            image[c * n + o] = v.image[c * n + src];
                        }
                    }
                    continue;
                }
                let f = [s[0] - lo[0], s[1] - lo[1], s[2] - lo[2]];
                let (x0, y0, z0) = (lo[0] as usize, lo[1] as usize, lo[2] as usize);
                for &c in &present {
                    let ch = &v.image[c * n..(c + 1) * n];
                    let mut acc = 0.0f64;
                    for (dz, wz) in [(0, 1.0 - f[2]), (1, f[2])] {
                        for (dy, wy) in [(0, 1.0 - f[1]), (1, f[1])] {
                            for (dx, wx) in [(0, 1.0 - f[0]), (1, f[0])] {
                                acc += wx * wy * wz * f64::from(ch[at(x0 + dx, y0 + dy, z0 + dz)]);
                            }
                        }
                    }
                    image[c * n + o] = acc as f32;
                }
            }
        }
    }
    v.image = image;
    v.seg = seg;
}

/// Gamma change of channel `c`: its brain (non-zero) voxels are rescaled to [0, 1] by their
/// range, raised to `g`, and mapped back, so range, order and background are kept.
pub fn gamma(v: &mut Volume4, c: usize, g: f64) {
    let n = v.voxels();
    let ch = &mut v.image[c * n..(c + 1) * n];
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &x in ch.iter().filter(|x| **x != 0.0) {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    if hi <= lo || !hi.is_finite() || !lo.is_finite() {
        return;
    }
    let span = f64::from(hi - lo);
    for x in ch.iter_mut().filter(|x| **x != 0.0) {
        let t = f64::from(*x - lo) / span;
        let y = (f64::from(lo) + t.powf(g) * span) as f32;
        // A brain voxel must stay non-zero (zero marks background).
        *x = if y == 0.0 { f32::MIN_POSITIVE } else { y };
    }
}

/// Start of a crop of length `p` on an axis of length `n`: tumour-protecting when `bbox`
/// (lo, hi) is given, else uniform. `n <= p` gives 0 (the patch is padded at the end).
pub fn crop_start(n: usize, p: usize, bbox: Option<(usize, usize)>, rng: &mut impl Rng) -> usize {
    if n <= p {
        return 0;
    }
    let (a, b) = match bbox {
        Some((lo, hi)) if hi - lo <= p => (hi.saturating_sub(p), lo.min(n - p)),
        Some((lo, hi)) => (lo, (hi - p).min(n - p)),
        None => (0, n - p),
    };
    rng.random_range(a..=b)
}

/// Adaptive average pooling of one channel from `dims` to `out` (x fastest, both
/// `[x, y, z]`), with libtorch's bin edges `floor(i n / g) .. ceil((i + 1) n / g)`.
pub fn adaptive_avg_pool(data: &[f32], dims: [usize; 3], out: [usize; 3]) -> Vec<f32> {
    let bins = |n: usize, g: usize| -> Vec<(usize, usize)> {
        (0..g).map(|i| ((i * n) / g, ((i + 1) * n).div_ceil(g))).collect()
    };
    // Pool along x, then y, then z.
    let mut cur = data.to_vec();
    let mut cd = dims;
    for axis in 0..3 {
        let b = bins(cd[axis], out[axis]);
        let mut nd = cd;
        nd[axis] = out[axis];
        let mut next = vec![0f32; nd.iter().product()];
        for z in 0..nd[2] {
            for y in 0..nd[1] {
                for x in 0..nd[0] {
                    let p = [x, y, z];
                    let (s, e) = b[p[axis]];
                    let mut sum = 0f32;
                    for k in s..e {
                        let mut q = p;
                        q[axis] = k;
                        sum += cur[q[0] + cd[0] * (q[1] + cd[1] * q[2])];
                    }
                    next[x + nd[0] * (y + nd[1] * z)] = sum / (e - s) as f32;
                }
            }
        }
        cur = next;
        cd = nd;
    }
    cur
}

/// Nearest-neighbour label resampling from `dims` to `out` (libtorch's legacy `nearest`:
/// source index `floor(i * n / g)`).
pub fn nearest_labels(seg: &[u8], dims: [usize; 3], out: [usize; 3]) -> Vec<i64> {
    let map = |a: usize| -> Vec<usize> {
        let scale = dims[a] as f32 / out[a] as f32;
        (0..out[a]).map(|i| ((i as f32 * scale).floor() as usize).min(dims[a] - 1)).collect()
    };
    let (mx, my, mz) = (map(0), map(1), map(2));
    let mut v = Vec::with_capacity(out.iter().product());
    for &z in &mz {
        for &y in &my {
            for &x in &mx {
                v.push(i64::from(seg[x + dims[0] * (y + dims[1] * z)]));
            }
        }
    }
    v
}

/// Host-side global-branch inputs of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct HostGlobal {
    /// `[z, y, x]` size.
    pub size: [usize; 3],
    /// `[B, 4, G..]`.
    pub image: Vec<f32>,
    /// `[B, G..]` classes.
    pub seg: Vec<i64>,
    /// Patch boxes `[z0, y0, x0, z1, y1, x1]` as fractions of the whole volume.
    pub boxes: Vec<[f32; 6]>,
}

/// A batch in plain memory (built on the producer thread, turned into tensors on the
/// training thread by [`HostBatch::to_batch`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// Step this batch is for.
    pub step: usize,
    /// Patch `[z, y, x]`.
    pub patch: [usize; 3],
    /// `[B, 4, D, H, W]`.
    pub image: Vec<f32>,
    /// `[B, D, H, W]` classes 0..3.
    pub seg: Vec<i64>,
    /// Hard targets per sample and task.
    pub tasks: Vec<[Option<bool>; TASKS]>,
    /// Soft targets (P(positive)) per sample and task: the label itself, or the CutMix mix.
    pub soft: Vec<[Option<f32>; TASKS]>,
    /// Modality presence per sample (after modality drop).
    pub present: Vec<[bool; MODALITIES]>,
    /// Global-branch inputs (when the model has the branch).
    pub global: Option<HostGlobal>,
    /// Host case (and CutMix donor) of each sample.
    pub cases: Vec<String>,
}

impl HostBatch {
    /// Samples in the batch.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The tensors the trainer takes (CPU; the trainer moves them to its device).
    pub fn to_batch(&self) -> Batch {
        let b = self.len() as i64;
        let [d, h, w] = self.patch.map(|v| v as i64);
        Batch {
            image: Tensor::from_slice(&self.image).view([b, MODALITIES as i64, d, h, w]),
            seg: Tensor::from_slice(&self.seg).view([b, d, h, w]),
            tasks: self.tasks.clone(),
            present: self.present.clone(),
            global: self.global.as_ref().map(|g| {
                let [gz, gy, gx] = g.size.map(|v| v as i64);
                GlobalBatch {
                    image: Tensor::from_slice(&g.image).view([b, MODALITIES as i64, gz, gy, gx]),
                    seg: Tensor::from_slice(&g.seg).view([b, gz, gy, gx]),
                    boxes: g.boxes.clone(),
                }
            }),
            soft: Some(self.soft.clone()),
        }
    }
}

/// Draws batches from the training cases of a dataset.
#[derive(Debug, Clone)]
pub struct Sampler {
    data: Arc<Dataset>,
    indices: Vec<usize>,
    aug: AugmentConfig,
    /// Patch `[x, y, z]`.
    patch: [usize; 3],
    /// Global size `[x, y, z]` (None without the global branch).
    global: Option<[usize; 3]>,
    batch: usize,
    seed: u64,
}

fn mix_seed(parts: &[u64]) -> u64 {
    let mut z = 0x243F_6A88_85A3_08D3u64;
    for &p in parts {
        z ^= p.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(z << 6).wrapping_add(z >> 2);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

impl Sampler {
    /// A sampler over `indices` of `data` for a model `cfg` (patch and global size).
    pub fn new(
        data: Arc<Dataset>,
        indices: Vec<usize>,
        aug: AugmentConfig,
        cfg: &ModelConfig,
        batch: usize,
        seed: u64,
    ) -> Result<Self, ModelError> {
        aug.validate()?;
        if indices.is_empty() {
            return Err(ModelError::Input("no training case to sample from".into()));
        }
        if batch == 0 {
            return Err(ModelError::Config("batch size must be at least 1".into()));
        }
        if let Some(&bad) = indices.iter().find(|&&i| i >= data.cases.len()) {
            return Err(ModelError::Input(format!("case index {bad} out of range")));
        }
        let rev = |v: [usize; 3]| [v[2], v[1], v[0]];
        Ok(Self {
            data,
            indices,
            aug,
            patch: rev(cfg.patch),
            global: cfg.global_branch.then(|| rev(cfg.global_size)),
            batch,
            seed,
        })
    }

    /// Steps per pass over the training cases (`ceil(cases / batch)`).
    pub fn steps_per_epoch(&self) -> usize {
        self.indices.len().div_ceil(self.batch)
    }

    /// The cases of step `step`.
    pub fn cases_of(&self, step: usize) -> Vec<usize> {
        let spe = self.steps_per_epoch();
        let (epoch, pos) = (step / spe, step % spe);
        let mut perm = self.indices.clone();
        perm.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(&[self.seed, 0xE90C, epoch as u64])));
        (0..self.batch).map(|j| perm[(pos * self.batch + j) % perm.len()]).collect()
    }

    /// One augmented sample of case `idx`, drawn from `rng`.
    // Long on purpose: every random draw of one augmented sample happens here in a fixed order, which makes a run reproducible from its seed.
    #[allow(clippy::type_complexity)]
    fn sample(
        &self,
        idx: usize,
        rng: &mut ChaCha8Rng,
    ) -> (Volume4, [Option<bool>; TASKS], [Option<f32>; TASKS], String) {
        let a = &self.aug;
        let case = &self.data.cases[idx];
        let mut v = Volume4::of(case);
        let mut tasks = case.tasks;
        let mut soft = case.tasks.map(|t| t.map(|b| f32::from(u8::from(b))));
        let mut name = case.name.clone();
        // Tumor-CutMix.
        let do_mix = rng.random::<f64>() < a.cutmix_p;
        let donor_pick: f64 = rng.random();
        if do_mix {
            let donors: Vec<usize> = self
                .indices
                .iter()
                .copied()
                .filter(|&j| {
                    j != idx && self.data.cases[j].tumor_bbox.is_some() && self.data.cases[j].present == case.present
                })
                .collect();
            if !donors.is_empty() {
                let j = donors[((donor_pick * donors.len() as f64) as usize).min(donors.len() - 1)];
                let donor = &self.data.cases[j];
                if let Some(info) = tumor_cutmix(&mut v, donor, a.cutmix_placement, rng) {
                    let (h, s) = mix_targets(case.tasks, donor.tasks, info.share, rng);
                    tasks = h;
                    soft = s;
                    name = format!("{}+{}", case.name, donor.name);
                }
            }
        }
        // Flips.
        for axis in 0..3 {
            if rng.random::<f64>() < a.flip_p[axis] {
                flip(&mut v, axis);
            }
        }
        // Rotation / zoom and gamma draw from the stream only when configured, so that a
        // config without them sees the batches it saw before they existed.
        if a.rotate_p > 0.0 || a.scale_p > 0.0 {
            let do_rot = rng.random::<f64>() < a.rotate_p;
            let angles: [f64; 3] = std::array::from_fn(|_| (2.0 * rng.random::<f64>() - 1.0) * a.rotate_deg);
            let do_zoom = rng.random::<f64>() < a.scale_p;
            let zoom = a.scale_range[0] + (a.scale_range[1] - a.scale_range[0]) * rng.random::<f64>();
            if do_rot || do_zoom {
                rotate_zoom(&mut v, if do_rot { angles } else { [0.0; 3] }, if do_zoom { zoom } else { 1.0 });
            }
        }
        if a.gamma_p > 0.0 {
            for c in 0..MODALITIES {
                let on = rng.random::<f64>() < a.gamma_p;
                let g = a.gamma_range[0] + (a.gamma_range[1] - a.gamma_range[0]) * rng.random::<f64>();
                if on && v.present[c] {
                    gamma(&mut v, c, g);
                }
            }
        }
        // Intensity shift / scale per present channel, brain (non-zero) voxels only.
        let n = v.voxels();
        for c in 0..MODALITIES {
            let scale = (1.0 + a.intensity_scale * (2.0 * rng.random::<f64>() - 1.0)) as f32;
            let shift = (a.intensity_shift * (2.0 * rng.random::<f64>() - 1.0)) as f32;
            if !v.present[c] || (scale == 1.0 && shift == 0.0) {
                continue;
            }
            for x in &mut v.image[c * n..(c + 1) * n] {
                if *x != 0.0 {
                    *x = *x * scale + shift;
                }
            }
        }
        // Modality drop / permutation among present channels.
        let present: Vec<usize> = (0..MODALITIES).filter(|&c| v.present[c]).collect();
        if present.len() > 1 && rng.random::<f64>() < a.modality_drop_p {
            let k = present.len();
            // A non-empty proper subset to drop: a random mask in 1..2^k - 1.
            let mask = rng.random_range(1..(1u32 << k) - 1);
            for (bit, &c) in present.iter().enumerate() {
                if mask & (1 << bit) != 0 {
                    v.present[c] = false;
                    v.image[c * n..(c + 1) * n].fill(0.0);
                }
            }
        }
        if present.len() > 1 && rng.random::<f64>() < a.modality_permute_p {
            let mut order = present.clone();
            order.shuffle(rng);
            let old = v.image.clone();
            for (&dst, &src) in present.iter().zip(&order) {
                v.image[dst * n..(dst + 1) * n].copy_from_slice(&old[src * n..(src + 1) * n]);
            }
        }
        (v, tasks, soft, name)
    }

    /// The batch of step `step` (a pure function of the seed and the step).
    pub fn batch(&self, step: usize) -> HostBatch {
        let [px, py, pz] = self.patch;
        let pn = px * py * pz;
        let cases = self.cases_of(step);
        let b = cases.len();
        let mut out = HostBatch {
            step,
            patch: [pz, py, px],
            image: vec![0.0; b * MODALITIES * pn],
            seg: vec![0; b * pn],
            tasks: Vec::with_capacity(b),
            soft: Vec::with_capacity(b),
            present: Vec::with_capacity(b),
            global: self.global.map(|g| HostGlobal {
                size: [g[2], g[1], g[0]],
                image: Vec::with_capacity(b * MODALITIES * g.iter().product::<usize>()),
                seg: Vec::with_capacity(b * g.iter().product::<usize>()),
                boxes: Vec::with_capacity(b),
            }),
            cases: Vec::with_capacity(b),
        };
        for (slot, &idx) in cases.iter().enumerate() {
            let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&[self.seed, 0xA06, step as u64, slot as u64]));
            let (v, tasks, soft, name) = self.sample(idx, &mut rng);
            let protect = rng.random::<f64>() < self.aug.tumor_protect_p;
            let (bbox, _) = if protect { tumor_extent(&v.seg, v.dims) } else { (None, 0) };
            let start: [usize; 3] = std::array::from_fn(|a| {
                crop_start(v.dims[a], self.patch[a], bbox.map(|(lo, hi)| (lo[a], hi[a])), &mut rng)
            });
            // Copy the patch (zero padding beyond the volume).
            let [nx, ny, nz] = v.dims;
            let n = v.voxels();
            let len: [usize; 3] = std::array::from_fn(|a| self.patch[a].min(v.dims[a] - start[a]));
            for z in 0..len[2] {
                for y in 0..len[1] {
                    let src = start[0] + nx * ((start[1] + y) + ny * (start[2] + z));
                    let dst = px * (y + py * z);
                    for c in 0..MODALITIES {
                        let o = (slot * MODALITIES + c) * pn + dst;
                        out.image[o..o + len[0]].copy_from_slice(&v.image[c * n + src..c * n + src + len[0]]);
                    }
                    let o = slot * pn + dst;
                    for (k, s) in v.seg[src..src + len[0]].iter().enumerate() {
                        out.seg[o + k] = i64::from(*s);
                    }
                }
            }
            if let (Some(g), Some(gsize)) = (&mut out.global, self.global) {
                for c in 0..MODALITIES {
                    g.image.extend(adaptive_avg_pool(&v.image[c * n..(c + 1) * n], v.dims, gsize));
                }
                g.seg.extend(nearest_labels(&v.seg, v.dims, gsize));
                let frac = |a: usize, at: usize| at as f32 / [nx, ny, nz][a] as f32;
                g.boxes.push([
                    frac(2, start[2]),
                    frac(1, start[1]),
                    frac(0, start[0]),
                    frac(2, start[2] + self.patch[2]),
                    frac(1, start[1] + self.patch[1]),
                    frac(0, start[0] + self.patch[0]),
                ]);
            }
            out.tasks.push(tasks);
            out.soft.push(soft);
            out.present.push(v.present);
            out.cases.push(name);
        }
        out
    }
}

/// Batches for a range of steps, produced on a background thread (bounded channel), so that
/// augmentation overlaps the training step.
#[derive(Debug)]
pub struct BatchStream {
    rx: Option<Receiver<Result<HostBatch, String>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl BatchStream {
    /// Starts producing batches for steps `start..end`, at most `depth` ahead.
    pub fn spawn(sampler: Sampler, start: usize, end: usize, depth: usize) -> Self {
        let (tx, rx): (SyncSender<Result<HostBatch, String>>, _) = sync_channel(depth.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("gmmas-augment".into())
            .spawn(move || {
                for step in start..end {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    let b =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sampler.batch(step))).map_err(|p| {
                            let msg = p
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_else(|| "unknown panic".into());
                            format!("augmentation failed at step {step}: {msg}")
                        });
                    let failed = b.is_err();
                    if tx.send(b).is_err() || failed {
                        break;
                    }
                }
            })
            .ok();
        Self { rx: Some(rx), stop, handle }
    }

    /// The next batch; None when the range is exhausted; Err when the producer failed.
    pub fn next_batch(&mut self) -> Option<Result<HostBatch, String>> {
        match &self.rx {
            Some(rx) => rx.recv().ok(),
            None => None,
        }
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a producer waiting on a full channel.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Subset;

    /// A case with a cuboid tumour (NCR core, ET shell, ED around) and distinct channel values.
    fn case(name: &str, dims: [usize; 3], lo: [usize; 3], hi: [usize; 3], marker: f32) -> CaseData {
        let n: usize = dims.iter().product();
        let mut image = vec![0f32; 4 * n];
        let mut seg = vec![0u8; n];
        for z in 0..dims[2] {
            for y in 0..dims[1] {
                for x in 0..dims[0] {
                    let i = x + dims[0] * (y + dims[1] * z);
                    let p = [x, y, z];
                    let inside = (0..3).all(|a| p[a] >= lo[a] && p[a] < hi[a]);
                    if inside {
                        seg[i] = 1 + ((x + y + z) % 3) as u8;
                    }
                    for c in 0..4 {
                        image[c * n + i] = if inside { marker } else { 1.0 + c as f32 * 0.1 };
                    }
                }
            }
        }
        let (tumor_bbox, tumor_voxels) = tumor_extent(&seg, dims);
        CaseData {
            name: name.into(),
            dir: "/nowhere".into(),
            dims,
            spacing: [1.0; 3],
            present: [true; 4],
            image,
            seg,
            has_seg: true,
            supervision: crate::partial::SegSupervision::Full,
            tasks: [Some(true), Some(false), None, Some(false)],
            tumor_bbox,
            tumor_voxels,
            file_sha256: Vec::new(),
            sha256: String::new(),
        }
    }

    fn dataset(cases: Vec<CaseData>) -> Arc<Dataset> {
        let n = cases.len();
        Arc::new(Dataset { cases, subsets: vec![Subset::Train; n], warnings: Vec::new(), skipped: Vec::new() })
    }

    #[test]
    fn tumor_protect_crop_contains_the_tumour() {
        let c = case("a", [60, 50, 40], [40, 5, 28], [52, 20, 38], 5.0);
        let tumour = c.tumor_voxels;
        let data = dataset(vec![c]);
        let aug = AugmentConfig { tumor_protect_p: 1.0, ..AugmentConfig::none() };
        let s = Sampler::new(data.clone(), vec![0], aug, &ModelConfig::tiny(), 1, 3).unwrap();
        for step in 0..20 {
            let b = s.batch(step);
            let inside = b.seg.iter().filter(|&&v| v != 0).count();
            assert_eq!(inside, tumour, "step {step}");
        }
        // Uniform crops miss some of it.
        let s = Sampler::new(data, vec![0], AugmentConfig::none(), &ModelConfig::tiny(), 1, 3).unwrap();
        let missed = (0..20).any(|step| s.batch(step).seg.iter().filter(|&&v| v != 0).count() < tumour);
        assert!(missed);
        // A tumour longer than the patch: the crop lies inside its extent on that axis.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            let s = crop_start(100, 32, Some((20, 70)), &mut rng);
            assert!((20..=38).contains(&s));
            let s = crop_start(100, 32, Some((80, 90)), &mut rng);
            assert!(s <= 80 && s + 32 >= 90 && s + 32 <= 100);
        }
        assert_eq!(crop_start(20, 32, Some((2, 5)), &mut rng), 0);
    }

    #[test]
    fn cutmix_share_equals_pasted_tumour_volume() {
        let host = case("host", [40, 40, 32], [5, 5, 5], [17, 15, 13], 3.0);
        let donor = case("donor", [36, 40, 32], [8, 10, 8], [18, 24, 16], 9.0);
        let mut v = Volume4::of(&host);
        let info = tumor_cutmix(&mut v, &donor, CutMixPlacement::Donor, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        let tumour: Vec<usize> = (0..v.seg.len()).filter(|&i| v.seg[i] != 0).collect();
        let from_donor = tumour.iter().filter(|&&i| v.image[i] == 9.0).count();
        assert_eq!(info.donor_voxels, donor.tumor_voxels);
        assert_eq!(from_donor, info.donor_voxels);
        assert_eq!(tumour.len(), info.donor_voxels + info.host_voxels);
        let share = from_donor as f64 / tumour.len() as f64;
        assert!((info.share - share).abs() < 1e-12);
        assert!(info.host_voxels < host.tumor_voxels, "the paste overlaps the host tumour");
        // Same relative position: donor box centre x 13/36 -> host 40 * 13/36 - 5 = 9.44.
        assert_eq!(info.offset[0], 9);
        // Pasted labels are the donor's.
        let n = v.seg.len();
        for &i in &tumour {
            if v.image[i] == 9.0 {
                assert!(v.image[3 * n + i] == 9.0);
            }
        }
        // Soft targets: grade host 1 / donor 0 -> 1 - share; hard draws average to it.
        let mut d = donor.clone();
        d.tasks = [Some(false), Some(false), Some(true), None];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (_, soft) = mix_targets(host.tasks, d.tasks, info.share, &mut rng);
        assert!((f64::from(soft[0].unwrap()) - (1.0 - info.share)).abs() < 1e-6);
        assert_eq!(soft[1], Some(0.0));
        assert_eq!(soft[2], None);
        assert_eq!(soft[3], None);
        let draws = 4000;
        let positives =
            (0..draws).filter(|_| mix_targets(host.tasks, d.tasks, info.share, &mut rng).0[0] == Some(true)).count();
        assert!((positives as f64 / draws as f64 - (1.0 - info.share)).abs() < 0.03);
    }

    #[test]
    fn random_cutmix_lands_in_the_brain_and_varies() {
        let mut host = case("host", [48, 48, 32], [20, 20, 10], [26, 26, 16], 3.0);
        let dims = host.dims;
        let n: usize = dims.iter().product();
        // Brain = x in 12..36, y in 12..36 (everything else background zero).
        for z in 0..dims[2] {
            for y in 0..dims[1] {
                for x in 0..dims[0] {
                    if !(12..36).contains(&x) || !(12..36).contains(&y) {
                        for c in 0..4 {
                            host.image[c * n + x + dims[0] * (y + dims[1] * z)] = 0.0;
                        }
                    }
                }
            }
        }
        let donor = case("donor", [48, 48, 32], [2, 2, 2], [8, 10, 6], 9.0);
        let mut offsets = std::collections::BTreeSet::new();
        for seed in 0..20 {
            let mut v = Volume4::of(&host);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let info = tumor_cutmix(&mut v, &donor, CutMixPlacement::Random, &mut rng).unwrap();
            let centre = [info.offset[0] + 3, info.offset[1] + 4];
            assert!((12..36).contains(&centre[0]) && (12..36).contains(&centre[1]), "{:?}", info.offset);
            assert_eq!(info.donor_voxels, donor.tumor_voxels);
            offsets.insert(info.offset);
        }
        assert!(offsets.len() > 5, "random placement should vary: {offsets:?}");
        // The donor placement keeps the corner position (outside this host's brain).
        let mut v = Volume4::of(&host);
        let info = tumor_cutmix(&mut v, &donor, CutMixPlacement::Donor, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        assert!(info.offset[0] < 12);
    }

    /// The case's volume with its first channel's voxel `i` set to `f(i)`.
    fn first_channel(c: &CaseData, f: impl Fn(usize) -> f32) -> Volume4 {
        let mut v = Volume4::of(c);
        for i in 0..v.seg.len() {
            v.image[i] = f(i);
        }
        v
    }

    #[test]
    fn rotate_zoom_identity_quarter_turn_and_zoom() {
        // Distinct values per voxel to see where each one goes.
        let mut v = first_channel(&case("a", [24, 24, 16], [3, 5, 4], [9, 14, 10], 7.0), |i| 1.0 + i as f32);
        let orig = v.clone();
        rotate_zoom(&mut v, [0.0; 3], 1.0);
        assert_eq!(v.seg, orig.seg);
        assert!(v.image.iter().zip(&orig.image).all(|(a, b)| (a - b).abs() < 1e-3));
        // 90 degrees about z on a square slice: out[x, y] = in[y, 23 - x].
        let mut r = orig.clone();
        rotate_zoom(&mut r, [0.0, 0.0, 90.0], 1.0);
        let at = |x: usize, y: usize, z: usize| x + 24 * (y + 24 * z);
        for z in 0..16 {
            for y in 0..24 {
                for x in 0..24 {
                    assert_eq!(r.seg[at(x, y, z)], orig.seg[at(y, 23 - x, z)]);
                    assert!((r.image[at(x, y, z)] - orig.image[at(y, 23 - x, z)]).abs() < 1e-2);
                }
            }
        }
        // Zoom 1.5 about the centre: the tumour grows by about 1.5^3 (it stays inside).
        let c = case("b", [32, 32, 32], [12, 12, 12], [20, 20, 20], 7.0);
        let mut z = Volume4::of(&c);
        rotate_zoom(&mut z, [0.0; 3], 1.5);
        let grown = z.seg.iter().filter(|&&s| s != 0).count() as f64 / c.tumor_voxels as f64;
        assert!((grown - 3.375).abs() < 0.6, "{grown}");
        // Absent channels stay zero.
        let mut p = Volume4::of(&c);
        p.present[1] = false;
        p.image[32 * 32 * 32..2 * 32 * 32 * 32].fill(0.0);
        rotate_zoom(&mut p, [10.0, -5.0, 20.0], 1.1);
        assert!(p.image[32 * 32 * 32..2 * 32 * 32 * 32].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn gamma_keeps_background_range_and_order() {
        let c = case("a", [16, 16, 8], [3, 3, 2], [8, 8, 6], 7.0);
        let mut v = first_channel(&c, |i| if i % 5 == 0 { 0.0 } else { -2.0 + (i % 97) as f32 * 0.05 });
        let n = v.seg.len();
        let before = v.image[..n].to_vec();
        gamma(&mut v, 0, 1.7);
        let after = &v.image[..n];
        let brain: Vec<usize> = (0..n).filter(|&i| before[i] != 0.0).collect();
        assert!((0..n).filter(|i| i % 5 == 0).all(|i| after[i] == 0.0));
        assert!(brain.iter().all(|&i| after[i] != 0.0));
        let range = |xs: &[f32]| {
            brain.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &i| (lo.min(xs[i]), hi.max(xs[i])))
        };
        let (a, b) = (range(&before), range(after));
        assert!((a.0 - b.0).abs() < 1e-5 && (a.1 - b.1).abs() < 1e-5);
        for &i in &brain {
            for &j in &brain[..50] {
                if before[i] < before[j] {
                    assert!(after[i] <= after[j]);
                }
            }
        }
        assert!(brain.iter().any(|&i| (after[i] - before[i]).abs() > 1e-3), "gamma 1.7 must change something");
        // Other channels untouched.
        assert_eq!(v.image[n..], Volume4::of(&c).image[n..]);
        assert!(AugmentConfig { gamma_range: [2.0, 1.0], ..AugmentConfig::default() }.validate().is_err());
        assert!(AugmentConfig { rotate_deg: 120.0, ..AugmentConfig::default() }.validate().is_err());
    }

    #[test]
    fn batches_are_deterministic_by_seed_and_threaded() {
        let cases = vec![
            case("a", [40, 36, 30], [5, 5, 5], [15, 15, 12], 3.0),
            case("b", [38, 40, 34], [20, 20, 15], [30, 28, 25], 4.0),
            case("c", [44, 40, 36], [10, 22, 12], [18, 32, 22], 5.0),
        ];
        let data = dataset(cases);
        let aug = AugmentConfig {
            flip_p: [0.5, 0.5, 0.5],
            modality_drop_p: 0.5,
            modality_permute_p: 0.3,
            cutmix_p: 0.5,
            ..AugmentConfig::default()
        };
        let cfg = ModelConfig::tiny();
        let mk = |seed| Sampler::new(data.clone(), vec![0, 1, 2], aug.clone(), &cfg, 2, seed).unwrap();
        let (a, b, c) = (mk(7), mk(7), mk(8));
        assert_eq!(a.steps_per_epoch(), 2);
        for step in 0..6 {
            assert_eq!(a.batch(step), b.batch(step));
        }
        assert!((0..6).any(|s| a.batch(s) != c.batch(s)));
        // Each epoch visits every case once (3 cases, batch 2: the last slot wraps).
        let seen: std::collections::BTreeSet<usize> = (0..2).flat_map(|s| a.cases_of(s)).collect();
        assert_eq!(seen.len(), 3);
        // The background stream yields the same batches, from any start step.
        let mut st = BatchStream::spawn(mk(7), 3, 6, 2);
        for step in 3..6 {
            let got = st.next_batch().unwrap().unwrap();
            assert_eq!(got, a.batch(step));
        }
        assert!(st.next_batch().is_none());
        // Dropping a stream with a full channel does not hang.
        let st = BatchStream::spawn(mk(7), 0, 100, 1);
        drop(st);
        // Shapes and the global branch.
        let hb = a.batch(0);
        let batch = hb.to_batch();
        assert_eq!(batch.image.size(), vec![2, 4, 32, 32, 32]);
        assert_eq!(batch.seg.size(), vec![2, 32, 32, 32]);
        let g = batch.global.unwrap();
        assert_eq!(g.image.size(), vec![2, 4, 16, 16, 16]);
        assert!(hb.present.iter().all(|p| p.iter().any(|&x| x)));
        assert!(hb.seg.iter().all(|&v| (0..4).contains(&v)));
    }

    #[test]
    fn pooling_matches_libtorch() {
        let dims = [7usize, 5, 6];
        let n: usize = dims.iter().product();
        let data: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32).collect();
        let ours = adaptive_avg_pool(&data, dims, [4, 4, 4]);
        let t = Tensor::from_slice(&data).view([1, 1, 6, 5, 7]).adaptive_avg_pool3d([4, 4, 4]);
        let theirs = Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap();
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let seg: Vec<u8> = (0..n).map(|i| (i % 4) as u8).collect();
        let ours = nearest_labels(&seg, dims, [4, 4, 4]);
        let st = Tensor::from_slice(&seg.iter().map(|&v| i64::from(v)).collect::<Vec<_>>()).view([1, 6, 5, 7]);
        let theirs = crate::loss::resample_labels(&st, [4, 4, 4]);
        assert_eq!(ours, Vec::<i64>::try_from(&theirs.flatten(0, -1)).unwrap());
        // Flipping twice is the identity.
        let c = case("a", [9, 8, 7], [1, 2, 3], [4, 5, 6], 2.0);
        let mut v = Volume4::of(&c);
        for axis in 0..3 {
            flip(&mut v, axis);
            assert_ne!(v.seg, c.seg);
            flip(&mut v, axis);
            assert_eq!(v.seg, c.seg);
        }
        assert_eq!(v.image, c.image);
    }
}
