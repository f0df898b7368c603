//! The GPU optimizer: tensors in parameter groups, state buffers, and step recording.

use crate::error::{Error, Result};
use crate::gpu::plan::{self, PlanLimits, Span};
use crate::gpu::{Access, CompiledKernel, Context, scoped};
use crate::optim::{Kernel, OptimizerConfig};
use crate::state::TensorState;
use std::collections::HashMap;
use std::sync::Arc;

/// How many steps of one optimizer may be recorded before the command buffers holding them are
/// submitted. Per-step uniform values go to a ring of this many slots.
pub const MAX_STEPS_PER_SUBMIT: u64 = 8;

/// A range of f32 elements in a caller-owned buffer: byte `offset` (a multiple of 4) and `len`
/// elements.
#[derive(Clone, Copy, Debug)]
pub struct BufferRange<'a> {
    /// The buffer. It needs `STORAGE` usage.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of the first element; a multiple of 4.
    pub offset: u64,
    /// Number of f32 elements.
    pub len: u64,
}

impl<'a> BufferRange<'a> {
    /// `len` elements starting at byte `offset`.
    pub fn new(buffer: &'a wgpu::Buffer, offset: u64, len: u64) -> Self {
        Self {
            buffer,
            offset,
            len,
        }
    }

    /// The whole buffer, as `size / 4` elements.
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Self {
            buffer,
            offset: 0,
            len: buffer.size() / 4,
        }
    }
}

/// One parameter tensor: where its values and its gradient live.
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'a> {
    /// The parameter values, updated in place.
    pub param: BufferRange<'a>,
    /// The gradient, only read.
    pub grad: BufferRange<'a>,
}

impl<'a> Tensor<'a> {
    /// A tensor from its parameter and gradient ranges.
    pub fn new(param: BufferRange<'a>, grad: BufferRange<'a>) -> Self {
        Self { param, grad }
    }
}

/// A parameter group, as in PyTorch's `param_groups`: tensors sharing one set of
/// hyperparameters.
#[derive(Clone, Debug)]
pub struct ParamGroup<'a> {
    /// The group's hyperparameters. All groups of an optimizer name the same optimizer type.
    pub config: OptimizerConfig,
    /// The group's tensors.
    pub tensors: Vec<Tensor<'a>>,
}

impl<'a> ParamGroup<'a> {
    /// A group from a configuration and its tensors.
    pub fn new(config: impl Into<OptimizerConfig>, tensors: Vec<Tensor<'a>>) -> Self {
        Self {
            config: config.into(),
            tensors,
        }
    }
}

/// A copy of an optimizer's parameters and state, on the GPU. See [`Optimizer::snapshot`].
pub struct Snapshot {
    params: wgpu::Buffer,
    states: Vec<Vec<wgpu::Buffer>>,
    steps: Vec<(u64, bool)>,
    groups: Vec<OptimizerConfig>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("tensors", &self.steps.len())
            .finish()
    }
}

struct TensorMeta {
    group: usize,
    len: u64,
    /// The caller's parameter buffer and the byte offset of this tensor in it.
    param: wgpu::Buffer,
    param_offset: u64,
    step: u64,
    /// How the kernel reads and writes this tensor.
    access: Access,
    /// False until the first step or a loaded state: SGD's "momentum buffer is None".
    initialized: bool,
    /// `(batch, piece)` indices covering the tensor in order.
    pieces: Vec<(usize, usize)>,
}

struct Batch {
    kernel: Arc<CompiledKernel>,
    bind_group: wgpu::BindGroup,
    state: Vec<wgpu::Buffer>,
    plan: plan::Batch,
    /// Byte offset of this batch's uniform records inside one ring slot.
    hyper_offset: u64,
    stride: u64,
    dispatch: (u32, u32),
}

