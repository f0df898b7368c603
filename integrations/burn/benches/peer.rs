//! Burn's own Adam step against the fused adapter's, on the same device: over GPT-2 small's 148
//! tensor shapes (each divided by `WGPU_OPTIM_BENCH_GPT2_DIVISOR`, default 1, 16 on CPU
//! devices) and over one flat tensor of 2^22 elements.
//!
//! ```sh
//! cargo bench -p wgpu-optim-burn --bench peer -- --warm-up-time 2 --measurement-time 5
//! ```
//!
//! Each optimizer steps a model of its own. Each timed step includes waiting for the GPU (`Device::sync`), as a training loop that reads
//! its loss does. Besides criterion's per-case times, a summary measures both optimizers in
//! alternation in one loop (the fairest comparison on a noisy machine) and prints, per case,
//! the median step time, GB/s (Adam's bytes per element over the step time), and the host time
//! of the `step` call alone: what Burn spends queuing its per-tensor ops, and what the adapter
//! spends gathering the tensors, looking up their buffers and recording one fused step.

use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Distribution, Tensor};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use std::time::{Duration, Instant};
use wgpu_optim::bench;
use wgpu_optim_burn::{FusedOptimizer, Shared};

/// Parameters of the given lengths, as one flat tensor each.
#[derive(Module, Debug)]
struct Params {
    tensors: Vec<Param<Tensor<1>>>,
}

/// A model, its gradients (kept, and registered anew for every step) and Burn's device.
struct Case {
    name: String,
    device: Device,
    model: Option<Params>,
    grads: Vec<Tensor<1>>,
    elements: u64,
}

impl Case {
    fn new(name: &str, shared: &Shared, lens: &[u64]) -> Self {
        let device = shared.device().clone().autodiff();
        let inner = shared.device().clone();
        let tensors = lens
            .iter()
            .map(|&n| {
                Param::from_tensor(
                    Tensor::<1>::random([n as usize], Distribution::Normal(0.0, 0.5), &device)
                        .require_grad(),
                )
            })
            .collect();
        let grads = lens
            .iter()
            .map(|&n| Tensor::<1>::random([n as usize], Distribution::Normal(0.0, 0.01), &inner))
            .collect();
        let case = Self {
            name: name.to_string(),
            device,
            model: Some(Params { tensors }),
            grads,
            elements: lens.iter().sum(),
        };
        case.sync();
        case
    }

    fn grads(&self) -> GradientsParams {
        let mut g = GradientsParams::new();
        for (p, t) in self.model.as_ref().unwrap().tensors.iter().zip(&self.grads) {
            g.register::<1>(p.id, t.clone());
        }
        g
    }

    fn sync(&self) {
        self.device.sync().expect("the device syncs");
    }

