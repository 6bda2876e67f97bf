//! Sampling of a phantom case description: class labels first, then the warp of the normal brain,
//! tumours, relaxation times, sequences, bias and noise tied to those labels (see the README).

use super::PhantomConfig;
use super::anatomy::{Anatomy, CSF, GM, WM};
use super::shapes::{Wave, dir, plane_waves, waves};
use gmmas_imaging::brats::CaseLabels;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

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

/// A sphere (template mm).
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
    /// An enhancing nodule inside an otherwise non-enhancing core.
    Nodule(Blob),
}

/// One tumour focus, in the anatomy's 1 mm space.
#[derive(Clone, Debug)]
pub(crate) struct Tumor {
    pub center: [f64; 3],
    /// Core = union of blobs (normalized distance `min |p-c|/r < 1`).
    pub blobs: Vec<Blob>,
    /// Irregularity of the normalized distance, on the direction from `center`.
    pub waves: Vec<Wave>,
    pub enhancement: Enhancement,
    /// Edema extends to normalized distance `1 + edema` in white matter (less in grey matter,
    /// none in CSF).
    pub edema: f64,
    /// Intensity transition half-widths (normalized distance) at the core and edema borders.
    pub core_margin: f64,
    pub edema_margin: f64,
    /// Necrosis with normalized distance below `cavity` is fluid (0: no cavity).
    pub cavity: f64,
    /// Calcifications (short T2, low proton density) inside the core.
    pub calcs: Vec<Blob>,
    /// Bounding radius (mm) outside which the tumour has no effect.
    pub reach: f64,
}

/// Mass effect of the main tumour: tissue at radius `r` from `center` shows the anatomy from
/// radius `r (1 - alpha exp(-(r/rho)^2))`, fading out towards the brain surface.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mass {
    pub center: [f64; 3],
    pub rho: f64,
    pub alpha: f64,
}

/// A lesion that is not a glioma: a homogeneous sphere with a sharp (one-voxel) boundary and
/// the relaxation times `relax`; no edema, no enhancement, no mass effect.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lesion {
    pub center: [f64; 3],
    pub radius: f64,
    pub relax: Relax,
}

/// Relaxation times (s) and relative proton density of one tissue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Relax {
    pub t1: f64,
    pub t2: f64,
    pub pd: f64,
}

/// Relaxation parameters of every tissue class of a case.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tissues {
    /// GM, WM, CSF.
    pub normal: [Relax; 3],
    pub edema: Relax,
    /// Necrosis (grade 4) or non-enhancing tumour (lower grade).
    pub core: Relax,
    /// Fluid centre of a necrosis.
    pub cavity: Relax,
    pub et: Relax,
    /// Gadolinium: increase of R1 = 1/T1 (1/s) in T1ce, for ET, edema and GM/WM/CSF.
    pub gd_et: f64,
    pub gd_edema: f64,
    pub gd_normal: [f64; 3],
}

/// An MRI pulse sequence reduced to its steady-state signal equation.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Sequence {
    /// `S = PD (1 - e^{-TR R1}) e^{-TE/T2}`.
    SpinEcho { tr: f64, te: f64 },
    /// `S = PD |1 - 2 e^{-TI R1} + e^{-TR R1}| e^{-TE/T2}`.
    InversionRecovery { tr: f64, te: f64, ti: f64 },
}

impl Sequence {
    /// Signal of a tissue with longitudinal rate `r1` (1/s), `t2` (s) and proton density `pd`.
    pub fn signal(&self, r1: f64, t2: f64, pd: f64) -> f64 {
        match *self {
            Sequence::SpinEcho { tr, te } => pd * (1.0 - (-tr * r1).exp()) * (-te / t2).exp(),
            Sequence::InversionRecovery { tr, te, ti } => {
                pd * (1.0 - 2.0 * (-ti * r1).exp() + (-tr * r1).exp()).abs() * (-te / t2).exp()
            }
        }
    }
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

/// Output voxel -> anatomy position: `q0 = center_tpl + m (p - center_out)` (rotation,
/// anisotropic scale, zoom), then `q = q0 + deform(q0)` (smooth displacement, mm).
#[derive(Clone, Debug)]
pub(crate) struct Warp {
    pub center_out: [f64; 3],
    pub center_tpl: [f64; 3],
    pub m: [[f64; 3]; 3],
    pub deform: [Vec<Wave>; 3],
    /// Anatomy mm per output voxel.
    pub zoom: f64,
    /// Pyramid level sampled.
    pub level: usize,
    /// Output voxels whose `q0` is farther than this (mm) from any tissue are background.
    pub reach: f64,
}

impl Warp {
    pub fn affine(&self, p: [f64; 3]) -> [f64; 3] {
        let o = [p[0] - self.center_out[0], p[1] - self.center_out[1], p[2] - self.center_out[2]];
        let m = &self.m;
        [0, 1, 2].map(|i| self.center_tpl[i] + m[i][0] * o[0] + m[i][1] * o[1] + m[i][2] * o[2])
    }

