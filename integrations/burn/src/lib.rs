//! wgpu-optim's fused optimizer steps for [Burn](https://burn.dev) models on Burn's wgpu
//! backend: one multi-tensor dispatch per step instead of Burn's per-tensor op graph.
//!
//! A Burn training loop switches in one line and keeps calling `optim.step(lr, model, grads)`:
//!
//! ```no_run
//! # use burn::module::Module;
//! # fn train<M: Module>(model: M, grads: burn::optim::GradientsParams) {
//! use wgpu_optim_burn::{FusedOptimizer, Shared, wgpu_optim::AdamW};
//!
//! let shared = Shared::request(wgpu::Backends::all()).unwrap(); // one device for both
//! let device = shared.device().clone().autodiff();               // Burn's training device
//! // Before: let mut optim = burn::optim::AdamWConfig::new().init();
//! let mut optim = FusedOptimizer::new(&shared, AdamW::default());
//! let model = optim.step(1e-3, model, grads);
//! # }
//! ```
//!
//! # How a step runs
//!
//! Each step gathers every parameter that has a gradient, with a [`ModuleMapper`]: the
//! parameter's fused op stream is resolved (so queued ops run first), its wgpu buffer looked up
//! and the parameter handed back to the module under the same [`ParamId`], with its autodiff
//! settings. A parameter whose memory another tensor shares (a clone of the module, a view) is
//! copied first, so that the in-place update never shows through another tensor. Then Burn's
//! pending work is submitted, one fused step is recorded and submitted on the shared queue,
//! and Burn's later ops see the new values. Burn's memory pool hands out new gradient buffers
//! every step; [`wgpu_optim::Optimizer::rebind`] follows them, at the cost of a comparison when
//! the pool reuses the same places.
//!
//! # Burn's Adam against PyTorch's
//!
//! Burn's `Adam` and `AdamW` compute PyTorch's formulas (ε added after bias-correcting √v,
//! AdamW's decay `θ·(1 − lr·λ)`), with other defaults: ε = 1e-5 where PyTorch (and
//! [`wgpu_optim::Adam`]) has 1e-8, and AdamW's weight decay 1e-4 where PyTorch has 1e-2. Burn
//! applies ε as `ε·√(1 − β2ᵗ)` to the uncorrected `√v`, which rounds differently from
//! PyTorch's `√v / √(1 − β2ᵗ) + ε`. The configurations here have PyTorch's names and defaults;
//! set `eps: 1e-5` (and AdamW's `weight_decay: 1e-4`) to follow a Burn recipe.

use burn::backend::Cube;
use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::wgpu::{AutoCompiler, WgpuResource, WgpuServer};
use burn_cubecl::fusion::{CubeFusionHandle, FusionCubeRuntime};
use burn_cubecl::tensor::CubeTensor;
use burn_fusion::FusionTensor;
use burn_fusion::custom::{OperationIr, OperationOutput, StreamId};
use burn_ir::InitOperationIr;
use std::collections::HashMap;
use std::path::Path;
use wgpu_optim::checkpoint::{LoadOptions, SaveOptions};
use wgpu_optim::schedule::Scheduler;
use wgpu_optim::{BufferRange, ClipGrad, Context, Optimizer, OptimizerConfig, Tensor as Range};

pub use wgpu_optim;

/// What can go wrong in a fused step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// wgpu-optim refused: a bad hyperparameter, checkpoint, or a device limit.
    #[error(transparent)]
    Optim(#[from] wgpu_optim::Error),
    /// Burn's wgpu runtime could not start on the device.
    #[error("Burn's wgpu runtime: {0}")]
    Burn(String),
    /// A parameter or gradient the fused step cannot update: not on a wgpu device with
    /// fusion, not float32, or quantized.
    #[error("parameter {param}: {why}")]
    Unsupported {
        /// The parameter's path in the module.
        param: String,
        /// Why.
        why: String,
    },
    /// The parameters with gradients are not those of the first step.
    #[error("{0}")]
    Parameters(String),
}

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One wgpu device shared by Burn and wgpu-optim: Burn's [`Device`] and a wgpu-optim
/// [`Context`] over the same `wgpu::Device` and `wgpu::Queue`.
#[derive(Clone, Debug)]
pub struct Shared {
    device: Device,
    context: Context,
}

