//! Evaluation of a model on cases of a dataset (full volumes, as inference runs): Dice and
//! HD95 per region, AUC / accuracy / F1 / ECE per task, and its Markdown report.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::FitError;
use crate::ModelError;
use crate::analyzer::Analyzer;
use crate::config::{TASK_NAMES, TASKS};
use crate::data::Dataset;
use crate::infer::InferOptions;
use crate::metrics::{Region, Summary, TaskMetrics, region_scores};

/// Validation (or evaluation) options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalOptions {
    /// Inference options of [`Analyzer::analyze`].
    pub infer: InferOptions,
    /// Compute HD95 (costs a few distance transforms per case).
    pub hd95: bool,
    /// Modalities (t1, t1ce, t2, flair) removed before inference: channel zeroed, `present`
    /// cleared (see [`crate::missing`]). A case left with no modality is skipped.
    pub drop: [bool; crate::config::MODALITIES],
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { infer: InferOptions::default(), hd95: true, drop: [false; crate::config::MODALITIES] }
    }
}

/// Results of one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseEval {
    /// Case name.
    pub name: String,
    /// Whether a segmentation was available.
    pub has_seg: bool,
    /// Dice per region (WT, TC, ET, ED).
    pub dice: [f64; 4],
    /// HD95 (mm) per region (when computed and defined).
    pub hd95: [Option<f64>; 4],
    /// Predicted P(positive) per task.
    pub probabilities: [f32; TASKS],
    /// Reference labels per task.
    pub labels: [Option<bool>; TASKS],
    /// Inference seconds.
    pub seconds: f64,
}

/// Summary of one region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionSummary {
    /// `WT`, `TC`, `ET` or `ED`.
    pub region: String,
    /// Dice mean ± std.
    pub dice: Summary,
    /// HD95 mean ± std (mm) over the cases where it is defined.
    pub hd95: Summary,
}

/// Metrics of one task over the cases with that label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    /// Task name.
    pub task: String,
    /// The metrics.
    pub metrics: TaskMetrics,
}

/// A full evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Model version (`name@hash`).
    pub model: String,
    /// Cases evaluated.
    pub cases_evaluated: usize,
    /// Per region summaries (cases with a segmentation).
    pub regions: Vec<RegionSummary>,
    /// Per task summaries.
    pub tasks: Vec<TaskSummary>,
    /// Per case results.
    pub cases: Vec<CaseEval>,
    /// Total seconds.
    pub seconds: f64,
}

impl EvalReport {
    /// Mean Dice of `region`.
    pub fn dice(&self, region: Region) -> f64 {
        self.regions.iter().find(|r| r.region == region.as_str()).map_or(0.0, |r| r.dice.mean)
    }

    /// A Markdown report: region table, task table, per-case table.
    pub fn markdown(&self, title: &str) -> String {
        let opt = |v: Option<f64>| v.map_or("–".to_string(), |x| format!("{x:.3}"));
        let mut s = format!(
            "# {title}\n\nModel `{}`, {} case(s), {:.1} s.\n\n## Segmentation\n\n\
             | region | Dice (mean ± std) | HD95 mm (mean ± std) | n | HD95 undefined |\n\
             |---|---|---|---|---|\n",
            self.model, self.cases_evaluated, self.seconds
        );
        for r in &self.regions {
            s.push_str(&format!(
                "| {} | {:.3} ± {:.3} | {:.2} ± {:.2} | {} | {} |\n",
                r.region, r.dice.mean, r.dice.std, r.hd95.mean, r.hd95.std, r.dice.n, r.hd95.undefined
            ));
        }
        s.push_str(
            "\nDice of a region empty in both prediction and reference counts as 1; HD95 is \
             left out (\"undefined\") when exactly one of them is empty.\n\n## Classification\n\n\
             | task | n | positives | AUC | accuracy | F1 | ECE |\n|---|---|---|---|---|---|---|\n",
        );
        for t in &self.tasks {
            let m = &t.metrics;
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                t.task,
                m.n,
                m.positives,
                opt(m.auc),
                opt(m.accuracy),
                opt(m.f1),
                opt(m.calibration.as_ref().map(|c| c.ece))
            ));
        }
        s.push_str(
            "\nOnly cases with a known label count for a task; AUC needs both classes. ECE is the \
             top-label ECE over 10 equal-width confidence bins.\n\n## Reliability (P(positive) bins)\n\n\
             | task | bin | n | mean P | observed positive rate |\n|---|---|---|---|---|\n",
        );
        for t in &self.tasks {
            for b in t.metrics.calibration.iter().flat_map(|c| &c.curve) {
                s.push_str(&format!(
                    "| {} | [{:.1}, {:.1}) | {} | {:.3} | {:.3} |\n",
                    t.task, b.lo, b.hi, b.count, b.mean_predicted, b.observed
                ));
            }
        }
        s.push_str(
            "\n## Cases\n\n| case | Dice WT | TC | ET | ED | HD95 WT | TC | ET | P(GBM) | P(IDH) | P(1p/19q) | P(MGMT) |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for c in &self.cases {
            let d =
                if c.has_seg { c.dice.map(|v| format!("{v:.3}")) } else { std::array::from_fn(|_| "–".to_string()) };
            let h = c.hd95.map(|v| v.map_or("–".into(), |x| format!("{x:.1}")));
            let p = c.probabilities.map(|v| format!("{v:.2}"));
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                c.name, d[0], d[1], d[2], d[3], h[0], h[1], h[2], p[0], p[1], p[2], p[3]
            ));
        }
        s
    }
}

