//! The CPU reference: every optimizer step on slices, in f64, and the same code in f32.
//!
//! Each class's step follows the formula documented on its configuration type
//! ([`SGD`](crate::SGD), [`Adam`](crate::Adam), ...), written once, generically over [`Real`],
//! independently of the WGSL kernels. In f64 it is what the tests and `wgpu-optim validate`
//! hold the GPU to; in f32 it shows the error of float32 arithmetic itself on the same data.
//!
//! ```
//! use wgpu_optim::{reference, Adam, OptimizerConfig, TensorState};
//! let cfg = OptimizerConfig::from(Adam { lr: 0.1, ..Default::default() });
//! let mut state = TensorState::default();
//! let mut param = vec![1.0f64, -2.0];
//! reference::step(&cfg, &mut state, &mut param, &[0.5, -0.5]);
//! // Adam's first step moves each element by lr in the direction of -sign(grad).
//! assert!((param[0] - 0.9).abs() < 1e-6 && (param[1] + 1.9).abs() < 1e-6);
//! assert_eq!(state.step, 1);
//! ```

use crate::amp::{ClipGrad, GradScaler, GradScalerState, NormType, StepReport};
use crate::dtype::{DType, Precision, rounding_bits};
use crate::optim::OptimizerConfig;
use crate::state::TensorState;
use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// The float types the reference runs in: `f64`, the reference itself, and `f32`, which shows
/// how far float32 arithmetic alone strays on the same data (what `validate` and the tests
/// allow a kernel beyond their tolerance). Sealed: implemented for `f32` and `f64` only.
pub trait Real:
    Copy
    + PartialOrd
    + Debug
    + Default
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + private::Sealed
    + 'static
{
    /// `x` rounded to this type.
    fn of(x: f64) -> Self;
    /// The value as f64 (exact).
    fn to_f64(self) -> f64;
    /// The square root.
    fn sqrt(self) -> Self;
    /// The absolute value.
    fn abs(self) -> Self;
    /// The larger of the two (the other where one is NaN).
    fn max(self, other: Self) -> Self;
    /// The smaller of the two (the other where one is NaN).
    fn min(self, other: Self) -> Self;
    /// `torch.sign`: -1, 0 or 1, NaN for NaN.
    fn sign(self) -> Self;
    /// The value rounded to `dtype` as a kernel stores it (to nearest, ties to even), widened
    /// back: from f32 as the kernels round their f32 results, directly from f64 in the
    /// reference.
    fn stored(self, dtype: DType) -> Self;
    /// Runs one step of `config`'s class in this type.
    #[doc(hidden)]
    fn class_step(
        config: &OptimizerConfig,
        t: u64,
        shape: &[usize],
        param: &mut [Self],
        grad: &[Self],
        state: &mut [Vec<Self>],
        scalars: &mut [Self],
    );
}

