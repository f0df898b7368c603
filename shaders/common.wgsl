// The kernel template shared by every optimizer (prepended, after one access prologue,
// shaders/layout.wgsl and the storage bindings that src/gpu/kernels.rs writes, to each
// optimizer's shader). An optimizer's shader states only its formula. It declares `Hyper` (its
// per-group values, written by the host for each step), `Coeffs` (its per-tensor values for
// one step), `fn coeffs(h: Hyper, t: u32, x: ptr<function, Scalars>) -> Coeffs` (from the
// group's values, the tensor's step count `t`, counted from 1 as PyTorch counts after
// `step += 1`, and the tensor's scalar state `x`, which it advances; a skipped step keeps the
// old) and
// `fn update(u: ptr<function, Unit>)`, which applies the update to the unit's parameter and
// state (see `Unit`). Variants of a formula are pipeline-overridable booleans of the shader.
//
// One step runs, in one compute pass:
// 1. `reduce` (shaders/reduce.wgsl), when the step clips by norm or unscales: per-workgroup
//    partial norms and non-finite flags of the gradients, over the same batches as the step;
// 2. `finalize` (below), one workgroup: reduces the partials in a fixed order, forms the clip
//    coefficient, decides whether the step is skipped (a grad scaler found inf or NaN), advances
//    the step counts of the tensors, updates the grad scaler, and writes every tensor's `Coeffs`;
// 3. `step` (below) once per batch: locate, load, unscale and clip, `update`, store.
//
// Must be kept in sync with `StepHeader` in src/gpu/template.rs.

// What `finalize` decided for this step; read by every step dispatch.
struct StepHeader {
    // 1 when the step is skipped: nothing is written.
    skip: u32,
    inv_scale: f32,
    clip_coef: f32,
    clip_value: f32,
    // With PRE_NORM, the factor of every gradient after unscaling and clipping.
    pre_norm: f32,
    // With stochastic rounding, the seed, and the step count of the random bits: the first
    // tensor's (src/gpu/kernels.rs writes `param_grid`).
    seed: u32,
    rng_step: u32,
    _pad: u32,
}

struct Derived {
    header: StepHeader,
    tensors: array<Coeffs>,
}

@group(0) @binding(0) var<storage, read> derived: Derived;
// Bindings 1 to 3, the parameter, gradient and state buffers (and 4, the master copy of the
// parameters, where the optimizer keeps one), and the functions that read and write them, are
// written by src/gpu/kernels.rs from shaders/units.wgsl (main dispatch), shaders/lanes.wgsl
// (edge dispatch) or, for 16-bit types, shaders/packed.wgsl and shaders/packed_lanes.wgsl; a
// unit's parameter is loaded and stored through shaders/param.wgsl or shaders/master.wgsl.

// Most state buffers of any optimizer.
const MAX_STATES: u32 = 3u;

// The most chunks a workgroup of the main dispatch takes (`table.step_span` is at most this).
const MAX_STEP_SPAN: u32 = 16u;

// State buffers of the kernel's optimizer and options (set when the pipeline is made).
override STATES: u32 = 0u;

// One invocation's work on one unit: the step's values for its tensor, and the values it
// updates. `step` loads it, the shader's `update` applies its formula to `p`, `g` and `s`, and
// `step` stores `p` and the first `STATES` of `s`.
struct Unit {
    c: Coeffs,
    // The parameter.
    p: V,
    // The gradient as the optimizer sees it: unscaled, clipped, then scaled by `pre_norm`.
    g: V,
    // The state buffers, in the order the optimizer names them.
    s: array<V, MAX_STATES>,
    // The unit's segment, and the unit's index in it: its lanes are [index * LANES,
    // index * LANES + LANES) counted from lane 0 of the segment's first unit (for an update
    // that depends on where in its tensor an element is: Adafactor's factors).
    seg: Segment,
    index: u32,
}

// Up to four per-element terms of the per-tensor sums that some optimizers' updates need
// (shaders/sums.wgsl).
alias Terms = array<V, 4>;

// The round of the step's per-tensor sums that a pipeline of shaders/sums.wgsl runs, counted
// from 0 in its kernel's rounds (see `Sums::AlwaysTwiceWith` in src/optim/mod.rs).
override SUMS_ROUND: u32 = 0u;