impl Shared {
    /// Finds an adapter among `backends` and creates a device as Burn's runtime does (every
    /// feature of the adapter but `MAPPABLE_PRIMARY_BUFFERS`, and the adapter's limits, which
    /// Burn sizes its kernels by), then hands it to Burn. Uses the default adapter selection
    /// (high performance).
    pub fn request(backends: wgpu::Backends) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| Error::Burn(format!("no adapter: {e}")))?;
        let (device, queue) = pollster::block_on(
            adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("wgpu-optim-burn"),
                required_features: adapter
                    .features()
                    .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
                required_limits: adapter.limits(),
                ..Default::default()
            }),
        )
        .map_err(|e| Error::Burn(format!("could not create a device: {e}")))?;
        Self::from_wgpu(instance, adapter, device, queue)
    }

    /// Burn's device from an engine's own wgpu handles (Burn's device from a wgpu-optim
    /// [`Context`] over `device` and `queue`). The device should have the adapter's limits:
    /// Burn sizes its kernels by the adapter's.
    pub fn from_wgpu(
        instance: wgpu::Instance,
        adapter: wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Result<Self> {
        let backend = adapter.get_info().backend;
        let context = Context::new(&device, &queue);
        let setup = burn::tensor::wgpu::WgpuSetup {
            instance,
            adapter,
            device,
            queue,
            backend,
        };
        let device = Device::wgpu_options()
            .setup(setup)
            .init()
            .map_err(|e| Error::Burn(e.to_string()))?;
        Ok(Self { device, context })
    }

    /// Lets Burn pick and create its default wgpu device, and wraps the same device and queue
    /// in a [`Context`] (a wgpu-optim context from Burn's device). Must run before any tensor
    /// is made on Burn's default wgpu device.
    pub fn from_burn() -> Result<Self> {
        let (device, setup) = Device::wgpu_options()
            .init_with_setup()
            .map_err(|e| Error::Burn(e.to_string()))?;
        Ok(Self {
            device,
            context: Context::new(&setup.device, &setup.queue),
        })
    }

    /// Burn's device (call `.autodiff()` on a clone to train).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The wgpu-optim context over the same device and queue.
    pub fn context(&self) -> &Context {
        &self.context
    }
}

/// A parameter the fused step updates: where it is, and its gradient.
struct Gathered {
    /// The parameter's path in the module: its checkpoint name.
    name: String,
    id: ParamId,
    shape: Vec<usize>,
    param: CubeTensor,
    grad: Option<CubeTensor>,
}

/// The module mapper that gathers the parameters that have gradients (or all of them, without
/// gradients) and hands each back to the module under its id, unique: a parameter whose memory
/// another tensor shares is copied first.
struct Gather<'a> {
    grads: Option<&'a mut GradientsParams>,
    path: Vec<String>,
    out: Vec<Gathered>,
    error: Option<Error>,
    /// Parameters copied because another tensor shared their memory.
    copies: usize,
}

/// The fusion tensor of `t`, float32 on Burn's wgpu backend with fusion.
fn fusion_tensor<const D: usize>(
    name: &str,
    t: Tensor<D>,
) -> std::result::Result<FusionTensor<FusionCubeRuntime>, Box<(Error, Option<Tensor<D>>)>> {
    let unsupported = |why: String| Error::Unsupported {
        param: name.to_string(),
        why,
    };
    // Probe a clone, so that a tensor that does not convert is handed back whole.
    let probe = t.clone().try_into_primitive::<Cube>();
    match probe {
        Err(e) => Err(Box::new((
            unsupported(format!(
                "not a tensor of Burn's wgpu backend with fusion ({e:?})"
            )),
            Some(t),
        ))),
        Ok(ft) if ft.dtype != DType::F32 => Err(Box::new((
            unsupported(format!("{:?}; the fused step takes float32", ft.dtype)),
            Some(t),
        ))),
        Ok(ft) => {
            drop(ft);
            t.try_into_primitive::<Cube>()
                .map_err(|e| Box::new((unsupported(format!("{e:?}")), None)))
        }
    }
}

