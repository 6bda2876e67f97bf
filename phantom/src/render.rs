//! Voxel rendering of a sampled phantom: warped anatomy, tumour compartments, signal equations,
//! bias field and Rician noise. Every voxel is a pure function of its position and the spec.

use super::PhantomCase;
use super::anatomy::{CSF, WM};
use super::shapes::Wave;
use super::spec::{CaseSpec, Enhancement, Relax, Tumor};
use gmmas_imaging::par;
use gmmas_imaging::{Grid, LabelVolume, Modality, Volume};

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

/// Normalized distance of `q` to a tumour core (`< 1` inside), or None when out of reach.
fn tumor_distance(t: &Tumor, q: [f64; 3]) -> Option<f64> {
    let r = dist(q, t.center);
    if r > t.reach {
        return None;
    }
    let u = if r > 1e-9 {
        [(q[0] - t.center[0]) / r, (q[1] - t.center[1]) / r, (q[2] - t.center[2]) / r]
    } else {
        [0.0, 0.0, 1.0]
    };
    let d0 = t.blobs.iter().map(|b| dist(q, b.center) / b.radius).fold(f64::INFINITY, f64::min);
    Some(d0 * (1.0 + waves_at(&t.waves, u)))
}

/// Compartment fractions at a voxel (normal tissue, edema, necrosis / non-enhancing core,
/// enhancing tumour) and its hard label.
struct TumorMix {
    tissue: f64,
    ed: f64,
    ncr: f64,
    et: f64,
    label: u8,
}

/// `edema_scale` (0..1) shortens the edema where the voxel is not white matter.
fn tumor_mix(t: &Tumor, d: f64, q: [f64; 3], edema_scale: f64) -> TumorMix {
    let edema = t.edema * edema_scale;
    let o_core = smoothstep(1.0 - t.core_margin, 1.0 + t.core_margin, d);
    let o_ed = smoothstep(1.0 + edema - t.edema_margin, 1.0 + edema + t.edema_margin, d);
    let core = 1.0 - o_core;
    let (enh, is_et) = match t.enhancement {
        Enhancement::Ring { inner } => (smoothstep(inner - t.core_margin, inner + t.core_margin, d), d >= inner),
        Enhancement::Nodule(b) => {
            let nd = dist(q, b.center) / b.radius;
            (1.0 - smoothstep(0.7, 1.3, nd), nd < 1.0)
        }
    };
    let label = if d < 1.0 {
        if is_et { 4 } else { 1 }
    } else if d < 1.0 + edema {
        2
    } else {
        0
    };
    TumorMix { tissue: o_core * o_ed, ed: o_core * (1.0 - o_ed), ncr: core * (1.0 - enh), et: core * enh, label }
}

fn lerp(a: Relax, b: Relax, w: f64) -> Relax {
    Relax { t1: a.t1 + (b.t1 - a.t1) * w, t2: a.t2 + (b.t2 - a.t2) * w, pd: a.pd + (b.pd - a.pd) * w }
}

/// Texture `tex` (relative) and calcification fraction `calc` applied to a tumour tissue.
fn textured(r: Relax, tex: f64, calc: f64) -> Relax {
    Relax {
        t1: r.t1 * (1.0 + 0.5 * tex).max(0.3),
        t2: r.t2 * (1.0 + tex).max(0.3) * (1.0 - 0.7 * calc),
        pd: r.pd * (1.0 + 0.3 * tex).max(0.3) * (1.0 - 0.6 * calc),
    }
}

struct Plane {
    img: [Vec<f32>; 4],
    seg: Vec<u8>,
    tissue: Vec<u8>,
}

