//! A study turned into the four sequences GMMAS reads: series identified (or named by the user),
//! one chosen per sequence, read as volumes and brought onto the reference series' grid.

use crate::error::DicomError;
use crate::geometry::PlaneKind;
use crate::identify::identify;
use crate::seg::SegSource;
use crate::series::{Series, Skipped, group};
use crate::source::{RawFile, SourceLimits, read_study_files};
use gmmas_imaging::register::{Rigid, apply_rigid, difference, register_rigid};
use gmmas_imaging::resample::{compose, invert_affine, resample_linear};
use gmmas_imaging::{Grid, Modality, Volume, same_grid};
use serde::Serialize;
use std::path::Path;
use std::str::FromStr;

/// The user's word on one series: `NUMBER=t1|t1ce|t2|flair|ignore` (NUMBER: SeriesNumber).
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    pub series: i64,
    /// `None`: never use this series.
    pub sequence: Option<Modality>,
}

impl FromStr for Override {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, m) =
            s.split_once('=').ok_or_else(|| format!("\"{s}\": expected SERIES_NUMBER=SEQUENCE, e.g. 5=t1ce"))?;
        let series = n.trim().parse().map_err(|_| format!("\"{n}\": expected a series number"))?;
        let sequence = match m.trim() {
            "ignore" | "none" => None,
            other => Some(
                Modality::parse(other).ok_or_else(|| format!("\"{other}\": expected t1, t1ce, t2, flair or ignore"))?,
            ),
        };
        Ok(Override { series, sequence })
    }
}

/// How a study is read.
#[derive(Clone, Debug)]
pub struct StudyOptions {
    pub overrides: Vec<Override>,
    /// The sequence whose grid the others are resampled onto (when present; else the first
    /// present in T1ce, T1, FLAIR, T2 order).
    pub reference: Modality,
    pub limits: SourceLimits,
    /// Co-register every sequence to the reference (rigid, mutual information); off: combine
    /// the series through the scanner's coordinates alone.
    pub register: bool,
}

impl Default for StudyOptions {
    fn default() -> Self {
        StudyOptions {
            overrides: Vec::new(),
            reference: Modality::T1ce,
            limits: SourceLimits::default(),
            register: true,
        }
    }
}

/// Motion below this (mm, at the worst corner of the reference's field of view) is left
/// uncorrected: series that were not moved come out of the registration with a residual of up to
/// ~1.2 mm there (0.2° and 0.3 mm on a real case), and resampling them for that would only blur.
pub const MIN_CORRECTED_MM: f64 = 2.0;

/// How one sequence was aligned with the reference.
#[derive(Clone, Debug, Serialize)]
pub struct Alignment {
    pub sequence: Modality,
    /// Rotation about x, y, z (degrees) and translation (mm) found, reference world → series world.
    pub rotation_deg: [f64; 3],
    pub translation_mm: [f64; 3],
    /// Largest displacement the transform makes at a corner of the reference's field of view.
    pub moved_mm: f64,
    /// True when the transform was applied (`moved_mm` ≥ [`MIN_CORRECTED_MM`]).
    pub applied: bool,
    /// Mutual information without and with the transform (finest level).
    pub mi_before: f64,
    pub mi_after: f64,
}

/// What was found in one series and what became of it (no patient identifiers).
#[derive(Clone, Debug, Serialize)]
pub struct SeriesSummary {
    pub number: Option<i64>,
    pub description: String,
    pub modality: String,
    pub images: usize,
    pub transfer_syntax: String,
    /// The sequence it was identified as (or named by an override).
    pub sequence: Option<Modality>,
    pub reason: String,
    /// True for the one series taken for its sequence.
    pub used: bool,
    pub plane: Option<PlaneKind>,
    /// Columns, rows, slices.
    pub dims: Option<[usize; 3]>,
    pub spacing_mm: Option<[f64; 3]>,
}

/// The record of one conversion, stored with the case in place of the DICOM headers.
#[derive(Clone, Debug, Serialize)]
pub struct Manifest {
    pub files: usize,
    pub skipped: Vec<Skipped>,
    pub series: Vec<SeriesSummary>,
    /// The sequence whose grid the volumes are on.
    pub reference: Modality,
    /// What a reader should know: series identified but not usable, sequences absent.
    pub warnings: Vec<String>,
    /// Co-registration of each sequence other than the reference (empty when switched off).
    pub alignment: Vec<Alignment>,
}

