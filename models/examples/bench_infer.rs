//! Times `Analyzer::analyze` on a synthetic 4-channel case and prints the peak RSS (VmHWM).
//! Usage: `bench_infer [profile=small] [nx ny nz = 160 190 150] [--patch-window] [--mc N] [--threads N] [--params]`.

use std::time::Instant;

use gmmas_models::{Analyzer, InferOptions, ModelConfig};

fn vm_hwm() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "?".into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut positional = Vec::new();
    let mut patch_window = false;
    let mut mc = 0usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--patch-window" => patch_window = true,
            "--params" => {
                for name in ["tiny", "small", "medium", "paper"] {
                    for (t, g) in [(true, true), (false, false)] {
                        let cfg = ModelConfig::profile(name)?.with_transformer(t).with_global_branch(g);
                        let a = Analyzer::new_seeded(cfg, 0, tch::Device::Cpu)?;
                        println!("{name} transformer={t} global={g}: {} parameters", a.parameter_count());
                    }
                }
                return Ok(());
            }
            "--mc" => mc = it.next().ok_or("--mc needs a value")?.parse()?,
            "--threads" => tch::set_num_threads(it.next().ok_or("--threads needs a value")?.parse()?),
            _ => positional.push(a.clone()),
        }
    }
    let profile = positional.first().map(String::as_str).unwrap_or("small");
    let dims: [usize; 3] = if positional.len() >= 4 {
        [positional[1].parse()?, positional[2].parse()?, positional[3].parse()?]
    } else {
        [160, 190, 150]
    };
    let mut cfg = ModelConfig::profile(profile)?;
    if patch_window {
        cfg.infer_window = cfg.patch;
    }
    let device = if tch::Cuda::is_available() { tch::Device::Cuda(0) } else { tch::Device::Cpu };
    let analyzer = Analyzer::new_seeded(cfg.clone(), 1, device)?;
    let n = dims.iter().product::<usize>();
    // A smooth synthetic "brain" with a bright blob so every code path runs.
    let mut input = vec![0f32; 4 * n];
    let [nx, ny, nz] = dims;
    for c in 0..4 {
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    let (fx, fy, fz) =
                        (x as f32 / nx as f32 - 0.5, y as f32 / ny as f32 - 0.5, z as f32 / nz as f32 - 0.5);
                    let r2 = fx * fx + fy * fy + fz * fz;
                    let blob = (-(((fx - 0.1).powi(2) + fy * fy + fz * fz) / 0.005)).exp();
                    input[c * n + x + nx * (y + ny * z)] =
                        if r2 < 0.2 { (c as f32 * 0.3 + 8.0 * fx).sin() + 2.0 * blob } else { 0.0 };
                }
            }
        }
    }
    let plan = gmmas_models::infer::plan_windows(&cfg, [nz, ny, nx], 0.5);
    println!(
        "profile={profile} params={} device={device:?} threads={} dims={dims:?} window={:?} windows={} mc={mc}",
        analyzer.parameter_count(),
        tch::get_num_threads(),
        plan.window,
        plan.len()
    );
    println!("VmHWM before: {}", vm_hwm());
    let opts = InferOptions { mc_passes: mc, ..Default::default() };
    for run in 0..2 {
        let t = Instant::now();
        let p = analyzer.analyze(&input, dims, [true; 4], &opts)?;
        let fg = p.labels.iter().filter(|&&l| l != 0).count();
        println!(
            "run {run}: {:.2} s, foreground voxels {fg}, probs {:?}, VmHWM {}",
            t.elapsed().as_secs_f64(),
            p.probabilities,
            vm_hwm()
        );
    }
    Ok(())
}
