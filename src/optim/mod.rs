//! Optimizer configurations: PyTorch's class names, argument names, defaults and checks, and the
//! per-group values each kernel reads for a step.
//!
//! Each configuration type mirrors one `torch.optim` class. It deserializes from JSON with
//! PyTorch's argument names (missing arguments take PyTorch's defaults), and
//! [`OptimizerConfig`] is tagged by PyTorch's class name:
//!
//! ```
//! use wgpu_optim::OptimizerConfig;
//! let cfg: OptimizerConfig =
//!     serde_json::from_str(r#"{"type":"Adam","lr":0.001,"betas":[0.9,0.999],"amsgrad":true}"#)
//!         .unwrap();
//! cfg.validate().unwrap();
//! assert_eq!(cfg.state_names(), ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]);
//! ```

mod adagrad;
mod adam;
mod rmsprop;
mod sgd;

pub use adagrad::Adagrad;
pub(crate) use adagrad::AdagradHyper;
pub use adam::{Adam, AdamW};
pub(crate) use adam::{AdamHyper, AdamLike};
pub use rmsprop::RMSprop;
pub(crate) use rmsprop::RmspropHyper;
pub use sgd::SGD;
pub(crate) use sgd::SgdHyper;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The hyperparameters of one parameter group: which `torch.optim` class, and its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[allow(clippy::upper_case_acronyms)]
pub enum OptimizerConfig {
    /// `torch.optim.SGD`.
    SGD(SGD),
    /// `torch.optim.Adam`.
    Adam(Adam),
    /// `torch.optim.AdamW`.
    AdamW(AdamW),
    /// `torch.optim.RMSprop`.
    RMSprop(RMSprop),
    /// `torch.optim.Adagrad`.
    Adagrad(Adagrad),
}

impl OptimizerConfig {
    /// PyTorch's class name: `"SGD"`, `"Adam"`, `"AdamW"`, `"RMSprop"` or `"Adagrad"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::SGD(_) => "SGD",
            Self::Adam(_) => "Adam",
            Self::AdamW(_) => "AdamW",
            Self::RMSprop(_) => "RMSprop",
            Self::Adagrad(_) => "Adagrad",
        }
    }

    /// Runs PyTorch's constructor checks, with PyTorch's messages. NaN is rejected wherever a
    /// range is checked.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::SGD(c) => c.validate(),
            Self::Adam(c) => c.validate(),
            Self::AdamW(c) => c.validate(),
            Self::RMSprop(c) => c.validate(),
            Self::Adagrad(c) => c.validate(),
        }
    }

    /// The learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            Self::SGD(c) => c.lr,
            Self::Adam(c) => c.lr,
            Self::AdamW(c) => c.lr,
            Self::RMSprop(c) => c.lr,
            Self::Adagrad(c) => c.lr,
        }
    }

    /// Sets the learning rate (not validated here; [`Optimizer::set_lr`](crate::Optimizer::set_lr)
    /// validates).
    pub fn set_lr(&mut self, lr: f64) {
        match self {
            Self::SGD(c) => c.lr = lr,
            Self::Adam(c) => c.lr = lr,
            Self::AdamW(c) => c.lr = lr,
            Self::RMSprop(c) => c.lr = lr,
            Self::Adagrad(c) => c.lr = lr,
        }
    }

    /// This configuration with a scheduler's values for one step: the learning rate, and the
    /// momentum (SGD, RMSprop) or beta1 (Adam, AdamW) when the schedule cycles momentum.
    /// Validated; Adagrad has nothing to cycle, which is PyTorch's error too.
    pub fn scheduled(&self, lr: f64, momentum: Option<f64>) -> Result<Self> {
        let mut out = *self;
        out.set_lr(lr);
        if let Some(m) = momentum {
            match &mut out {
                Self::SGD(c) => c.momentum = m,
                Self::RMSprop(c) => c.momentum = m,
                Self::Adam(c) => c.betas.0 = m,
                Self::AdamW(c) => c.betas.0 = m,
                Self::Adagrad(_) => {
                    return Err(Error::InvalidHyperparameter(
                        "optimizer must support momentum or beta1 with `cycle_momentum` option enabled"
                            .into(),
                    ));
                }
            }
        }
        out.validate()?;
        Ok(out)
    }

    /// PyTorch's names of the per-tensor state buffers, in the order the kernel binds them. The
    /// step count is kept too, but is not a buffer and is not listed.
    pub fn state_names(&self) -> &'static [&'static str] {
        self.kernel().state_names()
    }

    /// Whether PyTorch keeps a `step` entry in this optimizer's per-parameter state (every
    /// optimizer here but SGD).
    pub fn has_step_state(&self) -> bool {
        !matches!(self, Self::SGD(_))
    }

    /// The value a state buffer holds before the first step.
    pub(crate) fn initial_state_value(&self, name: &str) -> f32 {
        match self {
            Self::Adagrad(c) if name == "sum" => c.initial_accumulator_value as f32,
            _ => 0.0,
        }
    }

    /// The kernel this configuration runs.
    pub(crate) fn kernel(&self) -> Kernel {
        match self {
            Self::SGD(c) => c.kernel(),
            Self::Adam(c) => c.kernel(),
            Self::AdamW(c) => c.kernel(),
            Self::RMSprop(c) => c.kernel(),
            Self::Adagrad(_) => Kernel::Adagrad,
        }
    }

    /// Writes the group's record for one step (`Hyper` in the shader) into `out`, which is
    /// [`Kernel::hyper_size`] bytes long. The kernels derive whatever depends on a tensor's step
    /// count on the GPU.
    pub(crate) fn write_hyper(&self, out: &mut [u8]) {
        fn put<T: bytemuck::Pod>(out: &mut [u8], value: T) {
            out.copy_from_slice(bytemuck::bytes_of(&value));
        }
        match self {
            Self::SGD(c) => put(out, c.hyper()),
            Self::Adam(c) => put(out, c.hyper()),
            Self::AdamW(c) => put(out, c.hyper()),
            Self::RMSprop(c) => put(out, c.hyper()),
            Self::Adagrad(c) => put(out, c.hyper()),
        }
    }
}