/// A fused GPU optimizer over many tensors in parameter groups.
///
/// Build it once with the engine's buffers; each [`step`](Self::step) then records a few
/// dispatches into the caller's encoder: one per batch of tensors sharing a kernel, an
/// [`Access`] mode, a parameter buffer and a gradient buffer (more only when a batch outgrows a
/// binding or holds more than 256 tensors). Engines that keep parameters in one buffer and gradients in another get one
/// dispatch per step, whatever the tensor count. Nothing is allocated, compiled or read back
/// per step; per-step values (learning rate, bias corrections) are uploaded with
/// [`wgpu::Queue::write_buffer`], which lands before the next submit.
///
/// At most [`MAX_STEPS_PER_SUBMIT`] steps may be recorded before they are submitted.
pub struct Optimizer {
    ctx: Context,
    groups: Vec<OptimizerConfig>,
    tensors: Vec<TensorMeta>,
    batches: Vec<Batch>,
    hyper: wgpu::Buffer,
    ring_stride: u64,
    ring_pos: u64,
    host_hyper: Vec<u8>,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("groups", &self.groups)
            .field("tensors", &self.tensors.len())
            .field("dispatches", &self.batches.len())
            .finish()
    }
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

fn check_range(tensor: usize, role: &'static str, r: &BufferRange<'_>) -> Result<()> {
    if !r.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(Error::MissingUsage {
            tensor,
            role,
            usage: "STORAGE",
        });
    }
    let fits = r.offset.is_multiple_of(4)
        && r.len
            .checked_mul(4)
            .and_then(|b| b.checked_add(r.offset))
            .is_some_and(|end| end <= r.buffer.size());
    if !fits {
        return Err(Error::OutOfRange {
            tensor,
            role,
            offset: r.offset,
            len: r.len,
            buffer_size: r.buffer.size(),
        });
    }
    Ok(())
}

