//! Every optimizer and option combination on the GPU against the f64 CPU reference.

mod common;

use common::{POISON, Rng, Tracked, bits, context_with_limits, ctx, write};
use wgpu_optim::validate::all_configs;
use wgpu_optim::{
    ADOPT, Access, Adafactor, Adagrad, Adam, AdamW, BufferRange, ClipGrad, Context, GradScaler,
    GradScalerState, Lamb, Muon, NormType, Optimizer, OptimizerConfig, ParamGroup, RMSprop, SGD,
    Tensor, reference,
};

/// What a training loop does around each step, and where it injects non-finite gradients.
#[derive(Clone, Copy, Debug, Default)]
struct Recipe {
    clip: Option<ClipGrad>,
    scaler: Option<GradScaler>,
    /// Steps at which one gradient element is set to inf, NaN or -inf in turn.
    inject: &'static [usize],
}

/// The plain step.
const PLAIN: Recipe = Recipe {
    clip: None,
    scaler: None,
    inject: &[],
};

/// The test context with each access mode.
fn contexts() -> [Context; 2] {
    [Access::Scalar, Access::Vec4].map(|a| ctx().clone().with_access(a))
}

/// Runs `steps` steps of `config` on tensors of the given sizes (packed into one parameter
/// buffer and one gradient buffer at unaligned offsets) with fresh random gradients, and checks
/// parameters and every state buffer against the reference after the last step. The buffers
/// start out poisoned; what lies outside the tensors must keep its bits, and the gradients
/// must never be written.
fn check_against_reference(
    ctx: &Context,
    config: OptimizerConfig,
    sizes: &[u64],
    steps: usize,
    rng: &mut Rng,
) {
    check_recipe(ctx, config, PLAIN, sizes, steps, rng);
}

/// [`check_against_reference`] with clipping, a grad scaler and injected non-finite gradients:
/// the step count, the grad scaler and each step's report must match the reference too.
fn check_recipe(
    ctx: &Context,
    config: OptimizerConfig,
    recipe: Recipe,
    sizes: &[u64],
    steps: usize,
    rng: &mut Rng,
) {
    let shapes: Vec<Vec<usize>> = sizes.iter().map(|&n| vec![n as usize]).collect();
    check_shaped(ctx, config, recipe, &shapes, steps, rng);
}

