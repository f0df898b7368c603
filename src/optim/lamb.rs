use super::{
    Class, FOREACH, PreNorm, Shader, Sums, TorchSwitch, WeightDecay, check_po_betas, check_po_lr,
    check_po_non_negative, grad_sign,
};
use crate::error::Result;
use crate::reference::Real;
use serde::{Deserialize, Serialize};

/// `Lamb`, as the `pytorch-optimizer` package (4.1.0) defines it on its default (foreach)
/// path: Adam's direction without bias correction, scaled per tensor by the trust ratio
/// `min(‖θ‖, 10) / (‖u‖ + ε)`.
///
/// With `g` the gradient (negated when `maximize`), `t` the step number starting at 1, `λ` =
/// `weight_decay`, and `β3 = 1 − β1` (`1` without `grad_averaging`):
///
/// ```text
/// θ ← θ·(1 − lr·λ)                  (weight_decouple; θ·(1 − λ) with fixed_decay)
/// m ← β1·m + β3·g                    (exp_avg)
/// v ← β2·v + (1 − β2)·g²             (exp_avg_sq)
/// u = m · 1/(√v + ε)  (+ λ·θ without weight_decouple)
/// r = min(‖θ‖, 10) / (‖u‖ + ε)       (1 where either norm is 0; not applied with `adam`)
/// θ ← θ − lr/(1 − β1ᵗ) · r·u         (lr without the bias correction with `adam_debias`)
/// ```
///
/// The norms are over each whole tensor, after the decoupled decay: a pass of per-tensor sums
/// runs between `finalize` and the step (shaders/sums.wgsl), so a Lamb step reads the
/// parameters, gradients and state twice. pytorch-optimizer counts steps per parameter group;
/// here each tensor keeps the count. State: `exp_avg`, `exp_avg_sq` (the package's per-step
/// diagnostics `weight_norm`, `adam_norm` and `trust_ratio` are not kept).
///
/// With `rectify` (the package's per-parameter path), the step size is RAdam's rectified one,
/// `lr·rₜ/(1 − β1ᵗ)` where `n_sma` reaches `n_sma_threshold`, with the step `m/(√v + ε)`;
/// below it, with `degenerated_to_sgd`, `lr/(1 − β1ᵗ)` with the step `m`, else no step (the
/// moments and the decay still move). The trust ratio then measures the parameter the step
/// would give, `‖θ − step_size·q‖`, and the coupled weight decay is dropped, as the package
/// does.
///
/// With `pre_norm`, every gradient is first multiplied by `min(max_grad_norm / (‖g‖ + ε), 1)`,
/// with `‖g‖` the 2-norm of the gradients of every tensor of the optimizer together (after a
/// grad scaler's unscaling and a clipping by the 2-norm), formed on the GPU in the step's
/// reduction; `max_grad_norm` 0 leaves the gradients as they are. The package reads `pre_norm`,
/// `max_grad_norm` and this `ε` from the optimizer's defaults: here they are the first
/// group's, and every group must agree on `pre_norm`. It cannot be combined with
/// `clip_grad_value_` or a clipping by the max norm (an error).
///
/// The package's `adanorm` keyword (with `adanorm_r`, default 0.95) takes its per-parameter
/// path: each tensor keeps a running norm of its gradient, the scalar state
/// `exp_grad_adanorm`, `n ← r·n + (1 − r)·‖g‖`, and `exp_avg` takes `g·n/‖g‖` where
/// `0 < ‖g‖ < n` (`exp_avg_sq` the gradient as it is); the update is `m / (√v + ε)`, and the
/// step `θ ← θ + a·u` with `a = −step_size·r` formed first. Its sums run in two rounds on the
/// GPU: the gradients' norms, then the trust ratio's.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lamb {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Coefficients of the running averages (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Weight decay (default 0).
    pub weight_decay: f64,
    /// Decay the parameter (default true); false adds `λ·θ` to the update instead.
    pub weight_decouple: bool,
    /// Decoupled decay by `λ`, not `lr·λ` (default false).
    pub fixed_decay: bool,
    /// RAdam's rectification, the package's per-parameter path (default false).
    pub rectify: bool,
    /// With `rectify`, an SGD step below the threshold (default false).
    pub degenerated_to_sgd: bool,
    /// With `rectify`, the threshold of the rectification (default 5).
    pub n_sma_threshold: u32,
    /// Weigh the gradient by `1 − β1` in `exp_avg` (default true); false weighs it by 1.
    pub grad_averaging: bool,
    /// With `pre_norm`, the global gradient norm's bound (default 1).
    pub max_grad_norm: f64,
    /// Leave the trust ratio out (default false).
    pub adam: bool,
    /// Scale every gradient by `min(max_grad_norm / (‖g‖ + ε), 1)` first, with `‖g‖` the
    /// norm of all gradients together (default false).
    pub pre_norm: bool,
    /// Added to `√v` and to the update's norm (default 1e-6).
    pub eps: f64,
    /// Maximize the objective instead of minimizing (default false).
    pub maximize: bool,
    /// The package's `adanorm` keyword (default false): rescale the gradient in `exp_avg` by
    /// a running norm of it.
    pub adanorm: bool,
    /// With `adanorm`, the decay of the running gradient norm (default 0.95).
    pub adanorm_r: f64,
    /// The package's `adam_debias` keyword (default false): the step size is `lr`, without
    /// dividing by `1 − β1ᵗ`.
    pub adam_debias: bool,
}

