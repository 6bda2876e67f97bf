//! The inverse transform: uncrop, resample back and undo the reorientation, so that labels and
//! float maps computed on the prepared grid land on the original image grid.

use super::Geometry;
use crate::error::ImagingError;
use crate::par;
use crate::types::{LabelVolume, Limits, Volume};

/// Where a stored coordinate lands in the cropped array along one axis.
#[derive(Clone, Copy)]
struct Back {
    /// Nearest cropped index.
    nearest: usize,
    /// Linear interpolation: lower index, upper index, weight of the upper one.
    k0: usize,
    k1: usize,
    w: f32,
}

/// For each stored axis and stored coordinate, its cropped position, or None when the nearest
/// resampled voxel lies outside the crop box.
fn inverse_tables(g: &Geometry) -> [Vec<Option<Back>>; 3] {
    let ratio = g.ratio();
    let inv = g.orientation.inverse_perm();
    let cd = g.cropped_dims();
    let axis = |a: usize| -> Vec<Option<Back>> {
        let i = inv[a];
        let n = g.original.dims[a];
        (0..n)
            .map(|o| {
                let c = if g.orientation.flip[i] { n - 1 - o } else { o };
                let x = c as f64 / ratio[i];
                let nearest = (x + 0.5).floor();
                let (lo, hi) = (g.crop_lo[i] as f64, g.crop_hi[i] as f64);
                if nearest < lo || nearest >= hi {
                    return None;
                }
                let k = (x - lo).clamp(0.0, (cd[i] - 1) as f64);
                let k0 = k.floor() as usize;
                Some(Back {
                    nearest: (nearest - lo) as usize,
                    k0,
                    k1: (k0 + 1).min(cd[i] - 1),
                    w: (k - k0 as f64) as f32,
                })
            })
            .collect()
    };
    [axis(0), axis(1), axis(2)]
}

/// Cropped-array stride of each stored axis.
fn inverse_strides(g: &Geometry) -> [usize; 3] {
    let cd = g.cropped_dims();
    let cstride = [1, cd[0], cd[0] * cd[1]];
    let inv = g.orientation.inverse_perm();
    [cstride[inv[0]], cstride[inv[1]], cstride[inv[2]]]
}

fn fallback_grid_len(g: &Geometry) -> usize {
    let n = g.original.nvox();
    if n as u64 <= Limits::default().max_voxels { n } else { 0 }
}

fn check_cropped_len(len: usize, g: &Geometry) -> Result<(), ImagingError> {
    let cd = g.cropped_dims();
    let n = cd[0] * cd[1] * cd[2];
    if len != n {
        return Err(ImagingError::invalid("cropped length", len, format!("{n} (cropped dims {cd:?})")));
    }
    Ok(())
}

/// Inverse of [`prepare_labels`]: uncrop, nearest-neighbour resample back and undo the
/// reorientation, returning labels on the original grid. Errors on an inconsistent geometry or a
/// wrong-sized input.
pub fn try_restore_labels(cropped: &[u8], g: &Geometry) -> Result<LabelVolume, ImagingError> {
    g.validate()?;
    check_cropped_len(cropped.len(), g)?;
    let t = inverse_tables(g);
    let s = inverse_strides(g);
    let [nx, ny, nz] = g.original.dims;
    let mut data = vec![0u8; nx * ny * nz];
    par::for_chunks(&mut data, nx * ny, |z, plane| {
        let Some(bz) = t[2][z] else { return };
        for (y, row) in plane.chunks_mut(nx).enumerate() {
            let Some(by) = t[1][y] else { continue };
            let b = bz.nearest * s[2] + by.nearest * s[1];
            for (v, bx) in row.iter_mut().zip(&t[0]) {
                if let Some(bx) = bx {
                    *v = cropped[b + bx.nearest * s[0]];
                }
            }
        }
    });
    Ok(LabelVolume { grid: g.original.clone(), data })
}

/// Infallible [`try_restore_labels`]: on an inconsistent geometry or input size it returns an
/// all-zero label map on the original grid (empty data if that grid is absurdly large).
pub fn restore_labels(cropped: &[u8], g: &Geometry) -> LabelVolume {
    try_restore_labels(cropped, g)
        .unwrap_or_else(|_| LabelVolume { grid: g.original.clone(), data: vec![0; fallback_grid_len(g)] })
}

/// Inverse transform for a float map (e.g. uncertainty): trilinear inside the crop box, 0 outside.
pub fn try_restore_map(cropped: &[f32], g: &Geometry) -> Result<Volume, ImagingError> {
    g.validate()?;
    check_cropped_len(cropped.len(), g)?;
    let t = inverse_tables(g);
    let s = inverse_strides(g);
    let [nx, ny, nz] = g.original.dims;
    let mut data = vec![0f32; nx * ny * nz];
    par::for_chunks(&mut data, nx * ny, |z, plane| {
        let Some(Back { k0: z0, k1: z1, w: wz, .. }) = t[2][z] else {
            return;
        };
        for (y, row) in plane.chunks_mut(nx).enumerate() {
            let Some(Back { k0: y0, k1: y1, w: wy, .. }) = t[1][y] else {
                continue;
            };
            let bases = [z0 * s[2] + y0 * s[1], z0 * s[2] + y1 * s[1], z1 * s[2] + y0 * s[1], z1 * s[2] + y1 * s[1]];
            for (v, tx) in row.iter_mut().zip(&t[0]) {
                if let Some(Back { k0: x0, k1: x1, w: wx, .. }) = *tx {
                    let lerp = |b: usize| {
                        let a = cropped[b + x0 * s[0]];
                        a + wx * (cropped[b + x1 * s[0]] - a)
                    };
                    let c0 = lerp(bases[0]) + wy * (lerp(bases[1]) - lerp(bases[0]));
                    let c1 = lerp(bases[2]) + wy * (lerp(bases[3]) - lerp(bases[2]));
                    *v = c0 + wz * (c1 - c0);
                }
            }
        }
    });
    Ok(Volume { grid: g.original.clone(), data })
}

/// Infallible [`try_restore_map`] (all-zero map on an inconsistent geometry or input size).
pub fn restore_map(cropped: &[f32], g: &Geometry) -> Volume {
    try_restore_map(cropped, g)
        .unwrap_or_else(|_| Volume { grid: g.original.clone(), data: vec![0.0; fallback_grid_len(g)] })
}
