//! A skull-stripped case put back inside a real head: the brain of each sequence placed in a
//! head image with its skull (scaled to the brain's size), for testing skull stripping end to end.

use gmmas_imaging::resample::invert_affine;
use gmmas_imaging::{ImagingError, LabelVolume, Modality, Volume};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Air noise as a share of a sequence's brain intensity (scanners never give zero background).
const AIR_NOISE: f32 = 0.02;

/// Centroid (world mm) and count of the voxels where `inside` holds.
fn centroid(g: &gmmas_imaging::Grid, inside: impl Fn(usize) -> bool) -> ([f64; 3], usize) {
    let [nx, ny, _] = g.dims;
    let (mut sum, mut n) = ([0.0; 3], 0usize);
    for i in (0..g.nvox()).filter(|&i| inside(i)) {
        let w = g.world([(i % nx) as f64, ((i / nx) % ny) as f64, (i / (nx * ny)) as f64]);
        for a in 0..3 {
            sum[a] += w[a];
        }
        n += 1;
    }
    (sum.map(|s| s / n.max(1) as f64), n)
}

/// `case` (skull-stripped sequences on one grid) embedded in `head`: where a sequence is
/// non-zero it is kept; elsewhere the head's scalp and skull (outside `head_mask`, scaled to each
/// sequence's brain intensities) or low air noise. The head is centred on the case's brain and
/// scaled isotropically to the same brain volume. Deterministic for a given `seed`.
pub fn embed_in_head(
    case: &[(Modality, Volume)],
    head: &Volume,
    head_mask: &LabelVolume,
    seed: u64,
) -> Result<Vec<(Modality, Volume)>, ImagingError> {
    let first = &case.first().ok_or_else(|| ImagingError::invalid("case", "no sequences", "one or more"))?.1;
    let g = &first.grid;
    let brain = |i: usize| case.iter().any(|(_, v)| v.data[i] != 0.0);
    let (c_case, n_case) = centroid(g, brain);
    let (c_head, n_head) = centroid(&head_mask.grid, |i| head_mask.data[i] != 0);
    if n_case == 0 || n_head == 0 {
        return Err(ImagingError::invalid("brain", "empty", "a non-empty brain in the case and the head mask"));
    }
    // Head-world = c_head + (case-world - c_case) / s, s matching the brain volumes.
    let s = ((n_case as f64 * g.voxel_ml()) / (n_head as f64 * head_mask.grid.voxel_ml())).cbrt();
    let to_head = invert_affine(&head.grid.affine)?;
    let [nx, ny, _] = g.dims;
    let [hx, hy, hz] = head.grid.dims;
    let head_max = head.data.iter().copied().fold(0f32, f32::max).max(1e-6);
    let mut out = Vec::with_capacity(case.len());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (m, v) in case {
        gmmas_imaging::same_grid(g, &v.grid)?;
        let mut inside: Vec<f32> = v.data.iter().copied().filter(|&x| x != 0.0).collect();
        inside.sort_by(f32::total_cmp);
        let level = inside.get(inside.len() * 9 / 10).copied().unwrap_or(1.0);
        let mut data = v.data.clone();
        for (i, x) in data.iter_mut().enumerate() {
            if *x != 0.0 {
                continue;
            }
            let w = g.world([(i % nx) as f64, ((i / nx) % ny) as f64, (i / (nx * ny)) as f64]);
            let q = [0, 1, 2].map(|a| c_head[a] + (w[a] - c_case[a]) / s);
            let h = [0, 1, 2]
                .map(|r| (to_head[r][0] * q[0] + to_head[r][1] * q[1] + to_head[r][2] * q[2] + to_head[r][3]).round());
            let noise = rng.random::<f32>() * AIR_NOISE * level;
            let inside_head = h.iter().zip([hx, hy, hz]).all(|(&c, n)| c >= 0.0 && c < n as f64);
            *x = if inside_head {
                let j = h[0] as usize + hx * (h[1] as usize + hy * h[2] as usize);
                // Inside the head's brain but outside the case's: dark, like CSF.
                if head_mask.data[j] != 0 { noise } else { noise + head.data[j] / head_max * level }
            } else {
                noise
            };
        }
        out.push((*m, Volume::new(g.clone(), data)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gmmas_imaging::Grid;

    #[test]
    fn brain_is_kept_and_the_head_surrounds_it() {
        let g = Grid::axis_aligned([40, 40, 40], [1.0; 3], [0.0; 3]);
        let ball = |r: f64, c: f64| -> Vec<bool> {
            (0..g.nvox())
                .map(|i| {
                    let p = [(i % 40) as f64 - c, ((i / 40) % 40) as f64 - c, (i / 1600) as f64 - c];
                    (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt() <= r
                })
                .collect()
        };
        let brain = ball(10.0, 20.0);
        let case = vec![(
            Modality::T1,
            Volume::new(g.clone(), brain.iter().map(|&b| f32::from(u8::from(b)) * 50.0).collect()).unwrap(),
        )];
        // Head: a bright shell around a brain ball of radius 12, centred elsewhere.
        let head_brain = ball(12.0, 18.0);
        let head_data: Vec<f32> = ball(17.0, 18.0).iter().map(|&b| if b { 100.0 } else { 0.0 }).collect();
        let head = Volume::new(g.clone(), head_data).unwrap();
        let mask = LabelVolume::new(g.clone(), head_brain.iter().map(|&b| u8::from(b)).collect()).unwrap();
        let out = embed_in_head(&case, &head, &mask, 1).unwrap();
        let v = &out[0].1;
        for (i, &b) in brain.iter().enumerate() {
            if b {
                assert_eq!(v.data[i], 50.0);
            }
        }
        // The head's shell (radius 12 to 17 around its brain) lands 10 to 14.2 mm from the case's
        // centre, scaled by the brains' ratio 10 / 12.
        let at = |x: usize| v.data[x + 40 * (20 + 40 * 20)];
        assert!(at(20 + 13) > 20.0, "{}", at(20 + 13));
        assert!(at(20 + 16) < 5.0, "{}", at(20 + 16));
        assert!(at(0) > 0.0 && at(0) < 5.0, "air is low noise");
        assert!(gmmas_imaging::check_skull_stripped(&[(Modality::T1, v)]).is_err());
        assert_eq!(out, embed_in_head(&case, &head, &mask, 1).unwrap(), "deterministic");
    }
}