impl Default for Lamb {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            weight_decay: 0.0,
            weight_decouple: true,
            fixed_decay: false,
            rectify: false,
            degenerated_to_sgd: false,
            n_sma_threshold: 5,
            grad_averaging: true,
            max_grad_norm: 1.0,
            adam: false,
            pre_norm: false,
            eps: 1e-6,
            maximize: false,
            adanorm: false,
            adanorm_r: 0.95,
            adam_debias: false,
        }
    }
}

/// One parameter group's record in `shaders/lamb.wgsl` (`Hyper`); keep the two in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct LambHyper {
    lr: f32,
    beta1: f32,
    beta3: f32,
    beta2: f32,
    one_minus_beta2: f32,
    ln_beta1: f32,
    eps: f32,
    decay: f32,
    weight_decay: f32,
    grad_sign: f32,
    trust: u32,
    debias: u32,
    rectify: u32,
    degenerated: u32,
    n_sma_threshold: f32,
    neg_ln_beta2: f32,
    n_sma_max: f32,
    adanorm_r: f32,
    adanorm_one_minus_r: f32,
    adanorm: u32,
}

const SHADER: Shader = Shader {
    file: "lamb.wgsl",
    source: include_str!("../../shaders/lamb.wgsl"),
    switches: &["ADANORM"],
    hyper_size: size_of::<LambHyper>() as u64,
    sums: Sums::AlwaysTwiceWith(1),
    factored: 0,
    apply: 0,
};

/// The package's clamp of the weight norm (`Lamb.clamp`).
const WEIGHT_NORM_CLAMP: f64 = 10.0;

impl Lamb {
    /// The parameter's decay factor (decoupled), and the weight of `θ` added to the update
    /// (coupled, only where λ > 0, as the package checks; the rectified path drops it).
    fn decay_rule(&self) -> (f64, f64) {
        if self.rectify && !self.weight_decouple {
            (1.0, 0.0)
        } else if self.weight_decouple {
            let rule =
                WeightDecay::pytorch_optimizer(self.lr, self.weight_decay, true, self.fixed_decay);
            (rule.decay, 0.0)
        } else {
            (1.0, self.weight_decay.max(0.0))
        }
    }

    /// With `rectify`, the package's `get_rectify_step_size` at step `t`: the factor of the
    /// learning rate (RAdam's rectification, 1 for an SGD step, -1 for none) and whether the
    /// step is adaptive (n_sma at the threshold or above).
    fn rectified(&self, t: f64) -> (f64, bool) {
        let b2 = self.betas.1;
        let n_sma_max = 2.0 / (1.0 - b2) - 1.0;
        let b2t = b2.powf(t);
        let n_sma = n_sma_max - 2.0 * t * b2t / (1.0 - b2t);
        if n_sma >= f64::from(self.n_sma_threshold) {
            let rt = ((1.0 - b2t) * (n_sma - 4.0) / (n_sma_max - 4.0) * (n_sma - 2.0) / n_sma
                * n_sma_max
                / (n_sma_max - 2.0))
                .sqrt();
            (rt, true)
        } else if self.degenerated_to_sgd {
            (1.0, false)
        } else {
            (-1.0, false)
        }
    }

