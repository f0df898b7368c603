//! 16-bit parameters, gradients and state (f16 and bf16, packed two to a word) on the GPU
//! against the CPU reference that rounds the parameters and the state at every store
//! (`reference::step_stored`), in f32 as the kernels compute and in f64.
//!
//! The tensors sit at odd element offsets, share 32-bit words with each other and with poisoned
//! elements that no tensor owns, and some cannot take vec4 access beside others that can.

mod common;

use std::collections::BTreeMap;

use common::{Rng, ctx, f16_paths};
use wgpu::util::DeviceExt;
use wgpu_optim::reference::Stored;
use wgpu_optim::{
    Access, Adafactor, Adagrad, Adam, AdamW, BufferRange, ClipGrad, Context, DType, F16Path, Lamb,
    Optimizer, OptimizerConfig, ParamGroup, Precision, SGD, StateDType, Tensor, TensorState,
    reference,
};

/// Bits of an element no tensor owns: must survive every step bit for bit.
const POISON: u16 = 0x5a5a;

/// Whether a case of these types runs on `ctx`: every case on the packed f16 path, and on
/// the native one those with f16 in them (the others take the same kernels on both).
fn runs_on(ctx: &Context, (param, grad, precision): (DType, DType, Precision)) -> bool {
    let types = [param, grad, precision.state.for_param(param)];
    ctx.f16_path() == F16Path::Packed || types.contains(&DType::F16)
}

/// A buffer of 16-bit or f32 elements, as bits.
fn buffer(ctx: &Context, label: &str, dtype: DType, bits: &[u32]) -> wgpu::Buffer {
    let bytes: Vec<u8> = match dtype {
        DType::F32 => bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
        _ => bits
            .iter()
            .flat_map(|&b| (b as u16).to_le_bytes())
            .collect(),
    };
    let mut bytes = bytes;
    bytes.resize(bytes.len().next_multiple_of(16), 0);
    ctx.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: &bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        })
}

/// The buffer's first `n` elements of `dtype`, as bits.
fn read_bits(ctx: &Context, buffer: &wgpu::Buffer, dtype: DType, n: usize) -> Vec<u32> {
    let words = ctx.read_f32(&[(buffer, 0, buffer.size() / 4)]).unwrap();
    let words = words.iter().map(|w| w.to_bits());
    match dtype {
        DType::F32 => words.take(n).collect(),
        _ => words.flat_map(|w| [w & 0xffff, w >> 16]).take(n).collect(),
    }
}

/// One tensor's place: element offsets of its parameter and gradient, its length, and its
/// shape (empty for a vector of `len`).
struct Place {
    param: usize,
    grad: usize,
    len: usize,
    shape: &'static [usize],
}

impl Place {
    /// A vector of `len` elements.
    fn new(param: usize, grad: usize, len: usize) -> Self {
        Self {
            param,
            grad,
            len,
            shape: &[],
        }
    }

    /// The same elements as a tensor of `shape`.
    fn with_shape(self, shape: &'static [usize]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), self.len);
        Self { shape, ..self }
    }

    /// The tensor's shape.
    fn dims(&self) -> Vec<usize> {
        if self.shape.is_empty() {
            vec![self.len]
        } else {
            self.shape.to_vec()
        }
    }
}

