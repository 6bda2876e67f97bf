//! The knowledge base the reports are grounded in: passages with an id, a chart row, a source
//! citation, the text shown to the LLM and a one-sentence brief for the fallback; versioned by hash.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// The knowledge base shipped with the service (`services/report/kb/glioma.toml`).
pub const BUILTIN: &str = include_str!("../kb/glioma.toml");

/// The chart row (or section) a passage informs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Row {
    Compartments,
    Histology,
    Molecular,
    Treatment,
    General,
}

/// One passage of the knowledge base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Passage {
    pub id: String,
    pub row: Row,
    #[serde(default)]
    pub keywords: Vec<String>,
    pub source: String,
    pub text: String,
    pub brief: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[allow(dead_code)]
    title: String,
    passage: Vec<Passage>,
}

/// Why a knowledge base could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KbError {
    #[error("knowledge base is not valid TOML: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("knowledge base: {0}")]
    Invalid(String),
    #[error("reading the knowledge base {path}: {source}")]
    Read { path: String, source: std::io::Error },
}

/// A loaded knowledge base.
#[derive(Debug, Clone)]
pub struct KnowledgeBase {
    pub passages: Vec<Passage>,
    /// `kb-` and the first 16 hex digits of the sha256 of the file.
    pub version: String,
}

impl KnowledgeBase {
    /// Parses and checks a knowledge base (ids unique and well formed, no empty text).
    pub fn parse(text: &str) -> Result<KnowledgeBase, KbError> {
        let file: File = toml::from_str(text)?;
        let mut seen = HashSet::new();
        for p in &file.passage {
            let ok_id = !p.id.is_empty()
                && p.id.len() <= 64
                && p.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok_id {
                return Err(KbError::Invalid(format!("passage id {:?}: expected 1-64 of a-z, 0-9, '-'", p.id)));
            }
            if !seen.insert(p.id.clone()) {
                return Err(KbError::Invalid(format!("passage id {:?} appears twice", p.id)));
            }
            if p.text.trim().is_empty() || p.brief.trim().is_empty() || p.source.trim().is_empty() {
                return Err(KbError::Invalid(format!("passage {:?} has an empty text, brief or source", p.id)));
            }
        }
        if file.passage.is_empty() {
            return Err(KbError::Invalid("no passages".into()));
        }
        let digest = gmmas_contracts::sha256_hex(text.as_bytes());
        Ok(KnowledgeBase { passages: file.passage, version: format!("kb-{}", &digest[..16]) })
    }

    /// The built-in knowledge base, or the file at `path` when it is not empty.
    pub fn load(path: &str) -> Result<KnowledgeBase, KbError> {
        if path.is_empty() {
            return Self::parse(BUILTIN);
        }
        let text = std::fs::read_to_string(path).map_err(|source| KbError::Read { path: path.into(), source })?;
        Self::parse(&text)
    }

    pub fn get(&self, id: &str) -> Option<&Passage> {
        self.passages.iter().find(|p| p.id == id)
    }

    /// Passages of one row, in file order.
    pub fn of_row(&self, row: Row) -> impl Iterator<Item = &Passage> {
        self.passages.iter().filter(move |p| p.row == row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_loads_with_a_stable_version_and_every_row() {
        let kb = KnowledgeBase::load("").unwrap();
        assert!(kb.passages.len() >= 15);
        assert_eq!(kb.version, KnowledgeBase::parse(BUILTIN).unwrap().version);
        assert!(kb.version.starts_with("kb-") && kb.version.len() == 19);
        for row in [Row::Compartments, Row::Histology, Row::Molecular, Row::Treatment, Row::General] {
            assert!(kb.of_row(row).count() >= 2, "{row:?}");
        }
        assert!(kb.get("mgmt-mri-limits").is_some());
    }

    #[test]
    fn version_changes_with_the_text_and_bad_files_are_named() {
        let a = KnowledgeBase::parse(BUILTIN).unwrap();
        let b = KnowledgeBase::parse(&format!("{BUILTIN}\n# edited\n")).unwrap();
        assert_ne!(a.version, b.version);
        let dup = format!(
            "{BUILTIN}\n[[passage]]\nid = \"who5-grading\"\nrow = \"general\"\nsource = \"s\"\ntext = \"t\"\nbrief = \"b\"\n"
        );
        assert!(KnowledgeBase::parse(&dup).unwrap_err().to_string().contains("twice"));
        let bad = "title = \"x\"\n[[passage]]\nid = \"Bad Id\"\nrow = \"general\"\nsource = \"s\"\ntext = \"t\"\nbrief = \"b\"\n";
        assert!(KnowledgeBase::parse(bad).unwrap_err().to_string().contains("Bad Id"));
    }
}
