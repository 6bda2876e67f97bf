//! The normal brain phantoms are built on: the asldro ICBM 2009a ground truth (tissue labels and
//! T1 map) when found, else a procedural brain; held once per process as a tissue-fraction pyramid.

use super::shapes::{Ellipsoid, Wave, plane_waves, waves};
use gmmas_imaging::nifti::read_components;
use gmmas_imaging::{ImagingError, Limits};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// File name of the normal-brain ground truth shipped by the asldro Python package (MIT licence).
pub const TEMPLATE_FILE: &str = "hrgt_icbm_2009a_nls_3t.nii.gz";
/// Environment variable naming the template file; `procedural` (or `none`) forces the fallback.
pub const TEMPLATE_ENV: &str = "GMMAS_ANATOMY_TEMPLATE";

/// Which normal-brain anatomy a phantom was built on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnatomySource {
    /// The asldro `hrgt_icbm_2009a_nls_3t` ground truth (ICBM 2009a, 1 mm, GM/WM/CSF labels).
    Template,
    /// The built-in procedural brain (ellipsoid hull, folded cortex, ventricles, deep GM).
    Procedural,
}

/// Tissue indices of the fraction triplets.
pub(crate) const GM: usize = 0;
pub(crate) const WM: usize = 1;
pub(crate) const CSF: usize = 2;

/// T1 (s) per tissue when no template map is read: the template's own values.
const DEFAULT_T1: [f64; 3] = [1.33, 0.83, 3.0];
/// Empty voxels kept around the brain in level 0.
const PAD: usize = 4;
/// Share of the template's inferior-superior brain extent cut off at the bottom (lower
/// brainstem), like the field of view of a BraTS scan.
const INFERIOR_CUT: f64 = 0.09;
/// Coarsest pyramid level (voxels of 2^LEVELS mm).
const LEVELS: usize = 3;

/// Tissue fractions (GM, WM, CSF; 255 = 1) on a grid of 2^k mm voxels.
struct Level {
    dims: [usize; 3],
    frac: Vec<[u8; 3]>,
}

impl Level {
    fn at(&self, x: usize, y: usize, z: usize) -> [u8; 3] {
        self.frac[x + self.dims[0] * (y + self.dims[1] * z)]
    }

    fn sum(&self, i: usize) -> u32 {
        self.frac[i].iter().map(|&v| u32::from(v)).sum()
    }

    /// The next coarser level: 2x2x2 means (missing children count as empty).
    fn halve(&self) -> Level {
        let dims = self.dims.map(|d| d.div_ceil(2));
        let mut frac = vec![[0u8; 3]; dims[0] * dims[1] * dims[2]];
        for z in 0..dims[2] {
            for y in 0..dims[1] {
                for x in 0..dims[0] {
                    let mut acc = [0u32; 3];
                    for (dx, dy, dz) in CHILDREN {
                        let (cx, cy, cz) = (2 * x + dx, 2 * y + dy, 2 * z + dz);
                        if cx < self.dims[0] && cy < self.dims[1] && cz < self.dims[2] {
                            for (a, v) in acc.iter_mut().zip(self.at(cx, cy, cz)) {
                                *a += u32::from(v);
                            }
                        }
                    }
                    frac[x + dims[0] * (y + dims[1] * z)] = acc.map(|a| ((a + 4) / 8) as u8);
                }
            }
        }
        Level { dims, frac }
    }
}

const CHILDREN: [(usize, usize, usize); 8] =
    [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1)];

/// A normal brain in its own 1 mm space (level-0 voxel coordinates, +x right, +y anterior,
/// +z superior): tissue fractions at 1, 2, 4 and 8 mm, depth and distance maps, T1 per tissue.
pub(crate) struct Anatomy {
    pub source: AnatomySource,
    pub path: Option<PathBuf>,
    levels: Vec<Level>,
    /// T1 (s) of GM, WM and CSF.
    pub t1: [f64; 3],
    /// Bounding box of the brain (level-0 voxel coordinates, inclusive).
    pub lo: [f64; 3],
    pub hi: [f64; 3],
    /// Depth (mm) below the brain surface, on level 1.
    depth: Vec<f32>,
    /// Distance (mm) to the nearest voxel with any tissue, on level 2.
    near: Vec<f32>,
    /// Level-1 voxel centres on the brain boundary, for fitting the brain into a grid.
    pub hull: Vec<[f64; 3]>,
}

