//! DICOM Segmentation (SEG) export: a BraTS label map on a source series' own grid written as a
//! binary, multi-frame SEG object that references that series slice by slice, for PACS and viewers.
//!
//! The object follows the Segmentation IOD (PS3.3 A.51): one segment per tumour label present,
//! 1-bit frames packed contiguously, one frame per segment and non-empty slice (empty frames are
//! omitted), each frame placed by its source slice's ImagePositionPatient and referencing that
//! slice's SOP Instance UID (purpose 121322 DCM, "Source image for image processing operation").
//!
//! The patient and study modules are copied unchanged from the source series (so the SEG files
//! with its study); they are kept private to this module and never logged or printed.

use crate::error::DicomError;
use crate::series::{Series, group};
use crate::source::RawFile;
use crate::synth::ds;
use dicom_core::value::{C, DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::mem::InMemElement;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use gmmas_imaging::{Grid, LabelVolume, same_grid};
use std::fmt;

/// A coded concept (code value, coding scheme designator, code meaning).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code {
    pub value: &'static str,
    pub scheme: &'static str,
    pub meaning: &'static str,
}

/// One BraTS tumour label as a SEG segment.
#[derive(Clone, Copy, Debug)]
pub struct TumourClass {
    /// The label value in the label map.
    pub label: u8,
    /// SegmentLabel.
    pub name: &'static str,
    /// SegmentDescription.
    pub description: &'static str,
    /// SegmentedPropertyTypeCodeSequence.
    pub property_type: Code,
    /// Display colour as CIELab (L* 0–100, a*, b* −128–127; D65 white), from the usual BraTS
    /// overlay colours.
    pub lab: [f64; 3],
}

/// SegmentedPropertyCategoryCodeSequence of every segment: SNOMED CT 49755003 "Morphologically
/// Abnormal Structure" (CID 7150, the category the standard's lesion types sit in).
pub const CATEGORY: Code = Code { value: "49755003", scheme: "SCT", meaning: "Morphologically Abnormal Structure" };

/// The three BraTS labels, as segments. Property types (SNOMED CT, morphologic abnormalities, as
/// listed in DICOM CID 7151's sub-groups and used by dcmqi / highdicom): label 1, necrotic and
/// non-enhancing tumour core: 6574001 "Necrosis"; label 2, peritumoral edema: 79654002 "Edema";
/// label 4, enhancing tumour: 108369006 "Neoplasm" (SNOMED CT has no concept for the enhancing
/// part alone; the SegmentLabel and SegmentDescription say which part it is).
/// Colours: red, green and yellow (sRGB), in CIELab.
pub const TUMOUR_CLASSES: [TumourClass; 3] = [
    TumourClass {
        label: 1,
        name: "Necrotic tumour core",
        description: "BraTS label 1: necrotic and non-enhancing tumour core",
        property_type: Code { value: "6574001", scheme: "SCT", meaning: "Necrosis" },
        lab: [53.24, 80.09, 67.20],
    },
    TumourClass {
        label: 2,
        name: "Peritumoral edema",
        description: "BraTS label 2: peritumoral edema",
        property_type: Code { value: "79654002", scheme: "SCT", meaning: "Edema" },
        lab: [87.73, -86.18, 83.18],
    },
    TumourClass {
        label: 4,
        name: "Enhancing tumour",
        description: "BraTS label 4: gadolinium-enhancing tumour",
        property_type: Code { value: "108369006", scheme: "SCT", meaning: "Neoplasm" },
        lab: [97.14, -21.55, 94.48],
    },
];

/// The algorithm family of every segment: 123110 DCM "Artificial Intelligence" (CID 7162).
const ALGORITHM_FAMILY: Code = Code { value: "123110", scheme: "DCM", meaning: "Artificial Intelligence" };
/// PurposeOfReferenceCodeSequence of each frame's source image.
const SOURCE_PURPOSE: Code =
    Code { value: "121322", scheme: "DCM", meaning: "Source image for image processing operation" };
