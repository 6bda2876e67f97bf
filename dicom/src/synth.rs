//! Synthetic DICOM series cut from a volume in a chosen plane (axial, coronal, sagittal, or
//! oblique by rotating the patient): what the tests and the example study are made of.

use crate::error::DicomError;
use crate::source::RawFile;
use dicom_core::value::{C, PrimitiveValue};
use dicom_core::{DataElement, VR, dicom_value};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use gmmas_imaging::Volume;
use gmmas_imaging::resample::compose;

/// How to cut and label a synthetic series.
#[derive(Clone, Debug)]
pub struct SynthSeries {
    /// Voxel axis of the volume the slices are stacked along (0, 1 or 2); the other two become
    /// columns (lower axis) and rows.
    pub slice_axis: usize,
    /// Rotation of the patient about the volume's centre, degrees about the world x, y, z axes
    /// (applied in that order): non-zero makes an oblique series of the same voxels.
    pub rotate_deg: [f64; 3],
    pub series_number: i64,
    pub description: String,
    /// Explicit or implicit VR little endian.
    pub implicit_vr: bool,
    /// StudyInstanceUID shared by the series of one study.
    pub study_uid: String,
    /// Text written into PatientName and PatientID, to check that none of it travels further.
    pub patient: String,
    /// Return the files last slice first (file order must not be trusted as slice order).
    pub reverse_files: bool,
    /// ContrastBolusAgent, when contrast was given.
    pub contrast_agent: Option<String>,
}

impl SynthSeries {
    /// An explicit-VR series along voxel axis `slice_axis` with no rotation.
    pub fn new(series_number: i64, description: &str, slice_axis: usize) -> SynthSeries {
        SynthSeries {
            slice_axis,
            rotate_deg: [0.0; 3],
            series_number,
            description: description.into(),
            implicit_vr: false,
            study_uid: "2.25.1234567890123456789".into(),
            patient: "DOE^JANE".into(),
            reverse_files: true,
            contrast_agent: None,
        }
    }
}

/// A decimal string of at most 16 characters (the DS limit).
pub(crate) fn ds(x: f64) -> String {
    let x = if x.abs() < 5e-7 { 0.0 } else { x };
    for prec in (0..=6).rev() {
        let s = format!("{x:.prec$}");
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{x:.0}")
}

fn ds_multi(v: &[f64]) -> PrimitiveValue {
    PrimitiveValue::Strs(v.iter().map(|x| ds(*x)).collect())
}

/// Rotation matrix (world) for angles about x, then y, then z (degrees), as an affine about `centre`.
pub fn rotation_about(deg: [f64; 3], centre: [f64; 3]) -> [[f64; 4]; 4] {
    let (a, b, c) = (deg[0].to_radians(), deg[1].to_radians(), deg[2].to_radians());
    let rx = [[1.0, 0.0, 0.0], [0.0, a.cos(), -a.sin()], [0.0, a.sin(), a.cos()]];
    let ry = [[b.cos(), 0.0, b.sin()], [0.0, 1.0, 0.0], [-b.sin(), 0.0, b.cos()]];
    let rz = [[c.cos(), -c.sin(), 0.0], [c.sin(), c.cos(), 0.0], [0.0, 0.0, 1.0]];
    let mul = |p: [[f64; 3]; 3], q: [[f64; 3]; 3]| {
        let mut o = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                o[i][j] = (0..3).map(|k| p[i][k] * q[k][j]).sum();
            }
        }
        o
    };
    let r = mul(rz, mul(ry, rx));
    let mut out = [[0.0; 4]; 4];
    for i in 0..3 {
        out[i][..3].copy_from_slice(&r[i]);
        out[i][3] = centre[i] - (0..3).map(|k| r[i][k] * centre[k]).sum::<f64>();
    }
    out[3][3] = 1.0;
    out
}

