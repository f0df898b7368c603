//! Shader sources and their compilation into pipelines, once per [`Context`].
//!
//! Every optimizer module is one access prologue (shaders/scalar.wgsl or shaders/vec4.wgsl),
//! shaders/layout.wgsl, the storage functions of the parameter, gradient and state bindings
//! (each of its storage type; the gradients read-only, or read-write where parameters and
//! gradients share a buffer), the template shaders/common.wgsl and the optimizer's file. The
//! reduction module is a prologue, layout.wgsl, the gradients' storage and shaders/reduce.wgsl.

use super::template::{COEFFS_STRIDE, STEP_HEADER_SIZE, TABLE_SIZE, WORKGROUP_SIZE, flags};
use super::{Access, Context, F16Path};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::optim::{Kernel, OptimizerConfig, Shader, Sums};
use std::num::NonZeroU64;

const SCALAR: &str = include_str!("../../shaders/scalar.wgsl");
const VEC4: &str = include_str!("../../shaders/vec4.wgsl");
const LAYOUT: &str = include_str!("../../shaders/layout.wgsl");
const COMMON: &str = include_str!("../../shaders/common.wgsl");
const REDUCE: &str = include_str!("../../shaders/reduce.wgsl");
const UNITS: &str = include_str!("../../shaders/units.wgsl");
const LANES: &str = include_str!("../../shaders/lanes.wgsl");
const PACKED: &str = include_str!("../../shaders/packed.wgsl");
const PACKED_LANES: &str = include_str!("../../shaders/packed_lanes.wgsl");
const NATIVE: &str = include_str!("../../shaders/native.wgsl");
const NATIVE_LANES: &str = include_str!("../../shaders/native_lanes.wgsl");
const LANE_UNITS: &str = include_str!("../../shaders/lane_units.wgsl");
const DTYPE: &str = include_str!("../../shaders/dtype.wgsl");
const PARAM: &str = include_str!("../../shaders/param.wgsl");
const MASTER: &str = include_str!("../../shaders/master.wgsl");
const STOCHASTIC: &str = include_str!("../../shaders/stochastic.wgsl");
/// `param_grid` where parameters are rounded to nearest: the store rounds them.
const NEAREST: &str = "// Parameters are rounded to nearest by their store.\n\
     fn param_grid(v: V, tensor: u32, first: u32) -> V {\n    return v;\n}\n";
const SUMS: &str = include_str!("../../shaders/sums.wgsl");
const GEMM: &str = include_str!("../../shaders/gemm.wgsl");

/// How a step kernel binds the gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum GradAccess {
    /// `var<storage, read>`: the gradients live in another buffer than the parameters.
    ReadOnly,
    /// `var<storage, read_write>`: parameters and gradients share a buffer, which wgpu does
    /// not let one dispatch bind both read-only and read-write. The kernel only reads them.
    Shared,
}

/// How a batch's kernels bind its parameters, gradients and state: the access mode, the
/// gradients' binding, the storage type of each, and how 16-bit parameters are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Binds {
    pub(crate) access: Access,
    pub(crate) grad: GradAccess,
    pub(crate) param_type: DType,
    pub(crate) grad_type: DType,
    pub(crate) state_type: DType,
    /// Whether the batch's tensors keep an f32 master copy of their parameters (binding 4,
    /// shaders/master.wgsl).
    pub(crate) master: bool,
    /// Whether parameters are rounded stochastically when stored (shaders/stochastic.wgsl).
    pub(crate) stochastic: bool,
    /// Which f16 bindings are `f16` arrays (shaders/native.wgsl) rather than packed words:
    /// [`F16Path::Packed`] where none of the types is f16, or the device has no native path.
    pub(crate) f16_path: F16Path,
}

impl Binds {
    /// f32 parameters, gradients and state.
    pub(crate) fn f32(access: Access, grad: GradAccess) -> Self {
        Self {
            access,
            grad,
            param_type: DType::F32,
            grad_type: DType::F32,
            state_type: DType::F32,
            master: false,
            stochastic: false,
            f16_path: F16Path::Packed,
        }
    }

