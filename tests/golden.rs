//! `replay` against real PyTorch trajectories: tests/golden/optim, written by
//! tools/golden/gen_optim.py. For every optimizer and option combination, 20 steps over three
//! tensors must match torch.optim in float32, and the error against PyTorch's float64 run must
//! stay within the range of PyTorch's own float32 error. Cases with a `"schedule"` run it as
//! `replay --schedule` does, including schedules that cycle momentum or beta1.
//!
//! tests/golden/amp, written by tools/golden/gen_amp.py, holds 40-step trajectories of
//! PyTorch's training-loop recipe with `clip_grad_norm_` (norm 2 and inf), `clip_grad_value_`
//! and `torch.amp.GradScaler("cpu")` with inf and NaN injected into chosen steps.
//!
//! tests/golden/checkpoint, written by tools/golden/gen_checkpoint.py, carries runs between
//! PyTorch and `replay` through checkpoints (tools/torch_checkpoint.py), both ways.
//!
//! tests/golden/precision, written by tools/golden/gen_precision.py, holds PyTorch's fused
//! optimizers on bf16 and f16 parameters.

mod common;

use common::f16_paths;
use std::path::{Path, PathBuf};
use wgpu_optim::replay::{self, NamedTensor, ReplayOptions};
use wgpu_optim::{ClipGrad, DType, GradScaler, NormType, OptimizerConfig, Precision, StateDType};

fn dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/optim"))
}

fn amp_dir() -> PathBuf {
    common::amp_golden("")
}

/// Reads a golden file as f64 values by name (the f64 files are read as f64, since `replay`
/// reads f32 only).
fn read_f64(path: &Path) -> Vec<(String, Vec<f64>)> {
    common::read_safetensors_f64(path)
        .into_iter()
        .map(|(name, _, data)| (name, data))
        .collect()
}

/// Takes the tensors named `<name>.eval` out of a golden file's, renamed `<name>`.
fn take_eval(tensors: &mut Vec<(String, Vec<f64>)>) -> Vec<(String, Vec<f64>)> {
    let (eval, rest): (Vec<_>, Vec<_>) = std::mem::take(tensors)
        .into_iter()
        .partition(|(n, _)| n.ends_with(".eval"));
    *tensors = rest;
    eval.into_iter()
        .map(|(n, v)| (n.trim_end_matches(".eval").to_string(), v))
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn replay_matches_pytorch_for_every_case() {
    let ctx = common::ctx();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap();
    // Every tensor: those every case steps, and those only some do.
    let read = |files: [&str; 2]| -> Vec<NamedTensor> {
        let mut all: Vec<NamedTensor> = files
            .iter()
            .flat_map(|f| replay::read_safetensors(&dir().join(f)).unwrap())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    };
    let all_params = read(["params.safetensors", "extra_params.safetensors"]);
    let all_grads = read(["grads.safetensors", "extra_grads.safetensors"]);
    let default_names = &cases["names"];
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    let mut worst_ratio = (0.0f64, String::new());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        // The tensors the case steps: the file's names, or the case's own (Adafactor's
        // cases add a tensor of three dimensions).
        let names = case.get("names").unwrap_or(default_names);
        let stepped = |t: &NamedTensor| names.as_array().unwrap().iter().any(|n| n == &t.name);
        let params: Vec<NamedTensor> = all_params.iter().filter(|t| stepped(t)).cloned().collect();
        let grads: Vec<NamedTensor> = all_grads.iter().filter(|t| stepped(t)).cloned().collect();
        let config: OptimizerConfig = serde_json::from_value(case["optimizer"].clone()).unwrap();
        let options = ReplayOptions {
            schedule: case.get("schedule"),
            ..Default::default()
        };
        let ours = replay::replay(ctx, &config, &options, &params, &grads).unwrap();
        let mut torch32 = read_f64(&dir().join(format!("{name}.f32.safetensors")));
        let mut torch64 = read_f64(&dir().join(format!("{name}.f64.safetensors")));
        // AdamWScheduleFree's cases also hold the parameters after eval() (x), as
        // `<name>.eval`: replay --eval must give them.
        let eval32 = take_eval(&mut torch32);
        let eval64 = take_eval(&mut torch64);
        compare(name, &ours.tensors, &torch32, &torch64, &mut worst_ratio);
        assert_eq!(eval32.is_empty(), !config.has_modes(), "{name}");
        if !eval32.is_empty() {
            let options = ReplayOptions {
                eval: true,
                ..options
            };
            let ours = replay::replay(ctx, &config, &options, &params, &grads).unwrap();
            let params_only: Vec<NamedTensor> = ours
                .tensors
                .into_iter()
                .filter(|t| !t.name.contains('.'))
                .collect();
            compare(
                &format!("{name} (eval)"),
                &params_only,
                &eval32,
                &eval64,
                &mut worst_ratio,
            );
        }
    }
    eprintln!(
        "worst ratio of our error to PyTorch's float32 error, against float64: {:.3} ({})",
        worst_ratio.0, worst_ratio.1
    );
}

