//! The report as a self-contained, printable HTML page in the Fig. 11 chart layout: the facts
//! table, the chart, treatment, disclaimer, the cited sources and how the report was made.

use crate::facts::{Facts, ml, pct};
use crate::kb::KnowledgeBase;
use crate::report::{CHART_COLUMNS, ReportBody};

/// How a stored report was made, shown at the foot of the page.
#[derive(Debug, Clone)]
pub struct Provenance<'a> {
    pub case_id: &'a str,
    pub version: i32,
    pub path: &'a str,
    pub fallback_reason: Option<&'a str>,
    pub llm_model: Option<&'a str>,
    pub llm_model_digest: Option<&'a str>,
    pub prompt_sha256: Option<&'a str>,
    pub kb_version: &'a str,
    pub retrieval: &'a str,
    pub created_at: &'a str,
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:Helvetica,Arial,sans-serif;max-width:60rem;margin:1.5rem auto;color:#111;line-height:1.4}\
h1{font-size:1.4rem;margin-bottom:.2rem}h2{font-size:1.1rem;margin-top:1.4rem}.ruo{color:#a00;font-weight:bold}\
table{border-collapse:collapse;width:100%}th,td{border:1px solid #888;padding:.4rem .5rem;vertical-align:top;text-align:left}\
th{background:#e8eef5}.chart th.row{width:16%}.cite{font-size:.75rem;color:#145}.muted{color:#555;font-size:.8rem}\
.disclaimer{border-left:4px solid #a00;padding:.4rem .8rem;background:#fbf3f3}\
@media print{body{margin:0;max-width:none}a{color:inherit;text-decoration:none}}@page{size:A4;margin:15mm}";

fn cites(ids: &[String]) -> String {
    ids.iter().map(|id| format!(" <a class=\"cite\" href=\"#{0}\">[{0}]</a>", esc(id))).collect()
}

/// The page.
// Long on purpose: a linear HTML template of the report page.
pub fn html(body: &ReportBody, facts: &Facts, kb: &KnowledgeBase, prov: &Provenance) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<title>GMMAS report</title><style>");
    h.push_str(STYLE);
    h.push_str("</style></head><body>");
    h.push_str(&format!(
        "<h1>GMMAS glioma MRI report</h1><p class=\"muted\">Case {} · report version {} · {}</p>",
        esc(prov.case_id),
        prov.version,
        esc(prov.created_at)
    ));
    h.push_str("<p class=\"ruo\">Research use only. Not a medical device. To be read by a clinician.</p>");

    h.push_str("<h2>Analysis</h2><table><tr><th>Region</th><th>Volume (mL)</th><th>Share of tumour</th></tr>");
    for (name, v, f) in [
        ("Necrotic / non-enhancing core (NCR)", facts.regions.ncr_ml, Some(facts.regions.ncr_fraction)),
        ("Edema (ED)", facts.regions.ed_ml, Some(facts.regions.ed_fraction)),
        ("Enhancing tumour (ET)", facts.regions.et_ml, Some(facts.regions.et_fraction)),
        ("Whole tumour (WT)", facts.regions.wt_ml, None),
        ("Tumour core (TC)", facts.regions.tc_ml, None),
    ] {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            ml(v),
            f.map(pct).unwrap_or_default()
        ));
    }
    h.push_str("</table><table style=\"margin-top:.6rem\"><tr><th>Task</th><th>Model probabilities</th><th>Uncertainty (MC-Dropout std)</th></tr>");
    for t in &facts.tasks {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{} {} · {} {}</td><td>{}</td></tr>",
            esc(&t.label),
            esc(&t.positive),
            pct(t.probability),
            esc(&t.negative),
            pct(1.0 - t.probability),
            t.std.map(pct).unwrap_or_else(|| "not computed".into())
        ));
    }
    h.push_str("</table>");
    h.push_str(&format!(
        "<p class=\"muted\">Model {} · MC-Dropout passes {} · sequences missing: {}. MGMT predicted from MRI is close to chance; tissue testing decides.</p>",
        esc(&facts.model_version),
        facts.mc_passes,
        if facts.missing_modalities.is_empty() { "none".to_string() } else { esc(&facts.missing_modalities.join(", ")) }
    ));

    h.push_str(&format!("<h2>Summary</h2><p>{}</p>", esc(&body.summary)));
    let [prognostic, diagnostic] = CHART_COLUMNS;
    h.push_str(&format!(
        "<h2>Assessment</h2><table class=\"chart\"><tr><th></th><th>{prognostic}</th><th>{diagnostic}</th></tr>"
    ));
    for (name, row) in body.chart.rows() {
        h.push_str(&format!(
            "<tr><th class=\"row\">{}</th><td>{}{}</td><td>{}{}</td></tr>",
            esc(name),
            esc(&row.prognostic_assessment.text),
            cites(&row.prognostic_assessment.cites),
            esc(&row.diagnostic_opinion.text),
            cites(&row.diagnostic_opinion.cites)
        ));
    }
    h.push_str("</table>");
    h.push_str(&format!("<h2>Treatment</h2><p>{}{}</p>", esc(&body.treatment.text), cites(&body.treatment.cites)));
    h.push_str(&format!("<p class=\"disclaimer\">{}</p>", esc(&body.disclaimer)));

    h.push_str("<h2>Sources</h2><ul>");
    let mut ids: Vec<&String> = body.cells().into_iter().flat_map(|(_, c)| c.cites.iter()).collect();
    ids.dedup();
    let mut seen = Vec::new();
    for id in ids {
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        if let Some(p) = kb.get(id) {
            h.push_str(&format!("<li id=\"{}\"><b>[{}]</b> {}</li>", esc(id), esc(id), esc(&p.source)));
        }
    }
    h.push_str("</ul>");
    let opt = |v: Option<&str>| esc(v.unwrap_or("-"));
    h.push_str(&format!(
        "<p class=\"muted\">Written by: {}{} · LLM {} (digest {}) · prompt sha256 {} · knowledge base {} · retrieval {}</p>",
        if prov.path == "llm" { "the local LLM, validated" } else { "the deterministic fallback" },
        prov.fallback_reason.map(|r| format!(" ({})", esc(r))).unwrap_or_default(),
        opt(prov.llm_model),
        opt(prov.llm_model_digest),
        opt(prov.prompt_sha256),
        esc(prov.kb_version),
        esc(prov.retrieval)
    ));
    h.push_str("</body></html>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::tests::analysis;
    use crate::report::CHART_ROWS;

    #[test]
    fn page_has_the_chart_and_escapes_text() {
        let kb = KnowledgeBase::load("").unwrap();
        let facts = Facts::from_analysis(&analysis([0.87, 0.2, 0.1, 0.55], [0.2, 0.5, 0.3], &[]));
        let (mut body, _) = crate::fallback::build(&facts, &kb);
        body.summary = "<script>alert(1)</script>".into();
        let prov = Provenance {
            case_id: "c",
            version: 1,
            path: "fallback",
            fallback_reason: Some("unavailable"),
            llm_model: None,
            llm_model_digest: None,
            prompt_sha256: None,
            kb_version: &kb.version,
            retrieval: "bm25",
            created_at: "now",
        };
        let page = html(&body, &facts, &kb, &prov);
        for needle in CHART_ROWS.into_iter().chain(CHART_COLUMNS).chain(["guidelines only", "Research use only"]) {
            assert!(page.contains(needle), "{needle}");
        }
        assert!(!page.contains("<script>") && page.contains("&lt;script&gt;"));
        assert!(page.contains("href=\"#mgmt-mri-limits\"") && page.contains("id=\"mgmt-mri-limits\""));
    }
}
