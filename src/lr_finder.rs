//! The learning-rate range test ("LR finder").
//!
//! The test trains for a few iterations while the learning rate sweeps from `start_lr` to
//! `end_lr`, records the loss, and suggests a learning rate from where the loss falls fastest.
//! Afterwards the parameters and optimizer state are put back as they were.
//!
//! ```
//! use wgpu_optim::lr_finder::LrFinder;
//! # fn main() -> Result<(), wgpu_optim::Error> {
//! // The analysis alone, on losses from any source; no smoothing, to keep the arithmetic plain.
//! let finder = LrFinder { num_iter: 50, smooth: 1.0, ..Default::default() };
//! let lrs: Vec<f64> = (0..50).map(|i| finder.lr_at(i)).collect();
//! let losses: Vec<f64> = lrs.iter().map(|lr| (lr.log10() + 3.0).powi(2) + 1.0).collect();
//! let test = finder.analyze(&lrs, &losses)?;
//! let best = test.min_loss_lr.unwrap();
//! assert!((best.log10() + 4.0).abs() < 0.1, "{best}"); // the minimum (1e-3) / 10
//! # Ok(())
//! # }
//! ```

use crate::error::{Error, Result};
use crate::optimizer::Optimizer;
use crate::plot::{Chart, Marker, Series};
use serde::{Deserialize, Serialize};

/// How the learning rate moves from `start_lr` to `end_lr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sweep {
    /// Geometric steps: `start·(end/start)^(i/(n−1))`.
    #[default]
    Exponential,
    /// Equal steps: `start + (end − start)·i/(n−1)`.
    Linear,
}

/// Settings of the range test. The defaults follow the common practice of `torch-lr-finder`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LrFinder {
    /// First learning rate (default 1e-7).
    pub start_lr: f64,
    /// Last learning rate (default 10).
    pub end_lr: f64,
    /// Iterations of the sweep (default 100).
    pub num_iter: usize,
    /// Exponential (default) or linear sweep.
    pub sweep: Sweep,
    /// Weight of the newest loss in the exponential moving average,
    /// `s_i = smooth·loss_i + (1 − smooth)·s_{i−1}` (default 0.05).
    pub smooth: f64,
    /// Stop when the smoothed loss exceeds this multiple of the best smoothed loss (default 4).
    pub diverge_threshold: f64,
    /// Points left out at the start when suggesting a learning rate (default 10).
    pub skip_start: usize,
    /// Points left out at the end when suggesting a learning rate (default 5).
    pub skip_end: usize,
}

impl Default for LrFinder {
    fn default() -> Self {
        Self {
            start_lr: 1e-7,
            end_lr: 10.0,
            num_iter: 100,
            sweep: Sweep::Exponential,
            smooth: 0.05,
            diverge_threshold: 4.0,
            skip_start: 10,
            skip_end: 5,
        }
    }
}

/// What a range test measured, and the learning rates it suggests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RangeTest {
    /// The learning rate of each iteration that ran.
    pub lrs: Vec<f64>,
    /// The loss each iteration returned.
    pub losses: Vec<f64>,
    /// The smoothed losses.
    pub smoothed: Vec<f64>,
    /// Whether the sweep stopped early because the loss diverged.
    pub diverged: bool,
    /// The learning rate where the smoothed loss falls fastest (its most negative slope against
    /// the iteration, i.e. against log lr for an exponential sweep).
    pub steepest_lr: Option<f64>,
    /// The learning rate of the smallest smoothed loss, divided by 10.
    pub min_loss_lr: Option<f64>,
}

