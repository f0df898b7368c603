// torch.optim.Rprop: the update formula, in the kernel template (shaders/common.wgsl).
// State: prev, step_size.

// One parameter group's values for one step. Must be kept in sync with `RpropHyper` in
// src/optim/rprop.rs.
struct Hyper {
    lr: f32,
    etaminus: f32,
    etaplus: f32,
    step_size_min: f32,
    step_size_max: f32,
    // -1 when maximize, else 1
    grad_sign: f32,
    _pad0: f32,
    _pad1: f32,
}

// One tensor's values for one step.
struct Coeffs {
    lr: f32,
    etaminus: f32,
    etaplus: f32,
    step_size_min: f32,
    step_size_max: f32,
    grad_sign: f32,
    // 1 on the tensor's first step, when PyTorch creates step_size full of lr
    first_step: u32,
}

fn coeffs(h: Hyper, t: u32, x: ptr<function, Scalars>) -> Coeffs {
    return Coeffs(
        h.lr,
        h.etaminus,
        h.etaplus,
        h.step_size_min,
        h.step_size_max,
        h.grad_sign,
        u32(t == 1u),
    );
}

fn update(u: ptr<function, Unit>) {
    let c = (*u).c;
    var g = c.grad_sign * (*u).g;
    var step_size = (*u).s[1];
    if c.first_step != 0u {
        step_size = splat(c.lr);
    }
    let product = g * (*u).s[0];
    let flipped = product < splat(0.0);
    let factor = select(select(splat(1.0), splat(c.etaminus), flipped), splat(c.etaplus), product > splat(0.0));
    // torch.clamp: the lower bound, then the upper.
    step_size = min(max(step_size * factor, splat(c.step_size_min)), splat(c.step_size_max));
    g = select(g, splat(0.0), flipped);
    (*u).p = (*u).p - sign(g) * step_size;
    (*u).s[0] = g;
    (*u).s[1] = step_size;
}
