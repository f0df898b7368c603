//! Keras 3's `keras.optimizers.schedules`: pure functions of the step, with Keras' formulas
//! (`learning_rate_schedule.py`) computed in f64 where Keras computes in float32.

use super::spec::Args;
use crate::error::{Error, Result};
use std::f64::consts::PI;

/// The Keras class names handled here.
pub(crate) const TYPES: &[&str] = &[
    "ExponentialDecay",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "InverseTimeDecay",
    "CosineDecay",
    "CosineDecayRestarts",
];

/// One Keras schedule with its arguments.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Keras {
    Exponential {
        init: f64,
        decay_steps: f64,
        decay_rate: f64,
        staircase: bool,
    },
    Piecewise {
        boundaries: Vec<f64>,
        values: Vec<f64>,
    },
    Polynomial {
        init: f64,
        decay_steps: f64,
        end: f64,
        power: f64,
        cycle: bool,
    },
    InverseTime {
        init: f64,
        decay_steps: f64,
        decay_rate: f64,
        staircase: bool,
    },
    Cosine {
        init: f64,
        decay_steps: f64,
        alpha: f64,
        warmup_target: Option<f64>,
        warmup_steps: f64,
    },
    CosineRestarts {
        init: f64,
        first_decay_steps: f64,
        t_mul: f64,
        m_mul: f64,
        alpha: f64,
    },
}

/// Keras' check `Argument `{key}` must be > 0.`
fn positive(args: &Args<'_>, key: &str) -> Result<f64> {
    let x = args.f64(key)?;
    if x <= 0.0 {
        return Err(Error::InvalidHyperparameter(format!(
            "Argument `{key}` must be > 0. Received: {key}={}",
            args.repr(key)
        )));
    }
    Ok(x)
}

impl Keras {
    /// Builds from a spec whose type is one of [`TYPES`].
    pub(crate) fn build(args: &Args<'_>) -> Result<Self> {
        Ok(match args.ty {
            "ExponentialDecay" | "InverseTimeDecay" => {
                args.allow(&[
                    "initial_learning_rate",
                    "decay_steps",
                    "decay_rate",
                    "staircase",
                    "name",
                ])?;
                let init = args.f64("initial_learning_rate")?;
                let decay_steps = args.f64("decay_steps")?;
                let decay_rate = args.f64("decay_rate")?;
                let staircase = args.bool_or("staircase", false)?;
                positive(args, "decay_steps")?;
                if args.ty == "InverseTimeDecay" && decay_rate < 0.0 {
                    return Err(Error::InvalidHyperparameter(format!(
                        "InverseTimeDecay: decay_rate must be >= 0, got {}: the LR is \
                         initial_learning_rate / (1 + decay_rate * step / decay_steps), whose \
                         divisor reaches 0 (division by zero)",
                        args.repr("decay_rate")
                    )));
                }
                if args.ty == "ExponentialDecay" {
                    Keras::Exponential {
                        init,
                        decay_steps,
                        decay_rate,
                        staircase,
                    }
                } else {
                    Keras::InverseTime {
                        init,
                        decay_steps,
                        decay_rate,
                        staircase,
                    }
                }
            }
            "PiecewiseConstantDecay" => {
                args.allow(&["boundaries", "values", "name"])?;
                let boundaries = args.f64_list("boundaries")?;
                let values = args.f64_list("values")?;
                if boundaries.len() + 1 != values.len() {
                    return Err(Error::InvalidHyperparameter(format!(
                        "The length of boundaries should be 1 less than the length of values. \
                         Received: boundaries={} of length {}, and values={} of length {}.",
                        args.repr("boundaries"),
                        boundaries.len(),
                        args.repr("values"),
                        values.len()
                    )));
                }
                if boundaries.is_empty() {
                    return Err(Error::Input(
                        "PiecewiseConstantDecay: boundaries must not be empty".into(),
                    ));
                }
                Keras::Piecewise { boundaries, values }
            }
            "PolynomialDecay" => {
                args.allow(&[
                    "initial_learning_rate",
                    "decay_steps",
                    "end_learning_rate",
                    "power",
                    "cycle",
                    "name",
                ])?;
                let init = args.f64("initial_learning_rate")?;
                let decay_steps = args.f64("decay_steps")?;
                let end = args.f64_or("end_learning_rate", 0.0001)?;
                let power = args.f64_or("power", 1.0)?;
                let cycle = args.bool_or("cycle", false)?;
                positive(args, "decay_steps")?;
                if power < 0.0 {
                    return Err(Error::InvalidHyperparameter(format!(
                        "PolynomialDecay: power must be >= 0, got {}: at step decay_steps the LR \
                         takes 0 to the power (division by zero)",
                        args.repr("power")
                    )));
                }
                Keras::Polynomial {
                    init,
                    decay_steps,
                    end,
                    power,
                    cycle,
                }
            }
            "CosineDecay" => {
                args.allow(&[
                    "initial_learning_rate",
                    "decay_steps",
                    "alpha",
                    "warmup_target",
                    "warmup_steps",
                    "name",
                ])?;
                let init = args.f64("initial_learning_rate")?;
                let decay_steps = args.f64("decay_steps")?;
                let alpha = args.f64_or("alpha", 0.0)?;
                let warmup_target = args.opt_f64("warmup_target")?;
                let warmup_steps = args.f64_or("warmup_steps", 0.0)?;
                positive(args, "decay_steps")?;
                Keras::Cosine {
                    init,
                    decay_steps,
                    alpha,
                    warmup_target,
                    warmup_steps,
                }
            }
            "CosineDecayRestarts" => {
                args.allow(&[
                    "initial_learning_rate",
                    "first_decay_steps",
                    "t_mul",
                    "m_mul",
                    "alpha",
                    "name",
                ])?;
                let init = args.f64("initial_learning_rate")?;
                let first_decay_steps = args.f64("first_decay_steps")?;
                let t_mul = args.f64_or("t_mul", 2.0)?;
                let m_mul = args.f64_or("m_mul", 1.0)?;
                let alpha = args.f64_or("alpha", 0.0)?;
                positive(args, "first_decay_steps")?;
                Keras::CosineRestarts {
                    init,
                    first_decay_steps,
                    t_mul,
                    m_mul,
                    alpha,
                }
            }
            other => return Err(Error::Input(format!("unknown schedule type {other:?}"))),
        })
    }