    /// The trust ratio `min(‖θ‖, 10) / (‖u‖ + ε)`, 1 where either norm is 0.
    fn trust<F: Real>(&self, param: &[F], update: &[F]) -> F {
        let norm = |x: &[F]| x.iter().fold(F::of(0.0), |acc, &a| acc + a * a).sqrt();
        let weight_norm = norm(param).min(F::of(WEIGHT_NORM_CLAMP));
        let update_norm = norm(update);
        let zero = F::of(0.0);
        if weight_norm != zero && update_norm != zero {
            weight_norm / (update_norm + F::of(self.eps))
        } else {
            F::of(1.0)
        }
    }

    /// The package's rectified step (its per-parameter path): nothing where the step size is
    /// not positive; else the trust ratio of the parameter the step would give, and the step
    /// `θ ← θ + a·q` with `a = −step_size·trust` formed first.
    fn rectified_step<F: Real>(&self, param: &mut [F], direction: &[F], step_size: F) {
        if step_size <= F::of(0.0) {
            return;
        }
        let neg_step_size = F::of(0.0) - step_size;
        let moved: Vec<F> = param
            .iter()
            .zip(direction)
            .map(|(&p, &q)| p + neg_step_size * q)
            .collect();
        let a = if self.adam {
            neg_step_size
        } else {
            neg_step_size * self.trust(param, &moved)
        };
        for (p, &q) in param.iter_mut().zip(direction) {
            *p += a * q;
        }
    }

    /// The weight of the gradient in `exp_avg`.
    fn beta3(&self) -> f64 {
        if self.grad_averaging {
            1.0 - self.betas.0
        } else {
            1.0
        }
    }
}

impl Class for Lamb {
    const NAME: &'static str = "Lamb";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [TorchSwitch] = FOREACH;
    type Hyper = LambHyper;

    /// The package's checks, in its order (learning rate, betas, weight decay,
    /// max_grad_norm, eps).
    fn validate(&self) -> Result<()> {
        check_po_lr(self.lr)?;
        check_po_betas(&[self.betas.0, self.betas.1])?;
        check_po_non_negative("weight_decay", self.weight_decay)?;
        check_po_non_negative("max_grad_norm", self.max_grad_norm)?;
        check_po_non_negative("eps", self.eps)
    }

    fn switches(&self) -> u32 {
        u32::from(self.adanorm)
    }

