//! Checkpoints: an optimizer's whole state in one [safetensors] file, with
//! [`Optimizer::save`], [`Optimizer::save_async`] and [`Optimizer::load`].
//!
//! # Layout
//!
//! Tensors, by the names the optimizer's tensors carry ([`Tensor::named`](crate::Tensor::named),
//! else `param.0`, `param.1`, ... in order over all groups):
//!
//! | key | dtype | shape | what |
//! |---|---|---|---|
//! | `<name>.step` | I64 | `[]` | the tensor's step count (every optimizer, SGD included) |
//! | `<name>.<state>` | F32 | the tensor's, or PyTorch's for a factor | each state buffer under PyTorch's name (`exp_avg`, `momentum_buffer`, ...; Adafactor's factors of a tensor of two dimensions or more, `row_var` with the last dimension 1 and `col_var` with the second-to-last 1) |
//! | `<name>.<scalar>` | F32 | `[]` | each scalar state under PyTorch's name (NAdam's `mu_product`, ASGD's `eta` and `mu`) |
//! | `<name>` | the parameter's: F32, F16 or BF16 | the tensor's | the parameter, with [`SaveOptions::parameters`] |
//! | `<name>.master` | F32 | the tensor's | the f32 master copy of a 16-bit parameter, where the optimizer keeps master weights ([`Precision::master_weights`](crate::Precision::master_weights)) |
//!
//! The safetensors metadata (string to string) holds, as JSON where it is structured:
//!
//! | key | value |
//! |---|---|
//! | `format` | `wgpu-optim` |
//! | `version` | `1` |
//! | `optimizer` | PyTorch's class name, e.g. `Adam` |
//! | `param_groups` | one object per group: its hyperparameters under PyTorch's argument names, and `params`, the names of its tensors |
//! | `scheduler` | the [`SchedulerState`] of [`SaveOptions::scheduler`], when given |
//! | `train_mode` | `true` or `false`: whether the parameters held their train-mode values when saved (AdamWScheduleFree only, as schedulefree's `param_groups` keep it); a load takes the mode with the state |
//! | `stochastic_rounding` | the seed, where the optimizer rounds its 16-bit parameters stochastically; a load into an optimizer with another seed is an error, since it would not repeat the saved run's rounding |
//! | `grad_scaler` | `torch.amp.GradScaler.state_dict()`'s keys (`scale`, `growth_factor`, `backoff_factor`, `growth_interval`, `_growth_tracker`), when the optimizer has a grad scaler |
//!
//! State and parameters are saved in their storage types (F32, F16 or BF16), and a load expects
//! the types the optimizer keeps. A load into an optimizer with master weights takes the master
//! copies from `<name>.master`, or, where the checkpoint has none (one converted from PyTorch),
//! makes them from the loaded parameters at the next step. A master copy that no step has made
//! yet (none has run since the optimizer was built) is saved as the NaN `0x7fe5a5a5` in each
//! element, which a load takes the same way.
//!
//! Gradient clipping is a setting of the training loop, not state, and is not saved (nor is it
//! in PyTorch's state dicts). `tools/torch_checkpoint.py` converts between this layout and a
//! PyTorch `optimizer.state_dict()` with `model.named_parameters()`.
//!
//! Saving and loading stream the data through bounded buffers (at most
//! [`STREAM_CHUNK`] bytes of host memory at a time), so a checkpoint larger than the host's
//! memory saves and loads.
//!
//! [safetensors]: https://huggingface.co/docs/safetensors

use super::{MAX_STEP, Optimizer};
use crate::amp::{GradScaler, GradScalerState};
use crate::error::{Error, Result};
use crate::gpu::{Context, scoped};
use crate::optim::OptimizerConfig;
use crate::schedule::{Scheduler, SchedulerState};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// The value of the metadata key `format`.
pub const FORMAT: &str = "wgpu-optim";
/// The value of the metadata key `version`.
pub const VERSION: &str = "1";
/// The most bytes of tensor data that saving or loading holds in host memory at once.
pub const STREAM_CHUNK: u64 = 1 << 24;
/// The largest safetensors header read, as the safetensors crate limits it.
const MAX_HEADER: u64 = 100_000_000;

/// What [`Optimizer::save`] writes besides the optimizer's own state.
#[derive(Clone, Copy, Debug, Default)]
pub struct SaveOptions<'a> {
    /// A scheduler whose state goes into the metadata under `scheduler`.
    pub scheduler: Option<&'a Scheduler>,
    /// Also write every parameter under its name, so that the file alone resumes a run.
    pub parameters: bool,
}

