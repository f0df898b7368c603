// Storage of one 16-bit binding (f16 or bf16) in the main step dispatch with vec4 access:
// each unit of four elements is two u32 words (`array<vec2<u32>>`), the first element in the
// low half of the first word. Loads widen each element to f32 with `$widen`, and stores round
// with `$round` (shaders/dtype.wgsl), so the math is f32. Written per binding by
// src/gpu/kernels.rs as shaders/units.wgsl is.

fn $name_unit(i: u32) -> V {
    let w = $name[i];
    return V(
        $widen(w.x & 0xffffu),
        $widen(w.x >> 16u),
        $widen(w.y & 0xffffu),
        $widen(w.y >> 16u),
    );
}

// Lanes are not touched one by one here; this exists so that `step_edge` compiles in both
// dispatches.
fn $name_lane(i: u32, k: u32) -> f32 {
    return lane($name_unit(i), k);
}

// @store

fn set_$name_unit(i: u32, v: V) {
    $name[i] = vec2<u32>(
        $round(v.x) | ($round(v.y) << 16u),
        $round(v.z) | ($round(v.w) << 16u),
    );
}

fn set_$name_lane(i: u32, k: u32, x: f32) {
    var v = $name_unit(i);
    set_lane(&v, k, x);
    set_$name_unit(i, v);
}
