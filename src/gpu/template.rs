//! Host mirrors of the kernel template's buffers (shaders/layout.wgsl, shaders/common.wgsl):
//! the segment tables, the per-step configuration, and the GPU-side control state. Keep these
//! in sync with the WGSL; tests/shaders.rs checks sizes and field offsets against naga.

use super::plan;

/// Workgroup size of every kernel (`WORKGROUP_SIZE` in shaders/layout.wgsl).
pub(crate) const WORKGROUP_SIZE: u32 = 256;
/// Segments per dispatch (`MAX_SEGMENTS` in shaders/layout.wgsl).
pub(crate) const MAX_SEGMENTS: usize = 256;
/// Bytes of the header of a `SegmentTable`.
const TABLE_HEADER: u64 = 48;
/// Bytes of one `Segment`.
const SEGMENT_SIZE: u64 = 32;
/// Entries of `SegmentTable.coarse` (`COARSE_ENTRIES` in shaders/layout.wgsl), 16 bytes each.
const COARSE_ENTRIES: u32 = 256;
// `SegmentTable.coarse` holds one value of each segment beside its own entries.
const _: () = assert!(COARSE_ENTRIES as usize == MAX_SEGMENTS);
/// Bytes of the segment table uniform (`SegmentTable`).
pub(crate) const TABLE_SIZE: u64 =
    TABLE_HEADER + SEGMENT_SIZE * MAX_SEGMENTS as u64 + 16 * COARSE_ENTRIES as u64;
/// Bytes of `StepHeader` (shaders/common.wgsl), the start of the `Derived` buffer.
pub(crate) const STEP_HEADER_SIZE: u64 = 32;
/// Bytes reserved per tensor in the `Derived` buffer: at least the size of every optimizer's
/// `Coeffs` (tests/shaders.rs checks).
pub(crate) const COEFFS_STRIDE: u64 = 64;
/// Bytes of the header of `Control` (scale, growth tracker, total norm, found_inf).
pub(crate) const CONTROL_HEADER: u64 = 16;
/// Bytes of one `TensorStep` in `Control`: the step count, the group, two words of padding
/// (a vec4's alignment), and four words of per-tensor scalar state.
pub(crate) const TENSOR_STEP_SIZE: u64 = 32;
/// Per-tensor scalar state words in a `TensorStep`.
pub(crate) const MAX_SCALARS: usize = 4;
/// The word of a `TensorStep` where its scalar state starts.
pub(crate) const SCALAR_WORD: usize = 4;

/// Bits of `StepConfig::flags` (shaders/layout.wgsl).
pub(crate) mod flags {
    /// Multiply gradients by the reciprocal of the scale.
    pub(crate) const UNSCALE: u32 = 1;
    /// Multiply gradients by the clip coefficient.
    pub(crate) const CLIP_NORM: u32 = 2;
    /// Clamp gradients to the clip value.
    pub(crate) const CLIP_VALUE: u32 = 4;
    /// The max norm instead of the 2-norm.
    pub(crate) const NORM_INF: u32 = 8;
    /// Skip on inf or NaN and update the scale.
    pub(crate) const SCALER: u32 = 16;
    /// Not a step: keep the step counts and scalar state (a mode switch).
    pub(crate) const HOLD: u32 = 32;
    /// Multiply gradients by Lamb's `pre_norm` factor, after unscaling and clipping.
    pub(crate) const PRE_NORM: u32 = 64;
}

/// The host-written values of one step (`StepConfig`), at the start of each ring slot, followed
/// by one `Hyper` record per parameter group.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct StepConfig {
    pub(crate) tensors: u32,
    pub(crate) partials: u32,
    pub(crate) flags: u32,
    pub(crate) growth_interval: u32,
    pub(crate) max_norm: f32,
    pub(crate) clip_value: f32,
    pub(crate) growth_factor: f32,
    pub(crate) growth_factor_lo: f32,
    pub(crate) backoff_factor: f32,
    pub(crate) backoff_factor_lo: f32,
    pub(crate) pre_norm_max: f32,
    pub(crate) pre_norm_eps: f32,
    /// The seed of stochastic rounding (0 without it).
    pub(crate) seed: u32,
    pub(crate) _pad: [u32; 3],
}
const _: () = assert!(size_of::<StepConfig>() == 64);

