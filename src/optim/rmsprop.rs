use super::{Kernel, check, grad_sign, non_negative, py_float};
use crate::error::Result;
use serde::{Deserialize, Serialize};

/// `torch.optim.RMSprop`.
///
/// With `g` the gradient (negated when `maximize`) and `λ` = `weight_decay`:
///
/// ```text
/// g ← g + λ·θ                              (if λ ≠ 0)
/// s ← α·s + (1 − α)·g²                     (square_avg)
/// if centered: ḡ ← ḡ + (1 − α)·(g − ḡ)     (grad_avg), d = √(s − ḡ²) + ε
/// else:        d = √s + ε                  (ε sits outside the square root)
/// if momentum > 0: b ← momentum·b + g/d, θ ← θ − lr·b   (momentum_buffer, starts at 0)
/// else:            θ ← θ − lr·g/d
/// ```
///
/// State: `square_avg`, plus `grad_avg` when centered and `momentum_buffer` when momentum > 0.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(clippy::upper_case_acronyms)]
pub struct RMSprop {
    /// Learning rate (default 1e-2).
    pub lr: f64,
    /// Smoothing constant (default 0.99).
    pub alpha: f64,
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// L2 penalty (default 0).
    pub weight_decay: f64,
    /// Momentum factor (default 0).
    pub momentum: f64,
    /// Normalize by the estimated variance of the gradient (default false).
    pub centered: bool,
    /// Maximize the objective instead of minimizing (default false).
    pub maximize: bool,
}

impl Default for RMSprop {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            maximize: false,
        }
    }
}

/// One parameter group's record in `shaders/rmsprop.wgsl` (`Hyper`); keep the two in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RmspropHyper {
    pub(crate) lr: f32,
    pub(crate) alpha: f32,
    pub(crate) one_minus_alpha: f32,
    pub(crate) eps: f32,
    pub(crate) weight_decay: f32,
    pub(crate) momentum: f32,
    pub(crate) grad_sign: f32,
    pub(crate) _pad: f32,
}
const _: () = assert!(size_of::<RmspropHyper>() == 32);

impl RMSprop {
    /// PyTorch's constructor checks.
    pub fn validate(&self) -> Result<()> {
        check(non_negative(self.lr), || {
            format!("Invalid learning rate: {}", py_float(self.lr))
        })?;
        check(non_negative(self.eps), || {
            format!("Invalid epsilon value: {}", py_float(self.eps))
        })?;
        check(non_negative(self.momentum), || {
            format!("Invalid momentum value: {}", py_float(self.momentum))
        })?;
        check(non_negative(self.weight_decay), || {
            format!(
                "Invalid weight_decay value: {}",
                py_float(self.weight_decay)
            )
        })?;
        check(non_negative(self.alpha), || {
            format!("Invalid alpha value: {}", py_float(self.alpha))
        })
    }

    pub(crate) fn kernel(&self) -> Kernel {
        match (self.centered, self.momentum > 0.0) {
            (false, false) => Kernel::Rmsprop,
            (true, false) => Kernel::RmspropCentered,
            (false, true) => Kernel::RmspropMomentum,
            (true, true) => Kernel::RmspropCenteredMomentum,
        }
    }

    /// The group's record for one step.
    pub(crate) fn hyper(&self) -> RmspropHyper {
        RmspropHyper {
            lr: self.lr as f32,
            alpha: self.alpha as f32,
            one_minus_alpha: (1.0 - self.alpha) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            momentum: self.momentum as f32,
            grad_sign: grad_sign(self.maximize),
            _pad: 0.0,
        }
    }
}