/// What [`Optimizer::load`] restores besides the optimizer's own state.
#[derive(Debug, Default)]
pub struct LoadOptions<'a> {
    /// A scheduler, built from the same spec as the saved one, that takes the saved state.
    /// The checkpoint must then hold one.
    pub scheduler: Option<&'a mut Scheduler>,
    /// Also write the saved parameters into the optimizer's parameter ranges. The checkpoint
    /// must then hold them.
    pub parameters: bool,
}

/// A save running on a thread of its own: see [`Optimizer::save_async`].
#[derive(Debug)]
pub struct PendingSave {
    thread: JoinHandle<Result<()>>,
}

impl PendingSave {
    /// Whether the file has been written (or the save has failed).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the save to end and returns its result.
    pub fn wait(self) -> Result<()> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err(Error::Input("the checkpoint thread panicked".into())))
    }
}

/// Where a tensor's bytes come from when saving.
enum Source {
    /// Tensor `i`'s step count, from the control buffer.
    Step(usize),
    /// Scalar state `k` of tensor `i`, from the control buffer.
    Scalar(usize, usize),
    /// Byte ranges `(buffer, offset, bytes)` of GPU buffers, in order.
    Gpu(Vec<(wgpu::Buffer, u64, u64)>),
}

/// One tensor of the file being written.
struct Entry {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    source: Source,
}

/// Everything a save needs once the optimizer's buffers are known: it runs on any thread.
struct SavePlan {
    ctx: Context,
    metadata: BTreeMap<String, String>,
    entries: Vec<Entry>,
    /// The control buffer (scaler state, step counts) and its size in bytes.
    control: (wgpu::Buffer, u64),
    /// The grad scaler's configuration, whose state is read from the control buffer.
    scaler: Option<GradScaler>,
}

/// The keys of `torch.amp.GradScaler.state_dict()`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ScalerRecord {
    scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u32,
    #[serde(rename = "_growth_tracker")]
    growth_tracker: i32,
}

impl Optimizer {
    /// Writes a checkpoint of this optimizer to `path` (see the [module](self) for the layout):
    /// every state buffer, every step count, every group's hyperparameters and the grad
    /// scaler's state, after all submitted work. Blocks until the file is written; the data
    /// streams through bounded buffers. The file appears whole or not at all (it is written
    /// beside `path` and renamed). State buffers need nothing from the caller; with
    /// [`SaveOptions::parameters`], the parameter buffers need `COPY_SRC`.
    pub fn save(&self, path: &Path, options: &SaveOptions<'_>) -> Result<()> {
        self.save_plan(options, false)?.write(path)
    }

    /// As [`save`](Self::save), without blocking: copies the state (and the parameters, with
    /// [`SaveOptions::parameters`]) into new GPU buffers in a submitted command buffer, so that
    /// later steps do not change what is saved, then streams the copies to `path` on a thread
    /// of its own. The engine goes on recording and submitting steps meanwhile. The copies take
    /// as much GPU memory as the state (and parameters) for as long as the save runs.
    pub fn save_async(&self, path: &Path, options: &SaveOptions<'_>) -> Result<PendingSave> {
        let plan = self.save_plan(options, true)?;
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("wgpu-optim checkpoint".into())
            .spawn(move || plan.write(&path))
            .map_err(|source| Error::Io {
                path: "checkpoint thread".into(),
                source,
            })?;
        Ok(PendingSave { thread })
    }

