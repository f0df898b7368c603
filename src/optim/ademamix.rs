use super::{
    Class, FOREACH, Shader, Sums, TorchSwitch, WeightDecay, cautious_factor, check, check_po_betas,
    check_po_lr, check_po_non_negative, grad_sign, stable_adamw_rms, with_wd_and_maximize,
};
use crate::error::Result;
use crate::reference::{Real, lerp};
use serde::{Deserialize, Serialize};

/// `AdEMAMix`, as the `pytorch-optimizer` package (4.1.0) defines it: Adam with a second,
/// slow average of the gradient mixed into the numerator.
///
/// With `g` the gradient (negated when `maximize`), `t` the step number starting at 1, and
/// `λ` = `weight_decay`:
///
/// ```text
/// g ← g + λ·θ                    (coupled weight decay, if λ > 0)
/// θ ← θ·(1 − lr·λ)               (weight_decouple; θ·(1 − λ) with fixed_decay)
/// m  ← m + (1 − β1)·(g − m)      (exp_avg)
/// v  ← β2·v + (1 − β2)·g²        (exp_avg_sq)
/// ms ← ms + (1 − β3ₜ)·(g − ms)   (exp_avg_slow)
/// θ ← θ − lr · (m/(1 − β1ᵗ) + αₜ·ms) / (√v / √(1 − β2ᵗ) + ε)
/// ```
///
/// Without `t_alpha_beta3`, `αₜ = α` and `β3ₜ = β3`. With it (`T`), both warm up:
/// `αₜ = min(t·α/T, α)` and `β3ₜ = min(exp(ln β1·ln β3 / ((1 − t/T)·ln β3 + (t/T)·ln β1)), β3)`.
/// `cautious` and `stable_adamw` scale the update per tensor, from per-tensor sums on the GPU
/// (shaders/sums.wgsl). pytorch-optimizer counts steps per parameter group; here each tensor
/// keeps the count, and a checkpoint saves it as `<name>.step`. State: `exp_avg`, `exp_avg_sq`,
/// `exp_avg_slow`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdEMAMix {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Coefficients of the fast average, the second moment and the slow average (default
    /// (0.9, 0.999, 0.9999)).
    pub betas: (f64, f64, f64),
    /// Weight decay (default 0).
    pub weight_decay: f64,
    /// Decay the parameter instead of adding `λ·θ` to the gradient (default false).
    pub weight_decouple: bool,
    /// Decoupled decay by `λ`, not `lr·λ` (default false).
    pub fixed_decay: bool,
    /// Weight of the slow average (default 5).
    pub alpha: f64,
    /// Steps over which `alpha` and `β3` warm up, or `None` (default) for none.
    pub t_alpha_beta3: Option<f64>,
    /// Added to the bias-corrected `√v` (default 1e-8).
    pub eps: f64,
    /// Maximize the objective instead of minimizing (default false).
    pub maximize: bool,
    /// The package's masked update (default false): `exp_avg` where it agrees in sign with
    /// the gradient, times `numel / (count + 1)` of its tensor, else 0.
    pub cautious: bool,
    /// The package's StableAdamW scaling (default false): the update divided by
    /// `max(1, √mean(g² / max(v, 1e-16)))` of its tensor, with the new `v`.
    pub stable_adamw: bool,
}

impl Default for AdEMAMix {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999, 0.9999),
            weight_decay: 0.0,
            weight_decouple: false,
            fixed_decay: false,
            alpha: 5.0,
            t_alpha_beta3: None,
            eps: 1e-8,
            maximize: false,
            cautious: false,
            stable_adamw: false,
        }
    }
}

/// One parameter group's record in `shaders/ademamix.wgsl` (`Hyper`); keep the two in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AdemamixHyper {
    lr: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    ln_beta1: f32,
    ln_beta2: f32,
    ln_beta3: f32,
    one_minus_beta3: f32,
    alpha: f32,
    t_alpha_beta3: f32,
    warmup: u32,
    eps: f32,
    weight_decay: f32,
    decay: f32,
    grad_sign: f32,
    _pad: f32,
}

const SHADER: Shader = Shader {
    file: "ademamix.wgsl",
    source: include_str!("../../shaders/ademamix.wgsl"),
    switches: &["CAUTIOUS", "STABLE_ADAMW"],
    hyper_size: size_of::<AdemamixHyper>() as u64,
    sums: Sums::Switches(0b11),
    factored: 0,
    apply: 0,
};

impl AdEMAMix {
    /// How the group's weight decay applies.
    fn decay_rule(&self) -> WeightDecay {
        WeightDecay::pytorch_optimizer(
            self.lr,
            self.weight_decay,
            self.weight_decouple,
            self.fixed_decay,
        )
    }

    /// `(αₜ, β3ₜ)` at step `t`, as the package's `schedule_alpha` and `schedule_beta3`.
    fn scheduled(&self, t: u64) -> (f64, f64) {
        let (b1, _, b3) = self.betas;
        let Some(period) = self.t_alpha_beta3 else {
            return (self.alpha, b3);
        };
        let t = t as f64;
        let alpha = (t * self.alpha / period).min(self.alpha);
        let (ln1, ln3) = (b1.ln(), b3.ln());
        let beta3 = (ln1 * ln3 / ((1.0 - t / period) * ln3 + (t / period) * ln1))
            .exp()
            .min(b3);
        (alpha, beta3)
    }
}

