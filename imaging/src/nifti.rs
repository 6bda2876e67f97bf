//! NIfTI-1 reading and writing (`.nii` and `.nii.gz`) with strict header validation.
//! Every header field is checked before the body is decompressed, and decompression is capped.

use crate::error::ImagingError;
use crate::types::{Grid, LabelVolume, Limits, Volume, check_affine, column_norms};
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use std::io::{ErrorKind, Read, Write};

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
fn parse_header(h: &[u8], limits: &Limits) -> Result<NiftiHeader, ImagingError> {
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
fn affine_to_quatern(m: &[[f64; 4]; 4]) -> ([f64; 3], f32) {
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
fn read_gz_header(dec: &mut impl Read) -> Result<[u8; HDR], ImagingError> {
    let mut h = [0u8; HDR];
    let got = read_full(dec, &mut h)?;
    if got < HDR {
        return Err(ImagingError::Truncated { what: "NIfTI header".into(), expected: HDR as u64, got: got as u64 });
    }
    Ok(h)
}

/// Fills `buf` from `r` as far as the stream allows; returns the number of bytes read.
/// A premature end is not an error here (callers report `Truncated`); corrupt data is.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, ImagingError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(ImagingError::Gzip(e.to_string())),
        }
    }
    Ok(filled)
}

/// Deflate's largest expansion: a 258-byte match coded in about two bits, so `n` compressed bytes
/// inflate to at most about `1032 n`.
const MAX_INFLATE_RATIO: u64 = 1032;

enum Body<'a> {
    Plain(&'a [u8]),
    /// The decoder and the most bytes the compressed input could still inflate to.
    Gz(Box<MultiGzDecoder<&'a [u8]>>, u64),
}

impl Body<'_> {
    /// How many of `nvox` voxels of `size` bytes to reserve room for up front: all of them for a
    /// plain body (its bytes are there), and no more than the compressed input can inflate to for
    /// gzip, so that a small upload claiming a huge image cannot make the reader reserve memory
    /// for data it does not have. Outputs still grow to their true size.
    fn capacity(&self, nvox: u64, size: usize) -> usize {
        match self {
            Body::Plain(_) => nvox as usize,
            Body::Gz(_, max_inflated) => nvox.min(max_inflated / size as u64) as usize,
        }
    }
}

/// Validates the header and all limits, positions a reader at the image data.
fn open<'a>(bytes: &'a [u8], limits: &Limits) -> Result<(NiftiHeader, Body<'a>), ImagingError> {
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(ImagingError::TooLarge {
            what: "input size in bytes".into(),
            value: bytes.len() as u64,
            limit: limits.max_file_bytes,
        });
    }
    let gz = is_gzip(bytes);
    let (hdr, dec) = if gz {
        let mut dec = MultiGzDecoder::new(bytes);
        let h = read_gz_header(&mut dec)?;
        (parse_header(&h, limits)?, Some(Box::new(dec)))
    } else {
        (parse_header(bytes, limits)?, None)
    };
    check_image_limits(&hdr, limits)?;
    let body = body_at(bytes, dec, hdr.vox_offset, hdr.body_bytes())?;
    Ok((hdr, body))
}

/// The checks on a parsed header before any image byte is read: a single file, the voxel
/// limit and the total size (shared by [`read_volume`] and [`check_volume_from`]).
fn check_image_limits(hdr: &NiftiHeader, limits: &Limits) -> Result<(), ImagingError> {
    require_single_file(hdr)?;
    let nvox = hdr.nvox();
    if nvox > limits.max_voxels {
        return Err(ImagingError::TooLarge {
            what: format!("voxel count {}x{}x{}", hdr.dims[0], hdr.dims[1], hdr.dims[2]),
            value: nvox,
            limit: limits.max_voxels,
        });
    }
    check_total(hdr.vox_offset, hdr.body_bytes(), limits)
}

/// Refuses a file whose `vox_offset + body_len` exceeds `limits.max_file_bytes`, computed without
/// overflow (with no effective byte limit the sum can pass u64::MAX). [`body_at`] relies on it.
fn check_total(vox_offset: u64, body_len: u64, limits: &Limits) -> Result<(), ImagingError> {
    match vox_offset.checked_add(body_len) {
        Some(total) if total <= limits.max_file_bytes => Ok(()),
        total => Err(ImagingError::TooLarge {
            what: "decompressed file size in bytes".into(),
            value: total.unwrap_or(u64::MAX),
            limit: limits.max_file_bytes,
        }),
    }
}

/// Positions a reader at the `body_len` image bytes that start at `vox_offset`: skips the
/// extension bytes of a gzip stream, or slices (and length-checks) an uncompressed file.
/// Callers have passed [`check_total`], so `vox_offset + body_len` does not overflow.
fn body_at<'a>(
    bytes: &'a [u8],
    dec: Option<Box<MultiGzDecoder<&'a [u8]>>>,
    vox_offset: u64,
    body_len: u64,
) -> Result<Body<'a>, ImagingError> {
    Ok(match dec {
        Some(mut dec) => {
            // Skip the extension bytes between the header and vox_offset.
            let mut skip = (vox_offset - HDR as u64) as usize;
            let mut scratch = [0u8; 4096];
            while skip > 0 {
                let want = skip.min(scratch.len());
                let got = read_full(&mut dec, &mut scratch[..want])?;
                if got < want {
                    return Err(ImagingError::Truncated {
                        what: "header extensions before vox_offset".into(),
                        expected: vox_offset,
                        got: vox_offset - (skip - got) as u64,
                    });
                }
                skip -= want;
            }
            Body::Gz(dec, (bytes.len() as u64).saturating_mul(MAX_INFLATE_RATIO))
        }
        None => {
            let start = vox_offset as usize;
            let end = (vox_offset + body_len) as usize;
            if bytes.len() < end {
                return Err(ImagingError::Truncated {
                    what: "image data".into(),
                    expected: body_len,
                    got: (bytes.len() as u64).saturating_sub(vox_offset),
                });
            }
            Body::Plain(&bytes[start..end])
        }
    })
}

