//! `wgpu_optim::validate`: every kernel on the test adapter against the f64 reference, with
//! the report as a table and as JSON.

mod common;

use wgpu_optim::F16Path;
use wgpu_optim::validate::{self, Options, Status};

/// Fresh data each run; the seed is printed so a failure can be repeated with `--seed`.
fn seed() -> u64 {
    let seed = validate::Rng::clock_seed();
    eprintln!("validate seed {seed}");
    seed
}

#[test]
fn every_kernel_passes_and_reports() {
    let ctx = common::ctx();
    let seed = seed();
    let options = Options::new(70_001, 5, seed);
    let report = validate::run(ctx, &options).unwrap();
    let table = report.table();
    eprintln!("{table}");

    let configs = validate::all_configs();
    let recipes = validate::all_recipes();
    let all = validate::all_rows(ctx);
    assert_eq!(report.rows.len(), all.len());
    // Every configuration and recipe in f32, and every class in each 16-bit layout it takes;
    // the native f16 path's only where the device has SHADER_F16.
    let (layouts, not_run): (Vec<_>, Vec<_>) = validate::storage_layouts()
        .into_iter()
        .partition(|l| l.runs_on(ctx));
    let native = layouts.iter().any(|l| l.f16_path == F16Path::Native);
    assert_eq!(native, ctx.has_native_f16());
    assert!(not_run.iter().all(|l| l.f16_path != F16Path::Auto));
    assert_eq!(not_run.is_empty(), ctx.has_native_f16());
    assert_eq!(
        report.storage,
        layouts.iter().map(|l| l.name).collect::<Vec<_>>()
    );
    for layout in &layouts[1..] {
        for class in wgpu_optim::OptimizerConfig::CLASSES {
            let applies = configs
                .iter()
                .any(|c| c.type_name() == *class && layout.applies_to(c));
            let rows = report
                .rows
                .iter()
                .filter(|r| r.storage == layout.name && r.optimizer == *class)
                .count();
            assert_eq!(rows, usize::from(applies), "{class} in {}", layout.name);
        }
    }
    for (config, recipe) in &recipes {
        assert!(
            report
                .rows
                .iter()
                .any(|r| r.config == *config && r.options.ends_with(&recipe.label())),
            "no row for {config:?} with {}",
            recipe.label()
        );
    }
    for config in &configs {
        assert!(
            report.rows.iter().any(|r| r.config == *config),
            "no row for {config:?}"
        );
    }
    for (row, (config, _, layout)) in report.rows.iter().zip(&all) {
        assert_eq!(row.status, Status::Pass, "{row:?}");
        assert_eq!((row.storage, &row.config), (layout.name, config));
        assert!(row.max_error_over_tolerance.unwrap() <= 1.0, "{row:?}");
        // How far float32 arithmetic itself strays depends on the data (seed 1795956851446045466
        // gives 68x the tolerance for RMSprop with momentum and weight decay, where a gradient
        // and its decay term nearly cancel); the kernel is then held to twice that, not to 1.
        assert!(
            row.f32_cpu_error_over_tolerance
                .is_some_and(|e| e.is_finite() && e >= 0.0),
            "{row:?}"
        );
        assert!(row.detail.is_none(), "{row:?}");
        // The absolute error itself can exceed the tolerance where float32 arithmetic does
        // (ill-conditioned data); `max_error_over_tolerance` above already allows for that.
        assert!(row.max_abs_error.is_some_and(f64::is_finite), "{row:?}");
        assert!(row.gb_per_s.unwrap() > 0.0, "{row:?}");
        // The reduction of clipping and grad scaling reads the gradients once more.
        let reduction =
            if row.options.contains("clip_grad_norm") || row.options.contains("GradScaler") {
                4
            } else {
                0
            };
        let types = (layout.param, layout.grad);
        assert_eq!(
            row.bytes_per_element,
            wgpu_optim::bench::bytes_per_element_stored(
                &row.config,
                false,
                types,
                layout.precision
            ) + reduction
        );
    }
    assert!(report.passed());
    assert_eq!(report.counts(), (all.len(), 0, 0));
    for kernel in validate::kernel_names() {
        assert!(
            report.rows.iter().any(|r| r.kernel == kernel),
            "kernel {kernel} has no row"
        );
        assert!(table.contains(&kernel), "table lacks {kernel}");
    }
    assert!(table.contains("copy"));
    assert!(table.contains(&format!("seed {seed}")));
    assert!(table.contains("f32"));
    assert!(report.copy.is_some_and(|c| c.gb_per_s > 0.0));
    assert_eq!(report.tensor_sizes.iter().sum::<u64>(), 70_001);
    assert!(report.tensor_sizes.iter().any(|n| n % 256 != 0));

    let json: serde_json::Value = serde_json::from_str(&report.to_json().unwrap()).unwrap();
    assert_eq!(json["seed"], seed);
    assert_eq!(json["size"], 70_001);
    assert!(
        json["adapter"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
    );
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), report.rows.len());
    assert_eq!(rows[0]["status"], "pass");
    assert_eq!(rows[0]["storage"], "f32");
    assert!(rows[0]["config"]["type"].is_string());
    assert!(rows[0]["gb_per_s"].is_number());
}

