//! The `wgpu-optim` binary end to end: `replay` on PyTorch golden data, and its errors (one
//! line on stderr, a non-zero exit, no output file).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use wgpu_optim::DType;
use wgpu_optim::replay::{self, NamedTensor};

fn golden(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/optim")
        .join(file)
}

/// A fresh scratch directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgpu-optim-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the binary. For `replay` and `validate`, the backend follows `WGPU_BACKEND` when it
/// names one the CLI knows and the arguments name none. `XDG_RUNTIME_DIR` is set because
/// Mesa's Vulkan device-select layer complains on stderr without it.
fn wgpu_optim(args: &[&str], dir: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wgpu-optim"));
    cmd.args(args).env("XDG_RUNTIME_DIR", dir);
    if let Ok(b) = std::env::var("WGPU_BACKEND")
        && matches!(args.first(), Some(&"replay" | &"validate"))
        && !args.contains(&"--backend")
        && ["vulkan", "gl", "metal", "dx12"].contains(&b.as_str())
    {
        cmd.args(["--backend", &b]);
    }
    cmd.output().unwrap()
}

fn replay_args<'a>(
    optimizer: &'a str,
    params: &'a str,
    grads: &'a str,
    out: &'a str,
) -> Vec<&'a str> {
    vec![
        "replay",
        "--optimizer",
        optimizer,
        "--params",
        params,
        "--grads",
        grads,
        "--out",
        out,
    ]
}

#[test]
fn replay_writes_pytorch_matching_params_and_state() {
    let dir = scratch("ok");
    let out = dir.join("out.safetensors");
    let spec = r#"{"type":"Adam","lr":0.01,"amsgrad":true}"#;
    let (p, g) = (golden("params.safetensors"), golden("grads.safetensors"));
    let run = wgpu_optim(
        &replay_args(
            spec,
            p.to_str().unwrap(),
            g.to_str().unwrap(),
            out.to_str().unwrap(),
        ),
        &dir,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ours = replay::read_safetensors(&out).unwrap();
    let torch = replay::read_safetensors(&golden("adam_amsgrad.f32.safetensors")).unwrap();
    let names = |v: &[NamedTensor]| v.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&torch));
    assert!(names(&ours).contains(&"w.max_exp_avg_sq".to_string()));
    for (a, b) in ours.iter().zip(&torch) {
        assert_eq!(a.shape, b.shape, "{}", a.name);
        for (x, y) in a.data.iter().zip(&b.data) {
            assert!(
                (x - y).abs() <= 4e-6 * (1.0 + y.abs()),
                "{}: {x} vs {y}",
                a.name
            );
        }
    }
}

/// Expects failure with exactly one line on stderr containing `needle`, and no output file.
#[track_caller]
fn expect_error(dir: &Path, args: &[&str], needle: &str) {
    let run = wgpu_optim(args, dir);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "should fail: {args:?}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line on stderr, got: {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "stderr {stderr:?} should mention {needle:?}"
    );
    assert!(!stderr.contains("panicked"));
    assert!(
        !dir.join("out.safetensors").exists(),
        "no output file after an error"
    );
    assert!(!dir.join("out.safetensors.partial").exists());
}

