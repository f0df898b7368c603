//! The textbook schedules (Géron, *Hands-On Machine Learning*, "Learning Rate Scheduling", and
//! the usual lecture notes), as closed forms of the step `t` = 0, 1, 2, …:
//!
//! | type | arguments | LR at step `t` |
//! |---|---|---|
//! | `Fixed` | `lr` | `lr` |
//! | `PowerScheduling` | `lr`, `s` > 0, `c` ≥ 0 (default 1) | `lr / (1 + t/s)^c` |
//! | `TimeBasedDecay` | `lr`, `decay` ≥ 0 | `lr / (1 + decay·t)` |
//! | `ExponentialScheduling` | `lr`, `s` > 0 | `lr · 0.1^(t/s)` |
//! | `StepDecay` | `lr`, `drop` ≥ 0, `s` > 0 | `lr · drop^⌊t/s⌋` |
//!
//! `lr` may be a list (one LR per parameter group). Some printings give the exponential form as
//! `0.1^(−t/s)` and the step form as `e^⌊t/s⌋`; both grow without bound, so they are misprints:
//! this module implements the decaying forms above (the LR divides by 10 every `s` steps, and
//! multiplies by `drop` every `s` steps).
//!
//! `LinearWarmup` (in [`super`]) puts a linear warm-up in front of any schedule.

use super::spec::Args;
use crate::error::{Error, Result};
use crate::optim::{non_negative, py_float};

/// The textbook type names handled here (`LinearWarmup` is in the parent module).
pub(crate) const TYPES: &[&str] = &[
    "Fixed",
    "PowerScheduling",
    "TimeBasedDecay",
    "ExponentialScheduling",
    "StepDecay",
];

/// A textbook formula (without its base LR).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Formula {
    Fixed,
    Power { s: f64, c: f64 },
    TimeBased { decay: f64 },
    Exponential { s: f64 },
    Step { drop: f64, s: f64 },
}

/// A textbook schedule: per-group base LRs and the formula.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Textbook {
    /// `lr` per group.
    pub(crate) lrs: Vec<f64>,
    formula: Formula,
}

fn positive(args: &Args<'_>, key: &str) -> Result<f64> {
    let x = args.f64(key)?;
    if x.is_nan() || x <= 0.0 {
        return Err(Error::InvalidHyperparameter(format!(
            "{}: {key} must be > 0, got {}",
            args.ty,
            py_float(x)
        )));
    }
    Ok(x)
}

impl Textbook {
    /// Builds from a spec whose type is one of [`TYPES`]; a scalar `lr` is broadcast to `hint`
    /// groups (at least one).
    pub(crate) fn build(args: &Args<'_>, hint: usize) -> Result<Self> {
        let formula = match args.ty {
            "Fixed" => {
                args.allow(&["lr"])?;
                Formula::Fixed
            }
            "PowerScheduling" => {
                args.allow(&["lr", "s", "c"])?;
                let s = positive(args, "s")?;
                let c = args.f64_or("c", 1.0)?;
                // The divisor (1 + t/s)^c is at least 1 for c >= 0; a negative c makes the LR
                // grow until the divisor underflows to 0.
                if c.is_nan() || c < 0.0 {
                    return Err(Error::InvalidHyperparameter(format!(
                        "PowerScheduling: c must be >= 0, got {}: the LR is lr / (1 + t/s)^c, \
                         whose divisor reaches 0 for a negative c (division by zero)",
                        py_float(c)
                    )));
                }
                Formula::Power { s, c }
            }
            "TimeBasedDecay" => {
                args.allow(&["lr", "decay"])?;
                let decay = args.f64("decay")?;
                if !non_negative(decay) {
                    return Err(Error::InvalidHyperparameter(format!(
                        "TimeBasedDecay: decay must be >= 0, got {}",
                        py_float(decay)
                    )));
                }
                Formula::TimeBased { decay }
            }
            "ExponentialScheduling" => {
                args.allow(&["lr", "s"])?;
                Formula::Exponential {
                    s: positive(args, "s")?,
                }
            }
            "StepDecay" => {
                args.allow(&["lr", "drop", "s"])?;
                let drop = args.f64("drop")?;
                if !non_negative(drop) {
                    return Err(Error::InvalidHyperparameter(format!(
                        "StepDecay: drop must be >= 0, got {}",
                        py_float(drop)
                    )));
                }
                Formula::Step {
                    drop,
                    s: positive(args, "s")?,
                }
            }
            other => return Err(Error::Input(format!("unknown schedule type {other:?}"))),
        };
        let lrs = args
            .group_lrs(hint)?
            .ok_or_else(|| Error::Input(format!("{}: missing argument lr", args.ty)))?;
        for &lr in &lrs {
            if !non_negative(lr) {
                return Err(Error::InvalidHyperparameter(format!(
                    "Invalid learning rate: {}",
                    py_float(lr)
                )));
            }
        }
        Ok(Self { lrs, formula })
    }

    /// The LR of one group with base LR `lr` at step `t`.
    pub(crate) fn eval(&self, lr: f64, t: f64) -> f64 {
        match self.formula {
            Formula::Fixed => lr,
            Formula::Power { s, c } => lr / (1.0 + t / s).powf(c),
            Formula::TimeBased { decay } => lr / (1.0 + decay * t),
            Formula::Exponential { s } => lr * 0.1f64.powf(t / s),
            Formula::Step { drop, s } => lr * drop.powf((t / s).floor()),
        }
    }
}