/// Our tensors against PyTorch's float32 and float64 runs (sorted by name, the same names):
/// within float32 accuracy of the float32 run, and an error against the float64 run within
/// twice PyTorch's own float32 error. Tracks the worst ratio of the two errors.
fn compare(
    name: &str,
    ours: &[NamedTensor],
    torch32: &[(String, Vec<f64>)],
    torch64: &[(String, Vec<f64>)],
    worst_ratio: &mut (f64, String),
) {
    let names: Vec<&str> = ours.iter().map(|t| t.name.as_str()).collect();
    let torch_names: Vec<&str> = torch32.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        names, torch_names,
        "{name}: the same tensors and state names as PyTorch"
    );
    for ((t, (_, t32)), (_, t64)) in ours.iter().zip(torch32).zip(torch64) {
        let ours: Vec<f64> = t.data.iter().map(|&v| f64::from(v)).collect();
        let scale = t64.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
        // Matches float32 PyTorch to float32 accuracy.
        let vs_torch = max_abs_diff(&ours, t32);
        assert!(
            vs_torch <= 4e-6 * scale.max(1.0),
            "{name} {}: differs from PyTorch float32 by {vs_torch:e} (scale {scale:e})",
            t.name
        );
        // Error against float64 within the range of PyTorch's own float32 error. PyTorch keeps
        // some scalar state in float32 in its float64 run too (NAdam's mu_product, ASGD's eta
        // and mu), so that its two runs agree bit for bit there and the float64 run is no
        // truth to measure against: those are held to float32 PyTorch above only.
        if t.shape.is_empty() && t32 == t64 {
            continue;
        }
        let ours_err = max_abs_diff(&ours, t64);
        let torch_err = max_abs_diff(t32, t64);
        let bound = 2.0 * torch_err + 2e-7 * scale;
        assert!(
            ours_err <= bound,
            "{name} {}: error vs float64 {ours_err:e} exceeds 2x PyTorch's {torch_err:e}",
            t.name
        );
        if torch_err > 0.0 && ours_err / torch_err > worst_ratio.0 {
            *worst_ratio = (ours_err / torch_err, format!("{name} {}", t.name));
        }
    }
}

/// Checks the grad scaler's state against PyTorch's, bit for bit, and takes it out of
/// PyTorch's tensors.
fn check_scaler(
    name: &str,
    ours: &replay::ReplayOutput,
    torch32: &mut Vec<(String, Vec<f64>)>,
    torch64: &mut Vec<(String, Vec<f64>)>,
) {
    let scaler32: Vec<(String, Vec<f64>)> = torch32
        .iter()
        .filter(|t| t.0.starts_with("grad_scaler."))
        .cloned()
        .collect();
    torch32.retain(|t| !t.0.starts_with("grad_scaler."));
    torch64.retain(|t| !t.0.starts_with("grad_scaler."));
    match ours.grad_scaler {
        Some(s) => {
            assert_eq!(
                scaler32,
                [
                    (
                        "grad_scaler.growth_tracker".to_string(),
                        vec![f64::from(s.growth_tracker)]
                    ),
                    ("grad_scaler.scale".to_string(), vec![f64::from(s.scale)]),
                ],
                "{name}: grad scaler state"
            );
        }
        None => assert!(scaler32.is_empty(), "{name}: PyTorch used a grad scaler"),
    }
}

/// A trace value of the generator: a number, or "nan" / "inf" / "-inf".
fn trace_value(v: &serde_json::Value) -> f64 {
    match v {
        serde_json::Value::String(s) => s.parse().unwrap(),
        v => v.as_f64().unwrap(),
    }
}

