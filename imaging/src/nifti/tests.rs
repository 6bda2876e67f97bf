use super::header::*;
use super::read::*;
use super::write::*;
use super::*;
use crate::types::{LabelVolume, Limits, Volume, column_norms, same_grid};
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;

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
        let h = H { datatype: *code, bitpix: (dt.size() * 8) as i16, dims: [3, 1, 1, 1, 1, 1, 1, 1], ..H::default() };
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
    assert!(matches!(read_components(short, &Limits::default(), |_, _, _| {}), Err(ImagingError::Truncated { .. })));
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
