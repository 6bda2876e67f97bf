//! DICOM ingest against real files: synthetic series cut from a real case (or a phantom when the
//! shared data is absent) in four orientations, compared voxel by voxel with dcm2niix; studies
//! as folders and zips; the transfer syntaxes of pydicom's sample files; malformed input.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use gmmas_dicom::synth::{SynthSeries, series_affine, write_files, write_series};
use gmmas_dicom::{DicomError, Override, PlaneKind, RawFile, StudyOptions, convert_files, convert_path};
use gmmas_imaging::resample::{compose, invert_affine, resample_linear};
use gmmas_imaging::{Grid, Limits, Modality, Volume, nifti};
mod common;

use common::case;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dcm2niix() -> PathBuf {
    let venv = std::env::var_os("VIRTUAL_ENV").map(|v| PathBuf::from(v).join("bin/dcm2niix"));
    match venv.filter(|p| p.exists()) {
        Some(p) => p,
        None => panic!("dcm2niix not found in $VIRTUAL_ENV/bin: run scripts/setup.sh (it installs the PyPI dcm2niix)"),
    }
}

/// dcm2niix's NIfTI of the one series in `dir`.
fn reference(dir: &Path, out: &Path) -> Volume {
    std::fs::create_dir_all(out).unwrap();
    let st =
        Command::new(dcm2niix()).args(["-z", "n", "-b", "n", "-f", "ref", "-o"]).arg(out).arg(dir).output().unwrap();
    assert!(st.status.success(), "dcm2niix failed: {}", String::from_utf8_lossy(&st.stderr));
    let nii: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "nii"))
        .collect();
    assert_eq!(nii.len(), 1, "dcm2niix wrote {nii:?}: {}", String::from_utf8_lossy(&st.stdout));
    nifti::read_volume(&std::fs::read(&nii[0]).unwrap(), &Limits::default()).unwrap()
}

/// For every `step`-th voxel of `a`: the voxel of `b` at the same world position is a whole
/// voxel (within 0.01) and holds the same value (within `tol`). Returns the number compared.
fn same_world(a: &Volume, b: &Volume, step: usize, tol: f32) -> usize {
    assert_eq!(a.grid.nvox(), b.grid.nvox(), "voxel counts differ: {:?} vs {:?}", a.grid.dims, b.grid.dims);
    let m = compose(&invert_affine(&b.grid.affine).unwrap(), &a.grid.affine);
    let [nx, ny, _] = a.grid.dims;
    let mut n = 0;
    for i in (0..a.grid.nvox()).step_by(step) {
        let p = [(i % nx) as f64, ((i / nx) % ny) as f64, (i / (nx * ny)) as f64];
        let q: Vec<f64> = (0..3).map(|r| m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3]).collect();
        for (ax, v) in q.iter().enumerate() {
            assert!((v - v.round()).abs() < 0.01, "voxel {p:?} lands at {q:?} (axis {ax} not whole)");
        }
        let [bx, by, _] = b.grid.dims;
        let j = q[0].round() as usize + bx * (q[1].round() as usize + by * q[2].round() as usize);
        assert!((a.data[i] - b.data[j]).abs() <= tol, "voxel {p:?}: {} vs {}", a.data[i], b.data[j]);
        n += 1;
    }
    n
}

/// The voxels of `v` re-cut on a grid rotated by `deg` about its centre (a real oblique
/// acquisition of the same head, not a moved patient).
fn oblique(v: &Volume, deg: [f64; 3]) -> Volume {
    let mut g: Grid = v.grid.clone();
    g.affine = series_affine(v, deg);
    resample_linear(v, &g).unwrap()
}

/// Mean |a - b| / mean |b| over the central half of `b`'s grid (both on it).
fn relative_difference(a: &Volume, b: &Volume) -> f64 {
    let (mut err, mut sum) = (0f64, 0f64);
    let d = b.grid.dims;
    for z in d[2] / 4..3 * d[2] / 4 {
        for y in d[1] / 4..3 * d[1] / 4 {
            for x in d[0] / 4..3 * d[0] / 4 {
                let i = x + d[0] * (y + d[1] * z);
                err += f64::from((a.data[i] - b.data[i]).abs());
                sum += f64::from(b.data[i].abs());
            }
        }
    }
    err / sum.max(1e-9)
}

