//! Our rigid co-registration against elastix on the same known motions of a real case: elastix
//! must find the truth within 1°/1 mm (the comparison is sound) and ours must agree with it.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use gmmas_imaging::register::{Rigid, difference, register_rigid};
use gmmas_imaging::resample::compose;
use gmmas_imaging::{Modality, write_volume};
use std::path::Path;
use std::process::Command;
use std::time::Instant;
mod common;

use common::case;

/// elastix parameters: Euler transform (rotations composed z·y·x like ours), Mattes mutual
/// information, three-level smoothing pyramid, adaptive stochastic gradient descent, fixed seed.
const PARAMETERS: &str = r#"(FixedInternalImagePixelType "float")
(MovingInternalImagePixelType "float")
(FixedImageDimension 3)
(MovingImageDimension 3)
(UseDirectionCosines "true")
(Registration "MultiResolutionRegistration")
(FixedImagePyramid "FixedSmoothingImagePyramid")
(MovingImagePyramid "MovingSmoothingImagePyramid")
(NumberOfResolutions 3)
(Interpolator "BSplineInterpolator")
(BSplineInterpolationOrder 1)
(Resampler "DefaultResampler")
(ResampleInterpolator "FinalBSplineInterpolator")
(FinalBSplineInterpolationOrder 3)
(Transform "EulerTransform")
(ComputeZYX "true")
(AutomaticScalesEstimation "true")
(AutomaticTransformInitialization "false")
(HowToCombineTransforms "Compose")
(Metric "AdvancedMattesMutualInformation")
(NumberOfHistogramBins 32)
(Optimizer "AdaptiveStochasticGradientDescent")
(AutomaticParameterEstimation "true")
(MaximumNumberOfIterations 600)
(ImageSampler "RandomCoordinate")
(NumberOfSpatialSamples 4096)
(NewSamplesEveryIteration "true")
(RandomSeed 20240607)
(WriteResultImage "false")
(ResultImagePixelType "float")
(DefaultPixelValue 0)
"#;

/// The numbers of one `(Name v1 v2 ...)` line of an elastix transform file.
fn numbers(text: &str, name: &str) -> Vec<f64> {
    let line = text
        .lines()
        .find(|l| {
            l.trim_start().strip_prefix('(').and_then(|r| r.strip_prefix(name)).is_some_and(|r| r.starts_with(' '))
        })
        .unwrap_or_else(|| panic!("no ({name} ...) in the transform file"));
    line.trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split_whitespace()
        .skip(1)
        .map(|w| w.parse().unwrap())
        .collect()
}

fn mul3(p: [[f64; 3]; 3], q: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut o = [[0.0; 3]; 3];
    for (i, row) in o.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|k| p[i][k] * q[k][j]).sum();
        }
    }
    o
}

/// elastix's Euler transform (LPS physical space, fixed point → moving point) as our [`Rigid`]
/// (RAS world, fixed → moving). With F = diag(-1, -1, 1) taking LPS to RAS, the RAS map is
/// x ↦ F·M·F (x − F·c) + F·c + F·t.
fn elastix_rigid(transform_file: &str) -> Rigid {
    let p = numbers(transform_file, "TransformParameters");
    let c = numbers(transform_file, "CenterOfRotationPoint");
    assert_eq!((p.len(), c.len()), (6, 3), "an Euler transform of 3-D images");
    let zyx = transform_file.contains("(ComputeZYX \"true\")");
    let (sa, ca) = p[0].sin_cos();
    let (sb, cb) = p[1].sin_cos();
    let (sc, cc) = p[2].sin_cos();
    let rx = [[1.0, 0.0, 0.0], [0.0, ca, -sa], [0.0, sa, ca]];
    let ry = [[cb, 0.0, sb], [0.0, 1.0, 0.0], [-sb, 0.0, cb]];
    let rz = [[cc, -sc, 0.0], [sc, cc, 0.0], [0.0, 0.0, 1.0]];
    // ITK's Euler3DTransform: Rz·Ry·Rx with ComputeZYX, else Rz·Rx·Ry.
    let m = if zyx { mul3(rz, mul3(ry, rx)) } else { mul3(rz, mul3(rx, ry)) };
    let f = [-1.0, -1.0, 1.0];
    let r: [[f64; 3]; 3] = std::array::from_fn(|i| std::array::from_fn(|j| f[i] * f[j] * m[i][j]));
    // Ours is Rz(γ)·Ry(β)·Rx(α): r[2][0] = −sin β, r[2][1] = cos β sin α, r[1][0] = sin γ cos β.
    let rotation = [r[2][1].atan2(r[2][2]), (-r[2][0]).clamp(-1.0, 1.0).asin(), r[1][0].atan2(r[0][0])];
    let rigid = Rigid {
        rotation,
        translation: [f[0] * p[3], f[1] * p[4], f[2] * p[5]],
        centre: [f[0] * c[0], f[1] * c[1], f[2] * c[2]],
    };
    let back = rigid.matrix();
    let err =
        (0..3).flat_map(|i| (0..3).map(move |j| (i, j))).map(|(i, j)| (back[i][j] - r[i][j]).abs()).fold(0.0, f64::max);
    assert!(err < 1e-9, "Euler angles do not rebuild elastix's rotation ({err})");
    rigid
}