impl std::fmt::Debug for Anatomy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anatomy")
            .field("source", &self.source)
            .field("path", &self.path)
            .field("dims", &self.levels[0].dims)
            .field("t1", &self.t1)
            .finish_non_exhaustive()
    }
}

impl Anatomy {
    /// Builds the pyramid and maps from level-0 fractions.
    fn new(source: AnatomySource, path: Option<PathBuf>, level0: Level, t1: [f64; 3]) -> Result<Anatomy, ImagingError> {
        let mut levels = vec![level0];
        for k in 0..LEVELS {
            let next = levels[k].halve();
            levels.push(next);
        }
        let l0 = &levels[0];
        let (mut lo, mut hi) = ([f64::INFINITY; 3], [f64::NEG_INFINITY; 3]);
        for z in 0..l0.dims[2] {
            for y in 0..l0.dims[1] {
                for x in 0..l0.dims[0] {
                    if l0.at(x, y, z).iter().any(|&v| v > 0) {
                        for (a, v) in [x, y, z].iter().enumerate() {
                            lo[a] = lo[a].min(*v as f64);
                            hi[a] = hi[a].max(*v as f64);
                        }
                    }
                }
            }
        }
        if !lo[0].is_finite() {
            return Err(ImagingError::EmptyMask);
        }
        let l1 = &levels[1];
        let inside: Vec<bool> = (0..l1.frac.len()).map(|i| l1.sum(i) >= 128).collect();
        let depth = chamfer(l1.dims, 2.0, 0.0, |i| !inside[i]);
        let l2 = &levels[2];
        let near = chamfer(l2.dims, 4.0, 1e9, |i| l2.sum(i) > 0);
        let mut hull = Vec::new();
        let [nx, ny, nz] = l1.dims;
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    let i = x + nx * (y + ny * z);
                    if l1.sum(i) == 0 {
                        continue;
                    }
                    let edge = [[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]].iter().any(
                        |d: &[isize; 3]| {
                            let (a, b, c) = (x as isize + d[0], y as isize + d[1], z as isize + d[2]);
                            a < 0
                                || b < 0
                                || c < 0
                                || a >= nx as isize
                                || b >= ny as isize
                                || c >= nz as isize
                                || l1.sum(a as usize + nx * (b as usize + ny * c as usize)) == 0
                        },
                    );
                    if edge {
                        hull.push([x, y, z].map(|v| 2.0 * v as f64 + 0.5));
                    }
                }
            }
        }
        Ok(Anatomy { source, path, levels, t1, lo, hi, depth, near, hull })
    }

    /// Centre of the brain's bounding box.
    pub fn center(&self) -> [f64; 3] {
        [0, 1, 2].map(|a| 0.5 * (self.lo[a] + self.hi[a]))
    }

    /// Half-extent of the brain's bounding box.
    pub fn half(&self) -> [f64; 3] {
        [0, 1, 2].map(|a| 0.5 * (self.hi[a] - self.lo[a]).max(1.0))
    }

    /// Pyramid level to sample for output voxels of `zoom` mm.
    pub fn level_for(zoom: f64) -> usize {
        let mut k = 0;
        while k < LEVELS && f64::from(1u32 << (k + 1)) <= zoom * 1.05 {
            k += 1;
        }
        k
    }

    /// Tissue fractions (GM, WM, CSF) at level-0 position `q`, trilinear on `level`.
    pub fn fractions(&self, level: usize, q: [f64; 3]) -> [f64; 3] {
        let l = &self.levels[level];
        let s = 1.0 / f64::from(1u32 << level);
        let mut acc = [0.0; 3];
        let u = q.map(|v| (v + 0.5) * s - 0.5);
        let base = u.map(f64::floor);
        let t = [u[0] - base[0], u[1] - base[1], u[2] - base[2]];
        for dz in 0..2 {
            let z = base[2] as i64 + dz;
            if z < 0 || z >= l.dims[2] as i64 {
                continue;
            }
            let wz = if dz == 0 { 1.0 - t[2] } else { t[2] };
            for dy in 0..2 {
                let y = base[1] as i64 + dy;
                if y < 0 || y >= l.dims[1] as i64 {
                    continue;
                }
                let wy = wz * if dy == 0 { 1.0 - t[1] } else { t[1] };
                for dx in 0..2 {
                    let x = base[0] as i64 + dx;
                    if x < 0 || x >= l.dims[0] as i64 {
                        continue;
                    }
                    let w = wy * if dx == 0 { 1.0 - t[0] } else { t[0] };
                    let f = l.at(x as usize, y as usize, z as usize);
                    for (a, v) in acc.iter_mut().zip(f) {
                        *a += w * f64::from(v);
                    }
                }
            }
        }
        acc.map(|a| a / 255.0)
    }

    /// Nearest-voxel lookup of a map on level `k`; None outside the grid.
    fn lookup(&self, map: &[f32], k: usize, q: [f64; 3]) -> Option<f64> {
        let l = &self.levels[k];
        let s = 1.0 / f64::from(1u32 << k);
        let mut i = [0usize; 3];
        for a in 0..3 {
            let v = ((q[a] + 0.5) * s).floor();
            if v < 0.0 || v >= l.dims[a] as f64 {
                return None;
            }
            i[a] = v as usize;
        }
        Some(f64::from(map[i[0] + l.dims[0] * (i[1] + l.dims[1] * i[2])]))
    }

    /// Depth (mm) of `q` below the brain surface; 0 outside the brain.
    pub fn depth(&self, q: [f64; 3]) -> f64 {
        self.lookup(&self.depth, 1, q).unwrap_or(0.0)
    }

    /// The voxels `x0..x1` (within `0..n`) of the row `base + x step` that come within `tol` mm
    /// of the brain's bounding box; None when none does.
    pub fn span(&self, base: [f64; 3], step: [f64; 3], tol: f64, n: usize) -> Option<(usize, usize)> {
        let (mut a, mut b) = (0.0f64, n as f64 - 1.0);
        for i in 0..3 {
            let (lo, hi) = (self.lo[i] - tol - 1.0, self.hi[i] + tol + 1.0);
            if step[i].abs() < 1e-12 {
                if base[i] < lo || base[i] > hi {
                    return None;
                }
                continue;
            }
            let (t0, t1) = ((lo - base[i]) / step[i], (hi - base[i]) / step[i]);
            a = a.max(t0.min(t1).floor());
            b = b.min(t0.max(t1).ceil());
        }
        (a <= b).then(|| (a as usize, b as usize + 1))
    }

    /// False when `q` is certainly more than `tol` mm away from any tissue.
    pub fn near_brain(&self, q: [f64; 3], tol: f64) -> bool {
        // Outside the level-2 grid: the distance to the grid box is a lower bound.
        let l = &self.levels[2];
        let mut out = 0.0;
        let mut c = q;
        for a in 0..3 {
            let top = (4 * l.dims[a]) as f64 - 0.5;
            let v = q[a].clamp(-0.5, top - 1e-6);
            out += (q[a] - v) * (q[a] - v);
            c[a] = v;
        }
        let out = out.sqrt();
        let d = self.lookup(&self.near, 2, c).unwrap_or(f64::INFINITY);
        // Chamfer distances overestimate by under 15%; level-2 voxels are 4 mm.
        out.max(d / 1.15 - 4.0 - out) <= tol
    }
}

