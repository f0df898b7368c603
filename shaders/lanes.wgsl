// Storage of the edge dispatch (`EDGES` true): the parameter, gradient and state buffers as
// arrays of single f32 elements, so that an invocation that shares a vec4 with another segment
// reads and writes only its own elements. (A store to one component of a vector may touch the
// whole vector on some backends, Metal's among them, so the edge kernel does not address
// vectors at all.) Prepended by src/gpu/kernels.rs, which writes GRAD_ACCESS; shaders/units.wgsl
// defines the same functions for the main dispatch. Indices are in units, as there.

@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, GRAD_ACCESS> grad: array<f32>;
// Every state buffer of the batch, one after the other, `table.state_stride` units apart.
@group(0) @binding(3) var<storage, read_write> state: array<f32>;

fn param_lane(i: u32, k: u32) -> f32 {
    return param[i * LANES + k];
}

fn grad_lane(i: u32, k: u32) -> f32 {
    return grad[i * LANES + k];
}

fn state_lane(i: u32, k: u32) -> f32 {
    return state[i * LANES + k];
}

fn set_param_lane(i: u32, k: u32, x: f32) {
    param[i * LANES + k] = x;
}

fn set_state_lane(i: u32, k: u32, x: f32) {
    state[i * LANES + k] = x;
}

// Whole units are not touched here; these exist so that `step_units` compiles in both
// dispatches.
fn param_unit(i: u32) -> V {
    var v = splat(0.0);
    for (var k = 0u; k < LANES; k++) {
        set_lane(&v, k, param_lane(i, k));
    }
    return v;
}

fn grad_unit(i: u32) -> V {
    var v = splat(0.0);
    for (var k = 0u; k < LANES; k++) {
        set_lane(&v, k, grad_lane(i, k));
    }
    return v;
}

fn state_unit(i: u32) -> V {
    var v = splat(0.0);
    for (var k = 0u; k < LANES; k++) {
        set_lane(&v, k, state_lane(i, k));
    }
    return v;
}

fn set_param_unit(i: u32, v: V) {
    for (var k = 0u; k < LANES; k++) {
        set_param_lane(i, k, lane(v, k));
    }
}

fn set_state_unit(i: u32, v: V) {
    for (var k = 0u; k < LANES; k++) {
        set_state_lane(i, k, lane(v, k));
    }
}
