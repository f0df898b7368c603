use super::{Kernel, check, grad_sign, non_negative, py_float};
use crate::error::Result;
use serde::{Deserialize, Serialize};

/// `torch.optim.SGD`: stochastic gradient descent with optional momentum, Nesterov momentum and
/// L2 weight decay.
///
/// With `g` the gradient (negated when `maximize`) and `λ` = `weight_decay`, each step does
///
/// ```text
/// g ← g + λ·θ                         (if λ ≠ 0)
/// if momentum ≠ 0:
///     b ← g                           (first step: the buffer is a copy, no dampening)
///     b ← momentum·b + (1 − dampening)·g   (later steps)
///     g ← g + momentum·b   if nesterov, else g ← b
/// θ ← θ − lr·g
/// ```
///
/// State: `momentum_buffer` when `momentum ≠ 0`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(clippy::upper_case_acronyms)]
pub struct SGD {
    /// Learning rate (PyTorch default 1e-3).
    pub lr: f64,
    /// Momentum factor (default 0).
    pub momentum: f64,
    /// Dampening of the momentum (default 0).
    pub dampening: f64,
    /// L2 penalty (default 0).
    pub weight_decay: f64,
    /// Nesterov momentum (default false).
    pub nesterov: bool,
    /// Maximize the objective instead of minimizing (default false).
    pub maximize: bool,
}

impl Default for SGD {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        }
    }
}

/// One parameter group's record in `shaders/sgd.wgsl` (`Hyper`); keep the two in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SgdHyper {
    pub(crate) lr: f32,
    pub(crate) momentum: f32,
    pub(crate) one_minus_dampening: f32,
    pub(crate) weight_decay: f32,
    pub(crate) grad_sign: f32,
    pub(crate) nesterov: u32,
    pub(crate) _pad: [u32; 2],
}
const _: () = assert!(size_of::<SgdHyper>() == 32);

impl SGD {
    /// PyTorch's constructor checks.
    pub fn validate(&self) -> Result<()> {
        check(non_negative(self.lr), || {
            format!("Invalid learning rate: {}", py_float(self.lr))
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
        check(!self.dampening.is_nan(), || {
            format!("Invalid dampening value: {}", py_float(self.dampening))
        })?;
        check(
            !self.nesterov || (self.momentum > 0.0 && self.dampening == 0.0),
            || "Nesterov momentum requires a momentum and zero dampening".to_string(),
        )
    }

    pub(crate) fn kernel(&self) -> Kernel {
        if self.momentum != 0.0 {
            Kernel::SgdMomentum
        } else {
            Kernel::Sgd
        }
    }

    /// The group's record for one step. Whether the momentum buffer exists yet (PyTorch's
    /// `buf is None`) follows from each tensor's step count on the GPU.
    pub(crate) fn hyper(&self) -> SgdHyper {
        SgdHyper {
            lr: self.lr as f32,
            momentum: self.momentum as f32,
            one_minus_dampening: (1.0 - self.dampening) as f32,
            weight_decay: self.weight_decay as f32,
            grad_sign: grad_sign(self.maximize),
            nesterov: self.nesterov as u32,
            _pad: [0; 2],
        }
    }
}
