//! NIfTI I/O and validation, preprocessing and BraTS case layouts (pure Rust).
//! Pure Rust; the services call [`read_volume`], [`prep::prepare`] and [`prep::restore_labels`].

pub mod background;
pub mod brainmask;
pub mod brats;
pub mod distance;
mod error;
pub mod nifti;
pub mod orient;
pub mod par;
pub mod prep;
pub mod regions;
pub mod register;
pub mod resample;
pub mod share;
mod types;

pub use background::check_skull_stripped;
pub use error::ImagingError;
pub use nifti::{
    Datatype, NiftiHeader, check_volume_from, read_header, read_header_with, read_labels, read_volume,
    read_volumes_parallel, write_labels, write_volume, write_volume_as,
};
pub use orient::Orientation;
pub use prep::{Geometry, PrepOptions, PreparedCase, prepare, prepare_labels, restore_labels, restore_map};
pub use regions::{RegionVolumes, region_stats};
pub use share::share_dir;
pub use types::{Grid, LabelVolume, Limits, Modality, Volume, same_grid};
