//! The crate boundaries ARCHITECTURE.md describes, checked from the Cargo manifests: no process
//! crate links another, the model crate knows no bus or database, services no tensor library.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One workspace member: its package name, whether it builds a process (`src/main.rs`), and
/// the names of its normal (not dev) dependencies.
struct Member {
    dir: PathBuf,
    name: String,
    process: bool,
    deps: Vec<String>,
}

fn members() -> Vec<Member> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let ws: toml::Value = std::fs::read_to_string(root.join("Cargo.toml")).unwrap().parse().unwrap();
    let list = ws["workspace"]["members"].as_array().unwrap();
    list.iter()
        .map(|m| {
            let dir = root.join(m.as_str().unwrap());
            let manifest: toml::Value = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap().parse().unwrap();
            let deps = manifest
                .get("dependencies")
                .and_then(toml::Value::as_table)
                .map_or(Vec::new(), |t| t.keys().cloned().collect());
            Member {
                name: manifest["package"]["name"].as_str().unwrap().to_string(),
                process: dir.join("src/main.rs").exists(),
                deps,
                dir,
            }
        })
        .collect()
}

#[test]
fn no_process_crate_links_another() {
    let all = members();
    let process: BTreeMap<&str, &Member> = all.iter().filter(|m| m.process).map(|m| (m.name.as_str(), m)).collect();
    assert!(process.len() >= 8, "expected the services and the CLI as processes, found {:?}", process.keys());
    for m in all.iter().filter(|m| m.name != "gmmas-e2e") {
        for d in &m.deps {
            assert!(
                !process.contains_key(d.as_str()),
                "{} ({}) depends on {d}, which is a process crate: move the shared code into a library",
                m.name,
                m.dir.display()
            );
        }
    }
}

#[test]
fn layers_keep_to_their_concern() {
    let all = members();
    let deps = |name: &str| &all.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no crate {name}")).deps;
    // Pure libraries: no network, database or tensor library.
    for lib in ["gmmas-contracts", "gmmas-imaging", "gmmas-dicom", "gmmas-phantom", "gmmas-plot"] {
        for banned in ["tch", "async-nats", "sqlx", "axum", "tokio"] {
            assert!(!deps(lib).iter().any(|d| d == banned), "{lib} must not depend on {banned}");
        }
    }
    // The model crate knows nothing of NATS, SQL or HTTP.
    for banned in ["async-nats", "sqlx", "axum", "gmmas-runtime"] {
        assert!(!deps("gmmas-models").iter().any(|d| d == banned), "gmmas-models must not depend on {banned}");
    }
    // Services reach the network only through gmmas-models.
    for m in all.iter().filter(|m| m.name != "gmmas-models") {
        assert!(
            !m.deps.iter().any(|d| d == "tch"),
            "{} uses tch directly: tensor code belongs in gmmas-models",
            m.name
        );
    }
    // Only the CLI and tests link the plotting and phantom crates among the processes.
    for m in all.iter().filter(|m| m.process && m.name != "gmmas-cli") {
        for lib in ["gmmas-plot", "gmmas-phantom"] {
            assert!(!m.deps.iter().any(|d| d == lib), "{} links {lib}, which no service needs", m.name);
        }
    }
}