/// [`check_recipe`] on tensors of the given shapes, which matter where the state depends on
/// them (Adafactor's factors).
fn check_shaped(
    ctx: &Context,
    config: OptimizerConfig,
    recipe: Recipe,
    shapes: &[Vec<usize>],
    steps: usize,
    rng: &mut Rng,
) {
    let sizes: Vec<u64> = shapes
        .iter()
        .map(|s| s.iter().product::<usize>() as u64)
        .collect();
    let sizes = &sizes[..];
    // Unaligned offsets: tensor k starts k*3+1 elements after the previous one ends, so
    // tensors start and end at every lane of a vec4.
    let mut offsets = Vec::new();
    let mut at = 5;
    for (k, &n) in sizes.iter().enumerate() {
        offsets.push(at);
        at += n + k as u64 * 3 + 1;
    }
    // Whole vec4s, so that every tensor can use the context's access mode.
    let total = at.next_multiple_of(4) as usize;
    let mut init = vec![POISON; total];
    let mut tracked = Vec::new();
    for (&o, &n) in offsets.iter().zip(sizes) {
        let values = rng.normals(n as usize);
        init[o as usize..(o + n) as usize].copy_from_slice(&values);
        tracked.push(Tracked::shaped(config, &shapes[tracked.len()], &values));
    }
    let param = ctx.create_f32_buffer("param", &init).unwrap();
    let grad = ctx.create_f32_buffer("grad", &vec![POISON; total]).unwrap();
    let tensors: Vec<Tensor<'_>> = offsets
        .iter()
        .zip(sizes)
        .zip(shapes)
        .map(|((&o, &n), shape)| {
            Tensor::new(
                BufferRange::new(&param, o * 4, n),
                BufferRange::new(&grad, o * 4, n),
            )
            .with_shape(shape)
        })
        .collect();
    let mut opt = Optimizer::new(ctx, config, &tensors).unwrap();
    opt.set_clip_grad(recipe.clip).unwrap();
    opt.set_grad_scaler(recipe.scaler).unwrap();
    let mut scaler = recipe.scaler.map(|s| GradScalerState {
        scale: s.init_scale as f32,
        growth_tracker: 0,
    });
    let mut taken = 0;
    let mut last_grads = Vec::new();
    // Tensors sharing buffers take one dispatch per kernel (Adafactor has one for factored
    // state), unless they outgrow one storage binding: the batch's state buffers share one
    // binding.
    let states = config.state_names().len().max(1) as u64;
    let kernels = 1 + usize::from(
        shapes.iter().any(|s| config.is_factored(s))
            && shapes.iter().any(|s| !config.is_factored(s)),
    );
    if total as u64 * 4 * states <= ctx.limits().max_storage_buffer_binding_size - 1024 {
        assert_eq!(
            opt.dispatches_per_step(),
            kernels,
            "tensors sharing buffers"
        );
    } else {
        assert!(opt.dispatches_per_step() > 1);
    }
    for k in 0..sizes.len() {
        assert_eq!(opt.tensor_access(k).unwrap(), ctx.access());
    }
    for step in 0..steps {
        let mut g = vec![POISON; total];
        let mut raw: Vec<Vec<f32>> = Vec::new();
        for (&o, &n) in offsets.iter().zip(sizes) {
            let mut values: Vec<f32> = rng.normals(n as usize).iter().map(|v| v * 0.5).collect();
            if let Some(s) = &scaler {
                values.iter_mut().for_each(|v| *v *= s.scale);
            }
            g[o as usize..(o + n) as usize].copy_from_slice(&values);
            raw.push(values);
        }
        if let Some(i) = recipe.inject.iter().position(|&k| k == step) {
            let bad = [f32::INFINITY, f32::NAN, f32::NEG_INFINITY][i % 3];
            let k = rng.below(sizes.len() as u64) as usize;
            let at = rng.below(sizes[k]) as usize;
            raw[k][at] = bad;
            g[offsets[k] as usize + at] = bad;
        }
        let mut g64: Vec<Vec<f64>> = raw
            .iter()
            .map(|v| v.iter().map(|&x| f64::from(x)).collect())
            .collect();
        let mut views: Vec<&mut [f64]> = g64.iter_mut().map(Vec::as_mut_slice).collect();
        let mut report =
            reference::prepare_grads(&mut views, recipe.clip.as_ref(), scaler.map(|s| s.scale));
        // Lamb's pre_norm; without clipping or a scaler, the report has its norm.
        let pre_norm = reference::pre_norm(&mut views, &config);
        if let (None, None, Some(norm)) = (recipe.clip, recipe.scaler, pre_norm) {
            report.total_norm = norm as f32;
        }
        ctx.queue().write_buffer(&grad, 0, bytemuck::cast_slice(&g));
        last_grads = g;
        opt.step_submit().unwrap();
        let got = opt.read_step_report().unwrap();
        let skip = recipe.scaler.is_some() && report.found_inf;
        assert_eq!(got.found_inf, skip, "step {step}: found_inf");
        let (a, b) = (f64::from(got.total_norm), f64::from(report.total_norm));
        assert!(
            (a - b).abs() <= 1e-5 * b.abs() || (a.is_nan() && b.is_nan()) || a == b,
            "step {step}: total norm {a} but the reference has {b}"
        );
        if let (Some(s), Some(state)) = (&recipe.scaler, scaler.as_mut()) {
            reference::update_grad_scaler(s, state, report.found_inf);
        }
        if skip {
            continue;
        }
        taken += 1;
        // The f32 steps get the gradients as the kernel sees them: unscaled and clipped.
        for (t, g) in tracked.iter_mut().zip(&g64) {
            t.step_f64(g);
        }
    }
    if let Some(want) = scaler {
        assert_eq!(opt.read_grad_scaler().unwrap(), want, "grad scaler");
    }
    // The gradients were only read.
    let last: Vec<u32> = last_grads.iter().map(|v| v.to_bits()).collect();
    assert!(bits(ctx, &grad) == last, "the gradients changed");
    let got = ctx.read_f32(&[(&param, 0, total as u64)]).unwrap();
    let what = format!("{config:?} ({})", ctx.access());
    for (k, (&o, &n)) in offsets.iter().zip(sizes).enumerate() {
        let range = o as usize..(o + n) as usize;
        let state = opt.read_state(k).unwrap();
        assert_eq!(state.step, taken);
        tracked[k].assert_matches(&format!("{what}, size {n}"), &got[range], &state);
    }
    // The gaps between tensors, and the end of the buffer, kept their bits.
    let mut end = 0;
    for (&o, &n) in offsets.iter().zip(sizes).chain([(&(total as u64), &0)]) {
        assert!(
            got[end as usize..o as usize]
                .iter()
                .all(|v| v.to_bits() == POISON.to_bits()),
            "{what}: wrote outside its tensors"
        );
        end = o + n;
    }
}