/// Runs the tensor's queued ops and takes its memory: contiguous, float32.
fn resolve(ft: FusionTensor<FusionCubeRuntime>) -> CubeTensor {
    let client = ft.client.clone();
    let cube = client.resolve_tensor_float::<CubeBackend>(ft);
    if cube.is_contiguous() {
        cube
    } else {
        burn_cubecl::kernel::into_contiguous(cube)
    }
}

/// Registers a resolved tensor with Burn's fusion client again, as Burn's own `from_data`
/// does, so that a module can hold it.
fn to_fusion(
    client: &burn_fusion::client::GlobalFusionClient<FusionCubeRuntime>,
    cube: CubeTensor,
) -> FusionTensor<FusionCubeRuntime> {
    let shape = cube.meta.shape().clone();
    let dtype = cube.dtype;
    let handle: CubeFusionHandle = cube.into();
    let desc = InitOperationIr::create(shape, dtype, || client.register_tensor_handle(handle));
    client
        .register(
            StreamId::current(),
            OperationIr::Init(desc),
            burn_fusion::NoOp::<CubeBackend>::new(),
        )
        .output()
}

impl Gather<'_> {
    /// The parameter's memory, unique, and the tensor the module keeps; or the error and the
    /// tensor as it was.
    fn unique<const D: usize>(
        &mut self,
        name: &str,
        inner: Tensor<D>,
    ) -> std::result::Result<(CubeTensor, Tensor<D>), Box<(Error, Tensor<D>)>> {
        let ft = match fusion_tensor(name, inner).map_err(|e| *e) {
            Ok(ft) => ft,
            Err((e, Some(t))) => return Err(Box::new((e, t))),
            Err((e, None)) => panic!("a tensor that converted once failed to convert: {e}"),
        };
        let client = ft.client.clone();
        let mut cube = resolve(ft);
        if !cube.can_mut() {
            // Another tensor shares this memory: update a copy, which the module keeps.
            cube = cube.copy();
            self.copies += 1;
        }
        let back = Tensor::from_primitive::<Cube>(to_fusion(&client, cube.clone()));
        Ok((cube, back))
    }
}

impl ModuleMapper for Gather<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() {
            return param;
        }
        let name = self.path.join(".");
        let grad = match &mut self.grads {
            Some(grads) => match grads.remove::<D>(param.id) {
                Some(g) => match fusion_tensor(&name, g) {
                    Ok(ft) => Some(resolve(ft)),
                    Err(e) => {
                        self.error = Some(e.0);
                        return param;
                    }
                },
                None => return param,
            },
            None => None,
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let checkpointing = tensor.gradient_checkpointing_strategy();
        let distributed = tensor.is_distributed();
        let shape = tensor.dims().to_vec();
        // The parameter back on the autodiff graph with the settings it had, as Burn's own
        // optimizers restore it.
        let rebuild = |inner: Tensor<D>| {
            let mut t = Tensor::from_inner(inner);
            if let Some(s) = checkpointing {
                t = t.with_gradient_checkpointing_strategy(s);
            }
            if require_grad {
                t = t.require_grad();
            }
            if distributed {
                t = t.set_distributed(id);
            }
            t
        };
        let inner = match self.unique(&name, tensor.inner()) {
            Ok((param, back)) => {
                self.out.push(Gathered {
                    name,
                    id,
                    shape,
                    param,
                    grad,
                });
                back
            }
            Err(e) => {
                let (e, inner) = *e;
                self.error = Some(e);
                inner
            }
        };
        Param::from_mapped_value(id, rebuild(inner), mapper)
    }
}

