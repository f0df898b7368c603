//! The GPU optimizer: tensors in parameter groups, state buffers, and step recording.

use crate::amp::{ClipGrad, GradScaler, GradScalerState, NormType, StepReport, split_f64};
use crate::dtype::{DType, Precision};
use crate::error::{Error, Result};
use crate::gpu::plan;
use crate::gpu::template::{
    COEFFS_STRIDE, CONTROL_HEADER, Factors, MAX_SCALARS, SCALAR_WORD, STEP_HEADER_SIZE, StepConfig,
    TENSOR_STEP_SIZE, flags,
};
use crate::gpu::{Access, Binds, CompiledKernel, Context, EDGES, Pipeline, SINGLE, scoped};
use crate::optim::{Kernel, OptimizerConfig};
use crate::state::TensorState;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

mod bind;
pub mod checkpoint;
mod products;
pub use bind::{BIND_GROUP_CACHE, LAYOUT_CACHE};

/// A range of elements in a caller-owned buffer: byte `offset` and `len` elements of type
/// `dtype` (f32 unless set with [`with_dtype`](Self::with_dtype)).
///
/// The offset is a multiple of the element size. A range of 16-bit elements must also lie,
/// rounded out to 4 bytes, inside its buffer: the kernels load and store them in 32-bit words,
/// and store only their own 16 bits of a word they share with a neighbour.
#[derive(Clone, Copy, Debug)]
pub struct BufferRange<'a> {
    /// The buffer. It needs `STORAGE` usage.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of the first element; a multiple of the element size.
    pub offset: u64,
    /// Number of elements.
    pub len: u64,
    /// The elements' type.
    pub dtype: DType,
}

impl<'a> BufferRange<'a> {
    /// `len` f32 elements starting at byte `offset`.
    pub fn new(buffer: &'a wgpu::Buffer, offset: u64, len: u64) -> Self {
        Self {
            buffer,
            offset,
            len,
            dtype: DType::F32,
        }
    }

    /// The whole buffer, as `size / 4` f32 elements.
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Self::new(buffer, 0, buffer.size() / 4)
    }

    /// The same range of elements of type `dtype` (the offset in bytes, the length in
    /// elements).
    pub fn with_dtype(self, dtype: DType) -> Self {
        Self { dtype, ..self }
    }

    /// The bytes the range spans.
    fn bytes(&self) -> Option<u64> {
        self.len.checked_mul(self.dtype.size())
    }
}

/// One parameter tensor: where its values and its gradient live, and optionally its name and
/// shape, which [checkpoints](crate::checkpoint) record.
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'a> {
    /// The parameter values, updated in place.
    pub param: BufferRange<'a>,
    /// The gradient, only read.
    pub grad: BufferRange<'a>,
    /// The tensor's name, as in `model.named_parameters()`; `param.<i>` when `None`, with `i`
    /// its index over all groups.
    pub name: Option<&'a str>,
    /// The tensor's shape; `[len]` when `None`. Its elements must multiply to the length.
    /// Checkpoints record it, and Adafactor factors the state of tensors of two dimensions or
    /// more: a matrix given without its shape gets a vector's update there.
    pub shape: Option<&'a [usize]>,
}

impl<'a> Tensor<'a> {
    /// A tensor from its parameter and gradient ranges.
    pub fn new(param: BufferRange<'a>, grad: BufferRange<'a>) -> Self {
        Self {
            param,
            grad,
            name: None,
            shape: None,
        }
    }

    /// This tensor under `name` (see [`Tensor::name`]).
    pub fn named(self, name: &'a str) -> Self {
        Self {
            name: Some(name),
            ..self
        }
    }

    /// This tensor with `shape` (see [`Tensor::shape`]).
    pub fn with_shape(self, shape: &'a [usize]) -> Self {
        Self {
            shape: Some(shape),
            ..self
        }
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
    /// The [`Optimizer::id`] of the optimizer it was taken of.
    optimizer: u64,
    params: wgpu::Buffer,
    states: Vec<wgpu::Buffer>,
    control: wgpu::Buffer,
    groups: Vec<OptimizerConfig>,
    train_mode: bool,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("optimizer", &self.optimizer)
            .field("groups", &self.groups.len())
            .finish()
    }
}

struct TensorMeta {
    group: usize,
    len: u64,
    /// The tensor's name: given, or `param.<index>`.
    name: String,
    /// The tensor's shape, when given.
    given_shape: Option<Vec<usize>>,
    /// The caller's parameter buffer and the byte offset of this tensor in it, now.
    param: wgpu::Buffer,
    param_offset: u64,
    /// The storage types of its parameter and its gradient, fixed for the optimizer's
    /// lifetime.
    types: (DType, DType),
    /// The storage type of its state.
    state_type: DType,
    /// Whether the optimizer keeps an f32 master copy of its (16-bit) parameter, in the master
    /// buffer of its state blocks, laid out as its first state buffer there.
    master: bool,
    /// Whether its (16-bit) parameter is rounded stochastically when stored.
    stochastic: bool,
    /// The kernel of the tensor's group.
    kernel: Kernel,
    /// The access mode its state was laid out for, and the lane of its first element there.
    state_access: Access,
    lane: u64,
    /// Where its state lives, in order; fixed for the optimizer's lifetime.
    pieces: Vec<plan::StatePiece>,
    /// For a tensor whose state is factored, the shape of its factors (its one piece's
    /// `state_offset` is where its factor region starts).
    factors: Option<Factors>,
    /// The factor of the group's learning rate for the tensor's shape (Muon's
    /// `adjust_lr_fn`); 1 for other classes.
    lr_ratio: f32,
}

impl TensorMeta {
    /// The bytes of its parameter.
    fn param_bytes(&self) -> u64 {
        self.len * self.types.0.size()
    }

    /// The bytes of tensor `index`'s parameter for a snapshot, whose GPU copies move whole
    /// 32-bit words: an error where a 16-bit parameter starts or ends inside a word, whose
    /// other half may be anybody's. (Checkpoints read and write such words around the other
    /// half.)
    fn snapshot_bytes(&self, index: usize) -> Result<u64> {
        let bytes = self.param_bytes();
        if !self.param_offset.is_multiple_of(4) || !bytes.is_multiple_of(4) {
            return Err(Error::Input(format!(
                "snapshot: tensor {index} ({:?}) has {} parameters that start or end inside a 32-bit word, which a snapshot copies whole (give 16-bit parameters an even element offset and length)",
                self.name, self.types.0
            )));
        }
        Ok(bytes)
    }

    /// The tensor's shape: given, or `[len]`.
    fn shape(&self) -> Vec<usize> {
        self.given_shape
            .clone()
            .unwrap_or_else(|| vec![self.len as usize])
    }
}

/// The ring of per-step slots: each slot holds a [`StepConfig`] and one `Hyper` record per
/// group. A slot is rewritten only when no recorded step that reads it can still run: each step
/// holds its slot until the GPU has finished it, or until the command buffer recording it is
/// dropped unsubmitted. When every slot is held, the ring doubles.
struct Ring {
    buffer: wgpu::Buffer,
    slot_size: u64,
    /// Recorded steps per slot that may still run.
    held: Vec<Arc<AtomicUsize>>,
    /// The slot last written, whose bytes are `Optimizer::last_slot`.
    last: Option<usize>,
    finalize: wgpu::BindGroup,
}

/// Releases its ring slot when dropped: when the GPU has finished the step, or when the step's
/// command buffer is dropped without being submitted.
struct SlotHold(Arc<AtomicUsize>);