#[test]
fn every_option_combination_matches_reference_over_20_steps() {
    let mut rng = Rng::fresh("every_option_combination");
    for ctx in contexts() {
        // Muon takes matrices only (`orthogonalized_updates_match_reference`).
        for config in all_configs()
            .into_iter()
            .filter(|c| c.check_shape(&[5]).is_ok())
        {
            check_against_reference(&ctx, config, &[1, 255, 256, 257, 1000], 20, &mut rng);
        }
    }
}

#[test]
fn factored_state_matches_reference() {
    // Adafactor's row and column factors: matrices of one row or one column, a stack of
    // matrices, shapes of four dimensions, beside tensors of one dimension, each option
    // combination, and the clipping and scaling recipes.
    let mut rng = Rng::fresh("factored_state");
    let shapes: Vec<Vec<usize>> = vec![
        vec![1, 1],
        vec![3, 85],
        vec![257],
        vec![16, 16],
        vec![257, 1],
        vec![1, 257],
        vec![4, 10, 25],
        vec![2, 3, 5, 7],
        vec![5],
    ];
    for ctx in contexts() {
        for config in all_configs() {
            if let OptimizerConfig::Adafactor(_) = config {
                check_shaped(&ctx, config, PLAIN, &shapes, 12, &mut rng);
            }
        }
        let config = Adafactor::default().into();
        for recipe in recipes() {
            check_shaped(&ctx, config, recipe, &shapes, 6, &mut rng);
        }
    }
    // A beta2_decay beyond float32's range: t^beta2_decay is 1 at the first step and 0 after,
    // as PyTorch computes it in double, not NaN.
    let steep = Adafactor {
        beta2_decay: -1e300,
        ..Default::default()
    };
    check_shaped(ctx(), steep.into(), PLAIN, &shapes, 3, &mut rng);
    // More vec4s of lines than the factor passes' grid has workgroups (16,384 a tensor): each
    // takes several in turn; and lines of more than 65,535 elements (llvmpipe cuts a loop
    // after 65,535 iterations, so no invocation may sum a line alone).
    let config = Adafactor::default().into();
    let long = [vec![70_001, 1], vec![1, 70_001], vec![3, 2]];
    check_shaped(ctx(), config, PLAIN, &long, 2, &mut rng);
}

#[test]
fn orthogonalized_updates_match_reference() {
    // Muon's Newton–Schulz products between the two phases of its step: square, wide and tall
    // matrices (a tall one is iterated transposed), one row or one column, one element, and a
    // matrix across the products' 64 x 64 tiles; each option combination, and the clipping
    // and scaling recipes (a skipped step must leave the momentum and the parameter alone).
    let mut rng = Rng::fresh("orthogonalized_updates");
    let shapes: Vec<Vec<usize>> = vec![
        vec![1, 1],
        vec![3, 85],
        vec![85, 3],
        vec![16, 16],
        vec![1, 257],
        vec![257, 1],
        vec![70, 130],
    ];
    for ctx in contexts() {
        for config in all_configs() {
            if let OptimizerConfig::Muon(_) = config {
                check_shaped(&ctx, config, PLAIN, &shapes, 8, &mut rng);
            }
        }
        for recipe in recipes() {
            check_shaped(&ctx, Muon::default().into(), recipe, &shapes, 6, &mut rng);
        }
    }
    // Rows longer than 65,535 elements, wide and tall: the Gram product's inner dimension is
    // split between workgroups (llvmpipe cuts an invocation's loops after 65,535 iterations).
    let long = [vec![3, 70_001], vec![70_001, 2]];
    let config = Muon {
        lr: 0.02,
        ..Default::default()
    };
    check_shaped(ctx(), config.into(), PLAIN, &long, 2, &mut rng);
}

