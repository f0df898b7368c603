//! Bad inputs: every one returns the right [`wgpu_optim::Error`] variant and modifies nothing.
//!
//! Covers PyTorch's hyperparameter checks (with PyTorch's messages), JSON configurations, tensor
//! ranges (lengths, usages, bounds, alignment, overlaps), parameter groups, `update_group`,
//! `load_state`, and device limits: a device with lowered limits stands in for a small GPU, to
//! check that a tensor larger than one storage binding is split across dispatches and still
//! matches the CPU reference, and that kernels needing more storage buffers than a downlevel
//! device allows are refused.

mod common;

use common::{POISON, Rng, Tracked, assert_close, bits, context_with_limits, read_all};
use wgpu_optim::{
    ADOPT, ASGD, Access, AdEMAMix, Adadelta, Adafactor, Adagrad, Adam, AdamW, AdamWScheduleFree,
    Adamax, AdjustLr, BufferRange, ClipGrad, Context, Error, GradScaler, GradScalerState, Lamb,
    Lion, Muon, NAdam, NormType, Optimizer, OptimizerConfig, ParamGroup, RAdam, RMSprop, Rprop,
    SGD, Tensor, TensorState, reference,
};

/// Asserts that `result` is an error matching `pattern`, and returns the error.
macro_rules! assert_err {
    ($result:expr, $pattern:pat $(if $guard:expr)? $(,)?) => {{
        let err = $result.expect_err("expected an error");
        assert!(
            matches!(&err, $pattern $(if $guard)?),
            "unexpected error: {err:?} ({err})"
        );
        err
    }};
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn sgd(f: impl FnOnce(&mut SGD)) -> OptimizerConfig {
    let mut c = SGD::default();
    f(&mut c);
    c.into()
}

/// The same settings as Adam and as AdamW.
fn adam_and_adamw(f: impl FnOnce(&mut Adam)) -> [OptimizerConfig; 2] {
    let mut a = Adam::default();
    f(&mut a);
    let w = AdamW {
        lr: a.lr,
        betas: a.betas,
        eps: a.eps,
        weight_decay: a.weight_decay,
        amsgrad: a.amsgrad,
        maximize: a.maximize,
    };
    [a.into(), w.into()]
}

fn rmsprop(f: impl FnOnce(&mut RMSprop)) -> OptimizerConfig {
    let mut c = RMSprop::default();
    f(&mut c);
    c.into()
}

fn adagrad(f: impl FnOnce(&mut Adagrad)) -> OptimizerConfig {
    let mut c = Adagrad::default();
    f(&mut c);
    c.into()
}

/// A tensor from `(buffer, element offset)` of its parameter and of its gradient.
fn t<'a>(param: (&'a wgpu::Buffer, u64), grad: (&'a wgpu::Buffer, u64), len: u64) -> Tensor<'a> {
    Tensor::new(
        BufferRange::new(param.0, param.1 * 4, len),
        BufferRange::new(grad.0, grad.1 * 4, len),
    )
}

fn widen(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}

fn range(at: u64, len: u64) -> std::ops::Range<usize> {
    at as usize..(at + len) as usize
}

/// Writes f32 values at an element offset, through `ctx`'s queue.
fn put(ctx: &Context, buffer: &wgpu::Buffer, at: u64, values: &[f32]) {
    ctx.queue()
        .write_buffer(buffer, at * 4, bytemuck::cast_slice(values));
}

#[track_caller]
fn assert_same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: element {i} is {} but should be {}",
            got[i], want[i]
        );
    }
}

/// A parameter buffer and a gradient buffer of `n` random values each, remembered so that a
/// test can check that a failed call left them alone.
struct Fixture {
    param: wgpu::Buffer,
    grad: wgpu::Buffer,
    before: (Vec<u32>, Vec<u32>),
}

impl Fixture {
    fn new(ctx: &Context, rng: &mut Rng, n: u64) -> Self {
        let param = ctx
            .create_f32_buffer("param", &rng.normals(n as usize))
            .unwrap();
        let grad = ctx
            .create_f32_buffer("grad", &rng.normals(n as usize))
            .unwrap();
        let before = (bits(ctx, &param), bits(ctx, &grad));
        Self {
            param,
            grad,
            before,
        }
    }

    /// Elements `[at, at + len)` of both buffers, as one tensor.
    fn tensor(&self, at: u64, len: u64) -> Tensor<'_> {
        Tensor::new(
            BufferRange::new(&self.param, at * 4, len),
            BufferRange::new(&self.grad, at * 4, len),
        )
    }

    #[track_caller]
    fn assert_untouched(&self, ctx: &Context, after: &str) {
        assert!(
            bits(ctx, &self.param) == self.before.0,
            "parameters changed after {after}"
        );
        assert!(
            bits(ctx, &self.grad) == self.before.1,
            "gradients changed after {after}"
        );
    }
}

/// Where one tensor lives: element offsets of its parameter and its gradient, and its length.
#[derive(Clone, Copy, Debug)]
struct Place {
    param_at: u64,
    grad_at: u64,
    len: u64,
}

/// Random starting parameters of some tensors and their gradients for each step.
struct Data {
    init: Vec<Vec<f32>>,
    /// `grads[step][tensor]`.
    grads: Vec<Vec<Vec<f32>>>,
}

impl Data {
    fn random(rng: &mut Rng, sizes: &[u64], steps: usize) -> Self {
        let mut tensors = |scale: f32| -> Vec<Vec<f32>> {
            sizes
                .iter()
                .map(|&n| rng.normals(n as usize).iter().map(|v| v * scale).collect())
                .collect()
        };
        let init = tensors(1.0);
        let grads = (0..steps).map(|_| tensors(0.5)).collect();
        Self { init, grads }
    }
}

/// Runs `config` over the tensors at `places` in `param` and `grad` (which may be one buffer),
/// starting from `data.init` and stepping with `data.grads`, after letting `prepare` act on the
/// new optimizer. Checks parameters, state and step counts against the CPU reference, and that
/// no element of the parameter buffer outside the parameter ranges changed. Returns the
/// optimizer and the final parameters of each tensor.
fn run_against_reference(
    ctx: &Context,
    config: OptimizerConfig,
    (param, grad): (&wgpu::Buffer, &wgpu::Buffer),
    places: &[Place],
    data: &Data,
    prepare: impl FnOnce(&mut Optimizer),
) -> (Optimizer, Vec<Vec<f32>>) {
    // What the parameter buffer must hold outside the parameter ranges.
    let mut outside = read_all(ctx, param);
    for (p, init) in places.iter().zip(&data.init) {
        put(ctx, param, p.param_at, init);
    }
    let tensors: Vec<Tensor<'_>> = places
        .iter()
        .map(|p| {
            Tensor::new(
                BufferRange::new(param, p.param_at * 4, p.len),
                BufferRange::new(grad, p.grad_at * 4, p.len),
            )
        })
        .collect();
    let mut opt = Optimizer::new(ctx, config, &tensors).unwrap();
    prepare(&mut opt);
    let mut tracked: Vec<Tracked> = data.init.iter().map(|v| Tracked::new(config, v)).collect();
    for step_grads in &data.grads {
        for (k, (p, g)) in places.iter().zip(step_grads).enumerate() {
            put(ctx, grad, p.grad_at, g);
            if param == grad {
                outside[range(p.grad_at, p.len)].copy_from_slice(g);
            }
            tracked[k].step(g);
        }
        opt.step_submit().unwrap();
    }
    let got = read_all(ctx, param);
    let mut finals = Vec::new();
    for (k, p) in places.iter().enumerate() {
        let r = range(p.param_at, p.len);
        let what = format!("{config:?}, tensor {k} of {}", p.len);
        tracked[k].assert_matches(&what, &got[r.clone()], &opt.read_state(k).unwrap());
        outside[r.clone()].copy_from_slice(&got[r.clone()]);
        finals.push(got[r].to_vec());
    }
    assert_same_bits(
        &format!("{config:?}: parameter buffer outside the parameters"),
        &got,
        &outside,
    );
    (opt, finals)
}

// ---------------------------------------------------------------------------------------------
// Hyperparameters
// ---------------------------------------------------------------------------------------------

