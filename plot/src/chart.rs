//! A line-and-dot chart described as data (title, axis titles, ranges, named series) and drawn
//! by plotters into an RGB buffer, then encoded as PNG.

use crate::font::{FAMILY, ensure_registered};
use crate::{PlotError, encode_rgb};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Colours shared by every chart so that the same thing looks the same across reports.
pub const BLUE: [u8; 3] = [31, 119, 180];
pub const RED: [u8; 3] = [214, 39, 40];
pub const GREEN: [u8; 3] = [44, 160, 44];
pub const ORANGE: [u8; 3] = [255, 127, 14];
pub const GREY: [u8; 3] = [150, 150, 150];
pub const BLACK: [u8; 3] = [0, 0, 0];

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// A polyline through the points.
    Line,
    /// A filled dot at each point.
    Dots,
    /// A polyline with a dot at each point.
    LineDots,
    /// A dashed polyline (references such as the diagonal of perfect calibration).
    Dashed,
}

/// The corner of the plotting area the legend sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corner {
    UpperLeft,
    UpperRight,
    LowerLeft,
    LowerRight,
}

#[derive(Debug, Clone)]
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    colour: [u8; 3],
    mark: Mark,
}

/// A chart: title, axis titles, data ranges and series; [`Figure::to_png`] draws it.
#[derive(Debug, Clone)]
pub struct Figure {
    title: String,
    x_label: String,
    y_label: String,
    x: Option<(f64, f64)>,
    y: Option<(f64, f64)>,
    size: (u32, u32),
    categories: Option<Vec<(f64, String)>>,
    legend: Corner,
    series: Vec<Series>,
}

impl Figure {
    /// An empty 720x480 chart; ranges follow the data unless set.
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Figure {
        Figure {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x: None,
            y: None,
            size: (720, 480),
            categories: None,
            legend: Corner::UpperRight,
            series: Vec::new(),
        }
    }

    /// The picture size in pixels.
    pub fn size(mut self, width: u32, height: u32) -> Figure {
        self.size = (width, height);
        self
    }

    /// The x range shown.
    pub fn x_range(mut self, lo: f64, hi: f64) -> Figure {
        self.x = Some((lo, hi));
        self
    }

    /// The y range shown.
    pub fn y_range(mut self, lo: f64, hi: f64) -> Figure {
        self.y = Some((lo, hi));
        self
    }

    /// Named x positions (categories) in place of numbered ticks.
    pub fn categories(mut self, ticks: Vec<(f64, String)>) -> Figure {
        self.categories = Some(ticks);
        self
    }

    /// Where the legend goes (upper right by default).
    pub fn legend_at(mut self, corner: Corner) -> Figure {
        self.legend = corner;
        self
    }

    /// Adds a series; an empty `name` leaves it out of the legend.
    pub fn add(&mut self, name: &str, points: &[(f64, f64)], colour: [u8; 3], mark: Mark) -> &mut Figure {
        self.series.push(Series { name: name.to_string(), points: points.to_vec(), colour, mark });
        self
    }

    /// Data range along one axis: the set one, else the data's, padded by 5 % (never empty).
    fn range(&self, set: Option<(f64, f64)>, pick: fn(&(f64, f64)) -> f64) -> (f64, f64) {
        if let Some(r) = set {
            return r;
        }
        let vals = self.series.iter().flat_map(|s| s.points.iter().map(pick)).filter(|v| v.is_finite());
        let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        if !lo.is_finite() {
            return (0.0, 1.0);
        }
        let pad = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1.0) * 0.05 };
        (lo - pad, hi + pad)
    }

    /// Draws the chart and encodes it as PNG.
    pub fn to_png(&self) -> Result<Vec<u8>, PlotError> {
        ensure_registered()?;
        let (w, h) = self.size;
        let mut rgb = vec![255u8; w as usize * h as usize * 3];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            self.draw(&root).map_err(|reason| PlotError::Draw { title: self.title.clone(), reason })?;
            root.present().map_err(|e| PlotError::Draw { title: self.title.clone(), reason: e.to_string() })?;
        }
        encode_rgb(w as usize, h as usize, &rgb)
    }

    // Long on purpose: plotters' drawing sequence (canvas, mesh, category ticks, series, legend) on one chart context.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (x0, x1) = self.range(self.x, |p| p.0);
        let (y0, y1) = self.range(self.y, |p| p.1);
        if !(x1 > x0 && y1 > y0) {
            return Err(format!("empty range x {x0}..{x1}, y {y0}..{y1}"));
        }
        let x_area = if self.categories.is_some() { 56 } else { 50 };
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FAMILY, 20))
            .margin(14)
            .x_label_area_size(x_area)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(&e))?;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(215, 215, 215))
            .y_label_formatter(&|v| tick(*v))
            .x_label_formatter(&|v| tick(*v));
        if self.categories.is_some() {
            mesh.x_labels(0).disable_x_mesh();
        }
        mesh.draw().map_err(|e| err(&e))?;
        if let Some(ticks) = &self.categories {
            let style = TextStyle::from((FAMILY, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
            for (x, name) in ticks {
                let (px, py) = chart.backend_coord(&(*x, y0));
                root.draw(&Text::new(name.as_str(), (px, py + 8), style.clone())).map_err(|e| err(&e))?;
            }
        }
        let mut any_named = false;
        for s in &self.series {
            let c = RGBColor(s.colour[0], s.colour[1], s.colour[2]);
            let line = c.stroke_width(2);
            let pts = s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite());
            let anno = match s.mark {
                Mark::Line | Mark::LineDots => {
                    chart.draw_series(LineSeries::new(pts.clone(), line)).map_err(|e| err(&e))?
                }
                Mark::Dashed => {
                    chart.draw_series(DashedLineSeries::new(pts.clone(), 6, 4, line)).map_err(|e| err(&e))?
                }
                Mark::Dots => {
                    chart.draw_series(pts.clone().map(|p| Circle::new(p, 4, c.filled()))).map_err(|e| err(&e))?
                }
            };
            if !s.name.is_empty() {
                any_named = true;
                let anno = anno.label(s.name.as_str());
                // The legend's sample of the series: a short line, a dot, or both.
                match s.mark {
                    Mark::Dots => anno.legend(move |(x, y)| Circle::new((x + 10, y), 4, c.filled())),
                    Mark::LineDots => anno.legend(move |(x, y)| {
                        EmptyElement::at((x, y))
                            + PathElement::new(vec![(0, 0), (20, 0)], c.stroke_width(2))
                            + Circle::new((10, 0), 4, c.filled())
                    }),
                    Mark::Line | Mark::Dashed => {
                        anno.legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)))
                    }
                };
            }
            if s.mark == Mark::LineDots {
                chart.draw_series(pts.map(|p| Circle::new(p, 4, c.filled()))).map_err(|e| err(&e))?;
            }
        }
        if any_named {
            let at = match self.legend {
                Corner::UpperLeft => SeriesLabelPosition::UpperLeft,
                Corner::UpperRight => SeriesLabelPosition::UpperRight,
                Corner::LowerLeft => SeriesLabelPosition::LowerLeft,
                Corner::LowerRight => SeriesLabelPosition::LowerRight,
            };
            chart
                .configure_series_labels()
                .position(at)
                .label_font((FAMILY, 14))
                .background_style(WHITE.mix(0.9))
                .border_style(RGBColor(120, 120, 120))
                .draw()
                .map_err(|e| err(&e))?;
        }
        Ok(())
    }
}

