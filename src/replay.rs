//! Replaying recorded gradients: the engine of `wgpu-optim replay`.
//!
//! Parameters come from a safetensors file of F32, F16 or BF16 tensors by name; gradients from a
//! file that holds, for each parameter name, a tensor of the same shape with a leading step
//! dimension, of any of these types. Each parameter keeps its file's type on the GPU, and so
//! does its gradient; the state's type follows [`ReplayOptions::precision`].
//! [`replay`] runs that many optimizer steps on the GPU and returns the final parameters under
//! their names and every state tensor as `<name>.<state name>` (for example `w.exp_avg`, and
//! `w.step` as a 0-d tensor, as PyTorch's `optimizer.state` holds it; SGD keeps no step).
//!
//! With [`ReplayOptions`] each step can also clip the gradients and use a grad scaler, as
//! PyTorch's recipe `scaler.unscale_(opt); clip_grad_norm_(...); scaler.step(opt);
//! scaler.update()` does; the gradients in the file are then the scaled ones.

use crate::amp::{ClipGrad, GradScaler, GradScalerState, StepReport};
use crate::checkpoint::{LoadOptions, SaveOptions};
use crate::dtype::{DType, Precision};
use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::optim::OptimizerConfig;
use crate::optimizer::{BufferRange, Optimizer, Tensor};
use crate::schedule::Scheduler;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::path::Path;

/// A named tensor, as stored in a safetensors file.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// The tensor's name.
    pub name: String,
    /// Its shape; empty for a scalar.
    pub shape: Vec<usize>,
    /// Its values in row-major order, widened to f32 (exactly) from `dtype`.
    pub data: Vec<f32>,
    /// The type it is stored in.
    pub dtype: DType,
}

impl NamedTensor {
    /// An f32 tensor.
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self {
            name: name.into(),
            shape,
            data,
            dtype: DType::F32,
        }
    }
}

/// Parses safetensors bytes holding F32, F16 or BF16 tensors; another type is an error. `what`
/// names the source in errors.
pub fn parse_safetensors(bytes: &[u8], what: &str) -> Result<Vec<NamedTensor>> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::Input(format!("{what}: not a valid safetensors file: {e}")))?;
    let mut out: Vec<NamedTensor> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = match view.dtype() {
                Dtype::F32 => DType::F32,
                Dtype::F16 => DType::F16,
                Dtype::BF16 => DType::BF16,
                other => {
                    return Err(Error::Input(format!(
                        "{what}: tensor {name:?} is {other:?}; parameters and gradients are F32, F16 or BF16"
                    )));
                }
            };
            let data = dtype.decode(view.data()).collect();
            Ok(NamedTensor {
                name,
                shape: view.shape().to_vec(),
                data,
                dtype,
            })
        })
        .collect::<Result<_>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Reads a safetensors file of F32, F16 or BF16 tensors, sorted by name.
pub fn read_safetensors(path: &Path) -> Result<Vec<NamedTensor>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_safetensors(&bytes, &path.display().to_string())
}

/// Serializes tensors to safetensors bytes, each in its type.
pub fn to_safetensors(tensors: &[NamedTensor]) -> Result<Vec<u8>> {
    serialize(tensors, None)
}

