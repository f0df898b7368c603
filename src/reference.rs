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
