//! Helpers the CLI's integration tests share: the real `gmmas` binary, a tiny seeded model,
//! phantom folders, and the argument list of the commands that score labelled cases.
#![allow(dead_code, reason = "each test binary uses a different part of these helpers")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `gmmas` binary that cargo built for these tests.
pub fn gmmas() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gmmas"))
}

/// `out`, after checking that the command succeeded (its stdout and stderr in the failure).
pub fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Writes an untrained `tiny` model with `seed` to `path`.
pub fn tiny_model(path: &Path, seed: u64) -> PathBuf {
    ok(gmmas()
        .args(["init-model", "--profile", "tiny", "--seed", &seed.to_string(), "--out"])
        .arg(path)
        .output()
        .unwrap());
    path.to_path_buf()
}

/// `gmmas <command> --model <model> --data <data> --labels <data>/labels.csv --out <out>`: a
/// command that scores the labelled phantom cases of `data`; more flags may follow.
pub fn scoring(command: &str, model: &Path, data: &Path, out: &Path) -> Command {
    let mut cmd = gmmas();
    cmd.args([command, "--model"]).arg(model).arg("--data").arg(data);
    cmd.arg("--labels").arg(data.join("labels.csv")).arg("--out").arg(out);
    cmd
}
