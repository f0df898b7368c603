//! The step as training loops record it: many steps in one encoder, encoders dropped without a
//! submit, the grad scaler's buffer, and bit-identical results from the same inputs.

mod common;

use common::{Rng, assert_as_close_as_f32, bits, ctx, read_all, write};
use wgpu_optim::{
    Adam, AdamWScheduleFree, BufferRange, ClipGrad, Context, GradScaler, GradScalerState,
    Optimizer, OptimizerConfig, SGD, Tensor, TensorState, reference, reference::Real,
};

/// Two tensors at unaligned offsets in one parameter and one gradient buffer, with random
/// parameters and gradients.
struct Setup {
    param: wgpu::Buffer,
    grad: wgpu::Buffer,
    init: Vec<f32>,
    grads: Vec<f32>,
}

const LAYOUT: [(u64, u64); 2] = [(1, 300), (303, 1001)];
const TOTAL: usize = 1308;

impl Setup {
    fn new(ctx: &Context, rng: &mut Rng) -> Self {
        let init = rng.normals(TOTAL);
        let grads: Vec<f32> = rng.normals(TOTAL).iter().map(|v| v * 0.5).collect();
        Self {
            param: ctx.create_f32_buffer("param", &init).unwrap(),
            grad: ctx.create_f32_buffer("grad", &grads).unwrap(),
            init,
            grads,
        }
    }

    fn tensors(&self) -> Vec<Tensor<'_>> {
        LAYOUT
            .iter()
            .map(|&(at, n)| {
                Tensor::new(
                    BufferRange::new(&self.param, at * 4, n),
                    BufferRange::new(&self.grad, at * 4, n),
                )
            })
            .collect()
    }

    /// The parameters after the reference takes a step with each of `lrs` on the fixed
    /// gradients, in f64 and in f32.
    fn reference(&self, config: OptimizerConfig, lrs: &[f64]) -> Want {
        Want {
            f64: self.reference_in(config, lrs),
            f32: self.reference_in(config, lrs),
        }
    }

    fn reference_in<F: Real>(&self, config: OptimizerConfig, lrs: &[f64]) -> Vec<F> {
        let mut params: Vec<F> = self.init.iter().map(|&v| F::of(f64::from(v))).collect();
        let mut states = vec![TensorState::<F>::default(); LAYOUT.len()];
        for &lr in lrs {
            let mut c = config;
            c.set_lr(lr);
            for (k, r) in spans().enumerate() {
                let g: Vec<F> = self.grads[r.clone()]
                    .iter()
                    .map(|&v| F::of(f64::from(v)))
                    .collect();
                reference::step(&c, &mut states[k], &mut params[r], &g);
            }
        }
        params
    }

    /// Asserts the parameters match `want` within the tolerance, or twice the error float32
    /// arithmetic itself makes where the data is ill-conditioned.
    #[track_caller]
    fn assert_params(&self, ctx: &Context, what: &str, want: &Want) {
        let got = read_all(ctx, &self.param);
        for r in spans() {
            let (g, w, f) = (&got[r.clone()], &want.f64[r.clone()], &want.f32[r]);
            assert_as_close_as_f32(what, g, w, &[], f, 2e-5, 2e-5);
        }
    }
}

/// The element ranges of the tensors of [`LAYOUT`].
fn spans() -> impl Iterator<Item = std::ops::Range<usize>> {
    LAYOUT.iter().map(|&(at, n)| at as usize..(at + n) as usize)
}

/// Parameters as the reference leaves them in f64, and the same steps evaluated in f32.
struct Want {
    f64: Vec<f64>,
    f32: Vec<f32>,
}

fn adam() -> OptimizerConfig {
    Adam {
        lr: 0.01,
        weight_decay: 0.05,
        ..Default::default()
    }
    .into()
}

#[test]
fn twenty_four_steps_with_changing_lrs_in_one_encoder() {
    // Three times the eight steps the per-step ring used to hold: each step reads its own
    // learning rate, although none has been submitted when the next is recorded.
    let ctx = ctx();
    let mut rng = Rng::fresh("twenty_four_steps_in_one_encoder");
    let setup = Setup::new(ctx, &mut rng);
    let mut opt = Optimizer::new(ctx, adam(), &setup.tensors()).unwrap();
    assert_eq!(opt.ring_slots(), 4);
    let lrs: Vec<f64> = (0..24).map(|k| 0.001 * (1.0 + k as f64)).collect();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    for &lr in &lrs {
        opt.set_lr(0, lr).unwrap();
        opt.step(&mut encoder).unwrap();
    }
    ctx.queue().submit([encoder.finish()]);
    // The ring grew (each new ring holds the steps recorded after it was made).
    assert!(opt.ring_slots() > 4, "{} slots", opt.ring_slots());
    setup.assert_params(
        ctx,
        "24 steps in one encoder",
        &setup.reference(adam(), &lrs),
    );
    assert_eq!(opt.step_count(1).unwrap(), 24);

    // Steps whose values do not change share a slot: the ring does not grow.
    let setup = Setup::new(ctx, &mut rng);
    let mut opt = Optimizer::new(ctx, adam(), &setup.tensors()).unwrap();
    let slots = opt.ring_slots();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    for _ in 0..40 {
        opt.step(&mut encoder).unwrap();
    }
    ctx.queue().submit([encoder.finish()]);
    assert_eq!(opt.ring_slots(), slots);
    setup.assert_params(
        ctx,
        "40 steps at one LR",
        &setup.reference(adam(), &[0.01; 40]),
    );
}

