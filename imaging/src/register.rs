//! Rigid co-registration of one volume onto another (6 degrees of freedom) by maximising mutual
//! information over a three-level pyramid: how sequences of one session are aligned across contrasts.

use crate::error::ImagingError;
use crate::resample::{compose, invert_affine};
use crate::types::{Grid, Volume};

/// A rigid transform of world space: `y = R (x - centre) + centre + translation`, with `R` from
/// rotations about x, then y, then z (radians).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rigid {
    pub rotation: [f64; 3],
    /// mm.
    pub translation: [f64; 3],
    /// World point the rotation turns about (the fixed volume's centre).
    pub centre: [f64; 3],
}

impl Rigid {
    pub fn identity(centre: [f64; 3]) -> Rigid {
        Rigid { rotation: [0.0; 3], translation: [0.0; 3], centre }
    }

    fn params(&self) -> [f64; 6] {
        let [a, b, c] = self.rotation;
        let [x, y, z] = self.translation;
        [a, b, c, x, y, z]
    }

    fn with_params(&self, p: [f64; 6]) -> Rigid {
        Rigid { rotation: [p[0], p[1], p[2]], translation: [p[3], p[4], p[5]], centre: self.centre }
    }

    /// The 3×3 rotation.
    pub fn matrix(&self) -> [[f64; 3]; 3] {
        let [a, b, c] = self.rotation;
        let rx = [[1.0, 0.0, 0.0], [0.0, a.cos(), -a.sin()], [0.0, a.sin(), a.cos()]];
        let ry = [[b.cos(), 0.0, b.sin()], [0.0, 1.0, 0.0], [-b.sin(), 0.0, b.cos()]];
        let rz = [[c.cos(), -c.sin(), 0.0], [c.sin(), c.cos(), 0.0], [0.0, 0.0, 1.0]];
        mul3(rz, mul3(ry, rx))
    }

    /// As a 4×4 affine of world space.
    pub fn affine(&self) -> [[f64; 4]; 4] {
        let r = self.matrix();
        let mut out = [[0.0; 4]; 4];
        for i in 0..3 {
            out[i][..3].copy_from_slice(&r[i]);
            out[i][3] = self.centre[i] + self.translation[i] - (0..3).map(|k| r[i][k] * self.centre[k]).sum::<f64>();
        }
        out[3][3] = 1.0;
        out
    }

    /// Where the transform sends world point `x`.
    pub fn apply(&self, x: [f64; 3]) -> [f64; 3] {
        let a = self.affine();
        [0, 1, 2].map(|i| a[i][0] * x[0] + a[i][1] * x[1] + a[i][2] * x[2] + a[i][3])
    }
}

fn mul3(p: [[f64; 3]; 3], q: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut o = [[0.0; 3]; 3];
    for (i, row) in o.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|k| p[i][k] * q[k][j]).sum();
        }
    }
    o
}

/// Angle (degrees) of the rotation that takes `a` to `b`, and the largest distance (mm) between
/// where they send the eight corners of `grid`'s field of view.
pub fn difference(a: &Rigid, b: &Rigid, grid: &Grid) -> (f64, f64) {
    let (ra, rb) = (a.matrix(), b.matrix());
    // trace(Ra^T Rb) = 1 + 2 cos θ
    let trace: f64 = (0..3).map(|i| (0..3).map(|k| ra[k][i] * rb[k][i]).sum::<f64>()).sum();
    let angle = ((trace - 1.0) / 2.0).clamp(-1.0, 1.0).acos().to_degrees();
    let d = grid.dims.map(|n| (n as f64 - 1.0).max(0.0));
    let mut worst = 0f64;
    for corner in 0..8 {
        let v = [0, 1, 2].map(|i| if corner >> i & 1 == 1 { d[i] } else { 0.0 });
        let (pa, pb) = (a.apply(grid.world(v)), b.apply(grid.world(v)));
        worst = worst.max(((pa[0] - pb[0]).powi(2) + (pa[1] - pb[1]).powi(2) + (pa[2] - pb[2]).powi(2)).sqrt());
    }
    (angle, worst)
}

