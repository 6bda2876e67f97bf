//! End-to-end: a DICOM study (zip) uploaded to the running system is analysed like the same
//! case uploaded as NIfTI; a real case inside a head with its skull is skull-stripped and
//! analysed like its stripped original; a malformed study is refused whole; with skull stripping
//! off, unstripped input fails with a reason.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use std::time::Duration;

use gmmas_dicom::synth::{SynthSeries, write_series};
use gmmas_e2e::{System, phantom_files};
use gmmas_imaging::{LabelVolume, Limits, Modality};

const TENANT: &str = "hospital-d";
const DIMS: [usize; 3] = [64, 64, 48];

/// The phantom's four sequences as a zip of four DICOM series in three planes.
fn study_zip(case: &gmmas_phantom::PhantomCase) -> Vec<u8> {
    let specs = [
        (Modality::T1, 2, "t1_se_tra"),
        (Modality::T1ce, 0, "t1_mprage_sag_post_gd"),
        (Modality::T2, 1, "t2_tse_cor"),
        (Modality::Flair, 2, "t2_tirm_tra_dark-fluid"),
    ];
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (i, (m, axis, desc)) in specs.iter().enumerate() {
        let v = &case.volumes.iter().find(|(x, _)| x == m).unwrap().1;
        for f in write_series(v, &SynthSeries::new(i as i64 + 2, desc, *axis)).unwrap() {
            w.start_file(f.name, zip::write::SimpleFileOptions::default()).unwrap();
            std::io::Write::write_all(&mut w, &f.bytes).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

async fn download_seg(sys: &System, view: &serde_json::Value) -> LabelVolume {
    let url = view["analysis"]["segmentation_url"].as_str().unwrap();
    let bytes = sys.request(reqwest::Method::GET, url).send().await.unwrap().bytes().await.unwrap();
    gmmas_imaging::read_labels(&bytes, &Limits::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dicom_study_is_analysed_like_the_same_case_in_nifti() {
    let sys = System::start(&[]).await.unwrap();
    let (case, nifti) = phantom_files(11, DIMS);

    let (status, created) = sys.upload(TENANT, "as-nifti", nifti).await.unwrap();
    assert_eq!(status, 201, "{created}");
    let nifti_view =
        sys.wait_case(TENANT, created["case_id"].as_str().unwrap(), Duration::from_secs(120)).await.unwrap();
    assert_eq!(nifti_view["status"], "done", "{nifti_view}");

    let (status, created) = sys.upload(TENANT, "as-dicom", vec![("study", study_zip(&case))]).await.unwrap();
    assert_eq!(status, 201, "{created}");
    let notes: Vec<&str> = created["notes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert!(notes.iter().any(|n| n.contains("series 3 \"t1_mprage_sag_post_gd\": t1ce")), "{notes:?}");
    assert_eq!(created["modalities"].as_array().unwrap().len(), 4, "{created}");
    let dicom_view =
        sys.wait_case(TENANT, created["case_id"].as_str().unwrap(), Duration::from_secs(120)).await.unwrap();
    assert_eq!(dicom_view["status"], "done", "{dicom_view}");

    // The DICOM case is on the sagittal T1ce grid: brought back onto the NIfTI grid through world
    // coordinates, its labels agree with the NIfTI path's.
    let a = download_seg(&sys, &nifti_view).await;
    let b = download_seg(&sys, &dicom_view).await;
    assert_ne!(a.grid.affine, b.grid.affine, "the DICOM case should be on its own (sagittal) grid");
    let b_on_a = gmmas_imaging::resample::resample_labels(&b, &a.grid).unwrap();
    let same = a.data.iter().zip(&b_on_a.data).filter(|(x, y)| x == y).count();
    let agree = same as f64 / a.data.len() as f64;
    let (inter, sa, sb) = a.data.iter().zip(&b_on_a.data).fold((0, 0, 0), |(i, p, q), (x, y)| {
        (i + usize::from(*x > 0 && *y > 0), p + usize::from(*x > 0), q + usize::from(*y > 0))
    });
    let dice = if sa + sb == 0 { 1.0 } else { 2.0 * inter as f64 / (sa + sb) as f64 };
    println!("DICOM vs NIfTI path: {agree:.5} of voxels agree, whole-tumour Dice {dice:.4} ({sa} / {sb} voxels)");
    assert!(agree > 0.999, "only {agree} of voxels agree");
    assert!(dice >= 0.98, "whole-tumour Dice {dice}");

    // Results on each series' own grid: the coronal T2's, brought back through world
    // coordinates, agree with the case's.
    assert!(nifti_view["native_space"].as_array().unwrap().is_empty(), "{nifti_view}");
    let native = dicom_view["native_space"].as_array().unwrap();
    assert_eq!(native.len(), 4, "{dicom_view}");
    let t2 = native.iter().find(|n| n["sequence"] == "t2").unwrap();
    let url = t2["segmentation_url"].as_str().unwrap();
    let resp = sys.request(reqwest::Method::GET, url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let on_t2 = gmmas_imaging::read_labels(&resp.bytes().await.unwrap(), &Limits::default()).unwrap();
    let dims: Vec<u64> = t2["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
    assert_eq!(on_t2.grid.dims.map(|d| d as u64).to_vec(), dims);
    assert_ne!(on_t2.grid.affine, b.grid.affine, "the T2 series is coronal, the case sagittal");
    let back = gmmas_imaging::resample::resample_labels(&on_t2, &a.grid).unwrap();
    let same = a.data.iter().zip(&back.data).filter(|(x, y)| x == y).count() as f64 / a.data.len() as f64;
    assert!(same > 0.99, "only {same} of voxels agree through the T2 grid");
    let bad = sys.request(reqwest::Method::GET, &url.replace("/t2/", "/dwi/")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let none = nifti_view["case_id"].as_str().unwrap();
    let resp = sys
        .request(reqwest::Method::GET, &format!("/api/v1/tenants/{TENANT}/cases/{none}/native/t2/segmentation"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "a NIfTI case has no native space");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_study_is_refused_whole_and_unstripped_input_fails_with_a_reason() {
    let sys = System::start(&[("GMMAS_SKULL_STRIP", "never")]).await.unwrap();
    let (case, _) = phantom_files(12, DIMS);

    // Not a zip.
    let (status, body) = sys.upload(TENANT, "bad-zip", vec![("study", b"DICM but not a zip".to_vec())]).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("zip archive"), "{body}");

    // A study whose only series lost its slice positions in one file.
    let mut files = write_series(&case.volumes[1].1, &SynthSeries::new(4, "t1_post_gd", 2)).unwrap();
    gmmas_dicom::synth::remove_tag(&mut files[3], gmmas_dicom::tags::IMAGE_POSITION_PATIENT).unwrap();
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for f in &files {
        w.start_file(f.name.clone(), zip::write::SimpleFileOptions::default()).unwrap();
        std::io::Write::write_all(&mut w, &f.bytes).unwrap();
    }
    let zip = w.finish().unwrap().into_inner();
    let (status, body) = sys.upload(TENANT, "bad-geometry", vec![("study", zip)]).await.unwrap();
    assert_eq!(status, 400, "{body}");
    let e = body["error"].as_str().unwrap();
    assert!(e.contains("ImagePositionPatient") && e.contains("series 4"), "{body}");

    // An unmasked head: noise in the background of every sequence.
    let mut noisy = case.clone();
    for (_, v) in &mut noisy.volumes {
        for (i, x) in v.data.iter_mut().enumerate() {
            *x += 1.0 + (i % 5) as f32;
        }
    }
    let files = noisy.volumes.iter().map(|(m, v)| (m.as_str(), gmmas_imaging::write_volume(v, true))).collect();
    let (status, body) = sys.upload(TENANT, "unstripped", files).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let failed = sys.wait_case(TENANT, body["case_id"].as_str().unwrap(), Duration::from_secs(60)).await.unwrap();
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error_stage"], "preprocess");
    assert!(failed["error"].as_str().unwrap().contains("skull-stripped"), "{failed}");

    // Only the unstripped case was recorded; nothing of the refused studies.
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM cases").fetch_one(&sys.db).await.unwrap();
    assert_eq!(n, 1);
    sys.shutdown().await;
}

/// Dice of the whole tumour (labels > 0) of two label maps on one grid.
fn whole_tumour_dice(a: &LabelVolume, b: &LabelVolume) -> f64 {
    let (inter, sa, sb) = a.data.iter().zip(&b.data).fold((0, 0, 0), |(i, p, q), (x, y)| {
        (i + usize::from(*x > 0 && *y > 0), p + usize::from(*x > 0), q + usize::from(*y > 0))
    });
    if sa + sb == 0 { 1.0 } else { 2.0 * inter as f64 / (sa + sb) as f64 }
}

/// A real BraTS case put back inside the MNI152 head (fetched by scripts/setup.sh), uploaded as
/// an axial DICOM study: preprocess strips the skull, stores the brain mask, and the segmentation
/// matches the stripped original's uploaded as NIfTI (bundled model).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_case_with_its_skull_is_stripped_and_analysed_like_the_stripped_original() {
    let (name, original) = gmmas_e2e::real_case_or_phantom();
    let limits = Limits::default();
    let read = |p: std::path::PathBuf| {
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", p.display()))
    };
    let cache = std::env::var_os("GMMAS_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/gmmas"));
    let head = gmmas_imaging::read_volume(&read(cache.join("brain/MNI152_T1.nii.gz")), &limits).unwrap();
    let head_mask = gmmas_imaging::read_labels(&read(cache.join("brain/MNI152_mask.nii.gz")), &limits).unwrap();
    let headed = gmmas_phantom::skull::embed_in_head(&original, &head, &head_mask, 3).unwrap();

    let bundled = gmmas_models::default_model_path();
    let sys = System::start(&[("GMMAS_MODEL_PATH", bundled.to_str().unwrap())]).await.unwrap();
    let nifti = original.iter().map(|(m, v)| (m.as_str(), gmmas_imaging::write_volume(v, true))).collect();
    let (status, created) = sys.upload(TENANT, "stripped", nifti).await.unwrap();
    assert_eq!(status, 201, "{created}");
    let stripped_view =
        sys.wait_case(TENANT, created["case_id"].as_str().unwrap(), Duration::from_secs(300)).await.unwrap();
    assert_eq!(stripped_view["status"], "done", "{stripped_view}");
    assert_eq!(stripped_view["analysis"]["skull_strip"], "none (already skull-stripped)");
    assert!(stripped_view["analysis"]["brain_mask_url"].is_null());

    let names = ["t1_se_tra", "t1_se_tra_post_gd", "t2_tse_tra", "t2_tirm_tra_dark-fluid"];
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (i, (_, v)) in headed.iter().enumerate() {
        for f in write_series(v, &SynthSeries::new(i as i64 + 2, names[i], 2)).unwrap() {
            w.start_file(f.name, zip::write::SimpleFileOptions::default()).unwrap();
            std::io::Write::write_all(&mut w, &f.bytes).unwrap();
        }
    }
    let form = vec![("study", w.finish().unwrap().into_inner())];
    let (status, created) = sys.upload(TENANT, "headed", form).await.unwrap();
    assert_eq!(status, 201, "{created}");
    let headed_view =
        sys.wait_case(TENANT, created["case_id"].as_str().unwrap(), Duration::from_secs(420)).await.unwrap();
    assert_eq!(headed_view["status"], "done", "{headed_view}");
    let method = headed_view["analysis"]["skull_strip"].as_str().unwrap();
    assert!(method.starts_with("hd-bet-fold0@") || method == "classical", "{headed_view}");

    // The brain mask is stored with the case and covers the original's brain.
    let url = headed_view["analysis"]["brain_mask_url"].as_str().unwrap();
    let bytes = sys.request(reqwest::Method::GET, url).send().await.unwrap().bytes().await.unwrap();
    let mask = gmmas_imaging::read_labels(&bytes, &limits).unwrap();
    let brain: Vec<bool> = (0..mask.data.len()).map(|i| original.iter().any(|(_, v)| v.data[i] != 0.0)).collect();
    let got: Vec<bool> = mask.data.iter().map(|&m| m != 0).collect();
    let mask_dice = gmmas_imaging::brainmask::dice(&got, &brain);

    let a = download_seg(&sys, &stripped_view).await;
    let b = download_seg(&sys, &headed_view).await;
    let dice = whole_tumour_dice(&a, &gmmas_imaging::resample::resample_labels(&b, &a.grid).unwrap());
    println!(
        "{name} inside a head as a DICOM study ({method}): brain mask Dice {mask_dice:.4}, whole-tumour Dice {dice:.4} against the stripped original"
    );
    assert!(mask_dice >= 0.95, "brain mask Dice {mask_dice}");
    // The bar is for the real case (measured 0.984); a phantom's synthetic contrasts leave the
    // model less certain at the tumour's rim (measured 0.968), so without the shared data the
    // path is checked with a lower one.
    let bar = if name.starts_with("phantom") { 0.95 } else { 0.98 };
    assert!(dice >= bar, "whole-tumour Dice {dice} < {bar}");
    sys.shutdown().await;
}
