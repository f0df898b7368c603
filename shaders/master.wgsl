// How the step kernels load and store a unit's parameter where the optimizer keeps an f32
// master copy of its 16-bit parameters (`Precision::master_weights`), in place of
// shaders/param.wgsl: the update runs on the master copy (binding 4, laid out as the first
// state buffer, so unit `s`), and the 16-bit parameter is written from the new master value
// in the same kernel. The arguments are those of shaders/param.wgsl.

fn load_param(p: u32, s: u32) -> V {
    return master_unit(s);
}

fn load_param_lane(p: u32, s: u32, k: u32) -> f32 {
    return master_lane(s, k);
}

fn store_param(p: u32, s: u32, v: V, tensor: u32, first: u32) {
    set_master_unit(s, v);
    set_param_unit(p, param_grid(v, tensor, first));
}

// Stores lanes [lo, hi) alone (the edge dispatch).
fn store_param_lanes(p: u32, s: u32, v: V, tensor: u32, first: u32, lo: u32, hi: u32) {
    let r = param_grid(v, tensor, first);
    for (var k = lo; k < hi; k++) {
        set_master_lane(s, k, lane(v, k));
        set_param_lane(p, k, lane(r, k));
    }
}