    /// Whether a binding of `dtype` is an `f16` array in the kernel of the edge dispatch
    /// (`edges`) or of the main one.
    fn native(self, dtype: DType, edges: bool) -> bool {
        let units = self.access == Access::Vec4 && !edges;
        dtype == DType::F16 && self.f16_path.native_for(units)
    }

    /// Whether any binding is an `f16` array there: the module then enables f16.
    fn any_native(self, edges: bool) -> bool {
        [self.param_type, self.grad_type, self.state_type]
            .iter()
            .any(|&d| self.native(d, edges))
    }

    /// Bytes of a unit of an array of `dtype` elements: an f32 or a vec4 of them, a vec4 of
    /// 16-bit elements (two words), or with scalar access a word of two.
    pub(crate) fn unit_size(self, dtype: DType) -> u64 {
        super::plan::unit_bytes(dtype.size(), self.access.lanes())
    }
}

/// One shader module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Module {
    /// An optimizer's step kernel and its `finalize`, with the step's `FLAGS` (bits of
    /// [`STEP_FLAGS`]) as a constant, so that a step without clipping or a grad scaler reads
    /// nothing for them.
    Optimizer(&'static Shader, Binds, u32),
    /// The gradient reduction, over gradients of the type.
    Reduce(Access, DType),
    /// The matrix product (shaders/gemm.wgsl); `true` for the variant whose operands are all
    /// bound read-write, so that one buffer may hold them all.
    Gemm(bool),
}

/// One pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Pipeline {
    /// An optimizer's step kernel, with the step's flags.
    Step(Kernel, Binds, u32),
    /// An optimizer's `finalize`.
    Finalize(&'static Shader),
    /// The gradient reduction, over gradients of the type.
    Reduce(Access, DType),
    /// The per-tensor sums' pass over a batch (shaders/sums.wgsl), with the step's flags, in
    /// a round of the step's sums (`SUMS_ROUND`).
    Sums(Kernel, Binds, u32, u32),
    /// The combination of the per-tensor sums of a round into each tensor's coefficients.
    CombineSums(Kernel, u32),
    /// A pass over the factors of a batch of tensors whose state is factored, with the
    /// step's flags: `factor_lines` or `factor_means` (shaders/adafactor.wgsl).
    Factors(Kernel, Binds, u32, FactorPass),
    /// The matrix product ([`crate::gemm`]), operands read-only or all read-write (as
    /// [`Module::Gemm`]): `gemm`, or (`true`) `gemm_combine`, which adds the partial sums of a
    /// product whose inner dimension is split.
    Gemm(bool, bool),
}

/// The two passes over factored state that run after `finalize` and before the per-tensor
/// sums: the factors' update from the gradients' rows and columns, then the row factor's
/// means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FactorPass {
    /// `factor_lines`: each row and column factor lerps toward its line's mean square.
    Lines,
    /// `factor_means`: each matrix's mean of its row factor, clamped below.
    Means,
}

impl FactorPass {
    /// The entry point.
    pub(crate) fn entry(self) -> &'static str {
        match self {
            FactorPass::Lines => "factor_lines",
            FactorPass::Means => "factor_means",
        }
    }
}

/// One bind group layout, shared by the pipelines that bind the same resources, so that their
/// bind groups serve all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Layout {
    /// A step kernel's batch.
    Step(Binds),
    /// `finalize`.
    Finalize,
    /// A batch's reduction, over gradients of the type.
    Reduce(Access, DType),
    /// The segment tables (group 1 of the step kernels and the reduction), at a dynamic
    /// offset.
    Table,
    /// The per-tensor sums' partials (group 2 of the sums' pass).
    SumsOut,
    /// `combine_sums`: the coefficients, the partials and the map of each tensor's partials.
    CombineSums,
    /// The matrix product: its parameters, A, B, D and C; A, B and D read-only, or (`true`)
    /// read-write as C.
    Gemm(bool),
}

/// The flags the step kernels compile in: unscaling, the two kinds of clipping, the grad
/// scaler's skip, and Lamb's `pre_norm`.
pub(crate) const STEP_FLAGS: u32 =
    flags::UNSCALE | flags::CLIP_NORM | flags::CLIP_VALUE | flags::SCALER | flags::PRE_NORM;

