//! Optimizer classes: PyTorch's class names, argument names, defaults and checks, the per-group
//! values each kernel reads for a step, and the registry that carries every class to the
//! optimizer, the CLI, `validate`, `bench`, `replay` and the tests.
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
//!
//! PyTorch's implementation switches (`foreach`, `fused`, `capturable`, `differentiable`) are
//! accepted where the class takes them. Every step here is one fused multi-tensor kernel whose
//! step count lives on the GPU, so `foreach`, `fused` and `capturable` change nothing;
//! `differentiable` must be false, since no autograd graph records the step.
//!
//! # Adding an optimizer
//! One Rust file here implements [`Class`] for its configuration (PyTorch's defaults and checks,
//! its state, its `Hyper` record, its CPU reference and the option combinations the tests
//! cover), one WGSL file under shaders/ states its update formula in the kernel template
//! (shaders/common.wgsl), and one line of the `registry!` below names it.

mod adadelta;
mod adafactor;
mod adagrad;
mod adam;
mod adamax;
mod adamw_schedulefree;
mod ademamix;
mod adopt;
mod asgd;
mod lamb;
mod lion;
mod muon;
mod nadam;
mod radam;
mod rmsprop;
mod rprop;
mod sgd;

pub use adadelta::Adadelta;
pub use adafactor::Adafactor;
pub use adagrad::Adagrad;
pub use adam::{Adam, AdamW};
pub use adamax::Adamax;
pub use adamw_schedulefree::AdamWScheduleFree;
pub use ademamix::AdEMAMix;
pub use adopt::ADOPT;
pub use asgd::ASGD;
pub use lamb::Lamb;
pub use lion::Lion;
pub use muon::{AdjustLr, Muon};
pub use nadam::NAdam;
pub use radam::RAdam;
pub use rmsprop::RMSprop;
pub use rprop::Rprop;
pub use sgd::SGD;

use crate::error::{Error, Result};
use crate::reference::Real;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// One optimizer shader: the WGSL file that states an update formula in the kernel template.
/// Shaders are told apart by file name.
#[derive(Debug)]
pub(crate) struct Shader {
    /// The file name under shaders/, e.g. `"adam.wgsl"`.
    pub(crate) file: &'static str,
    /// The file's WGSL.
    pub(crate) source: &'static str,
    /// The names of the shader's `override` booleans, in the order of [`Class::switches`]'s
    /// bits, e.g. `["AMSGRAD"]`.
    pub(crate) switches: &'static [&'static str],
    /// Bytes of one parameter group's record (`Hyper` in the shader).
    pub(crate) hyper_size: u64,
    /// Whether the update needs per-tensor sums before any element is written: the shader
    /// then defines `sum_terms` and `apply_sums` (shaders/sums.wgsl).
    pub(crate) sums: Sums,
    /// The bits of [`Shader::switches`] that mark the kernel of tensors whose state is
    /// factored (Adafactor's `FACTORED`, for tensors of two dimensions or more); 0 for a
    /// shader without factored state. Such a kernel keeps no state per element: its tensors'
    /// state blocks hold each tensor's factors instead (see [`Class::factored`]).
    pub(crate) factored: u32,
    /// The bits of [`Shader::switches`] that mark the second phase of a step whose tensors
    /// are orthogonalized between two phases (Muon's `APPLY`, see [`Class::orthogonalize`]);
    /// 0 for a shader of one phase.
    pub(crate) apply: u32,
}

/// The matrix products that orthogonalize a class's update between the two phases of its
/// step (Muon's Newton–Schulz iterations), and the factor of its learning rate by shape:
/// fixed when an optimizer is built.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Orthogonalize {
    /// Iterations.
    pub(crate) ns_steps: u32,
    /// `(a, b, c)`: each iteration is `X ← a·X + (b·G + c·G·G)·X` with `G = X·Xᵀ`.
    pub(crate) ns_coefficients: [f64; 3],
    /// The factor of the learning rate by the parameter's shape.
    pub(crate) adjust_lr_fn: Option<AdjustLr>,
}

impl Orthogonalize {
    /// PyTorch's `_adjust_lr` ratio for a parameter of `shape` `[A, B]`.
    pub(crate) fn lr_ratio(&self, shape: &[usize]) -> f64 {
        let (a, b) = (shape[0] as f64, shape[1] as f64);
        match self.adjust_lr_fn {
            None | Some(AdjustLr::Original) => (a / b).max(1.0).sqrt(),
            Some(AdjustLr::MatchRmsAdamw) => 0.2 * a.max(b).sqrt(),
            Some(AdjustLr::SpectralUnclamped) => (a / b).sqrt(),
        }
    }
}

/// A scaling of every gradient by their global norm inside the optimizer's step, after
/// unscaling and clipping (pytorch-optimizer's Lamb with `pre_norm`): each gradient is
/// multiplied by `min(max_grad_norm / (‖g‖ + eps), 1)`, with `‖g‖` the 2-norm of the gradients
/// of every tensor of the optimizer together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct PreNorm {
    /// The norm the gradients are scaled down to.
    pub(crate) max_grad_norm: f64,
    /// Added to the norm.
    pub(crate) eps: f64,
}

/// When a shader's update needs per-tensor sums (shaders/sums.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sums {
    /// Never: the shader defines no `sum_terms`.
    Never,
    /// Every step (Lamb's trust ratio).
    Always,
    /// Where one of these bits of [`Shader::switches`] is on (pytorch-optimizer's `cautious`
    /// and `stable_adamw`).
    Switches(u32),
    /// Every step, in two rounds where one of these bits of [`Shader::switches`] is on: sums
    /// that the second round's terms depend on come first (Lamb's `ADANORM`: each gradient's
    /// norm, then the trust ratio's norms). `SUMS_ROUND` tells the shader which round runs.
    AlwaysTwiceWith(u32),
}

