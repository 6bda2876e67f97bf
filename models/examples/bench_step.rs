//! Times training steps of a profile at its own patch size (batch 1, random input) and prints
//! seconds per step and peak RSS. Usage: `bench_step [profile=small] [steps=3] [threads=2]`.

use std::time::Instant;

use gmmas_models::train::{Batch, TrainConfig, Trainer};
use gmmas_models::{Device, ModelConfig};
use tch::{Kind, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let profile = args.first().map_or("small", String::as_str);
    let steps: usize = args.get(1).map_or(Ok(3), |s| s.parse())?;
    let threads: i32 = args.get(2).map_or(Ok(2), |s| s.parse())?;
    tch::set_num_threads(threads);
    let cfg = ModelConfig::profile(profile)?;
    let [d, h, w] = cfg.patch.map(|v| v as i64);
    let device = Device::cuda_if_available();
    let mut trainer = Trainer::new(cfg.clone(), TrainConfig::default(), 0, device)?;
    tch::manual_seed(0);
    let batch = Batch {
        image: Tensor::randn([1, 4, d, h, w], (Kind::Float, device)),
        seg: Tensor::randint(4, [1, d, h, w], (Kind::Int64, device)),
        present: vec![[true; 4]],
        tasks: vec![[Some(true), Some(false), None, Some(true)]],
        global: None,
        soft: None,
    };
    let mut times = Vec::new();
    for _ in 0..steps.max(1) + 1 {
        let t = Instant::now();
        trainer.step(&batch)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let after_first = &times[1..];
    let mean = after_first.iter().sum::<f64>() / after_first.len() as f64;
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM")).map(|l| l.to_string()))
        .unwrap_or_default();
    println!(
        "profile {profile} patch {:?} device {device:?} threads {threads}: first step {:.2} s, then {mean:.2} s/step over {} steps; {hwm}",
        cfg.patch,
        times[0],
        after_first.len()
    );
    Ok(())
}
