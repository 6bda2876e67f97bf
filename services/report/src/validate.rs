//! Checks a report before it is stored: every number equals the analysis (within the rounding it
//! is written with) or stands in a cited passage, every cell cites existing retrieved passages,
//! the disclaimer is there, and nothing claims a certainty or a class the probabilities don't give.

use std::collections::HashSet;

use crate::facts::Facts;
use crate::kb::{KnowledgeBase, Row};
use crate::report::{DISCLAIMER, MAX_TEXT_CHARS, ReportBody};

/// Words and phrases that claim a certainty an MRI-based probability never gives.
const CERTAINTY: [&str; 18] = [
    "definitely",
    "definitive diagnosis",
    "certainly",
    "with certainty",
    "is certain",
    "undoubtedly",
    "without doubt",
    "no doubt",
    "unequivocal",
    "conclusively",
    "is confirmed",
    "are confirmed",
    "confirms",
    "proven",
    "proves",
    "guaranteed",
    "pathognomonic",
    "100%",
];

/// Verbs that assert which class a case belongs to.
const CLAIMS: [&str; 10] = [
    "likely",
    "probable",
    "probably",
    "favours",
    "favors",
    "suggests",
    "suggestive of",
    "consistent with",
    "indicates",
    "is a ",
];

/// Class names per task, the negative ones first (they contain the positive words).
const CLASS_TERMS: [(&str, &[&str], &[&str]); 4] = [
    (
        "grade_gbm",
        &["lower-grade", "low-grade", "lower grade", "low grade", "lgg"],
        &["glioblastoma", "gbm", "high-grade", "high grade"],
    ),
    (
        "idh_mutant",
        &["idh-wildtype", "idh wildtype", "idh wild-type", "idh wild type"],
        &["idh-mutant", "idh mutant", "idh-mutated", "idh mutated"],
    ),
    (
        "codel_1p19q",
        &["non-codeleted", "non-co-deleted", "1p/19q-intact", "1p/19q intact"],
        &["codeleted", "co-deleted", "codeletion"],
    ),
    ("mgmt_methylated", &["unmethylated", "non-methylated"], &["methylated"]),
];

/// The knowledge-base row each cell of [`ReportBody::cells`] must be grounded in.
const CELL_ROWS: [Row; 7] = [
    Row::Compartments,
    Row::Compartments,
    Row::Histology,
    Row::Histology,
    Row::Molecular,
    Row::Molecular,
    Row::Treatment,
];

/// Fewest words a summary or cell may have.
const MIN_WORDS: usize = 4;

fn row_name(row: Row) -> &'static str {
    match row {
        Row::Compartments => "tumour compartments",
        Row::Histology => "histology",
        Row::Molecular => "molecular markers",
        Row::Treatment => "treatment",
        Row::General => "general notes",
    }
}

/// What a validation found; empty when the report passes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Findings(pub Vec<String>);

impl Findings {
    pub fn passed(&self) -> bool {
        self.0.is_empty()
    }
}

/// A number as written: its value, its decimals, and whether `%` follows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Written {
    pub value: f64,
    pub decimals: u32,
    pub percent: bool,
}

impl Written {
    /// True when `fact`, rounded as this number is written, gives this number.
    pub fn matches(&self, fact: f64) -> bool {
        let tol = 0.5 * 10f64.powi(-(self.decimals as i32)) + 1e-9;
        (self.value - fact.abs()).abs() <= tol
    }
}

/// The numbers of a text that state quantities. Digits inside names (`IDH1`, `T1ce`, `1p/19q`,
/// `CNS5`, model versions) are not quantities and are skipped.
pub fn numbers(text: &str) -> Vec<Written> {
    let chars: Vec<char> = text.chars().collect();
    let name_char = |c: char| c.is_alphanumeric() || matches!(c, '_' | '@' | '/');
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next_digit = chars.get(i + 1).is_some_and(|d| d.is_ascii_digit());
        let starts = c.is_ascii_digit() || (c == '.' && next_digit);
        let prev = i.checked_sub(1).map(|j| chars[j]);
        let before_prev = i.checked_sub(2).map(|j| chars[j]);
        let in_name = prev.is_some_and(name_char)
            || (prev.is_some_and(|p| matches!(p, '-' | '.')) && before_prev.is_some_and(char::is_alphanumeric));
        if !starts || in_name {
            i += 1;
            continue;
        }
        let start = i;
        let (mut decimals, mut seen_dot) = (0u32, false);
        while i < chars.len() {
            if chars[i].is_ascii_digit() {
                decimals += u32::from(seen_dot);
            } else if chars[i] == '.' && !seen_dot && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                seen_dot = true;
            } else {
                break;
            }
            i += 1;
        }
        let literal: String = chars[start..i].iter().collect();
        // A number glued to letters other than a unit (`1p`, `2nd`) is part of a name.
        let mut j = i;
        while j < chars.len() && chars[j].is_alphabetic() {
            j += 1;
        }
        let suffix: String = chars[i..j].iter().collect::<String>().to_ascii_lowercase();
        let unit = matches!(suffix.as_str(), "" | "ml" | "cc" | "cm" | "mm");
        if unit {
            let mut k = j;
            while k < chars.len() && chars[k] == ' ' {
                k += 1;
            }
            let percent = chars.get(k) == Some(&'%');
            if let Ok(value) = literal.parse::<f64>() {
                out.push(Written { value, decimals, percent });
            }
        }
        i = j;
    }
    out
}