// One step of the optimizer: the template's locate, load, unscale and clip, the shader's
// `update`, and the store. A step runs each batch twice: the main dispatch (`EDGES` false, a
// constant of the module) takes the whole units, with vector loads and stores; with vec4
// access an edge dispatch (`EDGES` true) takes the units that segments share at their heads
// and tails, reading and writing only its own lanes, so that no two invocations touch one
// element. Nothing is written when a grad scaler found inf or NaN.
@compute @workgroup_size(WORKGROUP_SIZE)
fn step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (FLAGS & SCALER) != 0u && derived.header.skip != 0u {
        return;
    }
    if EDGES {
        step_edge(wid, lid);
    } else {
        step_units(wid, lid);
    }
}

// The main dispatch. A workgroup takes `table.step_span` consecutive chunks of WORKGROUP_SIZE
// units, which may belong to consecutive segments, so that finding the segment and loading
// the tensor's coefficients are shared by several units.
fn step_units(wid: vec3<u32>, lid: u32) {
    let span = table.step_span;
    let first = (wid.x + wid.y * table.dispatch_x) * span;
    if first >= table.total_workgroups {
        return;
    }
    var n = 0u;
    if !SINGLE {
        n = find_segment(first);
    }
    var seg = table.segments[n];
    var next = next_start(n);
    var c = derived.tensors[seg.tensor];
    let stride = table.state_stride;
    let last = min(first + span, table.total_workgroups);
    // A constant trip count, which the compiler may unroll.
    for (var k = 0u; k < MAX_STEP_SPAN; k++) {
        let wg = first + k;
        if wg >= last {
            break;
        }
        // Every segment has a chunk at least, so the next chunk is the current segment's or
        // the next one's.
        if !SINGLE && wg >= next {
            n += 1u;
            seg = table.segments[n];
            next = next_start(n);
            c = derived.tensors[seg.tensor];
        }
        // The unit's index in the segment; its lanes are [i * LANES, i * LANES + LANES)
        // counted from lane 0 of the segment's first unit, whole when they lie in
        // [head, head + len).
        let i = (wg - seg.first_workgroup) * WORKGROUP_SIZE + lid;
        if (i == 0u && seg.head != 0u) || i * LANES + LANES > seg.head + seg.len {
            continue;
        }
        let p = seg.param_offset + i;
        let s = seg.state_offset + i;
        let m = master_index(n, i, s);
        var u: Unit;
        u.c = c;
        u.seg = seg;
        u.index = i;
        u.p = load_param(p, m);
        u.g = prepare_grad(grad_unit(seg.grad_offset + i));
        load_states(&u, s, stride);
        update(&u);
        store_param(p, m, u.p, seg.tensor, first_element(n, seg, i));
        if STATES > 0u {
            set_state_unit(s, u.s[0]);
        }
        if STATES > 1u {
            set_state_unit(s + stride, u.s[1]);
        }
        if STATES > 2u {
            set_state_unit(s + 2u * stride, u.s[2]);
        }
    }
}

// Loads the unit's state buffers, from unit `s` of the first, `stride` units apart. Constant
// indices, unrolled by hand, so that the states can live in registers.
fn load_states(u: ptr<function, Unit>, s: u32, stride: u32) {
    if STATES > 0u {
        (*u).s[0] = state_unit(s);
    }
    if STATES > 1u {
        (*u).s[1] = state_unit(s + stride);
    }
    if STATES > 2u {
        (*u).s[2] = state_unit(s + 2u * stride);
    }
}

// The edge dispatch: the invocation's unit at the head or the tail of a segment (see
// `locate_edge`), lane by lane.
fn step_edge(wid: vec3<u32>, lid: u32) {
    let site = locate_edge(wid, lid);
    if site.lo >= site.hi {
        return;
    }
    let stride = table.state_stride;
    var u: Unit;
    u.c = derived.tensors[site.segment.tensor];
    u.seg = site.segment;
    u.index = site.index;
    var p = splat(0.0);
    var g = splat(0.0);
    for (var k = site.lo; k < site.hi; k++) {
        set_lane(&p, k, load_param_lane(site.p, site.m, k));
        set_lane(&g, k, grad_lane(site.g, k));
    }
    u.p = p;
    u.g = prepare_grad(g);
    for (var n = 0u; n < STATES; n++) {
        var v = splat(0.0);
        for (var k = site.lo; k < site.hi; k++) {
            set_lane(&v, k, state_lane(site.s + n * stride, k));
        }
        u.s[n] = v;
    }
    update(&u);
    store_param_lanes(site.p, site.m, u.p, site.segment.tensor, site.first, site.lo, site.hi);
    for (var k = site.lo; k < site.hi; k++) {
        for (var n = 0u; n < STATES; n++) {
            set_state_lane(site.s + n * stride, k, lane(u.s[n], k));
        }
    }
}