/// Configurations that fail one of PyTorch's constructor checks, with PyTorch's message.
fn invalid_configs() -> Vec<(OptimizerConfig, &'static str)> {
    let mut cases = vec![
        (sgd(|c| c.lr = -1.0), "Invalid learning rate: -1.0"),
        (sgd(|c| c.momentum = -0.5), "Invalid momentum value: -0.5"),
        (
            sgd(|c| c.weight_decay = -0.1),
            "Invalid weight_decay value: -0.1",
        ),
        (
            sgd(|c| c.nesterov = true),
            "Nesterov momentum requires a momentum and zero dampening",
        ),
        (
            sgd(|c| {
                c.nesterov = true;
                c.momentum = 0.9;
                c.dampening = 0.1;
            }),
            "Nesterov momentum requires a momentum and zero dampening",
        ),
        (rmsprop(|c| c.lr = -1.0), "Invalid learning rate: -1.0"),
        (rmsprop(|c| c.eps = -1.0), "Invalid epsilon value: -1.0"),
        (rmsprop(|c| c.eps = -1e-8), "Invalid epsilon value: -1e-08"),
        (rmsprop(|c| c.lr = -1e16), "Invalid learning rate: -1e+16"),
        (
            rmsprop(|c| c.momentum = -0.5),
            "Invalid momentum value: -0.5",
        ),
        (
            rmsprop(|c| c.weight_decay = -0.1),
            "Invalid weight_decay value: -0.1",
        ),
        (rmsprop(|c| c.alpha = -0.5), "Invalid alpha value: -0.5"),
        (adagrad(|c| c.lr = -1.0), "Invalid learning rate: -1.0"),
        (
            adagrad(|c| c.lr_decay = -0.5),
            "Invalid lr_decay value: -0.5",
        ),
        (
            adagrad(|c| c.weight_decay = -0.1),
            "Invalid weight_decay value: -0.1",
        ),
        (
            adagrad(|c| c.initial_accumulator_value = -1.0),
            "Invalid initial_accumulator_value value: -1.0",
        ),
        (adagrad(|c| c.eps = -1.0), "Invalid epsilon value: -1.0"),
    ];
    type AdamCase = (fn(&mut Adam), &'static str);
    let adam_cases: [AdamCase; 7] = [
        (|c| c.lr = -1.0, "Invalid learning rate: -1.0"),
        (|c| c.eps = -1.0, "Invalid epsilon value: -1.0"),
        (
            |c| c.betas = (1.0, 0.999),
            "Invalid beta parameter at index 0: 1.0",
        ),
        (
            |c| c.betas = (-0.1, 0.999),
            "Invalid beta parameter at index 0: -0.1",
        ),
        (
            |c| c.betas = (0.9, 1.0),
            "Invalid beta parameter at index 1: 1.0",
        ),
        (
            |c| c.betas = (0.9, -0.5),
            "Invalid beta parameter at index 1: -0.5",
        ),
        (
            |c| c.weight_decay = -0.1,
            "Invalid weight_decay value: -0.1",
        ),
    ];
    for (f, message) in adam_cases {
        for config in adam_and_adamw(f) {
            cases.push((config, message));
        }
    }
    // Several bad values: the first check in PyTorch's order reports.
    let first_wins: [(OptimizerConfig, &str); 6] = [
        (
            adam_and_adamw(|c| {
                c.lr = -1.0;
                c.eps = -1.0;
                c.betas = (1.0, 1.0);
            })[0],
            "Invalid learning rate: -1.0",
        ),
        (
            adam_and_adamw(|c| {
                c.eps = -1.0;
                c.betas = (1.0, 1.0);
                c.weight_decay = -1.0;
            })[1],
            "Invalid epsilon value: -1.0",
        ),
        (
            rmsprop(|c| {
                c.eps = -1.0;
                c.momentum = -1.0;
                c.alpha = -1.0;
            }),
            "Invalid epsilon value: -1.0",
        ),
        (
            rmsprop(|c| {
                c.weight_decay = -1.0;
                c.alpha = -1.0;
            }),
            "Invalid weight_decay value: -1.0",
        ),
        (
            adagrad(|c| {
                c.initial_accumulator_value = -1.0;
                c.eps = -1.0;
            }),
            "Invalid initial_accumulator_value value: -1.0",
        ),
        (
            sgd(|c| {
                c.weight_decay = -1.0;
                c.nesterov = true;
            }),
            "Invalid weight_decay value: -1.0",
        ),
    ];
    cases.extend(first_wins);
    // The classes added in issue 11, with the messages torch 2.15 gives for them.
    let nan = f64::NAN;
    let added: Vec<(OptimizerConfig, &'static str)> = vec![
        (
            RAdam {
                betas: (1.0, 0.9),
                ..Default::default()
            }
            .into(),
            "Invalid beta parameter at index 0: 1.0",
        ),
        (
            NAdam {
                betas: (0.9, nan),
                ..Default::default()
            }
            .into(),
            "Invalid beta parameter at index 1: nan",
        ),
        (
            NAdam {
                momentum_decay: -0.1,
                ..Default::default()
            }
            .into(),
            "Invalid momentum_decay value: -0.1",
        ),
        (
            Adamax {
                eps: -1.0,
                ..Default::default()
            }
            .into(),
            "Invalid epsilon value: -1.0",
        ),
        (
            Adadelta {
                rho: 1.5,
                ..Default::default()
            }
            .into(),
            "Invalid rho value: 1.5",
        ),
        (
            Adadelta {
                rho: nan,
                ..Default::default()
            }
            .into(),
            "Invalid rho value: nan",
        ),
        (
            Adadelta {
                lr: -0.5,
                ..Default::default()
            }
            .into(),
            "Invalid learning rate: -0.5",
        ),
        (
            Rprop {
                etas: (1.5, 1.2),
                ..Default::default()
            }
            .into(),
            "Invalid eta values: 1.5, 1.2",
        ),
        (
            Rprop {
                etas: (0.5, 1.0),
                ..Default::default()
            }
            .into(),
            "Invalid eta values: 0.5, 1.0",
        ),
        (
            Rprop {
                etas: (nan, 1.2),
                ..Default::default()
            }
            .into(),
            "Invalid eta values: nan, 1.2",
        ),
        (
            ASGD {
                lambd: -1.0,
                ..Default::default()
            }
            .into(),
            "Invalid lambd value: -1.0",
        ),
        (
            ASGD {
                alpha: -1.0,
                ..Default::default()
            }
            .into(),
            "Invalid alpha value: -1.0",
        ),
        (
            ASGD {
                weight_decay: -2.0,
                ..Default::default()
            }
            .into(),
            "Invalid weight_decay value: -2.0",
        ),
    ];
    cases.extend(added);
    // PyTorch accepts these at construction and fails at the step, converting them into the
    // float32 parameters' dtype; here they are errors before anything runs.
    cases.extend([
        (
            Adam {
                lr: 1e39,
                ..Default::default()
            }
            .into(),
            "Invalid learning rate: 1e+39 does not fit in float32 (PyTorch fails at the step: value cannot be converted to type float without overflow)",
        ),
        (
            Rprop {
                step_sizes: (1e-6, 1e300),
                ..Default::default()
            }
            .into(),
            "Invalid step_sizes value: 1e+300 does not fit in float32 (PyTorch fails at the step: value cannot be converted to type float without overflow)",
        ),
    ]);
    // lion-pytorch asserts these without a message; the messages here name the check.
    cases.extend([
        (
            Lion {
                lr: 0.0,
                ..Default::default()
            }
            .into(),
            "Invalid learning rate: 0.0 (Lion needs lr > 0)",
        ),
        (
            Lion {
                betas: (0.9, 1.5),
                ..Default::default()
            }
            .into(),
            "Invalid beta parameter at index 1: 1.5 (Lion needs 0 <= beta <= 1)",
        ),
    ]);
    // pytorch-optimizer's messages; then what it accepts and fails on at the step, and the
    // options not implemented here.
    cases.extend([
        (
            ADOPT {
                lr: -0.1,
                ..Default::default()
            }
            .into(),
            "learning rate must be positive. (-0.1 > 0)",
        ),
        (
            ADOPT {
                betas: (1.0, 0.9),
                ..Default::default()
            }
            .into(),
            "beta1 must be in the range [0.0, 1.0)",
        ),
        (
            ADOPT {
                eps: -1e-6,
                ..Default::default()
            }
            .into(),
            "eps must be non-negative",
        ),
        (
            ADOPT {
                clip_lambda: Some(f64::INFINITY),
                ..Default::default()
            }
            .into(),
            "clip_lambda must be null or a finite exponent, not inf",
        ),
        (
            AdamWScheduleFree {
                r: 1e30,
                ..Default::default()
            }
            .into(),
            "Invalid r, weight_lr_power and lr (1e+30, 2.0, 0.0025): the average's weights (k+1)**r * lr**weight_lr_power would pass float32's range",
        ),
        (
            AdamWScheduleFree {
                lr: 0.0,
                weight_lr_power: -1.0,
                ..Default::default()
            }
            .into(),
            "Invalid r, weight_lr_power and lr (0.0, -1.0, 0.0): the average's weights (k+1)**r * lr**weight_lr_power would pass float32's range",
        ),
        (
            Lamb {
                max_grad_norm: -1.0,
                ..Default::default()
            }
            .into(),
            "max_grad_norm must be non-negative",
        ),
        (
            Lamb {
                betas: (0.9, 1.0),
                ..Default::default()
            }
            .into(),
            "beta2 must be in the range [0.0, 1.0)",
        ),
        (
            AdEMAMix {
                betas: (0.9, 0.999, 1.5),
                ..Default::default()
            }
            .into(),
            "beta3 must be in the range [0.0, 1.0]",
        ),
        (
            AdEMAMix {
                alpha: -5.0,
                ..Default::default()
            }
            .into(),
            "alpha must be non-negative",
        ),
        (
            AdEMAMix {
                weight_decay: -0.1,
                ..Default::default()
            }
            .into(),
            "weight_decay must be non-negative",
        ),
        (
            AdEMAMix {
                t_alpha_beta3: Some(0.0),
                ..Default::default()
            }
            .into(),
            "t_alpha_beta3 must be positive: pytorch-optimizer divides by it at the step",
        ),
        (
            AdEMAMix {
                betas: (0.0, 0.999, 0.9999),
                t_alpha_beta3: Some(10.0),
                ..Default::default()
            }
            .into(),
            "with t_alpha_beta3, beta1 and beta3 must be positive: pytorch-optimizer takes their logarithms at the step",
        ),
        (
            Adafactor {
                lr: -1.0,
                ..Default::default()
            }
            .into(),
            "Learning rate should be >= 0 but is: -1.0",
        ),
        (
            Adafactor {
                beta2_decay: 0.5,
                ..Default::default()
            }
            .into(),
            "beta2_decay should be <= 0 but is: 0.5",
        ),
        (
            Adafactor {
                eps: (Some(-1.0), 1e-3),
                ..Default::default()
            }
            .into(),
            "epsilon1 should be >= 0 but is: -1.0",
        ),
        (
            Adafactor {
                eps: (None, -1e-3),
                ..Default::default()
            }
            .into(),
            "epsilon2 should be >= 0 but is: -0.001",
        ),
        (
            Adafactor {
                d: 0.5,
                ..Default::default()
            }
            .into(),
            "Clipping threshold d should be >= 1 but is: 0.5",
        ),
        (
            Adafactor {
                weight_decay: -0.1,
                ..Default::default()
            }
            .into(),
            "weight_decay should be >= 0 but is: -0.1",
        ),
        (
            Adafactor {
                eps: (None, 1e300),
                ..Default::default()
            }
            .into(),
            "Invalid epsilon2: 1e+300 does not fit in float32 (PyTorch fails at the step: value cannot be converted to type float without overflow)",
        ),
        (
            Adafactor {
                eps: (Some(1e20), 1e-3),
                ..Default::default()
            }
            .into(),
            "Invalid epsilon1 squared: 1e+40 does not fit in float32 (PyTorch fails at the step: value cannot be converted to type float without overflow)",
        ),
    ]);
    cases
}

/// Configurations with a NaN hyperparameter, with the start of their message (which then ends
/// in `nan`, as Python prints it).
fn nan_configs() -> Vec<(OptimizerConfig, &'static str)> {
    let nan = f64::NAN;
    let [adam, adamw] = adam_and_adamw(|c| c.lr = nan);
    vec![
        (sgd(|c| c.lr = nan), "Invalid learning rate: "),
        (
            Adafactor {
                lr: nan,
                ..Default::default()
            }
            .into(),
            "Learning rate should be >= 0 but is: ",
        ),
        (sgd(|c| c.dampening = nan), "Invalid dampening value: "),
        (adam, "Invalid learning rate: "),
        (adamw, "Invalid learning rate: "),
        (
            adam_and_adamw(|c| c.betas = (nan, 0.999))[0],
            "Invalid beta parameter at index 0: ",
        ),
        (
            adam_and_adamw(|c| c.betas = (0.9, nan))[1],
            "Invalid beta parameter at index 1: ",
        ),
        (rmsprop(|c| c.lr = nan), "Invalid learning rate: "),
        (rmsprop(|c| c.alpha = nan), "Invalid alpha value: "),
        (adagrad(|c| c.lr = nan), "Invalid learning rate: "),
        (adagrad(|c| c.eps = nan), "Invalid epsilon value: "),
    ]
}

#[test]
fn validate_rejects_what_pytorch_rejects_with_its_message() {
    for (config, message) in invalid_configs() {
        let err = assert_err!(config.validate(), Error::InvalidHyperparameter(_));
        assert_eq!(err.to_string(), message, "{config:?}");
    }
    for (config, prefix) in nan_configs() {
        let err = assert_err!(config.validate(), Error::InvalidHyperparameter(_));
        let message = err.to_string();
        assert!(
            message.starts_with(prefix) && message == format!("{prefix}nan"),
            "{config:?}: {message}"
        );
    }
}

#[test]
fn validate_accepts_pytorch_defaults_and_boundaries() {
    let mut valid: Vec<OptimizerConfig> = vec![
        SGD::default().into(),
        RMSprop::default().into(),
        Adagrad::default().into(),
        Adamax::default().into(),
        RAdam::default().into(),
        NAdam::default().into(),
        Adadelta::default().into(),
        Rprop::default().into(),
        ASGD::default().into(),
        // An infinite learning rate converts to float32, and PyTorch steps with it.
        sgd(|c| c.lr = f64::INFINITY),
        // PyTorch allows rho = 1 and does not check Rprop's step_sizes or ASGD's t0.
        Adadelta {
            rho: 1.0,
            ..Default::default()
        }
        .into(),
        Rprop {
            step_sizes: (1.0, 1e-3),
            ..Default::default()
        }
        .into(),
        ASGD {
            t0: -5.0,
            ..Default::default()
        }
        .into(),
        sgd(|c| c.lr = 0.0),
        sgd(|c| {
            c.momentum = 0.9;
            c.nesterov = true;
        }),
        // PyTorch does not check dampening.
        sgd(|c| c.dampening = -0.5),
        rmsprop(|c| {
            c.alpha = 0.0;
            c.eps = 0.0;
        }),
        // PyTorch checks only alpha >= 0.
        rmsprop(|c| c.alpha = 1.5),
        adagrad(|c| {
            c.lr_decay = 0.0;
            c.initial_accumulator_value = 0.0;
            c.eps = 0.0;
        }),
    ];
    valid.extend(adam_and_adamw(|_| {}));
    valid.extend(adam_and_adamw(|c| {
        c.lr = 0.0;
        c.eps = 0.0;
        c.betas = (0.0, 0.0);
        c.weight_decay = 0.0;
    }));
    for config in valid {
        config
            .validate()
            .unwrap_or_else(|e| panic!("{config:?}: {e}"));
    }
}

#[test]
fn optimizer_rejects_invalid_hyperparameters_and_leaves_params_alone() {
    let ctx = common::ctx();
    let mut rng = Rng::fresh("optimizer_rejects_invalid_hyperparameters");
    let f = Fixture::new(ctx, &mut rng, 300);
    let tensors = [f.tensor(0, 100), f.tensor(100, 200)];
    for (config, message) in invalid_configs() {
        let err = assert_err!(
            Optimizer::new(ctx, config, &tensors),
            Error::InvalidHyperparameter(_)
        );
        assert_eq!(err.to_string(), message, "{config:?}");
        f.assert_untouched(ctx, &format!("{config:?}"));
    }
    for (config, prefix) in nan_configs() {
        let err = assert_err!(
            Optimizer::new(ctx, config, &tensors),
            Error::InvalidHyperparameter(m) if m.starts_with(prefix)
        );
        assert!(err.to_string().starts_with(prefix));
    }
    // A bad second group is caught as well.
    let groups = [
        ParamGroup::new(Adam::default(), vec![tensors[0]]),
        ParamGroup::new(
            Adam {
                betas: (0.9, 1.0),
                ..Default::default()
            },
            vec![tensors[1]],
        ),
    ];
    let err = assert_err!(
        Optimizer::with_groups(ctx, &groups),
        Error::InvalidHyperparameter(_)
    );
    assert_eq!(err.to_string(), "Invalid beta parameter at index 1: 1.0");
    f.assert_untouched(ctx, "the invalid hyperparameters");
}

// ---------------------------------------------------------------------------------------------
// JSON configurations
// ---------------------------------------------------------------------------------------------

fn from_json(json: &str) -> Result<OptimizerConfig, serde_json::Error> {
    serde_json::from_str(json)
}

#[test]
fn json_rejects_unknown_types_unknown_fields_and_wrong_types() {
    let bad = [
        r#"{"type":"Nadam"}"#,
        r#"{"type":"sgd"}"#,
        r#"{"lr":0.1}"#,
        // torch.optim.SGD takes no `capturable`; nothing here is differentiable.
        r#"{"type":"SGD","capturable":true}"#,
        r#"{"type":"Adam","differentiable":true}"#,
        r#"{"type":"Adam","foreach":true,"fused":true}"#,
        r#"{"type":"Adam","momentum":0.9}"#,
        r#"{"type":"SGD","lr":"0.1"}"#,
        r#"{"type":"SGD","nesterov":1}"#,
        r#"{"type":"Adam","betas":[0.9]}"#,
        r#"{"type":"Adam","betas":[0.9,0.999,0.9]}"#,
        r#"{"type":"Adam","betas":0.9}"#,
        r#"{"type":"RMSprop","centered":"yes"}"#,
        r#"{"type":"Adagrad","eps":null}"#,
        "",
    ];
    for json in bad {
        assert!(from_json(json).is_err(), "{json} was accepted");
    }
}

#[test]
fn json_fills_in_pytorch_defaults() {
    let OptimizerConfig::SGD(c) = from_json(r#"{"type":"SGD"}"#).unwrap() else {
        panic!("not SGD")
    };
    assert_eq!(
        (c.lr, c.momentum, c.dampening, c.weight_decay),
        (1e-3, 0.0, 0.0, 0.0)
    );
    assert!(!c.nesterov && !c.maximize);

    for (json, weight_decay) in [(r#"{"type":"Adam"}"#, 0.0), (r#"{"type":"AdamW"}"#, 1e-2)] {
        let (lr, betas, eps, wd, amsgrad, maximize) = match from_json(json).unwrap() {
            OptimizerConfig::Adam(c) => {
                (c.lr, c.betas, c.eps, c.weight_decay, c.amsgrad, c.maximize)
            }
            OptimizerConfig::AdamW(c) => {
                (c.lr, c.betas, c.eps, c.weight_decay, c.amsgrad, c.maximize)
            }
            other => panic!("{json} gave {other:?}"),
        };
        assert_eq!(
            (lr, betas, eps, wd),
            (1e-3, (0.9, 0.999), 1e-8, weight_decay)
        );
        assert!(!amsgrad && !maximize, "{json}");
    }

    let OptimizerConfig::RMSprop(c) = from_json(r#"{"type":"RMSprop"}"#).unwrap() else {
        panic!("not RMSprop")
    };
    assert_eq!(
        (c.lr, c.alpha, c.eps, c.weight_decay, c.momentum),
        (1e-2, 0.99, 1e-8, 0.0, 0.0)
    );
    assert!(!c.centered && !c.maximize);

    let OptimizerConfig::Adagrad(c) = from_json(r#"{"type":"Adagrad"}"#).unwrap() else {
        panic!("not Adagrad")
    };
    assert_eq!(
        (
            c.lr,
            c.lr_decay,
            c.weight_decay,
            c.initial_accumulator_value,
            c.eps
        ),
        (1e-2, 0.0, 0.0, 0.0, 1e-10)
    );
    assert!(!c.maximize);

    // The Default impls agree with the JSON defaults.
    assert_eq!(
        from_json(r#"{"type":"SGD"}"#).unwrap(),
        SGD::default().into()
    );
    assert_eq!(
        from_json(r#"{"type":"AdamW"}"#).unwrap(),
        AdamW::default().into()
    );
}

#[test]
fn json_keeps_given_fields_and_round_trips() {
    let config =
        from_json(r#"{"type":"Adam","lr":0.01,"betas":[0.5,0.6],"amsgrad":true}"#).unwrap();
    assert_eq!(
        config,
        Adam {
            lr: 0.01,
            betas: (0.5, 0.6),
            amsgrad: true,
            ..Default::default()
        }
        .into()
    );
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(from_json(&json).unwrap(), config);
    // A value that parses but fails PyTorch's checks is caught by `validate`.
    let config = from_json(r#"{"type":"Adam","lr":-1}"#).unwrap();
    let err = assert_err!(config.validate(), Error::InvalidHyperparameter(_));
    assert_eq!(err.to_string(), "Invalid learning rate: -1.0");
}

// ---------------------------------------------------------------------------------------------
// Tensor ranges
// ---------------------------------------------------------------------------------------------

#[test]
fn different_param_and_grad_lengths() {
    let ctx = common::ctx();
    let mut rng = Rng::fresh("different_param_and_grad_lengths");
    let f = Fixture::new(ctx, &mut rng, 100);
    let bad = Tensor::new(
        BufferRange::new(&f.param, 40, 10),
        BufferRange::new(&f.grad, 40, 9),
    );
    assert_err!(
        Optimizer::new(ctx, Adam::default(), &[f.tensor(0, 10), bad]),
        Error::LengthMismatch {
            tensor: 1,
            param_len: 10,
            grad_len: 9
        }
    );
    f.assert_untouched(ctx, "LengthMismatch");
}

#[test]
fn buffers_without_storage_usage() {
    let ctx = common::ctx();
    let mut rng = Rng::fresh("buffers_without_storage_usage");
    let f = Fixture::new(ctx, &mut rng, 64);
    let plain = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("COPY_DST | COPY_SRC only"),
        size: 64 * 4,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    put(ctx, &plain, 0, &rng.normals(64));
    let plain_before = bits(ctx, &plain);
    let whole = BufferRange::whole(&plain);
    for (role, tensor) in [
        ("parameter", Tensor::new(whole, BufferRange::whole(&f.grad))),
        ("gradient", Tensor::new(BufferRange::whole(&f.param), whole)),
    ] {
        let other = Tensor::new(
            BufferRange::new(&f.param, 0, 0),
            BufferRange::new(&f.grad, 0, 0),
        );
        let err = assert_err!(
            Optimizer::new(ctx, SGD::default(), &[other, tensor]),
            Error::MissingUsage {
                tensor: 1,
                role: r,
                usage: "STORAGE"
            } if *r == role
        );
        assert!(err.to_string().contains("STORAGE"), "{err}");
        f.assert_untouched(ctx, role);
        assert!(bits(ctx, &plain) == plain_before);
    }
}

#[test]
fn ranges_outside_their_buffer_or_unaligned() {
    let ctx = common::ctx();
    let mut rng = Rng::fresh("ranges_outside_their_buffer_or_unaligned");
    let f = Fixture::new(ctx, &mut rng, 100);
    let size = 400;
    let param = |offset, len| {
        Tensor::new(
            BufferRange::new(&f.param, offset, len),
            f.tensor(0, len).grad,
        )
    };
    let grad = |offset, len| {
        Tensor::new(
            f.tensor(0, len).param,
            BufferRange::new(&f.grad, offset, len),
        )
    };
    let cases = [
        ("parameter", param(0, 101), 0, 101),
        ("parameter", param(4 * 99, 2), 4 * 99, 2),
        ("parameter", param(4 * 100, 1), 4 * 100, 1),
        ("parameter", param(2, 10), 2, 10),
        ("parameter", param(0, u64::MAX), 0, u64::MAX),
        ("parameter", param(u64::MAX - 3, 1), u64::MAX - 3, 1),
        ("gradient", grad(4 * 50, 51), 4 * 50, 51),
        ("gradient", grad(6, 1), 6, 1),
        ("gradient", grad(1, 0), 1, 0),
        ("gradient", grad(4 * 101, 0), 4 * 101, 0),
    ];
    for (role, tensor, offset, len) in cases {
        assert_err!(
            Optimizer::new(ctx, RMSprop::default(), &[tensor]),
            Error::OutOfRange {
                tensor: 0,
                role: r,
                offset: o,
                len: l,
                buffer_size,
            } if *r == role && *o == offset && *l == len && *buffer_size == size
        );
        f.assert_untouched(ctx, &format!("{role} range at {offset} of {len}"));
    }
    // The last element, and an empty range at the very end, fit.
    Optimizer::new(ctx, RMSprop::default(), &[param(4 * 99, 1)]).unwrap();
    Optimizer::new(ctx, RMSprop::default(), &[f.tensor(0, 1), param(400, 0)]).unwrap();
}

#[test]
fn overlapping_written_ranges() {
    let ctx = common::ctx();
    let mut rng = Rng::fresh("overlapping_written_ranges");
    let f = Fixture::new(ctx, &mut rng, 400);
    let (p, g) = (&f.param, &f.grad);
    let two_params = "two parameter ranges";
    let param_grad = "a parameter range and a gradient range";
    let cases = [
        // Two parameters share elements 50..100.
        (
            vec![t((p, 0), (g, 0), 100), t((p, 50), (g, 100), 100)],
            0,
            1,
            two_params,
        ),
        // The same parameter range twice.
        (
            vec![t((p, 10), (g, 0), 5), t((p, 10), (g, 5), 5)],
            0,
            1,
            two_params,
        ),
        // A tensor whose gradient overlaps its own parameter.
        (vec![t((p, 0), (p, 99), 100)], 0, 0, param_grad),
        // A gradient range over another tensor's parameter, later in the list.
        (
            vec![t((p, 0), (g, 0), 50), t((p, 60), (p, 40), 50)],
            0,
            1,
            param_grad,
        ),
        // A gradient range over another tensor's parameter, earlier in the list.
        (
            vec![
                t((p, 300), (p, 10), 20),
                t((p, 320), (g, 0), 30),
                t((p, 0), (g, 30), 11),
            ],
            0,
            2,
            param_grad,
        ),
    ];
    for (tensors, first, second, what) in &cases {
        let err = assert_err!(
            Optimizer::new(ctx, AdamW::default(), tensors),
            Error::Overlap { first: a, second: b, what: w }
                if a == first && b == second && w == what
        );
        f.assert_untouched(ctx, &err.to_string());
    }
    // Across parameter groups, tensors are numbered over all groups.
    let groups = [
        ParamGroup::new(Adam::default(), vec![t((p, 0), (g, 0), 10)]),
        ParamGroup::new(Adam::default(), vec![t((p, 20), (g, 10), 10)]),
        ParamGroup::new(Adam::default(), vec![t((p, 25), (g, 20), 10)]),
    ];
    assert_err!(
        Optimizer::with_groups(ctx, &groups),
        Error::Overlap {
            first: 1,
            second: 2,
            what: "two parameter ranges"
        }
    );
    f.assert_untouched(ctx, "overlapping groups");

    // Allowed: touching ranges, gradients shared between tensors or overlapping each other,
    // and equal offsets in different buffers.
    let fine = [
        vec![t((p, 0), (g, 0), 10), t((p, 10), (g, 10), 10)],
        vec![t((p, 0), (g, 0), 10), t((p, 10), (g, 0), 10)],
        vec![t((p, 0), (g, 0), 10), t((p, 10), (g, 5), 10)],
        vec![t((p, 0), (p, 10), 10), t((p, 30), (p, 15), 10)],
        vec![t((p, 0), (g, 0), 10), t((g, 20), (p, 20), 10)],
    ];
    for tensors in &fine {
        Optimizer::new(ctx, AdamW::default(), tensors)
            .unwrap_or_else(|e| panic!("{tensors:?}: {e}"));
    }
}

#[test]
fn tensors_sharing_one_gradient_range_step_correctly() {
    let ctx = common::ctx();
    let mut rng = Rng::fresh("tensors_sharing_one_gradient_range");
    let mut data = Data::random(&mut rng, &[500, 500], 4);
    for step in &mut data.grads {
        step[1] = step[0].clone();
    }
    let param = ctx.create_f32_buffer("param", &vec![POISON; 1010]).unwrap();
    let grad = ctx.create_f32_buffer("grad", &vec![POISON; 510]).unwrap();
    let places = [
        Place {
            param_at: 1,
            grad_at: 7,
            len: 500,
        },
        Place {
            param_at: 503,
            grad_at: 7,
            len: 500,
        },
    ];
    let config = SGD {
        lr: 0.1,
        momentum: 0.9,
        ..Default::default()
    };
    run_against_reference(ctx, config.into(), (&param, &grad), &places, &data, |_| {});
}

#[test]
fn params_and_grads_in_one_shared_buffer() {
    let ctx = common::ctx();
    let mut rng = Rng::fresh("params_and_grads_in_one_shared_buffer");
    let sizes = [300, 1, 1000, 257];
    // Parameter, gap, gradient, gap, ... at unaligned offsets.
    // Each gradient at the same lane of a vec4 as its parameter, so that every tensor runs
    // with vec4 access; each parameter one element after the previous gradient, so that they
    // share a vec4 that two invocations write and read lane by lane.
    let mut places = Vec::new();
    let mut at = 5;
    for &len in &sizes {
        let param_at = at;
        let grad_at = param_at + len + 4 - len % 4;
        places.push(Place {
            param_at,
            grad_at,
            len,
        });
        at = grad_at + len + 1;
    }
    let total = (at as usize).next_multiple_of(4);
    let configs: [OptimizerConfig; 2] = [
        AdamW {
            lr: 0.01,
            amsgrad: true,
            weight_decay: 0.1,
            ..Default::default()
        }
        .into(),
        RMSprop {
            lr: 0.01,
            centered: true,
            momentum: 0.9,
            weight_decay: 0.05,
            ..Default::default()
        }
        .into(),
    ];
    for config in configs {
        let data = Data::random(&mut rng, &sizes, 5);
        let shared = ctx
            .create_f32_buffer("shared", &vec![POISON; total])
            .unwrap();
        let vec4 = |opt: &mut Optimizer| {
            for k in 0..sizes.len() {
                assert_eq!(opt.tensor_access(k).unwrap(), Access::Vec4, "tensor {k}");
            }
        };
        let (opt, shared_result) =
            run_against_reference(ctx, config, (&shared, &shared), &places, &data, vec4);
        assert_eq!(opt.dispatches_per_step(), 1);

        let param = ctx
            .create_f32_buffer("param", &vec![POISON; total])
            .unwrap();
        let grad = ctx.create_f32_buffer("grad", &vec![POISON; total]).unwrap();
        let (opt, separate_result) =
            run_against_reference(ctx, config, (&param, &grad), &places, &data, vec4);
        assert_eq!(opt.dispatches_per_step(), 1);
        for (k, (a, b)) in shared_result.iter().zip(&separate_result).enumerate() {
            assert_same_bits(
                &format!("{config:?}: tensor {k}, shared vs separate buffers"),
                a,
                b,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parameter groups, update_group, indices
// ---------------------------------------------------------------------------------------------

#[test]
fn mixed_optimizer_types_and_empty_lists() {
    let ctx = common::ctx();
    let mut rng = Rng::fresh("mixed_optimizer_types_and_empty_lists");
    let f = Fixture::new(ctx, &mut rng, 100);
    let (a, b) = (f.tensor(0, 50), f.tensor(50, 50));
    for (second, found) in [
        (OptimizerConfig::from(SGD::default()), "SGD"),
        (AdamW::default().into(), "AdamW"),
        (RMSprop::default().into(), "RMSprop"),
    ] {
        let groups = [
            ParamGroup::new(Adam::default(), vec![a]),
            ParamGroup::new(Adam::default(), vec![]),
            ParamGroup::new(second, vec![b]),
        ];
        let err = assert_err!(
            Optimizer::with_groups(ctx, &groups),
            Error::MixedOptimizers { group: 2, expected: "Adam", found: x } if *x == found
        );
        f.assert_untouched(ctx, &err.to_string());
    }
    assert_err!(Optimizer::new(ctx, SGD::default(), &[]), Error::Input(_));
    assert_err!(Optimizer::with_groups(ctx, &[]), Error::Input(_));
    let empty_groups = [
        ParamGroup::new(SGD::default(), vec![]),
        ParamGroup::new(SGD::default(), vec![]),
    ];
    assert_err!(Optimizer::with_groups(ctx, &empty_groups), Error::Input(_));
    f.assert_untouched(ctx, "empty lists");
}

#[test]
fn update_group_errors_change_nothing() {
    let ctx = common::ctx();
    let mut rng = Rng::fresh("update_group_errors_change_nothing");
    let data = Data::random(&mut rng, &[300, 40], 3);
    let param = ctx.create_f32_buffer("param", &vec![POISON; 400]).unwrap();
    let grad = ctx.create_f32_buffer("grad", &vec![POISON; 400]).unwrap();
    let places = [
        Place {
            param_at: 0,
            grad_at: 0,
            len: 300,
        },
        Place {
            param_at: 350,
            grad_at: 350,
            len: 40,
        },
    ];
    let config: OptimizerConfig = Adam {
        lr: 0.01,
        weight_decay: 0.1,
        ..Default::default()
    }
    .into();
    // The failed updates happen before the steps; the steps must still follow `config`.
    let tamper = |opt: &mut Optimizer| {
        let before = opt.groups().to_vec();
        assert_err!(
            opt.update_group(0, |c| if let OptimizerConfig::Adam(a) = c {
                a.amsgrad = true;
                a.lr = 0.5;
            }),
            Error::StructuralChange {
                group: 0,
                what: "the set of state buffers"
            }
        );
        assert_eq!(opt.groups(), before);
        assert_err!(
            opt.update_group(0, |c| *c = AdamW::default().into()),
            Error::StructuralChange {
                group: 0,
                what: "the optimizer type"
            }
        );
        assert_eq!(opt.groups(), before);
        let err = assert_err!(opt.set_lr(0, -1.0), Error::InvalidHyperparameter(_));
        assert_eq!(err.to_string(), "Invalid learning rate: -1.0");
        assert_eq!(opt.groups(), before);
        assert_err!(opt.set_lr(0, f64::NAN), Error::InvalidHyperparameter(_));
        assert_eq!(opt.groups(), before);
        let err = assert_err!(
            opt.update_group(0, |c| if let OptimizerConfig::Adam(a) = c {
                a.betas = (1.0, 0.999);
                a.lr = 0.5;
            }),
            Error::InvalidHyperparameter(_)
        );
        assert_eq!(err.to_string(), "Invalid beta parameter at index 0: 1.0");
        assert_eq!(opt.groups(), before);
        assert_err!(
            opt.set_lr(1, 0.1),
            Error::NoSuchIndex {
                what: "group",
                index: 1,
                count: 1
            }
        );
        assert_err!(
            opt.update_group(7, |c| c.set_lr(0.1)),
            Error::NoSuchIndex {
                what: "group",
                index: 7,
                count: 1
            }
        );
        assert_eq!(opt.groups(), before);
        for index in [2, usize::MAX] {
            let no_tensor = |e: Error| match e {
                Error::NoSuchIndex {
                    what: "tensor",
                    index: i,
                    count: 2,
                } => i == index,
                _ => false,
            };
            assert!(no_tensor(opt.read_state(index).unwrap_err()));
            assert!(no_tensor(opt.step_count(index).unwrap_err()));
            assert!(no_tensor(opt.state_names(index).unwrap_err()));
            let state = opt.read_state(0).unwrap();
            assert!(no_tensor(opt.load_state(index, &state).unwrap_err()));
        }
        assert_eq!(opt.step_count(0).unwrap(), 0);
    };
    run_against_reference(ctx, config, (&param, &grad), &places, &data, tamper);
}

#[test]
fn structural_changes_of_sgd_and_rmsprop() {
    let ctx = common::ctx();
    let mut rng = Rng::fresh("structural_changes_of_sgd_and_rmsprop");
    let f = Fixture::new(ctx, &mut rng, 64);
    let tensors = [f.tensor(0, 64)];
    type Change = fn(&mut OptimizerConfig);
    let cases: [(OptimizerConfig, Change); 4] = [
        (SGD::default().into(), |c| {
            if let OptimizerConfig::SGD(s) = c {
                s.momentum = 0.9;
            }
        }),
        (
            SGD {
                momentum: 0.9,
                ..Default::default()
            }
            .into(),
            |c| {
                if let OptimizerConfig::SGD(s) = c {
                    s.momentum = 0.0;
                }
            },
        ),
        (RMSprop::default().into(), |c| {
            if let OptimizerConfig::RMSprop(r) = c {
                r.centered = true;
            }
        }),
        (RMSprop::default().into(), |c| {
            if let OptimizerConfig::RMSprop(r) = c {
                r.momentum = 0.5;
            }
        }),
    ];
    for (config, change) in cases {
        let mut opt = Optimizer::new(ctx, config, &tensors).unwrap();
        assert_err!(
            opt.update_group(0, change),
            Error::StructuralChange {
                group: 0,
                what: "the set of state buffers"
            }
        );
        assert_eq!(opt.groups(), [config]);
    }
    // Changes within a kernel are fine.
    let mut opt = Optimizer::new(
        ctx,
        SGD {
            momentum: 0.9,
            ..Default::default()
        },
        &tensors,
    )
    .unwrap();
    opt.update_group(0, |c| {
        if let OptimizerConfig::SGD(s) = c {
            s.momentum = 0.5;
            s.nesterov = true;
        }
    })
    .unwrap();
    opt.set_lr(0, 0.25).unwrap();
    assert_eq!(
        opt.groups(),
        [SGD {
            lr: 0.25,
            momentum: 0.5,
            nesterov: true,
            ..Default::default()
        }
        .into()]
    );
    f.assert_untouched(ctx, "building optimizers without stepping them");
}

// ---------------------------------------------------------------------------------------------
// load_state
// ---------------------------------------------------------------------------------------------

#[test]
fn load_state_errors_change_nothing() {
    let ctx = common::ctx();
    let mut rng = Rng::fresh("load_state_errors_change_nothing");
    let data = Data::random(&mut rng, &[300, 77], 3);
    let param = ctx.create_f32_buffer("param", &vec![POISON; 400]).unwrap();
    let grad = ctx.create_f32_buffer("grad", &vec![POISON; 400]).unwrap();
    let places = [
        Place {
            param_at: 0,
            grad_at: 0,
            len: 300,
        },
        Place {
            param_at: 310,
            grad_at: 320,
            len: 77,
        },
    ];
    let config = Adam {
        lr: 0.01,
        ..Default::default()
    }
    .into();
    let (mut opt, _) = run_against_reference(ctx, config, (&param, &grad), &places, &data, |_| {});
    let before = [opt.read_state(0).unwrap(), opt.read_state(1).unwrap()];
    let params_before = bits(ctx, &param);
    assert_eq!(before[1].step, 3);
    assert!(before[1].buffers["exp_avg"].iter().any(|&v| v != 0.0));

    // Each bad state starts with a valid `exp_avg` of new values, so a partial write would show.
    let state = |buffers: &[(&str, usize)]| TensorState {
        step: 99,
        buffers: buffers
            .iter()
            .map(|&(name, len)| (name.to_string(), vec![42.0; len]))
            .collect(),
        ..Default::default()
    };
    let unknown = state(&[("exp_avg", 77), ("exp_avg_sq", 77), ("momentum_buffer", 77)]);
    let err = assert_err!(
        opt.load_state(1, &unknown),
        Error::UnknownState { name, optimizer: "Adam", known }
            if name == "momentum_buffer" && known == "exp_avg, exp_avg_sq"
    );
    assert!(err.to_string().contains("momentum_buffer"), "{err}");
    let with_max_exp_avg_sq = state(&[("exp_avg", 77), ("exp_avg_sq", 77), ("max_exp_avg_sq", 77)]);
    assert_err!(
        opt.load_state(1, &with_max_exp_avg_sq),
        Error::UnknownState { .. }
    );
    assert_err!(
        opt.load_state(1, &state(&[("exp_avg", 77), ("exp_avg_sq", 76)])),
        Error::StateLength { name, tensor: 1, expected: 77, found: 76 } if name == "exp_avg_sq"
    );
    assert_err!(
        opt.load_state(1, &state(&[("exp_avg", 77), ("exp_avg_sq", 300)])),
        Error::StateLength {
            tensor: 1,
            expected: 77,
            found: 300,
            ..
        }
    );
    assert_err!(
        opt.load_state(1, &state(&[("exp_avg", 0), ("exp_avg_sq", 77)])),
        Error::StateLength { name, tensor: 1, expected: 77, found: 0 } if name == "exp_avg"
    );
    let err = assert_err!(
        opt.load_state(1, &state(&[("exp_avg", 77)])),
        Error::Input(_)
    );
    assert!(err.to_string().contains("exp_avg_sq"), "{err}");
    assert_err!(opt.load_state(1, &state(&[])), Error::Input(_));
    // Step counts the GPU cannot keep.
    for step in [u64::MAX, u64::from(u32::MAX), wgpu_optim::MAX_STEP + 1] {
        let mut huge = state(&[("exp_avg", 77), ("exp_avg_sq", 77)]);
        huge.step = step;
        let err = assert_err!(opt.load_state(1, &huge), Error::Input(_));
        assert!(err.to_string().contains(&step.to_string()), "{err}");
    }

    for (k, state) in before.iter().enumerate() {
        assert_eq!(&opt.read_state(k).unwrap(), state, "state of tensor {k}");
        assert_eq!(opt.step_count(k).unwrap(), 3);
    }
    assert!(
        bits(ctx, &param) == params_before,
        "load_state touched the parameters"
    );

    // A valid state still loads, exactly.
    let good = TensorState {
        step: 10,
        buffers: [
            ("exp_avg".to_string(), rng.normals(77)),
            (
                "exp_avg_sq".to_string(),
                rng.normals(77).iter().map(|v| v * v).collect(),
            ),
        ]
        .into(),
        ..Default::default()
    };
    opt.load_state(1, &good).unwrap();
    assert_eq!(opt.read_state(1).unwrap(), good);
    assert_eq!(opt.read_state(0).unwrap(), before[0]);
}

#[test]
fn the_largest_step_count_loads_and_steps() {
    let ctx = common::ctx();
    let param = ctx.create_f32_buffer("param", &[1.0, -2.0]).unwrap();
    let grad = ctx.create_f32_buffer("grad", &[0.5, -0.5]).unwrap();
    let config = OptimizerConfig::from(Adam {
        lr: 0.1,
        ..Default::default()
    });
    let mut opt = Optimizer::new(ctx, config, &[t((&param, 0), (&grad, 0), 2)]).unwrap();
    let buffers = [("exp_avg", [0.1f32, -0.2]), ("exp_avg_sq", [0.01, 0.04])];
    let loaded = TensorState {
        step: wgpu_optim::MAX_STEP,
        buffers: buffers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect(),
        ..Default::default()
    };
    let mut state = TensorState {
        step: wgpu_optim::MAX_STEP,
        buffers: buffers
            .iter()
            .map(|(n, v)| (n.to_string(), widen(v)))
            .collect(),
        ..Default::default()
    };
    opt.load_state(0, &loaded).unwrap();
    opt.step_submit().unwrap();
    // One more step fits in 32 bits; the bias corrections are 1 by then.
    let mut want = vec![1.0, -2.0];
    reference::step(&config, &mut state, &mut want, &[0.5, -0.5]);
    let got = read_all(ctx, &param);
    assert_close("parameters after step 2^32 - 1", &got, &want, 1e-6, 1e-6);
    assert_eq!(opt.step_count(0).unwrap(), u64::from(u32::MAX));
}

// ---------------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------------

#[test]
fn restoring_a_snapshot_of_another_optimizer_is_an_error() {
    let ctx = common::ctx();
    let mut rng = Rng::fresh("restoring_a_snapshot_of_another_optimizer");
    let f = Fixture::new(ctx, &mut rng, 200);
    let other = Fixture::new(ctx, &mut rng, 200);
    let mut adam = Optimizer::new(ctx, Adam::default(), &[f.tensor(0, 100)]).unwrap();
    adam.step_submit().unwrap();
    let adam_state = adam.read_state(0).unwrap();
    let params = bits(ctx, &f.param);
    // Longer and shorter tensors, another type, and the same layout in another optimizer.
    let snapshots = [
        Optimizer::new(ctx, Adam::default(), &[other.tensor(0, 150)]),
        Optimizer::new(ctx, Adam::default(), &[other.tensor(0, 50)]),
        Optimizer::new(ctx, sgd(|c| c.momentum = 0.9), &[other.tensor(0, 100)]),
        Optimizer::new(ctx, Adam::default(), &[other.tensor(0, 100)]),
    ]
    .map(|o| o.unwrap().snapshot().unwrap());
    for snapshot in &snapshots {
        let err = assert_err!(adam.restore(snapshot), Error::Input(_));
        assert!(err.to_string().contains("another optimizer"), "{err}");
    }
    assert!(
        bits(ctx, &f.param) == params,
        "a refused restore changed parameters"
    );
    assert_eq!(adam.read_state(0).unwrap(), adam_state);
    // And the other way round: an Adam snapshot into SGD.
    let mut sgd_opt =
        Optimizer::new(ctx, sgd(|c| c.momentum = 0.9), &[other.tensor(100, 100)]).unwrap();
    assert_err!(sgd_opt.restore(&adam.snapshot().unwrap()), Error::Input(_));
    // Its own snapshot restores.
    let own = adam.snapshot().unwrap();
    adam.step_submit().unwrap();
    adam.restore(&own).unwrap();
    assert_eq!(adam.read_state(0).unwrap(), adam_state);
    assert!(bits(ctx, &f.param) == params);
}

// ---------------------------------------------------------------------------------------------
// Clipping and grad scaling
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_clipping_and_grad_scalers_are_refused_and_change_nothing() {
    let ctx = common::ctx();
    let mut rng = Rng::fresh("bad_clipping_and_grad_scalers");
    let f = Fixture::new(ctx, &mut rng, 100);
    let mut opt = Optimizer::new(ctx, Adam::default(), &[f.tensor(0, 100)]).unwrap();
    let good_clip = ClipGrad::norm(1.0);
    let good_scaler = GradScaler {
        init_scale: 256.0,
        ..Default::default()
    };
    opt.set_clip_grad(Some(good_clip)).unwrap();
    opt.set_grad_scaler(Some(good_scaler)).unwrap();
    let bad_clips = [
        (
            ClipGrad::norm(-1.0),
            "max_norm must be a finite number >= 0, got -1.0",
        ),
        (
            ClipGrad::norm(f64::NAN),
            "max_norm must be a finite number >= 0, got nan",
        ),
        (
            ClipGrad::Norm {
                max_norm: f64::INFINITY,
                norm_type: NormType::Inf,
            },
            "max_norm must be a finite number >= 0, got inf",
        ),
        (
            ClipGrad::value(-0.5),
            "clip_value must be a finite number >= 0, got -0.5",
        ),
    ];
    for (clip, message) in bad_clips {
        let err = assert_err!(
            opt.set_clip_grad(Some(clip)),
            Error::InvalidHyperparameter(_)
        );
        assert_eq!(err.to_string(), message);
        assert_eq!(opt.clip_grad(), Some(good_clip));
    }
    let scaler = |f: fn(&mut GradScaler)| {
        let mut s = GradScaler::default();
        f(&mut s);
        s
    };
    let bad_scalers = [
        (
            scaler(|s| s.growth_factor = 1.0),
            "The growth factor must be > 1.0.",
        ),
        (
            scaler(|s| s.growth_factor = 0.5),
            "The growth factor must be > 1.0.",
        ),
        (
            scaler(|s| s.growth_factor = f64::NAN),
            "The growth factor must be > 1.0.",
        ),
        (
            scaler(|s| s.backoff_factor = 1.0),
            "The backoff factor must be < 1.0.",
        ),
        (
            scaler(|s| s.backoff_factor = 0.0),
            "The backoff factor must be > 0.0.",
        ),
        (
            scaler(|s| s.backoff_factor = -0.5),
            "The backoff factor must be > 0.0.",
        ),
        (
            scaler(|s| s.backoff_factor = f64::NAN),
            "The backoff factor must be < 1.0.",
        ),
        (
            scaler(|s| s.init_scale = 0.0),
            "init_scale must be a positive number that float32 holds, got 0.0",
        ),
        (
            scaler(|s| s.init_scale = 1e39),
            "init_scale must be a positive number that float32 holds, got 1e+39",
        ),
        (
            scaler(|s| s.growth_interval = 0),
            "growth_interval must be at least 1",
        ),
    ];
    for (bad, message) in bad_scalers {
        let err = assert_err!(
            opt.set_grad_scaler(Some(bad)),
            Error::InvalidHyperparameter(_)
        );
        assert_eq!(err.to_string(), message, "{bad:?}");
        assert_eq!(opt.grad_scaler(), Some(good_scaler));
    }
    let bad_state = [
        GradScalerState {
            scale: 0.0,
            growth_tracker: 0,
        },
        GradScalerState {
            scale: f32::INFINITY,
            growth_tracker: 0,
        },
        GradScalerState {
            scale: 1.0,
            growth_tracker: -1,
        },
    ];
    for state in bad_state {
        let err = assert_err!(opt.load_grad_scaler(state), Error::Input(_));
        assert!(
            err.to_string().contains("the scale must be positive"),
            "{err}"
        );
    }
    assert_eq!(
        opt.read_grad_scaler().unwrap(),
        GradScalerState {
            scale: 256.0,
            growth_tracker: 0
        }
    );
    // A disabled scaler is not checked, as in PyTorch, and turns scaling off (scale 1); then
    // there is no scaler state to load.
    opt.set_grad_scaler(Some(scaler(|s| {
        s.enabled = false;
        s.growth_factor = 0.5;
    })))
    .unwrap();
    assert_eq!(opt.grad_scaler(), None);
    let good_state = GradScalerState {
        scale: 8.0,
        growth_tracker: 1,
    };
    let err = assert_err!(opt.load_grad_scaler(good_state), Error::Input(_));
    assert!(err.to_string().contains("no grad scaler is set"), "{err}");
    assert_eq!(
        opt.read_grad_scaler().unwrap(),
        GradScalerState {
            scale: 1.0,
            growth_tracker: 0
        }
    );
    f.assert_untouched(ctx, "refused clipping and grad scalers");
    // Norm types other than 2 and inf.
    for text in ["1", "0", "-inf", "3.0", "two"] {
        assert_err!(text.parse::<NormType>(), Error::InvalidHyperparameter(_));
    }
    assert!(serde_json::from_str::<GradScaler>(r#"{"init_scale": 8.0, "growth": 2}"#).is_err());
}

// ---------------------------------------------------------------------------------------------
// Device limits
// ---------------------------------------------------------------------------------------------

/// Maximum storage binding (64 KiB) and buffer (1 MiB) sizes of the simulated small device.
const MAX_BINDING: u64 = 1 << 16;
const MAX_BUFFER: u64 = 1 << 20;

fn small_device() -> Context {
    let ctx = context_with_limits(|l| {
        l.max_storage_buffer_binding_size = MAX_BINDING;
        l.max_buffer_size = MAX_BUFFER;
    });
    assert_eq!(ctx.limits().max_storage_buffer_binding_size, MAX_BINDING);
    assert_eq!(ctx.limits().max_buffer_size, MAX_BUFFER);
    ctx
}

#[test]
fn buffers_larger_than_the_device_allows_are_refused() {
    let ctx = &small_device();
    let too_many = vec![0.0; (MAX_BUFFER / 4) as usize + 1];
    let err = assert_err!(
        ctx.create_f32_buffer("too big", &too_many),
        Error::TooLarge {
            bytes,
            limit: MAX_BUFFER,
            limit_name: "max_buffer_size",
            ..
        } if *bytes == MAX_BUFFER + 4
    );
    assert!(err.to_string().contains("max_buffer_size"), "{err}");
    ctx.create_f32_buffer("just fits", &too_many[1..]).unwrap();
}

#[test]
fn tensors_larger_than_a_binding_are_split_across_dispatches() {
    let ctx = &small_device();
    let mut rng = Rng::fresh("tensors_larger_than_a_binding");
    // Configurations with the length of the large tensor: 400 KB (six bindings), or 320 KB
    // with three state buffers so that `read_state` stays under the 1 MiB buffer limit (see
    // `reading_back_more_than_max_buffer_size`).
    let configs: [(OptimizerConfig, u64); 6] = [
        (
            SGD {
                lr: 0.05,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 0.01,
                ..Default::default()
            }
            .into(),
            100_000,
        ),
        (
            Adam {
                lr: 0.01,
                weight_decay: 0.1,
                maximize: true,
                ..Default::default()
            }
            .into(),
            100_000,
        ),
        (
            RMSprop {
                lr: 0.01,
                centered: true,
                ..Default::default()
            }
            .into(),
            100_000,
        ),
        (
            Adagrad {
                lr: 0.1,
                lr_decay: 0.01,
                initial_accumulator_value: 0.1,
                ..Default::default()
            }
            .into(),
            100_000,
        ),
        (
            AdamW {
                lr: 0.01,
                amsgrad: true,
                ..Default::default()
            }
            .into(),
            80_000,
        ),
        (
            RMSprop {
                lr: 0.01,
                centered: true,
                momentum: 0.5,
                ..Default::default()
            }
            .into(),
            80_000,
        ),
    ];
    for (config, big) in configs {
        // The large tensor at unaligned offsets, then a small one in the same buffers.
        let places = [
            Place {
                param_at: 3,
                grad_at: 11,
                len: big,
            },
            Place {
                param_at: big + 10,
                grad_at: big + 20,
                len: 1000,
            },
        ];
        let total = (big + 1100) as usize;
        let param = ctx
            .create_f32_buffer("param", &vec![POISON; total])
            .unwrap();
        let grad = ctx.create_f32_buffer("grad", &vec![POISON; total]).unwrap();
        let data = Data::random(&mut rng, &places.map(|p| p.len), 5);
        let (mut opt, _) =
            run_against_reference(ctx, config, (&param, &grad), &places, &data, |_| {});
        assert!(
            opt.dispatches_per_step() > 1,
            "{config:?}: {} dispatch",
            opt.dispatches_per_step()
        );
        // The state of a split tensor loads and reads back across its pieces.
        let state = TensorState {
            step: 7,
            buffers: config
                .state_names()
                .iter()
                .map(|name| (name.to_string(), rng.normals(big as usize)))
                .collect(),
            ..Default::default()
        };
        opt.load_state(0, &state).unwrap();
        assert_eq!(opt.read_state(0).unwrap(), state, "{config:?}");
    }
}

/// Reading back more than `max_buffer_size` bytes at once (here AMSGrad's three 400 KB state
/// buffers against a 1 MiB limit) must work: the readback is split into chunks.
#[test]
fn reading_back_more_than_max_buffer_size() {
    let ctx = &small_device();
    let n = 100_000;
    let param = ctx.create_f32_buffer("param", &vec![1.0; n]).unwrap();
    let grad = ctx.create_f32_buffer("grad", &vec![0.5; n]).unwrap();
    let tensor = Tensor::new(BufferRange::whole(&param), BufferRange::whole(&grad));
    let config = Adam {
        amsgrad: true,
        ..Default::default()
    };
    let opt = Optimizer::new(ctx, config, &[tensor]).unwrap();
    let state = opt.read_state(0).unwrap();
    for (name, values) in &state.buffers {
        assert!(
            values.len() == n && values.iter().all(|&v| v == 0.0),
            "{name}"
        );
    }
    let both = ctx
        .read_f32(&[(&param, 0, n as u64), (&grad, 0, n as u64)])
        .unwrap();
    assert_eq!(both.len(), 2 * n);
    assert!(both[..n].iter().all(|&v| v == 1.0) && both[n..].iter().all(|&v| v == 0.5));
}

#[test]
fn every_kernel_runs_on_four_storage_buffers_and_none_on_three() {
    // Every kernel binds four storage buffers: step coefficients, parameters, gradients, and
    // all state buffers in one; WebGPU's downlevel limit is 4.
    let ctx = &context_with_limits(|l| l.max_storage_buffers_per_shader_stage = 4);
    assert_eq!(ctx.limits().max_storage_buffers_per_shader_stage, 4);
    let mut rng = Rng::fresh("every_kernel_runs_on_four_storage_buffers");
    let places = [Place {
        param_at: 1,
        grad_at: 2,
        len: 700,
    }];
    let largest: [OptimizerConfig; 4] = [
        Adam {
            lr: 0.01,
            amsgrad: true,
            ..Default::default()
        }
        .into(),
        AdamW {
            lr: 0.01,
            amsgrad: true,
            ..Default::default()
        }
        .into(),
        RMSprop {
            centered: true,
            momentum: 0.9,
            ..Default::default()
        }
        .into(),
        SGD {
            lr: 0.1,
            momentum: 0.9,
            ..Default::default()
        }
        .into(),
    ];
    for config in largest {
        let param = ctx.create_f32_buffer("param", &vec![POISON; 710]).unwrap();
        let grad = ctx.create_f32_buffer("grad", &vec![POISON; 710]).unwrap();
        let data = Data::random(&mut rng, &[700], 3);
        run_against_reference(ctx, config, (&param, &grad), &places, &data, |_| {});
    }

    let ctx = &context_with_limits(|l| l.max_storage_buffers_per_shader_stage = 3);
    let param = ctx.create_f32_buffer("param", &rng.normals(64)).unwrap();
    let grad = ctx.create_f32_buffer("grad", &rng.normals(64)).unwrap();
    let before = (bits(ctx, &param), bits(ctx, &grad));
    let tensor = Tensor::new(
        BufferRange::new(&param, 0, 64),
        BufferRange::new(&grad, 0, 64),
    );
    for config in largest.into_iter().chain([SGD::default().into()]) {
        let err = assert_err!(
            Optimizer::new(ctx, config, &[tensor]),
            Error::Unsupported(_)
        );
        assert!(
            err.to_string()
                .contains("max_storage_buffers_per_shader_stage"),
            "{config:?}: {err}"
        );
        assert!(
            (bits(ctx, &param), bits(ctx, &grad)) == before,
            "{config:?}: buffers changed"
        );
    }
}

/// Scalar state (NAdam's mu_product, ASGD's eta and mu) in `load_state`: missing, foreign or
/// another optimizer's scalar is an error that changes nothing; a full state round-trips.
#[test]
fn load_state_checks_scalar_state() {
    let ctx = common::ctx();
    let param = ctx.create_f32_buffer("param", &[0.5; 8]).unwrap();
    let grad = ctx.create_f32_buffer("grad", &[0.25; 8]).unwrap();
    let tensor = Tensor::new(
        BufferRange::new(&param, 0, 8),
        BufferRange::new(&grad, 0, 8),
    );
    let mut opt = Optimizer::new(ctx, NAdam::default(), &[tensor]).unwrap();
    opt.step_submit().unwrap();
    let before = opt.read_state(0).unwrap();
    assert_eq!(before.scalars.keys().collect::<Vec<_>>(), ["mu_product"]);
    let mut missing = before.clone();
    missing.scalars.clear();
    let err = assert_err!(opt.load_state(0, &missing), Error::Input(_));
    assert!(err.to_string().contains("mu_product"), "{err}");
    let mut foreign = before.clone();
    foreign.scalars.insert("eta".into(), 0.1);
    assert_err!(opt.load_state(0, &foreign), Error::UnknownState { .. });
    assert_eq!(opt.read_state(0).unwrap(), before);
    let mut loaded = before.clone();
    loaded.scalars.insert("mu_product".into(), 0.25);
    loaded.step = 3;
    opt.load_state(0, &loaded).unwrap();
    assert_eq!(opt.read_state(0).unwrap(), loaded);
}

#[test]
fn a_factored_tensor_larger_than_one_binding_is_unsupported() {
    // Adafactor never splits a tensor whose state is factored (its rows and columns are
    // reduced whole), so it must fit one storage binding; a vector of the same length is split
    // and runs. The error names the tensor and the limit.
    let ctx = &context_with_limits(|l| l.max_storage_buffer_binding_size = 1 << 20);
    let n = 600 * 600;
    let param = ctx.create_f32_buffer("param", &vec![0.5; n]).unwrap();
    let grad = ctx.create_f32_buffer("grad", &vec![0.1; n]).unwrap();
    let tensor = Tensor::new(BufferRange::whole(&param), BufferRange::whole(&grad)).named("w");
    let config = Adafactor::default();
    let err = assert_err!(
        Optimizer::new(ctx, config, &[tensor.with_shape(&[600, 600])]),
        Error::Unsupported(m) if m.contains("must fit one storage binding"),
    );
    assert!(
        err.to_string().contains("\"w\" of shape [600, 600]"),
        "{err}"
    );
    let mut opt = Optimizer::new(ctx, config, &[tensor]).unwrap();
    assert!(opt.dispatches_per_step() > 1);
    // A row longer than a workgroup's loop allows is an error too, within the full limits.
    let ctx = common::ctx();
    let long = 65_535 * 256 + 1;
    let param = ctx.create_f32_buffer("param", &vec![0.5; long]).unwrap();
    let grad = ctx.create_f32_buffer("grad", &vec![0.1; long]).unwrap();
    let row = Tensor::new(BufferRange::whole(&param), BufferRange::whole(&grad))
        .with_shape(&[1, 16_776_961]);
    assert_err!(
        Optimizer::new(ctx, config, &[row]),
        Error::Unsupported(m) if m.contains("lines of at most 16776960 elements"),
    );
    opt.step_submit().unwrap();
    assert_eq!(opt.read_state(0).unwrap().step, 1);
}

#[test]
fn muon_takes_matrices_that_fit_one_binding() {
    // PyTorch's message for a tensor of other than two dimensions (a tensor given no shape
    // is a vector); a matrix larger than one binding is unsupported (Muon's products read a
    // tensor whole), naming the tensor. Nothing is written.
    let ctx = common::ctx();
    let param = ctx.create_f32_buffer("param", &[0.5; 24]).unwrap();
    let grad = ctx.create_f32_buffer("grad", &[0.1; 24]).unwrap();
    let before = bits(ctx, &param);
    let tensor = Tensor::new(BufferRange::whole(&param), BufferRange::whole(&grad));
    let config = Muon::default();
    for (shape, size) in [(None, "[24]"), (Some(&[2, 3, 4][..]), "[2, 3, 4]")] {
        let t = match shape {
            Some(s) => tensor.with_shape(s),
            None => tensor,
        };
        let err = assert_err!(Optimizer::new(ctx, config, &[t]), Error::Input(_));
        assert_eq!(
            err.to_string(),
            format!(
                "Muon only supports 2D parameters whereas we found a parameter with size: torch.Size({size})"
            )
        );
    }
    assert!(bits(ctx, &param) == before);
    let small = &context_with_limits(|l| l.max_storage_buffer_binding_size = 1 << 20);
    let n = 600 * 600;
    let param = small.create_f32_buffer("param", &vec![0.5; n]).unwrap();
    let grad = small.create_f32_buffer("grad", &vec![0.1; n]).unwrap();
    let big = Tensor::new(BufferRange::whole(&param), BufferRange::whole(&grad))
        .named("w")
        .with_shape(&[600, 600]);
    let err = assert_err!(
        Optimizer::new(small, config, &[big]),
        Error::Unsupported(m) if m.contains("is stepped whole, so its 360000 elements must fit one storage binding"),
    );
    assert!(
        err.to_string().contains("\"w\" of shape [600, 600]"),
        "{err}"
    );
}

#[test]
fn muon_arguments_get_pytorchs_messages() {
    let parse = |json: &str| serde_json::from_str::<OptimizerConfig>(json);
    let err = parse(r#"{"type": "Muon", "adjust_lr_fn": "bogus"}"#).unwrap_err();
    assert!(
        err.to_string()
            .contains("Adjust learning rate function bogus is not supported"),
        "{err}"
    );
    let config: OptimizerConfig =
        parse(r#"{"type": "Muon", "adjust_lr_fn": "match_rms_adamw", "ns_steps": 3}"#).unwrap();
    assert_eq!(
        config,
        Muon {
            adjust_lr_fn: Some(AdjustLr::MatchRmsAdamw),
            ns_steps: 3,
            ..Default::default()
        }
        .into()
    );
    // Muon takes no foreach (PyTorch's constructor has none).
    assert!(parse(r#"{"type": "Muon", "foreach": false}"#).is_err());
    for (json, message) in [
        (
            r#"{"type": "Muon", "lr": -1}"#,
            "Learning rate should be >= 0 but is: -1.0",
        ),
        (
            r#"{"type": "Muon", "momentum": -0.5}"#,
            "momentum should be >= 0 but is: -0.5",
        ),
        (
            r#"{"type": "Muon", "weight_decay": -0.1}"#,
            "weight decay should be >= 0 but is: -0.1",
        ),
        (
            r#"{"type": "Muon", "ns_steps": 100}"#,
            "Number of steps must be less than 100 for computational efficiency",
        ),
    ] {
        let err = parse(json).unwrap().validate().unwrap_err();
        assert!(
            matches!(&err, Error::InvalidHyperparameter(m) if m == message),
            "{json}: {err}"
        );
    }
    // Values PyTorch takes, then fails on at the step (beyond float32): errors here, not NaN.
    for (json, what) in [
        (r#"{"type": "Muon", "momentum": 1e300}"#, "momentum"),
        (r#"{"type": "Muon", "eps": 1e300}"#, "eps"),
        (
            r#"{"type": "Muon", "lr": 1, "weight_decay": 1e300}"#,
            "1 - lr * weight_decay",
        ),
        (
            r#"{"type": "Muon", "ns_coefficients": [1, 1e300, 1]}"#,
            "ns_coefficients",
        ),
    ] {
        let err = parse(json).unwrap().validate().unwrap_err();
        assert!(
            matches!(&err, Error::InvalidHyperparameter(m)
                if m.starts_with(&format!("Invalid {what}: ")) && m.contains("float32")),
            "{json}: {err}"
        );
    }
}

#[test]
fn muon_products_are_fixed_once_built() {
    // ns_steps, ns_coefficients and adjust_lr_fn shape the recorded products and the segment
    // tables: changing them is a structural change, refused with nothing changed; the learning
    // rate and the momentum change freely.
    let ctx = common::ctx();
    let param = ctx.create_f32_buffer("param", &[0.5; 6]).unwrap();
    let grad = ctx.create_f32_buffer("grad", &[0.1; 6]).unwrap();
    let tensor =
        Tensor::new(BufferRange::whole(&param), BufferRange::whole(&grad)).with_shape(&[2, 3]);
    let mut opt = Optimizer::new(ctx, Muon::default(), &[tensor]).unwrap();
    let changes: [fn(&mut Muon); 3] = [
        |m| m.ns_steps = 4,
        |m| m.ns_coefficients.0 = 3.0,
        |m| m.adjust_lr_fn = Some(AdjustLr::SpectralUnclamped),
    ];
    for change in changes {
        assert_err!(
            opt.update_group(0, |c| {
                if let OptimizerConfig::Muon(m) = c {
                    change(m);
                }
            }),
            Error::StructuralChange { .. },
        );
        assert_eq!(opt.groups()[0], Muon::default().into());
    }
    opt.update_group(0, |c| {
        if let OptimizerConfig::Muon(m) = c {
            m.momentum = 0.5;
            m.lr = 0.1;
        }
    })
    .unwrap();
}

#[test]
fn lamb_pre_norm_is_the_optimizers_and_refuses_other_clippings() {
    // pre_norm scales the gradients of every group together: the groups must agree on it, it
    // cannot be turned on or off once built, and its norm is of gradients clipped by the
    // 2-norm only. Each misuse is an error that changes nothing.
    let ctx = common::ctx();
    let param = ctx.create_f32_buffer("param", &[0.5; 8]).unwrap();
    let grad = ctx.create_f32_buffer("grad", &[0.1; 8]).unwrap();
    let a = t((&param, 0), (&grad, 0), 4);
    let b = t((&param, 4), (&grad, 4), 4);
    let on = Lamb {
        pre_norm: true,
        ..Default::default()
    };
    let groups = [
        ParamGroup::new(on, vec![a]),
        ParamGroup::new(Lamb::default(), vec![b]),
    ];
    let e = Optimizer::with_groups(ctx, &groups).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("parameter group 1: pre_norm differs from group 0's"),
        "{e}"
    );
    let mut opt = Optimizer::new(ctx, on, &[a, b]).unwrap();
    for clip in [
        ClipGrad::value(1.0),
        ClipGrad::Norm {
            max_norm: 1.0,
            norm_type: NormType::Inf,
        },
    ] {
        let e = opt.set_clip_grad(Some(clip)).unwrap_err();
        assert!(e.to_string().contains("pre_norm cannot be combined"), "{e}");
        assert_eq!(opt.clip_grad(), None);
    }
    opt.set_clip_grad(Some(ClipGrad::norm(1.0))).unwrap();
    let changes: [fn(&mut Lamb); 2] = [|l| l.pre_norm = false, |l| l.max_grad_norm = 0.0];
    for change in changes {
        assert_err!(
            opt.update_group(0, |c| {
                if let OptimizerConfig::Lamb(l) = c {
                    change(l);
                }
            }),
            Error::StructuralChange { .. },
        );
        assert_eq!(opt.groups()[0], on.into());
    }
    opt.update_group(0, |c| {
        if let OptimizerConfig::Lamb(l) = c {
            l.max_grad_norm = 2.0;
        }
    })
    .unwrap();
}