/// Streams exactly `hdr.body_bytes()` bytes of image data to `f`, in element-aligned chunks.
fn stream_body(hdr: &NiftiHeader, body: Body<'_>, f: impl FnMut(&[u8])) -> Result<(), ImagingError> {
    stream_len(hdr.body_bytes() as usize, body, f)
}

/// Streams exactly `total` bytes of image data to `f`, in element-aligned chunks.
fn stream_len(total: usize, body: Body<'_>, mut f: impl FnMut(&[u8])) -> Result<(), ImagingError> {
    match body {
        Body::Plain(s) => s.chunks(CHUNK).for_each(f),
        Body::Gz(mut dec, max_inflated) => {
            // No bigger than the input can inflate to, in whole voxels (a multiple of 8, like CHUNK).
            let cap = (max_inflated.min(CHUNK as u64) as usize) / 8 * 8;
            let mut buf = vec![0u8; CHUNK.min(total).min(cap.max(8))];
            let mut done = 0usize;
            while done < total {
                let want = (total - done).min(buf.len());
                let got = read_full(&mut dec, &mut buf[..want])?;
                if got < want {
                    return Err(ImagingError::Truncated {
                        what: "image data".into(),
                        expected: total as u64,
                        got: (done + got) as u64,
                    });
                }
                f(&buf[..want]);
                done += want;
            }
        }
    }
    Ok(())
}

/// Appends the voxels in `src` (raw bytes of `dt`) to `out` as f32.
fn convert(dt: Datatype, le: bool, src: &[u8], out: &mut Vec<f32>) {
    macro_rules! conv {
        ($t:ty, $n:expr) => {{
            let it = src.chunks_exact($n).map(|c| {
                let mut a = [0u8; $n];
                a.copy_from_slice(c);
                if le { <$t>::from_le_bytes(a) as f32 } else { <$t>::from_be_bytes(a) as f32 }
            });
            out.extend(it);
        }};
    }
    match dt {
        Datatype::U8 => out.extend(src.iter().map(|&b| f32::from(b))),
        Datatype::I8 => out.extend(src.iter().map(|&b| f32::from(b as i8))),
        Datatype::I16 => conv!(i16, 2),
        Datatype::U16 => conv!(u16, 2),
        Datatype::I32 => conv!(i32, 4),
        Datatype::U32 => conv!(u32, 4),
        Datatype::F32 => conv!(f32, 4),
        Datatype::F64 => conv!(f64, 8),
    }
}

/// Decodes the whole body to f32 with scaling applied.
fn decode_f32(hdr: &NiftiHeader, body: Body<'_>) -> Result<Vec<f32>, ImagingError> {
    let mut out = Vec::with_capacity(body.capacity(hdr.nvox(), hdr.datatype.size()));
    stream_body(hdr, body, |chunk| convert(hdr.datatype, hdr.little_endian, chunk, &mut out))?;
    let scaling = hdr.scaling();
    if let Some((s, i)) = scaling {
        for v in out.iter_mut() {
            *v = (f64::from(*v) * s + i) as f32;
        }
    }
    Ok(out)
}

/// Only single-file NIfTI (`n+1`) is read; `.hdr/.img` pairs (`ni1`) are refused by name.
fn require_single_file(hdr: &NiftiHeader) -> Result<(), ImagingError> {
    if hdr.single_file {
        Ok(())
    } else {
        Err(ImagingError::header(
            "magic",
            "ni1",
            "n+1 (header and image in one file; .hdr/.img pairs are not supported)",
        ))
    }
}

/// Reads a NIfTI-1 image (`.nii` or `.nii.gz`) into an f32 volume with scl_slope/scl_inter applied.
/// The header and all limits are validated before the body is decompressed, and no more than the
/// expected number of bytes is ever inflated.
pub fn read_volume(bytes: &[u8], limits: &Limits) -> Result<Volume, ImagingError> {
    let (hdr, body) = open(bytes, limits)?;
    let data = decode_f32(&hdr, body)?;
    if hdr.datatype.is_float() || hdr.scaling().is_some() {
        let count = data.iter().filter(|v| !v.is_finite()).count();
        if count > 0 {
            return Err(ImagingError::NonFinite { count });
        }
    }
    Ok(Volume { grid: hdr.grid(), data })
}

/// Checks a `.nii` or `.nii.gz` read from `r` exactly as [`read_volume`] would accept or refuse
/// it (header, limits, length, finite voxels) without holding the image: memory stays at one
/// chunk whatever the file's size. Returns the grid. `r` may be a file being uploaded.
pub fn check_volume_from(mut r: impl Read, limits: &Limits) -> Result<Grid, ImagingError> {
    let mut magic = [0u8; 2];
    let got = read_full_io(&mut r, &mut magic)?;
    let head = std::io::Cursor::new(magic[..got].to_vec()).chain(r);
    if got == 2 && is_gzip(&magic) {
        check_stream(MultiGzDecoder::new(head), limits, true)
    } else {
        check_stream(head, limits, false)
    }
}

