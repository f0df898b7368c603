// ADOPT (pytorch-optimizer): the update formula, in the kernel template (shaders/common.wgsl).
// State: exp_avg, exp_avg_sq.

// The package's `cautious` and `stable_adamw` options, which need per-tensor sums
// (shaders/sums.wgsl): the count of elements where the update agrees with the normalized
// gradient, and the mean of g² / max(v, 1e-16).
override CAUTIOUS: bool = false;
override STABLE_ADAMW: bool = false;

// One parameter group's values for one step. Must be kept in sync with `AdoptHyper` in
// src/optim/adopt.rs.
struct Hyper {
    lr: f32,
    // 1 - beta1, the weight of exp_avg.lerp_(normed_grad, 1 - beta1)
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    // floor under sqrt(exp_avg_sq)
    eps: f32,
    // coupled weight decay added to the gradient; 0 when decoupled
    weight_decay: f32,
    // 1 - lr * weight_decay (or 1 - weight_decay) when decoupled, else 1
    decay: f32,
    // -1 when maximize, else 1
    grad_sign: f32,
    // the normalized gradient is clipped to +-t^clip_exponent when clipping is 1
    clip_exponent: f32,
    clipping: u32,
    _pad0: f32,
    _pad1: f32,
}

// One tensor's values for one step.
struct Coeffs {
    lr: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    decay: f32,
    grad_sign: f32,
    // t^clip_exponent
    clip: f32,
    clipping: u32,
    // 1 on the tensor's first step, which only accumulates exp_avg_sq
    first_step: u32,
    // numel / (count + 1) with CAUTIOUS, and the RMS with STABLE_ADAMW (`apply_sums`)
    cautious_factor: f32,
    rms: f32,
}

fn coeffs(h: Hyper, t: u32, x: ptr<function, Scalars>) -> Coeffs {
    return Coeffs(
        h.lr,
        h.one_minus_beta1,
        h.beta2,
        h.one_minus_beta2,
        h.eps,
        h.weight_decay,
        h.decay,
        h.grad_sign,
        pow(f32(t), h.clip_exponent),
        h.clipping,
        u32(t == 1u),
        1.0,
        1.0,
    );
}

// The gradient as the update takes it (negated when maximizing, with the weight decay), and
// the clipped normalized gradient, with exp_avg moved toward it.
struct Moved {
    g: V,
    n: V,
}

fn move_average(u: ptr<function, Unit>) -> Moved {
    let c = (*u).c;
    let g = decayed_grad(u, c.grad_sign, c.decay, c.weight_decay);
    var n = g / max(sqrt((*u).s[1]), splat(c.eps));
    if c.clipping != 0u {
        // torch's maximum and minimum keep NaN, which WGSL's clamp need not.
        n = select(clamp(n, splat(-c.clip), splat(c.clip)), n, nan_lanes(n));
    }
    (*u).s[0] = torch_lerp((*u).s[0], n, c.one_minus_beta1);
    return Moved(g, n);
}

// Where exp_avg agrees with the normalized gradient (CAUTIOUS), the terms of the RMS
// (STABLE_ADAMW, from the exp_avg_sq before the step), and the element count.
fn sum_terms(u: ptr<function, Unit>) -> Terms {
    let v = (*u).s[1];
    let moved = move_average(u);
    return cautious_terms((*u).s[0], moved.n, moved.g, v);
}

fn apply_sums(c: Coeffs, sums: vec4<f32>, x: ptr<function, Scalars>) -> Coeffs {
    var out = c;
    out.cautious_factor = cautious_factor(sums.x, sums.z);
    out.rms = stable_adamw_rms(sums.y, sums.z);
    return out;
}

fn update(u: ptr<function, Unit>) {
    let c = (*u).c;
    if c.first_step != 0u {
        let g = decayed_grad(u, c.grad_sign, c.decay, c.weight_decay);
        (*u).s[1] = (*u).s[1] + g * g;
        return;
    }
    let moved = move_average(u);
    var step = (*u).s[0];
    if CAUTIOUS {
        step = cautious_mask(step, moved.n, c.cautious_factor);
    }
    if STABLE_ADAMW {
        step = step / c.rms;
    }
    (*u).p = (*u).p - c.lr * step;
    (*u).s[1] = (*u).s[1] * c.beta2 + c.one_minus_beta2 * moved.g * moved.g;
}
