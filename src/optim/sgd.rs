use super::{
    Class, NOT_CAPTURABLE, Shader, Sums, TorchSwitch, WeightDecay, check, check_non_negative,
    grad_sign, py_float, with_wd_and_maximize,
};
use crate::error::Result;
use crate::reference::Real;
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

/// The kernel template's view of `shaders/sgd.wgsl`.
const SHADER: Shader = Shader {
    file: "sgd.wgsl",
    source: include_str!("../../shaders/sgd.wgsl"),
    switches: &["MOMENTUM"],
    hyper_size: size_of::<SgdHyper>() as u64,
    sums: Sums::Never,
    factored: 0,
    apply: 0,
};

impl Class for SGD {
    const NAME: &'static str = "SGD";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [TorchSwitch] = NOT_CAPTURABLE;
    const STEP_STATE: bool = false;
    type Hyper = SgdHyper;

    fn validate(&self) -> Result<()> {
        check_non_negative("learning rate", self.lr)?;
        check_non_negative("momentum value", self.momentum)?;
        check_non_negative("weight_decay value", self.weight_decay)?;
        check(!self.dampening.is_nan(), || {
            format!("Invalid dampening value: {}", py_float(self.dampening))
        })?;
        check(
            !self.nesterov || (self.momentum > 0.0 && self.dampening == 0.0),
            || "Nesterov momentum requires a momentum and zero dampening".to_string(),
        )
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn momentum_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.momentum)
    }

    fn switches(&self) -> u32 {
        u32::from(self.momentum != 0.0)
    }

    fn state_names(&self) -> &'static [&'static str] {
        if self.momentum != 0.0 {
            &["momentum_buffer"]
        } else {
            &[]
        }
    }

    /// Whether the momentum buffer exists yet (PyTorch's `buf is None`) follows from each
    /// tensor's step count on the GPU.
    fn hyper(&self) -> SgdHyper {
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

    fn reference<F: Real>(
        &self,
        t: u64,
        _shape: &[usize],
        param: &mut [F],
        grad: &[F],
        state: &mut [Vec<F>],
        _scalars: &mut [F],
    ) {
        let sign = F::of(grad_sign(self.maximize).into());
        let lr = F::of(self.lr);
        let decay = WeightDecay::l2(self.weight_decay);
        let (momentum, damp) = (F::of(self.momentum), F::of(1.0 - self.dampening));
        for (i, (p, &g)) in param.iter_mut().zip(grad).enumerate() {
            let mut g = decay.grad(sign, p, g);
            if let Some(buf) = state.first_mut().map(|b| &mut b[i]) {
                *buf = if t == 1 {
                    g
                } else {
                    *buf * momentum + damp * g
                };
                g = if self.nesterov {
                    g + momentum * *buf
                } else {
                    *buf
                };
            }
            *p -= lr * g;
        }
    }

    fn cases() -> Vec<Self> {
        with_wd_and_maximize(0.05, |weight_decay, maximize| {
            [
                (0.0, 0.0, false),
                (0.9, 0.0, false),
                (0.8, 0.3, false),
                (0.9, 0.0, true),
            ]
            .into_iter()
            .map(|(momentum, dampening, nesterov)| SGD {
                lr: 0.05,
                momentum,
                dampening,
                nesterov,
                weight_decay,
                maximize,
            })
            .collect()
        })
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        let momentum = SGD {
            momentum: 0.9,
            ..Default::default()
        };
        vec![("sgd", SGD::default()), ("sgd-momentum", momentum)]
    }
}
