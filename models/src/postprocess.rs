//! Post-processing of predicted label volumes: the tumor filter of the paper's Algorithm 1
//! (keep the densest tumor components, drop sparse noise, keep multifocal disease) and a
//! largest-components cleanup.

use serde::{Deserialize, Serialize};

/// Which cleanup runs on the predicted labels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PostProcess {
    /// Leave the prediction as it is.
    None,
    /// Algorithm 1 with the paper's thresholds (sparse below 10 % of the bounding box, keep
    /// components until 60 % of tumor voxels are covered).
    #[default]
    TumorFilter,
    /// Keep only the largest connected tumor component.
    LargestComponent,
}

/// Thresholds of Algorithm 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TumorFilter {
    /// The filter acts only when tumor voxels fill less than this fraction of their bounding box.
    pub sparse_fraction: f64,
    /// Components are kept, densest first, until they hold this fraction of all tumor voxels.
    pub keep_fraction: f64,
}

impl Default for TumorFilter {
    fn default() -> Self {
        TumorFilter { sparse_fraction: 0.1, keep_fraction: 0.6 }
    }
}

/// Applies `pp` in place; `dims` = [nx, ny, nz], x fastest. Returns the voxels removed.
pub fn apply(pp: PostProcess, labels: &mut [u8], dims: [usize; 3]) -> usize {
    match pp {
        PostProcess::None => 0,
        PostProcess::TumorFilter => tumor_filter(labels, dims, &TumorFilter::default()),
        PostProcess::LargestComponent => largest_component(labels, dims),
    }
}

/// Small-ET rule: when fewer than `min_voxels` voxels are predicted enhancing tumour (BraTS
/// label 4), they become necrosis (label 1), the usual correction for lower-grade tumours
/// where a few enhancing voxels are more often noise than enhancement. Returns the voxels
/// relabelled (0 when the rule is off or the ET region is large enough).
pub fn small_et_to_ncr(labels: &mut [u8], min_voxels: usize) -> usize {
    if min_voxels == 0 {
        return 0;
    }
    let et = labels.iter().filter(|&&l| l == 4).count();
    if et == 0 || et >= min_voxels {
        return 0;
    }
    for l in labels.iter_mut().filter(|l| **l == 4) {
        *l = 1;
    }
    et
}

/// 26-connected components of non-zero voxels: (component id per voxel, 0 = background; sizes).
fn components(labels: &[u8], dims: [usize; 3]) -> (Vec<u32>, Vec<usize>) {
    let [nx, ny, nz] = dims;
    let mut comp = vec![0u32; labels.len()];
    let mut sizes = vec![0usize]; // index 0 unused
    let mut stack = Vec::new();
    for start in 0..labels.len() {
        if labels[start] == 0 || comp[start] != 0 {
            continue;
        }
        let id = sizes.len() as u32;
        sizes.push(0);
        comp[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            sizes[id as usize] += 1;
            let (x, y, z) = (i % nx, (i / nx) % ny, i / (nx * ny));
            for dz in z.saturating_sub(1)..=(z + 1).min(nz - 1) {
                for dy in y.saturating_sub(1)..=(y + 1).min(ny - 1) {
                    for dx in x.saturating_sub(1)..=(x + 1).min(nx - 1) {
                        let j = dx + nx * (dy + ny * dz);
                        if labels[j] != 0 && comp[j] == 0 {
                            comp[j] = id;
                            stack.push(j);
                        }
                    }
                }
            }
        }
    }
    (comp, sizes)
}

/// Algorithm 1. When the predicted tumor is sparse in its bounding box (D < `sparse_fraction`),
/// each tumor voxel gets a density (tumor voxels in its 3x3x3 neighbourhood); connected
/// components are ranked by their peak density and kept, densest first, until they hold
/// `keep_fraction` of the tumor voxels; the rest is removed. The paper's loop (zero the current
/// peak, find the next, repeat while below the threshold) is this ranking, written iteratively.
pub fn tumor_filter(labels: &mut [u8], dims: [usize; 3], cfg: &TumorFilter) -> usize {
    let [nx, ny, nz] = dims;
    assert_eq!(labels.len(), nx * ny * nz, "labels do not match dims");
    let (mut lo, mut hi, mut total) = ([usize::MAX; 3], [0usize; 3], 0usize);
    for (i, &l) in labels.iter().enumerate() {
        if l != 0 {
            let p = [i % nx, (i / nx) % ny, i / (nx * ny)];
            for a in 0..3 {
                lo[a] = lo[a].min(p[a]);
                hi[a] = hi[a].max(p[a]);
            }
            total += 1;
        }
    }
    if total == 0 {
        return 0;
    }
    let bbox: usize = (0..3).map(|a| hi[a] - lo[a] + 1).product();
    if (total as f64 / bbox as f64) >= cfg.sparse_fraction {
        return 0;
    }
    let (comp, sizes) = components(labels, dims);
    let mut peak = vec![0u32; sizes.len()];
    for (i, &c) in comp.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let (x, y, z) = (i % nx, (i / nx) % ny, i / (nx * ny));
        let mut density = 0u32;
        for dz in z.saturating_sub(1)..=(z + 1).min(nz - 1) {
            for dy in y.saturating_sub(1)..=(y + 1).min(ny - 1) {
                for dx in x.saturating_sub(1)..=(x + 1).min(nx - 1) {
                    density += u32::from(labels[dx + nx * (dy + ny * dz)] != 0);
                }
            }
        }
        peak[c as usize] = peak[c as usize].max(density);
    }
    let mut order: Vec<usize> = (1..sizes.len()).collect();
    order.sort_by(|&a, &b| peak[b].cmp(&peak[a]).then(sizes[b].cmp(&sizes[a])));
    let mut keep = vec![false; sizes.len()];
    let mut kept = 0usize;
    for c in order {
        if kept as f64 >= cfg.keep_fraction * total as f64 {
            break;
        }
        keep[c] = true;
        kept += sizes[c];
    }
    remove_unkept(labels, &comp, &keep)
}