    /// `float(schedule(step))`, in f64. An integral `step` stands for Keras' integer step
    /// tensor (PiecewiseConstantDecay then casts its boundaries to integers).
    pub(crate) fn eval(&self, step: f64) -> f64 {
        match *self {
            Keras::Exponential {
                init,
                decay_steps,
                decay_rate,
                staircase,
            } => {
                let mut p = step / decay_steps;
                if staircase {
                    p = p.floor();
                }
                init * decay_rate.powf(p)
            }
            Keras::Piecewise {
                ref boundaries,
                ref values,
            } => {
                let integral = step.fract() == 0.0;
                let b: Vec<f64> = boundaries
                    .iter()
                    .map(|&x| if integral { x.trunc() } else { x })
                    .collect();
                let ind = |c: bool| if c { 1.0 } else { 0.0 };
                let n = b.len();
                let mut result = 0.0;
                result += ind(step <= b[0]) * values[0];
                result += ind(step > b[n - 1]) * values[n];
                for i in 0..n - 1 {
                    result += ind(step > b[i] && step <= b[i + 1]) * values[i + 1];
                }
                result
            }
            Keras::Polynomial {
                init,
                decay_steps,
                end,
                power,
                cycle,
            } => {
                let mut global_step = step;
                let mut ds = decay_steps;
                if cycle {
                    let multiplier = if global_step == 0.0 {
                        1.0
                    } else {
                        (global_step / decay_steps).ceil()
                    };
                    ds *= multiplier;
                } else {
                    global_step = global_step.min(ds);
                }
                let p = global_step / ds;
                (init - end) * (1.0 - p).powf(power) + end
            }
            Keras::InverseTime {
                init,
                decay_steps,
                decay_rate,
                staircase,
            } => {
                let mut p = step / decay_steps;
                if staircase {
                    p = p.floor();
                }
                init / (1.0 + decay_rate * p)
            }
            Keras::Cosine {
                init,
                decay_steps,
                alpha,
                warmup_target,
                warmup_steps,
            } => {
                let decay = |step: f64, from: f64| {
                    let completed = step / decay_steps;
                    let cosine_decayed = 0.5 * (1.0 + (PI * completed).cos());
                    let decayed = (1.0 - alpha) * cosine_decayed + alpha;
                    from * decayed
                };
                match warmup_target {
                    None => decay(step.min(decay_steps), init),
                    Some(target) => {
                        let s = step.min(decay_steps + warmup_steps);
                        if s < warmup_steps {
                            (target - init) * (s / warmup_steps) + init
                        } else {
                            decay(s - warmup_steps, target)
                        }
                    }
                }
            }
            Keras::CosineRestarts {
                init,
                first_decay_steps,
                t_mul,
                m_mul,
                alpha,
            } => {
                let mut completed = step / first_decay_steps;
                let i_restart;
                if t_mul == 1.0 {
                    i_restart = completed.floor();
                    completed -= i_restart;
                } else {
                    let sum = |i: f64| (1.0 - t_mul.powf(i)) / (1.0 - t_mul);
                    let mut i = ((1.0 - completed * (1.0 - t_mul)).ln() / t_mul.ln()).floor();
                    // The logarithm can land just below a whole number at a restart (e.g.
                    // step 605 of first_decay_steps 5, t_mul 3): settle on the cycle whose
                    // start is at or before the step, as the exact formula does.
                    if i.is_finite() && i >= 0.0 {
                        for _ in 0..4 {
                            if sum(i + 1.0) <= completed {
                                i += 1.0;
                            } else if i > 0.0 && sum(i) > completed {
                                i -= 1.0;
                            } else {
                                break;
                            }
                        }
                    }
                    i_restart = i;
                    let sum_r = sum(i_restart);
                    completed = (completed - sum_r) / t_mul.powf(i_restart);
                }
                let m_fac = m_mul.powf(i_restart);
                let cosine_decayed = 0.5 * m_fac * (1.0 + (PI * completed).cos());
                let decayed = (1.0 - alpha) * cosine_decayed + alpha;
                init * decayed
            }
        }
    }
}