impl From<SGD> for OptimizerConfig {
    fn from(c: SGD) -> Self {
        Self::SGD(c)
    }
}
impl From<Adam> for OptimizerConfig {
    fn from(c: Adam) -> Self {
        Self::Adam(c)
    }
}
impl From<AdamW> for OptimizerConfig {
    fn from(c: AdamW) -> Self {
        Self::AdamW(c)
    }
}
impl From<RMSprop> for OptimizerConfig {
    fn from(c: RMSprop) -> Self {
        Self::RMSprop(c)
    }
}
impl From<Adagrad> for OptimizerConfig {
    fn from(c: Adagrad) -> Self {
        Self::Adagrad(c)
    }
}

/// One compiled kernel: a shader entry point with its binding layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    Sgd,
    SgdMomentum,
    Adam,
    AdamAmsgrad,
    Rmsprop,
    RmspropCentered,
    RmspropMomentum,
    RmspropCenteredMomentum,
    Adagrad,
}

/// The shader files, each compiled once per device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Shader {
    Sgd,
    Adam,
    Rmsprop,
    Adagrad,
}

impl Kernel {
    /// Every kernel, for tests and validation.
    pub(crate) const ALL: [Kernel; 9] = [
        Kernel::Sgd,
        Kernel::SgdMomentum,
        Kernel::Adam,
        Kernel::AdamAmsgrad,
        Kernel::Rmsprop,
        Kernel::RmspropCentered,
        Kernel::RmspropMomentum,
        Kernel::RmspropCenteredMomentum,
        Kernel::Adagrad,
    ];

    pub(crate) fn shader(self) -> Shader {
        match self {
            Kernel::Sgd | Kernel::SgdMomentum => Shader::Sgd,
            Kernel::Adam | Kernel::AdamAmsgrad => Shader::Adam,
            Kernel::Rmsprop
            | Kernel::RmspropCentered
            | Kernel::RmspropMomentum
            | Kernel::RmspropCenteredMomentum => Shader::Rmsprop,
            Kernel::Adagrad => Shader::Adagrad,
        }
    }