/// Rejects parameter ranges that overlap any other parameter or gradient range.
fn check_overlaps(tensors: &[Tensor<'_>]) -> Result<()> {
    // wgpu::Buffer hashes by its id, which its interior mutability never changes.
    #[allow(clippy::mutable_key_type)]
    let mut by_buffer: HashMap<&wgpu::Buffer, Vec<(u64, u64, usize, bool)>> = HashMap::new();
    for (i, t) in tensors.iter().enumerate() {
        for (r, is_param) in [(&t.param, true), (&t.grad, false)] {
            if r.len > 0 {
                let list = by_buffer.entry(r.buffer).or_default();
                list.push((r.offset, r.offset + 4 * r.len, i, is_param));
            }
        }
    }
    for list in by_buffer.values_mut() {
        list.sort_unstable();
        // Furthest end so far of any range and of parameter ranges, with their owners.
        let mut any: Option<(u64, usize, bool)> = None;
        let mut params: Option<(u64, usize)> = None;
        for &(start, end, i, is_param) in list.iter() {
            let clash = if is_param {
                any.filter(|a| a.0 > start).map(|a| (a.1, a.2))
            } else {
                params.filter(|p| p.0 > start).map(|p| (p.1, true))
            };
            if let Some((j, other_is_param)) = clash {
                let what = if is_param && other_is_param {
                    "two parameter ranges"
                } else {
                    "a parameter range and a gradient range"
                };
                return Err(Error::Overlap {
                    first: j.min(i),
                    second: j.max(i),
                    what,
                });
            }
            if any.is_none_or(|a| end > a.0) {
                any = Some((end, i, is_param));
            }
            if is_param && params.is_none_or(|p| end > p.0) {
                params = Some((end, i));
            }
        }
    }
    Ok(())
}

impl Optimizer {
    /// An optimizer with one parameter group.
    pub fn new(
        ctx: &Context,
        config: impl Into<OptimizerConfig>,
        tensors: &[Tensor<'_>],
    ) -> Result<Self> {
        Self::with_groups(ctx, &[ParamGroup::new(config, tensors.to_vec())])
    }

    /// An optimizer with several parameter groups, each with its own hyperparameters, as
    /// `torch.optim.Adam([{"params": ..., "lr": ...}, ...])`.
    ///
    /// Checks everything first and returns an [`Error`] without allocating anything when a
    /// hyperparameter is invalid, a buffer lacks `STORAGE` usage, a range lies outside its
    /// buffer, lengths differ, written ranges overlap, or the device cannot run the kernel.
    pub fn with_groups(ctx: &Context, groups: &[ParamGroup<'_>]) -> Result<Self> {
        let Some(first) = groups.first() else {
            return Err(Error::Input("optimizer got an empty parameter list".into()));
        };
        for (g, group) in groups.iter().enumerate() {
            if group.config.type_name() != first.config.type_name() {
                return Err(Error::MixedOptimizers {
                    group: g,
                    expected: first.config.type_name(),
                    found: group.config.type_name(),
                });
            }
            group.config.validate()?;
        }
        let all: Vec<(usize, Tensor<'_>)> = groups
            .iter()
            .enumerate()
            .flat_map(|(g, group)| group.tensors.iter().map(move |t| (g, *t)))
            .collect();
        if all.is_empty() {
            return Err(Error::Input("optimizer got an empty parameter list".into()));
        }
        for (i, (_, t)) in all.iter().enumerate() {
            check_range(i, "parameter", &t.param)?;
            check_range(i, "gradient", &t.grad)?;
            if t.param.len != t.grad.len {
                return Err(Error::LengthMismatch {
                    tensor: i,
                    param_len: t.param.len,
                    grad_len: t.grad.len,
                });
            }
        }
        let tensors: Vec<Tensor<'_>> = all.iter().map(|(_, t)| *t).collect();
        check_overlaps(&tensors)?;

        let limits = ctx.limits();
        let alignment = u64::from(limits.min_storage_buffer_offset_alignment).max(4);
        // Batch keys: kernel, access mode, parameter buffer, gradient buffer.
        let mut keys: Vec<(Kernel, Access, &wgpu::Buffer, &wgpu::Buffer)> = Vec::new();
        let mut spans = Vec::with_capacity(all.len());
        for (g, t) in &all {
            let access = access_for(ctx.access(), alignment, t);
            let k = (
                groups[*g].config.kernel(),
                access,
                t.param.buffer,
                t.grad.buffer,
            );
            let key = keys.iter().position(|x| *x == k).unwrap_or_else(|| {
                keys.push(k);
                keys.len() - 1
            });
            spans.push(Span {
                key,
                param_offset: t.param.offset,
                grad_offset: t.grad.offset,
                len: t.param.len,
                lanes: access.lanes(),
            });
        }
        let compiled: Vec<Arc<CompiledKernel>> = keys
            .iter()
            .map(|k| ctx.kernel(k.0, k.1))
            .collect::<Result<_>>()?;

        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            / 16
            * 16;
        if max_binding < 2 * alignment + 4 {
            return Err(Error::Unsupported(format!(
                "storage bindings of {max_binding} bytes (max_storage_buffer_binding_size)"
            )));
        }
        let plans = plan::plan(
            &spans,
            &PlanLimits {
                max_binding,
                alignment,
                max_state: max_binding / 4,
            },
        );

        let uniform_align = u64::from(limits.min_uniform_buffer_offset_alignment).max(16);
        let mut hyper_offsets = Vec::with_capacity(plans.len());
        let mut ring_stride = 0;
        for p in &plans {
            hyper_offsets.push(ring_stride);
            ring_stride += round_up(
                p.slots.len() as u64 * keys[p.key].0.uniform_size(),
                uniform_align,
            );
        }
        let ring_stride = ring_stride.max(uniform_align);
        let max_hyper_binding = Kernel::ALL
            .iter()
            .map(|k| k.uniform_size())
            .max()
            .unwrap_or(0)
            * crate::gpu::MAX_SEGMENTS as u64;
        let table_stride = round_up(crate::gpu::TABLE_SIZE, uniform_align);
        let max_x = limits.max_compute_workgroups_per_dimension.max(1);

        let device = ctx.device();
        let (table, hyper, states) = scoped(device, || {
            let mut contents = vec![0u8; (table_stride * plans.len() as u64) as usize];
            for (b, p) in plans.iter().enumerate() {
                let (x, _) = dispatch_size(p.workgroups, max_x);
                let bytes = segment_table(p, &spans, x);
                let at = b * table_stride as usize;
                contents[at..at + bytes.len()].copy_from_slice(&bytes);
            }
            let table = wgpu::util::DeviceExt::create_buffer_init(
                device,
                &wgpu::util::BufferInitDescriptor {
                    label: Some("wgpu-optim segment tables"),
                    contents: &contents,
                    usage: wgpu::BufferUsages::UNIFORM,
                },
            );
            let hyper = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-optim hyperparameters"),
                size: MAX_STEPS_PER_SUBMIT * ring_stride + max_hyper_binding,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let states: Vec<Vec<wgpu::Buffer>> = plans
                .iter()
                .map(|p| {
                    let kernel = keys[p.key].0;
                    kernel
                        .state_names()
                        .iter()
                        .map(|name| state_buffer(device, groups, &all, p, name))
                        .collect()
                })
                .collect();
            (table, hyper, states)
        })?;
        let mut batches = Vec::with_capacity(plans.len());
        scoped(device, || {
            for ((b, p), state) in plans.into_iter().enumerate().zip(states) {
                let (param_buffer, grad_buffer) = (keys[p.key].2, keys[p.key].3);
                let kernel = compiled[p.key].clone();
                let stride = keys[p.key].0.uniform_size();
                let mut bindings = vec![
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &table,
                        offset: b as u64 * table_stride,
                        size: wgpu::BufferSize::new(crate::gpu::TABLE_SIZE),
                    }),
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &hyper,
                        offset: hyper_offsets[b],
                        size: wgpu::BufferSize::new(stride * crate::gpu::MAX_SEGMENTS as u64),
                    }),
                    wgpu::BindingResource::Buffer(window(param_buffer, p.param_window)),
                    wgpu::BindingResource::Buffer(window(grad_buffer, p.grad_window)),
                ];
                bindings.extend(state.iter().map(|s| s.as_entire_binding()));
                let entries: Vec<wgpu::BindGroupEntry<'_>> = bindings
                    .into_iter()
                    .enumerate()
                    .map(|(i, resource)| wgpu::BindGroupEntry {
                        binding: i as u32,
                        resource,
                    })
                    .collect();
                let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("wgpu-optim batch"),
                    layout: &kernel.layout,
                    entries: &entries,
                });
                batches.push(Batch {
                    kernel,
                    bind_group,
                    state,
                    dispatch: dispatch_size(p.workgroups, max_x),
                    hyper_offset: hyper_offsets[b],
                    stride,
                    plan: p,
                });
            }
        })?;

        let mut metas: Vec<TensorMeta> = all
            .iter()
            .enumerate()
            .map(|(i, (g, t))| TensorMeta {
                group: *g,
                len: t.param.len,
                param: t.param.buffer.clone(),
                param_offset: t.param.offset,
                access: keys[spans[i].key].1,
                step: 0,
                initialized: false,
                pieces: Vec::new(),
            })
            .collect();
        for (b, batch) in batches.iter().enumerate() {
            for (i, piece) in batch.plan.pieces.iter().enumerate() {
                metas[piece.tensor].pieces.push((b, i));
            }
        }
        Ok(Self {
            ctx: ctx.clone(),
            groups: groups.iter().map(|g| g.config).collect(),
            tensors: metas,
            batches,
            hyper,
            ring_stride,
            ring_pos: 0,
            host_hyper: vec![0; ring_stride as usize],
        })
    }

    /// Records one optimizer step into `encoder`, in a compute pass of its own. Nothing is
    /// submitted, and nothing waits.
    pub fn step(&mut self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("wgpu-optim step"),
            timestamp_writes: None,
        });
        self.record(&mut pass);
    }

    /// Records one optimizer step into a compute pass the caller has begun.
    pub fn record(&mut self, pass: &mut wgpu::ComputePass<'_>) {
        for batch in &self.batches {
            for (slot, &t) in batch.plan.slots.iter().enumerate() {
                let meta = &self.tensors[t];
                let at = (batch.hyper_offset + slot as u64 * batch.stride) as usize;
                self.groups[meta.group].write_uniform(
                    meta.step + 1,
                    !meta.initialized,
                    &mut self.host_hyper[at..at + batch.stride as usize],
                );
            }
        }
        let offset = self.ring_pos * self.ring_stride;
        self.ctx
            .queue()
            .write_buffer(&self.hyper, offset, &self.host_hyper);
        let mut current: Option<&wgpu::ComputePipeline> = None;
        for batch in &self.batches {
            if current != Some(&batch.kernel.pipeline) {
                pass.set_pipeline(&batch.kernel.pipeline);
                current = Some(&batch.kernel.pipeline);
            }
            pass.set_bind_group(0, &batch.bind_group, &[offset as u32]);
            pass.dispatch_workgroups(batch.dispatch.0, batch.dispatch.1, 1);
        }
        for meta in &mut self.tensors {
            meta.step += 1;
            meta.initialized = true;
        }
        self.ring_pos = (self.ring_pos + 1) % MAX_STEPS_PER_SUBMIT;
    }

    /// Records one step in an encoder of its own and submits it. Does not wait.
    pub fn step_submit(&mut self) -> wgpu::SubmissionIndex {
        let mut encoder =
            self.ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("wgpu-optim step"),
                });
        self.step(&mut encoder);
        self.ctx.queue().submit([encoder.finish()])
    }

    /// The context this optimizer records on.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Dispatches each step records.
    pub fn dispatches_per_step(&self) -> usize {
        self.batches.len()
    }

    /// Number of tensors, over all groups.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// How the kernels access tensor `tensor` (numbered over all groups in order): the
    /// context's [`Access`], or [`Access::Scalar`] where the tensor cannot use vec4 access.
    pub fn tensor_access(&self, tensor: usize) -> Result<Access> {
        Ok(self.meta(tensor)?.access)
    }

    /// The hyperparameters of every group.
    pub fn groups(&self) -> &[OptimizerConfig] {
        &self.groups
    }

    /// Sets a group's learning rate for the following steps (what a scheduler does).
    pub fn set_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        self.update_group(group, |c| c.set_lr(lr))
    }

    /// Changes a group's hyperparameters for the following steps. The new values must pass
    /// PyTorch's checks, and must not change which state buffers exist (`amsgrad`, `centered`,
    /// or momentum between zero and non-zero). On error nothing changes.
    pub fn update_group(
        &mut self,
        group: usize,
        f: impl FnOnce(&mut OptimizerConfig),
    ) -> Result<()> {
        let count = self.groups.len();
        let old = *self.groups.get(group).ok_or(Error::NoSuchIndex {
            what: "group",
            index: group,
            count,
        })?;
        let mut new = old;
        f(&mut new);
        if new.type_name() != old.type_name() {
            return Err(Error::StructuralChange {
                group,
                what: "the optimizer type",
            });
        }
        if new.kernel() != old.kernel() {
            return Err(Error::StructuralChange {
                group,
                what: "the set of state buffers",
            });
        }
        new.validate()?;
        self.groups[group] = new;
        Ok(())
    }

    /// Takes the learning rate of every group from `scheduler` (see
    /// [`schedule`](crate::schedule)), and its momentum (SGD, RMSprop) or beta1 (Adam, AdamW)
    /// when the schedule cycles momentum. Call it before recording each step, and step the
    /// scheduler after. The scheduler must have one LR per group. Cycling momentum needs an
    /// optimizer that keeps it: Adagrad has none, and SGD or RMSprop built with momentum 0 have
    /// no momentum buffer. On error nothing changes.
    pub fn apply_schedule(&mut self, scheduler: &crate::schedule::Scheduler) -> Result<()> {
        let lrs = scheduler.lrs();
        if lrs.len() != self.groups.len() {
            return Err(Error::Input(format!(
                "the {} schedule has {} parameter groups but the optimizer has {}",
                scheduler.schedule(),
                lrs.len(),
                self.groups.len()
            )));
        }
        // Check every group first, so that an error changes nothing; then apply. No allocation:
        // this runs every step.
        let scheduled = |g: usize, config: &OptimizerConfig| -> Result<OptimizerConfig> {
            let new = config.scheduled(lrs[g], scheduler.momentum().map(|m| m[g]))?;
            if new.kernel() != config.kernel() {
                return Err(Error::StructuralChange {
                    group: g,
                    what: "momentum between zero and non-zero (build the optimizer with momentum to cycle it)",
                });
            }
            Ok(new)
        };
        for (g, config) in self.groups.iter().enumerate() {
            scheduled(g, config)?;
        }
        for (g, config) in self.groups.iter_mut().enumerate() {
            *config = scheduled(g, config)?;
        }
        Ok(())
    }

    fn meta(&self, tensor: usize) -> Result<&TensorMeta> {
        self.tensors.get(tensor).ok_or(Error::NoSuchIndex {
            what: "tensor",
            index: tensor,
            count: self.tensors.len(),
        })
    }

    /// PyTorch's names of the state buffers kept for `tensor`.
    pub fn state_names(&self, tensor: usize) -> Result<&'static [&'static str]> {
        Ok(self.groups[self.meta(tensor)?.group].state_names())
    }

    /// Steps taken by `tensor`.
    pub fn step_count(&self, tensor: usize) -> Result<u64> {
        Ok(self.meta(tensor)?.step)
    }

    /// Reads the state of `tensor` back from the GPU, after all submitted work. Blocks.
    pub fn read_state(&self, tensor: usize) -> Result<TensorState<f32>> {
        let meta = self.meta(tensor)?;
        let names = self.state_names(tensor)?;
        let mut ranges = Vec::new();
        for n in 0..names.len() {
            for &(b, p) in &meta.pieces {
                let piece = &self.batches[b].plan.pieces[p];
                ranges.push((&self.batches[b].state[n], piece.state_offset * 4, piece.len));
            }
        }
        let values = self.ctx.read_f32(&ranges)?;
        let len = meta.len as usize;
        Ok(TensorState {
            step: meta.step,
            buffers: names
                .iter()
                .enumerate()
                .map(|(n, name)| (name.to_string(), values[n * len..(n + 1) * len].to_vec()))
                .collect(),
        })
    }

    /// Replaces the state of `tensor`: its step count and every state buffer, under PyTorch's
    /// names. The buffers are written with [`wgpu::Queue::write_buffer`], so they take effect
    /// at the next submit. On error nothing changes.
    pub fn load_state(&mut self, tensor: usize, state: &TensorState<f32>) -> Result<()> {
        let meta = self.meta(tensor)?;
        let config = &self.groups[meta.group];
        let names = config.state_names();
        for (name, values) in &state.buffers {
            if !names.contains(&name.as_str()) {
                return Err(Error::UnknownState {
                    name: name.clone(),
                    optimizer: config.type_name(),
                    known: names.join(", "),
                });
            }
            if values.len() as u64 != meta.len {
                return Err(Error::StateLength {
                    name: name.clone(),
                    tensor,
                    expected: meta.len,
                    found: values.len() as u64,
                });
            }
        }
        if let Some(missing) = names.iter().find(|n| !state.buffers.contains_key(**n)) {
            return Err(Error::Input(format!(
                "state of tensor {tensor} lacks {missing:?}, which {} keeps",
                config.type_name()
            )));
        }
        for (n, name) in names.iter().enumerate() {
            let values = &state.buffers[*name];
            for &(b, p) in &meta.pieces {
                let piece = &self.batches[b].plan.pieces[p];
                let src = &values[piece.start as usize..(piece.start + piece.len) as usize];
                self.ctx.queue().write_buffer(
                    &self.batches[b].state[n],
                    piece.state_offset * 4,
                    bytemuck::cast_slice(src),
                );
            }
        }
        let meta = &mut self.tensors[tensor];
        meta.step = state.step;
        meta.initialized = true;
        Ok(())
    }

    /// Copies every parameter, every state buffer, the step counts and the group
    /// hyperparameters into GPU buffers of the snapshot's own, and submits the copies (without
    /// waiting). [`restore`](Self::restore) puts them back. The parameter buffers need
    /// `COPY_SRC` and `COPY_DST` usage.
    ///
    /// Used by the [LR finder](crate::lr_finder) to leave the model as it found it.
    pub fn snapshot(&self) -> Result<Snapshot> {
        for (i, meta) in self.tensors.iter().enumerate() {
            let needed = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
            if !meta.param.usage().contains(needed) {
                return Err(Error::MissingUsage {
                    tensor: i,
                    role: "parameter",
                    usage: "COPY_SRC | COPY_DST",
                });
            }
        }
        let device = self.ctx.device();
        let total: u64 = self.tensors.iter().map(|t| t.len).sum();
        let usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let (params, states) = scoped(device, || {
            let params = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-optim snapshot parameters"),
                size: (total * 4).max(4),
                usage,
                mapped_at_creation: false,
            });
            let states: Vec<Vec<wgpu::Buffer>> = self
                .batches
                .iter()
                .map(|b| {
                    b.state
                        .iter()
                        .map(|s| {
                            device.create_buffer(&wgpu::BufferDescriptor {
                                label: Some("wgpu-optim snapshot state"),
                                size: s.size(),
                                usage,
                                mapped_at_creation: false,
                            })
                        })
                        .collect()
                })
                .collect();
            (params, states)
        })?;
        let snapshot = Snapshot {
            params,
            states,
            steps: self
                .tensors
                .iter()
                .map(|t| (t.step, t.initialized))
                .collect(),
            groups: self.groups.clone(),
        };
        let mut encoder = device.create_command_encoder(&Default::default());
        self.copy_snapshot(&mut encoder, &snapshot, false);
        self.ctx.queue().submit([encoder.finish()]);
        Ok(snapshot)
    }

    /// Puts back what [`snapshot`](Self::snapshot) saved: parameters, state buffers, step
    /// counts and group hyperparameters. The copies are submitted before this returns.
    pub fn restore(&mut self, snapshot: &Snapshot) -> Result<()> {
        if snapshot.steps.len() != self.tensors.len() || snapshot.states.len() != self.batches.len()
        {
            return Err(Error::Input(
                "the snapshot was taken of another optimizer".into(),
            ));
        }
        let mut encoder = self
            .ctx
            .device()
            .create_command_encoder(&Default::default());
        self.copy_snapshot(&mut encoder, snapshot, true);
        self.ctx.queue().submit([encoder.finish()]);
        for (meta, &(step, initialized)) in self.tensors.iter_mut().zip(&snapshot.steps) {
            meta.step = step;
            meta.initialized = initialized;
        }
        self.groups.clone_from(&snapshot.groups);
        Ok(())
    }

    /// Records the copies between the live buffers and a snapshot's, in either direction.
    fn copy_snapshot(&self, encoder: &mut wgpu::CommandEncoder, snapshot: &Snapshot, back: bool) {
        let mut at = 0;
        for meta in &self.tensors {
            if meta.len > 0 {
                let (live, saved) = ((&meta.param, meta.param_offset), (&snapshot.params, at));
                let ((src, so), (dst, d)) = if back { (saved, live) } else { (live, saved) };
                encoder.copy_buffer_to_buffer(src, so, dst, d, meta.len * 4);
            }
            at += meta.len * 4;
        }
        for (batch, saved) in self.batches.iter().zip(&snapshot.states) {
            for (live, saved) in batch.state.iter().zip(saved) {
                let (src, dst) = if back { (saved, live) } else { (live, saved) };
                encoder.copy_buffer_to_buffer(src, 0, dst, 0, live.size());
            }
        }
    }
}

