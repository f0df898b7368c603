//! A Burn MLP trained end to end with wgpu-optim's fused AdamW, on the wine quality data set
//! (1,599 red wines, 11 physico-chemical features, quality scored 3 to 8; from
//! `linfa-datasets`), as regression of the quality score.
//!
//! ```sh
//! cargo run -p wgpu-optim-burn --example winequality
//! ```
//!
//! The run trains with AdamW under wgpu-optim's OneCycleLR schedule and `clip_grad_norm_`
//! over all parameters, saves a checkpoint (optimizer state, parameters and scheduler) halfway,
//! and checks that a fresh model and optimizer resumed from it continue the same loss curve.
//! Then the same recipe runs with Burn's own AdamW (whose gradient clipping is per tensor) for
//! the step-time comparison. It prints the training and validation loss of every epoch under a
//! progress bar, the validation RMSE and MAE in quality points, the median optimizer step time
//! of both, and writes an SVG of the losses and the learning rate against the step
//! (`WINEQUALITY_SVG`, default `winequality.svg`).

use burn::grad_clipping::GradientClippingConfig;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData, activation::relu};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use std::time::{Duration, Instant};
use wgpu_optim::schedule::Scheduler;
use wgpu_optim::{AdamW, ClipGrad, NormType};
use wgpu_optim_burn::{FusedOptimizer, Shared};

const EPOCHS: usize = 40;
const BATCH: usize = 64;
const MAX_LR: f64 = 0.01;
const WEIGHT_DECAY: f64 = 0.01;
const MAX_NORM: f64 = 1.0;

#[derive(Module, Debug)]
struct Mlp {
    input: Linear,
    hidden: Linear,
    output: Linear,
}

impl Mlp {
    fn new(device: &Device, seed: u64) -> Self {
        device.seed(seed);
        Self {
            input: LinearConfig::new(11, 64).init(device),
            hidden: LinearConfig::new(64, 64).init(device),
            output: LinearConfig::new(64, 1).init(device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = relu(self.input.forward(x));
        let x = relu(self.hidden.forward(x));
        self.output.forward(x)
    }
}

/// Standardized features and quality scores, split 80/20 in a fixed shuffled order.
struct Data {
    train: (Vec<f32>, Vec<f32>),
    valid: (Vec<f32>, Vec<f32>),
}

fn load() -> Data {
    let ds = linfa_datasets::winequality();
    let x: Vec<f64> = ds.records.iter().copied().collect();
    let y: Vec<f32> = ds.targets.iter().map(|&q| q as f32).collect();
    let n = y.len();
    // A fixed shuffle (a linear congruential generator), then 80% for training.
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for i in (1..n).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        order.swap(i, (state >> 33) as usize % (i + 1));
    }
    let cut = n * 4 / 5;
    // Feature means and deviations of the training rows.
    let mut mean = [0.0f64; 11];
    let mut var = [0.0f64; 11];
    for &i in &order[..cut] {
        for j in 0..11 {
            mean[j] += x[i * 11 + j] / cut as f64;
        }
    }
    for &i in &order[..cut] {
        for j in 0..11 {
            var[j] += (x[i * 11 + j] - mean[j]).powi(2) / cut as f64;
        }
    }
    let x = &x;
    let rows = |idx: &[usize]| -> (Vec<f32>, Vec<f32>) {
        let xs = idx
            .iter()
            .flat_map(|&i| (0..11).map(move |j| ((x[i * 11 + j] - mean[j]) / var[j].sqrt()) as f32))
            .collect();
        (xs, idx.iter().map(|&i| y[i]).collect())
    };
    Data {
        train: rows(&order[..cut]),
        valid: rows(&order[cut..]),
    }
}

fn tensors(
    device: &Device,
    (x, y): &(Vec<f32>, Vec<f32>),
    rows: std::ops::Range<usize>,
) -> (Tensor<2>, Tensor<2>) {
    let n = rows.len();
    (
        Tensor::from_data(
            TensorData::new(x[rows.start * 11..rows.end * 11].to_vec(), [n, 11]),
            device,
        ),
        Tensor::from_data(TensorData::new(y[rows].to_vec(), [n, 1]), device),
    )
}

/// Mean squared error, RMSE and mean absolute error of `model` on `set`.
fn evaluate(model: &Mlp, device: &Device, set: &(Vec<f32>, Vec<f32>)) -> (f32, f32, f32) {
    let (x, y) = tensors(device, set, 0..set.1.len());
    let err = model.forward(x) - y;
    let mse = err.clone().powi_scalar(2).mean().into_scalar::<f32>();
    let mae = err.abs().mean().into_scalar::<f32>();
    (mse, mse.sqrt(), mae)
}

/// What a run records per step and per epoch.
#[derive(Default)]
struct Log {
    step_loss: Vec<f32>,
    lr: Vec<f64>,
    epochs: Vec<(f32, f32)>,
    step_times: Vec<Duration>,
}

/// Trains epochs `epochs` (a range of the whole run), each over the training set in batches,
/// timing each optimizer step (the GPU is waited for before and after it). `step` takes the
/// scheduler, which is stepped after each optimizer step.
#[allow(clippy::too_many_arguments)]
fn train(
    device: &Device,
    data: &Data,
    mut model: Mlp,
    step: &mut dyn FnMut(&Scheduler, Mlp, GradientsParams) -> Mlp,
    sched: &mut Scheduler,
    epochs: std::ops::Range<usize>,
    bar: &ProgressBar,
    log: &mut Log,
) -> Mlp {
    let n = data.train.1.len();
    let batches = n / BATCH;
    for epoch in epochs {
        let mut total = 0.0;
        for b in 0..batches {
            let (x, y) = tensors(device, &data.train, b * BATCH..(b + 1) * BATCH);
            let loss = (model.forward(x) - y).powi_scalar(2).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let value = loss.into_scalar::<f32>();
            total += value;
            device.sync().expect("sync");
            let lr = sched.lrs()[0];
            let start = Instant::now();
            model = step(sched, model, grads);
            device.sync().expect("sync");
            log.step_times.push(start.elapsed());
            log.step_loss.push(value);
            log.lr.push(lr);
            let last = epoch + 1 == EPOCHS && b + 1 == batches;
            if !last {
                sched.step().expect("the schedule has room for every step");
            }
            bar.inc(1);
        }
        let (valid, _, _) = evaluate(&model, device, &data.valid);
        let train = total / batches as f32;
        log.epochs.push((train, valid));
        say(
            bar,
            format!(
                "epoch {:>2}: train loss {train:.4}, validation loss {valid:.4}, lr {:.2e}",
                epoch + 1,
                sched.lrs()[0]
            ),
        );
    }
    model
}

/// Prints a line above the progress bar, or plainly where the bar is hidden (output that is
/// not a terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// The fused optimizer's step, following the scheduler it is given.
fn fused(optim: &mut FusedOptimizer) -> impl FnMut(&Scheduler, Mlp, GradientsParams) -> Mlp + '_ {
    move |s, m, g| {
        optim
            .step_scheduled(s, m, g)
            .unwrap_or_else(|e| panic!("fused step: {e}"))
    }
}