/// The affine the series will carry: the volume's, with the patient rotated about its centre.
pub fn series_affine(v: &Volume, rotate_deg: [f64; 3]) -> [[f64; 4]; 4] {
    let d = v.grid.dims;
    let centre = v.grid.world([(d[0] as f64 - 1.0) / 2.0, (d[1] as f64 - 1.0) / 2.0, (d[2] as f64 - 1.0) / 2.0]);
    compose(&rotation_about(rotate_deg, centre), &v.grid.affine)
}

/// Writes `v` as one DICOM file per slice. Values are stored as signed 16-bit with a rescale
/// slope and intercept that span the volume's range.
pub fn write_series(v: &Volume, s: &SynthSeries) -> Result<Vec<RawFile>, DicomError> {
    let a = s.slice_axis.min(2);
    let (u, w) = match a {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let dims = v.grid.dims;
    let aff = series_affine(v, s.rotate_deg);
    let col = |j: usize| [aff[0][j], aff[1][j], aff[2][j]];
    let len = |c: [f64; 3]| (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt();
    let lps = |c: [f64; 3]| [-c[0], -c[1], c[2]];
    let (cu, cw) = (col(u), col(w));
    let (su, sw) = (len(cu), len(cw));
    let r = lps(cu).map(|x| x / su);
    let c = lps(cw).map(|x| x / sw);

    let (lo, hi) = v.data.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
    let integral = v.data.iter().all(|x| x.fract() == 0.0) && lo >= -32768.0 && hi <= 32767.0;
    let (slope, intercept) = if integral {
        (1.0, 0.0)
    } else {
        (
            (f64::from(hi) - f64::from(lo)).max(1e-6) / 65535.0,
            f64::from(lo) + 32768.0 * (f64::from(hi) - f64::from(lo)).max(1e-6) / 65535.0,
        )
    };

    let series_uid = format!("{}.{}", s.study_uid, s.series_number);
    let frame_uid = format!("{}.0", s.study_uid);
    let ts = if s.implicit_vr { uids::IMPLICIT_VR_LITTLE_ENDIAN } else { uids::EXPLICIT_VR_LITTLE_ENDIAN };
    let (ncol, nrow) = (dims[u], dims[w]);
    let mut files = Vec::with_capacity(dims[a]);
    for k in 0..dims[a] {
        let mut origin = [0.0; 3];
        origin[a] = k as f64;
        let p = {
            let m = &aff;
            [
                m[0][0] * origin[0] + m[0][1] * origin[1] + m[0][2] * origin[2] + m[0][3],
                m[1][0] * origin[0] + m[1][1] * origin[1] + m[1][2] * origin[2] + m[1][3],
                m[2][0] * origin[0] + m[2][1] * origin[1] + m[2][2] * origin[2] + m[2][3],
            ]
        };
        let ipp = lps(p);
        let mut pixels: Vec<u16> = Vec::with_capacity(ncol * nrow);
        for j in 0..nrow {
            for i in 0..ncol {
                let mut vox = [0usize; 3];
                vox[a] = k;
                vox[u] = i;
                vox[w] = j;
                let x = f64::from(v.data[vox[0] + dims[0] * (vox[1] + dims[1] * vox[2])]);
                let q = ((x - intercept) / slope).round().clamp(-32768.0, 32767.0) as i16;
                pixels.push(q as u16);
            }
        }
        let sop_uid = format!("{series_uid}.{}", k + 1);
        let mut obj = InMemDicomObject::from_element_iter([
            DataElement::new(tags::SOP_CLASS_UID, VR::UI, uids::MR_IMAGE_STORAGE),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, sop_uid.as_str()),
            DataElement::new(tags::MODALITY, VR::CS, "MR"),
            DataElement::new(tags::SERIES_DESCRIPTION, VR::LO, s.description.as_str()),
            DataElement::new(tags::PATIENT_NAME, VR::PN, s.patient.as_str()),
            DataElement::new(tags::PATIENT_ID, VR::LO, s.patient.as_str()),
            DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, s.study_uid.as_str()),
            DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, series_uid.as_str()),
            DataElement::new(tags::FRAME_OF_REFERENCE_UID, VR::UI, frame_uid.as_str()),
            DataElement::new(tags::SERIES_NUMBER, VR::IS, s.series_number.to_string()),
            DataElement::new(tags::INSTANCE_NUMBER, VR::IS, (k + 1).to_string()),
            DataElement::new(tags::IMAGE_POSITION_PATIENT, VR::DS, ds_multi(&ipp)),
            DataElement::new(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds_multi(&[r[0], r[1], r[2], c[0], c[1], c[2]])),
            DataElement::new(tags::PIXEL_SPACING, VR::DS, ds_multi(&[sw, su])),
            DataElement::new(tags::SLICE_THICKNESS, VR::DS, ds(len(col(a)))),
            DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, dicom_value!(U16, [1])),
            DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
            DataElement::new(tags::ROWS, VR::US, dicom_value!(U16, [nrow as u16])),
            DataElement::new(tags::COLUMNS, VR::US, dicom_value!(U16, [ncol as u16])),
            DataElement::new(tags::BITS_ALLOCATED, VR::US, dicom_value!(U16, [16])),
            DataElement::new(tags::BITS_STORED, VR::US, dicom_value!(U16, [16])),
            DataElement::new(tags::HIGH_BIT, VR::US, dicom_value!(U16, [15])),
            DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, dicom_value!(U16, [1])),
            DataElement::new(tags::RESCALE_INTERCEPT, VR::DS, ds(intercept)),
            DataElement::new(tags::RESCALE_SLOPE, VR::DS, ds(slope)),
            DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(C::from_vec(pixels))),
        ]);
        if let Some(agent) = &s.contrast_agent {
            obj.put(DataElement::new(tags::CONTRAST_BOLUS_AGENT, VR::LO, agent.as_str()));
        }
        let file = obj
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(ts))
            .map_err(|e| DicomError::Parse { file: format!("slice {k}"), detail: e.to_string() })?;
        let mut bytes = Vec::new();
        file.write_all(&mut bytes)
            .map_err(|e| DicomError::Parse { file: format!("slice {k}"), detail: e.to_string() })?;
        files.push(RawFile { name: format!("s{:03}/im{:04}.dcm", s.series_number, k + 1), bytes });
    }
    if s.reverse_files {
        files.reverse();
    }
    Ok(files)
}