#[test]
fn the_same_seed_gives_the_same_errors() {
    let ctx = common::ctx();
    let a = validate::run(ctx, &Options::new(3000, 2, 9)).unwrap();
    let b = validate::run(ctx, &Options::new(3000, 2, 9)).unwrap();
    let errors = |r: &validate::Report| -> Vec<Option<f64>> {
        r.rows.iter().map(|row| row.max_abs_error).collect()
    };
    assert_eq!(errors(&a), errors(&b));
    let c = validate::run(ctx, &Options::new(3000, 2, 10)).unwrap();
    assert_ne!(errors(&a), errors(&c));
}

#[test]
fn tiny_sizes_and_bad_options() {
    let ctx = common::ctx();
    for size in [1, 2, 300] {
        let report = validate::run(ctx, &Options::new(size, 1, 3)).unwrap();
        assert_eq!(report.tensor_sizes.iter().sum::<u64>(), size);
        assert!(report.passed(), "{}", report.table());
    }
    for (size, steps, needle) in [(0, 5, "--size"), (10, 0, "--steps")] {
        let e = validate::run(ctx, &Options::new(size, steps, 1)).unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
    }
    let e = validate::run(ctx, &Options::new(u64::MAX / 2, 1, 1)).unwrap_err();
    assert!(e.to_string().contains("max_buffer_size"), "{e}");
}

#[test]
fn adapters_are_listed_with_their_limits() {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    let adapters = validate::adapters(backends).unwrap();
    assert!(!adapters.is_empty());
    for a in &adapters {
        let text = a.describe();
        assert!(text.starts_with(&a.adapter.name), "{text}");
        for needle in [
            "max_buffer_size",
            "max_storage_buffer_binding_size",
            "max_compute_workgroups_per_dimension",
            "max_storage_buffers_per_shader_stage",
            "f16",
        ] {
            assert!(text.contains(needle), "{text}");
        }
    }
}

#[test]
fn kernels_beyond_the_device_limits_are_unsupported_not_failed() {
    // Every kernel binds 4 storage buffers: on a device that allows 3 per stage, every row is
    // reported unsupported, naming the limit; on one that allows 4 (WebGPU's downlevel
    // limit), every row passes but those whose update needs per-tensor sums (Lamb's,
    // Adafactor's, Muon's, and pytorch-optimizer's cautious and stable_adamw options), whose
    // sums' pass binds a fifth, and those with master weights, which bind a fifth too.
    let ctx = common::context_with_limits(|l| l.max_storage_buffers_per_shader_stage = 3);
    let report = validate::run(&ctx, &Options::new(3000, 2, seed())).unwrap();
    assert!(report.passed(), "{}", report.table());
    for row in &report.rows {
        assert_eq!(row.status, Status::Unsupported, "{row:?}");
        let detail = row.detail.as_deref().unwrap();
        assert!(
            detail.contains("max_storage_buffers_per_shader_stage"),
            "{detail}"
        );
        assert!(row.gb_per_s.is_none() && row.max_abs_error.is_none());
    }
    let (pass, fail, unsupported) = report.counts();
    assert_eq!((pass, fail, unsupported), (0, 0, report.rows.len()));
    let table = report.table();
    assert!(table.contains("unsupported"), "{table}");

    let ctx = common::context_with_limits(|l| l.max_storage_buffers_per_shader_stage = 4);
    let report = validate::run(&ctx, &Options::new(3000, 2, seed())).unwrap();
    let sums = |r: &&validate::Row| {
        r.kernel == "adafactor"
            || r.kernel.starts_with("lamb")
            || r.kernel.starts_with("muon")
            || r.kernel.contains("cautious")
            || r.kernel.contains("stable_adamw")
            || r.storage.contains("master")
    };
    let lamb = report.rows.iter().filter(sums).count();
    assert!(lamb > 0);
    for row in report.rows.iter().filter(sums) {
        assert_eq!(row.status, Status::Unsupported, "{row:?}");
        let detail = row.detail.as_deref().unwrap();
        assert!(
            detail.contains("storage buffers but the device allows 4"),
            "{detail}"
        );
    }
    let (pass, fail, unsupported) = report.counts();
    assert_eq!(
        (pass, fail, unsupported),
        (report.rows.len() - lamb, 0, lamb),
        "{}",
        report.table()
    );
}
