//! `replay` against real PyTorch trajectories: tests/golden/optim, written by
//! tools/golden/gen_optim.py. For every optimizer and option combination, 20 steps over three
//! tensors must match torch.optim in float32, and the error against PyTorch's float64 run must
//! stay within the range of PyTorch's own float32 error. Cases with a `"schedule"` run it as
//! `replay --schedule` does, including schedules that cycle momentum or beta1.

mod common;

use std::path::Path;
use wgpu_optim::OptimizerConfig;
use wgpu_optim::replay::{self, NamedTensor};

fn dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/optim"))
}

/// Reads a golden file; the f64 files are converted to f64 here, since `replay` reads f32 only.
fn read_f64(path: &Path) -> Vec<(String, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f64>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = match view.dtype() {
                safetensors::Dtype::F64 => bytemuck::pod_collect_to_vec(view.data()),
                safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(view.data())
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                d => panic!("unexpected dtype {d:?}"),
            };
            (name, data)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
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
        let schedule = case.get("schedule");
        let ours: Vec<NamedTensor> =
            replay::replay(ctx, &config, schedule, &params, &grads).unwrap();
        let torch32 = read_f64(&dir().join(format!("{name}.f32.safetensors")));
        let torch64 = read_f64(&dir().join(format!("{name}.f64.safetensors")));
        let names: Vec<&str> = ours.iter().map(|t| t.name.as_str()).collect();
        let torch_names: Vec<&str> = torch32.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(
            names, torch_names,
            "{name}: the same tensors and state names as PyTorch"
        );
        for ((t, (_, t32)), (_, t64)) in ours.iter().zip(&torch32).zip(&torch64) {
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
                worst_ratio = (ours_err / torch_err, format!("{name} {}", t.name));
            }
        }
    }
    eprintln!(
        "worst ratio of our error to PyTorch's float32 error, against float64: {:.3} ({})",
        worst_ratio.0, worst_ratio.1
    );
}
