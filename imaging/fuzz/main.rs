//! `fuzz_nifti`: fuzzes the NIfTI-1 reader on stable Rust (no libFuzzer) and prints the totals.
//! Usage and measured runs: `imaging/fuzz/README.md`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "fuzzing tool: a broken invariant should stop it loudly")]

#[allow(dead_code)]
mod engine;

use engine::{Config, CountingAlloc};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const USAGE: &str = "usage: fuzz_nifti [--execs N] [--threads N] [--seed N] [--corpus DIR] [--crashes DIR]
                  [--time-limit-ms N] [--progress-secs N] [--outcomes]
       fuzz_nifti --write-corpus DIR
       fuzz_nifti --replay FILE...";

fn default_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(name)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fuzz_nifti: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = Config {
        execs: 1_000_000,
        crash_dir: default_dir("crashes"),
        progress_secs: 10,
        seed: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        ..Config::default()
    };
    let mut corpus_dir = default_dir("corpus");
    let mut list_outcomes = false;
    let mut i = 0;
    let value = |i: usize| args.get(i + 1).ok_or_else(|| format!("{} needs a value", args[i]));
    while i < args.len() {
        match args[i].as_str() {
            "--execs" => cfg.execs = value(i)?.replace('_', "").parse()?,
            "--threads" => cfg.threads = value(i)?.parse()?,
            "--seed" => cfg.seed = value(i)?.parse()?,
            "--corpus" => corpus_dir = PathBuf::from(value(i)?),
            "--crashes" => cfg.crash_dir = PathBuf::from(value(i)?),
            "--time-limit-ms" => cfg.time_limit = Duration::from_millis(value(i)?.parse()?),
            "--progress-secs" => cfg.progress_secs = value(i)?.parse()?,
            "--write-corpus" => {
                let dir = PathBuf::from(value(i)?);
                let n = engine::write_corpus(&dir)?;
                println!("wrote {n} seed files to {}", dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            "--replay" => {
                let mut bad = false;
                for f in &args[i + 1..] {
                    let bytes = std::fs::read(f)?;
                    let (lines, panicked) = engine::replay(&bytes, &cfg.limits);
                    println!("{f} ({} bytes)", bytes.len());
                    for l in lines {
                        println!("  {l}");
                    }
                    bad |= panicked;
                }
                return Ok(if bad { ExitCode::FAILURE } else { ExitCode::SUCCESS });
            }
            "--outcomes" => {
                list_outcomes = true;
                i += 1;
                continue;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
        i += 2;
    }
    cfg.seeds = match engine::load_corpus(&corpus_dir) {
        Ok(s) if !s.is_empty() => s,
        _ => {
            eprintln!("fuzz_nifti: no corpus in {}; using the built-in seeds", corpus_dir.display());
            Vec::new()
        }
    };
    let l = cfg.limits;
    println!(
        "fuzz_nifti: {} executions, {} thread(s), seed {}, corpus {} ({} files), limits: {} file bytes, {} voxels, \
         dim {}; per-call time limit {} ms",
        cfg.execs,
        cfg.threads,
        cfg.seed,
        corpus_dir.display(),
        cfg.seeds.len(),
        l.max_file_bytes,
        l.max_voxels,
        l.max_dim,
        cfg.time_limit.as_millis()
    );
    let report = engine::run(&cfg);
    if list_outcomes {
        for (k, n) in &report.outcomes {
            println!("{n:>10}  {k}");
        }
    }
    println!("{report}");
    Ok(if report.crashes + report.over_alloc == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
