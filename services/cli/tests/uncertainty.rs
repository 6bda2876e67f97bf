//! `gmmas uncertainty` through the real binary on tiny phantoms and a tiny model: the JSON,
//! Markdown and charts are written, with voxel AUROC, uncertainty bins and the OOD comparisons.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use std::path::Path;
use std::process::Command;

fn gmmas() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gmmas"))
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn phantoms(dir: &Path, kind: &str, n: &str) {
    ok(gmmas().args(["phantom", "--n", n, "--seed", "8", "--dims", "48,48,40", "--kind", kind, "--out"]).arg(dir));
}

#[test]
fn uncertainty_report_on_tiny_phantoms() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.safetensors");
    ok(gmmas().args(["init-model", "--profile", "tiny", "--seed", "2", "--out"]).arg(&model));
    let data = dir.path().join("glioma");
    let other = dir.path().join("other");
    phantoms(&data, "glioma", "2");
    phantoms(&other, "non-glioma", "1");
    // The non-glioma phantom has an empty segmentation and no class labels.
    let seg = std::fs::read(other.join("Phantom_0000/Phantom_0000_seg.nii.gz")).unwrap();
    let seg = gmmas_imaging::read_labels(&seg, &gmmas_imaging::Limits::default()).unwrap();
    assert!(seg.data.iter().all(|&l| l == 0));

    let out = dir.path().join("out");
    let log = ok(gmmas()
        .arg("uncertainty")
        .arg("--weights")
        .arg(&model)
        .arg("--cases")
        .arg(&data)
        .arg("--labels")
        .arg(data.join("labels.csv"))
        .arg(format!("--ood=non-glioma={}", other.display()))
        .args(["--variants", "swap-t1ce-flair,noise-1", "--mc-passes", "2", "--decoder-dropout", "0.2"])
        .args(["--bins", "4", "--threads", "1", "--device", "cpu", "--out"])
        .arg(&out));
    assert!(log.contains("swap-t1ce-flair"), "{log}");

    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("uncertainty.json")).unwrap()).unwrap();
    assert_eq!(r["mc_passes"], 2);
    assert_eq!(r["decoder_dropout"], 0.2);
    let cases = r["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    let inputs: Vec<&str> =
        cases[0]["inputs"].as_array().unwrap().iter().map(|i| i["input"].as_str().unwrap()).collect();
    assert_eq!(inputs, ["original", "swap-t1ce-flair", "noise-1"]);
    // Decoder dropout makes the passes differ: some voxel has a spread.
    assert!(cases[0]["inputs"][0]["uncertainty"]["brain_class_std"].as_f64().unwrap() > 0.0);
    let pooled = &r["pooled"]["brain"];
    assert!(pooled["voxels"].as_u64().unwrap() > 1000);
    let auroc = pooled["auroc"][0][1].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&auroc), "{auroc}");
    let bins = r["pooled"]["bins"][0][1].as_array().unwrap();
    assert!(!bins.is_empty() && bins.len() <= 4);
    let counted: u64 = bins.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, pooled["voxels"].as_u64().unwrap());
    let comparisons: Vec<&str> =
        r["comparisons"].as_array().unwrap().iter().map(|c| c["input"].as_str().unwrap()).collect();
    assert_eq!(comparisons, ["swap-t1ce-flair", "noise-1", "non-glioma"]);
    assert_eq!(r["ood"][0][1].as_array().unwrap().len(), 1);

    let md = std::fs::read_to_string(out.join("uncertainty.md")).unwrap();
    assert!(md.contains("uncertainty --weights"), "{md}");
    assert!(md.contains("| brain, pooled |"));
    for png in ["fig5c_voxels.png", "ood_brain_entropy.png", "ood_task_std.png"] {
        assert_eq!(&std::fs::read(out.join(png)).unwrap()[1..4], b"PNG", "{png}");
    }
}
