//! The preprocessing the services run: reorient to RAS, optional isotropic resampling, brain-mask
//! crop and per-modality percentile clipping + z-scoring; plus the exact inverse for label maps.

use crate::error::ImagingError;
use crate::orient::{AxisMap, Orientation};
use crate::par;
use crate::types::{Grid, LabelVolume, Limits, Modality, Volume, check_len, column_norms, same_grid};
use serde::{Deserialize, Serialize};

/// Preprocessing parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrepOptions {
    /// Lower and upper clipping percentiles (0..=100) computed over the brain mask.
    pub clip_percentiles: (f32, f32),
    /// Target isotropic voxel size in mm; volumes already at this spacing are not resampled.
    pub spacing_mm: f32,
    /// Extra voxels kept around the brain bounding box on every side.
    pub margin: usize,
}

impl Default for PrepOptions {
    fn default() -> Self {
        PrepOptions { clip_percentiles: (0.5, 99.5), spacing_mm: 1.0, margin: 0 }
    }
}

impl PrepOptions {
    fn validate(&self) -> Result<(), ImagingError> {
        let (lo, hi) = self.clip_percentiles;
        if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi && hi <= 100.0) {
            return Err(ImagingError::invalid("clip_percentiles", format!("({lo}, {hi})"), "0 <= low <= high <= 100"));
        }
        if !(self.spacing_mm.is_finite() && self.spacing_mm > 0.0) {
            return Err(ImagingError::invalid("spacing_mm", self.spacing_mm, "finite and > 0"));
        }
        Ok(())
    }
}

/// Everything needed to map prepared voxels back onto the original grid.
///
/// Forward transform: stored voxel `o` -> canonical RAS voxel `c` (`orientation`) -> resampled
/// voxel `j` with `c = j * ratio` (`ratio = spacing_mm / canonical_spacing` when `resampled`,
/// else 1) -> cropped voxel `k = j - crop_lo`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Geometry {
    /// The grid of the input volumes.
    pub original: Grid,
    /// Permutation and flips from stored axes to canonical RAS axes.
    pub orientation: Orientation,
    /// Dims after reorientation (before resampling).
    pub canonical_dims: [usize; 3],
    /// Voxel size in mm along each canonical axis (affine column norms).
    pub canonical_spacing: [f64; 3],
    /// Whether the canonical volume was resampled to `spacing_mm`.
    pub resampled: bool,
    /// Target spacing (mm) used when `resampled`.
    pub spacing_mm: f64,
    /// Dims after resampling (equal to `canonical_dims` when not resampled).
    pub resampled_dims: [usize; 3],
    /// Crop box in the resampled canonical grid: `crop_lo` inclusive, `crop_hi` exclusive.
    pub crop_lo: [usize; 3],
    pub crop_hi: [usize; 3],
}

impl Geometry {
    /// Dims of the prepared (cropped) arrays.
    pub fn cropped_dims(&self) -> [usize; 3] {
        [
            self.crop_hi[0].saturating_sub(self.crop_lo[0]),
            self.crop_hi[1].saturating_sub(self.crop_lo[1]),
            self.crop_hi[2].saturating_sub(self.crop_lo[2]),
        ]
    }

    /// Canonical voxels per resampled voxel along each canonical axis.
    pub fn ratio(&self) -> [f64; 3] {
        if self.resampled {
            [
                self.spacing_mm / self.canonical_spacing[0],
                self.spacing_mm / self.canonical_spacing[1],
                self.spacing_mm / self.canonical_spacing[2],
            ]
        } else {
            [1.0; 3]
        }
    }

    /// Voxel -> world affine of the prepared arrays (same world space as the original grid).
    pub fn prepared_affine(&self) -> [[f64; 4]; 4] {
        let r = self.ratio();
        let o = &self.orientation;
        // stored voxel = P * k + t
        let mut p = [[0.0f64; 3]; 3];
        let mut t = [0.0f64; 3];
        for i in 0..3 {
            let a = o.perm[i];
            let sign = if o.flip[i] { -1.0 } else { 1.0 };
            p[a][i] = sign * r[i];
            let lo = self.crop_lo[i] as f64 * r[i];
            t[a] = if o.flip[i] { (self.original.dims[a] as f64 - 1.0) - lo } else { lo };
        }
        let a = &self.original.affine;
        let mut m = [[0.0; 4]; 4];
        for row in 0..3 {
            for col in 0..3 {
                m[row][col] = (0..3).map(|k| a[row][k] * p[k][col]).sum();
            }
            m[row][3] = a[row][3] + (0..3).map(|k| a[row][k] * t[k]).sum::<f64>();
        }
        m[3][3] = 1.0;
        m
    }

