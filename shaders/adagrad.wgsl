// torch.optim.Adagrad. Entry point: `adagrad`. Requires common.wgsl in front.

// Per-tensor values for one step. Must be kept in sync with `AdagradUniform` in
// src/optim/adagrad.rs.
struct AdagradHyper {
    // lr / (1 + (t - 1) * lr_decay)
    clr: f32,
    eps: f32,
    weight_decay: f32,
    // -1 when maximize, else 1
    grad_sign: f32,
}

@group(0) @binding(1) var<uniform> hyper: array<AdagradHyper, MAX_SEGMENTS>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> sum: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn adagrad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = locate(wid, lid);
    if !site.valid {
        return;
    }
    let s = site.segment;
    let h = hyper[s.slot];
    let pi = s.param_offset + site.index;
    let si = s.state_offset + site.index;
    let p = param[pi];
    var g = h.grad_sign * grad[s.grad_offset + site.index];
    if h.weight_decay != 0.0 {
        g = g + h.weight_decay * p;
    }
    let acc = sum[si] + g * g;
    sum[si] = acc;
    param[pi] = p - h.clr * (g / (sqrt(acc) + h.eps));
}
