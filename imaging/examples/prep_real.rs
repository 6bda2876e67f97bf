//! Times read + prepare of one BraTS case directory (the preprocessing benchmark).
//! Usage: `cargo run --release -p gmmas-imaging --example prep_real -- CASE_DIR [OUT.bin]`

use gmmas_imaging::brats::{discover_case, load_case};
use gmmas_imaging::{Limits, Modality, PrepOptions, prepare};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: prep_real CASE_DIR [OUT.bin]")?;
    let out = args.next();
    let reps: usize = std::env::var("REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let files = discover_case(std::path::Path::new(&dir))?;
    let limits = Limits::default();
    let mut best = f64::INFINITY;
    for rep in 0..reps {
        let t0 = Instant::now();
        let case = load_case(&files, &limits)?;
        let t1 = Instant::now();
        let inputs: Vec<(Modality, &gmmas_imaging::Volume)> = case.volumes.iter().map(|(m, v)| (*m, v)).collect();
        let prepared = prepare(&inputs, &PrepOptions::default())?;
        let t2 = Instant::now();
        let total = (t2 - t0).as_secs_f64();
        best = best.min(total);
        let n = prepared.data.len() as f64;
        let mean = prepared.data.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        println!(
            "rep {rep}: read+decode {:.3} s, prepare {:.3} s, total {:.3} s; dims {:?}, mean {:.3e}",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            total,
            prepared.dims,
            mean
        );
        if rep == 0
            && let Some(path) = &out
        {
            std::fs::write(path, prepared.to_bytes())?;
        }
    }
    println!("best total {best:.3} s for {}", files.name);
    Ok(())
}
