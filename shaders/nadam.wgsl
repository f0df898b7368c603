// torch.optim.NAdam: the update formula, in the kernel template (shaders/common.wgsl).
// State: exp_avg, exp_avg_sq; scalar state: mu_product.

// One parameter group's values for one step. Must be kept in sync with `NadamHyper` in
// src/optim/nadam.rs.
struct Hyper {
    lr: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    // ln(beta2), for the bias correction 1 - beta2^t
    ln_beta2: f32,
    // momentum_decay * ln(0.96), for 0.96^(t * momentum_decay)
    psi_ln_096: f32,
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
    // -lr * (1 - mu_t) / (1 - mu_product)
    coef_grad: f32,
    // -lr * mu_{t+1} / (1 - mu_product * mu_{t+1})
    coef_avg: f32,
    // 1 - beta2^t
    bias_correction2: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    decay: f32,
    grad_sign: f32,
}

// x.x is mu_product, which this step multiplies by mu_t (in f32, as PyTorch's f32 tensor).
fn coeffs(h: Hyper, t: u32, x: ptr<function, Scalars>) -> Coeffs {
    let steps = f32(t);
    let mu = h.beta1 * (1.0 - 0.5 * exp(steps * h.psi_ln_096));
    let mu_next = h.beta1 * (1.0 - 0.5 * exp((steps + 1.0) * h.psi_ln_096));
    let mu_product = (*x).x * mu;
    (*x).x = mu_product;
    return Coeffs(
        -h.lr * (1.0 - mu) / (1.0 - mu_product),
        -h.lr * mu_next / (1.0 - mu_product * mu_next),
        one_minus_exp(steps * h.ln_beta2),
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
    let denom = sqrt((*u).s[1] / c.bias_correction2) + c.eps;
    (*u).p = (*u).p + c.coef_grad * g / denom;
    (*u).p = (*u).p + c.coef_avg * (*u).s[0] / denom;
}
