//! Where the tensors are: the batches of the current parameter and gradient ranges, their bind
//! groups and segment tables, and the caches that let ranges change every step.
//!
//! The state never moves: [`plan::state_blocks`] fixes it when the optimizer is built. A
//! [`Bound`] is everything a step records for one set of parameter and gradient ranges: its
//! dispatches, their kernels and bind groups, and its segment tables in a buffer of its own,
//! written once. [`Optimizer::rebind`] switches to the `Bound` of new ranges: the current one
//! when nothing moved, one of the [`LAYOUT_CACHE`] most recently used ones when the ranges were
//! seen before, else a new one. A new one costs a plan on the host, one small table buffer and
//! its bind group, and one bind group per batch whose buffers no cached bind group binds (the
//! buffers' bind groups are cached by buffer identity, [`BIND_GROUP_CACHE`] of them, least
//! recently used evicted); never a pipeline, unless a tensor moved to an offset where it
//! cannot keep vec4 access.

use super::{
    BufferRange, Buffers, Optimizer, Ring, StepKernels, Tensor, TensorMeta, check_overlaps,
    check_range, dispatch_size, entries, round_up, step_kernels, vec4_fits, window,
};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::plan::{self, PlanLimits, Span};
use crate::gpu::template::{
    Factors, TABLE_SIZE, WORKGROUP_SIZE, has_edges, reduce_workgroups, segment_table,
    step_workgroups,
};
use crate::gpu::{
    Access, Binds, CompiledKernel, Context, F16Path, FactorPass, GradAccess, Layout, Pipeline,
    scoped,
};
use crate::optim::Kernel;
use std::sync::Arc;

/// Sets of ranges whose dispatches, segment tables and bind groups stay cached besides the
/// current one (see [`Optimizer::rebind`]).
pub const LAYOUT_CACHE: usize = 8;
/// Bind groups of the caller's buffers kept for reuse.
pub const BIND_GROUP_CACHE: usize = 64;

/// Where one tensor's parameter and gradient are: `(parameter buffer, byte offset, gradient
/// buffer, byte offset)`.
pub(super) type Ranges = (wgpu::Buffer, u64, wgpu::Buffer, u64);

/// One state block: a buffer holding its tensors' state buffers one after the other.
pub(super) struct StateBlock {
    pub(super) buffer: wgpu::Buffer,
    /// Where its tensors keep master weights: their f32 master copies, laid out as the first
    /// state buffer, but for factored state, whose copies lie in regions of their own
    /// (`plan::StatePiece::master_offset`, `Binds::master`).
    pub(super) master: Option<wgpu::Buffer>,
    pub(super) plan: plan::Block,
}

/// One dispatch of a step (and of its reduction).
pub(super) struct Dispatch {
    pub(super) kernel: Arc<CompiledKernel>,
    /// With vec4 access, the kernel of the edge dispatch: the units that pieces share.
    pub(super) edge_kernel: Option<Arc<CompiledKernel>>,
    /// The reduction, when steps reduce.
    pub(super) reduce_kernel: Option<Arc<CompiledKernel>>,
    pub(super) group: wgpu::BindGroup,
    pub(super) reduce_group: Option<wgpu::BindGroup>,
    /// The gradient buffer and its bound window, for the reduction's bind group.
    grad: (wgpu::Buffer, (u64, u64)),
    /// Byte offset of the dispatch's segment table in the table buffer.
    pub(super) table_offset: u32,
    kernel_id: Kernel,
    binds: Binds,
    pieces: usize,
    pub(super) dispatch: (u32, u32),
    pub(super) reduce_dispatch: (u32, u32),
    /// Workgroups of the edge dispatch: two invocations a piece; none where every piece
    /// starts and ends on a unit boundary.
    pub(super) edge_workgroups: u32,
    /// The per-tensor sums' pass of each round the batch's kernel has (one workgroup a
    /// chunk); none for an optimizer without sums.
    pub(super) sums_kernels: Vec<Arc<CompiledKernel>>,
    pub(super) sums_dispatch: (u32, u32),
    /// For a batch of tensors whose state is factored, the passes over their factors.
    pub(super) factors: Option<FactorDispatch>,
    /// For a kernel whose step runs in two phases (Muon's), the kernels of the second (main,
    /// and edges), recorded after the matrix products over the same bind groups and grid.
    pub(super) apply: Option<StepKernels>,
}

