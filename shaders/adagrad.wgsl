// torch.optim.Adagrad. Entry point: `adagrad`. Requires an access prologue (scalar.wgsl or
// vec4.wgsl) and common.wgsl in front.

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
@group(0) @binding(2) var<storage, read_write> param: array<E>;
@group(0) @binding(3) var<storage, read_write> grad: array<E>;
@group(0) @binding(4) var<storage, read_write> sum: array<E>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn adagrad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let site = locate(wid, lid);
    if site.lo >= site.hi {
        return;
    }
    let s = site.segment;
    let h = hyper[s.slot];
    let pi = s.param_offset + site.index;
    let si = s.state_offset + site.index;
    let p = unpack(param[pi]);
    var g = h.grad_sign * unpack(grad[s.grad_offset + site.index]);
    if h.weight_decay != 0.0 {
        g = g + h.weight_decay * p;
    }
    let acc = unpack(sum[si]) + g * g;
    let p_new = p - h.clr * (g / (sqrt(acc) + h.eps));
    if whole(site) {
        sum[si] = pack(acc);
        param[pi] = pack(p_new);
    } else {
        for (var k = site.lo; k < site.hi; k++) {
            sum[si][k] = lane(acc, k);
            param[pi][k] = lane(p_new, k);
        }
    }
}