impl LrFinder {
    fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidHyperparameter(format!("LR finder: {m}")));
        if !(self.start_lr > 0.0 && self.end_lr > self.start_lr && self.end_lr.is_finite()) {
            return bad("needs 0 < start_lr < end_lr");
        }
        if self.num_iter < 2 {
            return bad("num_iter must be at least 2");
        }
        if !(self.smooth > 0.0 && self.smooth <= 1.0) {
            return bad("smooth must be in (0, 1]");
        }
        if self.diverge_threshold.is_nan() || self.diverge_threshold <= 1.0 {
            return bad("diverge_threshold must be greater than 1");
        }
        Ok(())
    }

    /// The learning rate of iteration `i`.
    pub fn lr_at(&self, i: usize) -> f64 {
        let r = i as f64 / (self.num_iter.max(2) - 1) as f64;
        match self.sweep {
            Sweep::Exponential => self.start_lr * (self.end_lr / self.start_lr).powf(r),
            Sweep::Linear => self.start_lr + (self.end_lr - self.start_lr) * r,
        }
    }

    /// Runs the test. Before each iteration every group's learning rate is set to the sweep's;
    /// `train_step` then computes the gradient, records and submits an optimizer step, and
    /// returns the loss (it may use [`Optimizer::step_submit`]). Afterwards the parameters,
    /// optimizer state and hyperparameters are restored with [`Optimizer::snapshot`], so the
    /// parameter buffers need `COPY_SRC | COPY_DST` usage.
    pub fn run(
        &self,
        optimizer: &mut Optimizer,
        mut train_step: impl FnMut(&mut Optimizer) -> Result<f64>,
    ) -> Result<RangeTest> {
        self.check()?;
        let snapshot = optimizer.snapshot()?;
        // num_iter is the caller's: reserve for a typical sweep only (a huge one may stop early).
        let reserve = self.num_iter.min(1 << 12);
        let mut lrs = Vec::with_capacity(reserve);
        let mut losses = Vec::with_capacity(reserve);
        let outcome = (|| {
            let mut smoothed: Option<f64> = None;
            let mut best = f64::INFINITY;
            for i in 0..self.num_iter {
                let lr = self.lr_at(i);
                for g in 0..optimizer.groups().len() {
                    optimizer.set_lr(g, lr)?;
                }
                let loss = train_step(optimizer)?;
                lrs.push(lr);
                losses.push(loss);
                let s =
                    smoothed.map_or(loss, |prev| self.smooth * loss + (1.0 - self.smooth) * prev);
                smoothed = Some(s);
                best = best.min(s);
                if !s.is_finite() || s > self.diverge_threshold * best {
                    break;
                }
            }
            Ok(())
        })();
        optimizer.restore(&snapshot)?;
        outcome?;
        self.analyze(&lrs, &losses)
    }

    /// Smooths recorded losses and picks the suggestions, as [`run`](Self::run) does: `losses[i]`
    /// is the loss at learning rate `lrs[i]`. An [`Error::Input`] when the two slices differ in
    /// length.
    pub fn analyze(&self, lrs: &[f64], losses: &[f64]) -> Result<RangeTest> {
        if lrs.len() != losses.len() {
            return Err(Error::Input(format!(
                "LR finder: analyze needs one loss per learning rate, got {} learning rates and {} \
                 losses",
                lrs.len(),
                losses.len()
            )));
        }
        let mut smoothed = Vec::with_capacity(losses.len());
        let mut best = f64::INFINITY;
        let mut diverged = false;
        for &loss in losses {
            let s = smoothed.last().map_or(loss, |prev: &f64| {
                self.smooth * loss + (1.0 - self.smooth) * prev
            });
            smoothed.push(s);
            best = best.min(s);
            diverged = !s.is_finite() || s > self.diverge_threshold * best;
        }
        // The suggestions look at the trusted middle of the curve.
        let end = smoothed.len().saturating_sub(self.skip_end);
        let start = self.skip_start.min(end);
        let (start, end) = if end - start >= 2 {
            (start, end)
        } else {
            (0, smoothed.len())
        };
        let window = &smoothed[start..end];
        let finite = |i: &usize| window[*i].is_finite();
        let steepest_lr = (window.len() >= 2)
            .then(|| {
                // Central differences inside, one-sided at the ends (numpy.gradient).
                let slope = |i: usize| match i {
                    0 => window[1] - window[0],
                    i if i == window.len() - 1 => window[i] - window[i - 1],
                    i => (window[i + 1] - window[i - 1]) / 2.0,
                };
                (0..window.len())
                    .filter(|i| slope(*i).is_finite())
                    .min_by(|a, b| slope(*a).total_cmp(&slope(*b)))
            })
            .flatten()
            .map(|i| lrs[start + i]);
        let min_loss_lr = (0..window.len())
            .filter(finite)
            .min_by(|a, b| window[*a].total_cmp(&window[*b]))
            .map(|i| lrs[start + i] / 10.0);
        Ok(RangeTest {
            lrs: lrs.to_vec(),
            losses: losses.to_vec(),
            smoothed,
            diverged,
            steepest_lr,
            min_loss_lr,
        })
    }
}

impl RangeTest {
    /// An SVG chart of the smoothed loss against the learning rate on a log axis, with the
    /// suggested learning rates marked. Points whose learning rate is not positive cannot be
    /// drawn on the log axis and are left out, as are learning rates without a smoothed loss.
    pub fn svg(&self) -> Result<String> {
        let loss_at = |lr: f64| {
            self.lrs
                .iter()
                .position(|&x| x >= lr)
                .and_then(|i| self.smoothed.get(i).copied())
                .unwrap_or(f64::NAN)
        };
        let mut markers = Vec::new();
        let steep_label;
        if let Some(lr) = self.steepest_lr {
            steep_label = format!("steepest descent: {lr:.2e}");
            markers.push(Marker {
                label: &steep_label,
                at: (lr, loss_at(lr)),
            });
        }
        let min_label;
        if let Some(lr) = self.min_loss_lr {
            min_label = format!("min loss / 10: {lr:.2e}");
            markers.push(Marker {
                label: &min_label,
                at: (lr, loss_at(lr)),
            });
        }
        Chart {
            title: "Learning-rate range test",
            x_label: "learning rate (log scale)",
            y_label: "smoothed loss",
            log_x: true,
            series: vec![Series {
                label: "smoothed loss",
                points: self
                    .lrs
                    .iter()
                    .copied()
                    .zip(self.smoothed.iter().copied())
                    .collect(),
            }],
            markers: markers.into_iter().filter(|m| m.at.1.is_finite()).collect(),
        }
        .svg()
    }

    /// Writes [`svg`](Self::svg) to a file.
    pub fn plot(&self, path: &std::path::Path) -> Result<()> {
        crate::plot::write_svg(path, &self.svg()?)
    }
}
