//! The NIfTI-1 header: parsing and validating the 348-byte block, and the quaternion <-> affine
//! conversions that reading and writing share.

use super::{Datatype, HDR, NiftiHeader, is_gzip, read_full};
use crate::error::ImagingError;
use crate::types::{Limits, check_affine, column_norms};
use flate2::read::MultiGzDecoder;
use std::io::Read;

struct Raw<'a> {
    b: &'a [u8],
    le: bool,
}

impl Raw<'_> {
    fn arr<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.b[off..off + N]);
        a
    }
    fn i16(&self, off: usize) -> i16 {
        let a = self.arr::<2>(off);
        if self.le { i16::from_le_bytes(a) } else { i16::from_be_bytes(a) }
    }
    fn f32(&self, off: usize) -> f32 {
        let a = self.arr::<4>(off);
        if self.le { f32::from_le_bytes(a) } else { f32::from_be_bytes(a) }
    }
}

/// Parses and validates a 348-byte header block (no body-size limits checked here).
// Long on purpose: the header's fields are read and checked in their on-disk order, so the function reads beside the NIfTI-1 layout; split up, that order would be scattered.
pub(super) fn parse_header(h: &[u8], limits: &Limits) -> Result<NiftiHeader, ImagingError> {
    if h.len() < HDR {
        return Err(ImagingError::NotNifti(format!(
            "input is {} bytes: expected at least {HDR} for a NIfTI-1 header",
            h.len()
        )));
    }
    let le_size = i32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let be_size = i32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let le = if le_size == 348 {
        true
    } else if be_size == 348 {
        false
    } else if le_size == 540 || be_size == 540 {
        return Err(ImagingError::NotNifti("sizeof_hdr=540 (NIfTI-2): expected 348 (NIfTI-1)".into()));
    } else {
        return Err(ImagingError::NotNifti(format!("sizeof_hdr={le_size}: expected 348")));
    };
    let r = Raw { b: h, le };

    let magic = &h[344..348];
    let single_file = match magic {
        b"n+1\0" => true,
        b"ni1\0" => false,
        _ => {
            return Err(ImagingError::NotNifti(format!(
                "magic {:?}: expected \"n+1\" or \"ni1\"",
                String::from_utf8_lossy(&magic[..3])
            )));
        }
    };

    let ndim = r.i16(40);
    if ndim != 3 && ndim != 4 {
        return Err(ImagingError::header("dim[0]", ndim, "3 or 4"));
    }
    if ndim == 4 {
        let d4 = r.i16(48);
        if d4 != 1 {
            return Err(ImagingError::header("dim[4]", d4, "1 (a single 3D volume)"));
        }
    }
    let mut dims = [0usize; 3];
    for (i, d) in dims.iter_mut().enumerate() {
        let v = r.i16(42 + 2 * i);
        if v < 1 || v as usize > limits.max_dim {
            return Err(ImagingError::header(format!("dim[{}]", i + 1), v, format!("1..={}", limits.max_dim)));
        }
        *d = v as usize;
    }

    let code = r.i16(70);
    let datatype = Datatype::from_code(code).ok_or_else(|| {
        ImagingError::header(
            "datatype",
            code,
            "one of 2 (uint8), 4 (int16), 8 (int32), 16 (float32), 64 (float64), 256 (int8), 512 (uint16), 768 (uint32)",
        )
    })?;
    let bitpix = r.i16(72);
    if bitpix as i64 != datatype.size() as i64 * 8 {
        return Err(ImagingError::header("bitpix", bitpix, format!("{} for datatype {code}", datatype.size() * 8)));
    }

    let qfac = if r.f32(76) < 0.0 { -1.0 } else { 1.0 };
    let mut pixdim = [0f32; 3];
    for (i, p) in pixdim.iter_mut().enumerate() {
        let v = r.f32(80 + 4 * i);
        if !(v.is_finite() && v > 0.0) {
            return Err(ImagingError::header(format!("pixdim[{}]", i + 1), v, "finite and > 0"));
        }
        *p = v;
    }

    let off = r.f32(108);
    let min_off = if single_file { 352.0 } else { 0.0 };
    // Below 2^64 a whole f32 converts to u64 exactly; the limit is then compared as an integer
    // (u64::MAX as f64 rounds up to 2^64, so a float comparison would let 2^64 through).
    let whole =
        off.is_finite() && off >= min_off && off.fract() == 0.0 && f64::from(off) < 18_446_744_073_709_551_616.0;
    if !(whole && off as u64 <= limits.max_file_bytes) {
        return Err(ImagingError::header(
            "vox_offset",
            off,
            format!("a whole number in {min_off}..={}", limits.max_file_bytes),
        ));
    }
    let vox_offset = off as u64;

    let scl_slope = r.f32(112);
    let scl_inter = r.f32(116);
    let qform_code = r.i16(252);
    let sform_code = r.i16(254);

    let affine = if sform_code > 0 {
        let mut a = [[0.0; 4]; 4];
        for (row, name) in ["srow_x", "srow_y", "srow_z"].iter().enumerate() {
            for (col, cell) in a[row].iter_mut().enumerate() {
                let v = r.f32(280 + 16 * row + 4 * col);
                if !v.is_finite() {
                    return Err(ImagingError::header(format!("{name}[{col}]"), v, "finite"));
                }
                *cell = f64::from(v);
            }
        }
        a[3][3] = 1.0;
        a
    } else if qform_code > 0 {
        let q = [r.f32(256), r.f32(260), r.f32(264)];
        let o = [r.f32(268), r.f32(272), r.f32(276)];
        for (name, v) in ["quatern_b", "quatern_c", "quatern_d"].iter().zip(q) {
            if !v.is_finite() {
                return Err(ImagingError::header(*name, v, "finite"));
            }
        }
        for (name, v) in ["qoffset_x", "qoffset_y", "qoffset_z"].iter().zip(o) {
            if !v.is_finite() {
                return Err(ImagingError::header(*name, v, "finite"));
            }
        }
        qform_affine(
            [f64::from(q[0]), f64::from(q[1]), f64::from(q[2])],
            [f64::from(o[0]), f64::from(o[1]), f64::from(o[2])],
            [f64::from(pixdim[0]), f64::from(pixdim[1]), f64::from(pixdim[2])],
            qfac,
        )
    } else {
        let mut a = [[0.0; 4]; 4];
        for i in 0..3 {
            a[i][i] = f64::from(pixdim[i]);
        }
        a[3][3] = 1.0;
        a
    };
    if let Err(why) = check_affine(&affine) {
        let src = if sform_code > 0 {
            "sform (srow_x/y/z)"
        } else if qform_code > 0 {
            "qform (quatern_*, pixdim)"
        } else {
            "pixdim"
        };
        return Err(ImagingError::header(
            format!("affine from {src}"),
            why,
            "a finite, non-singular voxel-to-world matrix",
        ));
    }

    let descrip = {
        let d = &h[148..228];
        let end = d.iter().position(|&c| c == 0).unwrap_or(d.len());
        String::from_utf8_lossy(&d[..end]).into_owned()
    };

    Ok(NiftiHeader {
        little_endian: le,
        single_file,
        dims,
        datatype,
        pixdim,
        qfac,
        vox_offset,
        scl_slope,
        scl_inter,
        qform_code,
        sform_code,
        affine,
        descrip,
    })
}