// The gradient as the optimizer sees it: unscaled, then clipped, in the order of PyTorch's
// recipe (`scaler.unscale_(opt)`, `clip_grad_norm_` or `clip_grad_value_`,
// `scaler.step(opt)`), each rounded to f32 as PyTorch's in-place operations round, then scaled
// by Lamb's `pre_norm` inside the optimizer's step. `FLAGS`, a constant of the module, says
// which of these the step does.
fn prepare_grad(raw: V) -> V {
    var g = raw;
    if (FLAGS & UNSCALE) != 0u {
        g = g * derived.header.inv_scale;
    }
    if (FLAGS & CLIP_NORM) != 0u {
        g = g * derived.header.clip_coef;
    }
    if (FLAGS & CLIP_VALUE) != 0u {
        // clamp_ keeps NaN, which WGSL's clamp need not.
        let v = derived.header.clip_value;
        g = select(clamp(g, splat(-v), splat(v)), g, nan_lanes(g));
    }
    if (FLAGS & PRE_NORM) != 0u {
        g = g * derived.header.pre_norm;
    }
    return g;
}

// The unit at the head or the tail of a segment that the segment shares with its neighbours,
// for invocation `lid` of workgroup `wid` of an edge dispatch: two invocations a segment, the
// head and the tail. No work (lo == hi) where that unit is whole, is the other's, or does not
// exist.
fn locate_edge(wid: vec3<u32>, lid: u32) -> Site {
    var site: Site;
    site.lo = 0u;
    site.hi = 0u;
    let e = wid.x * WORKGROUP_SIZE + lid;
    let n = e / 2u;
    if n >= table.count {
        return site;
    }
    let seg = table.segments[n];
    // Lane positions counted from lane 0 of the segment's first unit.
    let end = seg.head + seg.len;
    if e % 2u == 0u {
        if seg.head == 0u {
            return site;
        }
        site.index = 0u;
        site.lo = seg.head;
        site.hi = min(LANES, end);
    } else {
        site.index = end / LANES;
        if end % LANES == 0u || (site.index == 0u && seg.head != 0u) {
            return site;
        }
        site.lo = select(0u, seg.head, site.index == 0u);
        site.hi = end % LANES;
    }
    site.segment = seg;
    site.p = seg.param_offset + site.index;
    site.g = seg.grad_offset + site.index;
    site.s = seg.state_offset + site.index;
    site.m = master_index(n, site.index, site.s);
    site.first = first_element(n, seg, site.index);
    return site;
}

// The gradient as PyTorch's formulas take it: negated when maximizing (`grad_sign` -1), plus
// `weight_decay` times the parameter where that is not 0 (L2 weight decay).
fn l2_grad(u: Unit, grad_sign: f32, weight_decay: f32) -> V {
    var g = grad_sign * u.g;
    if weight_decay != 0.0 {
        g = g + weight_decay * u.p;
    }
    return g;
}

// `l2_grad` after the parameter's decoupled decay (`p *= decay` where `decay` is not 1): the
// first lines of Adam's family, where one of the two decays applies.
fn decayed_grad(u: ptr<function, Unit>, grad_sign: f32, decay: f32, weight_decay: f32) -> V {
    if decay != 1.0 {
        (*u).p = (*u).p * decay;
    }
    return l2_grad(*u, grad_sign, weight_decay);
}

// Adam's moments: exp_avg (`s[0]`) lerps toward `g` by 1 - beta1 (`exp_avg.lerp_`), and
// exp_avg_sq (`s[1]`) becomes beta2 times itself plus (1 - beta2) g².
fn adam_moments(u: ptr<function, Unit>, g: V, one_minus_beta1: f32, beta2: f32, one_minus_beta2: f32) {
    (*u).s[0] = torch_lerp((*u).s[0], g, one_minus_beta1);
    (*u).s[1] = (*u).s[1] * beta2 + one_minus_beta2 * g * g;
}

