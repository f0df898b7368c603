//! The 16-bit conversions of shaders/dtype.wgsl on the GPU against the `half` crate: every
//! 16-bit value widened, and rounding at every value, every tie between neighbours, and the
//! floats next to each tie, with random floats beside.

mod common;

use common::{Rng, ctx};
use wgpu::util::DeviceExt;

const DTYPE: &str = include_str!("../shaders/dtype.wgsl");

/// Runs entry `entry` of a module that maps `input[i]` to `output[i]` with `convert`.
fn run(convert: &str, input: &[u32]) -> Vec<u32> {
    let ctx = ctx();
    let device = ctx.device();
    let source = format!(
        "{DTYPE}\n\
         @group(0) @binding(0) var<storage, read> input: array<u32>;\n\
         @group(0) @binding(1) var<storage, read_write> output: array<u32>;\n\
         @compute @workgroup_size(256)\n\
         fn main(@builtin(global_invocation_id) id: vec3<u32>) {{\n\
             let i = id.x + id.y * 65535u * 256u;\n\
             if i < arrayLength(&input) {{ output[i] = {convert}; }}\n\
         }}"
    );
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("dtype test"),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bytes = (input.len() * 4) as u64;
    let input_buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(input),
        usage: wgpu::BufferUsages::STORAGE,
    });
    // Poisoned, so that an element the kernel skipped shows.
    let output = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&vec![0xdead_beefu32; input.len()]),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: input_buffer.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: output.as_entire_binding(),
            },
        ],
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        let groups = input.len().div_ceil(256) as u32;
        pass.dispatch_workgroups(groups.min(65535), groups.div_ceil(65535), 1);
    }
    ctx.queue().submit([encoder.finish()]);
    let words = ctx.read_f32(&[(&output, 0, bytes / 4)]).unwrap();
    words.iter().map(|w| w.to_bits()).collect()
}

/// The value of f16 or bf16 bits `h`.
fn value(bf16: bool, h: u16) -> f32 {
    if bf16 {
        half::bf16::from_bits(h).to_f32()
    } else {
        half::f16::from_bits(h).to_f32()
    }
}

/// The bits PyTorch stores for `x`: round to nearest even, NaN as 0x7fc0 (bf16) or 0x7e00 with
/// the sign (f16).
fn rounded(bf16: bool, x: f32) -> u32 {
    match (bf16, x.is_nan()) {
        (true, true) => 0x7fc0,
        (false, true) => 0x7e00 | (x.to_bits() >> 16 & 0x8000),
        (true, false) => u32::from(half::bf16::from_f32(x).to_bits()),
        (false, false) => u32::from(half::f16::from_f32(x).to_bits()),
    }
}

#[test]
fn every_16_bit_value_widens_exactly() {
    let all: Vec<u32> = (0..=0xffffu32).collect();
    for (bf16, convert) in [
        (true, "bitcast<u32>(bf16_to_f32(input[i]))"),
        (false, "bitcast<u32>(f16_to_f32(input[i]))"),
    ] {
        let got = run(convert, &all);
        for (&h, &g) in all.iter().zip(&got) {
            let want = value(bf16, h as u16);
            // A NaN widens to a NaN; whether a GPU keeps its payload is its own.
            let ok = if want.is_nan() {
                f32::from_bits(g).is_nan()
            } else {
                g == want.to_bits()
            };
            assert!(
                ok,
                "{} {h:#06x}: got {g:#010x}, want {want:e}",
                if bf16 { "bf16" } else { "f16" }
            );
        }
    }
}

#[test]
fn rounding_matches_pytorch_at_every_tie() {
    let mut rng = Rng::fresh("rounding_matches_pytorch_at_every_tie");
    for (bf16, convert) in [
        (true, "f32_to_bf16(bitcast<f32>(input[i]))"),
        (false, "f32_to_f16(bitcast<f32>(input[i]))"),
    ] {
        let mut input: Vec<u32> = Vec::new();
        for h in 0..=0xffffu16 {
            let v = value(bf16, h);
            let next = value(bf16, h.wrapping_add(1));
            input.push(v.to_bits());
            if v.is_finite() && next.is_finite() && v.signum() == next.signum() && v != next {
                // The tie, computed in f64 (exact in f32: one more mantissa bit), and the
                // floats on either side of it.
                let tie = ((f64::from(v) + f64::from(next)) / 2.0) as f32;
                assert_eq!(f64::from(tie), (f64::from(v) + f64::from(next)) / 2.0);
                for x in [
                    tie,
                    f32::from_bits(tie.to_bits() - 1),
                    f32::from_bits(tie.to_bits() + 1),
                ] {
                    input.push(x.to_bits());
                }
            }
        }
        // Beyond f16's range and below its subnormals, and random floats of every exponent.
        input.extend(
            [
                65519.0f32,
                65520.0,
                65535.0,
                1e30,
                2e-8,
                3e-8,
                1e-30,
                f32::MAX,
            ]
            .map(f32::to_bits),
        );
        input.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN].map(f32::to_bits));
        input.extend((0..200_000).map(|_| rng.next_u64() as u32));
        let got = run(convert, &input);
        for (&x, &g) in input.iter().zip(&got) {
            let x = f32::from_bits(x);
            let want = rounded(bf16, x);
            assert_eq!(
                g,
                want,
                "{} of {x:e} ({:#010x}): got {g:#06x}, want {want:#06x}",
                if bf16 { "bf16" } else { "f16" },
                x.to_bits()
            );
        }
    }
}
