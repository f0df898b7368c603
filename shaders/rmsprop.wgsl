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
fn rmsprop_step(site: Site, centered: bool, with_momentum: bool) {
    let c = coeffs_at(site);
    let p = load_param(site);
    var g = c.grad_sign * load_grad(site);
    if c.weight_decay != 0.0 {
        g = g + c.weight_decay * p;
    }
    let sq = load_state(site, 0u) * c.alpha + c.one_minus_alpha * g * g;
    store_state(site, 0u, sq);
    var avg = sqrt(sq);
    if centered {
        let ga = torch_lerp(load_state(site, 1u), g, c.one_minus_alpha);
        store_state(site, 1u, ga);
        avg = sqrt(sq - ga * ga);
    }
    avg = avg + c.eps;
    if with_momentum {
        let n = 1u + u32(centered);
        let buf = load_state(site, n) * c.momentum + g / avg;
        store_state(site, n, buf);
        store_param(site, p - c.lr * buf);
    } else {
        store_param(site, p - c.lr * (g / avg));
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rmsprop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = begin(wid, lid);
    if site.lo < site.hi {
        rmsprop_step(site, false, false);
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rmsprop_centered(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = begin(wid, lid);
    if site.lo < site.hi {
        rmsprop_step(site, true, false);
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rmsprop_momentum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = begin(wid, lid);
    if site.lo < site.hi {
        rmsprop_step(site, false, true);
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn rmsprop_centered_momentum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = begin(wid, lid);
    if site.lo < site.hi {
        rmsprop_step(site, true, true);
    }
}