impl Drop for SlotHold {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Slots a ring starts with.
const RING_SLOTS: usize = 4;

/// The largest step count [`Optimizer::load_state`] accepts: the GPU keeps steps in 32 bits.
pub const MAX_STEP: u64 = u32::MAX as u64 - 1;

/// A fused GPU optimizer over many tensors in parameter groups.
///
/// Build it once with the engine's buffers; each [`step`](Self::step) then records a few
/// dispatches into the caller's encoder: one per batch of tensors sharing a kernel, an
/// [`Access`] mode, a parameter buffer and a gradient buffer (more only when a batch outgrows a
/// binding, holds more than 256 tensors or its state fills a state block), one
/// single-workgroup dispatch that advances the step counts, and, with norm clipping or a grad
/// scaler, one reduction per batch. Engines that keep parameters in one buffer and gradients in
/// another get one optimizer dispatch per step, whatever the tensor count. Engines whose memory
/// pool hands out new gradient buffers every step move the tensors with
/// [`rebind`](Self::rebind) before each step. Nothing is compiled or read back per step; the step counts, the
/// bias corrections, the clip coefficient and the grad scaler live on the GPU. The host writes
/// each step's hyperparameters (learning rate, cycled momentum) with
/// [`wgpu::Queue::write_buffer`], which lands before the next submit.
///
/// Any number of steps may be recorded before a submit. A step recorded into an encoder that is
/// dropped without being submitted never runs, and advances nothing.
pub struct Optimizer {
    ctx: Context,
    id: u64,
    groups: Vec<OptimizerConfig>,
    /// The groups as the optimizer was built (Lion's decoupled weight decay divides by the
    /// learning rate it was built with, as lion-pytorch's `_init_lr`).
    built: Vec<OptimizerConfig>,
    tensors: Vec<TensorMeta>,
    /// How the state and the 16-bit parameters are kept.
    precision: Precision,
    /// The state, fixed when built.
    blocks: Vec<bind::StateBlock>,
    /// Muon's matrix products between the two phases of its step.
    products: Option<products::Products>,
    /// The dispatches of the current ranges, and of ranges used before.
    bound: bind::Bound,
    cache: Vec<bind::Bound>,
    bind_groups: bind::BindGroups,
    buffers: Buffers,
    /// Partials the partials buffer holds.
    partial_capacity: u32,
    /// Counts rebuilds of the ring and the partials buffer, which the reduction's bind groups
    /// bind.
    generation: u64,
    /// Counts uses of bindings, for least-recently-used eviction.
    tick: u64,
    finalize: Arc<CompiledKernel>,
    ring: Ring,
    /// The slot bytes of the step being recorded, and of the last slot written.
    host_slot: Vec<u8>,
    last_slot: Vec<u8>,
    clip: Option<ClipGrad>,
    scaler: Option<GradScaler>,
    /// Whether the parameters hold the train-mode values, for a class with two modes
    /// (AdamWScheduleFree); always true for the others.
    train_mode: bool,
}

/// What one recorded pass of the kernels does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// An optimizer step.
    Step,
    /// A switch of the parameters into train mode (`true`) or eval mode.
    Mode(bool),
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("groups", &self.groups)
            .field("tensors", &self.tensors.len())
            .field("dispatches", &self.bound.dispatches.len())
            .field("clip", &self.clip)
            .field("scaler", &self.scaler)
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
    let fits = r.offset.is_multiple_of(r.dtype.size())
        && r.bytes()
            .and_then(|b| b.checked_add(r.offset))
            .is_some_and(|end| end.next_multiple_of(4) <= r.buffer.size());
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
                list.push((r.offset, r.offset + r.dtype.size() * r.len, i, is_param));
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

/// Rejects shapes that do not match their tensor's length, and names given twice.
fn check_names(tensors: &[Tensor<'_>]) -> Result<()> {
    let mut names = std::collections::HashSet::new();
    for (i, t) in tensors.iter().enumerate() {
        if let Some(shape) = t.shape {
            let elements = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
            if elements != Some(t.param.len) {
                return Err(Error::Input(format!(
                    "tensor {i}: shape {shape:?} does not hold its {} elements",
                    t.param.len
                )));
            }
        }
        let name = t.name.map_or_else(|| format!("param.{i}"), str::to_string);
        if !names.insert(name.clone()) {
            return Err(Error::Input(format!(
                "tensor {i}: two tensors are named {name:?}"
            )));
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
    ///
    /// The state is kept in each parameter's type ([`Precision::default`]); see
    /// [`with_precision`](Self::with_precision) for other layouts.
    pub fn with_groups(ctx: &Context, groups: &[ParamGroup<'_>]) -> Result<Self> {
        Self::with_precision(ctx, groups, Precision::default())
    }

    /// [`with_groups`](Self::with_groups) with the state kept as `precision` says. The math is
    /// f32 whatever the types: loads widen and stores round to nearest even, and the update
    /// uses the f32 values of the new state before they are rounded for storage, as PyTorch's
    /// fused kernels do. Adafactor and Muon keep their state in f32 (their factor headers and
    /// matrix products read it as such): a 16-bit state type for them is an [`Error`].
    pub fn with_precision(
        ctx: &Context,
        groups: &[ParamGroup<'_>],
        precision: Precision,
    ) -> Result<Self> {
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
            if group.config.pre_norm().is_some() != first.config.pre_norm().is_some() {
                return Err(Error::Input(format!(
                    "parameter group {g}: pre_norm differs from group 0's (it scales the \
                     gradients of every group together, so every group must agree)"
                )));
            }
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
        check_names(&tensors)?;
        check_precision(&tensors, precision)?;

        let limits = ctx.limits();
        let plan_limits = bind::plan_limits(limits);
        if all.len() > u32::MAX as usize {
            return Err(Error::Input("more tensors than fit 32-bit indices".into()));
        }
        if plan_limits.max_binding < 2 * plan_limits.alignment + 16 {
            return Err(Error::Unsupported(format!(
                "storage bindings of {} bytes (max_storage_buffer_binding_size)",
                plan_limits.max_binding
            )));
        }
        let shader = first.config.kernel().shader;
        let finalize = ctx.kernel(Pipeline::Finalize(shader))?;

        // The state: tensors of one kernel, access mode and state type share blocks, each at
        // its parameter's lane.
        let mut block_keys: Vec<(Kernel, Access, DType, bool)> = Vec::new();
        let mut metas = Vec::with_capacity(all.len());
        let mut state_spans = Vec::with_capacity(all.len());
        for (i, (g, t)) in all.iter().enumerate() {
            let shape = t
                .shape
                .map_or_else(|| vec![t.param.len as usize], <[usize]>::to_vec);
            let config = &groups[*g].config;
            config.check_shape(&shape)?;
            let kernel = config.kernel_for(&shape);
            let factors = kernel.factored().then(|| Factors::of(&shape));
            let access = access_for(ctx.access(), plan_limits.alignment, t);
            let state_type = precision.state.for_param(t.param.dtype);
            let sixteen = t.param.dtype != DType::F32;
            let master = precision.master_weights && sixteen;
            if state_type != DType::F32 && (kernel.factored() || kernel.phased()) {
                return Err(Error::Input(format!(
                    "tensor {i}: {} keeps its state in f32 ({}), so it cannot keep {state_type} state (ask for f32 state)",
                    config.type_name(),
                    if kernel.phased() {
                        "its matrix products read it as f32"
                    } else {
                        "its factored state holds integer headers"
                    }
                )));
            }
            let k = (kernel, access, state_type, master);
            let key = block_keys.iter().position(|x| *x == k).unwrap_or_else(|| {
                block_keys.push(k);
                block_keys.len() - 1
            });
            let lane = t.param.offset / t.param.dtype.size() % access.lanes();
            state_spans.push(plan::StateSpan {
                key,
                len: t.param.len,
                lane,
                lanes: access.lanes(),
                footprint: factors.map(|f| f.footprint()),
                whole: kernel.phased(),
                master,
            });
            metas.push(TensorMeta {
                group: *g,
                len: t.param.len,
                name: t.name.map_or_else(|| format!("param.{i}"), str::to_string),
                given_shape: t.shape.map(<[usize]>::to_vec),
                param: t.param.buffer.clone(),
                param_offset: t.param.offset,
                types: (t.param.dtype, t.grad.dtype),
                state_type,
                master,
                stochastic: precision.stochastic_rounding.is_some() && sixteen,
                kernel,
                state_access: access,
                lane,
                pieces: Vec::new(),
                factors,
                lr_ratio: config
                    .orthogonalize()
                    .map_or(1.0, |o| o.lr_ratio(&shape) as f32),
            });
        }
        let most_states = block_keys
            .iter()
            .map(|k| u64::from(k.0.state_buffers()))
            .max()
            .unwrap_or(1)
            .max(1);
        let max_state = plan_limits.max_binding / 4 / most_states / 4 * 4;
        check_whole(&metas, &state_spans, &plan_limits, max_state)?;
        let (block_plans, pieces) = plan::state_blocks(&state_spans, max_state);
        for piece in pieces {
            metas[piece.tensor].pieces.push(piece);
        }
        let ranges: Vec<bind::Ranges> = all
            .iter()
            .map(|(_, t)| {
                (
                    t.param.buffer.clone(),
                    t.param.offset,
                    t.grad.buffer.clone(),
                    t.grad.offset,
                )
            })
            .collect();

        let n = all.len() as u64;
        let device = ctx.device();
        let (control, derived, blocks) = scoped(device, || {
            let copy = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
            let mut control_bytes =
                Vec::with_capacity((CONTROL_HEADER + TENSOR_STEP_SIZE * n) as usize);
            control_bytes.extend_from_slice(bytemuck::cast_slice(&[1.0f32.to_bits(), 0, 0, 0]));
            for (g, _) in &all {
                let config = &groups[*g].config;
                let mut words = [0u32; SCALAR_WORD + MAX_SCALARS];
                words[1] = *g as u32;
                for (k, name) in config.scalar_names().iter().enumerate() {
                    words[SCALAR_WORD + k] = (config.initial_scalar_value(name) as f32).to_bits();
                }
                control_bytes.extend_from_slice(bytemuck::cast_slice(&words));
            }
            let control = wgpu::util::DeviceExt::create_buffer_init(
                device,
                &wgpu::util::BufferInitDescriptor {
                    label: Some("wgpu-optim control"),
                    contents: &control_bytes,
                    usage: wgpu::BufferUsages::STORAGE | copy,
                },
            );
            let derived = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-optim step coefficients"),
                size: STEP_HEADER_SIZE + COEFFS_STRIDE * n,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            let blocks: Vec<bind::StateBlock> = block_plans
                .iter()
                .enumerate()
                .map(|(b, p)| bind::StateBlock {
                    buffer: state_buffer(device, groups, &all, &metas, b, p, block_keys[p.key]),
                    // Made by the first step, from the parameters as they are then.
                    master: block_keys[p.key].3.then(|| {
                        let unmade = vec![UNMADE_MASTER; p.master_len.max(4) as usize];
                        wgpu::util::DeviceExt::create_buffer_init(
                            device,
                            &wgpu::util::BufferInitDescriptor {
                                label: Some("wgpu-optim master weights"),
                                contents: bytemuck::cast_slice(&unmade),
                                usage: wgpu::BufferUsages::STORAGE
                                    | wgpu::BufferUsages::COPY_SRC
                                    | wgpu::BufferUsages::COPY_DST,
                            },
                        )
                    }),
                    plan: *p,
                })
                .collect();
            (control, derived, blocks)
        })?;
        let configs: Vec<OptimizerConfig> = groups.iter().map(|g| g.config).collect();
        let products = products::Products::new(ctx, &configs, &metas, &blocks)?;
        let layout = bind::layout(ctx, &metas, &blocks, &ranges)?;
        let partial_capacity = layout.partial_count.max(1);
        let buffers = Buffers {
            control,
            derived,
            partials: partials_buffer(device, partial_capacity)?,
        };
        let storage_align = u64::from(limits.min_storage_buffer_offset_alignment).max(16);
        let slot_size = round_up(
            size_of::<StepConfig>() as u64 + shader.hyper_size * groups.len() as u64,
            storage_align,
        );
        let ring = Ring::new(ctx, &finalize, &buffers, slot_size, RING_SLOTS)?;
        // Without clipping or a grad scaler yet, a step only has Lamb's pre_norm.
        let bits = if configs[0].pre_norm().is_some() {
            flags::PRE_NORM
        } else {
            0
        };
        let mut bind_groups = bind::BindGroups::default();
        let bound = bind::Parts {
            ctx,
            blocks: &blocks,
            ring: &ring,
            buffers: &buffers,
            groups: &mut bind_groups,
            generation: 0,
            tick: 0,
        }
        .realize(layout, ranges, bits, reduces(bits))?;
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            ring,
            ctx: ctx.clone(),
            groups: configs.clone(),
            built: configs,
            products,
            tensors: metas,
            precision,
            blocks,
            bound,
            cache: Vec::new(),
            bind_groups,
            buffers,
            partial_capacity,
            generation: 0,
            tick: 0,
            finalize,
            host_slot: vec![0; slot_size as usize],
            last_slot: Vec::new(),
            clip: None,
            scaler: None,
            train_mode: true,
        })
    }

    /// Records one optimizer step into `encoder`, in a compute pass of its own. Nothing is
    /// submitted, and nothing waits. Fails when the device runs out of memory growing the ring
    /// of per-step values (see [`Optimizer`]), and, changing nothing, for an AdamWScheduleFree
    /// optimizer in eval mode (see [`train`](Self::train)).
    pub fn step(&mut self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        self.check_train_mode()?;
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("wgpu-optim step"),
            timestamp_writes: None,
        });
        self.record_pass(&mut pass, Pass::Step)
    }

    /// Records one optimizer step into a compute pass the caller has begun. Fails as
    /// [`step`](Self::step) does.
    pub fn record(&mut self, pass: &mut wgpu::ComputePass<'_>) -> Result<()> {
        self.check_train_mode()?;
        self.record_pass(pass, Pass::Step)
    }

    /// schedulefree's `train()` for an AdamWScheduleFree optimizer: records into `encoder` the
    /// switch of every parameter that has stepped from its eval-mode value x to its train-mode
    /// value y, `p.lerp_(z, 1 − β1)`, on the GPU. Nothing is recorded when the optimizer is in
    /// train mode already, which it is when built. A step needs train mode. An error, changing
    /// nothing, for other classes.
    pub fn train(&mut self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        self.switch_mode(encoder, true)
    }

    /// schedulefree's `eval()` for an AdamWScheduleFree optimizer: records into `encoder` the
    /// switch of every parameter that has stepped from y to x, the average of the iterates that
    /// schedule-free training evaluates and ships, `p.lerp_(z, 1 − 1/β1)`. Nothing is recorded
    /// when the optimizer is in eval mode already. An error, changing nothing, for other
    /// classes.
    pub fn eval(&mut self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        self.switch_mode(encoder, false)
    }

    /// Whether the parameters hold their train-mode values: true for every class but
    /// AdamWScheduleFree, and for that one between [`train`](Self::train) and
    /// [`eval`](Self::eval) (and when built).
    pub fn is_train_mode(&self) -> bool {
        self.train_mode
    }

    fn switch_mode(&mut self, encoder: &mut wgpu::CommandEncoder, to_train: bool) -> Result<()> {
        let class = self.groups[0].type_name();
        if !self.groups[0].has_modes() {
            return Err(Error::Input(format!(
                "{class} has no train and eval modes (AdamWScheduleFree has)"
            )));
        }
        if self.train_mode == to_train {
            return Ok(());
        }
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("wgpu-optim mode switch"),
            timestamp_writes: None,
        });
        self.record_pass(&mut pass, Pass::Mode(to_train))?;
        self.train_mode = to_train;
        Ok(())
    }

