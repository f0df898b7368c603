//! The LR range test on a synthetic loss, on the GPU.
//!
//! f(θ) = ½‖θ‖², so ∇f = θ and one SGD step gives θ·(1 − lr): the loss falls fastest for lr
//! near 1 and grows once lr passes 2. The gradient is a GPU copy of θ; the loss is read back.

mod common;

use wgpu_optim::lr_finder::{LrFinder, RangeTest, Sweep};
use wgpu_optim::{BufferRange, Error, Optimizer, SGD, Tensor};

#[test]
fn range_test_suggests_a_sensible_lr_and_restores_everything() {
    let ctx = common::ctx();
    let mut rng = common::Rng::fresh("range_test");
    let n = 1000u64;
    let init = rng.normals(n as usize);
    let param = ctx.create_f32_buffer("theta", &init).unwrap();
    let grad = ctx
        .create_f32_buffer("grad", &vec![0.0; n as usize])
        .unwrap();
    let tensor = Tensor::new(BufferRange::whole(&param), BufferRange::whole(&grad));
    let mut sgd = Optimizer::new(
        ctx,
        SGD {
            lr: 0.01,
            momentum: 0.5,
            ..Default::default()
        },
        &[tensor],
    )
    .unwrap();
    // Two real steps first, so that there is optimizer state to restore.
    for _ in 0..2 {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&param, 0, &grad, 0, n * 4);
        sgd.step(&mut encoder).unwrap();
        ctx.queue().submit([encoder.finish()]);
    }
    let params_before = ctx.read_f32(&[(&param, 0, n)]).unwrap();
    let state_before = sgd.read_state(0).unwrap();

    let finder = LrFinder {
        start_lr: 1e-4,
        end_lr: 100.0,
        num_iter: 80,
        ..Default::default()
    };
    let test = finder
        .run(&mut sgd, |opt| {
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(&param, 0, &grad, 0, n * 4);
            opt.step(&mut encoder).unwrap();
            ctx.queue().submit([encoder.finish()]);
            let theta = ctx.read_f32(&[(&param, 0, n)])?;
            Ok(theta
                .iter()
                .map(|&t| 0.5 * f64::from(t) * f64::from(t))
                .sum())
        })
        .unwrap();

    // The sweep is exponential and stopped early when the loss blew up.
    assert!(test.diverged, "lr up to 100 must diverge");
    assert!(test.lrs.len() < 80);
    assert!((test.lrs[0] - 1e-4).abs() < 1e-12);
    let ratio = test.lrs[1] / test.lrs[0];
    assert!(
        test.lrs
            .windows(2)
            .all(|w| (w[1] / w[0] - ratio).abs() < 1e-9)
    );
    // The raw loss bottoms out where heavy-ball SGD (β = 0.5) contracts fastest, near lr = 1
    // and before its stability limit 2(1 + β) = 3.
    let lowest = (0..test.losses.len())
        .min_by(|a, b| test.losses[*a].total_cmp(&test.losses[*b]))
        .unwrap();
    assert!(
        (0.5..3.0).contains(&test.lrs[lowest]),
        "raw minimum at lr {}",
        test.lrs[lowest]
    );
    // The suggestions come from the smoothed curve, which lags the raw one by a few iterations.
    let steep = test.steepest_lr.unwrap();
    let min10 = test.min_loss_lr.unwrap();
    assert!((0.05..3.0).contains(&steep), "steepest {steep}");
    assert!((0.05..1.0).contains(&min10), "min/10 {min10}");
    // Parameters, state, step count and lr are as before.
    assert_eq!(ctx.read_f32(&[(&param, 0, n)]).unwrap(), params_before);
    assert_eq!(sgd.read_state(0).unwrap(), state_before);
    assert_eq!(sgd.groups()[0].lr(), 0.01);
    // The plot marks the suggestions.
    let svg = test.svg().unwrap();
    assert!(
        svg.starts_with("<svg")
            && svg.contains("steepest descent")
            && svg.contains("min loss / 10")
    );
}

#[test]
fn linear_sweep_and_analysis() {
    let finder = LrFinder {
        start_lr: 0.1,
        end_lr: 1.0,
        num_iter: 10,
        sweep: Sweep::Linear,
        ..Default::default()
    };
    let lrs: Vec<f64> = (0..10).map(|i| finder.lr_at(i)).collect();
    for (i, lr) in lrs.iter().enumerate() {
        assert!((lr - (0.1 + 0.1 * i as f64)).abs() < 1e-12);
    }
    // The EMA follows s_i = 0.05·l_i + 0.95·s_{i-1}.
    let losses = [4.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.4, 0.3, 0.2, 0.1];
    let test = finder.analyze(&lrs, &losses).unwrap();
    let mut s = losses[0];
    for (i, &l) in losses.iter().enumerate().skip(1) {
        s = 0.05 * l + 0.95 * s;
        assert!((test.smoothed[i] - s).abs() < 1e-12);
    }
    assert!(!test.diverged);
    // Too few points after skipping: the whole curve is used. The smoothed curve falls
    // fastest at index 4 (numpy.gradient of it: (s5 - s3)/2 = -0.15196) and is lowest at the end.
    assert_eq!(test.min_loss_lr, Some(lrs[9] / 10.0));
    assert_eq!(test.steepest_lr, Some(lrs[4]));
}

