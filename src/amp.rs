//! Gradient clipping and AMP grad scaling, as `torch.nn.utils.clip_grad_norm_`,
//! `clip_grad_value_` and `torch.amp.GradScaler` do them, fused into the optimizer step.
//!
//! An [`Optimizer`](crate::Optimizer) given a [`ClipGrad`] and a [`GradScaler`] runs PyTorch's
//! recipe in every step, on the GPU and without a readback:
//!
//! ```text
//! scaler.unscale_(opt)                          # gradients × (1 / scale); found_inf
//! clip_grad_norm_(params, max_norm, norm_type)  # or clip_grad_value_(params, clip_value)
//! scaler.step(opt)                              # skipped when found_inf
//! scaler.update()                               # backoff, or growth every growth_interval
//! ```
//!
//! The gradients the engine writes are the scaled ones (the backward pass of `loss × scale`).
//! The scale lives in a GPU buffer ([`Optimizer::grad_scale`](crate::Optimizer::grad_scale)),
//! so the engine can multiply its loss by it without reading it back.

use crate::error::{Error, Result};
use crate::optim::{check, py_float};
use serde::{Deserialize, Serialize};

/// Which norm [`ClipGrad::Norm`] takes over all gradients: PyTorch's `norm_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NormType {
    /// The 2-norm, `norm_type=2.0` (PyTorch's default).
    #[default]
    L2,
    /// The largest absolute value, `norm_type=inf`.
    Inf,
}

impl std::fmt::Display for NormType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::L2 => "2",
            Self::Inf => "inf",
        })
    }
}

impl std::str::FromStr for NormType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "2" | "2.0" => Ok(Self::L2),
            "inf" | "infinity" => Ok(Self::Inf),
            _ => Err(Error::InvalidHyperparameter(format!(
                "norm_type must be 2 or inf, got {s:?}"
            ))),
        }
    }
}

/// In JSON a norm type is the number `2` (or `2.0`) or the string `"inf"`, as PyTorch writes
/// `norm_type=2.0` or `norm_type=float("inf")`.
impl Serialize for NormType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::L2 => s.serialize_f64(2.0),
            Self::Inf => s.serialize_str("inf"),
        }
    }
}

impl<'de> Deserialize<'de> for NormType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(2.0) => Ok(Self::L2),
            Raw::Number(x) if x == f64::INFINITY => Ok(Self::Inf),
            Raw::Number(x) => Err(serde::de::Error::custom(format!(
                "norm_type must be 2 or inf, got {}",
                py_float(x)
            ))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Gradient clipping applied inside every step, after unscaling and before the update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ClipGrad {
    /// `torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)` over every tensor of the
    /// optimizer: with `total_norm` the norm of all gradients together,
    /// `clip_coef = max_norm / (total_norm + 1e-6)` clamped to at most 1, and every gradient is
    /// multiplied by it. A NaN or inf gradient makes the norm NaN or inf, as in PyTorch
    /// (`error_if_nonfinite=False`; raising would need a readback).
    Norm {
        /// The largest allowed norm; at least 0.
        max_norm: f64,
        /// Which norm.
        norm_type: NormType,
    },
    /// `torch.nn.utils.clip_grad_value_(params, clip_value)`: every gradient element is
    /// clamped to `[-clip_value, clip_value]`.
    Value {
        /// The bound; at least 0.
        clip_value: f64,
    },
}

impl ClipGrad {
    /// `clip_grad_norm_` with the 2-norm.
    pub fn norm(max_norm: f64) -> Self {
        Self::Norm {
            max_norm,
            norm_type: NormType::L2,
        }
    }

    /// `clip_grad_value_`.
    pub fn value(clip_value: f64) -> Self {
        Self::Value { clip_value }
    }

    /// Checks the bound: finite and at least 0.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::Norm { max_norm, .. } => check(max_norm >= 0.0 && max_norm.is_finite(), || {
                format!(
                    "max_norm must be a finite number >= 0, got {}",
                    py_float(max_norm)
                )
            }),
            Self::Value { clip_value } => {
                check(clip_value >= 0.0 && clip_value.is_finite(), || {
                    format!(
                        "clip_value must be a finite number >= 0, got {}",
                        py_float(clip_value)
                    )
                })
            }
        }
    }
}

