//! Is the input skull-stripped? GMMAS's brain mask is "non-zero in any sequence", so a head with
//! its skull, or a volume normalised without a mask, must be caught before it is analysed.

use crate::error::ImagingError;
use crate::types::{Modality, Volume};

/// Share of the voxels on the six faces of the field of view that may be non-zero before an
/// input counts as not skull-stripped. Stripped BraTS volumes have none; a brain cut by the
/// field of view leaves a patch on one or two faces; an unmasked head's air noise, its neck, or a
/// z-scored background covers most of them.
pub const MAX_EDGE_NONZERO: f64 = 0.3;

/// Share of non-zero voxels on the faces of `v`'s field of view (0..=1).
pub fn edge_nonzero_fraction(v: &Volume) -> f64 {
    let [nx, ny, nz] = v.grid.dims;
    let at = |x: usize, y: usize, z: usize| v.data[x + nx * (y + ny * z)];
    let (mut nonzero, mut total) = (0usize, 0usize);
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let edge = x == 0 || y == 0 || z == 0 || x + 1 == nx || y + 1 == ny || z + 1 == nz;
                if !edge {
                    continue;
                }
                total += 1;
                nonzero += usize::from(at(x, y, z) != 0.0);
            }
        }
    }
    nonzero as f64 / total.max(1) as f64
}

/// Refuses inputs whose background is not zero, naming the sequence, the measured share and what
/// GMMAS expects.
pub fn check_skull_stripped(inputs: &[(Modality, &Volume)]) -> Result<(), ImagingError> {
    for (m, v) in inputs {
        let f = edge_nonzero_fraction(v);
        if f > MAX_EDGE_NONZERO {
            return Err(ImagingError::NotSkullStripped { modality: m.to_string(), edge_percent: 100.0 * f });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Grid;

    fn vol(f: impl Fn(usize, usize, usize) -> f32) -> Volume {
        let g = Grid::axis_aligned([20, 24, 16], [1.0; 3], [0.0; 3]);
        let mut data = Vec::new();
        for z in 0..16 {
            for y in 0..24 {
                for x in 0..20 {
                    data.push(f(x, y, z));
                }
            }
        }
        Volume::new(g, data).unwrap()
    }

    #[test]
    fn stripped_brains_pass_heads_and_normalised_volumes_do_not() {
        let ball = |x: usize, y: usize, z: usize| {
            let d = (x as f32 - 10.0).powi(2) + (y as f32 - 12.0).powi(2) + (z as f32 - 8.0).powi(2);
            if d < 49.0 { 100.0 } else { 0.0 }
        };
        assert!(check_skull_stripped(&[(Modality::T1, &vol(ball))]).is_ok());
        // A brain cut by the bottom of the field of view still passes.
        let cut = |x: usize, y: usize, z: usize| {
            if z < 10 && (4..16).contains(&x) && (4..20).contains(&y) { 1.0 } else { 0.0 }
        };
        assert!(edge_nonzero_fraction(&vol(cut)) < MAX_EDGE_NONZERO);
        assert!(check_skull_stripped(&[(Modality::T1, &vol(cut))]).is_ok());
        // Air noise everywhere (an unmasked head), and a z-scored background.
        let noisy = vol(|x, y, z| ball(x, y, z) + ((x * 7 + y * 13 + z * 5) % 4) as f32 + 1.0);
        let e = check_skull_stripped(&[(Modality::T1, &vol(ball)), (Modality::Flair, &noisy)]).unwrap_err().to_string();
        assert!(e.contains("flair") && e.contains("100.0%") && e.contains("skull-stripped"), "{e}");
        let zscored = vol(|x, y, z| ball(x, y, z) / 50.0 - 0.7);
        assert!(check_skull_stripped(&[(Modality::T2, &zscored)]).is_err());
    }
}
