//! Temperature scaling (paper section III-F, model calibration): one temperature `T > 0` per
//! classification task, fitted on validation `(P(positive), label)` pairs by minimum NLL.
//!
//! The logit of a binary head is recovered from its probability, `z = ln(p / (1 - p))` with
//! `p` clamped to `[1e-6, 1 - 1e-6]`; the calibrated probability is `sigmoid(z / T)`. The
//! mean binary negative log-likelihood is convex in `1 / T`, hence unimodal in `ln T`, and is
//! minimised by golden-section search on `ln T` in `[-4, 4]`. `T > 1` softens over-confident
//! scores, `T < 1` sharpens under-confident ones; `T = 1` is the identity.

use serde::{Deserialize, Serialize};

use crate::config::{TASK_NAMES, TASKS};
use crate::metrics;

/// Probabilities are clamped to `[P_CLAMP, 1 - P_CLAMP]` before taking the logit.
pub const P_CLAMP: f64 = 1e-6;
/// Search interval of `ln T`.
pub const LN_T_RANGE: (f64, f64) = (-4.0, 4.0);

/// `ln(p / (1 - p))` of the clamped probability.
pub fn logit(p: f64) -> f64 {
    let p = if p.is_nan() { 0.5 } else { p.clamp(P_CLAMP, 1.0 - P_CLAMP) };
    (p / (1.0 - p)).ln()
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// `sigmoid(logit(p) / t)`: the probability `p` rescaled by temperature `t` (returns `p`
/// unchanged for `t = 1`).
pub fn apply_temperature(p: f64, t: f64) -> f64 {
    if t == 1.0 {
        return p;
    }
    sigmoid(logit(p) / t)
}

/// `-ln P(label)` of one logit under `sigmoid(z / t)`, computed stably.
fn nll_one(z: f64, y: bool, t: f64) -> f64 {
    let s = z / t;
    // -ln sigmoid(s) = softplus(-s); -ln(1 - sigmoid(s)) = softplus(s).
    let softplus = |x: f64| if x > 0.0 { x + (-x).exp().ln_1p() } else { x.exp().ln_1p() };
    if y { softplus(-s) } else { softplus(s) }
}

/// Mean binary negative log-likelihood of `(P(positive), label)` pairs after temperature
/// `t`; None without pairs.
pub fn nll(pairs: &[(f64, bool)], t: f64) -> Option<f64> {
    if pairs.is_empty() {
        return None;
    }
    Some(pairs.iter().map(|&(p, y)| nll_one(logit(p), y, t)).sum::<f64>() / pairs.len() as f64)
}

/// Top-label ECE (10 bins, [`metrics::calibration`]) after temperature `t`.
pub fn ece(pairs: &[(f64, bool)], t: f64) -> Option<f64> {
    let probs: Vec<f64> = pairs.iter().map(|&(p, _)| apply_temperature(p, t)).collect();
    let labels: Vec<bool> = pairs.iter().map(|p| p.1).collect();
    metrics::calibration(&probs, &labels, 10).map(|c| c.ece)
}

/// The temperature of one task and what it did on the fitting pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemperatureFit {
    /// Task name.
    pub task: String,
    /// Fitted temperature (1 when not fitted).
    pub temperature: f64,
    /// Whether a temperature was fitted (false: too few labelled cases or one class only).
    pub fitted: bool,
    /// Why the temperature was or was not fitted.
    pub note: String,
    /// Labelled cases used.
    pub n: usize,
    /// Positives among them.
    pub positives: usize,
    /// Mean NLL before (T = 1).
    pub nll_before: Option<f64>,
    /// Mean NLL after.
    pub nll_after: Option<f64>,
    /// ECE before (T = 1).
    pub ece_before: Option<f64>,
    /// ECE after.
    pub ece_after: Option<f64>,
}

/// Below this many labelled cases a fitted temperature comes with a warning: on 16 phantoms a
/// chance-level task (MGMT) was sharpened to T = 0.09 and its held-out ECE tripled.
pub const FEW_CASES: usize = 30;

/// Fits the temperature of one task from `(P(positive), label)` pairs. Fewer than 2 pairs or
/// a single class keep `T = 1`, with the reason in `note`.
pub fn fit_temperature(task: &str, pairs: &[(f64, bool)]) -> TemperatureFit {
    let n = pairs.len();
    let positives = pairs.iter().filter(|p| p.1).count();
    let (temperature, fitted, note) = if n < 2 {
        (1.0, false, format!("{n} labelled case(s): at least 2 needed, T kept at 1"))
    } else if positives == 0 || positives == n {
        (1.0, false, "only one class among the labelled cases: T kept at 1".to_string())
    } else {
        let logits: Vec<(f64, bool)> = pairs.iter().map(|&(p, y)| (logit(p), y)).collect();
        let f = |ln_t: f64| logits.iter().map(|&(z, y)| nll_one(z, y, ln_t.exp())).sum::<f64>();
        let ln_t = golden_section(f, LN_T_RANGE.0, LN_T_RANGE.1, 1e-6);
        if f(ln_t) < f(0.0) {
            let t = ln_t.exp();
            let edge = (ln_t - LN_T_RANGE.0).abs() < 1e-3 || (LN_T_RANGE.1 - ln_t).abs() < 1e-3;
            let mut note = if edge {
                format!("fitted on {n} case(s); T = {t:.4} is at the edge of the search range (e^-4, e^4)")
            } else {
                format!("fitted on {n} case(s)")
            };
            if n < FEW_CASES {
                note.push_str(&format!(
                    "; fewer than {FEW_CASES} cases: T is unreliable, check ECE on held-out cases before using it"
                ));
            }
            (t, true, note)
        } else {
            (1.0, true, format!("fitted on {n} case(s); T = 1 already minimises the NLL"))
        }
    };
    TemperatureFit {
        task: task.to_string(),
        temperature,
        fitted,
        note,
        n,
        positives,
        nll_before: nll(pairs, 1.0),
        nll_after: nll(pairs, temperature),
        ece_before: ece(pairs, 1.0),
        ece_after: ece(pairs, temperature),
    }
}

