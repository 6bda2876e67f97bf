//! A coverage-free mutational fuzzer for the NIfTI-1 reader (`read_volume`, `read_labels`, `read_header_with`).
//! Shared by the `fuzz_nifti` example (long runs) and the `fuzz_smoke` test (a short run in the test suite).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "fuzzing tool: a broken invariant should stop it loudly")]

// How it works (seeds, mutations, limit profiles, checks): imaging/fuzz/README.md.

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use gmmas_imaging::{
    Datatype, Grid, ImagingError, LabelVolume, Limits, Volume, check_volume_from, read_header_with, read_labels,
    read_volume, write_labels, write_volume, write_volume_as,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Allocation accounting

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
    /// The slot of the worker running on this thread, for the oversize-allocation report.
    static CURRENT: RefCell<Option<Arc<Slot>>> = const { RefCell::new(None) };
}

/// Any single allocation above this many bytes is refused (the process then aborts) after the
/// input that asked for it has been saved. `usize::MAX` (the default) turns the check off.
static HARD_CAP: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The system allocator plus per-thread byte counting, so that the fuzzer can measure the peak
/// heap use of one reader call. Install it with `#[global_allocator]` in the binary.
pub struct CountingAlloc;

fn count(delta: i64) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

/// Saves the current worker's input when an allocation beyond [`HARD_CAP`] is requested.
fn oversize(size: usize) {
    let _ = CURRENT.try_with(|c| {
        if let Ok(cur) = c.try_borrow()
            && let Some(slot) = cur.as_ref()
        {
            let input = slot.input.lock().map(|g| g.clone()).unwrap_or_default();
            let path = save_finding(&slot.crash_dir, "oversize", &input, &format!("allocation of {size} bytes"));
            eprintln!("fuzz: allocation of {size} bytes refused; input saved to {}", path.display());
        }
    });
}

// SAFETY (for the whole impl): every call is forwarded unchanged to `System`; the wrapper only
// counts sizes in thread-local cells and may return null, which `GlobalAlloc` allows.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > HARD_CAP.load(Ordering::Relaxed) {
            oversize(layout.size());
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > HARD_CAP.load(Ordering::Relaxed) {
            oversize(layout.size());
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > HARD_CAP.load(Ordering::Relaxed) {
            oversize(new_size);
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

/// Starts a peak measurement on this thread; returns the baseline.
pub fn peak_reset() -> i64 {
    let live = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(live));
    live
}

/// Bytes allocated on this thread above `base` at the highest point since [`peak_reset`]
/// (0 when no [`CountingAlloc`] is installed).
pub fn peak_since(base: i64) -> u64 {
    (PEAK.with(Cell::get) - base).max(0) as u64
}

/// Deflate's largest expansion: a 258-byte match coded in about two bits, so n input bytes inflate
/// to at most about 1032 n.
const MAX_INFLATE_RATIO: u64 = 1032;

/// Upper bound on what one reader call may allocate for an input of `input_len` bytes: an f32 plus
/// a byte per voxel (labels) for no more voxels than the limit allows and than the input can hold
/// once inflated, the decompression buffer (at most the body and 1 MiB), gzip header fields (file
/// name, comment, extra: twice the input at most) and a fixed allowance for the inflater state
/// and error messages. So a small upload may not make the reader reserve memory for the image its
/// header merely claims, whatever the limits.
pub fn alloc_bound(limits: &Limits, input_len: usize) -> u64 {
    let len = input_len as u64;
    5 * limits.max_voxels.min(MAX_INFLATE_RATIO * len) + (8 * limits.max_voxels).min(1 << 20) + 2 * len + 256 * 1024
}

/// Any single allocation above this is refused (after the input is saved): far above
/// [`alloc_bound`] for any input the fuzzer makes, under any of its limit profiles.
const ALLOC_HARD_CAP: usize = 4 << 30;

// ---------------------------------------------------------------------------------------------
// Random numbers (splitmix64: tiny, fast, and reproducible across platforms)

/// A small deterministic PRNG.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den < num
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

// ---------------------------------------------------------------------------------------------
// The NIfTI-1 header layout, as far as the mutations need it

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    I16,
    I32,
    F32,
}

/// Every numeric field of the 348-byte NIfTI-1 header: (offset, kind).
const FIELDS: &[(usize, Kind)] = &[
    (0, Kind::I32),  // sizeof_hdr
    (32, Kind::I32), // extents
    (36, Kind::I16), // session_error
    (40, Kind::I16), // dim[0..8]
    (42, Kind::I16),
    (44, Kind::I16),
    (46, Kind::I16),
    (48, Kind::I16),
    (50, Kind::I16),
    (52, Kind::I16),
    (54, Kind::I16),
    (56, Kind::F32), // intent_p1..p3
    (60, Kind::F32),
    (64, Kind::F32),
    (68, Kind::I16), // intent_code
    (70, Kind::I16), // datatype
    (72, Kind::I16), // bitpix
    (74, Kind::I16), // slice_start
    (76, Kind::F32), // pixdim[0..8]
    (80, Kind::F32),
    (84, Kind::F32),
    (88, Kind::F32),
    (92, Kind::F32),
    (96, Kind::F32),
    (100, Kind::F32),
    (104, Kind::F32),
    (108, Kind::F32), // vox_offset
    (112, Kind::F32), // scl_slope
    (116, Kind::F32), // scl_inter
    (120, Kind::I16), // slice_end
    (124, Kind::F32), // cal_max, cal_min, slice_duration, toffset
    (128, Kind::F32),
    (132, Kind::F32),
    (136, Kind::F32),
    (140, Kind::I32), // glmax, glmin
    (144, Kind::I32),
    (252, Kind::I16), // qform_code, sform_code
    (254, Kind::I16),
    (256, Kind::F32), // quatern_b/c/d, qoffset_x/y/z
    (260, Kind::F32),
    (264, Kind::F32),
    (268, Kind::F32),
    (272, Kind::F32),
    (276, Kind::F32),
    (280, Kind::F32), // srow_x/y/z
    (284, Kind::F32),
    (288, Kind::F32),
    (292, Kind::F32),
    (296, Kind::F32),
    (300, Kind::F32),
    (304, Kind::F32),
    (308, Kind::F32),
    (312, Kind::F32),
    (316, Kind::F32),
    (320, Kind::F32),
    (324, Kind::F32),
];

/// Fields the reader actually looks at, picked more often.
const HOT_FIELDS: &[(usize, Kind)] = &[
    (0, Kind::I32),
    (40, Kind::I16),
    (42, Kind::I16),
    (44, Kind::I16),
    (46, Kind::I16),
    (48, Kind::I16),
    (70, Kind::I16),
    (72, Kind::I16),
    (76, Kind::F32),
    (80, Kind::F32),
    (84, Kind::F32),
    (88, Kind::F32),
    (108, Kind::F32),
    (112, Kind::F32),
    (116, Kind::F32),
    (252, Kind::I16),
    (254, Kind::I16),
    (256, Kind::F32),
    (260, Kind::F32),
    (264, Kind::F32),
    (280, Kind::F32),
    (300, Kind::F32),
    (320, Kind::F32),
];

