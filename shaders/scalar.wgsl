// Access prologue "scalar": each invocation handles one f32 element. Works for any offsets.
// Selected by `Access::Scalar` in src/gpu/mod.rs; shaders/vec4.wgsl defines the same names.

// The type optimizer arithmetic runs on.
alias V = f32;
// The element type of every storage array: one f32, wrapped in an array so that lane `k` of a
// unit can be read and written as `buffer[i][k]` in either access mode.
alias E = array<f32, 1>;
// Elements per unit (per invocation).
const LANES: u32 = 1u;

fn unpack(e: E) -> V {
    return e[0];
}

fn pack(v: V) -> E {
    return E(v);
}

// Lane `k` of a unit's value.
fn lane(v: V, k: u32) -> f32 {
    return v;
}

// Sets lane `k` of a unit's value.
fn set_lane(v: ptr<function, V>, k: u32, x: f32) {
    *v = x;
}

// The value with every lane equal to `x`.
fn splat(x: f32) -> V {
    return x;
}

// The sum of the squares of the lanes.
fn sum_squares(v: V) -> f32 {
    return v * v;
}

// The sum of the lanes.
fn lane_sum(v: V) -> f32 {
    return v;
}

// The largest absolute value of the lanes.
fn max_abs(v: V) -> f32 {
    return abs(v);
}

// A boolean per lane.
alias B = bool;

// Which lanes lie in [lo, hi).
fn lanes_in(lo: u32, hi: u32) -> B {
    return lo == 0u && hi > 0u;
}

// Which lanes are neither inf nor NaN, by the bits.
fn finite_lanes(v: V) -> B {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

// Which lanes are NaN, by the bits.
fn nan_lanes(v: V) -> B {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// Whether any lane is true.
fn any_lane(b: B) -> bool {
    return b;
}
