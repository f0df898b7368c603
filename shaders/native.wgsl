// Storage of one f16 binding on the native f16 path (`F16Path::Native`) in the main step
// dispatch with vec4 access: each unit of four elements is a `vec4<f16>`. Loads widen by
// conversion, which is exact. WGSL leaves the rounding of a conversion to f16 to the
// implementation, so a store first rounds each value to nearest even as the packed path does
// (`f32_to_f16`, shaders/dtype.wgsl) and widens it back: the conversion of a value that f16
// holds exactly is exact. Written per binding by src/gpu/kernels.rs as shaders/packed.wgsl
// is.

fn $name_unit(i: u32) -> V {
    return V($name[i]);
}

// Lanes are not touched one by one here; this exists so that `step_edge` compiles in both
// dispatches.
fn $name_lane(i: u32, k: u32) -> f32 {
    return lane($name_unit(i), k);
}

// @store

fn set_$name_unit(i: u32, v: V) {
    $name[i] = vec4<f16>(V(
        f16_to_f32(f32_to_f16(v.x)),
        f16_to_f32(f32_to_f16(v.y)),
        f16_to_f32(f32_to_f16(v.z)),
        f16_to_f32(f32_to_f16(v.w)),
    ));
}

fn set_$name_lane(i: u32, k: u32, x: f32) {
    var v = $name_unit(i);
    set_lane(&v, k, x);
    set_$name_unit(i, v);
}
