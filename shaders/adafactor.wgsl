// Adafactor (torch.optim.Adafactor): the update formula, in the kernel template
// (shaders/common.wgsl), with the per-tensor sums of shaders/sums.wgsl for its step size and
// the clipping of its update. A tensor of one dimension keeps `variance` (state buffer 0). A
// tensor of two dimensions or more (the kernel with `FACTORED`) keeps the row and column
// factors of its second moments in a factor region of its state block (`Factors` in
// src/gpu/template.rs), which `factor_lines` and `factor_means` bring up to date after
// `finalize`, before the sums; such a tensor is one segment, never split.

// The kernel of tensors whose state is factored: it keeps no state per element.
override FACTORED: bool = false;

// One parameter group's values for one step. Must be kept in sync with `AdafactorHyper` in
// src/optim/adafactor.rs.
struct Hyper {
    lr: f32,
    beta2_decay: f32,
    // eps[0] (float32's epsilon where it is None), and its square
    eps1: f32,
    eps1_sq: f32,
    eps2: f32,
    d: f32,
    // 1 - lr * weight_decay
    decay: f32,
    // -1 when maximize, else 1
    grad_sign: f32,
}

// One tensor's values for one step.
struct Coeffs {
    // 1 - beta2_t = t^beta2_decay: the weight of this step's mean squares
    weight: f32,
    // min(lr, 1 / sqrt(t))
    rho: f32,
    eps1: f32,
    eps1_sq: f32,
    eps2: f32,
    d: f32,
    decay: f32,
    grad_sign: f32,
    // -alpha / max(1, RMS(update) / d), from the tensor's sums (`apply_sums`); 0 before
    neg_step: f32,
}

fn coeffs(h: Hyper, t: u32, x: ptr<function, Scalars>) -> Coeffs {
    let steps = f32(t);
    return Coeffs(
        pow(steps, h.beta2_decay),
        min(h.lr, 1.0 / sqrt(steps)),
        h.eps1,
        h.eps1_sq,
        h.eps2,
        h.d,
        h.decay,
        h.grad_sign,
        0.0,
    );
}

// Where a factored tensor's factors lie in the state binding, in elements, and their shape.
struct FactorRegion {
    // Rows and columns of each matrix, and the number of matrices.
    rows: u32,
    cols: u32,
    matrices: u32,
    // The row factor (matrices * rows), the column factor (matrices * cols) and the row
    // factor's means (one per matrix), each at a multiple of 4.
    row: u32,
    col: u32,
    mean: u32,
    // In the factor passes, whether the step is skipped.
    skip: bool,
}

// Element k of the state binding.
fn factor_word(k: u32) -> f32 {
    return state_lane(k / LANES, k % LANES);
}

fn set_factor_word(k: u32, x: f32) {
    set_state_lane(k / LANES, k % LANES, x);
}

// The region of `rows` x `cols` matrices whose header is at element `base`.
fn region(base: u32, rows: u32, cols: u32, matrices: u32) -> FactorRegion {
    var f: FactorRegion;
    f.rows = rows;
    f.cols = cols;
    f.matrices = matrices;
    f.row = base + 4u;
    f.col = f.row + (matrices * rows + 3u) / 4u * 4u;
    f.mean = f.col + (matrices * cols + 3u) / 4u * 4u;
    f.skip = false;
    return f;
}

// The factor region of a segment of the factored kernel, from the header at its start.
fn factors_of(seg: Segment) -> FactorRegion {
    let base = seg.state_offset * LANES;
    let word = vec3<u32>(
        bitcast<u32>(factor_word(base)),
        bitcast<u32>(factor_word(base + 1u)),
        bitcast<u32>(factor_word(base + 2u)),
    );
    return region(base, word.x, word.y, word.z);
}

// The unit's estimate of the second moments, lane by lane: the new `variance` (which it
// stores in the unit), or from the factors, R * C / max(mean of R, eps1) (the means are
// clamped in `factor_means`).
fn variance_estimate(u: ptr<function, Unit>, g: V) -> V {
    if !FACTORED {
        (*u).s[0] = torch_lerp((*u).s[0], g * g, (*u).c.weight);
        return (*u).s[0];
    }
    let seg = (*u).seg;
    let f = factors_of(seg);
    var v = splat(0.0);
    for (var k = 0u; k < LANES; k++) {
        // The lane's element of the tensor; clamped into the tensor for lanes of a shared
        // unit that are not the segment's, whose results are not stored.
        let e = min(max((*u).index * LANES + k, seg.head) - seg.head, seg.len - 1u);
        let row = e / f.cols;
        let m = row / f.rows;
        let col = m * f.cols + (e - row * f.cols);
        set_lane(&v, k, factor_word(f.row + row) * factor_word(f.col + col) / factor_word(f.mean + m));
    }
    return v;
}

// The update before its scale: g / sqrt(max(V, eps1²)), as PyTorch's `rsqrt_` then `mul_`.
fn direction(u: ptr<function, Unit>) -> V {
    let c = (*u).c;
    let g = c.grad_sign * (*u).g;
    let v = variance_estimate(u, g);
    return (1.0 / sqrt(max(v, splat(c.eps1_sq)))) * g;
}

// The squares of the parameter (before the decay) and of the update, and the element count.
fn sum_terms(u: ptr<function, Unit>) -> Terms {
    let p = (*u).p;
    let d = direction(u);
    return Terms(p * p, d * d, splat(1.0), splat(0.0));
}

