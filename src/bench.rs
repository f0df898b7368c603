//! Memory-bandwidth benchmarks of the optimizer kernels.
//!
//! An optimizer step reads and writes every element of the parameters, gradients and state a few
//! times and does little arithmetic, so its speed is set by memory bandwidth. This module times
//! each kernel and reports its bandwidth as a ratio to a plain buffer copy
//! (`copy_buffer_to_buffer`) that moves the same number of bytes on the same device in the same
//! run. A kernel near 100% of the copy is as fast as that memory allows.
//!
//! Bytes are counted as reads plus writes, per element of f32: Adam reads the parameter, the
//! gradient, `exp_avg` and `exp_avg_sq` (16 bytes) and writes the parameter and both averages
//! (12 bytes), 28 in all. A copy of `n` bytes reads `n` and writes `n`, so it moves `2n`; the
//! copy that matches a kernel moving `B` bytes copies `B / 2` ([`copy_size_for`]).
//!
//! Times come from GPU timestamp queries when the device was created with
//! [`wgpu::Features::TIMESTAMP_QUERY`] ([`bench_context`] asks for it when the adapter has it),
//! else from the wall clock around a submit and a blocking poll ([`Timer`]).
//!
//! ```no_run
//! use wgpu_optim::bench;
//! # fn main() -> Result<(), wgpu_optim::Error> {
//! let (ctx, info, _) = bench::bench_context(wgpu::Backends::all(), None)?;
//! let rows = bench::measure_rows(&ctx, &bench::kernel_cases(), &[1 << 20], 20)?;
//! println!("{} ({})", info.name, bench::Timer::of(&ctx));
//! print!("{}", bench::table(&rows));
//! # Ok(())
//! # }
//! ```

use crate::amp::{ClipGrad, GradScaler};
use crate::dtype::{DType, Precision, StateDType};
use crate::error::{Error, Result};
use crate::gemm::{Gemm, Matrix};
use crate::gpu::scoped;
use crate::gpu::{Context, F16Path};
use crate::optim::{Adam, OptimizerConfig};
use crate::optimizer::{BufferRange, Optimizer, Tensor};
use std::collections::HashMap;
use std::time::{Duration, Instant};

mod minimal;

/// One optimizer kernel to benchmark: a configuration that selects it, what the step does
/// besides the update, and the bytes a step moves per element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelCase {
    /// A short name: `"sgd"`, `"sgd-momentum"`, `"adam"`, `"adamw"`, `"adam-amsgrad"`,
    /// `"rmsprop"`, `"rmsprop-centered"`, `"rmsprop-momentum"`, `"rmsprop-centered-momentum"`,
    /// `"adagrad"`, or Adam's step with global-norm clipping and a grad scaler:
    /// `"adam+clip"`, `"adam+scaler"` and `"adam+clip+scaler"`, or Adam on 16-bit parameters
    /// and gradients with state of their type or f32: `"adam-bf16"`, `"adam-bf16-f32state"`,
    /// `"adam-f16"` and `"adam-f16-f32state"`, and with f32 state and f32 master weights,
    /// rounded stochastically for bf16: `"adam-bf16-master-sr"` and `"adam-f16-master"`; or f16
    /// Adam on a named [`F16Path`]: `"adam-f16-packed"` and `"adam-f16-native"`.
    pub name: &'static str,
    /// The hyperparameters (PyTorch's defaults, with what the name asks for turned on).
    pub config: OptimizerConfig,
    /// Clipping in each step (`clip_grad_norm_` with max_norm 1).
    pub clip: Option<ClipGrad>,
    /// A grad scaler (PyTorch's defaults; the benchmark's gradients never overflow, so no step
    /// is skipped).
    pub grad_scaler: Option<GradScaler>,
    /// Bytes read plus bytes written per element in one step: with clipping by norm or a grad
    /// scaler, the reduction reads the gradients once more.
    pub bytes_per_element: u64,
    /// Instead of the optimizer, a minimal kernel of the same update: one flat tensor, one
    /// vec4 per invocation, no segment table, no step state on the GPU
    /// (shaders/bench/minimal_adam.wgsl, Adam only). Timed beside Adam's step, it shows what
    /// the kernel template costs.
    pub minimal: bool,
    /// The tensor is a matrix as near square as its length allows ([`matrix_shape`]), not a
    /// vector: Adafactor then runs its factored kernel.
    pub matrix: bool,
    /// The parameters' and the gradients' type.
    pub dtype: DType,
    /// How the state and the 16-bit parameters are kept.
    pub precision: Precision,
    /// The [`F16Path`] the case names; `None`, the context's.
    pub f16_path: Option<F16Path>,
}

/// The shape of a benchmarked matrix of `elements` elements: `[rows, elements / rows]` with
/// `rows` the largest divisor at most the square root.
pub fn matrix_shape(elements: u64) -> [usize; 2] {
    let n = elements as usize;
    let rows = (1..=n.isqrt())
        .rev()
        .find(|&d| n.is_multiple_of(d))
        .unwrap_or(1);
    [rows, n / rows]
}

/// The shape of the matrix a matrix case of `config` steps: [`matrix_shape`], but for Muon,
/// whose Newton–Schulz products cost about `20·m` flops an element for `m` rows, at most 64
/// rows (the largest divisor of `elements` up to 64), so that a step of 2^22 elements is about
/// 5 GFLOP.
pub fn matrix_shape_for(config: &OptimizerConfig, elements: u64) -> [usize; 2] {
    if config.check_shape(&[elements as usize]).is_ok() {
        return matrix_shape(elements);
    }
    let n = elements as usize;
    let rows = (1..=n.min(64))
        .rev()
        .find(|&d| n.is_multiple_of(d))
        .unwrap_or(1);
    [rows, n / rows]
}

/// Floating-point operations of the matrix products in one step of `config` on a tensor of
/// `shape`: Muon's Newton–Schulz iterations, `ns_steps·(4·m²·n + 2·m³)` for `m x n` with
/// `m ≤ n` (the `β·D` terms not counted); 0 for other classes.
pub fn step_flops(config: &OptimizerConfig, shape: &[usize]) -> u64 {
    let (Some(o), [a, b]) = (config.orthogonalize(), shape) else {
        return 0;
    };
    let (m, n) = ((*a).min(*b) as u64, (*a).max(*b) as u64);
    u64::from(o.ns_steps) * (4 * m * m * n + 2 * m * m * m)
}

/// For a case whose step runs matrix products (Muon), a line with their GFLOP/s over the
/// whole step's time in `row` (the elementwise passes included), and the matrix stepped.
pub fn products_line(case: &KernelCase, row: &Row) -> Option<String> {
    let shape = matrix_shape_for(&case.config, row.elements);
    let flops = step_flops(&case.config, &shape);
    (case.matrix && flops > 0).then(|| {
        format!(
            "{}: {:.1} GFLOP/s over its whole step ({} x {} matrix, {:.2} GFLOP of Newton-Schulz products a step)",
            case.name,
            flops as f64 / row.kernel.seconds / 1e9,
            shape[0],
            shape[1],
            flops as f64 / 1e9
        )
    })
}

