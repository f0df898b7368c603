// torch.optim.Adadelta: the update formula, in the kernel template (shaders/common.wgsl).
// State: square_avg, acc_delta.

// One parameter group's values for one step. Must be kept in sync with `AdadeltaHyper` in
// src/optim/adadelta.rs.
struct Hyper {
    lr: f32,
    rho: f32,
    one_minus_rho: f32,
    eps: f32,
    weight_decay: f32,
    // -1 when maximize, else 1
    grad_sign: f32,
    _pad0: f32,
    _pad1: f32,
}

// One tensor's values for one step: the group's (Adadelta does not depend on the step count).
alias Coeffs = Hyper;

fn coeffs(h: Hyper, t: u32, x: ptr<function, Scalars>) -> Coeffs {
    return h;
}

fn update(u: ptr<function, Unit>) {
    let c = (*u).c;
    let g = l2_grad(*u, c.grad_sign, c.weight_decay);
    (*u).s[0] = (*u).s[0] * c.rho + c.one_minus_rho * g * g;
    let std_dev = sqrt((*u).s[0] + c.eps);
    let delta = sqrt((*u).s[1] + c.eps) / std_dev * g;
    (*u).s[1] = (*u).s[1] * c.rho + c.one_minus_rho * delta * delta;
    (*u).p = (*u).p - c.lr * delta;
}