const HDR: usize = 348;
const FIRST_VOXEL: usize = 352;

const ALL_DATATYPES: [Datatype; 8] = [
    Datatype::U8,
    Datatype::I8,
    Datatype::I16,
    Datatype::U16,
    Datatype::I32,
    Datatype::U32,
    Datatype::F32,
    Datatype::F64,
];

/// The byte order a (possibly damaged) header claims; little-endian unless sizeof_hdr says otherwise.
fn file_le(b: &[u8]) -> bool {
    !(b.len() >= 4 && i32::from_be_bytes([b[0], b[1], b[2], b[3]]) == 348)
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8], le: bool) {
    if off + bytes.len() <= buf.len() {
        let dst = &mut buf[off..off + bytes.len()];
        dst.copy_from_slice(bytes);
        if !le {
            dst.reverse();
        }
    }
}

fn put_i16(buf: &mut [u8], off: usize, v: i16, le: bool) {
    put(buf, off, &v.to_le_bytes(), le);
}

fn put_f32(buf: &mut [u8], off: usize, v: f32, le: bool) {
    put(buf, off, &v.to_le_bytes(), le);
}

fn get_i16(buf: &[u8], off: usize, le: bool) -> Option<i16> {
    let a: [u8; 2] = buf.get(off..off + 2)?.try_into().ok()?;
    Some(if le { i16::from_le_bytes(a) } else { i16::from_be_bytes(a) })
}

/// Reverses the byte order of every header field (and of the voxels, when the datatype is known),
/// turning a little-endian file into a big-endian one and back.
fn swap_endianness(buf: &mut [u8]) {
    let le = file_le(buf);
    let dt = get_i16(buf, 70, le).and_then(Datatype::from_code);
    for &(off, kind) in FIELDS {
        let w = if kind == Kind::I16 { 2 } else { 4 };
        if off + w <= buf.len() {
            buf[off..off + w].reverse();
        }
    }
    if let Some(dt) = dt
        && buf.len() > FIRST_VOXEL
    {
        for c in buf[FIRST_VOXEL..].chunks_exact_mut(dt.size()) {
            c.reverse();
        }
    }
}

fn gunzip(bytes: &[u8], cap: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    // A corrupt stream still yields what inflated before the error.
    let _ = MultiGzDecoder::new(bytes).take(cap as u64).read_to_end(&mut out);
    (!out.is_empty()).then_some(out)
}

fn gzip(bytes: &[u8], level: u32) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::with_capacity(bytes.len() / 2 + 64), Compression::new(level));
    // Writing into a Vec cannot fail.
    e.write_all(bytes).expect("gzip into memory");
    e.finish().expect("gzip into memory")
}

// ---------------------------------------------------------------------------------------------
// Seeds

fn oblique_grid(dims: [usize; 3]) -> Grid {
    Grid {
        dims,
        pixdim: [2.0, 1.0, 1.5],
        affine: [[0.0, 0.0, -1.5, 10.0], [-2.0, 0.0, 0.0, 20.5], [0.0, 1.0, 0.0, -7.25], [0.0, 0.0, 0.0, 1.0]],
    }
}

fn rotated_grid(dims: [usize; 3]) -> Grid {
    let (c, s) = (0.8f64, 0.6f64);
    Grid {
        dims,
        pixdim: [1.0, 2.0, 3.0],
        affine: [[c, -2.0 * s, 0.0, 1.0], [s, 2.0 * c, 0.0, 2.0], [0.0, 0.0, 3.0, 3.0], [0.0, 0.0, 0.0, 1.0]],
    }
}

/// Values in range for `dt`, spread over that range.
fn pattern(dt: Datatype, n: usize) -> Vec<f32> {
    let (lo, hi): (f32, f32) = match dt {
        Datatype::U8 => (0.0, 255.0),
        Datatype::I8 => (-128.0, 127.0),
        Datatype::I16 => (-32768.0, 32767.0),
        Datatype::U16 => (0.0, 65535.0),
        Datatype::I32 | Datatype::U32 => (0.0, 1_000_000.0),
        Datatype::F32 | Datatype::F64 => (-1.0e6, 1.0e6),
    };
    (0..n)
        .map(|i| {
            let t = ((i * 37) % 101) as f32 / 100.0;
            let v = lo + t * (hi - lo);
            if dt == Datatype::F32 || dt == Datatype::F64 { v * 0.37 } else { v.round().clamp(lo, hi) }
        })
        .collect()
}

fn set_i16(mut b: Vec<u8>, off: usize, v: i16) -> Vec<u8> {
    let le = file_le(&b);
    put_i16(&mut b, off, v, le);
    b
}

fn set_f32(mut b: Vec<u8>, off: usize, v: f32) -> Vec<u8> {
    let le = file_le(&b);
    put_f32(&mut b, off, v, le);
    b
}

