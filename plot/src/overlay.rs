//! Overlay pictures of a segmentation on the image: axial, coronal and sagittal slices through
//! the tumor, the image alone, the prediction and (when given) the expert mask side by side.

use crate::PlotError;
use crate::font::{FAMILY, ensure_registered};
use gmmas_imaging::{LabelVolume, Volume};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// BraTS colours: NCR red, ED green, ET yellow.
const NCR: [u8; 3] = [230, 40, 40];
const ED: [u8; 3] = [40, 200, 60];
const ET: [u8; 3] = [250, 220, 30];

fn colour(label: u8) -> Option<[u8; 3]> {
    match label {
        1 => Some(NCR),
        2 => Some(ED),
        3 | 4 => Some(ET),
        _ => None,
    }
}

/// The voxel at the tumor's centre of mass (or the volume centre when there is no tumor).
pub fn tumor_center(l: &LabelVolume) -> [usize; 3] {
    let [nx, ny, _] = l.grid.dims;
    let (mut s, mut n) = ([0f64; 3], 0f64);
    for (i, &v) in l.data.iter().enumerate() {
        if v != 0 {
            s[0] += (i % nx) as f64;
            s[1] += ((i / nx) % ny) as f64;
            s[2] += (i / (nx * ny)) as f64;
            n += 1.0;
        }
    }
    if n == 0.0 {
        return l.grid.dims.map(|d| d / 2);
    }
    [0, 1, 2].map(|a| (s[a] / n).round() as usize)
}

/// Intensity window: the 1st and 99th percentile of non-zero voxels.
fn window(v: &Volume) -> (f32, f32) {
    let mut nz: Vec<f32> = v.data.iter().copied().filter(|x| *x != 0.0).collect();
    if nz.is_empty() {
        return (0.0, 1.0);
    }
    let k = |p: f64| ((nz.len() - 1) as f64 * p) as usize;
    let (lo_i, hi_i) = (k(0.01), k(0.99));
    let lo = *nz.select_nth_unstable_by(lo_i, f32::total_cmp).1;
    let hi = *nz.select_nth_unstable_by(hi_i, f32::total_cmp).1;
    (lo, if hi > lo { hi } else { lo + 1.0 })
}

/// One 2-D view: (width, height, voxel index of each pixel), with the superior / anterior side up.
fn view(dims: [usize; 3], axis: usize, at: usize) -> (usize, usize, Vec<usize>) {
    let [nx, ny, nz] = dims;
    let idx = |x: usize, y: usize, z: usize| x + nx * (y + ny * z);
    match axis {
        // axial: x across, y up
        2 => (nx, ny, (0..ny).rev().flat_map(|y| (0..nx).map(move |x| idx(x, y, at))).collect()),
        // coronal: x across, z up
        1 => (nx, nz, (0..nz).rev().flat_map(|z| (0..nx).map(move |x| idx(x, at, z))).collect()),
        // sagittal: y across, z up
        _ => (ny, nz, (0..nz).rev().flat_map(|z| (0..ny).map(move |y| idx(at, y, z))).collect()),
    }
}

