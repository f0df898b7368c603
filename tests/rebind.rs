//! Tensors that move: gradients in new buffers every step, as an engine's memory pool hands
//! them out, and parameters that move when the engine reallocates them. A run that moves is
//! checked bit for bit against the same run over fixed buffers.

mod common;

use common::{POISON, Rng, bits, ctx, read_all, write};
use wgpu_optim::{
    Access, Adam, BufferRange, ClipGrad, Context, GradScaler, LAYOUT_CACHE, Muon, NormType,
    Optimizer, OptimizerConfig, SGD, Tensor,
};

/// Tensor lengths; their offsets in the fixed buffers are 16-byte aligned.
const LENS: [u64; 3] = [37, 1029, 6];
/// Their shapes: elementwise optimizers ignore them; Muon takes matrices only.
const SHAPES: [[usize; 2]; 3] = [[37, 1], [21, 49], [2, 3]];
const OFFSETS: [u64; 3] = [0, 40, 1072];
const TOTAL: u64 = 1080;
const STEPS: usize = 12;

fn adam() -> OptimizerConfig {
    Adam {
        lr: 0.01,
        weight_decay: 0.1,
        amsgrad: true,
        ..Default::default()
    }
    .into()
}

/// The fixed-buffer run: parameters and per-step gradients in one buffer each.
fn fixed_run(
    ctx: &Context,
    config: OptimizerConfig,
    init: &[f32],
    grads: &[Vec<f32>],
    setup: impl Fn(&mut Optimizer),
) -> (Vec<u32>, Optimizer) {
    let param = ctx.create_f32_buffer("param", init).unwrap();
    let grad = ctx
        .create_f32_buffer("grad", &vec![0.0; TOTAL as usize])
        .unwrap();
    let tensors = at_offsets(&param, &grad);
    let mut opt = Optimizer::new(ctx, config, &tensors).unwrap();
    setup(&mut opt);
    for g in grads {
        write(&grad, 0, g);
        opt.step_submit().unwrap();
    }
    (tensor_bits(ctx, &param, &OFFSETS), opt)
}

/// The three tensors at the fixed layout's offsets of `param` and `grad`.
fn at_offsets<'a>(param: &'a wgpu::Buffer, grad: &'a wgpu::Buffer) -> Vec<Tensor<'a>> {
    (0..3)
        .map(|i| {
            Tensor::new(
                BufferRange::new(param, OFFSETS[i] * 4, LENS[i]),
                BufferRange::new(grad, OFFSETS[i] * 4, LENS[i]),
            )
            .with_shape(&SHAPES[i])
        })
        .collect()
}

/// The bits of the three tensors at `offsets` of `buffer`.
fn tensor_bits(ctx: &Context, buffer: &wgpu::Buffer, offsets: &[u64; 3]) -> Vec<u32> {
    let all = bits(ctx, buffer);
    (0..3)
        .flat_map(|i| all[offsets[i] as usize..(offsets[i] + LENS[i]) as usize].to_vec())
        .collect()
}

fn state_bits(opt: &Optimizer) -> Vec<(u64, Vec<u32>)> {
    (0..opt.tensor_count())
        .map(|t| {
            let s = opt.read_state(t).unwrap();
            let b = s
                .buffers
                .values()
                .flat_map(|v| v.iter().map(|x| x.to_bits()))
                .collect();
            (s.step, b)
        })
        .collect()
}

/// Gradient buffers of an engine's pool: each step's gradients in one of `pool` buffers, at
/// offsets that differ from buffer to buffer (all 16-byte aligned, so vec4 access stays).
struct Pool {
    buffers: Vec<wgpu::Buffer>,
}

impl Pool {
    fn new(ctx: &Context, pool: usize) -> Self {
        Self {
            buffers: (0..pool)
                .map(|k| {
                    ctx.create_f32_buffer("pool", &vec![POISON; 2048 + 64 * k])
                        .unwrap()
                })
                .collect(),
        }
    }

    /// Step `k`'s buffer and each tensor's element offset in it: the tensors in another
    /// order than at first, shifted by a multiple of 4 elements that depends on the buffer
    /// and on the round through the pool.
    fn place(&self, k: usize) -> (&wgpu::Buffer, [u64; 3]) {
        let b = k % self.buffers.len();
        let shift = 16 * b as u64 + 8 * (k / self.buffers.len() % 2) as u64;
        (&self.buffers[b], [shift + 1200, shift, shift + 1100])
    }
}

