//! NIfTI-1 reading and writing (`.nii` and `.nii.gz`) with strict header validation.
//! Every header field is checked before the body is decompressed, and decompression is capped.

mod header;
mod read;
#[cfg(test)]
mod tests;
mod write;

pub use header::{read_header, read_header_with};
pub use read::{check_volume_from, read_components, read_labels, read_volume, read_volumes_parallel};
pub use write::{write_labels, write_volume, write_volume_as};

use crate::error::ImagingError;
use crate::types::Grid;
use std::io::{ErrorKind, Read};

/// Size of the NIfTI-1 header block in bytes.
const HDR: usize = 348;
/// Decompression chunk size; a multiple of every voxel size.
const CHUNK: usize = 1 << 20;

/// Voxel storage types we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datatype {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    F32,
    F64,
}

impl Datatype {
    /// The NIfTI `datatype` code.
    pub fn code(self) -> i16 {
        match self {
            Datatype::U8 => 2,
            Datatype::I16 => 4,
            Datatype::I32 => 8,
            Datatype::F32 => 16,
            Datatype::F64 => 64,
            Datatype::I8 => 256,
            Datatype::U16 => 512,
            Datatype::U32 => 768,
        }
    }

    /// Parses a NIfTI `datatype` code.
    pub fn from_code(code: i16) -> Option<Datatype> {
        Some(match code {
            2 => Datatype::U8,
            4 => Datatype::I16,
            8 => Datatype::I32,
            16 => Datatype::F32,
            64 => Datatype::F64,
            256 => Datatype::I8,
            512 => Datatype::U16,
            768 => Datatype::U32,
            _ => return None,
        })
    }

    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            Datatype::U8 | Datatype::I8 => 1,
            Datatype::I16 | Datatype::U16 => 2,
            Datatype::I32 | Datatype::U32 | Datatype::F32 => 4,
            Datatype::F64 => 8,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Datatype::F32 | Datatype::F64)
    }

    /// Inclusive value range representable by an integer type (None for floats).
    fn int_range(self) -> Option<(f64, f64)> {
        Some(match self {
            Datatype::U8 => (0.0, 255.0),
            Datatype::I8 => (-128.0, 127.0),
            Datatype::I16 => (-32768.0, 32767.0),
            Datatype::U16 => (0.0, 65535.0),
            Datatype::I32 => (-2147483648.0, 2147483647.0),
            Datatype::U32 => (0.0, 4294967295.0),
            Datatype::F32 | Datatype::F64 => return None,
        })
    }
}

/// A validated NIfTI-1 header.
#[derive(Clone, Debug, PartialEq)]
pub struct NiftiHeader {
    /// Byte order of the file.
    pub little_endian: bool,
    /// `n+1` (image follows the header) rather than `ni1` (separate .img file).
    pub single_file: bool,
    pub dims: [usize; 3],
    pub datatype: Datatype,
    pub pixdim: [f32; 3],
    /// qform handedness (pixdim[0]): -1 or 1.
    pub qfac: f32,
    /// Byte offset of the image data.
    pub vox_offset: u64,
    pub scl_slope: f32,
    pub scl_inter: f32,
    pub qform_code: i16,
    pub sform_code: i16,
    /// Voxel -> world: sform if sform_code>0, else qform if qform_code>0, else diag(pixdim).
    pub affine: [[f64; 4]; 4],
    pub descrip: String,
}

impl NiftiHeader {
    /// The grid the header describes.
    pub fn grid(&self) -> Grid {
        Grid { dims: self.dims, pixdim: self.pixdim, affine: self.affine }
    }

    /// Voxel count.
    pub fn nvox(&self) -> u64 {
        self.dims.iter().map(|&d| d as u64).product()
    }

    /// Size of the image data in bytes.
    pub fn body_bytes(&self) -> u64 {
        self.nvox() * self.datatype.size() as u64
    }

    /// `(slope, inter)` when the header asks for a non-identity scaling. A zero or non-finite
    /// slope means "no scaling"; a non-finite intercept with a valid slope is taken as 0.
    fn scaling(&self) -> Option<(f64, f64)> {
        let s = f64::from(self.scl_slope);
        let i = f64::from(self.scl_inter);
        if !s.is_finite() || s == 0.0 {
            return None;
        }
        let i = if i.is_finite() { i } else { 0.0 };
        if s == 1.0 && i == 0.0 { None } else { Some((s, i)) }
    }
}

/// Whether `bytes` start with the gzip magic number.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// Fills `buf` from `r` as far as the stream allows; returns the number of bytes read. A premature
/// end is not an error here (callers report `Truncated`). A failure is corrupt data when `r` is a
/// gzip decoder (`gz`), and an I/O error of the upload otherwise.
fn read_full(r: &mut impl Read, buf: &mut [u8], gz: bool) -> Result<usize, ImagingError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if gz && e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) if gz => return Err(ImagingError::Gzip(e.to_string())),
            Err(e) => return Err(ImagingError::Io { path: "upload".into(), source: e }),
        }
    }
    Ok(filled)
}
