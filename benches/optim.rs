//! Bandwidth of every optimizer kernel, next to a buffer copy that moves the same bytes.
//!
//! ```sh
//! cargo bench --bench optim -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! One device serves the whole run: `WGPU_BACKEND` picks backends (default all, Vulkan, Metal
//! and DX12 before GL) and `WGPU_ADAPTER_NAME` an adapter by name. Timings are GPU timestamps
//! when the adapter has `TIMESTAMP_QUERY`, else the wall clock around each submit and wait.
//! `WGPU_OPTIM_ACCESS=scalar` or `vec4` overrides the kernels' access mode (default: vec4).
//!
//! Groups:
//! - `step`: every kernel at 2^16, 2^18, ... 2^max elements (`WGPU_OPTIM_BENCH_MAX_LOG2`,
//!   default 24; about 10 minutes on lavapipe with 2 cores and the flags above), including
//!   Adam with `clip_grad_norm_`, with a grad scaler and with both (`adam+clip`,
//!   `adam+scaler`, `adam+clip+scaler`), and `copy-<B>B` baselines moving B bytes per element
//!   (reads plus writes), so criterion prints GB/s for both;
//! - `many_tensors`: Adam over GPT-2 small's 148 tensors (each divided by
//!   `WGPU_OPTIM_BENCH_GPT2_DIVISOR`, default 1, 16 on CPU devices) against one flat tensor of
//!   the same total;
//! - `host_overhead`: host time to record and submit one Adam step over the 148 tensors (scaled
//!   down 4096 times), not waiting for the GPU; the GPU is waited for, untimed, every 50 steps
//!   and, in a second benchmark, every step; and both again with the gradients moving to the
//!   next of 3 buffers before each step (`Optimizer::rebind`, as an engine's memory pool hands
//!   them out);
//! - `gemm`: the matrix product of two n x n matrices (256, 512 and 1024), in floating-point
//!   operations per second (criterion's elements).
//!
//! At the end a table gives each kernel's bandwidth as a percentage of the matching copy, from
//! the median of the step times this run collected, and the step time of Adam with clipping
//! and scaling over plain Adam's at each size.

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;
use wgpu_optim::Context;
use wgpu_optim::bench::{self, Measurement, Row, Timer, Workload};

/// Step times collected per benchmark, for the summary.
type Samples = Rc<RefCell<BTreeMap<String, Vec<Duration>>>>;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(v) => Some(v),
        Err(_) => {
            eprintln!("ignoring {name}={value:?}: not a whole number");
            None
        }
    }
}

fn fail(what: &str, e: wgpu_optim::Error) -> ! {
    panic!("{what}: {e}")
}

/// Times `iters` iterations of `work` on the GPU, records every step time under `key`, and
/// returns their sum.
fn gpu_time(work: &mut Workload, iters: u64, key: &str, samples: &Samples) -> Duration {
    let times = work
        .time(iters)
        .unwrap_or_else(|e| fail(&format!("timing {key}"), e));
    let total = times.iter().sum();
    samples
        .borrow_mut()
        .entry(key.to_string())
        .or_default()
        .extend(times);
    total
}

fn measurement(samples: &Samples, key: &str, bytes: u64, timer: Timer) -> Option<Measurement> {
    let samples = samples.borrow();
    let times = samples.get(key)?;
    let seconds = bench::median(times)?.as_secs_f64();
    Some(Measurement {
        seconds,
        min_seconds: times.iter().min()?.as_secs_f64(),
        bytes,
        iterations: times.len(),
        timer,
    })
}