impl PartialEq for Shader {
    fn eq(&self, other: &Self) -> bool {
        self.file == other.file
    }
}

impl Eq for Shader {}

impl std::hash::Hash for Shader {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.file.hash(state);
    }
}

/// One compiled step kernel: a shader with its switches set and its number of state buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Kernel {
    pub(crate) shader: &'static Shader,
    /// Bits of [`Shader::switches`] that are on.
    pub(crate) switches: u32,
    /// State buffers the kernel loads and stores (`STATES` in shaders/common.wgsl).
    pub(crate) states: u32,
}

impl Kernel {
    /// The kernel's name: the shader's file stem and the switches that are on, lower case,
    /// e.g. `"adam_amsgrad"` or `"rmsprop_centered_momentum"`.
    pub(crate) fn name(&self) -> String {
        let mut name = self.shader.file.trim_end_matches(".wgsl").to_string();
        for (bit, switch) in self.shader.switches.iter().enumerate() {
            if self.switches & (1 << bit) != 0 {
                name.push('_');
                name.push_str(&switch.to_lowercase());
            }
        }
        name
    }

    /// Whether the kernel's update needs per-tensor sums before the step.
    pub(crate) fn sums(&self) -> bool {
        self.sums_rounds() > 0
    }

    /// How many rounds of per-tensor sums run before the step, one after the other (0, 1,
    /// or 2: see [`Sums::AlwaysTwiceWith`]).
    pub(crate) fn sums_rounds(&self) -> u32 {
        match self.shader.sums {
            Sums::Never => 0,
            Sums::Always => 1,
            Sums::Switches(bits) => u32::from(self.switches & bits != 0),
            Sums::AlwaysTwiceWith(bits) => 1 + u32::from(self.switches & bits != 0),
        }
    }

    /// Buffers of state per state block of the kernel: its state buffers, or for a kernel
    /// of factored state, the one buffer of factor regions.
    pub(crate) fn state_buffers(&self) -> u32 {
        if self.factored() { 1 } else { self.states }
    }

    /// Whether the kernel is for tensors whose state is factored ([`Shader::factored`]).
    pub(crate) fn factored(&self) -> bool {
        self.switches & self.shader.factored != 0
    }

    /// Whether the kernel's step runs in two phases with matrix products between them
    /// ([`Shader::apply`]); this is its first.
    pub(crate) fn phased(&self) -> bool {
        self.shader.apply != 0 && self.switches & self.shader.apply == 0
    }

    /// The second phase of a kernel that [`phased`](Self::phased) says has two.
    pub(crate) fn apply_phase(&self) -> Kernel {
        Kernel {
            switches: self.switches | self.shader.apply,
            ..*self
        }
    }

    /// The values of the shader's pipeline-overridable constants: its switches, its state
    /// buffers, and whether its master copies lie apart from its state (`MASTER_APART` in
    /// shaders/layout.wgsl: factored state).
    pub(crate) fn constants(&self) -> Vec<(&'static str, f64)> {
        let mut out = vec![
            ("STATES", f64::from(self.states)),
            ("MASTER_APART", f64::from(u8::from(self.factored()))),
        ];
        for (bit, switch) in self.shader.switches.iter().enumerate() {
            out.push((switch, f64::from(self.switches >> bit & 1)));
        }
        out
    }
}

