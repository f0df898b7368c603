//! Shared helpers of the GPU tests.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};
use wgpu_optim::{Context, Error, F16Path};

/// The GPU context of this test binary: the backends in `WGPU_BACKEND` (all when unset).
/// Panics when no adapter is found: a GPU test never passes without a GPU.
pub(crate) fn ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        let (ctx, info) = Context::request(backends, None).unwrap_or_else(|e| {
            panic!("GPU tests need an adapter (install mesa-vulkan-drivers for lavapipe): {e}")
        });
        eprintln!(
            "adapter: {} ({:?}, {})",
            info.name, info.backend, info.driver
        );
        ctx
    })
}

/// `ctx` on each f16 path its device has: the packed one, and where the device has
/// `SHADER_F16` the native one and the automatic mix of the two (the default). Elsewhere
/// asking for the native path must be an error that leaves the context as it was, and the
/// automatic path is the packed one.
pub(crate) fn f16_paths(ctx: &Context) -> Vec<Context> {
    let on = |path| ctx.clone().with_f16_path(path).unwrap();
    match ctx.clone().with_f16_path(F16Path::Native) {
        Ok(native) => vec![on(F16Path::Packed), native, on(F16Path::Auto)],
        Err(e) => {
            assert!(!ctx.has_native_f16());
            assert!(matches!(e, Error::Unsupported(_)), "{e}");
            assert_eq!(ctx.f16_path(), F16Path::Auto);
            vec![on(F16Path::Packed)]
        }
    }
}

/// A context on a device whose limits are the adapter's, changed by `adjust` (lowered, to
/// simulate a smaller GPU). The backends are those in `WGPU_BACKEND`, all when unset.
pub(crate) fn context_with_limits(adjust: impl FnOnce(&mut wgpu::Limits)) -> Context {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .expect("GPU tests need an adapter (install mesa-vulkan-drivers for lavapipe)");
    let mut limits = adapter.limits();
    adjust(&mut limits);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("wgpu-optim tests, lowered limits"),
        required_limits: limits,
        ..Default::default()
    }))
    .expect("a device with lowered limits");
    Context::new(&device, &queue)
}

/// SplitMix64: a small, fast generator for test data.
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded from `WGPU_OPTIM_SEED` when set, else from the clock; the seed is printed so a
    /// failure can be replayed.
    pub(crate) fn fresh(test: &str) -> Self {
        let seed = std::env::var("WGPU_OPTIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: WGPU_OPTIM_SEED={seed}");
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub(crate) fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Standard normal (Box-Muller).
    pub(crate) fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    pub(crate) fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A value written before a kernel runs, so that an element the kernel skipped cannot pass as
/// correct, and an element it must not touch can be checked bit for bit. It is finite and of
/// moderate size, so that a kernel that wrongly stores a whole vec4 over it (computing with
/// it) changes its bits: a NaN would stay NaN, and a huge value would survive an update.
pub(crate) const POISON: f32 = -0.318_309_87;

/// The whole buffer, as f32 values.
pub(crate) fn read_all(ctx: &Context, buffer: &wgpu::Buffer) -> Vec<f32> {
    ctx.read_f32(&[(buffer, 0, buffer.size() / 4)]).unwrap()
}

/// The whole buffer as bit patterns, so that NaN compares equal to itself.
pub(crate) fn bits(ctx: &Context, buffer: &wgpu::Buffer) -> Vec<u32> {
    read_all(ctx, buffer).iter().map(|v| v.to_bits()).collect()
}

/// Largest scaled error `|got - want| / (atol + rtol·(|want| + path))`, with the index where
/// it occurs. `path` is each element's accumulated magnitude of change (empty for none): over
/// many steps float32 rounding grows with what was added up, not with the final value alone.
/// NaN anywhere counts as infinitely wrong.
pub(crate) fn worst_along(
    got: &[f32],
    want: &[f64],
    path: &[f64],
    atol: f64,
    rtol: f64,
) -> (f64, usize) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let mut worst = (0.0, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let scale = w.abs() + path.get(i).copied().unwrap_or(0.0);
        let e = if g.is_nan() || w.is_nan() {
            f64::INFINITY
        } else {
            (f64::from(g) - w).abs() / (atol + rtol * scale)
        };
        if e > worst.0 || (e.is_infinite() && worst.0.is_finite()) {
            worst = (e, i);
        }
    }
    worst
}

