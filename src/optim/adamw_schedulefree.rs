use super::{Class, FOREACH, Shader, Sums, TorchSwitch, check, check_adam_args, py_float};
use crate::error::Result;
use crate::reference::{Real, lerp};
use serde::{Deserialize, Serialize};

/// `AdamWScheduleFree`, as the `schedulefree` package (1.4.1) defines it: Adam's normalized
/// gradient without momentum, and a weighted average of the iterates in place of a
/// learning-rate schedule.
///
/// The parameter holds `y` while training; `z` is the plain SGD iterate and `x`, the average,
/// is what [`Optimizer::eval`](crate::Optimizer::eval) swaps in. With `g` the gradient, `k`
/// the steps taken before this one, `λ` = `weight_decay`, and per step (on the host in
/// schedulefree, on the GPU here):
///
/// ```text
/// lrₖ = lr·min(1, (k + 1)/warmup_steps)
/// lr_max ← max(lr_max, lrₖ)
/// w = (k + 1)^r · lr_max^weight_lr_power,  weight_sum ← weight_sum + w,  c = w / weight_sum
/// ```
///
/// each element takes
///
/// ```text
/// z ← y                                   (first step: z is a copy of the parameter)
/// v ← β2·v + (1 − β2)·g²                  (exp_avg_sq)
/// ĝ = g / (√(v / (1 − β2ᵏ⁺¹)) + ε) + λ·y
/// y ← y + c·(z − y)                        (y.lerp_(z, c))
/// y ← y + lrₖ·(β1·(1 − c) − 1)·ĝ
/// z ← z − lrₖ·ĝ
/// ```
///
/// schedulefree keeps `k`, `lr_max` and `weight_sum` per parameter group, in Python floats.
/// Here each tensor keeps its step count and the scalar state `lr_max`, and `weight_sum` as an
/// f32 pair (`weight_sum + weight_sum_lo`) summed with compensation, so that the average's
/// weights follow schedulefree's float64 sum over long runs. State: `z`, `exp_avg_sq`.
///
/// schedulefree makes no argument checks; these are `torch.optim.AdamW`'s, with its messages,
/// and beta1 must be above 0, which `eval()` divides by. schedulefree starts in eval mode and
/// fails a step until `train()` is called; an optimizer here starts in train mode, so that
/// recipes that call `train()` first and code that never does both run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWScheduleFree {
    /// Learning rate (default 0.0025).
    pub lr: f64,
    /// The interpolation between `z` and the average (β1), and the second moment's
    /// coefficient (default (0.9, 0.999)).
    pub betas: (f64, f64),
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// Weight decay, taken at `y` and added to the normalized gradient (default 0).
    pub weight_decay: f64,
    /// Steps of linear learning-rate warm-up (default 0).
    pub warmup_steps: u32,
    /// The average's weights grow as `(k + 1)^r` (default 0).
    pub r: f64,
    /// The average's weights grow as `lr_max^weight_lr_power` (default 2).
    pub weight_lr_power: f64,
}

impl Default for AdamWScheduleFree {
    fn default() -> Self {
        Self {
            lr: 0.0025,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            r: 0.0,
            weight_lr_power: 2.0,
        }
    }
}

/// One parameter group's record in `shaders/adamw_schedulefree.wgsl` (`Hyper`); keep the two
/// in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ScheduleFreeHyper {
    lr: f32,
    beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    ln_beta2: f32,
    eps: f32,
    weight_decay: f32,
    r: f32,
    weight_lr_power: f32,
    warmup_steps: u32,
    mode_switch: u32,
    mode_weight: f32,
}

const SHADER: Shader = Shader {
    file: "adamw_schedulefree.wgsl",
    source: include_str!("../../shaders/adamw_schedulefree.wgsl"),
    switches: &[],
    hyper_size: size_of::<ScheduleFreeHyper>() as u64,
    sums: Sums::Never,
    factored: 0,
    apply: 0,
};

impl AdamWScheduleFree {
    /// The weight of the parameter's move toward `z` that switches it into train mode
    /// (`1 − β1`, from x to y) or into eval mode (`1 − 1/β1`, from y to x): schedulefree's
    /// `p.lerp_(z, weight)` in `train()` and `eval()`.
    pub fn mode_weight(&self, to_train: bool) -> f64 {
        let b1 = self.betas.0;
        if to_train { 1.0 - b1 } else { 1.0 - 1.0 / b1 }
    }
}

/// `a + b` as `(s, e)` with `s = fl(a + b)` and `s + e = a + b` exactly (Knuth's two-sum).
fn two_sum<F: Real>(a: F, b: F) -> (F, F) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

impl Class for AdamWScheduleFree {
    const NAME: &'static str = "AdamWScheduleFree";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [TorchSwitch] = FOREACH;
    type Hyper = ScheduleFreeHyper;

