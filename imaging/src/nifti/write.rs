//! Writing NIfTI-1: a header with sform and qform from the grid's affine, and float, typed or
//! label bodies, optionally gzip-compressed.

use super::Datatype;
use super::header::affine_to_quatern;
use crate::error::ImagingError;
use crate::types::{Grid, LabelVolume, Volume};
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;

/// Builds a 352-byte NIfTI-1 header (348 + empty extension flag) for a grid and datatype.
pub(super) fn build_header(grid: &Grid, dt: Datatype) -> Vec<u8> {
    let mut h = vec![0u8; 352];
    let put = |h: &mut Vec<u8>, off: usize, b: &[u8]| h[off..off + b.len()].copy_from_slice(b);
    put(&mut h, 0, &348i32.to_le_bytes());
    h[38] = b'r';
    let dims = [
        3i16,
        grid.dims[0].min(i16::MAX as usize) as i16,
        grid.dims[1].min(i16::MAX as usize) as i16,
        grid.dims[2].min(i16::MAX as usize) as i16,
        1,
        1,
        1,
        1,
    ];
    for (i, d) in dims.iter().enumerate() {
        put(&mut h, 40 + 2 * i, &d.to_le_bytes());
    }
    put(&mut h, 70, &dt.code().to_le_bytes());
    put(&mut h, 72, &((dt.size() * 8) as i16).to_le_bytes());
    let (quat, qfac) = affine_to_quatern(&grid.affine);
    let pix = [qfac, grid.pixdim[0], grid.pixdim[1], grid.pixdim[2], 1.0, 1.0, 1.0, 1.0];
    for (i, p) in pix.iter().enumerate() {
        put(&mut h, 76 + 4 * i, &p.to_le_bytes());
    }
    put(&mut h, 108, &352f32.to_le_bytes());
    put(&mut h, 112, &1f32.to_le_bytes());
    put(&mut h, 116, &0f32.to_le_bytes());
    h[123] = 2; // xyzt_units: millimetres
    put(&mut h, 148, b"gmmas-imaging");
    put(&mut h, 252, &1i16.to_le_bytes()); // qform_code: scanner
    put(&mut h, 254, &1i16.to_le_bytes()); // sform_code: scanner
    for (i, q) in quat.iter().enumerate() {
        put(&mut h, 256 + 4 * i, &(*q as f32).to_le_bytes());
    }
    for i in 0..3 {
        put(&mut h, 268 + 4 * i, &(grid.affine[i][3] as f32).to_le_bytes());
    }
    for row in 0..3 {
        for col in 0..4 {
            put(&mut h, 280 + 16 * row + 4 * col, &(grid.affine[row][col] as f32).to_le_bytes());
        }
    }
    put(&mut h, 344, b"n+1\0");
    h
}

#[allow(clippy::expect_used, clippy::unwrap_used, reason = "gzip into a Vec<u8> cannot fail")]
pub(super) fn finish(mut file: Vec<u8>, body: &[u8], gzip: bool) -> Vec<u8> {
    if gzip {
        let mut enc = GzEncoder::new(Vec::with_capacity((file.len() + body.len()) / 2), Compression::fast());
        // Writing into a Vec cannot fail.
        enc.write_all(&file).expect("gzip into memory");
        enc.write_all(body).expect("gzip into memory");
        enc.finish().expect("gzip into memory")
    } else {
        file.extend_from_slice(body);
        file
    }
}

/// Voxel values of `data` resized to the grid's voxel count (missing values as 0).
fn fitted<T: Copy + Default>(data: &[T], n: usize) -> impl Iterator<Item = T> + '_ {
    data.iter().copied().chain(std::iter::repeat(T::default())).take(n)
}

/// Serializes a volume as NIfTI-1 float32 with sform and qform set from the affine.
/// The grid's voxel count decides the body size (extra values dropped, missing ones written as 0).
pub fn write_volume(v: &Volume, gzip: bool) -> Vec<u8> {
    let n = v.grid.nvox();
    let hdr = build_header(&v.grid, Datatype::F32);
    let mut body = Vec::with_capacity(n * 4);
    for x in fitted(&v.data, n) {
        body.extend_from_slice(&x.to_le_bytes());
    }
    finish(hdr, &body, gzip)
}

/// Serializes a volume with a chosen voxel type; integer types require integral in-range values.
pub fn write_volume_as(v: &Volume, dt: Datatype, gzip: bool) -> Result<Vec<u8>, ImagingError> {
    crate::types::check_len(&v.grid, v.data.len())?;
    if let Some((lo, hi)) = dt.int_range()
        && let Some((index, &x)) =
            v.data.iter().enumerate().find(|(_, x)| !(x.fract() == 0.0 && (lo..=hi).contains(&f64::from(**x))))
    {
        return Err(ImagingError::invalid(
            format!("voxel {index}"),
            x,
            format!("an integer in {lo}..={hi} for {dt:?}"),
        ));
    }
    let hdr = build_header(&v.grid, dt);
    let mut body = Vec::with_capacity(v.data.len() * dt.size());
    for &x in &v.data {
        match dt {
            Datatype::U8 => body.push(x as u8),
            Datatype::I8 => body.push(x as i8 as u8),
            Datatype::I16 => body.extend_from_slice(&(x as i16).to_le_bytes()),
            Datatype::U16 => body.extend_from_slice(&(x as u16).to_le_bytes()),
            Datatype::I32 => body.extend_from_slice(&(x as i32).to_le_bytes()),
            Datatype::U32 => body.extend_from_slice(&(x as u32).to_le_bytes()),
            Datatype::F32 => body.extend_from_slice(&x.to_le_bytes()),
            Datatype::F64 => body.extend_from_slice(&f64::from(x).to_le_bytes()),
        }
    }
    Ok(finish(hdr, &body, gzip))
}

/// Serializes a label map as NIfTI-1 uint8 (same sizing rule as [`write_volume`]).
pub fn write_labels(l: &LabelVolume, gzip: bool) -> Vec<u8> {
    let n = l.grid.nvox();
    let hdr = build_header(&l.grid, Datatype::U8);
    let body: Vec<u8> = fitted(&l.data, n).collect();
    finish(hdr, &body, gzip)
}
