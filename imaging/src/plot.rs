//! Small charts as PNG (axes with numbered ticks, lines, dots) for reliability curves and
//! training curves; deliberately simple, for a person to look at next to the numbers.

use crate::png;

/// Digits and a few marks in a 3x5 pixel font (one row per u8, 3 low bits, MSB left).
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        _ => return None,
    })
}

/// An RGB canvas with a plotting area mapped to data ranges.
#[derive(Debug, Clone)]
pub struct Chart {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
    x: (f64, f64),
    y: (f64, f64),
    margin: usize,
}

impl Chart {
    /// A white canvas with axes and 5 numbered ticks on each.
    pub fn new(width: usize, height: usize, x: (f64, f64), y: (f64, f64)) -> Chart {
        let x = if x.1 > x.0 { x } else { (x.0, x.0 + 1.0) };
        let y = if y.1 > y.0 { y } else { (y.0, y.0 + 1.0) };
        let mut c = Chart { width, height, rgb: vec![255; width * height * 3], x, y, margin: 28 };
        for k in 0..=4 {
            let fx = x.0 + (x.1 - x.0) * k as f64 / 4.0;
            let fy = y.0 + (y.1 - y.0) * k as f64 / 4.0;
            let (px, _) = c.to_px(fx, y.0);
            let (_, py) = c.to_px(x.0, fy);
            c.segment((px, c.margin), (px, height - c.margin), [230, 230, 230]);
            c.segment((c.margin, py), (width - c.margin, py), [230, 230, 230]);
            c.text(px.saturating_sub(6), height - c.margin + 5, &tick(fx), [60, 60, 60]);
            c.text(2, py.saturating_sub(2), &tick(fy), [60, 60, 60]);
        }
        let (m, w, h) = (c.margin, width, height);
        c.segment((m, h - m), (w - m, h - m), [0, 0, 0]);
        c.segment((m, m), (m, h - m), [0, 0, 0]);
        c
    }

    fn to_px(&self, x: f64, y: f64) -> (usize, usize) {
        let (w, h, m) = (self.width as f64, self.height as f64, self.margin as f64);
        let px = m + (x - self.x.0) / (self.x.1 - self.x.0) * (w - 2.0 * m);
        let py = h - m - (y - self.y.0) / (self.y.1 - self.y.0) * (h - 2.0 * m);
        (px.clamp(0.0, w - 1.0).round() as usize, py.clamp(0.0, h - 1.0).round() as usize)
    }

    fn set(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.width && y < self.height {
            let o = (y * self.width + x) * 3;
            self.rgb[o..o + 3].copy_from_slice(&c);
        }
    }

    fn segment(&mut self, a: (usize, usize), b: (usize, usize), c: [u8; 3]) {
        let steps = a.0.abs_diff(b.0).max(a.1.abs_diff(b.1)).max(1);
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            let x = a.0 as f64 + (b.0 as f64 - a.0 as f64) * t;
            let y = a.1 as f64 + (b.1 as f64 - a.1 as f64) * t;
            self.set(x.round() as usize, y.round() as usize, c);
        }
    }

    fn text(&mut self, x: usize, y: usize, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let Some(g) = glyph(ch) else { continue };
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits >> (2 - col) & 1 == 1 {
                        self.set(x + 4 * k + col, y + row, c);
                    }
                }
            }
        }
    }

    /// A polyline through data points.
    pub fn line(&mut self, points: &[(f64, f64)], c: [u8; 3]) {
        for w in points.windows(2) {
            let (a, b) = (self.to_px(w[0].0, w[0].1), self.to_px(w[1].0, w[1].1));
            self.segment(a, b, c);
            self.segment((a.0, a.1 + 1), (b.0, b.1 + 1), c);
        }
    }

    /// Filled dots of `radius` pixels at data points.
    pub fn dots(&mut self, points: &[(f64, f64)], radius: usize, c: [u8; 3]) {
        let r = radius as isize;
        for &(x, y) in points {
            let (px, py) = self.to_px(x, y);
            for dy in -r..=r {
                for dx in -r..=r {
                    if dx * dx + dy * dy <= r * r {
                        self.set((px as isize + dx) as usize, (py as isize + dy) as usize, c);
                    }
                }
            }
        }
    }

    /// The chart as PNG bytes.
    pub fn to_png(&self) -> Vec<u8> {
        png::encode_rgb(self.width, self.height, &self.rgb)
    }
}

fn tick(v: f64) -> String {
    if v.abs() >= 100.0 || (v.fract() == 0.0 && v.abs() >= 1.0) { format!("{v:.0}") } else { format!("{v:.2}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_lines_and_dots_inside_the_axes() {
        let mut c = Chart::new(200, 150, (0.0, 1.0), (0.0, 1.0));
        c.line(&[(0.0, 0.0), (1.0, 1.0)], [0, 0, 255]);
        c.dots(&[(0.5, 0.25)], 2, [255, 0, 0]);
        let blue = c.rgb.chunks(3).filter(|p| p == &[0, 0, 255]).count();
        let red = c.rgb.chunks(3).filter(|p| p == &[255, 0, 0]).count();
        assert!(blue > 150, "{blue}");
        assert!(red >= 9, "{red}");
        // The dot sits where (0.5, 0.25) maps: x midway, y three quarters down the plot area.
        let (px, py) = c.to_px(0.5, 0.25);
        assert_eq!((px, py), (100, (150.0 - 28.0 - (150.0 - 56.0) * 0.25_f64).round() as usize));
        assert_eq!(&c.rgb[(py * 200 + px) * 3..(py * 200 + px) * 3 + 3], &[255, 0, 0]);
        assert_eq!(&c.to_png()[1..4], b"PNG");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(20.0), "20");
    }
}