/// A flag of [`Module::Optimizer`] and [`Pipeline::Step`] beside [`STEP_FLAGS`]: the kernel
/// of the edge dispatch, which takes the vec4 units that segments share (`EDGES` in
/// shaders/common.wgsl).
pub(crate) const EDGES: u32 = 1 << 8;

/// A flag of [`Module::Optimizer`] and [`Pipeline::Step`] beside [`STEP_FLAGS`]: the main
/// kernel of a batch of one segment, which needs no search for it (`SINGLE` in
/// shaders/common.wgsl).
pub(crate) const SINGLE: u32 = 1 << 9;

impl Module {
    /// Every module this crate compiles.
    ///
    /// With 16-bit storage types the variants multiply: every shader is compiled with bf16
    /// parameters, gradients and state; with f16 parameters, rounded stochastically, beside
    /// f32 gradients and state; and with bf16 parameters and gradients, f32 state and f32
    /// master weights, rounded stochastically; each with and without the step flags, in both
    /// dispatches. The storage functions are the same for every shader, so these stand for
    /// the other combinations.
    pub(crate) fn all() -> Vec<Module> {
        let mut out = Vec::new();
        for access in [Access::Scalar, Access::Vec4] {
            for shader in OptimizerConfig::shaders() {
                for grad in [GradAccess::ReadOnly, GradAccess::Shared] {
                    for flags in [
                        0,
                        SINGLE,
                        EDGES,
                        STEP_FLAGS,
                        STEP_FLAGS | SINGLE,
                        STEP_FLAGS | EDGES,
                    ] {
                        out.push(Module::Optimizer(shader, Binds::f32(access, grad), flags));
                    }
                }
                let (bf16, f16, f32) = (DType::BF16, DType::F16, DType::F32);
                let (packed, native, auto) = (F16Path::Packed, F16Path::Native, F16Path::Auto);
                for (param_type, grad_type, state_type, master, stochastic, f16_path) in [
                    (bf16, bf16, bf16, false, false, packed),
                    (f16, f32, f32, false, true, packed),
                    (bf16, bf16, f32, true, true, packed),
                    (f16, f16, f16, true, true, native),
                    (f16, f16, f32, false, false, auto),
                ] {
                    for flags in [0, EDGES, STEP_FLAGS, STEP_FLAGS | EDGES] {
                        let binds = Binds {
                            param_type,
                            grad_type,
                            state_type,
                            master,
                            stochastic,
                            f16_path,
                            ..Binds::f32(access, GradAccess::ReadOnly)
                        };
                        out.push(Module::Optimizer(shader, binds, flags));
                    }
                }
            }
            for dtype in DType::ALL {
                out.push(Module::Reduce(access, dtype));
            }
        }
        out.push(Module::Gemm(false));
        out.push(Module::Gemm(true));
        out
    }

