//! The fused optimizer in Burn training loops on a real wgpu device (lavapipe in CI): against
//! the CPU reference, against Burn's own Adam and AdamW, with a clone of the module sharing its
//! memory, and resumed from a checkpoint.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData, activation::relu};
use std::sync::OnceLock;
use wgpu_optim::schedule::Scheduler;
use wgpu_optim::{Adam, AdamW, ClipGrad, NormType, OptimizerConfig, TensorState, reference};
use wgpu_optim_burn::{FusedOptimizer, Shared};

/// The device of this test binary: the backends in `WGPU_BACKEND` (all when unset). Panics when
/// no adapter is found: a GPU test never passes without a GPU.
fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        Shared::request(backends)
            .expect("GPU tests need an adapter (lavapipe: mesa-vulkan-drivers)")
    })
}

fn device() -> Device {
    shared().device().clone().autodiff()
}

#[derive(Module, Debug)]
struct Mlp {
    hidden: Linear,
    out: Linear,
}

impl Mlp {
    /// A model with random initial values (`seed` seeds the device's generator, which other
    /// tests may draw from at the same time).
    fn new(seed: u64) -> Self {
        let device = device();
        device.seed(seed);
        Self {
            hidden: LinearConfig::new(11, 37).init(&device),
            out: LinearConfig::new(37, 1).init(&device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.out.forward(relu(self.hidden.forward(x)))
    }

    /// Mean squared error on `batch` and its gradients.
    fn loss(&self, (x, y): &(Tensor<2>, Tensor<2>)) -> (f32, GradientsParams) {
        let loss = (self.forward(x.clone()) - y.clone()).powi_scalar(2).mean();
        let value = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), self);
        (value, grads)
    }

    /// Every parameter's values, in module order.
    fn values(&self) -> Vec<Vec<f32>> {
        let mut out = Vec::new();
        for p in [&self.hidden, &self.out] {
            out.push(p.weight.val().into_data().try_to_vec::<f32>().unwrap());
            out.push(
                p.bias
                    .as_ref()
                    .unwrap()
                    .val()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap(),
            );
        }
        out
    }
}

/// A batch of 64 samples of a smooth function of 11 features, different for each `k`.
fn batch(k: usize) -> (Tensor<2>, Tensor<2>) {
    let device = device();
    let x: Vec<f32> = (0..64 * 11)
        .map(|i| (((i * 7 + k * 13) % 29) as f32 / 29.0 - 0.5) * 2.0)
        .collect();
    let y: Vec<f32> = x
        .chunks(11)
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(j, v)| v * (j as f32 - 5.0) * 0.1)
                .sum::<f32>()
                .sin()
        })
        .collect();
    (
        Tensor::from_data(TensorData::new(x, [64, 11]), &device),
        Tensor::from_data(TensorData::new(y, [64, 1]), &device),
    )
}

/// The gradients' values in module order.
fn grad_values(model: &Mlp, grads: &GradientsParams) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for p in [&model.hidden, &model.out] {
        out.push(
            grads
                .get::<2>(p.weight.id)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
        );
        let bias: &Param<Tensor<1>> = p.bias.as_ref().unwrap();
        out.push(
            grads
                .get::<1>(bias.id)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
        );
    }
    out
}

#[test]
fn fused_steps_match_the_cpu_reference() {
    for config in [
        OptimizerConfig::from(Adam {
            lr: 0.01,
            weight_decay: 0.05,
            amsgrad: true,
            ..Default::default()
        }),
        AdamW {
            lr: 0.02,
            ..Default::default()
        }
        .into(),
    ] {
        let mut model = Mlp::new(7);
        let mut optim = FusedOptimizer::new(shared(), config);
        let mut want: Vec<Vec<f64>> = model
            .values()
            .iter()
            .map(|v| v.iter().map(|&x| f64::from(x)).collect())
            .collect();
        let mut states = vec![TensorState::<f64>::default(); 4];
        for k in 0..5 {
            let (_, grads) = model.loss(&batch(k));
            for ((p, s), g) in want
                .iter_mut()
                .zip(&mut states)
                .zip(grad_values(&model, &grads))
            {
                let g: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
                reference::step(&config, s, p, &g);
            }
            model = optim.step(config.lr(), model, grads);
            for (t, (got, want)) in model.values().iter().zip(&want).enumerate() {
                for (i, (g, w)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (f64::from(*g) - w).abs() <= 1e-6 * (1.0 + w.abs()),
                        "{config:?} step {k} tensor {t} element {i}: {g} vs the reference's {w}"
                    );
                }
            }
        }
        assert_eq!(optim.copies(), 0, "nothing shared these parameters");
        let opt = optim.optimizer().unwrap();
        assert_eq!(opt.tensor_count(), 4);
        assert_eq!(opt.read_state(0).unwrap().step, 5);
    }
}

/// Trains `model` for `steps` steps with `step`, returning the losses.
fn train(
    mut model: Mlp,
    steps: usize,
    mut step: impl FnMut(Mlp, GradientsParams) -> Mlp,
) -> (Vec<f32>, Mlp) {
    let mut losses = Vec::new();
    for k in 0..steps {
        let (loss, grads) = model.loss(&batch(k));
        losses.push(loss);
        model = step(model, grads);
    }
    (losses, model)
}