/// Serializes tensors, each in its type (its values rounded to it), and the grad scaler's state
/// as `grad_scaler.scale` (F32, shape [1]) and `grad_scaler.growth_tracker` (I32, shape [1]),
/// as PyTorch's `GradScaler` keeps them.
fn serialize(tensors: &[NamedTensor], scaler: Option<&GradScalerState>) -> Result<Vec<u8>> {
    let error = |e: safetensors::SafeTensorError| Error::Input(format!("cannot serialize: {e}"));
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| t.dtype.encode(&t.data)).collect();
    let mut views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            let dtype = match t.dtype {
                DType::F16 => Dtype::F16,
                DType::BF16 => Dtype::BF16,
                _ => Dtype::F32,
            };
            TensorView::new(dtype, t.shape.clone(), b).map(|v| (t.name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(error)?;
    let scale;
    let tracker;
    if let Some(s) = scaler {
        scale = s.scale.to_le_bytes();
        tracker = s.growth_tracker.to_le_bytes();
        views.push((
            "grad_scaler.scale".into(),
            TensorView::new(Dtype::F32, vec![1], &scale).map_err(error)?,
        ));
        views.push((
            "grad_scaler.growth_tracker".into(),
            TensorView::new(Dtype::I32, vec![1], &tracker).map_err(error)?,
        ));
    }
    safetensors::serialize(views, None).map_err(error)
}

/// Writes tensors to a safetensors file. The file appears whole or not at all: the bytes go
/// to a temporary file beside it, which is then renamed.
pub fn write_safetensors(path: &Path, tensors: &[NamedTensor]) -> Result<()> {
    write_bytes(path, &to_safetensors(tensors)?)
}

/// Writes what [`replay`] returned to a safetensors file, whole or not at all: the tensors, and
/// the grad scaler's state when there is one (see [`ReplayOutput`]).
pub fn write_output(path: &Path, output: &ReplayOutput) -> Result<()> {
    write_bytes(
        path,
        &serialize(&output.tensors, output.grad_scaler.as_ref())?,
    )
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

/// Checks that every parameter has gradients of shape `[steps, ...shape]` with one `steps` for
/// all, and no gradient lacks a parameter. Returns `steps`.
fn check_shapes(params: &[NamedTensor], grads: &[NamedTensor]) -> Result<usize> {
    let mut steps = None;
    let elements = |t: &NamedTensor| {
        t.shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .filter(|&n| n == t.data.len())
    };
    for p in params {
        if elements(p).is_none() {
            return Err(Error::Input(format!(
                "parameter {:?}: data does not match shape",
                p.name
            )));
        }
        let g = grads.iter().find(|g| g.name == p.name).ok_or_else(|| {
            Error::Input(format!(
                "no gradient named {:?} in the gradient file",
                p.name
            ))
        })?;
        if elements(g).is_none() {
            return Err(Error::Input(format!(
                "gradient {:?}: data does not match shape",
                g.name
            )));
        }
        let Some((&s, rest)) = g.shape.split_first() else {
            return Err(Error::Input(format!(
                "gradient {:?} is a scalar; it needs a leading step dimension",
                g.name
            )));
        };
        if rest != p.shape.as_slice() {
            return Err(Error::Input(format!(
                "gradient {:?} has shape {:?}; expected [steps, {}] for parameter shape {:?}",
                g.name,
                g.shape,
                p.shape
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                p.shape
            )));
        }
        if *steps.get_or_insert(s) != s {
            return Err(Error::Input(format!(
                "gradient {:?} has {s} steps but others have {}",
                g.name,
                steps.unwrap_or(0)
            )));
        }
    }
    if let Some(g) = grads
        .iter()
        .find(|g| !params.iter().any(|p| p.name == g.name))
    {
        return Err(Error::Input(format!(
            "gradient {:?} has no parameter of that name",
            g.name
        )));
    }
    steps.ok_or_else(|| Error::Input("optimizer got an empty parameter list".into()))
}

/// Builds the scheduler of `replay --schedule`: a PyTorch schedule spec without `"lr"` takes the
/// optimizer's learning rate as its base, as a PyTorch scheduler reads it from the optimizer.
pub fn schedule_for(config: &OptimizerConfig, spec: &serde_json::Value) -> Result<Scheduler> {
    let mut spec = spec.clone();
    if let Some(object) = spec.as_object_mut()
        && !object.contains_key("lr")
        && object
            .get("type")
            .and_then(|t| t.as_str())
            .is_some_and(crate::schedule::uses_optimizer_lr)
    {
        object.insert("lr".into(), config.lr().into());
    }
    let scheduler = Scheduler::from_spec(&spec, 1)?;
    if scheduler.needs_metric() {
        return Err(Error::Input(format!(
            "{} steps on a metric, which replay does not have",
            scheduler.schedule()
        )));
    }
    // The optimizer must take the schedule's values (momentum cycling needs momentum).
    let first = config.scheduled(scheduler.lrs()[0], scheduler.momentum().map(|m| m[0]))?;
    if first.kernel() != config.kernel() {
        return Err(Error::Input(format!(
            "{} cycles momentum, but {} was built without momentum",
            scheduler.schedule(),
            config.type_name()
        )));
    }
    Ok(scheduler)
}

/// What each replayed step does besides the optimizer's update.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayOptions<'a> {
    /// A learning-rate schedule spec (see [`schedule_for`]).
    pub schedule: Option<&'a serde_json::Value>,
    /// Gradient clipping, over all tensors of the file.
    pub clip: Option<ClipGrad>,
    /// A grad scaler: the file's gradients are the scaled ones.
    pub grad_scaler: Option<GradScaler>,
    /// Read back each step's [`StepReport`] (total norm, found_inf): one blocking readback a
    /// step.
    pub trace: bool,
    /// A [checkpoint](crate::checkpoint) to resume from before the first step: its
    /// parameters (which it must hold) replace the parameter file's values, and its state,
    /// step counts, hyperparameters, grad scaler and, with a schedule, scheduler state are
    /// loaded. Names and shapes come from the parameter file and must match it.
    pub resume: Option<&'a Path>,
    /// Where to save a checkpoint after the last step, with the parameters and the
    /// scheduler's state (the scheduler steps after the last step too, as a PyTorch loop does
    /// before saving).
    pub save_checkpoint: Option<&'a Path>,
    /// AdamWScheduleFree: after the last step, switch the parameters to eval mode (the
    /// average x, with [`Optimizer::eval`]) before the checkpoint and the output. Without it
    /// they stay in train mode (y), as schedulefree leaves them between `train()` and
    /// `eval()`. An error for other classes.
    pub eval: bool,
    /// The state's type, master weights and stochastic rounding; the default keeps the state
    /// in each parameter's type and rounds to nearest, as PyTorch's fused kernels do. Master
    /// weights appear in the output as `<name>.master`.
    pub precision: Precision,
}

/// What [`replay`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayOutput {
    /// The final parameters and state, sorted by name.
    pub tensors: Vec<NamedTensor>,
    /// The grad scaler's final state, when one was used.
    pub grad_scaler: Option<GradScalerState>,
    /// Each step's report, with [`ReplayOptions::trace`]; empty otherwise.
    pub reports: Vec<StepReport>,
}

