//! Checking the kernels on one adapter: the engine of `wgpu-optim validate` and
//! `wgpu-optim info`.
//!
//! [`run`] steps every optimizer and option combination ([`all_configs`]) on the GPU for a few
//! steps of fresh random data in f32, and each class in every 16-bit storage layout
//! ([`storage_layouts`], [`all_rows`]), and holds every parameter and state element to the f64
//! [CPU reference](crate::reference): `|gpu − ref| ≤ ATOL + RTOL·(|ref| + path)`, where `path` is
//! the sum of the element's `|change|` over the steps ([`tolerance`], the bound of
//! `tests/kernels.rs`). The parameters are split into a few tensors of uneven sizes
//! ([`tensor_sizes`]) in one parameter buffer and one gradient buffer, with a sentinel value
//! in the gaps between them, which must keep its bits. The second tensor's gradient is misaligned against
//! its parameter, so that it runs the scalar kernels while the others run the context's
//! [`Access`] mode (vec4 by default): every configuration checks both. Beside
//! the GPU, the same steps run in float32 on
//! the CPU, to tell a kernel's error from the error that float32 arithmetic itself makes on the
//! data ([`Row::f32_cpu_error_over_tolerance`]). In a 16-bit layout the reference rounds the
//! parameters and the state where the kernels store them ([`crate::reference::step_stored`]),
//! and a value may also round apart from it by a unit of its type at a step, at no more than 5%
//! of the elements. Each row is then timed separately, and a plain buffer copy for comparison.
//!
//! ```no_run
//! use wgpu_optim::{Context, validate};
//! # fn main() -> Result<(), wgpu_optim::Error> {
//! let (ctx, _) = Context::request(wgpu::Backends::all(), None)?;
//! let report = validate::run(&ctx, &validate::Options::new(100_000, 5, 42))?;
//! print!("{}", report.table());
//! assert!(report.passed());
//! # Ok(())
//! # }
//! ```

use crate::amp::{ClipGrad, GradScaler, GradScalerState, NormType};
use crate::dtype::{DType, Precision, StateDType};
use crate::error::{Error, Result};
use crate::gpu::{Access, Context, F16Path};
use crate::optim::{Adam, AdamW, OptimizerConfig, RMSprop, SGD};
use crate::optimizer::{BufferRange, Optimizer, ParamGroup, Tensor};
use crate::reference::Stored;
use crate::state::TensorState;
use serde::Serialize;
use std::time::Instant;

/// Absolute tolerance of the comparison with the reference (as in `tests/kernels.rs`).
pub const ATOL: f64 = 2e-5;
/// Relative tolerance of the comparison with the reference (as in `tests/kernels.rs`).
pub const RTOL: f64 = 2e-5;
/// Default number of elements, over all tensors.
pub const DEFAULT_SIZE: u64 = 1_000_003;
/// Default number of optimizer steps.
pub const DEFAULT_STEPS: usize = 20;
/// The most steps `wgpu-optim validate --steps` takes: each runs the f64 reference on the CPU.
pub const MAX_STEPS: usize = 10_000;
/// A storage layout that [`run`] checks: the types of the parameters and the gradients, and
/// how the optimizer keeps its state and its 16-bit parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Storage {
    /// Its name in the report, without spaces: `f32`, `bf16`, `bf16+master+sr`, ...
    pub name: &'static str,
    /// The parameters' type.
    pub param: DType,
    /// The gradients' type.
    pub grad: DType,
    /// The state's type, master weights and stochastic rounding.
    pub precision: Precision,
    /// How f16 is stored ([`F16Path`]): the default, `Auto`, or one path alone, which runs
    /// only where the device has `SHADER_F16` (elsewhere `Auto` is the packed path).
    pub f16_path: F16Path,
}

impl Storage {
    /// Whether every buffer is f32: the reference then steps in f64 throughout, unrounded.
    fn is_f32(&self) -> bool {
        self.param == DType::F32
            && self.grad == DType::F32
            && self.precision.state.for_param(self.param) == DType::F32
    }

    /// Whether an optimizer of `config` can keep its tensors so: classes whose state the
    /// kernels read as f32 (Adafactor's factored state, Muon's matrix products) take no 16-bit
    /// state.
    pub fn applies_to(&self, config: &OptimizerConfig) -> bool {
        let kernel = config.kernel_for(&[2, 2]);
        let sixteen_bit_state = self.precision.state.for_param(self.param) != DType::F32;
        !(sixteen_bit_state && (kernel.factored() || kernel.phased()))
    }

    /// Whether `ctx`'s device runs this layout: every layout on the default f16 path, and
    /// those on one path alone where the device has `SHADER_F16`
    /// ([`Context::has_native_f16`]).
    pub fn runs_on(&self, ctx: &Context) -> bool {
        self.f16_path == F16Path::Auto || ctx.has_native_f16()
    }
}

/// Every storage layout [`run`] checks, each named for the report: `f32`; PyTorch's fused
/// 16-bit layouts, `bf16` and `f16` (parameters, gradients and state of one type);
/// `bf16+f32state`, bf16 parameters and gradients with f32 state; `bf16+master+sr`, the same
/// with an f32 master copy of the parameters and stochastic rounding (llm.c's); `f16+master`,
/// f16 parameters with f32 gradients, state and master copy (Apex's O2); `f32+bf16state`,
/// f32 parameters and gradients with bf16 state (torchtitan's); and `f16-packed` and
/// `f16-native`, the `f16` layout on each f16 path alone, which [`all_rows`] holds only where
/// the device has `SHADER_F16` ([`Storage::runs_on`]). The others take the default path.
pub fn storage_layouts() -> Vec<Storage> {
    let kept = |state| Precision::default().with_state(state);
    let master = kept(StateDType::F32).with_master_weights(true);
    let layout = |name, param, grad, precision| Storage {
        name,
        param,
        grad,
        precision,
        f16_path: F16Path::Auto,
    };
    vec![
        layout("f32", DType::F32, DType::F32, Precision::default()),
        layout("bf16", DType::BF16, DType::BF16, Precision::default()),
        layout("f16", DType::F16, DType::F16, Precision::default()),
        layout(
            "bf16+f32state",
            DType::BF16,
            DType::BF16,
            kept(StateDType::F32),
        ),
        layout(
            "bf16+master+sr",
            DType::BF16,
            DType::BF16,
            master.with_stochastic_rounding(Some(0x5eed)),
        ),
        layout("f16+master", DType::F16, DType::F32, master),
        layout(
            "f32+bf16state",
            DType::F32,
            DType::F32,
            kept(StateDType::BF16),
        ),
        Storage {
            f16_path: F16Path::Packed,
            ..layout("f16-packed", DType::F16, DType::F16, Precision::default())
        },
        Storage {
            f16_path: F16Path::Native,
            ..layout("f16-native", DType::F16, DType::F16, Precision::default())
        },
    ]
}

/// The layouts of [`storage_layouts`] that `ctx`'s device runs ([`Storage::runs_on`]).
fn layouts_on(ctx: &Context) -> Vec<Storage> {
    storage_layouts()
        .into_iter()
        .filter(|s| s.runs_on(ctx))
        .collect()
}

/// The rows [`run`] checks on `ctx`'s device: every configuration of [`all_configs`] and every
/// recipe of [`all_recipes`] in f32, and in every other storage layout of [`storage_layouts`]
/// that the device runs, the first configuration of each class (by
/// [`OptimizerConfig::CLASSES`]) that the layout applies to.
pub fn all_rows(ctx: &Context) -> Vec<(OptimizerConfig, Recipe, Storage)> {
    let layouts = layouts_on(ctx);
    let configs = all_configs();
    let mut order: Vec<usize> = (0..configs.len()).collect();
    order.sort_by_cached_key(|&i| display_key(&configs[i]));
    let plain = Recipe {
        clip: None,
        grad_scaler: None,
    };
    let mut rows: Vec<(OptimizerConfig, Recipe, Storage)> = order
        .iter()
        .map(|&i| (configs[i], plain, layouts[0]))
        .collect();
    rows.extend(all_recipes().into_iter().map(|(c, r)| (c, r, layouts[0])));
    for layout in &layouts[1..] {
        let mut classes = Vec::new();
        for &i in &order {
            let config = configs[i];
            if !classes.contains(&config.type_name()) && layout.applies_to(&config) {
                classes.push(config.type_name());
                rows.push((config, plain, *layout));
            }
        }
    }
    rows
}
/// Relative errors are reported over elements whose reference is at least this large in
/// magnitude; smaller ones are judged by [`ATOL`] (the pass criterion covers every element).
pub const REL_ERROR_FLOOR: f64 = 1e-3;