/// DerivationCodeSequence of each frame (CID 7203).
const DERIVATION: Code = Code { value: "113076", scheme: "DCM", meaning: "Segmentation" };

/// Manufacturer, model name and algorithm name written into the SEG.
const SOFTWARE: &str = "GMMAS";

/// The patient, study and frame-of-reference attributes a SEG copies from its source, with the
/// value representation of each one written empty when the source lacks it (type 2), or `None`
/// for those only copied when present.
const COPIED: [(Tag, Option<VR>); 18] = [
    (tags::SPECIFIC_CHARACTER_SET, None),
    (tags::PATIENT_NAME, Some(VR::PN)),
    (tags::PATIENT_ID, Some(VR::LO)),
    (tags::ISSUER_OF_PATIENT_ID, None),
    (tags::PATIENT_BIRTH_DATE, Some(VR::DA)),
    (tags::PATIENT_SEX, Some(VR::CS)),
    (tags::OTHER_PATIENT_I_DS_SEQUENCE, None),
    (tags::PATIENT_AGE, None),
    (tags::PATIENT_IDENTITY_REMOVED, None),
    (tags::DEIDENTIFICATION_METHOD, None),
    (tags::STUDY_DATE, Some(VR::DA)),
    (tags::STUDY_TIME, Some(VR::TM)),
    (tags::REFERRING_PHYSICIAN_NAME, Some(VR::PN)),
    (tags::STUDY_ID, Some(VR::SH)),
    (tags::ACCESSION_NUMBER, Some(VR::SH)),
    (tags::STUDY_DESCRIPTION, None),
    (tags::POSITION_REFERENCE_INDICATOR, Some(VR::LO)),
    (tags::BODY_PART_EXAMINED, None),
];

/// One source slice, in the order of the volume's third axis.
#[derive(Clone)]
struct SliceRef {
    sop_uid: String,
    /// ImagePositionPatient as the source gives it (LPS mm).
    position: [f64; 3],
}

/// What a SEG needs of its source series: its grid, its slices' UIDs and positions, and the
/// patient / study attributes to copy. `Debug` prints none of the identifiers.
#[derive(Clone)]
pub struct SegSource {
    /// The series as a reader names it (number and description).
    name: String,
    grid: Grid,
    series_number: Option<i64>,
    description: String,
    sop_class: String,
    series_uid: String,
    study_uid: String,
    frame_uid: String,
    /// ImageOrientationPatient (LPS row then column direction).
    orientation: [f64; 6],
    /// PixelSpacing: between rows, then between columns (mm).
    spacing: [f64; 2],
    slice_thickness: Option<f64>,
    slices: Vec<SliceRef>,
    copied: Vec<InMemElement>,
}

impl fmt::Debug for SegSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegSource")
            .field("series", &self.name)
            .field("dims", &self.grid.dims)
            .field("slices", &self.slices.len())
            .finish_non_exhaustive()
    }
}

fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.get(tag).and_then(|e| e.to_str().ok()).map(|s| s.trim().trim_end_matches('\0').to_string()).unwrap_or_default()
}