/// Registers `moving` onto `fixed` with elastix (2 threads); its transform and the seconds it took.
fn run_elastix(dir: &Path, fixed: &[u8], moving: &[u8]) -> (Rigid, f64) {
    let (f, m, p, out) = (dir.join("fixed.nii.gz"), dir.join("moving.nii.gz"), dir.join("rigid.txt"), dir.join("out"));
    std::fs::write(&f, fixed).unwrap();
    std::fs::write(&m, moving).unwrap();
    std::fs::write(&p, PARAMETERS).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let t0 = Instant::now();
    let run = Command::new("elastix")
        .args(["-f".as_ref(), f.as_os_str(), "-m".as_ref(), m.as_os_str(), "-p".as_ref(), p.as_os_str()])
        .args(["-out".as_ref(), out.as_os_str(), "-threads".as_ref(), "2".as_ref()])
        .output()
        .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(out.join("elastix.log")).unwrap_or_default();
    assert!(
        run.status.success(),
        "elastix failed ({}): {}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr),
        &log[log.len().saturating_sub(3000)..]
    );
    let text = std::fs::read_to_string(out.join("TransformParameters.0.txt")).unwrap();
    (elastix_rigid(&text), secs)
}

#[test]
fn our_registration_agrees_with_elastix_on_known_motions() {
    let version = Command::new("elastix").arg("--version").output();
    let found = version.as_ref().is_ok_and(|o| o.status.success());
    assert!(
        found,
        "elastix is not installed or does not run ({version:?}): scripts/setup.sh installs Debian's elastix"
    );
    let version = String::from_utf8_lossy(&version.unwrap().stdout).trim().replace("elastix version:", "elastix");

    let vols = case();
    let fixed = &vols[Modality::T1ce.index()].1;
    let d = fixed.grid.dims;
    let centre = fixed.grid.world([(d[0] as f64 - 1.0) / 2.0, (d[1] as f64 - 1.0) / 2.0, (d[2] as f64 - 1.0) / 2.0]);
    let fixed_bytes = write_volume(fixed, true);
    let motions =
        [(Modality::Flair, [8.0, -4.0, 6.0], [5.0, -4.0, 3.0]), (Modality::T2, [-5.0, 9.0, -3.0], [-6.0, 2.0, 5.0])];
    let mut rows = Vec::new();
    for (m, deg, mm) in motions {
        let truth = Rigid { rotation: deg.map(|d: f64| d.to_radians()), translation: mm, centre };
        // The patient moved: the series' voxels are the same, its affine says where they now are.
        let mut moving = vols[m.index()].1.clone();
        moving.grid.affine = compose(&truth.affine(), &moving.grid.affine);

        let tmp = tempfile::tempdir().unwrap();
        let (ela, ela_s) = run_elastix(tmp.path(), &fixed_bytes, &write_volume(&moving, true));
        let t0 = Instant::now();
        let ours = register_rigid(fixed, &moving).unwrap().transform;
        let ours_s = t0.elapsed().as_secs_f64();

        let (ela_truth_deg, ela_truth_mm) = difference(&ela, &truth, &fixed.grid);
        let (ours_truth_deg, ours_truth_mm) = difference(&ours, &truth, &fixed.grid);
        let (ours_ela_deg, ours_ela_mm) = difference(&ours, &ela, &fixed.grid);
        println!(
            "{m}: moved {deg:?}° {mm:?} mm; elastix vs truth {ela_truth_deg:.3}° / {ela_truth_mm:.3} mm ({ela_s:.1} s); \
             ours vs truth {ours_truth_deg:.3}° / {ours_truth_mm:.3} mm ({ours_s:.1} s); \
             ours vs elastix {ours_ela_deg:.3}° / {ours_ela_mm:.3} mm (worst corner of the field of view)"
        );
        rows.push(serde_json::json!({
            "sequence": m.as_str(),
            "rotation_deg": deg,
            "translation_mm": mm,
            "elastix_vs_truth": {"angle_deg": ela_truth_deg, "worst_corner_mm": ela_truth_mm},
            "ours_vs_truth": {"angle_deg": ours_truth_deg, "worst_corner_mm": ours_truth_mm},
            "ours_vs_elastix": {"angle_deg": ours_ela_deg, "worst_corner_mm": ours_ela_mm},
            "elastix_s": ela_s,
            "ours_s": ours_s,
        }));
        // Checks the conversion of elastix's answer (a sign or axis error is off by centimetres);
        // on the small phantom elastix itself lands farther from the truth (1.1 mm measured).
        let sanity = if common::is_real() { 1.0 } else { 2.0 };
        assert!(
            ela_truth_deg < sanity && ela_truth_mm < sanity,
            "{m}: elastix off the truth by {ela_truth_deg:.3}° / {ela_truth_mm:.3} mm: the comparison itself is wrong"
        );
        assert!(
            ours_ela_deg < 1.0 && ours_ela_mm < 1.0,
            "{m}: ours off elastix by {ours_ela_deg:.3}° / {ours_ela_mm:.3} mm"
        );
    }

    if std::env::var("GMMAS_WRITE_RESULTS").is_ok_and(|v| v == "1") {
        write_results(&version, &rows);
    }
}

