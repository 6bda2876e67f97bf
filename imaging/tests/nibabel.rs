//! GMMAS's NIfTI output read back by an independent reader (nibabel in the project's venv):
//! the shape, the affine of an oblique grid and every voxel must be what was written.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use std::path::PathBuf;
use std::process::Command;

use gmmas_imaging::{Grid, LabelVolume, Volume, write_labels, write_volume};

/// The venv's Python (scripts/env.sh sets VIRTUAL_ENV; scripts/setup.sh installs nibabel).
fn python() -> PathBuf {
    let venv = std::env::var_os("VIRTUAL_ENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/gmmas/venv")))
        .expect("VIRTUAL_ENV or HOME must be set to find the venv's Python");
    venv.join("bin/python")
}

/// Reads `path` with nibabel: shape, affine and the voxels in x-fastest order.
fn read_back(path: &std::path::Path) -> serde_json::Value {
    let code = r#"
import json, sys
import nibabel as nib
img = nib.load(sys.argv[1])
data = img.get_fdata()
print(json.dumps({"shape": list(img.shape), "affine": img.affine.tolist(),
                  "dtype": str(img.get_data_dtype()), "data": data.ravel(order="F").tolist()}))
"#;
    let out = Command::new(python()).arg("-c").arg(code).arg(path).output().expect("running the venv's python");
    assert!(out.status.success(), "nibabel failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A grid rotated 30 degrees about z with anisotropic spacing and an offset origin.
fn oblique_grid() -> Grid {
    let (s, c) = 30f64.to_radians().sin_cos();
    let sp = [0.9, 1.1, 2.5];
    let affine = [
        [c * sp[0], -s * sp[1], 0.0, -90.5],
        [s * sp[0], c * sp[1], 0.0, -120.25],
        [0.0, 0.0, sp[2], 60.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    Grid { dims: [7, 5, 4], pixdim: sp.map(|v| v as f32), affine }
}

fn assert_affine(got: &serde_json::Value, want: &[[f64; 4]; 4]) {
    for i in 0..4 {
        for j in 0..4 {
            let g = got[i][j].as_f64().unwrap();
            assert!((g - want[i][j]).abs() < 1e-4, "affine[{i}][{j}] = {g}, wrote {}", want[i][j]);
        }
    }
}

#[test]
fn nibabel_reads_volumes_and_labels_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let grid = oblique_grid();
    let n = grid.nvox();
    let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.25).collect();
    let vol = Volume::new(grid.clone(), values.clone()).unwrap();
    let labels: Vec<u8> = (0..n).map(|i| [0u8, 1, 2, 4][i % 4]).collect();
    let seg = LabelVolume::new(grid.clone(), labels.clone()).unwrap();
    for gzip in [true, false] {
        let ext = if gzip { "nii.gz" } else { "nii" };
        let vpath = dir.path().join(format!("v.{ext}"));
        std::fs::write(&vpath, write_volume(&vol, gzip)).unwrap();
        let v = read_back(&vpath);
        assert_eq!(v["shape"], serde_json::json!([7, 5, 4]));
        assert_eq!(v["dtype"], "float32");
        assert_affine(&v["affine"], &grid.affine);
        let data: Vec<f64> = v["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(data.len(), n);
        for (i, (g, w)) in data.iter().zip(&values).enumerate() {
            assert!((g - f64::from(*w)).abs() < 1e-6, "voxel {i}: {g} vs {w}");
        }

        let lpath = dir.path().join(format!("seg.{ext}"));
        std::fs::write(&lpath, write_labels(&seg, gzip)).unwrap();
        let l = read_back(&lpath);
        assert_eq!(l["shape"], serde_json::json!([7, 5, 4]));
        assert_eq!(l["dtype"], "uint8");
        assert_affine(&l["affine"], &grid.affine);
        let got: Vec<u8> = l["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as u8).collect();
        assert_eq!(got, labels);
    }
}
