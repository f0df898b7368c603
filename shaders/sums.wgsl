// Per-tensor sums, for optimizers whose update needs a reduction over each tensor before any
// element is written (Lamb's trust ratio: the norms of the parameter and of the update).
// Appended to the module of such an optimizer's main step dispatch (shaders/units.wgsl), after
// its shader, which defines
//
// - `fn sum_terms(u: ptr<function, Unit>) -> Terms`: up to four per-element terms from the
//   unit as loaded (parameter, prepared gradient, state before the step) and its tensor's
//   `Coeffs` from `finalize`; the unit is a copy, so changes are not stored;
// - `fn apply_sums(c: Coeffs, sums: vec4<f32>, x: ptr<function, Scalars>) -> Coeffs`: the
//   tensor's `Coeffs` for the step, given the tensor's four sums; it may advance the tensor's
//   scalar state `x` (kept unless a grad scaler skips the step).
//
// A step then runs, after `finalize`: `sums` over every batch (one workgroup a chunk, its
// partial sums in `sums_out`), `combine_sums` (one workgroup a tensor, which adds the partials
// of its chunks in a fixed order and rewrites its `Coeffs`), then the step dispatches. A
// shader may ask for two rounds of these, one after the other (Lamb with `ADANORM`: each
// gradient's norm, then the trust ratio's norms, which depend on it): `SUMS_ROUND` says which
// runs. A batch whose kernel has one round (a group without the switch) runs in the last.
//
// For a multi-GPU engine that shards a tensor (ZeRO-1), the chunks' partials are the per-rank
// values to all-reduce.

@group(2) @binding(0) var<storage, read_write> sums_out: array<vec4<f32>>;

// One chunk's sums: each invocation's unit, lanes outside the segment masked (whole units are
// read, nothing is written to them), combined over the workgroup in a fixed order.
@compute @workgroup_size(WORKGROUP_SIZE)
fn sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let wg = wid.x + wid.y * table.sums_dispatch_x;
    if wg >= table.total_workgroups {
        return;
    }
    let n = find_segment(wg);
    let segment = table.segments[n];
    let site = site_in(n, segment, wg, lid);
    var acc = vec4<f32>(0.0);
    if site.lo < site.hi {
        var u: Unit;
        u.c = derived.tensors[segment.tensor];
        u.seg = segment;
        u.index = site.index;
        u.p = load_param(site.p, site.m);
        u.g = prepare_grad(grad_unit(site.g));
        load_states(&u, site.s, table.state_stride);
        let terms = sum_terms(&u);
        let mine = lanes_in(site.lo, site.hi);
        let zero = splat(0.0);
        acc = vec4<f32>(
            lane_sum(select(zero, terms[0], mine)),
            lane_sum(select(zero, terms[1], mine)),
            lane_sum(select(zero, terms[2], mine)),
            lane_sum(select(zero, terms[3], mine)),
        );
    }
    let total = workgroup_combine(lid, acc, COMBINE_SUM);
    if lid == 0u {
        sums_out[table.sums_base + wg] = total;
    }
}

@group(0) @binding(0) var<storage, read_write> sums_coeffs: Derived;
@group(0) @binding(1) var<storage, read> sums_in: array<vec4<f32>>;
// `sums_map[0]` is (tensors, x extent of the grid); `sums_map[1 + t]` is (first, count) of
// tensor t's ranges, each `sums_map[r]` a range [start, end) of partials.
@group(0) @binding(2) var<storage, read> sums_map: array<vec2<u32>>;
// The step state, for the tensors' scalar state.
@group(0) @binding(3) var<storage, read_write> sums_control: Control;

// One workgroup a tensor: its partials added in a fixed order, then its `Coeffs` rewritten.
@compute @workgroup_size(WORKGROUP_SIZE)
fn combine_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let header = sums_map[0];
    let tensor = wid.x + wid.y * header.y;
    if tensor >= header.x {
        return;
    }
    let ranges = sums_map[1u + tensor];
    var acc = vec4<f32>(0.0);
    for (var r = ranges.x; r < ranges.x + ranges.y; r++) {
        let range = sums_map[r];
        for (var i = range.x + lid; i < range.y; i += WORKGROUP_SIZE) {
            acc += sums_in[i];
        }
    }
    let total = workgroup_combine(lid, acc, COMBINE_SUM);
    if lid == 0u {
        var x = sums_control.tensors[tensor].scalars;
        sums_coeffs.tensors[tensor] = apply_sums(sums_coeffs.tensors[tensor], total, &x);
        // A skipped step keeps the scalar state, as `finalize` does.
        if sums_coeffs.header.skip == 0u {
            sums_control.tensors[tensor].scalars = x;
        }
    }
}
