//! The matrix products between the two phases of a Muon step: each tensor's Newton–Schulz
//! iterations, bound once when the optimizer is built (the state never moves), recorded into
//! every step's compute pass.

use super::{TensorMeta, bind::StateBlock};
use crate::error::{Error, Result};
use crate::gemm::{Gemm, Matrix};
use crate::gpu::{Context, scoped};
use crate::optim::OptimizerConfig;

/// Every tensor's products, in tensor order, and the scratch they share.
pub(super) struct Products {
    gemms: Vec<Gemm>,
    /// `G = X·Xᵀ` then `U = b·G + c·G·G` of the largest tensor: two `m x m` matrices, `m` its
    /// smaller dimension. The tensors' products run one after another, so they share it.
    _scratch: wgpu::Buffer,
}

impl Products {
    /// The products of the tensors whose groups orthogonalize their update, or `None` where
    /// none does (or where every such group runs no iteration). Each such tensor has two
    /// dimensions and one piece of state, with its iterates in state buffers 1 and 2.
    pub(super) fn new(
        ctx: &Context,
        groups: &[OptimizerConfig],
        metas: &[TensorMeta],
        blocks: &[StateBlock],
    ) -> Result<Option<Self>> {
        // Each tensor's iterations, the element where its state buffer 0 starts, its block,
        // its shape, and the smaller dimension.
        let mut tensors = Vec::new();
        for meta in metas {
            let Some(o) = groups[meta.group].orthogonalize() else {
                continue;
            };
            // A matrix with a dimension of 0 has no state and nothing to multiply.
            let Some(&piece) = meta.pieces.first() else {
                continue;
            };
            if o.ns_steps == 0 {
                continue;
            }
            let shape = meta.shape();
            let (rows, cols) = (shape[0] as u64, shape[1] as u64);
            tensors.push((
                o,
                piece.state_offset,
                piece.block,
                (rows, cols),
                rows.min(cols),
            ));
        }
        let Some(largest) = tensors.iter().map(|t| t.4).max() else {
            return Ok(None);
        };
        let limits = ctx.limits();
        let bytes = 2 * largest * largest * 4;
        let most = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        if bytes > most {
            return Err(Error::Unsupported(format!(
                "Muon's Newton–Schulz products of a matrix with {largest} rows and columns at least need {bytes} bytes of scratch in one binding (max_storage_buffer_binding_size is {})",
                limits.max_storage_buffer_binding_size
            )));
        }
        let device = ctx.device();
        let scratch = scoped(device, || {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-optim Newton-Schulz products"),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        })?;
        let mut gemms = Vec::new();
        for (o, base, block, (rows, cols), m) in tensors {
            let state = &blocks[block];
            let stride = state.plan.len;
            // Iterate `k` of the tensor, in state buffer 1 or 2, viewed m x n with m ≤ n.
            let iterate = |k: u32| {
                let at = base + u64::from(1 + k % 2) * stride;
                let x = Matrix::row_major(&state.buffer, at, rows as u32, cols as u32);
                if rows > cols { x.t() } else { x }
            };
            let gram = Matrix::row_major(&scratch, 0, m as u32, m as u32);
            let update = Matrix::row_major(&scratch, largest * largest, m as u32, m as u32);
            let [a, b, c] = o.ns_coefficients.map(|x| x as f32);
            for k in 0..o.ns_steps {
                let x = iterate(k);
                gemms.push(Gemm::new(ctx, gram, 1.0, x, x.t(), None)?);
                gemms.push(Gemm::new(ctx, update, c, gram, gram, Some((b, gram)))?);
                gemms.push(Gemm::new(
                    ctx,
                    iterate(k + 1),
                    1.0,
                    update,
                    x,
                    Some((a, x)),
                )?);
            }
        }
        Ok(Some(Self {
            gemms,
            _scratch: scratch,
        }))
    }

    /// Records every product, in order, into `pass`.
    pub(super) fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        for gemm in &self.gemms {
            gemm.record(pass);
        }
    }
}