    pub(crate) fn entry_point(self) -> &'static str {
        match self {
            Kernel::Sgd => "sgd",
            Kernel::SgdMomentum => "sgd_momentum",
            Kernel::Adam => "adam",
            Kernel::AdamAmsgrad => "adam_amsgrad",
            Kernel::Rmsprop => "rmsprop",
            Kernel::RmspropCentered => "rmsprop_centered",
            Kernel::RmspropMomentum => "rmsprop_momentum",
            Kernel::RmspropCenteredMomentum => "rmsprop_centered_momentum",
            Kernel::Adagrad => "adagrad",
        }
    }

    /// State buffers in binding order (bindings 4, 5, ...).
    pub(crate) fn state_names(self) -> &'static [&'static str] {
        match self {
            Kernel::Sgd => &[],
            Kernel::SgdMomentum => &["momentum_buffer"],
            Kernel::Adam => &["exp_avg", "exp_avg_sq"],
            Kernel::AdamAmsgrad => &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
            Kernel::Rmsprop => &["square_avg"],
            Kernel::RmspropCentered => &["square_avg", "grad_avg"],
            Kernel::RmspropMomentum => &["square_avg", "momentum_buffer"],
            Kernel::RmspropCenteredMomentum => &["square_avg", "grad_avg", "momentum_buffer"],
            Kernel::Adagrad => &["sum"],
        }
    }

    /// Size in bytes of one parameter group's record (`Hyper` in the shader).
    pub(crate) fn hyper_size(self) -> u64 {
        self.shader().hyper_size()
    }
}

impl Shader {
    /// Every shader file.
    pub(crate) const ALL: [Shader; 4] =
        [Shader::Sgd, Shader::Adam, Shader::Rmsprop, Shader::Adagrad];

    /// The file name under shaders/.
    pub(crate) fn file(self) -> &'static str {
        match self {
            Shader::Sgd => "sgd.wgsl",
            Shader::Adam => "adam.wgsl",
            Shader::Rmsprop => "rmsprop.wgsl",
            Shader::Adagrad => "adagrad.wgsl",
        }
    }

    /// Size in bytes of one parameter group's record (`Hyper` in the shader).
    pub(crate) fn hyper_size(self) -> u64 {
        (match self {
            Shader::Sgd => size_of::<SgdHyper>(),
            Shader::Adam => size_of::<AdamHyper>(),
            Shader::Rmsprop => size_of::<RmspropHyper>(),
            Shader::Adagrad => size_of::<AdagradHyper>(),
        }) as u64
    }
}

/// Fails with PyTorch's message unless `ok`.
pub(crate) fn check(ok: bool, message: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidHyperparameter(message()))
    }
}

/// Formats `x` as Python's `repr(float)` does, so that messages read exactly as PyTorch's:
/// `1e-08`, `1e+16`, `-1.0`, `nan`, `inf`.
pub(crate) fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Shortest round-trip digits and the decimal exponent, e.g. "1.5e-8".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{x}");
        if s.contains('.') { s } else { format!("{s}.0") }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// `0.0 <= x`, false for NaN.
pub(crate) fn non_negative(x: f64) -> bool {
    x >= 0.0
}

/// -1 when maximizing, else 1.
pub(crate) fn grad_sign(maximize: bool) -> f32 {
    if maximize { -1.0 } else { 1.0 }
}

#[cfg(test)]
mod tests {
    use super::py_float;

    #[test]
    fn floats_print_as_python_repr() {
        for (x, want) in [
            (-1.0, "-1.0"),
            (0.0, "0.0"),
            (0.5, "0.5"),
            (1e-8, "1e-08"),
            (-1e-5, "-1e-05"),
            (0.0001, "0.0001"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
            (123456789012345.0, "123456789012345.0"),
            (2.5e300, "2.5e+300"),
            (f64::NAN, "nan"),
            (f64::NEG_INFINITY, "-inf"),
        ] {
            assert_eq!(py_float(x), want);
        }
    }
}