const COMMAND: &str =
    "GMMAS_WRITE_RESULTS=1 cargo test --release -p gmmas-dicom --test register_elastix -- --nocapture";

/// `models/results/registration/elastix.{md,json}`.
fn write_results(version: &str, rows: &[serde_json::Value]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/results/registration");
    let json = serde_json::json!({
        "command": format!("source scripts/env.sh && {COMMAND}"),
        "test": "dicom/tests/register_elastix.rs",
        "case": "Brats18_2013_11_1, FLAIR and T2 moved onto T1ce",
        "elastix": version,
        "elastix_parameters": PARAMETERS,
        "distance": "largest distance between where the two transforms send the corners of the T1ce field of view",
        "motions": rows,
    });
    std::fs::write(dir.join("elastix.json"), serde_json::to_string_pretty(&json).unwrap() + "\n").unwrap();
    let f = |v: &serde_json::Value, k: &str| {
        format!("{:.3}° / {:.3} mm", v[k]["angle_deg"].as_f64().unwrap(), v[k]["worst_corner_mm"].as_f64().unwrap())
    };
    let mut md = format!(
        "# Rigid co-registration compared with elastix\n\n\
         Command: `source scripts/env.sh && {COMMAND}`\n\
         (`dicom/tests/register_elastix.rs`; numbers also in `elastix.json`, with the elastix parameter file).\n\n\
         Case Brats18_2013_11_1: FLAIR and T2 given a known rigid motion (their affine) and registered onto the T1ce,\n\
         by {version} (Euler transform, Mattes mutual information, 3-level pyramid, adaptive stochastic gradient\n\
         descent, fixed seed, 2 threads) and by `gmmas_imaging::register::register_rigid`. Each error is the rotation\n\
         angle between two transforms and the largest distance between where they send the corners of the T1ce field of view.\n\n\
         | sequence | motion given | elastix vs truth | ours vs truth | ours vs elastix | elastix time | our time |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        let deg: Vec<String> = r["rotation_deg"].as_array().unwrap().iter().map(|v| format!("{}°", v)).collect();
        let mm: Vec<String> = r["translation_mm"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
        md += &format!(
            "| {} | {} / ({}) mm | {} | {} | {} | {:.1} s | {:.1} s |\n",
            r["sequence"].as_str().unwrap(),
            deg.join(", "),
            mm.join(", "),
            f(r, "elastix_vs_truth"),
            f(r, "ours_vs_truth"),
            f(r, "ours_vs_elastix"),
            r["elastix_s"].as_f64().unwrap(),
            r["ours_s"].as_f64().unwrap(),
        );
    }
    std::fs::write(dir.join("elastix.md"), md).unwrap();
}
