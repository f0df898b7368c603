// torch.optim.RMSprop. Entry points: `rmsprop`, `rmsprop_centered`, `rmsprop_momentum` and
// `rmsprop_centered_momentum`, one body with constant switches. Requires an access prologue,
// layout.wgsl and common.wgsl in front.

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

fn coeffs(h: Hyper, t: u32) -> Coeffs {
    return h;
}

// State: square_avg, then grad_avg when centered, then momentum_buffer with momentum.
fn rmsprop_step(wid: vec3<u32>, lid: u32, centered: bool, with_momentum: bool) {
    let states = 1u + u32(centered) + u32(with_momentum);
    var u = begin(wid, lid, states);
    if !has_work(u) {
        return;
    }
    let c = u.c;
    var g = c.grad_sign * u.g;
    if c.weight_decay != 0.0 {
        g = g + c.weight_decay * u.p;
    }
    let sq = u.s[0] * c.alpha + c.one_minus_alpha * g * g;
    u.s[0] = sq;
    var avg = sqrt(sq);
    if centered {
        let ga = torch_lerp(u.s[1], g, c.one_minus_alpha);
        u.s[1] = ga;
        avg = sqrt(sq - ga * ga);
    }
    avg = avg + c.eps;
    if with_momentum {
        let n = states - 1u;
        u.s[n] = u.s[n] * c.momentum + g / avg;
        u.p = u.p - c.lr * u.s[n];
    } else {
        u.p = u.p - c.lr * (g / avg);
    }
    finish(u, states);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rmsprop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    rmsprop_step(wid, lid, false, false);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rmsprop_centered(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    rmsprop_step(wid, lid, true, false);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rmsprop_momentum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    rmsprop_step(wid, lid, false, true);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rmsprop_centered_momentum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    rmsprop_step(wid, lid, true, true);
}
