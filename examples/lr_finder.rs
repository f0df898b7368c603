//! The learning-rate range test on a least-squares problem.
//!
//! A WGSL kernel of this example computes the loss ½·mean((Xw − y)²) and its gradient
//! Xᵀ(Xw − y)/n on the GPU; wgpu-optim does the optimizer step. The LR finder sweeps the learning
//! rate, suggests one, writes the plot, and leaves the weights as it found them. Then a short
//! training run uses the suggestion.
//!
//! Run: `cargo run --release --example lr_finder [OUT.svg]`

use wgpu_optim::lr_finder::LrFinder;
use wgpu_optim::{BufferRange, Context, Optimizer, SGD, Tensor};

const SAMPLES: usize = 512;
const FEATURES: usize = 16;

/// One invocation per feature j: grad[j] = Σ_i r_i·x_ij / n with r = Xw − y; invocation 0 also
/// writes the loss.
const KERNEL: &str = r"
const SAMPLES: u32 = 512u;
const FEATURES: u32 = 16u;
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;

@compute @workgroup_size(16)
fn main(@builtin(local_invocation_index) j: u32) {
    var g = 0.0;
    var l = 0.0;
    for (var i = 0u; i < SAMPLES; i++) {
        var r = -y[i];
        for (var k = 0u; k < FEATURES; k++) {
            r += x[i * FEATURES + k] * w[k];
        }
        g += r * x[i * FEATURES + j];
        l += r * r;
    }
    grad[j] = g / f32(SAMPLES);
    if j == 0u {
        loss[0] = 0.5 * l / f32(SAMPLES);
    }
}
";

/// A small deterministic generator for the data.
fn noise(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn main() -> Result<(), wgpu_optim::Error> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "lr_finder.svg".into());
    let (ctx, info) = Context::request(wgpu::Backends::all(), None)?;
    println!("adapter: {} ({:?})", info.name, info.backend);
    let device = ctx.device();

    let mut seed = 7;
    let x: Vec<f32> = (0..SAMPLES * FEATURES).map(|_| noise(&mut seed)).collect();
    let w_true: Vec<f32> = (0..FEATURES).map(|_| 2.0 * noise(&mut seed)).collect();
    let y: Vec<f32> = (0..SAMPLES)
        .map(|i| {
            (0..FEATURES)
                .map(|k| x[i * FEATURES + k] * w_true[k])
                .sum::<f32>()
                + 0.01 * noise(&mut seed)
        })
        .collect();
    let x = ctx.create_f32_buffer("x", &x)?;
    let y = ctx.create_f32_buffer("y", &y)?;
    let w = ctx.create_f32_buffer("w", &[0.0; FEATURES])?;
    let grad = ctx.create_f32_buffer("grad", &[0.0; FEATURES])?;
    let loss = ctx.create_f32_buffer("loss", &[0.0])?;

    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("least squares"),
        source: wgpu::ShaderSource::Wgsl(KERNEL.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("least squares"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let entries: Vec<wgpu::BindGroupEntry<'_>> = [&x, &y, &w, &grad, &loss]
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("least squares"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });

    let tensor = Tensor::new(BufferRange::whole(&w), BufferRange::whole(&grad));
    let mut sgd = Optimizer::new(
        &ctx,
        SGD {
            lr: 0.01,
            momentum: 0.9,
            ..Default::default()
        },
        &[tensor],
    )?;

    // One training iteration: loss and gradient at the current weights, then the step.
    let mut train_step = |opt: &mut Optimizer| -> Result<f64, wgpu_optim::Error> {
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        opt.step(&mut encoder)?;
        ctx.queue().submit([encoder.finish()]);
        Ok(f64::from(ctx.read_f32(&[(&loss, 0, 1)])?[0]))
    };

    let finder = LrFinder {
        start_lr: 1e-5,
        end_lr: 10.0,
        num_iter: 100,
        ..Default::default()
    };
    let test = finder.run(&mut sgd, &mut train_step)?;
    test.plot(std::path::Path::new(&out))?;
    let steepest = test.steepest_lr.unwrap_or(0.01);
    println!(
        "range test: {} iterations{}; steepest descent at lr {steepest:.3e}, min loss / 10 at lr {:.3e}; plot: {out}",
        test.lrs.len(),
        if test.diverged {
            " (stopped: loss diverged)"
        } else {
            ""
        },
        test.min_loss_lr.unwrap_or(f64::NAN),
    );

    // The weights are back at zero; train with the suggestion.
    sgd.set_lr(0, steepest)?;
    let first = train_step(&mut sgd)?;
    let mut last = first;
    for _ in 0..100 {
        last = train_step(&mut sgd)?;
    }
    println!("training at lr {steepest:.3e}: loss {first:.4} -> {last:.2e} in 100 steps");
    Ok(())
}
