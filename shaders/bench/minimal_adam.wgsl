// A minimal Adam step, the yardstick of the kernel template's cost (`wgpu-optim bench`'s
// "adam-minimal" row): one flat tensor whose length is a multiple of 4, one vec4 per
// invocation, no segment table, no per-tensor coefficients, no step state on the GPU. The
// update is the template's Adam formula (shaders/adam.wgsl), with the step's coefficients
// written by the host.

struct Minimal {
    // lr / (1 - beta1^t)
    step_size: f32,
    // sqrt(1 - beta2^t)
    bias_correction2_sqrt: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    // vec4s in the tensor
    units: u32,
    // x extent of the dispatch (the grid is 2-D past 65535 workgroups)
    dispatch_x: u32,
}

@group(0) @binding(0) var<uniform> h: Minimal;
@group(0) @binding(1) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;

// torch.lerp as PyTorch evaluates it (as in shaders/common.wgsl).
fn torch_lerp(start: vec4<f32>, end: vec4<f32>, weight: f32) -> vec4<f32> {
    if abs(weight) < 0.5 {
        return start + weight * (end - start);
    }
    return end - (end - start) * (1.0 - weight);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * h.dispatch_x) * 256u + lid;
    if i >= h.units {
        return;
    }
    let g = grad[i];
    let m = torch_lerp(exp_avg[i], g, h.one_minus_beta1);
    let v = exp_avg_sq[i] * h.beta2 + h.one_minus_beta2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    let denom = sqrt(v) / h.bias_correction2_sqrt + h.eps;
    param[i] = param[i] - h.step_size * (m / denom);
}