/// Bytes read plus bytes written per element by one step of `config`'s kernel on a vector: the
/// parameter is read and written, the gradient read, and each state buffer read and written, 4
/// bytes each. Where the update needs per-tensor sums (Lamb), their pass reads the parameter,
/// the gradient and each state buffer once more, and a first round of them (Lamb's `adanorm`)
/// the gradient once more again.
pub fn bytes_per_element(config: &OptimizerConfig) -> u64 {
    bytes_per_element_of(config, false)
}

/// [`bytes_per_element`] on a matrix (`matrix`) or a vector. A kernel of factored state
/// (Adafactor's on a matrix) keeps no state per element, and its factor pass reads the
/// gradient once more; the factors themselves, a row and a column per matrix, are not counted.
/// A step in two phases (Muon's) runs the template's step twice, each moving the parameter,
/// the gradient and every state buffer (its iterates too); the matrix products between them
/// are not counted (their throughput is the `gemm` row's GFLOP/s).
pub fn bytes_per_element_of(config: &OptimizerConfig, matrix: bool) -> u64 {
    bytes_per_element_stored(
        config,
        matrix,
        (DType::F32, DType::F32),
        Precision::default(),
    )
}

/// [`bytes_per_element_of`] with parameters and gradients of the types `(param, grad)` and the
/// state and the parameters kept as `precision` says. bf16 Adam with bf16 state moves
/// 2 + 2 + 2 + 2 · 2 · 2 = 14 bytes per element; with f32 state and an f32 master copy, which
/// the kernel reads instead of the parameter and writes beside it, 2 + 2 + 8 · 2 + 4 · 2 = 28.
pub fn bytes_per_element_stored(
    config: &OptimizerConfig,
    matrix: bool,
    (param, grad): (DType, DType),
    precision: Precision,
) -> u64 {
    let kernel = if matrix {
        config.kernel_for(&[2, 2])
    } else {
        config.kernel()
    };
    let master = precision.master_weights && param != DType::F32;
    let state = precision.state.for_param(param);
    let (p, g, s) = (param.size(), grad.size(), state.size());
    // What loads the parameter reads: the master copy where there is one.
    let read = if master { 4 } else { p };
    // The parameter written, and the master copy written too.
    let written = if master { p + 4 } else { p };
    let states = u64::from(kernel.states);
    // The sums read the parameter, the gradient and the state; a first round of two (Lamb's
    // adanorm) the gradient alone.
    let sums = match kernel.sums_rounds() {
        0 => 0,
        rounds => read + g + s * states + g * u64::from(rounds - 1),
    };
    let factors = if kernel.factored() { g } else { 0 };
    // A step in two phases (Muon's) runs the template's step twice.
    let phases = if kernel.phased() { 2 } else { 1 };
    phases * (read + written + g + 2 * s * states) + sums + factors
}

/// [`bytes_per_element`] of a step that also clips and scales: clipping by norm and a grad
/// scaler run a reduction that reads the gradients once more (4 bytes); clipping by value
/// adds nothing.
pub fn bytes_per_element_with(
    config: &OptimizerConfig,
    clip: Option<ClipGrad>,
    grad_scaler: Option<GradScaler>,
) -> u64 {
    let reduction = matches!(clip, Some(ClipGrad::Norm { .. })) || grad_scaler.is_some();
    bytes_per_element(config) + if reduction { 4 } else { 0 }
}

/// Every kernel, once each (AdamW shares Adam's memory traffic but not its shader path), from
/// every class's bench cases, then Adam with clipping and a grad scaler.
pub fn kernel_cases() -> Vec<KernelCase> {
    let mut cases: Vec<KernelCase> = OptimizerConfig::all_bench_cases()
        .into_iter()
        .map(|(name, config, matrix)| KernelCase {
            name,
            config,
            clip: None,
            grad_scaler: None,
            bytes_per_element: bytes_per_element_of(&config, matrix),
            minimal: false,
            matrix,
            dtype: DType::F32,
            precision: Precision::default(),
            f16_path: None,
        })
        .collect();
    let adam: OptimizerConfig = Adam::default().into();
    cases.push(KernelCase {
        name: "adam-minimal",
        config: adam,
        clip: None,
        grad_scaler: None,
        bytes_per_element: bytes_per_element(&adam),
        minimal: true,
        matrix: false,
        dtype: DType::F32,
        precision: Precision::default(),
        f16_path: None,
    });
    let clip = Some(ClipGrad::norm(1.0));
    let scaler = Some(GradScaler::default());
    for (name, clip, grad_scaler) in [
        ("adam+clip", clip, None),
        ("adam+scaler", None, scaler),
        ("adam+clip+scaler", clip, scaler),
    ] {
        cases.push(KernelCase {
            name,
            config: adam,
            clip,
            grad_scaler,
            bytes_per_element: bytes_per_element_with(&adam, clip, grad_scaler),
            minimal: false,
            matrix: false,
            dtype: DType::F32,
            precision: Precision::default(),
            f16_path: None,
        });
    }
    let kept = |state| Precision::default().with_state(state);
    let master = kept(StateDType::F32).with_master_weights(true);
    let param = kept(StateDType::Param);
    for (name, dtype, precision, f16_path) in [
        ("adam-bf16", DType::BF16, param, None),
        (
            "adam-bf16-f32state",
            DType::BF16,
            kept(StateDType::F32),
            None,
        ),
        (
            "adam-bf16-master-sr",
            DType::BF16,
            master.with_stochastic_rounding(Some(0)),
            None,
        ),
        ("adam-f16", DType::F16, param, None),
        ("adam-f16-f32state", DType::F16, kept(StateDType::F32), None),
        ("adam-f16-master", DType::F16, master, None),
        ("adam-f16-packed", DType::F16, param, Some(F16Path::Packed)),
        ("adam-f16-native", DType::F16, param, Some(F16Path::Native)),
    ] {
        cases.push(KernelCase {
            name,
            config: adam,
            clip: None,
            grad_scaler: None,
            bytes_per_element: bytes_per_element_stored(&adam, false, (dtype, dtype), precision),
            minimal: false,
            matrix: false,
            dtype,
            precision,
            f16_path,
        });
    }
    cases
}

/// [`kernel_cases`] that `ctx`'s device runs: all but `adam-f16-native` where the device has
/// no `SHADER_F16` ([`Context::has_native_f16`]).
pub fn kernel_cases_on(ctx: &Context) -> Vec<KernelCase> {
    kernel_cases()
        .into_iter()
        .filter(|c| c.f16_path != Some(F16Path::Native) || ctx.has_native_f16())
        .collect()
}

