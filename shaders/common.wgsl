// The kernel template shared by every optimizer (prepended, after one access prologue,
// shaders/layout.wgsl and the gradient binding that src/gpu/kernels.rs writes, to each
// optimizer's shader). An optimizer's shader declares `Hyper` (its per-group
// values, written by the host for each step), `Coeffs` (its per-tensor values for one step),
// `fn coeffs(h: Hyper, t: u32) -> Coeffs` (from the group's values and the tensor's step count
// `t`, counted from 1 as PyTorch counts after `step += 1`) and its step entry points, which only
// state the update formula through the helpers below.
//
// One step runs, in one compute pass:
// 1. `reduce` (shaders/reduce.wgsl), when the step clips by norm or unscales: per-workgroup
//    partial norms and non-finite flags of the gradients, over the same batches as the step;
// 2. `finalize` (below), one workgroup: reduces the partials in a fixed order, forms the clip
//    coefficient, decides whether the step is skipped (a grad scaler found inf or NaN), advances
//    the step counts of the tensors, updates the grad scaler, and writes every tensor's `Coeffs`;
// 3. one dispatch of the optimizer's entry point per batch.
//
// Must be kept in sync with `StepHeader` in src/gpu/template.rs.

// What `finalize` decided for this step; read by every step dispatch.
struct StepHeader {
    // 1 when the step is skipped: nothing is written.
    skip: u32,
    flags: u32,
    inv_scale: f32,
    clip_coef: f32,
    clip_value: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct Derived {
    header: StepHeader,
    tensors: array<Coeffs>,
}

@group(0) @binding(1) var<storage, read> derived: Derived;
@group(0) @binding(2) var<storage, read_write> param: array<E>;
// @group(0) @binding(3) grad: read-only, or read_write when parameters and gradients share a
// buffer (written by src/gpu/kernels.rs in front of this file).
// Every state buffer of the batch, one after the other, `table.state_stride` units apart.
@group(0) @binding(4) var<storage, read_write> state: array<E>;

// The invocation's site for a step dispatch; nothing to do (lo == hi) when the step is skipped.
fn begin(workgroup_id: vec3<u32>, local_index: u32) -> Site {
    if derived.header.skip != 0u {
        var none: Site;
        none.lo = 0u;
        none.hi = 0u;
        return none;
    }
    return locate(workgroup_id, local_index);
}

// The step's values for the site's tensor.
fn coeffs_at(site: Site) -> Coeffs {
    return derived.tensors[site.segment.tensor];
}

fn load_param(site: Site) -> V {
    if whole(site) {
        return unpack(param[site.p]);
    }
    var v = splat(0.0);
    for (var k = site.lo; k < site.hi; k++) {
        set_lane(&v, k, param[site.p][k]);
    }
    return v;
}

fn store_param(site: Site, v: V) {
    if whole(site) {
        param[site.p] = pack(v);
    } else {
        for (var k = site.lo; k < site.hi; k++) {
            param[site.p][k] = lane(v, k);
        }
    }
}

// State buffer `n` (in the order the optimizer names them) at the site.
fn load_state(site: Site, n: u32) -> V {
    let i = site.s + n * table.state_stride;
    if whole(site) {
        return unpack(state[i]);
    }
    var v = splat(0.0);
    for (var k = site.lo; k < site.hi; k++) {
        set_lane(&v, k, state[i][k]);
    }
    return v;
}

fn store_state(site: Site, n: u32, v: V) {
    let i = site.s + n * table.state_stride;
    if whole(site) {
        state[i] = pack(v);
    } else {
        for (var k = site.lo; k < site.hi; k++) {
            state[i][k] = lane(v, k);
        }
    }
}

// The gradient at the site as the optimizer sees it: unscaled, then clipped, in the order of
// PyTorch's recipe (`scaler.unscale_(opt)`, `clip_grad_norm_` or `clip_grad_value_`,
// `scaler.step(opt)`), each rounded to f32 as PyTorch's in-place operations round.
fn load_grad(site: Site) -> V {
    var g = splat(0.0);
    if whole(site) {
        g = unpack(grad[site.g]);
    } else {
        for (var k = site.lo; k < site.hi; k++) {
            set_lane(&g, k, grad[site.g][k]);
        }
    }
    let h = derived.header;
    if (h.flags & UNSCALE) != 0u {
        g = g * h.inv_scale;
    }
    if (h.flags & CLIP_NORM) != 0u {
        g = g * h.clip_coef;
    }
    if (h.flags & CLIP_VALUE) != 0u {
        g = clamp(g, splat(-h.clip_value), splat(h.clip_value));
    }
    return g;
}

// torch.lerp as PyTorch evaluates it for float tensors, lane by lane.
fn torch_lerp(start: V, end: V, weight: f32) -> V {
    if abs(weight) < 0.5 {
        return start + weight * (end - start);
    }
    return end - (end - start) * (1.0 - weight);
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
        acc = combine(acc, partials[i], norm_inf);
    }
    let total = workgroup_combine(lid, acc, norm_inf);
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
    let scale = control.scale;

    var header: StepHeader;
    header.skip = u32(found_inf);
    header.flags = cfg.flags;
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

    if lid == 0u {
        derived_out.header = header;
        control.total_norm = total_norm;
        control.found_inf = f32(found_inf);
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
        if !found_inf && t != 0xffffffffu {
            t += 1u;
            control.tensors[i].step = t;
        }
        derived_out.tensors[i] = coeffs(slot.groups[control.tensors[i].group], t);
    }
}
