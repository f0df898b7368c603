// torch.optim.RAdam: the update formula, in the kernel template (shaders/common.wgsl).
// State: exp_avg, exp_avg_sq.

// One parameter group's values for one step. Must be kept in sync with `RadamHyper` in
// src/optim/radam.rs.
struct Hyper {
    lr: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    // ln(beta1), for the bias correction 1 - beta1^t
    ln_beta1: f32,
    // -ln(beta2) > 0 (87 for beta2 = 0)
    neg_ln_beta2: f32,
    // 2 / (1 - beta2) - 1
    rho_inf: f32,
    eps: f32,
    // L2 penalty added to the gradient; 0 with decoupled weight decay
    weight_decay: f32,
    // 1 - lr * weight_decay with decoupled weight decay, else 1
    decay: f32,
    // -1 when maximize, else 1
    grad_sign: f32,
    _pad: f32,
}

// One tensor's values for one step.
struct Coeffs {
    lr: f32,
    // 1 - beta1^t
    bias_correction1: f32,
    // sqrt(1 - beta2^t)
    bias_correction2_sqrt: f32,
    // The rectification term when rho_t > 5, else 0 (no adaptive step)
    rect: f32,
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
    let rho = rho_t(steps, h.neg_ln_beta2, h.rho_inf);
    var rect = 0.0;
    if rho > 5.0 {
        let r = h.rho_inf;
        rect = sqrt((rho - 4.0) * (rho - 2.0) * r / ((r - 4.0) * (r - 2.0) * rho));
    }
    return Coeffs(
        h.lr,
        one_minus_exp(steps * h.ln_beta1),
        sqrt(one_minus_exp(-steps * h.neg_ln_beta2)),
        rect,
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
    let corrected = (*u).s[0] / c.bias_correction1;
    if c.rect > 0.0 {
        let adaptive = 1.0 / (sqrt((*u).s[1]) + c.eps) * c.bias_correction2_sqrt;
        (*u).p = (*u).p - corrected * c.lr * adaptive * c.rect;
    } else {
        (*u).p = (*u).p - corrected * c.lr;
    }
}
