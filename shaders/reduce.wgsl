// The gradient reduction of one step: for each workgroup of a batch, the partial norm of the
// unscaled gradients (sum of squares, or max of |g| for norm_type inf) and whether any gradient
// is inf or NaN, written to `partials[table.partial_base + workgroup]` for `finalize`
// (shaders/common.wgsl) to combine in a fixed order. It runs over the same batches and segment
// tables as the step. Entry point: `reduce`. Requires an access prologue and layout.wgsl in
// front.
//
// For a multi-GPU engine (ZeRO-1), these partials are the per-rank values to all-reduce.

@group(0) @binding(1) var<storage, read> rgrad: array<E>;
@group(0) @binding(2) var<storage, read> config: StepConfig;
@group(0) @binding(3) var<storage, read> rcontrol: Control;
@group(0) @binding(4) var<storage, read_write> partials_out: array<vec4<f32>>;

fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > F32_INF;
}

// Adds the gradients of one site to `acc`: (norm accumulator over finite unscaled values,
// raw inf or NaN, unscaled inf, unscaled NaN).
fn accumulate(acc_in: vec4<f32>, site: Site, flags: u32, inv_scale: f32) -> vec4<f32> {
    var acc = acc_in;
    let norm_inf = (flags & NORM_INF) != 0u;
    if whole(site) {
        let raw = unpack(rgrad[site.g]);
        var u = raw;
        if (flags & UNSCALE) != 0u {
            u = raw * inv_scale;
        }
        // The common case, a whole unit of finite values, as vector operations.
        if all_finite(raw) && all_finite(u) {
            if norm_inf {
                acc.x = max(acc.x, max_abs(u));
            } else {
                acc.x += sum_squares(u);
            }
            return acc;
        }
    }
    var g = splat(0.0);
    for (var k = site.lo; k < site.hi; k++) {
        set_lane(&g, k, rgrad[site.g][k]);
    }
    for (var k = site.lo; k < site.hi; k++) {
        let raw = lane(g, k);
        if !finite(raw) {
            acc.y = 1.0;
        }
        var u = raw;
        if (flags & UNSCALE) != 0u {
            u = raw * inv_scale;
        }
        if is_nan(u) {
            acc.w = 1.0;
        } else if !finite(u) {
            acc.z = 1.0;
        } else if norm_inf {
            acc.x = max(acc.x, abs(u));
        } else {
            acc.x += u * u;
        }
    }
    return acc;
}

// One workgroup covers REDUCE_SPAN consecutive workgroups of the step, so that the reduction
// has fewer workgroups (and barriers, and partials) than the step.
@compute @workgroup_size(WORKGROUP_SIZE)
fn reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let flags = config.flags;
    var inv_scale = 1.0;
    if (flags & UNSCALE) != 0u {
        inv_scale = reciprocal(rcontrol.scale);
    }
    let r = wid.x + wid.y * table.reduce_dispatch_x;
    var acc = vec4<f32>(0.0);
    for (var j = 0u; j < REDUCE_SPAN; j++) {
        acc = accumulate(acc, locate_in(r * REDUCE_SPAN + j, lid), flags, inv_scale);
    }
    let total = workgroup_combine(lid, acc, (flags & NORM_INF) != 0u);
    if lid == 0u && r < table.reduce_workgroups {
        partials_out[table.partial_base + r] = total;
    }
}