/// The clipping and grad scaler of a case of tests/golden/amp/cases.json.
fn amp_options(case: &serde_json::Value) -> (Option<ClipGrad>, Option<GradScaler>) {
    let clip = if let Some(max_norm) = case.get("clip_grad_norm") {
        let norm_type: NormType = case
            .get("norm_type")
            .map_or(NormType::L2, |t| serde_json::from_value(t.clone()).unwrap());
        Some(ClipGrad::Norm {
            max_norm: max_norm.as_f64().unwrap(),
            norm_type,
        })
    } else {
        case.get("clip_grad_value")
            .map(|v| ClipGrad::value(v.as_f64().unwrap()))
    };
    let scaler = case
        .get("grad_scaler")
        .map(|s| serde_json::from_value(s.clone()).unwrap());
    (clip, scaler)
}

#[test]
fn replay_with_clipping_and_grad_scaling_matches_pytorch() {
    let ctx = common::ctx();
    let dir = amp_dir();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let steps = cases["steps"].as_u64().unwrap() as usize;
    let params = replay::read_safetensors(&dir.join("params.safetensors")).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    let (mut skipped_steps, mut clipped_steps) = (0, 0);
    let mut worst_ratio = (0.0f64, String::new());
    let mut worst_norm = 0.0f64;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let config: OptimizerConfig = serde_json::from_value(case["optimizer"].clone()).unwrap();
        let grads =
            replay::read_safetensors(&dir.join(format!("{name}.grads.safetensors"))).unwrap();
        let (clip, grad_scaler) = amp_options(case);
        let options = ReplayOptions {
            schedule: case.get("schedule"),
            clip,
            grad_scaler,
            trace: true,
            ..Default::default()
        };
        let ours = replay::replay(ctx, &config, &options, &params, &grads).unwrap();
        let mut torch32 = read_f64(&dir.join(format!("{name}.f32.safetensors")));
        let mut torch64 = read_f64(&dir.join(format!("{name}.f64.safetensors")));
        check_scaler(name, &ours, &mut torch32, &mut torch64);
        compare(name, &ours.tensors, &torch32, &torch64, &mut worst_ratio);

        // Each step: the same skips, and the total norm clip_grad_norm_ returned.
        assert_eq!(ours.reports.len(), steps);
        let trace = &case["trace"];
        if let Some(found) = trace.get("found_inf") {
            for (k, (r, f)) in ours
                .reports
                .iter()
                .zip(found.as_array().unwrap())
                .enumerate()
            {
                assert_eq!(r.found_inf, f.as_f64().unwrap() != 0.0, "{name}: step {k}");
                skipped_steps += usize::from(r.found_inf);
            }
        }
        if let Some(norms) = trace.get("total_norm") {
            let max_norm = case["clip_grad_norm"].as_f64().unwrap();
            for (k, (r, n)) in ours
                .reports
                .iter()
                .zip(norms.as_array().unwrap())
                .enumerate()
            {
                let want = trace_value(n);
                let got = f64::from(r.total_norm);
                if want.is_finite() {
                    let rel = (got - want).abs() / want;
                    assert!(
                        rel <= 2e-6,
                        "{name}: step {k}: norm {got} vs PyTorch's {want}"
                    );
                    worst_norm = worst_norm.max(rel);
                    clipped_steps += usize::from(want > max_norm);
                } else {
                    assert!(
                        got.is_nan() == want.is_nan() && got.is_infinite() == want.is_infinite(),
                        "{name}: step {k}: norm {got} vs PyTorch's {want}"
                    );
                }
            }
        }
    }
    eprintln!(
        "worst ratio of our error to PyTorch's float32 error, against float64: {:.3} ({}); \
         worst relative total-norm difference {worst_norm:.2e}; {skipped_steps} skipped and \
         {clipped_steps} clipped steps",
        worst_ratio.0, worst_ratio.1
    );
    assert!(skipped_steps >= 20 && clipped_steps >= 20);
}