// torch.lerp as PyTorch evaluates it for float tensors, lane by lane.
// Both forms are evaluated and one selected, without a branch: on CPU adapters (lavapipe) a
// branch on a value loaded from a storage buffer costs more than the other form.
fn torch_lerp(start: V, end: V, weight: f32) -> V {
    let d = end - start;
    return select(end - d * (1.0 - weight), start + weight * d, abs(weight) < 0.5);
}

// The per-element terms of pytorch-optimizer's `cautious` and `stable_adamw` sums: where
// `update` agrees in sign with `agree`, g² / max(v, 1e-16), and 1 (the element count).
fn cautious_terms(update: V, agree: V, g: V, v: V) -> Terms {
    let one = splat(1.0);
    let zero = splat(0.0);
    return Terms(select(zero, one, update * agree > zero), g * g / max(v, splat(1e-16)), one, zero);
}

// pytorch-optimizer's `apply_cautious`: `update` where it agrees in sign with `agree`, times the
// tensor's factor, else 0.
fn cautious_mask(update: V, agree: V, factor: f32) -> V {
    return update * select(splat(0.0), splat(factor), update * agree > splat(0.0));
}

// pytorch-optimizer's `apply_cautious` factor, numel / (count + 1), as torch evaluates an int
// over a tensor: the reciprocal, times numel.
fn cautious_factor(count: f32, numel: f32) -> f32 {
    return (1.0 / (count + 1.0)) * numel;
}

// pytorch-optimizer's `get_stable_adamw_rms`: sqrt(mean(g² / max(v, 1e-16))), at least 1, from
// the sum of the terms and the element count.
fn stable_adamw_rms(sum: f32, numel: f32) -> f32 {
    return max(sqrt(sum / numel), 1.0);
}

// RAdam's rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t) (Lamb's n_sma), with d = -ln(beta2).
// Where t d <= 1 the two terms nearly cancel, so it is summed as the series
// t + sum_k a_k (d^(2k-1) - t (t d)^(2k-1)) (from the Bernoulli expansion of y / (e^y - 1)),
// which is accurate to f32 rounding there.
fn rho_t(t: f32, d: f32, rho_inf: f32) -> f32 {
    let y = t * d;
    if y <= 1.0 {
        let d2 = d * d;
        let y2 = y * y;
        let d3 = d * d2;
        let y3 = y * y2;
        let d5 = d3 * d2;
        let y5 = y3 * y2;
        let d7 = d5 * d2;
        let y7 = y5 * y2;
        let d9 = d7 * d2;
        let y9 = y7 * y2;
        var rho = t + (d - t * y) / 6.0;
        rho -= (d3 - t * y3) / 360.0;
        rho += (d5 - t * y5) / 15120.0;
        rho -= (d7 - t * y7) / 604800.0;
        rho += (d9 - t * y9) / 23950080.0;
        return rho;
    }
    return rho_inf - 2.0 * t * exp(-y) / one_minus_exp(-y);
}

// 1 - e^x for x <= 0, accurate to a few ulp: a Taylor series where 1 - e^x would cancel, and
// `exp` elsewhere (where e^x <= 1/2). Used for bias corrections 1 - beta^t = -expm1(t ln beta),
// with ln beta computed in f64 on the host.
fn one_minus_exp(x: f32) -> f32 {
    if x > -0.7 {
        var p = 1.0 / 39916800.0;
        p = 1.0 / 3628800.0 + x * p;
        p = 1.0 / 362880.0 + x * p;
        p = 1.0 / 40320.0 + x * p;
        p = 1.0 / 5040.0 + x * p;
        p = 1.0 / 720.0 + x * p;
        p = 1.0 / 120.0 + x * p;
        p = 1.0 / 24.0 + x * p;
        p = 1.0 / 6.0 + x * p;
        p = 0.5 + x * p;
        p = 1.0 + x * p;
        return -x * p;
    }
    return 1.0 - exp(x);
}

// ---- finalize: one workgroup per step, before the step dispatches ----

struct Slot {
    config: StepConfig,
    // One record per parameter group.
    groups: array<Hyper>,
}

@group(0) @binding(0) var<storage, read> slot: Slot;
@group(0) @binding(1) var<storage, read_write> control: Control;
@group(0) @binding(2) var<storage, read> partials: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> derived_out: Derived;

