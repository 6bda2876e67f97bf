//! The evaluation gate: a candidate is promoted only when its segmentation is not worse than
//! the current model's on the fixed evaluation set (mean Dice of WT, TC, ET, within a margin)
//! and none of the target tasks is worse beyond its margin.

use gmmas_models::fit::EvalReport;
use gmmas_models::metrics::Region;
use serde::{Deserialize, Serialize};

/// Task names in head order.
pub const TASKS: [&str; 4] = ["grade_gbm", "idh_mutant", "codel_1p19q", "mgmt_methylated"];

/// The numbers the gate compares, for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateMetrics {
    pub model: String,
    pub cases: usize,
    /// Mean Dice of WT, TC, ET, ED.
    pub dice: [f64; 4],
    /// Mean of WT, TC, ET.
    pub dice_mean: f64,
    /// Per task: AUC, else accuracy (None without labels).
    pub tasks: Vec<(String, Option<f64>)>,
}

impl GateMetrics {
    pub fn of(r: &EvalReport) -> Self {
        let dice = [Region::WT, Region::TC, Region::ET, Region::ED].map(|x| r.dice(x));
        let tasks = TASKS
            .iter()
            .map(|t| {
                let m = r.tasks.iter().find(|s| s.task == *t).map(|s| &s.metrics);
                (t.to_string(), m.and_then(|m| m.auc.or(m.accuracy)))
            })
            .collect();
        GateMetrics {
            model: r.model.clone(),
            cases: r.cases_evaluated,
            dice,
            dice_mean: (dice[0] + dice[1] + dice[2]) / 3.0,
            tasks,
        }
    }

    fn task(&self, name: &str) -> Option<f64> {
        self.tasks.iter().find(|(t, _)| t == name).and_then(|(_, v)| *v)
    }
}

/// The gate's verdict with its reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub promote: bool,
    pub reason: String,
}

/// Applies the rule.
pub fn decide(
    candidate: &GateMetrics,
    current: &GateMetrics,
    dice_margin: f64,
    task_margin: f64,
    tasks: &[String],
) -> Verdict {
    let mut failures = Vec::new();
    if candidate.dice_mean.is_nan() {
        failures.push("the candidate has no segmentation score".to_string());
    } else if !current.dice_mean.is_nan() && candidate.dice_mean < current.dice_mean - dice_margin {
        failures.push(format!(
            "mean Dice {:.4} < current {:.4} - margin {dice_margin}",
            candidate.dice_mean, current.dice_mean
        ));
    }
    for t in tasks {
        match (candidate.task(t), current.task(t)) {
            (Some(c), Some(p)) if c < p - task_margin => {
                failures.push(format!("{t} {c:.4} < current {p:.4} - margin {task_margin}"))
            }
            (None, Some(_)) => failures.push(format!("{t} could not be scored for the candidate")),
            _ => {}
        }
    }
    if failures.is_empty() {
        Verdict {
            promote: true,
            reason: format!(
                "promoted: mean Dice {:.4} vs {:.4} (margin {dice_margin}); tasks within {task_margin}",
                candidate.dice_mean, current.dice_mean
            ),
        }
    } else {
        Verdict { promote: false, reason: format!("rejected: {}", failures.join("; ")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(dice_mean: f64, grade: Option<f64>) -> GateMetrics {
        GateMetrics {
            model: "m".into(),
            cases: 3,
            dice: [dice_mean; 4],
            dice_mean,
            tasks: vec![("grade_gbm".into(), grade), ("idh_mutant".into(), None)],
        }
    }

    #[test]
    fn promotes_only_when_not_worse_beyond_the_margins() {
        let tasks = vec!["grade_gbm".to_string(), "idh_mutant".to_string()];
        assert!(decide(&m(0.80, Some(0.9)), &m(0.80, Some(0.9)), 0.0, 0.02, &tasks).promote);
        assert!(decide(&m(0.79, Some(0.9)), &m(0.80, Some(0.9)), 0.02, 0.02, &tasks).promote);
        let v = decide(&m(0.70, Some(0.9)), &m(0.80, Some(0.9)), 0.0, 0.02, &tasks);
        assert!(!v.promote && v.reason.contains("mean Dice"), "{v:?}");
        let v = decide(&m(0.85, Some(0.5)), &m(0.80, Some(0.9)), 0.0, 0.02, &tasks);
        assert!(!v.promote && v.reason.contains("grade_gbm"), "{v:?}");
        let v = decide(&m(0.85, None), &m(0.80, Some(0.9)), 0.0, 0.02, &tasks);
        assert!(!v.promote && v.reason.contains("could not be scored"), "{v:?}");
        let v = decide(&m(f64::NAN, Some(0.9)), &m(0.80, Some(0.9)), 0.0, 0.02, &tasks);
        assert!(!v.promote);
    }
}
