//! Volume geometry from the DICOM image-plane tags: slice order, spacing and the voxel → world
//! affine (DICOM patient LPS turned into NIfTI RAS), with the checks that refuse what is not one volume.

use serde::Serialize;

/// Image-plane tags of one slice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plane {
    /// ImagePositionPatient: centre of the first transmitted pixel, LPS mm.
    pub position: [f64; 3],
    /// ImageOrientationPatient: row direction (along a row, increasing column) then column
    /// direction (down a column, increasing row), LPS unit vectors.
    pub orientation: [f64; 6],
    /// PixelSpacing: distance between rows, then between columns (mm).
    pub spacing: [f64; 2],
}

/// A stack of slices as one volume.
#[derive(Clone, Debug, PartialEq)]
pub struct Stack {
    /// Slice indices (into the input) in the order of the volume's third axis.
    pub order: Vec<usize>,
    /// Voxel (column, row, slice) → RAS mm.
    pub affine: [[f64; 4]; 4],
    /// Voxel sizes: column spacing, row spacing, slice spacing (mm).
    pub pixdim: [f64; 3],
    /// Which anatomical plane the slices lie in.
    pub plane: PlaneKind,
}

/// The acquisition plane, from the slice normal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlaneKind {
    Axial,
    Coronal,
    Sagittal,
    Oblique,
}

/// Largest angle between the slice normal and the line through the slice centres before a series
/// counts as gantry-tilted (degrees).
const MAX_TILT_DEG: f64 = 0.1;
/// Relative spread of slice spacings still taken as uniform.
const SPACING_TOLERANCE: f64 = 0.01;

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

/// The plane a slice normal (any frame with z head–foot) belongs to: within 10° of an axis it is
/// that axis' plane, otherwise oblique.
pub fn plane_kind(normal: [f64; 3]) -> PlaneKind {
    let n = norm(normal);
    let cos_limit = 10f64.to_radians().cos();
    let c = [normal[0].abs() / n, normal[1].abs() / n, normal[2].abs() / n];
    if c[2] >= cos_limit {
        PlaneKind::Axial
    } else if c[1] >= cos_limit {
        PlaneKind::Coronal
    } else if c[0] >= cos_limit {
        PlaneKind::Sagittal
    } else {
        PlaneKind::Oblique
    }
}

