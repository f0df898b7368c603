//! Matrix products on the GPU: `C = α·A·B + β·D` for f32 matrices in the caller's buffers, as
//! one tiled WGSL kernel with workgroup memory (shaders/gemm.wgsl). Muon's Newton–Schulz
//! iterations are made of these.
//!
//! A [`Gemm`] is one product bound to its buffers: made once (its parameters and bind group),
//! then recorded into a compute pass as often as wanted, with no allocation and no readback.
//!
//! ```no_run
//! # fn main() -> Result<(), wgpu_optim::Error> {
//! use wgpu_optim::gemm::{Gemm, Matrix};
//! let (ctx, _) = wgpu_optim::Context::request(wgpu::Backends::all(), None)?;
//! let a = ctx.create_f32_buffer("a", &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?; // 2 x 3
//! let c = ctx.create_f32_buffer("c", &[0.0; 4])?; // 2 x 2
//! let a = Matrix::row_major(&a, 0, 2, 3);
//! // C = A·Aᵀ
//! let product = Gemm::new(&ctx, Matrix::row_major(&c, 0, 2, 2), 1.0, a, a.t(), None)?;
//! let mut encoder = ctx.device().create_command_encoder(&Default::default());
//! product.record(&mut encoder.begin_compute_pass(&Default::default()));
//! ctx.queue().submit([encoder.finish()]);
//! assert_eq!(ctx.read_f32(&[(&c, 0, 4)])?, [14.0, 32.0, 32.0, 77.0]);
//! # Ok(())
//! # }
//! ```

use crate::error::{Error, Result};
use crate::gpu::{CompiledKernel, Context, Pipeline, scoped};
use std::sync::Arc;

/// Rows and columns of C one workgroup computes (`TILE` in shaders/gemm.wgsl).
const TILE: u32 = 64;

/// Elements of the inner dimension one workgroup takes (`k_chunk`): a product over more is
/// split along k into several workgroups whose partial sums a second dispatch adds, so that no
/// invocation loops more than 65,535 times over all its loops (llvmpipe cuts longer loops,
/// counting nested loops' iterations together).
const K_CHUNK: u64 = 4096;

/// The most splits of the inner dimension (`gemm_combine` loops 16 times over them).
const MAX_SPLITS: u64 = 4095;

/// The longest inner dimension.
pub const MAX_K: u64 = K_CHUNK * MAX_SPLITS;

/// An f32 matrix in a buffer: element `(i, j)` is element `offset + i·row_stride +
/// j·col_stride` of the buffer. A row-major matrix has `row_stride = cols` and `col_stride =
/// 1`; [`t`](Self::t) is its transpose, the same elements with the strides swapped.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    /// The buffer. It needs `STORAGE` usage.
    pub buffer: &'a wgpu::Buffer,
    /// The element offset of element `(0, 0)`.
    pub offset: u64,
    /// Rows.
    pub rows: u32,
    /// Columns.
    pub cols: u32,
    /// Elements from one row to the next.
    pub row_stride: u64,
    /// Elements from one column to the next.
    pub col_stride: u64,
}

impl<'a> Matrix<'a> {
    /// A `rows x cols` row-major matrix starting at element `offset`.
    pub fn row_major(buffer: &'a wgpu::Buffer, offset: u64, rows: u32, cols: u32) -> Self {
        Self {
            buffer,
            offset,
            rows,
            cols,
            row_stride: u64::from(cols),
            col_stride: 1,
        }
    }

    /// The transpose: the same elements, rows and columns swapped.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// The last element a matrix of at least one element reaches (none past u64).
    fn last(&self) -> Option<u64> {
        u64::from(self.rows.saturating_sub(1))
            .checked_mul(self.row_stride)?
            .checked_add(u64::from(self.cols.saturating_sub(1)).checked_mul(self.col_stride)?)?
            .checked_add(self.offset)
    }

    /// Whether the spans of buffer elements between the two matrices' first and last
    /// elements meet (the matrices may then share an element). Empty matrices meet nothing.
    fn overlaps(&self, other: &Matrix<'_>) -> bool {
        match (self.last(), other.last()) {
            _ if self.rows == 0 || self.cols == 0 || other.rows == 0 || other.cols == 0 => false,
            (Some(last), Some(other_last)) => self.offset <= other_last && other.offset <= last,
            _ => true,
        }
    }

    /// Whether two of the matrix's elements are the same element of the buffer: neither
    /// stride steps over a whole row or column of the other.
    fn repeats(&self) -> bool {
        let (rows, cols) = (u64::from(self.rows), u64::from(self.cols));
        if rows <= 1 || cols <= 1 {
            return (rows > 1 && self.row_stride == 0) || (cols > 1 && self.col_stride == 0);
        }
        let apart = |small: u64, n: u64, large: u64| {
            small > 0 && small.checked_mul(n).is_some_and(|span| large >= span)
        };
        !(apart(self.col_stride, cols, self.row_stride)
            || apart(self.row_stride, rows, self.col_stride))
    }

