// torch.optim.SGD. Entry points: `sgd` (momentum == 0) and `sgd_momentum`.
// Requires common.wgsl in front.

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
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;

fn sgd_grad(h: SgdHyper, p: f32, g_raw: f32) -> f32 {
    var g = h.grad_sign * g_raw;
    if h.weight_decay != 0.0 {
        g = g + h.weight_decay * p;
    }
    return g;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn sgd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = locate(wid, lid);
    if !site.valid {
        return;
    }
    let s = site.segment;
    let h = hyper[s.slot];
    let pi = s.param_offset + site.index;
    let p = param[pi];
    let g = sgd_grad(h, p, grad[s.grad_offset + site.index]);
    param[pi] = p - h.lr * g;
}

@group(0) @binding(4) var<storage, read_write> momentum_buffer: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn sgd_momentum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = locate(wid, lid);
    if !site.valid {
        return;
    }
    let s = site.segment;
    let h = hyper[s.slot];
    let pi = s.param_offset + site.index;
    let si = s.state_offset + site.index;
    let p = param[pi];
    var g = sgd_grad(h, p, grad[s.grad_offset + site.index]);
    var buf = g;
    if h.first_step == 0u {
        buf = momentum_buffer[si] * h.momentum + h.one_minus_dampening * g;
    }
    momentum_buffer[si] = buf;
    if h.nesterov != 0u {
        g = g + h.momentum * buf;
    } else {
        g = buf;
    }
    param[pi] = p - h.lr * g;
}