    /// Checks internal consistency (used on deserialized geometries).
    pub fn validate(&self) -> Result<(), ImagingError> {
        let limits = Limits::default();
        self.original.validate()?;
        let bad = |field: &str, value: String, expected: &str| {
            Err(ImagingError::invalid(format!("geometry.{field}"), value, expected))
        };
        if self.original.nvox() as u64 > limits.max_voxels {
            return bad("original.dims", format!("{:?}", self.original.dims), "at most 512^3 voxels");
        }
        if !self.orientation.is_valid() {
            return bad("orientation.perm", format!("{:?}", self.orientation.perm), "a permutation of [0, 1, 2]");
        }
        if self.canonical_dims != self.orientation.canonical_dims(self.original.dims) {
            return bad(
                "canonical_dims",
                format!("{:?}", self.canonical_dims),
                "original dims permuted by orientation.perm",
            );
        }
        if self.canonical_spacing.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || !(self.spacing_mm.is_finite() && self.spacing_mm > 0.0)
        {
            return bad(
                "canonical_spacing/spacing_mm",
                format!("{:?}/{}", self.canonical_spacing, self.spacing_mm),
                "finite and > 0",
            );
        }
        if !self.resampled && self.resampled_dims != self.canonical_dims {
            return bad(
                "resampled_dims",
                format!("{:?}", self.resampled_dims),
                "equal to canonical_dims when not resampled",
            );
        }
        let rn = self.resampled_dims.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64));
        if self.resampled_dims.contains(&0) || rn > limits.max_voxels {
            return bad("resampled_dims", format!("{:?}", self.resampled_dims), "each >= 1 and at most 512^3 voxels");
        }
        for i in 0..3 {
            if !(self.crop_lo[i] < self.crop_hi[i] && self.crop_hi[i] <= self.resampled_dims[i]) {
                return bad(
                    "crop",
                    format!("{:?}..{:?}", self.crop_lo, self.crop_hi),
                    "crop_lo < crop_hi <= resampled_dims on every axis",
                );
            }
        }
        Ok(())
    }
}

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
struct PreparedHeader {
    format_version: u32,
    dtype: String,
    channels: Vec<Modality>,
    present: [bool; 4],
    dims: [usize; 3],
    geometry: Geometry,
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

/// Reorients, (optionally) resamples, crops and normalizes 1..=4 modalities of one case.
// Long on purpose: the pipeline's steps in order (reorient, resample, crop, normalise), each recorded in the geometry that `restore_labels` inverts; one place keeps that order visible.
pub fn prepare(inputs: &[(Modality, &Volume)], opts: &PrepOptions) -> Result<PreparedCase, ImagingError> {
    opts.validate()?;
    if inputs.is_empty() || inputs.len() > 4 {
        return Err(ImagingError::invalid("inputs", format!("{} modalities", inputs.len()), "1..=4 modalities"));
    }
    let mut present = [false; 4];
    for (m, _) in inputs {
        if present[m.index()] {
            return Err(ImagingError::invalid("inputs", format!("{m} given twice"), "distinct modalities"));
        }
        present[m.index()] = true;
    }
    let (m0, v0) = inputs[0];
    let grid = &v0.grid;
    grid.validate()?;
    for (m, v) in inputs {
        if *m != m0 {
            same_grid(grid, &v.grid).map_err(|e| match e {
                ImagingError::GridMismatch { what, detail } => {
                    ImagingError::GridMismatch { what: format!("modality {m} vs {m0}: {what}"), detail }
                }
                other => other,
            })?;
        }
        check_len(grid, v.data.len()).map_err(|e| match e {
            ImagingError::Invalid { value, expected, .. } => {
                ImagingError::invalid(format!("{m} data length"), value, expected)
            }
            other => other,
        })?;
    }

    let orientation = Orientation::from_affine(&grid.affine);
    let cdims = orientation.canonical_dims(grid.dims);
    let norms = column_norms(&grid.affine);
    let cspacing = [norms[orientation.perm[0]], norms[orientation.perm[1]], norms[orientation.perm[2]]];
    let target = f64::from(opts.spacing_mm);
    let resampled = cspacing.iter().any(|s| (s - target).abs() > 1e-3);
    let mut geometry = Geometry {
        original: grid.clone(),
        orientation,
        canonical_dims: cdims,
        canonical_spacing: cspacing,
        resampled,
        spacing_mm: target,
        resampled_dims: cdims,
        crop_lo: [0; 3],
        crop_hi: cdims,
    };
    let ratio = geometry.ratio();
    if resampled {
        // Cover the whole field of view: the last resampled voxel reaches or passes the last
        // stored one (values there are edge-clamped), so every stored voxel has a nearest
        // resampled neighbour within half a voxel.
        for i in 0..3 {
            let extent = (cdims[i] - 1) as f64 / ratio[i];
            geometry.resampled_dims[i] = (extent - 1e-6).ceil().max(0.0) as usize + 1;
        }
        let n = geometry.resampled_dims.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64));
        if n > Limits::default().max_voxels {
            return Err(ImagingError::TooLarge {
                what: format!("resampled voxel count {:?}", geometry.resampled_dims),
                value: n,
                limit: Limits::default().max_voxels,
            });
        }
    }
    let rdims = geometry.resampled_dims;

    // Source volumes and how to walk them in (resampled) canonical order.
    let resampled_data: Vec<Vec<f32>>;
    let (srcs, src_dims, src_orient): (Vec<&[f32]>, [usize; 3], Orientation) = if resampled {
        let map = AxisMap::new(grid.dims, &orientation);
        resampled_data = inputs.iter().map(|(_, v)| resample_linear(&v.data, &map, cdims, ratio, rdims)).collect();
        (resampled_data.iter().map(Vec::as_slice).collect(), rdims, Orientation::identity())
    } else {
        (inputs.iter().map(|(_, v)| v.data.as_slice()).collect(), grid.dims, orientation)
    };

    let bbox = nonzero_bbox(&srcs, src_dims).ok_or(ImagingError::EmptyMask)?;
    let mut lo = [0usize; 3];
    let mut hi = [0usize; 3];
    for i in 0..3 {
        let a = src_orient.perm[i];
        let n = src_dims[a];
        let (l, h) = bbox[a];
        let (l, h) = if src_orient.flip[i] { (n - 1 - h, n - 1 - l) } else { (l, h) };
        lo[i] = l.saturating_sub(opts.margin);
        hi[i] = h.saturating_add(opts.margin).min(rdims[i] - 1) + 1;
    }
    geometry.crop_lo = lo;
    geometry.crop_hi = hi;
    let cd = geometry.cropped_dims();
    let ncrop = cd[0] * cd[1] * cd[2];

    let map = AxisMap::new(src_dims, &src_orient);
    let mut data = vec![0f32; 4 * ncrop];
    let mut src_of = [None; 4];
    for ((m, _), s) in inputs.iter().zip(&srcs) {
        src_of[m.index()] = Some(*s);
    }
    std::thread::scope(|s| {
        for (chunk, src) in data.chunks_mut(ncrop).zip(src_of) {
            if let Some(src) = src {
                s.spawn(move || gather(src, &map, lo, cd, chunk));
            }
        }
    });

    let mut mask = vec![false; ncrop];
    for (chunk, p) in data.chunks(ncrop).zip(present) {
        if p {
            for (m, &v) in mask.iter_mut().zip(chunk) {
                *m |= v != 0.0;
            }
        }
    }
    let pct = (f64::from(opts.clip_percentiles.0), f64::from(opts.clip_percentiles.1));
    let results: Vec<Result<(), ImagingError>> = std::thread::scope(|s| {
        let mask = &mask;
        let handles: Vec<_> = data
            .chunks_mut(ncrop)
            .zip(present)
            .filter(|(_, p)| *p)
            .map(|(chunk, _)| s.spawn(move || normalize(chunk, mask, pct)))
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            })
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(PreparedCase { present, dims: cd, data, geometry })
}