/// The kernel case named `name`, if any.
pub fn kernel_case(name: &str) -> Option<KernelCase> {
    kernel_cases().into_iter().find(|c| c.name == name)
}

/// GPT-2 small's parameters: `(name, shape)` for each of its 148 tensors, in the order of its
/// `state_dict` (Hugging Face names, without the `transformer.` prefix).
pub fn gpt2_small_shapes() -> Vec<(String, Vec<u64>)> {
    let (d, vocab, ctx) = (768, 50257, 1024);
    let mut shapes = vec![
        ("wte.weight".to_string(), vec![vocab, d]),
        ("wpe.weight".to_string(), vec![ctx, d]),
    ];
    for layer in 0..12 {
        let layer_shapes: [(&str, Vec<u64>); 12] = [
            ("ln_1.weight", vec![d]),
            ("ln_1.bias", vec![d]),
            ("attn.c_attn.weight", vec![d, 3 * d]),
            ("attn.c_attn.bias", vec![3 * d]),
            ("attn.c_proj.weight", vec![d, d]),
            ("attn.c_proj.bias", vec![d]),
            ("ln_2.weight", vec![d]),
            ("ln_2.bias", vec![d]),
            ("mlp.c_fc.weight", vec![d, 4 * d]),
            ("mlp.c_fc.bias", vec![4 * d]),
            ("mlp.c_proj.weight", vec![4 * d, d]),
            ("mlp.c_proj.bias", vec![d]),
        ];
        shapes.extend(
            layer_shapes
                .into_iter()
                .map(|(name, shape)| (format!("h.{layer}.{name}"), shape)),
        );
    }
    shapes.push(("ln_f.weight".to_string(), vec![d]));
    shapes.push(("ln_f.bias".to_string(), vec![d]));
    shapes
}

/// GPT-2 small's parameter count.
pub const GPT2_SMALL_PARAMETERS: u64 = 124_439_808;

/// The element counts of GPT-2 small's 148 tensors, each divided by `scale_divisor` (rounded up,
/// at least 1). A divisor of 0 is an error.
pub fn gpt2_small_lengths(scale_divisor: u64) -> Result<Vec<u64>> {
    if scale_divisor == 0 {
        return Err(Error::Input("the scale divisor must be at least 1".into()));
    }
    Ok(gpt2_small_shapes()
        .iter()
        .map(|(_, shape)| shape.iter().product::<u64>().div_ceil(scale_divisor).max(1))
        .collect())
}

/// The bytes [`measure_copy`] should copy to move `traffic` bytes (read plus written): half,
/// rounded up to the 4 bytes that buffer copies need.
pub fn copy_size_for(traffic: u64) -> u64 {
    traffic.div_ceil(2).div_ceil(4) * 4
}

/// How step times are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// GPU timestamps written just before and just after the work, in the same command buffer
    /// (by empty compute passes with `timestamp_writes`, which need only
    /// [`wgpu::Features::TIMESTAMP_QUERY`]).
    Timestamp,
    /// The wall clock from just before the submit until a blocking poll returns. Includes the
    /// submit and the driver's wake-up latency, so small workloads read slower than they run.
    WallClock,
}

impl Timer {
    /// The timer used on `ctx`: timestamps when its device has
    /// [`wgpu::Features::TIMESTAMP_QUERY`], else the wall clock.
    pub fn of(ctx: &Context) -> Self {
        if ctx
            .device()
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            Self::Timestamp
        } else {
            Self::WallClock
        }
    }
}

impl std::fmt::Display for Timer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Timestamp => "GPU timestamp queries",
            Self::WallClock => "wall clock around submit and wait",
        })
    }
}

/// The result of timing one workload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measurement {
    /// Median seconds per step over the timed iterations.
    pub seconds: f64,
    /// Fastest step, in seconds.
    pub min_seconds: f64,
    /// Bytes one step reads plus writes.
    pub bytes: u64,
    /// Steps timed, after the warm-up.
    pub iterations: usize,
    /// How the times were taken.
    pub timer: Timer,
}

impl Measurement {
    /// From per-step times (at least one).
    fn from_times(times: &[Duration], bytes: u64, timer: Timer) -> Result<Self> {
        let seconds = median(times)
            .ok_or_else(|| Error::Input("at least one timed iteration is needed".into()))?
            .as_secs_f64();
        let min_seconds = times
            .iter()
            .min()
            .copied()
            .unwrap_or_default()
            .as_secs_f64();
        Ok(Self {
            seconds,
            min_seconds,
            bytes,
            iterations: times.len(),
            timer,
        })
    }

    /// Bandwidth at the median time, in GB/s (10⁹ bytes per second); infinite when the time
    /// read 0.
    pub fn gb_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e9
    }
}

/// The median of `times`, or `None` when empty (the mean of the two middle values for an even
/// count).
pub fn median(times: &[Duration]) -> Option<Duration> {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

/// Finds an adapter as [`Context::request`] does and creates a device with the adapter's
/// limits and, when the adapter has them, [`wgpu::Features::TIMESTAMP_QUERY`] and
/// `SHADER_F16`. Returns the context, the adapter's description, and whether timestamps are
/// on.
pub fn bench_context(
    backends: wgpu::Backends,
    adapter: Option<&str>,
) -> Result<(Context, wgpu::AdapterInfo, bool)> {
    let (ctx, info) = Context::request_with_features(
        backends,
        adapter,
        wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16,
    )?;
    let timestamps = ctx
        .device()
        .features()
        .contains(wgpu::Features::TIMESTAMP_QUERY);
    Ok((ctx, info, timestamps))
}

fn wait(device: &wgpu::Device, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
    device
        .poll(wgpu::PollType::Wait {
            submission_index: index,
            timeout: None,
        })
        .map(|_| ())
        .map_err(|e| Error::Gpu(e.to_string()))
}

/// A storage buffer of `elements` values of type `dtype`, all `value`, checked against
/// `max_buffer_size`. Its size is rounded up to whole vec4s, so that tensors ending in it can
/// use [`Access::Vec4`](crate::Access::Vec4).
fn filled_buffer(
    ctx: &Context,
    label: &str,
    (elements, dtype): (u64, DType),
    value: f32,
) -> Result<wgpu::Buffer> {
    let rounded = elements
        .checked_next_multiple_of(4)
        .ok_or_else(|| Error::Input(format!("{elements} elements are too many for a buffer")))?;
    let bytes = ctx.check_buffer_size(label, rounded / 4 * dtype.size())?;
    let buffer = scoped(ctx.device(), || {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: true,
        })
    })?;
    {
        let mut view = buffer
            .get_mapped_range_mut(..)
            .map_err(|e| Error::Gpu(e.to_string()))?;
        let pattern: Vec<u8> = dtype.encode(&vec![value; 1 << 18]);
        let len = view.len();
        let mut at = 0;
        while at < len {
            let n = (len - at).min(pattern.len());
            view.slice(at..at + n).copy_from_slice(&pattern[..n]);
            at += n;
        }
    }
    buffer.unmap();
    Ok(buffer)
}