/// `ln β`, kept finite: ln 0 = −inf becomes −87, where `e^(t·x)` is 0 in f32 all the same.
fn ln_beta(b: f64) -> f32 {
    b.ln().max(-87.0) as f32
}

impl Class for AdEMAMix {
    const NAME: &'static str = "AdEMAMix";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [TorchSwitch] = FOREACH;
    type Hyper = AdemamixHyper;

    /// The package's checks, in its order (learning rate, betas, alpha, t_alpha_beta3,
    /// weight decay, eps), then what the package accepts and fails on at the first step (a
    /// warm-up of 0 steps, or one with a zero beta1 or beta3).
    fn validate(&self) -> Result<()> {
        let (b1, b2, b3) = self.betas;
        check_po_lr(self.lr)?;
        check_po_betas(&[b1, b2, b3])?;
        check_po_non_negative("alpha", self.alpha)?;
        if let Some(period) = self.t_alpha_beta3 {
            check_po_non_negative("t_alpha_beta3", period)?;
            check(period > 0.0, || {
                "t_alpha_beta3 must be positive: pytorch-optimizer divides by it at the step".into()
            })?;
            check(b1 > 0.0 && b3 > 0.0, || {
                "with t_alpha_beta3, beta1 and beta3 must be positive: pytorch-optimizer takes their logarithms at the step"
                    .into()
            })?;
        }
        check_po_non_negative("weight_decay", self.weight_decay)?;
        check_po_non_negative("eps", self.eps)?;
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
        &["exp_avg", "exp_avg_sq", "exp_avg_slow"]
    }

    /// The kernel forms the bias corrections and the warm-up of `α` and `β3` from each
    /// tensor's step count on the GPU.
    fn hyper(&self) -> AdemamixHyper {
        let (b1, b2, b3) = self.betas;
        let (weight_decay, decay) = self.decay_rule().hyper();
        AdemamixHyper {
            lr: self.lr as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            ln_beta1: ln_beta(b1),
            ln_beta2: ln_beta(b2),
            ln_beta3: ln_beta(b3),
            one_minus_beta3: (1.0 - b3) as f32,
            alpha: self.alpha as f32,
            t_alpha_beta3: self.t_alpha_beta3.unwrap_or(1.0) as f32,
            warmup: u32::from(self.t_alpha_beta3.is_some()),
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
        let (b1, b2, _) = self.betas;
        let (alpha, beta3) = self.scheduled(t);
        let tf = t as f64;
        let bias_correction1 = F::of(1.0 - b1.powf(tf));
        let bias_correction2_sqrt = F::of((1.0 - b2.powf(tf)).sqrt());
        let decay = self.decay_rule();
        let (lr, eps, alpha) = (F::of(self.lr), F::of(self.eps), F::of(alpha));
        let sign = F::of(grad_sign(self.maximize).into());
        let (one_minus_b1, beta2, one_minus_b2) = (F::of(1.0 - b1), F::of(b2), F::of(1.0 - b2));
        let one_minus_b3 = F::of(1.0 - beta3);
        let [m, v, slow] = state else {
            panic!("AdEMAMix keeps exp_avg, exp_avg_sq and exp_avg_slow");
        };
        let mut g = Vec::with_capacity(grad.len());
        for (i, (p, &raw)) in param.iter_mut().zip(grad).enumerate() {
            let x = decay.grad(sign, p, raw);
            m[i] = lerp(m[i], x, one_minus_b1);
            v[i] = v[i] * beta2 + one_minus_b2 * x * x;
            slow[i] = lerp(slow[i], x, one_minus_b3);
            g.push(x);
        }
        let cautious = self.cautious.then(|| cautious_factor(m, &g));
        let rms = self.stable_adamw.then(|| stable_adamw_rms(&g, v));
        for (i, p) in param.iter_mut().enumerate() {
            let mut first = m[i];
            if let Some(factor) = cautious {
                first *= if m[i] * g[i] > F::of(0.0) {
                    factor
                } else {
                    F::of(0.0)
                };
            }
            let denom = v[i].sqrt() / bias_correction2_sqrt + eps;
            let numer = first / bias_correction1 + alpha * slow[i];
            *p -= match rms {
                Some(rms) => lr * (numer / denom / rms),
                None => lr * (numer / denom),
            };
        }
    }

    fn cases() -> Vec<Self> {
        with_wd_and_maximize(0.1, |weight_decay, maximize| {
            let ademamix = |t_alpha_beta3, weight_decouple, fixed_decay| AdEMAMix {
                lr: 0.01,
                betas: (0.8, 0.99, 0.95),
                weight_decay,
                weight_decouple,
                fixed_decay,
                alpha: 2.0,
                t_alpha_beta3,
                maximize,
                ..Default::default()
            };
            vec![
                ademamix(None, false, false),
                ademamix(Some(3.0), true, false),
                ademamix(Some(2.0), true, true),
                // Decoupled weight decay: with coupled decay, g + λθ cancels to near 0 at some
                // of a million random elements, where the mask's sign is decided by rounding
                // alone.
                AdEMAMix {
                    cautious: true,
                    ..ademamix(None, true, false)
                },
                AdEMAMix {
                    stable_adamw: true,
                    ..ademamix(Some(3.0), true, false)
                },
                AdEMAMix {
                    cautious: true,
                    stable_adamw: true,
                    ..ademamix(None, true, true)
                },
            ]
        })
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        vec![("ademamix", AdEMAMix::default())]
    }
}