#[test]
fn a_dropped_encoder_advances_nothing() {
    let ctx = ctx();
    let mut rng = Rng::fresh("a_dropped_encoder_advances_nothing");
    let setup = Setup::new(ctx, &mut rng);
    let sgd: OptimizerConfig = SGD {
        lr: 0.05,
        momentum: 0.9,
        ..Default::default()
    }
    .into();
    let mut opt = Optimizer::new(ctx, sgd, &setup.tensors()).unwrap();
    let slots = opt.ring_slots();
    // Steps recorded and dropped unsubmitted, as encoders and as finished command buffers,
    // each with its own LR: they never run, and release their ring slots.
    for k in 0..50 {
        opt.set_lr(0, 1.0 + k as f64).unwrap();
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        opt.step(&mut encoder).unwrap();
        if k % 2 == 0 {
            drop(encoder.finish());
        }
    }
    assert_eq!(opt.ring_slots(), slots, "dropped steps kept their slots");
    assert_eq!(opt.step_count(0).unwrap(), 0);
    assert!(bits(ctx, &setup.param) == setup.init.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    // The next submitted step is the first: SGD's momentum buffer starts as the gradient.
    opt.set_lr(0, 0.05).unwrap();
    opt.step_submit().unwrap();
    opt.step_submit().unwrap();
    setup.assert_params(
        ctx,
        "after dropped steps",
        &setup.reference(sgd, &[0.05, 0.05]),
    );
    assert_eq!(opt.step_count(0).unwrap(), 2);
}

#[test]
fn the_grad_scale_lives_in_a_buffer() {
    let ctx = ctx();
    let mut rng = Rng::fresh("the_grad_scale_lives_in_a_buffer");
    let setup = Setup::new(ctx, &mut rng);
    let mut opt = Optimizer::new(ctx, adam(), &setup.tensors()).unwrap();
    let read_scale = |opt: &Optimizer| {
        let r = opt.grad_scale();
        ctx.read_f32(&[(r.buffer, r.offset, r.len)]).unwrap()[0]
    };
    assert_eq!(read_scale(&opt), 1.0);
    let scaler = GradScaler {
        init_scale: 4096.0,
        growth_interval: 2,
        ..Default::default()
    };
    opt.set_grad_scaler(Some(scaler)).unwrap();
    ctx.queue().submit([]);
    assert_eq!(read_scale(&opt), 4096.0);
    // Two steps without inf: the scale doubles. The file's gradients are the scaled ones.
    opt.step_submit().unwrap();
    opt.step_submit().unwrap();
    assert_eq!(read_scale(&opt), 8192.0);
    assert_eq!(
        opt.read_grad_scaler().unwrap(),
        GradScalerState {
            scale: 8192.0,
            growth_tracker: 0
        }
    );
    // An inf gradient: the step is skipped and the scale backs off.
    let params = bits(ctx, &setup.param);
    write(&setup.grad, 500, &[f32::INFINITY]);
    opt.step_submit().unwrap();
    assert!(opt.read_step_report().unwrap().found_inf);
    assert_eq!(read_scale(&opt), 4096.0);
    assert!(
        bits(ctx, &setup.param) == params,
        "a skipped step changed parameters"
    );
    assert_eq!(opt.step_count(0).unwrap(), 2);
    opt.load_grad_scaler(GradScalerState {
        scale: 3.0,
        growth_tracker: 1,
    })
    .unwrap();
    ctx.queue().submit([]);
    assert_eq!(read_scale(&opt), 3.0);
    opt.set_grad_scaler(None).unwrap();
    ctx.queue().submit([]);
    assert_eq!(read_scale(&opt), 1.0);
}

#[test]
fn the_same_inputs_give_the_same_bits() {
    // Norms from many workgroups, clipping and a grad scaler that skips a step: two runs over
    // copies of the same data agree bit for bit, in parameters, state, norms and scale.
    let ctx = ctx();
    let mut rng = Rng::fresh("the_same_inputs_give_the_same_bits");
    let n = 1_000_003usize;
    let init = rng.normals(n);
    let grads: Vec<Vec<f32>> = (0..5)
        .map(|k| {
            let mut g: Vec<f32> = rng.normals(n).iter().map(|v| v * 512.0).collect();
            if k == 2 {
                g[n / 2] = f32::NAN;
            }
            g
        })
        .collect();
    let run = || {
        let param = ctx.create_f32_buffer("param", &init).unwrap();
        let grad = ctx.create_f32_buffer("grad", &grads[0]).unwrap();
        let half = (n / 2) as u64;
        let tensors = [
            Tensor::new(
                BufferRange::new(&param, 0, half),
                BufferRange::new(&grad, 0, half),
            ),
            Tensor::new(
                BufferRange::new(&param, half * 4, n as u64 - half),
                BufferRange::new(&grad, half * 4, n as u64 - half),
            ),
        ];
        let mut opt = Optimizer::new(ctx, adam(), &tensors).unwrap();
        opt.set_clip_grad(Some(ClipGrad::norm(100.0))).unwrap();
        opt.set_grad_scaler(Some(GradScaler {
            init_scale: 512.0,
            growth_interval: 2,
            ..Default::default()
        }))
        .unwrap();
        let mut reports = Vec::new();
        for g in &grads {
            write(&grad, 0, g);
            opt.step_submit().unwrap();
            reports.push(opt.read_step_report().unwrap());
        }
        let states: Vec<TensorState<f32>> = (0..2).map(|k| opt.read_state(k).unwrap()).collect();
        let state_bits: Vec<Vec<u32>> = states
            .iter()
            .flat_map(|s| s.buffers.values())
            .map(|v| v.iter().map(|x| x.to_bits()).collect())
            .collect();
        let report_bits: Vec<(u32, bool)> = reports
            .iter()
            .map(|r| (r.total_norm.to_bits(), r.found_inf))
            .collect();
        (
            bits(ctx, &param),
            state_bits,
            report_bits,
            opt.read_grad_scaler().unwrap(),
            states[0].step,
        )
    };
    let first = run();
    let second = run();
    assert!(first.0 == second.0, "parameters differ between two runs");
    assert!(first.1 == second.1, "state differs between two runs");
    assert_eq!(first.2, second.2, "norms differ between two runs");
    assert_eq!(first.3, second.3);
    // The NaN step was skipped; every other step clipped.
    assert_eq!(first.4, 4);
    assert!(first.2[2].1 && f32::from_bits(first.2[2].0).is_nan());
}

#[test]
fn clip_grad_value_keeps_nan() {
    // torch.clamp_ keeps NaN; WGSL's clamp need not. Without a grad scaler nothing skips the
    // step, so a NaN gradient makes its parameter NaN, as in PyTorch, and only that one.
    let ctx = ctx();
    let param = ctx.create_f32_buffer("param", &[1.0; 9]).unwrap();
    let grad = ctx
        .create_f32_buffer(
            "grad",
            &[0.5, -3.0, f32::NAN, 2.0, 0.1, 0.0, -0.2, 9.0, f32::NAN],
        )
        .unwrap();
    for access in [wgpu_optim::Access::Scalar, wgpu_optim::Access::Vec4] {
        let ctx = ctx.clone().with_access(access);
        ctx.queue()
            .write_buffer(&param, 0, bytemuck::cast_slice(&[1.0f32; 9]));
        let tensors = [
            Tensor::new(
                BufferRange::new(&param, 0, 5),
                BufferRange::new(&grad, 0, 5),
            ),
            Tensor::new(
                BufferRange::new(&param, 20, 4),
                BufferRange::new(&grad, 20, 4),
            ),
        ];
        let sgd = SGD {
            lr: 0.1,
            ..Default::default()
        };
        let mut opt = Optimizer::new(&ctx, sgd, &tensors).unwrap();
        opt.set_clip_grad(Some(ClipGrad::value(1.0))).unwrap();
        opt.step_submit().unwrap();
        let got = read_all(&ctx, &param);
        let want = [0.95, 1.1, f32::NAN, 0.9, 0.99, 1.0, 1.02, 0.9, f32::NAN];
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g.is_nan() && w.is_nan()) || (g - w).abs() < 1e-6,
                "{access}: element {i} is {g}, not {w}"
            );
        }
    }
}

