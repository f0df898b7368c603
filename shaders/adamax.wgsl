// torch.optim.Adamax: the update formula, in the kernel template (shaders/common.wgsl).
// State: exp_avg, exp_inf.

// One parameter group's values for one step. Must be kept in sync with `AdamaxHyper` in
// src/optim/adamax.rs.
struct Hyper {
    lr: f32,
    one_minus_beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    // ln(beta1), for the bias correction 1 - beta1^t
    ln_beta1: f32,
    // -1 when maximize, else 1
    grad_sign: f32,
    _pad: f32,
}

// One tensor's values for one step.
struct Coeffs {
    // -lr / (1 - beta1^t)
    neg_clr: f32,
    one_minus_beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    grad_sign: f32,
}

fn coeffs(h: Hyper, t: u32, x: ptr<function, Scalars>) -> Coeffs {
    let neg_clr = -(h.lr / one_minus_exp(f32(t) * h.ln_beta1));
    return Coeffs(neg_clr, h.one_minus_beta1, h.beta2, h.eps, h.weight_decay, h.grad_sign);
}

fn update(u: ptr<function, Unit>) {
    let c = (*u).c;
    let g = l2_grad(*u, c.grad_sign, c.weight_decay);
    (*u).s[0] = torch_lerp((*u).s[0], g, c.one_minus_beta1);
    (*u).s[1] = max((*u).s[1] * c.beta2, abs(g) + c.eps);
    (*u).p = (*u).p + (c.neg_clr * (*u).s[0]) / (*u).s[1];
}
