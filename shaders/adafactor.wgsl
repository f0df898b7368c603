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
    // t^beta2_decay, exactly 1 at the first step whatever beta2_decay (pow is exp2 of a
    // product there, which gives NaN for 0 * -inf when beta2_decay overflows float32).
    let weight = select(pow(steps, h.beta2_decay), 1.0, t == 1u);
    return Coeffs(
        weight,
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
    // The unit's first lane in the tensor, its element and that element's row and column;
    // each next lane is the next column, or the next row's first. Lanes of a shared unit that
    // are not the segment's (before its head, or past its end, held at its last row) give
    // values that are not stored.
    let first = i32((*u).index * LANES) - i32(seg.head);
    let e = u32(max(first, 0));
    var row = min(e / f.cols, f.matrices * f.rows - 1u);
    var col = e % f.cols;
    var v = splat(1.0);
    for (var k = u32(max(-first, 0)); k < LANES; k++) {
        let m = row / f.rows;
        let estimate = factor_word(f.row + row) * factor_word(f.col + m * f.cols + col)
            / factor_word(f.mean + m);
        set_lane(&v, k, estimate);
        col += 1u;
        if col == f.cols {
            col = 0u;
            row = min(row + 1u, f.matrices * f.rows - 1u);
        }
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
fn apply_sums(c: Coeffs, sums: vec4<f32>, x: ptr<function, Scalars>) -> Coeffs {
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
// lines in turn (four rows, or four columns: the row factor's lines and the column factor's
// are padded apart), sums the four lines' squared gradients over its invocations (each reads
// one element of every line in turn, so a quad of columns reads adjacent elements) and
// combines them in a fixed order, then lerps the four factors toward the lines' mean squares
// and writes them whole. Each invocation's loop runs at most 65,535 times (llvmpipe cuts
// longer loops) for lines of up to 16,776,960 elements.
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
        let row = q < row_quads;
        // Each line's first element and its number of elements (none past the factor's end),
        // the step between a line's elements, and the longest line's length.
        var first = vec4<u32>(0u);
        var count = vec4<u32>(0u);
        for (var j = 0u; j < 4u; j++) {
            if row {
                let r = 4u * q + j;
                first[j] = r * f.cols;
                count[j] = select(0u, f.cols, r < rows);
            } else {
                let k = 4u * (q - row_quads) + j;
                let m = k / f.cols;
                first[j] = m * f.rows * f.cols + (k - m * f.cols);
                count[j] = select(0u, f.rows, k < cols);
            }
        }
        let stride = select(f.cols, 1u, row);
        let longest = select(f.rows, f.cols, row);
        var acc = vec4<f32>(0.0);
        for (var i = lid; i < longest; i += WORKGROUP_SIZE) {
            for (var j = 0u; j < 4u; j++) {
                if i < count[j] {
                    let x = factor_grad(seg, first[j] + i * stride);
                    acc[j] += x * x;
                }
            }
        }
        let sums = workgroup_combine(lid, acc, COMBINE_SUM);
        if lid == 0u && !f.skip {
            let at = select(f.col + 4u * (q - row_quads), f.row + 4u * q, row);
            for (var j = 0u; j < 4u; j++) {
                let old = factor_word(at + j);
                set_factor_word(at + j, lerp_one(old, mean_square(sums[j], longest), weight));
            }
        }
    }
}

// Each matrix's mean of its row factor, clamped below at eps1 (PyTorch's
// `row_var.mean(dim=-2).clamp_(min=eps1)`), over a grid of (workgroups, segments): a
// workgroup a vec4 of means in turn, summed over its invocations.
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
        var acc = vec4<f32>(0.0);
        for (var r = lid; r < f.rows; r += WORKGROUP_SIZE) {
            for (var j = 0u; j < 4u; j++) {
                let m = 4u * q + j;
                if m < f.matrices {
                    acc[j] += factor_word(f.row + m * f.rows + r);
                }
            }
        }
        let sums = workgroup_combine(lid, acc, COMBINE_SUM);
        if lid == 0u && !f.skip {
            for (var j = 0u; j < 4u; j++) {
                set_factor_word(f.mean + 4u * q + j, max(sums[j] / f32(f.rows), eps1));
            }
        }
    }
}
