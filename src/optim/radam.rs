use super::{
    Class, Shader, Sums, TorchSwitch, UNFUSED, WeightDecay, check_adam_args, grad_sign,
    with_wd_and_maximize,
};
use crate::error::Result;
use crate::reference::{Real, lerp};
use serde::{Deserialize, Serialize};

/// `torch.optim.RAdam`: Adam whose adaptive step is rectified once the variance of its
/// second moment is tractable.
///
/// With `g` the gradient (negated when `maximize`), `t` the step number starting at 1, and
/// `λ` = `weight_decay`:
///
/// ```text
/// g ← g + λ·θ                            (if λ ≠ 0; with decoupled_weight_decay θ ← θ·(1 − lr·λ))
/// m ← m + (1 − β1)·(g − m)               (exp_avg)
/// v ← β2·v + (1 − β2)·g²                 (exp_avg_sq)
/// m̂ = m / (1 − β1ᵗ)
/// ρ∞ = 2/(1 − β2) − 1,  ρt = ρ∞ − 2t·β2ᵗ/(1 − β2ᵗ)
/// if ρt > 5: r = √((ρt − 4)(ρt − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρt))
///            θ ← θ − lr·m̂ · √(1 − β2ᵗ)/(√v + ε) · r
/// else:      θ ← θ − lr·m̂
/// ```
///
/// The kernel evaluates ρt in f32 without cancellation (a series in `t·ln β2` for early
/// steps), so that it takes the branch PyTorch's f64 takes. State: `exp_avg`, `exp_avg_sq`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RAdam {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Coefficients of the running averages of the gradient and its square (default
    /// (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// Weight decay (default 0).
    pub weight_decay: f64,
    /// Decay the parameters by `lr·weight_decay` instead of adding `weight_decay·θ` to the
    /// gradient (default false).
    pub decoupled_weight_decay: bool,
    /// Maximize the objective instead of minimizing (default false).
    pub maximize: bool,
}

impl Default for RAdam {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

/// One parameter group's record in `shaders/radam.wgsl` (`Hyper`); keep the two in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RadamHyper {
    lr: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    ln_beta1: f32,
    neg_ln_beta2: f32,
    rho_inf: f32,
    eps: f32,
    weight_decay: f32,
    decay: f32,
    grad_sign: f32,
    _pad: f32,
}

const SHADER: Shader = Shader {
    file: "radam.wgsl",
    source: include_str!("../../shaders/radam.wgsl"),
    switches: &[],
    hyper_size: size_of::<RadamHyper>() as u64,
    sums: Sums::Never,
    factored: 0,
    apply: 0,
};

impl RAdam {
    /// ρt of step `t`, in f64 as PyTorch computes it.
    fn rho(&self, t: f64) -> (f64, f64) {
        let b2 = self.betas.1;
        let rho_inf = 2.0 / (1.0 - b2) - 1.0;
        let b2t = b2.powf(t);
        (rho_inf - 2.0 * t * b2t / (1.0 - b2t), rho_inf)
    }
}

impl RAdam {
    /// How the group's weight decay applies: L2, or decoupled.
    fn decay_rule(&self) -> WeightDecay {
        WeightDecay::new(self.lr, self.weight_decay, self.decoupled_weight_decay)
    }
}

impl Class for RAdam {
    const NAME: &'static str = "RAdam";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [TorchSwitch] = UNFUSED;
    type Hyper = RadamHyper;

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
        &["exp_avg", "exp_avg_sq"]
    }

    fn hyper(&self) -> RadamHyper {
        let (b1, b2) = self.betas;
        let (weight_decay, decay) = self.decay_rule().hyper();
        RadamHyper {
            lr: self.lr as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            ln_beta1: b1.ln().max(-87.0) as f32,
            neg_ln_beta2: -b2.ln().max(-87.0) as f32,
            rho_inf: self.rho(1.0).1 as f32,
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
        _scalars: &mut [F],
    ) {
        let (b1, b2) = self.betas;
        let t = t as f64;
        let bc1 = F::of(1.0 - b1.powf(t));
        let bc2_sqrt = F::of((1.0 - b2.powf(t)).sqrt());
        let (rho_t, rho_inf) = self.rho(t);
        let rect = (rho_t > 5.0).then(|| {
            F::of(
                ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                    / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                    .sqrt(),
            )
        });
        let decay = self.decay_rule();
        let (lr, eps, one) = (F::of(self.lr), F::of(self.eps), F::of(1.0));
        let (one_minus_b1, beta2, one_minus_b2) = (F::of(1.0 - b1), F::of(b2), F::of(1.0 - b2));
        let sign = F::of(grad_sign(self.maximize).into());
        let [m, v] = state else {
            panic!("RAdam keeps exp_avg and exp_avg_sq");
        };
        for (i, (p, &g)) in param.iter_mut().zip(grad).enumerate() {
            let g = decay.grad(sign, p, g);
            m[i] = lerp(m[i], g, one_minus_b1);
            v[i] = v[i] * beta2 + one_minus_b2 * g * g;
            let corrected = m[i] / bc1;
            *p -= match rect {
                Some(rect) => {
                    let adaptive = one / (v[i].sqrt() + eps) * bc2_sqrt;
                    corrected * lr * adaptive * rect
                }
                None => corrected * lr,
            };
        }
    }

    fn cases() -> Vec<Self> {
        with_wd_and_maximize(0.05, |weight_decay, maximize| {
            let radam = |decoupled_weight_decay| RAdam {
                lr: 0.01,
                betas: (0.8, 0.99),
                weight_decay,
                decoupled_weight_decay,
                maximize,
                ..Default::default()
            };
            vec![radam(false), radam(true)]
        })
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        vec![("radam", RAdam::default())]
    }
}
