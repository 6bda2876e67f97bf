//! temp
//! temp
use gmmas_models::{loss, train::*, ModelConfig};
use tch::{Device, Kind, Tensor};
fn synthetic(n: usize, center: [f32; 3], radius: f32) -> (Tensor, Tensor) {
    let vox = n * n * n;
    let mut img = vec![0f32; 4 * vox];
    let mut seg = vec![0i64; vox];
    for z in 0..n { for y in 0..n { for x in 0..n {
        let i = x + n * (y + n * z);
        let d = ((x as f32 - center[0]).powi(2) + (y as f32 - center[1]).powi(2) + (z as f32 - center[2]).powi(2)).sqrt();
        let label = if d < 0.3 * radius { 1 } else if d < 0.55 * radius { 3 } else if d < radius { 2 } else { 0 };
        seg[i] = label;
        let offs: [[f32; 4]; 4] = [[0.0; 4], [-1.0, -1.0, 1.0, 0.5], [-0.3, 0.2, 1.5, 2.0], [-0.5, 2.0, 0.8, 1.0]];
        for c in 0..4 { img[c * vox + i] = offs[label as usize][c] + (0.4 * x as f32 + 0.3 * c as f32).sin() * 0.2 + ((i * 7919 + c * 31) % 97) as f32 / 97.0 * 0.4 - 0.2; }
    }}}
    let n = n as i64;
    (Tensor::from_slice(&img).view([1, 4, n, n, n]), Tensor::from_slice(&seg).view([1, n, n, n]))
}
fn fg_dice(logits: &Tensor, seg: &Tensor) -> Vec<f64> {
    let pred = logits.argmax(1, false).ne(0);
    let t = seg.ne(0);
    (0..2).map(|b| { let p = pred.get(b); let tt = t.get(b);
        2.0 * p.logical_and(&tt).sum(Kind::Double).double_value(&[]) / (p.sum(Kind::Double).double_value(&[]) + tt.sum(Kind::Double).double_value(&[])) }).collect()
}
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let lr: f64 = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(3e-3);
    let ce: f64 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(0.0);
    let uw: bool = args.get(3).map(|s| s == "1").unwrap_or(true);
    let (a, sa) = synthetic(32, [12.0, 14.0, 16.0], 9.0);
    let (b, sb) = synthetic(32, [19.0, 17.0, 13.0], 7.0);
    let batch = Batch { image: Tensor::cat(&[a, b], 0), seg: Tensor::cat(&[sa, sb], 0), present: vec![[true; 4]; 2],
        tasks: vec![[Some(true), Some(false), None, Some(true)], [Some(false), Some(true), Some(true), None]], global: None };
    let tcfg = TrainConfig { lr, seg_ce_weight: ce, uncertainty_weighting: uw, ..TrainConfig::default() };
    let mut tr = Trainer::new(ModelConfig::tiny(), tcfg, 1, Device::Cpu).unwrap();
    let t0 = std::time::Instant::now();
    for step in 1..=100 {
        let l = tr.step(&batch).unwrap();
        if step % 10 == 0 {
            let ev = tch::no_grad(|| tr.net().forward(&batch.image, &batch.present, None, false, false)).unwrap();
            let trm = tch::no_grad(|| tr.net().forward(&batch.image, &batch.present, None, true, false)).unwrap();
            println!("step {step} seg_dice_loss {:.3} total {:.3} eval fg {:?} trainmode fg {:?} dice_scores {:?} {:.1?}", l.seg_dice, l.total, fg_dice(&ev.seg, &batch.seg), fg_dice(&trm.seg, &batch.seg), loss::dice_scores(&ev.seg, &batch.seg), t0.elapsed());
        }
    }
}
