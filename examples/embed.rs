//! Embedding wgpu-optim in an engine: the engine owns the device, the parameter and gradient
//! buffers, and a gradient kernel of its own; each iteration records the gradient pass and the
//! optimizer step into one encoder and submits once. Nothing is read back until the end.
//!
//! The toy problem: minimize ½‖θ − target‖² over 1,000,000 parameters, so ∇ = θ − target.
//!
//! Run: `cargo run --release --example embed`

use wgpu_optim::{Adam, BufferRange, Context, Optimizer, Tensor};

const GRADIENT: &str = r"
@group(0) @binding(0) var<storage, read> theta: array<f32>;
@group(0) @binding(1) var<storage, read> target_: array<f32>;
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    let i = id.x + id.y * n.x * 256u;
    if i < arrayLength(&theta) {
        grad[i] = theta[i] - target_[i];
    }
}
";

fn main() -> Result<(), wgpu_optim::Error> {
    const N: usize = 1_000_000;
    // The engine's device; here we let the crate pick an adapter.
    let (ctx, info) = Context::request(wgpu::Backends::all(), None)?;
    println!("adapter: {} ({:?})", info.name, info.backend);
    let device = ctx.device();

    // The engine's buffers.
    let target: Vec<f32> = (0..N).map(|i| ((i % 1000) as f32 / 500.0) - 1.0).collect();
    let theta = ctx.create_f32_buffer("theta", &vec![0.0; N])?;
    let target = ctx.create_f32_buffer("target", &target)?;
    let grad = ctx.create_f32_buffer("grad", &vec![0.0; N])?;

    // The engine's gradient kernel.
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("gradient"),
        source: wgpu::ShaderSource::Wgsl(GRADIENT.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("gradient"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("gradient"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: theta.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: target.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: grad.as_entire_binding(),
            },
        ],
    });
    let workgroups = N.div_ceil(256) as u32;

    // The optimizer, built once over the engine's buffers.
    let tensor = Tensor::new(BufferRange::whole(&theta), BufferRange::whole(&grad));
    let mut adam = Optimizer::new(
        &ctx,
        Adam {
            lr: 0.05,
            ..Default::default()
        },
        &[tensor],
    )?;

    for _ in 0..200 {
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(workgroups.min(65_535), workgroups.div_ceil(65_535), 1);
        }
        adam.step(&mut encoder)?;
        ctx.queue().submit([encoder.finish()]);
    }

    let theta = ctx.read_f32(&[(&theta, 0, N as u64)])?;
    let target = ctx.read_f32(&[(&target, 0, N as u64)])?;
    let loss: f64 = theta
        .iter()
        .zip(&target)
        .map(|(a, b)| 0.5 * f64::from(a - b).powi(2))
        .sum::<f64>()
        / N as f64;
    println!(
        "mean loss after 200 Adam steps: {loss:.3e} (started at {:.3e})",
        {
            target
                .iter()
                .map(|b| 0.5 * f64::from(*b).powi(2))
                .sum::<f64>()
                / N as f64
        }
    );
    Ok(())
}
