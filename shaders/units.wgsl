// Storage of the main step dispatch (`EDGES` false): the parameter, gradient and state buffers
// as arrays of whole units, read and written a unit at a time. Prepended by src/gpu/kernels.rs,
// which writes GRAD_ACCESS (read, or read_write when parameters and gradients share a buffer);
// shaders/lanes.wgsl defines the same functions for the edge dispatch.

@group(0) @binding(1) var<storage, read_write> param: array<E>;
@group(0) @binding(2) var<storage, GRAD_ACCESS> grad: array<E>;
// Every state buffer of the batch, one after the other, `table.state_stride` units apart.
@group(0) @binding(3) var<storage, read_write> state: array<E>;

fn param_unit(i: u32) -> V {
    return unpack(param[i]);
}

fn grad_unit(i: u32) -> V {
    return unpack(grad[i]);
}

fn state_unit(i: u32) -> V {
    return unpack(state[i]);
}

fn set_param_unit(i: u32, v: V) {
    param[i] = pack(v);
}

fn set_state_unit(i: u32, v: V) {
    state[i] = pack(v);
}

// Lanes are not touched one by one here; these exist so that `step_edge` compiles in both
// dispatches.
fn param_lane(i: u32, k: u32) -> f32 {
    return lane(param_unit(i), k);
}

fn grad_lane(i: u32, k: u32) -> f32 {
    return lane(grad_unit(i), k);
}

fn state_lane(i: u32, k: u32) -> f32 {
    return lane(state_unit(i), k);
}

fn set_param_lane(i: u32, k: u32, x: f32) {
    var v = param_unit(i);
    set_lane(&v, k, x);
    set_param_unit(i, v);
}

fn set_state_lane(i: u32, k: u32, x: f32) {
    var v = state_unit(i);
    set_lane(&v, k, x);
    set_state_unit(i, v);
}