/// Chamfer distance transform (3x3x3 neighbourhood, Euclidean steps of `vox` mm): distance of
/// every voxel to the nearest voxel where `zero(i)` holds; voxels outside the grid count as
/// being at distance `outside`.
fn chamfer(dims: [usize; 3], vox: f64, outside: f64, zero: impl Fn(usize) -> bool) -> Vec<f32> {
    let [nx, ny, nz] = dims;
    let n = nx * ny * nz;
    let mut d: Vec<f64> = (0..n).map(|i| if zero(i) { 0.0 } else { 1e9 }).collect();
    let mut offs = Vec::new();
    for dz in -1i64..=1 {
        for dy in -1i64..=1 {
            for dx in -1i64..=1 {
                let rank = dz * 9 + dy * 3 + dx;
                if rank < 0 {
                    let w = ((dx * dx + dy * dy + dz * dz) as f64).sqrt() * vox;
                    offs.push(([dx, dy, dz], w));
                }
            }
        }
    }
    let dimsi = [nx as i64, ny as i64, nz as i64];
    let mut pass = |order: &mut dyn Iterator<Item = usize>, sign: i64| {
        for i in order {
            if d[i] == 0.0 {
                continue;
            }
            let p = [(i % nx) as i64, ((i / nx) % ny) as i64, (i / (nx * ny)) as i64];
            let mut best = d[i];
            for (o, w) in &offs {
                let q = [p[0] + sign * o[0], p[1] + sign * o[1], p[2] + sign * o[2]];
                let v = if (0..3).all(|a| q[a] >= 0 && q[a] < dimsi[a]) {
                    d[(q[0] + dimsi[0] * (q[1] + dimsi[1] * q[2])) as usize]
                } else {
                    outside
                };
                best = best.min(v + w);
            }
            d[i] = best;
        }
    };
    pass(&mut (0..n), 1);
    pass(&mut (0..n).rev(), -1);
    d.into_iter().map(|v| v as f32).collect()
}