/// Timestamp queries: a query set for a chunk of iterations and the buffers to read it back.
#[derive(Debug)]
struct Timestamps {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// Iterations per chunk: half the queries of the set.
    chunk: u32,
    /// Nanoseconds per tick.
    period: f64,
}

impl Timestamps {
    fn new(ctx: &Context) -> Result<Self> {
        let chunk = 1024u32;
        let bytes = u64::from(2 * chunk) * 8;
        let device = ctx.device();
        let (set, resolve, readback) = scoped(device, || {
            let set = device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("wgpu-optim bench timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * chunk,
            });
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-optim bench timestamp resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let readback = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-optim bench timestamp readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            (set, resolve, readback)
        })?;
        Ok(Self {
            set,
            resolve,
            readback,
            chunk,
            period: f64::from(ctx.queue().get_timestamp_period()),
        })
    }

    /// An empty compute pass that writes one timestamp, at its end when `end` else its start.
    fn write(&self, encoder: &mut wgpu::CommandEncoder, index: u32, end: bool) {
        let (begin, finish) = if end {
            (None, Some(index))
        } else {
            (Some(index), None)
        };
        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("wgpu-optim bench timestamp"),
            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                query_set: &self.set,
                beginning_of_pass_write_index: begin,
                end_of_pass_write_index: finish,
            }),
        });
    }

    /// Resolves the first `2 * n` queries and reads them back as `n` durations.
    fn read(&self, ctx: &Context, n: u32) -> Result<Vec<Duration>> {
        let bytes = u64::from(2 * n) * 8;
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        encoder.resolve_query_set(&self.set, 0..2 * n, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, bytes);
        let index = ctx.queue().submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        self.readback
            .slice(..bytes)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        wait(ctx.device(), Some(index))?;
        rx.recv()
            .map_err(|e| Error::Gpu(e.to_string()))?
            .map_err(|e| Error::Gpu(e.to_string()))?;
        let ticks: Vec<u64> = {
            let data = self
                .readback
                .get_mapped_range(..bytes)
                .map_err(|e| Error::Gpu(e.to_string()))?;
            bytemuck::pod_collect_to_vec(&data[..])
        };
        self.readback.unmap();
        Ok(ticks
            .chunks_exact(2)
            .map(|t| Duration::from_nanos((t[1].saturating_sub(t[0]) as f64 * self.period) as u64))
            .collect())
    }
}

/// What a workload records each iteration.
enum Work {
    /// An optimizer step over buffers it owns.
    Step {
        optimizer: Box<Optimizer>,
        _buffers: [wgpu::Buffer; 2],
    },
    /// An optimizer step whose gradients move to the next of `pool` buffers before each step,
    /// as an engine's memory pool hands them out.
    Moving {
        optimizer: Box<Optimizer>,
        /// The parameters, then the gradient buffers.
        buffers: Vec<wgpu::Buffer>,
        /// Each tensor's element offset and length.
        layout: Vec<(u64, u64)>,
        next: usize,
    },
    /// The minimal Adam kernel.
    Minimal(minimal::MinimalAdam),
    /// A buffer copy of `bytes` bytes.
    Copy {
        src: wgpu::Buffer,
        dst: wgpu::Buffer,
        bytes: u64,
    },
    /// A matrix product over buffers it owns (A, B, C).
    Gemm {
        product: Gemm,
        _buffers: [wgpu::Buffer; 3],
    },
}

/// A workload ready to time: buffers allocated and, for optimizer steps, the kernel compiled.
///
/// Each iteration records the work into an encoder of its own and submits it. The criterion
/// bench calls [`time`](Self::time) with its own iteration counts; the `measure_*` functions
/// add a warm-up and take the median.
pub struct Workload {
    ctx: Context,
    work: Work,
    bytes: u64,
    timestamps: Option<Timestamps>,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("bytes", &self.bytes)
            .field("timer", &self.timer())
            .finish()
    }
}

impl Workload {
    fn with_work(ctx: &Context, work: Work, bytes: u64) -> Result<Self> {
        let timestamps = match Timer::of(ctx) {
            Timer::Timestamp => Some(Timestamps::new(ctx)?),
            Timer::WallClock => None,
        };
        Ok(Self {
            ctx: ctx.clone(),
            work,
            bytes,
            timestamps,
        })
    }

    /// One optimizer step of `case` over a single tensor of `elements` elements. A case on
    /// the native f16 path is an [`Error::Unsupported`] where the device has no `SHADER_F16`.
    pub fn kernel(ctx: &Context, case: &KernelCase, elements: u64) -> Result<Self> {
        let ctx = &match case.f16_path {
            Some(path) => ctx.clone().with_f16_path(path)?,
            None => ctx.clone(),
        };
        if case.minimal {
            if elements == 0 {
                return Err(Error::Input(
                    "every benchmarked tensor needs at least one element".into(),
                ));
            }
            let work = Work::Minimal(minimal::MinimalAdam::new(ctx, elements)?);
            return Self::with_work(ctx, work, case.bytes_per_element.saturating_mul(elements));
        }
        let shape = if case.matrix {
            matrix_shape_for(&case.config, elements).to_vec()
        } else {
            vec![elements as usize]
        };
        let types = (case.dtype, case.precision);
        let mut work = Self::shaped(ctx, case.config, &[elements], &[shape], (1, types))?;
        if let Work::Step { optimizer, .. } = &mut work.work {
            optimizer.set_clip_grad(case.clip)?;
            optimizer.set_grad_scaler(case.grad_scaler)?;
        }
        work.bytes = case.bytes_per_element.saturating_mul(elements);
        Ok(work)
    }

    /// One optimizer step of `config` over tensors of the given lengths, packed into one
    /// parameter buffer and one gradient buffer at 256-byte aligned offsets (so one dispatch
    /// covers up to 256 of them).
    pub fn tensors(ctx: &Context, config: OptimizerConfig, lens: &[u64]) -> Result<Self> {
        Self::tensors_in(ctx, config, lens, 1)
    }

    /// As [`tensors`](Self::tensors), with the gradients in `pool` buffers (at least 1): before
    /// each step the optimizer moves to the next one with [`Optimizer::rebind`], as it does for
    /// an engine whose memory pool hands out new gradient buffers every step. The host time of
    /// [`record_and_submit`](Self::record_and_submit) then includes the rebind.
    pub fn tensors_in(
        ctx: &Context,
        config: OptimizerConfig,
        lens: &[u64],
        pool: usize,
    ) -> Result<Self> {
        let shapes: Vec<Vec<usize>> = lens.iter().map(|&n| vec![n as usize]).collect();
        let f32 = (DType::F32, Precision::default());
        Self::shaped(ctx, config, lens, &shapes, (pool, f32))
    }