#[test]
fn muon_groups_keep_their_own_iterations_and_ratios() {
    // Two groups of Muon tensors with an odd and an even number of iterations (the last
    // iterate in the other state buffer), other coefficients and another adjust_lr_fn: each
    // tensor's products and ratio are its group's.
    let ctx = ctx();
    let mut rng = Rng::fresh("muon groups");
    let configs: [OptimizerConfig; 2] = [
        Muon {
            lr: 0.02,
            ..Default::default()
        }
        .into(),
        Muon {
            lr: 0.03,
            ns_steps: 4,
            ns_coefficients: (2.0, -1.5, 0.5),
            adjust_lr_fn: Some(wgpu_optim::AdjustLr::MatchRmsAdamw),
            ..Default::default()
        }
        .into(),
    ];
    let shapes: [(usize, [usize; 2]); 4] = [(0, [9, 4]), (1, [5, 7]), (0, [3, 11]), (1, [8, 2])];
    let lens: Vec<u64> = shapes.iter().map(|(_, s)| (s[0] * s[1]) as u64).collect();
    let offsets: Vec<u64> = lens
        .iter()
        .scan(3, |at, &n| {
            let o = *at;
            *at += n + 1;
            Some(o)
        })
        .collect();
    let total = (offsets[3] + lens[3]) as usize;
    let init = rng.normals(total);
    let param = ctx.create_f32_buffer("param", &init).unwrap();
    let grad = ctx.create_f32_buffer("grad", &vec![0.0; total]).unwrap();
    let mut groups: Vec<ParamGroup<'_>> = configs
        .iter()
        .map(|c| ParamGroup::new(*c, Vec::new()))
        .collect();
    let mut tracked = Vec::new();
    for (k, (g, shape)) in shapes.iter().enumerate() {
        let (o, n) = (offsets[k], lens[k]);
        groups[*g].tensors.push(
            Tensor::new(
                BufferRange::new(&param, o * 4, n),
                BufferRange::new(&grad, o * 4, n),
            )
            .with_shape(shape),
        );
        let values = &init[o as usize..(o + n) as usize];
        tracked.push((*g, k, Tracked::shaped(configs[*g], shape, values)));
    }
    let mut opt = Optimizer::with_groups(ctx, &groups).unwrap();
    for _ in 0..4 {
        let g = rng.normals(total);
        write(&grad, 0, &g);
        opt.step_submit().unwrap();
        for (_, k, t) in &mut tracked {
            let (o, n) = (offsets[*k] as usize, lens[*k] as usize);
            let g64: Vec<f64> = g[o..o + n].iter().map(|&v| f64::from(v)).collect();
            t.step_f64(&g64);
        }
    }
    let got = ctx.read_f32(&[(&param, 0, total as u64)]).unwrap();
    // The optimizer holds the tensors group by group.
    let mut index = 0;
    for group in 0..2 {
        for (g, k, t) in &tracked {
            if *g != group {
                continue;
            }
            let (o, n) = (offsets[*k] as usize, lens[*k] as usize);
            t.assert_matches(
                &format!("group {g}, tensor {k}"),
                &got[o..o + n],
                &opt.read_state(index).unwrap(),
            );
            index += 1;
        }
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
        for ctx in contexts() {
            check_against_reference(&ctx, config, &[1_000_003], 20, &mut rng);
        }
    }
}