/// Fits every task; `pairs[t]` holds the labelled `(P(positive), label)` pairs of task `t`.
pub fn fit_temperatures(pairs: &[Vec<(f64, bool)>; TASKS]) -> [TemperatureFit; TASKS] {
    std::array::from_fn(|t| fit_temperature(TASK_NAMES[t], &pairs[t]))
}

/// Minimum of a unimodal `f` on `[a, b]` by golden-section search to interval width `tol`.
fn golden_section(f: impl Fn(f64) -> f64, mut a: f64, mut b: f64, tol: f64) -> f64 {
    let r = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = b - r * (b - a);
    let mut d = a + r * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    while (b - a).abs() > tol {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - r * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + r * (b - a);
            fd = f(d);
        }
    }
    (a + b) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `n` cases whose labels follow `sigmoid(z)` for true logits `z ~ N(0, 1.5^2)`, scored
    /// over-confidently as `sigmoid(3 z)`.
    fn overconfident(n: usize, seed: u64) -> Vec<(f64, bool)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                // Box-Muller.
                let (u1, u2): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random_range(0.0..1.0));
                let z = 1.5 * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                let y = rng.random_range(0.0..1.0) < sigmoid(z);
                (sigmoid(3.0 * z), y)
            })
            .collect()
    }

    #[test]
    fn recovers_the_temperature_of_overconfident_scores() {
        let pairs = overconfident(20_000, 7);
        let fit = fit_temperature("grade_gbm", &pairs);
        assert!(fit.fitted, "{fit:?}");
        assert!((fit.temperature - 3.0).abs() < 0.45, "T = {}", fit.temperature);
        assert!(fit.nll_after.unwrap() < fit.nll_before.unwrap(), "{fit:?}");
        assert!(fit.ece_after.unwrap() < fit.ece_before.unwrap(), "{fit:?}");
        // Under-confident scores (logits / 2) get T < 1.
        let soft: Vec<(f64, bool)> = pairs.iter().map(|&(p, y)| (sigmoid(logit(p) / 6.0), y)).collect();
        let t = fit_temperature("x", &soft).temperature;
        assert!((t - 0.5).abs() < 0.075, "T = {t}");
    }

    #[test]
    fn unit_temperature_is_the_identity() {
        for p in [0.0, 1e-9, 0.01, 0.3, 0.5, 0.77, 0.999, 1.0] {
            assert_eq!(apply_temperature(p, 1.0), p);
        }
        // T = 1 through the logit round trip (within the clamp) is the identity too.
        for p in [0.01, 0.3, 0.5, 0.77, 0.999] {
            assert!((sigmoid(logit(p)) - p).abs() < 1e-12);
        }
        // T > 1 moves towards 0.5, T < 1 away from it.
        assert!((apply_temperature(0.9, 2.0) - 0.75).abs() < 1e-12);
        assert!(apply_temperature(0.9, 0.5) > 0.9);
        assert!((apply_temperature(0.5, 3.0) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn degenerate_inputs_keep_unit_temperature() {
        let none = fit_temperature("t", &[]);
        assert_eq!((none.temperature, none.fitted, none.n), (1.0, false, 0));
        assert!(none.nll_before.is_none() && none.note.contains("at least 2"));
        let one = fit_temperature("t", &[(0.8, true)]);
        assert_eq!((one.temperature, one.fitted), (1.0, false));
        let single_class = fit_temperature("t", &[(0.8, true), (0.3, true), (0.6, true)]);
        assert_eq!((single_class.temperature, single_class.fitted), (1.0, false));
        assert!(single_class.note.contains("one class"), "{}", single_class.note);
        // All scores 0.5: the NLL does not depend on T, which stays 1.
        let flat = fit_temperature("t", &[(0.5, true), (0.5, false), (0.5, true)]);
        assert_eq!(flat.temperature, 1.0);
        // Separable scores drive T to the lower edge, finite and positive.
        let sep = fit_temperature("t", &[(0.6, true), (0.4, false), (0.7, true), (0.2, false)]);
        assert!(sep.temperature > 0.0 && sep.temperature < 0.05 && sep.note.contains("edge"), "{sep:?}");
        let all = fit_temperatures(&std::array::from_fn(|_| Vec::new()));
        assert_eq!(all.map(|f| f.task), TASK_NAMES.map(String::from));
    }

    #[test]
    fn a_fit_on_few_cases_carries_a_warning() {
        let pairs: Vec<(f64, bool)> = (0..12).map(|i| (0.3 + 0.04 * i as f64, i % 3 != 0)).collect();
        let few = fit_temperature("mgmt_methylated", &pairs);
        assert!(few.fitted && few.note.contains("unreliable"), "{few:?}");
        let many: Vec<(f64, bool)> = pairs.iter().cycle().take(60).copied().collect();
        assert!(!fit_temperature("mgmt_methylated", &many).note.contains("unreliable"));
    }
}
