//! Sampling of a phantom case description: class labels first, then anatomy, tumours, contrasts,
//! bias and noise parameters tied to those labels. Rendering lives in `render.rs`.

use super::PhantomConfig;
use crate::brats::CaseLabels;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, UnitSphere};

/// Ground-truth classes that drive the image features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Truth {
    pub gbm: bool,
    pub idh: bool,
    pub codel: bool,
    pub mgmt: bool,
}

impl Truth {
    pub fn labels(&self) -> CaseLabels {
        CaseLabels {
            grade_gbm: Some(self.gbm),
            idh_mutant: Some(self.idh),
            codel_1p19q: Some(self.codel),
            mgmt_methylated: Some(self.mgmt),
        }
    }
}

/// `amp * sin(k . u + phase)`, evaluated on a unit direction or on a voxel position.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wave {
    pub k: [f64; 3],
    pub phase: f64,
    pub amp: f64,
}

impl Wave {
    pub fn eval(&self, u: [f64; 3]) -> f64 {
        self.amp * (self.k[0] * u[0] + self.k[1] * u[1] + self.k[2] * u[2] + self.phase).sin()
    }
}

/// Axis-aligned ellipsoid in voxel coordinates.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ellipsoid {
    pub center: [f64; 3],
    pub radii: [f64; 3],
}

impl Ellipsoid {
    /// Normalized radius (1 on the surface).
    pub fn rho(&self, p: [f64; 3]) -> f64 {
        let mut s = 0.0;
        for ((p, c), r) in p.iter().zip(&self.center).zip(&self.radii) {
            let d = (p - c) / r;
            s += d * d;
        }
        s.sqrt()
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Brain {
    /// Outer brain surface: ellipsoid deformed by `shape` waves on the direction.
    pub hull: Ellipsoid,
    pub shape: Vec<Wave>,
    /// Normalized radius where cortex (GM) starts, modulated by `gyri` (plane waves on the
    /// voxel position).
    pub cortex: f64,
    pub gyri: Vec<Wave>,
    /// Normalized radius where the outer (sulcal) CSF starts.
    pub csf_shell: f64,
    pub ventricles: [Ellipsoid; 2],
    pub deep_gm: [Ellipsoid; 2],
    /// Transition half-width (normalized radius units) of tissue boundaries.
    pub blur: f64,
}

/// A sphere in voxel coordinates.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Blob {
    pub center: [f64; 3],
    pub radius: f64,
}

/// How the enhancing tumour appears inside the core.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Enhancement {
    /// Ring: core voxels with normalized distance >= `inner` enhance, the inside is necrotic.
    Ring { inner: f64 },
    /// A small enhancing nodule inside an otherwise non-enhancing core.
    Nodule(Blob),
}

#[derive(Clone, Debug)]
pub(crate) struct Tumor {
    pub center: [f64; 3],
    /// Core = union of blobs (normalized distance `min |p-c|/r < 1`).
    pub blobs: Vec<Blob>,
    /// Irregularity of the normalized distance, on the direction from `center`.
    pub waves: Vec<Wave>,
    pub enhancement: Enhancement,
    /// Edema extends to normalized distance `1 + edema`.
    pub edema: f64,
    /// Intensity transition half-widths (normalized distance) at the core and edema borders.
    pub core_margin: f64,
    pub edema_margin: f64,
    /// Bounding radius (voxels) outside which the tumour has no effect.
    pub reach: f64,
}

/// Relative tissue intensities of one modality.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Contrast {
    pub wm: f64,
    pub gm: f64,
    pub csf: f64,
    pub ed: f64,
    pub ncr: f64,
    pub et: f64,
}

/// Quadratic log-bias polynomial over normalized grid coordinates.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bias {
    pub coef: [f64; 9],
}

impl Bias {
    pub fn eval(&self, g: [f64; 3]) -> f64 {
        let c = &self.coef;
        let t = c[0] * g[0]
            + c[1] * g[1]
            + c[2] * g[2]
            + c[3] * g[0] * g[1]
            + c[4] * g[0] * g[2]
            + c[5] * g[1] * g[2]
            + c[6] * (g[0] * g[0] - 0.33)
            + c[7] * (g[1] * g[1] - 0.33)
            + c[8] * (g[2] * g[2] - 0.33);
        t.exp()
    }
}

