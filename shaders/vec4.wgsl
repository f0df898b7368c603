// Access prologue "vec4": each invocation handles one aligned vec4<f32> (four elements) with
// 16-byte loads and stores where the whole vec4 is its segment's, and single-lane loads and
// stores where a segment starts or ends inside a vec4. Selected by `Access::Vec4` in
// src/gpu/mod.rs; shaders/scalar.wgsl defines the same names.

// The type optimizer arithmetic runs on.
alias V = vec4<f32>;
// The element type of every storage array.
alias E = vec4<f32>;
// Elements per unit (per invocation).
const LANES: u32 = 4u;

fn unpack(e: E) -> V {
    return e;
}

fn pack(v: V) -> E {
    return v;
}

// Lane `k` of a unit's value.
fn lane(v: V, k: u32) -> f32 {
    return v[k];
}

// Sets lane `k` of a unit's value.
fn set_lane(v: ptr<function, V>, k: u32, x: f32) {
    (*v)[k] = x;
}

// The value with every lane equal to `x`.
fn splat(x: f32) -> V {
    return V(x);
}

// The sum of the squares of the lanes.
fn sum_squares(v: V) -> f32 {
    return dot(v, v);
}

// The sum of the lanes, in a fixed order.
fn lane_sum(v: V) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// The largest absolute value of the lanes.
fn max_abs(v: V) -> f32 {
    let a = abs(v);
    return max(max(a.x, a.y), max(a.z, a.w));
}

// A boolean per lane.
alias B = vec4<bool>;

// Which lanes lie in [lo, hi).
fn lanes_in(lo: u32, hi: u32) -> B {
    let k = vec4<u32>(0u, 1u, 2u, 3u);
    return k >= vec4<u32>(lo) & k < vec4<u32>(hi);
}

// Which lanes are neither inf nor NaN, by the bits.
fn finite_lanes(v: V) -> B {
    return (bitcast<vec4<u32>>(v) & vec4<u32>(0x7f800000u)) != vec4<u32>(0x7f800000u);
}

// Which lanes are NaN, by the bits.
fn nan_lanes(v: V) -> B {
    return (bitcast<vec4<u32>>(v) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
}

// Whether any lane is true.
fn any_lane(b: B) -> bool {
    return any(b);
}
