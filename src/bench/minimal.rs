//! A minimal Adam kernel (shaders/bench/minimal_adam.wgsl): the yardstick against which
//! `wgpu-optim bench` shows what the kernel template costs.

use super::filled_buffer;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::{Context, scoped};
use crate::optim::Adam;

/// The uniform of shaders/bench/minimal_adam.wgsl (`Minimal`).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Uniform {
    step_size: f32,
    bias_correction2_sqrt: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    units: u32,
    dispatch_x: u32,
}

/// One flat tensor's Adam step, ready to record: its pipeline, its buffers and their bind
/// group, and its grid.
pub(super) struct MinimalAdam {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    grid: (u32, u32),
    _buffers: Vec<wgpu::Buffer>,
}

impl MinimalAdam {
    /// Adam with PyTorch's defaults (at its first step) over `elements` elements, rounded up
    /// to a multiple of 4.
    pub(super) fn new(ctx: &Context, elements: u64) -> Result<Self> {
        let units = elements.div_ceil(4);
        let workgroups = units.div_ceil(256);
        let max = u64::from(ctx.limits().max_compute_workgroups_per_dimension);
        let x = workgroups.min(max);
        let y = workgroups.div_ceil(x.max(1));
        if units > u64::from(u32::MAX) || y > max {
            return Err(Error::Input(format!(
                "{elements} elements are too many for one minimal dispatch"
            )));
        }
        let adam = Adam::default();
        let (b1, b2) = adam.betas;
        let uniform = Uniform {
            step_size: (adam.lr / (1.0 - b1)) as f32,
            bias_correction2_sqrt: (1.0 - b2).sqrt() as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            eps: adam.eps as f32,
            units: units as u32,
            dispatch_x: x as u32,
        };
        let device = ctx.device();
        let elements = (units * 4, DType::F32);
        let mut buffers = vec![
            filled_buffer(ctx, "minimal Adam parameters", elements, 0.5)?,
            filled_buffer(ctx, "minimal Adam gradients", elements, 0.01)?,
            filled_buffer(ctx, "minimal Adam exp_avg", elements, 0.0)?,
            filled_buffer(ctx, "minimal Adam exp_avg_sq", elements, 0.0)?,
        ];
        let (pipeline, bind_group) = scoped(device, || {
            let uniform = wgpu::util::DeviceExt::create_buffer_init(
                device,
                &wgpu::util::BufferInitDescriptor {
                    label: Some("minimal Adam uniform"),
                    contents: bytemuck::bytes_of(&uniform),
                    usage: wgpu::BufferUsages::UNIFORM,
                },
            );
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("shaders/bench/minimal_adam.wgsl"),
                source: wgpu::ShaderSource::Wgsl(
                    include_str!("../../shaders/bench/minimal_adam.wgsl").into(),
                ),
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("minimal Adam"),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
            let layout = pipeline.get_bind_group_layout(0);
            let entries: Vec<wgpu::BindGroupEntry<'_>> = std::iter::once(&uniform)
                .chain(&buffers)
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: b.as_entire_binding(),
                })
                .collect();
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("minimal Adam"),
                layout: &layout,
                entries: &entries,
            });
            buffers.push(uniform);
            (pipeline, bind_group)
        })?;
        Ok(Self {
            pipeline,
            bind_group,
            grid: (x as u32, y as u32),
            _buffers: buffers,
        })
    }

    /// Records one step: one dispatch.
    pub(super) fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("minimal Adam"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.grid.0, self.grid.1, 1);
    }
}
