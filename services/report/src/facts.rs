//! The facts of one analysis that a report may state: region volumes and proportions, class
//! probabilities with their MC-Dropout spread, missing sequences, the model; and how to print them.

use gmmas_contracts::{RegionVolumes, ScanAnalyzed};
use serde::{Deserialize, Serialize};

/// One of the four classification tasks, with the names of its two classes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskFact {
    /// `grade_gbm`, `idh_mutant`, `codel_1p19q`, `mgmt_methylated`.
    pub task: String,
    pub label: String,
    /// Class named when the probability is at least 0.5, and the other one.
    pub positive: String,
    pub negative: String,
    pub probability: f64,
    /// Standard deviation over the MC-Dropout passes, when there were several.
    pub std: Option<f64>,
}

impl TaskFact {
    /// The class the probability leans to and the probability of that class.
    pub fn leaning(&self) -> (&str, f64) {
        if self.probability >= 0.5 {
            (&self.positive, self.probability)
        } else {
            (&self.negative, 1.0 - self.probability)
        }
    }
}

/// What a report is about, taken from `scan.analyzed`; nothing that identifies a patient.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Facts {
    pub model_version: String,
    /// Sub-region volumes and fractions, as flat fields (`ncr_ml`, ..., `et_fraction`).
    #[serde(flatten)]
    pub regions: RegionVolumes,
    pub tasks: Vec<TaskFact>,
    pub missing_modalities: Vec<String>,
    pub mc_passes: u32,
}

impl Facts {
    pub fn from_analysis(a: &ScanAnalyzed) -> Facts {
        let p = a.probabilities;
        let s = a.probabilities_std.filter(|_| a.mc_passes > 1);
        let task = |task: &str, label: &str, pos: &str, neg: &str, v: f32, sd: Option<f32>| TaskFact {
            task: task.into(),
            label: label.into(),
            positive: pos.into(),
            negative: neg.into(),
            probability: f64::from(v),
            std: sd.map(f64::from),
        };
        Facts {
            model_version: a.model_version.clone(),
            regions: a.regions,
            tasks: vec![
                task("grade_gbm", "Grade", "GBM", "LGG", p.grade_gbm, s.map(|s| s.grade_gbm)),
                task("idh_mutant", "IDH", "IDH-mutant", "IDH-wildtype", p.idh_mutant, s.map(|s| s.idh_mutant)),
                task(
                    "codel_1p19q",
                    "1p/19q",
                    "1p/19q-codeleted",
                    "1p/19q-intact",
                    p.codel_1p19q,
                    s.map(|s| s.codel_1p19q),
                ),
                task(
                    "mgmt_methylated",
                    "MGMT",
                    "MGMT-methylated",
                    "MGMT-unmethylated",
                    p.mgmt_methylated,
                    s.map(|s| s.mgmt_methylated),
                ),
            ],
            missing_modalities: a.missing_modalities.clone(),
            mc_passes: a.mc_passes,
        }
    }

    #[allow(clippy::expect_used, clippy::unwrap_used, reason = "the four tasks are always present in a result")]
    pub fn task(&self, name: &str) -> &TaskFact {
        self.tasks.iter().find(|t| t.task == name).expect("the four tasks are always present")
    }

    /// Every number a report may state about the analysis, in the units it may use: volumes in
    /// mL, proportions and probabilities both as fractions and as percent, spreads, passes.
    pub fn numbers(&self) -> Vec<f64> {
        let mut v = vec![
            self.regions.ncr_ml,
            self.regions.ed_ml,
            self.regions.et_ml,
            self.regions.wt_ml,
            self.regions.tc_ml,
            f64::from(self.mc_passes),
        ];
        for f in [self.regions.ncr_fraction, self.regions.ed_fraction, self.regions.et_fraction] {
            v.extend([f, 100.0 * f]);
        }
        for t in &self.tasks {
            let q = 1.0 - t.probability;
            v.extend([t.probability, 100.0 * t.probability, q, 100.0 * q]);
            if let Some(sd) = t.std {
                v.extend([sd, 100.0 * sd]);
            }
        }
        v
    }