/// A volume averaged over `f`×`f`×`f` blocks, on the matching coarser grid.
fn downsample(v: &Volume, f: usize) -> Volume {
    if f == 1 {
        return v.clone();
    }
    let [nx, ny, nz] = v.grid.dims;
    let d = [nx.div_ceil(f), ny.div_ceil(f), nz.div_ceil(f)];
    let mut sum = vec![0f64; d[0] * d[1] * d[2]];
    let mut count = vec![0u32; sum.len()];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let j = x / f + d[0] * (y / f + d[1] * (z / f));
                sum[j] += f64::from(v.data[x + nx * (y + ny * z)]);
                count[j] += 1;
            }
        }
    }
    let mut affine = v.grid.affine;
    // Block centre: voxel (f - 1) / 2 of the fine grid, columns scaled by f.
    let off = (f as f64 - 1.0) / 2.0;
    for row in affine.iter_mut().take(3) {
        row[3] += off * (row[0] + row[1] + row[2]);
        for v in row.iter_mut().take(3) {
            *v *= f as f64;
        }
    }
    let grid = Grid { dims: d, pixdim: v.grid.pixdim.map(|p| p * f as f32), affine };
    let data = sum.iter().zip(&count).map(|(s, &c)| (s / f64::from(c.max(1))) as f32).collect();
    Volume { grid, data }
}

const BINS: usize = 32;

/// Intensity → bin position (0..BINS-1, fractional) from the 0.5 and 99.5 percentiles of the
/// non-zero voxels; 0 stays in bin 0.
struct Binning {
    lo: f32,
    scale: f32,
}

impl Binning {
    fn of(data: &[f32]) -> Binning {
        let mut nz: Vec<f32> = data.iter().copied().filter(|v| *v != 0.0 && v.is_finite()).collect();
        if nz.is_empty() {
            return Binning { lo: 0.0, scale: 0.0 };
        }
        nz.sort_by(f32::total_cmp);
        let lo = nz[nz.len() / 200];
        let hi = nz[nz.len() - 1 - nz.len() / 200];
        Binning { lo, scale: (BINS as f32 - 2.0) / (hi - lo).max(1e-6) }
    }

    fn pos(&self, v: f32) -> f32 {
        if v == 0.0 { 0.0 } else { 1.0 + ((v - self.lo) * self.scale).clamp(0.0, BINS as f32 - 2.0) }
    }
}

/// The fixed side of one pyramid level: sampled voxels' world positions and bins.
struct Samples {
    world: Vec<[f64; 3]>,
    bin: Vec<u8>,
}

fn samples(fixed: &Volume, bins: &Binning) -> Samples {
    let [nx, ny, _] = fixed.grid.dims;
    let mut world = Vec::new();
    let mut bin = Vec::new();
    for (i, &v) in fixed.data.iter().enumerate() {
        if v == 0.0 {
            continue;
        }
        let p = [(i % nx) as f64, ((i / nx) % ny) as f64, (i / (nx * ny)) as f64];
        world.push(fixed.grid.world(p));
        bin.push(bins.pos(v).round() as u8);
    }
    Samples { world, bin }
}

/// Mutual information between the fixed samples and the moving volume under `t` (moving
/// intensities interpolated trilinearly, spread over their two nearest bins).
fn mutual_information(s: &Samples, moving: &Volume, inv_moving: &[[f64; 4]; 4], mbins: &Binning, t: &Rigid) -> f64 {
    let m = compose(inv_moving, &t.affine());
    let [nx, ny, nz] = moving.grid.dims;
    let at = |x: usize, y: usize, z: usize| moving.data[x + nx * (y + ny * z)];
    let mut joint = [[0f64; BINS]; BINS];
    for (w, &fb) in s.world.iter().zip(&s.bin) {
        let q = [0, 1, 2].map(|i| m[i][0] * w[0] + m[i][1] * w[1] + m[i][2] * w[2] + m[i][3]);
        let inside = q[0] >= 0.0
            && q[1] >= 0.0
            && q[2] >= 0.0
            && q[0] <= (nx - 1) as f64
            && q[1] <= (ny - 1) as f64
            && q[2] <= (nz - 1) as f64;
        let value = if inside {
            let (x0, y0, z0) = (q[0] as usize, q[1] as usize, q[2] as usize);
            let (x1, y1, z1) = ((x0 + 1).min(nx - 1), (y0 + 1).min(ny - 1), (z0 + 1).min(nz - 1));
            let (fx, fy, fz) = ((q[0] - x0 as f64) as f32, (q[1] - y0 as f64) as f32, (q[2] - z0 as f64) as f32);
            let l = |a: f32, b: f32, t: f32| a + (b - a) * t;
            let c0 = l(l(at(x0, y0, z0), at(x1, y0, z0), fx), l(at(x0, y1, z0), at(x1, y1, z0), fx), fy);
            let c1 = l(l(at(x0, y0, z1), at(x1, y0, z1), fx), l(at(x0, y1, z1), at(x1, y1, z1), fx), fy);
            l(c0, c1, fz)
        } else {
            0.0
        };
        let p = mbins.pos(value);
        let lo = (p.floor() as usize).min(BINS - 1);
        let hi = (lo + 1).min(BINS - 1);
        let frac = f64::from(p - lo as f32);
        joint[fb as usize][lo] += 1.0 - frac;
        joint[fb as usize][hi] += frac;
    }
    let total: f64 = joint.iter().flatten().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let pf: Vec<f64> = joint.iter().map(|r| r.iter().sum::<f64>() / total).collect();
    let pm: Vec<f64> = (0..BINS).map(|j| joint.iter().map(|r| r[j]).sum::<f64>() / total).collect();
    let mut mi = 0.0;
    for (i, row) in joint.iter().enumerate() {
        for (j, &c) in row.iter().enumerate() {
            if c > 0.0 {
                let p = c / total;
                mi += p * (p / (pf[i] * pm[j])).ln();
            }
        }
    }
    mi
}

