// AdEMAMix (pytorch-optimizer): the update formula, in the kernel template
// (shaders/common.wgsl). State: exp_avg, exp_avg_sq, exp_avg_slow.

// One parameter group's values for one step. Must be kept in sync with `AdemamixHyper` in
// src/optim/ademamix.rs.
struct Hyper {
    lr: f32,
    // 1 - beta1, the weight of exp_avg.lerp_(grad, 1 - beta1)
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    // ln(beta1), ln(beta2) and ln(beta3): the bias corrections and beta3's warm-up
    ln_beta1: f32,
    ln_beta2: f32,
    ln_beta3: f32,
    one_minus_beta3: f32,
    alpha: f32,
    // the warm-up of alpha and beta3 over t_alpha_beta3 steps, when warmup is 1
    t_alpha_beta3: f32,
    warmup: u32,
    eps: f32,
    // coupled weight decay added to the gradient; 0 when decoupled
    weight_decay: f32,
    // 1 - lr * weight_decay (or 1 - weight_decay) when decoupled, else 1
    decay: f32,
    // -1 when maximize, else 1
    grad_sign: f32,
    _pad0: f32,
}

// One tensor's values for one step.
struct Coeffs {
    lr: f32,
    // 1 - beta1^t
    bias_correction1: f32,
    // sqrt(1 - beta2^t)
    bias_correction2_sqrt: f32,
    // alpha_t, and 1 - beta3_t, the weight of exp_avg_slow.lerp_(grad, 1 - beta3_t)
    alpha: f32,
    one_minus_beta3: f32,
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
    var alpha = h.alpha;
    var one_minus_beta3 = h.one_minus_beta3;
    if h.warmup != 0u {
        let r = steps / h.t_alpha_beta3;
        alpha = min(steps * h.alpha / h.t_alpha_beta3, h.alpha);
        // beta3_t = min(e^y, beta3), so 1 - beta3_t = max(1 - e^y, 1 - beta3), with 1 - e^y
        // formed without cancellation.
        let y = h.ln_beta1 * h.ln_beta3 / ((1.0 - r) * h.ln_beta3 + r * h.ln_beta1);
        one_minus_beta3 = max(one_minus_exp(y), h.one_minus_beta3);
    }
    return Coeffs(
        h.lr,
        one_minus_exp(steps * h.ln_beta1),
        sqrt(one_minus_exp(steps * h.ln_beta2)),
        alpha,
        one_minus_beta3,
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
    (*u).s[2] = torch_lerp((*u).s[2], g, c.one_minus_beta3);
    let denom = sqrt((*u).s[1]) / c.bias_correction2_sqrt + c.eps;
    let numer = (*u).s[0] / c.bias_correction1 + c.alpha * (*u).s[2];
    (*u).p = (*u).p - c.lr * (numer / denom);
}