    /// The operand record, after checking that every element lies in the buffer, within one
    /// storage binding, at an index that fits 32 bits.
    fn operand(&self, what: &str, max_binding: u64) -> Result<Operand> {
        if !self.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::Input(format!(
                "matrix {what}: its buffer lacks STORAGE usage"
            )));
        }
        let elements = self.buffer.size() / 4;
        let empty = self.rows == 0 || self.cols == 0;
        if !empty && self.last().is_none_or(|last| last >= elements) {
            return Err(Error::Input(format!(
                "matrix {what} ({} x {} from element {}, strides {} and {}) reaches past the buffer's {elements} elements",
                self.rows, self.cols, self.offset, self.row_stride, self.col_stride
            )));
        }
        if self.buffer.size() > max_binding {
            return Err(Error::Unsupported(format!(
                "matrix {what}: a buffer of {} bytes bound whole (max_storage_buffer_binding_size is {max_binding})",
                self.buffer.size()
            )));
        }
        let word = |x: u64| {
            u32::try_from(x).map_err(|_| {
                Error::Unsupported(format!("matrix {what}: element indices past 32 bits"))
            })
        };
        word(elements)?;
        Ok(Operand {
            offset: word(self.offset)?,
            row_stride: word(self.row_stride)?,
            col_stride: word(self.col_stride)?,
            _pad: 0,
        })
    }
}

/// Where a matrix's elements are (`Operand` in shaders/gemm.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Operand {
    offset: u32,
    row_stride: u32,
    col_stride: u32,
    _pad: u32,
}

/// One product's uniform record (`Params` in shaders/gemm.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    m: u32,
    n: u32,
    k: u32,
    has_d: u32,
    alpha: f32,
    beta: f32,
    k_chunk: u32,
    splits: u32,
    a: Operand,
    b: Operand,
    d: Operand,
    c: Operand,
}

/// Bytes of [`Params`].
pub(crate) const PARAMS_SIZE: u64 = size_of::<Params>() as u64;

/// One product `C = α·A·B + β·D` (or `α·A·B` without `D`) bound to its buffers.
#[derive(Debug)]
pub struct Gemm {
    kernel: Arc<CompiledKernel>,
    group: wgpu::BindGroup,
    /// Tiles across n and m, and splits of k.
    grid: (u32, u32, u32),
    /// With more than one split of k, `gemm_combine` and its bind group (the partials as A).
    combine: Option<(Arc<CompiledKernel>, wgpu::BindGroup)>,
    flops: u64,
}

