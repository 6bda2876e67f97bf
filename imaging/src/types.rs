//! Core in-memory types: modalities, voxel grids, image and label volumes, reading limits.
//! Volumes are stored x-fastest (`idx = x + nx*(y + ny*z)`), the NIfTI on-disk order.

use crate::error::ImagingError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One MRI contrast of a BraTS case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    T1,
    T1ce,
    T2,
    Flair,
}

impl Modality {
    /// All modalities in channel order.
    pub const ALL: [Modality; 4] = [Modality::T1, Modality::T1ce, Modality::T2, Modality::Flair];

    /// Short lowercase name used in file names and serialized forms.
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::T1 => "t1",
            Modality::T1ce => "t1ce",
            Modality::T2 => "t2",
            Modality::Flair => "flair",
        }
    }

    /// Channel index, 0..4 in [`Modality::ALL`] order.
    pub fn index(self) -> usize {
        match self {
            Modality::T1 => 0,
            Modality::T1ce => 1,
            Modality::T2 => 2,
            Modality::Flair => 3,
        }
    }

    /// Parses BraTS 2018-2021 names (t1, t1ce, t2, flair) and 2023 names (t1n, t1c, t2w, t2f),
    /// case-insensitively.
    pub fn parse(s: &str) -> Option<Modality> {
        match s.trim().to_ascii_lowercase().as_str() {
            "t1" | "t1n" => Some(Modality::T1),
            "t1ce" | "t1c" | "t1gd" => Some(Modality::T1ce),
            "t2" | "t2w" => Some(Modality::T2),
            "flair" | "t2f" => Some(Modality::Flair),
            _ => None,
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A voxel grid: dimensions, voxel sizes and the voxel -> world (RAS, mm) affine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    pub dims: [usize; 3],
    pub pixdim: [f32; 3],
    pub affine: [[f64; 4]; 4],
}

impl Grid {
    /// A grid with an axis-aligned affine `diag(spacing)` plus `origin` (world position of voxel 0).
    pub fn axis_aligned(dims: [usize; 3], spacing: [f32; 3], origin: [f64; 3]) -> Grid {
        let mut affine = [[0.0; 4]; 4];
        for i in 0..3 {
            affine[i][i] = f64::from(spacing[i]);
            affine[i][3] = origin[i];
        }
        affine[3][3] = 1.0;
        Grid { dims, pixdim: spacing, affine }
    }

    /// Number of voxels (saturating on absurd dims).
    pub fn nvox(&self) -> usize {
        self.dims.iter().fold(1usize, |acc, &d| acc.saturating_mul(d))
    }

    /// Volume of one voxel in millilitres, from the affine (|det| of its 3x3 part / 1000).
    pub fn voxel_ml(&self) -> f64 {
        det3(&self.affine).abs() / 1000.0
    }

    /// Length of each voxel axis in world mm (column norms of the affine).
    pub fn spacing(&self) -> [f64; 3] {
        column_norms(&self.affine)
    }

    /// World position (mm) of a (possibly fractional) voxel coordinate.
    pub fn world(&self, v: [f64; 3]) -> [f64; 3] {
        let a = &self.affine;
        let mut w = [0.0; 3];
        for (i, wi) in w.iter_mut().enumerate() {
            *wi = a[i][0] * v[0] + a[i][1] * v[1] + a[i][2] * v[2] + a[i][3];
        }
        w
    }

    /// Checks dims (>= 1), finite positive pixdim and a finite, non-singular affine.
    pub fn validate(&self) -> Result<(), ImagingError> {
        for (i, &d) in self.dims.iter().enumerate() {
            if d == 0 {
                return Err(ImagingError::invalid(format!("grid.dims[{i}]"), d, "at least 1"));
            }
        }
        for (i, &p) in self.pixdim.iter().enumerate() {
            if !(p.is_finite() && p > 0.0) {
                return Err(ImagingError::invalid(format!("grid.pixdim[{i}]"), p, "finite and > 0"));
            }
        }
        check_affine(&self.affine).map_err(|why| ImagingError::invalid("grid.affine", why, "finite and non-singular"))
    }
}

/// A scalar image on a grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Volume {
    pub grid: Grid,
    pub data: Vec<f32>,
}

