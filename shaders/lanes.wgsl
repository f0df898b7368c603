// Storage of one f32 binding in the edge dispatch (`EDGES` true): an array of single f32
// elements (`array<f32>`), so that an invocation that shares a vec4 with another segment reads
// and writes only its own elements. (A store to one component of a vector may touch the whole
// vector on some backends, Metal's among them, so the edge kernel does not address vectors at
// all.) Written per binding by src/gpu/kernels.rs as shaders/units.wgsl is, with
// shaders/lane_units.wgsl; indices are in units, as there.

fn $name_lane(i: u32, k: u32) -> f32 {
    return $name[i * LANES + k];
}

// @store

fn set_$name_lane(i: u32, k: u32, x: f32) {
    $name[i * LANES + k] = x;
}
