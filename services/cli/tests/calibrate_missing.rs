//! `gmmas eval-missing` and `gmmas calibrate` through the real binary on tiny phantoms and a
//! tiny seeded model: tables, ROC figures and JSON; temperatures and a loadable calibrated model.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

mod common;

use std::path::{Path, PathBuf};

use common::{gmmas, ok, scoring};

fn tiny_model(path: &Path) {
    common::tiny_model(path, 1);
}

fn phantoms(dir: &Path, n: usize, seed: u64) -> Vec<String> {
    ok(gmmas()
        .args(["phantom", "--n", &n.to_string(), "--seed", &seed.to_string(), "--dims", "32,32,24", "--out"])
        .arg(dir)
        .output()
        .unwrap());
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Rows of the Markdown table under the heading starting with `heading`.
fn table_rows(md: &str, heading: &str) -> Vec<String> {
    let start = md.find(heading).unwrap_or_else(|| panic!("no {heading:?} in\n{md}"));
    md[start..]
        .lines()
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(String::from)
        .collect()
}

#[test]
fn eval_missing_writes_tables_figures_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let names = phantoms(&data, 2, 3);
    let run: PathBuf = dir.path().join("run0");
    std::fs::create_dir_all(&run).unwrap();
    tiny_model(&run.join("model.safetensors"));
    let split: String =
        std::iter::once("case,subset\n".to_string()).chain(names.iter().map(|n| format!("{n},val\n"))).collect();
    std::fs::write(run.join("split.csv"), split).unwrap();
    let out_dir = dir.path().join("missing");
    let out = ok(gmmas()
        .arg("eval-missing")
        .arg("--arm")
        .arg(format!("vanilla={}", run.display()))
        .arg("--data")
        .arg(&data)
        .arg("--labels")
        .arg(data.join("labels.csv"))
        .args(["--combos", "paper", "--device", "cpu", "--threads", "2", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("combination 11/11 Missing T1 & T2"), "{stderr}");

    let md = std::fs::read_to_string(out_dir.join("missing.md")).unwrap();
    for heading in ["## Segmentation: Dice", "## Classification: AUC", "## Cases per combination"] {
        let rows = table_rows(&md, heading);
        assert_eq!(rows.len(), 11, "{heading}: {rows:#?}");
        assert!(rows[0].starts_with("| Full input |") && rows[10].starts_with("| Missing T1 & T2 |"), "{rows:?}");
    }
    let seg = table_rows(&md, "## Segmentation: Dice");
    assert!(seg[1].starts_with("| Missing FLAIR |") && seg[1].contains(" ± "), "{seg:?}");
    assert!(md.contains("| vanilla WT | vanilla TC | vanilla ED | vanilla ET |"), "{md}");
    assert!(md.contains("vanilla grade_gbm") && md.contains("vanilla idh_mutant"), "{md}");
    assert!(md.contains("| black | Full input |") && md.contains("| orange | Missing FLAIR |"), "{md}");

    for task in ["grade_gbm", "idh_mutant"] {
        let png = std::fs::read(out_dir.join(format!("roc_{task}_vanilla.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 560);
    }

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("missing.json")).unwrap()).unwrap();
    assert_eq!(json["combinations"].as_array().unwrap().len(), 11);
    let arm = &json["arms"][0];
    assert_eq!(arm["name"], "vanilla");
    assert!(arm["runs"][0]["version"].as_str().unwrap().starts_with("gmmas-tiny-seed1@"));
    let combos = arm["combinations"].as_array().unwrap();
    assert_eq!(combos.len(), 11);
    assert_eq!(combos[1]["drop"], serde_json::json!([false, false, false, true]));
    for c in combos {
        assert_eq!(c["evaluated"], 2);
        let cases = c["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 2);
        let present: Vec<bool> = serde_json::from_value(cases[0]["present"].clone()).unwrap();
        let drop: Vec<bool> = serde_json::from_value(c["drop"].clone()).unwrap();
        assert!(present.iter().zip(&drop).all(|(p, d)| !(*p && *d)));
        assert!(cases[0]["dice"].as_array().unwrap().len() == 4);
        assert!(cases[0]["probabilities"].as_array().unwrap().len() == 4);
    }
    assert!(json["command"].as_array().unwrap().iter().any(|a| a == "eval-missing"));

    // `--subset all` needs no split.csv; `--combos all` gives 15 rows.
    std::fs::remove_file(run.join("split.csv")).unwrap();
    let out_all = dir.path().join("missing_all");
    ok(gmmas()
        .arg("eval-missing")
        .arg("--arm")
        .arg(format!("a={}", run.display()))
        .arg("--data")
        .arg(&data)
        .args(["--subset", "all", "--combos", "all", "--device", "cpu", "--threads", "2", "--out"])
        .arg(&out_all)
        .output()
        .unwrap());
    let md = std::fs::read_to_string(out_all.join("missing.md")).unwrap();
    assert_eq!(table_rows(&md, "## Segmentation: Dice").len(), 15);
}

#[test]
fn calibrate_writes_a_loadable_calibrated_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    phantoms(&data, 4, 5);
    let model = dir.path().join("tiny.safetensors");
    tiny_model(&model);
    let cal = dir.path().join("cal/tiny-cal.safetensors");
    let out =
        ok(scoring("calibrate", &model, &data, &cal).args(["--device", "cpu", "--threads", "2"]).output().unwrap());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t: Vec<f64> = serde_json::from_value(summary["temperature"].clone()).unwrap();
    assert_eq!(t.len(), 4);
    assert!(t.iter().all(|v| v.is_finite() && *v > 0.0), "{t:?}");
    assert_eq!(summary["cases"], 4);
    assert_eq!(summary["tasks"].as_array().unwrap().len(), 4);
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("cal/tiny-cal.json")).unwrap()).unwrap();
    assert_eq!(card["training"]["calibration"]["cases"].as_array().unwrap().len(), 4);
    assert!(card["training"]["calibration"]["tasks"][0]["nll_before"].is_number());
    if t.iter().any(|&v| v != 1.0) {
        assert_ne!(summary["version_in"], summary["version_out"]);
        assert_eq!(card["temperature"].as_array().unwrap().len(), 4);
    }

    // The calibrated model loads and evaluates.
    let eval_dir = dir.path().join("eval");
    ok(scoring("eval", &cal, &data, &eval_dir).args(["--no-hd95", "--device", "cpu"]).output().unwrap());
    let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(eval_dir.join("eval.json")).unwrap()).unwrap();
    assert_eq!(eval["model"], summary["version_out"]);
    assert_eq!(eval["cases_evaluated"], 4);
}
