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
pub use gpu::{Access, Context};
pub use optim::{Adagrad, Adam, AdamW, OptimizerConfig, RMSprop, SGD};
pub use optimizer::{BufferRange, MAX_STEPS_PER_SUBMIT, Optimizer, ParamGroup, Snapshot, Tensor};
pub use state::TensorState;

/// The WGSL source of every shader file in every [`Access`] mode, each with its prologues in
/// front, labelled by file name and mode (`"shaders/adam.wgsl (vec4)"`). Used to check the
/// shaders with naga and to translate them for other backends.
pub fn shader_sources() -> [(&'static str, &'static str); 8] {
    use optim::Shader;
    let shaders = [Shader::Sgd, Shader::Adam, Shader::Rmsprop, Shader::Adagrad];
    std::array::from_fn(|i| {
        let access = [Access::Scalar, Access::Vec4][i % 2];
        let shader = shaders[i / 2];
        (
            gpu::kernel_label(shader, access),
            gpu::kernel_source(shader, access),
        )
    })
}
