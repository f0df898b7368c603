//! Embedding wgpu-optim in an engine that trains with AMP loss scaling and gradient clipping:
//! the engine owns the device, the parameter and gradient buffers, and a gradient kernel of its
//! own; each iteration records the gradient pass and the optimizer step into one encoder and
//! submits once. The gradient kernel multiplies by the grad scaler's scale, which it reads from
//! the optimizer's GPU buffer, as the backward pass of `loss × scale` would; the step unscales,
//! clips to a global norm, skips on overflow and updates the scale, all on the GPU. Nothing is
//! read back until the end.
//!
//! The toy problem: minimize ½‖θ − target‖² over 1,000,000 parameters, so ∇ = θ − target.
//! Every 50th iteration the engine's gradient overflows (one element is inf), as happens in
//! mixed precision: the grad scaler skips that step and halves its scale.
//!
//! Run: `cargo run --release --example embed`

use wgpu_optim::{Adam, BufferRange, ClipGrad, Context, GradScaler, Optimizer, Tensor};

const GRADIENT: &str = r"
@group(0) @binding(0) var<storage, read> theta: array<f32>;
@group(0) @binding(1) var<storage, read> target_: array<f32>;
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;
// The grad scaler's scale, in the optimizer's buffer.
@group(0) @binding(3) var<storage, read> scale: f32;
// 1 when this iteration's gradient overflows.
@group(0) @binding(4) var<uniform> overflow: vec4<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    let i = id.x + id.y * n.x * 256u;
    if i < arrayLength(&theta) {
        var g = scale * (theta[i] - target_[i]);
        if overflow.x != 0u && i == 12345u {
            g = bitcast<f32>(0x7f800000u);
        }
        grad[i] = g;
    }
}
";

fn main() -> Result<(), wgpu_optim::Error> {
    const N: usize = 1_000_000;
    const ITERATIONS: u32 = 200;
    // The engine's device; here we let the crate pick an adapter.
    let (ctx, info) = Context::request(wgpu::Backends::all(), None)?;
    println!("adapter: {} ({:?})", info.name, info.backend);
    let device = ctx.device();

    // The engine's buffers.
    let target: Vec<f32> = (0..N).map(|i| ((i % 1000) as f32 / 500.0) - 1.0).collect();
    let theta = ctx.create_f32_buffer("theta", &vec![0.0; N])?;
    let target = ctx.create_f32_buffer("target", &target)?;
    let grad = ctx.create_f32_buffer("grad", &vec![0.0; N])?;
    let overflow = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("overflow"),
        size: 16,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });

    // The optimizer, built once over the engine's buffers: Adam, with clip_grad_norm_(1.0)
    // and a GradScaler, as PyTorch's AMP recipe runs them.
    let tensor = Tensor::new(BufferRange::whole(&theta), BufferRange::whole(&grad));
    let mut adam = Optimizer::new(
        &ctx,
        Adam {
            lr: 0.05,
            ..Default::default()
        },
        &[tensor],
    )?;
    adam.set_clip_grad(Some(ClipGrad::norm(100.0)))?;
    adam.set_grad_scaler(Some(GradScaler {
        init_scale: 1024.0,
        growth_interval: 20,
        ..Default::default()
    }))?;

    // The engine's gradient kernel, reading the scale where the optimizer keeps it.
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
    let scale = adam.grad_scale();
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
            wgpu::BindGroupEntry {
                binding: 3,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: scale.buffer,
                    offset: scale.offset,
                    size: wgpu::BufferSize::new(4),
                }),
            },
            wgpu::BindGroupEntry {
                binding: 4,
                resource: overflow.as_entire_binding(),
            },
        ],
    });
    let workgroups = N.div_ceil(256) as u32;

    for k in 1..=ITERATIONS {
        let flag = u32::from(k % 50 == 0);
        ctx.queue()
            .write_buffer(&overflow, 0, bytemuck::cast_slice(&[flag, 0, 0, 0]));
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(workgroups.min(65_535), workgroups.div_ceil(65_535), 1);
        }
        // Unscale, clip, step (skipped on inf or NaN), update the scale: one call.
        adam.step(&mut encoder)?;
        ctx.queue().submit([encoder.finish()]);
    }

    let theta = ctx.read_f32(&[(&theta, 0, N as u64)])?;
    let target = ctx.read_f32(&[(&target, 0, N as u64)])?;
    let mean_loss = |theta: &dyn Fn(usize) -> f32| {
        (0..N)
            .map(|i| 0.5 * f64::from(theta(i) - target[i]).powi(2))
            .sum::<f64>()
            / N as f64
    };
    let scaler = adam.read_grad_scaler()?;
    println!(
        "mean loss after {ITERATIONS} iterations: {:.3e} (started at {:.3e})",
        mean_loss(&|i| theta[i]),
        mean_loss(&|_| 0.0)
    );
    println!(
        "steps taken: {} of {ITERATIONS} (overflowing ones skipped); grad scale {} (growth tracker {})",
        adam.step_count(0)?,
        scaler.scale,
        scaler.growth_tracker
    );
    Ok(())
}
