//! One validated, prepared case held in memory, its tumour extent, and the class balance
//! (eq. (5) weights) of a subset.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{MODALITIES, TASKS};
use crate::partial::{SEG_TUMOUR, SegSupervision};

/// A voxel box `(lo, hi)`, `hi` exclusive, per axis x / y / z.
pub type BBox = ([usize; 3], [usize; 3]);

/// A validated, preprocessed case held in memory.
#[derive(Debug, Clone)]
pub struct CaseData {
    /// Case name (file prefix).
    pub name: String,
    /// Case folder.
    pub dir: PathBuf,
    /// Prepared grid `[nx, ny, nz]`.
    pub dims: [usize; 3],
    /// Voxel size in mm of the prepared grid per axis.
    pub spacing: [f64; 3],
    /// Modality presence (t1, t1ce, t2, flair).
    pub present: [bool; MODALITIES],
    /// Four channels, channel-major, each x fastest; absent channels are zeros.
    pub image: Vec<f32>,
    /// Network classes 0..3 (0 bg, 1 NCR, 2 ED, 3 ET) per voxel, or partial targets
    /// ([`SEG_TUMOUR`] inside a whole-tumour mask, [`SEG_IGNORE`] where nothing is known);
    /// all [`SEG_IGNORE`] without any segmentation file.
    pub seg: Vec<u8>,
    /// Whether a full (sub-region) segmentation file was given: the cases whose Dice per
    /// region can be scored.
    pub has_seg: bool,
    /// What segmentation supervision `seg` carries (full, whole tumour, partial, none).
    pub supervision: SegSupervision,
    /// Labels of the four tasks (grade GBM, IDH mutant, 1p/19q codeleted, MGMT methylated).
    pub tasks: [Option<bool>; TASKS],
    /// Tumour bounding box `(lo, hi)` in voxels (`hi` exclusive), x/y/z; None without tumour.
    pub tumor_bbox: Option<BBox>,
    /// Number of tumour voxels.
    pub tumor_voxels: usize,
    /// `(role, sha256)` of each file read (`t1`, ..., `seg`).
    pub file_sha256: Vec<(String, String)>,
    /// sha256 over the file hashes.
    pub sha256: String,
}

impl CaseData {
    /// Voxels per channel.
    pub fn voxels(&self) -> usize {
        self.dims.iter().product()
    }

    /// The segmentation in BraTS values (0, 1, 2, 4).
    pub fn brats_labels(&self) -> Vec<u8> {
        self.seg.iter().map(|&c| if c == 3 { 4 } else { c }).collect()
    }
}

/// Counts of the labelled classes of each task in one subset and the eq. (5) weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassBalance {
    /// `[negatives, positives]` per task.
    pub counts: [[usize; 2]; TASKS],
    /// `[w_negative, w_positive]` per task (see [`class_weights`]).
    pub weights: [[f64; 2]; TASKS],
}

/// The class weights of eq. (5) from label counts.
///
/// The paper writes `w_i = n_i / sum_j n_j` but states the intent that "the model focuses on
/// fewer categories"; that formula would weigh the majority class more. We use the inverse
/// frequency `w_i = N / (C n_i)` (C = 2), which gives the minority class the larger weight
/// and reduces to `[1, 1]` for balanced data. A task with an empty class (or no labels)
/// gets `[1, 1]`.
pub fn class_weights(counts: [usize; 2]) -> [f64; 2] {
    let n = counts[0] + counts[1];
    if counts[0] == 0 || counts[1] == 0 {
        return [1.0, 1.0];
    }
    counts.map(|c| n as f64 / (2.0 * c as f64))
}

/// Tumour bounding box and voxel count of network classes `seg` on `dims` (classes 1..3
/// and whole-tumour voxels; ignored voxels are not tumour).
pub fn tumor_extent(seg: &[u8], dims: [usize; 3]) -> (Option<BBox>, usize) {
    let [nx, ny, _] = dims;
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    let mut count = 0;
    for (i, &c) in seg.iter().enumerate() {
        if !(1..=SEG_TUMOUR).contains(&c) {
            continue;
        }
        count += 1;
        let p = [i % nx, i / nx % ny, i / (nx * ny)];
        for a in 0..3 {
            lo[a] = lo[a].min(p[a]);
            hi[a] = hi[a].max(p[a] + 1);
        }
    }
    ((count > 0).then_some((lo, hi)), count)
}