/// Orders the slices along their normal and builds the volume's affine. Errors are sentences
/// saying what is wrong with the series as a whole.
pub fn stack(planes: &[Plane]) -> Result<Stack, String> {
    let first = planes.first().ok_or("the series has no image slices")?;
    if planes.len() < 2 {
        return Err("the series has a single slice: expected a volume of at least 2 slices".into());
    }
    for p in planes {
        let same = p.orientation.iter().zip(&first.orientation).all(|(a, b)| (a - b).abs() < 1e-4);
        if !same {
            return Err(format!(
                "slices differ in ImageOrientationPatient ({:?} against {:?}): expected one orientation per series \
                 (a mixed or localizer series)",
                p.orientation, first.orientation
            ));
        }
        let same = p.spacing.iter().zip(&first.spacing).all(|(a, b)| (a - b).abs() < 1e-4);
        if !same {
            return Err(format!(
                "slices differ in PixelSpacing ({:?} against {:?}): expected one spacing per series",
                p.spacing, first.spacing
            ));
        }
    }
    let o = first.orientation;
    let row = [o[0], o[1], o[2]];
    let col = [o[3], o[4], o[5]];
    if (norm(row) - 1.0).abs() > 1e-3 || (norm(col) - 1.0).abs() > 1e-3 || dot(row, col).abs() > 1e-3 {
        return Err(format!("ImageOrientationPatient {o:?}: expected two orthogonal unit vectors"));
    }
    if first.spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(format!("PixelSpacing {:?}: expected two positive numbers", first.spacing));
    }
    let normal = cross(row, col);
    let mut along: Vec<(f64, usize)> = planes.iter().enumerate().map(|(i, p)| (dot(p.position, normal), i)).collect();
    along.sort_by(|a, b| a.0.total_cmp(&b.0));
    let gaps: Vec<f64> = along.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let min_gap = gaps.iter().copied().fold(f64::INFINITY, f64::min);
    let max_gap = gaps.iter().copied().fold(0.0, f64::max);
    if min_gap < 1e-3 {
        let dups = gaps.iter().filter(|g| **g < 1e-3).count();
        return Err(format!(
            "{dups} slice position(s) occur twice: expected one slice per position (two acquisitions or \
             echoes mixed in one series)"
        ));
    }
    let mean_gap = (along[along.len() - 1].0 - along[0].0) / (along.len() - 1) as f64;
    if max_gap - min_gap > SPACING_TOLERANCE * mean_gap + 1e-3 {
        return Err(format!(
            "slice spacing is not uniform (from {min_gap:.3} to {max_gap:.3} mm): expected equal steps \
             (missing slices?)"
        ));
    }
    let p0 = planes[along[0].1].position;
    let pn = planes[along[along.len() - 1].1].position;
    let step = {
        let d = sub(pn, p0);
        let n = (along.len() - 1) as f64;
        [d[0] / n, d[1] / n, d[2] / n]
    };
    let cos_tilt = dot(step, normal) / norm(step);
    let tilt = cos_tilt.clamp(-1.0, 1.0).acos().to_degrees();
    if tilt > MAX_TILT_DEG {
        return Err(format!(
            "the slices are sheared by {tilt:.2}° against their normal (gantry tilt): not supported; \
             expected slice positions along the slice normal (reconstruct without tilt)"
        ));
    }
    // LPS affine: columns are the row direction × column spacing, the column direction × row
    // spacing, the step between slices, and the first position; RAS negates x and y.
    let (dr, dc) = (first.spacing[0], first.spacing[1]);
    let cols = [[row[0] * dc, row[1] * dc, row[2] * dc], [col[0] * dr, col[1] * dr, col[2] * dr], step, p0];
    let mut affine = [[0.0; 4]; 4];
    for (j, c) in cols.iter().enumerate() {
        for i in 0..3 {
            let sign = if i < 2 { -1.0 } else { 1.0 };
            affine[i][j] = sign * c[i];
        }
    }
    affine[3][3] = 1.0;
    Ok(Stack {
        order: along.iter().map(|(_, i)| *i).collect(),
        affine,
        pixdim: [dc, dr, norm(step)],
        plane: plane_kind(normal),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axial(z: f64) -> Plane {
        Plane { position: [-100.0, -120.0, z], orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], spacing: [0.5, 0.75] }
    }

    #[test]
    fn axial_slices_are_sorted_and_the_affine_is_ras() {
        let planes = [axial(4.0), axial(0.0), axial(2.0)];
        let s = stack(&planes).unwrap();
        assert_eq!(s.order, vec![1, 2, 0]);
        assert_eq!(s.plane, PlaneKind::Axial);
        assert_eq!(s.pixdim, [0.75, 0.5, 2.0]);
        // Column index runs to patient left (LPS +x), which is RAS -x.
        assert_eq!(s.affine[0], [-0.75, 0.0, 0.0, 100.0]);
        assert_eq!(s.affine[1], [0.0, -0.5, 0.0, 120.0]);
        assert_eq!(s.affine[2], [0.0, 0.0, 2.0, 0.0]);
    }

    #[test]
    fn refuses_what_is_not_one_volume() {
        assert!(stack(&[axial(0.0)]).unwrap_err().contains("single slice"));
        assert!(stack(&[axial(0.0), axial(0.0), axial(2.0)]).unwrap_err().contains("occur twice"));
        assert!(stack(&[axial(0.0), axial(2.0), axial(6.0)]).unwrap_err().contains("not uniform"));
        let mut sag = axial(2.0);
        sag.orientation = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0];
        assert!(stack(&[axial(0.0), sag]).unwrap_err().contains("ImageOrientationPatient"));
        // Gantry tilt: positions step along y as well as z.
        let tilted: Vec<Plane> = (0..4)
            .map(|k| {
                let mut p = axial(2.0 * k as f64);
                p.position[1] += 0.3 * k as f64;
                p
            })
            .collect();
        assert!(stack(&tilted).unwrap_err().contains("gantry tilt"));
    }

    #[test]
    fn planes_are_named_from_the_normal() {
        assert_eq!(plane_kind([0.0, 0.0, 1.0]), PlaneKind::Axial);
        assert_eq!(plane_kind([1.0, 0.0, 0.0]), PlaneKind::Sagittal);
        assert_eq!(plane_kind([0.0, -1.0, 0.0]), PlaneKind::Coronal);
        assert_eq!(plane_kind([0.0, 0.5, 0.866]), PlaneKind::Oblique);
    }
}