/// What the crate needs of one optimizer class, declared in the class's own file.
pub(crate) trait Class:
    Copy + Default + PartialEq + std::fmt::Debug + Serialize + DeserializeOwned + 'static
{
    /// PyTorch's class name.
    const NAME: &'static str;
    /// The shader that states the update formula.
    const SHADER: &'static Shader;
    /// Which of PyTorch's implementation switches the class's constructor takes.
    const TORCH_SWITCHES: &'static [TorchSwitch];
    /// Whether PyTorch keeps a `step` entry in the per-parameter state.
    const STEP_STATE: bool = true;
    /// State buffers the kernel keeps beside [`state_names`](Self::state_names)'s, for its own
    /// use within a step (Muon's Newton–Schulz iterates): not PyTorch state, so neither read,
    /// loaded nor checkpointed.
    const SCRATCH_STATES: u32 = 0;
    /// One parameter group's record for one step (`Hyper` in the shader).
    type Hyper: bytemuck::Pod;

    /// PyTorch's constructor checks, with PyTorch's messages.
    fn validate(&self) -> Result<()>;
    /// The learning rate.
    fn lr_mut(&mut self) -> &mut f64;
    /// The value a scheduler's `cycle_momentum` cycles (momentum, or beta1), if the class has
    /// one.
    fn momentum_mut(&mut self) -> Option<&mut f64> {
        None
    }
    /// Bits of the shader's switches this configuration turns on.
    fn switches(&self) -> u32 {
        0
    }
    /// PyTorch's names of the state buffers, in the order the kernel binds them.
    fn state_names(&self) -> &'static [&'static str];
    /// Whether a tensor of `shape` keeps factored state (Adafactor's row and column factors
    /// of tensors of two dimensions or more) rather than state buffers of the parameter's
    /// size. Its kernel then has the shader's [`Shader::factored`] switches on and no state
    /// per element, and its state is [`factored_names`](Self::factored_names).
    fn factored(&self, shape: &[usize]) -> bool {
        let _ = shape;
        false
    }
    /// Fails, with PyTorch's message, for a tensor of `shape` the class does not take
    /// (Muon's of other than two dimensions).
    fn check_shape(&self, shape: &[usize]) -> Result<()> {
        let _ = shape;
        Ok(())
    }
    /// For a class whose update is orthogonalized by matrix products between the two phases
    /// of its step (Muon), their configuration.
    fn orthogonalize(&self) -> Option<Orthogonalize> {
        None
    }
    /// For a class that scales every gradient by their global norm first (Lamb's
    /// `pre_norm`), how.
    fn pre_norm(&self) -> Option<PreNorm> {
        None
    }
    /// PyTorch's names of a factored tensor's state, in the order its factor region holds
    /// them.
    fn factored_names(&self) -> &'static [&'static str] {
        &[]
    }
    /// The value a state buffer holds before the first step.
    fn initial_state(&self, _name: &str) -> f64 {
        0.0
    }
    /// PyTorch's names of the per-tensor scalar (0-d) state, at most four (NAdam's
    /// `mu_product`, ASGD's `eta` and `mu`); the shader's `coeffs` advances them on the GPU.
    fn scalar_names(&self) -> &'static [&'static str] {
        &[]
    }
    /// The value a scalar state holds before the first step.
    fn initial_scalar(&self, _name: &str) -> f64 {
        0.0
    }
    /// The group's record for one step.
    fn hyper(&self) -> Self::Hyper;
    /// The group's record for one step, given also the group as the optimizer was built
    /// (`built`): only Lion's decoupled weight decay reads it.
    fn hyper_from(&self, built: &Self) -> Self::Hyper {
        let _ = built;
        self.hyper()
    }
    /// The group's record for switching the parameters between train and eval mode, for a
    /// class that has the two (AdamWScheduleFree): `to_train` asks for train mode.
    fn mode_hyper(&self, to_train: bool) -> Option<Self::Hyper> {
        let _ = to_train;
        None
    }
    /// One step on the CPU, in `F`: step number `t` (1 for the first), the state buffers in
    /// [`state_names`](Self::state_names) order and the scalar state in
    /// [`scalar_names`](Self::scalar_names) order. Per-step scalars are computed in f64 and
    /// rounded once, as the host rounds what it writes for the kernel; elementwise arithmetic
    /// runs in `F`, in the order of PyTorch's single-tensor implementation.
    fn reference<F: Real>(
        &self,
        t: u64,
        shape: &[usize],
        param: &mut [F],
        grad: &[F],
        state: &mut [Vec<F>],
        scalars: &mut [F],
    );
    /// The option combinations `validate` and the tests run: every kernel of the class, with
    /// and without weight decay and `maximize`.
    fn cases() -> Vec<Self>;
    /// The benchmark cases, one per kernel, named as `wgpu-optim bench` lists them.
    fn bench_cases() -> Vec<(&'static str, Self)>;
    /// Benchmark cases that step a matrix rather than a vector, for a class whose kernel
    /// depends on the shape (Adafactor's factored kernel).
    fn bench_matrix_cases() -> Vec<(&'static str, Self)> {
        Vec::new()
    }
}

/// One of PyTorch's implementation switches a constructor may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TorchSwitch {
    /// `foreach`: `None` or a bool. Changes nothing here.
    Foreach,
    /// `fused`: `None` or a bool. Changes nothing here.
    Fused,
    /// `capturable`: a bool. Changes nothing here (the step count lives on the GPU).
    Capturable,
    /// `differentiable`: must be false.
    Differentiable,
}

impl TorchSwitch {
    fn name(self) -> &'static str {
        match self {
            Self::Foreach => "foreach",
            Self::Fused => "fused",
            Self::Capturable => "capturable",
            Self::Differentiable => "differentiable",
        }
    }

    /// Checks the switch's value as given in JSON.
    fn check(self, value: &Value) -> std::result::Result<(), String> {
        let name = self.name();
        match (self, value) {
            (Self::Differentiable, Value::Bool(true)) => Err(
                "differentiable=True is not supported: no autograd graph records a wgpu-optim step"
                    .into(),
            ),
            (_, Value::Bool(_)) => Ok(()),
            (Self::Foreach | Self::Fused, Value::Null) => Ok(()),
            _ => Err(format!("{name} must be a bool, not {value}")),
        }
    }
}

/// The switches of the classes PyTorch has no fused implementation of.
pub(crate) const UNFUSED: &[TorchSwitch] = &[
    TorchSwitch::Foreach,
    TorchSwitch::Capturable,
    TorchSwitch::Differentiable,
];

/// The switch pytorch-optimizer's classes take: `foreach`.
pub(crate) const FOREACH: &[TorchSwitch] = &[TorchSwitch::Foreach];

/// The switches of the classes whose step count PyTorch keeps on the host (SGD, Adagrad).
pub(crate) const NOT_CAPTURABLE: &[TorchSwitch] = &[
    TorchSwitch::Foreach,
    TorchSwitch::Differentiable,
    TorchSwitch::Fused,
];

