// torch.optim.Adam and torch.optim.AdamW. Entry points: `adam` and `adam_amsgrad`.
// Requires an access prologue, layout.wgsl and common.wgsl in front.

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

fn coeffs(h: Hyper, t: u32) -> Coeffs {
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

struct Moments {
    p: V,
    m: V,
    v: V,
}

// Decay, gradient and both moment updates; returns the new (decayed) parameter and moments.
fn adam_moments(c: Coeffs, site: Site) -> Moments {
    var out: Moments;
    var g = c.grad_sign * load_grad(site);
    out.p = load_param(site);
    if c.decay != 1.0 {
        out.p = out.p * c.decay;
    }
    if c.weight_decay != 0.0 {
        g = g + c.weight_decay * out.p;
    }
    out.m = torch_lerp(load_state(site, 0u), g, c.one_minus_beta1);
    out.v = load_state(site, 1u) * c.beta2 + c.one_minus_beta2 * g * g;
    return out;
}

fn adam_param(c: Coeffs, p: V, m: V, v_hat: V) -> V {
    let denom = sqrt(v_hat) / c.bias_correction2_sqrt + c.eps;
    return p - c.step_size * (m / denom);
}

// State: exp_avg, exp_avg_sq.
@compute @workgroup_size(WORKGROUP_SIZE)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = begin(wid, lid);
    if site.lo >= site.hi {
        return;
    }
    let c = coeffs_at(site);
    let r = adam_moments(c, site);
    store_state(site, 0u, r.m);
    store_state(site, 1u, r.v);
    store_param(site, adam_param(c, r.p, r.m, r.v));
}

// State: exp_avg, exp_avg_sq, max_exp_avg_sq.
@compute @workgroup_size(WORKGROUP_SIZE)
fn adam_amsgrad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = begin(wid, lid);
    if site.lo >= site.hi {
        return;
    }
    let c = coeffs_at(site);
    let r = adam_moments(c, site);
    let v_max = max(load_state(site, 2u), r.v);
    store_state(site, 0u, r.m);
    store_state(site, 1u, r.v);
    store_state(site, 2u, v_max);
    store_param(site, adam_param(c, r.p, r.m, v_max));
}
