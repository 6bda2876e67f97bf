//! The prompt of one report: the instructions, the analysis facts and the retrieved passages;
//! hashed (with the schema, model and options) so a stored report names exactly what was asked.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::facts::Facts;
use crate::kb::KnowledgeBase;
use crate::report::DISCLAIMER;

/// The system and user messages.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub system: String,
    pub user: String,
}

pub fn build(facts: &Facts, kb: &KnowledgeBase, passage_ids: &[String]) -> Prompt {
    let system = format!(
        "You are GMMAS-GPT, an assistant that drafts a glioma MRI report for a radiologist. \
         Write in English, in short clinical sentences. Rules: \
         1. Use only numbers that appear in FACTS, written exactly as there. \
         2. Ground every statement in the PASSAGES; in each cite list give the ids of the passages you used. \
         3. The probabilities come from a model reading MRI: write 'likely' or 'favours' for the class above 50%, \
            never 'definitely', 'confirmed' or 'certain'; molecular status and grade need tissue. \
         4. MRI-based MGMT prediction is close to chance: say that tissue testing decides. \
         5. summary: restate the FACTS in two or three sentences: the NCR, ED and ET percentages and the \
            probabilities of all four tasks (grade, IDH, 1p/19q, MGMT). \
         6. Fill the chart with full sentences: tumor_compartments (the NCR/ED/ET proportions), histological_subtype (LGG vs GBM), \
            molecular_information (IDH, 1p/19q, MGMT); for each a prognostic_assessment and a diagnostic_opinion. \
         7. treatment: outline surgery, radiotherapy with temozolomide and corticosteroids as the passages say. \
         8. disclaimer: exactly \"{DISCLAIMER}\""
    );
    let mut user = String::from("FACTS\n");
    user.push_str(&facts.prompt_block());
    user.push_str("\nPASSAGES\n");
    for id in passage_ids {
        if let Some(p) = kb.get(id) {
            user.push_str(&format!("[{}] {}\n", p.id, p.text));
        }
    }
    user.push_str("\nWrite the report as JSON.");
    Prompt { system, user }
}

/// sha256 over everything that decides the answer: messages, schema, model and options.
pub fn hash(prompt: &Prompt, schema: &Value, model: &str, options: &str) -> String {
    let mut h = Sha256::new();
    for part in [prompt.system.as_str(), prompt.user.as_str(), &schema.to_string(), model, options] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::tests::analysis;

    #[test]
    fn prompt_holds_facts_and_passages_and_its_hash_follows_them() {
        let kb = KnowledgeBase::load("").unwrap();
        let facts = Facts::from_analysis(&analysis([0.87, 0.2, 0.1, 0.55], [0.2, 0.5, 0.3], &[]));
        let ids = vec!["mgmt-mri-limits".to_string()];
        let p = build(&facts, &kb, &ids);
        assert!(p.user.contains("[mgmt-mri-limits]") && p.user.contains("GBM 87.0%"));
        let schema = serde_json::json!({});
        let a = hash(&p, &schema, "m", "t=0");
        assert_eq!(a.len(), 64);
        assert_eq!(a, hash(&p, &schema, "m", "t=0"));
        assert_ne!(a, hash(&p, &schema, "m2", "t=0"));
    }
}
