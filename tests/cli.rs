//! The `wgpu-optim` binary end to end: `replay` on PyTorch golden data, and its errors (one
//! line on stderr, a non-zero exit, no output file).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
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

/// Runs the binary. The backend follows `WGPU_BACKEND` when it names one the CLI knows.
/// `XDG_RUNTIME_DIR` is set because Mesa's Vulkan device-select layer complains on stderr
/// without it.
fn wgpu_optim(args: &[&str], dir: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wgpu-optim"));
    cmd.args(args).env("XDG_RUNTIME_DIR", dir);
    if let Ok(b) = std::env::var("WGPU_BACKEND")
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
        &replay_args(r#"{"type":"Adamax"}"#, p, g, out),
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
        &replay_args(r#"{"type":"Adam","foreach":true}"#, p, g, out),
        "unknown field",
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
}