macro_rules! real {
    ($t:ty, $method:ident, $round:ident) => {
        impl Real for $t {
            fn of(x: f64) -> Self {
                x as $t
            }
            fn to_f64(self) -> f64 {
                f64::from(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            fn min(self, other: Self) -> Self {
                <$t>::min(self, other)
            }
            fn sign(self) -> Self {
                if self == 0.0 { 0.0 } else { self.signum() }
            }
            fn stored(self, dtype: DType) -> Self {
                dtype.$round(self)
            }
            fn class_step(
                config: &OptimizerConfig,
                t: u64,
                shape: &[usize],
                param: &mut [Self],
                grad: &[Self],
                state: &mut [Vec<Self>],
                scalars: &mut [Self],
            ) {
                config
                    .class()
                    .$method(t, shape, param, grad, state, scalars);
            }
        }
    };
}
real!(f32, reference_f32, round);
real!(f64, reference_f64, round_f64);

/// `torch.lerp(start, end, weight)` as PyTorch evaluates it for float tensors.
pub fn lerp<F: Real>(start: F, end: F, weight: F) -> F {
    if weight.abs() < F::of(0.5) {
        start + weight * (end - start)
    } else {
        end - (end - start) * (F::of(1.0) - weight)
    }
}

/// Takes one step of `config` on `param` with gradient `grad`, updating `state`, in `F`: `f64`
/// for the reference, `f32` for float32 arithmetic itself. Per-step scalars (bias corrections,
/// decayed learning rates) are computed in f64 and rounded once to `F`, as the host rounds
/// the values it writes for the kernels.
///
/// Missing state is created as PyTorch creates it (zeros, or Adagrad's
/// `initial_accumulator_value`; SGD's momentum buffer starts as a copy of the first gradient;
/// NAdam's `mu_product` 1).
///
/// # Panics
/// If `param` and `grad` differ in length, or a state buffer in `state` has another length.
pub fn step<F: Real>(
    config: &OptimizerConfig,
    state: &mut TensorState<F>,
    param: &mut [F],
    grad: &[F],
) {
    step_shaped(config, &[param.len()], state, param, grad);
}

/// How a tensor's parameter is kept, for [`step_stored`]: its type, the optimizer's
/// [`Precision`], and where the elements stepped lie (the tensor's index in its optimizer and
/// the first element's index in the tensor: keys of stochastic rounding's random bits,
/// [`rounding_bits`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stored {
    /// The parameter's storage type.
    pub param_type: DType,
    /// How the optimizer keeps the state and the 16-bit parameters.
    pub precision: Precision,
    /// The tensor's index over every group of its optimizer.
    pub tensor: u32,
    /// The index in its tensor of the first element stepped (0 for a whole tensor).
    pub first: u64,
}

impl Stored {
    /// Tensor 0 of type `param_type` under `precision`.
    pub fn new(param_type: DType, precision: Precision) -> Self {
        Self {
            param_type,
            precision,
            tensor: 0,
            first: 0,
        }
    }

    /// The same for tensor `tensor`.
    pub fn tensor(self, tensor: u32) -> Self {
        Self { tensor, ..self }
    }

    /// The same for the elements of the tensor from `first` on (a piece of it).
    pub fn from_element(self, first: u64) -> Self {
        Self { first, ..self }
    }

    /// Whether the optimizer keeps an f32 master copy of this parameter: master weights asked
    /// for, and a 16-bit parameter.
    pub fn keeps_master(&self) -> bool {
        self.precision.master_weights && self.param_type != DType::F32
    }
}

/// [`step_shaped`] for a parameter kept as `stored` says: the step in `F` on the stored values,
/// then each state element rounded to the state's type and the parameter to its own, as the
/// kernels store them ([`Real::stored`]), so that the next step starts from the rounded values,
/// as on the GPU. The step uses the new state before it is rounded, as PyTorch's fused kernels
/// do. Scalar state is f32 on the GPU, and stays in `F` here. Gradients of a 16-bit type are
/// given as their exact values.
///
/// Where the optimizer keeps master weights ([`Stored::keeps_master`]), `master` is the f32
/// master copy (`None` otherwise): the step runs on it, it is rounded to f32, and the parameter
/// is written from it. With stochastic rounding the parameter is rounded by
/// [`DType::round_stochastic`] from its f32 value, with [`rounding_bits`] of the seed,
/// `state.step` after the step (the optimizer's step count where its tensors have taken the
/// same steps), `stored.tensor` and the element's index in its tensor (`stored.first` for
/// `param[0]`).
///
/// ```
/// use wgpu_optim::{DType, Precision, SGD, TensorState, reference};
///
/// let config = SGD { lr: 0.01, ..Default::default() }.into();
/// let mut state = TensorState::<f64>::default();
/// // bf16 holds 8 significant bits: above 1 its values are 2^-7 apart, and an update of
/// // 0.003 is lost, while one of 0.006 moves the parameter to the next value.
/// let mut param = [1.0];
/// let bf16 = reference::Stored::new(DType::BF16, Precision::default());
/// reference::step_stored(&config, &[1], &mut state, &mut param, None, &[-0.3], bf16);
/// assert_eq!(param, [1.0]);
/// reference::step_stored(&config, &[1], &mut state, &mut param, None, &[-0.6], bf16);
/// assert_eq!(param, [1.0 + 2f64.powi(-7)]);
///
/// // An f32 master copy keeps the small updates that the bf16 parameter loses.
/// let master_weights = reference::Stored::new(DType::BF16, Precision::default().with_master_weights(true));
/// let (mut state, mut param, mut master) = (TensorState::<f64>::default(), [1.0], [1.0]);
/// for _ in 0..2 {
///     reference::step_stored(&config, &[1], &mut state, &mut param, Some(&mut master), &[-0.3], master_weights);
/// }
/// assert_eq!(master, [1.006f32 as f64]);
/// assert_eq!(param, [1.0 + 2f64.powi(-7)]);
/// ```
///
/// # Panics
/// As [`step_shaped`], and where `master` is given exactly where it should not be, or differs
/// in length from `param`.
pub fn step_stored<F: Real>(
    config: &OptimizerConfig,
    shape: &[usize],
    state: &mut TensorState<F>,
    param: &mut [F],
    master: Option<&mut [F]>,
    grad: &[F],
    stored: Stored,
) {
    assert_eq!(
        master.is_some(),
        stored.keeps_master(),
        "a master copy is given exactly where the optimizer keeps one"
    );
    let param_type = stored.param_type;
    match master {
        Some(master) => {
            assert_eq!(master.len(), param.len(), "master and param lengths differ");
            step_shaped(config, shape, state, master, grad);
            for (p, m) in param.iter_mut().zip(master.iter_mut()) {
                *m = m.stored(DType::F32);
                *p = *m;
            }
        }
        None => step_shaped(config, shape, state, param, grad),
    }
    match stored.precision.stochastic_rounding {
        Some(seed) if param_type != DType::F32 => {
            for (i, p) in param.iter_mut().enumerate() {
                let element = (stored.first + i as u64) as u32;
                let r = rounding_bits(seed, state.step as u32, stored.tensor, element);
                let x = param_type.round_stochastic(p.to_f64() as f32, r);
                *p = F::of(f64::from(x));
            }
        }
        _ => {
            for p in param {
                *p = p.stored(param_type);
            }
        }
    }
    let state_type = stored.precision.state.for_param(param_type);
    for buffer in state.buffers.values_mut() {
        for x in buffer {
            *x = x.stored(state_type);
        }
    }
}

/// [`step`] for a tensor of `shape`, which matters where the state depends on it (Adafactor
/// factors the second moments of tensors of two dimensions or more): the state is
/// [`OptimizerConfig::state_names_for`] with [`OptimizerConfig::state_shape`]'s sizes.
///
/// # Panics
/// If `param` and `grad` differ in length or from the elements of `shape`, or a state buffer
/// in `state` has another length.
pub fn step_shaped<F: Real>(
    config: &OptimizerConfig,
    shape: &[usize],
    state: &mut TensorState<F>,
    param: &mut [F],
    grad: &[F],
) {
    assert_eq!(param.len(), grad.len(), "param and grad lengths differ");
    assert_eq!(
        param.len(),
        shape.iter().product::<usize>(),
        "param length differs from its shape"
    );
    state.step += 1;
    let names = config.state_names_for(shape);
    let mut buffers: Vec<Vec<F>> = names
        .iter()
        .map(|name| {
            let n = config.state_shape(name, shape).iter().product();
            let init = F::of(config.initial_state_value(name));
            let buf = state.buffers.remove(*name).unwrap_or_else(|| vec![init; n]);
            assert_eq!(buf.len(), n, "state {name} has the wrong length");
            buf
        })
        .collect();
    let scalar_names = config.scalar_names();
    let mut scalars: Vec<F> = scalar_names
        .iter()
        .map(|name| {
            (state.scalars.remove(*name))
                .unwrap_or_else(|| F::of(config.initial_scalar_value(name)))
        })
        .collect();
    F::class_step(
        config,
        state.step,
        shape,
        param,
        grad,
        &mut buffers,
        &mut scalars,
    );
    for (name, buf) in names.iter().zip(buffers) {
        state.buffers.insert(name.to_string(), buf);
    }
    for (name, x) in scalar_names.iter().zip(scalars) {
        state.scalars.insert(name.to_string(), x);
    }
}

/// What PyTorch's recipe does to one step's gradients before the optimizer sees them, in f64:
/// `scaler.unscale_(opt)` when `scale` is given (the gradients are multiplied by `1 / scale`,
/// and any inf or NaN among the scaled gradients is found), then `clip_grad_norm_` over all
/// tensors together or `clip_grad_value_`. The gradients are changed in place.
///
/// The returned total norm is that of the unscaled gradients (NaN if any is NaN, else inf if
/// any is inf), taken when clipping by norm, and with the 2-norm when only unscaling; 0
/// otherwise, as [`Optimizer::read_step_report`](crate::Optimizer::read_step_report) reports.
/// When `found_inf`, the optimizer step is to be skipped (with a grad scaler).
///
/// ```
/// use wgpu_optim::{ClipGrad, reference};
/// let mut a = vec![3.0, 0.0];
/// let mut b = vec![4.0];
/// let report = reference::prepare_grads(&mut [&mut a, &mut b], Some(&ClipGrad::norm(1.0)), None);
/// assert_eq!(report.total_norm, 5.0);
/// assert!((a[0] - 0.6).abs() < 1e-6 && (b[0] - 0.8).abs() < 1e-6);
/// ```
pub fn prepare_grads(
    grads: &mut [&mut [f64]],
    clip: Option<&ClipGrad>,
    scale: Option<f32>,
) -> StepReport {
    let all = |grads: &mut [&mut [f64]], f: &mut dyn FnMut(&mut f64)| {
        for g in grads.iter_mut() {
            g.iter_mut().for_each(&mut *f);
        }
    };
    let mut found_inf = false;
    if let Some(scale) = scale {
        let inv = 1.0 / f64::from(scale);
        all(grads, &mut |g| {
            found_inf |= !g.is_finite();
            *g *= inv;
        });
    }
    let norm_type = match clip {
        Some(ClipGrad::Norm { norm_type, .. }) => Some(*norm_type),
        _ if scale.is_some() => Some(NormType::L2),
        _ => None,
    };
    let mut total_norm = 0.0;
    if let Some(norm_type) = norm_type {
        let (mut acc, mut inf, mut nan) = (0.0f64, false, false);
        all(grads, &mut |g| {
            if g.is_nan() {
                nan = true;
            } else if g.is_infinite() {
                inf = true;
            } else if norm_type == NormType::Inf {
                acc = acc.max(g.abs());
            } else {
                acc += *g * *g;
            }
        });
        total_norm = match (nan, inf, norm_type) {
            (true, _, _) => f64::NAN,
            (false, true, _) => f64::INFINITY,
            (false, false, NormType::Inf) => acc,
            (false, false, NormType::L2) => acc.sqrt(),
        };
    }
    match clip {
        Some(ClipGrad::Norm { max_norm, .. }) => {
            let coef = max_norm / (total_norm + 1e-6);
            let coef = if coef > 1.0 { 1.0 } else { coef };
            all(grads, &mut |g| *g *= coef);
        }
        Some(ClipGrad::Value { clip_value }) => {
            all(grads, &mut |g| *g = g.clamp(-clip_value, *clip_value));
        }
        None => {}
    }
    StepReport {
        total_norm: total_norm as f32,
        found_inf,
    }
}

/// What the optimizer itself does to all of a step's gradients together, after
/// [`prepare_grads`], in f64: with Lamb's `pre_norm` (pytorch-optimizer's
/// `get_global_gradient_norm`), every gradient is multiplied by
/// `min(max_grad_norm / (‖g‖ + eps), 1)` (NaN stays NaN), with `‖g‖` the 2-norm of all of
/// them. Returns that norm, or `None`, changing nothing, for a configuration without it.
///
/// ```
/// use wgpu_optim::{Lamb, OptimizerConfig, reference};
/// let config = OptimizerConfig::from(Lamb { pre_norm: true, max_grad_norm: 1.0, eps: 0.0, ..Default::default() });
/// let (mut a, mut b) = (vec![3.0, 0.0], vec![4.0]);
/// assert_eq!(reference::pre_norm(&mut [&mut a, &mut b], &config), Some(5.0));
/// assert!((a[0] - 0.6).abs() < 1e-12 && (b[0] - 0.8).abs() < 1e-12);
/// ```
pub fn pre_norm(grads: &mut [&mut [f64]], config: &OptimizerConfig) -> Option<f64> {
    let p = config.pre_norm()?;
    let norm = grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|g| g * g)
        .sum::<f64>()
        .sqrt();
    let factor = p.max_grad_norm / (norm + p.eps);
    let factor = if factor > 1.0 { 1.0 } else { factor };
    for g in grads.iter_mut() {
        g.iter_mut().for_each(|g| *g *= factor);
    }
    Some(norm)
}

/// `GradScaler.update()`: after a step that found inf or NaN, the scale times
/// `backoff_factor` and the tracker reset; otherwise the tracker counts up, and at
/// `growth_interval` the scale grows by `growth_factor` (unless that overflows f32) and the
/// tracker resets. Products are taken in f64 and rounded to f32, as PyTorch rounds them.
pub fn update_grad_scaler(scaler: &GradScaler, state: &mut GradScalerState, found_inf: bool) {
    if found_inf {
        state.scale = (f64::from(state.scale) * scaler.backoff_factor) as f32;
        state.growth_tracker = 0;
        return;
    }
    let successful = state.growth_tracker + 1;
    if successful as u32 == scaler.growth_interval {
        let grown = (f64::from(state.scale) * scaler.growth_factor) as f32;
        if grown.is_finite() {
            state.scale = grown;
        }
        state.growth_tracker = 0;
    } else {
        state.growth_tracker = successful;
    }
}
