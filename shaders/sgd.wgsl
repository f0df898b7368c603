// torch.optim.SGD: the update formula, in the kernel template (shaders/common.wgsl).

// With momentum: one state buffer, momentum_buffer.
override MOMENTUM: bool = false;

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

fn coeffs(h: Hyper, t: u32, x: ptr<function, Scalars>) -> Coeffs {
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

fn update(u: ptr<function, Unit>) {
    let c = (*u).c;
    var g = l2_grad(*u, c.grad_sign, c.weight_decay);
    if MOMENTUM {
        var buf = g;
        if c.first_step == 0u {
            buf = (*u).s[0] * c.momentum + c.one_minus_dampening * g;
        }
        if c.nesterov != 0u {
            g = g + c.momentum * buf;
        } else {
            g = buf;
        }
        (*u).s[0] = buf;
    }
    (*u).p = (*u).p - c.lr * g;
}