/// Writes files under `dir`, creating folders.
pub fn write_files(dir: &std::path::Path, files: &[RawFile]) -> Result<(), DicomError> {
    for f in files {
        let p = dir.join(&f.name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| DicomError::io(parent, e))?;
        }
        std::fs::write(&p, &f.bytes).map_err(|e| DicomError::io(&p, e))?;
    }
    Ok(())
}

fn rewrite(file: &mut RawFile, edit: impl FnOnce(&mut dicom_object::DefaultDicomObject)) -> Result<(), DicomError> {
    let bad = |detail: String| DicomError::Parse { file: file.name.clone(), detail };
    let start = if file.bytes.len() >= 132 && &file.bytes[128..132] == b"DICM" { 128 } else { 0 };
    let mut obj = dicom_object::OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Never)
        .from_reader(&file.bytes[start..])
        .map_err(|e| bad(e.to_string()))?;
    edit(&mut obj);
    let mut bytes = Vec::new();
    obj.write_all(&mut bytes).map_err(|e| bad(e.to_string()))?;
    file.bytes = bytes;
    Ok(())
}

/// Rewrites one file without the element `tag` (malformed input for tests).
pub fn remove_tag(file: &mut RawFile, tag: dicom_core::Tag) -> Result<(), DicomError> {
    rewrite(file, |obj| {
        obj.remove_element(tag);
    })
}

/// Rewrites one file with a text element set (e.g. Modality to CT).
pub fn set_text(file: &mut RawFile, tag: dicom_core::Tag, vr: VR, value: &str) -> Result<(), DicomError> {
    rewrite(file, |obj| {
        obj.put(DataElement::new(tag, vr, value));
    })
}
