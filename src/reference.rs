//! The CPU reference: every optimizer step on slices, in f64.
//!
//! It follows the formulas documented on each configuration type ([`SGD`](crate::SGD),
//! [`Adam`](crate::Adam), [`AdamW`](crate::AdamW), [`RMSprop`](crate::RMSprop),
//! [`Adagrad`](crate::Adagrad)), written independently of the WGSL kernels, and is what the
//! tests and `wgpu-optim validate` hold the GPU to.
//!
//! ```
//! use wgpu_optim::{reference, Adam, OptimizerConfig, TensorState};
//! let cfg = OptimizerConfig::from(Adam { lr: 0.1, ..Default::default() });
//! let mut state = TensorState::default();
//! let mut param = vec![1.0, -2.0];
//! reference::step(&cfg, &mut state, &mut param, &[0.5, -0.5]);
//! // Adam's first step moves each element by lr in the direction of -sign(grad).
//! assert!((param[0] - 0.9).abs() < 1e-6 && (param[1] + 1.9).abs() < 1e-6);
//! assert_eq!(state.step, 1);
//! ```

use crate::amp::{ClipGrad, GradScaler, GradScalerState, NormType, StepReport};
use crate::optim::{AdamLike, OptimizerConfig};
use crate::state::TensorState;

/// Takes one step of `config` on `param` with gradient `grad`, updating `state`.
///
/// Missing state buffers are created as PyTorch creates them (zeros, or Adagrad's
/// `initial_accumulator_value`; SGD's momentum buffer starts as a copy of the first gradient).
///
/// # Panics
/// If `param` and `grad` differ in length, or a state buffer in `state` has another length.
pub fn step(
    config: &OptimizerConfig,
    state: &mut TensorState<f64>,
    param: &mut [f64],
    grad: &[f64],
) {
    assert_eq!(param.len(), grad.len(), "param and grad lengths differ");
    let n = param.len();
    let first = state.step == 0;
    state.step += 1;
    let t = state.step as f64;
    for name in config.state_names() {
        let init = f64::from(config.initial_state_value(name));
        let buf = state
            .buffers
            .entry(name.to_string())
            .or_insert_with(|| vec![init; n]);
        assert_eq!(buf.len(), n, "state {name} has the wrong length");
    }
    let mut take = |name: &str| state.buffers.remove(name).unwrap_or_default();
    let sign = |maximize: bool| if maximize { -1.0 } else { 1.0 };

    match *config {
        OptimizerConfig::SGD(c) => {
            let mut buf = take("momentum_buffer");
            for i in 0..n {
                let mut g = sign(c.maximize) * grad[i] + c.weight_decay * param[i];
                if c.momentum != 0.0 {
                    buf[i] = if first {
                        g
                    } else {
                        c.momentum * buf[i] + (1.0 - c.dampening) * g
                    };
                    g = if c.nesterov {
                        g + c.momentum * buf[i]
                    } else {
                        buf[i]
                    };
                }
                param[i] -= c.lr * g;
            }
            put(state, "momentum_buffer", buf, c.momentum != 0.0);
        }
        OptimizerConfig::Adam(_) | OptimizerConfig::AdamW(_) => {
            let AdamLike {
                lr,
                betas: (b1, b2),
                eps,
                weight_decay: wd,
                amsgrad,
                maximize,
                decoupled,
            } = match *config {
                OptimizerConfig::Adam(c) => c.like(),
                OptimizerConfig::AdamW(c) => c.like(),
                _ => unreachable!(),
            };
            let (mut m, mut v, mut vmax) =
                (take("exp_avg"), take("exp_avg_sq"), take("max_exp_avg_sq"));
            let bc1 = 1.0 - b1.powf(t);
            let bc2 = 1.0 - b2.powf(t);
            for i in 0..n {
                let mut g = sign(maximize) * grad[i];
                if decoupled {
                    param[i] *= 1.0 - lr * wd;
                } else {
                    g += wd * param[i];
                }
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let mut second = v[i];
                if amsgrad {
                    vmax[i] = vmax[i].max(v[i]);
                    second = vmax[i];
                }
                let m_hat = m[i] / bc1;
                let v_hat = second / bc2;
                param[i] -= lr * m_hat / (v_hat.sqrt() + eps);
            }
            put(state, "exp_avg", m, true);
            put(state, "exp_avg_sq", v, true);
            put(state, "max_exp_avg_sq", vmax, amsgrad);
        }
        OptimizerConfig::RMSprop(c) => {
            let (mut sq, mut ga, mut buf) = (
                take("square_avg"),
                take("grad_avg"),
                take("momentum_buffer"),
            );
            for i in 0..n {
                let g = sign(c.maximize) * grad[i] + c.weight_decay * param[i];
                sq[i] = c.alpha * sq[i] + (1.0 - c.alpha) * g * g;
                let mut var = sq[i];
                if c.centered {
                    ga[i] = c.alpha * ga[i] + (1.0 - c.alpha) * g;
                    var -= ga[i] * ga[i];
                }
                let d = var.sqrt() + c.eps;
                if c.momentum > 0.0 {
                    buf[i] = c.momentum * buf[i] + g / d;
                    param[i] -= c.lr * buf[i];
                } else {
                    param[i] -= c.lr * g / d;
                }
            }
            put(state, "square_avg", sq, true);
            put(state, "grad_avg", ga, c.centered);
            put(state, "momentum_buffer", buf, c.momentum > 0.0);
        }
        OptimizerConfig::Adagrad(c) => {
            let mut sum = take("sum");
            let clr = c.clr(state.step);
            for i in 0..n {
                let g = sign(c.maximize) * grad[i] + c.weight_decay * param[i];
                sum[i] += g * g;
                param[i] -= clr * g / (sum[i].sqrt() + c.eps);
            }
            put(state, "sum", sum, true);
        }
    }
}

