use super::{
    Class, FOREACH, Shader, Sums, TorchSwitch, WeightDecay, cautious_factor, check, check_po_betas,
    check_po_lr, check_po_non_negative, grad_sign, py_float, stable_adamw_rms,
    with_wd_and_maximize,
};
use crate::error::Result;
use crate::reference::{Real, lerp};
use serde::{Deserialize, Serialize};

/// `ADOPT`, as the `pytorch-optimizer` package (4.1.0) defines it: the gradient normalized by
/// the previous step's second moment, clipped, then averaged.
///
/// With `g` the gradient (negated when `maximize`), `t` the step number starting at 1, `λ` =
/// `weight_decay` and `c(t) = t^clip_lambda`:
///
/// ```text
/// g ← g + λ·θ                 (coupled weight decay, if λ > 0)
/// θ ← θ·(1 − lr·λ)            (weight_decouple; θ·(1 − λ) with fixed_decay)
/// t = 1:  v ← v + g²          (exp_avg_sq; nothing else moves)
/// t > 1:  n = clamp(g / max(√v, ε), −c(t), c(t))
///         m ← m + (1 − β1)·(n − m)        (exp_avg.lerp_(n, 1 − β1))
///         θ ← θ − lr·m
///         v ← β2·v + (1 − β2)·g²
/// ```
///
/// ε is a floor under √v, not an addend. `cautious` and `stable_adamw` (the package's
/// per-parameter path) scale the update per tensor, from per-tensor sums on the GPU
/// (shaders/sums.wgsl). pytorch-optimizer counts steps per parameter group;
/// here each tensor keeps the count, and a checkpoint saves it as `<name>.step`. State:
/// `exp_avg`, `exp_avg_sq`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(clippy::upper_case_acronyms)]
pub struct ADOPT {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Coefficients of the running averages (default (0.9, 0.9999)).
    pub betas: (f64, f64),
    /// The exponent `p` of the clip bound `step^p` on the normalized gradient, or `None`
    /// (JSON `null`) for no clipping. The package takes a function of the step, by default
    /// `lambda step: math.pow(step, 0.25)`: the default here, 0.25, is that function.
    pub clip_lambda: Option<f64>,
    /// Weight decay (default 0).
    pub weight_decay: f64,
    /// Decay the parameter instead of adding `λ·θ` to the gradient (default false).
    pub weight_decouple: bool,
    /// Decoupled decay by `λ`, not `lr·λ` (default false).
    pub fixed_decay: bool,
    /// Floor under `√v` (default 1e-6).
    pub eps: f64,
    /// Maximize the objective instead of minimizing (default false).
    pub maximize: bool,
    /// The package's masked update, read from the param group (default false): `exp_avg`
    /// where it agrees in sign with the normalized gradient, times `numel / (count + 1)` of
    /// its tensor, else 0.
    pub cautious: bool,
    /// The package's StableAdamW scaling, read from the param group (default false): the
    /// update divided by `max(1, √mean(g² / max(v, 1e-16)))` of its tensor, with `v` before
    /// the step.
    pub stable_adamw: bool,
}

impl Default for ADOPT {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.9999),
            clip_lambda: Some(0.25),
            weight_decay: 0.0,
            weight_decouple: false,
            fixed_decay: false,
            eps: 1e-6,
            maximize: false,
            cautious: false,
            stable_adamw: false,
        }
    }
}

/// One parameter group's record in `shaders/adopt.wgsl` (`Hyper`); keep the two in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AdoptHyper {
    lr: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    decay: f32,
    grad_sign: f32,
    clip_exponent: f32,
    clipping: u32,
    _pad: [f32; 2],
}

const SHADER: Shader = Shader {
    file: "adopt.wgsl",
    source: include_str!("../../shaders/adopt.wgsl"),
    switches: &["CAUTIOUS", "STABLE_ADAMW"],
    hyper_size: size_of::<AdoptHyper>() as u64,
    sums: Sums::Switches(0b11),
    factored: 0,
    apply: 0,
};

impl ADOPT {
    /// How the group's weight decay applies.
    fn decay_rule(&self) -> WeightDecay {
        WeightDecay::pytorch_optimizer(
            self.lr,
            self.weight_decay,
            self.weight_decouple,
            self.fixed_decay,
        )
    }
}

impl Class for ADOPT {
    const NAME: &'static str = "ADOPT";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [TorchSwitch] = FOREACH;
    type Hyper = AdoptHyper;

