use super::{
    Class, Shader, Sums, TorchSwitch, UNFUSED, WeightDecay, check_adam_args, check_non_negative,
    grad_sign, with_wd_and_maximize,
};
use crate::error::Result;
use crate::reference::{Real, lerp};
use serde::{Deserialize, Serialize};

/// `torch.optim.NAdam`: Adam with Nesterov momentum and momentum decay.
///
/// With `g` the gradient (negated when `maximize`), `t` the step number starting at 1,
/// `λ` = `weight_decay` and `ψ` = `momentum_decay`:
///
/// ```text
/// g ← g + λ·θ                      (if λ ≠ 0; with decoupled_weight_decay θ ← θ·(1 − lr·λ))
/// μt = β1·(1 − ½·0.96^(t·ψ)),  μt+1 = β1·(1 − ½·0.96^((t+1)·ψ))
/// Π ← Π·μt                         (mu_product, a per-tensor scalar starting at 1)
/// m ← m + (1 − β1)·(g − m)         (exp_avg)
/// v ← β2·v + (1 − β2)·g²           (exp_avg_sq)
/// d = √(v / (1 − β2ᵗ)) + ε
/// θ ← θ − lr·(1 − μt)/(1 − Π) · g/d − lr·μt+1/(1 − Π·μt+1) · m/d
/// ```
///
/// `mu_product` lives on the GPU in f32, as PyTorch keeps it, so that it follows a schedule
/// that cycles β1. State: `exp_avg`, `exp_avg_sq`, and the scalar `mu_product`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NAdam {
    /// Learning rate (default 2e-3).
    pub lr: f64,
    /// Coefficients of the running averages of the gradient and its square (default
    /// (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// Weight decay (default 0).
    pub weight_decay: f64,
    /// Momentum decay ψ (default 4e-3).
    pub momentum_decay: f64,
    /// Decay the parameters by `lr·weight_decay` instead of adding `weight_decay·θ` to the
    /// gradient (default false).
    pub decoupled_weight_decay: bool,
    /// Maximize the objective instead of minimizing (default false).
    pub maximize: bool,
}

impl Default for NAdam {
    fn default() -> Self {
        Self {
            lr: 2e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            momentum_decay: 4e-3,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

/// One parameter group's record in `shaders/nadam.wgsl` (`Hyper`); keep the two in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct NadamHyper {
    lr: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    ln_beta2: f32,
    psi_ln_096: f32,
    eps: f32,
    weight_decay: f32,
    decay: f32,
    grad_sign: f32,
    _pad: f32,
}

const SHADER: Shader = Shader {
    file: "nadam.wgsl",
    source: include_str!("../../shaders/nadam.wgsl"),
    switches: &[],
    hyper_size: size_of::<NadamHyper>() as u64,
    sums: Sums::Never,
    factored: 0,
    apply: 0,
};

impl NAdam {
    /// μ of step `t`: `β1·(1 − ½·0.96^(t·ψ))`, in f64.
    fn mu(&self, t: f64) -> f64 {
        self.betas.0 * (1.0 - 0.5 * 0.96f64.powf(t * self.momentum_decay))
    }
}

impl NAdam {
    /// How the group's weight decay applies: L2, or decoupled.
    fn decay_rule(&self) -> WeightDecay {
        WeightDecay::new(self.lr, self.weight_decay, self.decoupled_weight_decay)
    }
}

impl Class for NAdam {
    const NAME: &'static str = "NAdam";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [TorchSwitch] = UNFUSED;
    type Hyper = NadamHyper;

    fn validate(&self) -> Result<()> {
        check_adam_args(self.lr, self.eps, self.betas, self.weight_decay)?;
        check_non_negative("momentum_decay value", self.momentum_decay)
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn momentum_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.betas.0)
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq"]
    }

    fn scalar_names(&self) -> &'static [&'static str] {
        &["mu_product"]
    }

    fn initial_scalar(&self, _name: &str) -> f64 {
        1.0
    }

    fn hyper(&self) -> NadamHyper {
        let (b1, b2) = self.betas;
        let (weight_decay, decay) = self.decay_rule().hyper();
        NadamHyper {
            lr: self.lr as f32,
            beta1: b1 as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            ln_beta2: b2.ln().max(-87.0) as f32,
            psi_ln_096: (self.momentum_decay * 0.96f64.ln()) as f32,
            eps: self.eps as f32,
            weight_decay,
            decay,
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
        scalars: &mut [F],
    ) {
        let (b1, b2) = self.betas;
        let t = t as f64;
        let (mu, mu_next) = (self.mu(t), self.mu(t + 1.0));
        // PyTorch keeps mu_product as an f32 tensor, in an f64 run too.
        let mu_product = f64::from((scalars[0].to_f64() as f32) * (mu as f32));
        scalars[0] = F::of(mu_product);
        let coef_grad = F::of(-self.lr * (1.0 - mu) / (1.0 - mu_product));
        let coef_avg = F::of(-self.lr * mu_next / (1.0 - mu_product * mu_next));
        let bc2 = F::of(1.0 - b2.powf(t));
        let decay = self.decay_rule();
        let (eps, sign) = (F::of(self.eps), F::of(grad_sign(self.maximize).into()));
        let (one_minus_b1, beta2, one_minus_b2) = (F::of(1.0 - b1), F::of(b2), F::of(1.0 - b2));
        let [m, v] = state else {
            panic!("NAdam keeps exp_avg and exp_avg_sq");
        };
        for (i, (p, &g)) in param.iter_mut().zip(grad).enumerate() {
            let g = decay.grad(sign, p, g);
            m[i] = lerp(m[i], g, one_minus_b1);
            v[i] = v[i] * beta2 + one_minus_b2 * g * g;
            let denom = (v[i] / bc2).sqrt() + eps;
            *p += coef_grad * g / denom;
            *p += coef_avg * m[i] / denom;
        }
    }

    fn cases() -> Vec<Self> {
        with_wd_and_maximize(0.05, |weight_decay, maximize| {
            let nadam = |decoupled_weight_decay, momentum_decay| NAdam {
                lr: 0.01,
                betas: (0.8, 0.99),
                weight_decay,
                momentum_decay,
                decoupled_weight_decay,
                maximize,
                ..Default::default()
            };
            vec![nadam(false, 4e-3), nadam(true, 0.05)]
        })
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        vec![("nadam", NAdam::default())]
    }
}