    /// What to write, reading the live buffers, or copies of them when `copy`.
    fn save_plan(&self, options: &SaveOptions<'_>, copy: bool) -> Result<SavePlan> {
        self.check_keys()?;
        if options.parameters {
            for (i, meta) in self.tensors.iter().enumerate() {
                if !meta.param.usage().contains(wgpu::BufferUsages::COPY_SRC) {
                    return Err(Error::MissingUsage {
                        tensor: i,
                        role: "parameter",
                        usage: "COPY_SRC",
                    });
                }
            }
        }
        let mut metadata = BTreeMap::new();
        metadata.insert("format".to_string(), FORMAT.to_string());
        metadata.insert("version".to_string(), VERSION.to_string());
        metadata.insert(
            "optimizer".to_string(),
            self.groups[0].type_name().to_string(),
        );
        metadata.insert("param_groups".to_string(), self.param_groups_json());
        if self.groups[0].has_modes() {
            metadata.insert("train_mode".to_string(), self.train_mode.to_string());
        }
        if let Some(seed) = self.precision.stochastic_rounding {
            metadata.insert("stochastic_rounding".to_string(), seed.to_string());
        }
        if let Some(s) = options.scheduler {
            let state = serde_json::to_string(&s.state())
                .map_err(|e| Error::Input(format!("cannot write the scheduler state: {e}")))?;
            metadata.insert("scheduler".to_string(), state);
        }

        let mut entries: Vec<Entry> = self
            .tensors
            .iter()
            .enumerate()
            .map(|(i, meta)| Entry {
                name: format!("{}.step", meta.name),
                dtype: "I64",
                shape: Vec::new(),
                source: Source::Step(i),
            })
            .collect();
        for (i, meta) in self.tensors.iter().enumerate() {
            if options.parameters {
                let range = (meta.param.clone(), meta.param_offset, meta.param_bytes());
                entries.push(Entry {
                    name: meta.name.clone(),
                    dtype: meta.types.0.safetensors_name(),
                    shape: meta.shape(),
                    source: Source::Gpu(vec![range]),
                });
            }
            if meta.master {
                let ranges = self
                    .master_ranges(i)?
                    .into_iter()
                    .map(|(buffer, first, len)| (buffer.clone(), 4 * first, 4 * len))
                    .collect();
                entries.push(Entry {
                    name: format!("{}.master", meta.name),
                    dtype: "F32",
                    shape: meta.shape(),
                    source: Source::Gpu(ranges),
                });
            }
            let config = &self.groups[meta.group];
            let shape = meta.shape();
            for (n, state) in config.state_names_for(&shape).iter().enumerate() {
                let ranges = self
                    .state_bytes(meta, n as u64)
                    .into_iter()
                    .map(|(buffer, at, bytes)| (buffer.clone(), at, bytes))
                    .collect();
                entries.push(Entry {
                    name: format!("{}.{state}", meta.name),
                    dtype: meta.state_type.safetensors_name(),
                    shape: config.state_shape(state, &shape),
                    source: Source::Gpu(ranges),
                });
            }
        }
        for (i, meta) in self.tensors.iter().enumerate() {
            for (k, scalar) in self.groups[meta.group].scalar_names().iter().enumerate() {
                entries.push(Entry {
                    name: format!("{}.{scalar}", meta.name),
                    dtype: "F32",
                    shape: Vec::new(),
                    source: Source::Scalar(i, k),
                });
            }
        }
        let mut control = (self.buffers.control.clone(), self.buffers.control.size());
        if copy {
            let device = self.ctx.device();
            let mut encoder = device.create_command_encoder(&Default::default());
            // Copies move whole words: a range of 16-bit elements that starts or ends inside
            // one is copied with its words, and read back from inside the copy.
            let mut copy_of = |(buffer, offset, bytes): (wgpu::Buffer, u64, u64)| {
                let (start, end) = (offset & !3, (offset + bytes).next_multiple_of(4));
                let to = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-optim checkpoint copy"),
                    size: (end - start).max(4),
                    usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                if bytes > 0 {
                    encoder.copy_buffer_to_buffer(&buffer, start, &to, 0, end - start);
                }
                (to, offset - start, bytes)
            };
            scoped(device, || {
                control = (copy_of((control.0.clone(), 0, control.1)).0, control.1);
                for entry in &mut entries {
                    if let Source::Gpu(ranges) = &mut entry.source {
                        *ranges = ranges.drain(..).map(&mut copy_of).collect();
                    }
                }
            })?;
            self.ctx.queue().submit([encoder.finish()]);
        }
        Ok(SavePlan {
            ctx: self.ctx.clone(),
            metadata,
            entries,
            control,
            scaler: self.scaler,
        })
    }

    /// The `param_groups` metadata: each group's hyperparameters and its tensors' names.
    fn param_groups_json(&self) -> String {
        let groups: Vec<Value> = self
            .groups
            .iter()
            .enumerate()
            .map(|(g, config)| {
                let mut object = match serde_json::to_value(config) {
                    Ok(Value::Object(object)) => object,
                    _ => Map::new(),
                };
                object.remove("type");
                let names = self
                    .tensors
                    .iter()
                    .filter(|t| t.group == g)
                    .map(|t| Value::String(t.name.clone()))
                    .collect();
                object.insert("params".into(), Value::Array(names));
                Value::Object(object)
            })
            .collect();
        Value::Array(groups).to_string()
    }