// The step's scale from the two RMS: alpha = max(eps2, RMS(p)) * rho, over
// max(1, RMS(update) / d).
fn apply_sums(c: Coeffs, sums: vec4<f32>) -> Coeffs {
    var out = c;
    let root_n = sqrt(sums.z);
    let alpha = max(c.eps2, sqrt(sums.x) / root_n) * c.rho;
    let denom = max(1.0, sqrt(sums.y) / (root_n * c.d));
    out.neg_step = -alpha / denom;
    return out;
}

fn update(u: ptr<function, Unit>) {
    let c = (*u).c;
    let d = direction(u);
    if c.decay != 1.0 {
        (*u).p = (*u).p * c.decay;
    }
    (*u).p = (*u).p + c.neg_step * d;
}

// Element e of the segment's gradient, as the optimizer sees it (unscaled, clipped).
fn factor_grad(seg: Segment, e: u32) -> f32 {
    let at = seg.head + e;
    return lane(prepare_grad(splat(grad_lane(seg.grad_offset + at / LANES, at % LANES))), 0u);
}

// torch.lerp of one element (`torch_lerp` lane by lane).
fn lerp_one(start: f32, end: f32, weight: f32) -> f32 {
    return lane(torch_lerp(splat(start), splat(end), weight), 0u);
}

// PyTorch's `vector_norm(g, dim).square_().div_(size)` from the sum of squares.
fn mean_square(sum: f32, size: u32) -> f32 {
    let norm = sqrt(sum);
    return norm * norm / f32(size);
}

// The factor region of a segment as every invocation of the workgroup sees it, and whether
// the step is skipped (a grad scaler found inf or NaN: the factors are left as they are), read
// once and shared (`workgroupUniformLoad`), so that the loops over its lines may hold
// barriers.
var<workgroup> shared_header: vec4<u32>;

fn uniform_factors(seg: Segment, lid: u32) -> FactorRegion {
    if lid == 0u {
        let f = factors_of(seg);
        let skip = (FLAGS & SCALER) != 0u && derived.header.skip != 0u;
        shared_header = vec4<u32>(f.rows, f.cols, f.matrices, u32(skip));
    }
    let h = workgroupUniformLoad(&shared_header);
    var f = region(seg.state_offset * LANES, h.x, h.y, h.z);
    f.skip = h.w != 0u;
    return f;
}

// The factors' update, over a grid of (workgroups, segments): each workgroup takes a vec4 of
// lines (rows, or columns: the row factor's lines and the column factor's are padded apart)
// in turn, sums each line's squared gradients over its invocations and combines them in a
// fixed order, then lerps the four factors toward the lines' mean squares and writes them
// whole. Each invocation's loop over a line runs at most 65,535 times (llvmpipe cuts longer
// loops) for lines of up to 16,776,960 elements.
@compute @workgroup_size(WORKGROUP_SIZE)
fn factor_lines(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if wid.y >= table.count {
        return;
    }
    let seg = table.segments[wid.y];
    let f = uniform_factors(seg, lid);
    let weight = derived.tensors[seg.tensor].weight;
    let rows = f.matrices * f.rows;
    let cols = f.matrices * f.cols;
    let row_quads = (rows + 3u) / 4u;
    let quads = row_quads + (cols + 3u) / 4u;
    for (var q = wid.x; q < quads; q += groups.x) {
        var sums = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j++) {
            // Line j of the quad: its first element, the step between its elements, and
            // their number (none past the factor's end).
            var first = 0u;
            var stride = 1u;
            var count = 0u;
            if q < row_quads {
                let r = 4u * q + j;
                first = r * f.cols;
                count = select(0u, f.cols, r < rows);
            } else {
                let k = 4u * (q - row_quads) + j;
                let m = k / f.cols;
                first = m * f.rows * f.cols + (k - m * f.cols);
                stride = f.cols;
                count = select(0u, f.rows, k < cols);
            }
            var acc = 0.0;
            for (var i = lid; i < count; i += WORKGROUP_SIZE) {
                let x = factor_grad(seg, first + i * stride);
                acc += x * x;
            }
            sums[j] = workgroup_combine(lid, vec4<f32>(acc, 0.0, 0.0, 0.0), COMBINE_SUM).x;
        }
        if lid == 0u && !f.skip {
            let row = q < row_quads;
            let at = select(f.col + 4u * (q - row_quads), f.row + 4u * q, row);
            let size = select(f.rows, f.cols, row);
            for (var j = 0u; j < 4u; j++) {
                let old = factor_word(at + j);
                set_factor_word(at + j, lerp_one(old, mean_square(sums[j], size), weight));
            }
        }
    }
}

// Each matrix's mean of its row factor, clamped below at eps1 (PyTorch's
// `row_var.mean(dim=-2).clamp_(min=eps1)`), over a grid of (workgroups, segments): a
// workgroup a vec4 of means in turn, each summed over its invocations.
@compute @workgroup_size(WORKGROUP_SIZE)
fn factor_means(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if wid.y >= table.count {
        return;
    }
    let seg = table.segments[wid.y];
    let f = uniform_factors(seg, lid);
    let eps1 = derived.tensors[seg.tensor].eps1;
    let quads = (f.matrices + 3u) / 4u;
    for (var q = wid.x; q < quads; q += groups.x) {
        var sums = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j++) {
            let m = 4u * q + j;
            let count = select(0u, f.rows, m < f.matrices);
            var acc = 0.0;
            for (var r = lid; r < count; r += WORKGROUP_SIZE) {
                acc += factor_word(f.row + m * f.rows + r);
            }
            sums[j] = workgroup_combine(lid, vec4<f32>(acc, 0.0, 0.0, 0.0), COMBINE_SUM).x;
        }
        if lid == 0u && !f.skip {
            for (var j = 0u; j < 4u; j++) {
                set_factor_word(f.mean + 4u * q + j, max(sums[j] / f32(f.rows), eps1));
            }
        }
    }
}
