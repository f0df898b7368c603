// Storage of one f16 binding on the native f16 path (`F16Path::Native`) addressed an element
// at a time: in the edge dispatch, and in every dispatch with scalar access. The binding is
// `array<f16>`, so a store writes its own element alone, with no atomics, where the packed
// path (shaders/packed_lanes.wgsl) changes half a shared word. Loads widen by conversion;
// stores round to nearest even first, as shaders/native.wgsl explains.
// Indices are in units, as in shaders/units.wgsl; shaders/lane_units.wgsl follows.

fn $name_lane(i: u32, k: u32) -> f32 {
    return f32($name[i * LANES + k]);
}

// @store

fn set_$name_lane(i: u32, k: u32, x: f32) {
    $name[i * LANES + k] = f16(f16_to_f32(f32_to_f16(x)));
}
