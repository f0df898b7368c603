use super::{Kernel, check, grad_sign, non_negative, py_float};
use crate::error::Result;
use serde::{Deserialize, Serialize};

/// `torch.optim.Adam`, with L2 weight decay added to the gradient.
///
/// With `g` the gradient (negated when `maximize`), `t` the step number starting at 1, and
/// `λ` = `weight_decay`:
///
/// ```text
/// g ← g + λ·θ                          (if λ ≠ 0)
/// m ← m + (1 − β1)·(g − m)             (exp_avg.lerp_(g, 1 − β1))
/// v ← β2·v + (1 − β2)·g²               (exp_avg_sq)
/// v̂ ← max(v̂, v) if amsgrad, else v̂ = v (max_exp_avg_sq keeps the running max of raw v)
/// θ ← θ − lr/(1 − β1ᵗ) · m / (√v̂ / √(1 − β2ᵗ) + ε)
/// ```
///
/// ε is added after bias-correcting √v̂. State: `exp_avg`, `exp_avg_sq`, and `max_exp_avg_sq`
/// with `amsgrad`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adam {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Coefficients of the running averages of the gradient and its square (default
    /// (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// L2 penalty (default 0).
    pub weight_decay: f64,
    /// Use the AMSGrad variant (default false).
    pub amsgrad: bool,
    /// Maximize the objective instead of minimizing (default false).
    pub maximize: bool,
}

/// `torch.optim.AdamW`: [`Adam`] with decoupled weight decay. Before the Adam update,
/// `θ ← θ·(1 − lr·λ)`, and λ is not added to the gradient. The default `weight_decay` is 1e-2.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamW {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Coefficients of the running averages (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay (default 1e-2).
    pub weight_decay: f64,
    /// Use the AMSGrad variant (default false).
    pub amsgrad: bool,
    /// Maximize the objective instead of minimizing (default false).
    pub maximize: bool,
}

impl Default for Adam {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            maximize: false,
        }
    }
}

impl Default for AdamW {
    fn default() -> Self {
        let a = Adam::default();
        Self {
            lr: a.lr,
            betas: a.betas,
            eps: a.eps,
            weight_decay: 1e-2,
            amsgrad: a.amsgrad,
            maximize: a.maximize,
        }
    }
}

/// One parameter group's record in `shaders/adam.wgsl` (`Hyper`); keep the two in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AdamHyper {
    pub(crate) lr: f32,
    pub(crate) one_minus_beta1: f32,
    pub(crate) beta2: f32,
    pub(crate) one_minus_beta2: f32,
    pub(crate) ln_beta1: f32,
    pub(crate) ln_beta2: f32,
    pub(crate) eps: f32,
    pub(crate) weight_decay: f32,
    pub(crate) decay: f32,
    pub(crate) grad_sign: f32,
    pub(crate) _pad: [f32; 2],
}
const _: () = assert!(size_of::<AdamHyper>() == 48);

/// The fields Adam and AdamW share, with how weight decay applies.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdamLike {
    pub(crate) lr: f64,
    pub(crate) betas: (f64, f64),
    pub(crate) eps: f64,
    pub(crate) weight_decay: f64,
    pub(crate) amsgrad: bool,
    pub(crate) maximize: bool,
    /// AdamW's decoupled decay (`param *= 1 - lr * weight_decay`) instead of Adam's L2 term.
    pub(crate) decoupled: bool,
}

impl AdamLike {
    fn validate(&self) -> Result<()> {
        check(non_negative(self.lr), || {
            format!("Invalid learning rate: {}", py_float(self.lr))
        })?;
        check(non_negative(self.eps), || {
            format!("Invalid epsilon value: {}", py_float(self.eps))
        })?;
        let (b1, b2) = self.betas;
        check(non_negative(b1) && b1 < 1.0, || {
            format!("Invalid beta parameter at index 0: {}", py_float(b1))
        })?;
        check(non_negative(b2) && b2 < 1.0, || {
            format!("Invalid beta parameter at index 1: {}", py_float(b2))
        })?;
        check(non_negative(self.weight_decay), || {
            format!(
                "Invalid weight_decay value: {}",
                py_float(self.weight_decay)
            )
        })
    }

    fn kernel(&self) -> Kernel {
        if self.amsgrad {
            Kernel::AdamAmsgrad
        } else {
            Kernel::Adam
        }
    }

    /// The group's record for one step. The kernel forms the bias corrections `1 − βᵗ` from
    /// each tensor's step count `t` on the GPU, as `-expm1(t·ln β)`, with `ln β` computed here
    /// in f64.
    fn hyper(&self) -> AdamHyper {
        let (b1, b2) = self.betas;
        let (weight_decay, decay) = if self.decoupled {
            (0.0, 1.0 - self.lr * self.weight_decay)
        } else {
            (self.weight_decay, 1.0)
        };
        AdamHyper {
            lr: self.lr as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            // ln 0 is -inf; -87 gives the same bias corrections (1 - e^(-87t) is 1 in f32)
            // without inf arithmetic, which WGSL implementations may assume away.
            ln_beta1: b1.ln().max(-87.0) as f32,
            ln_beta2: b2.ln().max(-87.0) as f32,
            eps: self.eps as f32,
            weight_decay: weight_decay as f32,
            decay: decay as f32,
            grad_sign: grad_sign(self.maximize),
            _pad: [0.0; 2],
        }
    }
}

impl Adam {
    /// The shared Adam/AdamW view of this config.
    pub(crate) fn like(&self) -> AdamLike {
        AdamLike {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            amsgrad: self.amsgrad,
            maximize: self.maximize,
            decoupled: false,
        }
    }

    /// PyTorch's constructor checks.
    pub fn validate(&self) -> Result<()> {
        self.like().validate()
    }

    pub(crate) fn kernel(&self) -> Kernel {
        self.like().kernel()
    }

    pub(crate) fn hyper(&self) -> AdamHyper {
        self.like().hyper()
    }
}

impl AdamW {
    /// The shared Adam/AdamW view of this config.
    pub(crate) fn like(&self) -> AdamLike {
        AdamLike {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            amsgrad: self.amsgrad,
            maximize: self.maximize,
            decoupled: true,
        }
    }

    /// PyTorch's constructor checks (the same as Adam's).
    pub fn validate(&self) -> Result<()> {
        self.like().validate()
    }

    pub(crate) fn kernel(&self) -> Kernel {
        self.like().kernel()
    }

    pub(crate) fn hyper(&self) -> AdamHyper {
        self.like().hyper()
    }
}