    /// [`tensors_in`](Self::tensors_in) with each tensor's shape, the parameters and gradients
    /// of type `dtype` and the state as `precision` says.
    fn shaped(
        ctx: &Context,
        config: OptimizerConfig,
        lens: &[u64],
        shapes: &[Vec<usize>],
        (pool, (dtype, precision)): (usize, (DType, Precision)),
    ) -> Result<Self> {
        config.validate()?;
        if lens.is_empty() || lens.contains(&0) {
            return Err(Error::Input(
                "every benchmarked tensor needs at least one element".into(),
            ));
        }
        let align = 64; // elements: 256 bytes
        let mut offsets = Vec::with_capacity(lens.len());
        let mut end = 0u64;
        for &len in lens {
            let at = end
                .checked_next_multiple_of(align)
                .and_then(|at| Some((at, at.checked_add(len)?)));
            let (at, next) = at.ok_or_else(|| Error::Input("tensor lengths overflow".into()))?;
            offsets.push(at);
            end = next;
        }
        let params = filled_buffer(ctx, "bench parameters", (end, dtype), 0.5)?;
        let grads = (0..pool.max(1))
            .map(|_| filled_buffer(ctx, "bench gradients", (end, dtype), 0.01))
            .collect::<Result<Vec<_>>>()?;
        let tensors: Vec<Tensor<'_>> = offsets
            .iter()
            .zip(lens)
            .zip(shapes)
            .map(|((&at, &len), shape)| {
                let at = at * dtype.size();
                Tensor::new(
                    BufferRange::new(&params, at, len).with_dtype(dtype),
                    BufferRange::new(&grads[0], at, len).with_dtype(dtype),
                )
                .with_shape(shape)
            })
            .collect();
        let groups = [crate::optimizer::ParamGroup::new(config, tensors)];
        let optimizer = Box::new(Optimizer::with_precision(ctx, &groups, precision)?);
        let total: u64 = lens.iter().sum();
        let bytes = bytes_per_element(&config).saturating_mul(total);
        let work = if pool > 1 {
            Work::Moving {
                optimizer,
                buffers: std::iter::once(params).chain(grads).collect(),
                layout: offsets.into_iter().zip(lens.iter().copied()).collect(),
                next: 0,
            }
        } else {
            let grads = grads.into_iter().next().expect("one buffer");
            Work::Step {
                optimizer,
                _buffers: [params, grads],
            }
        };
        Self::with_work(ctx, work, bytes)
    }

    /// A `copy_buffer_to_buffer` of `bytes` bytes (rounded up to a multiple of 4) between two
    /// buffers of that size. It moves twice that: every byte is read and written.
    pub fn copy(ctx: &Context, bytes: u64) -> Result<Self> {
        let bytes = bytes
            .max(4)
            .checked_next_multiple_of(4)
            .ok_or_else(|| Error::Input(format!("a copy of {bytes} bytes is too large")))?;
        let src = filled_buffer(ctx, "bench copy source", (bytes / 4, DType::F32), 0.5)?;
        let dst = filled_buffer(ctx, "bench copy destination", (bytes / 4, DType::F32), 0.0)?;
        Self::with_work(ctx, Work::Copy { src, dst, bytes }, bytes.saturating_mul(2))
    }

    /// The product of two `n x n` matrices into a third (Muon's Newton–Schulz iterations are
    /// made of such products). Its bytes are the three matrices' (read once each, at least).
    pub fn gemm(ctx: &Context, n: u32) -> Result<Self> {
        let len = u64::from(n) * u64::from(n);
        let a = filled_buffer(ctx, "bench gemm A", (len, DType::F32), 0.5)?;
        let b = filled_buffer(ctx, "bench gemm B", (len, DType::F32), 0.25)?;
        let c = filled_buffer(ctx, "bench gemm C", (len, DType::F32), 0.0)?;
        let product = Gemm::new(
            ctx,
            Matrix::row_major(&c, 0, n, n),
            1.0,
            Matrix::row_major(&a, 0, n, n),
            Matrix::row_major(&b, 0, n, n),
            None,
        )?;
        let work = Work::Gemm {
            product,
            _buffers: [a, b, c],
        };
        Self::with_work(ctx, work, 12 * len)
    }

    /// Bytes one iteration reads plus writes.
    pub fn bytes_per_step(&self) -> u64 {
        self.bytes
    }

    /// The timer [`time`](Self::time) uses.
    pub fn timer(&self) -> Timer {
        if self.timestamps.is_some() {
            Timer::Timestamp
        } else {
            Timer::WallClock
        }
    }

    /// Dispatches one step records (1 for a copy).
    pub fn dispatches(&self) -> usize {
        match &self.work {
            Work::Step { optimizer, .. } | Work::Moving { optimizer, .. } => {
                optimizer.dispatches_per_step()
            }
            Work::Copy { .. } | Work::Minimal(_) | Work::Gemm { .. } => 1,
        }
    }

    fn record(&mut self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        match &mut self.work {
            Work::Step { optimizer, .. } => optimizer.step(encoder)?,
            Work::Moving {
                optimizer,
                buffers,
                layout,
                next,
            } => {
                let pool = &buffers[1..];
                let grads = &pool[*next % pool.len()];
                *next += 1;
                let ranges: Vec<BufferRange<'_>> = layout
                    .iter()
                    .map(|&(at, len)| BufferRange::new(grads, 4 * at, len))
                    .collect();
                optimizer.rebind(&ranges, None)?;
                optimizer.step(encoder)?;
            }
            Work::Minimal(kernel) => kernel.record(encoder),
            Work::Copy { src, dst, bytes } => {
                encoder.copy_buffer_to_buffer(src, 0, dst, 0, *bytes);
            }
            Work::Gemm { product, .. } => {
                product.record(&mut encoder.begin_compute_pass(&Default::default()));
            }
        }
        Ok(())
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-optim bench"),
            })
    }

    /// Runs `iterations` iterations, each submitted on its own, and returns the time of each:
    /// the GPU time between timestamps written before and after the work, or, without
    /// timestamps, the wall-clock time from the submit until a blocking poll returns.
    pub fn time(&mut self, iterations: u64) -> Result<Vec<Duration>> {
        let mut out = Vec::with_capacity(iterations.min(1 << 20) as usize);
        if self.timestamps.is_none() {
            let device = self.ctx.device().clone();
            for _ in 0..iterations {
                let mut encoder = self.encoder();
                self.record(&mut encoder)?;
                let start = Instant::now();
                let index = self.ctx.queue().submit([encoder.finish()]);
                wait(&device, Some(index))?;
                out.push(start.elapsed());
            }
            return Ok(out);
        }
        let mut left = iterations;
        while left > 0 {
            let Some(ts) = self.timestamps.take() else {
                break;
            };
            let n = left.min(u64::from(ts.chunk)) as u32;
            let ran = scoped(&self.ctx.device().clone(), || -> Result<()> {
                for i in 0..n {
                    let mut encoder = self.encoder();
                    ts.write(&mut encoder, 2 * i, false);
                    self.record(&mut encoder)?;
                    ts.write(&mut encoder, 2 * i + 1, true);
                    self.ctx.queue().submit([encoder.finish()]);
                }
                Ok(())
            });
            let times = ran.and_then(|r| r).and_then(|()| ts.read(&self.ctx, n));
            self.timestamps = Some(ts);
            out.extend(times?);
            left -= u64::from(n);
        }
        Ok(out)
    }

    /// Host time to record and submit each of `iterations` iterations, without waiting for the
    /// GPU. Every `wait_every` iterations (at least 1), outside the timed part, it waits for the
    /// GPU so that the queue stays short. On a CPU device (lavapipe) the queued GPU work runs on
    /// the same cores and slows the host down; `wait_every = 1` times an idle device.
    pub fn record_and_submit(&mut self, iterations: u64, wait_every: u64) -> Result<Vec<Duration>> {
        let device = self.ctx.device().clone();
        let wait_every = wait_every.max(1);
        let mut out = Vec::with_capacity(iterations.min(1 << 20) as usize);
        for i in 0..iterations {
            if i > 0 && i % wait_every == 0 {
                wait(&device, None)?;
            }
            let start = Instant::now();
            let mut encoder = self.encoder();
            self.record(&mut encoder)?;
            self.ctx.queue().submit([encoder.finish()]);
            out.push(start.elapsed());
        }
        wait(&device, None)?;
        Ok(out)
    }

    /// Warms up (a few untimed iterations), then times `iterations` and takes the median.
    pub fn measure(&mut self, iterations: usize) -> Result<Measurement> {
        let iterations = iterations.max(1) as u64;
        self.time(iterations.div_ceil(4).clamp(2, 10))?;
        let times = self.time(iterations)?;
        Measurement::from_times(&times, self.bytes, self.timer())
    }
}