/// Largest scaled error `|got - want| / (atol + rtol·|want|)`, with its index.
pub(crate) fn worst(got: &[f32], want: &[f64], atol: f64, rtol: f64) -> (f64, usize) {
    worst_along(got, want, &[], atol, rtol)
}

/// Asserts every element is within `atol + rtol·|want|`, naming the first bad index.
#[track_caller]
pub(crate) fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_close_along(what, got, want, &[], atol, rtol);
}

/// Asserts every element is within `atol + rtol·(|want| + path)` (see [`worst_along`]).
#[track_caller]
pub(crate) fn assert_close_along(
    what: &str,
    got: &[f32],
    want: &[f64],
    path: &[f64],
    atol: f64,
    rtol: f64,
) {
    let (e, i) = worst_along(got, want, path, atol, rtol);
    assert!(
        e <= 1.0,
        "{what}: element {i} is {} but should be {} (scaled error {e:.3})",
        got[i],
        want[i]
    );
}

/// Writes f32 values into a buffer at an element offset.
pub(crate) fn write(buffer: &wgpu::Buffer, element_offset: u64, data: &[f32]) {
    ctx()
        .queue()
        .write_buffer(buffer, element_offset * 4, bytemuck::cast_slice(data));
}

/// Asserts every element is within `max(atol + rtol·(|want| + path), 2·|float32 - want|)`:
/// the tolerance, or twice the error float32 arithmetic itself makes at that element (`float32`
/// is the same steps evaluated in f32 on the CPU, `wgpu_optim::reference::step` in f32). Where
/// the data is ill-conditioned, e.g. a gradient and its weight-decay term that nearly cancel,
/// no float32 kernel can do better than that.
#[track_caller]
pub(crate) fn assert_as_close_as_f32(
    what: &str,
    got: &[f32],
    want: &[f64],
    path: &[f64],
    float32: &[f32],
    atol: f64,
    rtol: f64,
) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = atol + rtol * (w.abs() + path.get(i).copied().unwrap_or(0.0));
        let allowed = wgpu_optim::validate::allowed(tol, (f64::from(float32[i]) - w).abs());
        let err = (f64::from(g) - w).abs();
        assert!(
            err <= allowed,
            "{what}: element {i} is {g} but should be {w} (error {err:.3e}, allowed {allowed:.3e}, float32 on the CPU gives {})",
            float32[i]
        );
    }
}

/// Every tensor of a safetensors file, sorted by name, with its dtype and its values as f64
/// (F64, F32 and I32 files).
pub(crate) fn read_safetensors_f64(
    path: &std::path::Path,
) -> Vec<(String, safetensors::Dtype, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let data: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F64 => bytemuck::pod_collect_to_vec(view.data()),
                safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(view.data())
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                safetensors::Dtype::I32 => bytemuck::pod_collect_to_vec::<u8, i32>(view.data())
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                d => panic!("{name}: unexpected dtype {d:?}"),
            };
            (name, view.dtype(), data)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// One tensor stepped on the CPU two ways: the f64 reference, and the same steps in float32
/// (`wgpu_optim::reference::step` in f32), with each element's sum of |change| along the way,
/// so that a GPU result can be held to [`assert_as_close_as_f32`]: the tolerance, or twice the
/// error that float32 arithmetic itself makes on this data.
pub(crate) struct Tracked {
    config: wgpu_optim::OptimizerConfig,
    /// The tensor's shape.
    shape: Vec<usize>,
    /// The reference's parameters and state.
    pub(crate) param: Vec<f64>,
    pub(crate) state: wgpu_optim::TensorState<f64>,
    param32: Vec<f32>,
    state32: wgpu_optim::TensorState<f32>,
    /// Per buffer ("param" and each state): each element's sum of |change|.
    paths: std::collections::HashMap<String, Vec<f64>>,
}

impl Tracked {
    pub(crate) fn new(config: wgpu_optim::OptimizerConfig, init: &[f32]) -> Self {
        Self::shaped(config, &[init.len()], init)
    }