/// The wgpu buffer and byte range of a resolved tensor, pinned while held.
type Resource = cubecl_runtime::storage::ManagedResource<WgpuResource>;

/// What identifies a tensor's memory: the allocation and the range of it the handle covers.
type MemoryKey = (usize, Option<u64>, Option<u64>);

fn memory_key(cube: &CubeTensor) -> MemoryKey {
    let h = &cube.handle;
    (h.memory.descriptor().id.value, h.offset_start, h.offset_end)
}

/// Looks up where `cube`'s memory lives.
fn lookup(name: &str, cube: &CubeTensor) -> Result<Resource> {
    cube.client
        .get_resource::<WgpuServer<AutoCompiler>>(cube.handle.clone())
        .map_err(|e| Error::Unsupported {
            param: name.to_string(),
            why: format!("its wgpu buffer: {e:?}"),
        })
}

/// wgpu-optim's fused optimizer for a Burn module: see the [crate documentation](crate).
///
/// The tensors are those parameters that have a gradient at the first step (or at
/// [`load`](Self::load)); every later step must bring gradients for the same parameters.
pub struct FusedOptimizer {
    ctx: Context,
    config: OptimizerConfig,
    clip: Option<ClipGrad>,
    optimizer: Option<Optimizer>,
    /// The parameters the optimizer was built for, in order.
    ids: Vec<ParamId>,
    /// Scratch gradients of an optimizer built by `load` before the first step.
    scratch: Option<wgpu::Buffer>,
    /// Each parameter's buffer lookup, by the memory it was made for: held, the lookup pins the
    /// memory in place, so a parameter that keeps its memory costs no lookup the next step.
    pinned: HashMap<ParamId, (MemoryKey, Resource)>,
    /// Copies of shared parameters made so far.
    copies: usize,
}

impl std::fmt::Debug for FusedOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedOptimizer")
            .field("config", &self.config)
            .field("clip", &self.clip)
            .field("tensors", &self.ids.len())
            .finish_non_exhaustive()
    }
}

impl FusedOptimizer {
    /// A fused optimizer with `config` (PyTorch's class, argument names and defaults: see
    /// [`wgpu_optim::OptimizerConfig`]) on the shared device.
    pub fn new(shared: &Shared, config: impl Into<OptimizerConfig>) -> Self {
        Self::with_context(shared.context(), config)
    }

    /// As [`new`](Self::new), on a wgpu-optim context over the device Burn runs on.
    pub fn with_context(ctx: &Context, config: impl Into<OptimizerConfig>) -> Self {
        Self {
            ctx: ctx.clone(),
            config: config.into(),
            clip: None,
            optimizer: None,
            ids: Vec::new(),
            scratch: None,
            pinned: HashMap::new(),
            copies: 0,
        }
    }

    /// Clips the gradients of every step over all the module's parameters together
    /// (PyTorch's `clip_grad_norm_` or `clip_grad_value_`), on the GPU.
    pub fn with_clip_grad(mut self, clip: ClipGrad) -> Self {
        self.clip = Some(clip);
        self
    }

    /// One fused step over every parameter of `module` that has a gradient in `grads`, with
    /// learning rate `lr`, as Burn's `ModuleOptimizer::step`. Panics where
    /// [`try_step`](Self::try_step) returns an error.
    pub fn step<M: Module>(&mut self, lr: f64, module: M, grads: GradientsParams) -> M {
        self.try_step(lr, module, grads)
            .unwrap_or_else(|e| panic!("wgpu-optim step: {e}"))
    }

    /// As [`step`](Self::step), returning errors. On error the module's values are unchanged
    /// and no step is taken.
    pub fn try_step<M: Module>(
        &mut self,
        lr: f64,
        module: M,
        mut grads: GradientsParams,
    ) -> Result<M> {
        let (module, gathered) = self.gather(module, Some(&mut grads))?;
        self.run(module, gathered, |opt| opt.set_lr(0, lr))
    }