    fn check_train_mode(&self) -> Result<()> {
        if self.train_mode {
            Ok(())
        } else {
            Err(Error::Input(format!(
                "{} is in eval mode: call train() before step(), as schedulefree requires",
                self.groups[0].type_name()
            )))
        }
    }

    /// Records one pass of the kernels: a step (with the per-tensor sums between `finalize` and
    /// the step dispatches, for an optimizer that needs them), or a mode switch, which runs the
    /// step kernels
    /// with the group records of the switch, neither clipping nor unscaling, and a `finalize`
    /// that keeps the step counts and scalar state (`HOLD`).
    fn record_pass(&mut self, pass: &mut wgpu::ComputePass<'_>, what: Pass) -> Result<()> {
        let bits = match what {
            Pass::Step => self.step_flags(self.clip, self.scaler),
            Pass::Mode(_) => 0,
        };
        let reduce = reduces(bits);
        self.write_host_slot(bits, what);
        let slot = self.acquire_slot()?;
        // The ring may have grown: the reduction's bind groups must bind the new one.
        let (mut parts, bound) = self.parts();
        parts.refresh(bound, bits, reduce)?;
        let held = self.ring.held[slot].clone();
        held.fetch_add(1, Ordering::AcqRel);
        let hold = SlotHold(held);
        pass.on_submitted_work_done(move || drop(hold));
        // Ring::new keeps every slot's offset within u32.
        let offset = (slot as u64 * self.ring.slot_size) as u32;
        let bound = &self.bound;
        let mut current: Option<&wgpu::ComputePipeline> = None;
        if reduce {
            for d in &bound.dispatches {
                let (Some(kernel), Some(group)) = (&d.reduce_kernel, &d.reduce_group) else {
                    continue;
                };
                if current != Some(&kernel.pipeline) {
                    pass.set_pipeline(&kernel.pipeline);
                    current = Some(&kernel.pipeline);
                }
                pass.set_bind_group(0, group, &[offset]);
                pass.set_bind_group(1, &bound.table, &[d.table_offset]);
                pass.dispatch_workgroups(d.reduce_dispatch.0, d.reduce_dispatch.1, 1);
            }
        }
        pass.set_pipeline(&self.finalize.pipeline);
        pass.set_bind_group(0, &self.ring.finalize, &[offset]);
        pass.dispatch_workgroups(1, 1, 1);
        current = Some(&self.finalize.pipeline);
        if what == Pass::Step {
            for d in &bound.dispatches {
                let Some(f) = &d.factors else {
                    continue;
                };
                pass.set_bind_group(0, &d.group, &[]);
                pass.set_bind_group(1, &bound.table, &[d.table_offset]);
                pass.set_pipeline(&f.lines.pipeline);
                pass.dispatch_workgroups(f.lines_dispatch.0, f.lines_dispatch.1, 1);
                pass.set_pipeline(&f.means.pipeline);
                pass.dispatch_workgroups(f.means_dispatch.0, f.means_dispatch.1, 1);
                current = Some(&f.means.pipeline);
            }
        }
        if let (Pass::Step, Some(sums)) = (what, &bound.sums) {
            let rounds = sums.combine.len();
            for (round, combine) in sums.combine.iter().enumerate() {
                for d in &bound.dispatches {
                    // A batch of fewer rounds takes the last ones.
                    let Some(kernel) = (round + d.sums_kernels.len())
                        .checked_sub(rounds)
                        .map(|r| &d.sums_kernels[r])
                    else {
                        continue;
                    };
                    if current != Some(&kernel.pipeline) {
                        pass.set_pipeline(&kernel.pipeline);
                        current = Some(&kernel.pipeline);
                    }
                    pass.set_bind_group(0, &d.group, &[]);
                    pass.set_bind_group(1, &bound.table, &[d.table_offset]);
                    pass.set_bind_group(2, &sums.out_group, &[]);
                    pass.dispatch_workgroups(d.sums_dispatch.0, d.sums_dispatch.1, 1);
                }
                pass.set_pipeline(&combine.pipeline);
                current = Some(&combine.pipeline);
                pass.set_bind_group(0, &sums.combine_group, &[]);
                pass.dispatch_workgroups(sums.combine_dispatch.0, sums.combine_dispatch.1, 1);
            }
        }
        for d in &bound.dispatches {
            let kernels = (&d.kernel, d.edge_kernel.as_ref());
            record_step(pass, &mut current, &bound.table, d, kernels);
        }
        if let (Pass::Step, Some(products)) = (what, &self.products) {
            products.record(pass);
            current = None;
        }
        // The second phase of a step in two (Muon's update from its last iterate).
        for d in &bound.dispatches {
            if let Some((kernel, edges)) = &d.apply {
                record_step(
                    pass,
                    &mut current,
                    &bound.table,
                    d,
                    (kernel, edges.as_ref()),
                );
            }
        }
        Ok(())
    }

