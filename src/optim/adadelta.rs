use super::{
    Class, Shader, Sums, TorchSwitch, UNFUSED, WeightDecay, check, check_non_negative, grad_sign,
    py_float, with_wd_and_maximize,
};
use crate::error::Result;
use crate::reference::Real;
use serde::{Deserialize, Serialize};

/// `torch.optim.Adadelta`.
///
/// With `g` the gradient (negated when `maximize`) and `λ` = `weight_decay`:
///
/// ```text
/// g ← g + λ·θ                          (if λ ≠ 0)
/// s ← ρ·s + (1 − ρ)·g²                 (square_avg)
/// Δ ← √(a + ε) / √(s + ε) · g          (a: acc_delta before this step)
/// a ← ρ·a + (1 − ρ)·Δ²                 (acc_delta)
/// θ ← θ − lr·Δ
/// ```
///
/// State: `square_avg`, `acc_delta`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adadelta {
    /// Scales the update before it is applied (default 1.0).
    pub lr: f64,
    /// Coefficient of the running averages of squared gradients and updates (default 0.9).
    pub rho: f64,
    /// Added inside both square roots (default 1e-6).
    pub eps: f64,
    /// L2 penalty (default 0).
    pub weight_decay: f64,
    /// Maximize the objective instead of minimizing (default false).
    pub maximize: bool,
}

impl Default for Adadelta {
    fn default() -> Self {
        Self {
            lr: 1.0,
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// One parameter group's record in `shaders/adadelta.wgsl` (`Hyper`); keep the two in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AdadeltaHyper {
    lr: f32,
    rho: f32,
    one_minus_rho: f32,
    eps: f32,
    weight_decay: f32,
    grad_sign: f32,
    _pad: [f32; 2],
}

const SHADER: Shader = Shader {
    file: "adadelta.wgsl",
    source: include_str!("../../shaders/adadelta.wgsl"),
    switches: &[],
    hyper_size: size_of::<AdadeltaHyper>() as u64,
    sums: Sums::Never,
    factored: 0,
    apply: 0,
};

impl Class for Adadelta {
    const NAME: &'static str = "Adadelta";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [TorchSwitch] = UNFUSED;
    type Hyper = AdadeltaHyper;

    fn validate(&self) -> Result<()> {
        check_non_negative("learning rate", self.lr)?;
        check((0.0..=1.0).contains(&self.rho), || {
            format!("Invalid rho value: {}", py_float(self.rho))
        })?;
        check_non_negative("epsilon value", self.eps)?;
        check_non_negative("weight_decay value", self.weight_decay)
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["square_avg", "acc_delta"]
    }

    fn hyper(&self) -> AdadeltaHyper {
        AdadeltaHyper {
            lr: self.lr as f32,
            rho: self.rho as f32,
            one_minus_rho: (1.0 - self.rho) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            grad_sign: grad_sign(self.maximize),
            _pad: [0.0; 2],
        }
    }

    fn reference<F: Real>(
        &self,
        _t: u64,
        _shape: &[usize],
        param: &mut [F],
        grad: &[F],
        state: &mut [Vec<F>],
        _scalars: &mut [F],
    ) {
        let (lr, rho, one_minus_rho, eps) = (
            F::of(self.lr),
            F::of(self.rho),
            F::of(1.0 - self.rho),
            F::of(self.eps),
        );
        let decay = WeightDecay::l2(self.weight_decay);
        let sign = F::of(grad_sign(self.maximize).into());
        let [sq, acc] = state else {
            panic!("Adadelta keeps square_avg and acc_delta");
        };
        for (i, (p, &g)) in param.iter_mut().zip(grad).enumerate() {
            let g = decay.grad(sign, p, g);
            sq[i] = sq[i] * rho + one_minus_rho * g * g;
            let std = (sq[i] + eps).sqrt();
            let delta = (acc[i] + eps).sqrt() / std * g;
            acc[i] = acc[i] * rho + one_minus_rho * delta * delta;
            *p -= lr * delta;
        }
    }

    fn cases() -> Vec<Self> {
        with_wd_and_maximize(0.05, |weight_decay, maximize| {
            vec![Adadelta {
                lr: 0.5,
                rho: 0.8,
                weight_decay,
                maximize,
                ..Default::default()
            }]
        })
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        vec![("adadelta", Adadelta::default())]
    }
}