/// Times `iterations` steps of `case` over one tensor of `elements` elements, after a warm-up.
pub fn measure_kernel(
    ctx: &Context,
    case: &KernelCase,
    elements: u64,
    iterations: usize,
) -> Result<Measurement> {
    Workload::kernel(ctx, case, elements)?.measure(iterations)
}

/// The side of the square product `wgpu-optim bench` times ([`measure_gemm`]).
pub const GEMM_SIZE: u32 = 1024;

/// Times `iterations` products of two `n x n` matrices ([`Workload::gemm`]), after a warm-up,
/// and returns the measurement and the product's GFLOP/s at the median time.
pub fn measure_gemm(ctx: &Context, n: u32, iterations: usize) -> Result<(Measurement, f64)> {
    let m = Workload::gemm(ctx, n)?.measure(iterations)?;
    let flops = 2.0 * f64::from(n).powi(3);
    Ok((m, flops / m.seconds / 1e9))
}

/// Times `iterations` copies of `bytes` bytes (rounded up to a multiple of 4), after a warm-up.
/// The measurement counts `2 * bytes` (read plus written); use [`copy_size_for`] to match a
/// kernel's traffic.
pub fn measure_copy(ctx: &Context, bytes: u64, iterations: usize) -> Result<Measurement> {
    Workload::copy(ctx, bytes)?.measure(iterations)
}

/// Adam over GPT-2 small's 148 tensors, each scaled down by `scale_divisor` and packed into one
/// parameter and one gradient buffer, and Adam over one flat tensor of the same total length.
/// Returns `(148 tensors, flat)`; both count the same bytes, so the ratio of their bandwidths is
/// what splitting into tensors costs.
pub fn measure_many_tensors(
    ctx: &Context,
    scale_divisor: u64,
    iterations: usize,
) -> Result<(Measurement, Measurement)> {
    let lens = gpt2_small_lengths(scale_divisor)?;
    let total: u64 = lens.iter().sum();
    let adam: OptimizerConfig = Adam::default().into();
    let many = Workload::tensors(ctx, adam, &lens)?.measure(iterations)?;
    let flat = Workload::tensors(ctx, adam, &[total])?.measure(iterations)?;
    Ok((many, flat))
}

/// The GPT-2 scale divisor [`host_overhead`] uses: small enough tensors that the GPU work is
/// negligible.
pub const HOST_OVERHEAD_DIVISOR: u64 = 4096;

/// Iterations between the waits of [`host_overhead`], which happen outside the timed part.
pub const HOST_OVERHEAD_WAIT_EVERY: u64 = 50;

/// Median host time to record and submit one Adam step over GPT-2 small's 148 tensors (scaled
/// down by [`HOST_OVERHEAD_DIVISOR`]), without waiting for the GPU, over `iterations`
/// iterations after a warm-up. It waits for the GPU every [`HOST_OVERHEAD_WAIT_EVERY`]
/// iterations, untimed (see [`Workload::record_and_submit`]).
pub fn host_overhead(ctx: &Context, iterations: usize) -> Result<Duration> {
    let lens = gpt2_small_lengths(HOST_OVERHEAD_DIVISOR)?;
    let mut work = Workload::tensors(ctx, Adam::default().into(), &lens)?;
    work.record_and_submit(20, HOST_OVERHEAD_WAIT_EVERY)?;
    let times = work.record_and_submit(iterations.max(1) as u64, HOST_OVERHEAD_WAIT_EVERY)?;
    median(&times).ok_or_else(|| Error::Input("at least one iteration is needed".into()))
}

/// One line of [`table`]: a kernel at one size and the copy of the same bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The kernel case's name.
    pub name: String,
    /// Elements per step.
    pub elements: u64,
    /// The kernel's step.
    pub kernel: Measurement,
    /// The copy moving the same bytes, in the same run.
    pub copy: Measurement,
}

impl Row {
    /// The kernel's bandwidth as a fraction of the copy's.
    pub fn ratio(&self) -> f64 {
        self.kernel.gb_per_s() / self.copy.gb_per_s()
    }
}

/// Measures every case at every size, each against a copy moving the same bytes (each copy size
/// is measured once and shared by the cases that need it).
pub fn measure_rows(
    ctx: &Context,
    cases: &[KernelCase],
    sizes: &[u64],
    iterations: usize,
) -> Result<Vec<Row>> {
    let mut copies: HashMap<u64, Measurement> = HashMap::new();
    let mut rows = Vec::with_capacity(cases.len() * sizes.len());
    for &elements in sizes {
        for case in cases {
            let kernel = measure_kernel(ctx, case, elements, iterations)?;
            let copy_bytes = copy_size_for(kernel.bytes);
            let copy = match copies.get(&copy_bytes) {
                Some(m) => *m,
                None => {
                    let m = measure_copy(ctx, copy_bytes, iterations)?;
                    copies.insert(copy_bytes, m);
                    m
                }
            };
            rows.push(Row {
                name: case.name.to_string(),
                elements,
                kernel,
                copy,
            });
        }
    }
    Ok(rows)
}

