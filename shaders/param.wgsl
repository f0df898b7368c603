// How the step kernels load and store a unit's parameter, where the optimizer keeps no master
// copy: through the parameter binding. shaders/master.wgsl takes this file's place where it
// keeps one; src/gpu/kernels.rs picks. `p` is the unit's index in the parameter window, `m`
// its index in the master binding (`master_index`), `tensor` the tensor's index and
// `first` the index in its tensor of the unit's lane 0 (for stochastic rounding's random bits,
// `param_grid`).

fn load_param(p: u32, m: u32) -> V {
    return param_unit(p);
}

fn load_param_lane(p: u32, m: u32, k: u32) -> f32 {
    return param_lane(p, k);
}

fn store_param(p: u32, m: u32, v: V, tensor: u32, first: u32) {
    set_param_unit(p, param_grid(v, tensor, first));
}

// Stores lanes [lo, hi) alone (the edge dispatch).
fn store_param_lanes(p: u32, m: u32, v: V, tensor: u32, first: u32, lo: u32, hi: u32) {
    let r = param_grid(v, tensor, first);
    for (var k = lo; k < hi; k++) {
        set_param_lane(p, k, lane(r, k));
    }
}