/// Reads the template: the `t1` and `seg_label` quantities (indices from the sibling .json when
/// present), cropped to the brain minus the lower brainstem.
// Long on purpose: reads the template's quantities, their label indices and the crop in one pass over the file.
fn load_template(path: &Path) -> Result<Anatomy, ImagingError> {
    let bytes = std::fs::read(path).map_err(|e| ImagingError::io(path, e))?;
    let (mut q_t1, mut q_seg, mut codes) = (2usize, 6usize, [1u8, 2, 3]);
    let json = path.with_file_name(
        path.file_name()
            .and_then(|n| n.to_str())
            .map_or("".into(), |n| n.trim_end_matches(".nii.gz").to_string() + ".json"),
    );
    if let Ok(text) = std::fs::read_to_string(&json) {
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ImagingError::Format(format!("{}: {e}", json.display())))?;
        if let Some(qs) = v["quantities"].as_array() {
            let find = |name: &str| qs.iter().position(|q| q.as_str() == Some(name));
            q_t1 = find("t1").unwrap_or(q_t1);
            q_seg = find("seg_label").unwrap_or(q_seg);
        }
        let seg = &v["segmentation"];
        for (code, key) in codes.iter_mut().zip(["grey_matter", "white_matter", "csf"]) {
            if let Some(c) = seg[key].as_u64().filter(|&c| (1..=255).contains(&c)) {
                *code = c as u8;
            }
        }
    }
    let limits = Limits { max_file_bytes: 4 << 30, max_voxels: 1 << 30, max_dim: 1024 };
    let (mut t1, mut seg) = (Vec::new(), Vec::new());
    let (hdr, n) = read_components(&bytes, &limits, |c, _, v| {
        if c == q_t1 {
            t1.extend_from_slice(v);
        } else if c == q_seg {
            seg.extend(v.iter().map(|x| x.round().clamp(0.0, 255.0) as u8));
        }
    })
    .map_err(|e| e.in_file(path))?;
    let bad = |what: &str, value: String, expected: &str| ImagingError::invalid(what, value, expected).in_file(path);
    if n <= q_t1.max(q_seg) {
        return Err(bad("quantity count", n.to_string(), "enough components for t1 and seg_label"));
    }
    let a = &hdr.affine;
    let axis_aligned =
        (0..3).all(|i| (0..3).all(|j| if i == j { (a[i][j] - 1.0).abs() < 1e-3 } else { a[i][j].abs() < 1e-6 }));
    if !axis_aligned {
        return Err(bad("affine", format!("{a:?}"), "1 mm axis-aligned RAS voxels"));
    }
    let [nx, ny, nz] = hdr.dims;
    let tissue = |l: u8| codes.iter().position(|&c| c == l);
    // T1 of each tissue: its mean over the voxels of that label.
    let mut sums = [(0.0, 0usize); 3];
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    for (i, &l) in seg.iter().enumerate() {
        if let Some(t) = tissue(l) {
            sums[t].0 += f64::from(t1[i]);
            sums[t].1 += 1;
            let p = [i % nx, (i / nx) % ny, i / (nx * ny)];
            for a in 0..3 {
                lo[a] = lo[a].min(p[a]);
                hi[a] = hi[a].max(p[a]);
            }
        }
    }
    drop(t1);
    if sums.iter().any(|s| s.1 == 0) {
        return Err(bad("seg_label", format!("{:?} voxels of GM/WM/CSF", sums.map(|s| s.1)), "voxels of every tissue"));
    }
    let t1 = [0, 1, 2].map(|t| {
        let v = sums[t].0 / sums[t].1 as f64;
        if v.is_finite() && v > 0.05 && v < 10.0 { v } else { DEFAULT_T1[t] }
    });
    lo[2] += ((hi[2] - lo[2]) as f64 * INFERIOR_CUT).round() as usize;
    let dims = [0, 1, 2].map(|a| hi[a] - lo[a] + 1 + 2 * PAD);
    let mut frac = vec![[0u8; 3]; dims[0] * dims[1] * dims[2]];
    for z in lo[2]..=hi[2] {
        for y in lo[1]..=hi[1] {
            for x in lo[0]..=hi[0] {
                if let Some(t) = tissue(seg[x + nx * (y + ny * z)]) {
                    let (a, b, c) = (x - lo[0] + PAD, y - lo[1] + PAD, z - lo[2] + PAD);
                    frac[a + dims[0] * (b + dims[1] * c)][t] = 255;
                }
            }
        }
    }
    debug_assert!(nz > 0);
    Anatomy::new(AnatomySource::Template, Some(path.to_path_buf()), Level { dims, frac }, t1)
}

