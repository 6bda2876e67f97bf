//! DICOM in: a study (folder or zip) read into series, each series' sequence identified, and the
//! four sequences GMMAS analyses built as volumes on one grid — plus synthetic series for tests.
//!
//! Nothing of the DICOM headers is kept but geometry and the series' names (see
//! [`study::Manifest`]): patient identifiers never leave this crate, except copied unchanged into
//! the DICOM SEG written back for the same study ([`seg`]).

pub mod error;
pub mod geometry;
pub mod identify;
pub mod seg;
pub mod series;
pub mod source;
pub mod study;
pub mod synth;

pub use error::DicomError;
pub use geometry::PlaneKind;
pub use identify::{Identified, SeriesText, identify};
pub use seg::{SegSource, build_seg, write_seg};
pub use source::{RawFile, SourceLimits};
pub use study::{
    Alignment, Converted, Manifest, NativeGrid, Override, SeriesSummary, StudyOptions, convert_files, convert_path,
};

/// The tags and value representations callers name (re-exported from dicom-rs).
pub use dicom_core::{Tag, VR};
pub use dicom_dictionary_std::tags;