    /// Records one step in an encoder of its own and submits it. Does not wait.
    pub fn step_submit(&mut self) -> Result<wgpu::SubmissionIndex> {
        let mut encoder =
            self.ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("wgpu-optim step"),
                });
        self.step(&mut encoder)?;
        Ok(self.ctx.queue().submit([encoder.finish()]))
    }

    /// Fills `host_slot` with the `StepConfig` and group records of a step or a mode switch.
    fn write_host_slot(&mut self, bits: u32, what: Pass) {
        let mut config = StepConfig {
            tensors: self.tensors.len() as u32,
            partials: if reduces(bits) {
                self.bound.partial_count
            } else {
                0
            },
            flags: bits,
            seed: self.precision.stochastic_rounding.unwrap_or(0),
            ..Default::default()
        };
        if let Pass::Mode(to_train) = what {
            config.flags = flags::HOLD;
            let head = size_of::<StepConfig>();
            self.host_slot[..head].copy_from_slice(bytemuck::bytes_of(&config));
            let size = self.groups[0].kernel().shader.hyper_size as usize;
            for (g, config) in self.groups.iter().enumerate() {
                let at = head + g * size;
                // Every group has the class's modes: they share the first's class.
                config.write_mode_hyper(to_train, &mut self.host_slot[at..at + size]);
            }
            return;
        }
        match self.clip {
            Some(ClipGrad::Norm {
                max_norm,
                norm_type,
            }) => {
                if norm_type == NormType::Inf {
                    config.flags |= flags::NORM_INF;
                }
                config.max_norm = max_norm as f32;
            }
            Some(ClipGrad::Value { clip_value }) => config.clip_value = clip_value as f32,
            None => {}
        }
        if let Some(p) = self.groups[0].pre_norm() {
            config.pre_norm_max = p.max_grad_norm as f32;
            config.pre_norm_eps = p.eps as f32;
        }
        if let Some(s) = self.scaler {
            config.growth_interval = s.growth_interval;
            (config.growth_factor, config.growth_factor_lo) = split_f64(s.growth_factor);
            (config.backoff_factor, config.backoff_factor_lo) = split_f64(s.backoff_factor);
        }
        let head = size_of::<StepConfig>();
        self.host_slot[..head].copy_from_slice(bytemuck::bytes_of(&config));
        let size = self
            .groups
            .first()
            .map_or(0, |g| g.kernel().shader.hyper_size) as usize;
        for (g, (config, built)) in self.groups.iter().zip(&self.built).enumerate() {
            let at = head + g * size;
            config.write_hyper(built, &mut self.host_slot[at..at + size]);
        }
    }

    /// The ring slot for `host_slot`: the last one written if its bytes are the same, else a
    /// slot no recorded step still holds, written now; the ring doubles when every slot is held.
    fn acquire_slot(&mut self) -> Result<usize> {
        if let Some(last) = self.ring.last
            && self.last_slot == self.host_slot
        {
            return Ok(last);
        }
        let free = self
            .ring
            .held
            .iter()
            .position(|h| h.load(Ordering::Acquire) == 0);
        let slot = match free {
            Some(slot) => slot,
            None => {
                let slots = self.ring.held.len() * 2;
                self.ring = Ring::new(
                    &self.ctx,
                    &self.finalize,
                    &self.buffers,
                    self.ring.slot_size,
                    slots,
                )?;
                self.generation += 1;
                0
            }
        };
        self.ctx.queue().write_buffer(
            &self.ring.buffer,
            slot as u64 * self.ring.slot_size,
            &self.host_slot,
        );
        self.ring.last = Some(slot);
        self.last_slot.clone_from(&self.host_slot);
        Ok(slot)
    }

    /// Slots in the ring of per-step values (it grows when more steps are in flight at once).
    pub fn ring_slots(&self) -> usize {
        self.ring.held.len()
    }

    /// A number that identifies this optimizer among those of the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Clips the gradients inside every following step: `clip_grad_norm_` over every tensor of
    /// the optimizer, or `clip_grad_value_` (see [`ClipGrad`]). `None` turns clipping off. On
    /// error nothing changes.
    pub fn set_clip_grad(&mut self, clip: Option<ClipGrad>) -> Result<()> {
        if let Some(c) = &clip {
            c.validate()?;
        }
        self.configure(clip, self.scaler)
    }

    /// The clipping of every step.
    pub fn clip_grad(&self) -> Option<ClipGrad> {
        self.clip
    }

    /// Uses a grad scaler from now on (see [`GradScaler`] and [`crate::amp`]): its scale starts
    /// at `init_scale`, and each step unscales the gradients, skips on inf or NaN and updates
    /// the scale. The scale is written with [`wgpu::Queue::write_buffer`], so it takes effect
    /// at the next submit: set the scaler before recording steps. `None`, or a scaler with
    /// `enabled: false`, turns scaling off and sets the scale to 1. On error nothing changes.
    pub fn set_grad_scaler(&mut self, scaler: Option<GradScaler>) -> Result<()> {
        if let Some(s) = &scaler {
            s.validate()?;
        }
        let scaler = scaler.filter(|s| s.enabled);
        self.configure(self.clip, scaler)?;
        let scale = scaler.map_or(1.0, |s| s.init_scale as f32);
        self.write_scaler_state(GradScalerState {
            scale,
            growth_tracker: 0,
        });
        Ok(())
    }

    /// The grad scaler of every step.
    pub fn grad_scaler(&self) -> Option<GradScaler> {
        self.scaler
    }

    /// Where the grad scaler's scale lives on the GPU: one f32 element, for the engine to
    /// multiply its loss by (as `scaler.scale(loss)`) without reading it back. It holds 1
    /// without a scaler. The buffer has `STORAGE | COPY_SRC | COPY_DST` usage; bind it
    /// read-only.
    pub fn grad_scale(&self) -> BufferRange<'_> {
        BufferRange::new(&self.buffers.control, 0, 1)
    }

    /// Reads the grad scaler's scale and growth tracker back, after all submitted work. Blocks.
    pub fn read_grad_scaler(&self) -> Result<GradScalerState> {
        let words = self.ctx.read_words(&[(&self.buffers.control, 0, 2)])?;
        Ok(GradScalerState {
            scale: f32::from_bits(words[0]),
            growth_tracker: words[1] as i32,
        })
    }

    /// Sets the grad scaler's scale and growth tracker (for example from a checkpoint), at the
    /// next submit. A grad scaler must be set first ([`set_grad_scaler`](Self::set_grad_scaler)
    /// starts from `init_scale`). The scale must be positive and finite, the tracker at least
    /// 0. On error nothing changes.
    pub fn load_grad_scaler(&mut self, state: GradScalerState) -> Result<()> {
        if self.scaler.is_none() {
            return Err(Error::Input(
                "no grad scaler is set: set one with set_grad_scaler before loading its state"
                    .into(),
            ));
        }
        if !(state.scale > 0.0 && state.scale.is_finite()) || state.growth_tracker < 0 {
            return Err(Error::Input(format!(
                "grad scaler state with scale {} and growth tracker {}: the scale must be positive and finite, the tracker at least 0",
                state.scale, state.growth_tracker
            )));
        }
        self.write_scaler_state(state);
        Ok(())
    }

    fn write_scaler_state(&self, state: GradScalerState) {
        self.ctx.queue().write_buffer(
            &self.buffers.control,
            0,
            bytemuck::cast_slice(&[state.scale.to_bits(), state.growth_tracker as u32]),
        );
    }

    /// Reads back what the last step found: the total gradient norm (what `clip_grad_norm_`
    /// returns, for logging) and whether the grad scaler skipped it. Blocks; do not call it in
    /// the training loop unless you mean to wait.
    pub fn read_step_report(&self) -> Result<StepReport> {
        let words = self.ctx.read_words(&[(&self.buffers.control, 8, 2)])?;
        Ok(StepReport {
            total_norm: f32::from_bits(words[0]),
            found_inf: f32::from_bits(words[1]) != 0.0,
        })
    }

    /// What the step kernels do to the gradients with `clip` and `scaler`: bits of [`flags`],
    /// with the optimizer's `pre_norm` (the first group's; every group agrees).
    fn step_flags(&self, clip: Option<ClipGrad>, scaler: Option<GradScaler>) -> u32 {
        let mut bits = match clip {
            Some(ClipGrad::Norm { .. }) => flags::CLIP_NORM,
            Some(ClipGrad::Value { .. }) => flags::CLIP_VALUE,
            None => 0,
        };
        if scaler.is_some() {
            bits |= flags::UNSCALE | flags::SCALER;
        }
        if self.groups[0].pre_norm().is_some() {
            bits |= flags::PRE_NORM;
        }
        bits
    }

    /// Switches to `clip` and `scaler`: the step kernels compiled for them, and the reduction
    /// with its bind groups once a step needs it. Cached bindings catch up when used. On error
    /// nothing changes. Lamb's `pre_norm` takes the 2-norm of the clipped gradients, which the
    /// reduction forms only with no clipping or `clip_grad_norm_` of the 2-norm.
    fn configure(&mut self, clip: Option<ClipGrad>, scaler: Option<GradScaler>) -> Result<()> {
        let bits = self.step_flags(clip, scaler);
        if bits & flags::PRE_NORM != 0
            && matches!(
                clip,
                Some(ClipGrad::Value { .. })
                    | Some(ClipGrad::Norm {
                        norm_type: NormType::Inf,
                        ..
                    })
            )
        {
            return Err(Error::Input(
                "Lamb's pre_norm cannot be combined with clip_grad_value_ or clip_grad_norm_ \
                 of norm_type inf: wgpu-optim forms the pre_norm of gradients clipped by the \
                 2-norm only"
                    .into(),
            ));
        }
        let reduce = reduces(bits);
        let (mut parts, bound) = self.parts();
        parts.refresh(bound, bits, reduce)?;
        self.clip = clip;
        self.scaler = scaler;
        Ok(())
    }

    /// Grows the partials buffer to hold `count` partials: a new buffer, and a new ring whose
    /// `finalize` bind group binds it.
    fn grow_partials(&mut self, count: u32) -> Result<()> {
        let partials = partials_buffer(self.ctx.device(), count)?;
        let buffers = Buffers {
            control: self.buffers.control.clone(),
            derived: self.buffers.derived.clone(),
            partials,
        };
        let ring = Ring::new(
            &self.ctx,
            &self.finalize,
            &buffers,
            self.ring.slot_size,
            self.ring.held.len(),
        )?;
        self.buffers = buffers;
        self.ring = ring;
        self.last_slot.clear();
        self.partial_capacity = count;
        self.generation += 1;
        Ok(())
    }

    /// The context this optimizer records on.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Optimizer dispatches each step records: one per batch. Besides these, a step records
    /// one single-workgroup `finalize` dispatch, with vec4 access one small edge dispatch per
    /// batch, and with clipping by norm or a grad scaler one reduction per batch.
    pub fn dispatches_per_step(&self) -> usize {
        self.bound.dispatches.len()
    }

    /// Number of tensors, over all groups.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// How the kernels access tensor `tensor` (numbered over all groups in order) at its
    /// current ranges: the context's [`Access`], or [`Access::Scalar`] where the tensor cannot
    /// use vec4 access.
    pub fn tensor_access(&self, tensor: usize) -> Result<Access> {
        self.meta(tensor)?;
        Ok(self.bound.access[tensor])
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
        if new.orthogonalize() != old.orthogonalize() {
            return Err(Error::StructuralChange {
                group,
                what: "ns_steps, ns_coefficients or adjust_lr_fn (the recorded matrix products)",
            });
        }
        if new.pre_norm().is_some() != old.pre_norm().is_some() {
            return Err(Error::StructuralChange {
                group,
                what: "pre_norm, or max_grad_norm to or from 0 (the step's gradient reduction)",
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

    /// PyTorch's names of the state buffers kept for `tensor`: its group's
    /// [`state_names_for`](OptimizerConfig::state_names_for) its shape.
    pub fn state_names(&self, tensor: usize) -> Result<&'static [&'static str]> {
        let meta = self.meta(tensor)?;
        Ok(self.groups[meta.group].state_names_for(&meta.shape()))
    }

    /// The elements of state buffer `name` of `tensor`'s (as [`state_names`](Self::state_names)
    /// lists them): the tensor's, or a factor's.
    fn state_len(&self, meta: &TensorMeta, n: usize) -> u64 {
        meta.factors.map_or(meta.len, |f| f.lens()[n])
    }

    /// Steps taken by `tensor`, read back from the GPU after all submitted work. Blocks.
    pub fn step_count(&self, tensor: usize) -> Result<u64> {
        self.meta(tensor)?;
        let at = CONTROL_HEADER + TENSOR_STEP_SIZE * tensor as u64;
        Ok(u64::from(
            self.ctx.read_words(&[(&self.buffers.control, at, 1)])?[0],
        ))
    }

    /// The `(buffer, first element, elements)` ranges holding state buffer `n` of `tensor`,
    /// in elements of its state type: for a tensor whose state is factored, factor `n` in its
    /// factor region.
    fn state_ranges(&self, meta: &TensorMeta, n: u64) -> Vec<(&wgpu::Buffer, u64, u64)> {
        if let Some(f) = meta.factors {
            let piece = &meta.pieces[0];
            let (at, len) = f.range(n as usize);
            let buffer = &self.blocks[piece.block].buffer;
            return vec![(buffer, piece.state_offset + at, len)];
        }
        meta.pieces
            .iter()
            .map(|p| {
                let block = &self.blocks[p.block];
                (&block.buffer, n * block.plan.len + p.state_offset, p.len)
            })
            .collect()
    }

    /// [`state_ranges`](Self::state_ranges) in bytes: `(buffer, byte offset, bytes)`.
    fn state_bytes(&self, meta: &TensorMeta, n: u64) -> Vec<(&wgpu::Buffer, u64, u64)> {
        let size = meta.state_type.size();
        self.state_ranges(meta, n)
            .into_iter()
            .map(|(buffer, first, len)| (buffer, first * size, len * size))
            .collect()
    }

    /// Reads the state of `tensor` back from the GPU, after all submitted work, widened to f32
    /// from its state type (exactly). Blocks.
    pub fn read_state(&self, tensor: usize) -> Result<TensorState<f32>> {
        let meta = self.meta(tensor)?;
        let names = self.state_names(tensor)?;
        let mut ranges = Vec::new();
        for n in 0..names.len() {
            ranges.extend(self.state_ranges(meta, n as u64));
        }
        let mut values = self.ctx.read_typed(&ranges, meta.state_type)?.into_iter();
        let at = CONTROL_HEADER + TENSOR_STEP_SIZE * tensor as u64;
        let words = self
            .ctx
            .read_words(&[(&self.buffers.control, at, TENSOR_STEP_SIZE / 4)])?;
        let scalar_names = self.groups[meta.group].scalar_names();
        Ok(TensorState {
            step: u64::from(words[0]),
            buffers: names
                .iter()
                .enumerate()
                .map(|(n, name)| {
                    let len = self.state_len(meta, n) as usize;
                    (name.to_string(), values.by_ref().take(len).collect())
                })
                .collect(),
            scalars: scalar_names
                .iter()
                .enumerate()
                .map(|(k, name)| (name.to_string(), f32::from_bits(words[SCALAR_WORD + k])))
                .collect(),
        })
    }

    /// The `(buffer, first element, elements)` ranges of `tensor`'s f32 master copy, or an
    /// error where it keeps none.
    fn master_ranges(&self, tensor: usize) -> Result<Vec<(&wgpu::Buffer, u64, u64)>> {
        let meta = self.meta(tensor)?;
        meta.pieces
            .iter()
            .map(|p| {
                let buffer = self.blocks[p.block].master.as_ref().filter(|_| meta.master);
                let buffer = buffer.ok_or_else(|| {
                    Error::Input(format!(
                        "tensor {tensor} ({}) keeps no master weights: its parameter is {} and the optimizer was built {} them",
                        meta.name,
                        meta.types.0,
                        if self.precision.master_weights { "with" } else { "without" }
                    ))
                })?;
                Ok((buffer, p.master_offset, p.len))
            })
            .collect()
    }

    /// Reads the f32 master copy of `tensor`'s 16-bit parameter back from the GPU, after all
    /// submitted work (see [`Precision::master_weights`]). Blocks. An error where the tensor
    /// keeps no master copy. Before the first step the copy is the parameter, widened (the
    /// step makes it from the parameter as it is then).
    pub fn read_master(&self, tensor: usize) -> Result<Vec<f32>> {
        let ranges = self.master_ranges(tensor)?;
        let mut values = self.ctx.read_typed(&ranges, DType::F32)?;
        let unmade = |v: &f32| v.to_bits() == UNMADE_MASTER;
        if values.iter().any(unmade) {
            let meta = &self.tensors[tensor];
            let first = meta.param_offset / meta.types.0.size();
            let param = self
                .ctx
                .read_typed(&[(&meta.param, first, meta.len)], meta.types.0)?;
            for (v, p) in values.iter_mut().zip(param) {
                if unmade(v) {
                    *v = p;
                }
            }
        }
        Ok(values)
    }

    /// Marks `tensor`'s master copy as not made, so that the next step makes it from the
    /// parameter (after parameters are loaded without master copies).
    fn unmake_master(&self, tensor: usize) -> Result<()> {
        for (buffer, first, len) in self.master_ranges(tensor)? {
            let unmade = vec![UNMADE_MASTER; len as usize];
            self.ctx
                .queue()
                .write_buffer(buffer, first * 4, bytemuck::cast_slice(&unmade));
        }
        Ok(())
    }

    /// Replaces the f32 master copy of `tensor`'s 16-bit parameter with `values`, written with
    /// [`wgpu::Queue::write_buffer`] (it takes effect at the next submit). The parameter itself
    /// is not written: the next step writes it from the master copy. An error, changing
    /// nothing, where the tensor keeps no master copy or `values` has another length.
    pub fn load_master(&mut self, tensor: usize, values: &[f32]) -> Result<()> {
        let ranges = self.master_ranges(tensor)?;
        let len = self.tensors[tensor].len;
        if values.len() as u64 != len {
            return Err(Error::Input(format!(
                "master weights of tensor {tensor}: {} values for its {len} elements",
                values.len()
            )));
        }
        let mut rest = values;
        for (buffer, first, n) in ranges {
            let (mine, next) = rest.split_at(n as usize);
            self.ctx
                .queue()
                .write_buffer(buffer, first * 4, bytemuck::cast_slice(mine));
            rest = next;
        }
        Ok(())
    }

    /// Replaces the state of `tensor`: its step count, every state buffer and every scalar
    /// state, under PyTorch's names. The buffers are written with [`wgpu::Queue::write_buffer`], so they take effect
    /// at the next submit. The step count may be at most [`MAX_STEP`]. SGD's momentum buffer
    /// counts as existing once loaded, whatever the step. On error nothing changes.
    ///
    /// The values are f32, rounded to the state's type (to nearest even) where it is 16-bit.
    /// A 16-bit state buffer that starts or ends inside a 32-bit word shares that word with
    /// other state: the word is read back first (this blocks) and written whole.
    pub fn load_state(&mut self, tensor: usize, state: &TensorState<f32>) -> Result<()> {
        let meta = self.meta(tensor)?;
        let config = &self.groups[meta.group];
        let names = self.state_names(tensor)?;
        if state.step > MAX_STEP {
            return Err(Error::Input(format!(
                "state of tensor {tensor} has step {}, above the largest step count kept on the GPU ({MAX_STEP})",
                state.step
            )));
        }
        for (name, values) in &state.buffers {
            let Some(n) = names.iter().position(|n| n == name) else {
                return Err(Error::UnknownState {
                    name: name.clone(),
                    optimizer: config.type_name(),
                    known: names.join(", "),
                });
            };
            let expected = self.state_len(meta, n);
            if values.len() as u64 != expected {
                return Err(Error::StateLength {
                    name: name.clone(),
                    tensor,
                    expected,
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
        let scalar_names = config.scalar_names();
        if let Some(name) = state
            .scalars
            .keys()
            .find(|n| !scalar_names.contains(&n.as_str()))
        {
            return Err(Error::UnknownState {
                name: name.clone(),
                optimizer: config.type_name(),
                known: scalar_names.join(", "),
            });
        }
        if let Some(missing) = scalar_names
            .iter()
            .find(|n| !state.scalars.contains_key(**n))
        {
            return Err(Error::Input(format!(
                "state of tensor {tensor} lacks the scalar {missing:?}, which {} keeps",
                config.type_name()
            )));
        }
        for (n, name) in names.iter().enumerate() {
            let values = &state.buffers[*name];
            let mut start = 0;
            let dtype = meta.state_type;
            for (buffer, first, len) in self.state_ranges(meta, n as u64) {
                let src = dtype.encode(&values[start..start + len as usize]);
                self.ctx.write_halves(buffer, first * dtype.size(), &src)?;
                start += len as usize;
            }
        }
        // SGD's first momentum step is its first step: a loaded buffer is past it.
        let step = if config.has_step_state() || names.is_empty() {
            state.step
        } else {
            state.step.max(1)
        };
        let at = CONTROL_HEADER + TENSOR_STEP_SIZE * tensor as u64;
        let queue = self.ctx.queue();
        queue.write_buffer(
            &self.buffers.control,
            at,
            bytemuck::bytes_of(&(step as u32)),
        );
        let scalars: Vec<f32> = scalar_names.iter().map(|n| state.scalars[*n]).collect();
        if !scalars.is_empty() {
            queue.write_buffer(
                &self.buffers.control,
                at + 4 * SCALAR_WORD as u64,
                bytemuck::cast_slice(&scalars),
            );
        }
        Ok(())
    }

    /// Copies every parameter, every state buffer (master weights included), the step counts, the grad scaler's state,
    /// the group hyperparameters and the train or eval mode into GPU buffers of the snapshot's own, and submits the copies
    /// (without waiting). [`restore`](Self::restore) puts them back into this optimizer. The
    /// parameter buffers need `COPY_SRC` and `COPY_DST` usage.
    ///
    /// Used by the [LR finder](crate::lr_finder) to leave the model as it found it.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let mut total = 0;
        for (i, meta) in self.tensors.iter().enumerate() {
            total += meta.snapshot_bytes(i)?;
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
        let usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let copy_of = |label, size| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        };
        let snapshot = scoped(device, || Snapshot {
            optimizer: self.id,
            params: copy_of("wgpu-optim snapshot parameters", total.max(4)),
            states: self
                .block_buffers()
                .map(|b| copy_of("wgpu-optim snapshot state", b.size()))
                .collect(),
            control: copy_of("wgpu-optim snapshot control", self.buffers.control.size()),
            groups: self.groups.clone(),
            train_mode: self.train_mode,
        })?;
        let mut encoder = device.create_command_encoder(&Default::default());
        self.copy_snapshot(&mut encoder, &snapshot, false);
        self.ctx.queue().submit([encoder.finish()]);
        Ok(snapshot)
    }

    /// Puts back what [`snapshot`](Self::snapshot) saved: parameters, state buffers, step
    /// counts, the grad scaler's state, group hyperparameters and the mode. The copies are submitted
    /// before this returns. A snapshot of another optimizer is an error, and changes nothing.
    pub fn restore(&mut self, snapshot: &Snapshot) -> Result<()> {
        if snapshot.optimizer != self.id {
            return Err(Error::Input(format!(
                "the snapshot was taken of another optimizer (id {}, not {})",
                snapshot.optimizer, self.id
            )));
        }
        let mut encoder = self
            .ctx
            .device()
            .create_command_encoder(&Default::default());
        self.copy_snapshot(&mut encoder, snapshot, true);
        self.ctx.queue().submit([encoder.finish()]);
        self.groups.clone_from(&snapshot.groups);
        self.train_mode = snapshot.train_mode;
        Ok(())
    }

    /// Every buffer of the state blocks: each block's state, then its master copies if any.
    fn block_buffers(&self) -> impl Iterator<Item = &wgpu::Buffer> {
        self.blocks
            .iter()
            .flat_map(|b| std::iter::once(&b.buffer).chain(&b.master))
    }

    /// Records the copies between the live buffers and a snapshot's, in either direction.
    fn copy_snapshot(&self, encoder: &mut wgpu::CommandEncoder, snapshot: &Snapshot, back: bool) {
        let mut copy = |live: (&wgpu::Buffer, u64), saved: (&wgpu::Buffer, u64), bytes| {
            let ((src, so), (dst, d)) = if back { (saved, live) } else { (live, saved) };
            encoder.copy_buffer_to_buffer(src, so, dst, d, bytes);
        };
        let mut at = 0;
        for meta in &self.tensors {
            // Every parameter's bytes were checked when the snapshot was taken.
            let bytes = meta.param_bytes();
            if meta.len > 0 {
                copy(
                    (&meta.param, meta.param_offset),
                    (&snapshot.params, at),
                    bytes,
                );
            }
            at += bytes;
        }
        for (buffer, saved) in self.block_buffers().zip(&snapshot.states) {
            copy((buffer, 0), (saved, 0), buffer.size());
        }
        copy(
            (&self.buffers.control, 0),
            (&snapshot.control, 0),
            self.buffers.control.size(),
        );
    }
}

/// Identifies optimizers, for [`Optimizer::restore`].
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The buffers every step binds besides the caller's.
struct Buffers {
    /// `Control` (shaders/layout.wgsl): scaler state, last report, per-tensor step counts.
    control: wgpu::Buffer,
    /// `Derived` (shaders/common.wgsl): what `finalize` decided for the step.
    derived: wgpu::Buffer,
    /// The reduction's per-workgroup partials.
    partials: wgpu::Buffer,
}

impl Ring {
    /// A ring of `slots` slots, and `finalize`'s bind group that reads it.
    fn new(
        ctx: &Context,
        finalize: &CompiledKernel,
        buffers: &Buffers,
        slot_size: u64,
        slots: usize,
    ) -> Result<Self> {
        // Dynamic offsets are u32.
        if (slots as u64).saturating_sub(1).saturating_mul(slot_size) > u64::from(u32::MAX) {
            return Err(Error::Unsupported(format!(
                "{slots} steps in flight at once: the ring of per-step values would pass 4 GiB"
            )));
        }
        let device = ctx.device();
        scoped(device, || {
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-optim per-step values"),
                size: slot_size * slots as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let slot = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &buffer,
                offset: 0,
                size: wgpu::BufferSize::new(slot_size),
            });
            let finalize = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("wgpu-optim finalize"),
                layout: &finalize.layout,
                entries: &entries(&[
                    slot,
                    buffers.control.as_entire_binding(),
                    buffers.partials.as_entire_binding(),
                    buffers.derived.as_entire_binding(),
                ]),
            });
            Ring {
                held: (0..slots).map(|_| Arc::new(AtomicUsize::new(0))).collect(),
                buffer,
                slot_size,
                last: None,
                finalize,
            }
        })
    }

    /// One slot of the ring, for a binding at a dynamic offset.
    fn slot_binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: 0,
            size: wgpu::BufferSize::new(self.slot_size),
        })
    }
}