/// The passes over a batch's factored state (shaders/adafactor.wgsl), after `finalize` and
/// before the per-tensor sums: `factor_lines` then `factor_means`, each over a grid of
/// (workgroups per tensor, tensors), each workgroup taking a vec4 of lines or means in
/// turn.
pub(super) struct FactorDispatch {
    pub(super) lines: Arc<CompiledKernel>,
    pub(super) means: Arc<CompiledKernel>,
    pub(super) lines_dispatch: (u32, u32),
    pub(super) means_dispatch: (u32, u32),
}

/// The most workgroups a factor pass gives one tensor; each then takes several vec4s of
/// lines in turn.
const MAX_FACTOR_WORKGROUPS: u64 = 16_384;

/// What a step records for the per-tensor sums (shaders/sums.wgsl), for optimizers whose
/// update needs them: their partials and their combination.
pub(super) struct SumsPass {
    /// Group 2 of the sums' pass: the partials, one per chunk over every dispatch.
    pub(super) out_group: wgpu::BindGroup,
    /// `combine_sums` of each round, its bind group (coefficients, partials, the map of each
    /// tensor's partials, the step state) and its grid, one workgroup a tensor. A batch whose
    /// kernel has fewer rounds takes the last ones (see [`Dispatch::sums_kernels`]).
    pub(super) combine: Vec<Arc<CompiledKernel>>,
    pub(super) combine_group: wgpu::BindGroup,
    pub(super) combine_dispatch: (u32, u32),
}

/// Everything a step records for one set of ranges.
pub(super) struct Bound {
    pub(super) ranges: Vec<Ranges>,
    /// Each tensor's access mode.
    pub(super) access: Vec<Access>,
    pub(super) dispatches: Vec<Dispatch>,
    /// The segment tables (group 1), bound at each dispatch's offset.
    pub(super) table: wgpu::BindGroup,
    /// Partials of one step: the reduction's workgroups over every dispatch.
    pub(super) partial_count: u32,
    /// The per-tensor sums, for optimizers that need them.
    pub(super) sums: Option<SumsPass>,
    /// The step flags its kernels are for.
    bits: u32,
    /// The generation of the ring and partials its reduction bind groups are for, if any.
    reduce_generation: Option<u64>,
    last_used: u64,
}

/// What a bind group binds besides the optimizer's own buffers.
#[derive(Clone, PartialEq)]
enum GroupKey {
    Step {
        param: (wgpu::Buffer, (u64, u64)),
        grad: (wgpu::Buffer, (u64, u64)),
        block: usize,
        binds: Binds,
    },
    Reduce {
        grad: (wgpu::Buffer, (u64, u64)),
        binds: Binds,
        generation: u64,
    },
}

/// Bind groups by what they bind, least recently used evicted.
#[derive(Default)]
pub(super) struct BindGroups {
    entries: Vec<(GroupKey, wgpu::BindGroup, u64)>,
}

impl BindGroups {
    /// The bind group of `key`, made by `make` unless cached.
    fn get(
        &mut self,
        key: GroupKey,
        tick: u64,
        make: impl FnOnce() -> Result<wgpu::BindGroup>,
    ) -> Result<wgpu::BindGroup> {
        if let Some(e) = self.entries.iter_mut().find(|e| e.0 == key) {
            e.2 = tick;
            return Ok(e.1.clone());
        }
        let group = make()?;
        if self.entries.len() >= BIND_GROUP_CACHE
            && let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].2)
        {
            self.entries.swap_remove(oldest);
        }
        self.entries.push((key, group.clone(), tick));
        Ok(group)
    }

    /// Bind groups cached now.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The batches of one set of ranges, before anything is created on the GPU.
pub(super) struct Planned {
    plans: Vec<plan::Batch>,
    /// Per batch: kernel, and how it binds the parameters and gradients.
    keys: Vec<(Kernel, Binds)>,
    spans: Vec<Span>,
    access: Vec<Access>,
    partial_bases: Vec<u32>,
    pub(super) partial_count: u32,
    /// Each batch's first entry in the per-tensor sums' partials (one per chunk), and their
    /// number.
    sums_bases: Vec<u32>,
    sums_count: u32,
    /// Each tensor's factors, where its state is factored.
    factors: Vec<Option<Factors>>,
    /// Each tensor's factor of the learning rate (the segment tables' `lr_ratio`).
    lr_ratios: Vec<f32>,
}

