//! Geometric building blocks shared by the anatomy and the case sampler: plane waves (smooth
//! random modulations) and axis-aligned ellipsoids.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, UnitSphere};

/// `amp * sin(k . u + phase)`, evaluated on a unit direction or on a position.
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

/// Axis-aligned ellipsoid.
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

pub(crate) fn dir(rng: &mut ChaCha8Rng) -> [f64; 3] {
    UnitSphere.sample(rng)
}

pub(crate) fn waves(rng: &mut ChaCha8Rng, n: usize, kmax: f64, amp: f64) -> Vec<Wave> {
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

/// Plane waves with wavelengths (mm) in `lambda`, amplitudes summing to at most `amp`.
pub(crate) fn plane_waves(rng: &mut ChaCha8Rng, n: usize, lambda: (f64, f64), amp: f64) -> Vec<Wave> {
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
