//! `gmmas to-dicom`, `gmmas dicom-info` and `gmmas analyze` on a DICOM study through the real
//! binary: the study's segmentation agrees with the NIfTI folder's, and comes back on each
//! series' own grid.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

mod common;

use common::{gmmas, ok, tiny_model};
use gmmas_imaging::{Limits, read_labels};

#[test]
fn analyze_takes_a_dicom_study_and_writes_results_in_native_space() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(&dir.path().join("tiny.safetensors"), 5);
    let data = dir.path().join("data");
    ok(gmmas()
        .args(["phantom", "--n", "1", "--seed", "8", "--dims", "48,56,40", "--out"])
        .arg(&data)
        .output()
        .unwrap());
    let case_dir = std::fs::read_dir(&data).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path();
    let name = case_dir.file_name().unwrap().to_string_lossy().to_string();

    // The study: T1 axial, T1ce sagittal, T2 coronal, FLAIR axial.
    let study = dir.path().join("study");
    let listed = ok(gmmas().arg("to-dicom").arg(&case_dir).arg("--out").arg(&study).output().unwrap());
    assert!(String::from_utf8_lossy(&listed.stdout).contains("t1ce (sagittal, 48 files)"));
    let info = ok(gmmas().arg("dicom-info").arg(&study).output().unwrap());
    let manifest: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(manifest["reference"], "t1ce");
    let seqs: Vec<&str> =
        manifest["series"].as_array().unwrap().iter().map(|s| s["sequence"].as_str().unwrap()).collect();
    assert_eq!(seqs, ["t1", "t1ce", "t2", "flair"]);
    let bad = gmmas().arg("dicom-info").arg(&study).args(["--series", "3=t9"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected t1, t1ce, t2, flair or ignore"));

    let from_nifti = dir.path().join("nifti-out");
    ok(gmmas()
        .arg("analyze")
        .arg(&case_dir)
        .arg("--out")
        .arg(&from_nifti)
        .arg("--model")
        .arg(&model)
        .output()
        .unwrap());
    let from_dicom = dir.path().join("dicom-out");
    ok(gmmas().arg("analyze").arg(&study).arg("--out").arg(&from_dicom).arg("--model").arg(&model).output().unwrap());

    let report_path = std::fs::read_dir(&from_dicom)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("_analysis.json"))
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let study_name = report["case"].as_str().unwrap();
    assert!(study_name.starts_with("study-"), "{study_name}");
    assert_eq!(report["dicom"]["series"].as_array().unwrap().len(), 4);
    for m in ["t1", "t1ce", "t2", "flair"] {
        assert_eq!(report["input_sha256"][m].as_str().unwrap().len(), 64, "{m}");
    }
    // Native space: the analysis grid is the T1ce's; the axial and coronal series get their own.
    let native = &report["native_space"];
    assert!(native.get("t1ce").is_none(), "{native}");
    let limits = Limits::default();
    let seg =
        read_labels(&std::fs::read(from_dicom.join(format!("{study_name}_seg.nii.gz"))).unwrap(), &limits).unwrap();
    let reference =
        read_labels(&std::fs::read(from_nifti.join(format!("{name}_seg.nii.gz"))).unwrap(), &limits).unwrap();
    for m in ["t1", "t2", "flair"] {
        let file = native[m]["segmentation"].as_str().unwrap();
        let on_native = read_labels(&std::fs::read(from_dicom.join(file)).unwrap(), &limits).unwrap();
        // Each native grid covers the same voxels as the NIfTI input: the labels agree there.
        let back = gmmas_imaging::resample::resample_labels(&on_native, &reference.grid).unwrap();
        let agree =
            back.data.iter().zip(&reference.data).filter(|(a, b)| a == b).count() as f64 / reference.data.len() as f64;
        assert!(agree > 0.999, "{m}: {agree}");
    }
    let back = gmmas_imaging::resample::resample_labels(&seg, &reference.grid).unwrap();
    let agree =
        back.data.iter().zip(&reference.data).filter(|(a, b)| a == b).count() as f64 / reference.data.len() as f64;
    assert!(agree > 0.999, "analysis grid: {agree}");

    // With MC-Dropout passes the uncertainty map also comes back on each native grid.
    let with_mc = dir.path().join("dicom-mc");
    ok(gmmas()
        .arg("analyze")
        .arg(&study)
        .arg("--out")
        .arg(&with_mc)
        .arg("--model")
        .arg(&model)
        .args(["--mc-passes", "2"])
        .output()
        .unwrap());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(with_mc.join(format!("{study_name}_analysis.json"))).unwrap()).unwrap();
    for m in ["t1", "t2", "flair"] {
        let file = report["native_space"][m]["uncertainty"].as_str().unwrap();
        let u = gmmas_imaging::read_volume(&std::fs::read(with_mc.join(file)).unwrap(), &limits).unwrap();
        assert_eq!(
            u.grid.dims,
            native[m]["dims"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect::<Vec<_>>()
                .as_slice()
        );
    }
}
