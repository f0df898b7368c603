// torch.optim.SGD. Entry points: `sgd` (momentum == 0) and `sgd_momentum`.
// Requires an access prologue, layout.wgsl and common.wgsl in front.

// One parameter group's values for one step. Must be kept in sync with `SgdHyper` in
// src/optim/sgd.rs.
struct Hyper {
    lr: f32,
    momentum: f32,
    // 1 - dampening
    one_minus_dampening: f32,
    weight_decay: f32,
    // -1 when maximize, else 1
    grad_sign: f32,
    // 1 for Nesterov momentum
    nesterov: u32,
    _pad0: u32,
    _pad1: u32,
}

// One tensor's values for one step.
struct Coeffs {
    lr: f32,
    momentum: f32,
    one_minus_dampening: f32,
    weight_decay: f32,
    grad_sign: f32,
    nesterov: u32,
    // 1 on the tensor's first step, when the momentum buffer does not exist yet (PyTorch's
    // `buf is None`)
    first_step: u32,
}

fn coeffs(h: Hyper, t: u32) -> Coeffs {
    return Coeffs(
        h.lr,
        h.momentum,
        h.one_minus_dampening,
        h.weight_decay,
        h.grad_sign,
        h.nesterov,
        u32(t == 1u),
    );
}

// The gradient with weight decay and the sign of `maximize`.
fn sgd_grad(u: Unit) -> V {
    var g = u.c.grad_sign * u.g;
    if u.c.weight_decay != 0.0 {
        g = g + u.c.weight_decay * u.p;
    }
    return g;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn sgd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var u = begin(wid, lid, 0u);
    if !has_work(u) {
        return;
    }
    u.p = u.p - u.c.lr * sgd_grad(u);
    finish(u, 0u);
}

// State: momentum_buffer.
@compute @workgroup_size(WORKGROUP_SIZE)
fn sgd_momentum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var u = begin(wid, lid, 1u);
    if !has_work(u) {
        return;
    }
    let c = u.c;
    var g = sgd_grad(u);
    var buf = g;
    if c.first_step == 0u {
        buf = u.s[0] * c.momentum + c.one_minus_dampening * g;
    }
    if c.nesterov != 0u {
        g = g + c.momentum * buf;
    } else {
        g = buf;
    }
    u.s[0] = buf;
    u.p = u.p - c.lr * g;
    finish(u, 1u);
}