fn main() {
    // Without --bench (cargo test --benches) criterion runs each benchmark once: keep it small.
    let full = std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default()
        .sample_size(10)
        .nresamples(10_000)
        .configure_from_args();

    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    let adapter = std::env::var("WGPU_ADAPTER_NAME").ok();
    let (ctx, info, _) = bench::bench_context(backends, adapter.as_deref())
        .unwrap_or_else(|e| fail("no device to benchmark", e));
    let ctx = match std::env::var("WGPU_OPTIM_ACCESS") {
        Ok(a) => ctx.with_access(a.parse().unwrap_or_else(|e| fail("WGPU_OPTIM_ACCESS", e))),
        Err(_) => ctx,
    };
    let timer = Timer::of(&ctx);
    let cpu = info.device_type == wgpu::DeviceType::Cpu;
    let max_log2 = if full {
        env_u64("WGPU_OPTIM_BENCH_MAX_LOG2").unwrap_or(24)
    } else {
        16
    };
    let divisor = if full {
        env_u64("WGPU_OPTIM_BENCH_GPT2_DIVISOR").unwrap_or(if cpu { 16 } else { 1 })
    } else {
        1024
    }
    .max(1);
    println!(
        "adapter: {} ({:?}, {:?}); access: {}; timer: {timer}; sizes 2^16..2^{max_log2}; GPT-2 divisor {divisor}",
        info.name,
        info.backend,
        info.device_type,
        ctx.access()
    );

    let samples: Samples = Rc::default();
    let sizes: Vec<u64> = (16..=max_log2.max(16)).step_by(2).map(|l| 1 << l).collect();
    let cases = bench::kernel_cases_on(&ctx);
    step_group(&mut c, &ctx, &cases, &sizes, &samples);
    let many = many_tensors_group(&mut c, &ctx, divisor, &samples);
    let host = host_overhead_group(&mut c, &ctx);
    let gemm_sizes: &[u32] = if full { &[256, 512, 1024] } else { &[64] };
    gemm_group(&mut c, &ctx, gemm_sizes, &samples);
    c.final_summary();

    // Summary: ratios from the medians collected above.
    let mut rows = Vec::new();
    for &n in &sizes {
        for case in &cases {
            let bytes = case.bytes_per_element * n;
            let kernel = measurement(&samples, &format!("{}/{n}", case.name), bytes, timer);
            let copy_key = format!("copy-{}B/{n}", case.bytes_per_element);
            let copy = measurement(&samples, &copy_key, bytes, timer);
            if let (Some(kernel), Some(copy)) = (kernel, copy) {
                rows.push(Row {
                    name: case.name.to_string(),
                    elements: n,
                    kernel,
                    copy,
                });
            }
        }
    }
    println!("\nBandwidth against a copy of the same bytes ({timer}, medians):");
    print!("{}", bench::table(&rows));
    // Clipping and grad scaling against plain Adam at each size: the step time ratio.
    for &n in &sizes {
        let median = |name: &str| {
            let times = samples.borrow().get(&format!("{name}/{n}")).cloned()?;
            bench::median(&times).map(|d| d.as_secs_f64())
        };
        let Some(adam) = median("adam") else { continue };
        let ratios: Vec<String> = ["adam+clip", "adam+scaler", "adam+clip+scaler"]
            .iter()
            .filter_map(|name| median(name).map(|t| format!("{name} {:.2}x", t / adam)))
            .collect();
        println!("time over adam at {n}: {}", ratios.join(", "));
    }
    let (total, bytes) = many;
    let m = |k| measurement(&samples, k, bytes, timer);
    if let (Some(tensors), Some(flat)) = (m("gpt2-148-tensors"), m("flat")) {
        println!(
            "many tensors: 148 tensors ({total} elements) {:.1} GB/s, flat {:.1} GB/s: {:.1}% of flat",
            tensors.gb_per_s(),
            flat.gb_per_s(),
            100.0 * tensors.gb_per_s() / flat.gb_per_s()
        );
    }
    for &n in gemm_sizes {
        let times = samples.borrow().get(&format!("gemm/{n}")).cloned();
        if let Some(t) = times.and_then(|t| bench::median(&t)) {
            let gflops = 2.0 * f64::from(n).powi(3) / t.as_secs_f64() / 1e9;
            println!("gemm {n} x {n} x {n}: {gflops:.1} GFLOP/s (median)");
        }
    }
    for (case, times) in host {
        if let Some(median) = bench::median(&times.borrow()) {
            println!(
                "host overhead: {:.1} µs to record and submit one 148-tensor Adam step (median; {case}; GPU waits untimed)",
                median.as_secs_f64() * 1e6
            );
        }
    }
}

fn step_group(
    c: &mut Criterion,
    ctx: &Context,
    cases: &[bench::KernelCase],
    sizes: &[u64],
    samples: &Samples,
) {
    let mut group = c.benchmark_group("step");
    group.sampling_mode(SamplingMode::Flat);
    let mut copy_widths: Vec<u64> = cases.iter().map(|c| c.bytes_per_element).collect();
    copy_widths.sort_unstable();
    copy_widths.dedup();
    for &n in sizes {
        for case in cases {
            group.throughput(Throughput::BytesDecimal(case.bytes_per_element * n));
            group.bench_with_input(BenchmarkId::new(case.name, n), &n, |b, &n| {
                let mut work = Workload::kernel(ctx, case, n)
                    .unwrap_or_else(|e| fail(&format!("building {} of {n}", case.name), e));
                let key = format!("{}/{n}", case.name);
                b.iter_custom(|iters| gpu_time(&mut work, iters, &key, samples));
            });
        }
        for &width in &copy_widths {
            let name = format!("copy-{width}B");
            let traffic = width * n;
            group.throughput(Throughput::BytesDecimal(traffic));
            group.bench_with_input(BenchmarkId::new(&name, n), &n, |b, &n| {
                let mut work = Workload::copy(ctx, bench::copy_size_for(traffic))
                    .unwrap_or_else(|e| fail(&format!("building {name} of {n}"), e));
                let key = format!("{name}/{n}");
                b.iter_custom(|iters| gpu_time(&mut work, iters, &key, samples));
            });
        }
    }
    group.finish();
}

