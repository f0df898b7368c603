// Layout shared by every kernel (prepended, after one access prologue, to the optimizer
// shaders and to shaders/reduce.wgsl): the segment table that maps workgroups to pieces of
// tensors, the flags of a step, the GPU-side control state, and finding a segment.
//
// One dispatch covers a *batch*: up to MAX_SEGMENTS contiguous pieces ("segments") of
// tensors whose parameters live in one buffer and whose gradients live in one buffer. Each
// invocation handles one *unit* of LANES consecutive elements (one element, or one aligned
// vec4) at a time. The host lays segments out back to back in chunks of WORKGROUP_SIZE
// consecutive units, each of exactly one segment, so that per-tensor values are uniform across
// a chunk; it calls the chunks "workgroups". A workgroup of the step takes `step_span` of
// them in turn, and one of the reduction `reduce_span`; each finds the segment of its first
// chunk by binary search over `first_workgroup`, then walks forward.
//
// A segment need not start or end on a unit boundary: its first element is lane `head` of its
// first unit, in the parameter, gradient and state windows alike (the host only batches tensors
// for vec4 access whose parameter and gradient offsets agree modulo 4 elements, and pads state
// offsets to match). Invocations whose unit is only partly the segment's read and write just
// their own lanes, one at a time, so neighbouring segments may share a unit without a data race.
//
// Must be kept in sync with src/gpu/template.rs (`segment_table`, `StepConfig`, `Control`).

const WORKGROUP_SIZE: u32 = 256u;
// Chunks of WORKGROUP_SIZE units one workgroup of the main step dispatch takes in turn.
const STEP_SPAN: u32 = 16u;
const MAX_SEGMENTS: u32 = 256u;
// Entries of `SegmentTable.coarse`.
const COARSE_ENTRIES: u32 = 256u;

struct Segment {
    // Unit offsets inside the bound windows of the parameter, gradient and state buffers: the
    // unit holding the segment's first element.
    param_offset: u32,
    grad_offset: u32,
    state_offset: u32,
    // Number of elements in this segment.
    len: u32,
    // Index of this segment's first workgroup in the batch's linearised workgroup space.
    first_workgroup: u32,
    // Index of the tensor (over all groups of the optimizer) this segment is a piece of.
    tensor: u32,
    // Lane of the segment's first element within its first unit (0 when LANES is 1).
    head: u32,
    // The factor of the learning rate for this tensor's shape (Muon's `adjust_lr_fn`); 1 for
    // other optimizers.
    lr_ratio: f32,
}

struct SegmentTable {
    count: u32,
    total_workgroups: u32,
    // x extent of the dispatch; the grid is 2-D when a batch needs more workgroups than one
    // dimension allows.
    dispatch_x: u32,
    // Units from one state buffer to the next in the batch's planar state binding.
    state_stride: u32,
    // This batch's first entry in the reduction's partials.
    partial_base: u32,
    // Workgroups of the reduction, the x extent of its grid, and how many consecutive
    // workgroups of the step each of its workgroups covers.
    reduce_workgroups: u32,
    reduce_dispatch_x: u32,
    reduce_span: u32,
    // log2 of the workgroups between the entries of `coarse`.
    coarse_shift: u32,
    // How many consecutive workgroups (chunks of WORKGROUP_SIZE units) one workgroup of the
    // main step dispatch takes in turn.
    step_span: u32,
    // For optimizers with per-tensor sums (shaders/sums.wgsl): this batch's first entry in the
    // sums' partials (one per chunk), and the x extent of the sums' grid.
    sums_base: u32,
    sums_dispatch_x: u32,
    segments: array<Segment, MAX_SEGMENTS>,
    // Entry k, in `x`: the segment of workgroup k << coarse_shift, so that finding a
    // workgroup's segment searches only between two entries. In `y`: the index in its tensor
    // of segment k's first element, modulo 2^32 (`first_element`). In `z`, where the batch
    // keeps master weights: the unit of the master binding that holds segment k's first
    // element (`master_index`; the first state buffer's unit but for factored state). A
    // uniform array's elements are 16 bytes apart, and there are as many entries as segments,
    // so the two share them.
    coarse: array<vec4<u32>, COARSE_ENTRIES>,
}

// In a bind group of its own, bound at a dynamic offset, so that the bind group of a batch's
// buffers (group 0) serves every set of segment tables that binds the same buffers.
@group(1) @binding(0) var<uniform> table: SegmentTable;

