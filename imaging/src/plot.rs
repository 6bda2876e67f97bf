//! Small charts as PNG (axes with numbered ticks, lines, dots; titles, axis labels and legends
//! in a built-in 5x7 font) for a person to look at next to the numbers in a report.

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

/// Letters (lower case drawn as upper case), digits and marks in a 5x7 pixel font (one row per
/// u8, 5 low bits, MSB left).
fn glyph7(c: char) -> Option<[u8; 7]> {
    Some(match c.to_ascii_uppercase() {
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [30, 17, 17, 17, 17, 17, 30],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'J' => [7, 2, 2, 2, 2, 18, 12],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'Q' => [14, 17, 17, 17, 21, 18, 13],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 10, 4, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '[' => [14, 8, 8, 8, 8, 8, 14],
        ']' => [14, 2, 2, 2, 2, 2, 14],
        '/' => [1, 2, 2, 4, 8, 8, 16],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        '%' => [25, 26, 2, 4, 8, 11, 19],
        '+' => [0, 4, 4, 31, 4, 4, 0],
        '_' => [0, 0, 0, 0, 0, 0, 31],
        '<' => [2, 4, 8, 16, 8, 4, 2],
        '>' => [8, 4, 2, 1, 2, 4, 8],
        '\'' => [4, 4, 8, 0, 0, 0, 0],
        ' ' => [0; 7],
        _ => return None,
    })
}

/// Width in pixels of `s` in the 5x7 font at `scale`.
pub fn text_width(s: &str, scale: usize) -> usize {
    s.chars().count() * 6 * scale
}

/// Title, axis labels and optional named x ticks of a [`Chart::with_axes`] chart.
#[derive(Debug, Clone, Default)]
pub struct Axes {
    /// Drawn centred above the plot.
    pub title: String,
    /// Drawn centred below the x axis.
    pub x_label: String,
    /// Drawn upwards left of the y axis.
    pub y_label: String,
    /// Named ticks `(x, name)` instead of five numbered ones (categories).
    pub x_ticks: Option<Vec<(f64, String)>>,
}

/// An RGB canvas with a plotting area mapped to data ranges.
#[derive(Debug, Clone)]
pub struct Chart {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
    x: (f64, f64),
    y: (f64, f64),
    /// Margins left, right, top, bottom.
    margin: [usize; 4],
}

impl Chart {
    /// A white canvas with axes and 5 numbered ticks on each.
    pub fn new(width: usize, height: usize, x: (f64, f64), y: (f64, f64)) -> Chart {
        let x = if x.1 > x.0 { x } else { (x.0, x.0 + 1.0) };
        let y = if y.1 > y.0 { y } else { (y.0, y.0 + 1.0) };
        let mut c = Chart { width, height, rgb: vec![255; width * height * 3], x, y, margin: [28; 4] };
        for k in 0..=4 {
            let fx = x.0 + (x.1 - x.0) * k as f64 / 4.0;
            let fy = y.0 + (y.1 - y.0) * k as f64 / 4.0;
            let (px, _) = c.to_px(fx, y.0);
            let (_, py) = c.to_px(x.0, fy);
            c.grid_lines(Some(px), Some(py));
            c.text(px.saturating_sub(6), height - 28 + 5, &tick(fx), [60, 60, 60]);
            c.text(2, py.saturating_sub(2), &tick(fy), [60, 60, 60]);
        }
        c.axes_lines();
        c
    }

