// torch.optim.Adagrad: the update formula, in the kernel template (shaders/common.wgsl).
// State: sum.

// One parameter group's values for one step. Must be kept in sync with `AdagradHyper` in
// src/optim/adagrad.rs.
struct Hyper {
    lr: f32,
    lr_decay: f32,
    eps: f32,
    weight_decay: f32,
    // -1 when maximize, else 1
    grad_sign: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
}

// One tensor's values for one step.
struct Coeffs {
    // lr / (1 + (t - 1) * lr_decay)
    clr: f32,
    eps: f32,
    weight_decay: f32,
    grad_sign: f32,
}

fn coeffs(h: Hyper, t: u32, x: ptr<function, Scalars>) -> Coeffs {
    let clr = h.lr / (1.0 + (f32(t) - 1.0) * h.lr_decay);
    return Coeffs(clr, h.eps, h.weight_decay, h.grad_sign);
}

fn update(u: ptr<function, Unit>) {
    let c = (*u).c;
    let g = l2_grad(*u, c.grad_sign, c.weight_decay);
    (*u).s[0] = (*u).s[0] + g * g;
    (*u).p = (*u).p - c.clr * (g / (sqrt((*u).s[0]) + c.eps));
}
