// torch.optim.Adam and torch.optim.AdamW: the update formula, in the kernel template
// (shaders/common.wgsl). State: exp_avg, exp_avg_sq, and max_exp_avg_sq with AMSGRAD.

// AMSGrad: the running max of exp_avg_sq in a third state buffer.
override AMSGRAD: bool = false;

// One parameter group's values for one step. Must be kept in sync with `AdamHyper` in
// src/optim/adam.rs.
struct Hyper {
    lr: f32,
    // 1 - beta1, the weight of exp_avg.lerp_(grad, 1 - beta1)
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    // ln(beta1) and ln(beta2), for the bias corrections 1 - beta^t
    ln_beta1: f32,
    ln_beta2: f32,
    eps: f32,
    // L2 penalty added to the gradient (Adam); 0 for AdamW
    weight_decay: f32,
    // 1 - lr * weight_decay (AdamW's decoupled decay); 1 for Adam
    decay: f32,
    // -1 when maximize, else 1
    grad_sign: f32,
    _pad0: f32,
    _pad1: f32,
}

// One tensor's values for one step.
struct Coeffs {
    // lr / (1 - beta1^t)
    step_size: f32,
    // sqrt(1 - beta2^t)
    bias_correction2_sqrt: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    decay: f32,
    grad_sign: f32,
}

fn coeffs(h: Hyper, t: u32, x: ptr<function, Scalars>) -> Coeffs {
    let steps = f32(t);
    return Coeffs(
        h.lr / one_minus_exp(steps * h.ln_beta1),
        sqrt(one_minus_exp(steps * h.ln_beta2)),
        h.one_minus_beta1,
        h.beta2,
        h.one_minus_beta2,
        h.eps,
        h.weight_decay,
        h.decay,
        h.grad_sign,
    );
}

fn update(u: ptr<function, Unit>) {
    let c = (*u).c;
    let g = decayed_grad(u, c.grad_sign, c.decay, c.weight_decay);
    adam_moments(u, g, c.one_minus_beta1, c.beta2, c.one_minus_beta2);
    var v_hat = (*u).s[1];
    if AMSGRAD {
        (*u).s[2] = max((*u).s[2], (*u).s[1]);
        v_hat = (*u).s[2];
    }
    let denom = sqrt(v_hat) / c.bias_correction2_sqrt + c.eps;
    (*u).p = (*u).p - c.step_size * ((*u).s[0] / denom);
}