/// Steps `config` `steps` times over tensors of the given places with parameters of
/// `param_type` and gradients of `grad_type`, and checks the parameters against the reference,
/// and every element no tensor owns against its poison. Returns each tensor's access mode and
/// how many parameters differ from the f32 reference at all.
#[allow(clippy::too_many_arguments)]
fn check(
    ctx: &Context,
    config: OptimizerConfig,
    clip: Option<ClipGrad>,
    (param_type, grad_type, precision): (DType, DType, Precision),
    places: &[Place],
    steps: usize,
    rng: &mut Rng,
) -> (Vec<Access>, usize) {
    let param_len = places.iter().map(|p| p.param + p.len).max().unwrap() + 3;
    let grad_len = places.iter().map(|p| p.grad + p.len).max().unwrap() + 3;
    let poison = |dtype: DType| match dtype {
        DType::F32 => u32::from(POISON) << 16 | u32::from(POISON),
        _ => u32::from(POISON),
    };
    let mut init = vec![poison(param_type); param_len];
    for p in places {
        for x in &mut init[p.param..p.param + p.len] {
            *x = param_type.bits(rng.normal());
        }
    }
    let param = buffer(ctx, "param", param_type, &init);
    let grad = buffer(ctx, "grad", grad_type, &vec![poison(grad_type); grad_len]);
    let tensors: Vec<Tensor<'_>> = places
        .iter()
        .map(|p| {
            let at = |e: usize, d: DType| e as u64 * d.size();
            let tensor = Tensor::new(
                BufferRange::new(&param, at(p.param, param_type), p.len as u64)
                    .with_dtype(param_type),
                BufferRange::new(&grad, at(p.grad, grad_type), p.len as u64).with_dtype(grad_type),
            );
            if p.shape.is_empty() {
                tensor
            } else {
                tensor.with_shape(p.shape)
            }
        })
        .collect();
    let groups = [ParamGroup::new(config, tensors)];
    let mut opt = Optimizer::with_precision(ctx, &groups, precision).unwrap();
    if let Some(c) = clip {
        opt.set_clip_grad(Some(c)).unwrap();
    }
    let access = (0..places.len())
        .map(|k| opt.tensor_access(k).unwrap())
        .collect();

    // The reference in f64 and in f32, from the stored values.
    let value = |d: DType, bits: u32| f64::from(d.value(bits));
    let mut p64: Vec<Vec<f64>> = places
        .iter()
        .map(|p| {
            init[p.param..p.param + p.len]
                .iter()
                .map(|&b| value(param_type, b))
                .collect()
        })
        .collect();
    let mut p32: Vec<Vec<f32>> = p64
        .iter()
        .map(|v| v.iter().map(|&x| x as f32).collect())
        .collect();
    let mut s64 = vec![TensorState::<f64>::default(); places.len()];
    let mut s32 = vec![TensorState::<f32>::default(); places.len()];
    // The master copies, where the optimizer keeps them: the parameters, widened.
    let stored = |k: usize| Stored::new(param_type, precision).tensor(k as u32);
    let keeps_master = stored(0).keeps_master();
    let mut m64 = p64.clone();
    let mut m32 = p32.clone();
    // Each element's largest magnitude over the steps: a rounding split at a step moves the
    // trajectory by one unit of the stored type at the magnitude of that step.
    let mut largest: Vec<Vec<f64>> = p64
        .iter()
        .map(|v| v.iter().map(|x| x.abs()).collect())
        .collect();
    // Likewise each state element's largest magnitude: a state element that rounds apart from
    // the reference's at a step carries that unit, shrunk by the decay, into later steps.
    let mut largest_state: Vec<BTreeMap<String, Vec<f64>>> = vec![BTreeMap::new(); places.len()];
    let mut g_bits = vec![poison(grad_type); grad_len];
    for _ in 0..steps {
        for p in places {
            for x in &mut g_bits[p.grad..p.grad + p.len] {
                *x = grad_type.bits(rng.normal());
            }
        }
        let g = buffer(ctx, "grad upload", grad_type, &g_bits);
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&g, 0, &grad, 0, grad.size());
        ctx.queue().submit([encoder.finish()]);
        opt.step_submit().unwrap();
        let mut grads: Vec<Vec<f64>> = places
            .iter()
            .map(|p| {
                g_bits[p.grad..p.grad + p.len]
                    .iter()
                    .map(|&b| value(grad_type, b))
                    .collect()
            })
            .collect();
        let mut all: Vec<&mut [f64]> = grads.iter_mut().map(Vec::as_mut_slice).collect();
        reference::prepare_grads(&mut all, clip.as_ref(), None);
        for (k, p) in places.iter().enumerate() {
            let g32: Vec<f32> = grads[k].iter().map(|&g| g as f32).collect();
            let shape = p.dims();
            let (master64, master32) = if keeps_master {
                (Some(&mut m64[k][..]), Some(&mut m32[k][..]))
            } else {
                (None, None)
            };
            let (s, g) = (stored(k), &grads[k]);
            reference::step_stored(&config, &shape, &mut s64[k], &mut p64[k], master64, g, s);
            reference::step_stored(&config, &shape, &mut s32[k], &mut p32[k], master32, &g32, s);
            for (m, x) in largest[k].iter_mut().zip(&p64[k]) {
                *m = m.max(x.abs());
            }
            for (name, b) in &s64[k].buffers {
                let l = largest_state[k]
                    .entry(name.clone())
                    .or_insert_with(|| vec![0.0; b.len()]);
                for (m, x) in l.iter_mut().zip(b) {
                    *m = m.max(x.abs());
                }
            }
        }
    }

    let got = read_bits(ctx, &param, param_type, param_len);
    let state_type = precision.state.for_param(param_type);
    let what = format!(
        "{config:?} with {param_type} parameters, {grad_type} gradients and {state_type} state, {precision:?}"
    );
    let mut owned = vec![false; param_len];
    let mut differ = 0;
    let mut total = 0;
    for (k, p) in places.iter().enumerate() {
        for i in 0..p.len {
            owned[p.param + i] = true;
            let g = value(param_type, got[p.param + i]);
            let (w64, w32) = (p64[k][i], f64::from(p32[k][i]));
            // The f32 evaluation is the kernel's arithmetic up to the order of operations
            // (and of the sums over a tensor, for Lamb's trust ratio): it may round the other
            // way where a value lies next to a rounding boundary of a 16-bit type, by one unit
            // of it (at the largest magnitude the element had) at a step, and rarely so.
            let unit = if param_type == DType::F32 {
                0.0
            } else {
                param_type.spacing(largest[k][i])
            };
            let units = steps as f64 * unit;
            let tol = 2e-5 * (1.0 + w32.abs());
            assert!(
                (g - w32).abs() <= units + tol,
                "{what}: tensor {k} element {i} is {g}, the f32 reference {w32} (one unit {unit:e})"
            );
            differ += usize::from(g != w32 && unit > 0.0);
            total += 1;
            // Against f64 likewise; beyond those units, the kernel is held to the tolerance or
            // twice float32's own error, whichever is larger, as elsewhere.
            let allowed = units + (2e-5 * (1.0 + w64.abs())).max(2.0 * (w32 - w64).abs());
            assert!(
                (g - w64).abs() <= allowed,
                "{what}: tensor {k} element {i} is {g}, the f64 reference {w64}"
            );
        }
    }
    // Rounding other than to nearest even differs at half the elements or so.
    assert!(
        differ * 20 <= total,
        "{what}: {differ} of {total} elements differ from the f32 reference"
    );
    for (i, (&b, &mine)) in got.iter().zip(&owned).enumerate() {
        if !mine {
            assert_eq!(
                b,
                poison(param_type),
                "{what}: element {i} is no tensor's, but changed"
            );
        }
    }
    // The master copies, f32 on both sides: within the tolerance of the f32 reference, and of
    // the f64 one or twice float32's own error. Where the state is 16-bit, a state element that
    // rounds apart from the reference's moves its update by a fraction of the learning rate:
    // within a unit of the parameter's type (at the largest magnitude the element had) a step.
    for k in (0..places.len()).filter(|_| keeps_master) {
        let got = opt.read_master(k).unwrap();
        assert_eq!(got.len(), places[k].len);
        for (i, &g) in got.iter().enumerate() {
            let (g, w32, w64) = (f64::from(g), f64::from(m32[k][i]), m64[k][i]);
            let units = if state_type == DType::F32 {
                0.0
            } else {
                steps as f64 * param_type.spacing(largest[k][i])
            };
            assert!(
                (g - w32).abs() <= units + 2e-5 * (1.0 + w32.abs()),
                "{what}: tensor {k}'s master[{i}] is {g}, the f32 reference {w32}"
            );
            let allowed = units + (2e-5 * (1.0 + w64.abs())).max(2.0 * (w32 - w64).abs());
            assert!(
                (g - w64).abs() <= allowed,
                "{what}: tensor {k}'s master[{i}] is {g}, the f64 reference {w64}"
            );
        }
    }
    if !keeps_master {
        assert!(opt.read_master(0).is_err(), "{what}: a master copy to read");
    }
    let g_after = read_bits(ctx, &grad, grad_type, grad_len);
    assert_eq!(g_after, g_bits, "{what}: the gradients changed");
    // The state, widened from its type, against the f32 evaluation rounded likewise: within a
    // unit of the state's type (at the largest magnitude the element had) a step where the two
    // round apart (none for f32 state).
    for (k, want) in s32.iter().enumerate() {
        let got = opt.read_state(k).unwrap();
        assert_eq!(got.step, want.step, "{what}: tensor {k}'s step");
        for (name, w) in &want.buffers {
            for (i, (&g, &w)) in got.buffers[name].iter().zip(w).enumerate() {
                let (g, w) = (f64::from(g), f64::from(w));
                let unit = if state_type == DType::F32 {
                    0.0
                } else {
                    state_type.spacing(g.abs().max(w.abs()).max(largest_state[k][name][i]))
                };
                assert!(
                    (g - w).abs() <= steps as f64 * unit + 2e-5 * (1.0 + w.abs()),
                    "{what}: tensor {k}'s {name}[{i}] is {g}, the f32 reference {w}"
                );
            }
        }
    }
    (access, differ)
}