    /// The displacement along the output row `q0(x) = base + x step` from `x = x0` on.
    pub fn row(&self, base: [f64; 3], step: [f64; 3], x0: usize) -> Row {
        let mut osc = Vec::new();
        for (axis, ws) in self.deform.iter().enumerate() {
            for w in ws {
                let dot = |v: [f64; 3]| w.k[0] * v[0] + w.k[1] * v[1] + w.k[2] * v[2];
                let (s, c) = (dot(base) + w.phase + x0 as f64 * dot(step)).sin_cos();
                let (sd, cd) = dot(step).sin_cos();
                osc.push(Oscillator { axis, amp: w.amp, s, c, sd, cd });
            }
        }
        Row { osc }
    }
}

struct Oscillator {
    axis: usize,
    amp: f64,
    /// sin and cos of the current phase, and of the phase step per voxel.
    s: f64,
    c: f64,
    sd: f64,
    cd: f64,
}

/// Deformation waves along a row, advanced voxel by voxel by rotating their phases (no sine per
/// voxel; the rounding drift over a row is far below 1e-9 mm).
pub(crate) struct Row {
    osc: Vec<Oscillator>,
}

impl Row {
    pub fn displacement(&self) -> [f64; 3] {
        let mut d = [0.0; 3];
        for o in &self.osc {
            d[o.axis] += o.amp * o.s;
        }
        d
    }

