// AdEMAMix (pytorch-optimizer): the update formula, in the kernel template
// (shaders/common.wgsl). State: exp_avg, exp_avg_sq, exp_avg_slow.

// The package's `cautious` and `stable_adamw` options, which need per-tensor sums
// (shaders/sums.wgsl): the count of elements where exp_avg agrees with the gradient, and the
// mean of g² / max(v, 1e-16) with the new exp_avg_sq.
override CAUTIOUS: bool = false;
override STABLE_ADAMW: bool = false;

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
    // numel / (count + 1) with CAUTIOUS, and the RMS with STABLE_ADAMW (`apply_sums`)
    cautious_factor: f32,
    rms: f32,
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
        1.0,
        1.0,
    );
}

// The three averages moved toward the gradient (negated when maximizing, with the weight
// decay), which is returned.
fn move_averages(u: ptr<function, Unit>) -> V {
    let c = (*u).c;
    let g = decayed_grad(u, c.grad_sign, c.decay, c.weight_decay);
    adam_moments(u, g, c.one_minus_beta1, c.beta2, c.one_minus_beta2);
    (*u).s[2] = torch_lerp((*u).s[2], g, c.one_minus_beta3);
    return g;
}

// Where exp_avg agrees with the gradient (CAUTIOUS), the terms of the RMS (STABLE_ADAMW), and
// the element count.
fn sum_terms(u: ptr<function, Unit>) -> Terms {
    let g = move_averages(u);
    return cautious_terms((*u).s[0], g, g, (*u).s[1]);
}

fn apply_sums(c: Coeffs, sums: vec4<f32>, x: ptr<function, Scalars>) -> Coeffs {
    var out = c;
    out.cautious_factor = cautious_factor(sums.x, sums.z);
    out.rms = stable_adamw_rms(sums.y, sums.z);
    return out;
}

fn update(u: ptr<function, Unit>) {
    let c = (*u).c;
    let g = move_averages(u);
    var m = (*u).s[0];
    if CAUTIOUS {
        m = cautious_mask(m, g, c.cautious_factor);
    }
    let denom = sqrt((*u).s[1]) / c.bias_correction2_sqrt + c.eps;
    let numer = m / c.bias_correction1 + c.alpha * (*u).s[2];
    if STABLE_ADAMW {
        // The package divides by the denominator, then by the RMS, then adds.
        (*u).p = (*u).p - c.lr * (numer / denom / c.rms);
    } else {
        (*u).p = (*u).p - c.lr * (numer / denom);
    }
}
