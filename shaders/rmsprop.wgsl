// torch.optim.RMSprop. Entry points: `rmsprop`, `rmsprop_centered`, `rmsprop_momentum` and
// `rmsprop_centered_momentum`. Requires common.wgsl in front.

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
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> square_avg: array<f32>;
// Bindings 5 and 6 hold grad_avg and/or momentum_buffer, in that order, when present.
@group(0) @binding(5) var<storage, read_write> state5: array<f32>;
@group(0) @binding(6) var<storage, read_write> state6: array<f32>;

fn rms_grad(h: RmspropHyper, p: f32, g_raw: f32) -> f32 {
    var g = h.grad_sign * g_raw;
    if h.weight_decay != 0.0 {
        g = g + h.weight_decay * p;
    }
    return g;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rmsprop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = locate(wid, lid);
    if !site.valid {
        return;
    }
    let s = site.segment;
    let h = hyper[s.slot];
    let pi = s.param_offset + site.index;
    let si = s.state_offset + site.index;
    let p = param[pi];
    let g = rms_grad(h, p, grad[s.grad_offset + site.index]);
    let sq = square_avg[si] * h.alpha + h.one_minus_alpha * g * g;
    square_avg[si] = sq;
    param[pi] = p - h.lr * (g / (sqrt(sq) + h.eps));
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rmsprop_centered(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = locate(wid, lid);
    if !site.valid {
        return;
    }
    let s = site.segment;
    let h = hyper[s.slot];
    let pi = s.param_offset + site.index;
    let si = s.state_offset + site.index;
    let p = param[pi];
    let g = rms_grad(h, p, grad[s.grad_offset + site.index]);
    let sq = square_avg[si] * h.alpha + h.one_minus_alpha * g * g;
    let ga = torch_lerp(state5[si], g, h.one_minus_alpha);
    square_avg[si] = sq;
    state5[si] = ga;
    param[pi] = p - h.lr * (g / (sqrt(sq - ga * ga) + h.eps));
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rmsprop_momentum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = locate(wid, lid);
    if !site.valid {
        return;
    }
    let s = site.segment;
    let h = hyper[s.slot];
    let pi = s.param_offset + site.index;
    let si = s.state_offset + site.index;
    let p = param[pi];
    let g = rms_grad(h, p, grad[s.grad_offset + site.index]);
    let sq = square_avg[si] * h.alpha + h.one_minus_alpha * g * g;
    let buf = state5[si] * h.momentum + g / (sqrt(sq) + h.eps);
    square_avg[si] = sq;
    state5[si] = buf;
    param[pi] = p - h.lr * buf;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rmsprop_centered_momentum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = locate(wid, lid);
    if !site.valid {
        return;
    }
    let s = site.segment;
    let h = hyper[s.slot];
    let pi = s.param_offset + site.index;
    let si = s.state_offset + site.index;
    let p = param[pi];
    let g = rms_grad(h, p, grad[s.grad_offset + site.index]);
    let sq = square_avg[si] * h.alpha + h.one_minus_alpha * g * g;
    let ga = torch_lerp(state5[si], g, h.one_minus_alpha);
    let buf = state6[si] * h.momentum + g / (sqrt(sq - ga * ga) + h.eps);
    square_avg[si] = sq;
    state5[si] = ga;
    state6[si] = buf;
    param[pi] = p - h.lr * buf;
}
