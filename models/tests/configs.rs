//! Every run config committed under `models/configs/` parses, passes the run checks and
//! names a valid network, so a documented training command cannot fail on its config.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use std::path::{Path, PathBuf};

use gmmas_models::fit::TrainRunConfig;

fn configs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            configs(&p, out);
        } else if p.extension().is_some_and(|e| e == "toml") {
            out.push(p);
        }
    }
}

#[test]
fn every_committed_config_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = root.parent().unwrap();
    let mut files = Vec::new();
    configs(&root.join("configs"), &mut files);
    files.sort();
    assert!(files.len() >= 20, "expected the committed configs, found {}", files.len());
    let mut problems = Vec::new();
    for f in &files {
        let cfg = match TrainRunConfig::load(f) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        if let Err(e) = cfg.check() {
            problems.push(format!("{}: {e}", f.display()));
        }
        match cfg.model.resolve() {
            Ok(m) => {
                if let Err(e) = m.validate() {
                    problems.push(format!("{}: model: {e}", f.display()));
                }
            }
            Err(e) => problems.push(format!("{}: model: {e}", f.display())),
        }
        // Outputs stay in the ignored out/ folder of the repository.
        if !cfg.out.starts_with(repo.join("out")) {
            problems.push(format!("{}: out = {} is not under out/", f.display(), cfg.out.display()));
        }
        // Weights a config starts from, when bundled, exist.
        if let Some(init) = &cfg.model.init
            && init.starts_with(root.join("weights"))
            && !init.exists()
        {
            problems.push(format!("{}: model.init {} does not exist", f.display(), init.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