@compute @workgroup_size(WORKGROUP_SIZE)
fn finalize(@builtin(local_invocation_index) lid: u32) {
    let cfg = slot.config;
    let norm_inf = (cfg.flags & NORM_INF) != 0u;
    // Fixed reduction order: a strided sum per invocation, then a tree. No atomics, so the same
    // partials give the same bits.
    var acc = vec4<f32>(0.0);
    for (var i = lid; i < cfg.partials; i += WORKGROUP_SIZE) {
        acc = combine(acc, partials[i], norm_mode(norm_inf));
    }
    let total = workgroup_combine(lid, acc, norm_mode(norm_inf));
    var total_norm = total.x;
    if !norm_inf {
        total_norm = sqrt(total.x);
    }
    if total.w > 0.0 {
        total_norm = bitcast<f32>(F32_NAN);
    } else if total.z > 0.0 {
        total_norm = bitcast<f32>(F32_INF);
    }
    let found_inf = (cfg.flags & SCALER) != 0u && total.y > 0.0;
    // A skipped step, or a mode switch (HOLD), keeps the counts and the scalar state.
    let advance = !found_inf && (cfg.flags & HOLD) == 0u;
    // One invocation writes the step's header and the scaler's state, and alone reads the
    // scale it then updates.
    if lid == 0u {
        let scale = control.scale;
        var header: StepHeader;
        header.skip = u32(found_inf);
        header.inv_scale = 1.0;
        if (cfg.flags & UNSCALE) != 0u {
            header.inv_scale = reciprocal(scale);
        }
        // clip_grad_norm_: max_norm / (total_norm + 1e-6), evaluated as PyTorch's
        // `reciprocal(total_norm + 1e-6) * max_norm`, then clamped to at most 1 (NaN stays NaN).
        var coef = reciprocal(total_norm + 1e-6) * cfg.max_norm;
        if coef > 1.0 {
            coef = 1.0;
        }
        header.clip_coef = coef;
        header.clip_value = cfg.clip_value;
        // Lamb's pre_norm: `max_grad_norm / (norm + eps)` clamped to at most 1 (NaN stays
        // NaN), with `norm` the 2-norm of the gradients as the optimizer sees them, which
        // clipping by the 2-norm scales by its coefficient (the host refuses pre_norm with the
        // other clippings).
        if (cfg.flags & PRE_NORM) != 0u {
            var norm = total_norm;
            if (cfg.flags & CLIP_NORM) != 0u {
                norm = norm * coef;
            }
            var pre = cfg.pre_norm_max / (norm + cfg.pre_norm_eps);
            if pre > 1.0 {
                pre = 1.0;
            }
            header.pre_norm = pre;
        }
        header.seed = cfg.seed;
        // The first tensor's step count after this step, as the loop below advances it.
        let t0 = control.tensors[0].step;
        header.rng_step = select(t0, t0 + 1u, advance && t0 != 0xffffffffu);
        derived_out.header = header;
        // A mode switch leaves the last step's report as it is.
        if (cfg.flags & HOLD) == 0u {
            control.total_norm = total_norm;
            control.found_inf = f32(found_inf);
        }
        // GradScaler.update() (torch._amp_update_scale_).
        if (cfg.flags & SCALER) != 0u {
            if found_inf {
                control.scale = mul_wide(scale, cfg.backoff_factor, cfg.backoff_factor_lo);
                control.growth_tracker = 0;
            } else {
                let successful = control.growth_tracker + 1;
                if u32(successful) == cfg.growth_interval {
                    let grown = mul_wide(scale, cfg.growth_factor, cfg.growth_factor_lo);
                    if finite(grown) {
                        control.scale = grown;
                    }
                    control.growth_tracker = 0;
                } else {
                    control.growth_tracker = successful;
                }
            }
        }
    }
    for (var i = lid; i < cfg.tensors; i += WORKGROUP_SIZE) {
        var t = control.tensors[i].step;
        if advance && t != 0xffffffffu {
            t += 1u;
            control.tensors[i].step = t;
        }
        var scalars = control.tensors[i].scalars;
        derived_out.tensors[i] = coeffs(slot.groups[control.tensors[i].group], t, &scalars);
        if advance {
            control.tensors[i].scalars = scalars;
        }
    }
}