    /// A tensor of `shape`, which matters where its state depends on it (Adafactor).
    pub(crate) fn shaped(
        config: wgpu_optim::OptimizerConfig,
        shape: &[usize],
        init: &[f32],
    ) -> Self {
        Self {
            config,
            shape: shape.to_vec(),
            param: init.iter().map(|&v| f64::from(v)).collect(),
            state: Default::default(),
            param32: init.to_vec(),
            state32: Default::default(),
            paths: Default::default(),
        }
    }

    /// One step with gradient `grad`.
    pub(crate) fn step(&mut self, grad: &[f32]) {
        let g: Vec<f64> = grad.iter().map(|&v| f64::from(v)).collect();
        self.step_both(&g, grad);
    }

    /// One step with a gradient prepared in f64 (unscaled and clipped); the float32 steps get
    /// it rounded to f32, as the kernel sees it.
    pub(crate) fn step_f64(&mut self, grad: &[f64]) {
        let g32: Vec<f32> = grad.iter().map(|&v| v as f32).collect();
        self.step_both(grad, &g32);
    }

    fn step_both(&mut self, g: &[f64], grad: &[f32]) {
        let mut before = self.state.buffers.clone();
        before.insert("param".into(), self.param.clone());
        let (config, shape) = (&self.config, &self.shape);
        wgpu_optim::reference::step_shaped(config, shape, &mut self.state, &mut self.param, g);
        wgpu_optim::reference::step_shaped(
            config,
            shape,
            &mut self.state32,
            &mut self.param32,
            grad,
        );
        for (name, old) in before {
            let new = if name == "param" {
                &self.param
            } else {
                &self.state.buffers[&name]
            };
            let path = self
                .paths
                .entry(name)
                .or_insert_with(|| vec![0.0; old.len()]);
            for ((p, a), b) in path.iter_mut().zip(&old).zip(new) {
                *p += (a - b).abs();
            }
        }
    }

    /// Asserts the GPU's parameters match, within the tolerance or twice the error of float32
    /// arithmetic itself.
    #[track_caller]
    pub(crate) fn assert_param_matches(&self, what: &str, param: &[f32]) {
        assert_as_close_as_f32(
            &format!("{what}: parameter"),
            param,
            &self.param,
            self.paths.get("param").map_or(&[][..], Vec::as_slice),
            &self.param32,
            2e-5,
            2e-5,
        );
    }

    /// Asserts the GPU's parameters and state match, within the tolerance or twice the error of
    /// float32 arithmetic itself.
    #[track_caller]
    pub(crate) fn assert_matches(
        &self,
        what: &str,
        param: &[f32],
        state: &wgpu_optim::TensorState<f32>,
    ) {
        let path = |name: &str| self.paths.get(name).map_or(&[][..], Vec::as_slice);
        self.assert_param_matches(what, param);
        assert_eq!(state.step, self.state.step, "{what}: step");
        assert!(
            state.buffers.keys().eq(self.state.buffers.keys()),
            "{what}: state names"
        );
        assert!(
            state.scalars.keys().eq(self.state.scalars.keys()),
            "{what}: scalar state names"
        );
        for (name, want) in &self.state.scalars {
            assert_as_close_as_f32(
                &format!("{what}: {name}"),
                &[state.scalars[name]],
                &[*want],
                &[0.0],
                &[self.state32.scalars[name]],
                2e-5,
                2e-5,
            );
        }
        for (name, want) in &self.state.buffers {
            assert_as_close_as_f32(
                &format!("{what}: {name}"),
                &state.buffers[name],
                want,
                path(name),
                &self.state32.buffers[name],
                2e-5,
                2e-5,
            );
        }
    }
}

/// A file of tests/golden/amp (written by tools/golden/gen_amp.py).
pub(crate) fn amp_golden(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/amp")
        .join(file)
}

/// The case called `name` in tests/golden/amp/cases.json.
pub(crate) fn amp_case(name: &str) -> serde_json::Value {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(amp_golden("cases.json")).unwrap()).unwrap();
    cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no golden case {name}"))
        .clone()
}
