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

/// Largest magnitude an axis of a linear chart reaches: plotters computes the axis' width, which
/// must stay finite.
const LINEAR_LIMIT: f64 = f64::MAX / 4.0;

/// Smallest and largest value of a logarithmic axis, and the largest ratio between its ends:
/// plotters counts the axis' decades from `end / start`, which must stay finite, and steps
/// through them by multiplying, which must reach `end`.
const LOG_MIN: f64 = 1e-300;
const LOG_MAX: f64 = 1e300;
const LOG_MAX_RATIO: f64 = 1e300;

/// The range of `values` with a little room, never empty, and within what plotters can draw:
/// finite, not too wide, and positive on a logarithmic axis. Values outside it are drawn at its
/// edge (see [`Chart::svg`]).
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
        let (lo, hi) = (lo.clamp(LOG_MIN, LOG_MAX), hi.clamp(LOG_MIN, LOG_MAX));
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else {
            (lo / 10.0, hi * 10.0)
        };
        // Keep the top decades when there are too many.
        (lo.max(hi / LOG_MAX_RATIO), hi)
    } else {
        let (lo, hi) = (
            lo.clamp(-LINEAR_LIMIT, LINEAR_LIMIT),
            hi.clamp(-LINEAR_LIMIT, LINEAR_LIMIT),
        );
        // Each half is at most LINEAR_LIMIT / 20: no overflow.
        let pad = if hi > lo {
            hi * 0.05 - lo * 0.05
        } else {
            lo.abs().max(1.0) * 0.1
        };
        (lo - pad, hi + pad)
    }
}

/// A point as drawn on axes `x` and `y`: `None` when it cannot be drawn (not finite, or not
/// positive on a logarithmic x axis), else clamped into the axes' ranges, so that plotters never
/// maps a coordinate far outside the chart (where its pixel arithmetic overflows).
fn drawable(p: (f64, f64), x: (f64, f64), y: (f64, f64), log_x: bool) -> Option<(f64, f64)> {
    if !(p.0.is_finite() && p.1.is_finite()) || (log_x && p.0 <= 0.0) {
        return None;
    }
    Some((p.0.clamp(x.0, x.1), p.1.clamp(y.0, y.1)))
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
                            .filter_map(|p| drawable(*p, (x0, x1), (y0, y1), self.log_x));
                        chart
                            .draw_series(LineSeries::new(points, color.stroke_width(2)))
                            .map_err(plot_error)?
                            .label(s.label)
                            .legend(move |(x, y)| {
                                PathElement::new(vec![(x, y), (x + 20, y)], color)
                            });
                    }
                    let markers = self.markers.iter().filter_map(|m| {
                        drawable(m.at, (x0, x1), (y0, y1), self.log_x).map(|at| (m.label, at))
                    });
                    for (i, (label, at)) in markers.enumerate() {
                        let color = MARKER_COLORS[i % MARKER_COLORS.len()];
                        chart
                            .draw_series(std::iter::once(Circle::new(at, 6, color.filled())))
                            .map_err(plot_error)?
                            .label(label)
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