#[test]
fn workgroups_that_span_several_tensors_match_reference() {
    // A batch of more than 512 chunks of 256 units, so that a workgroup of the main dispatch
    // takes several chunks in turn, with tensor boundaries inside such a span: the workgroup
    // must move on to the next tensor's segment (and coefficients) there.
    let mut rng = Rng::fresh("workgroups_that_span_several_tensors");
    let sizes = [300_001, 7, 1_000_003, 524_289];
    let configs: [OptimizerConfig; 2] = [
        AdamW {
            lr: 0.01,
            amsgrad: true,
            ..Default::default()
        }
        .into(),
        RMSprop {
            lr: 0.01,
            momentum: 0.9,
            centered: true,
            ..Default::default()
        }
        .into(),
    ];
    for ctx in contexts() {
        for config in configs {
            check_against_reference(&ctx, config, &sizes, 3, &mut rng);
        }
    }
}

#[test]
fn more_than_65535_workgroups() {
    // One tensor of more than 65,535 x 256 elements in scalar access, with the gradient
    // reduction over all its workgroups (norm and inf check) and a skipped step.
    let mut rng = Rng::fresh("more_than_65535_workgroups");
    let n = 65_535 * 256 + 299;
    let config = AdamW {
        lr: 0.01,
        amsgrad: true,
        ..Default::default()
    };
    let recipe = Recipe {
        clip: Some(ClipGrad::norm(2000.0)),
        scaler: Some(GradScaler {
            init_scale: 1024.0,
            growth_interval: 2,
            ..Default::default()
        }),
        inject: &[1],
    };
    let scalar = ctx().clone().with_access(Access::Scalar);
    check_recipe(&scalar, config.into(), recipe, &[n], 4, &mut rng);
}

/// Clipping and grad scaling recipes: norm (2 and inf) clipping that clips on some steps and
/// not others (the total norm of the tests' gradients is about 21, the largest element about
/// 1.7), value clipping, and grad scalers with inf and NaN injected, one of them with factors
/// that are not powers of two.
fn recipes() -> Vec<Recipe> {
    let scaler = GradScaler {
        init_scale: 1024.0,
        growth_interval: 3,
        ..Default::default()
    };
    let odd = GradScaler {
        init_scale: 1000.0,
        growth_factor: 1.7,
        backoff_factor: 0.3,
        growth_interval: 2,
        ..Default::default()
    };
    let inf_norm = |max_norm| {
        Some(ClipGrad::Norm {
            max_norm,
            norm_type: NormType::Inf,
        })
    };
    vec![
        Recipe {
            clip: Some(ClipGrad::norm(21.0)),
            ..PLAIN
        },
        Recipe {
            clip: inf_norm(1.7),
            ..PLAIN
        },
        Recipe {
            clip: Some(ClipGrad::value(0.3)),
            ..PLAIN
        },
        Recipe {
            scaler: Some(scaler),
            inject: &[2, 5, 6, 11],
            ..PLAIN
        },
        Recipe {
            clip: Some(ClipGrad::norm(21.0)),
            scaler: Some(odd),
            inject: &[0, 4, 9],
        },
        Recipe {
            clip: inf_norm(1.7),
            scaler: Some(scaler),
            inject: &[3, 13],
        },
        Recipe {
            clip: Some(ClipGrad::value(0.2)),
            scaler: Some(scaler),
            inject: &[1],
        },
    ]
}

/// One configuration of each optimizer, with its widest state.
fn recipe_configs() -> [OptimizerConfig; 5] {
    [
        Adam {
            lr: 0.01,
            weight_decay: 0.1,
            ..Default::default()
        }
        .into(),
        AdamW {
            lr: 0.01,
            amsgrad: true,
            ..Default::default()
        }
        .into(),
        SGD {
            lr: 0.05,
            momentum: 0.9,
            nesterov: true,
            ..Default::default()
        }
        .into(),
        RMSprop {
            lr: 0.01,
            momentum: 0.9,
            centered: true,
            ..Default::default()
        }
        .into(),
        Adagrad {
            lr: 0.1,
            lr_decay: 0.01,
            ..Default::default()
        }
        .into(),
    ]
}

#[test]
fn clipping_and_grad_scaling_match_reference_at_every_size() {
    let mut rng = Rng::fresh("clipping_and_grad_scaling");
    for ctx in contexts() {
        for recipe in recipes() {
            for config in recipe_configs() {
                check_recipe(
                    &ctx,
                    config,
                    recipe,
                    &[1, 255, 256, 257, 1000],
                    16,
                    &mut rng,
                );
            }
        }
    }
}