/// The seed corpus: `valid-*` files read without error (under both the fuzz limits and
/// [`Limits::default`]); `edge-*` files are malformed on purpose or probe a limit.
pub fn builtin_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: String, bytes: Vec<u8>| seeds.push((name, bytes));
    let shapes: [[usize; 3]; 8] =
        [[8, 8, 4], [3, 5, 7], [5, 4, 3], [1, 1, 1], [2, 2, 2], [7, 1, 3], [6, 5, 4], [4, 4, 4]];
    for (i, (dt, dims)) in ALL_DATATYPES.iter().zip(shapes).enumerate() {
        let grid = if i % 2 == 0 { oblique_grid(dims) } else { rotated_grid(dims) };
        let n = grid.nvox();
        let v = Volume::new(grid, pattern(*dt, n)).expect("seed volume");
        for gz in [false, true] {
            let bytes = write_volume_as(&v, *dt, gz).expect("seed values are in range");
            let ext = if gz { "nii.gz" } else { "nii" };
            add(format!("valid-{dt:?}-{}x{}x{}.{ext}", dims[0], dims[1], dims[2]).to_lowercase(), bytes);
        }
    }
    let big = Volume::new(
        Grid::axis_aligned([16, 16, 8], [1.0, 1.0, 2.0], [-8.0, -8.0, 0.0]),
        (0..16 * 16 * 8).map(|i| ((i * 7) % 300) as f32 * 0.25).collect(),
    )
    .expect("seed volume");
    add("valid-f32-16x16x8.nii".into(), write_volume(&big, false));
    add("valid-f32-16x16x8.nii.gz".into(), write_volume(&big, true));
    let labels = LabelVolume::new(oblique_grid([6, 5, 4]), (0..120).map(|i| [0u8, 1, 2, 4][i % 4]).collect())
        .expect("seed labels");
    add("valid-labels-6x5x4.nii".into(), write_labels(&labels, false));
    add("valid-labels-6x5x4.nii.gz".into(), write_labels(&labels, true));
    // Exactly the fuzzer's voxel limit (8192) in uint8.
    let full = Volume::new(Grid::axis_aligned([32, 16, 16], [1.0; 3], [0.0; 3]), vec![3.0; 8192]).expect("seed");
    add("valid-u8-32x16x16.nii.gz".into(), write_volume_as(&full, Datatype::U8, true).expect("u8"));

    let small = Volume::new(oblique_grid([4, 3, 2]), pattern(Datatype::I16, 24)).expect("seed volume");
    let i16_plain = write_volume_as(&small, Datatype::I16, false).expect("i16");
    // 4-D with a single volume.
    let four_d = set_i16(set_i16(i16_plain.clone(), 40, 4), 48, 1);
    add("valid-i16-4d-one-volume.nii".into(), four_d.clone());
    add("valid-i16-4d-one-volume.nii.gz".into(), gzip(&four_d, 6));
    // Big-endian.
    let mut be = i16_plain.clone();
    swap_endianness(&mut be);
    add("valid-i16-big-endian.nii".into(), be.clone());
    add("valid-i16-big-endian.nii.gz".into(), gzip(&be, 1));
    // Scaling.
    add("valid-i16-scaled.nii".into(), set_f32(set_f32(i16_plain.clone(), 112, 0.5), 116, -3.0));
    // qform only, then no transform at all (diag(pixdim)).
    let qform_only = set_i16(i16_plain.clone(), 254, 0);
    add("valid-i16-qform-only.nii".into(), qform_only.clone());
    add("valid-i16-no-transform.nii".into(), set_i16(qform_only, 252, 0));
    // A header extension (esize 80, ecode 6 = comment) between the header and vox_offset 432.
    let mut ext = i16_plain[..HDR].to_vec();
    ext.extend_from_slice(&[1, 0, 0, 0]);
    ext.extend_from_slice(&80i32.to_le_bytes());
    ext.extend_from_slice(&6i32.to_le_bytes());
    ext.resize(432, b'x');
    ext.extend_from_slice(&i16_plain[FIRST_VOXEL..]);
    let ext = set_f32(ext, 108, 432.0);
    add("valid-i16-extension.nii".into(), ext.clone());
    add("valid-i16-extension.nii.gz".into(), gzip(&ext, 6));
    // Gzip framing variants: two members; header fields (name, comment, extra); stored blocks.
    let (a, b) = i16_plain.split_at(200);
    let mut two = gzip(a, 1);
    two.extend_from_slice(&gzip(b, 1));
    add("valid-i16-two-gzip-members.nii.gz".into(), two);
    let mut named = GzBuilder::new()
        .filename("brain.nii")
        .comment("uploaded")
        .extra(vec![b'G', b'M', 4, 0, 1, 2, 3, 4])
        .write(Vec::new(), Compression::fast());
    named.write_all(&i16_plain).expect("gzip into memory");
    add("valid-i16-gzip-name-comment-extra.nii.gz".into(), named.finish().expect("gzip into memory"));
    add("valid-i16-gzip-stored.nii.gz".into(), gzip(&i16_plain, 0));

    // Edge cases.
    let hdr_only = i16_plain[..HDR].to_vec();
    add("edge-header-only-348.nii".into(), hdr_only.clone());
    add("edge-header-only-348.nii.gz".into(), gzip(&hdr_only, 6));
    let mut ni1 = set_f32(hdr_only.clone(), 108, 0.0);
    ni1[344..348].copy_from_slice(b"ni1\0");
    add("edge-ni1-pair-header.nii".into(), ni1);
    let mut n2 = i16_plain.clone();
    n2[0..4].copy_from_slice(&540i32.to_le_bytes());
    add("edge-nifti2-sizeof-540.nii".into(), n2);
    let huge = set_i16(set_i16(set_i16(hdr_only.clone(), 42, 64), 44, 64), 46, 64);
    add("edge-too-many-voxels-64x64x64.nii.gz".into(), gzip(&huge, 6));
    let over_dim = set_i16(hdr_only.clone(), 42, 1025);
    add("edge-dim1-1025.nii".into(), over_dim);
    let comps = set_i16(set_i16(set_i16(i16_plain.clone(), 40, 5), 48, 1), 50, 2);
    add("edge-dim0-5-two-components.nii".into(), comps);
    let mut nan = write_volume(&Volume::new(oblique_grid([2, 2, 2]), vec![1.0; 8]).expect("seed"), false);
    let last = nan.len() - 4;
    nan[last..].copy_from_slice(&f32::NAN.to_le_bytes());
    add("edge-f32-nan-voxel.nii".into(), nan);
    let mut labels300 = Volume::new(oblique_grid([2, 2, 2]), vec![1.0; 8]).expect("seed");
    labels300.data[3] = 300.0;
    add("edge-i16-label-300.nii".into(), write_volume_as(&labels300, Datatype::I16, false).expect("i16"));
    let gz = gzip(&i16_plain, 6);
    add("edge-gzip-cut-in-body.nii.gz".into(), gz[..gz.len() - 12].to_vec());
    let mut junk = gz.clone();
    junk.extend_from_slice(b"trailing bytes that are not gzip");
    add("edge-gzip-trailing-junk.nii.gz".into(), junk);
    let mut vox_off_big = set_f32(i16_plain.clone(), 108, 1.0e9);
    vox_off_big.truncate(400);
    add("edge-vox-offset-1e9.nii".into(), vox_off_big);
    seeds
}