/// A buffer for `count` partials of the gradient reduction.
fn partials_buffer(device: &wgpu::Device, count: u32) -> Result<wgpu::Buffer> {
    scoped(device, || {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-optim gradient partials"),
            size: 16 * u64::from(count).max(1),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    })
}

/// Whether a step with the flags `bits` runs the gradient reduction: for the norm (clipping
/// by it, or Lamb's `pre_norm`), or for the grad scaler's inf check.
fn reduces(bits: u32) -> bool {
    bits & (flags::CLIP_NORM | flags::SCALER | flags::PRE_NORM) != 0
}

/// A batch's main kernel and, with vec4 access, its edge kernel.
type StepKernels = (Arc<CompiledKernel>, Option<Arc<CompiledKernel>>);

/// The kernels of a batch of `pieces` pieces with the step's flags `bits`: the main kernel
/// without a segment search when the batch has one piece, and the edge kernel with vec4 access.
fn step_kernels(
    ctx: &Context,
    kernel: Kernel,
    binds: Binds,
    pieces: usize,
    bits: u32,
) -> Result<StepKernels> {
    let single = if pieces == 1 { SINGLE } else { 0 };
    let main = ctx.kernel(Pipeline::Step(kernel, binds, bits | single))?;
    let edges = (binds.access == Access::Vec4)
        .then(|| ctx.kernel(Pipeline::Step(kernel, binds, bits | EDGES)))
        .transpose()?;
    Ok((main, edges))
}

