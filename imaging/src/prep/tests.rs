use super::format::PreparedHeader;
use super::forward::percentiles;
use super::*;
use crate::types::{LabelVolume, Modality, Volume};
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
    let seg =
        LabelVolume::new(g.clone(), (0..480).map(|i| ((i / 80) % 3 + (i % 10 > 4) as usize) as u8).collect()).unwrap();
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
