//! `gmmas bench --mc --queue` through the real binary on a tiny phantom and a tiny model: every
//! MC variant runs with the options its name promises, and each worker count drains the queue.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

mod common;

use common::{gmmas, ok, tiny_model};

#[test]
fn mc_and_queue_sections_write_their_json() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(&dir.path().join("tiny.safetensors"), 3);
    let data = dir.path().join("data");
    ok(gmmas()
        .args(["phantom", "--n", "1", "--seed", "4", "--dims", "48,48,40", "--out"])
        .arg(&data)
        .output()
        .unwrap());
    let json = dir.path().join("bench.json");
    let out = ok(gmmas()
        .arg("bench")
        .arg("--model")
        .arg(&model)
        .arg("--mc-case")
        .arg(data.join("Phantom_0000"))
        .args(["--skip-pipeline", "--mc", "3", "--queue", "3", "--workers", "1,2", "--repeats", "1", "--json"])
        .arg(&json)
        .output()
        .unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("MC-Dropout passes against one pass"), "{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let variants = v["mc"]["variants"].as_array().unwrap();
    let by_name = |name: &str| variants.iter().find(|x| x["name"] == name).unwrap_or_else(|| panic!("{name}: {v}"));
    assert_eq!(by_name("one deterministic pass")["mc_passes"], 0);
    assert_eq!(by_name("one deterministic pass")["ratio_to_one_pass"], 1.0);
    let batched = by_name("MC on the tumour box, all passes in one forward");
    assert_eq!((batched["mc_passes"].as_u64(), batched["mc_batch"].as_u64()), (Some(3), Some(0)), "{batched}");
    let single = by_name("MC on the tumour box, one pass per forward");
    assert_eq!((single["mc_roi"].as_bool(), single["mc_batch"].as_u64()), (Some(true), Some(1)), "{single}");
    assert_eq!(by_name("MC over every voxel")["mc_roi"], false);
    for x in variants {
        assert!(x["seconds"].as_f64().unwrap() > 0.0 && x["peak_rss_mib"].as_f64().unwrap() > 0.0, "{x}");
    }
    let runs = v["throughput"].as_array().unwrap_or_else(|| panic!("no throughput section: {v}"));
    let workers: Vec<u64> = runs.iter().map(|r| r["workers"].as_u64().unwrap()).collect();
    assert_eq!(workers, [1, 2]);
    for r in runs {
        assert_eq!(r["queue"], 3);
        assert!(r["cases_per_minute"].as_f64().unwrap() > 0.0, "{r}");
    }
}

#[test]
fn an_error_prints_its_message_and_causes_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-case");
    let out = gmmas()
        .env("RUST_BACKTRACE", "1")
        .env_remove("GMMAS_BACKTRACE")
        .arg("bench")
        .arg("--mc-case")
        .arg(&missing)
        .args(["--skip-pipeline", "--mc", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("Error: "), "{stderr}");
    assert!(stderr.contains("no-such-case"), "the error names the folder: {stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "no backtrace unless GMMAS_BACKTRACE=1: {stderr}");
}
