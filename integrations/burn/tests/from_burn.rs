//! The other way round: Burn creates its default wgpu device, and wgpu-optim takes the same
//! device and queue (a test binary of its own, since Burn's default device starts once).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use wgpu_optim::{OptimizerConfig, SGD, TensorState, reference};
use wgpu_optim_burn::{FusedOptimizer, Shared};

#[derive(Module, Debug)]
struct Model {
    linear: Linear,
}

#[test]
fn a_context_over_burns_own_device_steps_its_tensors() {
    let shared = Shared::from_burn().expect("Burn's default wgpu device (lavapipe in CI)");
    let device = shared.device().clone().autodiff();
    let mut model = Model {
        linear: LinearConfig::new(5, 3).init(&device),
    };
    let config = OptimizerConfig::from(SGD {
        lr: 0.1,
        momentum: 0.9,
        ..Default::default()
    });
    let mut optim = FusedOptimizer::new(&shared, config);
    let values = |m: &Model| {
        let w = m
            .linear
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let b = m.linear.bias.as_ref().unwrap().val().into_data();
        [w, b.try_to_vec::<f32>().unwrap()]
    };
    let mut want: Vec<Vec<f64>> = values(&model)
        .iter()
        .map(|v| v.iter().map(|&x| f64::from(x)).collect())
        .collect();
    let mut states = vec![TensorState::<f64>::default(); 2];
    for k in 0..4 {
        let x: Vec<f32> = (0..20).map(|i| ((i + k) % 7) as f32 * 0.3 - 1.0).collect();
        let x = Tensor::<2>::from_data(TensorData::new(x, [4, 5]), &device);
        let loss = model.linear.forward(x).powi_scalar(2).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let bias_id = model.linear.bias.as_ref().unwrap().id;
        let w = grads.get::<2>(model.linear.weight.id).unwrap().into_data();
        let b = grads.get::<1>(bias_id).unwrap().into_data();
        let g: Vec<Vec<f64>> = [w, b]
            .into_iter()
            .map(|d| {
                let v = d.try_to_vec::<f32>().unwrap();
                v.iter().map(|&x| f64::from(x)).collect()
            })
            .collect();
        for ((p, s), g) in want.iter_mut().zip(&mut states).zip(&g) {
            reference::step(&config, s, p, g);
        }
        model = optim.step(0.1, model, grads);
    }
    for (got, want) in values(&model).iter().zip(&want) {
        for (g, w) in got.iter().zip(want) {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-6 * (1.0 + w.abs()),
                "{g} vs {w}"
            );
        }
    }
}