/// Parameters of the procedural brain (in its own 1 mm voxel space).
struct Brain {
    /// Outer brain surface: ellipsoid deformed by `shape` waves on the direction.
    hull: Ellipsoid,
    shape: Vec<Wave>,
    /// Normalized radius where cortex (GM) starts, modulated by `gyri` (plane waves on the
    /// voxel position).
    cortex: f64,
    gyri: Vec<Wave>,
    /// Normalized radius where the outer (sulcal) CSF starts.
    csf_shell: f64,
    ventricles: [Ellipsoid; 2],
    deep_gm: [Ellipsoid; 2],
    /// Transition half-width (normalized radius units) of tissue boundaries.
    blur: f64,
}

fn smoothstep(e0: f64, e1: f64, x: f64) -> f64 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

fn sample_brain(rng: &mut ChaCha8Rng) -> Brain {
    let center = [0.0; 3];
    let radii =
        [70.0 * rng.random_range(0.97..1.03), 86.0 * rng.random_range(0.97..1.03), 64.0 * rng.random_range(0.97..1.03)];
    let vent = rng.random_range(1.0..1.2);
    let ventricles = [-1.0, 1.0].map(|side| Ellipsoid {
        center: [side * 0.11 * radii[0], -0.03 * radii[1], 0.1 * radii[2]],
        radii: [0.085 * radii[0] * vent, 0.36 * radii[1] * vent.sqrt(), 0.17 * radii[2] * vent],
    });
    let deep_gm = [-1.0, 1.0].map(|side| Ellipsoid {
        center: [side * 0.27 * radii[0], -0.05 * radii[1], -0.02 * radii[2]],
        radii: [0.12 * radii[0], 0.2 * radii[1], 0.16 * radii[2]],
    });
    Brain {
        hull: Ellipsoid { center, radii },
        shape: waves(rng, 4, 3.0, 0.035),
        cortex: rng.random_range(0.8..0.85),
        gyri: plane_waves(rng, 4, (9.0, 15.0), 0.1),
        csf_shell: rng.random_range(0.955..0.975),
        ventricles,
        deep_gm,
        blur: 0.018,
    }
}

