// torch.optim.Adam and torch.optim.AdamW. Entry points: `adam` and `adam_amsgrad`.
// Requires an access prologue (scalar.wgsl or vec4.wgsl) and common.wgsl in front.

// Per-tensor values for one step. Must be kept in sync with `AdamUniform` in src/optim/adam.rs.
struct AdamHyper {
    // lr / (1 - beta1^t)
    step_size: f32,
    // sqrt(1 - beta2^t)
    bias_correction2_sqrt: f32,
    // 1 - beta1, the weight of exp_avg.lerp_(grad, 1 - beta1)
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    // L2 penalty added to the gradient (Adam); 0 for AdamW
    weight_decay: f32,
    // 1 - lr * weight_decay (AdamW's decoupled decay); 1 for Adam
    decay: f32,
    // -1 when maximize, else 1
    grad_sign: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
}

@group(0) @binding(1) var<uniform> hyper: array<AdamHyper, MAX_SEGMENTS>;
@group(0) @binding(2) var<storage, read_write> param: array<E>;
@group(0) @binding(3) var<storage, read_write> grad: array<E>;
@group(0) @binding(4) var<storage, read_write> exp_avg: array<E>;
@group(0) @binding(5) var<storage, read_write> exp_avg_sq: array<E>;

struct Moments {
    p: V,
    m: V,
    v: V,
}

// Decay, gradient and both moment updates; returns the new (decayed) parameter and moments.
fn adam_moments(h: AdamHyper, p_in: V, g_raw: V, m_in: V, v_in: V) -> Moments {
    var out: Moments;
    var g = h.grad_sign * g_raw;
    out.p = p_in;
    if h.decay != 1.0 {
        out.p = p_in * h.decay;
    }
    if h.weight_decay != 0.0 {
        g = g + h.weight_decay * out.p;
    }
    out.m = torch_lerp(m_in, g, h.one_minus_beta1);
    out.v = v_in * h.beta2 + h.one_minus_beta2 * g * g;
    return out;
}

fn adam_param(h: AdamHyper, p: V, m: V, v_hat: V) -> V {
    let denom = sqrt(v_hat) / h.bias_correction2_sqrt + h.eps;
    return p - h.step_size * (m / denom);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = locate(wid, lid);
    if site.lo >= site.hi {
        return;
    }
    let s = site.segment;
    let h = hyper[s.slot];
    let pi = s.param_offset + site.index;
    let si = s.state_offset + site.index;
    let r = adam_moments(
        h,
        unpack(param[pi]),
        unpack(grad[s.grad_offset + site.index]),
        unpack(exp_avg[si]),
        unpack(exp_avg_sq[si]),
    );
    let p_new = adam_param(h, r.p, r.m, r.v);
    if whole(site) {
        exp_avg[si] = pack(r.m);
        exp_avg_sq[si] = pack(r.v);
        param[pi] = pack(p_new);
    } else {
        for (var k = site.lo; k < site.hi; k++) {
            exp_avg[si][k] = lane(r.m, k);
            exp_avg_sq[si][k] = lane(r.v, k);
            param[pi][k] = lane(p_new, k);
        }
    }
}

@group(0) @binding(6) var<storage, read_write> max_exp_avg_sq: array<E>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn adam_amsgrad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = locate(wid, lid);
    if site.lo >= site.hi {
        return;
    }
    let s = site.segment;
    let h = hyper[s.slot];
    let pi = s.param_offset + site.index;
    let si = s.state_offset + site.index;
    let r = adam_moments(
        h,
        unpack(param[pi]),
        unpack(grad[s.grad_offset + site.index]),
        unpack(exp_avg[si]),
        unpack(exp_avg_sq[si]),
    );
    let v_max = max(unpack(max_exp_avg_sq[si]), r.v);
    let p_new = adam_param(h, r.p, r.m, v_max);
    if whole(site) {
        exp_avg[si] = pack(r.m);
        exp_avg_sq[si] = pack(r.v);
        max_exp_avg_sq[si] = pack(v_max);
        param[pi] = pack(p_new);
    } else {
        for (var k = site.lo; k < site.hi; k++) {
            exp_avg[si][k] = lane(r.m, k);
            exp_avg_sq[si][k] = lane(r.v, k);
            max_exp_avg_sq[si][k] = lane(v_max, k);
            param[pi][k] = lane(p_new, k);
        }
    }
}