/// The four (or fewer) volumes on one grid, each sequence's own (native) grid, and the record.
pub struct Converted {
    /// On the reference grid, in T1, T1ce, T2, FLAIR order.
    pub volumes: Vec<(Modality, Volume)>,
    /// Each sequence's grid as acquired (for results in native space).
    pub native: Vec<NativeGrid>,
    /// Each sequence's series content hash ([`Series::content_sha256`]).
    pub input_sha256: Vec<(Modality, String)>,
    pub manifest: Manifest,
}

/// A series' own grid, and the same voxels placed in the reference's world (after the motion
/// co-registration found): results are resampled onto `in_reference` and written with `grid`.
#[derive(Clone, Debug)]
pub struct NativeGrid {
    pub sequence: Modality,
    pub grid: Grid,
    pub in_reference: Grid,
    /// The series as a DICOM SEG source (its slices' UIDs and positions), for writing results
    /// back as a DICOM Segmentation that references it.
    pub source: SegSource,
}

/// Reads the study at `path` (folder or zip).
pub fn convert_path(path: &Path, opts: &StudyOptions) -> Result<Converted, DicomError> {
    convert_files(read_study_files(path, &opts.limits)?, opts)
}

/// Converts already-read files (an upload held in memory).
pub fn convert_files(files: Vec<RawFile>, opts: &StudyOptions) -> Result<Converted, DicomError> {
    let nfiles = files.len();
    let (series, skipped) = group(files)?;
    if series.is_empty() {
        return Err(DicomError::Study(format!("none of the {nfiles} file(s) is a DICOM image")));
    }
    for o in &opts.overrides {
        let s = series.iter().find(|s| s.number == Some(o.series)).ok_or_else(|| {
            DicomError::Study(format!(
                "the override names series {}, which is not in the study (series: {})",
                o.series,
                numbers(&series)
            ))
        })?;
        if o.sequence.is_some() && !s.is_mr() {
            return Err(DicomError::series(
                s,
                format!("is modality {:?}: an override can only name an MR series", s.modality),
            ));
        }
    }
    let mut summaries: Vec<SeriesSummary> = series.iter().map(|s| summarize(s, opts)).collect();
    // One series per sequence: an override wins; else original before derived, then the most
    // voxels of the finest grid, then the later series.
    let mut chosen: Vec<(Modality, usize)> = Vec::new();
    for m in Modality::ALL {
        let candidates: Vec<usize> =
            (0..series.len()).filter(|&i| summaries[i].sequence == Some(m) && summaries[i].dims.is_some()).collect();
        let forced: Vec<usize> =
            candidates.iter().copied().filter(|&i| overridden(opts, &series[i]).is_some()).collect();
        let pool = if forced.is_empty() { candidates } else { forced };
        let best = pool.into_iter().max_by(|&a, &b| {
            rank(&series[a], &summaries[a])
                .total_cmp(&rank(&series[b], &summaries[b]))
                .then(series[a].number.cmp(&series[b].number))
        });
        if let Some(i) = best {
            summaries[i].used = true;
            chosen.push((m, i));
        }
    }
    // A series named by an override must stack; an auto-identified one that does not is reported.
    for o in opts.overrides.iter().filter(|o| o.sequence.is_some()) {
        if let Some(s) = series.iter().find(|s| s.number == Some(o.series)) {
            s.stack()?;
        }
    }
    if chosen.is_empty() {
        let list: Vec<String> = series.iter().zip(&summaries).map(|(s, sum)| format!("{s}: {}", sum.reason)).collect();
        return Err(DicomError::Study(format!(
            "no series was identified as T1, T1ce, T2 or FLAIR (name them with overrides such as 5=t1ce): {}",
            list.join("; ")
        )));
    }
    let mut warnings = Vec::new();
    for (s, sum) in series.iter().zip(&summaries) {
        if let (Some(m), None) = (sum.sequence, sum.dims) {
            warnings.push(format!("{s} was identified as {m} but is not usable: {}", sum.reason));
        }
    }
    for m in Modality::ALL {
        if !chosen.iter().any(|(c, _)| *c == m) {
            warnings.push(format!("no {m} series: the analysis runs without it"));
        }
    }
    let mut native = Vec::new();
    let mut read = Vec::new();
    let input_sha256 = chosen.iter().map(|&(m, i)| (m, series[i].content_sha256())).collect();
    for &(m, i) in &chosen {
        let v = series[i].volume()?;
        let source = SegSource::from_series(&series[i])?;
        native.push(NativeGrid { sequence: m, grid: v.grid.clone(), in_reference: v.grid.clone(), source });
        read.push((m, v));
    }
    let reference = [opts.reference, Modality::T1ce, Modality::T1, Modality::Flair, Modality::T2]
        .into_iter()
        .find(|r| read.iter().any(|(m, _)| m == r))
        .unwrap_or(read[0].0);
    let ref_grid = read
        .iter()
        .find(|(m, _)| *m == reference)
        .map(|(_, v)| v.grid.clone())
        .unwrap_or_else(|| read[0].1.grid.clone());
    let mut volumes = Vec::new();
    let mut alignment = Vec::new();
    let ref_volume = read.iter().find(|(m, _)| *m == reference).map(|(_, v)| v.clone());
    for (m, v) in read {
        let aligned = match (&ref_volume, opts.register && m != reference) {
            (Some(fixed), true) => {
                let reg = register_rigid(fixed, &v)?;
                let (_, moved_mm) = difference(&reg.transform, &Rigid::identity(reg.transform.centre), &ref_grid);
                let applied = moved_mm >= MIN_CORRECTED_MM;
                alignment.push(Alignment {
                    sequence: m,
                    rotation_deg: reg.transform.rotation.map(f64::to_degrees),
                    translation_mm: reg.transform.translation,
                    moved_mm,
                    applied,
                    mi_before: reg.mi_start,
                    mi_after: reg.mi_end,
                });
                if applied {
                    // Series voxels in the reference's world: T⁻¹ · A.
                    let back = invert_affine(&reg.transform.affine())?;
                    if let Some(n) = native.iter_mut().find(|n| n.sequence == m) {
                        n.in_reference.affine = compose(&back, &n.grid.affine);
                    }
                }
                applied.then_some(apply_rigid(&v, &ref_grid, &reg.transform)?)
            }
            _ => None,
        };
        let v = match aligned {
            Some(a) => a,
            None if same_grid(&v.grid, &ref_grid).is_ok() => v,
            None => resample_linear(&v, &ref_grid)?,
        };
        volumes.push((m, v));
    }
    Ok(Converted {
        volumes,
        native,
        input_sha256,
        manifest: Manifest { files: nfiles, skipped, series: summaries, reference, warnings, alignment },
    })
}