    pub fn advance(&mut self) {
        for o in &mut self.osc {
            let s = o.s * o.cd + o.c * o.sd;
            o.c = o.c * o.cd - o.s * o.sd;
            o.s = s;
        }
    }
}

/// Which class-driven features a case drew (documented in the README table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Features {
    /// Necrotic core with a ring of enhancement.
    pub ring: bool,
    /// T2-FLAIR mismatch: fluid-like non-enhancing core.
    pub mismatch: bool,
    /// Main focus placed frontally.
    pub frontal: bool,
    /// Main focus reaching the cortex.
    pub cortical: bool,
    pub calcified: bool,
    pub multifocal: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct CaseSpec {
    pub anatomy: &'static Anatomy,
    pub dims: [usize; 3],
    pub origin: [f64; 3],
    pub truth: Truth,
    pub reported: CaseLabels,
    #[cfg_attr(not(test), allow(dead_code))]
    pub features: Features,
    pub warp: Warp,
    pub tumors: Vec<Tumor>,
    pub mass: Mass,
    pub tissues: Tissues,
    /// Per modality in `Modality::index` order (T1ce = T1 sequence after gadolinium).
    pub seq: [Sequence; 4],
    /// Signal -> scanner units, per modality.
    pub scale: [f64; 4],
    pub bias: [Bias; 4],
    /// Relative texture of tumour T2 (and, damped, T1 and PD): plane waves on the position.
    pub tumor_texture: Vec<Wave>,
    /// Noise standard deviation, per modality, in scanner units.
    pub sigma: [f64; 4],
    pub noise_seed: u64,
    /// A non-glioma lesion (only in [`super::PhantomKind::NonGlioma`] cases).
    pub lesion: Option<Lesion>,
}

fn sample_truth(rng: &mut ChaCha8Rng) -> Truth {
    let gbm = rng.random_bool(0.5);
    let idh = rng.random_bool(if gbm { 0.1 } else { 0.75 });
    let codel = idh && rng.random_bool(0.45);
    let mgmt = rng.random_bool(if idh { 0.85 } else { 0.45 });
    Truth { gbm, idh, codel, mgmt }
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
    CaseLabels { grade_gbm: Some(grade), idh_mutant: Some(idh), codel_1p19q: codel, mgmt_methylated: mgmt }
}

/// Grid size the anatomy is shown at its natural size in (BraTS, 1 mm).
const REFERENCE_DIMS: [f64; 3] = [240.0, 240.0, 155.0];
/// Largest displacement (mm) of the mass effect.
const MASS_MAX: f64 = 4.0;

fn matmul(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut c = [[0.0; 3]; 3];
    for (i, row) in c.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    c
}

/// Random rotation, anisotropic scale and deformation of the anatomy, fitted into `dims`.
#[allow(clippy::expect_used, clippy::unwrap_used, reason = "constant distribution parameters")]
fn sample_warp(rng: &mut ChaCha8Rng, anat: &Anatomy, dims: [usize; 3]) -> Warp {
    let angle = Normal::new(0.0, 0.045).expect("constant distribution parameters");
    let [ax, ay, az] = [0; 3].map(|_| f64::clamp(angle.sample(rng), -0.1, 0.1));
    let (sx, cx) = ax.sin_cos();
    let (sy, cy) = ay.sin_cos();
    let (sz, cz) = az.sin_cos();
    let rx = [[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]];
    let ry = [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]];
    let rz = [[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]];
    let rot = matmul(&rz, &matmul(&ry, &rx));
    let aniso = [0; 3].map(|_| rng.random_range(0.96..1.04));
    // Head size: the brain appears 1/size larger than the anatomy at the reference grid.
    let size = rng.random_range(0.93..1.05);
    let amp = rng.random_range(1.5..3.5);
    let deform = [0; 3].map(|_| plane_waves(rng, 3, (60.0, 150.0), amp));
    let shift = [0; 3].map(|_| rng.random_range(-1.0..1.0));
    // Output offsets of the hull at zoom 1: e = diag(1/aniso) rot^T (q - c).
    let ct = anat.center();
    let (mut lo, mut hi) = ([f64::INFINITY; 3], [f64::NEG_INFINITY; 3]);
    for h in &anat.hull {
        let d = [h[0] - ct[0], h[1] - ct[1], h[2] - ct[2]];
        for i in 0..3 {
            let e = (rot[0][i] * d[0] + rot[1][i] * d[1] + rot[2][i] * d[2]) / aniso[i];
            lo[i] = lo[i].min(e);
            hi[i] = hi[i].max(e);
        }
    }
    // Hull voxels are 2 mm; trilinear sampling spreads 1 mm more; plus the displacement.
    let margin = 2.5 + amp;
    let d = dims.map(|n| n as f64);
    let base = (0..3).map(|i| REFERENCE_DIMS[i] / d[i]).fold(f64::INFINITY, f64::min) / size;
    let fit = (0..3).map(|i| (hi[i] - lo[i] + 2.0 * margin) / (d[i] - 3.0).max(1.0)).fold(0.0, f64::max);
    let zoom = base.max(fit);
    let center_out = [0, 1, 2].map(|i| {
        // Keep the brain within voxels 1 ..= n-2, centred up to a small random shift.
        let c_lo = 1.0 - (lo[i] - margin) / zoom;
        let c_hi = d[i] - 2.0 - (hi[i] + margin) / zoom;
        let slack = (0.5 * (c_hi - c_lo)).clamp(0.0, 0.03 * d[i]);
        0.5 * (c_lo + c_hi) + shift[i] * slack
    });
    let mut m = [[0.0; 3]; 3];
    for (i, row) in m.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = zoom * rot[i][j] * aniso[j];
        }
    }
    let level = Anatomy::level_for(zoom);
    Warp {
        center_out,
        center_tpl: ct,
        m,
        deform,
        zoom,
        level,
        reach: 1.5 * f64::from(1u32 << level) + amp + MASS_MAX + 2.0,
    }
}

/// Lobes, as boxes in normalized brain coordinates (|x|, y anterior, z superior; -1..1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    Frontal,
    Temporal,
    Parietal,
    Occipital,
    Deep,
}