#[test]
fn invalid_settings_are_errors_and_change_nothing() {
    let ctx = common::ctx();
    let param = ctx.create_f32_buffer("p", &[1.0; 4]).unwrap();
    let grad = ctx.create_f32_buffer("g", &[1.0; 4]).unwrap();
    let t = Tensor::new(BufferRange::whole(&param), BufferRange::whole(&grad));
    let mut opt = Optimizer::new(ctx, SGD::default(), &[t]).unwrap();
    for bad in [
        LrFinder {
            start_lr: 0.0,
            ..Default::default()
        },
        LrFinder {
            end_lr: 1e-8,
            ..Default::default()
        },
        LrFinder {
            num_iter: 1,
            ..Default::default()
        },
        LrFinder {
            smooth: 0.0,
            ..Default::default()
        },
        LrFinder {
            diverge_threshold: 1.0,
            ..Default::default()
        },
    ] {
        let mut called = false;
        assert!(
            bad.run(&mut opt, |_| {
                called = true;
                Ok(1.0)
            })
            .is_err()
        );
        assert!(!called);
    }
    assert_eq!(ctx.read_f32(&[(&param, 0, 4)]).unwrap(), [1.0; 4]);
}

#[test]
fn analyze_needs_one_loss_per_learning_rate() {
    let finder = LrFinder::default();
    for (lrs, losses) in [
        (vec![0.1, 0.2, 0.3], vec![1.0, 0.5]),
        (vec![0.1], vec![1.0, 0.5, 0.25]),
        (vec![], vec![1.0]),
    ] {
        match finder.analyze(&lrs, &losses) {
            Err(Error::Input(m)) => assert_eq!(
                m,
                format!(
                    "LR finder: analyze needs one loss per learning rate, got {} learning rates \
                     and {} losses",
                    lrs.len(),
                    losses.len()
                )
            ),
            other => panic!("{lrs:?} / {losses:?}: {other:?}"),
        }
    }
    // Equal lengths, even empty, are analyzed.
    let empty = finder.analyze(&[], &[]).unwrap();
    assert!(empty.smoothed.is_empty() && empty.steepest_lr.is_none());
    let two = finder.analyze(&[0.1, 0.2], &[1.0, 3.0]).unwrap();
    // s1 = 0.05·3 + 0.95·1 = 1.1; the lowest is s0 at lr 0.1, the only slope is at both.
    assert_eq!(two.smoothed, [1.0, 0.05 * 3.0 + 0.95 * 1.0]);
    assert_eq!(two.min_loss_lr, Some(0.1 / 10.0));
}

/// Runs `f` on another thread and fails when it takes longer than a minute (plotters loops
/// without end on a log axis whose ends are not finite or too far apart).
fn within_a_minute<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{what}: no result within a minute ({e})"))
}

/// `RangeTest` is plain data: its plot takes any contents, lengths that differ and learning
/// rates anywhere in the f64 range included.
#[test]
fn range_test_plots_any_contents() {
    let test = |lrs: Vec<f64>, smoothed: Vec<f64>, marks: Option<f64>| RangeTest {
        losses: smoothed.clone(),
        lrs,
        smoothed,
        diverged: false,
        steepest_lr: marks,
        min_loss_lr: marks,
    };
    for (what, t) in [
        (
            "more lrs than losses, marked past the losses",
            test(vec![0.1, 0.2, 0.3], vec![1.0], Some(0.3)),
        ),
        ("one tiny lr", test(vec![5e-324], vec![1.0], Some(5e-324))),
        ("one huge lr", test(vec![1.7e308], vec![1.0], Some(1.7e308))),
        (
            "lrs over 600 decades",
            test(vec![1e-300, 1.0, 1e300], vec![1.0, 0.5, 2.0], Some(1.0)),
        ),
        (
            "lrs that a log axis cannot show",
            test(
                vec![0.0, -1.0, f64::INFINITY, 1e-3],
                vec![1.0, 1.0, 1.0, 1.0],
                Some(-1.0),
            ),
        ),
        (
            "losses near f64::MAX",
            test(vec![1e-3, 1e-2], vec![-1e308, 1e308], None),
        ),
    ] {
        let svg = within_a_minute(what, move || t.svg());
        assert!(svg.unwrap().starts_with("<svg"), "{what}");
    }
}

/// `num_iter` is the caller's: a huge one is not allocated up front. The sweep stops at the
/// first error of the training step, which comes back, and everything is restored.
#[test]
fn huge_num_iter_runs_until_the_training_step_stops_it() {
    let ctx = common::ctx();
    let param = ctx.create_f32_buffer("p", &[1.0; 4]).unwrap();
    let grad = ctx.create_f32_buffer("g", &[1.0; 4]).unwrap();
    let t = Tensor::new(BufferRange::whole(&param), BufferRange::whole(&grad));
    let mut opt = Optimizer::new(ctx, SGD::default(), &[t]).unwrap();
    let finder = LrFinder {
        num_iter: usize::MAX,
        ..Default::default()
    };
    let mut calls = 0;
    let r = finder.run(&mut opt, |o| {
        calls += 1;
        if calls == 3 {
            return Err(Error::Input("stop".into()));
        }
        o.step_submit()?;
        Ok(1.0)
    });
    assert!(matches!(r, Err(Error::Input(m)) if m == "stop"));
    assert_eq!(calls, 3);
    assert_eq!(ctx.read_f32(&[(&param, 0, 4)]).unwrap(), [1.0; 4]);
}