/// How many consecutive chunks of [`WORKGROUP_SIZE`] units (the plan's workgroups) one
/// workgroup of a batch's main step dispatch takes in turn (`step_span` of the segment table),
/// so that what an invocation does once (finding its segment, loading the tensor's
/// coefficients) is shared by several units: up to 16, but at least 256 workgroups where the
/// batch has that many chunks to spread, for wide GPUs. On lavapipe, Adam over 4,194,304
/// elements took 1.8x the time of a minimal kernel with one unit per invocation, and 1.2x
/// with 16 (notes/bandwidth.md); 64 was slower again.
pub(crate) fn step_span(p: &plan::Batch) -> u32 {
    (p.workgroups / 256).clamp(1, MAX_STEP_SPAN)
}

/// The most chunks a workgroup of the main step dispatch takes (`MAX_STEP_SPAN` in
/// shaders/common.wgsl).
const MAX_STEP_SPAN: u32 = 16;

/// The workgroups of a batch's main step dispatch.
pub(crate) fn step_workgroups(p: &plan::Batch) -> u32 {
    p.workgroups.div_ceil(step_span(p))
}

/// How many consecutive workgroups of a batch's step one workgroup of its reduction covers:
/// up to 32, so that the reduction has few workgroups (each ends in a workgroup-wide fold), but
/// at least 128 workgroups where the batch has that many to spread, for wide GPUs. On lavapipe
/// a span of 32 took Adam with clipping and a grad scaler from 1.56x to 1.33x plain Adam's
/// time (notes/bandwidth.md).
pub(crate) fn reduce_span(p: &plan::Batch) -> u32 {
    (p.workgroups / 128).clamp(1, 32)
}

/// The workgroups of a batch's reduction.
pub(crate) fn reduce_workgroups(p: &plan::Batch) -> u32 {
    p.workgroups.div_ceil(reduce_span(p))
}

/// The bytes of one batch's `SegmentTable`. `dispatch_x`, `reduce_dispatch_x` and
/// `sums_dispatch_x` are the x extents of the main step's, the reduction's and the per-tensor
/// sums' grids; `partial_base` and `sums_base` the batch's first entries in the reduction's and
/// the sums' partials; `lr_ratios` each tensor's factor of the learning rate.
pub(crate) fn segment_table(
    p: &plan::Batch,
    spans: &[plan::Span],
    lr_ratios: &[f32],
    (dispatch_x, reduce_dispatch_x, sums_dispatch_x): (u32, u32, u32),
    (partial_base, sums_base): (u32, u32),
) -> Vec<u8> {
    let mut words: Vec<u32> = vec![
        p.pieces.len() as u32,
        p.workgroups,
        dispatch_x,
        (p.state_len / p.lanes) as u32,
        partial_base,
        reduce_workgroups(p),
        reduce_dispatch_x,
        reduce_span(p),
        coarse_shift(p),
        step_span(p),
        sums_base,
        sums_dispatch_x,
    ];
    for piece in &p.pieces {
        let s = spans[piece.tensor];
        let param = param_element(p, spans, piece);
        let grad_size = p.sizes.1;
        let grad = (s.grad_offset + grad_size * piece.start - p.grad_window.0) / grad_size;
        words.extend([
            (param / p.lanes) as u32,
            (grad / p.lanes) as u32,
            (piece.state_offset / p.lanes) as u32,
            piece.len as u32,
            piece.first_workgroup,
            piece.tensor as u32,
            (param % p.lanes) as u32,
            lr_ratios[piece.tensor].to_bits(),
        ]);
    }
    words.resize(
        (TABLE_HEADER / 4 + SEGMENT_SIZE / 4 * MAX_SEGMENTS as u64) as usize,
        0,
    );
    // The segment of workgroup k << shift, for each coarse entry k; beside it the index in its
    // tensor of segment k's first element (`first_element` in shaders/layout.wgsl) and the
    // unit of its master copy holding that element (`master_index`).
    let shift = coarse_shift(p);
    let mut segment = 0;
    for k in 0..u64::from(COARSE_ENTRIES) {
        let wg = k << shift;
        while segment + 1 < p.pieces.len() && u64::from(p.pieces[segment + 1].first_workgroup) <= wg
        {
            segment += 1;
        }
        let (start, master) = p.pieces.get(k as usize).map_or((0, 0), |piece| {
            (piece.start as u32, (piece.master_offset / p.lanes) as u32)
        });
        words.extend([segment as u32, start, master, 0]);
    }
    bytemuck::cast_slice(&words).to_vec()
}

