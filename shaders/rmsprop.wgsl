// torch.optim.RMSprop. Entry points: `rmsprop`, `rmsprop_centered`, `rmsprop_momentum` and
// `rmsprop_centered_momentum`. Requires an access prologue (scalar.wgsl or vec4.wgsl) and
// common.wgsl in front.

// Per-tensor values for one step. Must be kept in sync with `RmspropUniform` in
// src/optim/rmsprop.rs.
struct RmspropHyper {
    lr: f32,
    alpha: f32,
    // 1 - alpha
    one_minus_alpha: f32,
    eps: f32,
    weight_decay: f32,
    momentum: f32,
    // -1 when maximize, else 1
    grad_sign: f32,
    _pad: f32,
}

@group(0) @binding(1) var<uniform> hyper: array<RmspropHyper, MAX_SEGMENTS>;
@group(0) @binding(2) var<storage, read_write> param: array<E>;
@group(0) @binding(3) var<storage, read_write> grad: array<E>;
@group(0) @binding(4) var<storage, read_write> square_avg: array<E>;
@group(0) @binding(5) var<storage, read_write> state5: array<E>;
@group(0) @binding(6) var<storage, read_write> state6: array<E>;

fn rms_grad(h: RmspropHyper, p: V, g_raw: V) -> V {
    var g = h.grad_sign * g_raw;
    if h.weight_decay != 0.0 {
        g = g + h.weight_decay * p;
    }
    return g;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rmsprop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = locate(wid, lid);
    if site.lo >= site.hi {
        return;
    }
    let s = site.segment;
    let h = hyper[s.slot];
    let pi = s.param_offset + site.index;
    let si = s.state_offset + site.index;
    let p = unpack(param[pi]);
    let g = rms_grad(h, p, unpack(grad[s.grad_offset + site.index]));
    let sq = unpack(square_avg[si]) * h.alpha + h.one_minus_alpha * g * g;
    let p_new = p - h.lr * (g / (sqrt(sq) + h.eps));
    if whole(site) {
        square_avg[si] = pack(sq);
        param[pi] = pack(p_new);
    } else {
        for (var k = site.lo; k < site.hi; k++) {
            square_avg[si][k] = lane(sq, k);
            param[pi][k] = lane(p_new, k);
        }
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rmsprop_centered(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = locate(wid, lid);
    if site.lo >= site.hi {
        return;
    }
    let s = site.segment;
    let h = hyper[s.slot];
    let pi = s.param_offset + site.index;
    let si = s.state_offset + site.index;
    let p = unpack(param[pi]);
    let g = rms_grad(h, p, unpack(grad[s.grad_offset + site.index]));
    let sq = unpack(square_avg[si]) * h.alpha + h.one_minus_alpha * g * g;
    let ga = torch_lerp(unpack(state5[si]), g, h.one_minus_alpha);
    let p_new = p - h.lr * (g / (sqrt(sq - ga * ga) + h.eps));
    if whole(site) {
        square_avg[si] = pack(sq);
        state5[si] = pack(ga);
        param[pi] = pack(p_new);
    } else {
        for (var k = site.lo; k < site.hi; k++) {
            square_avg[si][k] = lane(sq, k);
            state5[si][k] = lane(ga, k);
            param[pi][k] = lane(p_new, k);
        }
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rmsprop_momentum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = locate(wid, lid);
    if site.lo >= site.hi {
        return;
    }
    let s = site.segment;
    let h = hyper[s.slot];
    let pi = s.param_offset + site.index;
    let si = s.state_offset + site.index;
    let p = unpack(param[pi]);
    let g = rms_grad(h, p, unpack(grad[s.grad_offset + site.index]));
    let sq = unpack(square_avg[si]) * h.alpha + h.one_minus_alpha * g * g;
    let buf = unpack(state5[si]) * h.momentum + g / (sqrt(sq) + h.eps);
    let p_new = p - h.lr * buf;
    if whole(site) {
        square_avg[si] = pack(sq);
        state5[si] = pack(buf);
        param[pi] = pack(p_new);
    } else {
        for (var k = site.lo; k < site.hi; k++) {
            square_avg[si][k] = lane(sq, k);
            state5[si][k] = lane(buf, k);
            param[pi][k] = lane(p_new, k);
        }
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rmsprop_centered_momentum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = locate(wid, lid);
    if site.lo >= site.hi {
        return;
    }
    let s = site.segment;
    let h = hyper[s.slot];
    let pi = s.param_offset + site.index;
    let si = s.state_offset + site.index;
    let p = unpack(param[pi]);
    let g = rms_grad(h, p, unpack(grad[s.grad_offset + site.index]));
    let sq = unpack(square_avg[si]) * h.alpha + h.one_minus_alpha * g * g;
    let ga = torch_lerp(unpack(state5[si]), g, h.one_minus_alpha);
    let buf = unpack(state6[si]) * h.momentum + g / (sqrt(sq - ga * ga) + h.eps);
    let p_new = p - h.lr * buf;
    if whole(site) {
        square_avg[si] = pack(sq);
        state5[si] = pack(ga);
        state6[si] = pack(buf);
        param[pi] = pack(p_new);
    } else {
        for (var k = site.lo; k < site.hi; k++) {
            square_avg[si][k] = lane(sq, k);
            state5[si][k] = lane(ga, k);
            state6[si][k] = lane(buf, k);
            param[pi][k] = lane(p_new, k);
        }
    }
}
