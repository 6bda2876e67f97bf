//! Missing-modality combinations for evaluation (paper Tables VII, VIII and Fig. 10): which
//! sequences to remove, their row names, and the model input with those sequences removed.
//!
//! A combination is a drop mask in channel order (t1, t1ce, t2, flair). Removing a sequence
//! zeroes its channel and clears its `present` flag, exactly what inference sees for a case
//! that never had it. Combinations are listed in the paper's row order: full input, then
//! FLAIR, T1CE, T1, T2 missing, then the pairs in that order.

use std::borrow::Cow;

use crate::config::MODALITIES;

/// Which modalities to remove (t1, t1ce, t2, flair).
pub type DropMask = [bool; MODALITIES];

/// Display names in channel order.
pub const DISPLAY_NAMES: [&str; MODALITIES] = ["T1", "T1CE", "T2", "FLAIR"];

/// Channel indices in the paper's row order (FLAIR, T1CE, T1, T2).
const PAPER_ORDER: [usize; MODALITIES] = [3, 1, 0, 2];

/// Full input, each single sequence missing, each pair missing (11 combinations, paper
/// order).
pub fn paper_combos() -> Vec<DropMask> {
    combos_up_to(2)
}

/// Every non-empty set of remaining sequences (15 combinations: full input, 4 singles, 6
/// pairs, 4 triples missing).
pub fn all_combos() -> Vec<DropMask> {
    combos_up_to(MODALITIES - 1)
}

/// DropMask masks removing 0..=`max` sequences, by size, then lexically in paper order.
fn combos_up_to(max: usize) -> Vec<DropMask> {
    let mut out = Vec::new();
    for size in 0..=max.min(MODALITIES - 1) {
        // Subsets of positions in PAPER_ORDER of this size, lexical order.
        let mut pick: Vec<usize> = (0..size).collect();
        loop {
            let mut d = [false; MODALITIES];
            for &k in &pick {
                d[PAPER_ORDER[k]] = true;
            }
            out.push(d);
            // Next combination.
            let Some(i) = (0..size).rev().find(|&i| pick[i] < MODALITIES - size + i) else { break };
            pick[i] += 1;
            for j in i + 1..size {
                pick[j] = pick[j - 1] + 1;
            }
        }
    }
    out
}

/// Row name: `Full input` or `Missing FLAIR & T1CE` (names in paper order).
pub fn label(drop: &DropMask) -> String {
    let names: Vec<&str> = PAPER_ORDER.iter().filter(|&&m| drop[m]).map(|&m| DISPLAY_NAMES[m]).collect();
    if names.is_empty() { "Full input".to_string() } else { format!("Missing {}", names.join(" & ")) }
}

/// Short file-name-safe key: `full` or `no-flair-t1ce`.
pub fn key(drop: &DropMask) -> String {
    let names: Vec<String> =
        PAPER_ORDER.iter().filter(|&&m| drop[m]).map(|&m| DISPLAY_NAMES[m].to_ascii_lowercase()).collect();
    if names.is_empty() { "full".to_string() } else { format!("no-{}", names.join("-")) }
}

/// The input of a case with the `drop` modalities removed: `image` holds the 4 channels
/// (channel-major, `voxels` each). Returns the (possibly unchanged, borrowed) image and the
/// new presence flags, or None when no modality would remain.
pub fn apply_drop<'a>(
    image: &'a [f32],
    voxels: usize,
    present: [bool; MODALITIES],
    drop: &DropMask,
) -> Option<(Cow<'a, [f32]>, [bool; MODALITIES])> {
    let kept: [bool; MODALITIES] = std::array::from_fn(|m| present[m] && !drop[m]);
    if !kept.contains(&true) {
        return None;
    }
    if kept == present {
        return Some((Cow::Borrowed(image), present));
    }
    let mut owned = image.to_vec();
    for m in 0..MODALITIES {
        if !kept[m] {
            owned[m * voxels..(m + 1) * voxels].fill(0.0);
        }
    }
    Some((Cow::Owned(owned), kept))
}

/// How the network's input is completed where a sequence is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingFill {
    /// The channel stays zero and its presence flag is cleared: the modality stems' weighted
    /// average (eq. 1) leaves it out.
    #[default]
    Zero,
    /// The channel gets a present sequence of similar contrast (see [`STAND_INS`]) and is
    /// flagged present, so the network reads a complete input.
    Substitute,
}

/// For each channel (t1, t1ce, t2, flair), the sequences that stand in for it when it is
/// missing, best first: T1 and T1CE share their T1 weighting; FLAIR and T2 both show oedema
/// bright (T2 also shows CSF bright, which FLAIR suppresses).
pub const STAND_INS: [[usize; 3]; MODALITIES] = [[1, 3, 2], [0, 3, 2], [3, 1, 0], [2, 1, 0]];