#[derive(Clone, Debug)]
pub(crate) struct CaseSpec {
    pub dims: [usize; 3],
    pub origin: [f64; 3],
    pub truth: Truth,
    pub reported: CaseLabels,
    pub brain: Brain,
    pub tumors: Vec<Tumor>,
    /// Per modality in `Modality::index` order.
    pub contrast: [Contrast; 4],
    pub scale: [f64; 4],
    pub bias: [Bias; 4],
    /// Multiplicative texture of tumour tissue (plane waves on the voxel position).
    pub tumor_texture: Vec<Wave>,
    /// Noise standard deviation as a fraction of each modality's scale.
    pub noise: f64,
    pub noise_seed: u64,
}

fn dir(rng: &mut ChaCha8Rng) -> [f64; 3] {
    UnitSphere.sample(rng)
}

fn waves(rng: &mut ChaCha8Rng, n: usize, kmax: f64, amp: f64) -> Vec<Wave> {
    (0..n)
        .map(|_| {
            let d = dir(rng);
            let k = rng.random_range(1.0..kmax);
            Wave {
                k: [d[0] * k, d[1] * k, d[2] * k],
                phase: rng.random_range(0.0..std::f64::consts::TAU),
                amp: amp * rng.random_range(0.3..1.0),
            }
        })
        .collect()
}

/// Plane waves with wavelengths (voxels) in `lambda`, amplitudes summing to at most `amp`.
fn plane_waves(rng: &mut ChaCha8Rng, n: usize, lambda: (f64, f64), amp: f64) -> Vec<Wave> {
    (0..n)
        .map(|_| {
            let d = dir(rng);
            let k = std::f64::consts::TAU / rng.random_range(lambda.0..lambda.1);
            Wave {
                k: [d[0] * k, d[1] * k, d[2] * k],
                phase: rng.random_range(0.0..std::f64::consts::TAU),
                amp: amp / n as f64 * rng.random_range(0.6..1.0),
            }
        })
        .collect()
}

fn sample_truth(rng: &mut ChaCha8Rng) -> Truth {
    let gbm = rng.random_bool(0.5);
    let idh = rng.random_bool(if gbm { 0.1 } else { 0.75 });
    let codel = idh && rng.random_bool(0.45);
    let mgmt = rng.random_bool(if idh { 0.85 } else { 0.45 });
    Truth {
        gbm,
        idh,
        codel,
        mgmt,
    }
}

/// Reported labels: the truth with some label noise and some unknowns.
fn sample_reported(rng: &mut ChaCha8Rng, t: &Truth) -> CaseLabels {
    let flip = |v: bool, p: f64, rng: &mut ChaCha8Rng| v ^ rng.random_bool(p);
    let grade = flip(t.gbm, 0.03, rng);
    let idh = flip(t.idh, 0.03, rng);
    let codel = if idh {
        (!rng.random_bool(0.15)).then(|| t.codel ^ rng.random_bool(0.03))
    } else {
        rng.random_bool(0.5).then_some(false)
    };
    let mgmt = (!rng.random_bool(0.2)).then(|| t.mgmt ^ rng.random_bool(0.1));
    CaseLabels {
        grade_gbm: Some(grade),
        idh_mutant: Some(idh),
        codel_1p19q: codel,
        mgmt_methylated: mgmt,
    }
}