/// Records one batch's step dispatch with `kernels` (main, and edges with vec4 access) over
/// the batch's bind groups, setting a pipeline only where `current` is another.
fn record_step<'a>(
    pass: &mut wgpu::ComputePass<'_>,
    current: &mut Option<&'a wgpu::ComputePipeline>,
    table: &wgpu::BindGroup,
    d: &bind::Dispatch,
    (kernel, edges): (&'a Arc<CompiledKernel>, Option<&'a Arc<CompiledKernel>>),
) {
    if *current != Some(&kernel.pipeline) {
        pass.set_pipeline(&kernel.pipeline);
        *current = Some(&kernel.pipeline);
    }
    pass.set_bind_group(0, &d.group, &[]);
    pass.set_bind_group(1, table, &[d.table_offset]);
    pass.dispatch_workgroups(d.dispatch.0, d.dispatch.1, 1);
    if let Some(edges) = edges
        && d.edge_workgroups > 0
    {
        pass.set_pipeline(&edges.pipeline);
        *current = Some(&edges.pipeline);
        pass.dispatch_workgroups(d.edge_workgroups, 1, 1);
    }
}

/// Bind group entries numbered from 0.
fn entries<'a>(resources: &[wgpu::BindingResource<'a>]) -> Vec<wgpu::BindGroupEntry<'a>> {
    resources
        .iter()
        .enumerate()
        .map(|(i, resource)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: resource.clone(),
        })
        .collect()
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
    let (p, g) = (&t.param, &t.grad);
    let fits = vec4_fits(
        alignment,
        (p.buffer, p.offset, p.dtype),
        (g.buffer, g.offset, g.dtype),
        p.len,
    );
    if preferred == Access::Vec4 && fits {
        Access::Vec4
    } else {
        Access::Scalar
    }
}

