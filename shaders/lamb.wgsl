// Lamb (pytorch-optimizer): the update formula, in the kernel template (shaders/common.wgsl),
// with the per-tensor sums of shaders/sums.wgsl for its trust ratio. State: exp_avg,
// exp_avg_sq, and with ADANORM the scalar exp_grad_adanorm.

// The `adanorm` keyword: exp_avg takes the gradient rescaled by its running norm, on the
// package's per-parameter path. Its sums run in two rounds: each gradient's norm first (which
// advances exp_grad_adanorm), then the trust ratio's norms.
override ADANORM: bool = false;

// Bits of `Coeffs.options`.
const TRUST: u32 = 1u;
const ADANORM_ON: u32 = 2u;

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
    // 1 with `rectify`: RAdam's step size, on the package's per-parameter path
    rectify: u32,
    // with `rectify`, 1 with `degenerated_to_sgd`
    degenerated: u32,
    n_sma_threshold: f32,
    // -ln(beta2), and 2 / (1 - beta2) - 1, for n_sma
    neg_ln_beta2: f32,
    n_sma_max: f32,
    // With `adanorm`, its r and 1 - r
    adanorm_r: f32,
    adanorm_one_minus_r: f32,
    // 1 with `adanorm` (a group of the optimizer may have it where this one has not)
    adanorm: u32,
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
    // TRUST (unless `adam`: the update is scaled by the trust ratio) and ADANORM_ON (the
    // group has `adanorm`)
    options: u32,
    // min(|p|, 10) / (|u| + eps), from the tensor's sums (`apply_sums`); 1 before
    trust: f32,
    // With `rectify`: 0 without, 1 for the adaptive step (n_sma >= threshold), 2 for the SGD
    // step, 3 for no step (the step size is not positive)
    rectified: u32,
    adanorm_r: f32,
    adanorm_one_minus_r: f32,
    // The gradient's factor in exp_avg with ADANORM, as the package forms it:
    // `g * adanorm_num / adanorm_den`, the running norm over the gradient's norm where the
    // gradient's is positive and below it (`apply_sums`), else 1 / 1
    adanorm_num: f32,
    adanorm_den: f32,
}

// The package's `get_rectify_step_size`: RAdam's rectification, folding in the bias correction
// of the second moment, where n_sma reaches the threshold; else 1 with `degenerated_to_sgd`,
// else -1 (no step).
fn rectified(h: Hyper, steps: f32) -> vec2<f32> {
    let n_sma = rho_t(steps, h.neg_ln_beta2, h.n_sma_max);
    if n_sma >= h.n_sma_threshold {
        let r = h.n_sma_max;
        let bias_correction2 = one_minus_exp(-steps * h.neg_ln_beta2);
        let rt = sqrt(
            bias_correction2 * (n_sma - 4.0) / (r - 4.0) * (n_sma - 2.0) / n_sma * r / (r - 2.0),
        );
        return vec2<f32>(rt, 1.0);
    }
    if h.degenerated != 0u {
        return vec2<f32>(1.0, 2.0);
    }
    return vec2<f32>(-1.0, 3.0);
}

fn coeffs(h: Hyper, t: u32, x: ptr<function, Scalars>) -> Coeffs {
    let steps = f32(t);
    var step_size = h.lr;
    var mode = 0u;
    if h.rectify != 0u {
        let r = rectified(h, steps);
        step_size = h.lr * r.x;
        mode = u32(r.y);
    }
    if h.debias != 0u {
        step_size = step_size / one_minus_exp(steps * h.ln_beta1);
    }
    if mode != 0u && step_size <= 0.0 {
        mode = 3u;
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
        (h.trust * TRUST) | (h.adanorm * ADANORM_ON),
        1.0,
        mode,
        h.adanorm_r,
        h.adanorm_one_minus_r,
        1.0,
        1.0,
    );
}

