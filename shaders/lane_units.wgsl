// Whole units of a binding addressed an element at a time (shaders/lanes.wgsl and
// shaders/packed_lanes.wgsl), lane by lane: the edge dispatch never takes whole units, and these
// exist so that `step_units` compiles in both dispatches; with scalar access a unit is one
// element. Appended by src/gpu/kernels.rs to either file's functions, the part after `@store`
// to its stores.

fn $name_unit(i: u32) -> V {
    var v = splat(0.0);
    for (var k = 0u; k < LANES; k++) {
        set_lane(&v, k, $name_lane(i, k));
    }
    return v;
}

// @store

fn set_$name_unit(i: u32, v: V) {
    for (var k = 0u; k < LANES; k++) {
        set_$name_lane(i, k, lane(v, k));
    }
}