impl SegSource {
    /// The SEG source of a series that stacks into one volume (see [`Series::stack`]).
    pub fn from_series(series: &Series) -> Result<SegSource, DicomError> {
        let (stack, grid) = series.grid()?;
        let first = &series.instances[stack.order[0]].obj;
        let mut slices = Vec::with_capacity(stack.order.len());
        for &i in &stack.order {
            let inst = &series.instances[i];
            let p = crate::series::multi(inst, tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient (0020,0032)", 3)?;
            slices.push(SliceRef { sop_uid: text(&inst.obj, tags::SOP_INSTANCE_UID), position: [p[0], p[1], p[2]] });
        }
        let first_inst = &series.instances[stack.order[0]];
        let iop = crate::series::multi(first_inst, tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient", 6)?;
        let ps = crate::series::multi(first_inst, tags::PIXEL_SPACING, "PixelSpacing (0028,0030)", 2)?;
        let copied = COPIED.iter().filter_map(|(tag, _)| first.get(*tag).cloned()).collect();
        Ok(SegSource {
            name: series.to_string(),
            grid,
            series_number: series.number,
            description: series.text.description.clone(),
            sop_class: series.sop_class.clone(),
            series_uid: series.uid.clone(),
            study_uid: text(first, tags::STUDY_INSTANCE_UID),
            frame_uid: text(first, tags::FRAME_OF_REFERENCE_UID),
            orientation: [iop[0], iop[1], iop[2], iop[3], iop[4], iop[5]],
            spacing: [ps[0], ps[1]],
            slice_thickness: first.get(tags::SLICE_THICKNESS).and_then(|e| e.to_float64().ok()).filter(|t| *t > 0.0),
            slices,
            copied,
        })
    }

    /// The SEG source of the one image series among `files` (a folder of one series).
    pub fn from_files(files: Vec<RawFile>) -> Result<SegSource, DicomError> {
        let n = files.len();
        let (series, _) = group(files)?;
        match series.as_slice() {
            [one] => SegSource::from_series(one),
            [] => Err(DicomError::Study(format!("none of the {n} file(s) is a DICOM image: expected one series"))),
            many => Err(DicomError::Study(format!(
                "{} series found ({}): expected the files of one series",
                many.len(),
                many.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// The series' grid: (column, row, slice) voxels → RAS mm; a label map must be on it.
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// The series as a reader names it (SeriesNumber and description; no identifiers).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Writes the SEG of `labels` (BraTS labels 0, 1, 2, 4 on `source`'s grid) as the bytes of a
/// DICOM file (explicit VR little endian). `model_version` names the algorithm's version.
pub fn write_seg(source: &SegSource, labels: &LabelVolume, model_version: &str) -> Result<Vec<u8>, DicomError> {
    let obj = build_seg(source, labels, model_version)?;
    let mut bytes = Vec::new();
    obj.write_all(&mut bytes).map_err(|e| DicomError::Parse {
        file: "segmentation".into(),
        detail: format!("could not be written ({e})"),
    })?;
    Ok(bytes)
}

/// The SEG of `labels` as a DICOM object (see [`write_seg`]). Fails when the label map is not on
/// the source's grid, holds a value other than 0, 1, 2 and 4, or holds no tumour at all.
pub fn build_seg(
    source: &SegSource,
    labels: &LabelVolume,
    model_version: &str,
) -> Result<DefaultDicomObject, DicomError> {
    check(source, labels)?;
    let present: Vec<&TumourClass> = TUMOUR_CLASSES.iter().filter(|c| labels.data.contains(&c.label)).collect();
    let uid_seed = format!(
        "{}\n{}\n{model_version}\n{:?}\n{}",
        source.series_uid,
        gmmas_contracts::sha256_hex(&labels.data),
        std::time::SystemTime::now(),
        std::process::id()
    );
    let uids = Uids {
        series: uid_from(&uid_seed, "series"),
        instance: uid_from(&uid_seed, "instance"),
        dimensions: uid_from(&uid_seed, "dimension organization"),
    };
    let frames = frames(labels, &present);
    let mut obj = InMemDicomObject::from_element_iter(source.copied.iter().cloned());
    for (tag, vr) in COPIED {
        if let (None, Some(vr)) = (obj.get(tag), vr) {
            obj.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
        }
    }
    for e in header(source, &uids, model_version) {
        obj.put(e);
    }
    obj.put(seq(tags::SEGMENT_SEQUENCE, present.iter().enumerate().map(|(i, c)| segment(i + 1, c, model_version))));
    for e in dimensions(&uids.dimensions) {
        obj.put(e);
    }
    obj.put(seq(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, [shared(source)]));
    obj.put(seq(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, frames.iter().map(|f| per_frame(source, f))));
    obj.put(el(tags::NUMBER_OF_FRAMES, VR::IS, frames.len().to_string()));
    let [nx, ny, _] = labels.grid.dims;
    obj.put(DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(ny as u16)));
    obj.put(DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(nx as u16)));
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(C::from_vec(pack(labels, &frames)))));
    obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .map_err(|e| DicomError::Parse { file: "segmentation".into(), detail: format!("file meta: {e}") })
}

/// The label map must lie on the source's grid and hold only BraTS labels and some tumour; the
/// source must name its study and frame of reference.
fn check(source: &SegSource, labels: &LabelVolume) -> Result<(), DicomError> {
    if let Err(e) = same_grid(&labels.grid, &source.grid) {
        return Err(DicomError::SegGrid {
            series: source.name.clone(),
            detail: e.to_string(),
            expected: source.grid.dims,
        });
    }
    let [nx, ny, _] = source.grid.dims;
    if nx > usize::from(u16::MAX) || ny > usize::from(u16::MAX) {
        return Err(DicomError::series(&source.name, format!("{nx}×{ny} pixels: more than a DICOM image can hold")));
    }
    if let Some(v) = labels.data.iter().find(|&&v| !matches!(v, 0 | 1 | 2 | 4)) {
        return Err(DicomError::SegLabels(format!("holds label {v}: expected BraTS labels 0, 1, 2 and 4 only")));
    }
    if labels.data.iter().all(|&v| v == 0) {
        return Err(DicomError::SegLabels("holds no tumour (every voxel is 0): a SEG needs one segment".into()));
    }
    for (what, uid) in [("StudyInstanceUID (0020,000D)", &source.study_uid), ("FrameOfReferenceUID", &source.frame_uid)]
    {
        if uid.is_empty() {
            return Err(DicomError::series(
                &source.name,
                format!("{what} is missing: a SEG must name the study and frame of reference of its source"),
            ));
        }
    }
    if source.slices.iter().any(|s| s.sop_uid.is_empty()) {
        return Err(DicomError::series(&source.name, "a slice has no SOPInstanceUID: a SEG references every slice"));
    }
    Ok(())
}

/// The new UIDs of one SEG.
struct Uids {
    series: String,
    instance: String,
    dimensions: String,
}

/// A UID under the `2.25` root (ISO/IEC 9834-8: a 128-bit number in decimal), from the first
/// 128 bits of sha256(`seed` + `purpose`).
pub fn uid_from(seed: &str, purpose: &str) -> String {
    let hex = gmmas_contracts::sha256_hex(format!("{seed}\n{purpose}").as_bytes());
    let n = u128::from_str_radix(&hex[..32], 16).unwrap_or(1);
    format!("2.25.{n}")
}

/// One frame: which segment, which slice (index along the volume's third axis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Frame {
    segment: usize,
    label: u8,
    slice: usize,
}

/// Segment-major, then slice order; slices where a segment is empty are left out.
fn frames(labels: &LabelVolume, present: &[&TumourClass]) -> Vec<Frame> {
    let [nx, ny, nz] = labels.grid.dims;
    let per = nx * ny;
    let mut out = Vec::new();
    for (i, c) in present.iter().enumerate() {
        for k in 0..nz {
            if labels.data[k * per..(k + 1) * per].contains(&c.label) {
                out.push(Frame { segment: i + 1, label: c.label, slice: k });
            }
        }
    }
    out
}

/// Pixel data of 1-bit frames: pixel `p` of all frames taken together is bit `p % 8` (least
/// significant first) of byte `p / 8`, with no padding between frames; the whole padded to an even length.
fn pack(labels: &LabelVolume, frames: &[Frame]) -> Vec<u8> {
    let [nx, ny, _] = labels.grid.dims;
    let per = nx * ny;
    let mut bytes = vec![0u8; (frames.len() * per).div_ceil(8)];
    for (f, frame) in frames.iter().enumerate() {
        let slice = &labels.data[frame.slice * per..(frame.slice + 1) * per];
        for (p, _) in slice.iter().enumerate().filter(|(_, v)| **v == frame.label) {
            let bit = f * per + p;
            bytes[bit / 8] |= 1 << (bit % 8);
        }
    }
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    bytes
}

fn el(tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) -> InMemElement {
    DataElement::new(tag, vr, value.into())
}

fn strs(values: &[String]) -> PrimitiveValue {
    PrimitiveValue::Strs(values.iter().cloned().collect())
}

fn seq(tag: Tag, items: impl IntoIterator<Item = InMemDicomObject>) -> InMemElement {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items.into_iter().collect::<Vec<_>>()))
}

fn code(c: &Code) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        el(tags::CODE_VALUE, VR::SH, c.value),
        el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, c.scheme),
        el(tags::CODE_MEANING, VR::LO, c.meaning),
    ])
}

