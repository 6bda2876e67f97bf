//! Exact Euclidean distance transforms in millimetres (separable lower envelopes of parabolas):
//! surface distances for the metrics, erosion and dilation by a ball for brain masks.

/// 1-D squared distance transform (Felzenszwalb & Huttenlocher) of `f` sampled every `step`
/// mm, in place; `f` holds squared distances (`INFINITY` = no feature).
fn edt_1d(f: &mut [f64], step: f64, v: &mut [usize], z: &mut [f64], out: &mut [f64]) {
    let n = f.len();
    let mut k = 0usize;
    let mut first = None;
    for (q, &fq) in f.iter().enumerate() {
        if fq.is_finite() {
            first = Some(q);
            break;
        }
    }
    let Some(q0) = first else { return };
    v[0] = q0;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    for q in q0 + 1..n {
        if !f[q].is_finite() {
            continue;
        }
        loop {
            let p = v[k];
            // Intersection of the parabolas rooted at q and p (positions in mm).
            let (qm, pm) = (q as f64 * step, p as f64 * step);
            let s = ((f[q] + qm * qm) - (f[p] + pm * pm)) / (2.0 * (qm - pm));
            if s <= z[k] {
                if k == 0 {
                    v[0] = q;
                    z[0] = f64::NEG_INFINITY;
                    z[1] = f64::INFINITY;
                    break;
                }
                k -= 1;
                continue;
            }
            k += 1;
            v[k] = q;
            z[k] = s;
            z[k + 1] = f64::INFINITY;
            break;
        }
    }
    let mut k = 0;
    for (q, o) in out.iter_mut().enumerate().take(n) {
        let qm = q as f64 * step;
        while z[k + 1] < qm {
            k += 1;
        }
        let d = qm - v[k] as f64 * step;
        *o = d * d + f[v[k]];
    }
    f.copy_from_slice(&out[..n]);
}

/// Squared Euclidean distance (mm^2) from every voxel to the nearest `true` voxel of
/// `features`; `INFINITY` everywhere when there is none.
pub fn squared_distance_map(features: &[bool], dims: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let [nx, ny, nz] = dims;
    let mut d: Vec<f64> = features.iter().map(|&f| if f { 0.0 } else { f64::INFINITY }).collect();
    if !features.iter().any(|&f| f) {
        return d;
    }
    let longest = nx.max(ny).max(nz);
    let mut line = vec![0.0; longest];
    let mut v = vec![0usize; longest];
    let mut zb = vec![0.0; longest + 1];
    let mut out = vec![0.0; longest];
    let strides = [1, nx, nx * ny];
    for axis in 0..3 {
        let n = dims[axis];
        let stride = strides[axis];
        let (a, b) = match axis {
            0 => (ny, nz),
            1 => (nx, nz),
            _ => (nx, ny),
        };
        for j in 0..b {
            for i in 0..a {
                let base = match axis {
                    0 => nx * (i + ny * j),
                    1 => i + nx * ny * j,
                    _ => i + nx * j,
                };
                for (t, l) in line.iter_mut().enumerate().take(n) {
                    *l = d[base + t * stride];
                }
                edt_1d(&mut line[..n], spacing[axis], &mut v, &mut zb, &mut out);
                for (t, l) in line.iter().enumerate().take(n) {
                    d[base + t * stride] = *l;
                }
            }
        }
    }
    d
}