/// Trilinear resampling of a stored volume (walked canonically via `map`) onto `rdims`, where
/// resampled voxel `j` sits at canonical coordinate `j * ratio`.
fn resample_linear(src: &[f32], map: &AxisMap, cdims: [usize; 3], ratio: [f64; 3], rdims: [usize; 3]) -> Vec<f32> {
    let tables: Vec<Vec<(isize, isize, f32)>> = (0..3)
        .map(|i| {
            (0..rdims[i])
                .map(|j| {
                    let x = j as f64 * ratio[i];
                    let n = cdims[i];
                    let i0 = (x.floor().max(0.0) as usize).min(n - 1);
                    let i1 = (i0 + 1).min(n - 1);
                    let w = (x - i0 as f64).clamp(0.0, 1.0) as f32;
                    (i0 as isize * map.steps[i], i1 as isize * map.steps[i], w)
                })
                .collect()
        })
        .collect();
    let (tx, ty, tz) = (&tables[0], &tables[1], &tables[2]);
    let slab = rdims[0] * rdims[1];
    let mut out = vec![0f32; slab * rdims[2]];
    par::for_chunks(&mut out, slab, |z, plane| {
        let (z0, z1, wz) = tz[z];
        for (y, row) in plane.chunks_mut(rdims[0]).enumerate() {
            let (y0, y1, wy) = ty[y];
            let b00 = map.base + y0 + z0;
            let b10 = map.base + y1 + z0;
            let b01 = map.base + y0 + z1;
            let b11 = map.base + y1 + z1;
            for (v, &(x0, x1, wx)) in row.iter_mut().zip(tx) {
                let at = |b: isize, x: isize| src[(b + x) as usize];
                let lerp = |b: isize| at(b, x0) + wx * (at(b, x1) - at(b, x0));
                let c0 = lerp(b00) + wy * (lerp(b10) - lerp(b00));
                let c1 = lerp(b01) + wy * (lerp(b11) - lerp(b01));
                *v = c0 + wz * (c1 - c0);
            }
        }
    });
    out
}

/// Inclusive bounding box per stored axis of voxels nonzero in any source; None if all zero.
fn nonzero_bbox(srcs: &[&[f32]], dims: [usize; 3]) -> Option<[(usize, usize); 3]> {
    let [nx, ny, nz] = dims;
    let per_z = par::map(nz, |z| {
        let mut bb: Option<(usize, usize, usize, usize)> = None;
        for y in 0..ny {
            let start = nx * (y + ny * z);
            let mut row_lo = usize::MAX;
            let mut row_hi = 0usize;
            for s in srcs {
                let row = &s[start..start + nx];
                if let Some(f) = row.iter().position(|&v| v != 0.0) {
                    row_lo = row_lo.min(f);
                    let l = row.iter().rposition(|&v| v != 0.0).unwrap_or(f);
                    row_hi = row_hi.max(l);
                }
            }
            if row_lo != usize::MAX {
                bb = Some(match bb {
                    None => (row_lo, row_hi, y, y),
                    Some((a, b, c, _)) => (a.min(row_lo), b.max(row_hi), c, y),
                });
            }
        }
        bb
    });
    let mut out: Option<[(usize, usize); 3]> = None;
    for (z, bb) in per_z.into_iter().enumerate() {
        if let Some((x0, x1, y0, y1)) = bb {
            out = Some(match out {
                None => [(x0, x1), (y0, y1), (z, z)],
                Some(o) => [(o[0].0.min(x0), o[0].1.max(x1)), (o[1].0.min(y0), o[1].1.max(y1)), (o[2].0, z)],
            });
        }
    }
    out
}