/// What [`register_rigid`] found.
#[derive(Clone, Debug)]
pub struct Registration {
    /// Fixed world → moving world.
    pub transform: Rigid,
    /// Mutual information at the start and at the end (finest level).
    pub mi_start: f64,
    pub mi_end: f64,
    /// Metric evaluations made.
    pub evaluations: usize,
}

/// Finds the rigid transform that best aligns `moving` with `fixed` (both skull-stripped, zero
/// background): pyramid levels 4, 2, 1 (the finest on every second voxel), coordinate search with
/// halving steps from 4° / 4 mm down to 0.02° / 0.02 mm.
pub fn register_rigid(fixed: &Volume, moving: &Volume) -> Result<Registration, ImagingError> {
    let d = fixed.grid.dims;
    let centre = fixed.grid.world([(d[0] as f64 - 1.0) / 2.0, (d[1] as f64 - 1.0) / 2.0, (d[2] as f64 - 1.0) / 2.0]);
    let mut t = Rigid::identity(centre);
    let (mut mi_start, mut mi_end, mut evaluations) = (0.0, 0.0, 0);
    for (level, (factor, keep_every)) in [(4usize, 1usize), (2, 1), (1, 2)].into_iter().enumerate() {
        let (f, m) = (downsample(fixed, factor), downsample(moving, factor));
        let fbins = Binning::of(&f.data);
        let mbins = Binning::of(&m.data);
        let mut s = samples(&f, &fbins);
        if keep_every > 1 {
            s.world = s.world.into_iter().step_by(keep_every).collect();
            s.bin = s.bin.into_iter().step_by(keep_every).collect();
        }
        if s.world.is_empty() {
            return Err(ImagingError::EmptyMask);
        }
        let inv = invert_affine(&m.grid.affine)?;
        let cost = |r: &Rigid| mutual_information(&s, &m, &inv, &mbins, r);
        let mut best = cost(&t);
        evaluations += 1;
        if level == 2 {
            mi_start = cost(&Rigid::identity(centre));
        }
        // Steps: radians for the rotations, mm for the translations.
        let start =
            [4f64.to_radians(), 4f64.to_radians(), 4f64.to_radians(), 4.0, 4.0, 4.0].map(|x| x / (1 << level) as f64);
        let floor = [0.02f64.to_radians(), 0.02f64.to_radians(), 0.02f64.to_radians(), 0.02, 0.02, 0.02];
        let mut step = start;
        while step.iter().zip(&floor).any(|(s, f)| s > f) {
            let mut improved = false;
            for k in 0..6 {
                for dir in [1.0, -1.0] {
                    let mut p = t.params();
                    p[k] += dir * step[k];
                    let cand = t.with_params(p);
                    let c = cost(&cand);
                    evaluations += 1;
                    if c > best + 1e-9 {
                        best = c;
                        t = cand;
                        improved = true;
                        break;
                    }
                }
            }
            if !improved {
                step = step.map(|s| s / 2.0);
            }
        }
        mi_end = best;
    }
    Ok(Registration { transform: t, mi_start, mi_end, evaluations })
}

