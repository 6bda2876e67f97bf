//! The report in the paper's Fig. 11 format: a summary, a chart (rows: tumour compartments,
//! histological subtype, molecular information; columns: prognostic assessment, diagnostic
//! opinion), a treatment paragraph and the closing disclaimer; and the JSON schema the LLM fills.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The closing sentence every report carries (GMMAS paper, IV-D).
pub const DISCLAIMER: &str = "The above recommendations are guidelines only, and specific treatment plans should be developed by the treatment team on a patient-specific basis.";

/// Longest text the LLM may write in one chart cell or the treatment paragraph (schema), in
/// characters; keeps an answer within `llm_max_tokens`.
pub const MAX_CELL_CHARS: usize = 320;
/// Longest summary the LLM may write (schema), in characters.
pub const MAX_SUMMARY_CHARS: usize = 520;
/// Longest text any report may hold in one place (validation), in characters.
pub const MAX_TEXT_CHARS: usize = 1500;

/// Text with the knowledge-base passages it rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Cell {
    pub text: String,
    pub cites: Vec<String>,
}

/// One chart row: its two columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ChartRow {
    pub prognostic_assessment: Cell,
    pub diagnostic_opinion: Cell,
}

/// The chart's row names (Fig. 11), in display order.
pub const CHART_ROWS: [&str; 3] = ["Tumor Compartments", "Histological Subtype", "Molecular Information"];
/// The chart's column names: every row has one cell of each.
pub const CHART_COLUMNS: [&str; 2] = ["Prognostic Assessment", "Diagnostic Opinion"];

/// The three chart rows of Fig. 11.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Chart {
    pub tumor_compartments: ChartRow,
    pub histological_subtype: ChartRow,
    pub molecular_information: ChartRow,
}

impl Chart {
    /// (row name, row) in display order.
    pub fn rows(&self) -> [(&'static str, &ChartRow); 3] {
        let [tumor, histology, molecular] = CHART_ROWS;
        [
            (tumor, &self.tumor_compartments),
            (histology, &self.histological_subtype),
            (molecular, &self.molecular_information),
        ]
    }
}

/// What the LLM (or the fallback) writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReportBody {
    pub summary: String,
    pub chart: Chart,
    pub treatment: Cell,
    pub disclaimer: String,
}

impl ReportBody {
    /// Every cell with its place, for validation and rendering.
    pub fn cells(&self) -> Vec<(String, &Cell)> {
        let mut v = Vec::new();
        for (name, row) in self.chart.rows() {
            let [prognostic, diagnostic] = CHART_COLUMNS;
            v.push((format!("{name} / {prognostic}"), &row.prognostic_assessment));
            v.push((format!("{name} / {diagnostic}"), &row.diagnostic_opinion));
        }
        v.push(("Treatment".into(), &self.treatment));
        v
    }

    /// Every free text with its place (summary, cells, disclaimer).
    pub fn texts(&self) -> Vec<(String, &str)> {
        let mut v = vec![("Summary".to_string(), self.summary.as_str())];
        v.extend(self.cells().into_iter().map(|(k, c)| (k, c.text.as_str())));
        v
    }
}

/// The JSON schema of [`ReportBody`] for constrained decoding: citations limited to the
/// retrieved passage ids, the disclaimer fixed, texts bounded.
pub fn schema(passage_ids: &[String]) -> Value {
    let cell = json!({
        "type": "object",
        "properties": {
            "text": {"type": "string", "minLength": 1, "maxLength": MAX_CELL_CHARS},
            "cites": {"type": "array", "items": {"type": "string", "enum": passage_ids}, "minItems": 1, "maxItems": 3}
        },
        "required": ["text", "cites"],
        "additionalProperties": false
    });
    let row = json!({
        "type": "object",
        "properties": {"prognostic_assessment": cell, "diagnostic_opinion": cell},
        "required": ["prognostic_assessment", "diagnostic_opinion"],
        "additionalProperties": false
    });
    json!({
        "type": "object",
        "properties": {
            "summary": {"type": "string", "minLength": 1, "maxLength": MAX_SUMMARY_CHARS},
            "chart": {
                "type": "object",
                "properties": {"tumor_compartments": row, "histological_subtype": row, "molecular_information": row},
                "required": ["tumor_compartments", "histological_subtype", "molecular_information"],
                "additionalProperties": false
            },
            "treatment": cell,
            "disclaimer": {"type": "string", "enum": [DISCLAIMER]}
        },
        "required": ["summary", "chart", "treatment", "disclaimer"],
        "additionalProperties": false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_limits_citations_and_fixes_the_disclaimer() {
        let s = schema(&["a".into(), "b".into()]);
        assert_eq!(s["properties"]["disclaimer"]["enum"][0], DISCLAIMER);
        let cites = &s["properties"]["chart"]["properties"]["histological_subtype"]["properties"]["diagnostic_opinion"]
            ["properties"]["cites"];
        assert_eq!(cites["items"]["enum"], json!(["a", "b"]));
        let body = ReportBody::default();
        assert_eq!(body.cells().len(), 7);
        assert_eq!(body.texts().len(), 8);
    }
}