/// Copies the crop box `lo .. lo+cd` (canonical coordinates) of `src` into `out`.
fn gather(src: &[f32], map: &AxisMap, lo: [usize; 3], cd: [usize; 3], out: &mut [f32]) {
    let [s0, s1, s2] = map.steps;
    for z in 0..cd[2] {
        for y in 0..cd[1] {
            let start = map.base + lo[0] as isize * s0 + (y + lo[1]) as isize * s1 + (z + lo[2]) as isize * s2;
            let row = &mut out[(z * cd[1] + y) * cd[0]..][..cd[0]];
            if s0 == 1 {
                let b = start as usize;
                row.copy_from_slice(&src[b..b + cd[0]]);
            } else if s0 == -1 {
                let e = start as usize;
                let b = e + 1 - cd[0];
                for (o, v) in row.iter_mut().zip(src[b..=e].iter().rev()) {
                    *o = *v;
                }
            } else {
                for (x, o) in row.iter_mut().enumerate() {
                    *o = src[(start + x as isize * s0) as usize];
                }
            }
        }
    }
}

/// numpy-style ("linear") percentiles `p_lo <= p_hi` of `v`, which gets reordered.
pub(crate) fn percentiles(v: &mut [f32], p_lo: f64, p_hi: f64) -> (f32, f32) {
    let n = v.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let rank = |p: f64| {
        let r = p / 100.0 * (n - 1) as f64;
        let k = (r.floor() as usize).min(n - 1);
        (k, r - k as f64)
    };
    let cmp = |a: &f32, b: &f32| a.total_cmp(b);
    // Value at sorted index k (after selecting within v[from..]) interpolated towards k+1.
    let value = |v: &mut [f32], from: usize, k: usize, frac: f64| -> f64 {
        v[from..].select_nth_unstable_by(k - from, cmp);
        let a = f64::from(v[k]);
        if frac > 0.0 && k + 1 < n {
            let b = v[k + 1..].iter().copied().fold(f32::INFINITY, f32::min);
            a + frac * (f64::from(b) - a)
        } else {
            a
        }
    };
    let (k_lo, f_lo) = rank(p_lo);
    let (k_hi, f_hi) = rank(p_hi);
    let lo = value(v, 0, k_lo, f_lo);
    let hi = value(v, k_lo, k_hi.max(k_lo), f_hi);
    (lo as f32, hi as f32)
}