    /// One step with `step`: its host time (the call alone) and its whole time (with the
    /// wait for the GPU).
    fn step(
        &mut self,
        step: &mut impl FnMut(Params, GradientsParams) -> Params,
    ) -> (Duration, Duration) {
        let grads = self.grads();
        let model = self.model.take().unwrap();
        let start = Instant::now();
        let model = step(model, grads);
        let host = start.elapsed();
        self.sync();
        let whole = start.elapsed();
        self.model = Some(model);
        (host, whole)
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

fn main() {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    let shared = Shared::request(backends).expect("a GPU adapter (lavapipe: mesa-vulkan-drivers)");
    let info = shared.context().device().adapter_info();
    let cpu = info.device_type == wgpu::DeviceType::Cpu;
    let divisor = std::env::var("WGPU_OPTIM_BENCH_GPT2_DIVISOR")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cpu { 16 } else { 1 });
    let lens = bench::gpt2_small_lengths(divisor).expect("GPT-2 shapes");
    println!(
        "adapter: {} ({:?}, {:?}); GPT-2 divisor {divisor}",
        info.name, info.backend, info.device_type
    );
    let adam = wgpu_optim::Adam {
        eps: 1e-5,
        ..Default::default()
    };
    let bytes_per_element = bench::bytes_per_element(&adam.into());
    let lr = 1e-3;
    let cases: Vec<(String, Vec<u64>)> = vec![
        ("flat-4194304".to_string(), vec![1 << 22]),
        (format!("gpt2-148-tensors-div{divisor}"), lens),
    ];

    let mut c = Criterion::default().configure_from_args();
    let mut summary = Vec::new();
    for (name, lens) in &cases {
        // Each optimizer steps a model of its own, as in a training loop.
        let mut case = Case::new(name, &shared, lens);
        let mut fused_case = Case::new(name, &shared, lens);
        let mut burn: ModuleOptimizer = AdamConfig::new().init();
        let mut fused = FusedOptimizer::new(&shared, adam);
        let mut burn_step = |m: Params, g| burn.step(lr, m, g);
        let mut fused_step = |m: Params, g| fused.step(lr, m, g);
        // Warm-up: autotune, pipelines, the fused optimizer's first step.
        for _ in 0..3 {
            case.step(&mut burn_step);
            fused_case.step(&mut fused_step);
        }
        let mut group = c.benchmark_group("peer");
        group.sampling_mode(SamplingMode::Flat);
        group.throughput(Throughput::BytesDecimal(bytes_per_element * case.elements));
        group.bench_function(BenchmarkId::new("burn-adam", name), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| case.step(&mut burn_step).1).sum());
        });
        group.bench_function(BenchmarkId::new("fused-adam", name), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| fused_case.step(&mut fused_step).1).sum());
        });
        group.finish();
        // Both in alternation, for the summary.
        let rounds = 30;
        let (mut bh, mut bw, mut fh, mut fw) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            let (h, w) = case.step(&mut burn_step);
            bh.push(h);
            bw.push(w);
            let (h, w) = fused_case.step(&mut fused_step);
            fh.push(h);
            fw.push(w);
        }
        if let Some(opt) = fused.optimizer() {
            let scalar = (0..opt.tensor_count())
                .filter(|&t| opt.tensor_access(t).ok() == Some(wgpu_optim::Access::Scalar))
                .count();
            println!(
                "{}: the fused step made {} dispatches, {scalar} of {} tensors in scalar access, {} copies of shared parameters; cached ranges and bind groups {:?}",
                case.name,
                opt.dispatches_per_step(),
                opt.tensor_count(),
                fused.copies(),
                opt.cached_bindings()
            );
        }
        summary.push((
            case.name.clone(),
            case.elements,
            [median(&mut bw), median(&mut fw)],
            [median(&mut bh), median(&mut fh)],
        ));
    }
    println!("\nBurn's Adam and the fused adapter's, alternating, median of 30 steps each:");
    println!(
        "{:<28} {:>12} {:>12} {:>9} {:>9} {:>7} {:>12} {:>12} {:>7}",
        "case",
        "burn ms",
        "fused ms",
        "burn GB/s",
        "fused GB/s",
        "ratio",
        "burn host ms",
        "fused host ms",
        "ratio"
    );
    for (name, elements, [bw, fw], [bh, fh]) in summary {
        let gbs = |t: Duration| (bytes_per_element * elements) as f64 / t.as_secs_f64() / 1e9;
        println!(
            "{name:<28} {:>12.3} {:>12.3} {:>9.2} {:>9.2} {:>6.2}x {:>12.3} {:>12.3} {:>6.1}x",
            bw.as_secs_f64() * 1e3,
            fw.as_secs_f64() * 1e3,
            gbs(bw),
            gbs(fw),
            bw.as_secs_f64() / fw.as_secs_f64(),
            bh.as_secs_f64() * 1e3,
            fh.as_secs_f64() * 1e3,
            bh.as_secs_f64() / fh.as_secs_f64(),
        );
    }
}