    /// A white canvas with a title, axis labels, grid lines and numbered ticks in the 5x7 font
    /// (twice its size), or named x ticks when `axes.x_ticks` is given.
    pub fn with_axes(width: usize, height: usize, x: (f64, f64), y: (f64, f64), axes: &Axes) -> Chart {
        let x = if x.1 > x.0 { x } else { (x.0, x.0 + 1.0) };
        let y = if y.1 > y.0 { y } else { (y.0, y.0 + 1.0) };
        let margin = [96, 24, 84, 72];
        let mut c = Chart { width, height, rgb: vec![255; width * height * 3], x, y, margin };
        let ink = [40, 40, 40];
        for k in 0..=4 {
            let fy = y.0 + (y.1 - y.0) * k as f64 / 4.0;
            let (_, py) = c.to_px(x.0, fy);
            c.grid_lines(None, Some(py));
            let t = tick_label(fy);
            c.text7(margin[0].saturating_sub(text_width(&t, 2) + 6), py.saturating_sub(7), &t, 2, ink);
        }
        let ticks: Vec<(f64, String)> = match &axes.x_ticks {
            Some(t) => t.clone(),
            None => (0..=4).map(|k| x.0 + (x.1 - x.0) * k as f64 / 4.0).map(|v| (v, tick_label(v))).collect(),
        };
        for (v, name) in &ticks {
            let (px, _) = c.to_px(*v, y.0);
            c.grid_lines(Some(px), None);
            let w = text_width(name, 2);
            c.text7(px.saturating_sub(w / 2), height - margin[3] + 8, name, 2, ink);
        }
        c.axes_lines();
        let w = text_width(&axes.title, 2);
        c.text7(width.saturating_sub(w) / 2, 8, &axes.title, 2, [0, 0, 0]);
        let w = text_width(&axes.x_label, 2);
        c.text7(margin[0] + (width - margin[0] - margin[1]).saturating_sub(w) / 2, height - 30, &axes.x_label, 2, ink);
        let h = text_width(&axes.y_label, 2);
        let plot_mid = margin[2] + (height - margin[2] - margin[3]) / 2;
        c.text7_up(8, (plot_mid + h / 2).min(height - 1), &axes.y_label, 2, ink);
        c
    }

    fn grid_lines(&mut self, px: Option<usize>, py: Option<usize>) {
        let [ml, mr, mt, mb] = self.margin;
        let (w, h) = (self.width, self.height);
        if let Some(px) = px {
            self.segment((px, mt), (px, h - mb), [230, 230, 230]);
        }
        if let Some(py) = py {
            self.segment((ml, py), (w - mr, py), [230, 230, 230]);
        }
    }

    fn axes_lines(&mut self) {
        let [ml, mr, mt, mb] = self.margin;
        let (w, h) = (self.width, self.height);
        self.segment((ml, h - mb), (w - mr, h - mb), [0, 0, 0]);
        self.segment((ml, mt), (ml, h - mb), [0, 0, 0]);
    }

    fn to_px(&self, x: f64, y: f64) -> (usize, usize) {
        let (w, h) = (self.width as f64, self.height as f64);
        let [ml, mr, mt, mb] = self.margin.map(|m| m as f64);
        let px = ml + (x - self.x.0) / (self.x.1 - self.x.0) * (w - ml - mr);
        let py = h - mb - (y - self.y.0) / (self.y.1 - self.y.0) * (h - mt - mb);
        (px.clamp(0.0, w - 1.0).round() as usize, py.clamp(0.0, h - 1.0).round() as usize)
    }