/// The object-safe face of [`Class`], through which [`OptimizerConfig`] reaches its class.
pub(crate) trait DynClass {
    fn name(&self) -> &'static str;
    fn validate(&self) -> Result<()>;
    fn lr(&self) -> f64;
    fn set_lr(&mut self, lr: f64);
    fn momentum_mut(&mut self) -> Option<&mut f64>;
    fn kernel(&self) -> Kernel;
    fn state_names(&self) -> &'static [&'static str];
    fn factored(&self, shape: &[usize]) -> bool;
    fn factored_names(&self) -> &'static [&'static str];
    fn check_shape(&self, shape: &[usize]) -> Result<()>;
    fn orthogonalize(&self) -> Option<Orthogonalize>;
    fn pre_norm(&self) -> Option<PreNorm>;
    fn initial_state(&self, name: &str) -> f64;
    fn scalar_names(&self) -> &'static [&'static str];
    fn initial_scalar(&self, name: &str) -> f64;
    fn step_state(&self) -> bool;
    fn has_modes(&self) -> bool;
    fn options(&self) -> String;
    #[allow(clippy::too_many_arguments)]
    fn reference_f64(
        &self,
        t: u64,
        shape: &[usize],
        p: &mut [f64],
        g: &[f64],
        s: &mut [Vec<f64>],
        x: &mut [f64],
    );
    #[allow(clippy::too_many_arguments)]
    fn reference_f32(
        &self,
        t: u64,
        shape: &[usize],
        p: &mut [f32],
        g: &[f32],
        s: &mut [Vec<f32>],
        x: &mut [f32],
    );
}

impl<C: Class> DynClass for C {
    fn name(&self) -> &'static str {
        C::NAME
    }
    fn validate(&self) -> Result<()> {
        Class::validate(self)
    }
    fn lr(&self) -> f64 {
        *self.clone().lr_mut()
    }
    fn set_lr(&mut self, lr: f64) {
        *self.lr_mut() = lr;
    }
    fn momentum_mut(&mut self) -> Option<&mut f64> {
        Class::momentum_mut(self)
    }
    fn kernel(&self) -> Kernel {
        Kernel {
            shader: C::SHADER,
            switches: self.switches(),
            states: Class::state_names(self).len() as u32 + C::SCRATCH_STATES,
        }
    }
    fn state_names(&self) -> &'static [&'static str] {
        Class::state_names(self)
    }
    fn factored(&self, shape: &[usize]) -> bool {
        Class::factored(self, shape)
    }
    fn factored_names(&self) -> &'static [&'static str] {
        Class::factored_names(self)
    }
    fn check_shape(&self, shape: &[usize]) -> Result<()> {
        Class::check_shape(self, shape)
    }
    fn orthogonalize(&self) -> Option<Orthogonalize> {
        Class::orthogonalize(self)
    }
    fn pre_norm(&self) -> Option<PreNorm> {
        Class::pre_norm(self)
    }
    fn initial_state(&self, name: &str) -> f64 {
        Class::initial_state(self, name)
    }
    fn scalar_names(&self) -> &'static [&'static str] {
        Class::scalar_names(self)
    }
    fn initial_scalar(&self, name: &str) -> f64 {
        Class::initial_scalar(self, name)
    }
    fn step_state(&self) -> bool {
        C::STEP_STATE
    }
    fn has_modes(&self) -> bool {
        self.mode_hyper(true).is_some()
    }
    fn options(&self) -> String {
        options(self, &C::default())
    }
    fn reference_f64(
        &self,
        t: u64,
        shape: &[usize],
        p: &mut [f64],
        g: &[f64],
        s: &mut [Vec<f64>],
        x: &mut [f64],
    ) {
        self.reference(t, shape, p, g, s, x);
    }
    fn reference_f32(
        &self,
        t: u64,
        shape: &[usize],
        p: &mut [f32],
        g: &[f32],
        s: &mut [Vec<f32>],
        x: &mut [f32],
    ) {
        self.reference(t, shape, p, g, s, x);
    }
}

/// The arguments of `config` that differ from `default`, as `name=value` (flags that are on by
/// their name alone, pairs as `(a,b)`), or `"defaults"`.
fn options<C: Serialize + DeserializeOwned>(config: &C, default: &C) -> String {
    let (Ok(Value::Object(ours)), Ok(Value::Object(theirs))) =
        (serde_json::to_value(config), serde_json::to_value(default))
    else {
        return String::new();
    };
    let show = |v: &Value| match v {
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(|i| i.to_string()).collect();
            format!("({})", items.join(","))
        }
        Value::Number(n) => n.as_f64().map_or(n.to_string(), |x| x.to_string()),
        other => other.to_string(),
    };
    let parts: Vec<String> = field_names::<C>()
        .iter()
        .filter_map(|k| Some((*k, ours.get(*k)?)))
        .filter(|(k, v)| theirs.get(*k) != Some(v))
        .map(|(k, v)| match v {
            Value::Bool(true) => k.to_string(),
            _ => format!("{k}={}", show(v)),
        })
        .collect();
    if parts.is_empty() {
        "defaults".into()
    } else {
        parts.join(" ")
    }
}