#[test]
fn clipping_and_grad_scaling_under_small_limits() {
    // Windows of 1 MiB and grids of at most 100 workgroups a dimension, as in
    // `vec4_windows_split_and_grids_fold_under_small_limits`: the reduction covers every
    // window and folded grid.
    let small = context_with_limits(|l| {
        l.max_compute_workgroups_per_dimension = 100;
        l.max_storage_buffer_binding_size = 1 << 20;
    });
    let mut rng = Rng::fresh("clipping_and_grad_scaling_under_small_limits");
    let recipe = Recipe {
        clip: Some(ClipGrad::norm(400.0)),
        scaler: Some(GradScaler {
            init_scale: 1024.0,
            growth_interval: 2,
            ..Default::default()
        }),
        inject: &[1],
    };
    for access in [Access::Scalar, Access::Vec4] {
        let ctx = small.clone().with_access(access);
        let config = recipe_configs()[1];
        check_recipe(&ctx, config, recipe, &[1000, 700_001, 3], 4, &mut rng);
    }
}

/// Vec4 batches on a device with small limits: storage bindings of 1 MiB, so that a tensor is
/// split across several windows and dispatches, and at most 100 workgroups per grid dimension,
/// so that each dispatch folds into a 2-D grid. One binding on lavapipe (128 MiB) holds 32,768
/// vec4 workgroups, fewer than 65,535, so only lowered limits reach these paths there.
#[test]
fn vec4_windows_split_and_grids_fold_under_small_limits() {
    let ctx = context_with_limits(|l| {
        l.max_compute_workgroups_per_dimension = 100;
        l.max_storage_buffer_binding_size = 1 << 20;
    })
    .with_access(Access::Vec4);
    let mut rng = Rng::fresh("vec4_windows_split_and_grids_fold");
    let config = AdamW {
        lr: 0.01,
        amsgrad: true,
        ..Default::default()
    };
    // 700,001 elements need three 1 MiB windows; each window holds 256 vec4 workgroups, a
    // 100 x 3 grid.
    check_against_reference(&ctx, config.into(), &[1000, 700_001, 3], 3, &mut rng);
}

#[test]
fn many_tensors_in_several_groups() {
    let mut rng = Rng::fresh("many_tensors_in_several_groups");
    for ctx in contexts() {
        // More than one batch's 256 slots.
        let sizes: Vec<u64> = (0..300).map(|_| 1 + rng.below(700)).collect();
        many_tensors(&ctx, &sizes, 20, &mut rng);
        // Large tensors, so that a workgroup of the main dispatch takes several chunks in
        // turn and crosses from one group's tensor into another's, whose coefficients differ.
        let sizes: Vec<u64> = (0..9).map(|_| 100_000 + rng.below(200_000)).collect();
        many_tensors(&ctx, &sizes, 3, &mut rng);
    }
}

/// Tensors of the given sizes back to back in three groups of Adam (neighbours share vec4s),
/// stepped `steps` times.
fn many_tensors(ctx: &Context, sizes: &[u64], steps: usize, rng: &mut Rng) {
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
    groups_of_tensors(ctx, &configs, sizes, steps, rng);
}

/// Tensors of the given sizes back to back, the k-th in group k mod 3 of `configs`, stepped
/// `steps` times against the reference.
fn groups_of_tensors(
    ctx: &Context,
    configs: &[OptimizerConfig; 3],
    sizes: &[u64],
    steps: usize,
    rng: &mut Rng,
) {
    let total: u64 = sizes.iter().sum::<u64>().next_multiple_of(4);
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
    assert!((0..sizes.len()).all(|k| opt.tensor_access(k).unwrap() == ctx.access()));
    let range = |k: usize| owner[k].1 as usize..(owner[k].1 + sizes[k]) as usize;
    let mut tracked: Vec<Tracked> = (0..sizes.len())
        .map(|k| Tracked::new(configs[owner[k].0], &init[range(k)]))
        .collect();
    for _ in 0..steps {
        let g = rng.normals(total as usize);
        write(&grad, 0, &g);
        opt.step_submit().unwrap();
        for (k, t) in tracked.iter_mut().enumerate() {
            t.step(&g[range(k)]);
        }
    }
    let got = ctx.read_f32(&[(&param, 0, total)]).unwrap();
    for (k, t) in tracked.iter().enumerate() {
        let what = format!(
            "tensor {k} of {} in 3 groups ({})",
            sizes.len(),
            ctx.access()
        );
        t.assert_param_matches(&what, &got[range(k)]);
    }
}