/// The matrix product of two `n x n` matrices (Muon's building block), with throughput in
/// floating-point operations (criterion's elements per second).
fn gemm_group(c: &mut Criterion, ctx: &Context, sizes: &[u32], samples: &Samples) {
    let mut group = c.benchmark_group("gemm");
    group.sampling_mode(SamplingMode::Flat);
    for &n in sizes {
        group.throughput(Throughput::Elements(2 * u64::from(n).pow(3)));
        group.bench_with_input(BenchmarkId::new("gemm", n), &n, |b, &n| {
            let mut work = Workload::gemm(ctx, n)
                .unwrap_or_else(|e| fail(&format!("building gemm of {n}"), e));
            let key = format!("gemm/{n}");
            b.iter_custom(|iters| gpu_time(&mut work, iters, &key, samples));
        });
    }
    group.finish();
}

/// Returns the total element count and the bytes of one step.
fn many_tensors_group(
    c: &mut Criterion,
    ctx: &Context,
    divisor: u64,
    samples: &Samples,
) -> (u64, u64) {
    let lens = bench::gpt2_small_lengths(divisor).unwrap_or_else(|e| fail("GPT-2 shapes", e));
    let total: u64 = lens.iter().sum();
    let adam: wgpu_optim::OptimizerConfig = wgpu_optim::Adam::default().into();
    let bytes = bench::bytes_per_element(&adam) * total;
    let mut group = c.benchmark_group("many_tensors");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::BytesDecimal(bytes));
    for (name, shape) in [("gpt2-148-tensors", lens.clone()), ("flat", vec![total])] {
        group.bench_function(BenchmarkId::new(name, divisor), |b| {
            let mut work = Workload::tensors(ctx, adam, &shape)
                .unwrap_or_else(|e| fail(&format!("building {name}"), e));
            b.iter_custom(|iters| gpu_time(&mut work, iters, name, samples));
        });
    }
    group.finish();
    (total, bytes)
}

/// Host time per step, by wait interval: every 50 iterations (the GPU works meanwhile) and
/// every iteration (an idle GPU; on CPU devices the GPU work competes with the host).
fn host_overhead_group(
    c: &mut Criterion,
    ctx: &Context,
) -> Vec<(String, Rc<RefCell<Vec<Duration>>>)> {
    let lens = bench::gpt2_small_lengths(bench::HOST_OVERHEAD_DIVISOR)
        .unwrap_or_else(|e| fail("GPT-2 shapes", e));
    let mut group = c.benchmark_group("host_overhead");
    let mut out = Vec::new();
    // Fixed buffers, and gradients in a new buffer every step (the pool's 3 buffers in turn).
    let cases = [
        (1, "record-submit-148-tensors-wait-every", ""),
        (
            3,
            "record-submit-148-tensors-moving-gradients-wait-every",
            "moving gradients, ",
        ),
    ];
    for (pool, name, label) in cases {
        for wait_every in [bench::HOST_OVERHEAD_WAIT_EVERY, 1] {
            let times: Rc<RefCell<Vec<Duration>>> = Rc::default();
            group.bench_function(BenchmarkId::new(name, wait_every), |b| {
                let adam = wgpu_optim::Adam::default().into();
                let mut work = Workload::tensors_in(ctx, adam, &lens, pool)
                    .unwrap_or_else(|e| fail("building the 148-tensor step", e));
                b.iter_custom(|iters| {
                    let t = work
                        .record_and_submit(iters, wait_every)
                        .unwrap_or_else(|e| fail("record and submit", e));
                    let total = t.iter().sum();
                    times.borrow_mut().extend(t);
                    total
                });
            });
            out.push((format!("{label}wait every {wait_every}"), times));
        }
    }
    group.finish();
    out
}
