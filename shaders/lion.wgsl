// Lion (lion-pytorch): the update formula, in the kernel template (shaders/common.wgsl).
// State: exp_avg.

// One parameter group's values for one step. Must be kept in sync with `LionHyper` in
// src/optim/lion.rs.
struct Hyper {
    lr: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    // 1 - lr * weight_decay (decoupled: weight_decay over the learning rate built with)
    decay: f32,
    _pad0: f32,
    _pad1: f32,
}

// One tensor's values for one step: the group's (Lion does not depend on the step count).
alias Coeffs = Hyper;

fn coeffs(h: Hyper, t: u32, x: ptr<function, Scalars>) -> Coeffs {
    return h;
}

fn update(u: ptr<function, Unit>) {
    let c = (*u).c;
    let g = (*u).g;
    // lion-pytorch always multiplies, by 1 without weight decay.
    (*u).p = (*u).p * c.decay;
    let interpolated = (*u).s[0] * c.beta1 + c.one_minus_beta1 * g;
    (*u).p = (*u).p - c.lr * sign(interpolated);
    (*u).s[0] = (*u).s[0] * c.beta2 + c.one_minus_beta2 * g;
}