/// [`read_full`] for a plain reader: its errors are I/O errors, not corrupt gzip.
fn read_full_io(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, ImagingError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(ImagingError::Io { path: "upload".into(), source: e }),
        }
    }
    Ok(filled)
}

fn check_stream(mut r: impl Read, limits: &Limits, gz: bool) -> Result<Grid, ImagingError> {
    let fill = |r: &mut dyn Read, buf: &mut [u8]| {
        let mut r = r;
        if gz { read_full(&mut r, buf) } else { read_full_io(&mut r, buf) }
    };
    let mut h = [0u8; HDR];
    let got = fill(&mut r, &mut h)?;
    if gz && got < HDR {
        return Err(ImagingError::Truncated { what: "NIfTI header".into(), expected: HDR as u64, got: got as u64 });
    }
    let hdr = parse_header(&h[..got], limits)?;
    check_image_limits(&hdr, limits)?;
    let body_len = hdr.body_bytes();
    let mut buf = vec![0u8; CHUNK];
    // The extension bytes between the header and vox_offset.
    let mut skip = hdr.vox_offset - HDR as u64;
    while skip > 0 {
        let want = skip.min(CHUNK as u64) as usize;
        let got = fill(&mut r, &mut buf[..want])?;
        if got < want {
            // Named as read_volume names it: the extensions of a gzip stream, the image of a plain file.
            return Err(if gz {
                ImagingError::Truncated {
                    what: "header extensions before vox_offset".into(),
                    expected: hdr.vox_offset,
                    got: hdr.vox_offset - (skip - got as u64),
                }
            } else {
                ImagingError::Truncated { what: "image data".into(), expected: body_len, got: 0 }
            });
        }
        skip -= want as u64;
    }
    let check = hdr.datatype.is_float() || hdr.scaling().is_some();
    let scaling = hdr.scaling();
    let mut values = Vec::with_capacity(CHUNK);
    let mut non_finite = 0usize;
    let mut done = 0u64;
    while done < body_len {
        let want = (body_len - done).min(CHUNK as u64) as usize;
        let got = fill(&mut r, &mut buf[..want])?;
        if got < want {
            return Err(ImagingError::Truncated {
                what: "image data".into(),
                expected: body_len,
                got: done + got as u64,
            });
        }
        if check {
            values.clear();
            convert(hdr.datatype, hdr.little_endian, &buf[..want], &mut values);
            non_finite += match scaling {
                Some((s, i)) => values.iter().filter(|&&v| !((f64::from(v) * s + i) as f32).is_finite()).count(),
                None => values.iter().filter(|v| !v.is_finite()).count(),
            };
        }
        done += want as u64;
    }
    if non_finite > 0 {
        return Err(ImagingError::NonFinite { count: non_finite });
    }
    Ok(hdr.grid())
}

/// Reads a NIfTI-1 label map; every (scaled) value must be an integer in 0..=255.
pub fn read_labels(bytes: &[u8], limits: &Limits) -> Result<LabelVolume, ImagingError> {
    let (hdr, body) = open(bytes, limits)?;
    let grid = hdr.grid();
    if hdr.datatype == Datatype::U8 && hdr.scaling().is_none() {
        let mut data = Vec::with_capacity(body.capacity(hdr.nvox(), 1));
        stream_body(&hdr, body, |chunk| data.extend_from_slice(chunk))?;
        return Ok(LabelVolume { grid, data });
    }
    let vals = decode_f32(&hdr, body)?;
    let mut data = Vec::with_capacity(vals.len());
    for (index, &v) in vals.iter().enumerate() {
        if !(v.is_finite() && v.fract() == 0.0 && (0.0..=255.0).contains(&v)) {
            return Err(ImagingError::LabelValue {
                value: f64::from(v),
                index,
                expected: "an integer in 0..=255".into(),
            });
        }
        data.push(v as u8);
    }
    Ok(LabelVolume { grid, data })
}