/// Writes step `k`'s gradients (`g`, in the fixed layout) into the pool and rebinds to them.
fn rebind_to_pool(opt: &mut Optimizer, pool: &Pool, k: usize, g: &[f32]) {
    let (buffer, at) = pool.place(k);
    for i in 0..3 {
        let o = OFFSETS[i] as usize;
        write(buffer, at[i], &g[o..o + LENS[i] as usize]);
    }
    let ranges: Vec<BufferRange<'_>> = (0..3)
        .map(|i| BufferRange::new(buffer, at[i] * 4, LENS[i]))
        .collect();
    opt.rebind(&ranges, None).unwrap();
}

fn data(seed: &str) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut rng = Rng::fresh(seed);
    let init = rng.normals(TOTAL as usize);
    let grads = (0..STEPS).map(|_| rng.normals(TOTAL as usize)).collect();
    (init, grads)
}

#[test]
fn gradients_in_new_buffers_every_step_give_the_same_bits() {
    let ctx = ctx();
    let (init, grads) = data("pool");
    for (config, clip) in [
        (adam(), None),
        (
            SGD {
                lr: 0.05,
                momentum: 0.9,
                nesterov: true,
                ..Default::default()
            }
            .into(),
            Some(ClipGrad::Value { clip_value: 0.7 }),
        ),
        // Muon's products read the state, which never moves: the gradients may.
        (
            Muon {
                lr: 0.02,
                ..Default::default()
            }
            .into(),
            Some(ClipGrad::norm(1.0)),
        ),
    ] {
        let (want, fixed) = fixed_run(ctx, config, &init, &grads, |o| {
            o.set_clip_grad(clip).unwrap()
        });
        let param = ctx.create_f32_buffer("param", &init).unwrap();
        let first = ctx
            .create_f32_buffer("first grads", &vec![0.0; TOTAL as usize])
            .unwrap();
        let tensors = at_offsets(&param, &first);
        let mut opt = Optimizer::new(ctx, config, &tensors).unwrap();
        opt.set_clip_grad(clip).unwrap();
        let pool = Pool::new(ctx, 3);
        for (k, g) in grads.iter().enumerate() {
            rebind_to_pool(&mut opt, &pool, k, g);
            // The pool put all three tensors in one buffer: one dispatch.
            assert_eq!(opt.dispatches_per_step(), 1);
            assert!((0..3).all(|t| opt.tensor_access(t).unwrap() == ctx.access()));
            opt.step_submit().unwrap();
        }
        assert_eq!(tensor_bits(ctx, &param, &OFFSETS), want, "{config:?}");
        assert_eq!(state_bits(&opt), state_bits(&fixed), "{config:?}");
        // Six sets of ranges and the construction's: six cached; each buffer's bind group
        // made once, whatever the offsets (and its reduction's, with norm clipping).
        let (layouts, groups) = opt.cached_bindings();
        assert_eq!(layouts, 6);
        let reduces = matches!(clip, Some(ClipGrad::Norm { .. }));
        assert_eq!(groups, if reduces { 8 } else { 4 });
    }
}

#[test]
fn clipping_and_the_grad_scaler_follow_the_gradients() {
    let ctx = ctx();
    let (init, mut grads) = data("pool with a scaler");
    grads[5][100] = f32::INFINITY;
    let setup = |o: &mut Optimizer| {
        o.set_clip_grad(Some(ClipGrad::Norm {
            max_norm: 3.0,
            norm_type: NormType::L2,
        }))
        .unwrap();
        o.set_grad_scaler(Some(GradScaler {
            init_scale: 4.0,
            growth_interval: 2,
            ..Default::default()
        }))
        .unwrap();
    };
    let (want, fixed) = fixed_run(ctx, adam(), &init, &grads, setup);
    let param = ctx.create_f32_buffer("param", &init).unwrap();
    let first = ctx
        .create_f32_buffer("first grads", &vec![0.0; TOTAL as usize])
        .unwrap();
    let tensors = at_offsets(&param, &first);
    let mut opt = Optimizer::new(ctx, adam(), &tensors).unwrap();
    setup(&mut opt);
    let pool = Pool::new(ctx, 2);
    for (k, g) in grads.iter().enumerate() {
        rebind_to_pool(&mut opt, &pool, k, g);
        opt.step_submit().unwrap();
    }
    // One dispatch either way, so the norm sums in the same order: the same bits.
    assert_eq!(tensor_bits(ctx, &param, &OFFSETS), want);
    assert_eq!(state_bits(&opt), state_bits(&fixed));
    assert_eq!(
        opt.read_grad_scaler().unwrap(),
        fixed.read_grad_scaler().unwrap()
    );
}