#[test]
fn a_skipped_first_step_leaves_everything_bit_identical() {
    // PyTorch 2.15's fused CPU SGD fills momentum_buffer with garbage here; the single-tensor
    // path, and this crate, leave parameters and state untouched, and the next step is the
    // first.
    let ctx = common::ctx();
    let dir = amp_dir();
    let name = "scaler_sgd_nesterov_skip_first";
    let case = &common::amp_case(name);
    assert_eq!(case["trace"]["found_inf"][0], 1);
    let config: OptimizerConfig = serde_json::from_value(case["optimizer"].clone()).unwrap();
    let params = replay::read_safetensors(&dir.join("params.safetensors")).unwrap();
    let mut grads =
        replay::read_safetensors(&dir.join(format!("{name}.grads.safetensors"))).unwrap();
    for g in &mut grads {
        let n: usize = g.shape[1..].iter().product();
        g.data.truncate(n);
        g.shape[0] = 1;
    }
    let (clip, grad_scaler) = amp_options(case);
    let options = ReplayOptions {
        clip,
        grad_scaler,
        ..Default::default()
    };
    let ours = replay::replay(ctx, &config, &options, &params, &grads).unwrap();
    for t in &ours.tensors {
        let bits: Vec<u32> = t.data.iter().map(|v| v.to_bits()).collect();
        match params.iter().find(|p| p.name == t.name) {
            Some(p) => {
                let want: Vec<u32> = p.data.iter().map(|v| v.to_bits()).collect();
                assert_eq!(
                    bits, want,
                    "{}: parameters changed on a skipped step",
                    t.name
                );
            }
            None => assert!(
                bits.iter().all(|&b| b == 0),
                "{}: state changed on a skipped step",
                t.name
            ),
        }
    }
    let scaler = ours.grad_scaler.unwrap();
    assert_eq!((scaler.scale, scaler.growth_tracker), (512.0, 0));
}

/// tests/golden/checkpoint, written by tools/golden/gen_checkpoint.py with
/// tools/torch_checkpoint.py: 20-step runs of PyTorch, checkpointed after 10.
fn checkpoint_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/checkpoint")
}

/// Reads the tensors and metadata of a safetensors file: `(name, dtype, shape)` sorted, the
/// values (F32, F16, BF16 or I64) as f64, and the metadata.
#[allow(clippy::type_complexity)]
fn read_checkpoint(
    path: &Path,
) -> (
    Vec<(String, String, Vec<usize>, Vec<f64>)>,
    std::collections::HashMap<String, String>,
) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let values = match v.dtype() {
                safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(v.data())
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                safetensors::Dtype::I64 => bytemuck::pod_collect_to_vec::<u8, i64>(v.data())
                    .into_iter()
                    .map(|x| x as f64)
                    .collect(),
                d @ (safetensors::Dtype::BF16 | safetensors::Dtype::F16) => {
                    let dtype = if d == safetensors::Dtype::BF16 {
                        DType::BF16
                    } else {
                        DType::F16
                    };
                    bytemuck::pod_collect_to_vec::<u8, u16>(v.data())
                        .into_iter()
                        .map(|b| f64::from(dtype.value(u32::from(b))))
                        .collect()
                }
                d => panic!("{name}: unexpected {d:?}"),
            };
            (name, format!("{:?}", v.dtype()), v.shape().to_vec(), values)
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    (tensors, meta.metadata().clone().unwrap_or_default())
}

/// The tensors of the checkpoints `ours` and `theirs`, read, after checking that they hold the
/// same tensors (names, dtypes, shapes) and the same metadata: format, version, optimizer,
/// grad scaler, and each group's hyperparameters and tensors (replay orders tensors by name).
#[allow(clippy::type_complexity)]
fn same_checkpoint_layout(
    name: &str,
    ours: &Path,
    theirs: &Path,
) -> (
    Vec<(String, String, Vec<usize>, Vec<f64>)>,
    Vec<(String, String, Vec<usize>, Vec<f64>)>,
) {
    let (ours, ours_meta) = read_checkpoint(ours);
    let (theirs, their_meta) = read_checkpoint(theirs);
    let layout = |t: &[(String, String, Vec<usize>, Vec<f64>)]| -> Vec<_> {
        t.iter()
            .map(|(n, d, s, _)| (n.clone(), d.clone(), s.clone()))
            .collect()
    };
    assert_eq!(layout(&ours), layout(&theirs), "{name}: checkpoint layout");
    for key in ["format", "version", "optimizer"] {
        assert_eq!(ours_meta.get(key), their_meta.get(key), "{name}: {key}");
    }
    let json = |m: &std::collections::HashMap<String, String>, key: &str| {
        m.get(key)
            .map(|v| serde_json::from_str::<serde_json::Value>(v).unwrap())
    };
    assert_eq!(
        json(&ours_meta, "grad_scaler"),
        json(&their_meta, "grad_scaler"),
        "{name}: grad_scaler"
    );
    let groups = |m: &std::collections::HashMap<String, String>| -> serde_json::Value {
        let mut g: serde_json::Value = serde_json::from_str(&m["param_groups"]).unwrap();
        for group in g.as_array_mut().unwrap() {
            let mut names: Vec<String> = serde_json::from_value(group["params"].take()).unwrap();
            names.sort();
            group["params"] = names.into();
        }
        g
    };
    assert_eq!(
        groups(&ours_meta),
        groups(&their_meta),
        "{name}: param_groups"
    );
    (ours, theirs)
}