/// Records what `record` asks for into an encoder of its own and submits it.
fn submit(
    ctx: &Context,
    record: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<()>,
) -> Result<()> {
    let mut encoder = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("replay mode switch"),
        });
    record(&mut encoder)?;
    ctx.queue().submit([encoder.finish()]);
    Ok(())
}

/// Runs one optimizer step per gradient step on the GPU, with all parameters in one group.
/// With a schedule (see [`schedule_for`]), each step first takes its learning rate (and
/// momentum or beta1, when the schedule cycles them) from the scheduler, which steps after the
/// optimizer step, as in PyTorch, skipped or not. With clipping and a grad scaler, each step
/// unscales, clips, skips on inf or NaN and updates the scale as PyTorch's recipe does. Returns
/// the final parameters and state, sorted by name.
pub fn replay(
    ctx: &Context,
    config: &OptimizerConfig,
    options: &ReplayOptions<'_>,
    params: &[NamedTensor],
    grads: &[NamedTensor],
) -> Result<ReplayOutput> {
    config.validate()?;
    if let Some(c) = &options.clip {
        c.validate()?;
    }
    if let Some(s) = &options.grad_scaler {
        s.validate()?;
    }
    let mut scheduler = options
        .schedule
        .map(|s| schedule_for(config, s))
        .transpose()?;
    let steps = check_shapes(params, grads)?;
    let grads_by_param: Vec<&NamedTensor> = params
        .iter()
        .map(|p| {
            grads
                .iter()
                .find(|g| g.name == p.name)
                .expect("checked above")
        })
        .collect();
    // Byte offsets of each tensor in the parameter and gradient buffers, each at a whole word.
    let place = |types: &mut dyn Iterator<Item = (DType, usize)>| -> (Vec<u64>, u64) {
        let mut at = 0u64;
        let offsets = types
            .map(|(dtype, n)| {
                let o = at;
                at += (dtype.size() * n as u64).next_multiple_of(4);
                o
            })
            .collect();
        (offsets, at)
    };
    let (param_offsets, param_bytes) = place(&mut params.iter().map(|p| (p.dtype, p.data.len())));
    let (grad_offsets, grad_bytes) = place(
        &mut params
            .iter()
            .zip(&grads_by_param)
            .map(|(p, g)| (g.dtype, p.data.len())),
    );
    let mut initial = vec![0u8; param_bytes as usize];
    for (p, &o) in params.iter().zip(&param_offsets) {
        let bytes = p.dtype.encode(&p.data);
        initial[o as usize..o as usize + bytes.len()].copy_from_slice(&bytes);
    }
    let param_buffer = ctx.create_byte_buffer("replay parameters", &initial)?;
    let grad_buffer =
        ctx.create_byte_buffer("replay gradients", &vec![0u8; grad_bytes as usize])?;
    let tensors: Vec<Tensor<'_>> = params
        .iter()
        .zip(&grads_by_param)
        .zip(param_offsets.iter().zip(&grad_offsets))
        .map(|((p, g), (&po, &go))| {
            let n = p.data.len() as u64;
            Tensor::new(
                BufferRange::new(&param_buffer, po, n).with_dtype(p.dtype),
                BufferRange::new(&grad_buffer, go, n).with_dtype(g.dtype),
            )
            .named(&p.name)
            .with_shape(&p.shape)
        })
        .collect();
    let groups = [crate::optimizer::ParamGroup::new(*config, tensors)];
    let mut optimizer = Optimizer::with_precision(ctx, &groups, options.precision)?;
    optimizer.set_clip_grad(options.clip)?;
    optimizer.set_grad_scaler(options.grad_scaler)?;
    if let Some(path) = options.resume {
        let load = LoadOptions {
            scheduler: scheduler.as_mut(),
            parameters: true,
        };
        optimizer
            .load(path, load)
            .map_err(|e| Error::Input(format!("--resume: {e}")))?;
    }
    if options.eval && !config.has_modes() {
        return Err(Error::Input(format!(
            "--eval: {} has no train and eval modes (AdamWScheduleFree has)",
            config.type_name()
        )));
    }
    // A schedule-free checkpoint may hold eval-mode parameters: training starts with train().
    if !optimizer.is_train_mode() {
        submit(ctx, |encoder| optimizer.train(encoder))?;
    }
    let mut reports = Vec::new();
    for step in 0..steps {
        for ((p, g), &o) in params.iter().zip(&grads_by_param).zip(&grad_offsets) {
            let n = p.data.len();
            let mut bytes = g.dtype.encode(&g.data[step * n..(step + 1) * n]);
            bytes.resize(bytes.len().next_multiple_of(4), 0);
            ctx.queue().write_buffer(&grad_buffer, o, &bytes);
        }
        if let Some(s) = &scheduler {
            optimizer.apply_schedule(s)?;
        }
        optimizer.step_submit()?;
        if options.trace {
            reports.push(optimizer.read_step_report()?);
        }
        // The step after the last one needs no LR (and OneCycleLR would refuse it), unless
        // a checkpoint is saved for a later run.
        let last = step + 1 == steps;
        if let Some(s) = scheduler
            .as_mut()
            .filter(|_| !last || options.save_checkpoint.is_some())
        {
            s.step()?;
        }
    }
    if options.eval {
        submit(ctx, |encoder| optimizer.eval(encoder))?;
    }
    if let Some(path) = options.save_checkpoint {
        let save = SaveOptions {
            scheduler: scheduler.as_ref(),
            parameters: true,
        };
        optimizer.save(path, &save)?;
    }
    let mut out = Vec::new();
    for (k, (p, &o)) in params.iter().zip(&param_offsets).enumerate() {
        let n = p.data.len() as u64;
        let first = o / p.dtype.size();
        out.push(NamedTensor {
            name: p.name.clone(),
            shape: p.shape.clone(),
            data: ctx.read_typed(&[(&param_buffer, first, n)], p.dtype)?,
            dtype: p.dtype,
        });
        if options.precision.master_weights && p.dtype != DType::F32 {
            out.push(NamedTensor::f32(
                format!("{}.master", p.name),
                p.shape.clone(),
                optimizer.read_master(k)?,
            ));
        }
        let state = optimizer.read_state(k)?;
        let state_type = options.precision.state.for_param(p.dtype);
        for (name, data) in state.buffers {
            out.push(NamedTensor {
                name: format!("{}.{name}", p.name),
                shape: config.state_shape(&name, &p.shape),
                data,
                dtype: state_type,
            });
        }
        if config.has_step_state() {
            let step = NamedTensor::f32(
                format!("{}.step", p.name),
                Vec::new(),
                vec![state.step as f32],
            );
            out.push(step);
        }
        for (name, value) in state.scalars {
            out.push(NamedTensor::f32(
                format!("{}.{name}", p.name),
                Vec::new(),
                vec![value],
            ));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    let grad_scaler = match optimizer.grad_scaler() {
        Some(_) => Some(optimizer.read_grad_scaler()?),
        None => None,
    };
    Ok(ReplayOutput {
        tensors: out,
        grad_scaler,
        reports,
    })
}