/// Tissue fractions of the procedural brain at a position (mm from its centre).
fn brain_fractions(b: &Brain, p: [f64; 3]) -> [f64; 3] {
    let r = b.hull.radii;
    let qy = p[1] / r[1];
    // Slightly narrower frontally.
    let q = [p[0] / (r[0] * (1.0 - 0.06 * qy)), qy, p[2] / r[2]];
    let rr = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]).sqrt();
    if rr > 1.2 {
        return [0.0; 3];
    }
    let u = if rr > 1e-9 { q.map(|v| v / rr) } else { [0.0, 0.0, 1.0] };
    let shape: f64 = b.shape.iter().map(|w| w.eval(u)).sum();
    let re = rr * (1.0 + shape);
    if re >= 1.0 {
        return [0.0; 3];
    }
    let csf_outer = smoothstep(b.csf_shell - b.blur, b.csf_shell + b.blur, re);
    let cortex = b.cortex + b.gyri.iter().map(|w| w.eval(p)).sum::<f64>();
    let gm_cortex = smoothstep(cortex - b.blur, cortex + b.blur, re);
    let vent = b.ventricles.iter().map(|e| 1.0 - smoothstep(0.85, 1.15, e.rho(p))).fold(0.0, f64::max);
    let deep = b.deep_gm.iter().map(|e| 1.0 - smoothstep(0.8, 1.2, e.rho(p))).fold(0.0, f64::max);
    let f_csf = csf_outer.max(vent);
    let gm = gm_cortex.max(0.85 * deep);
    [(1.0 - f_csf) * gm, (1.0 - f_csf) * (1.0 - gm), f_csf]
}

/// The procedural brain rasterized at 1 mm (always the same brain: a fixed seed).
#[allow(clippy::expect_used, clippy::unwrap_used, reason = "the procedural anatomy is built from constants")]
fn build_procedural() -> Anatomy {
    let mut rng = ChaCha8Rng::seed_from_u64(0x0062_7261_696e);
    let b = sample_brain(&mut rng);
    let ext = b.hull.radii.map(|r| (r * 1.09).ceil() as usize);
    let dims = ext.map(|e| 2 * e + 1 + 2 * PAD);
    let mut frac = vec![[0u8; 3]; dims[0] * dims[1] * dims[2]];
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                let p = [
                    x as f64 - (ext[0] + PAD) as f64,
                    y as f64 - (ext[1] + PAD) as f64,
                    z as f64 - (ext[2] + PAD) as f64,
                ];
                let f = brain_fractions(&b, p);
                frac[x + dims[0] * (y + dims[1] * z)] = f.map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    Anatomy::new(AnatomySource::Procedural, None, Level { dims, frac }, DEFAULT_T1)
        .expect("the procedural brain is not empty")
}

/// The procedural brain, built once per process.
pub(crate) fn procedural() -> &'static Anatomy {
    static P: OnceLock<Anatomy> = OnceLock::new();
    P.get_or_init(build_procedural)
}

/// Where the template is looked for, in order.
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(v) = std::env::var_os(TEMPLATE_ENV).filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(v));
    }
    if let Some(share) = gmmas_imaging::share_dir() {
        out.push(share.join("templates").join(TEMPLATE_FILE));
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        let lib = Path::new(&venv).join("lib");
        let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path())
            .collect();
        pythons.sort();
        for p in pythons {
            out.push(p.join("site-packages/asldro/data").join(TEMPLATE_FILE));
        }
    }
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bases = std::env::current_dir().into_iter().chain([crate_dir.to_path_buf()]);
    for base in bases {
        for up in ["..", "../.."] {
            out.push(base.join(up).join("shared/data/templates").join(TEMPLATE_FILE));
        }
    }
    out
}