#[test]
fn checkpoints_carry_runs_between_pytorch_and_replay() {
    let ctx = common::ctx();
    let dir = checkpoint_dir();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut worst_ratio = (0.0f64, String::new());
    let tmp = std::env::temp_dir().join(format!("wgpu-optim-golden-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let file = |what: &str| dir.join(format!("{name}.{what}.safetensors"));
        let config: OptimizerConfig = serde_json::from_value(case["optimizer"].clone()).unwrap();
        let (clip, grad_scaler) = amp_options(case);
        let params = replay::read_safetensors(&file("params")).unwrap();
        let head = replay::read_safetensors(&file("head")).unwrap();
        let tail = replay::read_safetensors(&file("tail")).unwrap();
        let torch10 = file("torch10");

        // PyTorch's 10 steps, exported by tools/torch_checkpoint.py, continued by replay:
        // PyTorch's uninterrupted 20 steps.
        let resume = ReplayOptions {
            clip,
            grad_scaler,
            resume: Some(&torch10),
            ..Default::default()
        };
        let ours = replay::replay(ctx, &config, &resume, &params, &tail).unwrap();
        let mut torch32 = read_f64(&file("torch20"));
        let mut torch64 = read_f64(&file("f64"));
        check_scaler(name, &ours, &mut torch32, &mut torch64);
        compare(name, &ours.tensors, &torch32, &torch64, &mut worst_ratio);

        // replay's own 10 steps, saved: PyTorch's checkpoint, key for key, in float32
        // accuracy; the same metadata.
        let saved = tmp.join(format!("{name}.safetensors"));
        let save = ReplayOptions {
            clip,
            grad_scaler,
            save_checkpoint: Some(&saved),
            ..Default::default()
        };
        replay::replay(ctx, &config, &save, &params, &head).unwrap();
        let (ours, theirs) = same_checkpoint_layout(name, &saved, &torch10);
        for ((n, _, _, a), (_, _, _, b)) in ours.iter().zip(&theirs) {
            if n.ends_with(".step") && !config.has_step_state() {
                // PyTorch's SGD and Muon keep no count: the tool writes 1 once a buffer
                // exists.
                assert_eq!(a[0] > 0.0, b[0] > 0.0, "{name} {n}");
                continue;
            }
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                    "{name} {n}: {x} vs PyTorch's {y}"
                );
            }
        }

        // PyTorch resumed from replay's checkpoint (the generator ran it): replay's own
        // 20 steps, in float32 accuracy.
        let mut all = head.clone();
        for (g, t) in all.iter_mut().zip(&tail) {
            assert_eq!(g.name, t.name);
            g.data.extend_from_slice(&t.data);
            g.shape[0] += t.shape[0];
        }
        let whole = ReplayOptions {
            clip,
            grad_scaler,
            ..Default::default()
        };
        let ours20 = replay::replay(ctx, &config, &whole, &params, &all).unwrap();
        let mut resumed = read_f64(&file("torch_resumed"));
        let mut torch64 = read_f64(&file("f64"));
        check_scaler(name, &ours20, &mut resumed, &mut torch64);
        compare(name, &ours20.tensors, &resumed, &torch64, &mut worst_ratio);
    }
    std::fs::remove_dir_all(&tmp).unwrap();
    eprintln!(
        "worst ratio of our error to PyTorch's float32 error, against float64: {:.3} ({})",
        worst_ratio.0, worst_ratio.1
    );
}

/// tests/golden/precision and its cases.json.
fn precision_cases() -> (&'static Path, serde_json::Value) {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/precision"
    ));
    let text = std::fs::read_to_string(dir.join("cases.json")).unwrap();
    (dir, serde_json::from_str(&text).unwrap())
}

/// One case of tests/golden/precision: its name, the parameters' type, the parameters and
/// gradients (both of that type), and the optimizer.
struct PrecisionCase {
    name: String,
    dtype: DType,
    params: Vec<NamedTensor>,
    grads: Vec<NamedTensor>,
    config: OptimizerConfig,
}

