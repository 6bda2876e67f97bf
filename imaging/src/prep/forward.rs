//! The forward transform: reorient to RAS, optional resampling, brain-mask crop and per-modality
//! normalisation of the images, and the same mapping (nearest neighbour) for a label map.

use super::{Geometry, PrepOptions, PreparedCase};
use crate::error::ImagingError;
use crate::orient::{AxisMap, Orientation};
use crate::par;
use crate::types::{LabelVolume, Limits, Modality, Volume, check_len, column_norms, same_grid};

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
pub(super) fn percentiles(v: &mut [f32], p_lo: f64, p_hi: f64) -> (f32, f32) {
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
