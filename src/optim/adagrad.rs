use super::{check, grad_sign, non_negative, py_float};
use crate::error::Result;
use serde::{Deserialize, Serialize};

/// `torch.optim.Adagrad`.
///
/// With `g` the gradient (negated when `maximize`), `t` the step number starting at 1, and
/// `λ` = `weight_decay`:
///
/// ```text
/// g ← g + λ·θ                           (if λ ≠ 0)
/// clr = lr / (1 + (t − 1)·lr_decay)
/// S ← S + g²                            (sum, starts at initial_accumulator_value)
/// θ ← θ − clr · g / (√S + ε)
/// ```
///
/// State: `sum`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adagrad {
    /// Learning rate (default 1e-2).
    pub lr: f64,
    /// Learning-rate decay (default 0).
    pub lr_decay: f64,
    /// L2 penalty (default 0).
    pub weight_decay: f64,
    /// Starting value of the accumulator `sum` (default 0).
    pub initial_accumulator_value: f64,
    /// Added to the denominator (default 1e-10).
    pub eps: f64,
    /// Maximize the objective instead of minimizing (default false).
    pub maximize: bool,
}

impl Default for Adagrad {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            maximize: false,
        }
    }
}

/// One parameter group's record in `shaders/adagrad.wgsl` (`Hyper`); keep the two in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AdagradHyper {
    pub(crate) lr: f32,
    pub(crate) lr_decay: f32,
    pub(crate) eps: f32,
    pub(crate) weight_decay: f32,
    pub(crate) grad_sign: f32,
    pub(crate) _pad: [f32; 3],
}
const _: () = assert!(size_of::<AdagradHyper>() == 32);

impl Adagrad {
    /// PyTorch's constructor checks.
    pub fn validate(&self) -> Result<()> {
        check(non_negative(self.lr), || {
            format!("Invalid learning rate: {}", py_float(self.lr))
        })?;
        check(non_negative(self.lr_decay), || {
            format!("Invalid lr_decay value: {}", py_float(self.lr_decay))
        })?;
        check(non_negative(self.weight_decay), || {
            format!(
                "Invalid weight_decay value: {}",
                py_float(self.weight_decay)
            )
        })?;
        check(non_negative(self.initial_accumulator_value), || {
            format!(
                "Invalid initial_accumulator_value value: {}",
                py_float(self.initial_accumulator_value)
            )
        })?;
        check(non_negative(self.eps), || {
            format!("Invalid epsilon value: {}", py_float(self.eps))
        })
    }

    /// The effective learning rate of step `t` (1-based), computed in f64 as PyTorch does.
    pub fn clr(&self, t: u64) -> f64 {
        self.lr / (1.0 + (t as f64 - 1.0) * self.lr_decay)
    }

    /// The group's record for one step; the kernel forms `clr` from each tensor's step count.
    pub(crate) fn hyper(&self) -> AdagradHyper {
        AdagradHyper {
            lr: self.lr as f32,
            lr_decay: self.lr_decay as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            grad_sign: grad_sign(self.maximize),
            _pad: [0.0; 3],
        }
    }
}