/// The anatomy `generate` uses: the template when found (see `candidates`), else the
/// procedural brain. Loaded once per process; a notice on stderr says when falling back.
pub(crate) fn global() -> &'static Anatomy {
    static G: OnceLock<&'static Anatomy> = OnceLock::new();
    G.get_or_init(|| {
        let forced = std::env::var(TEMPLATE_ENV)
            .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "procedural" | "none"));
        if !forced {
            let explicit = std::env::var_os(TEMPLATE_ENV).filter(|v| !v.is_empty());
            for path in candidates() {
                if !path.is_file() {
                    if explicit.as_deref() == Some(path.as_os_str()) {
                        eprintln!("gmmas-imaging: {TEMPLATE_ENV}={}: no such file", path.display());
                    }
                    continue;
                }
                match load_template(&path) {
                    Ok(a) => return Box::leak(Box::new(a)),
                    Err(e) => eprintln!("gmmas-imaging: skipping anatomy template: {e}"),
                }
            }
            eprintln!(
                "gmmas-imaging: no {TEMPLATE_FILE} found (set {TEMPLATE_ENV}); phantoms use \
                 the procedural brain"
            );
        }
        procedural()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procedural_brain_has_all_tissues() {
        let a = procedural();
        assert_eq!(a.source, AnatomySource::Procedural);
        let c = a.center();
        assert!(a.depth(c) > 40.0, "{}", a.depth(c));
        assert!(a.near_brain(c, 0.0));
        assert!(!a.near_brain([-200.0, c[1], c[2]], 20.0));
        assert!(a.hull.len() > 1000);
        let mut seen = [false; 3];
        let mut q = c;
        while q[0] < a.hi[0] + 2.0 {
            let f = a.fractions(0, q);
            for t in 0..3 {
                seen[t] |= f[t] > 0.9;
            }
            q[0] += 1.0;
        }
        assert_eq!(seen, [true; 3], "GM, WM and CSF along a ray");
        // Coarser levels keep the tissue totals.
        let total = |k: usize| -> f64 {
            let l = &a.levels[k];
            (0..l.frac.len()).map(|i| f64::from(l.sum(i))).sum::<f64>() * 8f64.powi(k as i32)
        };
        for k in 1..=LEVELS {
            assert!((total(k) / total(0) - 1.0).abs() < 0.02);
        }
    }

    #[test]
    fn template_is_read_when_present() {
        let a = global();
        if a.source != AnatomySource::Template {
            println!("notice: {TEMPLATE_FILE} not found; template checks skipped");
            return;
        }
        // ICBM 2009a: about 145 x 181 x 140 mm of brain after the brainstem cut.
        let ext = [0, 1, 2].map(|i| a.hi[i] - a.lo[i]);
        assert!(ext[0] > 120.0 && ext[0] < 170.0, "{ext:?}");
        assert!(ext[1] > 160.0 && ext[1] < 200.0, "{ext:?}");
        assert!(ext[2] > 120.0 && ext[2] < 160.0, "{ext:?}");
        assert!(a.t1[CSF] > a.t1[GM] && a.t1[GM] > a.t1[WM], "{:?}", a.t1);
        let f = a.fractions(0, a.center());
        assert!(f.iter().sum::<f64>() > 0.99, "{f:?}");
        // Frontal pole at +y (anterior), as in RAS.
        let c = a.center();
        let front = |dz: f64| [c[0] + 8.0, a.hi[1] - 8.0, c[2] + dz];
        let brain = |q: [f64; 3]| a.fractions(0, q).iter().sum::<f64>() > 0.5;
        assert!((-6..=6).any(|k| brain(front(f64::from(k) * 5.0))));
        assert!(!brain([c[0], a.hi[1] + 3.0, c[2]]));
    }
}