/// Whether a tensor whose state was laid out for `meta`'s access can use vec4 access at these
/// ranges: its parameter at the same lane as before, and the rules of [`vec4_fits`].
fn access_at(meta: &TensorMeta, alignment: u64, r: &Ranges) -> Access {
    let (param, grad) = meta.types;
    if meta.state_access == Access::Vec4
        && r.1 / param.size() % 4 == meta.lane
        && vec4_fits(alignment, (&r.0, r.1, param), (&r.2, r.3, grad), meta.len)
    {
        Access::Vec4
    } else {
        Access::Scalar
    }
}

/// The batches of `ranges` over the fixed state of `tensors` and `blocks`.
pub(super) fn layout(
    ctx: &Context,
    tensors: &[TensorMeta],
    blocks: &[StateBlock],
    ranges: &[Ranges],
) -> Result<Planned> {
    let limits = ctx.limits();
    let plan_limits = plan_limits(limits);
    let mut keys: Vec<(Kernel, Binds, &wgpu::Buffer, &wgpu::Buffer)> = Vec::new();
    let mut spans = Vec::with_capacity(tensors.len());
    let mut access = Vec::with_capacity(tensors.len());
    for (meta, r) in tensors.iter().zip(ranges) {
        let a = access_at(meta, plan_limits.alignment, r);
        let grad = if r.0 == r.2 {
            GradAccess::Shared
        } else {
            GradAccess::ReadOnly
        };
        let binds = Binds {
            access: a,
            grad,
            param_type: meta.types.0,
            grad_type: meta.types.1,
            state_type: meta.state_type,
            master: meta.master,
            stochastic: meta.stochastic,
            f16_path: if [meta.types.0, meta.types.1, meta.state_type].contains(&DType::F16) {
                ctx.f16_path_taken()
            } else {
                F16Path::Packed
            },
        };
        let k = (meta.kernel, binds, &r.0, &r.2);
        let key = keys.iter().position(|x| *x == k).unwrap_or_else(|| {
            keys.push(k);
            keys.len() - 1
        });
        spans.push(Span {
            key,
            param_offset: r.1,
            grad_offset: r.3,
            lanes: a.lanes(),
            sizes: (meta.types.0.size(), meta.types.1.size()),
        });
        access.push(a);
    }
    let state: Vec<plan::StatePiece> = tensors.iter().flat_map(|t| t.pieces.clone()).collect();
    let block_plans: Vec<plan::Block> = blocks.iter().map(|b| b.plan).collect();
    let mut plans = plan::plan(&spans, &state, &block_plans, &plan_limits);
    for p in &mut plans {
        let k = keys[p.key];
        plan::widen(p, (k.2.size(), k.3.size()), &plan_limits);
    }
    let max_x = limits.max_compute_workgroups_per_dimension.max(1);
    let mut partial_count: u32 = 0;
    let mut partial_bases = Vec::with_capacity(plans.len());
    let mut sums_count: u32 = 0;
    let mut sums_bases = Vec::with_capacity(plans.len());
    let too_many = || Error::Input("more workgroups in one step than fit 32-bit indices".into());
    for p in &plans {
        if dispatch_size(step_workgroups(p), max_x).1 > max_x {
            return Err(Error::Unsupported(format!(
                "a dispatch of {} workgroups (max_compute_workgroups_per_dimension is {max_x})",
                p.workgroups
            )));
        }
        partial_bases.push(partial_count);
        partial_count = partial_count
            .checked_add(reduce_workgroups(p))
            .ok_or_else(too_many)?;
        sums_bases.push(sums_count);
        sums_count = sums_count.checked_add(p.workgroups).ok_or_else(too_many)?;
    }
    Ok(Planned {
        keys: plans
            .iter()
            .map(|p| (keys[p.key].0, keys[p.key].1))
            .collect(),
        plans,
        spans,
        access,
        partial_bases,
        partial_count,
        sums_bases,
        sums_count,
        factors: tensors.iter().map(|t| t.factors).collect(),
        lr_ratios: tensors.iter().map(|t| t.lr_ratio).collect(),
    })
}