/// Reads a multi-component NIfTI-1 image: `dim[0]=5` with `dim[4]=1` and `dim[5]=n` values per
/// voxel, stored one whole component after another (a single 3-D volume reads as `n=1`). Calls
/// `f(component, first_voxel, values)` with scaled f32 values in file order, never holding more
/// than one chunk, and returns the header (spatial `dims`) and `n`. Limits apply to the whole body.
pub fn read_components(
    bytes: &[u8],
    limits: &Limits,
    mut f: impl FnMut(usize, usize, &[f32]),
) -> Result<(NiftiHeader, usize), ImagingError> {
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(ImagingError::TooLarge {
            what: "input size in bytes".into(),
            value: bytes.len() as u64,
            limit: limits.max_file_bytes,
        });
    }
    let mut dec = is_gzip(bytes).then(|| Box::new(MultiGzDecoder::new(bytes)));
    let mut h = match dec.as_mut() {
        Some(d) => read_gz_header(d)?,
        None => {
            let mut h = [0u8; HDR];
            let got = bytes.len().min(HDR);
            h[..got].copy_from_slice(&bytes[..got]);
            h
        }
    };
    // A wrong sizeof_hdr or magic is reported by parse_header below.
    let le = i32::from_le_bytes([h[0], h[1], h[2], h[3]]) == 348;
    let get = |h: &[u8; HDR], off: usize| {
        let a = [h[off], h[off + 1]];
        if le { i16::from_le_bytes(a) } else { i16::from_be_bytes(a) }
    };
    let mut n = 1usize;
    if get(&h, 40) == 5 {
        let (d4, d5) = (get(&h, 48), get(&h, 50));
        if d4 != 1 {
            return Err(ImagingError::header("dim[4]", d4, "1 (a single time point)"));
        }
        if d5 < 1 {
            return Err(ImagingError::header("dim[5]", d5, "at least 1 component"));
        }
        n = d5 as usize;
        let three = if le { 3i16.to_le_bytes() } else { 3i16.to_be_bytes() };
        h[40..42].copy_from_slice(&three);
    }
    let hdr = parse_header(&h, limits)?;
    require_single_file(&hdr)?;
    let nvox = hdr.nvox();
    let values = nvox * n as u64;
    if values > limits.max_voxels {
        return Err(ImagingError::TooLarge {
            what: format!("value count {}x{}x{}x{n}", hdr.dims[0], hdr.dims[1], hdr.dims[2]),
            value: values,
            limit: limits.max_voxels,
        });
    }
    let body_len = hdr.body_bytes() * n as u64;
    check_total(hdr.vox_offset, body_len, limits)?;
    let body = body_at(bytes, dec, hdr.vox_offset, body_len)?;
    let (nvox, scaling) = (nvox as usize, hdr.scaling());
    let (mut vals, mut done, mut count) = (Vec::new(), 0usize, 0usize);
    stream_len(body_len as usize, body, |chunk| {
        vals.clear();
        convert(hdr.datatype, hdr.little_endian, chunk, &mut vals);
        if let Some((s, i)) = scaling {
            for v in vals.iter_mut() {
                *v = (f64::from(*v) * s + i) as f32;
            }
        }
        count += vals.iter().filter(|v| !v.is_finite()).count();
        let mut start = 0;
        while start < vals.len() {
            let first = done % nvox;
            let take = (nvox - first).min(vals.len() - start);
            f(done / nvox, first, &vals[start..start + take]);
            start += take;
            done += take;
        }
    })?;
    if count > 0 {
        return Err(ImagingError::NonFinite { count });
    }
    Ok((hdr, n))
}