impl Region {
    fn bounds(self) -> [(f64, f64); 3] {
        match self {
            Region::Frontal => [(0.1, 0.65), (0.2, 0.7), (-0.3, 0.6)],
            Region::Temporal => [(0.5, 0.8), (-0.45, 0.3), (-0.65, -0.25)],
            Region::Parietal => [(0.1, 0.65), (-0.6, -0.05), (0.2, 0.7)],
            Region::Occipital => [(0.1, 0.55), (-0.85, -0.62), (-0.25, 0.3)],
            Region::Deep => [(0.08, 0.35), (-0.15, 0.4), (-0.2, 0.2)],
        }
    }
}

/// A tumour centre in `region` whose depth below the brain surface lies in `band` (mm), in
/// brain (not CSF) and at least `apart` mm from `avoid`; the best try when none fits.
fn place(
    rng: &mut ChaCha8Rng,
    anat: &Anatomy,
    region: Region,
    band: (f64, f64),
    avoid: Option<([f64; 3], f64)>,
) -> [f64; 3] {
    let (c, h) = (anat.center(), anat.half());
    let b = region.bounds();
    let mut side = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
    let mut best = (f64::INFINITY, c);
    for attempt in 0..240 {
        if attempt == 120 {
            side = -side;
        }
        let n = [
            side * rng.random_range(b[0].0..b[0].1),
            rng.random_range(b[1].0..b[1].1),
            rng.random_range(b[2].0..b[2].1),
        ];
        let q = [0, 1, 2].map(|i| c[i] + n[i] * h[i]);
        let f = anat.fractions(0, q);
        let depth = anat.depth(q);
        let mut miss = (band.0 - depth).max(depth - band.1).max(0.0);
        if f.iter().sum::<f64>() < 0.95 || f[CSF] > 0.2 {
            miss += 20.0 + 40.0 * f[CSF];
        }
        if let Some((a, apart)) = avoid {
            let d = ((q[0] - a[0]).powi(2) + (q[1] - a[1]).powi(2) + (q[2] - a[2]).powi(2)).sqrt();
            miss += (apart - d).max(0.0);
        }
        if miss < best.0 {
            best = (miss, q);
            if miss == 0.0 {
                break;
            }
        }
    }
    best.1
}

fn offset(c: [f64; 3], d: [f64; 3], r: f64) -> [f64; 3] {
    [c[0] + d[0] * r, c[1] + d[1] * r, c[2] + d[2] * r]
}

