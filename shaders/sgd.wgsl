// torch.optim.SGD. Entry points: `sgd` (momentum == 0) and `sgd_momentum`.
// Requires an access prologue (scalar.wgsl or vec4.wgsl) and common.wgsl in front.

// Per-tensor values for one step. Must be kept in sync with `SgdUniform` in src/optim/sgd.rs.
struct SgdHyper {
    lr: f32,
    momentum: f32,
    // 1 - dampening
    one_minus_dampening: f32,
    weight_decay: f32,
    // -1 when maximize, else 1
    grad_sign: f32,
    // 1 for Nesterov momentum
    nesterov: u32,
    // 1 while the momentum buffer does not exist yet (PyTorch's `buf is None`)
    first_step: u32,
    _pad: u32,
}

@group(0) @binding(1) var<uniform> hyper: array<SgdHyper, MAX_SEGMENTS>;
@group(0) @binding(2) var<storage, read_write> param: array<E>;
@group(0) @binding(3) var<storage, read_write> grad: array<E>;

fn sgd_grad(h: SgdHyper, p: V, g_raw: V) -> V {
    var g = h.grad_sign * g_raw;
    if h.weight_decay != 0.0 {
        g = g + h.weight_decay * p;
    }
    return g;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn sgd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = locate(wid, lid);
    if site.lo >= site.hi {
        return;
    }
    let s = site.segment;
    let h = hyper[s.slot];
    let pi = s.param_offset + site.index;
    let p = unpack(param[pi]);
    let g = sgd_grad(h, p, unpack(grad[s.grad_offset + site.index]));
    let p_new = p - h.lr * g;
    if whole(site) {
        param[pi] = pack(p_new);
    } else {
        for (var k = site.lo; k < site.hi; k++) {
            param[pi][k] = lane(p_new, k);
        }
    }
}

@group(0) @binding(4) var<storage, read_write> momentum_buffer: array<E>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn sgd_momentum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = locate(wid, lid);
    if site.lo >= site.hi {
        return;
    }
    let s = site.segment;
    let h = hyper[s.slot];
    let pi = s.param_offset + site.index;
    let si = s.state_offset + site.index;
    let p = unpack(param[pi]);
    var g = sgd_grad(h, p, unpack(grad[s.grad_offset + site.index]));
    var buf = g;
    if h.first_step == 0u {
        buf = unpack(momentum_buffer[si]) * h.momentum + h.one_minus_dampening * g;
    }
    if h.nesterov != 0u {
        g = g + h.momentum * buf;
    } else {
        g = buf;
    }
    let p_new = p - h.lr * g;
    if whole(site) {
        momentum_buffer[si] = pack(buf);
        param[pi] = pack(p_new);
    } else {
        for (var k = site.lo; k < site.hi; k++) {
            momentum_buffer[si][k] = lane(buf, k);
            param[pi][k] = lane(p_new, k);
        }
    }
}