/// Builds a 352-byte NIfTI-1 header (348 + empty extension flag) for a grid and datatype.
fn build_header(grid: &Grid, dt: Datatype) -> Vec<u8> {
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
fn finish(mut file: Vec<u8>, body: &[u8], gzip: bool) -> Vec<u8> {
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

/// Reads several NIfTI images concurrently (one scoped thread each); results keep input order.
pub fn read_volumes_parallel(inputs: &[&[u8]], limits: &Limits) -> Vec<Result<Volume, ImagingError>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = inputs.iter().map(|b| s.spawn(move || read_volume(b, limits))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(ImagingError::invalid("reader thread", "panicked", "no panic"))))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::same_grid;

    /// A hand-built NIfTI-1 header for malformed-input tests (independent of `build_header`).
    #[derive(Clone)]
    struct H {
        le: bool,
        sizeof_hdr: i32,
        dims: [i16; 8],
        datatype: i16,
        bitpix: i16,
        pixdim: [f32; 8],
        vox_offset: f32,
        slope: f32,
        inter: f32,
        qform: i16,
        sform: i16,
        quat: [f32; 6],
        srow: [[f32; 4]; 3],
        magic: [u8; 4],
    }

    impl Default for H {
        fn default() -> Self {
            H {
                le: true,
                sizeof_hdr: 348,
                dims: [3, 4, 3, 2, 1, 1, 1, 1],
                datatype: 16,
                bitpix: 32,
                pixdim: [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                vox_offset: 352.0,
                slope: 1.0,
                inter: 0.0,
                qform: 0,
                sform: 1,
                quat: [0.0; 6],
                srow: [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]],
                magic: *b"n+1\0",
            }
        }
    }

    impl H {
        fn header(&self) -> Vec<u8> {
            let mut h = vec![0u8; 348];
            let le = self.le;
            let mut put = |off: usize, b: &[u8]| {
                let mut b = b.to_vec();
                if !le {
                    b.reverse();
                }
                h[off..off + b.len()].copy_from_slice(&b);
            };
            put(0, &self.sizeof_hdr.to_le_bytes());
            for (i, d) in self.dims.iter().enumerate() {
                put(40 + 2 * i, &d.to_le_bytes());
            }
            put(70, &self.datatype.to_le_bytes());
            put(72, &self.bitpix.to_le_bytes());
            for (i, p) in self.pixdim.iter().enumerate() {
                put(76 + 4 * i, &p.to_le_bytes());
            }
            put(108, &self.vox_offset.to_le_bytes());
            put(112, &self.slope.to_le_bytes());
            put(116, &self.inter.to_le_bytes());
            put(252, &self.qform.to_le_bytes());
            put(254, &self.sform.to_le_bytes());
            for (i, q) in self.quat.iter().enumerate() {
                put(256 + 4 * i, &q.to_le_bytes());
            }
            for r in 0..3 {
                for c in 0..4 {
                    put(280 + 16 * r + 4 * c, &self.srow[r][c].to_le_bytes());
                }
            }
            h[344..348].copy_from_slice(&self.magic);
            h
        }

        /// Header, zero padding up to vox_offset, then `body`.
        fn file(&self, body: &[u8]) -> Vec<u8> {
            let mut f = self.header();
            f.resize(self.vox_offset.max(348.0) as usize, 0);
            f.extend_from_slice(body);
            f
        }
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn f32_body(vals: &[f32], le: bool) -> Vec<u8> {
        vals.iter().flat_map(|v| if le { v.to_le_bytes() } else { v.to_be_bytes() }).collect()
    }

    fn oblique_grid() -> Grid {
        // Permuted axes with flips and a non-unit spacing; all values exact in f32.
        Grid {
            dims: [5, 4, 3],
            pixdim: [2.0, 1.0, 1.5],
            affine: [[0.0, 0.0, -1.5, 10.0], [-2.0, 0.0, 0.0, 20.5], [0.0, 1.0, 0.0, -7.25], [0.0, 0.0, 0.0, 1.0]],
        }
    }

    fn expect_header_err(bytes: &[u8], field: &str) -> String {
        match read_volume(bytes, &Limits::default()) {
            Err(e @ ImagingError::Header { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&format!("header field {field}")), "{msg} should name {field}");
                msg
            }
            other => panic!("expected Header error for {field}, got {other:?}"),
        }
    }

    #[test]
    fn roundtrip_nii_and_gz() {
        let grid = oblique_grid();
        let data: Vec<f32> = (0..60).map(|i| i as f32 * 0.5 - 7.0).collect();
        let v = Volume::new(grid.clone(), data.clone()).unwrap();
        for gzip in [false, true] {
            let bytes = write_volume(&v, gzip);
            assert_eq!(is_gzip(&bytes), gzip);
            let back = read_volume(&bytes, &Limits::default()).unwrap();
            assert_eq!(back.grid, grid);
            assert_eq!(back.data, data);
            let h = read_header(&bytes).unwrap();
            assert_eq!(h.dims, [5, 4, 3]);
            assert_eq!(h.datatype, Datatype::F32);
            assert_eq!(h.sform_code, 1);
            same_grid(&h.grid(), &grid).unwrap();
        }
        let labels = LabelVolume::new(grid.clone(), (0..60).map(|i| (i % 5) as u8).collect()).unwrap();
        for gzip in [false, true] {
            let back = read_labels(&write_labels(&labels, gzip), &Limits::default()).unwrap();
            assert_eq!(back, labels);
        }
    }

    #[test]
    fn written_qform_matches_sform() {
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let affines = [
            oblique_grid().affine,
            Grid::axis_aligned([5, 4, 3], [1.0; 3], [0.0; 3]).affine,
            [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 239.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
            [[-1.0, 0.0, 0.0, 3.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -2.0], [0.0, 0.0, 0.0, 1.0]],
            [[c, -2.0 * s, 0.0, 1.0], [s, 2.0 * c, 0.0, 2.0], [0.0, 0.0, 3.0, 3.0], [0.0, 0.0, 0.0, 1.0]],
            [[0.0, 2.0 * c, 3.0 * s, 0.0], [0.0, -2.0 * s, 3.0 * c, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        ];
        for affine in affines {
            let norms = column_norms(&affine);
            let grid = Grid { dims: [5, 4, 3], pixdim: [norms[0] as f32, norms[1] as f32, norms[2] as f32], affine };
            let bytes = write_volume(&Volume::new(grid.clone(), vec![1.0; 60]).unwrap(), false);
            // Turn off the sform: the qform alone must give the same affine.
            let mut b = bytes.clone();
            b[254..256].copy_from_slice(&0i16.to_le_bytes());
            let h = read_header(&b).unwrap();
            assert_eq!(h.sform_code, 0);
            same_grid(&h.grid(), &grid).unwrap_or_else(|e| panic!("{affine:?}: {e}"));
        }
    }

    #[test]
    fn qform_and_fallback_affines() {
        // BraTS-style qform: quaternion (0,0,1) = 180 degrees about z, offset (0,239,0).
        let h = H { sform: 0, qform: 1, quat: [0.0, 0.0, 1.0, 0.0, 239.0, 0.0], ..H::default() };
        let v = read_volume(&h.file(&f32_body(&[1.0; 24], true)), &Limits::default()).unwrap();
        let want = [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 239.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        assert_eq!(v.grid.affine, want);
        // qfac = -1 flips the third column.
        let h2 = H { pixdim: [-1.0, 1.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0], ..h.clone() };
        let v2 = read_volume(&h2.file(&f32_body(&[1.0; 24], true)), &Limits::default()).unwrap();
        assert_eq!(v2.grid.affine[2][2], -2.0);
        // No qform or sform: diag(pixdim).
        let h3 = H { sform: 0, qform: 0, pixdim: [1.0, 0.5, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0], ..H::default() };
        let v3 = read_volume(&h3.file(&f32_body(&[1.0; 24], true)), &Limits::default()).unwrap();
        assert_eq!(v3.grid.affine[0][0], 0.5);
        assert_eq!(v3.grid.affine[1][1], 2.0);
        assert_eq!(v3.grid.affine[2][2], 3.0);
        assert_eq!(v3.grid.pixdim, [0.5, 2.0, 3.0]);
    }

    #[test]
    fn big_endian_and_int_types_with_scaling() {
        let vals: Vec<i16> = (0..24).map(|i| i as i16 - 5).collect();
        for le in [true, false] {
            let h = H { le, datatype: 4, bitpix: 16, slope: 2.0, inter: 1.0, ..H::default() };
            let body: Vec<u8> = vals.iter().flat_map(|v| if le { v.to_le_bytes() } else { v.to_be_bytes() }).collect();
            for bytes in [h.file(&body), gz(&h.file(&body))] {
                let v = read_volume(&bytes, &Limits::default()).unwrap();
                let want: Vec<f32> = vals.iter().map(|&x| f32::from(x) * 2.0 + 1.0).collect();
                assert_eq!(v.data, want, "le={le}");
                assert_eq!(read_header(&bytes).unwrap().little_endian, le);
            }
        }
        // Slope 0 and NaN slope mean "no scaling".
        for slope in [0.0, f32::NAN] {
            let h = H { datatype: 2, bitpix: 8, slope, inter: 5.0, ..H::default() };
            let v = read_volume(&h.file(&[7u8; 24]), &Limits::default()).unwrap();
            assert!(v.data.iter().all(|&x| x == 7.0));
        }
        // Every accepted datatype decodes.
        let cases: [(i16, Vec<u8>); 6] = [
            (256, vec![0xFF]),
            (512, 65535u16.to_le_bytes().to_vec()),
            (8, (-3i32).to_le_bytes().to_vec()),
            (768, 7u32.to_le_bytes().to_vec()),
            (64, (-0.25f64).to_le_bytes().to_vec()),
            (2, vec![200]),
        ];
        let want = [-1.0, 65535.0, -3.0, 7.0, -0.25, 200.0];
        for ((code, one), w) in cases.iter().zip(want) {
            let dt = Datatype::from_code(*code).unwrap();
            let h =
                H { datatype: *code, bitpix: (dt.size() * 8) as i16, dims: [3, 1, 1, 1, 1, 1, 1, 1], ..H::default() };
            let v = read_volume(&h.file(one), &Limits::default()).unwrap();
            assert_eq!(v.data, vec![w], "datatype {code}");
        }
    }

    #[test]
    fn extensions_before_vox_offset_are_skipped() {
        let h = H { vox_offset: 2880.0, ..H::default() };
        let mut file = h.header();
        file.extend_from_slice(&[1, 0, 0, 0]);
        file.resize(2880, 0xAB);
        let vals: Vec<f32> = (0..24).map(|i| i as f32).collect();
        file.extend_from_slice(&f32_body(&vals, true));
        for bytes in [file.clone(), gz(&file)] {
            assert_eq!(read_volume(&bytes, &Limits::default()).unwrap().data, vals);
        }
    }

    #[test]
    fn dim0_4_with_single_volume_is_accepted() {
        let h = H { dims: [4, 4, 3, 2, 1, 1, 1, 1], ..H::default() };
        assert!(read_volume(&h.file(&f32_body(&[0.0; 24], true)), &Limits::default()).is_ok());
    }

    #[test]
    fn multi_component_files_stream_each_component() {
        let h = H { dims: [5, 4, 3, 2, 1, 3, 1, 1], datatype: 64, bitpix: 64, slope: 2.0, ..H::default() };
        let vals: Vec<f64> = (0..72).map(f64::from).collect();
        let body: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let file = h.file(&body);
        for bytes in [file.clone(), gz(&file)] {
            let mut got = vec![vec![0f32; 24]; 3];
            let (hdr, n) = read_components(&bytes, &Limits::default(), |c, first, v| {
                got[c][first..first + v.len()].copy_from_slice(v);
            })
            .unwrap();
            assert_eq!((hdr.dims, n), ([4, 3, 2], 3));
            for (c, comp) in got.iter().enumerate() {
                let want: Vec<f32> = (0..24).map(|i| 2.0 * (24 * c + i) as f32).collect();
                assert_eq!(comp, &want);
            }
        }
        // A plain 3-D image is one component; a 5-D one needs dim[4]=1.
        let plain = H::default().file(&f32_body(&[1.0; 24], true));
        let (_, n) = read_components(&plain, &Limits::default(), |_, _, _| {}).unwrap();
        assert_eq!(n, 1);
        let bad = H { dims: [5, 4, 3, 2, 2, 3, 1, 1], ..h };
        let err = read_components(&bad.file(&body), &Limits::default(), |_, _, _| {});
        assert!(err.unwrap_err().to_string().contains("dim[4]"));
        let short = &file[..file.len() - 8];
        assert!(matches!(
            read_components(short, &Limits::default(), |_, _, _| {}),
            Err(ImagingError::Truncated { .. })
        ));
    }

    #[test]
    fn not_nifti_bytes() {
        for bytes in [
            b"hello, this is not an image".to_vec(),
            vec![0u8; 1000],
            Vec::new(),
            gz(b"plain text that happens to be gzipped, long enough? no"),
        ] {
            match read_volume(&bytes, &Limits::default()) {
                Err(ImagingError::NotNifti(_)) | Err(ImagingError::Truncated { .. }) => {}
                other => panic!("expected NotNifti/Truncated, got {other:?}"),
            }
        }
        let err = read_volume(&[0u8; 400], &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("sizeof_hdr=0: expected 348"), "{err}");
        let h = H { sizeof_hdr: 540, ..H::default() };
        let err = read_volume(&h.file(&[]), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("NIfTI-2"), "{err}");
        let h = H { magic: *b"abc\0", ..H::default() };
        let err = read_volume(&h.file(&[0; 96]), &Limits::default()).unwrap_err();
        assert!(matches!(err, ImagingError::NotNifti(_)), "{err}");
    }

    #[test]
    fn bad_header_fields_are_named() {
        let body = f32_body(&[0.0; 24], true);
        let msg = expect_header_err(&H { dims: [3, 0, 3, 2, 1, 1, 1, 1], ..H::default() }.file(&body), "dim[1]");
        assert_eq!(msg, "header field dim[1]=0: expected 1..=1024");
        expect_header_err(&H { dims: [3, 4, 3, 2000, 1, 1, 1, 1], ..H::default() }.file(&body), "dim[3]");
        expect_header_err(&H { dims: [5, 4, 3, 2, 1, 1, 1, 1], ..H::default() }.file(&body), "dim[0]");
        expect_header_err(&H { dims: [4, 4, 3, 2, 3, 1, 1, 1], ..H::default() }.file(&body), "dim[4]");
        expect_header_err(&H { datatype: 128, bitpix: 24, ..H::default() }.file(&body), "datatype");
        expect_header_err(&H { bitpix: 16, ..H::default() }.file(&body), "bitpix");
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let mut pixdim = H::default().pixdim;
            pixdim[2] = bad;
            expect_header_err(&H { pixdim, ..H::default() }.file(&body), "pixdim[2]");
        }
        for off in [0.0, 100.0, 351.0, 352.5, f32::NAN] {
            let h = H { vox_offset: off, ..H::default() };
            let mut f = h.header();
            f.resize(352, 0);
            f.extend_from_slice(&body);
            expect_header_err(&f, "vox_offset");
        }
        let mut srow = H::default().srow;
        srow[1][3] = f32::INFINITY;
        expect_header_err(&H { srow, ..H::default() }.file(&body), "srow_y[3]");
        let srow = [[1.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]];
        let msg = expect_header_err(&H { srow, ..H::default() }.file(&body), "affine");
        assert!(msg.contains("singular"), "{msg}");
    }

    #[test]
    fn ni1_pairs_are_refused_for_reading_images() {
        let h = H { magic: *b"ni1\0", vox_offset: 0.0, ..H::default() };
        let bytes = h.file(&[]);
        assert!(!read_header(&bytes).unwrap().single_file);
        let err = read_volume(&bytes, &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
    }

    #[test]
    fn huge_volume_rejected_before_decompression() {
        // Header claims 1000^3 float32 voxels (4 GB) but carries no body at all: the limit error
        // (not Truncated) proves the check happens before any body is inflated.
        let h = H { dims: [3, 1000, 1000, 1000, 1, 1, 1, 1], ..H::default() };
        for bytes in [h.file(&[]), gz(&h.file(&[]))] {
            match read_volume(&bytes, &Limits::default()) {
                Err(ImagingError::TooLarge { value, limit, .. }) => {
                    assert_eq!(value, 1_000_000_000);
                    assert_eq!(limit, 512 * 512 * 512);
                }
                other => panic!("expected TooLarge, got {other:?}"),
            }
        }
        // Byte limit on the decompressed size.
        let small = Limits { max_file_bytes: 300_000, ..Limits::default() };
        let h = H { dims: [3, 100, 100, 10, 1, 1, 1, 1], ..H::default() };
        let err = read_volume(&gz(&h.file(&[])), &small).unwrap_err();
        assert!(matches!(err, ImagingError::TooLarge { .. }), "{err}");
        // Input size limit.
        let tiny = Limits { max_file_bytes: 100, ..Limits::default() };
        assert!(matches!(read_volume(&[0u8; 400], &tiny), Err(ImagingError::TooLarge { .. })));
        let few = Limits { max_voxels: 10, ..Limits::default() };
        assert!(matches!(
            read_volume(&H::default().file(&f32_body(&[0.0; 24], true)), &few),
            Err(ImagingError::TooLarge { .. })
        ));
    }

    #[test]
    fn huge_vox_offset_with_unlimited_file_size_is_an_error_not_a_panic() {
        // Found by the fuzzer (imaging/fuzz) with `max_file_bytes = u64::MAX`: vox_offset 2^64
        // (the f32 1.8446744e19) passed the float limit check because u64::MAX as f64 rounds up to
        // 2^64, saturated to u64::MAX in the cast, and vox_offset + body size wrapped around, so
        // the body slice was taken with start > end (a panic). Larger values were already refused.
        let wide = Limits { max_file_bytes: u64::MAX, ..Limits::default() };
        for off in [1.0e30f32, 3.0e38, 1.8446744e19] {
            let mut f = H { vox_offset: off, ..H::default() }.header();
            f.resize(352, 0);
            f.extend_from_slice(&f32_body(&[0.0; 24], true));
            for bytes in [f.clone(), gz(&f)] {
                let r = std::panic::catch_unwind(|| read_volume(&bytes, &wide).map(|_| ()));
                match r {
                    Ok(Err(ImagingError::Header { field, .. })) => assert_eq!(field, "vox_offset"),
                    other => panic!("vox_offset {off}: expected a vox_offset header error, got {other:?}"),
                }
                assert!(read_labels(&bytes, &wide).is_err());
                assert!(read_components(&bytes, &wide, |_, _, _| {}).is_err());
            }
        }
    }

    #[test]
    fn gzip_bomb_inflates_only_the_expected_body() {
        // 8x8x8 uint8 image followed by 32 MiB of compressible junk: reading stops at 512 bytes.
        let h = H { dims: [3, 8, 8, 8, 1, 1, 1, 1], datatype: 2, bitpix: 8, ..H::default() };
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(&h.file(&[3u8; 512])).unwrap();
        let junk = vec![0u8; 1 << 20];
        for _ in 0..32 {
            e.write_all(&junk).unwrap();
        }
        let bytes = e.finish().unwrap();
        let limits = Limits { max_file_bytes: 1 << 20, ..Limits::default() };
        assert!(bytes.len() < 1 << 20);
        let v = read_volume(&bytes, &limits).unwrap();
        assert_eq!(v.data.len(), 512);
        assert!(v.data.iter().all(|&x| x == 3.0));
    }

    #[test]
    fn truncated_inputs() {
        let grid = oblique_grid();
        let v = Volume::new(grid, (0..60).map(|i| i as f32).collect()).unwrap();
        let plain = write_volume(&v, false);
        let err = read_volume(&plain[..plain.len() - 5], &Limits::default()).unwrap_err();
        match err {
            ImagingError::Truncated { expected, got, .. } => {
                assert_eq!(expected, 240);
                assert_eq!(got, 235);
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
        // Gzip cut in the middle of the body and in the middle of the header.
        let big = Volume::new(
            Grid::axis_aligned([64, 64, 16], [1.0; 3], [0.0; 3]),
            (0..64 * 64 * 16).map(|i| (i % 251) as f32).collect(),
        )
        .unwrap();
        let gzb = write_volume(&big, true);
        for cut in [gzb.len() / 2, gzb.len() * 3 / 4, 30] {
            match read_volume(&gzb[..cut], &Limits::default()) {
                Err(ImagingError::Truncated { .. }) => {}
                other => panic!("cut at {cut}: expected Truncated, got {:?}", other.map(|v| v.data.len())),
            }
        }
        // Corrupted (not merely short) gzip data is an error, never a panic.
        let mut bad = gzb.clone();
        for b in bad[40..200].iter_mut() {
            *b ^= 0x5A;
        }
        assert!(read_volume(&bad, &Limits::default()).is_err());
    }

    #[test]
    fn non_finite_voxels_are_counted() {
        let mut vals = vec![1.0f32; 24];
        vals[3] = f32::NAN;
        vals[7] = f32::NEG_INFINITY;
        let bytes = H::default().file(&f32_body(&vals, true));
        match read_volume(&bytes, &Limits::default()) {
            Err(e @ ImagingError::NonFinite { count: 2 }) => {
                assert!(e.to_string().contains("2 voxel(s)"));
            }
            other => panic!("expected NonFinite {{ count: 2 }}, got {other:?}"),
        }
        // Scaling overflow to infinity is caught too.
        let h = H { datatype: 4, bitpix: 16, slope: 3.0e38, ..H::default() };
        let body: Vec<u8> = (0..24i16).flat_map(|v| v.to_le_bytes()).collect();
        assert!(matches!(read_volume(&h.file(&body), &Limits::default()), Err(ImagingError::NonFinite { count: 22 })));
    }

    #[test]
    fn label_values_must_be_small_integers() {
        let h = H { datatype: 4, bitpix: 16, ..H::default() };
        let mut vals = vec![0i16; 24];
        vals[5] = 4;
        let body = |v: &[i16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let l = read_labels(&h.file(&body(&vals)), &Limits::default()).unwrap();
        assert_eq!(l.data[5], 4);
        vals[9] = 300;
        match read_labels(&h.file(&body(&vals)), &Limits::default()) {
            Err(ImagingError::LabelValue { value, index, .. }) => {
                assert_eq!((value, index), (300.0, 9));
            }
            other => panic!("expected LabelValue, got {other:?}"),
        }
        vals[9] = -1;
        assert!(read_labels(&h.file(&body(&vals)), &Limits::default()).is_err());
        let mut f = vec![0.0f32; 24];
        f[2] = 1.5;
        let err = read_labels(&H::default().file(&f32_body(&f, true)), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("label value 1.5 at voxel 2"), "{err}");
    }

    #[test]
    fn typed_writes() {
        let grid = oblique_grid();
        let v = Volume::new(grid, (0..60).map(|i| i as f32 * 100.0 - 3000.0).collect()).unwrap();
        let bytes = write_volume_as(&v, Datatype::I16, true).unwrap();
        assert_eq!(read_header(&bytes).unwrap().datatype, Datatype::I16);
        assert_eq!(read_volume(&bytes, &Limits::default()).unwrap(), v);
        let mut frac = v.clone();
        frac.data[4] = 0.5;
        assert!(write_volume_as(&frac, Datatype::I16, false).is_err());
        let mut big = v.clone();
        big.data[4] = 40000.0;
        assert!(write_volume_as(&big, Datatype::I16, false).is_err());
        assert!(write_volume_as(&big, Datatype::U16, false).is_err());
        assert!(write_volume_as(&big, Datatype::I32, false).is_ok());
    }

    #[test]
    fn parallel_reads_keep_order() {
        let vols: Vec<Volume> = (0..4)
            .map(|k| Volume::new(Grid::axis_aligned([3, 3, 3], [1.0; 3], [0.0; 3]), vec![k as f32; 27]).unwrap())
            .collect();
        let files: Vec<Vec<u8>> = vols.iter().map(|v| write_volume(v, true)).collect();
        let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
        let out = read_volumes_parallel(&refs, &Limits::default());
        for (k, r) in out.into_iter().enumerate() {
            assert_eq!(r.unwrap(), vols[k]);
        }
    }

    #[test]
    fn same_grid_reports_the_difference() {
        let a = oblique_grid();
        let mut b = a.clone();
        same_grid(&a, &b).unwrap();
        b.affine[1][3] += 0.0005;
        same_grid(&a, &b).unwrap();
        b.affine[1][3] += 0.01;
        let err = same_grid(&a, &b).unwrap_err().to_string();
        assert!(err.contains("affine[1][3]"), "{err}");
        let mut c = a.clone();
        c.dims = [5, 4, 4];
        let err = same_grid(&a, &c).unwrap_err().to_string();
        assert!(err.contains("dims") && err.contains("[5, 4, 3] vs [5, 4, 4]"), "{err}");
    }
}