/// The map `combine_sums` reads (shaders/sums.wgsl): (tensors, `dispatch_x`), then each
/// tensor's (first, count) of ranges, then the ranges `[start, end)` of the sums' partials
/// that hold its chunks, over every batch.
fn sums_map(layout: &Planned, dispatch_x: u32) -> Vec<[u32; 2]> {
    let tensors = layout.spans.len();
    let mut ranges: Vec<Vec<[u32; 2]>> = vec![Vec::new(); tensors];
    for (p, &base) in layout.plans.iter().zip(&layout.sums_bases) {
        for (i, piece) in p.pieces.iter().enumerate() {
            let end = p
                .pieces
                .get(i + 1)
                .map_or(p.workgroups, |n| n.first_workgroup);
            ranges[piece.tensor].push([base + piece.first_workgroup, base + end]);
        }
    }
    let mut out = vec![[tensors as u32, dispatch_x]];
    let mut at = 1 + tensors as u32;
    for r in &ranges {
        out.push([at, r.len() as u32]);
        at += r.len() as u32;
    }
    out.extend(ranges.into_iter().flatten());
    out
}

/// The limits plans respect on a device with `limits`.
pub(super) fn plan_limits(limits: &wgpu::Limits) -> PlanLimits {
    PlanLimits {
        max_binding: plan::max_window(
            limits.max_storage_buffer_binding_size,
            limits.max_buffer_size,
        ),
        alignment: u64::from(limits.min_storage_buffer_offset_alignment).max(4),
    }
}

/// The optimizer's parts that making a [`Bound`] needs.
pub(super) struct Parts<'a> {
    pub(super) ctx: &'a Context,
    pub(super) blocks: &'a [StateBlock],
    pub(super) ring: &'a Ring,
    pub(super) buffers: &'a Buffers,
    pub(super) groups: &'a mut BindGroups,
    pub(super) generation: u64,
    pub(super) tick: u64,
}