/// The parameters y (train mode) and x (eval mode) a schedule-free reference run leaves, with
/// x = y + (1 − 1/β1)(z − y), in f64 and in f32.
fn schedule_free_eval(setup: &Setup, config: AdamWScheduleFree, lrs: &[f64]) -> (Want, Want) {
    let (y, x) = schedule_free_in(setup, config, lrs);
    let (y32, x32) = schedule_free_in(setup, config, lrs);
    (Want { f64: y, f32: y32 }, Want { f64: x, f32: x32 })
}

fn schedule_free_in<F: Real>(
    setup: &Setup,
    config: AdamWScheduleFree,
    lrs: &[f64],
) -> (Vec<F>, Vec<F>) {
    let mut y: Vec<F> = setup.init.iter().map(|&v| F::of(f64::from(v))).collect();
    let mut x = y.clone();
    let w = F::of(config.mode_weight(false));
    for r in spans() {
        let mut state = TensorState::<F>::default();
        for &lr in lrs {
            let c = AdamWScheduleFree { lr, ..config };
            let g: Vec<F> = setup.grads[r.clone()]
                .iter()
                .map(|&v| F::of(f64::from(v)))
                .collect();
            reference::step(&c.into(), &mut state, &mut y[r.clone()], &g);
        }
        for (i, &z) in r.clone().zip(&state.buffers["z"]) {
            x[i] = y[i] + w * (z - y[i]);
        }
    }
    (y, x)
}