/// Elements the CPU reference handles as one unit of work (one thread at a time).
const CHUNK: u64 = 1 << 16;
/// Poisoned elements before the first tensor.
const LEAD: u64 = 5;

/// The tensor whose gradient [`run`] misaligns against its parameter, so that it runs the
/// scalar kernels (see [`crate::Access`]).
const SCALAR_TENSOR: usize = 1;

/// What the gaps between tensors hold, compared bit for bit after the steps: finite and of
/// moderate size, so that a kernel that wrongly stores a whole vec4 over it, computing with it,
/// changes its bits (a NaN would stay NaN).
const GAP: f32 = -0.318_309_87;

/// SplitMix64: a small generator, deterministic for a seed, for the validation data.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
    spare: Option<f32>,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare: None,
        }
    }

    /// A seed from the system clock, for runs that are not asked to repeat one.
    pub fn clock_seed() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5EED)
    }

    /// An independent generator for the stream numbered `stream`, derived from `seed`.
    pub fn stream(seed: u64, stream: u64) -> Self {
        let mut mix = Self::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let _ = mix.next_u64();
        Self::new(mix.next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A standard normal sample (Box-Muller; each pair of uniforms gives two samples).
    pub fn normal(&mut self) -> f32 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare = Some((r * s) as f32);
        (r * c) as f32
    }

    /// Fills `out` with normal samples times `scale`.
    pub fn fill_normal(&mut self, out: &mut [f32], scale: f32) {
        for x in out {
            *x = self.normal() * scale;
        }
    }
}

/// Every option combination of every optimizer ([`OptimizerConfig`]'s registry): each
/// class's kernels with non-default hyperparameters, each with and without weight decay and
/// `maximize`.
pub fn all_configs() -> Vec<OptimizerConfig> {
    OptimizerConfig::all_cases()
}

/// What a training loop does around the step, as [`run`] checks it: clipping, and a grad
/// scaler whose gradients overflow at the second step (so that the step is skipped and the
/// scale backs off).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recipe {
    /// `clip_grad_norm_` or `clip_grad_value_` in each step.
    pub clip: Option<ClipGrad>,
    /// A grad scaler; the gradients written are then the scaled ones.
    pub grad_scaler: Option<GradScaler>,
}

impl Recipe {
    /// How the recipe reads in the report's options column, e.g.
    /// `clip_grad_norm(1, 2) GradScaler(1024)`.
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        match self.clip {
            Some(ClipGrad::Norm {
                max_norm,
                norm_type,
            }) => parts.push(format!("clip_grad_norm({max_norm}, {norm_type})")),
            Some(ClipGrad::Value { clip_value }) => {
                parts.push(format!("clip_grad_value({clip_value})"));
            }
            None => {}
        }
        if let Some(s) = self.grad_scaler {
            parts.push(format!("GradScaler({})", s.init_scale));
        }
        parts.join(" ")
    }
}

/// The clipping and grad-scaling rows of [`run`], each with one optimizer: norm clipping
/// (2 and inf) with a grad scaler, value clipping, and a scaler alone. Gradients are normal
/// times 0.5 (times the scale): the total norm of a million is about 500, so these norms clip.
pub fn all_recipes() -> Vec<(OptimizerConfig, Recipe)> {
    let scaler = Some(GradScaler {
        init_scale: 1024.0,
        growth_interval: 2,
        ..Default::default()
    });
    vec![
        (
            Adam {
                lr: 0.01,
                weight_decay: 0.05,
                ..Default::default()
            }
            .into(),
            Recipe {
                clip: Some(ClipGrad::norm(1.0)),
                grad_scaler: scaler,
            },
        ),
        (
            SGD {
                lr: 0.05,
                momentum: 0.9,
                nesterov: true,
                ..Default::default()
            }
            .into(),
            Recipe {
                clip: Some(ClipGrad::Norm {
                    max_norm: 1.0,
                    norm_type: NormType::Inf,
                }),
                grad_scaler: scaler,
            },
        ),
        (
            AdamW {
                lr: 0.01,
                amsgrad: true,
                ..Default::default()
            }
            .into(),
            Recipe {
                clip: Some(ClipGrad::value(0.5)),
                grad_scaler: None,
            },
        ),
        (
            RMSprop {
                lr: 0.01,
                momentum: 0.9,
                centered: true,
                ..Default::default()
            }
            .into(),
            Recipe {
                clip: None,
                grad_scaler: scaler,
            },
        ),
    ]
}

/// The order of the report's rows: by optimizer class (in the registry's order), then kernel,
/// then options.
fn display_key(config: &OptimizerConfig) -> (usize, String, String) {
    let class = OptimizerConfig::CLASSES
        .iter()
        .position(|c| *c == config.type_name())
        .unwrap_or(usize::MAX);
    (class, config.kernel_name(), config.options())
}

/// The name of the kernel that runs `config`, e.g. `"adam_amsgrad"` (AdamW runs Adam's
/// kernels).
pub fn kernel_name(config: &OptimizerConfig) -> String {
    config.kernel_name()
}

