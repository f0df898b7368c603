// Lamb (pytorch-optimizer): the update formula, in the kernel template (shaders/common.wgsl),
// with the per-tensor sums of shaders/sums.wgsl for its trust ratio. State: exp_avg,
// exp_avg_sq.

// One parameter group's values for one step. Must be kept in sync with `LambHyper` in
// src/optim/lamb.rs.
struct Hyper {
    lr: f32,
    beta1: f32,
    // the gradient's weight in exp_avg: 1 - beta1, or 1 without grad_averaging
    beta3: f32,
    beta2: f32,
    one_minus_beta2: f32,
    // ln(beta1), for the bias correction 1 - beta1^t
    ln_beta1: f32,
    eps: f32,
    // 1 - lr * weight_decay (or 1 - weight_decay) with weight_decouple, else 1
    decay: f32,
    // weight decay added to the update without weight_decouple, else 0
    weight_decay: f32,
    // -1 when maximize, else 1
    grad_sign: f32,
    // 1 unless `adam`: the update is scaled by the trust ratio
    trust: u32,
    // 1 unless `adam_debias`: the step size is divided by 1 - beta1^t
    debias: u32,
}

// One tensor's values for one step.
struct Coeffs {
    // -lr / (1 - beta1^t), or -lr
    neg_step_size: f32,
    beta1: f32,
    beta3: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    decay: f32,
    weight_decay: f32,
    grad_sign: f32,
    use_trust: u32,
    // min(|p|, 10) / (|u| + eps), from the tensor's sums (`apply_sums`); 1 before
    trust: f32,
}

fn coeffs(h: Hyper, t: u32, x: ptr<function, Scalars>) -> Coeffs {
    var step_size = h.lr;
    if h.debias != 0u {
        step_size = h.lr / one_minus_exp(f32(t) * h.ln_beta1);
    }
    return Coeffs(
        -step_size,
        h.beta1,
        h.beta3,
        h.beta2,
        h.one_minus_beta2,
        h.eps,
        h.decay,
        h.weight_decay,
        h.grad_sign,
        h.trust,
        1.0,
    );
}

// The unit's update direction, after its moments and its decoupled decay are applied to the
// unit: exp_avg * (1 / (sqrt(exp_avg_sq) + eps)), plus the coupled weight decay.
fn direction(u: ptr<function, Unit>) -> V {
    let c = (*u).c;
    let g = c.grad_sign * (*u).g;
    if c.decay != 1.0 {
        (*u).p = (*u).p * c.decay;
    }
    (*u).s[0] = (*u).s[0] * c.beta1 + c.beta3 * g;
    (*u).s[1] = (*u).s[1] * c.beta2 + c.one_minus_beta2 * g * g;
    var d = (1.0 / (sqrt((*u).s[1]) + c.eps)) * (*u).s[0];
    if c.weight_decay != 0.0 {
        d = d + c.weight_decay * (*u).p;
    }
    return d;
}

// The squares of the decayed parameter and of the direction, for their norms.
fn sum_terms(u: ptr<function, Unit>) -> Terms {
    let d = direction(u);
    let zero = splat(0.0);
    return Terms((*u).p * (*u).p, d * d, zero, zero);
}

// The trust ratio, as the package forms it from the two norms: where either is 0, 1.
fn apply_sums(c: Coeffs, sums: vec4<f32>) -> Coeffs {
    var out = c;
    let weight_norm = min(sqrt(sums.x), 10.0);
    let update_norm = sqrt(sums.y);
    if weight_norm != 0.0 && update_norm != 0.0 {
        out.trust = weight_norm / (update_norm + c.eps);
    }
    return out;
}

fn update(u: ptr<function, Unit>) {
    let c = (*u).c;
    var d = direction(u);
    if c.use_trust != 0u {
        d = d * c.trust;
    }
    (*u).p = (*u).p + c.neg_step_size * d;
}
