#![doc = include_str!("../README.md")]

pub mod amp;
pub mod bench;
pub mod error;
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
pub use error::{Error, Result};
pub use gpu::{Access, Context};
pub use optim::{Adagrad, Adam, AdamW, OptimizerConfig, RMSprop, SGD};
pub use optimizer::checkpoint;
pub use optimizer::{
    BIND_GROUP_CACHE, BufferRange, LAYOUT_CACHE, MAX_STEP, Optimizer, ParamGroup, Snapshot, Tensor,
};
pub use state::TensorState;

/// The WGSL source of every shader module this crate compiles, each with its prologues in
/// front, labelled by file name and variant (`"shaders/adam.wgsl (vec4, read-only
/// gradients)"`). Used to check the shaders with naga and to translate them for other backends.
pub fn shader_sources() -> Vec<(String, String)> {
    gpu::Module::all()
        .into_iter()
        .map(|m| (m.label(), m.source()))
        .collect()
}