#[test]
fn gradients_split_over_buffers_take_a_dispatch_each_and_misaligned_ones_go_scalar() {
    let ctx = ctx();
    let (init, grads) = data("split");
    let (want, _) = fixed_run(ctx, adam(), &init, &grads, |_| {});
    let param = ctx.create_f32_buffer("param", &init).unwrap();
    let a = ctx.create_f32_buffer("a", &vec![POISON; 2000]).unwrap();
    let b = ctx.create_f32_buffer("b", &vec![POISON; 2000]).unwrap();
    let tensors = at_offsets(&param, &a);
    let mut opt = Optimizer::new(ctx, adam(), &tensors).unwrap();
    for (k, g) in grads.iter().enumerate() {
        // Tensor 1 alternates between buffer b, at a lane its parameter does not have (so
        // it is read one element at a time), and buffer a.
        let (buf1, at1) = if k % 2 == 0 { (&b, 3) } else { (&a, 100) };
        let places = [(&a, 1200u64), (buf1, at1), (&a, 1600)];
        for (i, (buf, at)) in places.iter().enumerate() {
            let o = OFFSETS[i] as usize;
            write(buf, *at, &g[o..o + LENS[i] as usize]);
        }
        let ranges: Vec<BufferRange<'_>> = places
            .iter()
            .enumerate()
            .map(|(i, (buf, at))| BufferRange::new(buf, at * 4, LENS[i]))
            .collect();
        opt.rebind(&ranges, None).unwrap();
        let split = k % 2 == 0;
        assert_eq!(opt.dispatches_per_step(), if split { 2 } else { 1 });
        let access1 = if split { Access::Scalar } else { ctx.access() };
        assert_eq!(opt.tensor_access(1).unwrap(), access1);
        opt.step_submit().unwrap();
    }
    assert_eq!(tensor_bits(ctx, &param, &OFFSETS), want);
}

#[test]
fn parameters_that_move_carry_on_and_leave_the_old_buffer_alone() {
    let ctx = ctx();
    let (init, grads) = data("moving parameters");
    let (want, fixed) = fixed_run(ctx, adam(), &init, &grads, |_| {});
    let old = ctx.create_f32_buffer("old params", &init).unwrap();
    let grad = ctx
        .create_f32_buffer("grads", &vec![0.0; TOTAL as usize])
        .unwrap();
    let grad_ranges: Vec<BufferRange<'_>> = (0..3)
        .map(|i| BufferRange::new(&grad, OFFSETS[i] * 4, LENS[i]))
        .collect();
    let tensors: Vec<Tensor<'_>> = (0..3)
        .map(|i| {
            Tensor::new(
                BufferRange::new(&old, OFFSETS[i] * 4, LENS[i]),
                grad_ranges[i],
            )
        })
        .collect();
    let mut opt = Optimizer::new(ctx, adam(), &tensors).unwrap();
    let moved: [u64; 3] = [2000, 16, 1500];
    let new = ctx
        .create_f32_buffer("new params", &vec![POISON; 3000])
        .unwrap();
    let mut old_after_move = Vec::new();
    for (k, g) in grads.iter().enumerate() {
        write(&grad, 0, g);
        if k == STEPS / 2 {
            // The engine moves the parameters: it copies them, and the optimizer follows.
            let now = read_all(ctx, &old);
            for i in 0..3 {
                let o = OFFSETS[i] as usize;
                write(&new, moved[i], &now[o..o + LENS[i] as usize]);
            }
            let params: Vec<BufferRange<'_>> = (0..3)
                .map(|i| BufferRange::new(&new, moved[i] * 4, LENS[i]))
                .collect();
            opt.rebind(&grad_ranges, Some(&params)).unwrap();
            old_after_move = bits(ctx, &old);
        }
        opt.step_submit().unwrap();
    }
    assert_eq!(tensor_bits(ctx, &new, &moved), want);
    assert_eq!(state_bits(&opt), state_bits(&fixed));
    assert_eq!(
        bits(ctx, &old),
        old_after_move,
        "a step after the move wrote the old buffer"
    );
}

