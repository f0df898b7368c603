// ADOPT (pytorch-optimizer): the update formula, in the kernel template (shaders/common.wgsl).
// State: exp_avg, exp_avg_sq.

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
    );
}

fn update(u: ptr<function, Unit>) {
    let c = (*u).c;
    let g = decayed_grad(u, c.grad_sign, c.decay, c.weight_decay);
    if c.first_step != 0u {
        (*u).s[1] = (*u).s[1] + g * g;
        return;
    }
    var n = g / max(sqrt((*u).s[1]), splat(c.eps));
    if c.clipping != 0u {
        // torch's maximum and minimum keep NaN, which WGSL's clamp need not.
        n = select(clamp(n, splat(-c.clip), splat(c.clip)), n, nan_lanes(n));
    }
    (*u).s[0] = torch_lerp((*u).s[0], n, c.one_minus_beta1);
    (*u).p = (*u).p - c.lr * (*u).s[0];
    (*u).s[1] = (*u).s[1] * c.beta2 + c.one_minus_beta2 * g * g;
}