fn convert_dir(dir: &Path, opts: &StudyOptions) -> gmmas_dicom::Converted {
    convert_path(dir, opts).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn geometry_and_voxels_match_dcm2niix_in_four_orientations() {
    let vols = case();
    let t1 = &vols[0].1;
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("axial", 2, [0.0; 3], PlaneKind::Axial),
        ("coronal", 1, [0.0; 3], PlaneKind::Coronal),
        ("sagittal", 0, [0.0; 3], PlaneKind::Sagittal),
        ("oblique", 2, [14.0, -9.0, 6.0], PlaneKind::Oblique),
    ];
    for (name, axis, rot, plane) in cases {
        let mut s = SynthSeries::new(3, &format!("t1_se_{name}"), axis);
        s.rotate_deg = rot;
        s.implicit_vr = name == "coronal";
        let dir = tmp.path().join(name);
        write_files(&dir, &write_series(t1, &s).unwrap()).unwrap();
        let conv = convert_dir(&dir, &StudyOptions::default());
        let ours = &conv.volumes[0].1;
        assert_eq!(conv.volumes[0].0, Modality::T1);
        assert_eq!(conv.manifest.series[0].plane, Some(plane), "{name}");
        // Against dcm2niix: same world position, same value, for every 3rd voxel.
        let theirs = reference(&dir, &tmp.path().join(format!("{name}-ref")));
        let n = same_world(ours, &theirs, 3, 1e-3);
        // Against the volume the series was cut from (the series carries the rotated affine).
        let mut truth = t1.clone();
        truth.grid.affine = series_affine(t1, rot);
        same_world(ours, &truth, 3, 1e-3);
        println!("{name}: {n} voxels equal to dcm2niix's and to the source");
    }
}

#[test]
fn a_study_of_four_series_becomes_four_volumes_on_the_t1ce_grid() {
    let vols = case();
    let tmp = tempfile::tempdir().unwrap();
    let mut files: Vec<RawFile> = Vec::new();
    let specs = [
        (Modality::T1, 2, "t1_se_tra", None),
        (Modality::T1ce, 0, "T1 MPRAGE SAG", Some("GADOVIST")),
        (Modality::T2, 1, "t2_tse_cor", None),
        (Modality::Flair, 2, "AX FLAIR obl", None),
    ];
    for (i, (m, axis, desc, agent)) in specs.iter().enumerate() {
        let v = &vols[m.index()].1;
        let v = if *m == Modality::Flair { oblique(v, [10.0, 0.0, 0.0]) } else { v.clone() };
        let mut s = SynthSeries::new(i as i64 + 2, desc, *axis);
        s.contrast_agent = agent.map(String::from);
        if *m == Modality::T2 {
            s.rotate_deg = [7.0, 0.0, -5.0];
        }
        files.extend(write_series(&v, &s).unwrap());
    }
    // A localizer, a non-DICOM file and a DICOMDIR-like object without pixels ride along.
    let mut loc = SynthSeries::new(1, "localizer", 2);
    loc.study_uid = "2.25.99".into();
    let small = Volume::new(Grid::axis_aligned([8, 8, 3], [1.0; 3], [0.0; 3]), vec![1.0; 192]).unwrap();
    files.extend(write_series(&small, &loc).unwrap());
    files.push(RawFile { name: "README.txt".into(), bytes: b"exported by the PACS".to_vec() });
    write_files(&tmp.path().join("study"), &files).unwrap();

    let conv = convert_dir(&tmp.path().join("study"), &StudyOptions::default());
    let got: Vec<Modality> = conv.volumes.iter().map(|(m, _)| *m).collect();
    assert_eq!(got, Modality::ALL.to_vec());
    assert_eq!(conv.manifest.reference, Modality::T1ce);
    assert_eq!(conv.manifest.skipped.len(), 1, "{:?}", conv.manifest.skipped);
    let t1ce_grid = &conv.native[1].grid;
    for (m, v) in &conv.volumes {
        assert!(gmmas_imaging::same_grid(&v.grid, t1ce_grid).is_ok(), "{m} is not on the T1ce grid");
    }
    for a in &conv.manifest.alignment {
        println!("alignment: {a:?}");
    }
    // The T1 was cut from the same grid as the T1ce: resampling lands on whole voxels, so the
    // values are the source's exactly.
    same_world(&conv.volumes[0].1, &vols[Modality::T1.index()].1, 5, 1e-3);
    // The patient moved before the T2 (7° / -5° about the head's centre): co-registration finds
    // the motion and undoes it; the series without motion are left as they are.
    let align: Vec<_> = conv.manifest.alignment.iter().map(|a| (a.sequence, a.applied)).collect();
    assert_eq!(
        align,
        vec![(Modality::T1, false), (Modality::T2, true), (Modality::Flair, false)],
        "{:?}",
        conv.manifest.alignment
    );
    let t2 = conv.manifest.alignment.iter().find(|a| a.sequence == Modality::T2).unwrap();
    let found = t2.rotation_deg;
    assert!((found[0] - 7.0).abs() < 0.5 && found[1].abs() < 0.5 && (found[2] + 5.0).abs() < 0.5, "{t2:?}");
    let t2_source = &vols[Modality::T2.index()].1;
    let t2_back = resample_linear(&conv.volumes[2].1, &t2_source.grid).unwrap();
    let rel = relative_difference(&t2_back, t2_source);
    println!("moved T2 after co-registration: mean relative difference {rel:.4}");
    assert!(rel < 0.05, "moved T2 differs by {rel:.3} from its source after co-registration");
    // The oblique FLAIR went through two interpolations: close to the source inside the head.
    let flair = &conv.volumes[3].1;
    let src = &vols[Modality::Flair.index()].1;
    let back = resample_linear(flair, &src.grid).unwrap();
    let rel = relative_difference(&back, src);
    println!("oblique FLAIR: mean relative difference {rel:.4}");
    assert!(rel < 0.05, "oblique FLAIR differs by {rel:.3} from its source");
    // No patient identifier in the record kept with the case.
    let json = serde_json::to_string(&conv.manifest).unwrap();
    assert!(!json.contains("DOE") && !json.contains("JANE"), "{json}");
    assert!(json.contains("GADOVIST") || json.contains("ContrastBolusAgent"), "{json}");

    // The same study as a zip archive, with an override that swaps T1 and T2.
    let zip_path = tmp.path().join("study.zip");
    {
        let mut w = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        for f in &files {
            w.start_file(format!("export/{}", f.name), zip::write::SimpleFileOptions::default()).unwrap();
            std::io::Write::write_all(&mut w, &f.bytes).unwrap();
        }
        w.finish().unwrap();
    }
    let opts = StudyOptions {
        overrides: vec!["2=t2".parse().unwrap(), "4=t1".parse().unwrap(), "5=ignore".parse().unwrap()],
        ..StudyOptions::default()
    };
    let conv = convert_path(&zip_path, &opts).unwrap();
    let got: Vec<Modality> = conv.volumes.iter().map(|(m, _)| *m).collect();
    assert_eq!(got, vec![Modality::T1, Modality::T1ce, Modality::T2]);
    assert!(conv.manifest.series.iter().any(|s| s.number == Some(2) && s.sequence == Some(Modality::T2) && s.used));
}