fn median(times: &[Duration]) -> Duration {
    let mut t = times.to_vec();
    t.sort_unstable();
    t[t.len() / 2]
}

fn main() {
    let shared = Shared::request(wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all()))
        .expect("a GPU adapter (on Linux without a GPU: mesa-vulkan-drivers for lavapipe)");
    let info = shared.context().device().adapter_info();
    println!("adapter: {} ({:?})", info.name, info.backend);
    let device = shared.device().clone().autodiff();
    let data = load();
    let batches = data.train.1.len() / BATCH;
    let total_steps = EPOCHS * batches;
    println!(
        "wine quality: {} training and {} validation wines, {batches} batches of {BATCH} a epoch, {EPOCHS} epochs",
        data.train.1.len(),
        data.valid.1.len()
    );
    // OneCycleLR without cycling beta1, so that Burn's AdamW can follow the same schedule.
    let spec = serde_json::json!({
        "type": "OneCycleLR", "max_lr": MAX_LR, "total_steps": total_steps, "cycle_momentum": false
    });
    let new_sched = || Scheduler::from_spec(&spec, 1).expect("a valid schedule");
    let config = AdamW {
        lr: MAX_LR,
        weight_decay: WEIGHT_DECAY,
        ..Default::default()
    };
    let clip = ClipGrad::Norm {
        max_norm: MAX_NORM,
        norm_type: NormType::L2,
    };
    let style =
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps {elapsed}").expect("a template");
    let dir = std::env::temp_dir().join(format!("wgpu-optim-winequality-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let checkpoint = dir.join("halfway.safetensors");

    // The fused run, with a checkpoint halfway.
    println!("\nwgpu-optim AdamW (fused), OneCycleLR, clip_grad_norm_({MAX_NORM}):");
    let bar = ProgressBar::new(total_steps as u64).with_style(style.clone());
    let mut log = Log::default();
    let mut sched = new_sched();
    let mut optim = FusedOptimizer::new(&shared, config).with_clip_grad(clip);
    let half = EPOCHS / 2;
    let first = Mlp::new(&device, 1);
    let model = train(
        &device,
        &data,
        first,
        &mut fused(&mut optim),
        &mut sched,
        0..half,
        &bar,
        &mut log,
    );
    optim
        .save(&checkpoint, Some(&sched), true)
        .expect("saving the checkpoint");
    let model = train(
        &device,
        &data,
        model,
        &mut fused(&mut optim),
        &mut sched,
        half..EPOCHS,
        &bar,
        &mut log,
    );
    bar.finish();
    let (_, rmse, mae) = evaluate(&model, &device, &data.valid);

    // A fresh model (other initial values), optimizer and schedule resume from the checkpoint.
    let bar = ProgressBar::new((total_steps - half * batches) as u64).with_style(style.clone());
    say(
        &bar,
        "resuming a fresh model and optimizer from the halfway checkpoint:".into(),
    );
    let mut resumed_log = Log::default();
    let mut sched = new_sched();
    let mut optim = FusedOptimizer::new(&shared, config).with_clip_grad(clip);
    let fresh = optim
        .load(&checkpoint, Mlp::new(&device, 2), Some(&mut sched), true)
        .expect("loading the checkpoint");
    let resumed = train(
        &device,
        &data,
        fresh,
        &mut fused(&mut optim),
        &mut sched,
        half..EPOCHS,
        &bar,
        &mut resumed_log,
    );
    bar.finish();
    let worst = log.step_loss[half * batches..]
        .iter()
        .zip(&resumed_log.step_loss)
        .map(|(a, b)| ((a - b) / a.abs().max(1e-6)).abs())
        .fold(0.0f32, f32::max);
    let (_, resumed_rmse, _) = evaluate(&resumed, &device, &data.valid);
    println!(
        "resumed run: largest relative difference from the uninterrupted losses {worst:.2e}; validation RMSE {resumed_rmse:.4} (uninterrupted {rmse:.4})"
    );
    assert!(worst <= 1e-5, "the resumed run left the curve");

    // Burn's own AdamW, same schedule and weight decay; its clipping is per tensor.
    println!("\nBurn's AdamW, the same schedule, per-tensor gradient clipping:");
    let bar = ProgressBar::new(total_steps as u64).with_style(style);
    let mut burn_log = Log::default();
    let mut burn = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(WEIGHT_DECAY as f32)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(MAX_NORM as f32)))
        .init();
    let mut sched = new_sched();
    let mut burn_step = |s: &Scheduler, m: Mlp, g: GradientsParams| burn.step(s.lrs()[0], m, g);
    let first = Mlp::new(&device, 1);
    let burn_model = train(
        &device,
        &data,
        first,
        &mut burn_step,
        &mut sched,
        0..EPOCHS,
        &bar,
        &mut burn_log,
    );
    bar.finish();
    let (_, burn_rmse, burn_mae) = evaluate(&burn_model, &device, &data.valid);

    let fused_step = median(&log.step_times);
    let burn_step = median(&burn_log.step_times);
    println!(
        "\nvalidation RMSE {rmse:.4}, MAE {mae:.4} quality points (wgpu-optim); Burn's AdamW: RMSE {burn_rmse:.4}, MAE {burn_mae:.4}"
    );
    println!(
        "median optimizer step: wgpu-optim {:.3} ms, Burn {:.3} ms ({:.2}x)",
        fused_step.as_secs_f64() * 1e3,
        burn_step.as_secs_f64() * 1e3,
        burn_step.as_secs_f64() / fused_step.as_secs_f64()
    );
    let svg = std::env::var("WINEQUALITY_SVG").unwrap_or_else(|_| "winequality.svg".into());
    plot(&svg, &log, &burn_log, batches).expect("writing the SVG");
    println!("wrote {svg}");
    std::fs::remove_dir_all(dir).ok();
}

