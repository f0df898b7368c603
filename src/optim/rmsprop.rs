use super::{
    Class, Shader, Sums, TorchSwitch, UNFUSED, WeightDecay, check_lr_eps, check_non_negative,
    grad_sign, with_wd_and_maximize,
};
use crate::error::Result;
use crate::reference::{Real, lerp};
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

/// The kernel template's view of `shaders/rmsprop.wgsl`.
const SHADER: Shader = Shader {
    file: "rmsprop.wgsl",
    source: include_str!("../../shaders/rmsprop.wgsl"),
    switches: &["CENTERED", "MOMENTUM"],
    hyper_size: size_of::<RmspropHyper>() as u64,
    sums: Sums::Never,
    factored: 0,
    apply: 0,
};

impl Class for RMSprop {
    const NAME: &'static str = "RMSprop";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [TorchSwitch] = UNFUSED;
    type Hyper = RmspropHyper;

    fn validate(&self) -> Result<()> {
        check_lr_eps(self.lr, self.eps)?;
        check_non_negative("momentum value", self.momentum)?;
        check_non_negative("weight_decay value", self.weight_decay)?;
        check_non_negative("alpha value", self.alpha)
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn momentum_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.momentum)
    }

    fn switches(&self) -> u32 {
        u32::from(self.centered) | u32::from(self.momentum > 0.0) << 1
    }

    fn state_names(&self) -> &'static [&'static str] {
        match (self.centered, self.momentum > 0.0) {
            (false, false) => &["square_avg"],
            (true, false) => &["square_avg", "grad_avg"],
            (false, true) => &["square_avg", "momentum_buffer"],
            (true, true) => &["square_avg", "grad_avg", "momentum_buffer"],
        }
    }

    fn hyper(&self) -> RmspropHyper {
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

    fn reference<F: Real>(
        &self,
        _t: u64,
        _shape: &[usize],
        param: &mut [F],
        grad: &[F],
        state: &mut [Vec<F>],
        _scalars: &mut [F],
    ) {
        let (lr, alpha, one_minus_alpha, eps, momentum, sign) = (
            F::of(self.lr),
            F::of(self.alpha),
            F::of(1.0 - self.alpha),
            F::of(self.eps),
            F::of(self.momentum),
            F::of(grad_sign(self.maximize).into()),
        );
        let decay = WeightDecay::l2(self.weight_decay);
        // grad_avg and momentum_buffer follow square_avg, when present, in that order.
        let [sq, rest @ ..] = state else {
            panic!("RMSprop keeps square_avg");
        };
        let (grad_avg, momentum_buffer) = match rest {
            [a, b] => (Some(a), Some(b)),
            [a] if self.centered => (Some(a), None),
            [b] => (None, Some(b)),
            _ => (None, None),
        };
        let (mut grad_avg, mut momentum_buffer) = (grad_avg, momentum_buffer);
        for (i, (p, &g)) in param.iter_mut().zip(grad).enumerate() {
            let g = decay.grad(sign, p, g);
            sq[i] = sq[i] * alpha + one_minus_alpha * g * g;
            let mut var = sq[i];
            if let Some(ga) = grad_avg.as_deref_mut() {
                ga[i] = lerp(ga[i], g, one_minus_alpha);
                var -= ga[i] * ga[i];
            }
            let d = var.sqrt() + eps;
            match momentum_buffer.as_deref_mut() {
                Some(buf) => {
                    buf[i] = buf[i] * momentum + g / d;
                    *p -= lr * buf[i];
                }
                None => *p -= lr * (g / d),
            }
        }
    }

    fn cases() -> Vec<Self> {
        with_wd_and_maximize(0.05, |weight_decay, maximize| {
            let mut out = Vec::new();
            for centered in [false, true] {
                for momentum in [0.0, 0.9] {
                    out.push(RMSprop {
                        lr: 0.01,
                        alpha: 0.9,
                        weight_decay,
                        momentum,
                        centered,
                        maximize,
                        ..Default::default()
                    });
                }
            }
            out
        })
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        let rms = RMSprop::default();
        let centered = RMSprop {
            centered: true,
            ..rms
        };
        let momentum = RMSprop {
            momentum: 0.9,
            ..rms
        };
        let both = RMSprop {
            centered: true,
            momentum: 0.9,
            ..rms
        };
        vec![
            ("rmsprop", rms),
            ("rmsprop-centered", centered),
            ("rmsprop-momentum", momentum),
            ("rmsprop-centered-momentum", both),
        ]
    }
}