/// Whether a tensor of `len` elements, its parameter and its gradient each at a byte offset of
/// a buffer in a storage type, can take vec4 access: both start at the same lane of a unit of
/// four elements, both ranges rounded out to whole units lie inside their buffers, and the
/// windows bound (at multiples of `alignment`) start on whole units.
fn vec4_fits(
    alignment: u64,
    param: (&wgpu::Buffer, u64, DType),
    grad: (&wgpu::Buffer, u64, DType),
    len: u64,
) -> bool {
    let fits = |(buffer, offset, dtype): (&wgpu::Buffer, u64, DType)| {
        (offset + len * dtype.size()).next_multiple_of(4 * dtype.size()) <= buffer.size()
    };
    alignment.is_multiple_of(16)
        && param.1 / param.2.size() % 4 == grad.1 / grad.2.size() % 4
        && fits(param)
        && fits(grad)
}

/// The longest line (row or column) of a factored tensor the factor passes take: each
/// invocation's loop over a line runs at most 65,535 times (llvmpipe cuts longer loops) with
/// 256 invocations a workgroup.
pub(crate) const MAX_FACTOR_LINE: u64 = 65_535 * 256;

/// Fails where a tensor whose state is never split (factored state, or Muon's) could not be
/// planned or stepped: its parameter or its gradient larger than one binding (a factored
/// tensor's rows and columns are reduced whole, Muon's matrix products read a tensor whole),
/// its state (or a factored tensor's master copy) larger than a state block, or a factored
/// tensor's row or column longer than [`MAX_FACTOR_LINE`].
fn check_whole(
    metas: &[TensorMeta],
    spans: &[plan::StateSpan],
    limits: &plan::PlanLimits,
    max_state: u64,
) -> Result<()> {
    for (meta, span) in metas.iter().zip(spans) {
        if span.footprint.is_none() && !span.whole {
            continue;
        }
        let class = meta.kernel.shader.file.trim_end_matches(".wgsl");
        let what = format!("tensor {:?} of shape {:?}", meta.name, meta.shape());
        let kept = if span.whole {
            "is stepped whole"
        } else {
            "keeps factored state"
        };
        let size = meta.types.0.size().max(meta.types.1.size());
        if size * meta.len + limits.alignment + 16 > limits.max_binding {
            return Err(Error::Unsupported(format!(
                "{what}: {class} {kept}, so its {} elements must fit one storage binding of {} bytes (max_storage_buffer_binding_size)",
                meta.len, limits.max_binding
            )));
        }
        let footprint = span.footprint.unwrap_or(meta.len + span.lanes);
        // A factored tensor's master copy lies in a region of its own, per element.
        let copy = if span.master && span.footprint.is_some() {
            meta.len + span.lanes
        } else {
            0
        };
        for (what_of, elements) in [("state", footprint), ("master copy", copy)] {
            if elements > max_state {
                return Err(Error::Unsupported(format!(
                    "{what}: its {what_of} of {elements} elements must fit one storage binding of {} bytes (max_storage_buffer_binding_size)",
                    limits.max_binding
                )));
            }
        }
        if let Some(f) = meta.factors
            && f.rows.max(f.cols) > MAX_FACTOR_LINE
        {
            return Err(Error::Unsupported(format!(
                "{what}: {class} sums each row and column of a factored tensor in one workgroup, for lines of at most {MAX_FACTOR_LINE} elements"
            )));
        }
    }
    Ok(())
}