    /// The package's checks, in its order (learning rate, betas, weight decay, eps), then the
    /// clip exponent.
    fn validate(&self) -> Result<()> {
        check_po_lr(self.lr)?;
        check_po_betas(&[self.betas.0, self.betas.1])?;
        check_po_non_negative("weight_decay", self.weight_decay)?;
        check_po_non_negative("eps", self.eps)?;
        if let Some(p) = self.clip_lambda {
            check(p.is_finite(), || {
                format!(
                    "clip_lambda must be null or a finite exponent, not {}",
                    py_float(p)
                )
            })?;
        }
        Ok(())
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn momentum_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.betas.0)
    }

    fn switches(&self) -> u32 {
        u32::from(self.cautious) | u32::from(self.stable_adamw) << 1
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["exp_avg", "exp_avg_sq"]
    }

    fn hyper(&self) -> AdoptHyper {
        let (b1, b2) = self.betas;
        let (weight_decay, decay) = self.decay_rule().hyper();
        AdoptHyper {
            lr: self.lr as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            eps: self.eps as f32,
            weight_decay,
            decay,
            grad_sign: grad_sign(self.maximize),
            clip_exponent: self.clip_lambda.unwrap_or(0.0) as f32,
            clipping: u32::from(self.clip_lambda.is_some()),
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
        let decay = self.decay_rule();
        let (lr, eps, sign) = (
            F::of(self.lr),
            F::of(self.eps),
            F::of(grad_sign(self.maximize).into()),
        );
        let (one_minus_b1, beta2, one_minus_b2) = (F::of(1.0 - b1), F::of(b2), F::of(1.0 - b2));
        let clip = self.clip_lambda.map(|p| F::of((t as f64).powf(p)));
        let [m, v] = state else {
            panic!("ADOPT keeps exp_avg and exp_avg_sq");
        };
        let g: Vec<F> = param
            .iter_mut()
            .zip(grad)
            .map(|(p, &g)| decay.grad(sign, p, g))
            .collect();
        if t == 1 {
            for (v, &g) in v.iter_mut().zip(&g) {
                *v += g * g;
            }
            return;
        }
        let mut n = Vec::with_capacity(g.len());
        for (i, &g) in g.iter().enumerate() {
            let mut x = g / v[i].sqrt().max(eps);
            if let Some(c) = clip {
                x = x.max(-c).min(c);
            }
            m[i] = lerp(m[i], x, one_minus_b1);
            n.push(x);
        }
        let cautious = self.cautious.then(|| cautious_factor(m, &n));
        let rms = self.stable_adamw.then(|| stable_adamw_rms(&g, v));
        for (i, p) in param.iter_mut().enumerate() {
            let mut step = m[i];
            if let Some(factor) = cautious {
                step *= if m[i] * n[i] > F::of(0.0) {
                    factor
                } else {
                    F::of(0.0)
                };
            }
            if let Some(rms) = rms {
                step /= rms;
            }
            *p -= lr * step;
            v[i] = v[i] * beta2 + one_minus_b2 * g[i] * g[i];
        }
    }

    fn cases() -> Vec<Self> {
        with_wd_and_maximize(0.1, |weight_decay, maximize| {
            let adopt = |clip_lambda, weight_decouple, fixed_decay| ADOPT {
                lr: 0.01,
                betas: (0.8, 0.99),
                clip_lambda,
                weight_decay,
                weight_decouple,
                fixed_decay,
                eps: 1e-3,
                maximize,
                ..Default::default()
            };
            vec![
                adopt(Some(0.25), false, false),
                adopt(None, true, false),
                adopt(Some(0.5), true, true),
                // Decoupled weight decay: with coupled decay, g + λθ cancels to near 0 at some
                // of a million random elements, where the mask's sign and the RMS's terms are
                // decided by rounding alone.
                ADOPT {
                    cautious: true,
                    ..adopt(Some(0.25), true, false)
                },
                ADOPT {
                    stable_adamw: true,
                    ..adopt(None, true, false)
                },
                // The RMS of g² over the previous step's v is large in the first steps
                // (|g₁| is near 0 at some elements): a larger learning rate keeps the steps
                // large enough for a wrong one to show.
                ADOPT {
                    lr: 0.5,
                    cautious: true,
                    stable_adamw: true,
                    ..adopt(Some(0.25), true, true)
                },
            ]
        })
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        vec![("adopt", ADOPT::default())]
    }
}