impl Parts<'_> {
    /// Creates what `layout` needs on the GPU, with kernels for the step flags `bits` and,
    /// when `reduce`, the reduction.
    pub(super) fn realize(
        &mut self,
        layout: Planned,
        ranges: Vec<Ranges>,
        bits: u32,
        reduce: bool,
    ) -> Result<Bound> {
        let ctx = self.ctx;
        let device = ctx.device();
        let limits = ctx.limits();
        let max_x = limits.max_compute_workgroups_per_dimension.max(1);
        let uniform_align = u64::from(limits.min_uniform_buffer_offset_alignment).max(16);
        let table_stride = round_up(TABLE_SIZE, uniform_align);
        if table_stride * layout.plans.len().saturating_sub(1) as u64 > u64::from(u32::MAX) {
            return Err(Error::Unsupported(format!(
                "{} dispatches in one step: their segment tables would pass 4 GiB",
                layout.plans.len()
            )));
        }
        let mut contents = vec![0u8; (table_stride * layout.plans.len().max(1) as u64) as usize];
        for (b, p) in layout.plans.iter().enumerate() {
            let x = dispatch_size(step_workgroups(p), max_x).0;
            let reduce_x = dispatch_size(reduce_workgroups(p), max_x).0;
            let sums_x = dispatch_size(p.workgroups, max_x).0;
            let bytes = segment_table(
                p,
                &layout.spans,
                &layout.lr_ratios,
                (x, reduce_x, sums_x),
                (layout.partial_bases[b], layout.sums_bases[b]),
            );
            let at = b * table_stride as usize;
            contents[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        let kernels = layout
            .plans
            .iter()
            .zip(&layout.keys)
            .map(|(p, k)| self.kernels(*k, p.pieces.len(), bits, reduce))
            .collect::<Result<Vec<_>>>()?;
        // The kernel of the most rounds combines every tensor's sums: groups may differ in
        // their switches (ADOPT's `cautious`, Lamb's `adanorm`).
        let sums = match layout
            .keys
            .iter()
            .map(|k| k.0)
            .max_by_key(Kernel::sums_rounds)
        {
            Some(kernel) if kernel.sums() => Some(self.sums_pass(&layout, kernel)?),
            _ => None,
        };
        let table_layout = ctx.layout(Layout::Table);
        let table = scoped(device, || {
            let buffer = wgpu::util::DeviceExt::create_buffer_init(
                device,
                &wgpu::util::BufferInitDescriptor {
                    label: Some("wgpu-optim segment tables"),
                    contents: &contents,
                    usage: wgpu::BufferUsages::UNIFORM,
                },
            );
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("wgpu-optim segment tables"),
                layout: &table_layout,
                entries: &entries(&[wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &buffer,
                    offset: 0,
                    size: wgpu::BufferSize::new(TABLE_SIZE),
                })]),
            })
        })?;
        let mut dispatches = Vec::with_capacity(layout.plans.len());
        for (b, (p, ((kernel, edge_kernel), reduce_kernel, sums_kernels, apply))) in
            layout.plans.iter().zip(kernels).enumerate()
        {
            let (kernel_id, binds) = layout.keys[b];
            let r = &ranges[p.pieces[0].tensor];
            let param = (r.0.clone(), p.param_window);
            let grad = (r.2.clone(), p.grad_window);
            let group = self.step_group(&kernel, param, grad.clone(), p.block, binds)?;
            let reduce_group = match &reduce_kernel {
                Some(k) => Some(self.reduce_group(k, grad.clone(), binds)?),
                None => None,
            };
            let factors = if kernel_id.factored() {
                Some(self.factor_dispatch(&layout, p, layout.keys[b], bits)?)
            } else {
                None
            };
            dispatches.push(Dispatch {
                kernel,
                edge_kernel,
                reduce_kernel,
                group,
                reduce_group,
                grad,
                table_offset: (b as u64 * table_stride) as u32,
                kernel_id,
                binds,
                pieces: p.pieces.len(),
                dispatch: dispatch_size(step_workgroups(p), max_x),
                reduce_dispatch: dispatch_size(reduce_workgroups(p), max_x),
                edge_workgroups: if has_edges(p, &layout.spans) {
                    (2 * p.pieces.len() as u32).div_ceil(WORKGROUP_SIZE)
                } else {
                    0
                },
                sums_kernels,
                sums_dispatch: dispatch_size(p.workgroups, max_x),
                factors,
                apply,
            });
        }
        Ok(Bound {
            ranges,
            access: layout.access,
            dispatches,
            table,
            partial_count: layout.partial_count,
            sums,
            bits,
            reduce_generation: reduce.then_some(self.generation),
            last_used: self.tick,
        })
    }

    /// A batch's step kernels for the flags `bits`, its reduction when `reduce`, its
    /// per-tensor sums' pass of each round the optimizer has, and the kernels of the second
    /// phase of a step in two.
    #[allow(clippy::type_complexity)]
    fn kernels(
        &self,
        (kernel, binds): (Kernel, Binds),
        pieces: usize,
        bits: u32,
        reduce: bool,
    ) -> Result<(
        StepKernels,
        Option<Arc<CompiledKernel>>,
        Vec<Arc<CompiledKernel>>,
        Option<StepKernels>,
    )> {
        let step = step_kernels(self.ctx, kernel, binds, pieces, bits)?;
        let apply = kernel
            .phased()
            .then(|| step_kernels(self.ctx, kernel.apply_phase(), binds, pieces, bits))
            .transpose()?;
        let reduce = reduce
            .then(|| {
                self.ctx
                    .kernel(Pipeline::Reduce(binds.access, binds.grad_type))
            })
            .transpose()?;
        let sums = (0..kernel.sums_rounds())
            .map(|round| self.ctx.kernel(Pipeline::Sums(kernel, binds, bits, round)))
            .collect::<Result<Vec<_>>>()?;
        Ok((step, reduce, sums, apply))
    }

    /// The passes over the factors of batch `p`, of a kernel of factored state.
    fn factor_dispatch(
        &self,
        layout: &Planned,
        p: &plan::Batch,
        (kernel, binds): (Kernel, Binds),
        bits: u32,
    ) -> Result<FactorDispatch> {
        let max_x = u64::from(
            self.ctx
                .limits()
                .max_compute_workgroups_per_dimension
                .max(1),
        );
        let (mut lines, mut means) = (1, 1);
        for piece in &p.pieces {
            if let Some(f) = layout.factors[piece.tensor] {
                let (l, m) = f.quads();
                lines = lines.max(l);
                means = means.max(m);
            }
        }
        let grid = |quads: u64| {
            let x = quads.clamp(1, MAX_FACTOR_WORKGROUPS.min(max_x));
            (x as u32, p.pieces.len() as u32)
        };
        let (lines_kernel, means_kernel) = self.factor_kernels((kernel, binds), bits)?;
        Ok(FactorDispatch {
            lines: lines_kernel,
            means: means_kernel,
            lines_dispatch: grid(lines),
            means_dispatch: grid(means),
        })
    }

    /// The two factor passes' kernels of a batch, for the step flags `bits`.
    fn factor_kernels(
        &self,
        (kernel, binds): (Kernel, Binds),
        bits: u32,
    ) -> Result<(Arc<CompiledKernel>, Arc<CompiledKernel>)> {
        let pipeline = |pass| {
            self.ctx
                .kernel(Pipeline::Factors(kernel, binds, bits, pass))
        };
        Ok((pipeline(FactorPass::Lines)?, pipeline(FactorPass::Means)?))
    }

    /// The partials, map and bind groups of `layout`'s per-tensor sums.
    fn sums_pass(&self, layout: &Planned, kernel: Kernel) -> Result<SumsPass> {
        let ctx = self.ctx;
        let device = ctx.device();
        let max_x = ctx.limits().max_compute_workgroups_per_dimension.max(1);
        let combine_dispatch = dispatch_size(layout.spans.len() as u32, max_x);
        let map = sums_map(layout, combine_dispatch.0);
        let combine = (0..kernel.sums_rounds())
            .map(|round| ctx.kernel(Pipeline::CombineSums(kernel, round)))
            .collect::<Result<Vec<_>>>()?;
        let out_layout = ctx.layout(Layout::SumsOut);
        let derived = &self.buffers.derived;
        scoped(device, || {
            let partials = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-optim per-tensor sums"),
                size: 16 * u64::from(layout.sums_count.max(1)),
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            let map = wgpu::util::DeviceExt::create_buffer_init(
                device,
                &wgpu::util::BufferInitDescriptor {
                    label: Some("wgpu-optim per-tensor sums map"),
                    contents: bytemuck::cast_slice(&map),
                    usage: wgpu::BufferUsages::STORAGE,
                },
            );
            let out_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("wgpu-optim per-tensor sums"),
                layout: &out_layout,
                entries: &entries(&[partials.as_entire_binding()]),
            });
            let combine_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("wgpu-optim combine sums"),
                layout: &ctx.layout(Layout::CombineSums),
                entries: &entries(&[
                    derived.as_entire_binding(),
                    partials.as_entire_binding(),
                    map.as_entire_binding(),
                    self.buffers.control.as_entire_binding(),
                ]),
            });
            SumsPass {
                out_group,
                combine: combine.clone(),
                combine_group,
                combine_dispatch,
            }
        })
    }

    fn step_group(
        &mut self,
        kernel: &CompiledKernel,
        param: (wgpu::Buffer, (u64, u64)),
        grad: (wgpu::Buffer, (u64, u64)),
        block: usize,
        binds: Binds,
    ) -> Result<wgpu::BindGroup> {
        let key = GroupKey::Step {
            param: param.clone(),
            grad: grad.clone(),
            block,
            binds,
        };
        let device = self.ctx.device();
        let block = &self.blocks[block];
        let derived = &self.buffers.derived;
        self.groups.get(key, self.tick, || {
            let mut bound = vec![
                derived.as_entire_binding(),
                wgpu::BindingResource::Buffer(window(&param.0, param.1)),
                wgpu::BindingResource::Buffer(window(&grad.0, grad.1)),
                block.buffer.as_entire_binding(),
            ];
            // A block holds tensors that keep master weights or none (its key), so its master
            // buffer is there exactly when `binds.master` asks for it.
            bound.extend(block.master.iter().map(|m| m.as_entire_binding()));
            scoped(device, || {
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("wgpu-optim batch"),
                    layout: &kernel.layout,
                    entries: &entries(&bound),
                })
            })
        })
    }

    fn reduce_group(
        &mut self,
        kernel: &CompiledKernel,
        grad: (wgpu::Buffer, (u64, u64)),
        binds: Binds,
    ) -> Result<wgpu::BindGroup> {
        // The reduction's layout depends on the access mode and the gradients' type alone.
        let binds = Binds {
            grad_type: binds.grad_type,
            ..Binds::f32(binds.access, GradAccess::ReadOnly)
        };
        let key = GroupKey::Reduce {
            grad: grad.clone(),
            binds,
            generation: self.generation,
        };
        let device = self.ctx.device();
        let (ring, buffers) = (self.ring, self.buffers);
        self.groups.get(key, self.tick, || {
            scoped(device, || {
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("wgpu-optim reduce"),
                    layout: &kernel.layout,
                    entries: &entries(&[
                        wgpu::BindingResource::Buffer(window(&grad.0, grad.1)),
                        ring.slot_binding(),
                        buffers.control.as_entire_binding(),
                        buffers.partials.as_entire_binding(),
                    ]),
                })
            })
        })
    }

    /// Brings `bound`'s kernels to the step flags `bits` and its reduction bind groups to the
    /// current ring and partials. On error `bound` is unchanged.
    pub(super) fn refresh(&mut self, bound: &mut Bound, bits: u32, reduce: bool) -> Result<()> {
        let generation = reduce.then_some(self.generation);
        if bound.bits == bits && bound.reduce_generation == generation {
            return Ok(());
        }
        let mut fresh = Vec::with_capacity(bound.dispatches.len());
        for d in &bound.dispatches {
            let ((kernel, edge), reduce_kernel, sums_kernels, apply) =
                self.kernels((d.kernel_id, d.binds), d.pieces, bits, reduce)?;
            let group = match &reduce_kernel {
                Some(k) => Some(self.reduce_group(k, d.grad.clone(), d.binds)?),
                None => None,
            };
            let factors = match d.factors {
                Some(_) => Some(self.factor_kernels((d.kernel_id, d.binds), bits)?),
                None => None,
            };
            fresh.push((
                kernel,
                edge,
                reduce_kernel,
                group,
                sums_kernels,
                factors,
                apply,
            ));
        }
        for (d, (kernel, edge, reduce_kernel, group, sums_kernels, factors, apply)) in
            bound.dispatches.iter_mut().zip(fresh)
        {
            d.apply = apply;
            d.kernel = kernel;
            d.edge_kernel = edge;
            d.reduce_kernel = reduce_kernel;
            d.reduce_group = group;
            d.sums_kernels = sums_kernels;
            if let (Some(f), Some((lines, means))) = (&mut d.factors, factors) {
                (f.lines, f.means) = (lines, means);
            }
        }
        bound.bits = bits;
        bound.reduce_generation = generation;
        Ok(())
    }
}