    fn validate(&self) -> Result<()> {
        check_adam_args(self.lr, self.eps, self.betas, self.weight_decay)?;
        check(self.betas.0 > 0.0, || {
            format!(
                "Invalid beta parameter at index 0: {} (AdamWScheduleFree's eval() divides by beta1)",
                py_float(self.betas.0)
            )
        })?;
        for (name, x) in [("r", self.r), ("weight_lr_power", self.weight_lr_power)] {
            check(x.is_finite(), || {
                format!("Invalid {name} value: {}", py_float(x))
            })?;
        }
        // The average's weights (k + 1)^r · lr^weight_lr_power, and their sum over every step
        // a tensor can count, are f32 on the GPU: where they would pass its range the average
        // would be NaN (schedulefree, in float64, fails at the step: 0 ** a negative power
        // raises ZeroDivisionError, a weight past float64's range OverflowError).
        let steps = (crate::MAX_STEP as f64).ln();
        let ln_lr = if self.lr > 0.0 {
            self.lr.ln() * self.weight_lr_power
        } else if self.weight_lr_power < 0.0 {
            f64::INFINITY
        } else {
            f64::NEG_INFINITY
        };
        check(
            self.r.max(0.0) * steps + ln_lr + steps < f64::from(f32::MAX).ln(),
            || {
                format!(
                    "Invalid r, weight_lr_power and lr ({}, {}, {}): the average's weights (k+1)**r * lr**weight_lr_power would pass float32's range",
                    py_float(self.r),
                    py_float(self.weight_lr_power),
                    py_float(self.lr)
                )
            },
        )
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn momentum_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.betas.0)
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["z", "exp_avg_sq"]
    }

    fn scalar_names(&self) -> &'static [&'static str] {
        &["lr_max", "weight_sum", "weight_sum_lo"]
    }

    fn initial_scalar(&self, name: &str) -> f64 {
        if name == "lr_max" { -1.0 } else { 0.0 }
    }

    fn hyper(&self) -> ScheduleFreeHyper {
        let (b1, b2) = self.betas;
        ScheduleFreeHyper {
            lr: self.lr as f32,
            beta1: b1 as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            ln_beta2: b2.ln().max(-87.0) as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            r: self.r as f32,
            weight_lr_power: self.weight_lr_power as f32,
            warmup_steps: self.warmup_steps,
            mode_switch: 0,
            mode_weight: 0.0,
        }
    }

    fn mode_hyper(&self, to_train: bool) -> Option<ScheduleFreeHyper> {
        Some(ScheduleFreeHyper {
            mode_switch: 1,
            mode_weight: self.mode_weight(to_train) as f32,
            ..self.hyper()
        })
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
        let k = t - 1;
        let sched = if k < u64::from(self.warmup_steps) {
            t as f64 / f64::from(self.warmup_steps)
        } else {
            1.0
        };
        let lr = self.lr * sched;
        let [lr_max, sum, sum_lo] = scalars else {
            panic!("AdamWScheduleFree keeps lr_max, weight_sum and weight_sum_lo");
        };
        *lr_max = lr_max.max(F::of(lr));
        let weight = F::of((t as f64).powf(self.r) * lr_max.to_f64().powf(self.weight_lr_power));
        let (s, e) = two_sum(*sum, weight);
        (*sum, *sum_lo) = (s, *sum_lo + e);
        let total = *sum + *sum_lo;
        let ckp1 = if total == F::of(0.0) {
            F::of(0.0)
        } else {
            weight / total
        };
        let bias_correction2 = F::of(1.0 - b2.powf(t as f64));
        let coef_y = F::of(lr) * (F::of(b1) * (F::of(1.0) - ckp1) - F::of(1.0));
        let (lr, eps, wd) = (F::of(lr), F::of(self.eps), F::of(self.weight_decay));
        let (beta2, one_minus_b2) = (F::of(b2), F::of(1.0 - b2));
        let [z, v] = state else {
            panic!("AdamWScheduleFree keeps z and exp_avg_sq");
        };
        for (i, (y, &g)) in param.iter_mut().zip(grad).enumerate() {
            if t == 1 {
                z[i] = *y;
            }
            v[i] = v[i] * beta2 + one_minus_b2 * g * g;
            let mut normalized = g / ((v[i] / bias_correction2).sqrt() + eps);
            if self.weight_decay != 0.0 {
                normalized += wd * *y;
            }
            *y = lerp(*y, z[i], ckp1);
            *y += coef_y * normalized;
            z[i] -= lr * normalized;
        }
    }

    fn cases() -> Vec<Self> {
        let base = AdamWScheduleFree {
            lr: 0.01,
            betas: (0.8, 0.99),
            ..Default::default()
        };
        vec![
            base,
            AdamWScheduleFree {
                weight_decay: 0.1,
                warmup_steps: 3,
                ..base
            },
            AdamWScheduleFree {
                r: 1.0,
                weight_lr_power: 1.0,
                warmup_steps: 2,
                ..base
            },
        ]
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        vec![("adamw-schedulefree", AdamWScheduleFree::default())]
    }
}
