//! Resampling a volume onto another grid through world coordinates (trilinear for images,
//! nearest-neighbour for labels): how series acquired on different grids meet on one.

use crate::error::ImagingError;
use crate::types::{Grid, LabelVolume, Volume};

/// Inverse of an affine's 4×4 matrix (rigid, scaled or sheared; the last row is [0, 0, 0, 1]).
pub fn invert_affine(a: &[[f64; 4]; 4]) -> Result<[[f64; 4]; 4], ImagingError> {
    let m = [[a[0][0], a[0][1], a[0][2]], [a[1][0], a[1][1], a[1][2]], [a[2][0], a[2][1], a[2][2]]];
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    if !(det.is_finite() && det.abs() > 1e-12) {
        return Err(ImagingError::invalid("affine", format!("{a:?}"), "a non-singular matrix"));
    }
    let mut inv = [[0.0; 4]; 4];
    for (i, row) in inv.iter_mut().take(3).enumerate() {
        for (j, v) in row.iter_mut().take(3).enumerate() {
            // Cofactor of m[j][i] (transposed adjugate).
            let (r0, r1) = ((j + 1) % 3, (j + 2) % 3);
            let (c0, c1) = ((i + 1) % 3, (i + 2) % 3);
            *v = (m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0]) / det;
        }
        row[3] = -(0..3).map(|j| row[j] * a[j][3]).sum::<f64>();
    }
    inv[3][3] = 1.0;
    Ok(inv)
}

/// `a · b` for two affines.
pub fn compose(a: &[[f64; 4]; 4], b: &[[f64; 4]; 4]) -> [[f64; 4]; 4] {
    let mut out = [[0.0; 4]; 4];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..4).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

/// For each target voxel, its fractional voxel coordinate in the source grid, visited in target
/// order (x fastest). `f(index, [x, y, z])`.
fn walk(source: &Grid, target: &Grid, mut f: impl FnMut(usize, [f64; 3])) -> Result<(), ImagingError> {
    let m = compose(&invert_affine(&source.affine)?, &target.affine);
    let [nx, ny, nz] = target.dims;
    let mut idx = 0;
    for z in 0..nz {
        for y in 0..ny {
            let (zf, yf) = (z as f64, y as f64);
            let base = [
                m[0][1] * yf + m[0][2] * zf + m[0][3],
                m[1][1] * yf + m[1][2] * zf + m[1][3],
                m[2][1] * yf + m[2][2] * zf + m[2][3],
            ];
            for x in 0..nx {
                let xf = x as f64;
                f(idx, [base[0] + m[0][0] * xf, base[1] + m[1][0] * xf, base[2] + m[2][0] * xf]);
                idx += 1;
            }
        }
    }
    Ok(())
}

/// `v` resampled onto `target` by trilinear interpolation; target voxels outside the source's
/// field of view are 0 (the background of a skull-stripped image).
pub fn resample_linear(v: &Volume, target: &Grid) -> Result<Volume, ImagingError> {
    let [sx, sy, sz] = v.grid.dims;
    let at = |x: usize, y: usize, z: usize| v.data[x + sx * (y + sy * z)];
    let mut out = vec![0f32; target.nvox()];
    walk(&v.grid, target, |i, p| {
        // Within half a voxel outside the first/last centre counts as the edge voxel.
        let mut c = [0usize; 3];
        let mut w = [0f64; 3];
        for a in 0..3 {
            let n = [sx, sy, sz][a];
            let q = p[a];
            if q < -0.5 || q > n as f64 - 0.5 {
                return;
            }
            let q = q.clamp(0.0, (n - 1) as f64);
            let lo = (q.floor() as usize).min(n.saturating_sub(2));
            c[a] = lo;
            w[a] = if n == 1 { 0.0 } else { q - lo as f64 };
        }
        let (x0, y0, z0) = (c[0], c[1], c[2]);
        let (x1, y1, z1) = ((x0 + 1).min(sx - 1), (y0 + 1).min(sy - 1), (z0 + 1).min(sz - 1));
        let lerp = |a: f32, b: f32, t: f64| f64::from(a) * (1.0 - t) + f64::from(b) * t;
        let c00 = lerp(at(x0, y0, z0), at(x1, y0, z0), w[0]);
        let c10 = lerp(at(x0, y1, z0), at(x1, y1, z0), w[0]);
        let c01 = lerp(at(x0, y0, z1), at(x1, y0, z1), w[0]);
        let c11 = lerp(at(x0, y1, z1), at(x1, y1, z1), w[0]);
        let c0 = c00 * (1.0 - w[1]) + c10 * w[1];
        let c1 = c01 * (1.0 - w[1]) + c11 * w[1];
        out[i] = (c0 * (1.0 - w[2]) + c1 * w[2]) as f32;
    })?;
    Volume::new(target.clone(), out)
}

