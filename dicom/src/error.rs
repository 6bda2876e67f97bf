//! The errors of DICOM ingest, each naming the file or series it is about (by path in the
//! upload, series number and description; never a patient identifier) and what was expected.

use gmmas_imaging::ImagingError;

#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    /// A file or archive could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A file that says it is DICOM could not be parsed.
    #[error("{file}: not a readable DICOM file ({detail})")]
    Parse { file: String, detail: String },
    /// A tag is missing or holds a value we cannot use.
    #[error("{file}: {tag} {detail}")]
    Tag { file: String, tag: &'static str, detail: String },
    /// The series as a whole is not one usable volume.
    #[error("{series}: {detail}")]
    Series { series: String, detail: String },
    /// The study as a whole cannot be analysed (nothing usable, an override that names nothing).
    #[error("study: {0}")]
    Study(String),
    /// A zip archive is corrupt or holds something we refuse.
    #[error("zip archive {path}: {detail}")]
    Zip { path: String, detail: String },
    /// A label map to be written as a DICOM SEG is not on its source series' grid.
    #[error(
        "{series}: the label map is not on the series' grid ({detail}): expected a segmentation on the \
         series' own voxels ({expected:?} columns, rows, slices, with the series' affine)"
    )]
    SegGrid { series: String, detail: String, expected: [usize; 3] },
    /// A label map holds something a DICOM SEG of BraTS labels cannot carry.
    #[error("label map: {0}")]
    SegLabels(String),
    /// Building or resampling a volume failed.
    #[error(transparent)]
    Imaging(#[from] ImagingError),
}

impl DicomError {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        DicomError::Io { path: path.as_ref().display().to_string(), source }
    }

    pub(crate) fn series(series: impl std::fmt::Display, detail: impl Into<String>) -> Self {
        DicomError::Series { series: series.to_string(), detail: detail.into() }
    }
}