/// Keeps only the largest connected tumor component.
pub fn largest_component(labels: &mut [u8], dims: [usize; 3]) -> usize {
    let (comp, sizes) = components(labels, dims);
    let Some(best) = (1..sizes.len()).max_by_key(|&c| sizes[c]) else { return 0 };
    let keep: Vec<bool> = (0..sizes.len()).map(|c| c == best).collect();
    remove_unkept(labels, &comp, &keep)
}

fn remove_unkept(labels: &mut [u8], comp: &[u32], keep: &[bool]) -> usize {
    let mut removed = 0;
    for (l, &c) in labels.iter_mut().zip(comp) {
        if c != 0 && !keep[c as usize] {
            *l = 0;
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_et_becomes_necrosis_only_below_the_threshold() {
        let mut labels = vec![0u8, 4, 4, 2, 1, 4, 0];
        assert_eq!(small_et_to_ncr(&mut labels.clone(), 0), 0);
        assert_eq!(small_et_to_ncr(&mut labels.clone(), 3), 0);
        assert_eq!(small_et_to_ncr(&mut labels, 4), 3);
        assert_eq!(labels, vec![0, 1, 1, 2, 1, 1, 0]);
        let mut none = vec![0u8, 2, 1];
        assert_eq!(small_et_to_ncr(&mut none, 10), 0);
        assert_eq!(none, vec![0, 2, 1]);
    }

    const D: [usize; 3] = [64, 64, 48];

    fn ball(l: &mut [u8], c: [usize; 3], r: f64, label: u8) -> usize {
        let mut n = 0;
        for z in 0..D[2] {
            for y in 0..D[1] {
                for x in 0..D[0] {
                    let d2 = [x, y, z].iter().zip(c).map(|(&p, c)| (p as f64 - c as f64).powi(2)).sum::<f64>();
                    if d2 <= r * r {
                        l[x + D[0] * (y + D[1] * z)] = label;
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// Isolated single voxels spread over the volume (a noisy prediction).
    fn noise(l: &mut [u8]) -> Vec<usize> {
        let mut at = Vec::new();
        for k in 0..40 {
            let (x, y, z) = ((k * 37 + 3) % 60 + 2, (k * 23 + 5) % 60 + 2, (k * 11 + 1) % 44 + 2);
            let i = x + D[0] * (y + D[1] * z);
            let isolated = (0..27).all(|n| {
                let j = (x + n % 3 - 1) + D[0] * ((y + n / 3 % 3 - 1) + D[1] * (z + n / 9 - 1));
                l[j] == 0
            });
            if isolated {
                l[i] = 2;
                at.push(i);
            }
        }
        at
    }

    #[test]
    fn multifocal_tumor_keeps_both_foci_and_drops_noise() {
        let mut l = vec![0u8; D.iter().product()];
        let a = ball(&mut l, [14, 14, 12], 6.0, 1);
        let b = ball(&mut l, [48, 46, 34], 5.5, 4);
        let specks = noise(&mut l);
        assert!(specks.len() > 20);
        let before = l.clone();
        let removed = tumor_filter(&mut l, D, &TumorFilter::default());
        assert_eq!(removed, specks.len());
        assert!(specks.iter().all(|&i| l[i] == 0));
        // Both foci intact, labels unchanged.
        let kept = l.iter().filter(|&&v| v != 0).count();
        assert_eq!(kept, a + b);
        assert!(l.iter().zip(&before).all(|(n, o)| *n == 0 || n == o));
    }

    #[test]
    fn dense_prediction_is_left_alone() {
        let mut l = vec![0u8; D.iter().product()];
        ball(&mut l, [30, 30, 20], 8.0, 2);
        l[2 + D[0] * (2 + D[1] * 2)] = 1; // one far speck stretches the bounding box
        let mut dense = vec![0u8; D.iter().product()];
        ball(&mut dense, [30, 30, 20], 8.0, 2);
        let before = dense.clone();
        assert_eq!(tumor_filter(&mut dense, D, &TumorFilter::default()), 0);
        assert_eq!(dense, before);
        // With the far speck the box is sparse: the speck goes, the ball stays.
        assert_eq!(tumor_filter(&mut l, D, &TumorFilter::default()), 1);
        assert_eq!(l, before);
    }

    #[test]
    fn largest_component_and_empty_input() {
        let mut l = vec![0u8; D.iter().product()];
        assert_eq!(apply(PostProcess::TumorFilter, &mut l, D), 0);
        let big = ball(&mut l, [20, 20, 20], 6.0, 2);
        let small = ball(&mut l, [50, 50, 30], 3.0, 2);
        assert_eq!(apply(PostProcess::LargestComponent, &mut l, D), small);
        assert_eq!(l.iter().filter(|&&v| v != 0).count(), big);
        assert_eq!(apply(PostProcess::None, &mut l, D), 0);
    }
}
