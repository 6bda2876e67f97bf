//! The PyTorch replica of the network (`models/bench/torch_net.py`, what `gmmas bench
//! --torch-python` times against tch) computes what `net.rs` and `Trainer::step` compute.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::path::{Path, PathBuf};
use std::process::Command;

use gmmas_models::config::{MODALITIES, TASKS};
use gmmas_models::train::{Batch, TrainConfig, Trainer};
use gmmas_models::{Analyzer, Device, ModelConfig};
use tch::{Kind, Tensor};

/// Largest logit difference accepted between tch and the replica (float32 on the CPU; the two
/// run the same libtorch kernels, so they differ by summation order at most).
const LOGIT_TOL: f64 = 1e-4;

/// The venv's Python: scripts/setup.sh creates it with torch and numpy, scripts/env.sh sets
/// VIRTUAL_ENV. Not skipped when absent: CI always has it.
fn python() -> PathBuf {
    let venv = std::env::var_os("VIRTUAL_ENV")
        .expect("VIRTUAL_ENV is not set: source scripts/env.sh (scripts/setup.sh creates the venv with torch)");
    let p = PathBuf::from(venv).join("bin/python");
    assert!(p.exists(), "{} does not exist: run scripts/setup.sh", p.display());
    p
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/torch_net.py")
}

/// Runs `torch_net.py check` and returns its JSON report.
fn check(weights: &Path, data: &Path) -> serde_json::Value {
    let out = Command::new(python())
        .arg(script())
        .arg("check")
        .arg("--weights")
        .arg(weights)
        .arg("--data")
        .arg(data)
        .output()
        .expect("running the venv's python");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "torch_net.py check failed (is torch installed in the venv?):\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {stdout}\n{stderr}"))
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no number {key} in {v}"))
}

fn masks_tensor(masks: &[[bool; MODALITIES]]) -> Tensor {
    let v: Vec<f32> = masks.iter().flatten().map(|&p| f32::from(u8::from(p))).collect();
    Tensor::from_slice(&v).view([masks.len() as i64, MODALITIES as i64])
}

/// Task labels as 1 / 0 / -1 (no label), the layout `torch_net.py` reads.
fn labels_tensor(tasks: &[[Option<bool>; TASKS]]) -> Tensor {
    let v: Vec<f32> = tasks.iter().flatten().map(|t| t.map_or(-1.0, |y| f32::from(u8::from(y)))).collect();
    Tensor::from_slice(&v).view([tasks.len() as i64, TASKS as i64])
}

/// Writes the eval-mode outputs of `weights` on a seeded input (and, with `steps > 0`, the
/// losses of that many training steps on it) for `torch_net.py check`, runs it and asserts
/// that the replica agrees.
fn compare(weights: &Path, shape: [i64; 5], masks: &[[bool; MODALITIES]], steps: usize, dir: &Path) {
    tch::manual_seed(7);
    let x = Tensor::randn(shape, (Kind::Float, Device::Cpu));
    let trainer = Trainer::from_weights(weights, TrainConfig::default(), Device::Cpu).unwrap();
    let out = tch::no_grad(|| trainer.net().forward(&x, masks, None, false, false)).unwrap();
    let mut tensors: Vec<(String, Tensor)> = vec![
        ("input".into(), x.shallow_clone()),
        ("present".into(), masks_tensor(masks)),
        ("seg".into(), out.seg),
        ("tasks".into(), out.tasks),
    ];
    if steps > 0 {
        let b = shape[0];
        let tasks: Vec<[Option<bool>; TASKS]> =
            [[Some(true), Some(false), None, Some(true)], [Some(false), None, Some(true), Some(true)]]
                .into_iter()
                .cycle()
                .take(b as usize)
                .collect();
        let batch = Batch {
            image: x.shallow_clone(),
            seg: Tensor::randint(4, [b, shape[2], shape[3], shape[4]], (Kind::Int64, Device::Cpu)),
            tasks: tasks.clone(),
            present: masks.to_vec(),
            global: None,
            soft: None,
        };
        let mut trainer = Trainer::from_weights(weights, TrainConfig::default(), Device::Cpu).unwrap();
        let losses: Vec<f64> = (0..steps).map(|_| trainer.step(&batch).unwrap().total).collect();
        tensors.push(("labels".into(), batch.seg.shallow_clone()));
        tensors.push(("task_labels".into(), labels_tensor(&tasks)));
        tensors.push(("loss".into(), Tensor::from_slice(&losses)));
    }
    let data = dir.join("check.safetensors");
    Tensor::write_safetensors(&tensors, &data).unwrap();
    let report = check(weights, &data);
    println!("{}: {report}", weights.display());
    let seg = num(&report, "seg_max_abs_diff");
    let tasks = num(&report, "tasks_max_abs_diff");
    assert!(seg < LOGIT_TOL, "segmentation logits differ by {seg} (largest logit {})", num(&report, "seg_max_abs"));
    assert!(tasks < LOGIT_TOL, "task logits differ by {tasks}");
    if steps > 0 {
        let loss = num(&report, "loss_max_abs_diff");
        assert!(loss < LOGIT_TOL, "training losses differ by {loss}: {report}");
    }
}

/// The bundled model (trained BatchNorm statistics, positional embedding resized to a
/// non-cubic input, two samples with different sequences present): same logits.
#[test]
fn bundled_model_gives_the_same_logits_in_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/gmmas-small.safetensors");
    compare(&weights, [2, 4, 40, 48, 32], &[[true; 4], [true, false, true, true]], 0, dir.path());
}

/// The tiny profile without dropout (so train mode is deterministic): same logits, and the
/// same loss over three training steps (BatchNorm batch statistics, Dice + CE + global Dice,
/// task CE, eq. (7), gradient clipping and AdamW all agree); then the ConvNet ablation without
/// the global branch.
#[test]
fn tiny_model_trains_the_same_in_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let variants = [
        ("full", ModelConfig::tiny().with_dropout(0.0)),
        ("convnet", ModelConfig::tiny().with_dropout(0.0).with_transformer(false).with_global_branch(false)),
    ];
    for (name, cfg) in variants {
        let weights = dir.path().join(format!("{name}.safetensors"));
        Analyzer::new_seeded(cfg, 3, Device::Cpu).unwrap().save(&weights).unwrap();
        compare(&weights, [2, 4, 32, 32, 24], &[[true; 4], [false, true, true, true]], 3, dir.path());
    }
}