/// Affine from the NIfTI quaternion representation.
fn qform_affine(q: [f64; 3], offset: [f64; 3], pixdim: [f64; 3], qfac: f32) -> [[f64; 4]; 4] {
    let (mut b, mut c, mut d) = (q[0], q[1], q[2]);
    let s = b * b + c * c + d * d;
    let a = if s > 1.0 {
        // Slightly denormalized input: rescale to a unit quaternion with a = 0.
        let n = s.sqrt();
        b /= n;
        c /= n;
        d /= n;
        0.0
    } else {
        (1.0 - s).sqrt()
    };
    let rot = [
        [a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c)],
        [2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b)],
        [2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - b * b - c * c],
    ];
    let scale = [pixdim[0], pixdim[1], pixdim[2] * f64::from(qfac)];
    let mut m = [[0.0; 4]; 4];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = rot[i][j] * scale[j];
        }
        m[i][3] = offset[i];
    }
    m[3][3] = 1.0;
    m
}

/// Quaternion (b, c, d) and qfac approximating the rotation part of an affine.
pub(super) fn affine_to_quatern(m: &[[f64; 4]; 4]) -> ([f64; 3], f32) {
    let norms = column_norms(m);
    let mut r = [[0.0; 3]; 3];
    for j in 0..3 {
        for i in 0..3 {
            r[i][j] = if norms[j] > 0.0 {
                m[i][j] / norms[j]
            } else if i == j {
                1.0
            } else {
                0.0
            };
        }
    }
    let mut qfac = 1.0;
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1]) - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    if det < 0.0 {
        qfac = -1.0;
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
    }
    // Unit quaternion (a, b, c, d) of the rotation, with a >= 0 as NIfTI requires.
    let trace1 = 1.0 + r[0][0] + r[1][1] + r[2][2];
    let (a, b, c, d) = if trace1 > 0.5 {
        let a = 0.5 * trace1.sqrt();
        (a, 0.25 * (r[2][1] - r[1][2]) / a, 0.25 * (r[0][2] - r[2][0]) / a, 0.25 * (r[1][0] - r[0][1]) / a)
    } else {
        let xd = 1.0 + r[0][0] - (r[1][1] + r[2][2]);
        let yd = 1.0 + r[1][1] - (r[0][0] + r[2][2]);
        let zd = 1.0 + r[2][2] - (r[0][0] + r[1][1]);
        if xd > 1.0 {
            let b = 0.5 * xd.sqrt();
            (0.25 * (r[2][1] - r[1][2]) / b, b, 0.25 * (r[0][1] + r[1][0]) / b, 0.25 * (r[0][2] + r[2][0]) / b)
        } else if yd > 1.0 {
            let c = 0.5 * yd.sqrt();
            (0.25 * (r[0][2] - r[2][0]) / c, 0.25 * (r[0][1] + r[1][0]) / c, c, 0.25 * (r[1][2] + r[2][1]) / c)
        } else {
            let d = 0.5 * zd.max(0.0).sqrt();
            if d == 0.0 {
                return ([0.0, 0.0, 0.0], qfac);
            }
            (0.25 * (r[1][0] - r[0][1]) / d, 0.25 * (r[0][2] + r[2][0]) / d, 0.25 * (r[1][2] + r[2][1]) / d, d)
        }
    };
    let sign = if a < 0.0 { -1.0 } else { 1.0 };
    ([sign * b, sign * c, sign * d], qfac)
}

/// Reads and validates the header of a `.nii` or `.nii.gz` (gzip detected by magic bytes),
/// decompressing only the first 348 bytes. Dimension limits are those of [`Limits::default`].
pub fn read_header(bytes: &[u8]) -> Result<NiftiHeader, ImagingError> {
    read_header_with(bytes, &Limits::default())
}

/// [`read_header`] with explicit limits for the per-dimension check.
pub fn read_header_with(bytes: &[u8], limits: &Limits) -> Result<NiftiHeader, ImagingError> {
    if is_gzip(bytes) {
        let mut dec = MultiGzDecoder::new(bytes);
        parse_header(&read_gz_header(&mut dec)?, limits)
    } else {
        parse_header(bytes, limits)
    }
}

/// Inflates exactly the 348 header bytes.
pub(super) fn read_gz_header(dec: &mut impl Read) -> Result<[u8; HDR], ImagingError> {
    let mut h = [0u8; HDR];
    let got = read_full(dec, &mut h, true)?;
    if got < HDR {
        return Err(ImagingError::Truncated { what: "NIfTI header".into(), expected: HDR as u64, got: got as u64 });
    }
    Ok(h)
}