#[test]
fn replay_errors_are_one_line_and_write_nothing() {
    let dir = scratch("errors");
    let out = dir.join("out.safetensors");
    let out = out.to_str().unwrap();
    let p = golden("params.safetensors");
    let g = golden("grads.safetensors");
    let (p, g) = (p.to_str().unwrap(), g.to_str().unwrap());
    let adam = r#"{"type":"Adam"}"#;

    expect_error(
        &dir,
        &replay_args(r#"{"type":"LBFGS"}"#, p, g, out),
        "unknown variant",
    );
    expect_error(
        &dir,
        &replay_args(r#"{"type":"Adam","lr":-0.5}"#, p, g, out),
        "Invalid learning rate: -0.5",
    );
    expect_error(
        &dir,
        &replay_args(r#"{"type":"SGD","nesterov":true}"#, p, g, out),
        "Nesterov momentum requires",
    );
    expect_error(
        &dir,
        &replay_args(r#"{"type":"Adam","betas":[1.0,0.9]}"#, p, g, out),
        "Invalid beta parameter at index 0",
    );
    expect_error(
        &dir,
        &replay_args(r#"{"type":"Adam","momentum":0.9}"#, p, g, out),
        "unknown field",
    );
    expect_error(
        &dir,
        &replay_args(r#"{"type":"Adam","differentiable":true}"#, p, g, out),
        "differentiable=True is not supported",
    );
    expect_error(&dir, &replay_args("{not json", p, g, out), "--optimizer");
    expect_error(
        &dir,
        &replay_args(adam, "/nonexistent/p.safetensors", g, out),
        "No such file",
    );
    expect_error(&dir, &["replay", "--bogus"], "--bogus");

    // Truncated and corrupt files.
    let bytes = std::fs::read(p).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 7]).unwrap();
    expect_error(
        &dir,
        &replay_args(adam, truncated.to_str().unwrap(), g, out),
        "not a valid safetensors file",
    );
    let corrupt = dir.join("corrupt.safetensors");
    let mut junk = bytes.clone();
    junk[8..40].fill(b'#');
    std::fs::write(&corrupt, &junk).unwrap();
    expect_error(
        &dir,
        &replay_args(adam, corrupt.to_str().unwrap(), g, out),
        "not a valid safetensors file",
    );

    // Names and shapes that don't match.
    let params = replay::read_safetensors(Path::new(p)).unwrap();
    let renamed: Vec<NamedTensor> = params
        .iter()
        .map(|t| NamedTensor {
            name: format!("{}_x", t.name),
            ..t.clone()
        })
        .collect();
    let renamed_path = dir.join("renamed.safetensors");
    replay::write_safetensors(&renamed_path, &renamed).unwrap();
    expect_error(
        &dir,
        &replay_args(adam, renamed_path.to_str().unwrap(), g, out),
        "no gradient named",
    );
    let reshaped: Vec<NamedTensor> = params
        .iter()
        .map(|t| NamedTensor {
            shape: vec![t.data.len()],
            ..t.clone()
        })
        .collect();
    let reshaped_path = dir.join("reshaped.safetensors");
    replay::write_safetensors(&reshaped_path, &reshaped).unwrap();
    expect_error(
        &dir,
        &replay_args(adam, reshaped_path.to_str().unwrap(), g, out),
        "has shape",
    );
    // Gradients passed as parameters: each lacks its step dimension.
    expect_error(&dir, &replay_args(adam, g, g, out), "has shape");

    // Clipping and grad scalers.
    let with = |extra: &[&'static str]| {
        let mut args = replay_args(adam, p, g, out);
        args.extend_from_slice(extra);
        args
    };
    expect_error(
        &dir,
        &with(&["--clip-grad-norm", "-1"]),
        "--clip-grad-norm: max_norm must be a finite number >= 0, got -1.0",
    );
    expect_error(
        &dir,
        &with(&["--clip-grad-norm", "1", "--norm-type", "1"]),
        "norm_type must be 2 or inf",
    );
    expect_error(&dir, &with(&["--norm-type", "inf"]), "--clip-grad-norm");
    expect_error(
        &dir,
        &with(&["--clip-grad-norm", "1", "--clip-grad-value", "1"]),
        "--clip-grad-value",
    );
    expect_error(
        &dir,
        &with(&["--clip-grad-value", "nan"]),
        "--clip-grad-value: clip_value must be a finite number >= 0, got nan",
    );
    expect_error(
        &dir,
        &with(&["--grad-scaler", r#"{"growth_factor":1.0}"#]),
        "--grad-scaler: The growth factor must be > 1.0.",
    );
    expect_error(
        &dir,
        &with(&["--grad-scaler", r#"{"backoff_factor":0}"#]),
        "--grad-scaler: The backoff factor must be > 0.0.",
    );
    expect_error(
        &dir,
        &with(&["--grad-scaler", r#"{"scale":2}"#]),
        "--grad-scaler: unknown field",
    );
    expect_error(
        &dir,
        &with(&["--eval"]),
        "--eval: Adam has no train and eval modes",
    );
}

/// Runs `wgpu-optim schedule` and returns stdout, asserting success.
fn schedule_ok(args: &[&str], dir: &Path) -> String {
    let mut all = vec!["schedule"];
    all.extend_from_slice(args);
    let run = Command::new(env!("CARGO_BIN_EXE_wgpu-optim"))
        .args(&all)
        .env("XDG_RUNTIME_DIR", dir)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8(run.stdout).unwrap()
}

/// Parses `step,lr[,momentum]` CSV into rows of numbers, checking the header.
fn csv_rows(text: &str, header: &str) -> Vec<Vec<f64>> {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(header));
    lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect()
}

#[test]
fn schedule_prints_pytorch_learning_rates() {
    let dir = scratch("schedule");
    let out = schedule_ok(
        &[
            "--spec",
            r#"{"type":"StepLR","lr":0.1,"step_size":2,"gamma":0.5}"#,
            "--steps",
            "5",
        ],
        &dir,
    );
    let rows = csv_rows(&out, "step,lr");
    let want = [0.1, 0.1, 0.05, 0.05, 0.025];
    assert_eq!(rows.len(), 5);
    for (k, (row, lr)) in rows.iter().zip(want).enumerate() {
        assert_eq!(row[0], k as f64);
        assert!((row[1] - lr).abs() <= 1e-15, "{row:?}");
    }

    // The issue's example: 5 warm-up steps, then cosine annealing from 0.1.
    let spec = r#"{"type":"SequentialLR","lr":0.1,"milestones":[5],"schedulers":[{"type":"LinearLR","start_factor":0.01,"total_iters":5},{"type":"CosineAnnealingLR","T_max":30}]}"#;
    let rows = csv_rows(
        &schedule_ok(&["--spec", spec, "--steps", "40"], &dir),
        "step,lr",
    );
    assert!((rows[0][1] - 0.001).abs() < 1e-12);
    assert!((rows[5][1] - 0.1).abs() < 1e-12);
    assert!(rows[20][1] < rows[6][1]);

    // OneCycleLR cycles momentum by default: a momentum column.
    let spec = r#"{"type":"OneCycleLR","max_lr":0.1,"total_steps":20}"#;
    let plot = dir.join("onecycle.svg");
    let rows = csv_rows(
        &schedule_ok(
            &[
                "--spec",
                spec,
                "--steps",
                "20",
                "--plot",
                plot.to_str().unwrap(),
            ],
            &dir,
        ),
        "step,lr,momentum",
    );
    assert!((rows[0][1] - 0.004).abs() < 1e-12 && (rows[0][2] - 0.95).abs() < 1e-12);
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));

    // ReduceLROnPlateau: row k is the LR after k metrics.
    let spec = r#"{"type":"ReduceLROnPlateau","lr":1.0,"patience":1,"factor":0.5}"#;
    let rows = csv_rows(
        &schedule_ok(
            &["--spec", spec, "--steps", "5", "--metrics", "3,3,3,3"],
            &dir,
        ),
        "step,lr",
    );
    let lrs: Vec<f64> = rows.iter().map(|r| r[1]).collect();
    assert_eq!(lrs, [1.0, 1.0, 1.0, 0.5, 0.5]);

    // JSON output holds the same trace.
    let json = schedule_ok(
        &[
            "--spec",
            r#"{"type":"ExponentialLR","lr":1.0,"gamma":0.5}"#,
            "--steps",
            "3",
            "--format",
            "json",
        ],
        &dir,
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["lr"], serde_json::json!([[1.0], [0.5], [0.25]]));
}

#[test]
fn schedule_errors_are_one_line() {
    let dir = scratch("schedule-errors");
    let steps = ["--steps", "5"];
    for (spec, needle) in [
        (r#"{"type":"StepLRR","lr":0.1}"#, "StepLRR"),
        (r#"{"type":"StepLR","lr":0.1}"#, "step_size"),
        (
            r#"{"type":"ConstantLR","lr":0.1,"factor":2.0}"#,
            "Constant multiplicative factor expected to be between 0 and 1.",
        ),
        (
            r#"{"type":"OneCycleLR","max_lr":0.1}"#,
            "You must define either total_steps OR (epochs AND steps_per_epoch)",
        ),
        (
            r#"{"type":"ReduceLROnPlateau","lr":0.1,"factor":1.5}"#,
            "Factor should be < 1.0.",
        ),
        ("{not json", "--spec"),
    ] {
        let mut args = vec!["schedule", "--spec", spec];
        args.extend_from_slice(&steps);
        expect_error(&dir, &args, needle);
    }
    expect_error(
        &dir,
        &[
            "schedule",
            "--spec",
            r#"{"type":"ReduceLROnPlateau","lr":0.1}"#,
            "--steps",
            "5",
        ],
        "metric",
    );
}

#[test]
fn replay_with_a_schedule_matches_pytorch() {
    let dir = scratch("replay-schedule");
    let out = dir.join("out.safetensors");
    let (p, g) = (golden("params.safetensors"), golden("grads.safetensors"));
    let run = wgpu_optim(
        &[
            "replay",
            "--optimizer",
            r#"{"type":"Adam","lr":0.01}"#,
            "--schedule",
            r#"{"type":"OneCycleLR","max_lr":0.05,"total_steps":20}"#,
            "--params",
            p.to_str().unwrap(),
            "--grads",
            g.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &dir,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ours = replay::read_safetensors(&out).unwrap();
    let torch = replay::read_safetensors(&golden("sched_adam_onecycle.f32.safetensors")).unwrap();
    assert_eq!(ours.len(), torch.len());
    for (a, b) in ours.iter().zip(&torch) {
        assert_eq!(a.name, b.name);
        for (x, y) in a.data.iter().zip(&b.data) {
            assert!(
                (x - y).abs() <= 4e-6 * (1.0 + y.abs()),
                "{}: {x} vs {y}",
                a.name
            );
        }
    }
    // A schedule that needs metrics, momentum cycling on Adagrad, and cycling on SGD built
    // without momentum are errors.
    let _ = std::fs::remove_file(&out);
    let (p, g, o) = (
        p.to_str().unwrap(),
        g.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    for (optimizer, schedule, needle) in [
        (
            r#"{"type":"SGD"}"#,
            r#"{"type":"ReduceLROnPlateau"}"#,
            "metric",
        ),
        (
            r#"{"type":"Adagrad"}"#,
            r#"{"type":"CyclicLR","base_lr":0.01,"max_lr":0.1}"#,
            "optimizer must support momentum or beta1",
        ),
        (
            r#"{"type":"SGD"}"#,
            r#"{"type":"OneCycleLR","max_lr":0.1,"total_steps":20}"#,
            "without momentum",
        ),
        (r#"{"type":"SGD"}"#, r#"{"type":"StepLR"}"#, "step_size"),
    ] {
        let args = [
            "replay",
            "--optimizer",
            optimizer,
            "--schedule",
            schedule,
            "--params",
            p,
            "--grads",
            g,
            "--out",
            o,
        ];
        expect_error(&dir, &args, needle);
    }
}

#[test]
fn validate_prints_a_passing_row_per_kernel() {
    let dir = scratch("validate");
    let args = ["validate", "--size", "5000", "--steps", "3"];
    let run = wgpu_optim(&args, &dir);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let configs = wgpu_optim::validate::all_configs();
    let recipes = wgpu_optim::validate::all_recipes();
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains("  f32  ")).collect();
    assert_eq!(rows.len(), configs.len() + recipes.len(), "{stdout}");
    for (_, recipe) in &recipes {
        assert!(
            rows.iter().any(|r| r.contains(&recipe.label())),
            "no row for {}: {stdout}",
            recipe.label()
        );
    }
    assert!(rows.iter().all(|r| r.contains(" pass ")), "{stdout}");
    for kernel in wgpu_optim::validate::kernel_names() {
        assert!(
            rows.iter()
                .any(|r| r.split_whitespace().nth(1) == Some(kernel.as_str())),
            "no row for {kernel}: {stdout}"
        );
    }
    for needle in [
        "storage",
        "f32",
        "--seed ",
        "~GB/s",
        "copy_buffer_to_buffer",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing: {stdout}");
    }
    let rows = wgpu_optim::validate::all_rows(common::ctx()).len();
    let summary = format!("{rows} passed, 0 failed");
    assert!(stdout.contains(&summary), "{summary:?} missing: {stdout}");

    // --json: the same rows, with the adapter.
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let run = wgpu_optim(&json_args, &dir);
    assert!(run.status.success());
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["rows"].as_array().unwrap().len(), rows);
    assert!(report["adapter"]["name"].is_string());
    let layouts: Vec<&str> = wgpu_optim::validate::storage_layouts()
        .iter()
        .filter(|l| l.runs_on(common::ctx()))
        .map(|l| l.name)
        .collect();
    assert_eq!(report["storage"], serde_json::json!(layouts));
    assert!(report["seed"].is_u64());
}

#[test]
fn validate_errors_are_one_line() {
    let dir = scratch("validate-errors");
    expect_error(&dir, &["validate", "--backend", "bogus"], "bogus");
    expect_error(
        &dir,
        &["validate", "--adapter", "no-such-adapter-xyz"],
        "no GPU adapter found matching \"no-such-adapter-xyz\"",
    );
    expect_error(
        &dir,
        &["validate", "--size", "0"],
        "--size must be at least 1",
    );
    expect_error(
        &dir,
        &["validate", "--steps", "0"],
        "--steps must be at least 1",
    );
    expect_error(&dir, &["validate", "--size", "ten"], "not a count");
    expect_error(
        &dir,
        &["validate", "--steps", "100000000000"],
        "at most 10000 steps",
    );
    expect_error(
        &dir,
        &["validate", "--size", "99_000_000_000_000"],
        "max_buffer_size",
    );
}

#[test]
fn info_lists_adapters_limits_and_f16() {
    let dir = scratch("info");
    let run = wgpu_optim(&["info"], &dir);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let adapters = wgpu_optim::validate::adapters(wgpu::Backends::all()).unwrap();
    for a in &adapters {
        assert!(stdout.contains(&a.adapter.name), "{stdout}");
    }
    for needle in [
        "backend: ",
        "driver: ",
        "max_buffer_size: ",
        "max_storage_buffer_binding_size: ",
        "max_compute_workgroups_per_dimension: ",
        "max_storage_buffers_per_shader_stage: ",
        "f16 (SHADER_F16): ",
        "f16 storage: ",
        "bf16 storage: packed two to a 32-bit word",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing: {stdout}");
    }
    // Each adapter's f16 paths: the automatic mix where it has shader-f16, else packed.
    for a in &adapters {
        let want = if a.shader_f16 {
            "f16 storage: native f16 arrays where single elements are stored"
        } else {
            "f16 storage: packed two to a 32-bit word"
        };
        assert!(a.describe().contains(want), "{}", a.describe());
        assert!(stdout.contains(&a.describe()), "{stdout}");
    }
    // No adapter: one line, non-zero exit. Linux has no DX12.
    if cfg!(target_os = "linux") {
        expect_error(&dir, &["info", "--backend", "dx12"], "no GPU adapter found");
    }
}

#[test]
fn bench_prints_a_row_per_kernel_with_its_ratio_to_copy() {
    let dir = scratch("bench");
    for access in [None, Some("scalar"), Some("vec4")] {
        let mut args = vec!["bench", "--size", "5000", "--iterations", "2"];
        args.extend(access.iter().flat_map(|a| ["--access", a]));
        let run = Command::new(env!("CARGO_BIN_EXE_wgpu-optim"))
            .args(&args)
            .env("XDG_RUNTIME_DIR", &dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let header = format!("access: {}; ", access.unwrap_or("vec4"));
        assert!(stdout.lines().next().unwrap().contains(&header), "{stdout}");
        for case in wgpu_optim::bench::kernel_cases() {
            let row = stdout
                .lines()
                .find(|l| l.split_whitespace().next() == Some(case.name))
                .unwrap_or_else(|| panic!("no row for {}: {stdout}", case.name));
            assert!(
                row.contains(" 5000 ") && row.contains("GB/s") && row.ends_with("% of copy"),
                "{row}"
            );
        }
        // Muon's products, over a matrix of 50 rows.
        assert!(
            stdout.lines().any(|l| l.starts_with("muon: ")
                && l.contains("GFLOP/s over its whole step (50 x 100 matrix")),
            "{stdout}"
        );
    }
    expect_error(&dir, &["bench", "--access", "vec8"], "unknown access mode");
    expect_error(&dir, &["bench", "--iterations", "0"], "must be at least 1");
    expect_error(&dir, &["bench", "--size", "0"], "--size");
    expect_error(
        &dir,
        &["bench", "--size", "18446744073709551615"],
        "too many for a buffer",
    );
}

#[test]
fn schedule_steps_are_bounded_and_named() {
    let dir = scratch("schedule-steps");
    let spec = r#"{"type":"StepLR","lr":0.1,"step_size":2}"#;
    // 10^19 fits a usize (it used to overflow the capacity of the trace: a panic); 10^12 fits
    // the capacity (it used to abort on allocation); 1000001 is one past the bound.
    for steps in ["10000000000000000000", "1000000000000", "1000001"] {
        expect_error(
            &dir,
            &["schedule", "--spec", spec, "--steps", steps],
            &format!(
                "invalid value '{steps}' for '--steps <STEPS>': at most 1000000 steps (the trace \
                 is kept in memory)"
            ),
        );
    }
    expect_error(
        &dir,
        &[
            "schedule",
            "--spec",
            spec,
            "--steps",
            "99999999999999999999999",
        ],
        "'--steps <STEPS>': not a number of steps",
    );
    // With five groups the trace holds 4000000 / 5 = 800000 rows at most.
    expect_error(
        &dir,
        &[
            "schedule",
            "--spec",
            r#"{"type":"StepLR","lr":[0.1,0.2,0.3,0.4,0.5],"step_size":2}"#,
            "--steps",
            "800001",
        ],
        "--steps 800001 is too many for 5 parameter groups: at most 800000",
    );
    // The bound itself is fine.
    let out = schedule_ok(
        &[
            "--spec",
            r#"{"type":"Fixed","lr":0.5}"#,
            "--steps",
            "1000000",
        ],
        &dir,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1_000_001);
    assert_eq!(lines[0], "step,lr");
    assert_eq!(lines[1_000_000], "999999,0.5");
}

#[test]
fn schedule_zero_divisors_name_the_argument() {
    let dir = scratch("schedule-zero");
    for (spec, needle) in [
        (
            r#"{"type":"StepLR","lr":0.1,"step_size":0}"#,
            "error: StepLR: step_size must not be 0: the epoch is taken modulo step_size \
             (integer modulo by zero)",
        ),
        (
            r#"{"type":"CosineAnnealingLR","lr":0.1,"T_max":0}"#,
            "error: CosineAnnealingLR: T_max must not be 0",
        ),
        (
            r#"{"type":"CyclicLR","base_lr":0.01,"max_lr":0.1,"step_size_up":0,"step_size_down":4}"#,
            "error: CyclicLR: step_size_up must not be 0",
        ),
        (
            r#"{"type":"OneCycleLR","max_lr":0.1,"total_steps":10,"pct_start":1.0}"#,
            "error: OneCycleLR: pct_start 1.0 with total_steps 10 leaves phase 2 of 2 with no \
             length",
        ),
        (
            r#"{"type":"PolynomialLR","lr":0.1,"total_iters":0}"#,
            "error: PolynomialLR: total_iters must not be 0",
        ),
        (
            r#"{"type":"LinearWarmup","warmup_steps":2,"schedule":{"type":"InverseTimeDecay","initial_learning_rate":0.1,"decay_steps":10,"decay_rate":-1}}"#,
            "error: InverseTimeDecay: decay_rate must be >= 0, got -1",
        ),
    ] {
        expect_error(&dir, &["schedule", "--spec", spec, "--steps", "5"], needle);
    }
}

/// Runs the binary and kills it when it takes more than a minute.
fn within_a_minute(args: &[&str], dir: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgpu-optim"))
        .args(args)
        .env("XDG_RUNTIME_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{args:?} ran for more than a minute");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn schedule_plots_learning_rates_near_f64_max() {
    let dir = scratch("schedule-plot-extreme");
    let plot = dir.join("extreme.svg");
    // Keras takes any values: the axis spans about 2e308, more than f64 holds.
    let run = within_a_minute(
        &[
            "schedule",
            "--spec",
            r#"{"type":"PiecewiseConstantDecay","boundaries":[1],"values":[-1e308,1e308]}"#,
            "--steps",
            "4",
            "--plot",
            plot.to_str().unwrap(),
        ],
        &dir,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "step,lr\n0,-1e308\n1,-1e308\n2,1e308\n3,1e308\n"
    );
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
}

#[test]
fn schedule_into_a_closed_pipe_is_an_error_not_a_panic() {
    let dir = scratch("schedule-pipe");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgpu-optim"))
        .args([
            "schedule",
            "--spec",
            r#"{"type":"Fixed","lr":0.5}"#,
            "--steps",
            "200000",
        ])
        .env("XDG_RUNTIME_DIR", &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the 2 MB of CSV are written: the write fails with EPIPE.
    drop(child.stdout.take());
    let run = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "error: standard output: Broken pipe (os error 32)\n"
    );
}

#[test]
fn replay_with_clipping_and_a_grad_scaler_matches_pytorch() {
    // tests/golden/amp: AdamW with a OneCycleLR schedule that cycles beta1, clip_grad_norm_
    // and a GradScaler whose gradients overflow at five of the 40 steps.
    let dir = scratch("replay-amp");
    let out = dir.join("out.safetensors");
    let amp = common::amp_golden;
    let name = "scaler_clip_norm2_adamw_onecycle";
    let case = common::amp_case(name);
    let (p, g) = (
        amp("params.safetensors"),
        amp(&format!("{name}.grads.safetensors")),
    );
    let json = |v: &serde_json::Value| v.to_string();
    let (optimizer, schedule, scaler) = (
        json(&case["optimizer"]),
        json(&case["schedule"]),
        json(&case["grad_scaler"]),
    );
    let max_norm = case["clip_grad_norm"].to_string();
    let mut args = replay_args(
        &optimizer,
        p.to_str().unwrap(),
        g.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    args.extend([
        "--schedule",
        &schedule,
        "--clip-grad-norm",
        &max_norm,
        "--norm-type",
        "2",
        "--grad-scaler",
        &scaler,
    ]);
    let run = wgpu_optim(&args, &dir);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ours = common::read_safetensors_f64(&out);
    let torch = common::read_safetensors_f64(&amp(&format!("{name}.f32.safetensors")));
    let names: Vec<&str> = ours.iter().map(|t| t.0.as_str()).collect();
    assert!(names.contains(&"grad_scaler.scale") && names.contains(&"grad_scaler.growth_tracker"));
    assert_eq!(ours.len(), torch.len());
    for (a, b) in ours.iter().zip(&torch) {
        assert_eq!((&a.0, a.1), (&b.0, b.1), "names and dtypes");
        for (x, y) in a.2.iter().zip(&b.2) {
            let tol = if a.0.starts_with("grad_scaler.") {
                0.0
            } else {
                4e-6 * (1.0 + y.abs())
            };
            assert!((x - y).abs() <= tol, "{}: {x} vs PyTorch's {y}", a.0);
        }
    }
}

#[test]
fn validate_fails_against_a_perturbed_reference() {
    // The GPU steps with the real learning rate, the CPU reference with 1.01 times it: every
    // f32 row must fail, and most rows, each with its worst element named, and the command
    // must exit 1. A row of a layout that stores 16-bit values may pass: a bf16 parameter
    // holds 8 significant bits, below which a hundredth of an update of a hundredth of its
    // value lies, and such a layout lets 5% of the elements be off by units of the 16-bit type
    // (a value that rounds apart moves what is computed from it), which a perturbation that
    // shows at few elements stays under (Adadelta's first updates are a thousandth of the
    // gradient).
    let dir = scratch("validate-fails");
    let out = wgpu_optim(
        &[
            "validate",
            "--size",
            "1000",
            "--steps",
            "3",
            "--seed",
            "7",
            "--reference-lr-scale",
            "1.01",
        ],
        &dir,
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rows = stdout.lines().filter(|l| l.contains(" FAIL ")).count();
    let reasons = stdout
        .lines()
        .filter(|l| l.starts_with("FAIL ") && l.contains("but the reference is"))
        .count();
    let total = wgpu_optim::validate::all_rows(common::ctx()).len();
    let passed: Vec<&str> = stdout.lines().filter(|l| l.contains(" pass ")).collect();
    assert!(passed.iter().all(|l| !l.contains("  f32  ")), "{stdout}");
    assert!(rows >= total - passed.len() && rows > total / 2, "{stdout}");
    assert_eq!(reasons, rows, "one reason line per failing row: {stdout}");
    assert_eq!(
        stderr.trim().lines().last(),
        Some(format!("error: {rows} of {total} rows failed validation").as_str())
    );
    // The same run with the true reference passes.
    let out = wgpu_optim(
        &["validate", "--size", "1000", "--steps", "3", "--seed", "7"],
        &dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs `replay` with `args`, which must succeed, and reads its output file `out`.
fn replay_output(args: &[&str], dir: &Path, out: &Path) -> Vec<NamedTensor> {
    let run = wgpu_optim(args, dir);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    replay::read_safetensors(out).unwrap()
}

#[test]
fn replay_keeps_16_bit_types_and_names_bad_ones() {
    let dir = scratch("sixteen_bit");
    let precision = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/precision");
    let p = precision.join("params.bf16.safetensors");
    let g = precision.join("grads.bf16.safetensors");
    let (p, g) = (p.to_str().unwrap(), g.to_str().unwrap());
    let out = dir.join("out.safetensors");
    let spec = r#"{"type":"AdamW","lr":0.01,"weight_decay":0.1}"#;
    let torch =
        replay::read_safetensors(&precision.join("adamw_bf16_weight_decay0.1.torch.safetensors"))
            .unwrap();
    for (state, state_type) in [("param", DType::BF16), ("f32", DType::F32)] {
        let mut args = replay_args(spec, p, g, out.to_str().unwrap());
        args.extend(["--state-dtype", state]);
        let ours = replay_output(&args, &dir, &out);
        for (a, b) in ours.iter().zip(&torch) {
            assert_eq!(a.name, b.name);
            let want = if a.name.ends_with(".step") {
                DType::F32
            } else if a.name.contains('.') {
                state_type
            } else {
                DType::BF16
            };
            assert_eq!(a.dtype, want, "{}", a.name);
            // With PyTorch's layout the trajectory is PyTorch's fused one, bit for bit.
            if state == "param" {
                assert_eq!(a.data, b.data, "{}", a.name);
            }
        }
        std::fs::remove_file(&out).unwrap();
    }

    // Master weights with stochastic rounding: the output holds each f32 master copy as
    // `<name>.master`, and each parameter is one of the two bf16 values around its master
    // (tests/golden.rs holds the master copies to PyTorch's float64 run).
    let mut args = replay_args(spec, p, g, out.to_str().unwrap());
    args.extend([
        "--state-dtype",
        "f32",
        "--master-weights",
        "--stochastic-rounding",
        "3",
    ]);
    let ours = replay_output(&args, &dir, &out);
    let params: Vec<&NamedTensor> = ours.iter().filter(|t| !t.name.contains('.')).collect();
    assert!(!params.is_empty());
    for param in params {
        let master = ours
            .iter()
            .find(|t| t.name == format!("{}.master", param.name))
            .unwrap();
        assert_eq!((master.dtype, param.dtype), (DType::F32, DType::BF16));
        assert_eq!(master.shape, param.shape);
        for (&m, &p) in master.data.iter().zip(&param.data) {
            let unit = DType::BF16.spacing(f64::from(m).abs());
            assert!(
                f64::from(p - m).abs() < unit,
                "{}: parameter {p}, master {m}",
                param.name
            );
        }
    }
    std::fs::remove_file(&out).unwrap();
    // Master weights and stochastic rounding apply to 16-bit parameters only.
    let f32_params = golden("params.safetensors");
    for flag in [&["--master-weights"][..], &["--stochastic-rounding", "1"]] {
        let mut args = replay_args(spec, f32_params.to_str().unwrap(), g, out.to_str().unwrap());
        args.extend(flag);
        expect_error(
            &dir,
            &args,
            &format!("{}: every parameter in the file is F32", flag[0]),
        );
    }

    // f16 on the native path, where the adapter has it: the same bytes as the packed path
    // (tests/golden.rs holds both to PyTorch's fused run); elsewhere a one-line error.
    let p16 = precision.join("params.f16.safetensors");
    let g16 = precision.join("grads.f16.safetensors");
    let f16_args = |path: &'static str| {
        let mut args = replay_args(
            spec,
            p16.to_str().unwrap(),
            g16.to_str().unwrap(),
            out.to_str().unwrap(),
        );
        args.extend(["--f16-path", path]);
        args
    };
    let packed = replay_output(&f16_args("packed"), &dir, &out);
    std::fs::remove_file(&out).unwrap();
    assert!(packed.iter().any(|t| t.dtype == DType::F16));
    if common::ctx().has_native_f16() {
        assert_eq!(replay_output(&f16_args("native"), &dir, &out), packed);
        std::fs::remove_file(&out).unwrap();
    } else {
        expect_error(
            &dir,
            &f16_args("native"),
            "--f16-path: the device does not support the native f16 path (it needs the SHADER_F16 feature)",
        );
    }
    expect_error(
        &dir,
        &f16_args("half"),
        "unknown f16 path \"half\" (expected auto, packed or native)",
    );

    let mut args = replay_args(spec, p, g, out.to_str().unwrap());
    args.extend(["--state-dtype", "f16"]);
    expect_error(
        &dir,
        &args,
        "unknown state dtype \"f16\" (expected param, f32 or bf16)",
    );
    // Integers are no parameters.
    let ints = dir.join("ints.safetensors");
    let data = [1i32, 2, 3];
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::I32,
        vec![3],
        bytemuck::cast_slice(&data),
    )
    .unwrap();
    std::fs::write(&ints, safetensors::serialize([("b", view)], None).unwrap()).unwrap();
    expect_error(
        &dir,
        &replay_args(spec, ints.to_str().unwrap(), g, out.to_str().unwrap()),
        "tensor \"b\" is I32; parameters and gradients are F32, F16 or BF16",
    );
}
