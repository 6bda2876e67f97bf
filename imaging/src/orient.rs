//! Voxel-axis orientation: the permutation and flips that bring a grid to canonical RAS order,
//! and index maps that walk a stored volume in canonical order without copying it.

use serde::{Deserialize, Serialize};

/// How canonical (RAS) axes relate to stored voxel axes: canonical axis `i` is stored axis
/// `perm[i]`, traversed backwards when `flip[i]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orientation {
    pub perm: [usize; 3],
    pub flip: [bool; 3],
}

const PERMS: [[usize; 3]; 6] = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];

impl Orientation {
    /// No reordering.
    pub fn identity() -> Orientation {
        Orientation { perm: [0, 1, 2], flip: [false; 3] }
    }

    /// The nearest axis-aligned orientation of an affine: assigns each world axis (R, A, S) the
    /// voxel axis whose direction is closest to it, maximizing the total alignment.
    pub fn from_affine(a: &[[f64; 4]; 4]) -> Orientation {
        let norms = crate::types::column_norms(a);
        let cos = |world: usize, vox: usize| {
            if norms[vox] > 0.0 { a[world][vox].abs() / norms[vox] } else { 0.0 }
        };
        let mut best = PERMS[0];
        let mut best_score = f64::NEG_INFINITY;
        for p in PERMS {
            let score = cos(0, p[0]) + cos(1, p[1]) + cos(2, p[2]);
            if score > best_score + 1e-12 {
                best_score = score;
                best = p;
            }
        }
        Orientation { perm: best, flip: [a[0][best[0]] < 0.0, a[1][best[1]] < 0.0, a[2][best[2]] < 0.0] }
    }

    /// True when `perm` is a permutation of 0..3.
    pub fn is_valid(&self) -> bool {
        let mut seen = [false; 3];
        for &p in &self.perm {
            if p > 2 || seen[p] {
                return false;
            }
            seen[p] = true;
        }
        true
    }

    /// Dims in canonical order.
    pub fn canonical_dims(&self, dims: [usize; 3]) -> [usize; 3] {
        [dims[self.perm[0]], dims[self.perm[1]], dims[self.perm[2]]]
    }

    /// For each stored axis, the canonical axis it becomes.
    pub fn inverse_perm(&self) -> [usize; 3] {
        let mut inv = [0; 3];
        for (i, &p) in self.perm.iter().enumerate() {
            inv[p] = i;
        }
        inv
    }
}

/// Linear index into a stored x-fastest volume for canonical coordinates `c`:
/// `base + c0*steps[0] + c1*steps[1] + c2*steps[2]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AxisMap {
    pub base: isize,
    pub steps: [isize; 3],
}

impl AxisMap {
    pub fn new(stored_dims: [usize; 3], o: &Orientation) -> AxisMap {
        let strides = [1isize, stored_dims[0] as isize, (stored_dims[0] * stored_dims[1]) as isize];
        let mut base = 0isize;
        let mut steps = [0isize; 3];
        for ((step, &a), &flip) in steps.iter_mut().zip(&o.perm).zip(&o.flip) {
            if flip {
                base += (stored_dims[a] as isize - 1) * strides[a];
                *step = -strides[a];
            } else {
                *step = strides[a];
            }
        }
        AxisMap { base, steps }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brats_lps_affine_flips_x_and_y() {
        let a = [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 239.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        let o = Orientation::from_affine(&a);
        assert_eq!(o.perm, [0, 1, 2]);
        assert_eq!(o.flip, [true, true, false]);
    }

    #[test]
    fn permuted_oblique_affine() {
        // voxel axis 0 -> -A (slightly oblique), axis 1 -> +S, axis 2 -> -R
        let a = [[0.0, 0.1, -2.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.2, 1.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        let o = Orientation::from_affine(&a);
        assert_eq!(o.perm, [2, 0, 1]);
        assert_eq!(o.flip, [true, true, false]);
        assert_eq!(o.inverse_perm(), [1, 2, 0]);
        let m = AxisMap::new([4, 5, 6], &o);
        // canonical (0,0,0) = stored (x=3, y=0, z=5)
        assert_eq!(m.base, 3 + 4 * 5 * 5);
        assert_eq!(m.steps, [-20, -1, 4]);
    }
}
