// Storage of one f32 binding in the main step dispatch (`EDGES` false): an array of whole
// units, read and written a unit at a time. src/gpu/kernels.rs declares the binding `$name`
// (`array<E>`) and writes one copy of these functions for each f32 binding, with `$name` the
// binding's name; the part after `@store` only for the bindings the kernel writes.
// shaders/lanes.wgsl defines the same functions for the edge dispatch, and shaders/packed.wgsl
// and shaders/packed_lanes.wgsl for 16-bit types.

fn $name_unit(i: u32) -> V {
    return unpack($name[i]);
}

// Lanes are not touched one by one here; this exists so that `step_edge` compiles in both
// dispatches.
fn $name_lane(i: u32, k: u32) -> f32 {
    return lane($name_unit(i), k);
}

// @store

fn set_$name_unit(i: u32, v: V) {
    $name[i] = pack(v);
}

fn set_$name_lane(i: u32, k: u32, x: f32) {
    var v = $name_unit(i);
    set_lane(&v, k, x);
    set_$name_unit(i, v);
}