    /// Fails when two tensors' names make the same checkpoint key (say `w` and `w.step`).
    fn check_keys(&self) -> Result<()> {
        let mut seen = HashMap::new();
        for (i, meta) in self.tensors.iter().enumerate() {
            let config = &self.groups[meta.group];
            let suffixes = std::iter::once("step")
                .chain(config.state_names_for(&meta.shape()).iter().copied())
                .chain(config.scalar_names().iter().copied());
            let keys = std::iter::once(meta.name.clone())
                .chain(suffixes.map(|s| format!("{}.{s}", meta.name)));
            for key in keys {
                if let Some(j) = seen.insert(key.clone(), i) {
                    return Err(Error::Input(format!(
                        "tensors {j} and {i} both make the checkpoint key {key:?}: rename one"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Restores a checkpoint that [`save`](Self::save) (or `tools/torch_checkpoint.py`) wrote:
    /// every state buffer, every step count, every group's hyperparameters (as PyTorch's
    /// `load_state_dict` does), the grad scaler (its configuration and state), and with
    /// `options` the scheduler's state and the parameters. Tensors are matched by name; the
    /// checkpoint's groups must hold the same names as this optimizer's, and the data streams
    /// from the file through bounded buffers. Everything lands at the next submit.
    ///
    /// Everything is checked before anything changes: a file that is not a checkpoint or is
    /// truncated, another optimizer type, another set of tensors or groups, a missing tensor, a
    /// shape or dtype that does not match, hyperparameters that PyTorch would reject or that
    /// change which state buffers exist, a step above [`MAX_STEP`], a scheduler state that
    /// does not fit the scheduler, a missing grad scaler state while this optimizer has a grad
    /// scaler, or missing parameters or scheduler state that `options` asks for are each an
    /// [`Error`] that changes nothing. Only an I/O error while the checked data is being read
    /// can leave the state partly loaded.
    pub fn load(&mut self, path: &Path, options: LoadOptions<'_>) -> Result<()> {
        let mut file = CheckpointFile::open(path)?;
        let plan = self.check_checkpoint(&mut file, &options)?;
        if let Some(scaler) = plan.scaler {
            self.configure(self.clip, Some(scaler.0))?;
        }
        let queue = self.ctx.queue().clone();
        let mut stream = Uploader::new(&self.ctx);
        for (i, meta) in self.tensors.iter().enumerate() {
            if options.parameters {
                let start = file.tensors[&meta.name].start;
                let target = [(&meta.param, meta.param_offset, meta.param_bytes())];
                stream.upload(&mut file, start, &target)?;
            }
            if meta.master {
                let master: Vec<_> = self
                    .master_ranges(i)?
                    .into_iter()
                    .map(|(buffer, first, len)| (buffer, 4 * first, 4 * len))
                    .collect();
                let saved = file.tensors.get(&format!("{}.master", meta.name));
                match saved.map(|info| info.start) {
                    Some(start) => stream.upload(&mut file, start, &master)?,
                    // Made from the loaded parameters by the next step.
                    None if options.parameters => self.unmake_master(i)?,
                    None => {}
                }
            }
            let names = self.groups[meta.group].state_names_for(&meta.shape());
            for (n, state) in names.iter().enumerate() {
                let start = file.tensors[&format!("{}.{state}", meta.name)].start;
                stream.upload(&mut file, start, &self.state_bytes(meta, n as u64))?;
            }
            let at = super::CONTROL_HEADER + super::TENSOR_STEP_SIZE * i as u64;
            queue.write_buffer(
                &self.buffers.control,
                at,
                bytemuck::bytes_of(&(plan.steps[i] as u32)),
            );
            if !plan.scalars[i].is_empty() {
                queue.write_buffer(
                    &self.buffers.control,
                    at + 4 * super::SCALAR_WORD as u64,
                    bytemuck::cast_slice(&plan.scalars[i]),
                );
            }
        }
        stream.finish()?;
        if let Some((_, state)) = plan.scaler {
            self.write_scaler_state(state);
        }
        self.groups = plan.groups;
        self.train_mode = plan.train_mode;
        if let (Some(scheduler), Some(loaded)) = (options.scheduler, plan.scheduler) {
            *scheduler = loaded;
        }
        Ok(())
    }

    /// Every check of [`load`](Self::load), and what it will write.
    fn check_checkpoint(
        &self,
        file: &mut CheckpointFile,
        options: &LoadOptions<'_>,
    ) -> Result<LoadPlan> {
        self.check_keys()?;
        let what = file.path.display().to_string();
        let meta = |key: &str| {
            file.metadata.get(key).ok_or_else(|| {
                Error::Input(format!(
                    "{what}: not a wgpu-optim checkpoint (no {key:?} in its metadata)"
                ))
            })
        };
        if meta("format")? != FORMAT {
            return Err(Error::Input(format!(
                "{what}: not a wgpu-optim checkpoint (its format is {:?})",
                meta("format")?
            )));
        }
        if meta("version")? != VERSION {
            return Err(Error::Input(format!(
                "{what}: checkpoint version {:?}; this build reads version {VERSION}",
                meta("version")?
            )));
        }
        let ty = self.groups[0].type_name();
        if meta("optimizer")? != ty {
            return Err(Error::Input(format!(
                "{what}: the checkpoint is of a {} optimizer, this one is {ty}",
                meta("optimizer")?
            )));
        }
        let groups = self.check_groups(&what, meta("param_groups")?)?;

        // Every tensor the optimizer needs, with its dtype and shape; no tensor besides.
        let mut expected = HashSet::new();
        let mut steps = Vec::with_capacity(self.tensors.len());
        let mut scalars = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let step_key = format!("{}.step", t.name);
            file.expect(&step_key, "I64", Some(&[]), 1)?;
            let step = file.read_i64(&step_key)?;
            if !(0..=MAX_STEP as i64).contains(&step) {
                return Err(Error::Input(format!(
                    "{what}: {step_key} is {step}; steps run from 0 to {MAX_STEP}"
                )));
            }
            steps.push(step as u64);
            expected.insert(step_key);
            let mut values = Vec::new();
            for scalar in self.groups[t.group].scalar_names() {
                let key = format!("{}.{scalar}", t.name);
                file.expect(&key, "F32", Some(&[]), 1)?;
                values.push(file.read_f32(&key)?);
                expected.insert(key);
            }
            scalars.push(values);
            let config = &self.groups[t.group];
            let shape = t.shape();
            for state in config.state_names_for(&shape) {
                let key = format!("{}.{state}", t.name);
                let state_shape = config.state_shape(state, &shape);
                let len = state_shape.iter().product::<usize>() as u64;
                let state_shape = t.given_shape.is_some().then_some(&state_shape[..]);
                file.expect(&key, t.state_type.safetensors_name(), state_shape, len)?;
                expected.insert(key);
            }
            if options.parameters || file.tensors.contains_key(&t.name) {
                let dtype = t.types.0.safetensors_name();
                file.expect(&t.name, dtype, t.given_shape.as_deref(), t.len)?;
                expected.insert(t.name.clone());
            }
            let master = format!("{}.master", t.name);
            if file.tensors.contains_key(&master) {
                if !t.master {
                    return Err(Error::Input(format!(
                        "{what}: the checkpoint holds master weights {master:?}, but this optimizer keeps none for {} parameters (build it with Precision::with_master_weights(true) to resume them)",
                        t.types.0
                    )));
                }
                file.expect(&master, "F32", t.given_shape.as_deref(), t.len)?;
                expected.insert(master);
            }
        }
        if let Some(extra) = file.tensors.keys().find(|k| !expected.contains(*k)) {
            return Err(Error::Input(format!(
                "{what}: the checkpoint holds {extra:?}, which belongs to no tensor of this optimizer"
            )));
        }

        if let Some(saved) = file.metadata.get("stochastic_rounding") {
            let mine = self.precision.stochastic_rounding.map(|s| s.to_string());
            if mine.as_ref() != Some(saved) {
                return Err(Error::Input(format!(
                    "{what}: the checkpoint was saved rounding parameters stochastically with seed {saved}, and this optimizer {} (build it with Precision::with_stochastic_rounding(Some({saved})) to repeat the saved run's rounding)",
                    mine.map_or_else(
                        || "rounds to nearest".to_string(),
                        |s| format!("has seed {s}")
                    )
                )));
            }
        }
        let scaler = match file.metadata.get("grad_scaler") {
            Some(json) => Some(scaler_from_json(&what, json)?),
            None if self.scaler.is_some() => {
                return Err(Error::Input(format!(
                    "{what}: the checkpoint holds no grad scaler state, but this optimizer has a grad scaler"
                )));
            }
            None => None,
        };
        let scheduler = match &options.scheduler {
            Some(s) => {
                let json = file.metadata.get("scheduler").ok_or_else(|| {
                    Error::Input(format!("{what}: the checkpoint holds no scheduler state"))
                })?;
                let state: SchedulerState = serde_json::from_str(json)
                    .map_err(|e| Error::Input(format!("{what}: malformed scheduler state: {e}")))?;
                let mut loaded = (*s).clone();
                loaded.load_state(&state)?;
                Some(loaded)
            }
            None => None,
        };
        let train_mode = if self.groups[0].has_modes() {
            match file.metadata.get("train_mode").map(String::as_str) {
                Some("true") => true,
                Some("false") => false,
                Some(other) => {
                    return Err(Error::Input(format!(
                        "{what}: train_mode is {other:?}, not \"true\" or \"false\""
                    )));
                }
                None => {
                    return Err(Error::Input(format!(
                        "{what}: the checkpoint does not say whether its parameters were in train or eval mode (train_mode)"
                    )));
                }
            }
        } else {
            true
        };
        Ok(LoadPlan {
            groups,
            steps,
            scalars,
            train_mode,
            scaler,
            scheduler,
        })
    }

    /// The checkpoint's groups, checked against this optimizer's.
    fn check_groups(&self, what: &str, json: &str) -> Result<Vec<OptimizerConfig>> {
        let bad = |e: String| Error::Input(format!("{what}: malformed param_groups: {e}"));
        let list: Vec<Map<String, Value>> =
            serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        if list.len() != self.groups.len() {
            return Err(Error::Input(format!(
                "{what}: the checkpoint has {} parameter groups, this optimizer {}",
                list.len(),
                self.groups.len()
            )));
        }
        let mut out = Vec::with_capacity(list.len());
        for (g, mut object) in list.into_iter().enumerate() {
            let names: Vec<String> = match object.remove("params") {
                Some(v) => serde_json::from_value(v).map_err(|e| bad(e.to_string()))?,
                None => return Err(bad(format!("group {g} has no \"params\""))),
            };
            let ours: HashSet<&str> = self
                .tensors
                .iter()
                .filter(|t| t.group == g)
                .map(|t| t.name.as_str())
                .collect();
            let theirs: HashSet<&str> = names.iter().map(String::as_str).collect();
            if let Some(n) = ours.iter().find(|n| !theirs.contains(**n)) {
                return Err(Error::Input(format!(
                    "{what}: tensor {n:?} is not in the checkpoint's group {g}"
                )));
            }
            if let Some(n) = theirs.iter().find(|n| !ours.contains(**n)) {
                return Err(Error::Input(format!(
                    "{what}: the checkpoint's group {g} holds {n:?}, which this optimizer's group {g} lacks"
                )));
            }
            if names.len() != theirs.len() {
                return Err(bad(format!("group {g} names a tensor twice")));
            }
            object.insert("type".into(), self.groups[g].type_name().into());
            let config: OptimizerConfig =
                serde_json::from_value(Value::Object(object)).map_err(|e| bad(e.to_string()))?;
            config.validate()?;
            if config.kernel() != self.groups[g].kernel() {
                return Err(Error::Input(format!(
                    "{what}: group {g} of the checkpoint keeps other state buffers ({}) than this optimizer's ({})",
                    config.state_names().join(", "),
                    self.groups[g].state_names().join(", ")
                )));
            }
            out.push(config);
        }
        Ok(out)
    }
}

/// What [`Optimizer::load`] writes once every check has passed.
struct LoadPlan {
    groups: Vec<OptimizerConfig>,
    steps: Vec<u64>,
    /// Each tensor's scalar state, in its class's order.
    scalars: Vec<Vec<f32>>,
    /// The mode the parameters were saved in (true for classes without modes).
    train_mode: bool,
    scaler: Option<(GradScaler, GradScalerState)>,
    scheduler: Option<Scheduler>,
}

/// Parses the `grad_scaler` metadata.
fn scaler_from_json(what: &str, json: &str) -> Result<(GradScaler, GradScalerState)> {
    let r: ScalerRecord = serde_json::from_str(json)
        .map_err(|e| Error::Input(format!("{what}: malformed grad_scaler state: {e}")))?;
    let scale = r.scale as f32;
    if !(scale > 0.0 && scale.is_finite()) || r.growth_tracker < 0 {
        return Err(Error::Input(format!(
            "{what}: grad_scaler state with scale {} and growth tracker {}: the scale must be positive and finite, the tracker at least 0",
            r.scale, r.growth_tracker
        )));
    }
    let config = GradScaler {
        init_scale: f64::from(scale),
        growth_factor: r.growth_factor,
        backoff_factor: r.backoff_factor,
        growth_interval: r.growth_interval,
        enabled: true,
    };
    config.validate()?;
    Ok((
        config,
        GradScalerState {
            scale,
            growth_tracker: r.growth_tracker,
        },
    ))
}

impl SavePlan {
    /// Streams the checkpoint to `path`, through a temporary file beside it.
    fn write(mut self, path: &Path) -> Result<()> {
        let control = self
            .ctx
            .read_words(&[(&self.control.0, 0, self.control.1 / 4)])?;
        if let Some(scaler) = self.scaler {
            let record = ScalerRecord {
                scale: f64::from(f32::from_bits(control[0])),
                growth_factor: scaler.growth_factor,
                backoff_factor: scaler.backoff_factor,
                growth_interval: scaler.growth_interval,
                growth_tracker: control[1] as i32,
            };
            let json = serde_json::to_string(&record)
                .map_err(|e| Error::Input(format!("cannot write the grad scaler state: {e}")))?;
            self.metadata.insert("grad_scaler".into(), json);
        }
        let word = |i: usize, k: usize| {
            control[(super::CONTROL_HEADER / 4) as usize
                + (super::TENSOR_STEP_SIZE / 4) as usize * i
                + k]
        };

        let mut header = Map::new();
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(&self.metadata).unwrap_or_default(),
        );
        let mut at = 0u64;
        for e in &self.entries {
            let bytes = match &e.source {
                Source::Step(_) => 8,
                Source::Scalar(..) => 4,
                Source::Gpu(ranges) => ranges.iter().map(|r| r.2).sum(),
            };
            header.insert(
                e.name.clone(),
                serde_json::json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [at, at + bytes]}),
            );
            at += bytes;
        }
        let mut json = Value::Object(header).to_string().into_bytes();
        // Data starts 8-byte aligned, as the safetensors crate pads it.
        json.resize(json.len().next_multiple_of(8), b' ');

        let partial = partial_path(path);
        let io = |source| Error::Io {
            path: partial.display().to_string(),
            source,
        };
        let result = (|| {
            let mut out = BufWriter::new(File::create(&partial).map_err(io)?);
            out.write_all(&(json.len() as u64).to_le_bytes())
                .map_err(io)?;
            out.write_all(&json).map_err(io)?;
            for e in &self.entries {
                match &e.source {
                    Source::Step(i) => out
                        .write_all(&i64::from(word(*i, 0)).to_le_bytes())
                        .map_err(io)?,
                    Source::Scalar(i, k) => out
                        .write_all(&word(*i, super::SCALAR_WORD + *k).to_le_bytes())
                        .map_err(io)?,
                    Source::Gpu(ranges) => {
                        let ranges: Vec<_> = ranges.iter().map(|(b, o, n)| (b, *o, *n)).collect();
                        self.ctx.read_stream(&ranges, STREAM_CHUNK, |data| {
                            out.write_all(data).map_err(io)
                        })?;
                    }
                }
            }
            out.into_inner()
                .map_err(|e| io(e.into_error()))?
                .sync_all()
                .map_err(io)?;
            std::fs::rename(&partial, path).map_err(|source| Error::Io {
                path: path.display().to_string(),
                source,
            })
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

/// A tensor's entry in a safetensors header.
struct TensorInfo {
    dtype: String,
    shape: Vec<usize>,
    /// Byte offset of its data in the file.
    start: u64,
}

/// A checkpoint file opened for loading: its header parsed and checked against its length.
struct CheckpointFile {
    path: PathBuf,
    file: File,
    metadata: HashMap<String, String>,
    tensors: HashMap<String, TensorInfo>,
}

impl CheckpointFile {
    fn open(path: &Path) -> Result<Self> {
        let what = path.display().to_string();
        let io = |source| Error::Io {
            path: what.clone(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let bad =
            |why: String| Error::Input(format!("{what}: not a valid safetensors file: {why}"));
        let mut n = [0u8; 8];
        file.read_exact(&mut n)
            .map_err(|_| bad("shorter than its header's length".into()))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER || 8 + n > len {
            return Err(bad(format!(
                "a header of {n} bytes does not fit a {len}-byte file (truncated?)"
            )));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(io)?;
        let header: Map<String, Value> =
            serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
        let data_start = 8 + n;
        let mut metadata = HashMap::new();
        let mut tensors = HashMap::new();
        for (name, value) in header {
            if name == "__metadata__" {
                metadata = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
                continue;
            }
            #[derive(serde::Deserialize)]
            struct Raw {
                dtype: String,
                shape: Vec<usize>,
                data_offsets: (u64, u64),
            }
            let raw: Raw =
                serde_json::from_value(value).map_err(|e| bad(format!("tensor {name:?}: {e}")))?;
            let (start, end) = raw.data_offsets;
            let size = match raw.dtype.as_str() {
                "F64" | "I64" | "U64" => Some(8),
                "F32" | "I32" | "U32" => Some(4),
                "F16" | "BF16" | "I16" | "U16" => Some(2),
                "I8" | "U8" | "BOOL" => Some(1),
                _ => None,
            };
            let elements = raw
                .shape
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64));
            let bytes = size.and_then(|s| elements?.checked_mul(s));
            if end < start || bytes.is_some_and(|b| b != end - start) {
                return Err(bad(format!(
                    "tensor {name:?}: data offsets {start}..{end} do not hold its {} of shape {:?}",
                    raw.dtype, raw.shape
                )));
            }
            if data_start + end > len {
                return Err(Error::Input(format!(
                    "{what}: truncated: tensor {name:?} ends at byte {}, the file has {len}",
                    data_start + end
                )));
            }
            tensors.insert(
                name,
                TensorInfo {
                    dtype: raw.dtype,
                    shape: raw.shape,
                    start: data_start + start,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            metadata,
            tensors,
        })
    }

    /// Checks that tensor `key` exists with `dtype`, and with `shape` if given, else with
    /// `len` elements.
    fn expect(&self, key: &str, dtype: &str, shape: Option<&[usize]>, len: u64) -> Result<()> {
        let what = self.path.display();
        let info = self
            .tensors
            .get(key)
            .ok_or_else(|| Error::Input(format!("{what}: the checkpoint lacks tensor {key:?}")))?;
        if info.dtype != dtype {
            return Err(Error::Input(format!(
                "{what}: tensor {key:?} is {}, expected {dtype}",
                info.dtype
            )));
        }
        let elements = info
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let fits = match shape {
            Some(shape) => info.shape == shape,
            None => elements == Some(len),
        };
        if !fits {
            let expected = shape.map_or_else(|| format!("{len} elements"), |s| format!("{s:?}"));
            return Err(Error::Input(format!(
                "{what}: tensor {key:?} has shape {:?}, expected {expected}",
                info.shape
            )));
        }
        Ok(())
    }

    /// Reads the I64 scalar `key`.
    fn read_i64(&mut self, key: &str) -> Result<i64> {
        let mut bytes = [0u8; 8];
        self.read_at(self.tensors[key].start, &mut bytes)?;
        Ok(i64::from_le_bytes(bytes))
    }

    fn read_f32(&mut self, key: &str) -> Result<f32> {
        let mut bytes = [0u8; 4];
        self.read_at(self.tensors[key].start, &mut bytes)?;
        Ok(f32::from_le_bytes(bytes))
    }

    fn read_at(&mut self, at: u64, into: &mut [u8]) -> Result<()> {
        let io = |source| Error::Io {
            path: self.path.display().to_string(),
            source,
        };
        self.file.seek(SeekFrom::Start(at)).map_err(io)?;
        self.file.read_exact(into).map_err(io)
    }
}

/// Writes file data into GPU buffers through one bounded host buffer, submitting and waiting
/// every [`STREAM_CHUNK`] bytes so that wgpu's staging memory stays bounded too.
struct Uploader<'a> {
    ctx: &'a Context,
    chunk: Vec<u8>,
    unsubmitted: u64,
}

impl<'a> Uploader<'a> {
    fn new(ctx: &'a Context) -> Self {
        Self {
            ctx,
            chunk: Vec::new(),
            unsubmitted: 0,
        }
    }

    /// Copies consecutive data starting at byte `at` of the file into `targets`, `(buffer,
    /// byte offset, bytes)`, in order. A target of 16-bit elements that starts or ends inside
    /// a word gets its first or last element written with the rest of that word as it is
    /// ([`Context::write_halves`], which reads the word back).
    fn upload(
        &mut self,
        file: &mut CheckpointFile,
        mut at: u64,
        targets: &[(&wgpu::Buffer, u64, u64)],
    ) -> Result<()> {
        for &(buffer, mut offset, mut bytes) in targets {
            let end = at + bytes;
            if bytes > 0 && offset % 4 == 2 {
                let mut head = [0u8; 2];
                file.read_at(at, &mut head)?;
                self.ctx.write_halves(buffer, offset, &head)?;
                (at, offset, bytes) = (at + 2, offset + 2, bytes - 2);
            }
            if bytes > 0 && (offset + bytes) % 4 == 2 {
                let mut tail = [0u8; 2];
                file.read_at(at + bytes - 2, &mut tail)?;
                self.ctx.write_halves(buffer, offset + bytes - 2, &tail)?;
                bytes -= 2;
            }
            let mut done = 0;
            while done < bytes {
                let n = (bytes - done).min(STREAM_CHUNK);
                self.chunk.resize(n as usize, 0);
                file.read_at(at, &mut self.chunk)?;
                self.ctx
                    .queue()
                    .write_buffer(buffer, offset + done, &self.chunk);
                at += n;
                done += n;
                self.unsubmitted += n;
                if self.unsubmitted >= STREAM_CHUNK {
                    self.flush()?;
                }
            }
            at = end;
        }
        Ok(())
    }

    /// Submits the pending writes and waits for them.
    fn flush(&mut self) -> Result<()> {
        let index = self.ctx.queue().submit([]);
        self.ctx
            .device()
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| Error::Gpu(e.to_string()))?;
        self.unsubmitted = 0;
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        if self.unsubmitted > 0 {
            self.flush()?;
        }
        Ok(())
    }
}