/// The field names of a struct that derives `Deserialize`, in declaration order: what its
/// derived impl hands `deserialize_struct`, caught by a deserializer that reads nothing else.
fn field_names<C: DeserializeOwned>() -> &'static [&'static str] {
    struct Catch(&'static [&'static str]);
    #[derive(Debug)]
    struct Caught;
    impl std::fmt::Display for Caught {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field names caught")
        }
    }
    impl std::error::Error for Caught {}
    impl serde::de::Error for Caught {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Caught
        }
    }
    impl<'de> Deserializer<'de> for &mut Catch {
        type Error = Caught;
        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _: V,
        ) -> std::result::Result<V::Value, Caught> {
            Err(Caught)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> std::result::Result<V::Value, Caught> {
            self.0 = fields;
            Err(Caught)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut catch = Catch(&[]);
    let _ = C::deserialize(&mut catch);
    catch.0
}

/// Parses a class's configuration from its JSON object (without `"type"`), after checking and
/// removing the implementation switches the class takes.
fn parse_class<C: Class>(mut object: Map<String, Value>) -> std::result::Result<C, String> {
    let mut on = Vec::new();
    for switch in C::TORCH_SWITCHES {
        if let Some(value) = object.remove(switch.name()) {
            switch.check(&value)?;
            if value == Value::Bool(true) {
                on.push(*switch);
            }
        }
    }
    if on.contains(&TorchSwitch::Fused) && on.contains(&TorchSwitch::Foreach) {
        return Err("`fused` and `foreach` cannot be `True` together.".into());
    }
    serde_json::from_value(Value::Object(object)).map_err(|e| e.to_string())
}

/// Declares [`OptimizerConfig`] over every class: one line per class.
macro_rules! registry {
    ($($(#[$doc:meta])* $variant:ident($ty:ty),)*) => {
        /// The hyperparameters of one parameter group: which `torch.optim` class (or which
        /// class of another package, named as that package names it), and its arguments.
        #[derive(Clone, Copy, Debug, PartialEq, Serialize)]
        #[serde(tag = "type")]
        #[allow(clippy::upper_case_acronyms)]
        pub enum OptimizerConfig {
            $($(#[$doc])* $variant($ty),)*
        }

        $(impl From<$ty> for OptimizerConfig {
            fn from(c: $ty) -> Self {
                Self::$variant(c)
            }
        })*

        impl OptimizerConfig {
            /// Every class name, in the registry's order.
            pub const CLASSES: &'static [&'static str] = &[$(<$ty as Class>::NAME,)*];

            /// The class behind this configuration.
            pub(crate) fn class(&self) -> &dyn DynClass {
                match self {
                    $(Self::$variant(c) => c,)*
                }
            }

            fn class_mut(&mut self) -> &mut dyn DynClass {
                match self {
                    $(Self::$variant(c) => c,)*
                }
            }

            /// Parses the configuration of the class named `name`.
            fn parse(name: &str, object: Map<String, Value>) -> std::result::Result<Self, String> {
                $(if name == <$ty as Class>::NAME {
                    return parse_class::<$ty>(object).map(Self::from);
                })*
                let expected: Vec<String> =
                    Self::CLASSES.iter().map(|c| format!("`{c}`")).collect();
                Err(format!(
                    "unknown variant `{name}`, expected one of {}",
                    expected.join(", ")
                ))
            }

            /// Every class's option combinations ([`Class::cases`]), in the registry's order.
            pub(crate) fn all_cases() -> Vec<Self> {
                let mut out = Vec::new();
                $(out.extend(<$ty as Class>::cases().into_iter().map(Self::from));)*
                out
            }

            /// Every class's benchmark cases ([`Class::bench_cases`], then
            /// [`Class::bench_matrix_cases`]), each with whether it steps a matrix.
            pub(crate) fn all_bench_cases() -> Vec<(&'static str, Self, bool)> {
                let mut out = Vec::new();
                $(
                    out.extend(
                        <$ty as Class>::bench_cases()
                            .into_iter()
                            .map(|(n, c)| (n, Self::from(c), false)),
                    );
                    out.extend(
                        <$ty as Class>::bench_matrix_cases()
                            .into_iter()
                            .map(|(n, c)| (n, Self::from(c), true)),
                    );
                )*
                out
            }

            /// Writes the group's record for one step (`Hyper` in the shader) into `out`, which
            /// is [`Shader::hyper_size`] bytes long, given also the group as the optimizer was
            /// built (of the same class; another is taken as this one). The kernels derive
            /// whatever depends on a tensor's step count on the GPU.
            pub(crate) fn write_hyper(&self, built: &Self, out: &mut [u8]) {
                match (self, built) {
                    $((Self::$variant(c), Self::$variant(b)) => {
                        out.copy_from_slice(bytemuck::bytes_of(&c.hyper_from(b)));
                    })*
                    $((Self::$variant(c), _) => {
                        out.copy_from_slice(bytemuck::bytes_of(&c.hyper()));
                    })*
                }
            }

            /// Writes the group's record for a switch into train mode (`to_train`) or eval
            /// mode into `out`, as [`write_hyper`](Self::write_hyper) does; false, writing
            /// nothing, for a class without the two modes.
            pub(crate) fn write_mode_hyper(&self, to_train: bool, out: &mut [u8]) -> bool {
                match self {
                    $(Self::$variant(c) => match c.mode_hyper(to_train) {
                        Some(h) => {
                            out.copy_from_slice(bytemuck::bytes_of(&h));
                            true
                        }
                        None => false,
                    },)*
                }
            }

            /// Every shader, once each.
            pub(crate) fn shaders() -> Vec<&'static Shader> {
                let mut out: Vec<&'static Shader> = Vec::new();
                $(if !out.iter().any(|s| s.file == <$ty as Class>::SHADER.file) {
                    out.push(<$ty as Class>::SHADER);
                })*
                out
            }
        }
    };
}

registry! {
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
    /// `torch.optim.Adamax`.
    Adamax(Adamax),
    /// `torch.optim.RAdam`.
    RAdam(RAdam),
    /// `torch.optim.Adadelta`.
    Adadelta(Adadelta),
    /// `torch.optim.Rprop`.
    Rprop(Rprop),
    /// `torch.optim.NAdam`.
    NAdam(NAdam),
    /// `torch.optim.ASGD`.
    ASGD(ASGD),
    /// `torch.optim.Adafactor`.
    Adafactor(Adafactor),
    /// `Lion` of the lion-pytorch package.
    Lion(Lion),
    /// `ADOPT` of the pytorch-optimizer package.
    ADOPT(ADOPT),
    /// `AdEMAMix` of the pytorch-optimizer package.
    AdEMAMix(AdEMAMix),
    /// `AdamWScheduleFree` of the schedulefree package.
    AdamWScheduleFree(AdamWScheduleFree),
    /// `Lamb` of the pytorch-optimizer package.
    Lamb(Lamb),
    /// `torch.optim.Muon`.
    Muon(Muon),
}

impl<'de> Deserialize<'de> for OptimizerConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut object = Map::<String, Value>::deserialize(d)?;
        let name = match object.remove("type") {
            Some(Value::String(name)) => name,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "\"type\" must be a class name, not {other}"
                )));
            }
            None => return Err(D::Error::missing_field("type")),
        };
        Self::parse(&name, object).map_err(D::Error::custom)
    }
}

