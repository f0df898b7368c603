// Muon (torch.optim.Muon): the two phases of its update, in the kernel template
// (shaders/common.wgsl), with the per-tensor sums of shaders/sums.wgsl for the norm of the
// update. State: momentum_buffer (state buffer 0), and the Newton–Schulz iterates X (state
// buffers 1 and 2, the optimizer's own). The first phase stores the new momentum and
// X = u / max(‖u‖, eps) in buffer 1; the matrix products of shaders/gemm.wgsl then iterate X
// between buffers 1 and 2; the second phase (`APPLY`) updates the parameter from the last
// iterate, in buffer `last`.

// Nesterov momentum.
override NESTEROV: bool = true;
// The second phase: the parameter's update.
override APPLY: bool = false;

// One parameter group's values for one step. Must be kept in sync with `MuonHyper` in
// src/optim/muon.rs.
struct Hyper {
    lr: f32,
    momentum: f32,
    one_minus_momentum: f32,
    eps: f32,
    // 1 - lr * weight_decay
    decay: f32,
    // The state buffer of the last iterate: 1 after an even number of iterations, else 2.
    last: u32,
    _pad0: u32,
    _pad1: u32,
}

// One tensor's values for one step: the group's (Muon keeps no step count), and the norm.
struct Coeffs {
    lr: f32,
    momentum: f32,
    one_minus_momentum: f32,
    eps: f32,
    decay: f32,
    last: u32,
    // max(‖u‖, eps), from the tensor's sums (`apply_sums`); 1 before
    norm: f32,
}

fn coeffs(h: Hyper, t: u32, x: ptr<function, Scalars>) -> Coeffs {
    return Coeffs(h.lr, h.momentum, h.one_minus_momentum, h.eps, h.decay, h.last, 1.0);
}

// The new momentum buffer, and the update it gives: PyTorch's `buf.lerp_(grad, 1 - momentum)`
// and, with Nesterov, `grad.lerp(buf, momentum)`.
fn momentum(u: ptr<function, Unit>) -> array<V, 2> {
    let c = (*u).c;
    let g = (*u).g;
    let buf = torch_lerp((*u).s[0], g, c.one_minus_momentum);
    if NESTEROV {
        return array<V, 2>(buf, torch_lerp(g, buf, c.momentum));
    }
    return array<V, 2>(buf, buf);
}

// The squares of the update, for its norm.
fn sum_terms(u: ptr<function, Unit>) -> Terms {
    let m = momentum(u);
    let zero = splat(0.0);
    return Terms(m[1] * m[1], zero, zero, zero);
}

// The norm the update is divided by: PyTorch's `X.norm().clamp(min=eps)`.
fn apply_sums(c: Coeffs, sums: vec4<f32>, x: ptr<function, Scalars>) -> Coeffs {
    var out = c;
    out.norm = max(sqrt(sums.x), c.eps);
    return out;
}

fn update(u: ptr<function, Unit>) {
    let c = (*u).c;
    if APPLY {
        // θ·(1 − lr·λ), then θ − lr·ratio·X, as PyTorch's `mul_` then `add_(X, alpha=...)`.
        let x = (*u).s[c.last];
        (*u).p = (*u).p * c.decay;
        (*u).p = (*u).p + (-(c.lr * (*u).seg.lr_ratio)) * x;
        return;
    }
    let m = momentum(u);
    (*u).s[0] = m[0];
    (*u).s[1] = m[1] / c.norm;
}