    /// As [`step`](Self::step), with the learning rate (and the momentum or beta1 it cycles)
    /// of a wgpu-optim [`Scheduler`] of one parameter group; step the scheduler after.
    pub fn step_scheduled<M: Module>(
        &mut self,
        scheduler: &Scheduler,
        module: M,
        mut grads: GradientsParams,
    ) -> Result<M> {
        let (module, gathered) = self.gather(module, Some(&mut grads))?;
        self.run(module, gathered, |opt| opt.apply_schedule(scheduler))
    }

    /// Gathers the module's parameters (those with a gradient in `grads`, when given).
    fn gather<M: Module>(
        &mut self,
        module: M,
        grads: Option<&mut GradientsParams>,
    ) -> Result<(M, Vec<Gathered>)> {
        let mut gather = Gather {
            grads,
            path: Vec::new(),
            out: Vec::new(),
            error: None,
            copies: 0,
        };
        let module = module.map(&mut gather);
        self.copies += gather.copies;
        match gather.error {
            Some(e) => Err(e),
            None => Ok((module, gather.out)),
        }
    }

    /// Looks the gathered tensors up, builds the optimizer or moves it to them, and records and
    /// submits one step after Burn's pending work.
    fn run<M>(
        &mut self,
        module: M,
        gathered: Vec<Gathered>,
        set: impl FnOnce(&mut Optimizer) -> wgpu_optim::Result<()>,
    ) -> Result<M> {
        let ids: Vec<ParamId> = gathered.iter().map(|g| g.id).collect();
        if self.optimizer.is_some() && ids != self.ids {
            return Err(Error::Parameters(format!(
                "this step has gradients for {} parameters, the optimizer was built for {} others",
                ids.len(),
                self.ids.len()
            )));
        }
        if gathered.is_empty() {
            return Err(Error::Parameters("no parameter has a gradient".into()));
        }
        for g in &gathered {
            let key = memory_key(&g.param);
            if self.pinned.get(&g.id).is_none_or(|(k, _)| *k != key) {
                let resource = lookup(&g.name, &g.param)?;
                self.pinned.insert(g.id, (key, resource));
            }
        }
        // Parameters the module no longer has lose their pins.
        if self.pinned.len() > gathered.len() {
            let live: std::collections::HashSet<ParamId> = gathered.iter().map(|g| g.id).collect();
            self.pinned.retain(|id, _| live.contains(id));
        }
        let params: Vec<&Resource> = gathered.iter().map(|g| &self.pinned[&g.id].1).collect();
        let grads = gathered
            .iter()
            .map(|g| lookup(&g.name, g.grad.as_ref().expect("a step gathers gradients")))
            .collect::<Result<Vec<_>>>()?;
        fn range<'a>(r: &'a Resource, g: &Gathered) -> BufferRange<'a> {
            let r = r.resource();
            BufferRange::new(
                &r.buffer,
                r.offset,
                g.shape.iter().product::<usize>() as u64,
            )
        }
        let param_ranges: Vec<BufferRange<'_>> = params
            .iter()
            .zip(&gathered)
            .map(|(r, g)| range(r, g))
            .collect();
        let grad_ranges: Vec<BufferRange<'_>> = grads
            .iter()
            .zip(&gathered)
            .map(|(r, g)| range(r, g))
            .collect();
        match &mut self.optimizer {
            Some(opt) => opt.rebind(&grad_ranges, Some(&param_ranges))?,
            None => {
                let tensors: Vec<Range<'_>> = gathered
                    .iter()
                    .zip(param_ranges.iter().zip(&grad_ranges))
                    .map(|(g, (p, d))| Range::new(*p, *d).named(&g.name).with_shape(&g.shape))
                    .collect();
                let mut opt = Optimizer::new(&self.ctx, self.config, &tensors)?;
                opt.set_clip_grad(self.clip)?;
                self.optimizer = Some(opt);
                self.ids = ids;
            }
        }
        let opt = self.optimizer.as_mut().expect("built above");
        set(opt)?;
        // Burn's queued work (the backward pass that made the gradients) goes first.
        gathered[0]
            .param
            .client
            .flush()
            .map_err(|e| Error::Burn(format!("{e:?}")))?;
        opt.step_submit()?;
        // The lookups, and with them the gradients' memory, are released after the submit.
        drop((params, grads, gathered));
        self.scratch = None;
        Ok(module)
    }

    /// The wgpu-optim optimizer, once the first step (or [`load`](Self::load)) has built it:
    /// for its state, step counts and checkpoints.
    pub fn optimizer(&self) -> Option<&Optimizer> {
        self.optimizer.as_ref()
    }

    /// Parameters copied so far because another tensor shared their memory (a clone of the
    /// module, a view of a parameter).
    pub fn copies(&self) -> usize {
        self.copies
    }

    /// Saves a wgpu-optim checkpoint of the optimizer (see [`wgpu_optim::checkpoint`]), with
    /// the module's parameters when `parameters`, and a scheduler's state when given. Tensors
    /// are named by their paths in the module (`layer1.weight`).
    pub fn save(&self, path: &Path, scheduler: Option<&Scheduler>, parameters: bool) -> Result<()> {
        let opt = self
            .optimizer
            .as_ref()
            .ok_or_else(|| Error::Parameters("nothing to save before the first step".into()))?;
        Ok(opt.save(
            path,
            &SaveOptions {
                scheduler,
                parameters,
            },
        )?)
    }

    /// Loads a checkpoint that [`save`](Self::save) wrote into this fresh optimizer (before its
    /// first step), building it over `module`'s parameters; with `parameters`, the saved values
    /// are written into the module's parameters too, so that a fresh module resumes where the
    /// saved one stopped. A scheduler, when given, takes its saved state. On error the
    /// optimizer stays fresh and the module's values are unchanged.
    pub fn load<M: Module>(
        &mut self,
        path: &Path,
        module: M,
        scheduler: Option<&mut Scheduler>,
        parameters: bool,
    ) -> Result<M> {
        if self.optimizer.is_some() {
            return Err(Error::Parameters(
                "load a checkpoint into a fresh optimizer, before its first step".into(),
            ));
        }
        let (module, gathered) = self.gather(module, None)?;
        if gathered.is_empty() {
            return Err(Error::Parameters(
                "the module has no float parameters".into(),
            ));
        }
        let total: usize = gathered
            .iter()
            .map(|g| g.shape.iter().product::<usize>())
            .sum();
        let scratch = self.ctx.create_f32_buffer(
            "wgpu-optim-burn scratch gradients",
            &vec![0.0; total.max(1)],
        )?;
        let params = gathered
            .iter()
            .map(|g| lookup(&g.name, &g.param))
            .collect::<Result<Vec<_>>>()?;
        let mut at = 0u64;
        let mut tensors = Vec::with_capacity(gathered.len());
        for (r, g) in params.iter().zip(&gathered) {
            let n = g.shape.iter().product::<usize>() as u64;
            let r = r.resource();
            tensors.push(
                Range::new(
                    BufferRange::new(&r.buffer, r.offset, n),
                    BufferRange::new(&scratch, at * 4, n),
                )
                .named(&g.name)
                .with_shape(&g.shape),
            );
            at += n;
        }
        let mut opt = Optimizer::new(&self.ctx, self.config, &tensors)?;
        opt.set_clip_grad(self.clip)?;
        drop(tensors);
        // Burn's queued work goes before the loaded values land.
        gathered[0]
            .param
            .client
            .flush()
            .map_err(|e| Error::Burn(format!("{e:?}")))?;
        opt.load(
            path,
            LoadOptions {
                scheduler,
                parameters,
            },
        )?;
        self.ctx.queue().submit([]);
        drop(params);
        self.ids = gathered.iter().map(|g| g.id).collect();
        self.optimizer = Some(opt);
        self.scratch = Some(scratch);
        Ok(module)
    }
}
