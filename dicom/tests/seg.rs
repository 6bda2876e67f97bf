//! DICOM SEG export checked by other software: SEGs written from synthetic series cut from a real
//! case (axial and oblique) must pass dicom3tools' dciodvfy without errors, and highdicom and
//! dcmqi must read back exactly the label map they were written from (dicom/tests/seg_read.py).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use gmmas_dicom::seg::{SegSource, write_seg};
use gmmas_dicom::series::group;
use gmmas_dicom::synth::{SynthSeries, write_files, write_series};
use gmmas_dicom::{DicomError, RawFile};
use gmmas_imaging::{LabelVolume, Limits, Modality, Volume, brats, write_labels};
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The case's T1ce and expert segmentation (the phantom's when the real case is absent).
fn case_with_labels() -> (Volume, LabelVolume) {
    let shared = std::env::var_os("GMMAS_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let seg = shared.join("brats/Brats18_2013_11_1/Brats18_2013_11_1_seg.nii.gz");
    let t1ce = common::case().into_iter().find(|(m, _)| *m == Modality::T1ce).unwrap().1;
    if seg.is_file() {
        return (t1ce, brats::read_seg_brats(&std::fs::read(&seg).unwrap(), &Limits::default()).unwrap());
    }
    let phantom = gmmas_phantom::generate(&gmmas_phantom::PhantomConfig { dims: [96, 112, 80], seed: 7 });
    (t1ce, phantom.seg)
}

/// The labels cut as the image series is (same plane and rotation), read back on its grid.
fn labels_on_series(labels: &LabelVolume, s: &SynthSeries) -> LabelVolume {
    let as_volume = Volume::new(labels.grid.clone(), labels.data.iter().map(|&v| f32::from(v)).collect()).unwrap();
    let (series, _) = group(write_series(&as_volume, s).unwrap()).unwrap();
    let v = series[0].volume().unwrap();
    LabelVolume::new(v.grid, v.data.iter().map(|&x| x as u8).collect()).unwrap()
}

fn venv_bin(name: &str) -> PathBuf {
    let p = std::env::var_os("VIRTUAL_ENV").map(|v| PathBuf::from(v).join("bin").join(name));
    match p.filter(|p| p.exists()) {
        Some(p) => p,
        None => panic!("{name} not found in $VIRTUAL_ENV/bin: install highdicom and dcmqi there (scripts/setup.sh)"),
    }
}

/// dciodvfy's (errors, warnings) on `file`, printing what it said.
fn dciodvfy(file: &Path) -> (usize, usize) {
    let out = Command::new("dciodvfy").arg(file).output().unwrap_or_else(|e| {
        panic!("dciodvfy could not be run ({e}): install dicom3tools (apt-get install dicom3tools)")
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("dciodvfy {}:\n{text}", file.display());
    let count = |p: &str| text.lines().filter(|l| l.starts_with(p)).count();
    (count("Error"), count("Warning"))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Writes the series and its SEG, then has dciodvfy, highdicom and dcmqi check them.
fn round_trip(name: &str, s: SynthSeries) {
    let (image, labels) = case_with_labels();
    let tmp = tempfile::tempdir().unwrap();
    let series_dir = tmp.path().join("series");
    let files = write_series(&image, &s).unwrap();
    write_files(&series_dir, &files).unwrap();
    let source = SegSource::from_files(files).unwrap();
    let on_series = labels_on_series(&labels, &s);
    assert!(on_series.data.contains(&4), "{name}: the case has enhancing tumour");
    let seg = write(tmp.path(), "seg.dcm", &write_seg(&source, &on_series, "gmmas-test 0.1").unwrap());
    let nifti = write(tmp.path(), "labels.nii.gz", &write_labels(&on_series, true));

    let (errors, warnings) = dciodvfy(&seg);
    assert_eq!(errors, 0, "{name}: dciodvfy reported errors");
    eprintln!("{name}: dciodvfy: {errors} errors, {warnings} warnings");

    let out = Command::new(venv_bin("python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/seg_read.py"))
        .args(["--seg".as_ref(), seg.as_os_str(), "--source".as_ref(), series_dir.as_os_str()])
        .args(["--labels".as_ref(), nifti.as_os_str(), "--dcmqi".as_ref(), tmp.path().join("dcmqi").as_os_str()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{name}: seg_read.py failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{name}: {stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let tumour = on_series.data.iter().filter(|&&v| v != 0).count() as u64;
    assert_eq!(report["highdicom_mismatches"], 0, "{name}");
    assert_eq!(report["tumour_voxels"], tumour, "{name}");
    assert_eq!(report["dcmqi_voxels"], tumour, "{name}: dcmqi read every tumour voxel back");
    assert_eq!(report["segments"], serde_json::json!([1, 2, 4]), "{name}");
}

#[test]
fn axial_seg_passes_dciodvfy_and_reads_back_exactly() {
    round_trip("axial", SynthSeries::new(5, "t1_mprage_post_gd", 2));
}

#[test]
fn oblique_seg_passes_dciodvfy_and_reads_back_exactly() {
    let mut s = SynthSeries::new(6, "t1_mprage_post_gd_obl", 2);
    s.rotate_deg = [14.0, -9.0, 6.0];
    round_trip("oblique", s);
}

#[test]
fn sagittal_seg_passes_dciodvfy_and_reads_back_exactly() {
    let mut s = SynthSeries::new(7, "t1_mprage_post_gd_sag", 0);
    s.implicit_vr = true;
    round_trip("sagittal", s);
}

#[test]
fn a_label_map_on_another_grid_is_refused() {
    let (image, labels) = case_with_labels();
    let mut oblique = SynthSeries::new(6, "t1_obl", 2);
    oblique.rotate_deg = [14.0, -9.0, 6.0];
    let source = SegSource::from_files(write_series(&image, &oblique).unwrap()).unwrap();
    // The labels on the axial grid of the same case: same voxel count, other geometry.
    let err = write_seg(&source, &labels, "m").unwrap_err();
    assert!(matches!(err, DicomError::SegGrid { .. }), "{err}");
    assert!(err.to_string().contains("t1_obl"), "names the series: {err}");
    let none: Vec<RawFile> = Vec::new();
    assert!(SegSource::from_files(none).is_err());
}