    /// The WGSL source.
    pub(crate) fn source(self) -> String {
        let prologue = |access| match access {
            Access::Scalar => SCALAR,
            Access::Vec4 => VEC4,
        };
        match self {
            Module::Optimizer(shader, binds, flags) => {
                let mode = match binds.grad {
                    GradAccess::ReadOnly => "read",
                    GradAccess::Shared => "read_write",
                };
                let edges = flags & EDGES != 0;
                let at = |name, binding, mode, dtype, writes| Storage {
                    name,
                    binding,
                    mode,
                    dtype,
                    access: binds.access,
                    lanes: edges,
                    writes,
                    native: binds.native(dtype, edges),
                };
                let mut storage = [
                    at("param", 1, "read_write", binds.param_type, true),
                    at("grad", 2, mode, binds.grad_type, false),
                    at("state", 3, "read_write", binds.state_type, true),
                ]
                .map(Storage::source)
                .concat();
                if binds.master {
                    storage += &at("master", 4, "read_write", DType::F32, true).source();
                    storage += MASTER;
                } else {
                    storage += PARAM;
                }
                storage += &if binds.stochastic {
                    let (widen, round) = binds.param_type.conversions();
                    STOCHASTIC.replace("$widen", widen).replace("$round", round)
                } else {
                    NEAREST.to_string()
                };
                let sums = if shader.sums != Sums::Never && !edges {
                    SUMS
                } else {
                    ""
                };
                // A directive comes before every declaration.
                let enable = if binds.any_native(edges) {
                    "enable f16;\n\n"
                } else {
                    ""
                };
                format!(
                    "{enable}{}\n\
                     // What the step does to the gradients (bits of StepConfig.flags).\n\
                     const FLAGS: u32 = {}u;\n\
                     // Whether this is the kernel of the edge dispatch (see `step`).\n\
                     const EDGES: bool = {};\n\
                     // Whether the batch has one segment (see `step`).\n\
                     const SINGLE: bool = {};\n\n{LAYOUT}\n{}{storage}\n{COMMON}\n{}\n{sums}",
                    prologue(binds.access),
                    flags & STEP_FLAGS,
                    edges,
                    flags & SINGLE != 0,
                    conversions([binds.param_type, binds.grad_type, binds.state_type]),
                    shader.source
                )
            }
            Module::Reduce(access, dtype) => {
                let storage = Storage {
                    name: "rgrad",
                    binding: 0,
                    mode: "read",
                    dtype,
                    access,
                    lanes: false,
                    writes: false,
                    native: false,
                };
                format!(
                    "{}\n{LAYOUT}\n{}{}\n{REDUCE}",
                    prologue(access),
                    conversions([dtype]),
                    storage.source()
                )
            }
            Module::Gemm(false) => GEMM.to_string(),
            Module::Gemm(true) => GEMM.replace("var<storage, read>", "var<storage, read_write>"),
        }
    }

    /// The pipelines made from this module: each entry point with the values of its
    /// pipeline-overridable constants, one for every kernel of the shader.
    pub(crate) fn pipelines(self) -> Vec<(String, Vec<(String, f64)>)> {
        match self {
            Module::Optimizer(shader, _, flags) => {
                let mut out = vec![("finalize".to_string(), Vec::new())];
                let mut kernels: Vec<Kernel> = Vec::new();
                for config in OptimizerConfig::all_cases() {
                    for k in config.kernels() {
                        if k.shader == shader && !kernels.contains(&k) {
                            kernels.push(k);
                        }
                    }
                }
                let sums = |k: &Kernel| k.sums() && flags & EDGES == 0;
                if kernels.iter().any(sums) {
                    out.push(("combine_sums".to_string(), Vec::new()));
                }
                for k in kernels {
                    let constants: Vec<(String, f64)> = k
                        .constants()
                        .into_iter()
                        .map(|(n, v)| (n.to_string(), v))
                        .collect();
                    if sums(&k) {
                        out.push(("sums".to_string(), constants.clone()));
                    }
                    if k.factored() && flags & EDGES == 0 {
                        for pass in [FactorPass::Lines, FactorPass::Means] {
                            out.push((pass.entry().to_string(), constants.clone()));
                        }
                    }
                    out.push(("step".to_string(), constants));
                }
                out
            }
            Module::Reduce(..) => vec![("reduce".to_string(), Vec::new())],
            Module::Gemm(_) => vec![
                ("gemm".to_string(), Vec::new()),
                ("gemm_combine".to_string(), Vec::new()),
            ],
        }
    }

    /// The shader file's name and variant, as a label.
    pub(crate) fn label(self) -> String {
        match self {
            Module::Optimizer(shader, binds, flags) => {
                let access = binds.access;
                let grad = match binds.grad {
                    GradAccess::ReadOnly => "read-only gradients",
                    GradAccess::Shared => "gradients in the parameter buffer",
                };
                let typed = [binds.param_type, binds.grad_type, binds.state_type];
                let mut types = if typed == [DType::F32; 3] {
                    String::new()
                } else {
                    format!(
                        ", {} parameters, {} gradients, {} state",
                        binds.param_type, binds.grad_type, binds.state_type
                    )
                };
                if binds.master {
                    types += ", master weights";
                }
                if binds.stochastic {
                    types += ", stochastic rounding";
                }
                if binds.f16_path != F16Path::Packed {
                    types += &format!(", f16 path {}", binds.f16_path);
                }
                if binds.any_native(flags & EDGES != 0) {
                    types += ", native f16";
                }
                let edges = if flags & EDGES != 0 { ", edges" } else { "" };
                let single = if flags & SINGLE != 0 {
                    ", one segment"
                } else {
                    ""
                };
                format!(
                    "shaders/{} ({access}, {grad}{types}, flags {}{edges}{single})",
                    shader.file,
                    flags & STEP_FLAGS
                )
            }
            Module::Reduce(access, dtype) => format!("shaders/reduce.wgsl ({access}, {dtype})"),
            Module::Gemm(false) => "shaders/gemm.wgsl".to_string(),
            Module::Gemm(true) => "shaders/gemm.wgsl (operands read-write)".to_string(),
        }
    }
}