/// Training loss per step and validation loss per epoch, of both runs, and the learning rate.
fn plot(
    path: &str,
    fused: &Log,
    burn: &Log,
    batches: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(440);
    let steps = fused.step_loss.len();
    let max_loss = fused
        .step_loss
        .iter()
        .chain(&burn.step_loss)
        .copied()
        .fold(0.0f32, f32::max);
    let mut chart = ChartBuilder::on(&top)
        .caption("Wine quality MLP: loss", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0..steps, (0.1f32..max_loss * 1.1).log_scale())?;
    chart.configure_mesh().x_desc("step").y_desc("MSE").draw()?;
    let series = |log: &Log| {
        log.step_loss
            .iter()
            .copied()
            .enumerate()
            .collect::<Vec<_>>()
    };
    let epochs = |log: &Log| {
        log.epochs
            .iter()
            .enumerate()
            .map(|(e, v)| ((e + 1) * batches, v.1))
            .collect::<Vec<_>>()
    };
    chart
        .draw_series(LineSeries::new(series(fused), BLUE.mix(0.35)))?
        .label("train, wgpu-optim AdamW")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(series(burn), RED.mix(0.35)))?
        .label("train, Burn AdamW")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart
        .draw_series(LineSeries::new(epochs(fused), BLUE.stroke_width(2)))?
        .label("validation, wgpu-optim AdamW")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(epochs(burn), RED.stroke_width(2)))?
        .label("validation, Burn AdamW")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    let mut lr = ChartBuilder::on(&bottom)
        .caption("learning rate (OneCycleLR)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0..steps, 0.0..MAX_LR * 1.1)?;
    lr.configure_mesh().x_desc("step").draw()?;
    lr.draw_series(LineSeries::new(fused.lr.iter().copied().enumerate(), BLACK))?;
    root.present()?;
    Ok(())
}