/// Tensors that cannot use vec4 access run scalar beside vec4 ones in one optimizer: a
/// gradient at another offset modulo 16 bytes than its parameter, and a tensor that ends in
/// the last, partial vec4 of its buffers.
#[test]
fn tensors_unfit_for_vec4_fall_back_to_scalar() {
    let ctx = ctx().clone().with_access(Access::Vec4);
    let mut rng = Rng::fresh("tensors_unfit_for_vec4");
    // Parameter offsets and lengths in elements; total 1 + 1001 + 3 + 517 + 2 = 1524 + 2.
    let layout = [(1, 1001), (1005, 517), (1524, 2)];
    let total = 1526;
    let grad_offsets = [1, 1006, 1524];
    let init = rng.normals(total);
    let param = ctx.create_f32_buffer("param", &init).unwrap();
    let grad = ctx.create_f32_buffer("grad", &vec![0.0; total]).unwrap();
    let tensors: Vec<Tensor<'_>> = layout
        .iter()
        .zip(grad_offsets)
        .map(|(&(o, n), g)| {
            Tensor::new(
                BufferRange::new(&param, o * 4, n),
                BufferRange::new(&grad, g * 4, n),
            )
        })
        .collect();
    let config: OptimizerConfig = Adam {
        lr: 0.01,
        weight_decay: 0.01,
        ..Default::default()
    }
    .into();
    let mut opt = Optimizer::new(&ctx, config, &tensors).unwrap();
    let access: Vec<Access> = (0..3).map(|k| opt.tensor_access(k).unwrap()).collect();
    assert_eq!(access, [Access::Vec4, Access::Scalar, Access::Scalar]);
    assert_eq!(opt.dispatches_per_step(), 2);
    let span = |at: u64, n: u64| at as usize..(at + n) as usize;
    let mut tracked: Vec<Tracked> = layout
        .iter()
        .map(|&(o, n)| Tracked::new(config, &init[span(o, n)]))
        .collect();
    for _ in 0..10 {
        let g = rng.normals(total);
        write(&grad, 0, &g);
        opt.step_submit().unwrap();
        for ((t, &(_, n)), go) in tracked.iter_mut().zip(&layout).zip(grad_offsets) {
            t.step(&g[span(go, n)]);
        }
    }
    let got = ctx.read_f32(&[(&param, 0, total as u64)]).unwrap();
    for (k, (t, &(o, n))) in tracked.iter().zip(&layout).enumerate() {
        t.assert_param_matches(&format!("tensor {k}, scalar or vec4"), &got[span(o, n)]);
    }
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
    opt.step_submit().unwrap();
    let state = opt.read_state(0).unwrap();
    assert_eq!(state.step, 1);
    assert!(state.buffers.values().all(Vec::is_empty));
    assert_eq!(ctx.read_f32(&[(&param, 0, 2)]).unwrap(), [1.0, 2.0]);
    // Muon's matrices with a dimension of 0 (PyTorch steps them, changing nothing), beside
    // one that steps.
    let shapes = [[0usize, 5], [3, 0]];
    let mut tensors: Vec<Tensor<'_>> = shapes.iter().map(|s| empty.with_shape(s)).collect();
    let one = Tensor::new(
        BufferRange::new(&param, 0, 2),
        BufferRange::new(&grad, 0, 2),
    )
    .with_shape(&[1, 2]);
    tensors.push(one);
    let mut opt = Optimizer::new(ctx, Muon::default(), &tensors).unwrap();
    opt.step_submit().unwrap();
    assert!(opt.read_state(0).unwrap().buffers["momentum_buffer"].is_empty());
    let want = Tracked::shaped(Muon::default().into(), &[1, 2], &[1.0, 2.0]);
    let mut want = want;
    want.step_f64(&[0.5, 0.5]);
    let got = ctx.read_f32(&[(&param, 0, 2)]).unwrap();
    want.assert_matches(
        "Muon beside empty matrices",
        &got,
        &opt.read_state(2).unwrap(),
    );
}