/// Times `cases` at `elements` elements one step at a time in turn, `iterations` steps each
/// after a warm-up, so that a machine whose speed drifts (a shared CPU running lavapipe) slows
/// them all alike; the medians are then comparable within the run.
pub fn measure_interleaved(
    ctx: &Context,
    cases: &[KernelCase],
    elements: u64,
    iterations: usize,
) -> Result<Vec<Measurement>> {
    let mut works: Vec<Workload> = cases
        .iter()
        .map(|c| Workload::kernel(ctx, c, elements))
        .collect::<Result<_>>()?;
    let iterations = iterations.max(1);
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(iterations); works.len()];
    for work in &mut works {
        work.time(3)?;
    }
    for _ in 0..iterations {
        for (work, t) in works.iter_mut().zip(&mut times) {
            t.extend(work.time(1)?);
        }
    }
    works
        .iter()
        .zip(&times)
        .map(|(w, t)| Measurement::from_times(t, w.bytes_per_step(), w.timer()))
        .collect()
}

/// The minimal Adam kernel, and Adam's step with clipping, with a grad scaler and with both,
/// against plain Adam at `elements` elements, timed in turn ([`measure_interleaved`]):
/// `(name, time over plain Adam's)` for each. The minimal kernel's ratio shows what the kernel
/// template costs: at 1 it would cost nothing, at 0.91 Adam takes 10% longer.
pub fn time_over_adam(
    ctx: &Context,
    elements: u64,
    iterations: usize,
) -> Result<Vec<(&'static str, f64)>> {
    let names = [
        "adam",
        "adam-minimal",
        "adam+clip",
        "adam+scaler",
        "adam+clip+scaler",
    ];
    time_over_first(ctx, &names, elements, iterations)
}

