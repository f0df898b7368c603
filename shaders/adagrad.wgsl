// torch.optim.Adagrad. Entry point: `adagrad`. Requires an access prologue, layout.wgsl and
// common.wgsl in front.

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

fn coeffs(h: Hyper, t: u32) -> Coeffs {
    let clr = h.lr / (1.0 + (f32(t) - 1.0) * h.lr_decay);
    return Coeffs(clr, h.eps, h.weight_decay, h.grad_sign);
}

// State: sum.
@compute @workgroup_size(WORKGROUP_SIZE)
fn adagrad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = begin(wid, lid);
    if site.lo >= site.hi {
        return;
    }
    let c = coeffs_at(site);
    let p = load_param(site);
    var g = c.grad_sign * load_grad(site);
    if c.weight_decay != 0.0 {
        g = g + c.weight_decay * p;
    }
    let acc = load_state(site, 0u) + g * g;
    store_state(site, 0u, acc);
    store_param(site, p - c.clr * (g / (sqrt(acc) + c.eps)));
}
