//! Line charts as SVG, for the LR finder and `wgpu-optim schedule --plot`.

use crate::error::{Error, Result};
use plotters::prelude::*;

/// One line of a chart.
pub(crate) struct Series<'a> {
    pub(crate) label: &'a str,
    pub(crate) points: Vec<(f64, f64)>,
}

/// A point to mark and label.
pub(crate) struct Marker<'a> {
    pub(crate) label: &'a str,
    pub(crate) at: (f64, f64),
}

/// Everything one chart shows.
pub(crate) struct Chart<'a> {
    pub(crate) title: &'a str,
    pub(crate) x_label: &'a str,
    pub(crate) y_label: &'a str,
    pub(crate) log_x: bool,
    pub(crate) series: Vec<Series<'a>>,
    pub(crate) markers: Vec<Marker<'a>>,
}

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::Input(format!("cannot draw the plot: {e}"))
}

/// The range of `values` with a little room, never empty.
fn span(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return if log { (1e-8, 1.0) } else { (0.0, 1.0) };
    }
    if log {
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else {
            (lo / 10.0, hi * 10.0)
        };
        (lo, hi)
    } else {
        let pad = if hi > lo {
            (hi - lo) * 0.05
        } else {
            lo.abs().max(1.0) * 0.1
        };
        (lo - pad, hi + pad)
    }
}

impl Chart<'_> {
    /// Renders the chart as an SVG document.
    pub(crate) fn svg(&self) -> Result<String> {
        const COLORS: [RGBColor; 4] = [BLUE, RED, GREEN, MAGENTA];
        const MARKER_COLORS: [RGBColor; 3] = [RED, RGBColor(230, 140, 0), BLACK];
        let xs = || {
            self.series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0))
        };
        let ys = || {
            self.series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1))
        };
        let (x0, x1) = span(xs(), self.log_x);
        let (y0, y1) = span(ys(), false);
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, (900, 540)).into_drawing_area();
            root.fill(&WHITE).map_err(plot_error)?;
            let mut builder = ChartBuilder::on(&root);
            builder
                .caption(self.title, ("sans-serif", 22))
                .margin(14)
                .x_label_area_size(44)
                .y_label_area_size(72);
            macro_rules! draw {
                ($chart:expr) => {{
                    let mut chart = $chart;
                    chart
                        .configure_mesh()
                        .x_desc(self.x_label)
                        .y_desc(self.y_label)
                        .draw()
                        .map_err(plot_error)?;
                    for (i, s) in self.series.iter().enumerate() {
                        let color = COLORS[i % COLORS.len()];
                        let points = s
                            .points
                            .iter()
                            .copied()
                            .filter(|p| p.0.is_finite() && p.1.is_finite());
                        chart
                            .draw_series(LineSeries::new(points, color.stroke_width(2)))
                            .map_err(plot_error)?
                            .label(s.label)
                            .legend(move |(x, y)| {
                                PathElement::new(vec![(x, y), (x + 20, y)], color)
                            });
                    }
                    for (i, m) in self.markers.iter().enumerate() {
                        let color = MARKER_COLORS[i % MARKER_COLORS.len()];
                        chart
                            .draw_series(std::iter::once(Circle::new(m.at, 6, color.filled())))
                            .map_err(plot_error)?
                            .label(m.label)
                            .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
                    }
                    chart
                        .configure_series_labels()
                        .background_style(WHITE.mix(0.8))
                        .border_style(BLACK)
                        .draw()
                        .map_err(plot_error)?;
                }};
            }
            if self.log_x {
                draw!(
                    builder
                        .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
                        .map_err(plot_error)?
                );
            } else {
                draw!(
                    builder
                        .build_cartesian_2d(x0..x1, y0..y1)
                        .map_err(plot_error)?
                );
            }
            root.present().map_err(plot_error)?;
        }
        Ok(out)
    }
}

/// Writes an SVG document to `path`.
pub(crate) fn write_svg(path: &std::path::Path, svg: &str) -> Result<()> {
    std::fs::write(path, svg).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}