// The unit's update direction, after its moments and its decoupled decay are applied to the
// unit: exp_avg * (1 / (sqrt(exp_avg_sq) + eps)) (exp_avg / (sqrt(exp_avg_sq) + eps) on the
// per-parameter path of ADANORM), plus the coupled weight decay.
fn direction(u: ptr<function, Unit>) -> V {
    let c = (*u).c;
    let g = c.grad_sign * (*u).g;
    if c.decay != 1.0 {
        (*u).p = (*u).p * c.decay;
    }
    var s = g;
    if ADANORM {
        s = g * c.adanorm_num / c.adanorm_den;
    }
    (*u).s[0] = (*u).s[0] * c.beta1 + c.beta3 * s;
    (*u).s[1] = (*u).s[1] * c.beta2 + c.one_minus_beta2 * g * g;
    let denom = sqrt((*u).s[1]) + c.eps;
    var d = (1.0 / denom) * (*u).s[0];
    if ADANORM {
        d = (*u).s[0] / denom;
    }
    if c.weight_decay != 0.0 {
        d = d + c.weight_decay * (*u).p;
    }
    return d;
}

// With `rectify`, the step's direction after the moments and the decay: exp_avg over
// (sqrt(exp_avg_sq) + eps) for the adaptive step, exp_avg for the SGD step.
fn rectified_direction(u: ptr<function, Unit>) -> V {
    let c = (*u).c;
    // The moments and the decay (the rectified path adds no coupled weight decay).
    _ = direction(u);
    if c.rectified == 1u {
        return (*u).s[0] / (sqrt((*u).s[1]) + c.eps);
    }
    return (*u).s[0];
}

// In the first round with ADANORM, the squares of the gradient (after `maximize`); else the
// squares of the decayed parameter and of the update the trust ratio measures: the direction,
// or with `rectify`, the parameter the step would give.
fn sum_terms(u: ptr<function, Unit>) -> Terms {
    let c = (*u).c;
    let zero = splat(0.0);
    if ADANORM && SUMS_ROUND == 0u {
        let g = c.grad_sign * (*u).g;
        return Terms(g * g, zero, zero, zero);
    }
    if c.rectified != 0u {
        let q = rectified_direction(u);
        let moved = (*u).p + c.neg_step_size * q;
        return Terms((*u).p * (*u).p, moved * moved, zero, zero);
    }
    let d = direction(u);
    return Terms((*u).p * (*u).p, d * d, zero, zero);
}

// In the first round with ADANORM, the package's `get_adanorm_gradient`: the running norm
// (the scalar state) lerps toward the gradient's norm, and exp_avg takes the gradient scaled
// by their ratio where the gradient's norm is positive and below it. Else the trust ratio, as
// the package forms it from the two norms: where either is 0, 1.
fn apply_sums(c: Coeffs, sums: vec4<f32>, x: ptr<function, Scalars>) -> Coeffs {
    var out = c;
    if ADANORM && SUMS_ROUND == 0u {
        if (c.options & ADANORM_ON) == 0u {
            return out;
        }
        let grad_norm = sqrt(sums.x);
        let running = (*x).x * c.adanorm_r + c.adanorm_one_minus_r * grad_norm;
        (*x).x = running;
        if grad_norm > 0.0 && running > grad_norm {
            out.adanorm_num = running;
            out.adanorm_den = grad_norm;
        }
        return out;
    }
    let weight_norm = min(sqrt(sums.x), 10.0);
    let update_norm = sqrt(sums.y);
    if weight_norm != 0.0 && update_norm != 0.0 {
        out.trust = weight_norm / (update_norm + c.eps);
    }
    return out;
}

fn update(u: ptr<function, Unit>) {
    let c = (*u).c;
    if c.rectified != 0u {
        let q = rectified_direction(u);
        if c.rectified == 3u {
            return;
        }
        // The package forms the step's factor first, as a scalar.
        var a = c.neg_step_size;
        if (c.options & TRUST) != 0u {
            a = a * c.trust;
        }
        (*u).p = (*u).p + a * q;
        return;
    }
    let d = direction(u);
    if ADANORM {
        // The per-parameter path forms the step's factor first, as a scalar.
        var a = c.neg_step_size;
        if (c.options & TRUST) != 0u {
            a = a * c.trust;
        }
        (*u).p = (*u).p + a * d;
        return;
    }
    var scaled = d;
    if (c.options & TRUST) != 0u {
        scaled = d * c.trust;
    }
    (*u).p = (*u).p + c.neg_step_size * scaled;
}