fn put(state: &mut TensorState<f64>, name: &str, values: Vec<f64>, keep: bool) {
    if keep {
        state.buffers.insert(name.to_string(), values);
    }
}

/// What PyTorch's recipe does to one step's gradients before the optimizer sees them, in f64:
/// `scaler.unscale_(opt)` when `scale` is given (the gradients are multiplied by `1 / scale`,
/// and any inf or NaN among the scaled gradients is found), then `clip_grad_norm_` over all
/// tensors together or `clip_grad_value_`. The gradients are changed in place.
///
/// The returned total norm is that of the unscaled gradients (NaN if any is NaN, else inf if
/// any is inf), taken when clipping by norm, and with the 2-norm when only unscaling; 0
/// otherwise, as [`Optimizer::read_step_report`](crate::Optimizer::read_step_report) reports.
/// When `found_inf`, the optimizer step is to be skipped (with a grad scaler).
///
/// ```
/// use wgpu_optim::{ClipGrad, reference};
/// let mut a = vec![3.0, 0.0];
/// let mut b = vec![4.0];
/// let report = reference::prepare_grads(&mut [&mut a, &mut b], Some(&ClipGrad::norm(1.0)), None);
/// assert_eq!(report.total_norm, 5.0);
/// assert!((a[0] - 0.6).abs() < 1e-6 && (b[0] - 0.8).abs() < 1e-6);
/// ```
pub fn prepare_grads(
    grads: &mut [&mut [f64]],
    clip: Option<&ClipGrad>,
    scale: Option<f32>,
) -> StepReport {
    let all = |grads: &mut [&mut [f64]], f: &mut dyn FnMut(&mut f64)| {
        for g in grads.iter_mut() {
            g.iter_mut().for_each(&mut *f);
        }
    };
    let mut found_inf = false;
    if let Some(scale) = scale {
        let inv = 1.0 / f64::from(scale);
        all(grads, &mut |g| {
            found_inf |= !g.is_finite();
            *g *= inv;
        });
    }
    let norm_type = match clip {
        Some(ClipGrad::Norm { norm_type, .. }) => Some(*norm_type),
        _ if scale.is_some() => Some(NormType::L2),
        _ => None,
    };
    let mut total_norm = 0.0;
    if let Some(norm_type) = norm_type {
        let (mut acc, mut inf, mut nan) = (0.0f64, false, false);
        all(grads, &mut |g| {
            if g.is_nan() {
                nan = true;
            } else if g.is_infinite() {
                inf = true;
            } else if norm_type == NormType::Inf {
                acc = acc.max(g.abs());
            } else {
                acc += *g * *g;
            }
        });
        total_norm = match (nan, inf, norm_type) {
            (true, _, _) => f64::NAN,
            (false, true, _) => f64::INFINITY,
            (false, false, NormType::Inf) => acc,
            (false, false, NormType::L2) => acc.sqrt(),
        };
    }
    match clip {
        Some(ClipGrad::Norm { max_norm, .. }) => {
            let coef = max_norm / (total_norm + 1e-6);
            let coef = if coef > 1.0 { 1.0 } else { coef };
            all(grads, &mut |g| *g *= coef);
        }
        Some(ClipGrad::Value { clip_value }) => {
            all(grads, &mut |g| *g = g.clamp(-clip_value, *clip_value));
        }
        None => {}
    }
    StepReport {
        total_norm: total_norm as f32,
        found_inf,
    }
}

/// `GradScaler.update()`: after a step that found inf or NaN, the scale times
/// `backoff_factor` and the tracker reset; otherwise the tracker counts up, and at
/// `growth_interval` the scale grows by `growth_factor` (unless that overflows f32) and the
/// tracker resets. Products are taken in f64 and rounded to f32, as PyTorch rounds them.
pub fn update_grad_scaler(scaler: &GradScaler, state: &mut GradScalerState, found_inf: bool) {
    if found_inf {
        state.scale = (f64::from(state.scale) * scaler.backoff_factor) as f32;
        state.growth_tracker = 0;
        return;
    }
    let successful = state.growth_tracker + 1;
    if successful as u32 == scaler.growth_interval {
        let grown = (f64::from(state.scale) * scaler.growth_factor) as f32;
        if grown.is_finite() {
            state.scale = grown;
        }
        state.growth_tracker = 0;
    } else {
        state.growth_tracker = successful;
    }
}