/// `l` resampled onto `target` by nearest neighbour; outside the source's field of view is 0.
pub fn resample_labels(l: &LabelVolume, target: &Grid) -> Result<LabelVolume, ImagingError> {
    let [sx, sy, sz] = l.grid.dims;
    let mut out = vec![0u8; target.nvox()];
    walk(&l.grid, target, |i, p| {
        let r = [p[0].round(), p[1].round(), p[2].round()];
        if r.iter().zip([sx, sy, sz]).all(|(&q, n)| q >= 0.0 && q < n as f64) {
            out[i] = l.data[r[0] as usize + sx * (r[1] as usize + sy * r[2] as usize)];
        }
    })?;
    LabelVolume::new(target.clone(), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(grid: Grid) -> Volume {
        let [nx, ny, _] = grid.dims;
        let data = (0..grid.nvox())
            .map(|i| (i % nx) as f32 + 10.0 * ((i / nx) % ny) as f32 + 100.0 * (i / (nx * ny)) as f32)
            .collect();
        Volume::new(grid, data).unwrap()
    }

    #[test]
    fn inverse_of_a_rotated_scaled_affine() {
        let (s, c) = (0.3f64.sin(), 0.3f64.cos());
        let a = [[c * 2.0, -s, 0.0, 5.0], [s * 2.0, c, 0.0, -3.0], [0.0, 0.0, 1.5, 7.0], [0.0, 0.0, 0.0, 1.0]];
        let id = compose(&a, &invert_affine(&a).unwrap());
        for (i, row) in id.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12, "{id:?}");
            }
        }
        assert!(invert_affine(&[[0.0; 4]; 4]).is_err());
    }

    #[test]
    fn same_grid_is_identity_and_half_voxel_shift_interpolates() {
        let g = Grid::axis_aligned([6, 5, 4], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]);
        let v = ramp(g.clone());
        assert_eq!(resample_linear(&v, &g).unwrap().data, v.data);
        let shifted = Grid::axis_aligned([5, 4, 3], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5]);
        let r = resample_linear(&v, &shifted).unwrap();
        // The ramp is linear, so interpolation is exact: value at (0.5, 0.5, 0.5) = 0.5 + 5 + 50.
        assert!((r.data[0] - 55.5).abs() < 1e-4, "{}", r.data[0]);
        // A grid outside the source is background.
        let far = Grid::axis_aligned([2, 2, 2], [1.0, 1.0, 1.0], [100.0, 0.0, 0.0]);
        assert!(resample_linear(&v, &far).unwrap().data.iter().all(|&x| x == 0.0));
    }

    #[test]
    fn labels_follow_a_flipped_grid() {
        let g = Grid::axis_aligned([4, 1, 1], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]);
        let l = LabelVolume::new(g, vec![1, 2, 3, 4]).unwrap();
        let mut flipped = Grid::axis_aligned([4, 1, 1], [1.0, 1.0, 1.0], [3.0, 0.0, 0.0]);
        flipped.affine[0][0] = -1.0;
        assert_eq!(resample_labels(&l, &flipped).unwrap().data, vec![4, 3, 2, 1]);
    }
}