/// (date, time) now, UTC, as DICOM DA and TM.
fn now_utc() -> (String, String) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian, eras of 400 years).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}{month:02}{day:02}"), format!("{:02}{:02}{:02}", rest / 3600, rest / 60 % 60, rest % 60))
}

/// SOP common, general series, segmentation series / image, frame of reference, equipment,
/// image pixel and common instance reference attributes.
fn header(source: &SegSource, uids: &Uids, model_version: &str) -> Vec<InMemElement> {
    let (date, time) = now_utc();
    let number = source.series_number.map_or(1000, |n| (n % 1000).abs() + 1000);
    let description = format!("{SOFTWARE} tumour segmentation of {}", source.description);
    let description: String = description.chars().take(64).collect();
    let versions = [format!("{SOFTWARE} {}", env!("CARGO_PKG_VERSION")), model_version.to_string()];
    let referenced = source.slices.iter().map(|s| {
        InMemDicomObject::from_element_iter([
            el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, source.sop_class.as_str()),
            el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, s.sop_uid.as_str()),
        ])
    });
    let series_ref = InMemDicomObject::from_element_iter([
        el(tags::SERIES_INSTANCE_UID, VR::UI, source.series_uid.as_str()),
        seq(tags::REFERENCED_INSTANCE_SEQUENCE, referenced),
    ]);
    vec![
        el(tags::SOP_CLASS_UID, VR::UI, uids::SEGMENTATION_STORAGE),
        el(tags::SOP_INSTANCE_UID, VR::UI, uids.instance.as_str()),
        el(tags::STUDY_INSTANCE_UID, VR::UI, source.study_uid.as_str()),
        el(tags::SERIES_INSTANCE_UID, VR::UI, uids.series.as_str()),
        el(tags::FRAME_OF_REFERENCE_UID, VR::UI, source.frame_uid.as_str()),
        el(tags::MODALITY, VR::CS, "SEG"),
        el(tags::SERIES_NUMBER, VR::IS, number.to_string()),
        el(tags::SERIES_DESCRIPTION, VR::LO, description),
        el(tags::SERIES_DATE, VR::DA, date.as_str()),
        el(tags::SERIES_TIME, VR::TM, time.as_str()),
        el(tags::INSTANCE_NUMBER, VR::IS, "1"),
        el(tags::CONTENT_DATE, VR::DA, date.as_str()),
        el(tags::CONTENT_TIME, VR::TM, time.as_str()),
        el(tags::INSTANCE_CREATION_DATE, VR::DA, date.as_str()),
        el(tags::INSTANCE_CREATION_TIME, VR::TM, time.as_str()),
        el(tags::IMAGE_TYPE, VR::CS, strs(&["DERIVED".into(), "PRIMARY".into()])),
        el(tags::CONTENT_LABEL, VR::CS, "TUMOUR"),
        el(tags::CONTENT_DESCRIPTION, VR::LO, "Glioma sub-regions (BraTS labels), automatic"),
        el(tags::CONTENT_CREATOR_NAME, VR::PN, "GMMAS^"),
        el(tags::SEGMENTATION_TYPE, VR::CS, "BINARY"),
        el(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        el(tags::MANUFACTURER, VR::LO, SOFTWARE),
        el(tags::MANUFACTURER_MODEL_NAME, VR::LO, SOFTWARE),
        el(tags::DEVICE_SERIAL_NUMBER, VR::LO, "1"),
        el(tags::SOFTWARE_VERSIONS, VR::LO, strs(&versions)),
        el(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        el(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(1u16)),
        el(tags::BITS_STORED, VR::US, PrimitiveValue::from(1u16)),
        el(tags::HIGH_BIT, VR::US, PrimitiveValue::from(0u16)),
        el(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0u16)),
        seq(tags::REFERENCED_SERIES_SEQUENCE, [series_ref]),
    ]
}

