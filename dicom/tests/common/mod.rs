//! What the DICOM tests share: the four sequences of a real BraTS case, or of a phantom when
//! `../shared/data` is not beside the checkout.
#![allow(clippy::unwrap_used, reason = "test code: a failed step fails the test")]

use gmmas_imaging::{Limits, Modality, Volume, nifti};
use std::path::{Path, PathBuf};

/// The real BraTS case's folder (`GMMAS_SHARED_DATA`, else `../shared/data` beside the checkout).
fn real_case_dir() -> PathBuf {
    let shared = std::env::var_os("GMMAS_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    shared.join("brats/Brats18_2013_11_1")
}

/// Whether [`case`] gives the real case (else a phantom).
#[allow(dead_code, reason = "not every test file that shares this module asks")]
pub fn is_real() -> bool {
    real_case_dir().is_dir()
}

/// Four sequences of a real BraTS case when `../shared/data` is here, else of a phantom.
pub fn case() -> Vec<(Modality, Volume)> {
    let dir = real_case_dir();
    if dir.is_dir() {
        return Modality::ALL
            .iter()
            .map(|m| {
                let p = dir.join(format!("Brats18_2013_11_1_{}.nii.gz", m.as_str()));
                let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                (*m, nifti::read_volume(&bytes, &Limits::default()).unwrap())
            })
            .collect();
    }
    eprintln!("{} absent: using a phantom", dir.display());
    gmmas_phantom::generate(&gmmas_phantom::PhantomConfig { dims: [96, 112, 80], seed: 7 }).volumes
}