// Long on purpose: the per-voxel signal model (tissues, tumour, lesions, bias, noise) for one plane; every step reads the same voxel state.
fn render_plane(s: &CaseSpec, sn: &[[f64; 3]; 4], z: usize) -> Plane {
    let [nx, ny, _] = s.dims;
    let mut plane =
        Plane { img: [0; 4].map(|_| vec![0f32; nx * ny]), seg: vec![0u8; nx * ny], tissue: vec![0u8; nx * ny] };
    let (anat, w, ts) = (s.anatomy, &s.warp, &s.tissues);
    let half = s.dims.map(|n| (n as f64 / 2.0).max(1.0));
    let step = [w.m[0][0], w.m[1][0], w.m[2][0]];
    for y in 0..ny {
        let base = w.affine([0.0, y as f64, z as f64]);
        let Some((x0, x1)) = anat.span(base, step, w.reach, nx) else {
            continue;
        };
        let mut row = w.row(base, step, x0);
        for x in x0..x1 {
            if x > x0 {
                row.advance();
            }
            let p = [x as f64, y as f64, z as f64];
            let q0 = [0, 1, 2].map(|i| base[i] + x as f64 * step[i]);
            if !anat.near_brain(q0, w.reach) {
                continue;
            }
            let u = row.displacement();
            let q = [q0[0] + u[0], q0[1] + u[1], q0[2] + u[2]];
            // Nearest tumour (smallest normalized distance).
            let mut best: Option<(f64, &Tumor)> = None;
            for t in &s.tumors {
                if let Some(d) = tumor_distance(t, q)
                    && best.is_none_or(|(bd, _)| d < bd)
                {
                    best = Some((d, t));
                }
            }
            // Mass effect: tissue pushed away from the main tumour, not at the brain surface.
            let m = &s.mass;
            let r = dist(q, m.center);
            let qa = if r < 3.0 * m.rho {
                let fade = (anat.depth(q) / 15.0).min(1.0);
                let k = 1.0 - m.alpha * fade * (-(r / m.rho).powi(2)).exp();
                [0, 1, 2].map(|i| m.center[i] + (q[i] - m.center[i]) * k)
            } else {
                q
            };
            let mut f = anat.fractions(w.level, qa);
            let sum: f64 = f.iter().sum();
            if sum < 0.5 {
                continue;
            }
            // Skull-stripped edge voxels: the missing part is subarachnoid CSF.
            if sum > 1.0 {
                f = f.map(|v| v / sum);
            } else {
                f[CSF] += 1.0 - sum;
            }
            let i = x + nx * y;
            let mixv = best.map(|(d, t)| {
                let scale = (0.6 + 0.4 * f[WM]) * smoothstep(0.6, 0.4, f[CSF]);
                (tumor_mix(t, d, q, scale), t, d)
            });
            let tumor = mixv.as_ref().filter(|(m, _, _)| m.tissue < 1.0);
            let comp = tumor.map(|(_, t, d)| {
                let tex = waves_at(&s.tumor_texture, q);
                let calc = t
                    .calcs
                    .iter()
                    .map(|b| 1.0 - smoothstep(0.6, 1.4, dist(q, b.center) / b.radius))
                    .fold(0.0, f64::max);
                let core = if t.cavity > 0.0 {
                    let wc = 1.0 - smoothstep(t.cavity - 0.1, t.cavity + 0.1, *d);
                    lerp(ts.core, ts.cavity, wc)
                } else {
                    ts.core
                };
                [textured(ts.edema, 0.5 * tex, 0.0), textured(core, tex, calc), textured(ts.et, tex, calc)]
            });
            let idx = (i + nx * ny * z) as u64;
            let g = [(p[0] - half[0]) / half[0], (p[1] - half[1]) / half[1], (p[2] - half[2]) / half[2]];
            for m in Modality::ALL {
                let k = m.index();
                let normal = f[0] * sn[k][0] + f[1] * sn[k][1] + f[2] * sn[k][2];
                let sig = match (tumor, &comp) {
                    (Some((mx, _, _)), Some([ed, core, et])) => {
                        let gd = |v: f64| if m == Modality::T1ce { v } else { 0.0 };
                        let seq = &s.seq[k];
                        let s_ed = seq.signal(1.0 / ed.t1 + gd(ts.gd_edema), ed.t2, ed.pd);
                        let s_core = seq.signal(1.0 / core.t1, core.t2, core.pd);
                        let s_et = seq.signal(1.0 / et.t1 + gd(ts.gd_et), et.t2, et.pd);
                        mx.tissue * normal + mx.ed * s_ed + mx.ncr * s_core + mx.et * s_et
                    }
                    _ => normal,
                };
                let sig = match &s.lesion {
                    Some(l) => {
                        let frac = (l.radius + 0.5 - dist(q, l.center)).clamp(0.0, 1.0);
                        let r = l.relax;
                        (1.0 - frac) * sig + frac * s.seq[k].signal(1.0 / r.t1, r.t2, r.pd)
                    }
                    None => sig,
                };
                let sig = sig * s.scale[k] * s.bias[k].eval(g);
                let sigma = s.sigma[k];
                let (n1, n2) = gauss_pair(s.noise_seed, idx, k as u64);
                let v = ((sig + sigma * n1).powi(2) + (sigma * n2).powi(2)).sqrt();
                plane.img[k][i] = v.round().clamp(1.0, 32767.0) as f32;
            }
            let label = mixv.as_ref().map_or(0, |(m, _, _)| m.label);
            plane.seg[i] = label;
            if label == 0 && tumor.is_none() {
                plane.tissue[i] = f.iter().position(|&v| v >= 0.9).map_or(0, |t| t as u8 + 1);
            }
        }
    }
    plane
}

/// A rendered case plus, for tests, the dominant normal tissue per voxel (1 GM, 2 WM, 3 CSF
/// where its fraction is at least 0.9 and no tumour is present, else 0).
pub(crate) struct Rendered {
    pub case: PhantomCase,
    #[cfg_attr(not(test), allow(dead_code))]
    pub tissue: Vec<u8>,
}

/// Renders all voxels (planes in parallel; output independent of thread count).
pub(crate) fn render(s: &CaseSpec) -> Rendered {
    let [nx, ny, nz] = s.dims;
    // Normal-tissue signals per modality (T1ce: with the tissues' gadolinium uptake).
    let ts = &s.tissues;
    let sn: [[f64; 3]; 4] = [0, 1, 2, 3].map(|k| {
        [0, 1, 2].map(|t| {
            let r = ts.normal[t];
            let gd = if k == 1 { ts.gd_normal[t] } else { 0.0 };
            s.seq[k].signal(1.0 / r.t1 + gd, r.t2, r.pd)
        })
    });
    let planes = par::map(nz, |z| render_plane(s, &sn, z));
    let n = nx * ny * nz;
    let mut img: [Vec<f32>; 4] = [0; 4].map(|_| Vec::with_capacity(n));
    let mut seg = Vec::with_capacity(n);
    let mut tissue = Vec::with_capacity(n);
    for p in planes {
        for (dst, src) in img.iter_mut().zip(p.img) {
            dst.extend_from_slice(&src);
        }
        seg.extend_from_slice(&p.seg);
        tissue.extend_from_slice(&p.tissue);
    }
    let grid = Grid::axis_aligned(s.dims, [1.0; 3], s.origin);
    let volumes =
        Modality::ALL.into_iter().zip(img).map(|(m, data)| (m, Volume { grid: grid.clone(), data })).collect();
    Rendered {
        case: PhantomCase {
            volumes,
            seg: LabelVolume { grid, data: seg },
            labels: s.reported,
            truth: if s.tumors.is_empty() { Default::default() } else { s.truth.labels() },
            anatomy: s.anatomy.source,
        },
        tissue,
    }
}