/// Places and shapes one tumour; `size` scales the core radius (1 for the main focus); `zoom` is
/// the output voxel size (mm) that sub-regions must stay visible at.
// Long on purpose: every random draw of a tumour happens here in one fixed order; that order defines each phantom's bytes, so the draws are not spread over helpers.
fn sample_tumor(
    rng: &mut ChaCha8Rng,
    t: &Truth,
    f: &mut Features,
    anat: &Anatomy,
    zoom: f64,
    size: f64,
    avoid: Option<&Tumor>,
) -> Tumor {
    let main = avoid.is_none();
    // GBM: large necrotic core; LGG: small core inside a wide T2/FLAIR-bright region.
    let rc = (if t.gbm { rng.random_range(14.0..24.0) } else { rng.random_range(10.0..17.0) } * size).max(3.0 * zoom);
    // Location: IDH-mutant tumours are frontal, oligodendrogliomas (codeleted) cortical; a
    // second focus lies anywhere away from the first.
    let lobes = [Region::Frontal, Region::Temporal, Region::Parietal, Region::Occipital];
    let region = if !main && rng.random_bool(0.8) {
        lobes[rng.random_range(0..4)]
    } else if rng.random_bool(if t.idh { 0.8 } else { 0.25 }) {
        Region::Frontal
    } else {
        let u: f64 = rng.random();
        if t.idh {
            if u < 0.6 { Region::Temporal } else { Region::Parietal }
        } else if u < 0.35 {
            Region::Temporal
        } else if u < 0.7 {
            Region::Parietal
        } else if u < 0.82 {
            Region::Occipital
        } else {
            Region::Deep
        }
    };
    let cortical = rng.random_bool(if t.codel {
        0.85
    } else if t.idh {
        0.2
    } else {
        0.1
    });
    let band = if cortical { (3.0, 10.0) } else { ((0.7 * rc).max(10.0), 200.0) };
    let avoid_at = avoid.map(|a| (a.center, 1.8 * (a.blobs[0].radius + rc) + 10.0));
    let center = place(rng, anat, region, band, avoid_at);
    if main {
        f.frontal = region == Region::Frontal;
        f.cortical = cortical;
    }
    let mut blobs = vec![Blob { center, radius: rc }];
    for _ in 0..rng.random_range(2..5) {
        let d = dir(rng);
        blobs.push(Blob {
            center: offset(center, d, rng.random_range(0.35..0.7) * rc),
            radius: (rng.random_range(0.45..0.75) * rc).max(2.0 * zoom),
        });
    }
    let min_r = blobs.iter().map(|b| b.radius).fold(f64::INFINITY, f64::min);
    // Towards the brain centre: enhancing nodules stay inside the brain.
    let inward = |rng: &mut ChaCha8Rng| {
        let mut d = dir(rng);
        let c = anat.center();
        if (0..3).map(|i| d[i] * (c[i] - center[i])).sum::<f64>() < 0.0 {
            d = d.map(|v| -v);
        }
        d
    };
    let ring = t.gbm && rng.random_bool(if t.idh { 0.75 } else { 0.92 });
    let enhancement = if ring {
        // Thick ring; IDH-mutant GBMs are less necrotic, MGMT-methylated ones slightly.
        let mut inner: f64 = if t.idh { rng.random_range(0.35..0.55) } else { rng.random_range(0.55..0.75) };
        if t.mgmt {
            inner *= 0.95;
        }
        // At least ~1.3 output voxels of ring around all but the smallest blobs.
        Enhancement::Ring { inner: inner.min(1.0 - 1.3 * zoom / min_r.max(0.7 * rc)).max(1.2 * zoom / rc) }
    } else {
        // Patchy enhancement of a grade-4 tumour without necrosis, or a faint nodule.
        let (off, r) = if t.gbm {
            (rng.random_range(0.2..0.45), rng.random_range(0.3..0.45))
        } else {
            (rng.random_range(0.35..0.6), rng.random_range(0.18..0.3))
        };
        let d = inward(rng);
        Enhancement::Nodule(Blob { center: offset(center, d, off * rc), radius: (r * rc).max(1.6 * zoom) })
    };
    if main {
        f.ring = ring;
    }
    let cavity = if ring && rng.random_bool(0.35) {
        match enhancement {
            Enhancement::Ring { inner } => inner * rng.random_range(0.4..0.7),
            Enhancement::Nodule(_) => 0.0,
        }
    } else {
        0.0
    };
    let mut edema: f64 = if t.gbm { rng.random_range(0.5..1.0) } else { rng.random_range(0.8..1.4) };
    if t.idh {
        edema *= 0.85;
    }
    if t.mgmt {
        edema *= 0.9; // weak signal
    }
    // At least ~2 output voxels of edema around the main blob, even in grey matter (where the
    // edema reaches 0.6 as far as in white matter).
    let edema = edema.max(2.2 * zoom / rc / 0.6);
    let (core_margin, edema_margin, wobble) = if t.codel {
        (rng.random_range(0.05..0.09), rng.random_range(0.1..0.18), 0.05)
    } else if t.idh {
        (0.03, 0.05, 0.035)
    } else {
        (rng.random_range(0.08..0.15), rng.random_range(0.18..0.3), 0.07)
    };
    let calcified = t.codel && rng.random_bool(0.6) || !t.codel && rng.random_bool(0.03);
    if main {
        f.calcified = calcified;
    }
    let calcs = if calcified {
        (0..rng.random_range(2..6))
            .map(|_| {
                let d = dir(rng);
                Blob { center: offset(center, d, rng.random_range(0.0..0.7) * rc), radius: rng.random_range(1.5..3.0) }
            })
            .collect()
    } else {
        Vec::new()
    };
    let waves = waves(rng, 5, 4.0, wobble);
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
    let shrink = 1.0 - waves.iter().map(|w| w.amp.abs()).sum::<f64>();
    Tumor {
        center,
        reach: max_extent * (1.0 + edema + edema_margin) / shrink + 2.0,
        waves,
        blobs,
        enhancement,
        edema,
        core_margin,
        edema_margin,
        cavity,
        calcs,
    }
}