/// Whether a piece of the batch starts or ends inside a unit, so that the edge dispatch has
/// work (the lanes of such units are written one by one there).
pub(crate) fn has_edges(p: &plan::Batch, spans: &[plan::Span]) -> bool {
    p.lanes > 1
        && p.pieces.iter().any(|piece| {
            let head = param_element(p, spans, piece) % p.lanes;
            head != 0 || !(head + piece.len).is_multiple_of(p.lanes)
        })
}

/// The element offset of a piece's first parameter inside its batch's parameter window; the
/// plan puts the piece's first element at the same lane of a unit in the gradient and state
/// windows too.
fn param_element(p: &plan::Batch, spans: &[plan::Span], piece: &plan::Piece) -> u64 {
    let size = p.sizes.0;
    (spans[piece.tensor].param_offset + size * piece.start - p.param_window.0) / size
}

/// log2 of the workgroups between the entries of a batch's `coarse` map: the entries cover
/// every workgroup.
fn coarse_shift(p: &plan::Batch) -> u32 {
    p.workgroups
        .div_ceil(COARSE_ENTRIES)
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
}

/// Where a tensor whose state is factored (Adafactor's tensors of two dimensions or more)
/// keeps it: a region of its state block (`factors_of` in shaders/adafactor.wgsl), at a
/// multiple of 4 elements, holding a header of four words (the rows and columns of each
/// matrix, the number of matrices, 0), then the row factor, the column factor and the means
/// of the row factor over each matrix's rows (scratch of each step, not state), each padded
/// to a multiple of 4 elements, so that the kernels write whole vec4s of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Factors {
    /// Rows of each matrix: the tensor's second-to-last dimension.
    pub(crate) rows: u64,
    /// Columns of each matrix: the last dimension.
    pub(crate) cols: u64,
    /// Matrices: the product of the leading dimensions.
    pub(crate) matrices: u64,
}

impl Factors {
    /// The factors of a tensor of `shape`, of two dimensions or more.
    pub(crate) fn of(shape: &[usize]) -> Self {
        let dims = shape.len();
        Self {
            rows: shape[dims - 2] as u64,
            cols: shape[dims - 1] as u64,
            matrices: shape[..dims - 2].iter().map(|&d| d as u64).product(),
        }
    }

    /// The header words.
    pub(crate) fn header(&self) -> [u32; 4] {
        [self.rows as u32, self.cols as u32, self.matrices as u32, 0]
    }

    /// Elements of the row factor and of the column factor.
    pub(crate) fn lens(&self) -> [u64; 2] {
        [self.matrices * self.rows, self.matrices * self.cols]
    }

    /// `(offset in the region, elements)` of factor `n`: 0 the row factor, 1 the column
    /// factor.
    pub(crate) fn range(&self, n: usize) -> (u64, u64) {
        let [row, col] = self.lens();
        match n {
            0 => (4, row),
            _ => (4 + row.next_multiple_of(4), col),
        }
    }

    /// Elements of the region.
    pub(crate) fn footprint(&self) -> u64 {
        let [row, col] = self.lens();
        4 + row.next_multiple_of(4) + col.next_multiple_of(4) + self.matrices.next_multiple_of(4)
    }

    /// Work items of the two passes over the factors: the vec4s of lines (rows, then
    /// columns) that `factor_lines` updates, and the vec4s of means that `factor_means`
    /// writes.
    pub(crate) fn quads(&self) -> (u64, u64) {
        let [row, col] = self.lens();
        (row.div_ceil(4) + col.div_ceil(4), self.matrices.div_ceil(4))
    }
}