/// Clips to the mask percentiles and z-scores over the mask; voxels outside the mask become 0.
fn normalize(ch: &mut [f32], mask: &[bool], pct: (f64, f64)) -> Result<(), ImagingError> {
    let mut vals: Vec<f32> = ch.iter().zip(mask).filter(|(_, m)| **m).map(|(v, _)| *v).collect();
    let bad = vals.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(ImagingError::NonFinite { count: bad });
    }
    let (lo, hi) = percentiles(&mut vals, pct.0, pct.1);
    let n = vals.len().max(1) as f64;
    let clip = |v: f32| v.max(lo).min(hi);
    let mean = vals.iter().map(|&v| f64::from(clip(v))).sum::<f64>() / n;
    let var = vals
        .iter()
        .map(|&v| {
            let d = f64::from(clip(v)) - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    let inv = (1.0 / (var.sqrt() + 1e-8)) as f32;
    let mu = mean as f32;
    for (v, &m) in ch.iter_mut().zip(mask) {
        *v = if m { (clip(*v) - mu) * inv } else { 0.0 };
    }
    Ok(())
}

/// Applies the forward transform of `prepare` to a segmentation (nearest neighbour).
pub fn prepare_labels(seg: &LabelVolume, g: &Geometry) -> Result<Vec<u8>, ImagingError> {
    g.validate()?;
    same_grid(&g.original, &seg.grid).map_err(|e| match e {
        ImagingError::GridMismatch { what, detail } => {
            ImagingError::GridMismatch { what: format!("segmentation vs prepared case: {what}"), detail }
        }
        other => other,
    })?;
    check_len(&seg.grid, seg.data.len())?;
    let map = AxisMap::new(g.original.dims, &g.orientation);
    let ratio = g.ratio();
    let cd = g.cropped_dims();
    let tables: Vec<Vec<isize>> = (0..3)
        .map(|i| {
            let n = g.canonical_dims[i];
            (0..cd[i])
                .map(|k| {
                    let x = (k + g.crop_lo[i]) as f64 * ratio[i];
                    let c = ((x + 0.5).floor().max(0.0) as usize).min(n - 1);
                    c as isize * map.steps[i]
                })
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(cd[0] * cd[1] * cd[2]);
    for &oz in &tables[2] {
        for &oy in &tables[1] {
            let b = map.base + oy + oz;
            out.extend(tables[0].iter().map(|&ox| seg.data[(b + ox) as usize]));
        }
    }
    Ok(out)
}

/// Where a stored coordinate lands in the cropped array along one axis.
#[derive(Clone, Copy)]
struct Back {
    /// Nearest cropped index.
    nearest: usize,
    /// Linear interpolation: lower index, upper index, weight of the upper one.
    k0: usize,
    k1: usize,
    w: f32,
}

/// For each stored axis and stored coordinate, its cropped position, or None when the nearest
/// resampled voxel lies outside the crop box.
fn inverse_tables(g: &Geometry) -> [Vec<Option<Back>>; 3] {
    let ratio = g.ratio();
    let inv = g.orientation.inverse_perm();
    let cd = g.cropped_dims();
    let axis = |a: usize| -> Vec<Option<Back>> {
        let i = inv[a];
        let n = g.original.dims[a];
        (0..n)
            .map(|o| {
                let c = if g.orientation.flip[i] { n - 1 - o } else { o };
                let x = c as f64 / ratio[i];
                let nearest = (x + 0.5).floor();
                let (lo, hi) = (g.crop_lo[i] as f64, g.crop_hi[i] as f64);
                if nearest < lo || nearest >= hi {
                    return None;
                }
                let k = (x - lo).clamp(0.0, (cd[i] - 1) as f64);
                let k0 = k.floor() as usize;
                Some(Back {
                    nearest: (nearest - lo) as usize,
                    k0,
                    k1: (k0 + 1).min(cd[i] - 1),
                    w: (k - k0 as f64) as f32,
                })
            })
            .collect()
    };
    [axis(0), axis(1), axis(2)]
}

/// Cropped-array stride of each stored axis.
fn inverse_strides(g: &Geometry) -> [usize; 3] {
    let cd = g.cropped_dims();
    let cstride = [1, cd[0], cd[0] * cd[1]];
    let inv = g.orientation.inverse_perm();
    [cstride[inv[0]], cstride[inv[1]], cstride[inv[2]]]
}

fn fallback_grid_len(g: &Geometry) -> usize {
    let n = g.original.nvox();
    if n as u64 <= Limits::default().max_voxels { n } else { 0 }
}

fn check_cropped_len(len: usize, g: &Geometry) -> Result<(), ImagingError> {
    let cd = g.cropped_dims();
    let n = cd[0] * cd[1] * cd[2];
    if len != n {
        return Err(ImagingError::invalid("cropped length", len, format!("{n} (cropped dims {cd:?})")));
    }
    Ok(())
}

/// Inverse of [`prepare_labels`]: uncrop, nearest-neighbour resample back and undo the
/// reorientation, returning labels on the original grid. Errors on an inconsistent geometry or a
/// wrong-sized input.
pub fn try_restore_labels(cropped: &[u8], g: &Geometry) -> Result<LabelVolume, ImagingError> {
    g.validate()?;
    check_cropped_len(cropped.len(), g)?;
    let t = inverse_tables(g);
    let s = inverse_strides(g);
    let [nx, ny, nz] = g.original.dims;
    let mut data = vec![0u8; nx * ny * nz];
    par::for_chunks(&mut data, nx * ny, |z, plane| {
        let Some(bz) = t[2][z] else { return };
        for (y, row) in plane.chunks_mut(nx).enumerate() {
            let Some(by) = t[1][y] else { continue };
            let b = bz.nearest * s[2] + by.nearest * s[1];
            for (v, bx) in row.iter_mut().zip(&t[0]) {
                if let Some(bx) = bx {
                    *v = cropped[b + bx.nearest * s[0]];
                }
            }
        }
    });
    Ok(LabelVolume { grid: g.original.clone(), data })
}

/// Infallible [`try_restore_labels`]: on an inconsistent geometry or input size it returns an
/// all-zero label map on the original grid (empty data if that grid is absurdly large).
pub fn restore_labels(cropped: &[u8], g: &Geometry) -> LabelVolume {
    try_restore_labels(cropped, g)
        .unwrap_or_else(|_| LabelVolume { grid: g.original.clone(), data: vec![0; fallback_grid_len(g)] })
}

/// Inverse transform for a float map (e.g. uncertainty): trilinear inside the crop box, 0 outside.
pub fn try_restore_map(cropped: &[f32], g: &Geometry) -> Result<Volume, ImagingError> {
    g.validate()?;
    check_cropped_len(cropped.len(), g)?;
    let t = inverse_tables(g);
    let s = inverse_strides(g);
    let [nx, ny, nz] = g.original.dims;
    let mut data = vec![0f32; nx * ny * nz];
    par::for_chunks(&mut data, nx * ny, |z, plane| {
        let Some(Back { k0: z0, k1: z1, w: wz, .. }) = t[2][z] else {
            return;
        };
        for (y, row) in plane.chunks_mut(nx).enumerate() {
            let Some(Back { k0: y0, k1: y1, w: wy, .. }) = t[1][y] else {
                continue;
            };
            let bases = [z0 * s[2] + y0 * s[1], z0 * s[2] + y1 * s[1], z1 * s[2] + y0 * s[1], z1 * s[2] + y1 * s[1]];
            for (v, tx) in row.iter_mut().zip(&t[0]) {
                if let Some(Back { k0: x0, k1: x1, w: wx, .. }) = *tx {
                    let lerp = |b: usize| {
                        let a = cropped[b + x0 * s[0]];
                        a + wx * (cropped[b + x1 * s[0]] - a)
                    };
                    let c0 = lerp(bases[0]) + wy * (lerp(bases[1]) - lerp(bases[0]));
                    let c1 = lerp(bases[2]) + wy * (lerp(bases[3]) - lerp(bases[2]));
                    *v = c0 + wz * (c1 - c0);
                }
            }
        }
    });
    Ok(Volume { grid: g.original.clone(), data })
}

/// Infallible [`try_restore_map`] (all-zero map on an inconsistent geometry or input size).
pub fn restore_map(cropped: &[f32], g: &Geometry) -> Volume {
    try_restore_map(cropped, g)
        .unwrap_or_else(|_| Volume { grid: g.original.clone(), data: vec![0.0; fallback_grid_len(g)] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vol(grid: &Grid, f: impl Fn(usize, usize, usize) -> f32) -> Volume {
        let [nx, ny, nz] = grid.dims;
        let mut data = Vec::with_capacity(nx * ny * nz);
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    data.push(f(x, y, z));
                }
            }
        }
        Volume::new(grid.clone(), data).unwrap()
    }

    /// Voxel axis 0 -> -A, axis 1 -> +S, axis 2 -> -R (a permuted, flipped acquisition).
    fn permuted_grid() -> Grid {
        Grid {
            dims: [9, 7, 8],
            pixdim: [1.0; 3],
            affine: [[0.0, 0.0, -1.0, 30.0], [-1.0, 0.0, 0.0, 40.0], [0.0, 1.0, 0.0, -5.0], [0.0, 0.0, 0.0, 1.0]],
        }
    }

    fn inside(x: usize, y: usize, z: usize) -> bool {
        (2..7).contains(&x) && (1..6).contains(&y) && (3..7).contains(&z)
    }

    fn apply(a: &[[f64; 4]; 4], v: [f64; 3]) -> [i64; 3] {
        let mut w = [0i64; 3];
        for (i, wi) in w.iter_mut().enumerate() {
            *wi = (a[i][0] * v[0] + a[i][1] * v[1] + a[i][2] * v[2] + a[i][3]).round() as i64;
        }
        w
    }

    #[test]
    fn reorientation_and_exact_label_restore() {
        let g = permuted_grid();
        let t1 =
            vol(&g, |x, y, z| if inside(x, y, z) && x < 6 && y != 3 { (1 + x + 10 * y + 100 * z) as f32 } else { 0.0 });
        let flair = vol(&g, |x, y, z| if inside(x, y, z) && (x + y + z) % 5 != 0 { 5.0 + z as f32 } else { 0.0 });
        let seg_data: Vec<u8> = t1
            .data
            .iter()
            .zip(&flair.data)
            .enumerate()
            .map(|(i, (a, b))| if *a != 0.0 || *b != 0.0 { (i % 4) as u8 + 1 } else { 0 })
            .collect();
        let seg = LabelVolume::new(g.clone(), seg_data).unwrap();
        let p = prepare(&[(Modality::Flair, &flair), (Modality::T1, &t1)], &PrepOptions::default()).unwrap();
        let geo = &p.geometry;
        assert_eq!(geo.orientation.perm, [2, 0, 1]);
        assert_eq!(geo.orientation.flip, [true, true, false]);
        assert!(!geo.resampled);
        assert_eq!(p.present, [true, false, false, true]);
        // Brain box: stored x 2..7, y 1..6, z 3..7 -> canonical (R<-z, A<-x, S<-y).
        assert_eq!(p.dims, [4, 5, 5]);
        assert!(p.channel(Modality::T1ce).iter().all(|&v| v == 0.0));
        assert!(p.channel(Modality::T2).iter().all(|&v| v == 0.0));
        assert_eq!(p.data.len(), 4 * 100);

        // The prepared affine is RAS-aligned and maps every prepared voxel to the world position
        // of the stored voxel it came from.
        let pa = geo.prepared_affine();
        for (i, row) in pa.iter().take(3).enumerate() {
            for (j, v) in row.iter().take(3).enumerate() {
                assert_eq!(*v, if i == j { 1.0 } else { 0.0 }, "prepared affine {pa:?}");
            }
        }
        let mut world_label = HashMap::new();
        let [nx, ny, nz] = g.dims;
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    let w = apply(&g.affine, [x as f64, y as f64, z as f64]);
                    world_label.insert(w, seg.data[x + nx * (y + ny * z)]);
                }
            }
        }
        let cropped = prepare_labels(&seg, geo).unwrap();
        let cd = p.dims;
        for k2 in 0..cd[2] {
            for k1 in 0..cd[1] {
                for k0 in 0..cd[0] {
                    let w = apply(&pa, [k0 as f64, k1 as f64, k2 as f64]);
                    assert_eq!(cropped[k0 + cd[0] * (k1 + cd[1] * k2)], world_label[&w], "voxel {k0},{k1},{k2}");
                }
            }
        }
        // Exact inverse onto the original grid.
        let back = restore_labels(&cropped, geo);
        assert_eq!(back.grid, g);
        assert_eq!(back.data, seg.data);
        let fmap: Vec<f32> = cropped.iter().map(|&v| f32::from(v)).collect();
        let back_map = restore_map(&fmap, geo);
        assert_eq!(back_map.data, seg.data.iter().map(|&v| f32::from(v)).collect::<Vec<_>>());
        // Outside the mask everything is 0; the mask is the union of the present channels.
        let t1c = p.channel(Modality::T1);
        let fc = p.channel(Modality::Flair);
        for i in 0..100 {
            assert_eq!(cropped[i] != 0, fc[i] != 0.0 || t1c[i] != 0.0, "voxel {i}");
        }
        assert!(cropped.contains(&0), "the crop box includes background");
    }

    #[test]
    fn anisotropic_resampling_and_back() {
        // 1 x 1 x 2.5 mm with a flipped x axis; values a linear ramp in world z.
        let g = Grid {
            dims: [10, 8, 6],
            pixdim: [1.0, 1.0, 2.5],
            affine: [[-1.0, 0.0, 0.0, 9.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.5, 0.0], [0.0, 0.0, 0.0, 1.0]],
        };
        let ramp = vol(&g, |_, _, z| 10.0 + 2.5 * z as f32);
        let opts = PrepOptions { clip_percentiles: (0.0, 100.0), ..PrepOptions::default() };
        let p = prepare(&[(Modality::T2, &ramp)], &opts).unwrap();
        let geo = &p.geometry;
        assert!(geo.resampled);
        // 5 stored steps of 2.5 mm = 12.5 mm -> 14 one-mm samples (the last one edge-clamped).
        assert_eq!(geo.resampled_dims, [10, 8, 14]);
        assert_eq!(p.dims, [10, 8, 14]);
        let pa = geo.prepared_affine();
        assert_eq!([pa[0][0], pa[1][1], pa[2][2]], [1.0, 1.0, 1.0]);
        // Trilinear interpolation of a linear ramp is exact: constant steps along z.
        let c = p.channel(Modality::T2);
        let step = c[10 * 8] - c[0];
        assert!(step > 0.0);
        for z in 0..12 {
            for i in 0..80 {
                let d = c[i + 80 * (z + 1)] - c[i + 80 * z];
                assert!((d - step).abs() < 1e-4, "z={z} i={i} d={d} step={step}");
            }
        }
        // A map of world z built on the prepared grid restores to world z of the original grid.
        let cd = p.dims;
        let world_z: Vec<f32> = (0..cd[0] * cd[1] * cd[2])
            .map(|i| {
                let k2 = i / (cd[0] * cd[1]);
                (pa[2][2] * k2 as f64 + pa[2][3]) as f32
            })
            .collect();
        let back = restore_map(&world_z, geo);
        assert_eq!(back.grid, g);
        for z in 0..6 {
            for i in 0..80 {
                assert!((back.data[i + 80 * z] - 2.5 * z as f32).abs() < 1e-4);
            }
        }
        // Labels survive the 2.5 mm -> 1 mm -> 2.5 mm round trip exactly.
        let seg = LabelVolume::new(g.clone(), (0..480).map(|i| ((i / 80) % 3 + (i % 10 > 4) as usize) as u8).collect())
            .unwrap();
        let cropped = prepare_labels(&seg, geo).unwrap();
        assert_eq!(cropped.len(), 10 * 8 * 14);
        assert_eq!(restore_labels(&cropped, geo), seg);
        // Finer than the target: 0.5 mm voxels are downsampled.
        let fine = Grid::axis_aligned([9, 9, 9], [0.5; 3], [0.0; 3]);
        let p = prepare(&[(Modality::T1, &vol(&fine, |_, _, _| 1.0))], &opts).unwrap();
        assert_eq!(p.dims, [5, 5, 5]);
    }

    #[test]
    fn percentiles_match_numpy() {
        let mut v = vec![3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0];
        let (lo, hi) = percentiles(&mut v, 0.5, 99.5);
        assert!((lo - 1.0).abs() < 1e-6 && (hi - 8.85).abs() < 1e-5, "{lo} {hi}");
        let (lo, hi) = percentiles(&mut v, 25.0, 50.0);
        assert!((lo - 2.5).abs() < 1e-6 && (hi - 4.0).abs() < 1e-6, "{lo} {hi}");
        let (lo, hi) = percentiles(&mut v, 0.0, 100.0);
        assert_eq!((lo, hi), (1.0, 9.0));
        let mut one = vec![7.0];
        assert_eq!(percentiles(&mut one, 0.5, 99.5), (7.0, 7.0));
    }

    #[test]
    fn clip_and_zscore_hand_case() {
        // Values 1..=10 inside, zeros on both ends (outside the mask).
        let g = Grid::axis_aligned([12, 1, 1], [1.0; 3], [0.0; 3]);
        let v = vol(&g, |x, _, _| if (1..=10).contains(&x) { x as f32 } else { 0.0 });
        let opts = PrepOptions { clip_percentiles: (10.0, 90.0), ..PrepOptions::default() };
        let p = prepare(&[(Modality::T1ce, &v)], &opts).unwrap();
        assert_eq!(p.dims, [10, 1, 1]);
        // numpy: percentiles 1.9 / 9.1, clipped mean 5.5, std 2.6061465806819077.
        let want = [
            -1.3813497724462411,
            -1.3429789454338454,
            -0.9592706753098896,
            -0.5755624051859337,
            -0.19185413506197793,
            0.19185413506197793,
            0.5755624051859337,
            0.9592706753098896,
            1.3429789454338454,
            1.381349772446241,
        ];
        for (got, want) in p.channel(Modality::T1ce).iter().zip(want) {
            assert!((f64::from(*got) - want).abs() < 1e-5, "{got} vs {want}");
        }
        // A margin keeps background voxels (as 0) and is clamped to the grid.
        for margin in [1, 5] {
            let p = prepare(&[(Modality::T1ce, &v)], &PrepOptions { margin, ..opts.clone() }).unwrap();
            assert_eq!(p.dims, [12, 1, 1]);
            let c = p.channel(Modality::T1ce);
            assert_eq!((c[0], c[11]), (0.0, 0.0));
            assert!((f64::from(c[1]) - want[0]).abs() < 1e-5);
        }
    }

    #[test]
    fn input_errors() {
        let g = permuted_grid();
        let a = vol(&g, |x, y, z| if inside(x, y, z) { 1.0 + x as f32 } else { 0.0 });
        let opts = PrepOptions::default();
        // Grid mismatch names the modality.
        let mut g2 = g.clone();
        g2.affine[0][3] += 1.0;
        let b = Volume::new(g2, a.data.clone()).unwrap();
        let err = prepare(&[(Modality::T1, &a), (Modality::T2, &b)], &opts).unwrap_err();
        assert!(matches!(err, ImagingError::GridMismatch { .. }));
        assert!(err.to_string().contains("modality t2 vs t1"), "{err}");
        let mut g3 = g.clone();
        g3.dims = [9, 7, 9];
        let c = vol(&g3, |_, _, _| 1.0);
        let err = prepare(&[(Modality::T1, &a), (Modality::Flair, &c)], &opts).unwrap_err();
        assert!(err.to_string().contains("flair"), "{err}");
        // Duplicates, empty input, too many.
        let err = prepare(&[(Modality::T1, &a), (Modality::T1, &a)], &opts).unwrap_err();
        assert!(err.to_string().contains("t1 given twice"), "{err}");
        assert!(prepare(&[], &opts).is_err());
        let five = [(Modality::T1, &a); 5];
        assert!(prepare(&five, &opts).is_err());
        // Empty mask.
        let zero = vol(&g, |_, _, _| 0.0);
        assert!(matches!(prepare(&[(Modality::T1, &zero)], &opts), Err(ImagingError::EmptyMask)));
        // Non-finite voxels.
        let mut nan = a.clone();
        nan.data[5] = f32::NAN;
        assert!(matches!(prepare(&[(Modality::T1, &nan)], &opts), Err(ImagingError::NonFinite { count: 1 })));
        // Wrong data length.
        let mut short = a.clone();
        short.data.pop();
        let err = prepare(&[(Modality::T1, &short)], &opts).unwrap_err();
        assert!(err.to_string().contains("t1 data length"), "{err}");
        // Bad options.
        for bad in [
            PrepOptions { clip_percentiles: (60.0, 40.0), ..PrepOptions::default() },
            PrepOptions { spacing_mm: 0.0, ..PrepOptions::default() },
        ] {
            assert!(matches!(prepare(&[(Modality::T1, &a)], &bad), Err(ImagingError::Invalid { .. })));
        }
        // Labels on another grid.
        let p = prepare(&[(Modality::T1, &a)], &opts).unwrap();
        let seg = LabelVolume::new(g3, vec![0; 9 * 7 * 9]).unwrap();
        assert!(matches!(prepare_labels(&seg, &p.geometry), Err(ImagingError::GridMismatch { .. })));
        // Wrong-sized cropped input: try_ errors, infallible version gives zeros on the grid.
        assert!(try_restore_labels(&[1, 2, 3], &p.geometry).is_err());
        let z = restore_labels(&[1, 2, 3], &p.geometry);
        assert_eq!(z.grid, g);
        assert!(z.data.iter().all(|&v| v == 0) && z.data.len() == g.nvox());
    }

    #[test]
    fn prepared_bytes_round_trip_and_validation() {
        let g = permuted_grid();
        let a = vol(&g, |x, y, z| if inside(x, y, z) { (x * y + z) as f32 } else { 0.0 });
        let p = prepare(&[(Modality::T2, &a)], &PrepOptions::default()).unwrap();
        let bytes = p.to_bytes();
        assert_eq!(&bytes[..8], b"GMMASPC\0");
        let back = PreparedCase::from_bytes(&bytes).unwrap();
        assert_eq!(back, p);
        // Corruptions are rejected with a Format error, never a panic.
        assert!(PreparedCase::from_bytes(&bytes[..bytes.len() - 4]).is_err());
        assert!(PreparedCase::from_bytes(&bytes[..20]).is_err());
        assert!(PreparedCase::from_bytes(b"nonsense").is_err());
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(matches!(PreparedCase::from_bytes(&bad), Err(ImagingError::Format(_))));
        let mut huge = bytes.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(PreparedCase::from_bytes(&huge).is_err());
        // A different format version is refused.
        let hlen = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        let mut hdr: PreparedHeader = rmp_serde::from_slice(&bytes[12..12 + hlen]).unwrap();
        hdr.format_version = 2;
        let h = rmp_serde::to_vec_named(&hdr).unwrap();
        let mut v2 = b"GMMASPC\0".to_vec();
        v2.extend_from_slice(&(h.len() as u32).to_le_bytes());
        v2.extend_from_slice(&h);
        v2.extend_from_slice(&bytes[12 + hlen..]);
        let err = PreparedCase::from_bytes(&v2).unwrap_err();
        assert!(err.to_string().contains("format_version=2"), "{err}");
        // An inconsistent geometry is refused.
        hdr.format_version = 1;
        hdr.geometry.crop_hi[0] = 100;
        let h = rmp_serde::to_vec_named(&hdr).unwrap();
        let mut g2 = b"GMMASPC\0".to_vec();
        g2.extend_from_slice(&(h.len() as u32).to_le_bytes());
        g2.extend_from_slice(&h);
        g2.extend_from_slice(&bytes[12 + hlen..]);
        assert!(PreparedCase::from_bytes(&g2).is_err());
        // The geometry also round-trips through JSON for services.
        let json = serde_json::to_string(&p.geometry).unwrap();
        let geo: Geometry = serde_json::from_str(&json).unwrap();
        assert_eq!(geo, p.geometry);
    }
}
