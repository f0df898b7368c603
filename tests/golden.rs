//! `replay` against real PyTorch trajectories: tests/golden/optim, written by
//! tools/golden/gen_optim.py. For every optimizer and option combination, 20 steps over three
//! tensors must match torch.optim in float32, and the error against PyTorch's float64 run must
//! stay within the range of PyTorch's own float32 error. Cases with a `"schedule"` run it as
//! `replay --schedule` does, including schedules that cycle momentum or beta1.
//!
//! tests/golden/amp, written by tools/golden/gen_amp.py, holds 40-step trajectories of
//! PyTorch's training-loop recipe with `clip_grad_norm_` (norm 2 and inf), `clip_grad_value_`
//! and `torch.amp.GradScaler("cpu")` with inf and NaN injected into chosen steps.

mod common;

use std::path::{Path, PathBuf};
use wgpu_optim::replay::{self, NamedTensor, ReplayOptions};
use wgpu_optim::{ClipGrad, GradScaler, NormType, OptimizerConfig};

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
    let params = replay::read_safetensors(&dir().join("params.safetensors")).unwrap();
    let grads = replay::read_safetensors(&dir().join("grads.safetensors")).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    let mut worst_ratio = (0.0f64, String::new());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let config: OptimizerConfig = serde_json::from_value(case["optimizer"].clone()).unwrap();
        let options = ReplayOptions {
            schedule: case.get("schedule"),
            ..Default::default()
        };
        let ours = replay::replay(ctx, &config, &options, &params, &grads).unwrap();
        let torch32 = read_f64(&dir().join(format!("{name}.f32.safetensors")));
        let torch64 = read_f64(&dir().join(format!("{name}.f64.safetensors")));
        compare(name, &ours.tensors, &torch32, &torch64, &mut worst_ratio);
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
        // Error against float64 within the range of PyTorch's own float32 error.
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
        let norm_type: NormType = serde_json::from_value(case["norm_type"].clone()).unwrap();
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
        };
        let ours = replay::replay(ctx, &config, &options, &params, &grads).unwrap();
        let mut torch32 = read_f64(&dir.join(format!("{name}.f32.safetensors")));
        let mut torch64 = read_f64(&dir.join(format!("{name}.f64.safetensors")));
        // The grad scaler's state: the same scale and growth tracker, bit for bit.
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
