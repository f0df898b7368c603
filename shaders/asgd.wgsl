// torch.optim.ASGD: the update formula, in the kernel template (shaders/common.wgsl).
// State: ax; scalar state: eta, mu.

// One parameter group's values for one step. Must be kept in sync with `AsgdHyper` in
// src/optim/asgd.rs.
struct Hyper {
    lr: f32,
    lambd: f32,
    alpha: f32,
    t0: f32,
    weight_decay: f32,
    // -1 when maximize, else 1
    grad_sign: f32,
    _pad0: f32,
    _pad1: f32,
}

// One tensor's values for one step.
struct Coeffs {
    // eta of the step before (lr at the first)
    eta: f32,
    // 1 - lambd * eta
    decay: f32,
    // mu of the step before (1 at the first): ax averages when it is not 1
    mu: f32,
    weight_decay: f32,
    grad_sign: f32,
}

// x is (eta, mu): this step uses the values of the step before and leaves its own.
fn coeffs(h: Hyper, t: u32, x: ptr<function, Scalars>) -> Coeffs {
    var eta = (*x).x;
    if t == 1u {
        // PyTorch creates eta from the learning rate of the tensor's first step.
        eta = h.lr;
    }
    let mu = (*x).y;
    let steps = f32(t);
    (*x).x = h.lr / pow(1.0 + h.lambd * h.lr * steps, h.alpha);
    (*x).y = 1.0 / max(1.0, steps - h.t0);
    return Coeffs(eta, 1.0 - h.lambd * eta, mu, h.weight_decay, h.grad_sign);
}

fn update(u: ptr<function, Unit>) {
    let c = (*u).c;
    let g = l2_grad(*u, c.grad_sign, c.weight_decay);
    (*u).p = (*u).p * c.decay - c.eta * g;
    if c.mu != 1.0 {
        (*u).s[0] = (*u).s[0] + ((*u).p - (*u).s[0]) * c.mu;
    } else {
        (*u).s[0] = (*u).p;
    }
}