/// One storage binding of a kernel: its declaration and its storage functions (see
/// shaders/units.wgsl).
struct Storage {
    /// The binding's name in WGSL, which names its functions (`param_unit`, ...).
    name: &'static str,
    binding: u32,
    /// `read` or `read_write`.
    mode: &'static str,
    dtype: DType,
    access: Access,
    /// Addressed an element at a time (the edge dispatch), rather than in whole units.
    lanes: bool,
    /// Whether the kernel stores to it.
    writes: bool,
    /// An f16 binding on the native path: `f16` elements rather than packed words.
    native: bool,
}

impl Storage {
    /// The WGSL: the binding's declaration, then its functions.
    fn source(self) -> String {
        let name = self.name;
        let packed_units = self.access == Access::Vec4 && !self.lanes;
        // The element type, the template, and whether it addresses single elements.
        let (element, template, element_wise) = match self.dtype {
            DType::F32 if self.lanes => ("f32", LANES, true),
            DType::F32 => ("E", UNITS, false),
            _ if self.native && packed_units => ("vec4<f16>", NATIVE, false),
            _ if self.native => ("f16", NATIVE_LANES, true),
            _ if packed_units => ("vec2<u32>", PACKED, false),
            _ if self.writes => ("atomic<u32>", PACKED_LANES, true),
            _ => ("u32", PACKED_LANES, true),
        };
        let mut out = format!(
            "@group(0) @binding({}) var<storage, {}> {name}: array<{element}>;\n",
            self.binding, self.mode
        );
        if self.dtype != DType::F32 && !packed_units && !self.native {
            let load = if self.writes {
                format!("atomicLoad(&{name}[w])")
            } else {
                format!("{name}[w]")
            };
            out += &format!("fn word_{name}(w: u32) -> u32 {{\n    return {load};\n}}\n");
        }
        // The loads, then the stores where the kernel writes; element-wise templates take
        // their whole units from shaders/lane_units.wgsl.
        let parts = |t: &'static str| t.split_once("// @store").unwrap_or((t, ""));
        let mut pieces = vec![parts(template)];
        if element_wise {
            pieces.push(parts(LANE_UNITS));
        }
        let mut body: String = pieces.iter().map(|p| p.0).collect();
        if self.writes {
            body.extend(pieces.iter().map(|p| p.1));
        }
        let (widen, round) = self.dtype.conversions();
        out + &body
            .replace("$name", name)
            .replace("$widen", widen)
            .replace("$round", round)
    }
}

impl DType {
    /// The functions of shaders/dtype.wgsl that widen this 16-bit type and round to it.
    fn conversions(self) -> (&'static str, &'static str) {
        match self {
            DType::F16 => ("f16_to_f32", "f32_to_f16"),
            _ => ("bf16_to_f32", "f32_to_bf16"),
        }
    }
}

/// shaders/dtype.wgsl where any of `types` is 16-bit, else nothing.
fn conversions<const N: usize>(types: [DType; N]) -> &'static str {
    if types.iter().any(|&d| d != DType::F32) {
        DTYPE
    } else {
        ""
    }
}

/// A pipeline with its bind group layout.
#[derive(Debug)]
pub(crate) struct CompiledKernel {
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) pipeline: wgpu::ComputePipeline,
}

fn uniform(binding: u32, size: u64) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: NonZeroU64::new(size),
        },
        count: None,
    }
}

fn storage(binding: u32, read_only: bool, dynamic: bool, min: u64) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: dynamic,
            min_binding_size: NonZeroU64::new(min),
        },
        count: None,
    }
}