#[test]
fn transfer_syntaxes_decode_to_the_same_pixels() {
    let venv = PathBuf::from(std::env::var_os("VIRTUAL_ENV").expect("VIRTUAL_ENV: run through scripts/env.sh"));
    let dir = std::fs::read_dir(venv.join("lib"))
        .unwrap()
        .map(|e| e.unwrap().path().join("site-packages/pydicom/data/test_files"))
        .find(|p| p.is_dir())
        .expect("pydicom's sample files: run scripts/setup.sh (it installs pydicom in the venv)");
    let read = |name: &str| RawFile { name: name.into(), bytes: std::fs::read(dir.join(name)).unwrap() };
    let (rows, cols, reference) = gmmas_dicom::series::decode_single(&read("MR_small.dcm")).unwrap();
    assert_eq!((rows, cols), (64, 64));
    for name in ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"] {
        let (_, _, px) = gmmas_dicom::series::decode_single(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(px, reference, "{name}");
    }
    // JPEG-LS is not built in: the error names the file and the transfer syntax.
    let err = gmmas_dicom::series::decode_single(&read("MR_small_jpeg_ls_lossless.dcm")).unwrap_err().to_string();
    assert!(err.contains("MR_small_jpeg_ls_lossless.dcm") && err.contains("JPEG-LS"), "{err}");
}