/// Validates a report against the analysis it is about and the passages it was given.
// Long on purpose: one independent check after another, in the order of the report's sections, all adding to the same findings.
pub fn validate(body: &ReportBody, facts: &Facts, kb: &KnowledgeBase, retrieved: &[String]) -> Findings {
    let mut errs = Vec::new();
    let retrieved: HashSet<&str> = retrieved.iter().map(String::as_str).collect();
    // Citations: every cell cites at least one passage, each one exists and was retrieved.
    let mut cited = HashSet::new();
    for (place, cell) in body.cells() {
        if cell.cites.is_empty() {
            errs.push(format!("{place}: cites no passage"));
        }
        for id in &cell.cites {
            if kb.get(id).is_none() {
                errs.push(format!("{place}: cites {id:?}, which is not in the knowledge base"));
            } else if !retrieved.contains(id.as_str()) {
                errs.push(format!("{place}: cites {id:?}, which was not among the retrieved passages"));
            } else {
                cited.insert(id.as_str());
            }
        }
    }
    // Grounding by topic: each cell cites at least one passage about its own row.
    for ((place, cell), row) in body.cells().into_iter().zip(CELL_ROWS) {
        let on_topic = cell.cites.iter().filter_map(|id| kb.get(id)).any(|p| p.row == row);
        if !cell.cites.is_empty() && !on_topic {
            errs.push(format!("{place}: cites no passage about {}", row_name(row)));
        }
    }
    // Texts present, bounded, with substance, and not repeating themselves.
    for (place, text) in body.texts() {
        let words = text.split_whitespace().count();
        if text.trim().is_empty() {
            errs.push(format!("{place}: empty"));
        } else if text.chars().count() > MAX_TEXT_CHARS {
            errs.push(format!("{place}: longer than {MAX_TEXT_CHARS} characters"));
        } else if words < MIN_WORDS {
            errs.push(format!("{place}: {words} word(s); at least {MIN_WORDS} are expected"));
        }
        let mut seen: Vec<String> = Vec::new();
        let sentences = text.replace(". ", "\n");
        for sentence in sentences.split([';', '\n']).map(|s| normalize(s.trim_end_matches('.'))) {
            if sentence.split(' ').count() < 3 {
                continue;
            }
            if seen.iter().filter(|s| **s == sentence).count() == 1 {
                errs.push(format!("{place}: repeats itself ({sentence:?})"));
            }
            seen.push(sentence);
        }
    }
    // The summary states the analysis: the three proportions and the four probabilities.
    let summary = numbers(&body.summary);
    let states = |values: &[f64]| summary.iter().any(|n| values.iter().any(|v| n.matches(*v)));
    for (name, f) in
        [("NCR", facts.regions.ncr_fraction), ("ED", facts.regions.ed_fraction), ("ET", facts.regions.et_fraction)]
    {
        if !states(&[f, 100.0 * f]) {
            errs.push(format!("Summary: does not state the {name} proportion"));
        }
    }
    for t in &facts.tasks {
        let (p, q) = (t.probability, 1.0 - t.probability);
        if !states(&[p, 100.0 * p, q, 100.0 * q]) {
            errs.push(format!("Summary: does not state the {} probability", t.label));
        }
    }
    // Disclaimer.
    if normalize(&body.disclaimer) != normalize(DISCLAIMER) {
        errs.push("the closing disclaimer is missing or altered".into());
    }
    // Numbers: the analysis (within rounding) or a passage shown to the model.
    let fact_numbers = facts.numbers();
    let mut passage_numbers: Vec<Written> = Vec::new();
    for id in retrieved.iter().chain(cited.iter()) {
        if let Some(p) = kb.get(id) {
            passage_numbers.extend(numbers(&p.text));
            passage_numbers.extend(numbers(&p.brief));
        }
    }
    for (place, text) in body.texts() {
        for n in numbers(text) {
            let from_facts = fact_numbers.iter().any(|f| n.matches(*f));
            let from_passages = passage_numbers.iter().any(|p| (p.value - n.value).abs() < 1e-9);
            if !from_facts && !from_passages {
                let unit = if n.percent { "%" } else { "" };
                errs.push(format!(
                    "{place}: the number {}{unit} is neither in the analysis nor in a cited passage",
                    fmt_num(n)
                ));
            }
        }
    }
    // Certainty and contradicted classes.
    for (place, text) in body.texts() {
        let lower = text.to_lowercase();
        for w in CERTAINTY {
            if contains_phrase(&lower, w) {
                errs.push(format!("{place}: claims certainty ({w:?}) that the probabilities do not give"));
            }
        }
        for sentence in lower.split(['.', ';', '\n']) {
            for claim in CLAIMS {
                let Some(at) = sentence.find(claim) else { continue };
                let after: String = sentence[at + claim.len()..].chars().take(60).collect();
                if let Some((task, positive, term)) = first_class(&after) {
                    let p = facts.task(task).probability;
                    let lean_positive = p >= 0.5;
                    if positive != lean_positive {
                        errs.push(format!(
                            "{place}: calls the case {term:?}, but the model gives that class {:.1}%",
                            100.0 * if positive { p } else { 1.0 - p }
                        ));
                    }
                }
            }
        }
    }
    errs.dedup();
    Findings(errs)
}