#[test]
fn losses_follow_burns_own_adam_and_adamw_and_clones_keep_their_values() {
    let lr = 0.01;
    let steps = 30;
    // Burn's Adam with L2 weight decay, and ours with Burn's ε.
    let burn_adam = AdamConfig::new().with_weight_decay(Some(WeightDecayConfig::new(0.01)));
    let fused_adam = Adam {
        lr,
        eps: 1e-5,
        weight_decay: 0.01,
        ..Default::default()
    };
    let burn_adamw = AdamWConfig::new();
    let fused_adamw = AdamW {
        lr,
        eps: 1e-5,
        weight_decay: 1e-4,
        ..Default::default()
    };
    for (burn, fused) in [
        (burn_adam.init(), OptimizerConfig::from(fused_adam)),
        (burn_adamw.init(), fused_adamw.into()),
    ] {
        let model = Mlp::new(11);
        let before = model.values();
        // The clone shares every parameter's memory with the model the fused optimizer steps.
        let clone = model.clone();
        let mut optim = FusedOptimizer::new(shared(), fused);
        let (fused_losses, _) = train(model, steps, |m, g| optim.step(lr, m, g));
        assert_eq!(
            optim.copies(),
            4,
            "each shared parameter copied once, at the first step"
        );
        assert_eq!(
            clone.values(),
            before,
            "the in-place update showed through a clone"
        );
        let mut burn = burn;
        let (burn_losses, _) = train(clone, steps, |m, g| burn.step(lr, m, g));
        for (k, (f, b)) in fused_losses.iter().zip(&burn_losses).enumerate() {
            assert!(
                (f - b).abs() <= 1e-4 * b.abs().max(1e-2),
                "{fused:?} step {k}: loss {f} with the fused step, {b} with Burn's"
            );
        }
        assert!(
            fused_losses[steps - 1] < 0.5 * fused_losses[0],
            "training made progress"
        );
    }
}

#[test]
fn a_resumed_run_continues_the_same_curve() {
    let dir = std::env::temp_dir().join(format!("wgpu-optim-burn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("resume.safetensors");
    let config = AdamW {
        lr: 0.02,
        ..Default::default()
    };
    let schedule = serde_json::json!({"type": "OneCycleLR", "max_lr": 0.05, "total_steps": 12});
    let clip = ClipGrad::Norm {
        max_norm: 1.0,
        norm_type: NormType::L2,
    };
    let run = |model: Mlp,
               optim: &mut FusedOptimizer,
               sched: &mut Scheduler,
               range: std::ops::Range<usize>| {
        let mut model = model;
        let mut losses = Vec::new();
        for k in range {
            let (loss, grads) = model.loss(&batch(k));
            losses.push(loss);
            model = optim.step_scheduled(sched, model, grads).unwrap();
            sched.step().unwrap();
        }
        (model, losses)
    };
    let new_sched = || Scheduler::from_spec(&schedule, 1).unwrap();

    // Both runs start from the same values (clones share memory; each optimizer copies its
    // parameters before updating them in place). Seeding is per device, shared by the tests
    // running at once, so it cannot make two models alike.
    let init = Mlp::new(3);
    let mut optim = FusedOptimizer::new(shared(), config).with_clip_grad(clip);
    let mut sched = new_sched();
    let (whole, whole_losses) = run(init.clone(), &mut optim, &mut sched, 0..12);

    let mut optim = FusedOptimizer::new(shared(), config).with_clip_grad(clip);
    let mut sched = new_sched();
    let (half, mut losses) = run(init, &mut optim, &mut sched, 0..6);
    optim.save(&path, Some(&sched), true).unwrap();
    drop(half);

    // A fresh model (other initial values), optimizer and scheduler take the checkpoint.
    let mut optim = FusedOptimizer::new(shared(), config).with_clip_grad(clip);
    let mut sched = new_sched();
    let fresh = optim
        .load(&path, Mlp::new(99), Some(&mut sched), true)
        .unwrap();
    let (resumed, rest) = run(fresh, &mut optim, &mut sched, 6..12);
    losses.extend(rest);
    for (k, (a, b)) in losses.iter().zip(&whole_losses).enumerate() {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
            "step {k}: loss {a} resumed, {b} uninterrupted"
        );
    }
    for (a, b) in resumed.values().iter().zip(whole.values()) {
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                "{x} resumed, {y} uninterrupted"
            );
        }
    }
    assert_eq!(optim.optimizer().unwrap().read_state(0).unwrap().step, 12);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn misuse_is_an_error() {
    let model = Mlp::new(5);
    let mut optim = FusedOptimizer::new(shared(), Adam::default());
    let err = optim
        .try_step(1e-3, model.clone(), GradientsParams::new())
        .unwrap_err();
    assert!(
        err.to_string().contains("no parameter has a gradient"),
        "{err}"
    );
    // The first step fixes the parameters; a later step with fewer gradients is an error.
    let (_, grads) = model.loss(&batch(0));
    let model = optim.step(1e-3, model, grads);
    let (_, mut grads) = model.loss(&batch(1));
    grads.remove::<1>(model.out.bias.as_ref().unwrap().id);
    let err = optim.try_step(1e-3, model.clone(), grads).unwrap_err();
    assert!(err.to_string().contains("3 parameters"), "{err}");
    let err = optim
        .load(std::path::Path::new("/nonexistent"), model, None, false)
        .unwrap_err();
    assert!(err.to_string().contains("before its first step"), "{err}");
}