/// State block `b`'s buffer: its state buffers one after the other, each filled with each
/// piece's initial value; for factored state, each tensor's factor region, zero but for its
/// header. At least one unit, so that kernels without state can bind it.
/// The bits of a master copy not made yet (`UNMADE` in shaders/master.wgsl): a quiet NaN that
/// no arithmetic makes. A step takes the parameter, widened, in its place.
pub(crate) const UNMADE_MASTER: u32 = 0x7fe5_a5a5;

/// Rejects a [`Precision`] that asks for what no parameter has: master weights or stochastic
/// rounding where every parameter is f32.
fn check_precision(tensors: &[Tensor<'_>], precision: Precision) -> Result<()> {
    if tensors.iter().all(|t| t.param.dtype == DType::F32) {
        let asked = if precision.master_weights {
            Some("master weights (an f32 copy of 16-bit parameters)")
        } else if precision.stochastic_rounding.is_some() {
            Some("stochastic rounding (of 16-bit parameters)")
        } else {
            None
        };
        if let Some(what) = asked {
            return Err(Error::Input(format!(
                "{what} asked for, but every parameter is f32"
            )));
        }
    }
    Ok(())
}

fn state_buffer(
    device: &wgpu::Device,
    groups: &[ParamGroup<'_>],
    all: &[(usize, Tensor<'_>)],
    metas: &[TensorMeta],
    b: usize,
    block: &plan::Block,
    (kernel, _, dtype, _): (Kernel, Access, DType, bool),
) -> wgpu::Buffer {
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let len = block.len * u64::from(kernel.state_buffers());
    let bytes = (len * dtype.size()).next_multiple_of(4).max(16);
    let pieces = || {
        metas
            .iter()
            .flat_map(|m| &m.pieces)
            .filter(|p| p.block == b)
    };
    if kernel.factored() {
        let mut words = vec![0u32; len as usize];
        for piece in pieces() {
            if let Some(f) = metas[piece.tensor].factors {
                let at = piece.state_offset as usize;
                words[at..at + 4].copy_from_slice(&f.header());
            }
        }
        return wgpu::util::DeviceExt::create_buffer_init(
            device,
            &wgpu::util::BufferInitDescriptor {
                label: Some("wgpu-optim factored state"),
                contents: bytemuck::cast_slice(&words),
                usage,
            },
        );
    }
    // Tensors of one kernel keep the same state buffers.
    let names = pieces()
        .next()
        .map_or(&[][..], |p| groups[all[p.tensor].0].config.state_names());
    let init = |t: usize, name: &str| groups[all[t].0].config.initial_state_value(name) as f32;
    let all_zero = names
        .iter()
        .all(|name| pieces().all(|piece| init(piece.tensor, name) == 0.0));
    if all_zero {
        // wgpu zero-initializes new buffers.
        return device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-optim state"),
            size: bytes,
            usage,
            mapped_at_creation: false,
        });
    }
    let mut values = vec![0f32; len as usize];
    for (n, name) in names.iter().enumerate() {
        for piece in pieces() {
            let at = (n as u64 * block.len + piece.state_offset) as usize;
            values[at..at + piece.len as usize].fill(init(piece.tensor, name));
        }
    }
    let mut contents = dtype.encode(&values);
    contents.resize(bytes as usize, 0);
    wgpu::util::DeviceExt::create_buffer_init(
        device,
        &wgpu::util::BufferInitDescriptor {
            label: Some("wgpu-optim state"),
            contents: &contents,
            usage,
        },
    )
}
