use super::{
    Class, Shader, Sums, TorchSwitch, UNFUSED, WeightDecay, check_adam_args, grad_sign,
    with_wd_and_maximize,
};
use crate::error::Result;
use crate::reference::{Real, lerp};
use serde::{Deserialize, Serialize};

/// `torch.optim.Adamax`: Adam with the infinity norm in place of the second moment.
///
/// With `g` the gradient (negated when `maximize`), `t` the step number starting at 1, and
/// `λ` = `weight_decay`:
///
/// ```text
/// g ← g + λ·θ                      (if λ ≠ 0)
/// m ← m + (1 − β1)·(g − m)         (exp_avg.lerp_(g, 1 − β1))
/// u ← max(β2·u, |g| + ε)           (exp_inf)
/// θ ← θ − lr/(1 − β1ᵗ) · m / u
/// ```
///
/// State: `exp_avg`, `exp_inf`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adamax {
    /// Learning rate (default 2e-3).
    pub lr: f64,
    /// Coefficients of the running average and of the decaying infinity norm (default
    /// (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to `|g|` in the infinity norm (default 1e-8).
    pub eps: f64,
    /// L2 penalty (default 0).
    pub weight_decay: f64,
    /// Maximize the objective instead of minimizing (default false).
    pub maximize: bool,
}

impl Default for Adamax {
    fn default() -> Self {
        Self {
            lr: 2e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// One parameter group's record in `shaders/adamax.wgsl` (`Hyper`); keep the two in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AdamaxHyper {
    lr: f32,
    one_minus_beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    ln_beta1: f32,
    grad_sign: f32,
    _pad: f32,
}

const SHADER: Shader = Shader {
    file: "adamax.wgsl",
    source: include_str!("../../shaders/adamax.wgsl"),
    switches: &[],
    hyper_size: size_of::<AdamaxHyper>() as u64,
    sums: Sums::Never,
    factored: 0,
    apply: 0,
};

impl Class for Adamax {
    const NAME: &'static str = "Adamax";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [TorchSwitch] = UNFUSED;
    type Hyper = AdamaxHyper;

    fn validate(&self) -> Result<()> {
        check_adam_args(self.lr, self.eps, self.betas, self.weight_decay)
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn momentum_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.betas.0)
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_inf"]
    }

    /// The kernel forms `1 − β1ᵗ` from each tensor's step count, as Adam's does.
    fn hyper(&self) -> AdamaxHyper {
        let (b1, b2) = self.betas;
        AdamaxHyper {
            lr: self.lr as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            ln_beta1: b1.ln().max(-87.0) as f32,
            grad_sign: grad_sign(self.maximize),
            _pad: 0.0,
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
        let (b1, b2) = self.betas;
        let neg_clr = F::of(-(self.lr / (1.0 - b1.powf(t as f64))));
        let (one_minus_b1, beta2, eps) = (F::of(1.0 - b1), F::of(b2), F::of(self.eps));
        let decay = WeightDecay::l2(self.weight_decay);
        let sign = F::of(grad_sign(self.maximize).into());
        let [m, u] = state else {
            panic!("Adamax keeps exp_avg and exp_inf");
        };
        for (i, (p, &g)) in param.iter_mut().zip(grad).enumerate() {
            let g = decay.grad(sign, p, g);
            m[i] = lerp(m[i], g, one_minus_b1);
            u[i] = (u[i] * beta2).max(g.abs() + eps);
            *p += (neg_clr * m[i]) / u[i];
        }
    }

    fn cases() -> Vec<Self> {
        with_wd_and_maximize(0.05, |weight_decay, maximize| {
            vec![Adamax {
                lr: 0.01,
                betas: (0.8, 0.99),
                weight_decay,
                maximize,
                ..Default::default()
            }]
        })
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        vec![("adamax", Adamax::default())]
    }
}