/// Checks the device can run `pipeline`, then builds its layout and pipeline.
pub(super) fn compile(ctx: &Context, pipeline: Pipeline) -> Result<CompiledKernel> {
    let limits = ctx.limits();
    if limits.max_compute_invocations_per_workgroup < WORKGROUP_SIZE
        || limits.max_compute_workgroup_size_x < WORKGROUP_SIZE
    {
        return Err(Error::Unsupported(format!(
            "workgroups of {WORKGROUP_SIZE} invocations (max_compute_invocations_per_workgroup)"
        )));
    }
    if TABLE_SIZE > limits.max_uniform_buffer_binding_size {
        return Err(Error::Unsupported(format!(
            "{TABLE_SIZE} bytes of uniform binding (max_uniform_buffer_binding_size is {})",
            limits.max_uniform_buffer_binding_size
        )));
    }
    let (module, entry, layout, constants) = match pipeline {
        Pipeline::Step(kernel, binds, flags) => (
            Module::Optimizer(kernel.shader, binds, flags & (STEP_FLAGS | EDGES | SINGLE)),
            "step",
            Layout::Step(binds),
            kernel.constants(),
        ),
        Pipeline::Finalize(shader) => (
            Module::Optimizer(shader, Binds::f32(Access::Scalar, GradAccess::ReadOnly), 0),
            "finalize",
            Layout::Finalize,
            Vec::new(),
        ),
        Pipeline::Reduce(access, dtype) => (
            Module::Reduce(access, dtype),
            "reduce",
            Layout::Reduce(access, dtype),
            Vec::new(),
        ),
        Pipeline::Sums(kernel, binds, flags, round) => (
            Module::Optimizer(kernel.shader, binds, flags & STEP_FLAGS),
            "sums",
            Layout::Step(binds),
            round_constants(kernel, round),
        ),
        Pipeline::CombineSums(kernel, round) => (
            Module::Optimizer(
                kernel.shader,
                Binds::f32(Access::Scalar, GradAccess::ReadOnly),
                0,
            ),
            "combine_sums",
            Layout::CombineSums,
            round_constants(kernel, round),
        ),
        Pipeline::Factors(kernel, binds, flags, pass) => (
            Module::Optimizer(kernel.shader, binds, flags & STEP_FLAGS),
            pass.entry(),
            Layout::Step(binds),
            kernel.constants(),
        ),
        Pipeline::Gemm(shared, combine) => (
            Module::Gemm(shared),
            if combine { "gemm_combine" } else { "gemm" },
            Layout::Gemm(shared),
            Vec::new(),
        ),
    };
    let name = match pipeline {
        Pipeline::Step(kernel, ..) => kernel.name(),
        Pipeline::Sums(kernel, .., round) => format!("{} sums {round}", kernel.name()),
        Pipeline::CombineSums(kernel, round) => format!("{} combine_sums {round}", kernel.name()),
        Pipeline::Factors(kernel, .., pass) => format!("{} {}", kernel.name(), pass.entry()),
        _ => entry.to_string(),
    };
    let sums_out = matches!(pipeline, Pipeline::Sums(..)).then(|| ctx.layout(Layout::SumsOut));
    let mut entries = layout.entries();
    if sums_out.is_some() {
        entries.extend(Layout::SumsOut.entries());
    }
    let storage_count = entries
        .iter()
        .filter(|e| {
            matches!(
                e.ty,
                wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { .. },
                    ..
                }
            )
        })
        .count() as u32;
    if storage_count > limits.max_storage_buffers_per_shader_stage {
        return Err(Error::Unsupported(format!(
            "the {name} kernel: it binds {storage_count} storage buffers but the device allows {} per shader stage (max_storage_buffers_per_shader_stage)",
            limits.max_storage_buffers_per_shader_stage
        )));
    }

    let device = ctx.device();
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let label = format!("wgpu-optim {name} ({})", module.label());
    let table = match layout {
        Layout::Step(..) | Layout::Reduce(..) => Some(ctx.layout(Layout::Table)),
        Layout::Finalize
        | Layout::Table
        | Layout::SumsOut
        | Layout::CombineSums
        | Layout::Gemm(_) => None,
    };
    let layout = ctx.layout(layout);
    let groups: Vec<Option<&wgpu::BindGroupLayout>> = std::iter::once(&layout)
        .chain(&table)
        .chain(&sums_out)
        .map(Some)
        .collect();
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&label),
        bind_group_layouts: &groups,
        immediate_size: 0,
    });
    let module = ctx.module(module);
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&label),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &constants,
            ..Default::default()
        },
        cache: None,
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(Error::Gpu(format!("compiling {label}: {e}")));
    }
    Ok(CompiledKernel { layout, pipeline })
}

