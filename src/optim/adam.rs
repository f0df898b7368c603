use super::{
    Class, Shader, Sums, TorchSwitch, WeightDecay, check_adam_args, grad_sign, with_wd_and_maximize,
};
use crate::error::Result;
use crate::reference::{Real, lerp};
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
/// ε is added after bias-correcting √v̂. With `decoupled_weight_decay`, `θ ← θ·(1 − lr·λ)`
/// replaces the first line, as in [`AdamW`]. State: `exp_avg`, `exp_avg_sq`, and
/// `max_exp_avg_sq` with `amsgrad`.
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
    /// Decay the parameters by `lr·weight_decay` instead of adding `weight_decay·θ` to the
    /// gradient: AdamW's rule (default false).
    pub decoupled_weight_decay: bool,
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
            decoupled_weight_decay: false,
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

/// The kernel template's view of `shaders/adam.wgsl`, which Adam and AdamW share.
const SHADER: Shader = Shader {
    file: "adam.wgsl",
    source: include_str!("../../shaders/adam.wgsl"),
    switches: &["AMSGRAD"],
    hyper_size: size_of::<AdamHyper>() as u64,
    sums: Sums::Never,
    factored: 0,
    apply: 0,
};

/// The implementation switches `torch.optim.Adam` and `AdamW` take.
const SWITCHES: &[TorchSwitch] = &[
    TorchSwitch::Foreach,
    TorchSwitch::Capturable,
    TorchSwitch::Differentiable,
    TorchSwitch::Fused,
];

impl Adam {
    /// How the group's weight decay applies: L2, or decoupled.
    fn decay_rule(&self) -> WeightDecay {
        WeightDecay::new(self.lr, self.weight_decay, self.decoupled_weight_decay)
    }
}

impl Class for Adam {
    const NAME: &'static str = "Adam";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [TorchSwitch] = SWITCHES;
    type Hyper = AdamHyper;

    fn validate(&self) -> Result<()> {
        check_adam_args(self.lr, self.eps, self.betas, self.weight_decay)
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn momentum_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.betas.0)
    }

    fn switches(&self) -> u32 {
        u32::from(self.amsgrad)
    }

    fn state_names(&self) -> &'static [&'static str] {
        if self.amsgrad {
            &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
        } else {
            &["exp_avg", "exp_avg_sq"]
        }
    }

    /// The kernel forms the bias corrections `1 − βᵗ` from each tensor's step count `t` on the
    /// GPU, as `-expm1(t·ln β)`, with `ln β` computed here in f64.
    fn hyper(&self) -> AdamHyper {
        let (b1, b2) = self.betas;
        let (weight_decay, decay) = self.decay_rule().hyper();
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
            weight_decay,
            decay,
            grad_sign: grad_sign(self.maximize),
            _pad: [0.0; 2],
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
        let step_size = F::of(self.lr / (1.0 - b1.powf(t)));
        let bc2_sqrt = F::of((1.0 - b2.powf(t)).sqrt());
        let decay = self.decay_rule();
        let (eps, sign) = (F::of(self.eps), F::of(grad_sign(self.maximize).into()));
        let (one_minus_b1, beta2, one_minus_b2) = (F::of(1.0 - b1), F::of(b2), F::of(1.0 - b2));
        let [m, v, rest @ ..] = state else {
            panic!("Adam keeps exp_avg and exp_avg_sq");
        };
        for (i, (p, &g)) in param.iter_mut().zip(grad).enumerate() {
            let g = decay.grad(sign, p, g);
            m[i] = lerp(m[i], g, one_minus_b1);
            v[i] = v[i] * beta2 + one_minus_b2 * g * g;
            let mut second = v[i];
            if let Some(vmax) = rest.first_mut().map(|b| &mut b[i]) {
                *vmax = vmax.max(v[i]);
                second = *vmax;
            }
            *p -= step_size * (m[i] / (second.sqrt() / bc2_sqrt + eps));
        }
    }

    fn cases() -> Vec<Self> {
        with_wd_and_maximize(0.05, |weight_decay, maximize| {
            let adam = |amsgrad, decoupled_weight_decay| Adam {
                lr: 0.01,
                betas: (0.8, 0.99),
                weight_decay,
                amsgrad,
                maximize,
                decoupled_weight_decay,
                ..Default::default()
            };
            vec![adam(false, false), adam(true, false), adam(false, true)]
        })
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        let amsgrad = Adam {
            amsgrad: true,
            ..Default::default()
        };
        vec![("adam", Adam::default()), ("adam-amsgrad", amsgrad)]
    }
}

impl AdamW {
    /// This configuration as [`Adam`] with `decoupled_weight_decay`, which is what PyTorch's
    /// `AdamW` is.
    pub fn adam(&self) -> Adam {
        Adam {
            lr: self.lr,
            betas: self.betas,
            eps: self.eps,
            weight_decay: self.weight_decay,
            amsgrad: self.amsgrad,
            maximize: self.maximize,
            decoupled_weight_decay: true,
        }
    }
}

impl Class for AdamW {
    const NAME: &'static str = "AdamW";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [TorchSwitch] = SWITCHES;
    type Hyper = AdamHyper;

    fn validate(&self) -> Result<()> {
        Class::validate(&self.adam())
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn momentum_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.betas.0)
    }

    fn switches(&self) -> u32 {
        self.adam().switches()
    }

    fn state_names(&self) -> &'static [&'static str] {
        Class::state_names(&self.adam())
    }

    fn hyper(&self) -> AdamHyper {
        self.adam().hyper()
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
        self.adam()
            .reference(t, _shape, param, grad, state, _scalars);
    }

    fn cases() -> Vec<Self> {
        with_wd_and_maximize(0.1, |weight_decay, maximize| {
            [false, true]
                .into_iter()
                .map(|amsgrad| AdamW {
                    lr: 0.01,
                    weight_decay,
                    amsgrad,
                    maximize,
                    ..Default::default()
                })
                .collect()
        })
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        vec![("adamw", AdamW::default())]
    }
}
