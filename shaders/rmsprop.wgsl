// torch.optim.RMSprop: the update formula, in the kernel template (shaders/common.wgsl).
// State: square_avg, then grad_avg when CENTERED, then momentum_buffer with MOMENTUM.

// Normalize by the estimated variance: grad_avg in the second state buffer.
override CENTERED: bool = false;
// momentum > 0: momentum_buffer in the last state buffer.
override MOMENTUM: bool = false;

// One parameter group's values for one step. Must be kept in sync with `RmspropHyper` in
// src/optim/rmsprop.rs.
struct Hyper {
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

// One tensor's values for one step: the group's (RMSprop does not depend on the step count).
alias Coeffs = Hyper;

fn coeffs(h: Hyper, t: u32, x: ptr<function, Scalars>) -> Coeffs {
    return h;
}

fn update(u: ptr<function, Unit>) {
    let c = (*u).c;
    let g = l2_grad(*u, c.grad_sign, c.weight_decay);
    let sq = (*u).s[0] * c.alpha + c.one_minus_alpha * g * g;
    (*u).s[0] = sq;
    var avg = sqrt(sq);
    if CENTERED {
        let ga = torch_lerp((*u).s[1], g, c.one_minus_alpha);
        (*u).s[1] = ga;
        avg = sqrt(sq - ga * ga);
    }
    avg = avg + c.eps;
    if MOMENTUM {
        let n = STATES - 1u;
        (*u).s[n] = (*u).s[n] * c.momentum + g / avg;
        (*u).p = (*u).p - c.lr * (*u).s[n];
    } else {
        (*u).p = (*u).p - c.lr * (g / avg);
    }
}
