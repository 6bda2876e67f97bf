//! Voxel rendering of a sampled phantom description: tissue partial volumes, tumour classes,
//! contrasts, bias field and Rician noise. Every voxel is a pure function of its position.

use super::PhantomCase;
use super::spec::{CaseSpec, Enhancement, Tumor, Wave};
use crate::par;
use crate::types::{Grid, LabelVolume, Modality, Volume};

fn waves_at(w: &[Wave], p: [f64; 3]) -> f64 {
    w.iter().map(|w| w.eval(p)).sum()
}

fn smoothstep(e0: f64, e1: f64, x: f64) -> f64 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

fn dist(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// splitmix64 finalizer: a well-mixed 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Two independent standard normals for (seed, voxel, channel), by Box-Muller on hashed uniforms.
fn gauss_pair(seed: u64, idx: u64, ch: u64) -> (f64, f64) {
    let h1 = mix(seed ^ mix(idx.wrapping_mul(8).wrapping_add(ch)));
    let h2 = mix(h1);
    let u1 = ((h1 >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = (h2 >> 11) as f64 / (1u64 << 53) as f64;
    let r = (-2.0 * u1.ln()).sqrt();
    let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
    (r * c, r * s)
}

/// Normalized distance of `p` to a tumour core (`< 1` inside), or None when out of reach.
fn tumor_distance(t: &Tumor, p: [f64; 3]) -> Option<f64> {
    let r = dist(p, t.center);
    if r > t.reach {
        return None;
    }
    let u = if r > 1e-9 {
        [
            (p[0] - t.center[0]) / r,
            (p[1] - t.center[1]) / r,
            (p[2] - t.center[2]) / r,
        ]
    } else {
        [0.0, 0.0, 1.0]
    };
    let d0 = t
        .blobs
        .iter()
        .map(|b| dist(p, b.center) / b.radius)
        .fold(f64::INFINITY, f64::min);
    let wobble: f64 = t.waves.iter().map(|w| w.eval(u)).sum();
    Some(d0 * (1.0 + wobble))
}

/// Tumour class fractions at a voxel and its hard label.
struct TumorMix {
    tissue: f64,
    ed: f64,
    ncr: f64,
    et: f64,
    label: u8,
}

fn tumor_mix(t: &Tumor, d: f64, p: [f64; 3]) -> TumorMix {
    let o_core = smoothstep(1.0 - t.core_margin, 1.0 + t.core_margin, d);
    let o_ed = smoothstep(
        1.0 + t.edema - t.edema_margin,
        1.0 + t.edema + t.edema_margin,
        d,
    );
    let core = 1.0 - o_core;
    let (enh, is_et) = match t.enhancement {
        Enhancement::Ring { inner } => (
            smoothstep(inner - t.core_margin, inner + t.core_margin, d),
            d >= inner,
        ),
        Enhancement::Nodule(b) => {
            let nd = dist(p, b.center) / b.radius;
            (1.0 - smoothstep(0.7, 1.3, nd), nd < 1.0)
        }
    };
    let label = if d < 1.0 {
        if is_et { 4 } else { 1 }
    } else if d < 1.0 + t.edema {
        2
    } else {
        0
    };
    TumorMix {
        tissue: o_core * o_ed,
        ed: o_core * (1.0 - o_ed),
        ncr: core * (1.0 - enh),
        et: core * enh,
        label,
    }
}

struct Plane {
    img: [Vec<f32>; 4],
    seg: Vec<u8>,
}

fn render_plane(s: &CaseSpec, z: usize) -> Plane {
    let [nx, ny, _] = s.dims;
    let mut plane = Plane {
        img: [0; 4].map(|_| vec![0f32; nx * ny]),
        seg: vec![0u8; nx * ny],
    };
    let b = &s.brain;
    let (c, r) = (b.hull.center, b.hull.radii);
    let qz = (z as f64 - c[2]) / r[2];
    if qz.abs() > 1.2 {
        return plane;
    }
    let half = s.dims.map(|n| (n as f64 / 2.0).max(1.0));
    for y in 0..ny {
        let qy = (y as f64 - c[1]) / r[1];
        if qy * qy + qz * qz > 1.44 {
            continue;
        }
        for x in 0..nx {
            // Slightly narrower frontally.
            let qx = (x as f64 - c[0]) / (r[0] * (1.0 - 0.06 * qy));
            let rr = (qx * qx + qy * qy + qz * qz).sqrt();
            if rr > 1.2 {
                continue;
            }
            let u = if rr > 1e-9 {
                [qx / rr, qy / rr, qz / rr]
            } else {
                [0.0, 0.0, 1.0]
            };
            let shape: f64 = b.shape.iter().map(|w| w.eval(u)).sum();
            let re = rr * (1.0 + shape);
            if re >= 1.0 {
                continue;
            }
            let p = [x as f64, y as f64, z as f64];
            // Tissue partial volumes.
            let csf_outer = smoothstep(b.csf_shell - b.blur, b.csf_shell + b.blur, re);
            let cortex = b.cortex + waves_at(&b.gyri, p);
            let gm_cortex = smoothstep(cortex - b.blur, cortex + b.blur, re);
            let vent = b
                .ventricles
                .iter()
                .map(|e| 1.0 - smoothstep(0.85, 1.15, e.rho(p)))
                .fold(0.0, f64::max);
            let deep = b
                .deep_gm
                .iter()
                .map(|e| 1.0 - smoothstep(0.8, 1.2, e.rho(p)))
                .fold(0.0, f64::max);
            let f_csf = csf_outer.max(vent);
            let gm = gm_cortex.max(0.85 * deep);
            let f_gm = (1.0 - f_csf) * gm;
            let f_wm = (1.0 - f_csf) * (1.0 - gm);
            // Nearest tumour (smallest normalized distance).
            let mut best: Option<(f64, &Tumor)> = None;
            for t in &s.tumors {
                if let Some(d) = tumor_distance(t, p)
                    && best.is_none_or(|(bd, _)| d < bd)
                {
                    best = Some((d, t));
                }
            }
            let mixv = best.map(|(d, t)| tumor_mix(t, d, p));
            let i = x + nx * y;
            let idx = (i + nx * ny * z) as u64;
            let g = [
                (x as f64 - half[0]) / half[0],
                (y as f64 - half[1]) / half[1],
                (z as f64 - half[2]) / half[2],
            ];
            let texture = if mixv.as_ref().is_some_and(|t| t.tissue < 1.0) {
                1.0 + waves_at(&s.tumor_texture, p)
            } else {
                1.0
            };
            for m in Modality::ALL {
                let k = m.index();
                let ct = &s.contrast[k];
                let tissue = f_wm * ct.wm + f_gm * ct.gm + f_csf * ct.csf;
                let sig = match &mixv {
                    Some(t) => {
                        t.tissue * tissue + (t.ed * ct.ed + t.ncr * ct.ncr + t.et * ct.et) * texture
                    }
                    None => tissue,
                };
                let sig = sig * s.scale[k] * s.bias[k].eval(g);
                let sigma = s.noise * s.scale[k];
                let (n1, n2) = gauss_pair(s.noise_seed, idx, k as u64);
                let v = ((sig + sigma * n1).powi(2) + (sigma * n2).powi(2)).sqrt();
                plane.img[k][i] = v.round().clamp(1.0, 32767.0) as f32;
            }
            plane.seg[i] = mixv.map_or(0, |t| t.label);
        }
    }
    plane
}

/// Renders all voxels (planes in parallel; output independent of thread count).
pub(crate) fn render(s: &CaseSpec) -> PhantomCase {
    let [nx, ny, nz] = s.dims;
    let planes = par::map(nz, |z| render_plane(s, z));
    let n = nx * ny * nz;
    let mut img: [Vec<f32>; 4] = [0; 4].map(|_| Vec::with_capacity(n));
    let mut seg = Vec::with_capacity(n);
    for p in planes {
        for (dst, src) in img.iter_mut().zip(p.img) {
            dst.extend_from_slice(&src);
        }
        seg.extend_from_slice(&p.seg);
    }
    let grid = Grid::axis_aligned(s.dims, [1.0; 3], s.origin);
    let [t1, t1ce, t2, flair] = img;
    PhantomCase {
        volumes: vec![
            (
                Modality::T1,
                Volume {
                    grid: grid.clone(),
                    data: t1,
                },
            ),
            (
                Modality::T1ce,
                Volume {
                    grid: grid.clone(),
                    data: t1ce,
                },
            ),
            (
                Modality::T2,
                Volume {
                    grid: grid.clone(),
                    data: t2,
                },
            ),
            (
                Modality::Flair,
                Volume {
                    grid: grid.clone(),
                    data: flair,
                },
            ),
        ],
        seg: LabelVolume { grid, data: seg },
        labels: s.reported,
        truth: s.truth.labels(),
    }
}
