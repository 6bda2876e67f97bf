//! Retrieval of knowledge-base passages for a report: one query per chart row built from the
//! analysis, ranked by embedding similarity (an embed API) or, without embeddings, by BM25.

use std::collections::HashMap;

use crate::facts::Facts;
use crate::kb::{KnowledgeBase, Passage, Row};

/// The queries of one report: (the row the passages are for, the query text).
pub fn queries(facts: &Facts) -> Vec<(Row, String)> {
    let grade = facts.task("grade_gbm");
    let idh = facts.task("idh_mutant");
    let codel = facts.task("codel_1p19q");
    let histology = if grade.probability >= 0.5 {
        "glioblastoma GBM high grade necrosis WHO grade 4 integrated diagnosis"
    } else {
        "lower-grade diffuse glioma LGG grade 2 grade 3 integrated diagnosis"
    };
    let molecular = format!(
        "{} {} MGMT promoter methylation MRI prediction chance tissue testing",
        if idh.probability >= 0.5 { "IDH-mutant IDH mutation favourable" } else { "IDH-wildtype aggressive" },
        if codel.probability >= 0.5 { "1p/19q codeletion oligodendroglioma" } else { "1p/19q intact astrocytoma" },
    );
    let mut compartments = String::from("tumour compartments volume");
    if facts.regions.et_fraction >= 0.15 {
        compartments.push_str(" contrast enhancement enhancing tumour aggressive");
    } else {
        compartments.push_str(" little enhancement non-enhancing T2-FLAIR mismatch");
    }
    if facts.regions.ncr_fraction >= 0.15 {
        compartments.push_str(" necrosis necrotic core ring");
    }
    if facts.regions.ed_fraction >= 0.4 {
        compartments.push_str(" edema FLAIR mass effect");
    }
    let treatment = if grade.probability >= 0.5 {
        "maximal safe resection radiotherapy temozolomide glioblastoma corticosteroids edema"
    } else {
        "maximal safe resection lower-grade radiotherapy chemotherapy surveillance corticosteroids"
    };
    let mut general = String::from("probability uncertainty model not a diagnosis multidisciplinary treatment team");
    if !facts.missing_modalities.is_empty() {
        general.push_str(" missing sequence incomplete reliability");
    }
    vec![
        (Row::Compartments, compartments),
        (Row::Histology, histology.to_string()),
        (Row::Molecular, molecular),
        (Row::Treatment, treatment.to_string()),
        (Row::General, general),
    ]
}

/// Lower-case word tokens (letters and digits; `1p/19q` and `IDH-wildtype` kept whole).
pub fn tokens(text: &str) -> Vec<String> {
    const STOP: [&str; 24] = [
        "the", "a", "an", "of", "and", "or", "in", "on", "to", "is", "are", "be", "by", "for", "with", "as", "at",
        "it", "its", "that", "this", "from", "than", "but",
    ];
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '/' || c == '-'))
        .map(|t| t.trim_matches(|c| c == '-' || c == '/'))
        .filter(|t| !t.is_empty() && !STOP.contains(t))
        .map(str::to_string)
        .collect()
}

/// Okapi BM25 over the passages' keywords and text.
#[derive(Debug, Clone)]
pub struct Bm25 {
    docs: Vec<HashMap<String, f64>>,
    lens: Vec<f64>,
    avg_len: f64,
    df: HashMap<String, f64>,
}

impl Bm25 {
    const K1: f64 = 1.2;
    const B: f64 = 0.75;

    pub fn new(passages: &[Passage]) -> Bm25 {
        let mut docs = Vec::new();
        let mut lens = Vec::new();
        let mut df: HashMap<String, f64> = HashMap::new();
        for p in passages {
            let toks = tokens(&format!("{} {}", p.keywords.join(" "), p.text));
            let mut tf: HashMap<String, f64> = HashMap::new();
            for t in &toks {
                *tf.entry(t.clone()).or_default() += 1.0;
            }
            for t in tf.keys() {
                *df.entry(t.clone()).or_default() += 1.0;
            }
            lens.push(toks.len() as f64);
            docs.push(tf);
        }
        let avg_len = lens.iter().sum::<f64>() / lens.len().max(1) as f64;
        Bm25 { docs, lens, avg_len, df }
    }

    /// Score of every passage for the query, in passage order.
    pub fn scores(&self, query: &str) -> Vec<f64> {
        let n = self.docs.len() as f64;
        let q = tokens(query);
        self.docs
            .iter()
            .zip(&self.lens)
            .map(|(tf, len)| {
                q.iter()
                    .map(|t| {
                        let f = tf.get(t).copied().unwrap_or(0.0);
                        if f == 0.0 {
                            return 0.0;
                        }
                        let df = self.df.get(t).copied().unwrap_or(0.0);
                        let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
                        idf * f * (Self::K1 + 1.0) / (f + Self::K1 * (1.0 - Self::B + Self::B * len / self.avg_len))
                    })
                    .sum()
            })
            .collect()
    }
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        dot += f64::from(*x) * f64::from(*y);
        na += f64::from(*x) * f64::from(*x);
        nb += f64::from(*y) * f64::from(*y);
    }
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na.sqrt() * nb.sqrt()) }
}

/// Picks `per_row` passages for each query: the best-scoring passages of the query's row first
/// (so every chart row has its grounding), ties broken by file order; ids deduplicated.
pub fn select(kb: &KnowledgeBase, queries: &[(Row, String)], scores: &[Vec<f64>], per_row: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ((row, _), s) in queries.iter().zip(scores) {
        let mut idx: Vec<usize> = (0..kb.passages.len()).filter(|&i| kb.passages[i].row == *row).collect();
        idx.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
        for i in idx.into_iter().take(per_row.max(1)) {
            let id = &kb.passages[i].id;
            if !out.contains(id) {
                out.push(id.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::tests::analysis;

    #[test]
    fn bm25_finds_the_passage_about_the_query() {
        let kb = KnowledgeBase::load("").unwrap();
        let bm = Bm25::new(&kb.passages);
        let s = bm.scores("MGMT methylation MRI prediction chance");
        let best = (0..s.len()).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap();
        assert_eq!(kb.passages[best].id, "mgmt-mri-limits");
        assert_eq!(tokens("IDH-wildtype, 1p/19q; the T1ce"), vec!["idh-wildtype", "1p/19q", "t1ce"]);
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn every_row_gets_passages_that_follow_the_analysis() {
        let kb = KnowledgeBase::load("").unwrap();
        let bm = Bm25::new(&kb.passages);
        let gbm = Facts::from_analysis(&analysis([0.9, 0.1, 0.1, 0.5], [0.3, 0.4, 0.3], &[]));
        let q = queries(&gbm);
        let scores: Vec<Vec<f64>> = q.iter().map(|(_, t)| bm.scores(t)).collect();
        let ids = select(&kb, &q, &scores, 2);
        assert_eq!(ids.len(), 10, "{ids:?}");
        assert!(ids.contains(&"tx-gbm-stupp".to_string()), "{ids:?}");
        let lgg = Facts::from_analysis(&analysis([0.1, 0.9, 0.8, 0.5], [0.05, 0.9, 0.05], &["t1ce"]));
        let q = queries(&lgg);
        let scores: Vec<Vec<f64>> = q.iter().map(|(_, t)| bm.scores(t)).collect();
        let ids = select(&kb, &q, &scores, 2);
        assert!(ids.contains(&"tx-lgg".to_string()) && ids.contains(&"missing-sequences".to_string()), "{ids:?}");
    }
}
