//! Co-registration on a real case: a sequence moved by a known rigid transform (8° and more,
//! 5 mm and more) is found again within 1° and 1 mm, across contrasts (FLAIR and T2 onto T1ce).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed step fails the test")]

use gmmas_imaging::register::{Rigid, difference, register_rigid};
use gmmas_imaging::resample::compose;
mod common;

use common::case;
use gmmas_imaging::Modality;

#[test]
fn a_known_rigid_motion_is_recovered_within_one_degree_and_one_millimetre() {
    let vols = case();
    let fixed = &vols[Modality::T1ce.index()].1;
    let d = fixed.grid.dims;
    let centre = fixed.grid.world([(d[0] as f64 - 1.0) / 2.0, (d[1] as f64 - 1.0) / 2.0, (d[2] as f64 - 1.0) / 2.0]);
    let motions =
        [(Modality::Flair, [8.0, -4.0, 6.0], [5.0, -4.0, 3.0]), (Modality::T2, [-5.0, 9.0, -3.0], [-6.0, 2.0, 5.0])];
    for (m, deg, mm) in motions {
        let truth = Rigid { rotation: deg.map(|d: f64| d.to_radians()), translation: mm, centre };
        // The patient moved: the series' voxels are the same, its affine says where they now are.
        let mut moving = vols[m.index()].1.clone();
        moving.grid.affine = compose(&truth.affine(), &moving.grid.affine);
        let t0 = std::time::Instant::now();
        let reg = register_rigid(fixed, &moving).unwrap();
        let (angle, dist) = difference(&reg.transform, &truth, &fixed.grid);
        println!(
            "{m}: moved {deg:?}° {mm:?} mm; recovered within {angle:.3}° and {dist:.3} mm (worst corner of the field of view), MI {:.3} -> {:.3}, {} evaluations, {:.1} s",
            reg.mi_start,
            reg.mi_end,
            reg.evaluations,
            t0.elapsed().as_secs_f64()
        );
        assert!(angle < 1.0 && dist < 1.0, "{m}: off by {angle:.3}° / {dist:.3} mm");
    }
}
