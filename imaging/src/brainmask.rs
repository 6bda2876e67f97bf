//! Brain masks for heads that still have their skull: the binary morphology they need (exact
//! Euclidean distances in millimetres, components, hole filling) and a classical fallback
//! extractor for when the brain-extraction network's weights are absent.

use crate::distance::squared_distance_map;
use crate::error::ImagingError;
use crate::types::{Grid, LabelVolume, Volume, same_grid};

/// Distance in millimetres (voxel spacing from `grid.pixdim`) from every voxel to the nearest
/// voxel where `feature` is true; `INFINITY` everywhere when there is none.
pub fn distance_mm(feature: &[bool], grid: &Grid) -> Vec<f32> {
    let spacing = grid.pixdim.map(|p| f64::from(p).abs().max(1e-6));
    squared_distance_map(feature, grid.dims, spacing).into_iter().map(|d| d.sqrt() as f32).collect()
}

/// `mask` shrunk by a ball of `radius_mm`.
pub fn erode(mask: &[bool], grid: &Grid, radius_mm: f32) -> Vec<bool> {
    let outside: Vec<bool> = mask.iter().map(|&m| !m).collect();
    distance_mm(&outside, grid).into_iter().map(|d| d > radius_mm).collect()
}

/// `mask` grown by a ball of `radius_mm`.
pub fn dilate(mask: &[bool], grid: &Grid, radius_mm: f32) -> Vec<bool> {
    distance_mm(mask, grid).into_iter().map(|d| d <= radius_mm).collect()
}

/// Flood fill over 6-connected true voxels from `seeds`; returns the reached voxels.
fn flood(mask: &[bool], dims: [usize; 3], seeds: impl Iterator<Item = usize>) -> Vec<bool> {
    let [nx, ny, nz] = dims;
    let mut seen = vec![false; mask.len()];
    let mut stack: Vec<usize> = Vec::new();
    for s in seeds {
        if mask[s] && !seen[s] {
            seen[s] = true;
            stack.push(s);
        }
    }
    while let Some(i) = stack.pop() {
        let (x, y, z) = (i % nx, (i / nx) % ny, i / (nx * ny));
        let mut visit = |j: usize| {
            if mask[j] && !seen[j] {
                seen[j] = true;
                stack.push(j);
            }
        };
        if x > 0 {
            visit(i - 1);
        }
        if x + 1 < nx {
            visit(i + 1);
        }
        if y > 0 {
            visit(i - nx);
        }
        if y + 1 < ny {
            visit(i + nx);
        }
        if z > 0 {
            visit(i - nx * ny);
        }
        if z + 1 < nz {
            visit(i + nx * ny);
        }
    }
    seen
}

/// The largest 6-connected component of `mask` (all false when `mask` is empty).
pub fn largest_component(mask: &[bool], dims: [usize; 3]) -> Vec<bool> {
    let [nx, ny, _] = dims;
    let mut label = vec![0u32; mask.len()];
    let (mut best, mut best_size, mut next) = (0u32, 0usize, 0u32);
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        stack.push(start);
        let mut size = 0usize;
        while let Some(i) = stack.pop() {
            size += 1;
            let (x, y, z) = (i % nx, (i / nx) % ny, i / (nx * ny));
            let neighbours = [
                (x > 0).then(|| i - 1),
                (x + 1 < nx).then(|| i + 1),
                (y > 0).then(|| i - nx),
                (y + 1 < ny).then(|| i + nx),
                (z > 0).then(|| i - nx * ny),
                (z + 1 < dims[2]).then(|| i + nx * ny),
            ];
            for j in neighbours.into_iter().flatten() {
                if mask[j] && label[j] == 0 {
                    label[j] = next;
                    stack.push(j);
                }
            }
        }
        if size > best_size {
            (best, best_size) = (next, size);
        }
    }
    label.into_iter().map(|l| l != 0 && l == best).collect()
}

/// `mask` with every enclosed cavity (background not 6-connected to the field of view's faces)
/// filled.
pub fn fill_holes(mask: &[bool], dims: [usize; 3]) -> Vec<bool> {
    let [nx, ny, nz] = dims;
    let background: Vec<bool> = mask.iter().map(|&m| !m).collect();
    let faces = (0..mask.len()).filter(|&i| {
        let (x, y, z) = (i % nx, (i / nx) % ny, i / (nx * ny));
        x == 0 || y == 0 || z == 0 || x + 1 == nx || y + 1 == ny || z + 1 == nz
    });
    let outside = flood(&background, dims, faces);
    outside.into_iter().map(|o| !o).collect()
}