/// The cases `names` timed in turn ([`measure_interleaved`]): `(name, time over the first
/// case's)` for each but the first.
fn time_over_first(
    ctx: &Context,
    names: &[&'static str],
    elements: u64,
    iterations: usize,
) -> Result<Vec<(&'static str, f64)>> {
    let cases: Vec<KernelCase> = names.iter().filter_map(|n| kernel_case(n)).collect();
    let m = measure_interleaved(ctx, &cases, elements, iterations)?;
    Ok(names[1..]
        .iter()
        .zip(&m[1..])
        .map(|(n, t)| (*n, t.seconds / m[0].seconds))
        .collect())
}

/// f16 Adam's step on the native path and on the context's own ([`F16Path`]) against the
/// packed path at `elements` elements, timed in turn ([`measure_interleaved`]):
/// `(name, time over the packed path's)` for `adam-f16-native` and `adam-f16`; nothing where
/// the device has no `SHADER_F16`.
pub fn f16_paths_over_packed(
    ctx: &Context,
    elements: u64,
    iterations: usize,
) -> Result<Vec<(&'static str, f64)>> {
    if !ctx.has_native_f16() {
        return Ok(Vec::new());
    }
    let names = ["adam-f16-packed", "adam-f16-native", "adam-f16"];
    time_over_first(ctx, &names, elements, iterations)
}

/// One line per row, starting with the kernel's name:
/// `adam  4194304  12.3 GB/s  91.2% of copy`.
pub fn table(rows: &[Row]) -> String {
    let name_width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let size_width = rows
        .iter()
        .map(|r| r.elements.to_string().len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for r in rows {
        out.push_str(&format!(
            "{:<name_width$}  {:>size_width$}  {:>7.1} GB/s  {:>5.1}% of copy\n",
            r.name,
            r.elements,
            r.kernel.gb_per_s(),
            100.0 * r.ratio(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_small_has_148_tensors_and_124m_parameters() {
        let shapes = gpt2_small_shapes();
        assert_eq!(shapes.len(), 148);
        let total: u64 = shapes.iter().map(|(_, s)| s.iter().product::<u64>()).sum();
        assert_eq!(total, GPT2_SMALL_PARAMETERS);
        assert_eq!(gpt2_small_lengths(1).unwrap().iter().sum::<u64>(), total);
        let names: std::collections::HashSet<_> = shapes.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), 148);
        assert_eq!(shapes[0], ("wte.weight".to_string(), vec![50257, 768]));
        assert_eq!(shapes[147].0, "ln_f.bias");
    }

    #[test]
    fn scaled_lengths_round_up_to_at_least_one() {
        let lens = gpt2_small_lengths(4096).unwrap();
        assert_eq!(lens.len(), 148);
        assert_eq!(lens[0], (50257u64 * 768).div_ceil(4096));
        assert!(lens.iter().all(|&n| n >= 1));
        assert_eq!(gpt2_small_lengths(1 << 40).unwrap(), vec![1; 148]);
        assert!(gpt2_small_lengths(0).is_err());
    }

    #[test]
    fn bytes_per_element_table() {
        let want = [
            ("sgd", 12),
            ("sgd-momentum", 20),
            ("adam", 28),
            ("adam-amsgrad", 36),
            ("adamw", 28),
            ("rmsprop", 20),
            ("rmsprop-centered", 28),
            ("rmsprop-momentum", 28),
            ("rmsprop-centered-momentum", 36),
            ("adagrad", 20),
            ("adamax", 28),
            ("radam", 28),
            ("adadelta", 28),
            ("rprop", 28),
            ("nadam", 28),
            ("asgd", 20),
            ("adafactor", 32),
            ("adafactor-factored", 24),
            ("lion", 20),
            ("adopt", 28),
            ("ademamix", 36),
            ("adamw-schedulefree", 28),
            ("lamb", 44),
            ("muon", 92),
            ("adam-minimal", 28),
            // The reduction reads the gradients once more.
            ("adam+clip", 32),
            ("adam+scaler", 32),
            ("adam+clip+scaler", 32),
            // 16-bit parameters and gradients, state of their type or f32.
            ("adam-bf16", 14),
            ("adam-bf16-f32state", 22),
            // An f32 master copy read and written instead of reading the parameter.
            ("adam-bf16-master-sr", 28),
            ("adam-f16", 14),
            ("adam-f16-f32state", 22),
            ("adam-f16-master", 28),
            ("adam-f16-packed", 14),
            ("adam-f16-native", 14),
        ];
        let cases = kernel_cases();
        assert_eq!(cases.len(), want.len());
        for (case, (name, bytes)) in cases.iter().zip(want) {
            assert_eq!((case.name, case.bytes_per_element), (name, bytes));
            case.config.validate().unwrap();
        }
        assert_eq!(
            kernel_case("adagrad").map(|c| c.bytes_per_element),
            Some(20)
        );
        assert!(kernel_case("nonesuch").is_none());
    }

    #[test]
    fn muon_steps_a_matrix_of_at_most_64_rows() {
        let muon: OptimizerConfig = crate::Muon::default().into();
        assert_eq!(matrix_shape_for(&muon, 1 << 22), [64, 65_536]);
        assert_eq!(matrix_shape_for(&muon, 5000), [50, 100]);
        assert_eq!(matrix_shape_for(&muon, 131), [1, 131]);
        let adafactor: OptimizerConfig = crate::Adafactor::default().into();
        assert_eq!(matrix_shape_for(&adafactor, 1 << 22), [2048, 2048]);
        // 5 iterations of X·Xᵀ, G·G and U·X.
        let (m, n) = (64u64, 65_536u64);
        assert_eq!(
            step_flops(&muon, &[64, 65_536]),
            5 * (2 * m * m * n + 2 * m * m * m + 2 * m * m * n)
        );
        assert_eq!(
            step_flops(&muon, &[65_536, 64]),
            step_flops(&muon, &[64, 65_536])
        );
        assert_eq!(step_flops(&adafactor, &[64, 65_536]), 0);
    }

    #[test]
    fn copy_matches_kernel_traffic() {
        assert_eq!(copy_size_for(28 * 1024), 14 * 1024);
        assert_eq!(copy_size_for(28), 16);
        assert_eq!(copy_size_for(1), 4);
        assert_eq!(copy_size_for(0), 0);
    }

    #[test]
    fn median_and_bandwidth() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), Some(ms(2)));
        assert_eq!(
            median(&[ms(4), ms(1), ms(2), ms(3)]),
            Some(Duration::from_micros(2500))
        );
        let m =
            Measurement::from_times(&[ms(2), ms(1), ms(3)], 4_000_000, Timer::WallClock).unwrap();
        assert!((m.gb_per_s() - 2.0).abs() < 1e-12);
        assert_eq!(m.min_seconds, 0.001);
        assert!(Measurement::from_times(&[], 1, Timer::WallClock).is_err());
    }

    /// Every measurement on the real device, on tiny sizes. Checks what was measured, never how
    /// fast.
    #[test]
    fn measures_kernels_copies_tensors_and_host_time() {
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        let (ctx, _, timestamps) = bench_context(backends, None).expect("no adapter");
        let timer = Timer::of(&ctx);
        assert_eq!(timer == Timer::Timestamp, timestamps);

        let adam = kernel_case("adam").unwrap();
        let m = measure_kernel(&ctx, &adam, 1000, 3).unwrap();
        assert_eq!((m.bytes, m.iterations, m.timer), (28_000, 3, timer));
        assert!(m.min_seconds <= m.seconds);
        let copy = measure_copy(&ctx, copy_size_for(m.bytes), 3).unwrap();
        assert_eq!((copy.bytes, copy.iterations), (28_000, 3));

        let cases = kernel_cases_on(&ctx);
        let native = ctx.has_native_f16();
        assert_eq!(cases.len(), kernel_cases().len() - usize::from(!native));
        let rows = measure_rows(&ctx, &cases, &[777], 2).unwrap();
        assert_eq!(rows.len(), cases.len());
        let text = table(&rows);
        for (line, case) in text.lines().zip(&cases) {
            assert!(line.starts_with(case.name), "{line}");
            assert!(line.ends_with("% of copy"), "{line}");
        }
        for (row, case) in rows.iter().zip(&cases) {
            assert_eq!(row.kernel.bytes, case.bytes_per_element * 777);
            assert_eq!(row.copy.bytes, copy_size_for(row.kernel.bytes) * 2);
        }

        let m = measure_interleaved(&ctx, &cases[..2], 500, 3).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].bytes, m[0].iterations), (12 * 500, 3));
        let ratios = time_over_adam(&ctx, 300, 2).unwrap();
        let names: Vec<&str> = ratios.iter().map(|r| r.0).collect();
        assert_eq!(
            names,
            [
                "adam-minimal",
                "adam+clip",
                "adam+scaler",
                "adam+clip+scaler"
            ]
        );
        assert!(ratios.iter().all(|r| r.1 > 0.0 && r.1.is_finite()));
        let f16 = f16_paths_over_packed(&ctx, 300, 2).unwrap();
        let names: Vec<&str> = f16.iter().map(|r| r.0).collect();
        let want: &[&str] = if native {
            &["adam-f16-native", "adam-f16"]
        } else {
            &[]
        };
        assert_eq!(names, want);
        assert!(f16.iter().all(|r| r.1 > 0.0 && r.1.is_finite()));
        let on_native = kernel_case("adam-f16-native").unwrap();
        if !native {
            assert!(matches!(
                measure_kernel(&ctx, &on_native, 100, 1),
                Err(Error::Unsupported(_))
            ));
        }

        let (many, flat) = measure_many_tensors(&ctx, 1 << 30, 2).unwrap();
        assert_eq!((many.bytes, flat.bytes), (28 * 148, 28 * 148));
        let mut work =
            Workload::tensors(&ctx, adam.config, &gpt2_small_lengths(4096).unwrap()).unwrap();
        assert_eq!(work.dispatches(), 1);
        assert_eq!(work.record_and_submit(7, 3).unwrap().len(), 7);
        assert_eq!(work.time(3).unwrap().len(), 3);
        host_overhead(&ctx, 5).unwrap();

        // Bad input is an error, not a panic.
        assert!(measure_kernel(&ctx, &adam, 0, 1).is_err());
        let minimal = kernel_case("adam-minimal").unwrap();
        assert!(measure_kernel(&ctx, &minimal, 0, 1).is_err());
        assert_eq!(
            measure_kernel(&ctx, &minimal, 1001, 2).unwrap().bytes,
            28 * 1001
        );
        assert!(measure_many_tensors(&ctx, 0, 1).is_err());
        assert!(matches!(
            measure_copy(&ctx, u64::MAX, 1),
            Err(Error::Input(_) | Error::TooLarge { .. })
        ));
        assert!(matches!(
            measure_copy(&ctx, u64::MAX / 4, 1),
            Err(Error::TooLarge { .. })
        ));
        assert!(Workload::tensors(&ctx, adam.config, &[u64::MAX - 10, 100]).is_err());

        // A device without timestamps falls back to the wall clock.
        let (plain, _) = Context::request(backends, None).unwrap();
        assert_eq!(Timer::of(&plain), Timer::WallClock);
        let sgd = kernel_case("sgd").unwrap();
        let m = measure_kernel(&plain, &sgd, 100, 2).unwrap();
        assert_eq!((m.bytes, m.timer), (1200, Timer::WallClock));
        assert_eq!(measure_copy(&plain, 10, 2).unwrap().bytes, 24);
    }

    #[test]
    fn table_rows_start_with_the_name() {
        let m = |seconds| Measurement {
            seconds,
            min_seconds: seconds,
            bytes: 28 << 22,
            iterations: 10,
            timer: Timer::Timestamp,
        };
        let rows = [Row {
            name: "adam".into(),
            elements: 1 << 22,
            kernel: m(0.02),
            copy: m(0.01),
        }];
        let text = table(&rows);
        assert_eq!(text, "adam  4194304      5.9 GB/s   50.0% of copy\n");
    }
}