/// A kernel's constants in round `round` of its per-tensor sums.
fn round_constants(kernel: Kernel, round: u32) -> Vec<(&'static str, f64)> {
    let mut out = kernel.constants();
    out.push(("SUMS_ROUND", f64::from(round)));
    out
}

impl Layout {
    /// The bindings.
    pub(crate) fn entries(self) -> Vec<wgpu::BindGroupLayoutEntry> {
        match self {
            Layout::Step(binds) => vec![
                storage(0, true, false, STEP_HEADER_SIZE + COEFFS_STRIDE),
                storage(1, false, false, binds.unit_size(binds.param_type)),
                storage(
                    2,
                    binds.grad == GradAccess::ReadOnly,
                    false,
                    binds.unit_size(binds.grad_type),
                ),
                storage(3, false, false, binds.unit_size(binds.state_type)),
            ]
            .into_iter()
            .chain(
                binds
                    .master
                    .then(|| storage(4, false, false, binds.unit_size(DType::F32))),
            )
            .collect(),
            Layout::Finalize => vec![
                storage(0, true, true, 0),
                storage(1, false, false, 0),
                storage(2, true, false, 16),
                storage(3, false, false, STEP_HEADER_SIZE + COEFFS_STRIDE),
            ],
            Layout::Reduce(access, dtype) => vec![
                storage(
                    0,
                    true,
                    false,
                    Binds::f32(access, GradAccess::ReadOnly).unit_size(dtype),
                ),
                storage(1, true, true, 0),
                storage(2, true, false, 0),
                storage(3, false, false, 16),
            ],
            Layout::Table => vec![uniform(0, TABLE_SIZE)],
            Layout::SumsOut => vec![storage(0, false, false, 16)],
            Layout::CombineSums => vec![
                storage(0, false, false, STEP_HEADER_SIZE + COEFFS_STRIDE),
                storage(1, true, false, 16),
                storage(2, true, false, 16),
                storage(3, false, false, 0),
            ],
            Layout::Gemm(shared) => vec![
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: NonZeroU64::new(crate::gemm::PARAMS_SIZE),
                    },
                    count: None,
                },
                storage(1, !shared, false, 4),
                storage(2, !shared, false, 4),
                storage(3, !shared, false, 4),
                storage(4, false, false, 4),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    //! The structs the host writes, against the layouts naga gives the WGSL structs.

    use super::*;
    use crate::gpu::template::{CONTROL_HEADER, StepConfig, TENSOR_STEP_SIZE};
    use std::mem::offset_of;

    fn parse(module: Module) -> naga::Module {
        naga::front::wgsl::parse_str(&module.source()).expect("the module parses")
    }

    /// `(member, offset)` of every member of the named struct, and its size, as naga lays
    /// them out; padding members (`_pad*`) left out.
    fn naga_layout(module: &naga::Module, name: &str) -> (Vec<(String, u32)>, u32) {
        let mut layouter = naga::proc::Layouter::default();
        layouter
            .update(module.to_ctx())
            .expect("the module lays out");
        let (handle, ty) = module
            .types
            .iter()
            .find(|(_, ty)| ty.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no struct {name}"));
        let naga::TypeInner::Struct { members, .. } = &ty.inner else {
            panic!("{name} is not a struct");
        };
        let fields = members
            .iter()
            .filter_map(|m| {
                let n = m.name.clone().unwrap_or_default();
                (!n.starts_with('_')).then_some((n, m.offset))
            })
            .collect();
        (fields, layouter[handle].size)
    }

    /// Field names and offsets of a Rust struct, and its size.
    macro_rules! rust_layout {
        ($t:ty, [$($f:ident),* $(,)?]) => {
            (
                vec![$((stringify!($f).to_string(), offset_of!($t, $f) as u32)),*],
                size_of::<$t>() as u32,
            )
        };
    }

    /// Every shader's `Hyper` is as large as the record its class writes, whose fields are all
    /// 4-byte scalars (a field out of order fails the kernels' tests against the CPU
    /// reference), and its `Coeffs` fits the stride `finalize` writes them at.
    #[test]
    fn every_shader_matches_its_host_records() {
        for shader in OptimizerConfig::shaders() {
            for access in [Access::Scalar, Access::Vec4] {
                let binds = Binds::f32(access, GradAccess::ReadOnly);
                let module = parse(Module::Optimizer(shader, binds, 0));
                let (_, hyper) = naga_layout(&module, "Hyper");
                assert_eq!(u64::from(hyper), shader.hyper_size, "{}", shader.file);
                // A `Coeffs` that aliases `Hyper` is not a struct of its own.
                let own = module
                    .types
                    .iter()
                    .any(|(_, t)| t.name.as_deref() == Some("Coeffs"));
                let coeffs = if own {
                    naga_layout(&module, "Coeffs").1
                } else {
                    hyper
                };
                assert!(u64::from(coeffs) <= COEFFS_STRIDE, "{}", shader.file);
                let (fields, _) = naga_layout(&module, "Derived");
                assert_eq!(fields[1], ("tensors".into(), STEP_HEADER_SIZE as u32));
            }
        }
    }

    #[test]
    fn template_structs_match_naga_layouts() {
        let adam = parse(Module::Optimizer(
            OptimizerConfig::shaders()[0],
            Binds::f32(Access::Vec4, GradAccess::ReadOnly),
            0,
        ));
        let reduce = parse(Module::Reduce(Access::Vec4, DType::F32));
        assert_eq!(
            naga_layout(&reduce, "StepConfig"),
            rust_layout!(
                StepConfig,
                [
                    tensors,
                    partials,
                    flags,
                    growth_interval,
                    max_norm,
                    clip_value,
                    growth_factor,
                    growth_factor_lo,
                    backoff_factor,
                    backoff_factor_lo,
                    pre_norm_max,
                    pre_norm_eps,
                    seed,
                ]
            )
        );
        // Written word by word by `segment_table`, and read back by `step_count`,
        // `read_grad_scaler` and `read_step_report`.
        let words = |names: &[&str]| -> Vec<(String, u32)> {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), 4 * i as u32))
                .collect()
        };
        let segment = words(&[
            "param_offset",
            "grad_offset",
            "state_offset",
            "len",
            "first_workgroup",
            "tensor",
            "head",
            "lr_ratio",
        ]);
        assert_eq!(naga_layout(&reduce, "Segment"), (segment, 32));
        let mut table = words(&[
            "count",
            "total_workgroups",
            "dispatch_x",
            "state_stride",
            "partial_base",
            "reduce_workgroups",
            "reduce_dispatch_x",
            "reduce_span",
            "coarse_shift",
            "step_span",
            "sums_base",
            "sums_dispatch_x",
        ]);
        table.push(("segments".into(), 48));
        table.push(("coarse".into(), 48 + 32 * 256));
        assert_eq!(
            naga_layout(&reduce, "SegmentTable"),
            (table, TABLE_SIZE as u32)
        );
        let mut control = words(&["scale", "growth_tracker", "total_norm", "found_inf"]);
        control.push(("tensors".into(), CONTROL_HEADER as u32));
        assert_eq!(naga_layout(&adam, "Control").0, control);
        assert_eq!(
            naga_layout(&adam, "TensorStep"),
            (
                vec![
                    ("step".into(), 0),
                    ("group".into(), 4),
                    ("scalars".into(), 16)
                ],
                TENSOR_STEP_SIZE as u32
            )
        );
        let header = words(&[
            "skip",
            "inv_scale",
            "clip_coef",
            "clip_value",
            "pre_norm",
            "seed",
            "rng_step",
        ]);
        assert_eq!(
            naga_layout(&adam, "StepHeader"),
            (header, STEP_HEADER_SIZE as u32)
        );
    }
}