/// `moving` resampled onto `fixed`'s grid under `t` (fixed world → moving world), trilinear.
pub fn apply_rigid(moving: &Volume, fixed_grid: &Grid, t: &Rigid) -> Result<Volume, ImagingError> {
    // Resampling `moving` onto a grid whose affine is T·A_fixed reads, for fixed voxel v, the
    // moving value at world T(A_fixed v), which is what the registration aligned.
    let mut g = fixed_grid.clone();
    g.affine = compose(&t.affine(), &fixed_grid.affine);
    let mut out = crate::resample::resample_linear(moving, &g)?;
    out.grid = fixed_grid.clone();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth blob image with distinct structures, zero outside an ellipsoid.
    fn head(grid: &Grid, contrast: f32) -> Volume {
        let [nx, ny, nz] = grid.dims;
        let c = [nx as f32 / 2.0, ny as f32 / 2.0, nz as f32 / 2.0];
        let mut data = Vec::with_capacity(nx * ny * nz);
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    let (dx, dy, dz) = (
                        (x as f32 - c[0]) / (0.42 * nx as f32),
                        (y as f32 - c[1]) / (0.45 * ny as f32),
                        (z as f32 - c[2]) / (0.4 * nz as f32),
                    );
                    let r = dx * dx + dy * dy + dz * dz;
                    if r >= 1.0 {
                        data.push(0.0);
                        continue;
                    }
                    let inner =
                        ((x as f32 - c[0] - 5.0).powi(2) + (y as f32 - c[1] + 4.0).powi(2) + (z as f32 - c[2]).powi(2))
                            .sqrt()
                            < 7.0;
                    let ring = (0.35..0.55).contains(&r);
                    let base = if inner {
                        300.0
                    } else if ring {
                        180.0
                    } else {
                        100.0 + 40.0 * dx
                    };
                    data.push(if contrast > 0.0 { base } else { 400.0 - base });
                }
            }
        }
        Volume::new(grid.clone(), data).unwrap()
    }

    #[test]
    fn recovers_a_known_rigid_motion_across_contrasts() {
        let g = Grid::axis_aligned([56, 64, 48], [2.0; 3], [-56.0, -64.0, -48.0]);
        let fixed = head(&g, 1.0);
        // The same head, inverse contrast, moved by 8° / 6 mm: its affine says where it now is.
        let truth = Rigid {
            rotation: [8f64.to_radians(), -3f64.to_radians(), 5f64.to_radians()],
            translation: [5.0, -3.0, 2.0],
            centre: g.world([27.5, 31.5, 23.5]),
        };
        let mut moving = head(&g, -1.0);
        moving.grid.affine = compose(&truth.affine(), &g.affine);
        let reg = register_rigid(&fixed, &moving).unwrap();
        let (angle, mm) = difference(&reg.transform, &truth, &g);
        assert!(angle < 1.0 && mm < 2.0, "off by {angle:.3}° / {mm:.3} mm: {reg:?}");
        assert!(reg.mi_end > reg.mi_start, "{reg:?}");
        // Applied, the moving image lands back on the fixed grid.
        let back = apply_rigid(&moving, &g, &reg.transform).unwrap();
        let again = apply_rigid(&moving, &g, &truth).unwrap();
        let diff: f32 =
            back.data.iter().zip(&again.data).map(|(a, b)| (a - b).abs()).sum::<f32>() / back.data.len() as f32;
        assert!(diff < 10.0, "{diff}");
    }

    #[test]
    fn rigid_affine_and_difference() {
        let t =
            Rigid { rotation: [0.0, 0.0, std::f64::consts::FRAC_PI_2], translation: [1.0, 0.0, 0.0], centre: [0.0; 3] };
        let p = t.apply([1.0, 0.0, 0.0]);
        assert!((p[0] - 1.0).abs() < 1e-12 && (p[1] - 1.0).abs() < 1e-12, "{p:?}");
        let g = Grid::axis_aligned([2, 2, 2], [1.0; 3], [0.0; 3]);
        let (angle, _) = difference(&t, &Rigid::identity([0.0; 3]), &g);
        assert!((angle - 90.0).abs() < 1e-9);
    }
}
