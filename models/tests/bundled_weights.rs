//! The bundled weights load with their recorded hashes and save back byte-identically.
//!
//! Its own test binary (one process, nothing else running in it): inside the library's
//! concurrent unit tests this check once saw different bytes, which a run on its own never has.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use gmmas_models::{Analyzer, Device, ModelMeta};

/// Saving the loaded bundled models gives their files again, byte for byte (decoder dropout
/// adds no variable, is off and is not written to the card).
#[test]
fn bundled_weights_load_and_round_trip_byte_identically() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
    let tmp = tempfile::tempdir().unwrap();
    for name in ["gmmas-small", "gmmas-small-adapted"] {
        let path = dir.join(format!("{name}.safetensors"));
        let a = Analyzer::load(&path, Device::Cpu).unwrap();
        assert_eq!(a.config().decoder_dropout, 0.0);
        let meta: ModelMeta =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
        assert_eq!(a.version(), format!("{}@{}", meta.name, &meta.weights_sha256[..12]));
        let out = tmp.path().join(format!("{name}.safetensors"));
        a.save(&out).unwrap();
        let (got, want) = (std::fs::read(&out).unwrap(), std::fs::read(&path).unwrap());
        if got != want {
            panic!("{name} bytes changed: {}", gmmas_models::weights::describe_difference(&want, &got));
        }
        let card: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
        assert!(card["config"].get("decoder_dropout").is_none());
    }
}