/// Writes [`builtin_seeds`] into `dir` (created if missing); returns the number of files.
pub fn write_corpus(dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let seeds = builtin_seeds();
    for (name, bytes) in &seeds {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(seeds.len())
}

/// Every file directly in `dir`, sorted by name (so that a run is reproducible).
pub fn load_corpus(dir: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut names: Vec<PathBuf> =
        std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    names.sort();
    names
        .into_iter()
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            std::fs::read(&p).map(|b| (name, b))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Targets and outcomes

/// The reader entry points that take untrusted bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Volume,
    Labels,
    Header,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Volume, Target::Labels, Target::Header];

    pub fn name(self) -> &'static str {
        match self {
            Target::Volume => "read_volume",
            Target::Labels => "read_labels",
            Target::Header => "read_header_with",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The part of a message before its first number or value, e.g. "sizeof_hdr" from "sizeof_hdr=7: ...".
fn class(msg: &str) -> &str {
    msg.split(|c: char| c.is_ascii_digit() || c == '=' || c == ':' || c == '"').next().unwrap_or("").trim()
}

fn error_class(e: &ImagingError) -> String {
    match e {
        ImagingError::NotNifti(m) => format!("NotNifti {}", class(m)),
        ImagingError::Header { field, .. } => format!("Header {field}"),
        ImagingError::TooLarge { what, .. } => format!("TooLarge {}", class(what)),
        ImagingError::Truncated { what, .. } => format!("Truncated {what}"),
        ImagingError::Gzip(m) => format!("Gzip {}", class(m)),
        ImagingError::NonFinite { .. } => "NonFinite".into(),
        ImagingError::LabelValue { .. } => "LabelValue".into(),
        other => {
            let d = format!("{other:?}");
            d.split(['{', '(', ' ']).next().unwrap_or("").to_string()
        }
    }
}

/// Runs one entry point; the Ok value is reduced to an outcome class inside, so that the result
/// is freed before the allocation peak is read.
pub fn run_target(t: Target, input: &[u8], limits: &Limits) -> Result<String, ImagingError> {
    match t {
        Target::Volume => read_volume(input, limits).map(|v| {
            let bits = usize::BITS - v.data.len().leading_zeros();
            format!("Ok nvox<2^{bits}")
        }),
        Target::Labels => read_labels(input, limits).map(|l| {
            let max = l.data.iter().copied().max().unwrap_or(0);
            format!("Ok max {}", if max <= 4 { "<=4" } else { ">4" })
        }),
        Target::Header => read_header_with(input, limits).map(|h| {
            format!(
                "Ok {:?} le={} n+1={} sform={} qform={}",
                h.datatype,
                h.little_endian,
                h.single_file,
                h.sform_code > 0,
                h.qform_code > 0
            )
        }),
    }
}

/// The outcome class of one execution, as used for corpus feedback.
pub fn outcome(t: Target, input: &[u8], r: &Result<String, ImagingError>) -> String {
    let body = match r {
        Ok(k) => k.clone(),
        Err(e) => error_class(e),
    };
    format!("{} {} {}", t.name(), if gmmas_imaging::nifti::is_gzip(input) { "gz" } else { "raw" }, body)
}

// ---------------------------------------------------------------------------------------------
// Panics, findings, watchdog

thread_local! {
    static IN_TARGET: Cell<bool> = const { Cell::new(false) };
    static PANIC_MSG: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Installs (once) a panic hook that records panics raised inside a target instead of printing
/// them, and defers to the previous hook everywhere else.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_TARGET.with(Cell::get) {
                let msg = info.to_string();
                PANIC_MSG.with(|m| *m.borrow_mut() = msg);
            } else {
                prev(info);
            }
        }));
    });
}

/// FNV-1a, for naming saved inputs.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Saves `input` as `<dir>/<kind>-<hash>.bin` with a `.txt` beside it saying what happened.
fn save_finding(dir: &Path, kind: &str, input: &[u8], what: &str) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    let stem = format!("{kind}-{:016x}", fnv(input));
    let path = dir.join(format!("{stem}.bin"));
    let _ = std::fs::write(&path, input);
    let _ = std::fs::write(dir.join(format!("{stem}.txt")), format!("{what}\n"));
    path
}

/// What the watchdog can see of a worker: when its current call started and on which input.
pub struct Slot {
    /// Milliseconds since the run started, plus one; 0 while no call is running.
    started_ms: AtomicU64,
    target: AtomicUsize,
    input: Mutex<Vec<u8>>,
    crash_dir: PathBuf,
}

/// Watches every worker slot; a call running longer than `limit` is saved as a hang and the
/// process exits with status 3 (a stuck thread cannot be stopped from outside).
fn watchdog(slots: &[Arc<Slot>], epoch: Instant, limit: Duration, done: &AtomicBool) {
    let tick = Duration::from_millis(20).min(limit / 4).max(Duration::from_millis(1));
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        let now = epoch.elapsed().as_millis() as u64 + 1;
        for slot in slots {
            let started = slot.started_ms.load(Ordering::Acquire);
            if started != 0 && now.saturating_sub(started) > limit.as_millis() as u64 {
                let input = slot.input.lock().map(|g| g.clone()).unwrap_or_default();
                let t = Target::ALL[slot.target.load(Ordering::Relaxed)];
                let what = format!("{} ran longer than {} ms", t.name(), limit.as_millis());
                let path = save_finding(&slot.crash_dir, "hang", &input, &what);
                eprintln!("fuzz: HANG: {what}; input saved to {}", path.display());
                std::process::exit(3);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration and report

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Total executions over all threads.
    pub execs: u64,
    pub threads: usize,
    pub seed: u64,
    /// Initial corpus (name, bytes); [`builtin_seeds`] when empty.
    pub seeds: Vec<(String, Vec<u8>)>,
    /// Where panicking, hanging or over-allocating inputs are saved.
    pub crash_dir: PathBuf,
    /// Per-call wall-clock limit enforced by the watchdog.
    pub time_limit: Duration,
    /// Reader limits; small, so that header-declared sizes hit them instead of the allocator.
    pub limits: Limits,
    /// One execution in eight uses [`wide_limits`] and one in eight [`Limits::default`] instead.
    pub mixed_limits: bool,
    /// Mutated inputs are cut to this many bytes.
    pub max_input: usize,
    /// At most this many corpus entries (seeds included) per worker.
    pub max_corpus: usize,
    /// Seconds between progress lines (0: none).
    pub progress_secs: u64,
}

/// The limits the fuzzer reads with: 64 KiB files, 8192 voxels, 64 per dimension.
pub fn fuzz_limits() -> Limits {
    Limits { max_file_bytes: 64 * 1024, max_voxels: 8192, max_dim: 64 }
}

/// `limits` with no file-size or per-dimension limit (what a caller gets by setting them to the
/// maximum): header arithmetic must not overflow even then. The voxel limit stays, so allocations
/// stay small.
pub fn wide_limits(limits: &Limits) -> Limits {
    Limits { max_file_bytes: u64::MAX, max_dim: usize::MAX, ..*limits }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            execs: 100_000,
            threads: 1,
            seed: 1,
            seeds: Vec::new(),
            crash_dir: PathBuf::from("crashes"),
            time_limit: Duration::from_secs(2),
            limits: fuzz_limits(),
            mixed_limits: true,
            max_input: 96 * 1024,
            max_corpus: 2048,
            progress_secs: 0,
        }
    }
}

/// A saved input that panicked or allocated beyond [`alloc_bound`].
#[derive(Clone, Debug)]
pub struct Finding {
    pub kind: &'static str,
    pub target: Target,
    pub what: String,
    pub saved: PathBuf,
}