impl Volume {
    /// Builds a volume, checking that `data` has one value per voxel.
    pub fn new(grid: Grid, data: Vec<f32>) -> Result<Volume, ImagingError> {
        check_len(&grid, data.len())?;
        Ok(Volume { grid, data })
    }
}

/// An integer label map (segmentation) on a grid.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelVolume {
    pub grid: Grid,
    pub data: Vec<u8>,
}

impl LabelVolume {
    /// Builds a label volume, checking that `data` has one value per voxel.
    pub fn new(grid: Grid, data: Vec<u8>) -> Result<LabelVolume, ImagingError> {
        check_len(&grid, data.len())?;
        Ok(LabelVolume { grid, data })
    }
}

pub(crate) fn check_len(grid: &Grid, len: usize) -> Result<(), ImagingError> {
    if grid.nvox() != len {
        return Err(ImagingError::invalid(
            "data length",
            len,
            format!("{} (= {}x{}x{} voxels of the grid)", grid.nvox(), grid.dims[0], grid.dims[1], grid.dims[2]),
        ));
    }
    Ok(())
}

/// Caps applied before any large allocation or decompression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted input (compressed) and decompressed file size in bytes.
    pub max_file_bytes: u64,
    /// Largest accepted voxel count.
    pub max_voxels: u64,
    /// Largest accepted size of one dimension.
    pub max_dim: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_file_bytes: 512 * 1024 * 1024, max_voxels: 512 * 512 * 512, max_dim: 1024 }
    }
}

impl Limits {
    /// The limits of the `max_upload_mib` / `max_voxels` settings: the same for every service
    /// that reads an uploaded volume (ingest and api accept it, preprocess reads it again).
    pub fn from_settings(max_upload_mib: u64, max_voxels: u64) -> Self {
        Limits { max_file_bytes: max_upload_mib.saturating_mul(1024 * 1024), max_voxels, ..Limits::default() }
    }
}

/// Ok when both grids have equal dims and affines equal within 1e-3; the error says what differs.
pub fn same_grid(a: &Grid, b: &Grid) -> Result<(), ImagingError> {
    if a.dims != b.dims {
        return Err(ImagingError::GridMismatch {
            what: "dims".into(),
            detail: format!("{:?} vs {:?}", a.dims, b.dims),
        });
    }
    for i in 0..4 {
        for j in 0..4 {
            let (x, y) = (a.affine[i][j], b.affine[i][j]);
            let close = (x - y).abs() <= 1e-3;
            if !close {
                return Err(ImagingError::GridMismatch {
                    what: format!("affine[{i}][{j}]"),
                    detail: format!("{x} vs {y} (tolerance 1e-3)"),
                });
            }
        }
    }
    Ok(())
}

/// Determinant of the 3x3 linear part of an affine.
pub(crate) fn det3(a: &[[f64; 4]; 4]) -> f64 {
    a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
}

/// Euclidean norm of each of the first three columns of an affine.
pub(crate) fn column_norms(a: &[[f64; 4]; 4]) -> [f64; 3] {
    let mut n = [0.0; 3];
    for (j, nj) in n.iter_mut().enumerate() {
        *nj = (a[0][j] * a[0][j] + a[1][j] * a[1][j] + a[2][j] * a[2][j]).sqrt();
    }
    n
}

/// Err(description) when the affine has non-finite entries or a (numerically) singular 3x3 part.
pub(crate) fn check_affine(a: &[[f64; 4]; 4]) -> Result<(), String> {
    if a.iter().flatten().any(|v| !v.is_finite()) {
        return Err("non-finite entries".into());
    }
    let norms = column_norms(a);
    let scale = norms[0] * norms[1] * norms[2];
    let det = det3(a);
    if !(scale > 0.0 && det.abs() > 1e-6 * scale) {
        return Err(format!("singular (det={det})"));
    }
    Ok(())
}
