//! Writes a synthetic BraTS-style phantom dataset and reports the per-case generation time.
//! Usage: `cargo run --release -p gmmas-phantom --example phantom -- OUT_DIR [N] [SEED] [NX NY NZ]`

use gmmas_imaging::region_stats;
use gmmas_phantom::{PhantomConfig, anatomy, anatomy_path, case_seed, try_generate, write_dataset};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args.first().ok_or("usage: phantom OUT_DIR [N] [SEED] [NX NY NZ]")?;
    let n: usize = args.get(1).map_or(Ok(2), |s| s.parse())?;
    let seed: u64 = args.get(2).map_or(Ok(0), |s| s.parse())?;
    let dims = if args.len() >= 6 { [args[3].parse()?, args[4].parse()?, args[5].parse()?] } else { [240, 240, 155] };
    let t = Instant::now();
    println!(
        "anatomy {:?} ({}) loaded in {:.3} s",
        anatomy(),
        anatomy_path().map_or("built in".into(), |p| p.display().to_string()),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let case = try_generate(&PhantomConfig { dims, seed: case_seed(seed, 0) })?;
    println!(
        "generate {:?}: {:.3} s; truth {:?}; regions {:?}",
        dims,
        t.elapsed().as_secs_f64(),
        case.truth,
        region_stats(&case.seg)
    );
    let t = Instant::now();
    let names = write_dataset(n, seed, dims, std::path::Path::new(out))?;
    println!("wrote {} cases to {out} in {:.3} s", names.len(), t.elapsed().as_secs_f64());
    Ok(())
}
