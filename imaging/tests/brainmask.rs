//! The classical brain extractor on a real head with its skull (the MNI152 T1 template and its
//! brain mask, fetched by scripts/setup.sh into the cache's `brain/` folder).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failure should stop the test")]

use std::path::PathBuf;

use gmmas_imaging::brainmask::{classical_brain_mask, dice};
use gmmas_imaging::{Limits, background, read_labels, read_volume};

/// The cache folder scripts/setup.sh fills (`GMMAS_CACHE`, else `~/.cache/gmmas`).
fn brain_dir() -> PathBuf {
    let cache = std::env::var_os("GMMAS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/gmmas"));
    cache.join("brain")
}

fn read(name: &str) -> Vec<u8> {
    let p = brain_dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", p.display()))
}

#[test]
fn classical_mask_of_a_real_head_overlaps_its_known_brain_mask() {
    let limits = Limits::default();
    let head = read_volume(&read("MNI152_T1.nii.gz"), &limits).unwrap();
    let truth = read_labels(&read("MNI152_mask.nii.gz"), &limits).unwrap();
    // A head with its skull is what the skull-stripped check must catch.
    assert!(background::edge_nonzero_fraction(&head) > background::MAX_EDGE_NONZERO);
    let t = std::time::Instant::now();
    let mask = classical_brain_mask(&head).unwrap();
    let got: Vec<bool> = mask.data.iter().map(|&m| m != 0).collect();
    let want: Vec<bool> = truth.data.iter().map(|&m| m != 0).collect();
    let d = dice(&got, &want);
    println!("classical brain mask: Dice {d:.4} in {:.1} s", t.elapsed().as_secs_f64());
    assert!(d >= 0.95, "classical brain mask Dice {d:.4} < 0.95");
}
