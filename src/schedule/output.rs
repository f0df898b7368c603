//! Printing and plotting traces, for `wgpu-optim schedule`.

use super::Trace;
use crate::error::Result;
use crate::plot::{Chart, Series};

impl Trace {
    /// CSV with a header: `step,lr`, plus `momentum` when the schedule cycles it. With several
    /// parameter groups the columns are `lr_0,lr_1,...` and `momentum_0,...`. Numbers are
    /// written so that they read back exactly. The header follows row 0; a row with fewer
    /// values (possible only in a `Trace` put together by hand) is written as it is.
    pub fn to_csv(&self) -> String {
        let groups = self.lr.first().map_or(1, Vec::len);
        let names = |base: &str| -> Vec<String> {
            if groups == 1 {
                vec![base.to_string()]
            } else {
                (0..groups).map(|g| format!("{base}_{g}")).collect()
            }
        };
        let mut header = vec!["step".to_string()];
        header.extend(names("lr"));
        if self.momentum.is_some() {
            header.extend(names("momentum"));
        }
        let mut out = header.join(",");
        out.push('\n');
        for (k, lrs) in self.lr.iter().enumerate() {
            let mut row = vec![k.to_string()];
            row.extend(lrs.iter().map(|v| format!("{v:?}")));
            if let Some(m) = self.momentum.as_ref().and_then(|m| m.get(k)) {
                row.extend(m.iter().map(|v| format!("{v:?}")));
            }
            out.push_str(&row.join(","));
            out.push('\n');
        }
        out
    }

    /// An SVG chart of the learning rate of each group against the step (as many groups as row 0
    /// has; a shorter row leaves its missing values out).
    pub fn svg(&self, title: &str) -> Result<String> {
        let groups = self.lr.first().map_or(0, Vec::len);
        let labels: Vec<String> = (0..groups)
            .map(|g| {
                if groups == 1 {
                    "lr".to_string()
                } else {
                    format!("lr of group {g}")
                }
            })
            .collect();
        Chart {
            title,
            x_label: "optimizer step",
            y_label: "learning rate",
            log_x: false,
            series: labels
                .iter()
                .enumerate()
                .map(|(g, label)| Series {
                    label,
                    points: self
                        .lr
                        .iter()
                        .enumerate()
                        .filter_map(|(k, row)| Some((k as f64, *row.get(g)?)))
                        .collect(),
                })
                .collect(),
            markers: Vec::new(),
        }
        .svg()
    }
}

/// Writes the chart of a trace of `spec` to `path`, titled with the spec's type.
pub fn plot_trace(trace: &Trace, spec: &serde_json::Value, path: &std::path::Path) -> Result<()> {
    let title = spec
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or("schedule");
    crate::plot::write_svg(path, &trace.svg(title)?)
}
