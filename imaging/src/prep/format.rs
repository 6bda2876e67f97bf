//! The prepared-case file: four cropped channels and the geometry that maps them back, as a
//! versioned header (MessagePack) and raw little-endian f32 channels.

use super::Geometry;
use crate::error::ImagingError;
use crate::types::Modality;
use serde::{Deserialize, Serialize};

/// A preprocessed case: four channels on the cropped canonical grid.
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedCase {
    /// Which channels hold data (missing channels are all zeros).
    pub present: [bool; 4],
    /// Cropped dims (nx, ny, nz).
    pub dims: [usize; 3],
    /// Channel-major in [`Modality::index`] order, each channel x-fastest.
    pub data: Vec<f32>,
    pub geometry: Geometry,
}

/// Format version written by [`PreparedCase::to_bytes`].
pub const PREPARED_FORMAT_VERSION: u32 = 1;
const PREPARED_MAGIC: &[u8; 8] = b"GMMASPC\0";

#[derive(Serialize, Deserialize)]
pub(super) struct PreparedHeader {
    pub(super) format_version: u32,
    pub(super) dtype: String,
    pub(super) channels: Vec<Modality>,
    pub(super) present: [bool; 4],
    pub(super) dims: [usize; 3],
    pub(super) geometry: Geometry,
}

impl PreparedCase {
    fn channel_len(&self) -> usize {
        self.dims.iter().product()
    }

    /// One channel's cropped voxels (empty if `data` is inconsistent with `dims`).
    pub fn channel(&self, m: Modality) -> &[f32] {
        let n = self.channel_len();
        self.data.get(m.index() * n..(m.index() + 1) * n).unwrap_or(&[])
    }

    /// `GMMASPC\0`, u32 LE header length, msgpack header (format version, dtype, channel order,
    /// present, dims, geometry), then the channel data as raw little-endian f32.
    #[allow(clippy::expect_used, clippy::unwrap_used, reason = "MessagePack of a plain struct into memory cannot fail")]
    pub fn to_bytes(&self) -> Vec<u8> {
        let hdr = PreparedHeader {
            format_version: PREPARED_FORMAT_VERSION,
            dtype: "f32le".into(),
            channels: Modality::ALL.to_vec(),
            present: self.present,
            dims: self.dims,
            geometry: self.geometry.clone(),
        };
        // Serializing plain data structures into memory cannot fail.
        let h = rmp_serde::to_vec_named(&hdr).expect("msgpack of a plain struct");
        let mut out = Vec::with_capacity(12 + h.len() + self.data.len() * 4);
        out.extend_from_slice(PREPARED_MAGIC);
        out.extend_from_slice(&(h.len() as u32).to_le_bytes());
        out.extend_from_slice(&h);
        for v in &self.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Parses and validates bytes from [`PreparedCase::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Result<PreparedCase, ImagingError> {
        let fmt = |s: String| ImagingError::Format(s);
        if b.len() < 12 || &b[..8] != PREPARED_MAGIC {
            return Err(fmt("magic: expected \"GMMASPC\\0\" at the start".into()));
        }
        let hlen = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
        if hlen > b.len() - 12 {
            return Err(fmt(format!("header length {hlen}: expected at most {}", b.len() - 12)));
        }
        let hdr: PreparedHeader = rmp_serde::from_slice(&b[12..12 + hlen]).map_err(|e| fmt(format!("header: {e}")))?;
        if hdr.format_version != PREPARED_FORMAT_VERSION {
            return Err(fmt(format!("format_version={}: expected {PREPARED_FORMAT_VERSION}", hdr.format_version)));
        }
        if hdr.dtype != "f32le" {
            return Err(fmt(format!("dtype={:?}: expected \"f32le\"", hdr.dtype)));
        }
        if hdr.channels != Modality::ALL {
            return Err(fmt(format!("channels={:?}: expected [t1, t1ce, t2, flair]", hdr.channels)));
        }
        hdr.geometry.validate()?;
        if hdr.dims != hdr.geometry.cropped_dims() {
            return Err(fmt(format!(
                "dims={:?}: expected the geometry's crop size {:?}",
                hdr.dims,
                hdr.geometry.cropped_dims()
            )));
        }
        let n: usize = hdr.dims.iter().product();
        let body = &b[12 + hlen..];
        if body.len() != n * 4 * 4 {
            return Err(fmt(format!(
                "data length {} bytes: expected {} (4 channels x {n} voxels x 4 bytes)",
                body.len(),
                n * 16
            )));
        }
        let data: Vec<f32> = body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let count = data.iter().filter(|v| !v.is_finite()).count();
        if count > 0 {
            return Err(ImagingError::NonFinite { count });
        }
        Ok(PreparedCase { present: hdr.present, dims: hdr.dims, data, geometry: hdr.geometry })
    }
}