// Bits of `StepConfig.flags` (and of the module constant `FLAGS`).
// Gradients are divided by the grad scaler's scale (multiplied by its reciprocal).
const UNSCALE: u32 = 1u;
// Gradients are multiplied by the clip coefficient of clip_grad_norm_.
const CLIP_NORM: u32 = 2u;
// Gradients are clamped to [-clip_value, clip_value] (clip_grad_value_).
const CLIP_VALUE: u32 = 4u;
// The max norm (norm_type = inf) instead of the 2-norm.
const NORM_INF: u32 = 8u;
// A grad scaler is in use: skip the step on inf or NaN and update the scale.
const SCALER: u32 = 16u;
// Not a step: the step counts and scalar state stay as they are (AdamWScheduleFree's switch
// between train and eval mode, which its `Hyper` record asks for).
const HOLD: u32 = 32u;
// Gradients are multiplied by min(pre_norm_max / (norm + pre_norm_eps), 1) after unscaling and
// clipping, with `norm` their 2-norm over every tensor (Lamb's `pre_norm`).
const PRE_NORM: u32 = 64u;

// Host-written values of one step, at the start of each slot of the optimizer's ring.
struct StepConfig {
    // Tensors of the optimizer.
    tensors: u32,
    // Partials the reduction wrote this step (0 when it did not run).
    partials: u32,
    flags: u32,
    growth_interval: u32,
    max_norm: f32,
    clip_value: f32,
    // The grad scaler's factors, each as an f32 and the f32 of its remainder, so that
    // `scale * factor` can be rounded once from (almost) the double product, as PyTorch does.
    growth_factor: f32,
    growth_factor_lo: f32,
    backoff_factor: f32,
    backoff_factor_lo: f32,
    // With PRE_NORM, Lamb's max_grad_norm and eps.
    pre_norm_max: f32,
    pre_norm_eps: f32,
    // With stochastic rounding (`Precision::stochastic_rounding`), its seed.
    seed: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

// A tensor's scalar state (see `TensorStep`).
alias Scalars = vec4<f32>;

struct TensorStep {
    // Steps taken (PyTorch's `step`).
    step: u32,
    // Parameter group of the tensor.
    group: u32,
    // The optimizer's per-tensor scalar state, in the order it names it (NAdam's
    // `mu_product`; ASGD's `eta` and `mu`), advanced by `coeffs` in `finalize`. At byte 16,
    // the alignment of a vec4.
    scalars: Scalars,
}

// The optimizer's state that lives on the GPU besides the state buffers.
struct Control {
    // The grad scaler's scale and growth tracker (torch.amp.GradScaler's `_scale` and
    // `_growth_tracker`).
    scale: f32,
    growth_tracker: i32,
    // The last step's total gradient norm (clip_grad_norm_'s return value) and found_inf.
    total_norm: f32,
    found_inf: f32,
    tensors: array<TensorStep>,
}

// Where one invocation works: its segment, the unit index inside that segment, the lanes
// [lo, hi) of that unit that belong to the segment, and the unit's index in the parameter,
// gradient, (first) state and master windows. lo == hi when the invocation has nothing to do.
struct Site {
    segment: Segment,
    index: u32,
    lo: u32,
    hi: u32,
    p: u32,
    g: u32,
    s: u32,
    m: u32,
    // In the edge dispatch (`locate_edge`), the index in its tensor of the unit's lane 0
    // (`first_element`).
    first: u32,
}

// The index in its tensor of lane 0 of unit `index` of segment `n` (`seg`), modulo 2^32 (lane 0
// of a segment's first unit may lie before the tensor's element 0).
fn first_element(n: u32, seg: Segment, index: u32) -> u32 {
    return table.coarse[n].y + index * LANES - seg.head;
}

// Whether the kernel's master copies lie apart from its state (`master_index`): the kernel of
// factored state (`Kernel::constants`).
override MASTER_APART: bool = false;

// The index in the master binding of unit `index` of segment `n` (shaders/master.wgsl), whose
// index in the first state buffer is `s`: `s` where the state is per element, so that one
// index serves both, and for factored state in a region of the master binding of its own.
fn master_index(n: u32, index: u32, s: u32) -> u32 {
    if MASTER_APART {
        return table.coarse[n].z + index;
    }
    return s;
}

// The last segment whose first workgroup is <= wg: a binary search between the two entries of
// `table.coarse` around it, usually no more than a step or two.
fn find_segment(wg: u32) -> u32 {
    let k = min(wg >> table.coarse_shift, COARSE_ENTRIES - 1u);
    var lo = table.coarse[k].x;
    var hi = select(table.coarse[min(k + 1u, COARSE_ENTRIES - 1u)].x, table.count - 1u, k + 1u == COARSE_ENTRIES);
    while lo < hi {
        let mid = (lo + hi + 1u) / 2u;
        if table.segments[mid].first_workgroup <= wg {
            lo = mid;
        } else {
            hi = mid - 1u;
        }
    }
    return lo;
}

// The first workgroup of the segment after segment `n`, or past every workgroup.
fn next_start(n: u32) -> u32 {
    if n + 1u < table.count {
        return table.segments[n + 1u].first_workgroup;
    }
    return 0xffffffffu;
}

// The site of invocation `local_index` of the step's workgroup `wg`, which lies in segment
// `n`, `segment`.
fn site_in(n: u32, segment: Segment, wg: u32, local_index: u32) -> Site {
    var site: Site;
    site.lo = 0u;
    site.hi = 0u;
    site.segment = segment;
    site.index = (wg - segment.first_workgroup) * WORKGROUP_SIZE + local_index;
    // Lane positions counted from lane 0 of the segment's first unit.
    let first = site.index * LANES;
    let end = segment.head + segment.len;
    if first < end {
        site.lo = select(0u, segment.head, site.index == 0u);
        site.hi = min(LANES, end - first);
    }
    site.p = segment.param_offset + site.index;
    site.g = segment.grad_offset + site.index;
    site.s = segment.state_offset + site.index;
    site.m = master_index(n, site.index, site.s);
    return site;
}

// How `workgroup_combine` combines two partials.
// The gradient reduction's (shaders/reduce.wgsl): (norm accumulator as a sum of squares, raw
// non-finite, unscaled inf, unscaled NaN).
const COMBINE_NORM2: u32 = 0u;
// The same with the max norm (norm_type = inf).
const COMBINE_NORM_INF: u32 = 1u;
// Four sums (shaders/sums.wgsl).
const COMBINE_SUM: u32 = 2u;

// Combines two partials as `mode` says.
fn combine(a: vec4<f32>, b: vec4<f32>, mode: u32) -> vec4<f32> {
    if mode == COMBINE_SUM {
        return a + b;
    }
    var x = a.x + b.x;
    if mode == COMBINE_NORM_INF {
        x = max(a.x, b.x);
    }
    return vec4<f32>(x, max(a.yzw, b.yzw));
}

// The combine mode of the gradient reduction.
fn norm_mode(norm_inf: bool) -> u32 {
    return select(COMBINE_NORM2, COMBINE_NORM_INF, norm_inf);
}

var<workgroup> scratch: array<vec4<f32>, WORKGROUP_SIZE>;

// Combines every invocation's `acc` over the workgroup in a fixed tree order (no atomics, so the
// same inputs give the same bits) and returns the result to every invocation. Call it from
// uniform control flow.
fn workgroup_combine(lid: u32, acc: vec4<f32>, mode: u32) -> vec4<f32> {
    // Three barriers rather than a tree's eight: 16 invocations fold 16 values each, then one
    // folds their 16 results.
    scratch[lid] = acc;
    workgroupBarrier();
    if lid < 16u {
        var a = scratch[16u * lid];
        for (var i = 1u; i < 16u; i++) {
            a = combine(a, scratch[16u * lid + i], mode);
        }
        scratch[16u * lid] = a;
    }
    workgroupBarrier();
    if lid == 0u {
        var a = scratch[0];
        for (var i = 1u; i < 16u; i++) {
            a = combine(a, scratch[16u * i], mode);
        }
        scratch[0] = a;
    }
    workgroupBarrier();
    return scratch[0];
}

const F32_INF: u32 = 0x7f800000u;
const F32_NAN: u32 = 0x7fc00000u;

// Not inf and not NaN, by the bits, so that no fast-math assumption can fold it away.
fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != F32_INF;
}