/// The input with every missing channel filled by its first present stand-in and flagged
/// present; None when nothing is missing (or nothing is present).
pub fn substitute(image: &[f32], voxels: usize, present: [bool; MODALITIES]) -> Option<(Vec<f32>, [bool; MODALITIES])> {
    if present.iter().all(|&p| p) || !present.contains(&true) {
        return None;
    }
    let mut owned = image.to_vec();
    for m in (0..MODALITIES).filter(|&m| !present[m]) {
        let Some(&src) = STAND_INS[m].iter().find(|&&s| present[s]) else { continue };
        owned.copy_within(src * voxels..(src + 1) * voxels, m * voxels);
    }
    Some((owned, [true; MODALITIES]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_rows_in_order() {
        let rows: Vec<String> = paper_combos().iter().map(label).collect();
        assert_eq!(
            rows,
            [
                "Full input",
                "Missing FLAIR",
                "Missing T1CE",
                "Missing T1",
                "Missing T2",
                "Missing FLAIR & T1CE",
                "Missing FLAIR & T1",
                "Missing FLAIR & T2",
                "Missing T1CE & T1",
                "Missing T1CE & T2",
                "Missing T1 & T2",
            ]
        );
        let all = all_combos();
        assert_eq!(all.len(), 15);
        assert!(all.iter().all(|d| d.contains(&false)));
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 15);
        assert_eq!(label(&all[14]), "Missing T1CE & T1 & T2");
        assert_eq!(key(&[false, true, false, true]), "no-flair-t1ce");
        assert_eq!(key(&[false; 4]), "full");
    }

    #[test]
    fn drop_zeroes_channels_and_clears_flags() {
        let voxels = 3;
        // T1CE absent: its channel is zeros, as in a loaded case.
        let image: Vec<f32> = (0..12).map(|v| if (3..6).contains(&v) { 0.0 } else { v as f32 + 1.0 }).collect();
        let present = [true, false, true, true];
        let (img, p) = apply_drop(&image, voxels, present, &[false; 4]).unwrap();
        assert!(matches!(img, Cow::Borrowed(_)));
        assert_eq!(p, present);
        let (img, p) = apply_drop(&image, voxels, present, &[false, false, false, true]).unwrap();
        assert_eq!(p, [true, false, true, false]);
        assert_eq!(&img[..9], &image[..9]);
        assert_eq!(&img[9..], &[0.0; 3]);
        // The case's own missing T1CE stays missing; dropping only T1CE changes nothing.
        let (_, p) = apply_drop(&image, voxels, present, &[false, true, false, false]).unwrap();
        assert_eq!(p, present);
        // Nothing left.
        assert!(apply_drop(&image, voxels, present, &[true, false, true, true]).is_none());
    }

    #[test]
    fn substitution_fills_each_missing_channel_from_its_stand_in() {
        let voxels = 2;
        let image = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0];
        assert!(substitute(&image, voxels, [true; 4]).is_none());
        // FLAIR missing: T2 stands in.
        let (img, p) = substitute(&image, voxels, [true, true, true, false]).unwrap();
        assert_eq!(p, [true; 4]);
        assert_eq!(img, [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0]);
        // T1CE and T2 missing (the weak cases): T1 for T1CE, FLAIR for T2.
        let (img, _) = substitute(&image, voxels, [true, false, false, true]).unwrap();
        assert_eq!(img, [1.0, 1.0, 1.0, 1.0, 4.0, 4.0, 4.0, 4.0]);
        // Only T1 left: it stands in for everything.
        let (img, _) = substitute(&image, voxels, [true, false, false, false]).unwrap();
        assert_eq!(img, [1.0; 8]);
    }

    /// `evaluate` with a drop mask runs the model on the reduced input: dropping FLAIR
    /// changes the outputs, and a case left with no modality is skipped.
    #[test]
    fn evaluate_applies_the_drop_option() {
        use crate::data::{DataConfig, Dataset};
        use crate::fit::{EvalOptions, evaluate};
        use crate::{Analyzer, ModelConfig};
        let dir = tempfile::tempdir().unwrap();
        gmmas_phantom::write_dataset(2, 5, [32, 32, 24], dir.path()).unwrap();
        let data = Dataset::load(&DataConfig {
            dirs: vec![dir.path().to_path_buf()],
            labels: vec![dir.path().join("labels.csv")],
            ..DataConfig::default()
        })
        .unwrap();
        let model = Analyzer::new_seeded(ModelConfig::tiny(), 1, tch::Device::Cpu).unwrap();
        let base = EvalOptions { hd95: false, ..EvalOptions::default() };
        let full = evaluate(&model, &data, &[0, 1], &base, |_| {}).unwrap();
        let no_flair =
            evaluate(&model, &data, &[0, 1], &EvalOptions { drop: [false, false, false, true], ..base }, |_| {})
                .unwrap();
        assert_eq!(no_flair.cases_evaluated, 2);
        let probs = |r: &crate::fit::EvalReport| r.cases.iter().map(|c| c.probabilities).collect::<Vec<_>>();
        assert_ne!(probs(&full), probs(&no_flair));
        // Same as running the model on the helper's input directly.
        let c = &data.cases[0];
        let (img, present) = apply_drop(&c.image, c.voxels(), c.present, &[false, false, false, true]).unwrap();
        assert_eq!(present, [true, true, true, false]);
        let p = model.analyze(&img, c.dims, present, &base.infer).unwrap();
        assert_eq!(p.probabilities.to_array(), no_flair.cases[0].probabilities);
        // Dropping everything skips every case.
        let none = evaluate(&model, &data, &[0, 1], &EvalOptions { drop: [true; 4], ..base }, |_| {}).unwrap();
        assert_eq!(none.cases_evaluated, 0);
    }
}