/// Totals of a run.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub threads: usize,
    pub seeds: usize,
    pub execs: u64,
    pub per_target: [u64; 3],
    pub ok: u64,
    pub gzip_inputs: u64,
    pub crashes: u64,
    pub over_alloc: u64,
    /// Findings per site (kind and first line of the panic message or allocation report).
    pub sites: BTreeMap<String, u64>,
    /// The findings whose input was saved (at most three per site and worker).
    pub findings: Vec<Finding>,
    /// Corpus entries added by outcome feedback, over all workers.
    pub kept: usize,
    /// Executions per outcome class.
    pub outcomes: BTreeMap<String, u64>,
    pub slowest: Duration,
    pub max_alloc: u64,
    /// The call that came closest to its [`alloc_bound`]: (peak / bound, peak, input bytes, bound).
    pub tightest: (f64, u64, usize, u64),
    /// Executions under [`wide_limits`] and under [`Limits::default`].
    pub wide: u64,
    pub default_limits: u64,
    /// Inputs also run through `check_volume_from` and compared with `read_volume`.
    pub differential: u64,
    pub wall: Duration,
}

impl Report {
    pub fn execs_per_sec(&self) -> f64 {
        self.execs as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} threads {} seeds {} kept-by-feedback {}", self.seed, self.threads, self.seeds, self.kept)?;
        writeln!(
            f,
            "targets: read_volume {} read_labels {} read_header_with {}; gzip inputs {}; wide limits {}; default limits {}; \
             Ok {}; distinct outcomes {}; compared with check_volume_from {}",
            self.per_target[0],
            self.per_target[1],
            self.per_target[2],
            self.gzip_inputs,
            self.wide,
            self.default_limits,
            self.ok,
            self.outcomes.len(),
            self.differential
        )?;
        let (ratio, peak, len, bound) = self.tightest;
        writeln!(
            f,
            "slowest call {:.3} ms; largest per-call allocation peak {} bytes; closest to the bound: {peak} bytes \
             for a {len}-byte input ({:.0}% of {bound})",
            self.slowest.as_secs_f64() * 1e3,
            self.max_alloc,
            ratio * 100.0
        )?;
        for (site, n) in &self.sites {
            writeln!(f, "FINDING {site} ({n} inputs)")?;
        }
        for x in &self.findings {
            let what = x.what.replace('\n', " | ");
            writeln!(f, "  {} in {}: {what} -> {}", x.kind, x.target.name(), x.saved.display())?;
        }
        write!(
            f,
            "executions {} crashes {} over-allocations {} hangs 0 wall {:.1} s {:.0} exec/s",
            self.execs,
            self.crashes,
            self.over_alloc,
            self.wall.as_secs_f64(),
            self.execs_per_sec()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Workers

struct Entry {
    bytes: Vec<u8>,
    /// The inflated bytes of a gzip entry.
    inner: Option<Vec<u8>>,
}

impl Entry {
    fn new(bytes: Vec<u8>, cap: usize) -> Entry {
        let inner = if gmmas_imaging::nifti::is_gzip(&bytes) { gunzip(&bytes, cap) } else { None };
        Entry { bytes, inner }
    }
}

struct Worker<'a> {
    cfg: &'a Config,
    rng: Rng,
    corpus: Vec<Entry>,
    seen: HashMap<String, u64>,
    slot: Arc<Slot>,
    epoch: Instant,
    report: Report,
}

impl Worker<'_> {
    fn interesting_i16(&mut self) -> i16 {
        let md = self.cfg.limits.max_dim as i16;
        self.rng.pick(&[
            0,
            1,
            -1,
            2,
            3,
            4,
            5,
            6,
            7,
            8,
            16,
            32,
            64,
            -128,
            127,
            128,
            255,
            256,
            512,
            768,
            1024,
            1025,
            i16::MIN,
            i16::MAX,
            md,
            md.saturating_add(1),
            md - 1,
            348,
            352,
        ])
    }

    fn interesting_f32(&mut self) -> f32 {
        let mfb = self.cfg.limits.max_file_bytes as f32;
        self.rng.pick(&[
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            2.0,
            3.0,
            1e-7,
            348.0,
            351.0,
            352.0,
            352.5,
            353.0,
            356.0,
            432.0,
            4096.0,
            65536.0,
            mfb,
            mfb + 1.0,
            mfb - 352.0,
            f32::MIN_POSITIVE,
            1e-45,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            1e10,
            4_294_967_296.0,
            18_446_744_073_709_551_616.0,
            16_777_217.0,
            9.2e18,
            1.8e19,
            3e38,
        ])
    }

    fn interesting_i32(&mut self) -> i32 {
        self.rng.pick(&[0, 1, -1, 348, 540, 0x5c01_0000, 0x1c02_0000, i32::MIN, i32::MAX, 352, 65536])
    }

    /// A position in `0..len`, half the time inside the header.
    fn pos(&mut self, len: usize) -> usize {
        if self.rng.chance(1, 2) && len > 0 { self.rng.below(len.min(FIRST_VOXEL)) } else { self.rng.below(len.max(1)) }
    }

    fn set_field(&mut self, buf: &mut [u8], (off, kind): (usize, Kind), le: bool) {
        match kind {
            Kind::I16 => {
                let v = self.interesting_i16();
                put_i16(buf, off, v, le);
            }
            Kind::I32 => {
                let v = self.interesting_i32();
                put(buf, off, &v.to_le_bytes(), le);
            }
            Kind::F32 => {
                let v = if self.rng.chance(1, 4) {
                    // A "normal" random value: mantissa and sign random, exponent in a sane range.
                    let m = (self.rng.next_u64() % 2_000_000) as f32 / 1000.0 - 1000.0;
                    m * 10f32.powi(self.rng.below(9) as i32 - 4)
                } else {
                    self.interesting_f32()
                };
                put_f32(buf, off, v, le);
            }
        }
    }

    /// Sets dim[0..4] (and sometimes resizes the body to match the declared size).
    fn set_dims(&mut self, buf: &mut Vec<u8>, le: bool) {
        let ndim = self.rng.pick(&[3, 3, 3, 4, 4, 5, 2, 0, -1, 7, 8]);
        put_i16(buf, 40, ndim, le);
        let md = self.cfg.limits.max_dim;
        for i in 0..3 {
            let d = match self.rng.below(4) {
                0 => self.interesting_i16(),
                1 => self.rng.pick(&[1, 2, 3, 16, md as i16]),
                _ => 1 + self.rng.below(md.min(20)) as i16,
            };
            put_i16(buf, 42 + 2 * i, d, le);
        }
        let d4 = if self.rng.chance(3, 4) { 1 } else { self.interesting_i16() };
        put_i16(buf, 48, d4, le);
        if self.rng.chance(1, 2) {
            self.fit_body(buf, le);
        }
    }

