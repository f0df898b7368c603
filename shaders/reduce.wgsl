// The gradient reduction of one step: for each workgroup of a batch, the partial norm of the
// unscaled gradients (sum of squares, or max of |g| for norm_type inf) and whether any gradient
// is inf or NaN, written to `partials[table.partial_base + workgroup]` for `finalize`
// (shaders/common.wgsl) to combine in a fixed order. It runs over the same batches and segment
// tables as the step. Entry point: `reduce`. Requires an access prologue and layout.wgsl in
// front.
//
// For a multi-GPU engine (ZeRO-1), these partials are the per-rank values to all-reduce.

// The gradients, `rgrad` at binding 0, and `rgrad_unit`: written in front by src/gpu/kernels.rs
// for their storage type.
@group(0) @binding(1) var<storage, read> config: StepConfig;
@group(0) @binding(2) var<storage, read> rcontrol: Control;
@group(0) @binding(3) var<storage, read_write> partials_out: array<vec4<f32>>;

// Adds the gradients of one site to `acc`: (norm accumulator over finite unscaled values,
// raw inf or NaN, unscaled inf, unscaled NaN). Reads the site's whole unit, which lies inside
// the bound window, and masks the lanes that are not the segment's: nothing writes the
// gradients during the reduction. Vector operations throughout, without branches per lane.
fn accumulate(acc_in: vec4<f32>, site: Site, flags: u32, inv_scale: f32) -> vec4<f32> {
    var acc = acc_in;
    if site.lo >= site.hi {
        return acc;
    }
    let mine = lanes_in(site.lo, site.hi);
    let raw = select(splat(0.0), rgrad_unit(site.g), mine);
    var u = raw;
    if (flags & UNSCALE) != 0u {
        u = raw * inv_scale;
    }
    let nan = nan_lanes(u);
    let finite = finite_lanes(u);
    if any_lane(!finite_lanes(raw)) {
        acc.y = 1.0;
    }
    if any_lane(nan) {
        acc.w = 1.0;
    }
    if any_lane(!finite & !nan) {
        acc.z = 1.0;
    }
    let kept = select(splat(0.0), u, finite);
    if (flags & NORM_INF) != 0u {
        acc.x = max(acc.x, max_abs(kept));
    } else {
        acc.x += sum_squares(kept);
    }
    return acc;
}

// One workgroup covers `table.reduce_span` consecutive workgroups of the step, so that the
// reduction has fewer workgroups (and barriers, and partials) than the step.
@compute @workgroup_size(WORKGROUP_SIZE)
fn reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let flags = config.flags;
    var inv_scale = 1.0;
    if (flags & UNSCALE) != 0u {
        inv_scale = reciprocal(rcontrol.scale);
    }
    let r = wid.x + wid.y * table.reduce_dispatch_x;
    var acc = vec4<f32>(0.0);
    let first = r * table.reduce_span;
    if first < table.total_workgroups {
        // One search for the span's first workgroup, then forward: the span's workgroups are
        // consecutive, and mostly of one segment.
        var n = find_segment(first);
        var segment = table.segments[n];
        var next = next_start(n);
        let last = min(first + table.reduce_span, table.total_workgroups);
        for (var wg = first; wg < last; wg++) {
            while wg >= next {
                n += 1u;
                segment = table.segments[n];
                next = next_start(n);
            }
            acc = accumulate(acc, site_in(n, segment, wg, lid), flags, inv_scale);
        }
    }
    let total = workgroup_combine(lid, acc, norm_mode((flags & NORM_INF) != 0u));
    if lid == 0u && r < table.reduce_workgroups {
        partials_out[table.partial_base + r] = total;
    }
}
