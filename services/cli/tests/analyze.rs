//! `gmmas analyze` and `gmmas phantom` through the real binary: folders in both BraTS namings,
//! a modality subset, and a clear error for a folder without images.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

mod common;

use std::path::Path;

use common::{gmmas, scoring};
use gmmas_imaging::Limits;

fn tiny_model(dir: &Path) -> std::path::PathBuf {
    common::tiny_model(&dir.join("tiny.safetensors"), 3)
}

#[test]
fn analyze_writes_a_segmentation_on_the_input_grid() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = dir.path().join("data");
    let out = gmmas()
        .args(["phantom", "--n", "1", "--seed", "4", "--dims", "56,60,40", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(data.join("labels.csv").exists());
    let case_dir = std::fs::read_dir(&data).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path();
    let name = case_dir.file_name().unwrap().to_string_lossy().to_string();

    let results = dir.path().join("out");
    let out =
        gmmas().arg("analyze").arg(&case_dir).arg("--out").arg(&results).arg("--model").arg(&model).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let seg_bytes = std::fs::read(results.join(format!("{name}_seg.nii.gz"))).unwrap();
    let seg = gmmas_imaging::read_labels(&seg_bytes, &Limits::default()).unwrap();
    let t1 = gmmas_imaging::read_volume(
        &std::fs::read(case_dir.join(format!("{name}_t1.nii.gz"))).unwrap(),
        &Limits::default(),
    )
    .unwrap();
    gmmas_imaging::same_grid(&seg.grid, &t1.grid).unwrap();
    assert!(seg.data.iter().all(|l| matches!(l, 0 | 1 | 2 | 4)));

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join(format!("{name}_analysis.json"))).unwrap()).unwrap();
    assert!(report["model_version"].as_str().unwrap().contains("tiny-seed3@"));
    assert_eq!(report["segmentation_sha256"], gmmas_runtime::bus::sha256_hex(&seg_bytes));
    assert_eq!(report["missing_modalities"].as_array().unwrap().len(), 0);
    assert_eq!(report["regions"]["wt_ml"].as_f64().unwrap(), gmmas_imaging::region_stats(&seg).wt_ml);

    // The overlay picture of image, prediction and expert mask: three 60-voxel columns (180 px),
    // widened to the 420 px the colour key below needs.
    let png = dir.path().join("overlay.png");
    let out = gmmas()
        .args(["overlay", "--case"])
        .arg(&case_dir)
        .arg("--pred")
        .arg(results.join(format!("{name}_seg.nii.gz")))
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 420);

    // `gmmas eval` on the same folder: JSON, Markdown and reliability plots.
    let eval_dir = dir.path().join("eval");
    let out = scoring("eval", &model, &data, &eval_dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(eval_dir.join("eval.json")).unwrap()).unwrap();
    assert_eq!(eval["cases_evaluated"], 1);
    assert!(std::fs::read_to_string(eval_dir.join("eval.md")).unwrap().contains("| WT |"));
    let plot = std::fs::read(eval_dir.join("reliability_grade_gbm.png")).unwrap();
    assert_eq!(&plot[1..4], b"PNG");
}

#[test]
fn analyze_reads_2023_names_and_a_subset_of_modalities() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let case = gmmas_phantom::generate(&gmmas_phantom::PhantomConfig { dims: [48, 48, 40], seed: 2 });
    let case_dir = dir.path().join("BraTS-GLI-00001-000");
    std::fs::create_dir_all(&case_dir).unwrap();
    for (m, v) in &case.volumes {
        let suffix = match m.as_str() {
            "t1ce" => "t1c",
            "flair" => "t2f",
            _ => continue, // only T1ce and FLAIR present
        };
        std::fs::write(
            case_dir.join(format!("BraTS-GLI-00001-000-{suffix}.nii.gz")),
            gmmas_imaging::write_volume(v, true),
        )
        .unwrap();
    }
    let results = dir.path().join("out");
    let out =
        gmmas().arg("analyze").arg(&case_dir).arg("--out").arg(&results).arg("--model").arg(&model).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("BraTS-GLI-00001-000_analysis.json")).unwrap()).unwrap();
    assert_eq!(report["missing_modalities"], serde_json::json!(["t1", "t2"]));
}

#[test]
fn analyze_names_the_problem_with_a_bad_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = gmmas().arg("analyze").arg(dir.path()).arg("--out").arg(dir.path().join("o")).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
}
