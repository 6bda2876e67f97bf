//! The deterministic report: the same chart, written from the analysis and the knowledge-base
//! briefs by fixed rules, for when the LLM is down, slow, or its answer fails validation.

use crate::facts::{Facts, TaskFact, ml, pct};
use crate::kb::KnowledgeBase;
use crate::report::{Cell, Chart, ChartRow, DISCLAIMER, ReportBody};

/// Below this probability of its leaning class a task is called undecided.
const DECIDED: f64 = 0.6;

/// Builds the report; returns it with the ids of every passage it cites.
// Long on purpose: a linear template of the deterministic report's sections.
pub fn build(facts: &Facts, kb: &KnowledgeBase) -> (ReportBody, Vec<String>) {
    let mut used: Vec<String> = Vec::new();
    let mut cell = |parts: Vec<String>, ids: &[&str]| {
        let mut text = parts.join(" ");
        let mut cites = Vec::new();
        for id in ids {
            if let Some(p) = kb.get(id) {
                text.push(' ');
                text.push_str(p.brief.trim());
                cites.push(p.id.clone());
                if !used.contains(&p.id) {
                    used.push(p.id.clone());
                }
            }
        }
        Cell { text: text.trim().to_string(), cites }
    };
    let grade = facts.task("grade_gbm");
    let idh = facts.task("idh_mutant");
    let codel = facts.task("codel_1p19q");
    let mgmt = facts.task("mgmt_methylated");
    let gbm = grade.probability >= 0.5;

    let mut summary = format!(
        "Sub-region proportions: NCR {}, ED {}, ET {} of a whole tumour of {} mL. Model probabilities: {}; {}; {}; {}.",
        pct(facts.regions.ncr_fraction),
        pct(facts.regions.ed_fraction),
        pct(facts.regions.et_fraction),
        ml(facts.regions.wt_ml),
        versus(grade),
        versus(idh),
        versus(codel),
        versus(mgmt),
    );
    if !facts.missing_modalities.is_empty() {
        summary.push_str(&format!(" Missing sequences: {}.", facts.missing_modalities.join(", ")));
    }

    let mut comp_prog = vec![format!("Enhancing tumour makes up {} of the lesion.", pct(facts.regions.et_fraction))];
    let mut comp_prog_ids = vec!["imaging-enhancement"];
    if facts.regions.ncr_fraction >= 0.15 {
        comp_prog.push(format!("The necrotic core makes up {}.", pct(facts.regions.ncr_fraction)));
        comp_prog_ids.push("imaging-necrosis");
    }
    let comp_diag = vec![format!(
        "Peritumoral oedema makes up {} ({} mL) of a whole tumour of {} mL.",
        pct(facts.regions.ed_fraction),
        ml(facts.regions.ed_ml),
        ml(facts.regions.wt_ml)
    )];
    let mut comp_diag_ids = vec!["imaging-edema", "volume-prognosis"];
    if facts.missing_modalities.iter().any(|m| m == "t1ce") {
        comp_diag_ids.push("missing-sequences");
    }

    let hist_prog = vec![lean_sentence(grade)];
    let hist_prog_ids = if gbm { vec!["gbm-idh-wildtype"] } else { vec!["lgg-diffuse"] };
    let hist_diag_ids = vec!["who5-integrated", "who5-grading", "ai-probabilities"];

    let mol_prog = vec![lean_sentence(idh), lean_sentence(codel)];
    let mut mol_prog_ids = vec![if idh.probability >= 0.5 { "idh-mutation" } else { "idh-wildtype" }];
    mol_prog_ids.push(if codel.probability >= 0.5 { "codel-1p19q" } else { "astro-1p19q-intact" });
    let mol_diag = vec![format!("MGMT: {} by the model, which is not a reliable estimate from MRI.", versus(mgmt))];
    let mol_diag_ids = vec!["mgmt-mri-limits", "mgmt-methylation"];

    let treat_ids = vec!["tx-surgery", if gbm { "tx-gbm-stupp" } else { "tx-lgg" }, "tx-corticosteroids", "tx-mdt"];

    let chart = Chart {
        tumor_compartments: ChartRow {
            prognostic_assessment: cell(comp_prog, &comp_prog_ids),
            diagnostic_opinion: cell(comp_diag, &comp_diag_ids),
        },
        histological_subtype: ChartRow {
            prognostic_assessment: cell(hist_prog, &hist_prog_ids),
            diagnostic_opinion: cell(vec![], &hist_diag_ids),
        },
        molecular_information: ChartRow {
            prognostic_assessment: cell(mol_prog, &mol_prog_ids),
            diagnostic_opinion: cell(mol_diag, &mol_diag_ids),
        },
    };
    let treatment = cell(vec![], &treat_ids);
    (ReportBody { summary, chart, treatment, disclaimer: DISCLAIMER.to_string() }, used)
}

/// `GBM 87.0% vs LGG 13.0%` with the MC-Dropout spread when known.
fn versus(t: &TaskFact) -> String {
    let sd = t.std.map(|s| format!(" (std {})", pct(s))).unwrap_or_default();
    format!("{} {} vs {} {}{sd}", t.positive, pct(t.probability), t.negative, pct(1.0 - t.probability))
}

fn lean_sentence(t: &TaskFact) -> String {
    let (class, p) = t.leaning();
    if p < DECIDED {
        format!(
            "{}: the model cannot separate the classes ({} {}, {} {}).",
            t.label,
            t.positive,
            pct(t.probability),
            t.negative,
            pct(1.0 - t.probability)
        )
    } else {
        format!("{}: the model favours {class} ({}), pending tissue confirmation.", t.label, pct(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::tests::analysis;
    use crate::validate::validate;

    /// The fallback passes its own validation over a grid of analyses.
    #[test]
    fn fallback_always_validates() {
        let kb = KnowledgeBase::load("").unwrap();
        let ps = [0.02f32, 0.35, 0.5, 0.55, 0.97];
        let fracs = [[0.0, 1.0, 0.0], [0.3, 0.4, 0.3], [0.05, 0.9, 0.05], [0.6, 0.1, 0.3]];
        for &a in &ps {
            for &b in &ps {
                for f in fracs {
                    for missing in [&[][..], &["t1ce"][..]] {
                        let facts = Facts::from_analysis(&analysis([a, b, 1.0 - b, a], f, missing));
                        let (body, used) = build(&facts, &kb);
                        let findings = validate(&body, &facts, &kb, &used);
                        assert!(findings.passed(), "{a} {b} {f:?}: {findings:?}\n{body:#?}");
                        assert!(body.cells().iter().all(|(_, c)| !c.cites.is_empty()));
                    }
                }
            }
        }
    }
}