#[allow(clippy::expect_used, clippy::unwrap_used, reason = "constant distribution parameters")]
fn jitter(rng: &mut ChaCha8Rng, v: f64, sd: f64) -> f64 {
    let n = Normal::new(1.0, sd).expect("constant distribution parameters");
    v * n.sample(rng).clamp(1.0 - 3.0 * sd, 1.0 + 3.0 * sd)
}

fn relax(rng: &mut ChaCha8Rng, t1: (f64, f64), t2: (f64, f64), pd: (f64, f64)) -> Relax {
    Relax { t1: rng.random_range(t1.0..t1.1), t2: rng.random_range(t2.0..t2.1), pd: rng.random_range(pd.0..pd.1) }
}

/// T1 (s) of CSF at 3 T (the template's 3.0 s is below in-vivo measurements).
const CSF_T1: f64 = 4.0;

/// Relaxation parameters. Normal tissue: GM and WM T1 from the anatomy (the template's T1 map),
/// CSF T1, T2 and proton density typical of 3 T; tumour compartments by class (see the README).
fn sample_tissues(rng: &mut ChaCha8Rng, t: &Truth, f: &mut Features, anat: &Anatomy) -> Tissues {
    const T2: [f64; 3] = [0.095, 0.075, 1.6];
    const PD: [f64; 3] = [0.82, 0.70, 1.0];
    let t1 = [anat.t1[GM], anat.t1[WM], CSF_T1];
    let normal = [GM, WM, CSF].map(|k| Relax {
        t1: jitter(rng, t1[k], 0.04),
        t2: jitter(rng, T2[k], 0.04),
        pd: jitter(rng, PD[k], 0.02),
    });
    let edema = relax(rng, (1.4, 1.7), (0.15, 0.21), (0.84, 0.9));
    // Lower-grade core: fluid-like (T2-FLAIR mismatch) mostly in IDH-mutant, non-codeleted.
    let mismatch = !t.gbm
        && rng.random_bool(if t.idh && !t.codel {
            0.8
        } else if t.idh {
            0.1
        } else {
            0.05
        });
    f.mismatch = mismatch;
    let core = if t.gbm {
        relax(rng, (1.7, 2.1), (0.14, 0.2), (0.86, 0.94))
    } else if mismatch {
        relax(rng, (2.7, 3.3), (0.4, 0.6), (0.92, 0.97))
    } else {
        relax(rng, (1.6, 1.9), (0.11, 0.15), (0.85, 0.9))
    };
    let cavity = relax(rng, (2.8, 3.4), (0.5, 0.9), (0.95, 1.0));
    let et = relax(rng, (1.3, 1.6), (0.09, 0.12), (0.84, 0.9));
    let gd_et = if t.gbm {
        rng.random_range(1.2..2.2)
    } else if t.idh {
        rng.random_range(0.3..0.6)
    } else {
        rng.random_range(0.5..1.0)
    };
    Tissues {
        normal,
        edema,
        core,
        cavity,
        et,
        gd_et,
        gd_edema: if t.gbm { 0.05 } else { 0.02 },
        gd_normal: [0.06, 0.03, 0.0],
    }
}

/// Sequence parameters: T1w spin echo (also used after contrast), T2w spin echo, FLAIR with the
/// inversion time set to null the CSF (up to a small error).
fn sample_sequences(rng: &mut ChaCha8Rng, tissues: &Tissues) -> [Sequence; 4] {
    let t1w = Sequence::SpinEcho { tr: rng.random_range(0.45..0.65), te: rng.random_range(0.008..0.015) };
    let t2w = Sequence::SpinEcho { tr: rng.random_range(3.5..5.5), te: rng.random_range(0.085..0.11) };
    let tr = rng.random_range(8.0..10.0);
    let t1csf = tissues.normal[CSF].t1;
    let ti = t1csf * (2.0 / (1.0 + (-tr / t1csf).exp())).ln() * rng.random_range(0.97..1.03);
    let flair = Sequence::InversionRecovery { tr, te: rng.random_range(0.1..0.14), ti };
    [t1w, t1w, t2w, flair]
}

