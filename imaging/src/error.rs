//! The single error type of the crate.
//! Every message names the offending field or file and what was expected instead.

use thiserror::Error;

/// Everything that can go wrong while reading, validating, preparing or writing imaging data.
#[derive(Debug, Error)]
pub enum ImagingError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// An error while handling one particular file.
    #[error("{path}: {source}")]
    InFile {
        path: String,
        #[source]
        source: Box<ImagingError>,
    },
    /// The bytes are not a NIfTI-1 single file at all.
    #[error("not a NIfTI-1 file: {0}")]
    NotNifti(String),
    /// A NIfTI header field holds a value we refuse.
    #[error("header field {field}={value}: expected {expected}")]
    Header { field: String, value: String, expected: String },
    /// A size exceeds a configured [`crate::Limits`] value.
    #[error("{what}={value} exceeds the limit: expected at most {limit}")]
    TooLarge { what: String, value: u64, limit: u64 },
    /// The data ends before the header says it should.
    #[error("truncated {what}: expected {expected} bytes, got {got}")]
    Truncated { what: String, expected: u64, got: u64 },
    /// The gzip stream is corrupt (not merely short).
    #[error("corrupt gzip stream: {0}")]
    Gzip(String),
    /// Some voxels are NaN or infinite after scaling.
    #[error("{count} voxel(s) are NaN or infinite: expected finite values")]
    NonFinite { count: usize },
    /// A label volume holds a value outside the allowed set.
    #[error("label value {value} at voxel {index}: expected {expected}")]
    LabelValue { value: f64, index: usize, expected: String },
    /// Two volumes that must share a grid do not.
    #[error("grid mismatch ({what}): {detail}")]
    GridMismatch { what: String, detail: String },
    /// An argument or in-memory structure is inconsistent.
    #[error("invalid {field}={value}: expected {expected}")]
    Invalid { field: String, value: String, expected: String },
    /// No voxel is nonzero in any present modality.
    #[error("brain mask is empty: expected at least one nonzero voxel in a present modality")]
    EmptyMask,
    /// The background is not zero: a head with its skull, or a volume normalised without a mask.
    #[error(
        "{modality}: {edge_percent:.1}% of the voxels on the edges of the field of view are non-zero: expected a \
         skull-stripped volume whose background is exactly 0 (BraTS style). This looks like an unmasked head or a \
         volume normalised over the whole field of view; strip the skull first (GMMAS's brain mask is every voxel \
         that is non-zero in some sequence, so such input would be analysed wrongly)"
    )]
    NotSkullStripped { modality: String, edge_percent: f64 },
    /// A case directory does not have the expected BraTS file layout.
    #[error("case directory {dir}: {detail}")]
    Layout { dir: String, detail: String },
    /// A labels CSV could not be parsed.
    #[error("{path} line {line}: {detail}")]
    Csv { path: String, line: usize, detail: String },
    /// Serialized prepared-case bytes are malformed.
    #[error("prepared case bytes: {0}")]
    Format(String),
}

impl ImagingError {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        ImagingError::Io { path: path.as_ref().display().to_string(), source }
    }

    /// Attaches the file path to an error (I/O errors already carry one).
    pub fn in_file(self, path: impl AsRef<std::path::Path>) -> Self {
        match self {
            e @ (ImagingError::Io { .. } | ImagingError::InFile { .. }) => e,
            e => ImagingError::InFile { path: path.as_ref().display().to_string(), source: Box::new(e) },
        }
    }

    pub(crate) fn header(field: impl Into<String>, value: impl ToString, expected: impl Into<String>) -> Self {
        ImagingError::Header { field: field.into(), value: value.to_string(), expected: expected.into() }
    }

    /// A value outside what is accepted: which field, what it was, what was expected.
    pub fn invalid(field: impl Into<String>, value: impl ToString, expected: impl Into<String>) -> Self {
        ImagingError::Invalid { field: field.into(), value: value.to_string(), expected: expected.into() }
    }
}