fn sample_brain(rng: &mut ChaCha8Rng, dims: [usize; 3]) -> Brain {
    let d = dims.map(|n| n as f64);
    let center = [
        (d[0] - 1.0) / 2.0 + rng.random_range(-0.015..0.015) * d[0],
        (d[1] - 1.0) / 2.0 + rng.random_range(-0.02..0.02) * d[1],
        (d[2] - 1.0) / 2.0 + rng.random_range(-0.02..0.02) * d[2],
    ];
    let mut radii = [
        0.29 * d[0] * rng.random_range(0.93..1.04),
        0.36 * d[1] * rng.random_range(0.93..1.04),
        0.42 * d[2] * rng.random_range(0.93..1.04),
    ];
    // Keep the deformed surface at least one voxel inside the grid: the shape waves can push
    // it out by 1/(1 - sum of amplitudes), x also by the posterior widening in `render`.
    let shape = waves(rng, 4, 3.0, 0.035);
    let grow = 1.0 / (1.0 - shape.iter().map(|w| w.amp.abs()).sum::<f64>());
    for i in 0..3 {
        let room = center[i].min(d[i] - 1.0 - center[i]) - 1.0;
        let g = if i == 0 { grow * 1.08 } else { grow };
        radii[i] = radii[i].min(room / g);
    }
    let vent = rng.random_range(0.8..1.35);
    let ventricles = [-1.0, 1.0].map(|side| Ellipsoid {
        center: [
            center[0] + side * 0.11 * radii[0],
            center[1] - 0.03 * radii[1],
            center[2] + 0.1 * radii[2],
        ],
        radii: [
            0.085 * radii[0] * vent,
            0.36 * radii[1] * vent.sqrt(),
            0.17 * radii[2] * vent,
        ],
    });
    let deep_gm = [-1.0, 1.0].map(|side| Ellipsoid {
        center: [
            center[0] + side * 0.27 * radii[0],
            center[1] - 0.05 * radii[1],
            center[2] - 0.02 * radii[2],
        ],
        radii: [0.12 * radii[0], 0.2 * radii[1], 0.16 * radii[2]],
    });
    Brain {
        hull: Ellipsoid { center, radii },
        shape,
        cortex: rng.random_range(0.8..0.85),
        gyri: plane_waves(rng, 4, (9.0, 15.0), 0.1),
        csf_shell: rng.random_range(0.955..0.975),
        ventricles,
        deep_gm,
        blur: 0.018,
    }
}

/// Places and shapes one tumour; `size` scales the core radius (1 for the main focus).
fn sample_tumor(rng: &mut ChaCha8Rng, t: &Truth, brain: &Brain, size: f64) -> Tumor {
    let r = brain.hull.radii;
    let unit = (r[0] + r[1] + r[2]) / 3.0;
    // Location in normalized brain coordinates: IDH-mutant tumours are frontal (+y = anterior).
    let side = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
    let mut q: [f64; 3] = [
        side * rng.random_range(0.15..0.5),
        if t.idh {
            rng.random_range(0.25..0.55)
        } else {
            rng.random_range(-0.5..0.3)
        },
        rng.random_range(-0.2..0.4),
    ];
    let mut norm = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]).sqrt();
    if t.codel && norm > 0.0 {
        // Oligodendrogliomas tend to be cortical/superficial.
        let s = 0.62 / norm;
        q = q.map(|v| v * s);
        norm = 0.62;
    }
    if norm > 0.65 {
        q = q.map(|v| v * 0.65 / norm);
    }
    let center = [
        brain.hull.center[0] + q[0] * r[0],
        brain.hull.center[1] + q[1] * r[1],
        brain.hull.center[2] + q[2] * r[2],
    ];
    // GBM: large necrotic core; LGG: small core inside a wide T2/FLAIR-bright region.
    let rc = (if t.gbm {
        rng.random_range(0.19..0.28)
    } else {
        rng.random_range(0.13..0.19)
    } * unit
        * size)
        .max(3.0);
    let mut blobs = vec![Blob { center, radius: rc }];
    for _ in 0..rng.random_range(2..5) {
        let d = dir(rng);
        let off = rng.random_range(0.35..0.7) * rc;
        blobs.push(Blob {
            center: [
                center[0] + d[0] * off,
                center[1] + d[1] * off,
                center[2] + d[2] * off,
            ],
            radius: (rng.random_range(0.45..0.75) * rc).max(2.0),
        });
    }
    let min_r = blobs.iter().map(|b| b.radius).fold(f64::INFINITY, f64::min);
    let enhancement = if t.gbm {
        // Thick ring; IDH-mutant GBMs are less necrotic.
        let inner: f64 = if t.idh {
            rng.random_range(0.35..0.55)
        } else {
            rng.random_range(0.55..0.75)
        };
        Enhancement::Ring {
            inner: inner.min(1.0 - 1.3 / min_r).max(1.2 / rc),
        }
    } else {
        let d = dir(rng);
        let off = rng.random_range(0.35..0.6) * rc;
        Enhancement::Nodule(Blob {
            center: [
                center[0] + d[0] * off,
                center[1] + d[1] * off,
                center[2] + d[2] * off,
            ],
            radius: (rng.random_range(0.18..0.3) * rc).max(1.6),
        })
    };
    let mut edema: f64 = if t.gbm {
        rng.random_range(0.5..1.0)
    } else {
        rng.random_range(0.8..1.4)
    };
    if t.idh {
        edema *= 0.85;
    }
    if t.mgmt {
        edema *= 0.9; // weak signal
    }
    let edema = edema.max(2.2 / min_r);
    let (core_margin, edema_margin) = if t.idh {
        (0.03, 0.05)
    } else {
        (rng.random_range(0.08..0.15), rng.random_range(0.18..0.3))
    };
    let max_extent = blobs
        .iter()
        .map(|b| {
            let dc = ((b.center[0] - center[0]).powi(2)
                + (b.center[1] - center[1]).powi(2)
                + (b.center[2] - center[2]).powi(2))
            .sqrt();
            dc + b.radius
        })
        .fold(0.0, f64::max);
    Tumor {
        center,
        waves: waves(rng, 5, 4.0, 0.05),
        reach: max_extent * (1.0 + edema + edema_margin) * 1.35 + 2.0,
        blobs,
        enhancement,
        edema,
        core_margin,
        edema_margin,
    }
}