// The top 12 significant bits of x, the rest cleared: products of two such parts are exact.
fn high_part(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) & 0xfffff000u);
}

// a * b as (p, e) with p = fl(a * b) and p + e = a * b exactly (Dekker), for finite a and b
// whose product neither overflows nor underflows. Every product below is exact, so the result
// does not change if a compiler contracts a multiply and an add into a fused multiply-add.
fn two_prod(a: f32, b: f32) -> vec2<f32> {
    let p = a * b;
    let ah = high_part(a);
    let al = a - ah;
    let bh = high_part(b);
    let bl = b - bh;
    return vec2<f32>(p, ((ah * bh - p) + ah * bl + al * bh) + al * bl);
}

// x * (hi + lo) rounded once to f32: PyTorch's float * double, with hi = f32(factor) and
// lo = f32(factor - hi).
fn mul_wide(x: f32, hi: f32, lo: f32) -> f32 {
    let p = two_prod(x, hi);
    return p.x + (p.y + x * lo);
}

// 1 / x rounded to f32 as from the double reciprocal (PyTorch's `scale.double().reciprocal()
// .float()`), whatever the accuracy of the device's division: one Newton step on the exact
// residual.
fn reciprocal(x: f32) -> f32 {
    let r = 1.0 / x;
    if !finite(x) || !finite(r) || r == 0.0 {
        return r;
    }
    let p = two_prod(x, r);
    let e = (1.0 - p.x) - p.y;
    return r + r * e;
}
