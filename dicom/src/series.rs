//! DICOM files parsed and grouped into series (by SeriesInstanceUID), and a series turned into
//! one volume: pixel values after the modality rescale, on the grid its geometry tags give.

use crate::error::DicomError;
use crate::geometry::{self, Plane, Stack};
use crate::identify::SeriesText;
use crate::source::RawFile;
use dicom_dictionary_std::{tags, uids};
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use gmmas_imaging::{Grid, Volume};
use std::collections::BTreeMap;
use std::fmt;

/// One image file of a series.
pub struct Instance {
    /// Path inside the study (folder or archive).
    pub file: String,
    /// sha256 of the file's bytes.
    pub sha256: String,
    pub(crate) obj: DefaultDicomObject,
}

/// A file that was not taken, and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Skipped {
    pub file: String,
    pub why: String,
}

/// One series: its identifying texts and its image files.
pub struct Series {
    /// SeriesNumber, when present.
    pub number: Option<i64>,
    /// SeriesInstanceUID (kept to tell series apart and to reference them; never logged).
    pub uid: String,
    /// Modality (0008,0060), e.g. MR.
    pub modality: String,
    /// SOP Class UID of the first file.
    pub sop_class: String,
    /// Transfer syntax UID of the first file.
    pub transfer_syntax: String,
    pub text: SeriesText,
    pub instances: Vec<Instance>,
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.number {
            Some(n) => write!(f, "series {n} \"{}\"", self.text.description),
            None => write!(f, "series \"{}\"", self.text.description),
        }
    }
}

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> String {
    obj.get(tag).and_then(|e| e.to_str().ok()).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn number(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<f64> {
    obj.get(tag).and_then(|e| e.to_float64().ok()).filter(|v| v.is_finite())
}

/// Parses one file. `Ok(None)`: not DICOM at all (no `DICM` magic), listed as skipped.
fn parse(file: &RawFile) -> Result<Option<DefaultDicomObject>, DicomError> {
    let b = &file.bytes;
    let start = if b.len() >= 132 && &b[128..132] == b"DICM" {
        128
    } else if b.starts_with(b"DICM") {
        0
    } else {
        return Ok(None);
    };
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(&b[start..])
        .map(Some)
        .map_err(|e| DicomError::Parse { file: file.name.clone(), detail: e.to_string() })
}

/// Parses every file and groups the images into series, in series-number order. Files that are
/// not DICOM, and DICOM objects without pixel data (DICOMDIR, reports), are listed as skipped.
pub fn group(files: Vec<RawFile>) -> Result<(Vec<Series>, Vec<Skipped>), DicomError> {
    let mut by_uid: BTreeMap<String, Series> = BTreeMap::new();
    let mut skipped = Vec::new();
    for f in files {
        let Some(obj) = parse(&f)? else {
            skipped.push(Skipped { file: f.name, why: "not a DICOM file".into() });
            continue;
        };
        if obj.get(tags::PIXEL_DATA).is_none() {
            let class = obj.meta().media_storage_sop_class_uid().trim_end_matches('\0').to_string();
            skipped.push(Skipped { file: f.name, why: format!("no pixel data (SOP class {class})") });
            continue;
        }
        let uid = text(&obj, tags::SERIES_INSTANCE_UID);
        if uid.is_empty() {
            return Err(DicomError::Tag {
                file: f.name,
                tag: "SeriesInstanceUID (0020,000E)",
                detail: "is missing: expected every image to name its series".into(),
            });
        }
        let series = by_uid.entry(uid.clone()).or_insert_with(|| Series {
            number: number(&obj, tags::SERIES_NUMBER).map(|v| v as i64),
            uid,
            modality: text(&obj, tags::MODALITY),
            sop_class: text(&obj, tags::SOP_CLASS_UID),
            transfer_syntax: obj.meta().transfer_syntax().trim_end_matches('\0').to_string(),
            text: SeriesText {
                description: text(&obj, tags::SERIES_DESCRIPTION),
                protocol: text(&obj, tags::PROTOCOL_NAME),
                sequence_name: text(&obj, tags::SEQUENCE_NAME),
                contrast_agent: text(&obj, tags::CONTRAST_BOLUS_AGENT),
                tr: number(&obj, tags::REPETITION_TIME),
                te: number(&obj, tags::ECHO_TIME),
                ti: number(&obj, tags::INVERSION_TIME),
                image_type: text(&obj, tags::IMAGE_TYPE),
            },
            instances: Vec::new(),
        });
        series.instances.push(Instance { sha256: gmmas_contracts::sha256_hex(&f.bytes), file: f.name, obj });
    }
    let mut series: Vec<Series> = by_uid.into_values().collect();
    series.sort_by_key(|s| (s.number.unwrap_or(i64::MAX), s.text.description.clone()));
    Ok((series, skipped))
}

pub(crate) fn multi(
    inst: &Instance,
    tag: dicom_core::Tag,
    name: &'static str,
    n: usize,
) -> Result<Vec<f64>, DicomError> {
    let bad = |detail: String| DicomError::Tag { file: inst.file.clone(), tag: name, detail };
    let e = inst.obj.get(tag).ok_or_else(|| bad(format!("is missing: expected {n} numbers (the image's geometry)")))?;
    let v = e.to_multi_float64().map_err(|err| bad(format!("is not numeric ({err})")))?;
    if v.len() != n || v.iter().any(|x| !x.is_finite()) {
        return Err(bad(format!("holds {v:?}: expected {n} finite numbers")));
    }
    Ok(v)
}

fn count(inst: &Instance, tag: dicom_core::Tag, name: &'static str) -> Result<u32, DicomError> {
    let e = inst.obj.get(tag).ok_or_else(|| DicomError::Tag {
        file: inst.file.clone(),
        tag: name,
        detail: "is missing".into(),
    })?;
    e.to_int::<u32>().map_err(|err| DicomError::Tag {
        file: inst.file.clone(),
        tag: name,
        detail: format!("is not a count ({err})"),
    })
}

impl Series {
    /// One hash for the series' content: sha256 of its files' sha256 values, sorted, one per line.
    pub fn content_sha256(&self) -> String {
        let mut hashes: Vec<&str> = self.instances.iter().map(|i| i.sha256.as_str()).collect();
        hashes.sort_unstable();
        gmmas_contracts::sha256_hex(hashes.join("\n").as_bytes())
    }

    /// True for the SOP classes whose images are single 2D MR slices (classic and legacy).
    pub fn is_mr(&self) -> bool {
        self.modality.eq_ignore_ascii_case("MR")
    }

    /// True when the series is an enhanced (multi-frame) object, which ingest does not read yet.
    pub fn is_multiframe(&self) -> bool {
        self.sop_class == uids::ENHANCED_MR_IMAGE_STORAGE
            || self
                .instances
                .iter()
                .any(|i| i.obj.get(tags::NUMBER_OF_FRAMES).and_then(|e| e.to_int::<u32>().ok()).unwrap_or(1) > 1)
    }

    /// The slices' geometry and the volume they stack into; fails with a sentence naming the
    /// series (or the file) when the series is not one volume.
    pub fn stack(&self) -> Result<Stack, DicomError> {
        if self.is_multiframe() {
            return Err(DicomError::series(
                self,
                "enhanced multi-frame images are not supported yet: expected one slice per file (classic MR Image Storage)",
            ));
        }
        let first = self.instances.first().ok_or_else(|| DicomError::series(self, "holds no images"))?;
        let (rows, cols) =
            (count(first, tags::ROWS, "Rows (0028,0010)")?, count(first, tags::COLUMNS, "Columns (0028,0011)")?);
        let mut planes = Vec::with_capacity(self.instances.len());
        for inst in &self.instances {
            let (r, c) =
                (count(inst, tags::ROWS, "Rows (0028,0010)")?, count(inst, tags::COLUMNS, "Columns (0028,0011)")?);
            if (r, c) != (rows, cols) {
                return Err(DicomError::series(
                    self,
                    format!(
                        "mixes {cols}×{rows} and {c}×{r} images ({}): expected one image size per series",
                        inst.file
                    ),
                ));
            }
            let ipp = multi(inst, tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient (0020,0032)", 3)?;
            let iop = multi(inst, tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient (0020,0037)", 6)?;
            let ps = multi(inst, tags::PIXEL_SPACING, "PixelSpacing (0028,0030)", 2)?;
            planes.push(Plane {
                position: [ipp[0], ipp[1], ipp[2]],
                orientation: [iop[0], iop[1], iop[2], iop[3], iop[4], iop[5]],
                spacing: [ps[0], ps[1]],
            });
        }
        geometry::stack(&planes).map_err(|detail| DicomError::series(self, detail))
    }

    /// The series as a volume: (column, row, slice) voxels, x fastest, values after the modality
    /// rescale (RescaleSlope / Intercept), on the grid of [`Series::stack`].
    pub fn volume(&self) -> Result<Volume, DicomError> {
        let (stack, grid) = self.grid()?;
        let per_slice = grid.dims[0] * grid.dims[1];
        let mut data = Vec::with_capacity(per_slice * stack.order.len());
        for &i in &stack.order {
            data.extend(decode(&self.instances[i], per_slice)?);
        }
        Ok(Volume::new(grid, data)?)
    }

    /// [`Series::stack`] and the grid of the volume it makes: (column, row, slice) voxels → RAS.
    pub fn grid(&self) -> Result<(Stack, Grid), DicomError> {
        let stack = self.stack()?;
        let first = &self.instances[stack.order[0]];
        let (rows, cols) = (
            count(first, tags::ROWS, "Rows (0028,0010)")? as usize,
            count(first, tags::COLUMNS, "Columns (0028,0011)")? as usize,
        );
        let grid = Grid {
            dims: [cols, rows, stack.order.len()],
            pixdim: stack.pixdim.map(|p| p as f32),
            affine: stack.affine,
        };
        Ok((stack, grid))
    }
}

/// Decodes one image file on its own (rows × columns values after the modality rescale): for
/// checking a transfer syntax, not for building volumes.
pub fn decode_single(file: &RawFile) -> Result<(usize, usize, Vec<f32>), DicomError> {
    let obj = parse(file)?
        .ok_or_else(|| DicomError::Parse { file: file.name.clone(), detail: "no DICM magic code".into() })?;
    let inst = Instance { file: file.name.clone(), sha256: String::new(), obj };
    let rows = count(&inst, tags::ROWS, "Rows (0028,0010)")? as usize;
    let cols = count(&inst, tags::COLUMNS, "Columns (0028,0011)")? as usize;
    Ok((rows, cols, decode(&inst, rows * cols)?))
}

fn decode(inst: &Instance, per_slice: usize) -> Result<Vec<f32>, DicomError> {
    let ts = inst.obj.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let decoded = inst.obj.decode_pixel_data().map_err(|e| DicomError::Parse {
        file: inst.file.clone(),
        detail: format!("pixel data could not be decoded ({e}; transfer syntax {ts}, {})", transfer_syntax_name(&ts)),
    })?;
    if decoded.samples_per_pixel() != 1 {
        return Err(DicomError::Parse {
            file: inst.file.clone(),
            detail: format!("{} samples per pixel: expected grey-scale MR", decoded.samples_per_pixel()),
        });
    }
    let pixels: Vec<f32> = decoded.to_vec().map_err(|e| DicomError::Parse {
        file: inst.file.clone(),
        detail: format!("pixel values could not be converted ({e})"),
    })?;
    if pixels.len() != per_slice {
        return Err(DicomError::Parse {
            file: inst.file.clone(),
            detail: format!("{} pixel values: expected {per_slice}", pixels.len()),
        });
    }
    Ok(pixels)
}

/// A reader's name for the transfer syntaxes that matter here.
pub fn transfer_syntax_name(uid: &str) -> &'static str {
    match uid {
        uids::IMPLICIT_VR_LITTLE_ENDIAN => "implicit VR little endian",
        uids::EXPLICIT_VR_LITTLE_ENDIAN => "explicit VR little endian",
        "1.2.840.10008.1.2.2" => "explicit VR big endian (retired)",
        uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN => "deflated explicit VR little endian",
        uids::RLE_LOSSLESS => "RLE lossless",
        uids::JPEG_BASELINE8_BIT => "JPEG baseline",
        uids::JPEG_EXTENDED12_BIT => "JPEG extended (12-bit): not supported",
        uids::JPEG_LOSSLESS => "JPEG lossless",
        uids::JPEG_LOSSLESS_SV1 => "JPEG lossless (first-order prediction)",
        uids::JPEGLS_LOSSLESS => "JPEG-LS lossless: not supported",
        uids::JPEGLS_NEAR_LOSSLESS => "JPEG-LS near-lossless: not supported",
        uids::JPEG2000_LOSSLESS => "JPEG 2000 lossless",
        uids::JPEG2000 => "JPEG 2000",
        _ => "unrecognised",
    }
}