    /// Sets vox_offset to 352 and makes the body exactly as long as the header declares.
    fn fit_body(&mut self, buf: &mut Vec<u8>, le: bool) {
        let dims: Option<Vec<i16>> = (0..3).map(|i| get_i16(buf, 42 + 2 * i, le)).collect();
        let dt = get_i16(buf, 70, le).and_then(Datatype::from_code);
        let (Some(dims), Some(dt)) = (dims, dt) else { return };
        if dims.iter().any(|&d| d < 1) {
            return;
        }
        let n: usize = dims.iter().map(|&d| d as usize).product::<usize>() * dt.size();
        if FIRST_VOXEL + n > self.cfg.max_input || buf.len() < HDR {
            return;
        }
        put_f32(buf, 108, FIRST_VOXEL as f32, le);
        let fill = self.rng.below(3);
        let old = buf.len();
        buf.resize(FIRST_VOXEL + n, 0);
        if buf.len() > old {
            for b in &mut buf[old..] {
                *b = match fill {
                    0 => 0,
                    1 => 0x7f,
                    _ => self.rng.byte(),
                };
            }
        }
    }

    fn set_datatype(&mut self, buf: &mut [u8], le: bool) {
        let code = if self.rng.chance(7, 8) {
            self.rng.pick(&ALL_DATATYPES).code()
        } else {
            self.rng.pick(&[0, 1, 32, 128, 511, 1024, 1280, 1536, 1792, 2048, 2304, -1, i16::MIN, i16::MAX])
        };
        put_i16(buf, 70, code, le);
        let bitpix = match Datatype::from_code(code) {
            Some(dt) if self.rng.chance(7, 8) => (dt.size() * 8) as i16,
            _ => self.interesting_i16(),
        };
        put_i16(buf, 72, bitpix, le);
    }

    /// One mutation of `buf`; `donor` is another corpus input for splicing.
    fn mutate(&mut self, buf: &mut Vec<u8>, donor: &[u8]) {
        let le = if self.rng.chance(1, 16) { !file_le(buf) } else { file_le(buf) };
        let len = buf.len();
        match self.rng.below(22) {
            0 | 1 if len > 0 => {
                let p = self.pos(len);
                buf[p] ^= 1 << self.rng.below(8);
            }
            2 if len > 0 => {
                let p = self.pos(len);
                buf[p] = self.rng.byte();
            }
            3 if len > 0 => {
                let p = self.pos(len);
                buf[p] = self.rng.pick(&[0, 1, 0x7f, 0x80, 0xff, 0xfe, 0x20]);
            }
            4 if len > 0 => {
                let p = self.pos(len);
                let d = 1 + self.rng.below(16) as u8;
                buf[p] = if self.rng.chance(1, 2) { buf[p].wrapping_add(d) } else { buf[p].wrapping_sub(d) };
            }
            5..=7 => {
                let field = if self.rng.chance(3, 4) { self.rng.pick(HOT_FIELDS) } else { self.rng.pick(FIELDS) };
                self.set_field(buf, field, le);
            }
            8 => {
                // Small arithmetic on a typed field.
                let (off, kind) = self.rng.pick(HOT_FIELDS);
                let d = self.rng.below(17) as i16 - 8;
                match kind {
                    Kind::I16 => {
                        if let Some(v) = get_i16(buf, off, le) {
                            put_i16(buf, off, v.wrapping_add(d), le);
                        }
                    }
                    Kind::I32 | Kind::F32 => {
                        if let Some(s) = buf.get(off..off + 4) {
                            let a: [u8; 4] = [s[0], s[1], s[2], s[3]];
                            if kind == Kind::I32 {
                                let v = if le { i32::from_le_bytes(a) } else { i32::from_be_bytes(a) };
                                put(buf, off, &v.wrapping_add(i32::from(d)).to_le_bytes(), le);
                            } else {
                                let v = if le { f32::from_le_bytes(a) } else { f32::from_be_bytes(a) };
                                put_f32(buf, off, v + f32::from(d) * if self.rng.chance(1, 2) { 1.0 } else { 0.5 }, le);
                            }
                        }
                    }
                }
            }
            9 => {
                self.set_datatype(buf, le);
                if self.rng.chance(1, 2) {
                    self.fit_body(buf, le);
                }
            }
            10 => self.set_dims(buf, le),
            11 => {
                let v = match self.rng.below(4) {
                    0 => self.interesting_f32(),
                    1 => (FIRST_VOXEL + 16 * self.rng.below(8)) as f32,
                    2 => len.saturating_sub(self.rng.below(64)) as f32,
                    _ => (len + self.rng.below(8)) as f32,
                };
                put_f32(buf, 108, v, le);
            }
            12 => {
                // Transform codes and a few affine numbers.
                put_i16(buf, 252, self.rng.pick(&[0, 1, 2, 3, 4, -1, 5, i16::MAX]), le);
                put_i16(buf, 254, self.rng.pick(&[0, 1, 2, 3, 4, -1, 5, i16::MIN]), le);
                for _ in 0..1 + self.rng.below(4) {
                    let off = 256 + 4 * self.rng.below(18);
                    self.set_field(buf, (off, Kind::F32), le);
                }
            }
            13 => {
                let cut = match self.rng.below(4) {
                    0 => self.rng.pick(&[0, 1, 2, 4, 40, 100, 347, 348, 351, 352, 353]),
                    1 => len.saturating_sub(1 + self.rng.below(16)),
                    _ => self.rng.below(len.max(1)),
                };
                buf.truncate(cut);
            }
            14 => {
                let any = 1 + self.rng.below(4096);
                let n = self.rng.pick(&[1, 4, 16, 100, any]);
                let how = self.rng.below(4);
                for i in 0..n {
                    let b = match how {
                        0 => 0,
                        1 => 0xff,
                        2 if len > 0 => buf[i % len],
                        _ => self.rng.byte(),
                    };
                    buf.push(b);
                }
            }
            15 => {
                let p = self.pos(len + 1).min(len);
                let n = 1 + self.rng.below(64);
                let ins: Vec<u8> = (0..n).map(|_| self.rng.byte()).collect();
                buf.splice(p..p, ins);
            }
            16 if len > 0 => {
                let p = self.pos(len);
                let most = if self.rng.chance(1, 4) { 2048 } else { 32 };
                let n = (1 + self.rng.below(most)).min(len - p);
                buf.drain(p..p + n);
            }
            17 if len > 1 => {
                let (from, to) = (self.rng.below(len), self.pos(len));
                let n = (1 + self.rng.below(64)).min(len - from).min(len - to);
                buf.copy_within(from..from + n, to);
            }
            18 => {
                if self.rng.chance(1, 2) {
                    // Header of one, body of another.
                    let h = donor.len().min(FIRST_VOXEL).min(buf.len());
                    buf[..h].copy_from_slice(&donor[..h]);
                } else {
                    let cut = self.rng.below(len + 1);
                    let dcut = self.rng.below(donor.len() + 1);
                    buf.truncate(cut);
                    buf.extend_from_slice(&donor[dcut..]);
                }
            }
            19 => swap_endianness(buf),
            20 => {
                let magic: [&[u8; 4]; 7] = [b"n+1\0", b"ni1\0", b"n+2\0", b"n+1 ", b"\0\0\0\0", b"ni2\0", b"n+1\n"];
                let m = self.rng.pick(&magic);
                put(buf, 344, m, true);
            }
            _ => {
                // Extension flag and a bogus extension after the header.
                if buf.len() >= FIRST_VOXEL + 8 {
                    buf[348] = self.rng.pick(&[0, 1, 0xff]);
                    let esize = self.interesting_i32();
                    put(buf, FIRST_VOXEL, &esize.to_le_bytes(), le);
                }
            }
        }
    }