fn sample_contrast(rng: &mut ChaCha8Rng, t: &Truth) -> [Contrast; 4] {
    let jitter = Normal::new(1.0, 0.03).expect("constant distribution parameters");
    let mut j = |v: f64| v * f64::clamp(jitter.sample(rng), 0.85, 1.15);
    // T2-FLAIR mismatch for IDH-mutant: core very bright on T2, relatively dark on FLAIR.
    let (t2_ncr, flair_ncr) = if t.idh { (1.45, 0.55) } else { (1.25, 0.95) };
    [
        Contrast {
            wm: j(1.0),
            gm: j(0.72),
            csf: j(0.28),
            ed: j(0.62),
            ncr: j(0.33),
            et: j(0.6),
        },
        Contrast {
            wm: j(1.0),
            gm: j(0.75),
            csf: j(0.3),
            ed: j(0.64),
            ncr: j(0.3),
            et: j(1.6),
        },
        Contrast {
            wm: j(0.42),
            gm: j(0.62),
            csf: j(1.5),
            ed: j(1.1),
            ncr: j(t2_ncr),
            et: j(0.85),
        },
        Contrast {
            wm: j(0.55),
            gm: j(0.72),
            csf: j(0.18),
            ed: j(1.3),
            ncr: j(flair_ncr),
            et: j(1.0),
        },
    ]
}

/// Samples the whole case description from the config's seed.
pub(crate) fn sample(cfg: &PhantomConfig) -> CaseSpec {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let dims = cfg.dims;
    let truth = sample_truth(&mut rng);
    let reported = sample_reported(&mut rng, &truth);
    let brain = sample_brain(&mut rng, dims);
    let mut tumors = vec![sample_tumor(&mut rng, &truth, &brain, 1.0)];
    if rng.random_bool(if truth.gbm { 0.25 } else { 0.08 }) {
        let size = rng.random_range(0.5..0.7);
        tumors.push(sample_tumor(&mut rng, &truth, &brain, size));
    }
    let contrast = sample_contrast(&mut rng, &truth);
    let base = [500.0, 600.0, 700.0, 400.0];
    let scale = base.map(|b| b * rng.random_range(0.6..1.5));
    let coef = Normal::new(0.0, 0.07).expect("constant distribution parameters");
    let bias = [0; 4].map(|_| Bias {
        coef: [0; 9].map(|_| coef.sample(&mut rng)),
    });
    let tumor_texture = plane_waves(&mut rng, 5, (4.0, 9.0), 0.18);
    let d = dims.map(|n| (n / 2) as f64);
    CaseSpec {
        dims,
        origin: [-d[0], -d[1], -d[2]],
        truth,
        reported,
        brain,
        tumors,
        contrast,
        scale,
        bias,
        tumor_texture,
        noise: rng.random_range(0.02..0.045),
        noise_seed: rng.random(),
    }
}