    /// The facts block of the prompt: one line per fact, numbers printed as the report should.
    pub fn prompt_block(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "Tumour compartments: necrotic core (NCR) {} of the tumour ({} mL), edema (ED) {} ({} mL), enhancing tumour (ET) {} ({} mL); whole tumour {} mL.\n",
            pct(self.regions.ncr_fraction),
            ml(self.regions.ncr_ml),
            pct(self.regions.ed_fraction),
            ml(self.regions.ed_ml),
            pct(self.regions.et_fraction),
            ml(self.regions.et_ml),
            ml(self.regions.wt_ml)
        ));
        for t in &self.tasks {
            s.push_str(&format!("{}\n", task_line(t)));
        }
        if self.missing_modalities.is_empty() {
            s.push_str("Sequences: all four (T1, T1ce, T2, FLAIR) present.\n");
        } else {
            s.push_str(&format!("Missing sequences: {}.\n", self.missing_modalities.join(", ")));
        }
        s.push_str("Note: MRI-based MGMT prediction is close to chance; tissue testing decides.\n");
        s
    }
}

/// `0.123` as `12.3%`.
pub fn pct(f: f64) -> String {
    format!("{:.1}%", 100.0 * f)
}

/// Volumes with one decimal.
pub fn ml(v: f64) -> String {
    format!("{v:.1}")
}

/// `GBM 87.0% vs LGG 13.0% (MC-Dropout std 2.1%)`.
pub fn task_line(t: &TaskFact) -> String {
    let sd = t.std.map(|s| format!(" (uncertainty: std {})", pct(s))).unwrap_or_default();
    format!("{}: {} {} vs {} {}{sd}.", t.label, t.positive, pct(t.probability), t.negative, pct(1.0 - t.probability))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::Utc;
    use gmmas_contracts::{ObjectRef, Probabilities, RegionVolumes, TenantId};
    use uuid::Uuid;

    /// An analysis with the given probabilities and region fractions.
    pub fn analysis(p: [f32; 4], fractions: [f64; 3], missing: &[&str]) -> ScanAnalyzed {
        let wt = 84.4;
        ScanAnalyzed {
            schema_version: 1,
            tenant: TenantId::new("h").unwrap(),
            case_id: Uuid::new_v4(),
            analysis_id: Uuid::new_v4(),
            model_version: "gmmas-small@3fdacc2cbe8d".into(),
            segmentation: ObjectRef { bucket: "b".into(), key: "k".into(), sha256: "s".into(), size: 1 },
            regions: RegionVolumes {
                ncr_ml: wt * fractions[0],
                ed_ml: wt * fractions[1],
                et_ml: wt * fractions[2],
                wt_ml: wt,
                tc_ml: wt * (fractions[0] + fractions[2]),
                ncr_fraction: fractions[0],
                ed_fraction: fractions[1],
                et_fraction: fractions[2],
            },
            probabilities: Probabilities {
                grade_gbm: p[0],
                idh_mutant: p[1],
                codel_1p19q: p[2],
                mgmt_methylated: p[3],
            },
            missing_modalities: missing.iter().map(|s| s.to_string()).collect(),
            analyzed_at: Utc::now(),
            mc_passes: 8,
            probabilities_std: Some(Probabilities {
                grade_gbm: 0.03,
                idh_mutant: 0.05,
                codel_1p19q: 0.02,
                mgmt_methylated: 0.08,
            }),
            uncertainty: None,
            mean_uncertainty_wt: None,
            device: "Cpu".into(),
            inference_ms: 1,
            input_sha256: vec![],
            brain_mask: None,
            skull_strip: String::new(),
        }
    }

    #[test]
    fn facts_carry_both_units_and_the_leaning_class() {
        let f = Facts::from_analysis(&analysis([0.87, 0.2, 0.1, 0.55], [0.2, 0.5, 0.3], &["t1ce"]));
        let n = f.numbers();
        assert!(n.iter().any(|v| (v - 87.0).abs() < 1e-4));
        assert!(n.iter().any(|v| (v - 80.0).abs() < 1e-4), "IDH-wildtype 80% is the leaning class");
        assert_eq!(f.task("idh_mutant").leaning().0, "IDH-wildtype");
        let block = f.prompt_block();
        assert!(block.contains("GBM 87.0% vs LGG 13.0%"), "{block}");
        assert!(block.contains("Missing sequences: t1ce"));
        assert!(!block.contains("case"), "no identifiers in the prompt");
    }
}
