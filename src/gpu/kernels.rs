//! Shader sources and their compilation into pipelines, once per [`Context`].

use super::{Access, Context};
use crate::error::{Error, Result};
use crate::optim::{Kernel, Shader};
use std::num::NonZeroU64;

/// One shader file's WGSL with its prologues in front: the access prologue, then common.wgsl.
macro_rules! with_prologue {
    ($access:literal, $file:literal) => {
        concat!(
            include_str!(concat!("../../shaders/", $access)),
            include_str!("../../shaders/common.wgsl"),
            include_str!(concat!("../../shaders/", $file))
        )
    };
}

/// The WGSL source of each shader file for one access mode, prologues in front.
pub(crate) fn source(shader: Shader, access: Access) -> &'static str {
    match (shader, access) {
        (Shader::Sgd, Access::Scalar) => with_prologue!("scalar.wgsl", "sgd.wgsl"),
        (Shader::Sgd, Access::Vec4) => with_prologue!("vec4.wgsl", "sgd.wgsl"),
        (Shader::Adam, Access::Scalar) => with_prologue!("scalar.wgsl", "adam.wgsl"),
        (Shader::Adam, Access::Vec4) => with_prologue!("vec4.wgsl", "adam.wgsl"),
        (Shader::Rmsprop, Access::Scalar) => with_prologue!("scalar.wgsl", "rmsprop.wgsl"),
        (Shader::Rmsprop, Access::Vec4) => with_prologue!("vec4.wgsl", "rmsprop.wgsl"),
        (Shader::Adagrad, Access::Scalar) => with_prologue!("scalar.wgsl", "adagrad.wgsl"),
        (Shader::Adagrad, Access::Vec4) => with_prologue!("vec4.wgsl", "adagrad.wgsl"),
    }
}

/// The shader file's name and access mode, as a label.
pub(crate) fn label(shader: Shader, access: Access) -> &'static str {
    match (shader, access) {
        (Shader::Sgd, Access::Scalar) => "shaders/sgd.wgsl (scalar)",
        (Shader::Sgd, Access::Vec4) => "shaders/sgd.wgsl (vec4)",
        (Shader::Adam, Access::Scalar) => "shaders/adam.wgsl (scalar)",
        (Shader::Adam, Access::Vec4) => "shaders/adam.wgsl (vec4)",
        (Shader::Rmsprop, Access::Scalar) => "shaders/rmsprop.wgsl (scalar)",
        (Shader::Rmsprop, Access::Vec4) => "shaders/rmsprop.wgsl (vec4)",
        (Shader::Adagrad, Access::Scalar) => "shaders/adagrad.wgsl (scalar)",
        (Shader::Adagrad, Access::Vec4) => "shaders/adagrad.wgsl (vec4)",
    }
}

/// Workgroup size of every kernel (`WORKGROUP_SIZE` in shaders/common.wgsl).
pub(crate) const WORKGROUP_SIZE: u32 = 256;
/// Segments per dispatch and tensors per dispatch (`MAX_SEGMENTS` in shaders/common.wgsl).
pub(crate) const MAX_SEGMENTS: usize = 256;
/// Bytes of the segment table uniform (`SegmentTable` in shaders/common.wgsl).
pub(crate) const TABLE_SIZE: u64 = 16 + 32 * MAX_SEGMENTS as u64;

/// A kernel's pipeline and bind group layout.
#[derive(Debug)]
pub(crate) struct CompiledKernel {
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) pipeline: wgpu::ComputePipeline,
}

/// Checks the device can run `kernel`, then builds its layout and pipeline for `access`.
pub(super) fn compile(ctx: &Context, kernel: Kernel, access: Access) -> Result<CompiledKernel> {
    let limits = ctx.limits();
    let storage = kernel.storage_buffers();
    if storage > limits.max_storage_buffers_per_shader_stage {
        return Err(Error::Unsupported(format!(
            "the {} kernel: it binds {storage} storage buffers but the device allows {} per shader stage (max_storage_buffers_per_shader_stage)",
            kernel.entry_point(),
            limits.max_storage_buffers_per_shader_stage
        )));
    }
    let hyper_size = kernel.uniform_size() * MAX_SEGMENTS as u64;
    if TABLE_SIZE.max(hyper_size) > limits.max_uniform_buffer_binding_size {
        return Err(Error::Unsupported(format!(
            "the {} kernel: it needs {} bytes of uniform binding but the device allows {} (max_uniform_buffer_binding_size)",
            kernel.entry_point(),
            TABLE_SIZE.max(hyper_size),
            limits.max_uniform_buffer_binding_size
        )));
    }
    if limits.max_compute_invocations_per_workgroup < WORKGROUP_SIZE
        || limits.max_compute_workgroup_size_x < WORKGROUP_SIZE
    {
        return Err(Error::Unsupported(format!(
            "workgroups of {WORKGROUP_SIZE} invocations"
        )));
    }

    let device = ctx.device();
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let uniform = |binding, dynamic, size| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: dynamic,
            min_binding_size: NonZeroU64::new(size),
        },
        count: None,
    };
    let mut entries = vec![uniform(0, false, TABLE_SIZE), uniform(1, true, hyper_size)];
    // Gradients are bound read-write, although only read, so that parameters and gradients may
    // share one buffer: wgpu rejects a buffer bound both read-only and read-write in one
    // dispatch, but accepts two read-write bindings.
    for binding in 2..2 + storage {
        entries.push(wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: false },
                has_dynamic_offset: false,
                // One unit: the element type of the shader's storage arrays.
                min_binding_size: NonZeroU64::new(4 * access.lanes()),
            },
            count: None,
        });
    }
    let label = format!("wgpu-optim {} ({access})", kernel.entry_point());
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(&label),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&label),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let module = ctx.module(kernel.shader(), access);
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&label),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(kernel.entry_point()),
        compilation_options: Default::default(),
        cache: None,
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(Error::Gpu(format!("compiling {label}: {e}")));
    }
    Ok(CompiledKernel { layout, pipeline })
}