impl OptimizerConfig {
    /// PyTorch's class name, e.g. `"SGD"` or `"AdamW"`.
    pub fn type_name(&self) -> &'static str {
        self.class().name()
    }

    /// Runs PyTorch's constructor checks, with PyTorch's messages. NaN is rejected wherever a
    /// range is checked, and so is a learning rate beyond float32's range, which PyTorch takes
    /// into the float32 parameters' update and fails on at the step ("value cannot be converted
    /// to type float without overflow").
    pub fn validate(&self) -> Result<()> {
        self.class().validate()?;
        check_fits_f32("learning rate", self.lr())
    }

    /// The learning rate.
    pub fn lr(&self) -> f64 {
        self.class().lr()
    }

    /// Sets the learning rate (not validated here; [`Optimizer::set_lr`](crate::Optimizer::set_lr)
    /// validates).
    pub fn set_lr(&mut self, lr: f64) {
        self.class_mut().set_lr(lr);
    }

    /// This configuration with a scheduler's values for one step: the learning rate, and the
    /// momentum (SGD, RMSprop) or beta1 (Adam, AdamW) when the schedule cycles momentum.
    /// Validated; a class with nothing to cycle gets PyTorch's error.
    pub fn scheduled(&self, lr: f64, momentum: Option<f64>) -> Result<Self> {
        let mut out = *self;
        out.set_lr(lr);
        if let Some(m) = momentum {
            let Some(slot) = out.class_mut().momentum_mut() else {
                return Err(Error::InvalidHyperparameter(
                    "optimizer must support momentum or beta1 with `cycle_momentum` option enabled"
                        .into(),
                ));
            };
            *slot = m;
        }
        out.validate()?;
        Ok(out)
    }

    /// PyTorch's names of the per-tensor state buffers, in the order the kernel binds them. The
    /// step count is kept too, but is not a buffer and is not listed.
    pub fn state_names(&self) -> &'static [&'static str] {
        self.class().state_names()
    }

    /// Whether the class switches its parameters between a train mode and an eval mode
    /// (AdamWScheduleFree; see [`Optimizer::train`](crate::Optimizer::train)).
    pub fn has_modes(&self) -> bool {
        self.class().has_modes()
    }

    /// Whether PyTorch keeps a `step` entry in this optimizer's per-parameter state (every
    /// optimizer here but SGD).
    pub fn has_step_state(&self) -> bool {
        self.class().step_state()
    }

    /// The value a state buffer holds before the first step (zero, or Adagrad's
    /// `initial_accumulator_value`).
    pub fn initial_state_value(&self, name: &str) -> f64 {
        self.class().initial_state(name)
    }

    /// PyTorch's names of the per-tensor scalar (0-d) state that is not the step count: NAdam's
    /// `mu_product`, ASGD's `eta` and `mu`; none for the others. It lives on the GPU with the
    /// step count, in f32, as PyTorch keeps it.
    pub fn scalar_names(&self) -> &'static [&'static str] {
        self.class().scalar_names()
    }

    /// The value a scalar state holds before the first step.
    pub fn initial_scalar_value(&self, name: &str) -> f64 {
        self.class().initial_scalar(name)
    }

    /// The arguments that differ from PyTorch's defaults, as `name=value` (flags that are on
    /// by their name alone, pairs as `(a,b)`), or `"defaults"`.
    pub fn options(&self) -> String {
        self.class().options()
    }

    /// The name of the kernel that runs this configuration: the shader's and the switches
    /// that are on, e.g. `"adam_amsgrad"` (AdamW runs Adam's kernels).
    pub fn kernel_name(&self) -> String {
        self.kernel().name()
    }

    /// The kernel this configuration runs for tensors whose state is not factored.
    pub(crate) fn kernel(&self) -> Kernel {
        self.class().kernel()
    }

    /// The kernel this configuration runs for a tensor of `shape`.
    pub(crate) fn kernel_for(&self, shape: &[usize]) -> Kernel {
        let k = self.kernel();
        if self.class().factored(shape) {
            Kernel {
                switches: k.switches | k.shader.factored,
                states: 0,
                ..k
            }
        } else {
            k
        }
    }

    /// Every kernel this configuration runs: for tensors whose state is not factored, and,
    /// for a class with factored state, for those whose state is.
    pub(crate) fn kernels(&self) -> Vec<Kernel> {
        let mut out = vec![self.kernel()];
        if self.class().factored(&[1, 1]) {
            out.push(self.kernel_for(&[1, 1]));
        }
        if self.kernel().phased() {
            out.push(self.kernel().apply_phase());
        }
        out
    }

    /// Fails, with PyTorch's message, for a tensor of `shape` this class does not take (Muon
    /// takes two dimensions only).
    pub fn check_shape(&self, shape: &[usize]) -> Result<()> {
        self.class().check_shape(shape)
    }

    /// For Muon, the configuration of its Newton–Schulz iterations.
    pub(crate) fn orthogonalize(&self) -> Option<Orthogonalize> {
        self.class().orthogonalize()
    }

    /// For Lamb with `pre_norm` (and a `max_grad_norm` other than 0), the scaling of every
    /// gradient by their global norm.
    pub(crate) fn pre_norm(&self) -> Option<PreNorm> {
        self.class().pre_norm()
    }

    /// Whether a tensor of `shape` keeps factored state: Adafactor's tensors of two
    /// dimensions or more keep a row factor and a column factor of their second moments, not
    /// a state buffer of their own size.
    pub fn is_factored(&self, shape: &[usize]) -> bool {
        self.class().factored(shape)
    }

    /// PyTorch's names of the state kept for a tensor of `shape`: [`state_names`](Self::state_names),
    /// or for a tensor whose state is factored ([`is_factored`](Self::is_factored)) its row
    /// and column factors (Adafactor's `row_var` and `col_var`).
    pub fn state_names_for(&self, shape: &[usize]) -> &'static [&'static str] {
        if self.class().factored(shape) {
            self.class().factored_names()
        } else {
            self.state_names()
        }
    }

    /// The shape of state `name` of a tensor of `shape`, as PyTorch keeps it: the tensor's
    /// shape, or for a factored tensor's row factor that shape with its last dimension 1, and
    /// for its column factor with its second-to-last dimension 1.
    pub fn state_shape(&self, name: &str, shape: &[usize]) -> Vec<usize> {
        let mut out = shape.to_vec();
        if self.class().factored(shape) {
            let names = self.class().factored_names();
            let dims = out.len();
            if names.first() == Some(&name) {
                out[dims - 1] = 1;
            } else if names.get(1) == Some(&name) {
                out[dims - 2] = 1;
            }
        }
        out
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

/// PyTorch's `if not 0.0 <= value: raise ValueError(f"Invalid {what}: {value}")`, false for
/// NaN: `what` is e.g. `"learning rate"`, `"epsilon value"` or `"weight_decay value"`.
pub(crate) fn check_non_negative(what: &str, value: f64) -> Result<()> {
    check(non_negative(value), || {
        format!("Invalid {what}: {}", py_float(value))
    })
}

/// Fails, naming `what`, where `x` is finite but beyond float32's range: PyTorch converts such
/// a value into the float32 parameters' dtype at the step and fails there (infinity converts).
pub(crate) fn check_fits_f32(what: &str, x: f64) -> Result<()> {
    check(!(x.is_finite() && x.abs() > f64::from(f32::MAX)), || {
        format!(
            "Invalid {what}: {} does not fit in float32 (PyTorch fails at the step: value cannot be converted to type float without overflow)",
            py_float(x)
        )
    })
}

/// `0.0 <= x`, false for NaN.
pub(crate) fn non_negative(x: f64) -> bool {
    x >= 0.0
}

/// The checks of `lr`, `eps` and `weight_decay` that most classes make, in PyTorch's order
/// for Adam: learning rate, epsilon, then (after the class's own) weight decay.
pub(crate) fn check_lr_eps(lr: f64, eps: f64) -> Result<()> {
    check_non_negative("learning rate", lr)?;
    check_non_negative("epsilon value", eps)
}

/// The checks of Adam and its relatives, in their order: learning rate, epsilon, betas and
/// weight decay.
pub(crate) fn check_adam_args(
    lr: f64,
    eps: f64,
    betas: (f64, f64),
    weight_decay: f64,
) -> Result<()> {
    check_lr_eps(lr, eps)?;
    check_betas(betas)?;
    check_non_negative("weight_decay value", weight_decay)
}

/// PyTorch's check of a `betas` pair: each in [0, 1).
pub(crate) fn check_betas((b1, b2): (f64, f64)) -> Result<()> {
    for (i, b) in [b1, b2].into_iter().enumerate() {
        check((0.0..1.0).contains(&b), || {
            format!("Invalid beta parameter at index {i}: {}", py_float(b))
        })?;
    }
    Ok(())
}

/// pytorch-optimizer's `validate_learning_rate`: a negative learning rate fails (NaN too,
/// here), with the package's message.
pub(crate) fn check_po_lr(lr: f64) -> Result<()> {
    check(non_negative(lr), || {
        format!("learning rate must be positive. ({} > 0)", py_float(lr))
    })
}

/// pytorch-optimizer's `validate_non_negative(x, name)` (NaN fails too, here).
pub(crate) fn check_po_non_negative(name: &str, x: f64) -> Result<()> {
    check(non_negative(x), || format!("{name} must be non-negative"))
}

/// pytorch-optimizer's `validate_betas`: beta1 and beta2 in [0, 1), and a third beta, where
/// given, in [0, 1].
pub(crate) fn check_po_betas(betas: &[f64]) -> Result<()> {
    for (i, &b) in betas.iter().enumerate() {
        let (ok, range) = if i < 2 {
            ((0.0..1.0).contains(&b), "[0.0, 1.0)")
        } else {
            ((0.0..=1.0).contains(&b), "[0.0, 1.0]")
        };
        check(ok, || format!("beta{} must be in the range {range}", i + 1))?;
    }
    Ok(())
}

/// A group's weight decay as PyTorch applies it: added to the gradient (L2), or, with
/// `decoupled_weight_decay`, the parameter decayed by `1 − lr·λ` before the update.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WeightDecay {
    /// Added to the gradient, times the parameter (0 when decoupled).
    l2: f64,
    /// The parameter's factor (1 unless decoupled).
    decay: f64,
}