/// The names of every kernel, once each, in the registry's order.
pub fn kernel_names() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for config in all_configs() {
        let name = config.kernel_name();
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// The hyperparameters of `config` that differ from PyTorch's defaults, as `name=value`
/// (flags that are on by their name alone), or `"defaults"`.
pub fn options(config: &OptimizerConfig) -> String {
    config.options()
}

/// How [`run`] splits `size` elements into tensors: uneven sizes that add up to `size`,
/// including a 1-element tensor and one of 257 elements (not a multiple of the 256-thread
/// workgroup) when `size` allows, and the rest in three tensors of about 5/8, 2/8 and 1/8.
pub fn tensor_sizes(size: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut left = size;
    for small in [1, 257] {
        if left >= small + 3 {
            out.push(small);
            left -= small;
        }
    }
    let part = |eighths: u128| (u128::from(left) * eighths / 8) as u64;
    let (a, b) = (part(5), part(2));
    for n in [a, b, left - a - b] {
        if n > 0 {
            out.push(n);
        }
    }
    out
}

/// The shape [`run`] gives tensor `k` of `n` elements, which matters where the state depends
/// on it (Adafactor factors tensors of two dimensions or more): the 257-element tensor is a
/// column `[257, 1]`, the largest a matrix as near square as its divisors allow, the smallest
/// of the three large ones a stack of matrices (`[m, rows, cols]`, m its smallest prime
/// factor), the others vectors.
fn tensor_shape(k: usize, n: u64) -> Vec<usize> {
    let matrix = |x: usize| crate::bench::matrix_shape(x as u64).to_vec();
    let n = n as usize;
    match k {
        1 if n == 257 => vec![n, 1],
        2 => matrix(n),
        4 if n > 1 => {
            let m = (2..=n).find(|&d| n.is_multiple_of(d)).unwrap_or(n);
            [vec![m], matrix(n / m)].concat()
        }
        _ => vec![n],
    }
}

/// The matrix [`run`] gives tensor `k` of `n` elements for a class that takes matrices only:
/// `d` rows, `d` the largest divisor of `n` up to 4, or for odd `k`, `d` columns (a tall matrix,
/// which Muon iterates transposed).
fn narrow_matrix(k: usize, n: u64) -> Vec<usize> {
    let n = n as usize;
    let d = (1..=n.min(4))
        .rev()
        .find(|&d| n.is_multiple_of(d))
        .unwrap_or(1);
    if k % 2 == 1 {
        vec![n / d, d]
    } else {
        vec![d, n / d]
    }
}

/// An adapter's identity, as the report prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdapterSummary {
    /// The adapter's name, e.g. `llvmpipe (LLVM 15.0.7, 256 bits)`.
    pub name: String,
    /// The backend: `Vulkan`, `Metal`, `Dx12`, `Gl`.
    pub backend: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu` or `Other`.
    pub device_type: String,
    /// The driver's name.
    pub driver: String,
    /// The driver's version information.
    pub driver_info: String,
}

impl From<&wgpu::AdapterInfo> for AdapterSummary {
    fn from(info: &wgpu::AdapterInfo) -> Self {
        Self {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
        }
    }
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {}", self.name, self.backend, self.device_type)?;
        match (self.driver.is_empty(), self.driver_info.is_empty()) {
            (false, false) => write!(f, ", {} {}", self.driver, self.driver_info)?,
            (false, true) => write!(f, ", {}", self.driver)?,
            (true, false) => write!(f, ", {}", self.driver_info)?,
            (true, true) => {}
        }
        write!(f, ")")
    }
}

/// The limits of an adapter that matter to the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LimitsSummary {
    /// Largest buffer, in bytes.
    pub max_buffer_size: u64,
    /// Largest storage binding, in bytes: larger tensors are split across dispatches.
    pub max_storage_buffer_binding_size: u64,
    /// Largest uniform binding, in bytes: a batch's segment table needs about 12 KiB.
    pub max_uniform_buffer_binding_size: u64,
    /// Largest dispatch along one dimension.
    pub max_compute_workgroups_per_dimension: u32,
    /// Storage buffers one kernel may bind: every kernel binds 4 (step coefficients,
    /// parameters, gradients, and all state buffers in one).
    pub max_storage_buffers_per_shader_stage: u32,
    /// Alignment of storage binding offsets, in bytes.
    pub min_storage_buffer_offset_alignment: u32,
}

impl From<&wgpu::Limits> for LimitsSummary {
    fn from(l: &wgpu::Limits) -> Self {
        Self {
            max_buffer_size: l.max_buffer_size,
            max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
            max_uniform_buffer_binding_size: l.max_uniform_buffer_binding_size,
            max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
            max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
            min_storage_buffer_offset_alignment: l.min_storage_buffer_offset_alignment,
        }
    }
}

/// One adapter as `wgpu-optim info` lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdapterDetails {
    /// Name, backend, type and driver.
    pub adapter: AdapterSummary,
    /// The limits that matter here.
    pub limits: LimitsSummary,
    /// Whether the adapter offers `wgpu::Features::SHADER_F16`.
    pub shader_f16: bool,
}

impl AdapterDetails {
    /// Several lines describing the adapter, its limits, its f16 support and the path 16-bit
    /// storage takes on it.
    pub fn describe(&self) -> String {
        let a = &self.adapter;
        let l = &self.limits;
        let bytes = |b: u64| format!("{b} bytes ({})", human_bytes(b));
        let mut lines = vec![
            a.name.clone(),
            format!("  backend: {}", a.backend),
            format!("  device type: {}", a.device_type),
            format!(
                "  driver: {}",
                [a.driver.as_str(), a.driver_info.as_str()]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            format!("  max_buffer_size: {}", bytes(l.max_buffer_size)),
            format!(
                "  max_storage_buffer_binding_size: {}",
                bytes(l.max_storage_buffer_binding_size)
            ),
            format!(
                "  max_uniform_buffer_binding_size: {}",
                bytes(l.max_uniform_buffer_binding_size)
            ),
            format!(
                "  max_compute_workgroups_per_dimension: {}",
                l.max_compute_workgroups_per_dimension
            ),
            format!(
                "  max_storage_buffers_per_shader_stage: {}",
                l.max_storage_buffers_per_shader_stage
            ),
            format!(
                "  min_storage_buffer_offset_alignment: {} bytes",
                l.min_storage_buffer_offset_alignment
            ),
            format!(
                "  f16 (SHADER_F16): {}",
                if self.shader_f16 {
                    "supported"
                } else {
                    "not supported"
                }
            ),
            format!(
                "  f16 storage: {}",
                if self.shader_f16 {
                    "native f16 arrays where single elements are stored, vec4 units packed two to a 32-bit word (F16Path::Auto, the default); either throughout with F16Path::Native or Packed"
                } else {
                    "packed two to a 32-bit word (no native path without SHADER_F16)"
                }
            ),
            "  bf16 storage: packed two to a 32-bit word, converted by bit operations".into(),
        ];
        if l.max_storage_buffers_per_shader_stage < 4 {
            lines.push(
                "  no kernel runs: every kernel binds 4 storage buffers (max_storage_buffers_per_shader_stage)"
                    .into(),
            );
        }
        lines.join("\n")
    }
}

/// `bytes` in GiB, MiB or KiB, whichever reads best.
fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    let (value, unit) = if b >= (1u64 << 30) as f64 {
        (b / (1u64 << 30) as f64, "GiB")
    } else if b >= (1u64 << 20) as f64 {
        (b / (1u64 << 20) as f64, "MiB")
    } else {
        (b / 1024.0, "KiB")
    };
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} {unit}")
}

/// Every adapter wgpu finds on `backends`, in wgpu's order. Fails with
/// [`Error::NoAdapter`] when there is none.
pub fn adapters(backends: wgpu::Backends) -> Result<Vec<AdapterDetails>> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let found: Vec<AdapterDetails> = pollster::block_on(instance.enumerate_adapters(backends))
        .iter()
        .map(|a| AdapterDetails {
            adapter: AdapterSummary::from(&a.get_info()),
            limits: LimitsSummary::from(&a.limits()),
            shader_f16: a.features().contains(wgpu::Features::SHADER_F16),
        })
        .collect();
    if found.is_empty() {
        return Err(Error::NoAdapter(format!(" for backends {backends:?}")));
    }
    Ok(found)
}

/// What [`run`] does: how many elements, how many steps, and the seed of the data.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Options {
    /// Elements over all tensors (at least 1).
    pub size: u64,
    /// Optimizer steps for the correctness check, and again for the timing (at least 1).
    pub steps: usize,
    /// Seed of the random parameters and gradients; the same seed gives the same data.
    pub seed: u64,
    /// Factor on the learning rate of the CPU reference (and of its float32 evaluation) only,
    /// 1 for a real check. Anything else must make rows fail: this checks the failure path.
    pub reference_lr_scale: f64,
}

impl Options {
    /// Options with these values, checking against the true reference.
    pub fn new(size: u64, steps: usize, seed: u64) -> Self {
        Self {
            size,
            steps,
            seed,
            reference_lr_scale: 1.0,
        }
    }
}

/// The outcome of one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every element within tolerance, gaps untouched, step counts right.
    Pass,
    /// A wrong element, a written gap, or an error other than [`Error::Unsupported`].
    Fail,
    /// The adapter cannot run this kernel ([`Error::Unsupported`]); not a failure.
    Unsupported,
}

impl Status {
    /// `"pass"`, `"FAIL"` or `"unsupported"`, as the table prints it.
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Unsupported => "unsupported",
        }
    }
}

/// One optimizer configuration in one storage type.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// PyTorch's class name, e.g. `"AdamW"`.
    pub optimizer: &'static str,
    /// The kernel, e.g. `"adam_amsgrad"`.
    pub kernel: String,
    /// The hyperparameters that differ from PyTorch's defaults (see [`options`]).
    pub options: String,
    /// The full configuration.
    pub config: OptimizerConfig,
    /// The storage layout's name ([`Storage::name`]).
    pub storage: &'static str,
    /// The outcome.
    pub status: Status,
    /// Largest `|gpu − ref|` over every parameter and state element; `None` when the row did
    /// not run, infinite (null in JSON) when an element is NaN.
    pub max_abs_error: Option<f64>,
    /// Largest `|gpu − ref| / |ref|` over elements with `|ref| ≥` [`REL_ERROR_FLOOR`].
    pub max_rel_error: Option<f64>,
    /// Largest `|gpu − ref|` over its [`tolerance`]: at most 1 to pass.
    pub max_error_over_tolerance: Option<f64>,
    /// The same measure for a float32 evaluation of the same formulas on the CPU, in PyTorch's
    /// order of operations: the error that f32 arithmetic itself makes on this data. A row that
    /// fails with an error near this one fails for the data's conditioning (for example a
    /// gradient that nearly cancels its weight-decay term), not for a kernel bug. Informative
    /// only: it does not change the status.
    pub f32_cpu_error_over_tolerance: Option<f64>,
    /// Bytes each step must move per element (see [`crate::bench::bytes_per_element`]).
    pub bytes_per_element: u64,
    /// Approximate throughput: `bytes_per_element × size × steps` over the wall time of
    /// submitting that many steps and waiting for them.
    pub gb_per_s: Option<f64>,
    /// Why the row failed or is unsupported; the worst element when it failed on accuracy.
    pub detail: Option<String>,
}

/// The reference throughput of a plain `copy_buffer_to_buffer`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CopyBandwidth {
    /// Bytes read plus written per element: Adam's 28 (14 read, 14 written).
    pub bytes_per_element: u64,
    /// Bytes each copy copies.
    pub bytes_copied: u64,
    /// Bytes read plus written per second, in GB/s (approximate).
    pub gb_per_s: f64,
}

/// Everything [`run`] found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The adapter it ran on.
    pub adapter: AdapterSummary,
    /// The storage layouts checked, by name ([`storage_layouts`]).
    pub storage: Vec<&'static str>,
    /// Elements over all tensors.
    pub size: u64,
    /// Sizes of the tensors (see [`tensor_sizes`]).
    pub tensor_sizes: Vec<u64>,
    /// Optimizer steps.
    pub steps: usize,
    /// Seed of the data: `--seed` with this value repeats the run.
    pub seed: u64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance.
    pub rtol: f64,
    /// One row per configuration and storage type.
    pub rows: Vec<Row>,
    /// The copy that the GB/s figures compare with; `None` when it could not be timed.
    pub copy: Option<CopyBandwidth>,
    /// Wall time of the whole run, in seconds.
    pub seconds: f64,
}

impl Report {
    /// True when no row failed (unsupported rows are not failures).
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|r| r.status != Status::Fail)
    }

    /// Rows with each status: `(passed, failed, unsupported)`.
    pub fn counts(&self) -> (usize, usize, usize) {
        let n = |s| self.rows.iter().filter(|r| r.status == s).count();
        (n(Status::Pass), n(Status::Fail), n(Status::Unsupported))
    }

    /// The report as JSON: the adapter, the settings and every row.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Input(e.to_string()))
    }

    /// The report as a text table, with a header naming the adapter, the data and the seed,
    /// and the failures explained below it.
    pub fn table(&self) -> String {
        let sci = |x: Option<f64>| match x {
            Some(x) if x.is_finite() => format!("{x:.2e}"),
            Some(_) => "inf".into(),
            None => "-".into(),
        };
        let gbs = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.1}"));
        let ratio = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.3}"));
        let header = [
            "optimizer",
            "kernel",
            "options",
            "storage",
            "max abs err",
            "max rel err",
            "err/allowed",
            "f32 cpu err/tol",
            "status",
            "~GB/s",
        ];
        let mut cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.optimizer.to_string(),
                    r.kernel.to_string(),
                    r.options.clone(),
                    r.storage.to_string(),
                    sci(r.max_abs_error),
                    sci(r.max_rel_error),
                    ratio(r.max_error_over_tolerance),
                    ratio(r.f32_cpu_error_over_tolerance),
                    r.status.label().to_string(),
                    gbs(r.gb_per_s),
                ]
            })
            .collect();
        if let Some(c) = &self.copy {
            cells.push(vec![
                "copy".into(),
                "copy_buffer_to_buffer".into(),
                format!("{} B/element read + written", c.bytes_per_element),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                gbs(Some(c.gb_per_s)),
            ]);
        }
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        // Text columns left-aligned, numbers right-aligned.
        let right = [
            false, false, false, false, true, true, true, true, false, true,
        ];
        let line = |row: &[String]| {
            let parts: Vec<String> = row
                .iter()
                .zip(&widths)
                .zip(right)
                .map(|((c, &w), r)| {
                    if r {
                        format!("{c:>w$}")
                    } else {
                        format!("{c:<w$}")
                    }
                })
                .collect();
            parts.join("  ").trim_end().to_string()
        };
        let (pass, fail, unsupported) = self.counts();
        let mut out = String::new();
        out.push_str(&format!("wgpu-optim validate on {}\n", self.adapter));
        out.push_str(&format!(
            "{} elements in {} tensors {:?} with poisoned gaps; {} steps; seed {} (--seed {} repeats this data)\n",
            self.size,
            self.tensor_sizes.len(),
            self.tensor_sizes,
            self.steps,
            self.seed,
            self.seed
        ));
        out.push_str(&format!(
            "storage layouts: {} (every configuration in f32; each class's first in the others: \
             bf16 and f16 as PyTorch's fused kernels keep them, then f32 state, master weights \
             (+master), stochastic rounding (+sr) and bf16 state beside f32 parameters)\n",
            self.storage.join(", ")
        ));
        out.push_str(&format!(
            "pass: every parameter and state element within tol = {:e} + {:e}·(|ref| + Σ|change| over the steps) \
             of the f64 CPU reference, or within twice the error of float32 arithmetic itself there (the same \
             steps in f32 on the CPU), whichever is larger (err/allowed ≤ 1), the reference rounding 16-bit values where \
             the kernels store them, and each 16-bit value also within a unit of its type a step at no more than 5% of \
             the elements; rel err = |err|/|ref| over |ref| ≥ {REL_ERROR_FLOOR:e}\n\n",
            self.atol, self.rtol
        ));
        out.push_str(&line(&header.map(String::from)));
        out.push('\n');
        for row in &cells {
            out.push_str(&line(row));
            out.push('\n');
        }
        out.push_str(
            "\n~GB/s is approximate: the bytes each step must move (parameter read + write, gradient \
             read, each state buffer read + write) times steps, over the wall time of submitting the \
             steps and waiting (device.poll); copy: copy_buffer_to_buffer moving the same bytes as Adam.\n",
        );
        for r in &self.rows {
            if let (Status::Fail | Status::Unsupported, Some(d)) = (r.status, &r.detail) {
                out.push_str(&format!(
                    "{} {} {} [{}]: {d}\n",
                    r.status.label(),
                    r.optimizer,
                    r.options,
                    r.storage
                ));
            }
        }
        out.push_str(&format!(
            "{pass} passed, {fail} failed, {unsupported} unsupported, in {:.1} s\n",
            self.seconds
        ));
        out
    }
}

/// Runs every configuration of [`all_configs`] in every storage type on `ctx` (see the
/// [module](self) documentation). A configuration that fails becomes a failed row; `run` itself
/// fails only when the options are invalid or the shared buffers cannot be made.
pub fn run(ctx: &Context, options: &Options) -> Result<Report> {
    run_with_progress(ctx, options, |_, _, _| {})
}

/// [`run`], calling `progress(done, total, row)` after each row.
pub fn run_with_progress(
    ctx: &Context,
    options: &Options,
    mut progress: impl FnMut(usize, usize, &Row),
) -> Result<Report> {
    let started = Instant::now();
    let Options {
        size,
        steps,
        seed,
        reference_lr_scale,
    } = *options;
    if !(reference_lr_scale.is_finite() && reference_lr_scale > 0.0) {
        return Err(Error::Input(format!(
            "--reference-lr-scale must be a positive number, got {reference_lr_scale}"
        )));
    }
    if size == 0 {
        return Err(Error::Input("--size must be at least 1".into()));
    }
    if steps == 0 {
        return Err(Error::Input("--steps must be at least 1".into()));
    }
    let layout = Layout::new(size)?;
    let max_buffer = ctx.limits().max_buffer_size;
    // The largest buffer: f32 parameters or gradients.
    let bytes = layout.total.saturating_mul(4);
    if bytes > max_buffer {
        return Err(Error::TooLarge {
            what: format!("a parameter buffer of {} elements", layout.total),
            bytes,
            limit: max_buffer,
            limit_name: "max_buffer_size",
        });
    }
    let rows_to_run = all_rows(ctx);
    let total_rows = rows_to_run.len();
    let mut rows = Vec::with_capacity(total_rows);
    // The buffers of the storage layout being checked: rows come grouped by layout.
    let mut held: Option<(&'static str, wgpu::Buffer, wgpu::Buffer)> = None;
    for (i, (config, recipe, storage)) in rows_to_run.iter().enumerate() {
        if held.as_ref().is_none_or(|h| h.0 != storage.name) {
            // The last layout's buffers go before the next's are made.
            held.take();
            let gaps = storage.param.encode(&try_vec(layout.total, GAP)?);
            let nans = storage.grad.encode(&try_vec(layout.total, f32::NAN)?);
            let param = ctx.create_byte_buffer("validate params", &gaps)?;
            let grad = ctx.create_byte_buffer("validate grads", &nans)?;
            held = Some((storage.name, param, grad));
        }
        let (_, param, grad) = held.as_ref().expect("the layout's buffers");
        let buffers = Buffers { param, grad };
        let data_seed = Rng::stream(seed, i as u64).next_u64();
        let row = run_row(
            ctx,
            (config, *recipe, storage),
            &layout,
            buffers,
            (steps, data_seed, reference_lr_scale),
        )?;
        progress(rows.len() + 1, total_rows, &row);
        rows.push(row);
    }
    let copy = time_copy(ctx, size, steps).ok();
    Ok(Report {
        adapter: AdapterSummary::from(&ctx.device().adapter_info()),
        storage: layouts_on(ctx).iter().map(|s| s.name).collect(),
        size,
        tensor_sizes: layout.sizes.clone(),
        steps,
        seed,
        atol: ATOL,
        rtol: RTOL,
        rows,
        copy,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Where the tensors lie in the shared buffers, in elements.
#[derive(Clone)]
struct Layout {
    sizes: Vec<u64>,
    /// Each tensor's shape ([`tensor_shape`]).
    shapes: Vec<Vec<usize>>,
    /// Parameter offsets.
    offsets: Vec<u64>,
    /// Gradient offsets: the parameter offsets, except that tensor [`SCALAR_TENSOR`]'s
    /// gradient lies one element further on, so that its parameter and gradient disagree in
    /// alignment and it runs the scalar kernels while the others run the context's access mode.
    grad_offsets: Vec<u64>,
    /// Elements of each buffer, gaps included.
    total: u64,
}

impl Layout {
    /// This layout with shapes that `config` takes: for a class that takes matrices only
    /// (Muon), each tensor a matrix with at most 4 rows or 4 columns ([`narrow_matrix`]), so
    /// that the CPU reference's products stay quick.
    fn for_config(&self, config: &OptimizerConfig) -> Layout {
        if self.shapes.iter().all(|s| config.check_shape(s).is_ok()) {
            return self.clone();
        }
        let shapes = self
            .sizes
            .iter()
            .enumerate()
            .map(|(k, &n)| narrow_matrix(k, n))
            .collect();
        Layout {
            shapes,
            ..self.clone()
        }
    }

    fn new(size: u64) -> Result<Self> {
        let sizes = tensor_sizes(size);
        let shapes = sizes
            .iter()
            .enumerate()
            .map(|(k, &n)| tensor_shape(k, n))
            .collect();
        let mut offsets = Vec::with_capacity(sizes.len());
        let mut at = LEAD;
        for (k, &n) in sizes.iter().enumerate() {
            offsets.push(at);
            // Gaps of 3k + 1 elements: tensors start at unaligned offsets, with NaN between.
            at = at
                .checked_add(n)
                .and_then(|a| a.checked_add(3 * k as u64 + 1))
                .ok_or_else(|| Error::Input(format!("--size {size} is too large")))?;
        }
        // The gap after tensor 1 is 4 elements: its gradient moved by one stays in it.
        let grad_offsets = offsets
            .iter()
            .enumerate()
            .map(|(k, &o)| if k == SCALAR_TENSOR { o + 1 } else { o })
            .collect();
        Ok(Self {
            sizes,
            shapes,
            offsets,
            grad_offsets,
            // Whole vec4s, so that the last tensor can use vec4 access too.
            total: at.next_multiple_of(4),
        })
    }
}

#[derive(Clone, Copy)]
struct Buffers<'a> {
    param: &'a wgpu::Buffer,
    grad: &'a wgpu::Buffer,
}

/// A vector of `n` copies of `value`, or an error when memory runs out.
fn try_vec<T: Clone>(n: u64, value: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    usize::try_from(n)
        .ok()
        .and_then(|n| v.try_reserve_exact(n).ok())
        .ok_or_else(|| Error::Input(format!("not enough host memory for {n} elements")))?;
    v.resize(n as usize, value);
    Ok(v)
}

/// A piece of one tensor that the CPU reference steps as a unit (the whole tensor, where the
/// update depends on sums over it): its own f64 parameters and state, and its own random
/// stream.
struct Chunk {
    tensor: usize,
    /// How the parameter is kept where the storage is not all f32: the reference then rounds
    /// the parameters and the state as the kernels store them ([`crate::reference::step_stored`]).
    stored: Option<Stored>,
    /// The f32 master copies of the reference and of its float32 evaluation, where the
    /// optimizer keeps them.
    master: Option<Vec<f64>>,
    master32: Option<Vec<f32>>,
    /// Its shape: the tensor's where it is the whole tensor, else one dimension.
    shape: Vec<usize>,
    /// First element within the tensor.
    start: u64,
    /// First element within the parameter buffer.
    at: u64,
    /// First element within the gradient buffer.
    grad_at: u64,
    len: u64,
    param: Vec<f64>,
    state: TensorState<f64>,
    /// Each element's sum of `|change|` over the steps, of the parameters and of each state
    /// buffer (see [`tolerance`]).
    param_path: Vec<f64>,
    state_paths: std::collections::BTreeMap<String, Vec<f64>>,
    /// The same steps in float32 on the CPU ([`reference::step`](crate::reference::step) in
    /// f32).
    param32: Vec<f32>,
    state32: TensorState<f32>,
    rng: Rng,
    /// A step's gradients after unscaling and clipping, for [`Chunk::step_f64`].
    prepared: Vec<f64>,
}

impl Chunk {
    /// One step of the reference, adding each element's change to its path. State paths start
    /// at the second step, as in `tests/kernels.rs` (the state does not exist before the first).
    fn step(&mut self, config: &OptimizerConfig, grad: &[f32]) {
        let g: Vec<f64> = grad.iter().map(|&v| f64::from(v)).collect();
        self.step_both(config, &g, grad);
    }

    /// [`step`](Self::step) with gradients prepared in f64 (unscaled, clipped); the float32
    /// steps get them rounded to f32.
    fn step_f64(&mut self, config: &OptimizerConfig, grad: &[f64]) {
        let g32: Vec<f32> = grad.iter().map(|&v| v as f32).collect();
        self.step_both(config, grad, &g32);
    }

    fn step_both(&mut self, config: &OptimizerConfig, g: &[f64], grad: &[f32]) {
        let first = self.state.step == 0;
        let before_param = self.param.clone();
        let before_state = if first {
            Default::default()
        } else {
            self.state.buffers.clone()
        };
        let shape = &self.shape;
        match self.stored {
            Some(stored) => {
                let (param, state) = (&mut self.param, &mut self.state);
                let master = self.master.as_deref_mut();
                crate::reference::step_stored(config, shape, state, param, master, g, stored);
                let (param, state) = (&mut self.param32, &mut self.state32);
                let master = self.master32.as_deref_mut();
                crate::reference::step_stored(config, shape, state, param, master, grad, stored);
            }
            None => {
                crate::reference::step_shaped(config, shape, &mut self.state, &mut self.param, g);
                let (param, state) = (&mut self.param32, &mut self.state32);
                crate::reference::step_shaped(config, shape, state, param, grad);
            }
        }
        let add = |path: &mut [f64], old: &[f64], new: &[f64]| {
            for ((p, a), b) in path.iter_mut().zip(old).zip(new) {
                *p += (a - b).abs();
            }
        };
        add(&mut self.param_path, &before_param, &self.param);
        for (name, old) in &before_state {
            if let (Some(new), Some(path)) =
                (self.state.buffers.get(name), self.state_paths.get_mut(name))
            {
                add(path, old, new);
            }
        }
    }
}

/// The allowed error of an element whose reference value is `want` and whose value moved by
/// `path` in all over the steps: `ATOL + RTOL·(|want| + path)`. Float32 rounding over many steps
/// grows with what was added up, not with the final value alone; this is the bound of
/// `tests/kernels.rs`.
pub fn tolerance(want: f64, path: f64) -> f64 {
    ATOL + RTOL * (want.abs() + path)
}

/// What an element may be off by: its tolerance, or twice the error that float32 arithmetic
/// itself makes there (the float32 CPU evaluation of the same steps), whichever is larger. Where
/// the data is ill-conditioned (a gradient and its weight decay that nearly cancel, say) float32
/// cannot do better than that, and the golden test holds the kernels to PyTorch in the same way.
///
/// Only a finite float32 error widens the bound: where float32 on the CPU also ends in inf or
/// NaN, the kernel is still held to the tolerance (an infinite allowance would let a NaN pass,
/// since inf / inf is NaN and NaN compares false).
pub fn allowed(tolerance: f64, float32_error: f64) -> f64 {
    if float32_error.is_finite() {
        tolerance.max(2.0 * float32_error)
    } else {
        tolerance
    }
}

/// The worst errors seen so far, over every compared element.
#[derive(Default)]
struct Errors {
    max_abs: f64,
    max_rel: f64,
    max_ratio: f64,
    /// The largest error over tolerance of the float32 CPU evaluation.
    max_ratio32: f64,
    worst: Option<String>,
    failure: Option<String>,
    /// Elements compared, and those of a 16-bit type beyond the allowance that only whole
    /// units of their type (one a step) cover: a value that rounds apart from the reference's
    /// at a step, which the order of operations may do now and then.
    compared: usize,
    rounded_apart: usize,
}

impl Errors {
    /// Compares `got` with `want`, whose values moved by `path` over the steps and which
    /// float32 on the CPU gives as `cpu32`. With `units`, `(dtype, steps)`, the values are of a
    /// 16-bit type, and each may also be off by one unit of it, at the largest magnitude it can
    /// have had, per step.
    fn compare(
        &mut self,
        what: &dyn Fn(usize) -> String,
        got: &[f32],
        (want, path, cpu32): (&[f64], &[f64], &[f32]),
        units: Option<(DType, usize)>,
    ) {
        let error = |g: f32, w: f64| {
            // NaN anywhere (or infinities that cancel) is infinitely wrong.
            let abs = (f64::from(g) - w).abs();
            if abs.is_nan() { f64::INFINITY } else { abs }
        };
        for (i, (((&g, &w), &path), &g32)) in got.iter().zip(want).zip(path).zip(cpu32).enumerate()
        {
            let tol = tolerance(w, path);
            let ratio32 = error(g32, w) / tol;
            self.max_ratio32 = self.max_ratio32.max(ratio32);
            let abs = error(g, w);
            let mut bound = allowed(tol, error(g32, w));
            self.compared += 1;
            if let Some((dtype, steps)) = units.filter(|_| abs > bound) {
                bound += steps as f64 * dtype.spacing(w.abs() + path);
                self.rounded_apart += 1;
            }
            let ratio = abs / bound;
            self.max_abs = self.max_abs.max(abs);
            if w.abs() >= REL_ERROR_FLOOR {
                self.max_rel = self.max_rel.max(abs / w.abs());
            }
            if ratio > self.max_ratio {
                self.max_ratio = ratio;
                self.worst = Some(format!(
                    "{} is {g:e} but the reference is {w:e}: error {abs:.3e}, allowed {:.3e}; \
                     float32 on the CPU gives {g32:e} (error {:.3e})",
                    what(i),
                    bound,
                    error(g32, w)
                ));
            }
        }
    }

    fn fail(&mut self, message: String) {
        self.failure.get_or_insert(message);
    }
}

/// Runs one configuration in one storage layout: the correctness check, then the timing.
fn run_row(
    ctx: &Context,
    (config, recipe, storage): (&OptimizerConfig, Recipe, &Storage),
    layout: &Layout,
    buffers: Buffers<'_>,
    run: (usize, u64, f64),
) -> Result<Row> {
    let bytes_per_element = if storage.is_f32() {
        crate::bench::bytes_per_element_with(config, recipe.clip, recipe.grad_scaler)
    } else {
        let types = (storage.param, storage.grad);
        crate::bench::bytes_per_element_stored(config, false, types, storage.precision)
    };
    let mut row = Row {
        optimizer: config.type_name(),
        kernel: kernel_name(config),
        options: [options(config), recipe.label()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
        config: *config,
        storage: storage.name,
        status: Status::Pass,
        max_abs_error: None,
        max_rel_error: None,
        max_error_over_tolerance: None,
        f32_cpu_error_over_tolerance: None,
        bytes_per_element,
        gb_per_s: None,
        detail: None,
    };
    let steps = run.0;
    match check_row(ctx, (config, recipe, storage), layout, buffers, run) {
        Ok((errors, mut opt)) => {
            let ratio = errors.max_ratio;
            row.max_abs_error = Some(errors.max_abs);
            row.max_rel_error = Some(errors.max_rel);
            row.max_error_over_tolerance = Some(ratio);
            row.f32_cpu_error_over_tolerance = Some(errors.max_ratio32);
            if let Some(message) = errors.failure {
                row.status = Status::Fail;
                row.detail = Some(message);
            } else if errors.rounded_apart * 20 > errors.compared {
                row.status = Status::Fail;
                row.detail = Some(format!(
                    "{} of {} elements round apart from the reference by units of their 16-bit type (more than 5%: the kernels round otherwise); the worst: {}",
                    errors.rounded_apart,
                    errors.compared,
                    errors.worst.unwrap_or_default()
                ));
            } else if ratio.is_nan() || ratio > 1.0 {
                row.status = Status::Fail;
                row.detail = errors.worst;
            }
            match time_steps(ctx, &mut opt, steps) {
                Ok(seconds) => {
                    let bytes =
                        row.bytes_per_element as f64 * layout.sizes.iter().sum::<u64>() as f64;
                    row.gb_per_s = Some(bytes * steps as f64 / seconds.max(1e-9) / 1e9);
                }
                Err(e) => {
                    row.status = Status::Fail;
                    row.detail.get_or_insert(format!("timing: {e}"));
                }
            }
        }
        Err(Error::Unsupported(message)) => {
            row.status = Status::Unsupported;
            row.detail = Some(format!("the device does not support {message}"));
        }
        Err(e @ Error::Input(_)) => return Err(e),
        Err(e) => {
            row.status = Status::Fail;
            row.detail = Some(e.to_string());
        }
    }
    Ok(row)
}

/// Steps `config` on the GPU and on the CPU reference for `steps` steps of fresh data, and
/// compares every parameter and state element. Returns the errors and the optimizer, for the
/// timing.
fn check_row(
    ctx: &Context,
    (config, recipe, storage): (&OptimizerConfig, Recipe, &Storage),
    layout: &Layout,
    buffers: Buffers<'_>,
    (steps, seed, reference_lr_scale): (usize, u64, f64),
) -> Result<(Errors, Optimizer)> {
    let (param_type, grad_type) = (storage.param, storage.grad);
    // The configuration the CPU reference steps with (see `Options::reference_lr_scale`).
    let mut reference = *config;
    reference.set_lr(config.lr() * reference_lr_scale);
    let layout = &layout.for_config(config);
    let tensors: Vec<Tensor<'_>> = (0..layout.sizes.len())
        .map(|k| {
            let n = layout.sizes[k];
            let at = |offset: u64, dtype: DType| offset * dtype.size();
            Tensor::new(
                BufferRange::new(buffers.param, at(layout.offsets[k], param_type), n)
                    .with_dtype(param_type),
                BufferRange::new(buffers.grad, at(layout.grad_offsets[k], grad_type), n)
                    .with_dtype(grad_type),
            )
            .with_shape(&layout.shapes[k])
        })
        .collect();
    let groups = [ParamGroup::new(*config, tensors)];
    let on_path = ctx.clone().with_f16_path(storage.f16_path)?;
    let mut opt = Optimizer::with_precision(&on_path, &groups, storage.precision)?;
    let tensors = &groups[0].tensors;
    opt.set_clip_grad(recipe.clip)?;
    opt.set_grad_scaler(recipe.grad_scaler)?;
    let mut errors = Errors::default();
    // Vec4 access needs storage binding offsets aligned to 16 bytes (see `Access::Vec4`).
    let vec4_alignment = ctx
        .limits()
        .min_storage_buffer_offset_alignment
        .is_multiple_of(16);
    for k in 0..tensors.len() {
        let want = if k == SCALAR_TENSOR || !vec4_alignment {
            Access::Scalar
        } else {
            ctx.access()
        };
        let got = opt.tensor_access(k)?;
        if got != want {
            errors.fail(format!("tensor {k} runs {got} access, not {want}"));
        }
    }

    // The reference's chunks, each with its own random stream: the data depends on the seed
    // alone, not on how many threads step the reference. An update that depends on sums over
    // its whole tensor (Lamb's norms) steps each tensor as one chunk.
    let chunk_len = if config.kernel().sums() {
        u64::MAX
    } else {
        CHUNK
    };
    let mut chunks = Vec::new();
    for (k, (&o, &n)) in layout.offsets.iter().zip(&layout.sizes).enumerate() {
        let mut start = 0;
        while start < n {
            let len = chunk_len.min(n - start);
            let rng = Rng::stream(seed, chunks.len() as u64);
            let shape = if len == n {
                layout.shapes[k].clone()
            } else {
                vec![len as usize]
            };
            chunks.push(Chunk {
                tensor: k,
                stored: (!storage.is_f32()).then(|| {
                    Stored::new(param_type, storage.precision)
                        .tensor(k as u32)
                        .from_element(start)
                }),
                master: None,
                master32: None,
                shape,
                start,
                at: o + start,
                grad_at: layout.grad_offsets[k] + start,
                len,
                param: Vec::new(),
                state: TensorState::default(),
                param_path: Vec::new(),
                state_paths: Default::default(),
                param32: Vec::new(),
                state32: TensorState::default(),
                rng,
                prepared: Vec::new(),
            });
            start += len;
        }
    }
    let mut host = try_vec(layout.total, GAP)?;
    for c in &mut chunks {
        c.param = try_vec(c.len, 0.0)?;
        c.param_path = try_vec(c.len, 0.0)?;
        c.param32 = try_vec(c.len, 0.0)?;
        for name in config.state_names_for(&c.shape) {
            let init = config.initial_state_value(name);
            let len = config.state_shape(name, &c.shape).iter().product::<usize>() as u64;
            c.state
                .buffers
                .insert(name.to_string(), try_vec(len, init)?);
            c.state_paths.insert(name.to_string(), try_vec(len, 0.0)?);
            c.state32
                .buffers
                .insert(name.to_string(), try_vec(len, init as f32)?);
        }
    }
    // Initial parameters, standard normal, as the parameters' type holds them; the master
    // copies, where the optimizer keeps them, are these widened.
    parallel(&mut chunks, &mut host, |c| c.at, &|c, slice| {
        c.rng.fill_normal(slice, 1.0);
        for ((p, p32), v) in c.param.iter_mut().zip(&mut c.param32).zip(slice.iter_mut()) {
            *v = param_type.round(*v);
            *p = f64::from(*v);
            *p32 = *v;
        }
        if c.stored.is_some_and(|s| s.keeps_master()) {
            c.master = Some(c.param.clone());
            c.master32 = Some(c.param32.clone());
        }
    });
    let gaps = param_type.round(GAP);
    ctx.queue()
        .write_buffer(buffers.param, 0, &param_type.encode(&host));
    host.fill(f32::NAN);
    let mut scaler = recipe.grad_scaler.map(|s| GradScalerState {
        scale: s.init_scale as f32,
        growth_tracker: 0,
    });
    let mut taken = 0;
    // Whether the gradients are prepared together (a recipe, or Lamb's pre_norm), not chunk by
    // chunk.
    let together = recipe.clip.is_some() || scaler.is_some() || config.pre_norm().is_some();
    for step in 0..steps {
        if !together {
            // Fresh gradients (normal, times 0.5) for the GPU and the reference.
            parallel(&mut chunks, &mut host, |c| c.grad_at, &|c, slice| {
                c.rng.fill_normal(slice, 0.5);
                slice.iter_mut().for_each(|g| *g = grad_type.round(*g));
                c.step(&reference, slice);
            });
        } else {
            // The scaled gradients the engine would write, one of them inf at the second step;
            // then the recipe on the whole set in f64, and the step unless the scaler skips it.
            let scale = scaler.map_or(1.0, |s| s.scale);
            parallel(&mut chunks, &mut host, |c| c.grad_at, &|c, slice| {
                c.rng.fill_normal(slice, 0.5);
                slice.iter_mut().for_each(|g| *g *= scale);
            });
            if step == 1 && scaler.is_some() {
                host[layout.grad_offsets[0] as usize] = f32::INFINITY;
            }
            let mut grads: Vec<Vec<f64>> = chunks
                .iter()
                .map(|c| {
                    let at = c.grad_at as usize;
                    host[at..at + c.len as usize]
                        .iter()
                        .map(|&g| f64::from(g))
                        .collect()
                })
                .collect();
            let mut views: Vec<&mut [f64]> = grads.iter_mut().map(Vec::as_mut_slice).collect();
            let report = crate::reference::prepare_grads(
                &mut views,
                recipe.clip.as_ref(),
                scaler.map(|s| s.scale),
            );
            crate::reference::pre_norm(&mut views, config);
            if let (Some(s), Some(state)) = (&recipe.grad_scaler, scaler.as_mut()) {
                crate::reference::update_grad_scaler(s, state, report.found_inf);
            }
            if !(recipe.grad_scaler.is_some() && report.found_inf) {
                taken += 1;
                for (c, g) in chunks.iter_mut().zip(grads) {
                    c.prepared = g;
                }
                let mut prepared = try_vec(layout.total, 0.0f32)?;
                parallel(&mut chunks, &mut prepared, |c| c.grad_at, &|c, _| {
                    let g = std::mem::take(&mut c.prepared);
                    c.step_f64(&reference, &g);
                });
            }
        }
        ctx.queue()
            .write_buffer(buffers.grad, 0, &grad_type.encode(&host));
        opt.step_submit()?;
    }
    if !together {
        taken = steps;
    }
    if let Some(want) = scaler {
        let got = opt.read_grad_scaler()?;
        if got != want {
            errors.fail(format!(
                "the grad scaler holds scale {} and tracker {}, not {} and {}",
                got.scale, got.growth_tracker, want.scale, want.growth_tracker
            ));
        }
    }

    let got = ctx.read_typed(&[(buffers.param, 0, layout.total)], param_type)?;
    let grads = ctx.read_typed(&[(buffers.grad, 0, layout.total)], grad_type)?;
    let state_type = storage.precision.state.for_param(param_type);
    // Where the layout stores 16-bit values, one may round apart from the reference's at a
    // step, by a unit of its type, and move every value computed from it: an f32 parameter
    // whose bf16 state rounded apart, an f32 average of bf16 parameters (ASGD's `ax`). Each
    // value is then allowed a unit of the coarsest 16-bit type stored a step, at no more than
    // 5% of the elements.
    let coarsest = [param_type, state_type]
        .into_iter()
        .filter(|&d| d != DType::F32)
        .max_by(|a, b| a.spacing(1.0).total_cmp(&b.spacing(1.0)));
    let units = coarsest.map(|d| (d, taken));
    for c in &chunks {
        let range = c.at as usize..(c.at + c.len) as usize;
        let what = |i: usize| format!("tensor {} parameter [{}]", c.tensor, c.start + i as u64);
        let want = (&c.param[..], &c.param_path[..], &c.param32[..]);
        errors.compare(&what, &got[range], want, units);
    }
    for (k, _) in tensors.iter().enumerate().filter(|_| !storage.is_f32()) {
        let Ok(master) = opt.read_master(k) else {
            continue;
        };
        for c in chunks.iter().filter(|c| c.tensor == k) {
            let (Some(want), Some(cpu32)) = (&c.master, &c.master32) else {
                errors.fail(format!(
                    "tensor {k} keeps a master copy the reference lacks"
                ));
                continue;
            };
            let got = &master[c.start as usize..(c.start + c.len) as usize];
            let what = |i: usize| format!("tensor {k} master [{}]", c.start + i as u64);
            errors.compare(&what, got, (want, &c.param_path, cpu32), units);
        }
    }
    // Gaps untouched, gradients only read.
    let mut in_tensor = try_vec(layout.total, false)?;
    for (&o, &n) in layout.offsets.iter().zip(&layout.sizes) {
        in_tensor[o as usize..(o + n) as usize].fill(true);
    }
    if let Some(i) = (0..got.len()).find(|&i| !in_tensor[i] && got[i].to_bits() != gaps.to_bits()) {
        errors.fail(format!(
            "element {i} of the parameter buffer, in a gap between tensors, was written ({})",
            got[i]
        ));
    }
    if let Some(i) = (0..grads.len()).find(|&i| grads[i].to_bits() != host[i].to_bits()) {
        errors.fail(format!(
            "element {i} of the gradient buffer changed from {} to {}",
            host[i], grads[i]
        ));
    }
    for (k, &n) in layout.sizes.iter().enumerate() {
        let state = opt.read_state(k)?;
        let shape = &layout.shapes[k];
        let names = config.state_names_for(shape);
        if state.step != taken as u64 {
            errors.fail(format!(
                "tensor {k} counts {} steps instead of {taken}",
                state.step
            ));
        }
        for name in names {
            // A state buffer of the tensor's size, split as the chunks are, or a factor of a
            // tensor that is one chunk.
            let len = config.state_shape(name, shape).iter().product::<usize>() as u64;
            let Some(values) = state.get(name).filter(|v| v.len() as u64 == len) else {
                errors.fail(format!(
                    "tensor {k} has no state {name:?} of {len} elements"
                ));
                continue;
            };
            for c in chunks.iter().filter(|c| c.tensor == k) {
                let (Some(want), Some(path), Some(cpu32)) = (
                    c.state.get(name),
                    c.state_paths.get(*name),
                    c.state32.get(name),
                ) else {
                    errors.fail(format!("the reference kept no state {name:?}"));
                    continue;
                };
                let got = if len == n {
                    &values[c.start as usize..(c.start + c.len) as usize]
                } else {
                    values
                };
                let what = |i: usize| format!("tensor {k} {name} [{}]", c.start + i as u64);
                errors.compare(&what, got, (want, path, cpu32), units);
            }
        }
        // Scalar state: every chunk of a tensor keeps the same.
        if let Some(c) = chunks.iter().find(|c| c.tensor == k) {
            for name in config.scalar_names() {
                let (Some(&got), Some(&want), Some(&cpu32)) = (
                    state.scalars.get(*name),
                    c.state.scalars.get(*name),
                    c.state32.scalars.get(*name),
                ) else {
                    errors.fail(format!("tensor {k} has no scalar state {name:?}"));
                    continue;
                };
                let what = |_: usize| format!("tensor {k} {name}");
                errors.compare(&what, &[got], (&[want], &[0.0], &[cpu32]), None);
            }
        }
    }
    Ok((errors, opt))
}

/// Calls `f` on every chunk with its slice of `host`, on as many threads as the machine has.
fn parallel(
    chunks: &mut [Chunk],
    host: &mut [f32],
    at: fn(&Chunk) -> u64,
    f: &(dyn Fn(&mut Chunk, &mut [f32]) + Sync),
) {
    // Chunks lie in `host` at `at` in order and do not overlap: split it into their slices.
    let mut slices: Vec<(&mut Chunk, &mut [f32])> = Vec::with_capacity(chunks.len());
    let mut rest = host;
    let mut consumed = 0;
    for c in chunks.iter_mut() {
        let start = at(c);
        let (_, tail) = rest.split_at_mut((start - consumed) as usize);
        let (mine, tail) = tail.split_at_mut(c.len as usize);
        consumed = start + c.len;
        rest = tail;
        slices.push((c, mine));
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 64);
    let per = slices.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let mut parts = slices.chunks_mut(per);
        let first = parts.next();
        for part in parts {
            s.spawn(move || {
                for (c, slice) in part {
                    f(c, slice);
                }
            });
        }
        for (c, slice) in first.into_iter().flatten() {
            f(c, slice);
        }
    });
}

/// Wall time of `steps` steps, recorded eight to an encoder, submitted, and waited for.
fn time_steps(ctx: &Context, opt: &mut Optimizer, steps: usize) -> Result<f64> {
    let wait = |index: Option<wgpu::SubmissionIndex>| {
        ctx.device()
            .poll(wgpu::PollType::Wait {
                submission_index: index,
                timeout: None,
            })
            .map_err(|e| Error::Gpu(e.to_string()))
    };
    // A warm-up step, and nothing else in flight.
    let index = opt.step_submit()?;
    wait(Some(index))?;
    let started = Instant::now();
    let mut left = steps as u64;
    let mut last = None;
    while left > 0 {
        let n = left.min(8);
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        for _ in 0..n {
            opt.step(&mut encoder)?;
        }
        last = Some(ctx.queue().submit([encoder.finish()]));
        left -= n;
    }
    wait(last)?;
    Ok(started.elapsed().as_secs_f64())
}

/// GB/s of `steps` copies moving Adam's bytes for `size` elements: 14 bytes per element read
/// and 14 written.
fn time_copy(ctx: &Context, size: u64, steps: usize) -> Result<CopyBandwidth> {
    let device = ctx.device();
    let bytes = size
        .saturating_mul(14)
        .div_ceil(4)
        .saturating_mul(4)
        .min(ctx.limits().max_buffer_size / 4 * 4)
        .max(4);
    let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let make = |label, usage| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage,
            mapped_at_creation: false,
        })
    };
    let src = make("validate copy source", wgpu::BufferUsages::COPY_SRC);
    let dst = make("validate copy destination", wgpu::BufferUsages::COPY_DST);
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(Error::Gpu(e.to_string()));
    }
    let copies = |n: usize| {
        let mut encoder = device.create_command_encoder(&Default::default());
        for _ in 0..n {
            encoder.copy_buffer_to_buffer(&src, 0, &dst, 0, bytes);
        }
        let index = ctx.queue().submit([encoder.finish()]);
        device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| Error::Gpu(e.to_string()))
    };
    copies(1)?;
    let started = Instant::now();
    copies(steps)?;
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    Ok(CopyBandwidth {
        bytes_per_element: 28,
        bytes_copied: bytes,
        gb_per_s: 2.0 * bytes as f64 * steps as f64 / seconds / 1e9,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_finite_result_fails_even_where_float32_is_non_finite_too() {
        assert_eq!(allowed(1e-6, f64::INFINITY), 1e-6);
        assert_eq!(allowed(1e-6, f64::NAN), 1e-6);
        assert_eq!(allowed(1e-6, 1e-3), 2e-3);
        for (got, cpu32) in [
            (f32::NAN, f32::NAN),
            (f32::INFINITY, f32::INFINITY),
            (f32::NAN, f32::INFINITY),
            (f32::NAN, 0.5),
        ] {
            let mut errors = Errors::default();
            let what = |i: usize| format!("element {i}");
            let want = (&[0.5, 0.5][..], &[0.0, 0.0][..], &[0.5, cpu32][..]);
            errors.compare(&what, &[0.5, got], want, None);
            assert!(
                errors.max_ratio > 1.0,
                "{got} (float32 on the CPU {cpu32}) against 0.5 passed: ratio {}",
                errors.max_ratio
            );
            assert!(errors.worst.unwrap().contains("element 1"));
        }
    }

    #[test]
    fn sixteen_bit_values_may_round_apart_by_a_unit_a_step_and_are_counted() {
        // bf16's unit at 1.5 is 2^-7: one step may round apart by it, and no further.
        let unit = 2f32.powi(-7);
        let what = |i: usize| format!("element {i}");
        let want = (&[1.5][..], &[0.0][..], &[1.5][..]);
        let mut errors = Errors::default();
        errors.compare(&what, &[1.5 + unit], want, Some((DType::BF16, 1)));
        assert!(errors.max_ratio <= 1.0, "{}", errors.max_ratio);
        assert_eq!((errors.rounded_apart, errors.compared), (1, 1));
        let mut errors = Errors::default();
        errors.compare(&what, &[1.5 + 2.0 * unit], want, Some((DType::BF16, 1)));
        assert!(errors.max_ratio > 1.0, "{}", errors.max_ratio);
        // Without units, f32 values are held to the tolerance.
        let mut errors = Errors::default();
        errors.compare(&what, &[1.5 + unit], want, None);
        assert!(errors.max_ratio > 1.0);
        assert_eq!(errors.rounded_apart, 0);
    }

    #[test]
    fn tensor_sizes_add_up_and_are_uneven() {
        for size in [1, 2, 3, 4, 100, 261, 262, 5000, 70_001, 1_000_003, u64::MAX] {
            let sizes = tensor_sizes(size);
            assert_eq!(sizes.iter().sum::<u64>(), size, "{size}: {sizes:?}");
            assert!(sizes.iter().all(|&n| n > 0));
        }
        let sizes = tensor_sizes(1_000_003);
        assert_eq!(sizes.len(), 5);
        assert!(sizes.iter().any(|n| n % 256 != 0));
    }

    #[test]
    fn every_kernel_is_configured() {
        let configs = all_configs();
        assert_eq!(configs.len(), 176);
        for k in kernel_names() {
            assert!(configs.iter().any(|c| kernel_name(c) == k), "{k}");
        }
        for c in &configs {
            c.validate().unwrap();
        }
    }

    #[test]
    fn bytes_per_element_of_each_kernel() {
        let by_kernel = |k: &str| {
            all_configs()
                .iter()
                .find(|c| kernel_name(c) == k)
                .map(crate::bench::bytes_per_element)
        };
        for (k, b) in [
            ("sgd", 12),
            ("sgd_momentum", 20),
            ("adam", 28),
            ("adam_amsgrad", 36),
            ("rmsprop", 20),
            ("rmsprop_centered", 28),
            ("rmsprop_momentum", 28),
            ("rmsprop_centered_momentum", 36),
            ("adagrad", 20),
            ("adamax", 28),
            ("radam", 28),
            ("adadelta", 28),
            ("rprop", 28),
            ("nadam", 28),
            ("asgd", 20),
            ("lion", 20),
            ("adopt", 28),
            ("ademamix", 36),
            ("adamw_schedulefree", 28),
            ("lamb", 44),
            ("lamb_adanorm", 48),
            ("adafactor", 32),
            ("adopt_cautious_stable_adamw", 44),
            ("ademamix_cautious", 56),
        ] {
            assert_eq!(by_kernel(k), Some(b), "{k}");
        }
    }

    #[test]
    fn options_name_non_defaults() {
        let sgd = SGD {
            lr: 0.05,
            momentum: 0.9,
            nesterov: true,
            maximize: true,
            ..Default::default()
        };
        assert_eq!(
            options(&sgd.into()),
            "lr=0.05 momentum=0.9 nesterov maximize"
        );
        assert_eq!(options(&Adam::default().into()), "defaults");
        let adamw = AdamW {
            weight_decay: 0.0,
            betas: (0.8, 0.99),
            ..Default::default()
        };
        assert_eq!(options(&adamw.into()), "betas=(0.8,0.99) weight_decay=0");
    }

    #[test]
    fn rng_streams_are_deterministic() {
        let a: Vec<u64> = (0..4).map(|_| Rng::stream(7, 3).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::stream(7, 3).next_u64(), Rng::stream(7, 4).next_u64());
        let mut r = Rng::new(1);
        let xs: Vec<f32> = (0..10_000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        assert!(mean.abs() < 0.05, "{mean}");
    }
}