/// Reads `case` of cases.json in `dir`.
fn precision_case(dir: &Path, case: &serde_json::Value) -> PrecisionCase {
    let dtype: DType = case["dtype"].as_str().unwrap().parse().unwrap();
    let read = |file: String| replay::read_safetensors(&dir.join(file)).unwrap();
    let params = read(format!("params.{dtype}.safetensors"));
    let grads = read(format!("grads.{dtype}.safetensors"));
    assert!(params.iter().chain(&grads).all(|t| t.dtype == dtype));
    PrecisionCase {
        name: case["name"].as_str().unwrap().to_string(),
        dtype,
        params,
        grads,
        config: serde_json::from_value(case["optimizer"].clone()).unwrap(),
    }
}

/// Holds the error of `ours`, a tensor of a replay's output, against `truth`, the float64 run,
/// to the error of `torch`, PyTorch's fused run, and one unit of the type at the largest
/// magnitude of the truth.
fn within_fused_error(what: &str, ours: &NamedTensor, torch: &NamedTensor, truth: &[f64]) {
    let error = |t: &NamedTensor| {
        t.data
            .iter()
            .zip(truth)
            .fold(0.0f64, |m, (&x, &w)| m.max((f64::from(x) - w).abs()))
    };
    let (ours_err, torch_err) = (error(ours), error(torch));
    let unit = ours
        .dtype
        .spacing(truth.iter().fold(0.0, |m, w| m.max(w.abs())));
    assert!(
        ours_err <= torch_err + unit,
        "{what}: {}'s error against float64 is {ours_err:e}, PyTorch's {torch_err:e}",
        ours.name
    );
}

/// Holds `ours`, a replay's output, to `torch`, PyTorch's fused run of the same steps, and to
/// `truth`, the float64 run: as `sixteen_bit_replay_matches_fused_pytorch` says.
fn hold_to_fused(
    what: &str,
    ours: &[NamedTensor],
    torch: &[NamedTensor],
    truth: &[(String, Vec<f64>)],
    steps: f64,
) {
    assert_eq!(
        ours.iter().map(|t| &t.name).collect::<Vec<_>>(),
        torch.iter().map(|t| &t.name).collect::<Vec<_>>(),
        "{what}"
    );
    let (mut differ, mut total, mut worst_units) = (0, 0, 0.0f64);
    for ((o, t), (truth_name, want)) in ours.iter().zip(torch).zip(truth) {
        assert_eq!(&o.name, truth_name);
        assert_eq!(
            (o.dtype, &o.shape),
            (t.dtype, &t.shape),
            "{what}: {}",
            o.name
        );
        for (i, (&a, &b)) in o.data.iter().zip(&t.data).enumerate() {
            let (a, b) = (f64::from(a), f64::from(b));
            let unit = o.dtype.spacing(a.abs().max(b.abs()));
            let units = (a - b).abs() / unit;
            assert!(
                units <= steps,
                "{what}: {}[{i}] is {a}, PyTorch's fused {b} ({units} units apart)",
                o.name
            );
            worst_units = worst_units.max(units);
            differ += usize::from(a != b);
            total += 1;
        }
        within_fused_error(what, o, t, want);
    }
    assert!(
        differ * 20 <= total,
        "{what}: {differ} of {total} elements differ"
    );
    eprintln!(
        "{what}: {differ} of {total} elements differ from PyTorch's fused result, by at most {worst_units} units"
    );
}

/// tests/golden/precision, written by tools/golden/gen_precision.py: PyTorch's fused Adam,
/// AdamW, SGD and Adagrad on bf16 and f16 parameters, gradients and state (the math in f32,
/// every store rounded to nearest even), 10 steps. `replay` keeps the file's types and the
/// state in the parameter's type, as PyTorch does. Both round the same f32 values, so they
/// agree but where an f32 result lies next to a rounding boundary and the order of operations
/// (a fused multiply-add) sends it the other way: then by one unit of the type, moving the
/// rest of that element's trajectory. Each element is held to `steps` units of PyTorch's
/// value, at most 5% of the elements may differ at all, and against the float64 truth our
/// error must stay within PyTorch's own.
#[test]
fn sixteen_bit_replay_matches_fused_pytorch() {
    let ctx = common::ctx();
    let (dir, cases) = precision_cases();
    let steps = cases["steps"].as_u64().unwrap() as f64;
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for case in cases {
        let c = precision_case(dir, case);
        let (name, dtype, params, grads, config) = (c.name, c.dtype, c.params, c.grads, c.config);
        let read = |file: String| replay::read_safetensors(&dir.join(file)).unwrap();
        // f16 on each path the device has: both store the same bits.
        let contexts = if dtype == DType::F16 {
            f16_paths(ctx)
        } else {
            vec![ctx.clone()]
        };
        for ctx in &contexts {
            let what = format!("{name} ({} path)", ctx.f16_path());
            let ours = replay::replay(ctx, &config, &ReplayOptions::default(), &params, &grads)
                .unwrap()
                .tensors;
            let torch = read(format!("{name}.torch.safetensors"));
            let truth = read_f64(&dir.join(format!("{name}.f64.safetensors")));
            hold_to_fused(&what, &ours, &torch, &truth, steps);
        }
    }
}