/// A copy of `v` on the same axes with voxels `spacing_mm` apart, covering the same field of
/// view (voxel corners aligned, as image resizing does); for running a network trained at a fixed
/// resolution.
pub fn grid_at_spacing(g: &Grid, spacing_mm: f32) -> Grid {
    let mut dims = [0usize; 3];
    let mut affine = g.affine;
    let mut pixdim = [0f32; 3];
    for a in 0..3 {
        let n = g.dims[a];
        let m = ((n as f64 * f64::from(g.pixdim[a]) / f64::from(spacing_mm)).round() as usize).max(1);
        dims[a] = m;
        // New voxel i sits at old voxel coordinate (i + 0.5) * n / m - 0.5.
        let f = n as f64 / m as f64;
        for (r, row) in affine.iter_mut().take(3).enumerate() {
            row[3] += g.affine[r][a] * (f - 1.0) / 2.0;
            row[a] = g.affine[r][a] * f;
        }
        pixdim[a] = (f64::from(g.pixdim[a]) * f) as f32;
    }
    Grid { dims, pixdim, affine }
}

/// Voxels of `v` outside `mask` set to 0 (the masked volume a skull-stripped input would be).
pub fn apply_mask(v: &mut Volume, mask: &LabelVolume) -> Result<(), ImagingError> {
    same_grid(&v.grid, &mask.grid)?;
    for (x, &m) in v.data.iter_mut().zip(&mask.data) {
        if m == 0 {
            *x = 0.0;
        }
    }
    Ok(())
}

/// Dice overlap of two binary masks (1 when both are empty).
pub fn dice(a: &[bool], b: &[bool]) -> f64 {
    let (mut inter, mut sa, mut sb) = (0usize, 0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        inter += usize::from(x && y);
        sa += usize::from(x);
        sb += usize::from(y);
    }
    if sa + sb == 0 { 1.0 } else { 2.0 * inter as f64 / (sa + sb) as f64 }
}

/// Erosion radius that cuts the brain loose from the scalp (through the skull's dark band and
/// the thin bridges of tissue that cross it).
const DETACH_MM: f32 = 8.0;
/// CSF between the brain's surface and the skull, which brain masks include.
const CSF_RIM_MM: f32 = 2.0;