/// Renders rows axial / coronal / sagittal and columns image, prediction, expert (if given)
/// as an RGB picture; returns (width, height, rgb). All volumes must share the grid.
pub fn render(image: &Volume, pred: &LabelVolume, truth: Option<&LabelVolume>) -> (usize, usize, Vec<u8>) {
    let center = tumor_center(truth.unwrap_or(pred));
    let (lo, hi) = window(image);
    let cols = 2 + usize::from(truth.is_some());
    let views: Vec<_> = [2, 1, 0].into_iter().map(|a| view(image.grid.dims, a, center[a])).collect();
    let cell_w = views.iter().map(|v| v.0).max().unwrap_or(1);
    let (width, height) = (cell_w * cols, views.iter().map(|v| v.1).sum::<usize>());
    let mut rgb = vec![0u8; width * height * 3];
    let mut top = 0;
    for (w, h, voxels) in &views {
        for (p, &vi) in voxels.iter().enumerate() {
            let (px, py) = (p % w, p / w);
            let g = (((image.data[vi] - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0) as u8;
            for c in 0..cols {
                let label = match c {
                    0 => 0,
                    1 => pred.data[vi],
                    _ => truth.map_or(0, |t| t.data[vi]),
                };
                let px_rgb = match colour(label) {
                    Some(col) => col.map(|k| ((k as u16 + g as u16) / 2) as u8),
                    None => [g; 3],
                };
                let o = ((top + py) * width + c * cell_w + px) * 3;
                rgb[o..o + 3].copy_from_slice(&px_rgb);
            }
        }
        top += h;
    }
    (width, height, rgb)
}

/// Height of the column-title strip above and the colour-key strip below the slices.
const STRIP: usize = 30;

/// [`render`] as a PNG with a title above each column (`image_name`, prediction, expert) and a
/// key of the label colours below.
pub fn render_png(
    image: &Volume,
    image_name: &str,
    pred: &LabelVolume,
    truth: Option<&LabelVolume>,
) -> Result<Vec<u8>, PlotError> {
    ensure_registered()?;
    let (w, h, slices) = render(image, pred, truth);
    let cols = 2 + usize::from(truth.is_some());
    let width = w.max(420);
    let height = h + 2 * STRIP;
    let mut rgb = vec![255u8; width * height * 3];
    for y in 0..h {
        let o = ((y + STRIP) * width) * 3;
        rgb[o..o + w * 3].copy_from_slice(&slices[y * w * 3..(y + 1) * w * 3]);
    }
    let draw_err = |e: &dyn std::fmt::Display| PlotError::Draw { title: "overlay".into(), reason: e.to_string() };
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width as u32, height as u32)).into_drawing_area();
        let top = TextStyle::from((FAMILY, 15).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
        let names = [image_name, "prediction", "expert"];
        let cell = w / cols;
        for (c, name) in names.iter().take(cols).enumerate() {
            let x = (c * cell + cell / 2) as i32;
            root.draw(&Text::new(*name, (x, (STRIP / 2) as i32), top.clone())).map_err(|e| draw_err(&e))?;
        }
        let key = TextStyle::from((FAMILY, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        let y = (h + STRIP + STRIP / 2) as i32;
        let mut x = 8i32;
        for (name, c) in [("necrotic core", NCR), ("edema", ED), ("enhancing tumour", ET)] {
            let fill = RGBColor(c[0], c[1], c[2]).filled();
            root.draw(&Rectangle::new([(x, y - 6), (x + 12, y + 6)], fill)).map_err(|e| draw_err(&e))?;
            root.draw(&Text::new(name, (x + 18, y), key.clone())).map_err(|e| draw_err(&e))?;
            let (text_w, _) = root.estimate_text_size(name, &key).map_err(|e| draw_err(&e))?;
            x += 18 + text_w as i32 + 24;
        }
        root.present().map_err(|e| draw_err(&e))?;
    }
    crate::encode_rgb(width, height, &rgb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gmmas_imaging::Grid;

    #[test]
    fn slices_go_through_the_tumor_and_colours_show() {
        let grid = Grid::axis_aligned([20, 16, 12], [1.0; 3], [0.0; 3]);
        let image = Volume { grid: grid.clone(), data: (0..grid.nvox()).map(|i| (i % 7) as f32 + 1.0).collect() };
        let mut seg = LabelVolume { grid: grid.clone(), data: vec![0; grid.nvox()] };
        for z in 4..7 {
            for y in 9..12 {
                for x in 13..16 {
                    seg.data[x + 20 * (y + 16 * z)] = 4;
                }
            }
        }
        assert_eq!(tumor_center(&seg), [14, 10, 5]);
        let (w, h, rgb) = render(&image, &seg, Some(&seg));
        assert_eq!((w, h), (3 * 20, 16 + 12 + 12));
        assert_eq!(rgb.len(), w * h * 3);
        // Column 0 is grey everywhere; columns 1 and 2 contain yellow-tinted ET pixels.
        let is_tinted = |p: &[u8]| p[0] != p[1] || p[1] != p[2];
        let px = |x: usize, y: usize| &rgb[(y * w + x) * 3..(y * w + x) * 3 + 3];
        assert!((0..h).all(|y| (0..20).all(|x| !is_tinted(px(x, y)))));
        assert!((0..h).any(|y| (20..40).any(|x| is_tinted(px(x, y)))));
        assert!((0..h).any(|y| (40..60).any(|x| is_tinted(px(x, y)))));
        let (pw, ph, _) = crate::tests::decode(&render_png(&image, "FLAIR", &seg, None).unwrap());
        assert_eq!((pw, ph), (420, 16 + 12 + 12 + 2 * STRIP as u32));
    }
}