/// The first class name in a text: (task, is the positive class, the term).
fn first_class(text: &str) -> Option<(&'static str, bool, &'static str)> {
    let mut best: Option<(usize, &'static str, bool, &'static str)> = None;
    for (task, negative, positive) in CLASS_TERMS {
        for (terms, pos) in [(negative, false), (positive, true)] {
            for term in terms.iter() {
                if let Some(at) = text.find(term) {
                    // A positive word inside a negative one ("methylated" in "unmethylated").
                    let inside_negative =
                        pos && negative.iter().any(|n| text.find(n).is_some_and(|s| s <= at && at < s + n.len()));
                    if inside_negative {
                        continue;
                    }
                    if best.is_none_or(|b| at < b.0) {
                        best = Some((at, task, pos, term));
                    }
                }
            }
        }
    }
    best.map(|(_, t, p, term)| (t, p, term))
}

fn contains_phrase(text: &str, phrase: &str) -> bool {
    let mut from = 0;
    while let Some(at) = text[from..].find(phrase) {
        let s = from + at;
        let e = s + phrase.len();
        let before = text[..s].chars().next_back();
        let after = text[e..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
        if !word(before) && (!word(after) || phrase.ends_with(' ')) {
            // Negated or hedged uses ("not confirmed", "cannot be confirmed") are fine.
            let head: String = text[..s].chars().rev().take(14).collect::<String>().chars().rev().collect();
            if !(head.contains("not ") || head.contains("no ") || head.contains("cannot")) {
                return true;
            }
        }
        from = e;
    }
    false
}

fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

fn fmt_num(n: Written) -> String {
    format!("{:.*}", n.decimals as usize, n.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::tests::analysis;
    use crate::report::{Cell, Chart, ChartRow};

    fn kb() -> KnowledgeBase {
        KnowledgeBase::load("").unwrap()
    }

    fn cell(text: &str, cite: &str) -> Cell {
        Cell { text: text.into(), cites: vec![cite.into()] }
    }

    fn good() -> (ReportBody, Facts, Vec<String>) {
        let facts = Facts::from_analysis(&analysis([0.87, 0.2, 0.1, 0.55], [0.2, 0.5, 0.3], &[]));
        let row = |a: &str, b: &str, cite: &str| ChartRow {
            prognostic_assessment: cell(a, cite),
            diagnostic_opinion: cell(b, cite),
        };
        let body = ReportBody {
            summary: "NCR 20.0%, ED 50%, ET 30.0% of 84.4 mL; GBM 87.0% (std 3.0%), IDH-wildtype 0.80, \
                      1p/19q-intact 90%, MGMT-methylated 55%."
                .into(),
            chart: Chart {
                tumor_compartments: row(
                    "An enhancing share of 30% suggests an aggressive tumour.",
                    "Typical of grade 4 glioblastoma patterns.",
                    "imaging-enhancement",
                ),
                histological_subtype: row(
                    "Likely glioblastoma on imaging grounds.",
                    "Tissue decides the integrated diagnosis.",
                    "who5-integrated",
                ),
                molecular_information: row(
                    "Probably IDH-wildtype; MGMT unclear from MRI.",
                    "Not confirmed without tissue testing.",
                    "idh-wildtype",
                ),
            },
            treatment: cell("Maximal safe resection, then radiotherapy with temozolomide.", "tx-surgery"),
            disclaimer: DISCLAIMER.into(),
        };
        let retrieved = ["imaging-enhancement", "who5-integrated", "who5-grading", "idh-wildtype", "tx-surgery"];
        (body, facts, retrieved.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn a_grounded_report_passes() {
        let (body, facts, retrieved) = good();
        let f = validate(&body, &facts, &kb(), &retrieved);
        assert!(f.passed(), "{f:?}");
    }

    #[test]
    fn a_wrong_number_is_named() {
        let (mut body, facts, retrieved) = good();
        body.summary.push_str(" The whole tumour measures 4321.9 mL.");
        body.chart.tumor_compartments.prognostic_assessment.text = "GBM 91% likely.".into();
        let f = validate(&body, &facts, &kb(), &retrieved);
        assert!(f.0.iter().any(|e| e.contains("4321.9")), "{f:?}");
        assert!(f.0.iter().any(|e| e.contains("91%")), "{f:?}");
    }

    #[test]
    fn rounding_is_accepted_and_names_are_not_numbers() {
        let n =
            numbers("P 0.87 and 87% and 87.0 % IDH1 R132H T1ce 1p/19q CNS5 gmmas-small@3fdacc2cbe8d 12.5mL grade 4.");
        let vals: Vec<(f64, bool)> = n.iter().map(|w| (w.value, w.percent)).collect();
        assert_eq!(vals, vec![(0.87, false), (87.0, true), (87.0, true), (12.5, false), (4.0, false)], "{n:?}");
        assert!(Written { value: 0.9, decimals: 1, percent: false }.matches(0.87));
        assert!(!Written { value: 0.88, decimals: 2, percent: false }.matches(0.87 - 0.006));
    }

    #[test]
    fn citations_and_disclaimer_are_checked() {
        let (mut body, facts, retrieved) = good();
        body.treatment.cites = vec!["made-up".into()];
        body.chart.histological_subtype.diagnostic_opinion.cites = vec![];
        body.chart.molecular_information.prognostic_assessment.cites = vec!["tx-lgg".into()];
        body.disclaimer = "Ask your doctor.".into();
        let f = validate(&body, &facts, &kb(), &retrieved);
        let text = f.0.join("\n");
        assert!(text.contains("not in the knowledge base"), "{text}");
        assert!(text.contains("cites no passage"), "{text}");
        assert!(text.contains("not among the retrieved"), "{text}");
        assert!(text.contains("disclaimer"), "{text}");
    }

    #[test]
    fn degenerate_answers_are_rejected() {
        let (mut body, facts, retrieved) = good();
        body.summary = "The report is in JSON format. The report is in JSON format. NCR 20.0%.".into();
        body.chart.molecular_information.diagnostic_opinion = cell("IDH-mutant", "who5-integrated");
        let f = validate(&body, &facts, &kb(), &retrieved);
        let text = f.0.join("\n");
        assert!(text.contains("repeats itself"), "{text}");
        assert!(text.contains("does not state the ED proportion"), "{text}");
        assert!(text.contains("does not state the MGMT probability"), "{text}");
        assert!(text.contains("1 word(s)"), "{text}");
        assert!(text.contains("cites no passage about molecular markers"), "{text}");
    }

    #[test]
    fn certainty_and_contradicted_classes_are_rejected() {
        let (mut body, facts, retrieved) = good();
        body.chart.histological_subtype.prognostic_assessment.text = "This is definitely a glioblastoma.".into();
        body.chart.molecular_information.diagnostic_opinion.text = "Most likely an IDH-mutant tumour.".into();
        let f = validate(&body, &facts, &kb(), &retrieved);
        let text = f.0.join("\n");
        assert!(text.contains("definitely"), "{text}");
        assert!(text.contains("\"idh-mutant\""), "{text}");
        // Hedged wording and the right class pass.
        body.chart.histological_subtype.prognostic_assessment.text =
            "Not confirmed; likely glioblastoma on imaging.".into();
        body.chart.molecular_information.diagnostic_opinion.text = "Likely unmethylated MGMT is not claimed.".into();
        let f = validate(&body, &facts, &kb(), &retrieved);
        assert!(f.0.iter().any(|e| e.contains("unmethylated")), "MGMT p=0.55 leans methylated: {f:?}");
    }
}
