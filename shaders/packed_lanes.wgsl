// Storage of one 16-bit binding (f16 or bf16) addressed an element at a time: in the edge
// dispatch, and in every dispatch with scalar access. Two elements share a u32 word, the even
// one in the low half, and the invocation that owns the other half may be storing it at the
// same time: a binding the kernel writes is `array<atomic<u32>>`, and a store changes only its
// own 16 bits, with `atomicAnd` then `atomicOr`. Each is atomic and they touch disjoint bits,
// so the word ends right in any order. `word_$name` (written by src/gpu/kernels.rs with the
// declaration) loads a word, atomically where the binding is atomic. Loads widen with `$widen`
// and stores round with `$round` (shaders/dtype.wgsl). Indices are in units, as in
// shaders/units.wgsl; shaders/lane_units.wgsl follows.

fn $name_lane(i: u32, k: u32) -> f32 {
    let e = i * LANES + k;
    return $widen((word_$name(e >> 1u) >> ((e & 1u) * 16u)) & 0xffffu);
}

// @store

fn set_$name_lane(i: u32, k: u32, x: f32) {
    let e = i * LANES + k;
    let shift = (e & 1u) * 16u;
    atomicAnd(&$name[e >> 1u], ~(0xffffu << shift));
    atomicOr(&$name[e >> 1u], $round(x) << shift);
}
