//! Reading NIfTI-1 bodies: positioning at the image data, streaming it in bounded chunks,
//! decoding voxels to f32 or labels, and checking an upload without holding it.

use super::header::{parse_header, read_gz_header};
use super::{CHUNK, Datatype, HDR, NiftiHeader, is_gzip, read_full};
use crate::error::ImagingError;
use crate::types::{Grid, LabelVolume, Limits, Volume};
use flate2::read::MultiGzDecoder;
use std::io::Read;

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
                let got = read_full(&mut dec, &mut scratch[..want], true)?;
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
                let got = read_full(&mut dec, &mut buf[..want], true)?;
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
    let got = read_full(&mut r, &mut magic, false)?;
    let head = std::io::Cursor::new(magic[..got].to_vec()).chain(r);
    if got == 2 && is_gzip(&magic) {
        check_stream(MultiGzDecoder::new(head), limits, true)
    } else {
        check_stream(head, limits, false)
    }
}

fn check_stream(mut r: impl Read, limits: &Limits, gz: bool) -> Result<Grid, ImagingError> {
    let mut h = [0u8; HDR];
    let got = read_full(&mut r, &mut h, gz)?;
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
        let got = read_full(&mut r, &mut buf[..want], gz)?;
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
        let got = read_full(&mut r, &mut buf[..want], gz)?;
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