/// The same cases carried by checkpoints. tools/golden/gen_precision.py saves each fused run
/// after `split` steps with tools/torch_checkpoint.py (parameters and state in the 16-bit
/// type, as PyTorch keeps them; it checks that PyTorch, loading the file back, ends bit for
/// bit where the uninterrupted run does). `replay --resume` from that file takes the
/// remaining steps and is held to PyTorch's uninterrupted run as a run from the start is.
/// replay's own checkpoint after `split` steps holds what PyTorch's does: the same tensors,
/// types, shapes and metadata, each value within `split` units of its type of PyTorch's.
#[test]
fn sixteen_bit_checkpoints_move_between_pytorch_and_replay() {
    let ctx = common::ctx();
    let (dir, cases) = precision_cases();
    let steps = cases["steps"].as_u64().unwrap() as usize;
    let split = cases["split"].as_u64().unwrap() as usize;
    let tmp = std::env::temp_dir().join(format!("wgpu-optim-golden16-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for case in cases["cases"].as_array().unwrap() {
        let c = precision_case(dir, case);
        let (name, dtype, params, grads, config) = (c.name, c.dtype, c.params, c.grads, c.config);
        let read = |file: String| replay::read_safetensors(&dir.join(file)).unwrap();
        // The gradients of steps [from, to).
        let steps_of = |from: usize, to: usize| -> Vec<NamedTensor> {
            grads
                .iter()
                .map(|g| {
                    let per = g.data.len() / steps;
                    let mut shape = g.shape.clone();
                    shape[0] = to - from;
                    NamedTensor {
                        shape,
                        data: g.data[from * per..to * per].to_vec(),
                        ..g.clone()
                    }
                })
                .collect()
        };
        let torch_split = dir.join(format!("{name}.torch{split}.safetensors"));
        let resume = ReplayOptions {
            resume: Some(&torch_split),
            ..Default::default()
        };
        let later = steps_of(split, steps);
        let ours = replay::replay(ctx, &config, &resume, &params, &later)
            .unwrap()
            .tensors;
        let torch = read(format!("{name}.torch.safetensors"));
        let truth = read_f64(&dir.join(format!("{name}.f64.safetensors")));
        let what = format!("{name} resumed from PyTorch's step {split}");
        hold_to_fused(&what, &ours, &torch, &truth, steps as f64);

        // For an optimizer with f32 state, the converter casts the state (`state_dtype="f32"`):
        // the same tensors, the state widened exactly, which replay resumes with f32 state and
        // refuses in the parameter's type, as it refuses the 16-bit file with f32 state.
        let f32_split = dir.join(format!("{name}.torch{split}.f32state.safetensors"));
        let (widened, _) = read_checkpoint(&f32_split);
        let (stored, _) = read_checkpoint(&torch_split);
        assert_eq!(widened.len(), stored.len(), "{name}");
        for ((n, d, shape, a), (m, e, their_shape, b)) in widened.iter().zip(&stored) {
            assert_eq!((n, shape, a), (m, their_shape, b), "{name}");
            let state = n.contains('.') && e != "I64" && e != "F32";
            assert_eq!(d, if state { "F32" } else { e }, "{name} {n}");
        }
        let f32_state = Precision::default().with_state(StateDType::F32);
        let resume_f32 = ReplayOptions {
            resume: Some(&f32_split),
            precision: f32_state,
            ..Default::default()
        };
        // Its parameters take another path than PyTorch's fused ones (f32 moments), but
        // their error against the float64 truth stays within PyTorch's.
        let ours = replay::replay(ctx, &config, &resume_f32, &params, &later)
            .unwrap()
            .tensors;
        let what = format!("{name} resumed with f32 state from PyTorch's step {split}");
        for p in &params {
            let find = |t: &[NamedTensor]| t.iter().find(|x| x.name == p.name).cloned().unwrap();
            let (_, want) = truth.iter().find(|(n, _)| *n == p.name).unwrap();
            within_fused_error(&what, &find(&ours), &find(&torch), want);
        }
        if stored
            .iter()
            .any(|(n, d, _, _)| n.contains('.') && (d == "BF16" || d == "F16"))
        {
            for (file, precision) in [
                (&f32_split, Precision::default()),
                (&torch_split, f32_state),
            ] {
                let options = ReplayOptions {
                    resume: Some(file),
                    precision,
                    ..Default::default()
                };
                let err = replay::replay(ctx, &config, &options, &params, &later).unwrap_err();
                assert!(err.to_string().contains("expected"), "{name}: {err}");
            }
        }

        let saved = tmp.join(format!("{name}.safetensors"));
        let save = ReplayOptions {
            save_checkpoint: Some(&saved),
            ..Default::default()
        };
        replay::replay(ctx, &config, &save, &params, &steps_of(0, split)).unwrap();
        let (ours, theirs) = same_checkpoint_layout(&name, &saved, &torch_split);
        for ((n, d, _, a), (_, _, _, b)) in ours.iter().zip(&theirs) {
            if d == "I64" {
                // PyTorch's SGD keeps no count: the tool writes 1 once a momentum buffer
                // exists, else 0; replay counts its steps.
                if config.has_step_state() {
                    assert_eq!(a, b, "{name} {n}");
                } else {
                    assert!(b[0] == 0.0 || a[0] > 0.0, "{name} {n}");
                }
                continue;
            }
            assert!(d == "BF16" || d == "F16", "{name} {n}: {d}");
            for (x, y) in a.iter().zip(b) {
                let unit = dtype.spacing(x.abs().max(y.abs()));
                assert!(
                    (x - y).abs() <= split as f64 * unit,
                    "{name} {n}: {x} vs PyTorch's {y}"
                );
            }
        }
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// The same cases with an f32 master copy of each parameter, f32 state and stochastic
/// rounding (Apex's and llm.c's layout): the update then runs in f32 on f32 values, so the
/// master copies follow the float64 truth (the same steps from the same widened start) to
/// f32's precision, far closer than PyTorch's fused 16-bit parameters can, and each 16-bit
/// parameter is one of the two values of its type around its master.
#[test]
fn master_weights_follow_the_float64_truth() {
    let ctx = common::ctx();
    let (dir, cases) = precision_cases();
    let precision = Precision::default()
        .with_state(StateDType::F32)
        .with_master_weights(true)
        .with_stochastic_rounding(Some(2024));
    let options = ReplayOptions {
        precision,
        ..Default::default()
    };
    for case in cases["cases"].as_array().unwrap() {
        let c = precision_case(dir, case);
        let (name, dtype, params, grads, config) = (c.name, c.dtype, c.params, c.grads, c.config);
        let read = |file: String| replay::read_safetensors(&dir.join(file)).unwrap();
        let ours = replay::replay(ctx, &config, &options, &params, &grads)
            .unwrap()
            .tensors;
        let torch = read(format!("{name}.torch.safetensors"));
        let truth = read_f64(&dir.join(format!("{name}.f64.safetensors")));
        let find = |name: &str| ours.iter().find(|t| t.name == name).unwrap();
        for p in &params {
            let (_, want) = truth.iter().find(|(n, _)| *n == p.name).unwrap();
            let fused = torch.iter().find(|t| t.name == p.name).unwrap();
            let master = find(&format!("{}.master", p.name));
            let param = find(&p.name);
            assert_eq!((master.dtype, param.dtype), (DType::F32, dtype));
            let (mut ours_err, mut fused_err) = (0.0f64, 0.0f64);
            for (i, (((&m, &q), &f), &w)) in master
                .data
                .iter()
                .zip(&param.data)
                .zip(&fused.data)
                .zip(want)
                .enumerate()
            {
                let (m, q) = (f64::from(m), f64::from(q));
                assert!(
                    (m - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{name}: {}.master[{i}] is {m}, float64 {w}",
                    p.name
                );
                assert!(
                    (q - m).abs() < dtype.spacing(m.abs()),
                    "{name}: {}[{i}] is {q}, its master {m}",
                    p.name
                );
                ours_err = ours_err.max((m - w).abs());
                fused_err = fused_err.max((f64::from(f) - w).abs());
            }
            eprintln!(
                "{name}: {}'s master error against float64 {ours_err:.2e}, PyTorch's fused {dtype} parameters' {fused_err:.2e}",
                p.name
            );
        }
    }
}