/// Runs `model` on the cases `indices` of `data` (full volumes, as the product does) and
/// scores them. `progress` is called after each case.
pub fn evaluate(
    model: &Analyzer,
    data: &Dataset,
    indices: &[usize],
    opts: &EvalOptions,
    mut progress: impl FnMut(&CaseEval),
) -> Result<EvalReport, FitError> {
    let t0 = Instant::now();
    let mut cases = Vec::with_capacity(indices.len());
    for &i in indices {
        let c = &data.cases[i];
        // Cases left without any modality by `opts.drop` are skipped (not in `cases`).
        let Some((image, present)) = crate::missing::apply_drop(&c.image, c.voxels(), c.present, &opts.drop) else {
            continue;
        };
        let t = Instant::now();
        let p = model
            .analyze(&image, c.dims, present, &opts.infer)
            .map_err(|e| FitError::Model(ModelError::Input(format!("case {}: {e}", c.name))))?;
        let seconds = t.elapsed().as_secs_f64();
        let (dice, hd95) = if c.has_seg {
            let truth = c.brats_labels();
            if opts.hd95 {
                let s = region_scores(&p.labels, &truth, c.dims, c.spacing);
                (s.dice, s.hd95)
            } else {
                (Region::ALL.map(|r| crate::metrics::dice(&p.labels, &truth, r)), [None; 4])
            }
        } else {
            ([0.0; 4], [None; 4])
        };
        let ce = CaseEval {
            name: c.name.clone(),
            has_seg: c.has_seg,
            dice,
            hd95,
            probabilities: p.probabilities.to_array(),
            labels: c.tasks,
            seconds,
        };
        progress(&ce);
        cases.push(ce);
    }
    let seg: Vec<&CaseEval> = cases.iter().filter(|c| c.has_seg).collect();
    let regions = Region::ALL
        .iter()
        .enumerate()
        .map(|(k, r)| RegionSummary {
            region: r.as_str().into(),
            dice: Summary::of(seg.iter().map(|c| Some(c.dice[k]))),
            hd95: if opts.hd95 { Summary::of(seg.iter().map(|c| c.hd95[k])) } else { Summary::of(std::iter::empty()) },
        })
        .collect();
    let tasks = (0..TASKS)
        .map(|t| {
            let pairs: Vec<(f64, bool)> =
                cases.iter().filter_map(|c| c.labels[t].map(|y| (f64::from(c.probabilities[t]), y))).collect();
            TaskSummary { task: TASK_NAMES[t].into(), metrics: TaskMetrics::of(&pairs) }
        })
        .collect();
    Ok(EvalReport {
        model: model.version().to_string(),
        cases_evaluated: cases.len(),
        regions,
        tasks,
        cases,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