impl WeightDecay {
    /// `weight_decay` at learning rate `lr`, decoupled or not.
    pub(crate) fn new(lr: f64, weight_decay: f64, decoupled: bool) -> Self {
        if decoupled {
            Self {
                l2: 0.0,
                decay: 1.0 - lr * weight_decay,
            }
        } else {
            Self {
                l2: weight_decay,
                decay: 1.0,
            }
        }
    }

    /// pytorch-optimizer's `apply_weight_decay`: added to the gradient, or, with
    /// `weight_decouple`, the parameter decayed by `1 − lr·λ` (`1 − λ` with `fixed_decay`).
    pub(crate) fn pytorch_optimizer(
        lr: f64,
        weight_decay: f64,
        weight_decouple: bool,
        fixed_decay: bool,
    ) -> Self {
        let lr = if fixed_decay { 1.0 } else { lr };
        Self::new(lr, weight_decay, weight_decouple)
    }

    /// L2 weight decay only, as most classes have.
    pub(crate) fn l2(weight_decay: f64) -> Self {
        Self::new(0.0, weight_decay, false)
    }

    /// The group record's `(weight_decay, decay)`: what the shaders' `decayed_grad` and
    /// `l2_grad` take.
    pub(crate) fn hyper(self) -> (f32, f32) {
        (self.l2 as f32, self.decay as f32)
    }

