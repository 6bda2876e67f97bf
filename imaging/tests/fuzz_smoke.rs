//! Keeps the NIfTI reader fuzzer (`imaging/fuzz`) working: a short deterministic run on the
//! committed corpus must find nothing, and the corpus must stay small and readable.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "fuzzing tool: a broken invariant should stop it loudly")]

#[allow(dead_code)]
#[path = "../fuzz/engine.rs"]
mod engine;

use engine::{Config, CountingAlloc};
use gmmas_imaging::{Limits, read_volume};
use std::path::PathBuf;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("corpus")
}

#[test]
fn twenty_thousand_executions_find_nothing() {
    let crashes = tempfile::tempdir().unwrap();
    let cfg = Config {
        execs: 20_000,
        seed: 20261130,
        seeds: engine::load_corpus(&corpus_dir()).unwrap(),
        crash_dir: crashes.path().to_path_buf(),
        ..Config::default()
    };
    let report = engine::run(&cfg);
    println!("{report}");
    assert_eq!(report.execs, 20_000);
    assert_eq!((report.crashes, report.over_alloc), (0, 0), "{report}");
    assert!(report.findings.is_empty(), "{report}");
    // The mutations reach past header validation: some inputs decode, some are gzip, and the
    // allocation counter is live (a reader call allocates at least its output).
    assert!(report.ok > 1_000 && report.gzip_inputs > 5_000, "{report}");
    assert!(report.wide > 1_000 && report.default_limits > 1_000, "{report}");
    assert!(report.max_alloc > 0, "{report}");
    // The streaming check that uploads use is compared with read_volume on many of the inputs.
    assert!(report.differential > 5_000, "{report}");
    assert!(report.outcomes.len() > 100, "only {} outcome classes", report.outcomes.len());
}

#[test]
fn committed_corpus_is_small_and_its_valid_files_read() {
    let seeds = engine::load_corpus(&corpus_dir()).unwrap();
    assert!(seeds.len() >= 40, "{} seed files", seeds.len());
    let total: usize = seeds.iter().map(|(_, b)| b.len()).sum();
    assert!(total < 1 << 20, "corpus is {total} bytes");
    for (name, bytes) in &seeds {
        let (lines, panicked) = engine::replay(bytes, &engine::fuzz_limits());
        assert!(!panicked, "{name}: {lines:?}");
        if name.starts_with("valid-") {
            for limits in [engine::fuzz_limits(), Limits::default()] {
                read_volume(bytes, &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
    // Every built-in seed is in the committed corpus (`fuzz_nifti --write-corpus` wrote it).
    for (name, _) in engine::builtin_seeds() {
        assert!(seeds.iter().any(|(n, _)| *n == name), "{name} missing from {}", corpus_dir().display());
    }
}

#[test]
fn written_corpus_loads_back_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let n = engine::write_corpus(dir.path()).unwrap();
    let back = engine::load_corpus(dir.path()).unwrap();
    assert_eq!(back.len(), n);
    assert!(back.windows(2).all(|w| w[0].0 < w[1].0));
}

#[test]
fn small_gzip_claiming_a_huge_image_reserves_little() {
    // Found by the fuzzer under the default limits: a ~100-byte gzip whose header claims 512^3
    // uint8 voxels (within Limits::default) made read_volume reserve 512 MiB for the f32 output,
    // and read_labels 128 MiB, before inflating a single voxel.
    use gmmas_imaging::{Datatype, Grid, Volume, read_labels, write_volume_as};
    use std::io::Write;
    let one = Volume::new(Grid::axis_aligned([1, 1, 1], [1.0; 3], [0.0; 3]), vec![0.0]).unwrap();
    let mut file = write_volume_as(&one, Datatype::U8, false).unwrap();
    file.truncate(352);
    for off in [42, 44, 46] {
        file[off..off + 2].copy_from_slice(&512i16.to_le_bytes());
    }
    file.extend_from_slice(&[7u8; 1000]);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&file).unwrap();
    let gz = e.finish().unwrap();
    assert!(gz.len() < 200, "{} bytes", gz.len());
    let limits = Limits::default();
    for labels in [false, true] {
        let base = engine::peak_reset();
        let err = if labels { read_labels(&gz, &limits).map(|_| ()) } else { read_volume(&gz, &limits).map(|_| ()) };
        let peak = engine::peak_since(base);
        assert!(matches!(err, Err(gmmas_imaging::ImagingError::Truncated { .. })), "{err:?}");
        assert!(peak < 4 << 20, "labels={labels}: {peak} bytes allocated for a {}-byte input", gz.len());
        assert!(peak <= engine::alloc_bound(&limits, gz.len()), "labels={labels}: {peak} bytes");
    }
}
