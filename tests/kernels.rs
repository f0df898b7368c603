//! Every optimizer and option combination on the GPU against the f64 CPU reference.

mod common;

use common::{POISON, Rng, assert_as_close_as_f32, assert_close, ctx, write};
use std::collections::HashMap;
use wgpu_optim::validate::all_configs;
use wgpu_optim::{
    Adam, AdamW, BufferRange, Optimizer, OptimizerConfig, ParamGroup, Tensor, TensorState,
    reference,
};

/// Runs `steps` steps of `config` on tensors of the given sizes (packed into one parameter
/// buffer and one gradient buffer at unaligned offsets) with fresh random gradients, and checks
/// parameters and every state buffer against the reference after the last step.
fn check_against_reference(config: OptimizerConfig, sizes: &[u64], steps: usize, rng: &mut Rng) {
    let ctx = ctx();
    // Unaligned offsets: tensor k starts k*3+1 elements after the previous one ends.
    let mut offsets = Vec::new();
    let mut at = 5;
    for (k, &n) in sizes.iter().enumerate() {
        offsets.push(at);
        at += n + k as u64 * 3 + 1;
    }
    let total = at as usize;
    let mut init = vec![POISON; total];
    let mut params64: Vec<Vec<f64>> = Vec::new();
    for (&o, &n) in offsets.iter().zip(sizes) {
        let values = rng.normals(n as usize);
        init[o as usize..(o + n) as usize].copy_from_slice(&values);
        params64.push(values.iter().map(|&v| f64::from(v)).collect());
    }
    let param = ctx.create_f32_buffer("param", &init).unwrap();
    let grad = ctx.create_f32_buffer("grad", &vec![POISON; total]).unwrap();
    let tensors: Vec<Tensor<'_>> = offsets
        .iter()
        .zip(sizes)
        .map(|(&o, &n)| {
            Tensor::new(
                BufferRange::new(&param, o * 4, n),
                BufferRange::new(&grad, o * 4, n),
            )
        })
        .collect();
    let mut opt = Optimizer::new(ctx, config, &tensors).unwrap();
    assert_eq!(
        opt.dispatches_per_step(),
        1,
        "tensors sharing buffers take one dispatch"
    );
    let mut states = vec![TensorState::<f64>::default(); sizes.len()];
    // Per tensor, per buffer ("param" and each state): the sum of |change| over the steps.
    let mut paths: Vec<HashMap<String, Vec<f64>>> = vec![HashMap::new(); sizes.len()];
    // The same steps in float32 on the CPU: how far f32 arithmetic itself strays.
    let mut params32: Vec<Vec<f32>> = params64
        .iter()
        .map(|p| p.iter().map(|&v| v as f32).collect())
        .collect();
    let init = |name: &str| match config {
        OptimizerConfig::Adagrad(c) if name == "sum" => c.initial_accumulator_value as f32,
        _ => 0.0,
    };
    let mut states32: Vec<Vec<Vec<f32>>> = sizes
        .iter()
        .map(|&n| {
            config
                .state_names()
                .iter()
                .map(|name| vec![init(name); n as usize])
                .collect()
        })
        .collect();
    for _ in 0..steps {
        let mut g = vec![POISON; total];
        for (k, (&o, &n)) in offsets.iter().zip(sizes).enumerate() {
            let values: Vec<f32> = rng.normals(n as usize).iter().map(|v| v * 0.5).collect();
            g[o as usize..(o + n) as usize].copy_from_slice(&values);
            let g64: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
            let mut before = states[k].buffers.clone();
            before.insert("param".into(), params64[k].clone());
            let first = states[k].step == 0;
            reference::step(&config, &mut states[k], &mut params64[k], &g64);
            wgpu_optim::validate::float32_step(
                &config,
                states[k].step,
                first,
                &mut params32[k],
                &values,
                &mut states32[k],
            );
            for (name, old) in before {
                let new = if name == "param" {
                    &params64[k]
                } else {
                    &states[k].buffers[&name]
                };
                let path = paths[k]
                    .entry(name)
                    .or_insert_with(|| vec![0.0; n as usize]);
                for ((p, a), b) in path.iter_mut().zip(&old).zip(new) {
                    *p += (a - b).abs();
                }
            }
        }
        write(&grad, 0, &g);
        opt.step_submit();
    }
    let got = ctx.read_f32(&[(&param, 0, total as u64)]).unwrap();
    let what = format!("{config:?}");
    for (k, (&o, &n)) in offsets.iter().zip(sizes).enumerate() {
        let range = o as usize..(o + n) as usize;
        assert_as_close_as_f32(
            &format!("{what} param of size {n}"),
            &got[range],
            &params64[k],
            &paths[k]["param"],
            &params32[k],
            2e-5,
            2e-5,
        );
        let state = opt.read_state(k).unwrap();
        assert_eq!(state.step, steps as u64);
        assert_eq!(
            state.buffers.keys().collect::<Vec<_>>(),
            states[k].buffers.keys().collect::<Vec<_>>()
        );
        for (name, want) in &states[k].buffers {
            let path = paths[k].get(name).map_or(&[][..], Vec::as_slice);
            let index = config.state_names().iter().position(|s| s == name).unwrap();
            assert_as_close_as_f32(
                &format!("{what} {name} of size {n}"),
                &state.buffers[name],
                want,
                path,
                &states32[k][index],
                2e-5,
                2e-5,
            );
        }
    }
    // The gaps between tensors were never written.
    let mut end = 0;
    for (&o, &n) in offsets.iter().zip(sizes) {
        assert!(
            got[end as usize..o as usize].iter().all(|v| v.is_nan()),
            "{what}: wrote outside its tensors"
        );
        end = o + n;
    }
}