/// A series compressed file by file with a dcmtk tool (`dcmcjpeg +e1`, `dcmcrle`, ...) reads back
/// to the same volume as the uncompressed series.
#[test]
fn compressed_series_read_back_to_the_same_volume() {
    let vols = gmmas_phantom::generate(&gmmas_phantom::PhantomConfig { dims: [40, 48, 12], seed: 3 }).volumes;
    let v = &vols[1].1;
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    write_files(&plain, &write_series(v, &SynthSeries::new(5, "t1_post_gd", 2)).unwrap()).unwrap();
    let reference = convert_dir(&plain, &StudyOptions::default());
    assert!(reference.volumes[0].1.data.iter().any(|x| *x != 0.0));
    let compressed = |tool: &str, args: &[&str], name: &str| {
        let out = tmp.path().join(name);
        for entry in std::fs::read_dir(plain.join("s005")).unwrap() {
            let src = entry.unwrap().path();
            let dst = out.join("s005").join(src.file_name().unwrap());
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            let st = Command::new(tool)
                .args(args)
                .arg(&src)
                .arg(&dst)
                .output()
                .unwrap_or_else(|e| panic!("{tool}: {e} (scripts/setup.sh installs dcmtk)"));
            assert!(st.status.success(), "{tool}: {}", String::from_utf8_lossy(&st.stderr));
        }
        out
    };
    for (tool, args, name, syntax) in [
        ("dcmcjpeg", &["+e1"][..], "jpeg-sv1", "1.2.840.10008.1.2.4.70"),
        ("dcmcjpeg", &["+el"][..], "jpeg-lossless", "1.2.840.10008.1.2.4.57"),
        ("dcmcrle", &[][..], "rle", "1.2.840.10008.1.2.5"),
    ] {
        let dir = compressed(tool, args, name);
        let conv = convert_dir(&dir, &StudyOptions::default());
        assert_eq!(conv.manifest.series[0].transfer_syntax, syntax, "{name}");
        assert_eq!(conv.volumes[0].1.data, reference.volumes[0].1.data, "{name}");
        assert_eq!(conv.volumes[0].1.grid, reference.volumes[0].1.grid, "{name}");
    }
    // JPEG-LS is not built in: refused with the file and the transfer syntax named.
    let dir = compressed("dcmcjpls", &[], "jpeg-ls");
    let e = convert_path(&dir, &StudyOptions::default()).err().expect("JPEG-LS must be refused").to_string();
    assert!(e.contains("s005/") && e.contains("JPEG-LS"), "{e}");
}

#[test]
fn malformed_studies_get_errors_that_name_the_problem() {
    let v = Volume::new(
        Grid::axis_aligned([16, 12, 6], [1.0; 3], [0.0; 3]),
        (0..16 * 12 * 6).map(|i| (i % 97) as f32).collect(),
    )
    .unwrap();
    let series = |n: i64, desc: &str| write_series(&v, &SynthSeries::new(n, desc, 2)).unwrap();
    let err =
        |files: Vec<RawFile>| convert_files(files, &StudyOptions::default()).err().expect("must fail").to_string();

    // Truncated file.
    let mut files = series(3, "t1_se_tra");
    let n = files[2].bytes.len();
    files[2].bytes.truncate(n / 2);
    let e = err(files);
    assert!(e.contains("s003/im0004.dcm"), "{e}");

    // Missing geometry: ImagePositionPatient removed from one file.
    let mut files = series(3, "t1_se_tra");
    gmmas_dicom::synth::remove_tag(&mut files[1], gmmas_dicom::tags::IMAGE_POSITION_PATIENT).unwrap();
    let e = err(files);
    assert!(e.contains("ImagePositionPatient") && e.contains("s003/"), "{e}");

    // Mixed series: the same SeriesInstanceUID on images of two sizes.
    let other = Volume::new(Grid::axis_aligned([10, 12, 6], [1.0; 3], [0.0; 3]), vec![1.0; 720]).unwrap();
    let mut files = series(3, "t1_se_tra");
    let mut s = SynthSeries::new(3, "t1_se_tra", 2);
    s.reverse_files = false;
    let mut extra = write_series(&other, &s).unwrap();
    for f in &mut extra {
        f.name = format!("extra/{}", f.name);
    }
    files.extend(extra);
    let e = err(files);
    assert!(e.contains("series 3 \"t1_se_tra\"") && e.contains("mixes"), "{e}");

    // Wrong modality: a CT series only.
    let mut files = series(3, "HEAD CT");
    for f in &mut files {
        gmmas_dicom::synth::set_text(f, gmmas_dicom::tags::MODALITY, gmmas_dicom::VR::CS, "CT").unwrap();
    }
    let e = err(files);
    assert!(e.contains("no series was identified") && e.contains("not MR"), "{e}");

    // Nothing that is DICOM.
    let e = err(vec![RawFile { name: "notes.txt".into(), bytes: b"hello".to_vec() }]);
    assert!(e.contains("none of the 1 file"), "{e}");

    // An override naming a series that is not there.
    let opts = StudyOptions {
        overrides: vec![Override { series: 42, sequence: Some(Modality::T1) }],
        ..StudyOptions::default()
    };
    let e = convert_files(series(3, "t1_se_tra"), &opts).err().unwrap().to_string();
    assert!(e.contains("series 42") && e.contains("not in the study"), "{e}");
    assert!(matches!(convert_files(series(3, "ADC"), &StudyOptions::default()), Err(DicomError::Study(_))));
}