#[test]
fn schedule_free_switches_between_train_and_eval_on_the_gpu() {
    let ctx = ctx();
    let mut rng = Rng::fresh("schedule_free_modes");
    let setup = Setup::new(ctx, &mut rng);
    let config = AdamWScheduleFree {
        lr: 0.01,
        betas: (0.8, 0.99),
        weight_decay: 0.05,
        warmup_steps: 3,
        ..Default::default()
    };
    let mut opt = Optimizer::new(ctx, config, &setup.tensors()).unwrap();
    let submit = |opt: &mut Optimizer, f: &dyn Fn(&mut Optimizer, &mut wgpu::CommandEncoder)| {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        f(opt, &mut encoder);
        ctx.queue().submit([encoder.finish()]);
    };
    assert!(opt.is_train_mode());

    // Before any step there is no z: eval() moves nothing, and a step in eval mode is an error
    // that records nothing.
    let before = bits(ctx, &setup.param);
    submit(&mut opt, &|o, e| o.eval(e).unwrap());
    assert!(!opt.is_train_mode());
    assert_eq!(bits(ctx, &setup.param), before, "eval() before any step");
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let e = opt.step(&mut encoder).unwrap_err();
    assert!(e.to_string().contains("call train() before step()"), "{e}");
    ctx.queue().submit([encoder.finish()]);
    assert_eq!(opt.step_count(0).unwrap(), 0);
    assert_eq!(bits(ctx, &setup.param), before, "a refused step");
    submit(&mut opt, &|o, e| o.train(e).unwrap());
    assert!(opt.is_train_mode());

    let lrs = [0.01, 0.02, 0.01, 0.015, 0.005];
    submit(&mut opt, &|o, e| {
        for &lr in &lrs {
            o.set_lr(0, lr).unwrap();
            o.step(e).unwrap();
        }
    });
    let (y, x) = schedule_free_eval(&setup, config, &lrs);
    setup.assert_params(ctx, "y after 5 steps", &y);
    let scalars = opt.read_state(1).unwrap().scalars;

    // eval() swaps in x, train() swaps y back; a second eval() or train() records nothing.
    // Neither moves the step count or the scalar state.
    submit(&mut opt, &|o, e| {
        o.eval(e).unwrap();
        o.eval(e).unwrap();
    });
    setup.assert_params(ctx, "x after eval()", &x);
    submit(&mut opt, &|o, e| {
        o.train(e).unwrap();
        o.train(e).unwrap();
    });
    setup.assert_params(ctx, "y after train()", &y);
    assert_eq!(opt.step_count(1).unwrap(), 5);
    assert_eq!(opt.read_state(1).unwrap().scalars, scalars);

    // A snapshot keeps the mode with the parameters.
    submit(&mut opt, &|o, e| o.eval(e).unwrap());
    let snapshot = opt.snapshot().unwrap();
    submit(&mut opt, &|o, e| o.train(e).unwrap());
    opt.restore(&snapshot).unwrap();
    assert!(!opt.is_train_mode());
    setup.assert_params(ctx, "x restored", &x);

    // Training goes on from y.
    submit(&mut opt, &|o, e| {
        o.train(e).unwrap();
        o.set_lr(0, 0.01).unwrap();
        o.step(e).unwrap();
    });
    let mut all = lrs.to_vec();
    all.push(0.01);
    setup.assert_params(
        ctx,
        "y after a sixth step",
        &schedule_free_eval(&setup, config, &all).0,
    );

    // Other classes have no modes.
    let mut adam_opt = Optimizer::new(ctx, adam(), &setup.tensors()).unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let e = adam_opt.eval(&mut encoder).unwrap_err();
    assert!(
        e.to_string().contains("Adam has no train and eval modes"),
        "{e}"
    );
    assert!(adam_opt.is_train_mode());
}