    fn scalar_names(&self) -> &'static [&'static str] {
        if self.adanorm {
            &["exp_grad_adanorm"]
        } else {
            &[]
        }
    }

    /// The package's `get_global_gradient_norm`: none where `max_grad_norm` is 0.
    fn pre_norm(&self) -> Option<PreNorm> {
        (self.pre_norm && self.max_grad_norm != 0.0).then_some(PreNorm {
            max_grad_norm: self.max_grad_norm,
            eps: self.eps,
        })
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

    fn hyper(&self) -> LambHyper {
        let (b1, b2) = self.betas;
        let (decay, weight_decay) = self.decay_rule();
        LambHyper {
            lr: self.lr as f32,
            beta1: b1 as f32,
            beta3: self.beta3() as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            ln_beta1: b1.ln().max(-87.0) as f32,
            eps: self.eps as f32,
            decay: decay as f32,
            weight_decay: weight_decay as f32,
            grad_sign: grad_sign(self.maximize),
            trust: u32::from(!self.adam),
            debias: u32::from(!self.adam_debias),
            rectify: u32::from(self.rectify),
            degenerated: u32::from(self.degenerated_to_sgd),
            n_sma_threshold: self.n_sma_threshold as f32,
            neg_ln_beta2: -b2.ln().max(-87.0) as f32,
            n_sma_max: (2.0 / (1.0 - b2) - 1.0) as f32,
            adanorm_r: self.adanorm_r as f32,
            adanorm_one_minus_r: (1.0 - self.adanorm_r) as f32,
            adanorm: u32::from(self.adanorm),
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
        let (rt, adaptive) = if self.rectify {
            self.rectified(t as f64)
        } else {
            (1.0, true)
        };
        let step_size = if self.adam_debias {
            self.lr * rt
        } else {
            self.lr * rt / (1.0 - b1.powf(t as f64))
        };
        let (decay, weight_decay) = self.decay_rule();
        let (beta1, beta3) = (F::of(b1), F::of(self.beta3()));
        let (beta2, one_minus_b2) = (F::of(b2), F::of(1.0 - b2));
        let (eps, sign, one) = (
            F::of(self.eps),
            F::of(grad_sign(self.maximize).into()),
            F::of(1.0),
        );
        let [m, v] = state else {
            panic!("Lamb keeps exp_avg and exp_avg_sq");
        };
        // adanorm: the running norm, and the gradient's factor in exp_avg as a ratio.
        let adanorm = match scalars {
            [running] if self.adanorm => {
                let norm = grad
                    .iter()
                    .fold(F::of(0.0), |acc, &g| acc + (sign * g) * (sign * g))
                    .sqrt();
                *running = *running * F::of(self.adanorm_r) + F::of(1.0 - self.adanorm_r) * norm;
                (norm > F::of(0.0) && *running > norm).then_some((*running, norm))
            }
            _ => None,
        };
        let mut update = vec![F::of(0.0); param.len()];
        for (i, (p, &g)) in param.iter_mut().zip(grad).enumerate() {
            let g = sign * g;
            if decay != 1.0 {
                *p *= F::of(decay);
            }
            let s = adanorm.map_or(g, |(num, den)| g * num / den);
            m[i] = m[i] * beta1 + beta3 * s;
            v[i] = v[i] * beta2 + one_minus_b2 * g * g;
            update[i] = if !self.rectify {
                let mut u = if self.adanorm {
                    m[i] / (v[i].sqrt() + eps)
                } else {
                    one / (v[i].sqrt() + eps) * m[i]
                };
                if weight_decay != 0.0 {
                    u += F::of(weight_decay) * *p;
                }
                u
            } else if adaptive {
                m[i] / (v[i].sqrt() + eps)
            } else {
                m[i]
            };
        }
        if self.rectify {
            self.rectified_step(param, &update, F::of(step_size));
            return;
        }
        let trust = self.trust(param, &update);
        let neg_step_size = F::of(-step_size);
        if self.adanorm {
            // The per-parameter path forms the step's factor first.
            let a = if self.adam {
                neg_step_size
            } else {
                neg_step_size * trust
            };
            for (p, u) in param.iter_mut().zip(update) {
                *p += a * u;
            }
            return;
        }
        for (p, u) in param.iter_mut().zip(update) {
            let u = if self.adam { u } else { u * trust };
            *p += neg_step_size * u;
        }
    }

    fn cases() -> Vec<Self> {
        let base = Lamb {
            lr: 0.01,
            betas: (0.8, 0.99),
            eps: 1e-4,
            ..Default::default()
        };
        let mut out = Vec::new();
        for maximize in [false, true] {
            for weight_decay in [0.0, 0.1] {
                out.push(Lamb {
                    weight_decay,
                    maximize,
                    ..base
                });
                out.push(Lamb {
                    weight_decay,
                    maximize,
                    weight_decouple: false,
                    grad_averaging: false,
                    adam_debias: true,
                    ..base
                });
            }
        }
        out.push(Lamb {
            weight_decay: 0.01,
            fixed_decay: true,
            adam: true,
            ..base
        });
        // pre_norm scaling the gradients down, and (with rectify) above their norm, where the
        // factor is clamped to 1. Lamb's update is nearly invariant to the gradients' scale
        // (the trust ratio, and m/√v): without the trust ratio and with ε above √v, it is
        // not, so that a wrong factor shows.
        out.push(Lamb {
            pre_norm: true,
            max_grad_norm: 0.5,
            adam: true,
            eps: 1e-3,
            ..base
        });
        out.push(Lamb {
            pre_norm: true,
            max_grad_norm: 1e6,
            maximize: true,
            rectify: true,
            degenerated_to_sgd: true,
            ..base
        });
        // adanorm: its running norm catches up with the gradients' within a few steps at these
        // r, so that a gradient of a norm below it is rescaled (most often in small tensors,
        // whose norms vary most). Without the trust ratio, with coupled weight decay, and
        // rectified.
        out.push(Lamb {
            adanorm: true,
            adanorm_r: 0.5,
            adam: true,
            eps: 1e-3,
            ..base
        });
        out.push(Lamb {
            adanorm: true,
            adanorm_r: 0.8,
            weight_decay: 0.1,
            weight_decouple: false,
            maximize: true,
            ..base
        });
        out.push(Lamb {
            adanorm: true,
            adanorm_r: 0.5,
            rectify: true,
            degenerated_to_sgd: true,
            ..base
        });
        // Steps 1 to 5 below the threshold: no step, or SGD steps; rectified from step 6.
        for degenerated_to_sgd in [false, true] {
            out.push(Lamb {
                rectify: true,
                degenerated_to_sgd,
                weight_decay: 0.1,
                ..base
            });
        }
        out
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        vec![("lamb", Lamb::default())]
    }
}