/// `torch.amp.GradScaler`: its arguments, PyTorch's defaults and checks. In JSON the same
/// names apply: `{"init_scale": 1024.0, "growth_interval": 3}`; missing arguments take
/// PyTorch's defaults and unknown ones are errors.
///
/// Each step the optimizer multiplies the gradients by `1 / scale` (the reciprocal rounded from
/// f64, as PyTorch does), skips the update when any gradient is inf or NaN (parameters, state
/// and step counts stay bit-identical), and updates the scale: `scale × backoff_factor` after
/// a skipped step, `scale × growth_factor` after `growth_interval` steps in a row without one
/// (unless that overflows). The products are rounded once from the double product, as
/// PyTorch's `_amp_update_scale_` rounds them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GradScaler {
    /// The scale before the first step (default 2^16). Rounded to f32, as PyTorch stores it.
    pub init_scale: f64,
    /// Factor of the scale after `growth_interval` steps without inf or NaN (default 2).
    pub growth_factor: f64,
    /// Factor of the scale after a step with inf or NaN (default 0.5).
    pub backoff_factor: f64,
    /// Steps without inf or NaN before the scale grows (default 2000).
    pub growth_interval: u32,
    /// When false the scaler does nothing: no unscaling, no skipping, scale 1 (default true).
    pub enabled: bool,
}

impl Default for GradScaler {
    fn default() -> Self {
        Self {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            enabled: true,
        }
    }
}

impl GradScaler {
    /// PyTorch's checks (`The growth factor must be > 1.0.`, `The backoff factor must be <
    /// 1.0.`), and also a backoff factor above 0, a positive finite f32 initial scale and a
    /// growth interval of at least 1, which PyTorch leaves unchecked.
    pub fn validate(&self) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        check(
            self.growth_factor > 1.0 && self.growth_factor.is_finite(),
            || "The growth factor must be > 1.0.".into(),
        )?;
        check(self.backoff_factor < 1.0, || {
            "The backoff factor must be < 1.0.".into()
        })?;
        check(self.backoff_factor > 0.0, || {
            "The backoff factor must be > 0.0.".into()
        })?;
        let scale = self.init_scale as f32;
        check(scale > 0.0 && scale.is_finite(), || {
            format!(
                "init_scale must be a positive number that float32 holds, got {}",
                py_float(self.init_scale)
            )
        })?;
        check(self.growth_interval >= 1, || {
            "growth_interval must be at least 1".into()
        })
    }
}

/// The state of a [`GradScaler`] on the GPU, as PyTorch's `GradScaler` keeps it (`_scale`,
/// `_growth_tracker`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradScalerState {
    /// The current scale.
    pub scale: f32,
    /// Steps in a row without inf or NaN since the scale last changed.
    pub growth_tracker: i32,
}

/// What the last step found, read back on request with
/// [`Optimizer::read_step_report`](crate::Optimizer::read_step_report).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// The total norm of the (unscaled) gradients, as `clip_grad_norm_` returns it; 0 when the
    /// step did not clip by norm, had no grad scaler and was not Lamb's with `pre_norm`.
    pub total_norm: f32,
    /// Whether the grad scaler found inf or NaN, so that the step was skipped.
    pub found_inf: bool,
}

/// Splits `x` into an f32 and the f32 of the remainder, so that the kernels can multiply by
/// (almost) the double value.
pub(crate) fn split_f64(x: f64) -> (f32, f32) {
    let hi = x as f32;
    (hi, (x - f64::from(hi)) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_type_parses_as_pytorch_writes_it() {
        let t: NormType = serde_json::from_str("2.0").unwrap();
        assert_eq!(t, NormType::L2);
        let t: NormType = serde_json::from_str("\"inf\"").unwrap();
        assert_eq!(t, NormType::Inf);
        assert!(serde_json::from_str::<NormType>("1.0").is_err());
        assert!("3".parse::<NormType>().is_err());
        assert_eq!("inf".parse::<NormType>().unwrap(), NormType::Inf);
    }

    #[test]
    fn split_keeps_the_remainder() {
        let (hi, lo) = split_f64(1.7);
        assert_ne!(lo, 0.0);
        assert!((f64::from(hi) + f64::from(lo) - 1.7).abs() < 1e-15);
        assert_eq!(split_f64(2.0), (2.0, 0.0));
    }
}