    fn mutate_n(&mut self, buf: &mut Vec<u8>, donor: &[u8]) {
        let mut n = 1;
        while n < 8 && self.rng.chance(1, 2) {
            n += 1;
        }
        for _ in 0..n {
            self.mutate(buf, donor);
        }
        buf.truncate(self.cfg.max_input);
    }

    /// Gzip framing for a mutated inner file: level, members, header fields, trailing bytes.
    fn wrap(&mut self, inner: &[u8]) -> Vec<u8> {
        let level = self.rng.pick(&[0, 1, 1, 1, 6]);
        let mut out = match self.rng.below(8) {
            0 if inner.len() > 1 => {
                let cut = self.rng.below(inner.len());
                let mut two = gzip(&inner[..cut], level);
                two.extend_from_slice(&gzip(&inner[cut..], level));
                two
            }
            1 => {
                let name: Vec<u8> = (0..self.rng.below(300)).map(|_| 1 + self.rng.below(255) as u8).collect();
                let extra: Vec<u8> = (0..self.rng.below(600)).map(|_| self.rng.byte()).collect();
                let mut e = GzBuilder::new()
                    .filename(name.clone())
                    .comment(name)
                    .extra(extra)
                    .write(Vec::new(), Compression::new(level));
                e.write_all(inner).expect("gzip into memory");
                e.finish().expect("gzip into memory")
            }
            2 => {
                // An empty member in front.
                let mut v = gzip(&[], level);
                v.extend_from_slice(&gzip(inner, level));
                v
            }
            _ => gzip(inner, level),
        };
        match self.rng.below(8) {
            0 => {
                let n = 1 + self.rng.below(64);
                out.extend((0..n).map(|_| self.rng.byte()));
            }
            1 => {
                let cut = self.rng.below(out.len() + 1);
                out.truncate(cut);
            }
            2 if !out.is_empty() => {
                // Damage the compressed stream itself.
                let p = self.rng.below(out.len());
                out[p] ^= 1 << self.rng.below(8);
            }
            _ => {}
        }
        out
    }

    /// The next input: a mutated corpus entry, inflated and re-wrapped where it is gzip.
    fn next_input(&mut self) -> Vec<u8> {
        let i = self.rng.below(self.corpus.len());
        let d = self.rng.below(self.corpus.len());
        let donor = {
            let e = &self.corpus[d];
            if self.rng.chance(3, 4) { e.inner.clone().unwrap_or_else(|| e.bytes.clone()) } else { e.bytes.clone() }
        };
        let (bytes, inner) = (self.corpus[i].bytes.clone(), self.corpus[i].inner.clone());
        match inner {
            Some(mut inner) if self.rng.chance(3, 4) => {
                self.mutate_n(&mut inner, &donor);
                if self.rng.chance(1, 16) { inner } else { self.wrap(&inner) }
            }
            _ => {
                let mut buf = bytes;
                self.mutate_n(&mut buf, &donor);
                if !gmmas_imaging::nifti::is_gzip(&buf) && self.rng.chance(1, 12) { self.wrap(&buf) } else { buf }
            }
        }
    }

    /// Feeds one input to one target and books the result.
    fn exec(&mut self, input: &[u8], t: Target) {
        if let Ok(mut g) = self.slot.input.lock() {
            g.clear();
            g.extend_from_slice(input);
        }
        self.slot.target.store(t.index(), Ordering::Relaxed);
        let t0 = Instant::now();
        self.slot.started_ms.store(self.epoch.elapsed().as_millis() as u64 + 1, Ordering::Release);
        IN_TARGET.with(|c| c.set(true));
        let base = peak_reset();
        let profile = if self.cfg.mixed_limits { self.rng.below(8) } else { 7 };
        let (limits, profile) = match profile {
            0 => (wide_limits(&self.cfg.limits), "wide limits"),
            1 => (Limits::default(), "default limits"),
            _ => (self.cfg.limits, "fuzz limits"),
        };
        let r = catch_unwind(AssertUnwindSafe(|| run_target(t, input, &limits)));
        let peak = peak_since(base);
        IN_TARGET.with(|c| c.set(false));
        self.slot.started_ms.store(0, Ordering::Release);
        let dt = t0.elapsed();

        let rep = &mut self.report;
        rep.execs += 1;
        rep.wide += u64::from(profile == "wide limits");
        rep.default_limits += u64::from(profile == "default limits");
        rep.per_target[t.index()] += 1;
        rep.gzip_inputs += u64::from(gmmas_imaging::nifti::is_gzip(input));
        rep.slowest = rep.slowest.max(dt);
        rep.max_alloc = rep.max_alloc.max(peak);
        let key = match &r {
            Ok(res) => {
                rep.ok += u64::from(res.is_ok());
                format!("{} ({profile})", outcome(t, input, res))
            }
            Err(_) => {
                let msg = PANIC_MSG.with(|m| std::mem::take(&mut *m.borrow_mut()));
                rep.crashes += 1;
                let key = format!("{} PANIC", t.name());
                self.finding("crash", t, input, format!("{msg}\n({profile})"));
                key
            }
        };
        if t == Target::Volume && r.is_ok() {
            self.differential(input, &limits, r.as_ref().ok().and_then(|x| x.as_ref().err()));
        }
        let bound = alloc_bound(&limits, input.len());
        let ratio = peak as f64 / bound as f64;
        if ratio > self.report.tightest.0 {
            self.report.tightest = (ratio, peak, input.len(), bound);
        }
        if peak > bound {
            self.report.over_alloc += 1;
            let what = format!("alloc in {} ({profile})\nallocated {peak} bytes at peak (bound {bound})", t.name());
            self.finding("alloc", t, input, what);
        }
        let n = self.seen.entry(key).or_insert(0);
        *n += 1;
        if *n == 1 && self.corpus.len() < self.cfg.max_corpus {
            self.corpus.push(Entry::new(input.to_vec(), self.cfg.max_input));
            self.report.kept += 1;
        }
    }