    /// One element's gradient as the CPU reference takes it: `sign·g` (−1 when maximizing),
    /// plus the L2 term where it is not 0, after decaying `p` where the decay is not 1.
    pub(crate) fn grad<F: Real>(self, sign: F, p: &mut F, g: F) -> F {
        if self.decay != 1.0 {
            *p *= F::of(self.decay);
        }
        let g = sign * g;
        if self.l2 != 0.0 {
            g + F::of(self.l2) * *p
        } else {
            g
        }
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

/// pytorch-optimizer's `apply_cautious` factor for a tensor: `numel / (count + 1)`, with
/// `count` the elements where `update · grad > 0`, in `F` as torch evaluates an int over a
/// tensor (the reciprocal, times numel).
pub(crate) fn cautious_factor<F: Real>(update: &[F], grad: &[F]) -> F {
    let zero = F::of(0.0);
    let count = update.iter().zip(grad).fold(
        zero,
        |n, (&u, &g)| if u * g > zero { n + F::of(1.0) } else { n },
    );
    F::of(1.0) / (count + F::of(1.0)) * F::of(update.len() as f64)
}

/// pytorch-optimizer's `get_stable_adamw_rms` for a tensor: `max(1, √mean(g² / max(v, 1e-16)))`.
pub(crate) fn stable_adamw_rms<F: Real>(grad: &[F], exp_avg_sq: &[F]) -> F {
    let sum = grad
        .iter()
        .zip(exp_avg_sq)
        .fold(F::of(0.0), |s, (&g, &v)| s + g * g / v.max(F::of(1e-16)));
    (sum / F::of(grad.len() as f64)).sqrt().max(F::of(1.0))
}

/// -1 when maximizing, else 1.
pub(crate) fn grad_sign(maximize: bool) -> f32 {
    if maximize { -1.0 } else { 1.0 }
}

/// `f(weight_decay, maximize)` for each of: no weight decay, and `weight_decay`; not
/// maximizing, and maximizing. The cross product every class's [`Class::cases`] covers.
pub(crate) fn with_wd_and_maximize<C>(
    weight_decay: f64,
    f: impl Fn(f64, bool) -> Vec<C>,
) -> Vec<C> {
    let mut out = Vec::new();
    for maximize in [false, true] {
        for wd in [0.0, weight_decay] {
            out.extend(f(wd, maximize));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn implementation_switches_are_accepted_where_pytorch_takes_them() {
        let parse = |json: &str| serde_json::from_str::<OptimizerConfig>(json);
        let adam = parse(
            r#"{"type":"Adam","foreach":null,"fused":false,"capturable":true,"differentiable":false}"#,
        )
        .unwrap();
        assert_eq!(adam, Adam::default().into());
        let e = parse(r#"{"type":"Adam","differentiable":true}"#).unwrap_err();
        assert!(e.to_string().contains("differentiable=True"), "{e}");
        let e = parse(r#"{"type":"Adam","foreach":3}"#).unwrap_err();
        assert!(e.to_string().contains("foreach must be a bool"), "{e}");
        // torch.optim.SGD takes no `capturable`.
        let e = parse(r#"{"type":"SGD","capturable":false}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `capturable`"), "{e}");
        let e = parse(r#"{"type":"Lamb2"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown variant `Lamb2`"), "{e}");
        let e = parse(r#"{"lr":0.1}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `type`"), "{e}");
    }

    #[test]
    fn scalar_state_fits_the_control_buffer() {
        for config in OptimizerConfig::all_cases() {
            let n = config.scalar_names().len();
            assert!(n <= crate::gpu::template::MAX_SCALARS, "{config:?}");
        }
    }

    #[test]
    fn every_class_round_trips_through_json() {
        for config in OptimizerConfig::all_cases() {
            let json = serde_json::to_string(&config).unwrap();
            let back: OptimizerConfig = serde_json::from_str(&json).unwrap();
            assert_eq!(back, config, "{json}");
        }
    }
}