impl Optimizer {
    /// The parts of this optimizer that making and refreshing a [`Bound`] needs, and its
    /// current one.
    pub(super) fn parts(&mut self) -> (Parts<'_>, &mut Bound) {
        self.tick += 1;
        (
            Parts {
                ctx: &self.ctx,
                blocks: &self.blocks,
                ring: &self.ring,
                buffers: &self.buffers,
                groups: &mut self.bind_groups,
                generation: self.generation,
                tick: self.tick,
            },
            &mut self.bound,
        )
    }

    /// Moves the tensors: the following steps read tensor `i`'s gradient from `grads[i]` and,
    /// when `params` is given, update its parameter at `params[i]` (tensors numbered over all
    /// groups in order; lengths as when built). Steps recorded before keep the ranges they
    /// were recorded with.
    ///
    /// For engines whose memory pool hands out new gradient buffers every step: ranges seen
    /// before (the [`LAYOUT_CACHE`] most recently used sets) cost a comparison; new ones cost a
    /// plan on the host, one small buffer of segment tables, and one bind group per batch whose
    /// buffers no cached bind group binds ([`BIND_GROUP_CACHE`] of them, cached by buffer
    /// identity). Tensors whose ranges share buffers share dispatches. Cached sets and bind
    /// groups hold their buffers (wgpu buffers are reference counted) until they are evicted. The state,
    /// step counts and everything else stay as they are. The same checks as at construction
    /// apply; on error nothing changes.
    pub fn rebind(
        &mut self,
        grads: &[BufferRange<'_>],
        params: Option<&[BufferRange<'_>]>,
    ) -> Result<()> {
        let n = self.tensors.len();
        let counts = [Some(grads.len()), params.map(<[_]>::len)];
        if let Some(found) = counts.into_iter().flatten().find(|&c| c != n) {
            return Err(Error::Input(format!(
                "rebind got {found} ranges for an optimizer of {n} tensors"
            )));
        }
        let param_at = |i: usize| -> BufferRange<'_> {
            match params {
                Some(p) => p[i],
                None => {
                    let r = &self.bound.ranges[i];
                    BufferRange::new(&r.0, r.1, self.tensors[i].len)
                        .with_dtype(self.tensors[i].types.0)
                }
            }
        };
        let same = |r: &Ranges, p: &BufferRange<'_>, g: &BufferRange<'_>, len: u64| {
            r.0 == *p.buffer
                && r.1 == p.offset
                && r.2 == *g.buffer
                && r.3 == g.offset
                && p.len == len
                && g.len == len
        };
        let typed = |i: usize| (param_at(i).dtype, grads[i].dtype) == self.tensors[i].types;
        let matches = |b: &Bound| {
            (0..n).all(|i| {
                typed(i) && same(&b.ranges[i], &param_at(i), &grads[i], self.tensors[i].len)
            })
        };
        if matches(&self.bound) {
            return Ok(());
        }
        if let Some(hit) = self.cache.iter().position(matches) {
            let mut bound = self.cache.swap_remove(hit);
            let bits = self.step_flags(self.clip, self.scaler);
            let reduce = super::reduces(bits);
            let (mut parts, _) = self.parts();
            if let Err(e) = parts.refresh(&mut bound, bits, reduce) {
                self.cache.push(bound);
                return Err(e);
            }
            self.activate(bound);
            return Ok(());
        }
        let tensors: Vec<Tensor<'_>> = (0..n).map(|i| Tensor::new(param_at(i), grads[i])).collect();
        for (i, t) in tensors.iter().enumerate() {
            let (param, grad) = self.tensors[i].types;
            for (role, range, dtype) in [("parameter", t.param, param), ("gradient", t.grad, grad)]
            {
                if range.dtype != dtype {
                    return Err(Error::Input(format!(
                        "rebind: tensor {i}'s {role} range is {}; the tensor's {role}s are {dtype}",
                        range.dtype
                    )));
                }
            }
            check_range(i, "parameter", &t.param)?;
            check_range(i, "gradient", &t.grad)?;
            for (role, len) in [("parameter", t.param.len), ("gradient", t.grad.len)] {
                if len != self.tensors[i].len {
                    return Err(Error::Input(format!(
                        "rebind: tensor {i}'s {role} range has {len} elements; the tensor has {}",
                        self.tensors[i].len
                    )));
                }
            }
        }
        check_overlaps(&tensors)?;
        let ranges: Vec<Ranges> = tensors
            .iter()
            .map(|t| {
                (
                    t.param.buffer.clone(),
                    t.param.offset,
                    t.grad.buffer.clone(),
                    t.grad.offset,
                )
            })
            .collect();
        drop(tensors);
        let layout = layout(&self.ctx, &self.tensors, &self.blocks, &ranges)?;
        if layout.partial_count > self.partial_capacity {
            self.grow_partials(layout.partial_count)?;
        }
        let bits = self.step_flags(self.clip, self.scaler);
        let reduce = super::reduces(bits);
        let (mut parts, _) = self.parts();
        let bound = parts.realize(layout, ranges, bits, reduce)?;
        self.activate(bound);
        Ok(())
    }

    /// Makes `bound` current, caching the one it replaces.
    fn activate(&mut self, mut bound: Bound) {
        bound.last_used = self.tick;
        for (meta, r) in self.tensors.iter_mut().zip(&bound.ranges) {
            meta.param = r.0.clone();
            meta.param_offset = r.1;
        }
        let old = std::mem::replace(&mut self.bound, bound);
        if self.cache.len() >= LAYOUT_CACHE
            && let Some(oldest) = (0..self.cache.len()).min_by_key(|&i| self.cache[i].last_used)
        {
            self.cache.swap_remove(oldest);
        }
        self.cache.push(old);
    }

    /// Sets of ranges cached besides the current one, and bind groups cached (for tests and
    /// benchmarks of [`rebind`](Self::rebind)).
    pub fn cached_bindings(&self) -> (usize, usize) {
        (self.cache.len(), self.bind_groups.len())
    }
}