/// The classical fallback: intensity threshold at 30% of the robust range (2nd to 98th
/// percentile, as BET's), erosion to detach the brain from the scalp, the largest
/// component, dilation back plus the CSF rim, and cavities filled. Built for T1-weighted heads;
/// less accurate than the network (measured in `models/results/skullstrip/`).
pub fn classical_brain_mask(v: &Volume) -> Result<LabelVolume, ImagingError> {
    let mut sorted: Vec<f32> = v.data.iter().copied().filter(|x| x.is_finite()).collect();
    if sorted.len() < 8 {
        return Err(ImagingError::invalid("volume", "fewer than 8 finite voxels", "an image of a head"));
    }
    sorted.sort_by(f32::total_cmp);
    let pct = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let (lo, hi) = (pct(0.02), pct(0.98));
    if hi <= lo {
        return Err(ImagingError::invalid("volume", "constant intensities", "an image of a head"));
    }
    // Grey and white matter lie above 30% of the robust range; CSF, bone and air below.
    let t = lo + 0.3 * (hi - lo);
    let tissue: Vec<bool> = v.data.iter().map(|&x| x > t).collect();
    let dims = v.grid.dims;
    let core = largest_component(&erode(&tissue, &v.grid, DETACH_MM), dims);
    // Back to the brain's surface, plus a rim for the CSF that the threshold left out.
    let grown = dilate(&core, &v.grid, DETACH_MM + CSF_RIM_MM);
    let filled = fill_holes(&grown, dims);
    let data = filled.into_iter().map(u8::from).collect();
    LabelVolume::new(v.grid.clone(), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(dims: [usize; 3], sp: [f32; 3]) -> Grid {
        Grid::axis_aligned(dims, sp, [0.0; 3])
    }

    #[test]
    fn distances_match_brute_force_with_anisotropic_spacing() {
        let g = grid([9, 7, 5], [1.0, 2.0, 3.0]);
        let feature: Vec<bool> = (0..g.nvox()).map(|i| i == 3 + 9 * (2 + 7) || i == 60 || i == 300).collect();
        let d = distance_mm(&feature, &g);
        let pos = |i: usize| [(i % 9) as f64, ((i / 9) % 7) as f64 * 2.0, (i / 63) as f64 * 3.0];
        for (i, &di) in d.iter().enumerate() {
            let best = (0..g.nvox())
                .filter(|&j| feature[j])
                .map(|j| {
                    let (a, b) = (pos(i), pos(j));
                    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
                })
                .fold(f64::INFINITY, f64::min);
            assert!((f64::from(di) - best).abs() < 1e-4, "voxel {i}: {di} vs {best}");
        }
        assert!(distance_mm(&[false; 10], &grid([10, 1, 1], [1.0; 3])).iter().all(|d| d.is_infinite()));
    }

    #[test]
    fn erosion_and_dilation_by_a_ball() {
        let g = grid([21, 21, 21], [1.0; 3]);
        let ball = |r: f64| -> Vec<bool> {
            (0..g.nvox())
                .map(|i| {
                    let (x, y, z) = ((i % 21) as f64 - 10.0, ((i / 21) % 21) as f64 - 10.0, (i / 441) as f64 - 10.0);
                    (x * x + y * y + z * z).sqrt() <= r
                })
                .collect()
        };
        let count = |m: &[bool]| m.iter().filter(|&&b| b).count();
        let eroded = erode(&ball(8.0), &g, 3.0);
        assert!(dice(&eroded, &ball(5.0)) > 0.9, "{}", dice(&eroded, &ball(5.0)));
        let grown = dilate(&ball(4.0), &g, 3.0);
        assert!(dice(&grown, &ball(7.0)) > 0.9);
        assert!(count(&eroded) < count(&ball(8.0)) && count(&grown) > count(&ball(4.0)));
    }

    #[test]
    fn components_and_holes() {
        let dims = [10, 10, 10];
        let mut m = vec![false; 1000];
        // A 4x4x4 hollow cube (cavity at its centre) and a separate single voxel.
        for z in 2..6 {
            for y in 2..6 {
                for x in 2..6 {
                    let inner = (3..5).contains(&x) && (3..5).contains(&y) && (3..5).contains(&z);
                    m[x + 10 * (y + 10 * z)] = !inner;
                }
            }
        }
        m[9 + 10 * (9 + 10 * 9)] = true;
        let big = largest_component(&m, dims);
        assert_eq!(big.iter().filter(|&&b| b).count(), 64 - 8);
        assert!(!big[999]);
        let filled = fill_holes(&big, dims);
        assert_eq!(filled.iter().filter(|&&b| b).count(), 64);
    }

    #[test]
    fn resampling_grid_keeps_the_field_of_view() {
        let g = grid([240, 240, 155], [1.0; 3]);
        let h = grid_at_spacing(&g, 1.5);
        assert_eq!(h.dims, [160, 160, 103]);
        // Corner of the field of view (voxel -0.5) is the same in both.
        assert!((h.affine[0][3] - 0.5 * 1.5 + 0.5).abs() < 1e-9, "{}", h.affine[0][3]);
        assert!((h.affine[0][0] - 1.5).abs() < 1e-9);
    }

    #[test]
    fn classical_mask_finds_a_brain_inside_a_skull() {
        // A bright "brain" ball (r 28 mm) in dark CSF and skull (to 36 mm), wrapped in a bright
        // "scalp"; the brain mask includes the CSF to 30 mm.
        let g = grid([96, 96, 96], [1.0; 3]);
        let (mut data, mut truth) = (Vec::new(), Vec::new());
        for i in 0..g.nvox() {
            let (x, y, z) = ((i % 96) as f64 - 48.0, ((i / 96) % 96) as f64 - 48.0, (i / 9216) as f64 - 48.0);
            let r = (x * x + y * y + z * z).sqrt();
            let value = match r {
                r if r <= 28.0 => 100.0 + (x * 0.5),
                r if r <= 36.0 => 5.0,
                r if r <= 41.0 => 120.0,
                _ => 0.0,
            };
            data.push(value as f32);
            truth.push(r <= 30.0);
        }
        let v = Volume::new(g, data).unwrap();
        let mask = classical_brain_mask(&v).unwrap();
        let got: Vec<bool> = mask.data.iter().map(|&m| m != 0).collect();
        let d = dice(&got, &truth);
        assert!(d > 0.9, "Dice {d}");
    }
}