/// Tensors at odd element offsets; the second ends in the word the third starts in; the
/// fourth's gradient is at another lane than its parameter (scalar beside vec4); the fifth is
/// long enough for many workgroups.
fn places() -> Vec<Place> {
    vec![
        Place::new(1, 1, 1),
        Place::new(3, 5, 1_001),
        Place::new(1_004, 1_010, 3),
        Place::new(1_009, 1_020, 517),
        Place::new(1_529, 1_541, 70_001),
        Place::new(71_531, 71_543, 2),
    ]
}

#[test]
fn adam_on_16_bit_parameters_matches_the_rounding_reference() {
    let mut rng = Rng::fresh("adam_on_16_bit_parameters");
    let config: OptimizerConfig = Adam {
        lr: 0.1,
        weight_decay: 0.01,
        ..Default::default()
    }
    .into();
    for access in [Access::Vec4, Access::Scalar] {
        for ctx in f16_paths(&ctx().clone().with_access(access)) {
            for (param, grad) in [
                (DType::BF16, DType::BF16),
                (DType::F16, DType::F16),
                (DType::BF16, DType::F32),
                (DType::F32, DType::BF16),
                (DType::F16, DType::F32),
            ] {
                for state in [StateDType::Param, StateDType::F32, StateDType::BF16] {
                    let types = (param, grad, Precision::default().with_state(state));
                    if !runs_on(&ctx, types) {
                        continue;
                    }
                    let (got, _) = check(&ctx, config, None, types, &places(), 4, &mut rng);
                    if access == Access::Vec4 {
                        assert_eq!(got[3], Access::Scalar, "{types:?}");
                        assert_eq!(got[4], Access::Vec4, "{types:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn every_kind_of_kernel_steps_16_bit_parameters() {
    // A class of each template path: plain (SGD with momentum, AdamW with amsgrad, Adagrad),
    // the gradient reduction (clipping by the norm), and the per-tensor sums (Lamb).
    let mut rng = Rng::fresh("every_kind_of_kernel_steps_16_bit_parameters");
    let configs: [(OptimizerConfig, Option<ClipGrad>); 5] = [
        (
            SGD {
                lr: 0.1,
                momentum: 0.9,
                nesterov: true,
                ..Default::default()
            }
            .into(),
            None,
        ),
        (
            AdamW {
                lr: 0.05,
                amsgrad: true,
                ..Default::default()
            }
            .into(),
            None,
        ),
        (
            Adagrad {
                lr: 0.1,
                ..Default::default()
            }
            .into(),
            None,
        ),
        (
            Adam {
                lr: 0.1,
                ..Default::default()
            }
            .into(),
            Some(ClipGrad::norm(10.0)),
        ),
        (
            Lamb {
                lr: 0.1,
                ..Default::default()
            }
            .into(),
            None,
        ),
    ];
    for access in [Access::Vec4, Access::Scalar] {
        let ctx = ctx().clone().with_access(access);
        for (config, clip) in configs {
            let master = Precision::default()
                .with_master_weights(true)
                .with_stochastic_rounding(Some(7));
            for precision in [Precision::default(), master] {
                let types = (DType::BF16, DType::BF16, precision);
                check(&ctx, config, clip, types, &places(), 3, &mut rng);
            }
        }
    }
}

#[test]
fn stochastic_rounding_matches_the_reference_bit_for_bit() {
    // SGD with lr 1 computes p - g, one rounding in f32 on the GPU and the CPU alike, so the
    // f32 reference is the kernel's arithmetic exactly, and every parameter rounded with the
    // same random bits must match it: the bits' keys (seed, step, tensor, element in its
    // tensor) are right in both dispatches and in every tensor. Results that are not values of
    // the parameter's type round up or down at random, so a wrong key shows at about a third
    // of them.
    let mut rng = Rng::fresh("stochastic_rounding_bit_for_bit");
    let config: OptimizerConfig = SGD {
        lr: 1.0,
        ..Default::default()
    }
    .into();
    let seeded = Precision::default().with_stochastic_rounding(Some(99));
    for access in [Access::Vec4, Access::Scalar] {
        for ctx in f16_paths(&ctx().clone().with_access(access)) {
            for (param, grad) in [(DType::BF16, DType::F32), (DType::F16, DType::F32)] {
                for precision in [seeded, seeded.with_master_weights(true)] {
                    let types = (param, grad, precision);
                    if !runs_on(&ctx, types) {
                        continue;
                    }
                    let (_, differ) = check(&ctx, config, None, types, &places(), 3, &mut rng);
                    let path = ctx.f16_path();
                    assert_eq!(differ, 0, "{access}, {path}, {types:?}");
                }
            }
        }
    }
}

#[test]
fn master_weights_and_stochastic_rounding_match_the_reference() {
    // Each layout of a 16-bit parameter: an f32 master copy, stochastic rounding, both; with
    // the state in the parameter's type and in f32. The reference rounds stochastically with
    // the same random bits (`rounding_bits`), so the parameters match it as closely as with
    // rounding to nearest.
    let mut rng = Rng::fresh("master_weights_and_stochastic_rounding");
    let config: OptimizerConfig = Adam {
        lr: 0.1,
        weight_decay: 0.01,
        ..Default::default()
    }
    .into();
    let master = Precision::default().with_master_weights(true);
    let seeded = Precision::default().with_stochastic_rounding(Some(0x5eed));
    let both = master.with_stochastic_rounding(Some(1));
    for access in [Access::Vec4, Access::Scalar] {
        for ctx in f16_paths(&ctx().clone().with_access(access)) {
            for (param, grad) in [(DType::BF16, DType::BF16), (DType::F16, DType::F32)] {
                for precision in [master, seeded, both] {
                    for state in [StateDType::Param, StateDType::F32] {
                        let types = (param, grad, precision.with_state(state));
                        if runs_on(&ctx, types) {
                            check(&ctx, config, None, types, &places(), 4, &mut rng);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn adafactor_keeps_master_weights_beside_factored_state() {
    // Adafactor factors the state of a matrix, so its master copy lies in a region of its own,
    // per element: matrices (one a batch of 4, one of many workgroups) and a vector at odd
    // offsets, three of them in one state block, each copy at its parameter's lane. A copy
    // indexed by the factor region, or by another tensor's region, gives other values.
    let mut rng = Rng::fresh("adafactor_keeps_master_weights_beside_factored_state");
    let config: OptimizerConfig = Adafactor::default().into();
    let places = [
        Place::new(1, 1, 6).with_shape(&[2, 3]),
        Place::new(9, 11, 1_000).with_shape(&[4, 10, 25]),
        Place::new(1_013, 1_013, 77),
        Place::new(1_093, 1_095, 70_007).with_shape(&[7, 10_001]),
    ];
    let master = Precision::default()
        .with_master_weights(true)
        .with_state(StateDType::F32);
    let seeded = master.with_stochastic_rounding(Some(11));
    for access in [Access::Vec4, Access::Scalar] {
        for ctx in f16_paths(&ctx().clone().with_access(access)) {
            for (param, grad) in [(DType::BF16, DType::BF16), (DType::F16, DType::F32)] {
                for precision in [master, seeded] {
                    let types = (param, grad, precision);
                    if runs_on(&ctx, types) {
                        check(&ctx, config, None, types, &places, 4, &mut rng);
                    }
                }
            }
        }
    }
}

/// `n` copies of bf16 1.5 in one tensor, stepped `steps` times by SGD with a constant update of
/// `update` (below half a unit of bf16 there, 2^-7), with `precision`; the parameters as f64.
fn constant_updates(precision: Precision, n: usize, update: f32, steps: usize) -> Vec<f64> {
    let ctx = ctx();
    let param = buffer(ctx, "param", DType::BF16, &vec![DType::BF16.bits(1.5); n]);
    let grad = buffer(ctx, "grad", DType::F32, &vec![update.to_bits(); n]);
    let tensor = Tensor::new(
        BufferRange::new(&param, 0, n as u64).with_dtype(DType::BF16),
        BufferRange::new(&grad, 0, n as u64),
    );
    let config = SGD {
        lr: 1.0,
        ..Default::default()
    };
    let groups = [ParamGroup::new(config, vec![tensor])];
    let mut opt = Optimizer::with_precision(ctx, &groups, precision).unwrap();
    for _ in 0..steps {
        opt.step_submit().unwrap();
    }
    read_bits(ctx, &param, DType::BF16, n)
        .iter()
        .map(|&b| f64::from(DType::BF16.value(b)))
        .collect()
}

#[test]
fn stochastic_rounding_is_unbiased_and_reproducible() {
    // An update of 0.001 is an eighth of a unit of bf16 at 1.5: rounding to nearest loses every
    // one, while stochastically rounded parameters move by it on average. Each element rounds
    // down with probability 0.128 at the first step; after 3 steps its value is a sum of
    // independent roundings, whose mean over 2^17 elements must lie within 5 standard errors
    // of 1.5 - 3 · 0.001.
    let n = 1 << 17;
    let (update, steps) = (0.001f32, 3);
    let nearest = constant_updates(Precision::default(), n, update, steps);
    assert!(
        nearest.iter().all(|&p| p == 1.5),
        "rounding to nearest moved a parameter"
    );
    let seeded = |seed| Precision::default().with_stochastic_rounding(Some(seed));
    let got = constant_updates(seeded(42), n, update, steps);
    let mean = got.iter().sum::<f64>() / n as f64;
    let var = got.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let want = 1.5 - f64::from(steps as f32 * update);
    let error = 5.0 * (var / n as f64).sqrt();
    assert!(
        (mean - want).abs() <= error,
        "the mean parameter is {mean}, the f32 update gives {want} (5 standard errors: {error:e})"
    );
    assert!(var > 0.0, "every element rounded alike");
    // The same seed gives the same bits; another seed other bits.
    assert_eq!(constant_updates(seeded(42), n, update, steps), got);
    assert_ne!(constant_updates(seeded(43), n, update, steps), got);
    // With a master copy, the f32 trajectory is kept, and each step's parameter is rounded from
    // it: the mean again, with the master exactly the f32 sum.
    let both = seeded(42).with_master_weights(true);
    let got = constant_updates(both, n, update, steps);
    let mean = got.iter().sum::<f64>() / n as f64;
    let var = got.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let error = 5.0 * (var / n as f64).sqrt();
    assert!(
        (mean - want).abs() <= error,
        "with master weights the mean parameter is {mean}, the f32 update gives {want}"
    );
}

#[test]
fn a_factored_master_copy_must_fit_one_binding() {
    // Bindings of 1 MiB: a bf16 matrix of 400,000 elements fits one (800 KB), and so does its
    // factored state, but its f32 master copy (1.6 MB) does not: an error that names it, where
    // the same matrix without master weights is built.
    let small = common::context_with_limits(|l| l.max_storage_buffer_binding_size = 1 << 20);
    let n = 400_000;
    let param = buffer(&small, "param", DType::BF16, &vec![0; n]);
    let grad = buffer(&small, "grad", DType::BF16, &vec![0; n]);
    let matrix = Tensor::new(
        BufferRange::new(&param, 0, n as u64).with_dtype(DType::BF16),
        BufferRange::new(&grad, 0, n as u64).with_dtype(DType::BF16),
    )
    .with_shape(&[400, 1_000]);
    let groups = [ParamGroup::new(Adafactor::default(), vec![matrix])];
    let f32_state = Precision::default().with_state(StateDType::F32);
    Optimizer::with_precision(&small, &groups, f32_state).unwrap();
    let err = Optimizer::with_precision(&small, &groups, f32_state.with_master_weights(true))
        .unwrap_err();
    assert!(
        err.to_string().contains("master copy of 400004 elements"),
        "{err}"
    );
}

#[test]
fn master_weights_and_stochastic_rounding_refuse_f32_parameters() {
    let ctx = ctx();
    let param = buffer(ctx, "param", DType::F32, &[0; 64]);
    let grad = buffer(ctx, "grad", DType::F32, &[0; 64]);
    let f32_tensor = Tensor::new(
        BufferRange::new(&param, 0, 16),
        BufferRange::new(&grad, 0, 16),
    );
    let config = Adam::default();
    for precision in [
        Precision::default().with_master_weights(true),
        Precision::default().with_stochastic_rounding(Some(3)),
    ] {
        let groups = [ParamGroup::new(config, vec![f32_tensor])];
        let err = Optimizer::with_precision(ctx, &groups, precision).unwrap_err();
        assert!(err.to_string().contains("every parameter is f32"), "{err}");
    }
    // Beside a 16-bit parameter, an f32 one is its own master: it keeps none.
    let bf16 = buffer(ctx, "bf16", DType::BF16, &[DType::BF16.bits(1.0); 16]);
    let bf16_tensor = Tensor::new(
        BufferRange::new(&bf16, 0, 16).with_dtype(DType::BF16),
        BufferRange::new(&grad, 64, 16),
    );
    let master = Precision::default().with_master_weights(true);
    let groups = [ParamGroup::new(config, vec![f32_tensor, bf16_tensor])];
    let mut opt = Optimizer::with_precision(ctx, &groups, master).unwrap();
    let err = opt.read_master(0).unwrap_err();
    assert!(err.to_string().contains("keeps no master weights"), "{err}");
    assert_eq!(opt.read_master(1).unwrap(), vec![1.0; 16]);
    let err = opt.load_master(1, &[2.0; 15]).unwrap_err();
    assert!(err.to_string().contains("15 values"), "{err}");
    assert_eq!(opt.read_master(1).unwrap(), vec![1.0; 16]);
    // Made by the first step from the parameters as they are then: here written after the
    // optimizer was built. Adam without weight decay leaves a parameter whose gradient is 0.
    let three: Vec<u8> = [DType::BF16.bits(3.0) as u16; 16]
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .collect();
    ctx.queue().write_buffer(&bf16, 0, &three);
    opt.step_submit().unwrap();
    assert_eq!(opt.read_master(1).unwrap(), vec![3.0; 16]);
    opt.load_master(1, &[2.0; 16]).unwrap();
    assert_eq!(opt.read_master(1).unwrap(), vec![2.0; 16]);
    opt.step_submit().unwrap();
    assert_eq!(
        read_bits(ctx, &bf16, DType::BF16, 16),
        vec![DType::BF16.bits(2.0); 16]
    );
}

#[test]
fn sixteen_bit_ranges_are_checked_and_copied_whole() {
    let ctx = ctx();
    let mut rng = Rng::fresh("sixteen_bit_ranges_are_checked");
    let n = 1_000;
    let bits: Vec<u32> = (0..n + 4).map(|_| DType::BF16.bits(rng.normal())).collect();
    let param = buffer(ctx, "param", DType::BF16, &bits);
    let grad = buffer(ctx, "grad", DType::BF16, &bits);
    let bf16 = |b, at: u64, len| BufferRange::new(b, 2 * at, len).with_dtype(DType::BF16);
    let config = Adam::default();

    // A 16-bit element at an odd byte offset, and a range past the buffer's end.
    let odd = BufferRange::new(&param, 3, 10).with_dtype(DType::BF16);
    let e = Optimizer::new(ctx, config, &[Tensor::new(odd, bf16(&grad, 0, 10))]).unwrap_err();
    assert!(e.to_string().contains("offset 3"), "{e}");

    // Snapshots copy whole words: a parameter at an odd element offset is refused, and nothing
    // changes. A checkpoint carries it, reading and writing the words it shares around their
    // other halves.
    let tensors = [Tensor::new(bf16(&param, 1, n), bf16(&grad, 1, n))];
    let mut opt = Optimizer::new(ctx, config, &tensors).unwrap();
    let e = opt.snapshot().unwrap_err();
    assert!(e.to_string().contains("32-bit word"), "{e}");
    let path = std::env::temp_dir().join(format!(
        "wgpu-optim-bf16-{}.safetensors",
        std::process::id()
    ));
    let save = wgpu_optim::checkpoint::SaveOptions {
        parameters: true,
        ..Default::default()
    };
    let load = || wgpu_optim::checkpoint::LoadOptions {
        parameters: true,
        ..Default::default()
    };
    opt.step_submit().unwrap();
    let saved = read_bits(ctx, &param, DType::BF16, n as usize + 4);
    opt.save(&path, &save).unwrap();
    opt.step_submit().unwrap();
    assert_ne!(read_bits(ctx, &param, DType::BF16, n as usize + 4), saved);
    opt.load(&path, load()).unwrap();
    // The element before the tensor and those after it keep their bits.
    assert_eq!(read_bits(ctx, &param, DType::BF16, n as usize + 4), saved);
    std::fs::remove_file(&path).unwrap();

    // Rebinding to ranges of another type is an error that changes nothing.
    let f32_range = BufferRange::new(&grad, 4, n);
    let e = opt.rebind(&[f32_range], None).unwrap_err();
    assert!(
        e.to_string()
            .contains("tensor 0's gradient range is f32; the tensor's gradients are bf16"),
        "{e}"
    );
    opt.step_submit().unwrap();
    assert_eq!(opt.step_count(0).unwrap(), 2);

    // At an even offset and length: a snapshot restores the bits, and a checkpoint carries
    // the parameters as BF16 into another optimizer.
    let tensors = [Tensor::new(bf16(&param, 2, n), bf16(&grad, 2, n))];
    let mut opt = Optimizer::new(ctx, config, &tensors).unwrap();
    opt.step_submit().unwrap();
    let before = read_bits(ctx, &param, DType::BF16, n as usize + 4);
    let snapshot = opt.snapshot().unwrap();
    opt.save(&path, &save).unwrap();
    opt.step_submit().unwrap();
    assert_ne!(read_bits(ctx, &param, DType::BF16, n as usize + 4), before);
    opt.restore(&snapshot).unwrap();
    assert_eq!(read_bits(ctx, &param, DType::BF16, n as usize + 4), before);
    opt.step_submit().unwrap();
    opt.load(&path, load()).unwrap();
    assert_eq!(read_bits(ctx, &param, DType::BF16, n as usize + 4), before);
    assert_eq!(opt.step_count(0).unwrap(), 1);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn sixteen_bit_state_reads_loads_and_checkpoints_exactly() {
    // Two tensors at odd offsets (lanes 1 and 2 with vec4 access), of odd lengths, so that
    // their bf16 state starts and ends inside words, one of them shared between the two.
    let ctx = ctx();
    let mut rng = Rng::fresh("sixteen_bit_state_reads_loads");
    let bits: Vec<u32> = (0..2_000).map(|_| DType::BF16.bits(rng.normal())).collect();
    let param = buffer(ctx, "param", DType::BF16, &bits);
    let grad = buffer(ctx, "grad", DType::BF16, &bits);
    let bf16 = |b, at: u64, len| BufferRange::new(b, 2 * at, len).with_dtype(DType::BF16);
    let tensors = [
        Tensor::new(bf16(&param, 1, 501), bf16(&grad, 1, 501)),
        Tensor::new(bf16(&param, 502, 777), bf16(&grad, 502, 777)),
    ];
    let mut opt = Optimizer::new(ctx, Adam::default(), &tensors).unwrap();
    opt.step_submit().unwrap();
    let first = [opt.read_state(0).unwrap(), opt.read_state(1).unwrap()];
    // Every value is a bf16 value.
    for s in &first {
        for v in s.buffers.values().flatten() {
            assert_eq!(DType::BF16.round(*v), *v);
        }
    }

    // load_state rounds to bf16, and leaves the other tensor's halves of shared words alone.
    let mut changed = first[0].clone();
    for v in changed.buffers.values_mut().flatten() {
        *v = *v * 3.0 + 1e-3;
    }
    opt.load_state(0, &changed).unwrap();
    let got = opt.read_state(0).unwrap();
    for (name, values) in &changed.buffers {
        let want: Vec<f32> = values.iter().map(|&v| DType::BF16.round(v)).collect();
        assert_eq!(got.buffers[name], want, "{name}");
    }
    assert_eq!(opt.read_state(1).unwrap(), first[1]);

    // A checkpoint keeps the state as BF16, through whole-word copies, synchronously and not.
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "wgpu-optim-bf16-state-{}.safetensors",
        std::process::id()
    ));
    let path_async = dir.join(format!(
        "wgpu-optim-bf16-async-{}.safetensors",
        std::process::id()
    ));
    opt.load_state(0, &first[0]).unwrap();
    opt.save(&path, &Default::default()).unwrap();
    opt.save_async(&path_async, &Default::default())
        .unwrap()
        .wait()
        .unwrap();
    opt.step_submit().unwrap();
    for p in [&path, &path_async] {
        opt.load(p, Default::default()).unwrap();
        assert_eq!(opt.read_state(0).unwrap(), first[0]);
        assert_eq!(opt.read_state(1).unwrap(), first[1]);
        opt.step_submit().unwrap();
    }
    let file = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&file[8..8 + header_len]).unwrap();
    assert_eq!(header["param.0.exp_avg"]["dtype"], "BF16");
    assert_eq!(
        header["param.1.exp_avg_sq"]["shape"],
        serde_json::json!([777])
    );
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(&path_async).unwrap();

    // f32 state beside bf16 parameters stays f32; Muon and Adafactor keep f32 state only.
    let groups = [ParamGroup::new(Adam::default(), tensors.to_vec())];
    let f32_state = Precision::default().with_state(StateDType::F32);
    let mut opt = Optimizer::with_precision(ctx, &groups, f32_state).unwrap();
    opt.step_submit().unwrap();
    let s = opt.read_state(0).unwrap();
    assert!(
        s.buffers["exp_avg_sq"]
            .iter()
            .any(|&v| DType::BF16.round(v) != v)
    );
    let matrix = [Tensor::new(bf16(&param, 0, 600), bf16(&grad, 0, 600)).with_shape(&[20, 30])];
    for config in [
        OptimizerConfig::from(wgpu_optim::Muon::default()),
        wgpu_optim::Adafactor::default().into(),
    ] {
        let e = Optimizer::new(ctx, config, &matrix).unwrap_err();
        assert!(e.to_string().contains("keeps its state in f32"), "{e}");
        let groups = [ParamGroup::new(config, matrix.to_vec())];
        Optimizer::with_precision(ctx, &groups, f32_state).unwrap();
    }
}

#[test]
fn sixteen_bit_tensors_split_across_small_windows() {
    // Storage bindings of 1 MiB: a tensor of 700,001 elements takes two or three windows, and
    // windows of 16-bit elements with scalar access end on odd elements unless rounded to a
    // word; at most 100 workgroups per grid dimension, so that grids fold.
    let mut rng = Rng::fresh("sixteen_bit_tensors_split_across_small_windows");
    let small = common::context_with_limits(|l| {
        l.max_compute_workgroups_per_dimension = 100;
        l.max_storage_buffer_binding_size = 1 << 20;
    });
    // Every tensor ends on an odd element, inside a word.
    let places = [
        Place::new(3, 1, 1_000),
        Place::new(1_003, 1_001, 700_000),
        Place::new(701_004, 701_002, 5),
    ];
    let config: OptimizerConfig = Adam {
        lr: 0.1,
        ..Default::default()
    }
    .into();
    for access in [Access::Scalar, Access::Vec4] {
        let ctx = small.clone().with_access(access);
        for types in [(DType::BF16, DType::BF16), (DType::F16, DType::F32)] {
            let types = (types.0, types.1, Precision::default());
            check(&ctx, config, None, types, &places, 2, &mut rng);
        }
    }
}

#[test]
fn sixteen_bit_parameters_and_gradients_may_share_a_buffer_and_a_word() {
    // Parameters at elements [0, 1001) and gradients at [1001, 2002) of one 16-bit buffer: the
    // last parameter and the first gradient share a word, which the kernel updates by halves
    // (or, on the native f16 path, a single f16 element) while it reads the gradient's half.
    let mut rng = Rng::fresh("sixteen_bit_shared_buffer");
    let n = 1_001;
    let config: OptimizerConfig = Adam {
        lr: 0.1,
        ..Default::default()
    }
    .into();
    for access in [Access::Vec4, Access::Scalar] {
        let base = ctx().clone().with_access(access);
        let f16 = f16_paths(&base).into_iter().map(|c| (DType::F16, c));
        for (dtype, ctx) in std::iter::once((DType::BF16, base.clone())).chain(f16) {
            let what = format!("{access}, {dtype}, {} path", ctx.f16_path());
            let mut bits: Vec<u32> = (0..2 * n).map(|_| dtype.bits(rng.normal())).collect();
            let buffer = buffer(&ctx, "shared", dtype, &bits);
            let range = |at: u64| BufferRange::new(&buffer, 2 * at, n as u64).with_dtype(dtype);
            let mut opt =
                Optimizer::new(&ctx, config, &[Tensor::new(range(0), range(n as u64))]).unwrap();
            let value = |b: &u32| dtype.value(*b);
            let mut p32: Vec<f32> = bits[..n].iter().map(value).collect();
            let mut s32 = TensorState::<f32>::default();
            let stored = Stored::new(dtype, Precision::default());
            for _ in 0..3 {
                // New gradients for every element but the first, whose word the last parameter
                // shares (a host write moves whole words): it keeps its first value.
                for b in &mut bits[n + 1..] {
                    *b = dtype.bits(rng.normal());
                }
                let bytes: Vec<u8> = bits[n + 1..]
                    .iter()
                    .flat_map(|&b| (b as u16).to_le_bytes())
                    .collect();
                ctx.queue()
                    .write_buffer(&buffer, 2 * (n as u64 + 1), &bytes);
                opt.step_submit().unwrap();
                let g: Vec<f32> = bits[n..].iter().map(value).collect();
                reference::step_stored(&config, &[n], &mut s32, &mut p32, None, &g, stored);
            }
            let got = read_bits(&ctx, &buffer, dtype, 2 * n);
            assert_eq!(got[n..], bits[n..], "{what}: the gradients changed");
            let differ = got[..n]
                .iter()
                .zip(&p32)
                .filter(|(g, w)| value(g) != **w)
                .count();
            // The f32 evaluation is the kernel's arithmetic: a few elements may round apart.
            assert!(
                differ * 20 <= n,
                "{what}: {differ} of {n} parameters differ"
            );
            for (i, (g, w)) in got[..n].iter().zip(&p32).enumerate() {
                let (g, w) = (f64::from(value(g)), f64::from(*w));
                assert!(
                    (g - w).abs() <= 3.0 * dtype.spacing(g.abs().max(w.abs())),
                    "{what}: parameter {i} is {g}, the f32 reference {w}"
                );
            }
        }
    }
}

#[test]
fn master_weights_and_rounding_resume_from_checkpoints_and_snapshots() {
    // Adam, and Adafactor on a matrix, whose master copy lies apart from its factored state.
    let adam = Adam {
        lr: 0.01,
        ..Default::default()
    };
    resume_with_master_weights(adam.into(), &[1_002]);
    resume_with_master_weights(Adafactor::default().into(), &[6, 167]);
}

/// A run of `config` on one bf16 tensor of `shape` (1,002 elements) with master weights and
/// stochastic rounding, saved after two steps, and a second optimizer over other buffers that
/// loads the file: both take the same two further steps and must agree bit for bit,
/// parameters and master copies, as must a snapshot restored.
fn resume_with_master_weights(config: OptimizerConfig, shape: &'static [usize]) {
    let ctx = ctx();
    let mut rng = Rng::fresh(&format!("master_weights_resume {config:?}"));
    // An even length at an even element offset: snapshots copy whole words. The offset is
    // lane 2 of a vec4, so both dispatches run.
    let n = 1_002;
    assert_eq!(shape.iter().product::<usize>(), n);
    let grads: Vec<Vec<u32>> = (0..4)
        .map(|_| (0..n).map(|_| rng.normal().to_bits()).collect())
        .collect();
    let init: Vec<u32> = (0..n).map(|_| DType::BF16.bits(rng.normal())).collect();
    let precision = Precision::default()
        .with_master_weights(true)
        .with_stochastic_rounding(Some(5))
        .with_state(StateDType::F32);
    // An optimizer over a fresh bf16 parameter (at element 2) and an f32 gradient buffer.
    let build = |params: &[u32], precision: Precision| {
        let mut bits = vec![u32::from(POISON); 2];
        bits.extend_from_slice(params);
        let param = buffer(ctx, "param", DType::BF16, &bits);
        let grad = buffer(ctx, "grad", DType::F32, &vec![0; n]);
        let tensor = Tensor::new(
            BufferRange::new(&param, 4, n as u64).with_dtype(DType::BF16),
            BufferRange::new(&grad, 0, n as u64),
        )
        .with_shape(shape);
        let groups = [ParamGroup::new(config, vec![tensor])];
        let opt = Optimizer::with_precision(ctx, &groups, precision).unwrap();
        (opt, param, grad)
    };
    let step = |opt: &mut Optimizer, grad: &wgpu::Buffer, g: &[u32]| {
        ctx.queue().write_buffer(grad, 0, bytemuck::cast_slice(g));
        opt.step_submit().unwrap();
    };
    let params = |param: &wgpu::Buffer| read_bits(ctx, param, DType::BF16, n + 2)[2..].to_vec();

    let (mut a, a_param, a_grad) = build(&init, precision);
    // Built from the parameters, widened.
    let widened: Vec<f32> = init.iter().map(|&b| DType::BF16.value(b)).collect();
    assert_eq!(a.read_master(0).unwrap(), widened);
    step(&mut a, &a_grad, &grads[0]);
    step(&mut a, &a_grad, &grads[1]);
    let path = std::env::temp_dir().join(format!(
        "wgpu-optim-master-{}-{}.safetensors",
        config.type_name(),
        std::process::id()
    ));
    let with_params = wgpu_optim::checkpoint::SaveOptions {
        parameters: true,
        ..Default::default()
    };
    a.save(&path, &with_params).unwrap();
    let saved_master = a.read_master(0).unwrap();
    // The master copy holds what the bf16 parameters lose.
    assert!(saved_master.iter().any(|&m| DType::BF16.round(m) != m));
    let snapshot = a.snapshot().unwrap();
    step(&mut a, &a_grad, &grads[2]);
    step(&mut a, &a_grad, &grads[3]);
    let (want_params, want_master) = (params(&a_param), a.read_master(0).unwrap());

    let load = wgpu_optim::checkpoint::LoadOptions {
        parameters: true,
        ..Default::default()
    };
    let (mut b, b_param, b_grad) = build(&vec![0; n], precision);
    b.load(&path, load).unwrap();
    assert_eq!(b.read_master(0).unwrap(), saved_master);
    step(&mut b, &b_grad, &grads[2]);
    step(&mut b, &b_grad, &grads[3]);
    assert_eq!(params(&b_param), want_params, "resumed parameters");
    assert_eq!(b.read_master(0).unwrap(), want_master, "resumed master");

    a.restore(&snapshot).unwrap();
    assert_eq!(a.read_master(0).unwrap(), saved_master, "restored master");
    step(&mut a, &a_grad, &grads[2]);
    step(&mut a, &a_grad, &grads[3]);
    assert_eq!(
        params(&a_param),
        want_params,
        "parameters after the snapshot"
    );

    // Another seed, or no master weights, cannot resume the file; nothing changes.
    for (other, why) in [
        (precision.with_stochastic_rounding(Some(6)), "seed 5"),
        (precision.with_master_weights(false), "holds master weights"),
    ] {
        let (mut c, c_param, _) = build(&init, other);
        let load = wgpu_optim::checkpoint::LoadOptions {
            parameters: true,
            ..Default::default()
        };
        let err = c.load(&path, load).unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
        assert_eq!(params(&c_param), init);
    }

    // A checkpoint without master weights (as one converted from PyTorch) gives the loaded
    // parameters, widened, as the master copies.
    let nearest = Precision::default().with_state(StateDType::F32);
    let (plain, plain_param, _) = build(&init, nearest);
    let plain_path = path.with_extension("plain.safetensors");
    plain.save(&plain_path, &with_params).unwrap();
    let (mut d, _, _) = build(&vec![0; n], precision.with_stochastic_rounding(None));
    d.load_master(0, &vec![9.0; n]).unwrap();
    let load = wgpu_optim::checkpoint::LoadOptions {
        parameters: true,
        ..Default::default()
    };
    d.load(&plain_path, load).unwrap();
    let loaded: Vec<f32> = params(&plain_param)
        .iter()
        .map(|&b| DType::BF16.value(b))
        .collect();
    assert_eq!(d.read_master(0).unwrap(), loaded);
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(&plain_path).unwrap();
}
