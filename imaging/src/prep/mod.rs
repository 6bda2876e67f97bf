//! The preprocessing the services run: reorient to RAS, optional isotropic resampling, brain-mask
//! crop and per-modality percentile clipping + z-scoring; plus the exact inverse for label maps.

mod format;
mod forward;
mod restore;
#[cfg(test)]
mod tests;

pub use format::{PREPARED_FORMAT_VERSION, PreparedCase};
pub use forward::{prepare, prepare_labels};
pub use restore::{restore_labels, restore_map, try_restore_labels, try_restore_map};

use crate::error::ImagingError;
use crate::orient::Orientation;
use crate::types::{Grid, Limits};
use serde::{Deserialize, Serialize};

/// Preprocessing parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrepOptions {
    /// Lower and upper clipping percentiles (0..=100) computed over the brain mask.
    pub clip_percentiles: (f32, f32),
    /// Target isotropic voxel size in mm; volumes already at this spacing are not resampled.
    pub spacing_mm: f32,
    /// Extra voxels kept around the brain bounding box on every side.
    pub margin: usize,
}

impl Default for PrepOptions {
    fn default() -> Self {
        PrepOptions { clip_percentiles: (0.5, 99.5), spacing_mm: 1.0, margin: 0 }
    }
}

impl PrepOptions {
    fn validate(&self) -> Result<(), ImagingError> {
        let (lo, hi) = self.clip_percentiles;
        if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi && hi <= 100.0) {
            return Err(ImagingError::invalid("clip_percentiles", format!("({lo}, {hi})"), "0 <= low <= high <= 100"));
        }
        if !(self.spacing_mm.is_finite() && self.spacing_mm > 0.0) {
            return Err(ImagingError::invalid("spacing_mm", self.spacing_mm, "finite and > 0"));
        }
        Ok(())
    }
}

/// Everything needed to map prepared voxels back onto the original grid.
///
/// Forward transform: stored voxel `o` -> canonical RAS voxel `c` (`orientation`) -> resampled
/// voxel `j` with `c = j * ratio` (`ratio = spacing_mm / canonical_spacing` when `resampled`,
/// else 1) -> cropped voxel `k = j - crop_lo`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Geometry {
    /// The grid of the input volumes.
    pub original: Grid,
    /// Permutation and flips from stored axes to canonical RAS axes.
    pub orientation: Orientation,
    /// Dims after reorientation (before resampling).
    pub canonical_dims: [usize; 3],
    /// Voxel size in mm along each canonical axis (affine column norms).
    pub canonical_spacing: [f64; 3],
    /// Whether the canonical volume was resampled to `spacing_mm`.
    pub resampled: bool,
    /// Target spacing (mm) used when `resampled`.
    pub spacing_mm: f64,
    /// Dims after resampling (equal to `canonical_dims` when not resampled).
    pub resampled_dims: [usize; 3],
    /// Crop box in the resampled canonical grid: `crop_lo` inclusive, `crop_hi` exclusive.
    pub crop_lo: [usize; 3],
    pub crop_hi: [usize; 3],
}

impl Geometry {
    /// Dims of the prepared (cropped) arrays.
    pub fn cropped_dims(&self) -> [usize; 3] {
        [
            self.crop_hi[0].saturating_sub(self.crop_lo[0]),
            self.crop_hi[1].saturating_sub(self.crop_lo[1]),
            self.crop_hi[2].saturating_sub(self.crop_lo[2]),
        ]
    }

    /// Canonical voxels per resampled voxel along each canonical axis.
    pub fn ratio(&self) -> [f64; 3] {
        if self.resampled {
            [
                self.spacing_mm / self.canonical_spacing[0],
                self.spacing_mm / self.canonical_spacing[1],
                self.spacing_mm / self.canonical_spacing[2],
            ]
        } else {
            [1.0; 3]
        }
    }

    /// Voxel -> world affine of the prepared arrays (same world space as the original grid).
    pub fn prepared_affine(&self) -> [[f64; 4]; 4] {
        let r = self.ratio();
        let o = &self.orientation;
        // stored voxel = P * k + t
        let mut p = [[0.0f64; 3]; 3];
        let mut t = [0.0f64; 3];
        for i in 0..3 {
            let a = o.perm[i];
            let sign = if o.flip[i] { -1.0 } else { 1.0 };
            p[a][i] = sign * r[i];
            let lo = self.crop_lo[i] as f64 * r[i];
            t[a] = if o.flip[i] { (self.original.dims[a] as f64 - 1.0) - lo } else { lo };
        }
        let a = &self.original.affine;
        let mut m = [[0.0; 4]; 4];
        for row in 0..3 {
            for col in 0..3 {
                m[row][col] = (0..3).map(|k| a[row][k] * p[k][col]).sum();
            }
            m[row][3] = a[row][3] + (0..3).map(|k| a[row][k] * t[k]).sum::<f64>();
        }
        m[3][3] = 1.0;
        m
    }

    /// Checks internal consistency (used on deserialized geometries).
    pub fn validate(&self) -> Result<(), ImagingError> {
        let limits = Limits::default();
        self.original.validate()?;
        let bad = |field: &str, value: String, expected: &str| {
            Err(ImagingError::invalid(format!("geometry.{field}"), value, expected))
        };
        if self.original.nvox() as u64 > limits.max_voxels {
            return bad("original.dims", format!("{:?}", self.original.dims), "at most 512^3 voxels");
        }
        if !self.orientation.is_valid() {
            return bad("orientation.perm", format!("{:?}", self.orientation.perm), "a permutation of [0, 1, 2]");
        }
        if self.canonical_dims != self.orientation.canonical_dims(self.original.dims) {
            return bad(
                "canonical_dims",
                format!("{:?}", self.canonical_dims),
                "original dims permuted by orientation.perm",
            );
        }
        if self.canonical_spacing.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || !(self.spacing_mm.is_finite() && self.spacing_mm > 0.0)
        {
            return bad(
                "canonical_spacing/spacing_mm",
                format!("{:?}/{}", self.canonical_spacing, self.spacing_mm),
                "finite and > 0",
            );
        }
        if !self.resampled && self.resampled_dims != self.canonical_dims {
            return bad(
                "resampled_dims",
                format!("{:?}", self.resampled_dims),
                "equal to canonical_dims when not resampled",
            );
        }
        let rn = self.resampled_dims.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64));
        if self.resampled_dims.contains(&0) || rn > limits.max_voxels {
            return bad("resampled_dims", format!("{:?}", self.resampled_dims), "each >= 1 and at most 512^3 voxels");
        }
        for i in 0..3 {
            if !(self.crop_lo[i] < self.crop_hi[i] && self.crop_hi[i] <= self.resampled_dims[i]) {
                return bad(
                    "crop",
                    format!("{:?}..{:?}", self.crop_lo, self.crop_hi),
                    "crop_lo < crop_hi <= resampled_dims on every axis",
                );
            }
        }
        Ok(())
    }
}