    /// Text in the 5x7 font, `scale` pixels per font pixel, top-left at `(x, y)`.
    pub fn text7(&mut self, x: usize, y: usize, s: &str, scale: usize, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let Some(g) = glyph7(ch).or_else(|| glyph7('_')) else { continue };
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits >> (4 - col) & 1 == 1 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.set(x + (6 * k + col) * scale + dx, y + row * scale + dy, c);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Text in the 5x7 font running upwards, its baseline start at `(x, y)` (the bottom).
    fn text7_up(&mut self, x: usize, y: usize, s: &str, scale: usize, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let Some(g) = glyph7(ch).or_else(|| glyph7('_')) else { continue };
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits >> (4 - col) & 1 == 1 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                let along = (6 * k + col) * scale + dy;
                                self.set(x + row * scale + dx, y.saturating_sub(along), c);
                            }
                        }
                    }
                }
            }
        }
    }

    /// A legend between the title and the plot (never over the data), in up to two rows: a
    /// colour swatch and a name per entry.
    pub fn legend(&mut self, entries: &[(&str, [u8; 3])]) {
        let widths: Vec<usize> = entries.iter().map(|(n, _)| 30 + text_width(n, 2) + 18).collect();
        let room = self.width - self.margin[0] - self.margin[1];
        let mut rows: Vec<Vec<usize>> = vec![Vec::new()];
        let mut used = 0;
        for (k, &w) in widths.iter().enumerate() {
            if used + w > room && !rows[rows.len() - 1].is_empty() {
                rows.push(Vec::new());
                used = 0;
            }
            used += w;
            let last = rows.len() - 1;
            rows[last].push(k);
        }
        for (r, row) in rows.iter().enumerate() {
            let total: usize = row.iter().map(|&k| widths[k]).sum();
            let mut x = self.margin[0] + room.saturating_sub(total) / 2;
            let y = 34 + 20 * r;
            for &k in row {
                let (name, c) = entries[k];
                for dy in 3..11 {
                    for dx in 0..24 {
                        self.set(x + dx, y + dy, c);
                    }
                }
                self.text7(x + 30, y, name, 2, [20, 20, 20]);
                x += widths[k];
            }
        }
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

/// A tick value with three significant digits, trailing zeros dropped.
fn tick_label(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    let prec = (2 - v.abs().log10().floor() as i64).clamp(0, 8) as usize;
    let s = format!("{v:.prec$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
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

    #[test]
    fn labelled_charts_draw_title_labels_and_legend() {
        let axes = Axes {
            title: "ECE by uncertainty".into(),
            x_label: "bin".into(),
            y_label: "ECE".into(),
            x_ticks: Some(vec![(1.0, "a".into()), (2.0, "b".into())]),
        };
        let blank = Chart::with_axes(400, 300, (0.0, 3.0), (0.0, 1.0), &Axes::default());
        let mut c = Chart::with_axes(400, 300, (0.0, 3.0), (0.0, 1.0), &axes);
        let ink = |c: &Chart, x0: usize, x1: usize, y0: usize, y1: usize| {
            (y0..y1)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .filter(|&(x, y)| c.rgb[(y * 400 + x) * 3] < 100)
                .count()
        };
        // Title row, y label column and x label row hold ink only when the texts are given.
        assert!(ink(&c, 0, 400, 6, 24) > 100 && ink(&blank, 0, 400, 6, 24) == 0);
        assert!(ink(&c, 0, 30, 84, 228) > 30 && ink(&blank, 0, 30, 84, 228) == 0);
        assert!(ink(&c, 100, 400, 268, 290) > 30 && ink(&blank, 100, 400, 268, 290) == 0);
        // A point maps inside the plot area of the wider margins.
        assert_eq!(c.to_px(0.0, 0.0), (96, 300 - 72));
        assert_eq!(c.to_px(3.0, 1.0), (400 - 24, 84));
        // The legend sits above the plot area.
        c.legend(&[("error", [200, 0, 0])]);
        let red: Vec<usize> =
            (0..300 * 400).filter(|i| c.rgb[i * 3..i * 3 + 3] == [200, 0, 0]).map(|i| i / 400).collect();
        assert!(red.len() >= 160 && red.iter().all(|&y| y < 84), "{}", red.len());
        assert_eq!(tick_label(0.125), "0.125");
        assert_eq!(tick_label(0.003), "0.003");
        assert_eq!(tick_label(0.36), "0.36");
        assert_eq!(tick_label(12.0), "12");
        assert_eq!(text_width("abc", 2), 36);
        assert!(glyph7('q').is_some() && glyph7('Q') == glyph7('q'));
    }
}
