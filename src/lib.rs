#![doc = include_str!("../README.md")]

pub mod amp;
pub mod bench;
mod dtype;
pub mod error;
pub mod gemm;
mod gpu;
pub mod lr_finder;
mod optim;
mod optimizer;
mod plot;
pub mod reference;
pub mod replay;
pub mod schedule;
mod state;
pub mod validate;

pub use amp::{ClipGrad, GradScaler, GradScalerState, NormType, StepReport};
pub use dtype::{DType, Precision, StateDType, rounding_bits};
pub use error::{Error, Result};
pub use gpu::{Access, Context, F16Path};
pub use optim::{
    ADOPT, ASGD, AdEMAMix, Adadelta, Adafactor, Adagrad, Adam, AdamW, AdamWScheduleFree, Adamax,
    AdjustLr, Lamb, Lion, Muon, NAdam, OptimizerConfig, RAdam, RMSprop, Rprop, SGD,
};
pub use optimizer::checkpoint;
pub use optimizer::{
    BIND_GROUP_CACHE, BufferRange, LAYOUT_CACHE, MAX_STEP, Optimizer, ParamGroup, Snapshot, Tensor,
};
pub use state::TensorState;

/// One shader module this crate compiles, with the pipelines it makes from it.
#[derive(Clone, Debug, PartialEq)]
pub struct ShaderSource {
    /// The file name and variant, e.g. `"shaders/adam.wgsl (vec4, read-only gradients, ...)"`.
    pub label: String,
    /// The WGSL, with its prologues in front.
    pub source: String,
    /// Each pipeline: its entry point and the values of its pipeline-overridable constants
    /// (for an optimizer's `step`, one per kernel of its class: `STATES` and its switches).
    pub pipelines: Vec<(String, Vec<(String, f64)>)>,
}

/// Every shader module this crate compiles. Used to check the shaders with naga and to
/// translate them for other backends.
pub fn shader_sources() -> Vec<ShaderSource> {
    gpu::Module::all()
        .into_iter()
        .map(|m| ShaderSource {
            label: m.label(),
            source: m.source(),
            pipelines: m.pipelines(),
        })
        .collect()
}