/// Samples the whole case description from the config's seed.
#[allow(clippy::expect_used, clippy::unwrap_used, reason = "constant distribution parameters")]
pub(crate) fn sample(cfg: &PhantomConfig, anat: &'static Anatomy) -> CaseSpec {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let dims = cfg.dims;
    let truth = sample_truth(&mut rng);
    let reported = sample_reported(&mut rng, &truth);
    let mut features = Features::default();
    let warp = sample_warp(&mut rng, anat, dims);
    let main = sample_tumor(&mut rng, &truth, &mut features, anat, warp.zoom, 1.0, None);
    let mut tumors = vec![main];
    if rng.random_bool(if truth.gbm { 0.2 } else { 0.05 }) {
        let size = rng.random_range(0.45..0.7);
        let second = sample_tumor(&mut rng, &truth, &mut features, anat, warp.zoom, size, Some(&tumors[0]));
        tumors.push(second);
        features.multifocal = true;
    }
    let rho = tumors[0].blobs[0].radius * (1.2 + 0.5 * tumors[0].edema.min(1.5));
    let alpha: f64 = if truth.gbm { rng.random_range(0.12..0.25) } else { rng.random_range(0.04..0.1) };
    let mass = Mass {
        center: tumors[0].center,
        rho,
        // exp(-x^2) x peaks at 0.43: the displacement stays below MASS_MAX.
        alpha: alpha.min(MASS_MAX / (0.43 * rho)),
    };
    let tissues = sample_tissues(&mut rng, &truth, &mut features, anat);
    let seq = sample_sequences(&mut rng, &tissues);
    // Scanner units: white matter at a random level per modality.
    let targets = [
        rng.random_range(350.0..1100.0),
        rng.random_range(350.0..1100.0),
        rng.random_range(250.0..900.0),
        rng.random_range(250.0..900.0),
    ];
    let wm = tissues.normal[WM];
    let scale = [0, 1, 2, 3].map(|k| {
        let gd = if k == 1 { tissues.gd_normal[WM] } else { 0.0 };
        targets[k] / seq[k].signal(1.0 / wm.t1 + gd, wm.t2, wm.pd)
    });
    let coef = Normal::new(0.0, 0.07).expect("constant distribution parameters");
    let bias = [0; 4].map(|_| Bias { coef: [0; 9].map(|_| coef.sample(&mut rng)) });
    // Heterogeneity: oligodendrogliomas most, IDH-mutant astrocytomas least.
    let het = if truth.codel {
        0.3
    } else if truth.gbm {
        0.22
    } else if truth.idh {
        0.08
    } else {
        0.15
    } * rng.random_range(0.7..1.3);
    let tumor_texture = plane_waves(&mut rng, 5, (4.0, 10.0), het);
    let noise = rng.random_range(0.02..0.045);
    let d = dims.map(|n| (n / 2) as f64);
    CaseSpec {
        anatomy: anat,
        dims,
        origin: [-d[0], -d[1], -d[2]],
        truth,
        reported,
        features,
        warp,
        tumors,
        mass,
        tissues,
        seq,
        scale,
        bias,
        tumor_texture,
        sigma: targets.map(|t| t * noise),
        noise_seed: rng.random(),
        lesion: None,
    }
}

/// The same case (anatomy, warp, sequences, scanner, noise) without its glioma: a normal brain,
/// or, with `lesion`, a brain holding a non-glioma lesion where the main tumour was: short T1
/// and T2 (bright on T1 and T1ce, dark on T2 and FLAIR, like blood products or fat), the
/// opposite of a glioma's contrast. Class labels are unknown; the segmentation is empty.
pub(crate) fn without_glioma(mut s: CaseSpec, lesion: bool) -> CaseSpec {
    let main = &s.tumors[0];
    let radius = main.blobs.iter().map(|b| b.radius).fold(0.0, f64::max).clamp(6.0, 14.0);
    s.lesion = lesion.then_some(Lesion { center: main.center, radius, relax: Relax { t1: 0.35, t2: 0.045, pd: 0.75 } });
    s.tumors.clear();
    s.mass.alpha = 0.0;
    s.reported = CaseLabels::default();
    s
}