#[test]
fn a_step_recorded_before_a_rebind_keeps_its_ranges() {
    let ctx = ctx();
    let (init, grads) = data("recorded before");
    let (want, _) = fixed_run(ctx, adam(), &init, &grads[..2], |_| {});
    let param = ctx.create_f32_buffer("param", &init).unwrap();
    let a = ctx.create_f32_buffer("a", &grads[0]).unwrap();
    let b = ctx.create_f32_buffer("b", &grads[1]).unwrap();
    let range = |buf, i: usize| BufferRange::new(buf, OFFSETS[i] * 4, LENS[i]);
    let tensors: Vec<Tensor<'_>> = (0..3)
        .map(|i| Tensor::new(range(&param, i), range(&a, i)))
        .collect();
    let mut opt = Optimizer::new(ctx, adam(), &tensors).unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    opt.step(&mut encoder).unwrap();
    let to_b: Vec<BufferRange<'_>> = (0..3).map(|i| range(&b, i)).collect();
    opt.rebind(&to_b, None).unwrap();
    opt.step(&mut encoder).unwrap();
    ctx.queue().submit([encoder.finish()]);
    assert_eq!(tensor_bits(ctx, &param, &OFFSETS), want);
}

#[test]
fn more_layouts_than_the_cache_holds_evict_the_least_recently_used() {
    let ctx = ctx();
    let (init, grads) = data("eviction");
    let many: Vec<Vec<f32>> = (0..3 * LAYOUT_CACHE)
        .map(|k| grads[k % STEPS].clone())
        .collect();
    let (want, _) = fixed_run(ctx, adam(), &init, &many, |_| {});
    let param = ctx.create_f32_buffer("param", &init).unwrap();
    let first = ctx
        .create_f32_buffer("first", &vec![0.0; TOTAL as usize])
        .unwrap();
    let tensors = at_offsets(&param, &first);
    let mut opt = Optimizer::new(ctx, adam(), &tensors).unwrap();
    let pool = Pool::new(ctx, LAYOUT_CACHE + 3);
    for (k, g) in many.iter().enumerate() {
        rebind_to_pool(&mut opt, &pool, k, g);
        opt.step_submit().unwrap();
        let (layouts, groups) = opt.cached_bindings();
        assert!(layouts <= LAYOUT_CACHE);
        assert!(groups <= wgpu_optim::BIND_GROUP_CACHE);
    }
    assert_eq!(opt.cached_bindings().0, LAYOUT_CACHE);
    assert_eq!(tensor_bits(ctx, &param, &OFFSETS), want);
}

#[test]
fn bad_ranges_are_errors_that_change_nothing() {
    let ctx = ctx();
    let (init, grads) = data("bad rebinds");
    let (want, _) = fixed_run(ctx, adam(), &init, &grads[..1], |_| {});
    let param = ctx.create_f32_buffer("param", &init).unwrap();
    let grad = ctx.create_f32_buffer("grad", &grads[0]).unwrap();
    let other = ctx.create_f32_buffer("other", &vec![1.0; 4000]).unwrap();
    let uniform = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 8192,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: false,
    });
    let range = |buf, i: usize| BufferRange::new(buf, OFFSETS[i] * 4, LENS[i]);
    let tensors: Vec<Tensor<'_>> = (0..3)
        .map(|i| Tensor::new(range(&param, i), range(&grad, i)))
        .collect();
    let mut opt = Optimizer::new(ctx, adam(), &tensors).unwrap();
    let ok = |i| range(&other, i);
    #[allow(clippy::type_complexity)]
    let cases: Vec<(
        &str,
        Vec<BufferRange<'_>>,
        Option<Vec<BufferRange<'_>>>,
        &str,
    )> = vec![
        (
            "two ranges",
            vec![ok(0), ok(1)],
            None,
            "rebind got 2 ranges",
        ),
        (
            "a shorter range",
            vec![ok(0), BufferRange::new(&other, 160, 1000), ok(2)],
            None,
            "has 1000 elements; the tensor has 1029",
        ),
        (
            "a range past the buffer",
            vec![ok(0), ok(1), BufferRange::new(&other, 4 * 3998, 6)],
            None,
            "does not fit",
        ),
        (
            "a buffer without STORAGE",
            vec![ok(0), BufferRange::new(&uniform, 0, 1029), ok(2)],
            None,
            "lacks the STORAGE usage",
        ),
        (
            "parameters over another tensor's gradient",
            vec![ok(0), ok(1), ok(2)],
            Some(vec![range(&other, 0), range(&param, 1), range(&param, 2)]),
            "overlap",
        ),
    ];
    for (what, grads, params, message) in cases {
        let err = opt.rebind(&grads, params.as_deref()).expect_err(what);
        assert!(err.to_string().contains(message), "{what}: {err}");
    }
    assert_eq!(opt.cached_bindings().0, 0, "no failed rebind was kept");
    opt.step_submit().unwrap();
    assert_eq!(tensor_bits(ctx, &param, &OFFSETS), want);
}