impl Gemm {
    /// Binds the product `c = alpha·a·b + beta·d`. `a` is `m x k`, `b` is `k x n`, `c` and
    /// `d` are `m x n`; `k` is at most [`MAX_K`]. C is overwritten. It may lie in the buffer of
    /// A, B or D, but apart from their elements: the span from its first element to its last
    /// must not meet theirs (the product then binds every operand read-write, since a dispatch
    /// cannot bind one buffer both read-only and read-write). No two of C's elements may be the
    /// same (one stride must step over a whole row or column of the other). With `beta` 0, D is
    /// not read, as BLAS does not read it.
    pub fn new(
        ctx: &Context,
        c: Matrix<'_>,
        alpha: f32,
        a: Matrix<'_>,
        b: Matrix<'_>,
        d: Option<(f32, Matrix<'_>)>,
    ) -> Result<Self> {
        if a.rows != c.rows || b.cols != c.cols || a.cols != b.rows {
            return Err(Error::Input(format!(
                "matrix shapes do not multiply: A is {} x {}, B {} x {}, C {} x {}",
                a.rows, a.cols, b.rows, b.cols, c.rows, c.cols
            )));
        }
        if let Some((_, d)) = d
            && (d.rows != c.rows || d.cols != c.cols)
        {
            return Err(Error::Input(format!(
                "matrix D is {} x {}, C {} x {}",
                d.rows, d.cols, c.rows, c.cols
            )));
        }
        let inputs = [Some(a), Some(b), d.map(|(_, d)| d)];
        let shared: Vec<Matrix<'_>> = inputs
            .into_iter()
            .flatten()
            .filter(|m| m.buffer == c.buffer)
            .collect();
        if shared.iter().any(|m| m.overlaps(&c)) {
            return Err(Error::Input(
                "matrix C overlaps A, B or D in their buffer: write the product to other elements"
                    .into(),
            ));
        }
        if c.repeats() {
            return Err(Error::Input(
                "matrix C repeats elements (its strides overlap rows or columns): the product would race"
                    .into(),
            ));
        }
        if u64::from(a.cols) > MAX_K {
            return Err(Error::Unsupported(format!(
                "a product over an inner dimension of {} (at most {MAX_K}: {MAX_SPLITS} splits of {K_CHUNK})",
                a.cols
            )));
        }
        let limits = ctx.limits();
        let max_binding = limits.max_storage_buffer_binding_size;
        let splits = u64::from(a.cols).div_ceil(K_CHUNK).max(1) as u32;
        let grid = (
            c.cols.div_ceil(TILE).max(1),
            c.rows.div_ceil(TILE).max(1),
            splits,
        );
        let max_x = limits.max_compute_workgroups_per_dimension;
        if grid.0 > max_x || grid.1 > max_x || grid.2 > max_x {
            return Err(Error::Unsupported(format!(
                "a product of {} x {} over {} needs {} x {} x {} workgroups (max_compute_workgroups_per_dimension is {max_x})",
                c.rows, c.cols, a.cols, grid.0, grid.1, grid.2
            )));
        }
        // The splits' partial sums, where there are several.
        let partial_bytes = u64::from(splits) * u64::from(c.rows) * u64::from(c.cols) * 4;
        if splits > 1 && partial_bytes > max_binding.min(limits.max_buffer_size) {
            return Err(Error::Unsupported(format!(
                "a product of {} x {} over {} needs {partial_bytes} bytes of partial sums in one binding (max_storage_buffer_binding_size is {max_binding})",
                c.rows, c.cols, a.cols
            )));
        }
        let params = Params {
            m: c.rows,
            n: c.cols,
            k: a.cols,
            has_d: u32::from(d.is_some()),
            alpha,
            beta: d.map_or(0.0, |(beta, _)| beta),
            k_chunk: K_CHUNK as u32,
            splits,
            a: a.operand("A", max_binding)?,
            b: b.operand("B", max_binding)?,
            d: match d {
                Some((_, d)) => d.operand("D", max_binding)?,
                None => Operand::default(),
            },
            c: c.operand("C", max_binding)?,
        };
        let shared = !shared.is_empty();
        let kernel = ctx.kernel(Pipeline::Gemm(shared, false))?;
        let combine = if splits > 1 {
            Some(ctx.kernel(Pipeline::Gemm(shared, true))?)
        } else {
            None
        };
        let device = ctx.device();
        let d_buffer = d.map_or(a.buffer, |(_, d)| d.buffer);
        let (group, combine) = scoped(device, || {
            let params = wgpu::util::DeviceExt::create_buffer_init(
                device,
                &wgpu::util::BufferInitDescriptor {
                    label: Some("wgpu-optim gemm"),
                    contents: bytemuck::bytes_of(&params),
                    usage: wgpu::BufferUsages::UNIFORM,
                },
            );
            let group = |kernel: &CompiledKernel, [a, b, d, c]: [&wgpu::Buffer; 4]| {
                let entries: Vec<wgpu::BindGroupEntry<'_>> = [&params, a, b, d, c]
                    .into_iter()
                    .enumerate()
                    .map(|(i, buffer)| wgpu::BindGroupEntry {
                        binding: i as u32,
                        resource: buffer.as_entire_binding(),
                    })
                    .collect();
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("wgpu-optim gemm"),
                    layout: &kernel.layout,
                    entries: &entries,
                })
            };
            match combine {
                None => (
                    group(&kernel, [a.buffer, b.buffer, d_buffer, c.buffer]),
                    None,
                ),
                Some(combine) => {
                    let partials = device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("wgpu-optim gemm partial sums"),
                        size: partial_bytes,
                        usage: wgpu::BufferUsages::STORAGE,
                        mapped_at_creation: false,
                    });
                    let main = group(&kernel, [a.buffer, b.buffer, d_buffer, &partials]);
                    let second = group(&combine, [&partials, b.buffer, d_buffer, c.buffer]);
                    (main, Some((combine, second)))
                }
            }
        })?;
        let flops = 2 * u64::from(c.rows) * u64::from(c.cols) * u64::from(a.cols);
        Ok(Self {
            kernel,
            group,
            grid,
            combine,
            flops,
        })
    }

    /// Records the product into `pass`: one dispatch, or two where the inner dimension is
    /// split (longer than 4,096).
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.kernel.pipeline);
        pass.set_bind_group(0, &self.group, &[]);
        pass.dispatch_workgroups(self.grid.0, self.grid.1, self.grid.2);
        if let Some((kernel, group)) = &self.combine {
            pass.set_pipeline(&kernel.pipeline);
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(self.grid.0, self.grid.1, 1);
        }
    }

    /// Floating-point operations of the product, `2·m·n·k` (the `β·D` term not counted).
    pub fn flops(&self) -> u64 {
        self.flops
    }
}