#[test]
fn groups_may_differ_in_their_per_tensor_sums() {
    // The groups of one optimizer may differ in whether their update needs per-tensor sums
    // (ADOPT's cautious, on in the second group only) and in how many rounds (Lamb's adanorm,
    // two rounds in the second group, one in the others): each tensor's sums and running norm
    // must follow its own group.
    let mut rng = Rng::fresh("groups_differ_in_sums");
    let sizes: Vec<u64> = (0..12).map(|k| 1 + 131 * k).collect();
    let adopt: [OptimizerConfig; 3] = [
        ADOPT::default().into(),
        ADOPT {
            cautious: true,
            lr: 0.01,
            ..Default::default()
        }
        .into(),
        ADOPT {
            lr: 0.02,
            ..Default::default()
        }
        .into(),
    ];
    let lamb: [OptimizerConfig; 3] = [
        Lamb {
            lr: 0.01,
            ..Default::default()
        }
        .into(),
        Lamb {
            lr: 0.01,
            adanorm: true,
            adanorm_r: 0.5,
            adam: true,
            eps: 1e-3,
            ..Default::default()
        }
        .into(),
        Lamb {
            lr: 0.02,
            weight_decay: 0.1,
            ..Default::default()
        }
        .into(),
    ];
    for ctx in contexts() {
        groups_of_tensors(&ctx, &adopt, &sizes, 8, &mut rng);
        groups_of_tensors(&ctx, &lamb, &sizes, 8, &mut rng);
    }
}

#[test]
fn per_tensor_sums_cover_split_tensors_and_folded_grids() {
    // Lamb's trust ratio needs each whole tensor's norms. With windows of 1 MiB and grids of
    // at most 100 workgroups a dimension, the sums' pass must cover a tensor split across
    // windows and dispatches and fold into 2-D grids, their combination must fold too (more
    // tensors than a dimension holds), and a recipe that unscales, clips and skips a step
    // must give the sums of the prepared gradients.
    let small = context_with_limits(|l| {
        l.max_compute_workgroups_per_dimension = 100;
        l.max_storage_buffer_binding_size = 1 << 20;
    });
    let mut rng = Rng::fresh("per_tensor_sums");
    let lamb = Lamb {
        lr: 0.01,
        weight_decay: 0.1,
        ..Default::default()
    };
    let config: OptimizerConfig = lamb.into();
    let mut sizes = vec![1000, 700_001, 3];
    sizes.extend((0..150).map(|k| 1 + 37 * k));
    for access in [Access::Scalar, Access::Vec4] {
        let ctx = small.clone().with_access(access);
        check_against_reference(&ctx, config, &sizes, 3, &mut rng);
    }
    let recipe = Recipe {
        clip: Some(ClipGrad::norm(400.0)),
        scaler: Some(GradScaler {
            init_scale: 1024.0,
            growth_interval: 2,
            ..Default::default()
        }),
        inject: &[1],
    };
    let ctx = small.with_access(Access::Vec4);
    check_recipe(&ctx, config, recipe, &[1000, 700_001, 3], 4, &mut rng);
    // pre_norm over the same split tensors, from the norm of the unscaled gradients that the
    // clipping scales, and alone; without the trust ratio and with ε above √v, so that the
    // update follows the gradients' scale.
    let pre_norm: OptimizerConfig = Lamb {
        pre_norm: true,
        max_grad_norm: 0.5,
        adam: true,
        eps: 1e-3,
        ..lamb
    }
    .into();
    check_recipe(&ctx, pre_norm, recipe, &[1000, 700_001, 3], 4, &mut rng);
    check_against_reference(&ctx, pre_norm, &[1000, 700_001, 3], 3, &mut rng);
}
