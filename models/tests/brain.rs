//! Skull stripping through libtorch: HD-BET's converted network on a real head with its skull
//! (the MNI152 T1 template and its brain mask, fetched by scripts/setup.sh), the classical
//! fallback through the same policy, and an already-stripped BraTS case (or, without the shared
//! data, a phantom) left untouched.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failure should stop the test")]

use std::path::{Path, PathBuf};

use gmmas_imaging::brainmask::dice;
use gmmas_imaging::{Limits, Modality, Volume, read_labels, read_volume};
use gmmas_models::{BrainExtractor, SkullStrip, default_brain_model_path, strip_case};
use tch::Device;

fn cache_brain_dir() -> PathBuf {
    let cache = std::env::var_os("GMMAS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/gmmas"));
    cache.join("brain")
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", p.display()))
}

fn head() -> (Volume, Vec<bool>) {
    let dir = cache_brain_dir();
    let limits = Limits::default();
    let head = read_volume(&read(&dir.join("MNI152_T1.nii.gz")), &limits).unwrap();
    let truth = read_labels(&read(&dir.join("MNI152_mask.nii.gz")), &limits).unwrap();
    (head, truth.data.iter().map(|&m| m != 0).collect())
}

fn extractor() -> BrainExtractor {
    let path = default_brain_model_path()
        .or_else(|| Some(cache_brain_dir().join(gmmas_models::brain::BRAIN_MODEL_FILE)))
        .unwrap();
    BrainExtractor::load(&path, Device::Cpu).unwrap_or_else(|e| panic!("{e} (run scripts/setup.sh)"))
}

#[test]
fn network_strips_a_real_head_to_its_known_brain_mask() {
    let (head, truth) = head();
    let x = extractor();
    // Subnormal weights would make the network one to two orders of magnitude slower on some CPUs.
    assert_eq!(x.subnormal_parameters().unwrap(), 0, "subnormal weights left after loading");
    let mut case = vec![(Modality::T1, head.clone())];
    let t = std::time::Instant::now();
    let (mask, report) = strip_case(&mut case, SkullStrip::Auto, Some(&x)).unwrap();
    let mask = mask.expect("a head with its skull must be stripped");
    let got: Vec<bool> = mask.data.iter().map(|&m| m != 0).collect();
    let d = dice(&got, &truth);
    println!("HD-BET fold 0: Dice {d:.4} in {:.1} s ({report:?})", t.elapsed().as_secs_f64());
    assert!(d >= 0.93, "brain mask Dice {d:.4} < 0.93");
    assert!(report.method.starts_with("hd-bet-fold0@"), "{}", report.method);
    assert_eq!(report.source_sequence.as_deref(), Some("t1"));
    // Outside the mask the sequence is now zero; inside it is unchanged.
    let stripped = &case[0].1;
    for i in (0..got.len()).step_by(97) {
        let want = if got[i] { head.data[i] } else { 0.0 };
        assert_eq!(stripped.data[i], want, "voxel {i}");
    }
    assert!(gmmas_imaging::check_skull_stripped(&[(Modality::T1, stripped)]).is_ok());
}

#[test]
fn classical_fallback_and_refusal_follow_the_policy() {
    let (head, truth) = head();
    let mut case = vec![(Modality::T2, head.clone()), (Modality::Flair, head.clone())];
    let (mask, report) = strip_case(&mut case, SkullStrip::Auto, None).unwrap();
    let got: Vec<bool> = mask.unwrap().data.iter().map(|&m| m != 0).collect();
    assert!(dice(&got, &truth) >= 0.95);
    assert_eq!(report.method, "classical");
    // FLAIR is preferred over T2 when there is no T1 or T1ce.
    assert_eq!(report.source_sequence.as_deref(), Some("flair"));
    assert_eq!(case[0].1.data, case[1].1.data, "one mask applied to every sequence");

    let mut refused = vec![(Modality::T1, head)];
    let e = strip_case(&mut refused, SkullStrip::Never, None).unwrap_err().to_string();
    assert!(e.contains("t1") && e.contains("skull"), "{e}");
}

#[test]
fn stripped_brats_case_passes_through_untouched() {
    let shared = std::env::var_os("GMMAS_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let dir = shared.join("brats/Brats18_2013_11_1");
    let mut case: Vec<(Modality, Volume)> = if dir.is_dir() {
        Modality::ALL
            .iter()
            .map(|m| {
                let p = dir.join(format!("Brats18_2013_11_1_{}.nii.gz", m.as_str()));
                (*m, read_volume(&read(&p), &Limits::default()).unwrap())
            })
            .collect()
    } else {
        eprintln!("{} absent: a phantom (skull-stripped like BraTS) instead", dir.display());
        gmmas_phantom::generate(&gmmas_phantom::PhantomConfig { dims: [96, 112, 80], seed: 5 }).volumes
    };
    let before = case.clone();
    let x = extractor();
    let (mask, report) = strip_case(&mut case, SkullStrip::Auto, Some(&x)).unwrap();
    assert!(mask.is_none());
    assert_eq!(report.method, "none (already skull-stripped)");
    assert!(case == before, "an already-stripped case must not change");
}