#[test]
fn every_option_combination_matches_reference_over_20_steps() {
    let mut rng = Rng::fresh("every_option_combination");
    for config in all_configs() {
        check_against_reference(config, &[1, 255, 256, 257, 1000], 20, &mut rng);
    }
}

#[test]
fn a_million_elements_match_reference() {
    let mut rng = Rng::fresh("a_million_elements");
    for config in all_configs()
        .into_iter()
        .filter(|c| {
            matches!(
                c,
                OptimizerConfig::AdamW(_) | OptimizerConfig::RMSprop(_) | OptimizerConfig::SGD(_)
            )
        })
        .step_by(3)
    {
        check_against_reference(config, &[1_000_003], 20, &mut rng);
    }
}

#[test]
fn more_than_65535_workgroups() {
    let mut rng = Rng::fresh("more_than_65535_workgroups");
    let n = 65_535 * 256 + 299;
    let config = AdamW {
        lr: 0.01,
        amsgrad: true,
        ..Default::default()
    };
    check_against_reference(config.into(), &[n], 3, &mut rng);
}

#[test]
fn many_tensors_in_several_groups() {
    let ctx = ctx();
    let mut rng = Rng::fresh("many_tensors_in_several_groups");
    let configs: [OptimizerConfig; 3] = [
        Adam {
            lr: 0.01,
            ..Default::default()
        }
        .into(),
        Adam {
            lr: 0.003,
            weight_decay: 0.1,
            betas: (0.5, 0.9),
            ..Default::default()
        }
        .into(),
        Adam {
            lr: 0.02,
            amsgrad: true,
            maximize: true,
            ..Default::default()
        }
        .into(),
    ];
    // 300 tensors of mixed sizes: more than one batch's 256 slots.
    let sizes: Vec<u64> = (0..300).map(|_| 1 + rng.below(700)).collect();
    let total: u64 = sizes.iter().sum();
    let init = rng.normals(total as usize);
    let param = ctx.create_f32_buffer("param", &init).unwrap();
    let grad = ctx
        .create_f32_buffer("grad", &vec![0.0; total as usize])
        .unwrap();
    let mut groups: Vec<ParamGroup<'_>> = configs
        .iter()
        .map(|c| ParamGroup::new(*c, Vec::new()))
        .collect();
    let mut owner = Vec::new();
    let mut at = 0;
    for (k, &n) in sizes.iter().enumerate() {
        owner.push((k % 3, at));
        groups[k % 3].tensors.push(Tensor::new(
            BufferRange::new(&param, at * 4, n),
            BufferRange::new(&grad, at * 4, n),
        ));
        at += n;
    }
    let mut opt = Optimizer::with_groups(ctx, &groups).unwrap();
    assert!(
        opt.dispatches_per_step() <= 4,
        "{} dispatches",
        opt.dispatches_per_step()
    );
    let mut p64: Vec<f64> = init.iter().map(|&v| f64::from(v)).collect();
    let mut states = vec![TensorState::<f64>::default(); sizes.len()];
    for _ in 0..20 {
        let g = rng.normals(total as usize);
        write(&grad, 0, &g);
        opt.step_submit();
        for (k, &n) in sizes.iter().enumerate() {
            let (group, start) = owner[k];
            let range = start as usize..(start + n) as usize;
            let g64: Vec<f64> = g[range.clone()].iter().map(|&v| f64::from(v)).collect();
            reference::step(&configs[group], &mut states[k], &mut p64[range], &g64);
        }
    }
    let got = ctx.read_f32(&[(&param, 0, total)]).unwrap();
    assert_close("params of 300 tensors in 3 groups", &got, &p64, 2e-5, 2e-5);
}

#[test]
fn zero_length_tensors_step_without_dispatches() {
    let ctx = ctx();
    let param = ctx.create_f32_buffer("param", &[1.0, 2.0]).unwrap();
    let grad = ctx.create_f32_buffer("grad", &[0.5, 0.5]).unwrap();
    let empty = Tensor::new(
        BufferRange::new(&param, 4, 0),
        BufferRange::new(&grad, 4, 0),
    );
    let mut opt = Optimizer::new(ctx, Adam::default(), &[empty]).unwrap();
    assert_eq!(opt.dispatches_per_step(), 0);
    opt.step_submit();
    let state = opt.read_state(0).unwrap();
    assert_eq!(state.step, 1);
    assert!(state.buffers.values().all(Vec::is_empty));
    assert_eq!(ctx.read_f32(&[(&param, 0, 2)]).unwrap(), [1.0, 2.0]);
}
