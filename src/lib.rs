#![doc = include_str!("../README.md")]

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

pub use error::{Error, Result};
pub use gpu::Context;
pub use optim::{Adagrad, Adam, AdamW, OptimizerConfig, RMSprop, SGD};
pub use optimizer::{BufferRange, MAX_STEPS_PER_SUBMIT, Optimizer, ParamGroup, Snapshot, Tensor};
pub use state::TensorState;

/// The WGSL sources of every shader file, each with the shared prologue in front, by file
/// name. Used to check the shaders with naga and to translate them for other backends.
pub fn shader_sources() -> [(&'static str, &'static str); 4] {
    use optim::Shader;
    [Shader::Sgd, Shader::Adam, Shader::Rmsprop, Shader::Adagrad]
        .map(|s| (gpu::kernel_label(s), gpu::kernel_source(s)))
}