/// CIELab (L* 0–100, a* and b* −128–127) as DICOM's three unsigned 16-bit values.
pub fn cielab_to_dicom(lab: [f64; 3]) -> [u16; 3] {
    let scale = |x: f64, lo: f64, hi: f64| ((x - lo) / (hi - lo) * 65535.0).round().clamp(0.0, 65535.0) as u16;
    [scale(lab[0], 0.0, 100.0), scale(lab[1], -128.0, 127.0), scale(lab[2], -128.0, 127.0)]
}

/// One item of the SegmentSequence.
fn segment(number: usize, c: &TumourClass, model_version: &str) -> InMemDicomObject {
    let algorithm = InMemDicomObject::from_element_iter([
        seq(tags::ALGORITHM_FAMILY_CODE_SEQUENCE, [code(&ALGORITHM_FAMILY)]),
        el(tags::ALGORITHM_NAME, VR::LO, SOFTWARE),
        el(tags::ALGORITHM_VERSION, VR::LO, model_version),
    ]);
    InMemDicomObject::from_element_iter([
        el(tags::SEGMENT_NUMBER, VR::US, PrimitiveValue::from(number as u16)),
        el(tags::SEGMENT_LABEL, VR::LO, c.name),
        el(tags::SEGMENT_DESCRIPTION, VR::ST, c.description),
        el(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
        el(tags::SEGMENT_ALGORITHM_NAME, VR::LO, SOFTWARE),
        seq(tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE, [algorithm]),
        seq(tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE, [code(&CATEGORY)]),
        seq(tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE, [code(&c.property_type)]),
        el(
            tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
            VR::US,
            PrimitiveValue::U16(C::from_slice(&cielab_to_dicom(c.lab))),
        ),
    ])
}

/// Two dimensions: the segment number, then the frame's position.
fn dimensions(organization: &str) -> Vec<InMemElement> {
    let index = |pointer: Tag, group: Tag, label: &str| {
        InMemDicomObject::from_element_iter([
            el(tags::DIMENSION_ORGANIZATION_UID, VR::UI, organization),
            el(tags::DIMENSION_INDEX_POINTER, VR::AT, PrimitiveValue::Tags(C::from_slice(&[pointer]))),
            el(tags::FUNCTIONAL_GROUP_POINTER, VR::AT, PrimitiveValue::Tags(C::from_slice(&[group]))),
            el(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label),
        ])
    };
    vec![
        seq(
            tags::DIMENSION_ORGANIZATION_SEQUENCE,
            [InMemDicomObject::from_element_iter([el(tags::DIMENSION_ORGANIZATION_UID, VR::UI, organization)])],
        ),
        el(tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D"),
        seq(
            tags::DIMENSION_INDEX_SEQUENCE,
            [
                index(tags::REFERENCED_SEGMENT_NUMBER, tags::SEGMENT_IDENTIFICATION_SEQUENCE, "Segment Number"),
                index(tags::IMAGE_POSITION_PATIENT, tags::PLANE_POSITION_SEQUENCE, "Image Position Patient"),
            ],
        ),
    ]
}

/// Shared functional groups: pixel measures and plane orientation, as the source's.
fn shared(source: &SegSource) -> InMemDicomObject {
    let step = f64::from(source.grid.pixdim[2]);
    let d = |x: &[f64]| x.iter().map(|v| ds(*v)).collect::<Vec<_>>();
    let measures = InMemDicomObject::from_element_iter([
        el(tags::PIXEL_SPACING, VR::DS, strs(&d(&source.spacing))),
        el(tags::SLICE_THICKNESS, VR::DS, ds(source.slice_thickness.unwrap_or(step))),
        el(tags::SPACING_BETWEEN_SLICES, VR::DS, ds(step)),
    ]);
    let orientation = InMemDicomObject::from_element_iter([el(
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        strs(&d(&source.orientation)),
    )]);
    InMemDicomObject::from_element_iter([
        seq(tags::PIXEL_MEASURES_SEQUENCE, [measures]),
        seq(tags::PLANE_ORIENTATION_SEQUENCE, [orientation]),
    ])
}

/// One frame's functional groups: its dimension index, position, segment and source slice.
fn per_frame(source: &SegSource, f: &Frame) -> InMemDicomObject {
    let slice = &source.slices[f.slice];
    let index = [f.segment as u32, f.slice as u32 + 1];
    let content = InMemDicomObject::from_element_iter([el(
        tags::DIMENSION_INDEX_VALUES,
        VR::UL,
        PrimitiveValue::U32(C::from_slice(&index)),
    )]);
    let position: Vec<String> = slice.position.iter().map(|v| ds(*v)).collect();
    let plane = InMemDicomObject::from_element_iter([el(tags::IMAGE_POSITION_PATIENT, VR::DS, strs(&position))]);
    let source_image = InMemDicomObject::from_element_iter([
        el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, source.sop_class.as_str()),
        el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, slice.sop_uid.as_str()),
        seq(tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE, [code(&SOURCE_PURPOSE)]),
        el(tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES"),
    ]);
    let derivation = InMemDicomObject::from_element_iter([
        seq(tags::DERIVATION_CODE_SEQUENCE, [code(&DERIVATION)]),
        seq(tags::SOURCE_IMAGE_SEQUENCE, [source_image]),
    ]);
    let segment = InMemDicomObject::from_element_iter([el(
        tags::REFERENCED_SEGMENT_NUMBER,
        VR::US,
        PrimitiveValue::from(f.segment as u16),
    )]);
    InMemDicomObject::from_element_iter([
        seq(tags::DERIVATION_IMAGE_SEQUENCE, [derivation]),
        seq(tags::FRAME_CONTENT_SEQUENCE, [content]),
        seq(tags::PLANE_POSITION_SEQUENCE, [plane]),
        seq(tags::SEGMENT_IDENTIFICATION_SEQUENCE, [segment]),
    ])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]
    use super::*;
    use crate::synth::{SynthSeries, write_series};
    use gmmas_imaging::Volume;

    /// A 6×5×4 series (rotated, so oblique) and a label map on its grid.
    fn small() -> (SegSource, LabelVolume) {
        let grid = Grid::axis_aligned([6, 5, 4], [1.0, 1.5, 2.0], [-3.0, 4.0, 10.0]);
        let v = Volume::new(grid, (0..120).map(|i| i as f32).collect()).unwrap();
        let mut s = SynthSeries::new(3, "t1_mprage", 2);
        s.rotate_deg = [10.0, 0.0, 5.0];
        let src = SegSource::from_files(write_series(&v, &s).unwrap()).unwrap();
        let mut data = vec![0u8; 120];
        for (i, l) in [(7, 1), (8, 2), (31, 4), (100, 4), (101, 1)] {
            data[i] = l;
        }
        (src.clone(), LabelVolume::new(src.grid().clone(), data).unwrap())
    }

    fn unpack(bytes: &[u8], n: usize) -> Vec<u8> {
        (0..n).map(|b| (bytes[b / 8] >> (b % 8)) & 1).collect()
    }

    #[test]
    fn frames_are_bit_packed_per_segment_and_slice() {
        let (src, labels) = small();
        let obj = build_seg(&src, &labels, "test-model 1").unwrap();
        // Label 1 on slices 0 and 3, label 2 on slice 0, label 4 on slices 1 and 3: 5 frames.
        assert_eq!(obj.get(tags::NUMBER_OF_FRAMES).unwrap().to_int::<u32>().unwrap(), 5);
        let pixels = obj.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
        assert_eq!(pixels.len(), (5 * 30usize).div_ceil(8) + 1, "150 bits in 19 bytes, padded to 20");
        let bits = unpack(&pixels, 150);
        let expected: Vec<(usize, u8, usize)> = vec![(1, 1, 0), (1, 1, 3), (2, 2, 0), (3, 4, 1), (3, 4, 3)];
        let frames = frames(&labels, &TUMOUR_CLASSES.iter().collect::<Vec<_>>());
        assert_eq!(frames.iter().map(|f| (f.segment, f.label, f.slice)).collect::<Vec<_>>(), expected);
        for (f, (_, label, k)) in expected.iter().enumerate() {
            for p in 0..30 {
                assert_eq!(bits[f * 30 + p] == 1, labels.data[k * 30 + p] == *label, "frame {f} pixel {p}");
            }
        }
        let per_frame = obj.get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).unwrap().items().unwrap();
        assert_eq!(per_frame.len(), 5);
        let index = per_frame[3].get(tags::FRAME_CONTENT_SEQUENCE).unwrap().items().unwrap()[0]
            .get(tags::DIMENSION_INDEX_VALUES)
            .unwrap()
            .to_multi_int::<u32>()
            .unwrap();
        assert_eq!(index, vec![3, 2]);
    }

    #[test]
    fn header_copies_the_study_and_makes_new_uids() {
        let (src, labels) = small();
        let obj = build_seg(&src, &labels, "test-model 1").unwrap();
        let t = |tag| text(&obj, tag);
        assert_eq!(t(tags::SOP_CLASS_UID), uids::SEGMENTATION_STORAGE);
        assert_eq!(t(tags::STUDY_INSTANCE_UID), src.study_uid);
        assert_eq!(t(tags::FRAME_OF_REFERENCE_UID), src.frame_uid);
        assert_eq!(t(tags::PATIENT_NAME), "DOE^JANE");
        assert_ne!(t(tags::SERIES_INSTANCE_UID), src.series_uid);
        for uid in [t(tags::SERIES_INSTANCE_UID), t(tags::SOP_INSTANCE_UID)] {
            assert!(uid.starts_with("2.25.") && uid.len() <= 64, "{uid}");
            assert!(uid[5..].chars().all(|c| c.is_ascii_digit()) && !uid[5..].starts_with('0'), "{uid}");
        }
        let segments = obj.get(tags::SEGMENT_SEQUENCE).unwrap().items().unwrap();
        assert_eq!(segments.len(), 3);
        assert_eq!(text(&segments[2], tags::SEGMENT_LABEL), "Enhancing tumour");
        assert!(!format!("{src:?}").contains("DOE"), "Debug must not show identifiers");
    }

    #[test]
    fn refuses_a_label_map_off_the_series_grid() {
        let (src, labels) = small();
        let mut moved = labels.clone();
        moved.grid.affine[0][3] += 1.0;
        let err = build_seg(&src, &moved, "m").unwrap_err();
        assert!(matches!(err, DicomError::SegGrid { .. }), "{err}");
        assert!(err.to_string().contains("not on the series' grid"), "{err}");
        let grid = Grid::axis_aligned([6, 5, 3], [1.0, 1.5, 2.0], [0.0; 3]);
        let err = build_seg(&src, &LabelVolume::new(grid, vec![1; 90]).unwrap(), "m").unwrap_err();
        assert!(matches!(err, DicomError::SegGrid { expected: [6, 5, 4], .. }), "{err}");
    }

    #[test]
    fn refuses_labels_a_brats_seg_cannot_carry() {
        let (src, mut labels) = small();
        labels.data[0] = 3;
        assert!(matches!(build_seg(&src, &labels, "m"), Err(DicomError::SegLabels(_))));
        labels.data.iter_mut().for_each(|v| *v = 0);
        assert!(build_seg(&src, &labels, "m").unwrap_err().to_string().contains("no tumour"));
    }

    #[test]
    fn cielab_spans_the_sixteen_bit_range() {
        assert_eq!(cielab_to_dicom([100.0, 127.0, -128.0]), [65535, 65535, 0]);
        assert_eq!(cielab_to_dicom([0.0, 0.0, 0.0]), [0, 32896, 32896]);
        assert_eq!(uid_from("a", "b"), uid_from("a", "b"));
        assert_ne!(uid_from("a", "b"), uid_from("a", "c"));
    }
}