fn numbers(series: &[Series]) -> String {
    series.iter().map(|s| s.number.map_or("?".into(), |n| n.to_string())).collect::<Vec<_>>().join(", ")
}

fn overridden<'a>(opts: &'a StudyOptions, s: &Series) -> Option<&'a Override> {
    opts.overrides.iter().find(|o| Some(o.series) == s.number)
}

/// Preference among candidates for one sequence: original acquisitions first, then voxel count
/// divided by voxel volume (finer and larger coverage wins).
fn rank(s: &Series, sum: &SeriesSummary) -> f64 {
    let original = if s.text.image_type.to_ascii_uppercase().starts_with("DERIVED") { 0.0 } else { 1e12 };
    let (Some(d), Some(sp)) = (sum.dims, sum.spacing_mm) else { return 0.0 };
    let voxels = (d[0] * d[1] * d[2]) as f64;
    original + voxels / (sp[0] * sp[1] * sp[2]).max(1e-6)
}

fn summarize(s: &Series, opts: &StudyOptions) -> SeriesSummary {
    let mut sum = SeriesSummary {
        number: s.number,
        description: s.text.description.clone(),
        modality: s.modality.clone(),
        images: s.instances.len(),
        transfer_syntax: s.transfer_syntax.clone(),
        sequence: None,
        reason: String::new(),
        used: false,
        plane: None,
        dims: None,
        spacing_mm: None,
    };
    if let Some(o) = overridden(opts, s) {
        sum.sequence = o.sequence;
        sum.reason = match o.sequence {
            Some(m) => format!("named {m} by the user"),
            None => "ignored by the user".into(),
        };
    } else if !s.is_mr() {
        sum.reason = format!("modality {:?}: not MR", s.modality);
        return sum;
    } else {
        let id = identify(&s.text);
        sum.sequence = id.sequence;
        sum.reason = id.reason;
    }
    if sum.sequence.is_some() {
        match s.stack() {
            Ok(st) => {
                sum.plane = Some(st.plane);
                sum.dims = s.instances.first().and_then(|i| {
                    let r = i.obj.get(dicom_dictionary_std::tags::ROWS)?.to_int::<usize>().ok()?;
                    let c = i.obj.get(dicom_dictionary_std::tags::COLUMNS)?.to_int::<usize>().ok()?;
                    Some([c, r, st.order.len()])
                });
                sum.spacing_mm = Some(st.pixdim);
            }
            Err(e) => sum.reason = format!("{}; not usable: {e}", sum.reason),
        }
    }
    sum
}
