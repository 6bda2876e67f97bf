//! Tumour sub-region volumes from a BraTS-style segmentation.
//! Labels: 1 necrotic/non-enhancing core (NCR), 2 edema (ED), 4 enhancing tumour (ET; 3 counts as ET).

use crate::types::LabelVolume;
pub use gmmas_contracts::RegionVolumes;

/// Counts labels and converts to ml with the grid's voxel volume (|det| of the affine / 1000).
/// Labels other than 1, 2, 3, 4 are ignored.
pub fn region_stats(l: &LabelVolume) -> RegionVolumes {
    let mut counts = [0u64; 256];
    for &v in &l.data {
        counts[v as usize] += 1;
    }
    let ml = l.grid.voxel_ml();
    let ncr = counts[1] as f64 * ml;
    let ed = counts[2] as f64 * ml;
    let et = (counts[3] + counts[4]) as f64 * ml;
    let wt = ncr + ed + et;
    let frac = |x: f64| if wt > 0.0 { x / wt } else { 0.0 };
    RegionVolumes {
        ncr_ml: ncr,
        ed_ml: ed,
        et_ml: et,
        wt_ml: wt,
        tc_ml: ncr + et,
        ncr_fraction: frac(ncr),
        ed_fraction: frac(ed),
        et_fraction: frac(et),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Grid;

    #[test]
    fn hand_computed_volumes() {
        // 2 x 1.5 x 1 mm voxels = 3 mm^3 = 0.003 ml; flipped x axis must not change the volume.
        let mut g = Grid::axis_aligned([4, 3, 2], [2.0, 1.5, 1.0], [0.0; 3]);
        g.affine[0][0] = -2.0;
        let mut data = vec![0u8; 24];
        data[0] = 1;
        data[1] = 1; // 2 NCR
        data[2..7].fill(2); // 5 ED
        data[10] = 4;
        data[11] = 3;
        data[12] = 4; // 3 ET (one as label 3)
        data[20] = 7; // ignored
        let s = region_stats(&LabelVolume::new(g, data).unwrap());
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(s.ncr_ml, 0.006), "{s:?}");
        assert!(close(s.ed_ml, 0.015));
        assert!(close(s.et_ml, 0.009));
        assert!(close(s.wt_ml, 0.030));
        assert!(close(s.tc_ml, 0.015));
        assert!(close(s.ncr_fraction, 0.2));
        assert!(close(s.ed_fraction, 0.5));
        assert!(close(s.et_fraction, 0.3));
    }

    #[test]
    fn empty_tumour_has_zero_fractions() {
        let g = Grid::axis_aligned([2, 2, 2], [1.0; 3], [0.0; 3]);
        let s = region_stats(&LabelVolume::new(g, vec![0; 8]).unwrap());
        assert_eq!(s, RegionVolumes::default());
    }
}