/// A binding of the byte range `[lo, hi)` of `buffer`.
fn window(buffer: &wgpu::Buffer, (lo, hi): (u64, u64)) -> wgpu::BufferBinding<'_> {
    wgpu::BufferBinding {
        buffer,
        offset: lo,
        size: wgpu::BufferSize::new(hi - lo),
    }
}

/// A 2-D grid of at least `workgroups` workgroups with x at most `max_x`.
fn dispatch_size(workgroups: u32, max_x: u32) -> (u32, u32) {
    let x = workgroups.clamp(1, max_x);
    (x, workgroups.div_ceil(x).max(1))
}

/// The access mode of one tensor: the context's, unless the tensor cannot use vec4 access
/// (see [`Access::Vec4`]).
fn access_for(preferred: Access, alignment: u64, t: &Tensor<'_>) -> Access {
    let fits = |r: &BufferRange<'_>| (r.offset + 4 * r.len).next_multiple_of(16) <= r.buffer.size();
    if preferred == Access::Vec4
        && alignment.is_multiple_of(16)
        && t.param.offset % 16 == t.grad.offset % 16
        && fits(&t.param)
        && fits(&t.grad)
    {
        Access::Vec4
    } else {
        Access::Scalar
    }
}

/// The bytes of one batch's `SegmentTable` (shaders/common.wgsl).
fn segment_table(p: &plan::Batch, spans: &[Span], dispatch_x: u32) -> Vec<u8> {
    let mut words: Vec<u32> = vec![p.pieces.len() as u32, p.workgroups, dispatch_x, 0];
    for piece in &p.pieces {
        let s = spans[piece.tensor];
        // Element offsets inside the windows; the plan puts the piece's first element at the
        // same lane of a unit in all three.
        let param = (s.param_offset + 4 * piece.start - p.param_window.0) / 4;
        let grad = (s.grad_offset + 4 * piece.start - p.grad_window.0) / 4;
        words.extend([
            (param / p.lanes) as u32,
            (grad / p.lanes) as u32,
            (piece.state_offset / p.lanes) as u32,
            piece.len as u32,
            piece.first_workgroup,
            piece.slot,
            (param % p.lanes) as u32,
            0,
        ]);
    }
    bytemuck::cast_slice(&words).to_vec()
}

/// One state buffer of a batch, filled with each piece's initial value.
fn state_buffer(
    device: &wgpu::Device,
    groups: &[ParamGroup<'_>],
    all: &[(usize, Tensor<'_>)],
    p: &plan::Batch,
    name: &str,
) -> wgpu::Buffer {
    let init = |t: usize| groups[all[t].0].config.initial_state_value(name);
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    if p.pieces.iter().all(|piece| init(piece.tensor) == 0.0) {
        // wgpu zero-initializes new buffers.
        return device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(name),
            size: (p.state_len * 4).max(4),
            usage,
            mapped_at_creation: false,
        });
    }
    let mut values = vec![0f32; p.state_len as usize];
    for piece in &p.pieces {
        let at = piece.state_offset as usize;
        values[at..at + piece.len as usize].fill(init(piece.tensor));
    }
    wgpu::util::DeviceExt::create_buffer_init(
        device,
        &wgpu::util::BufferInitDescriptor {
            label: Some(name),
            contents: bytemuck::cast_slice(&values),
            usage,
        },
    )
}