    /// The streaming check that uploads go through must accept and refuse exactly what
    /// `read_volume` does (same error class), on inputs within the byte limit it leaves to its caller.
    fn differential(&mut self, input: &[u8], limits: &Limits, volume_err: Option<&ImagingError>) {
        if input.len() as u64 > limits.max_file_bytes {
            return;
        }
        self.report.differential += 1;
        IN_TARGET.with(|c| c.set(true));
        let checked = catch_unwind(AssertUnwindSafe(|| check_volume_from(input, limits)));
        IN_TARGET.with(|c| c.set(false));
        let Ok(checked) = checked else {
            let msg = PANIC_MSG.with(|m| std::mem::take(&mut *m.borrow_mut()));
            self.report.crashes += 1;
            self.finding("crash", Target::Volume, input, format!("check_volume_from: {msg}"));
            return;
        };
        let a = volume_err.map(error_class);
        let b = checked.as_ref().err().map(error_class);
        if a != b {
            let what = format!("differential: read_volume {a:?}, check_volume_from {b:?}");
            self.finding("differential", Target::Volume, input, what);
        }
    }

    fn finding(&mut self, kind: &'static str, target: Target, input: &[u8], what: String) {
        // The first line names the site: "panicked at FILE:LINE:COL:", or "alloc in TARGET (PROFILE)".
        let site = what.lines().next().unwrap_or("").to_string();
        let n = self.report.sites.entry(site).or_insert(0);
        *n += 1;
        if *n <= 3 {
            let text = format!("{} ({} bytes, seed {})\n{what}", target.name(), input.len(), self.report.seed);
            let saved = save_finding(&self.cfg.crash_dir, kind, input, &text);
            self.report.findings.push(Finding { kind, target, what, saved });
        }
    }
}

/// Runs the fuzzer as configured and returns the totals (the watchdog exits the process on a hang).
pub fn run(cfg: &Config) -> Report {
    install_panic_hook();
    HARD_CAP.store(ALLOC_HARD_CAP, Ordering::Relaxed);
    let seeds = if cfg.seeds.is_empty() { builtin_seeds() } else { cfg.seeds.clone() };
    let threads = cfg.threads.max(1);
    let epoch = Instant::now();
    let slots: Vec<Arc<Slot>> = (0..threads)
        .map(|_| {
            Arc::new(Slot {
                started_ms: AtomicU64::new(0),
                target: AtomicUsize::new(0),
                input: Mutex::new(Vec::new()),
                crash_dir: cfg.crash_dir.clone(),
            })
        })
        .collect();
    let done = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let reports: Vec<Report> = std::thread::scope(|s| {
        s.spawn(|| watchdog(&slots, epoch, cfg.time_limit, &done));
        let handles: Vec<_> = (0..threads)
            .map(|w| {
                let execs = cfg.execs / threads as u64 + u64::from((w as u64) < cfg.execs % threads as u64);
                let slot = slots[w].clone();
                let seeds = &seeds;
                let total = &total;
                s.spawn(move || {
                    CURRENT.with(|c| *c.borrow_mut() = Some(slot.clone()));
                    let mut worker = Worker {
                        cfg,
                        rng: Rng::new(cfg.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ w as u64),
                        corpus: seeds.iter().map(|(_, b)| Entry::new(b.clone(), cfg.max_input)).collect(),
                        seen: HashMap::new(),
                        slot,
                        epoch,
                        report: Report { seed: cfg.seed, ..Report::default() },
                    };
                    // Every seed once, as is, on every target.
                    'seeds: for i in 0..worker.corpus.len() {
                        for t in Target::ALL {
                            if worker.report.execs >= execs {
                                break 'seeds;
                            }
                            let input = worker.corpus[i].bytes.clone();
                            worker.exec(&input, t);
                        }
                    }
                    let mut last_print = Instant::now();
                    let mut last_count = 0u64;
                    while worker.report.execs < execs {
                        let input = worker.next_input();
                        let t = match worker.rng.below(8) {
                            0 => Target::Labels,
                            1 => Target::Header,
                            _ => Target::Volume,
                        };
                        worker.exec(&input, t);
                        if worker.report.execs.is_multiple_of(1024) {
                            let all = total.fetch_add(worker.report.execs - last_count, Ordering::Relaxed)
                                + worker.report.execs
                                - last_count;
                            last_count = worker.report.execs;
                            if w == 0 && cfg.progress_secs > 0 && last_print.elapsed().as_secs() >= cfg.progress_secs {
                                last_print = Instant::now();
                                let secs = epoch.elapsed().as_secs_f64();
                                eprintln!(
                                    "fuzz: {all} execs in {secs:.0} s ({:.0}/s), corpus {}, crashes {}",
                                    all as f64 / secs,
                                    worker.corpus.len(),
                                    worker.report.crashes
                                );
                            }
                        }
                    }
                    let mut rep = worker.report;
                    rep.outcomes = worker.seen.into_iter().collect();
                    rep
                })
            })
            .collect();
        let reports = handles.into_iter().map(|h| h.join().expect("fuzz worker")).collect();
        done.store(true, Ordering::Relaxed);
        reports
    });
    HARD_CAP.store(usize::MAX, Ordering::Relaxed);
    let mut out = Report { seed: cfg.seed, threads, seeds: seeds.len(), wall: epoch.elapsed(), ..Report::default() };
    for r in reports {
        out.execs += r.execs;
        for i in 0..3 {
            out.per_target[i] += r.per_target[i];
        }
        out.ok += r.ok;
        out.gzip_inputs += r.gzip_inputs;
        out.wide += r.wide;
        out.default_limits += r.default_limits;
        out.differential += r.differential;
        out.crashes += r.crashes;
        out.over_alloc += r.over_alloc;
        out.findings.extend(r.findings);
        for (k, v) in r.sites {
            *out.sites.entry(k).or_insert(0) += v;
        }
        out.kept += r.kept;
        for (k, v) in r.outcomes {
            *out.outcomes.entry(k).or_insert(0) += v;
        }
        out.slowest = out.slowest.max(r.slowest);
        out.max_alloc = out.max_alloc.max(r.max_alloc);
        if r.tightest.0 > out.tightest.0 {
            out.tightest = r.tightest;
        }
    }
    out
}

/// Runs every target on `input` under `limits`, [`wide_limits`] and [`Limits::default`], each under
/// `catch_unwind`; returns one line per run and whether any panicked.
pub fn replay(input: &[u8], limits: &Limits) -> (Vec<String>, bool) {
    install_panic_hook();
    let mut lines = Vec::new();
    let mut panicked = false;
    for (profile, l) in [("", *limits), (" (wide)", wide_limits(limits)), (" (default)", Limits::default())] {
        for t in Target::ALL {
            IN_TARGET.with(|c| c.set(true));
            let r = catch_unwind(AssertUnwindSafe(|| run_target(t, input, &l)));
            IN_TARGET.with(|c| c.set(false));
            lines.push(match r {
                Ok(Ok(k)) => format!("{}{profile}: {k}", t.name()),
                Ok(Err(e)) => format!("{}{profile}: Err {e}", t.name()),
                Err(_) => {
                    panicked = true;
                    let msg = PANIC_MSG.with(|m| std::mem::take(&mut *m.borrow_mut()));
                    format!("{}{profile}: PANIC {}", t.name(), msg.replace('\n', " | "))
                }
            });
        }
    }
    (lines, panicked)
}