/// A tick value with up to three significant digits, trailing zeros dropped.
fn tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = (2 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::decode;

    fn pixel(rgb: &[u8], w: u32, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * w + x) * 3) as usize;
        [rgb[i], rgb[i + 1], rgb[i + 2]]
    }

    #[test]
    fn ticks_keep_three_significant_digits() {
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(1.0), "1");
        assert_eq!(tick(1234.0), "1234");
        assert_eq!(tick(0.001234), "0.00123");
    }

    #[test]
    fn a_chart_draws_its_series_in_their_colours_and_text_in_black() {
        let mut f = Figure::new("Reliability", "mean predicted probability", "observed rate")
            .size(400, 300)
            .x_range(0.0, 1.0)
            .y_range(0.0, 1.0);
        f.add("perfect", &[(0.0, 0.0), (1.0, 1.0)], GREY, Mark::Dashed);
        f.add("model", &[(0.1, 0.2), (0.5, 0.4), (0.9, 0.95)], RED, Mark::LineDots);
        let (w, h, rgb) = decode(&f.to_png().unwrap());
        assert_eq!((w, h), (400, 300));
        let count = |c: [u8; 3]| {
            (0..h).flat_map(|y| (0..w).map(move |x| (x, y))).filter(|&(x, y)| pixel(&rgb, w, x, y) == c).count()
        };
        assert!(count(RED) > 100, "the red series is drawn");
        let dark = rgb.chunks(3).filter(|p| p.iter().all(|&v| v < 60)).count();
        assert!(dark > 500, "title, tick labels and axis titles are drawn ({dark} dark pixels)");
    }

    #[test]
    fn categories_and_ranges_from_data_draw() {
        let mut f = Figure::new("By input", "input", "score")
            .categories(vec![(1.0, "full".into()), (2.0, "no FLAIR".into())])
            .x_range(0.5, 2.5);
        f.add("one case", &[(1.0, 0.2), (2.0, 0.3)], BLUE, Mark::Dots);
        assert!(f.to_png().is_ok());
    }

    #[test]
    fn an_empty_range_is_an_error_that_names_the_chart() {
        let f = Figure::new("Flat", "x", "y").x_range(1.0, 1.0);
        let e = f.to_png().unwrap_err().to_string();
        assert!(e.contains("\"Flat\"") && e.contains("empty range"), "{e}");
    }
}

#[cfg(test)]
mod look {
    use super::*;

    /// Writes sample charts to `GMMAS_PLOT_SAMPLES` (when set) for a person to look at.
    #[test]
    fn sample_charts_for_review() {
        let Some(dir) = std::env::var_os("GMMAS_PLOT_SAMPLES") else { return };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = Figure::new("Training curves", "epoch", "loss / Dice").size(640, 420).x_range(1.0, 5.0);
        let loss: Vec<(f64, f64)> = (1..=5).map(|e| (f64::from(e), 1.6 / f64::from(e))).collect();
        let dice: Vec<(f64, f64)> = (1..=5).map(|e| (f64::from(e), 0.15 * f64::from(e))).collect();
        f.add("total loss", &loss, RED, Mark::Line);
        f.add("validation WT Dice", &dice, BLUE, Mark::Dots);
        std::fs::write(dir.join("curves.png"), f.to_png().unwrap()).unwrap();
        let mut g = Figure::new("Case-level uncertainty by input (5 passes)", "input", "mean voxel entropy in brain")
            .size(760, 480)
            .x_range(0.5, 3.5)
            .y_range(0.0, 0.2)
            .categories(vec![(1.0, "full".into()), (2.0, "no-flair".into()), (3.0, "noise".into())]);
        g.add("one case", &[(0.9, 0.05), (1.1, 0.06), (1.9, 0.1), (2.1, 0.12), (3.0, 0.17)], BLUE, Mark::Dots);
        g.add("mean", &[(0.75, 0.055), (1.25, 0.055)], RED, Mark::Line);
        std::fs::write(dir.join("categories.png"), g.to_png().unwrap()).unwrap();
    }
}
