//! GPU plumbing: the per-device [`Context`] with its pipeline cache, device setup, and readback.

mod kernels;
pub(crate) mod plan;
pub(crate) mod template;

pub(crate) use kernels::{
    Binds, CompiledKernel, EDGES, FactorPass, GradAccess, Layout, Module, Pipeline, SINGLE,
};

use crate::dtype::DType;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How kernels read and write the parameter, gradient and state buffers.
///
/// Both modes compute the same values; they differ in speed. [`Vec4`](Self::Vec4), the
/// default, measured faster on every adapter tried so far (notes/bandwidth.md); tensors that
/// cannot use it (see there) run with [`Scalar`](Self::Scalar).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Access {
    /// One `f32` element per invocation. Works for any offsets and lengths.
    Scalar,
    /// One 16-byte `vec4<f32>` per invocation, writing single lanes only where a tensor starts
    /// or ends inside a vec4. Used for a tensor when its parameter and gradient byte offsets
    /// agree modulo 16, both ranges can be bound rounded out to 16 bytes inside their buffers,
    /// and the device's `min_storage_buffer_offset_alignment` is a multiple of 16.
    #[default]
    Vec4,
}

impl Access {
    /// Elements per invocation: 1 or 4.
    pub fn lanes(self) -> u64 {
        match self {
            Self::Scalar => 1,
            Self::Vec4 => 4,
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Scalar => "scalar",
            Self::Vec4 => "vec4",
        })
    }
}

impl std::str::FromStr for Access {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "scalar" => Ok(Self::Scalar),
            "vec4" => Ok(Self::Vec4),
            _ => Err(Error::Input(format!(
                "unknown access mode {s:?} (expected scalar or vec4)"
            ))),
        }
    }
}

/// How kernels load and store f16 parameters, gradients and state.
///
/// Both ways of storing f16 hold the same bytes and compute the same values: loads widen
/// exactly, and stores round to nearest even by the same integer operations
/// (shaders/dtype.wgsl), because WGSL leaves the rounding of its own `f32` to `f16` conversion
/// to the implementation. They differ in how the elements are addressed, and so in speed. On
/// lavapipe (`wgpu-optim bench`, f16 Adam timed in turn with the packed path): with vec4
/// access the native path took 1.20 times as long as the packed one, and with scalar access
/// 0.39 times, where the packed path stores single elements with atomics. The default,
/// [`Auto`](Self::Auto), takes the faster of each: 1.01 and 0.39 times the packed path's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum F16Path {
    /// [`Native`](Self::Native) where elements are addressed one at a time (with
    /// [`Access::Scalar`], and at the edges of segments with [`Access::Vec4`]), and
    /// [`Packed`](Self::Packed) for whole vec4 units, on a device with
    /// [`SHADER_F16`](wgpu::Features::SHADER_F16); packed everywhere on other devices.
    #[default]
    Auto,
    /// f16 pairs packed in `u32` words: every adapter has it. A store of one element beside
    /// another's changes its own half of the word with two atomic operations.
    Packed,
    /// `f16` storage arrays, with loads widened by the hardware and single elements stored
    /// directly. Needs the device's [`SHADER_F16`](wgpu::Features::SHADER_F16) feature.
    Native,
}

impl F16Path {
    /// Whether an f16 binding is an `f16` array on this path: `units` when the kernel moves
    /// whole vec4 units of it, else single elements.
    pub(crate) fn native_for(self, units: bool) -> bool {
        match self {
            Self::Auto => !units,
            Self::Packed => false,
            Self::Native => true,
        }
    }
}

impl std::fmt::Display for F16Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Packed => "packed",
            Self::Native => "native",
        })
    }
}

impl std::str::FromStr for F16Path {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "packed" => Ok(Self::Packed),
            "native" => Ok(Self::Native),
            _ => Err(Error::Input(format!(
                "unknown f16 path {s:?} (expected auto, packed or native)"
            ))),
        }
    }
}

/// The device and queue this crate records on, with its cache of shader modules, bind group
/// layouts and pipelines.
///
/// Make one `Context` per device and share it (it is cheap to clone): every kernel is compiled
/// once per `Context`, the first time an optimizer needs it. The context reads the device's own
/// limits; to use large tensors, create the device with the adapter's limits
/// (`required_limits: adapter.limits()`), not wgpu's defaults.
///
/// Each context also carries the [`Access`] mode its optimizers use ([`Access::Vec4`] unless
/// [`with_access`](Self::with_access) says otherwise).
#[derive(Clone, Debug)]
pub struct Context {
    inner: Arc<Inner>,
    access: Access,
    f16_path: F16Path,
}

#[derive(Debug)]
struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    limits: wgpu::Limits,
    modules: Mutex<HashMap<Module, wgpu::ShaderModule>>,
    layouts: Mutex<HashMap<Layout, wgpu::BindGroupLayout>>,
    kernels: Mutex<HashMap<Pipeline, Arc<CompiledKernel>>>,
}

impl Context {
    /// Wraps the caller's device and queue. Nothing is compiled until an optimizer needs it.
    /// Its optimizers use [`Access::Vec4`] where they can.
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
        Self {
            access: Access::default(),
            f16_path: F16Path::default(),
            inner: Arc::new(Inner {
                device: device.clone(),
                queue: queue.clone(),
                limits: device.limits(),
                modules: Mutex::new(HashMap::new()),
                layouts: Mutex::new(HashMap::new()),
                kernels: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Finds an adapter and creates a device with the adapter's full limits, for programs that
    /// do not bring their own device (the CLI, tests, examples).
    ///
    /// `backends` limits the search (for example `wgpu::Backends::VULKAN`); `adapter` keeps only
    /// adapters whose name contains that substring (case-insensitive). Of the rest, a discrete
    /// GPU is preferred, then integrated, virtual, and CPU devices; Vulkan, Metal and DX12
    /// adapters come before GL ones. The device has `SHADER_F16` where the adapter does, for
    /// [`F16Path::Native`].
    pub fn request(
        backends: wgpu::Backends,
        adapter: Option<&str>,
    ) -> Result<(Self, wgpu::AdapterInfo)> {
        Self::request_with_features(backends, adapter, wgpu::Features::SHADER_F16)
    }

    /// As [`request`](Self::request), also enabling those of the `optional` features that the
    /// chosen adapter has (for example `TIMESTAMP_QUERY` for benchmarks); the device's
    /// [`features`](wgpu::Device::features) tell which were enabled.
    pub fn request_with_features(
        backends: wgpu::Backends,
        adapter: Option<&str>,
        optional: wgpu::Features,
    ) -> Result<(Self, wgpu::AdapterInfo)> {
        let wanted = adapter.map(str::to_lowercase);
        let rank = |t: wgpu::DeviceType| match t {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 3,
            wgpu::DeviceType::Other => 4,
        };
        // Primary backends (Vulkan, Metal, DX12) first; GL only when none of them has a match.
        let chosen = [
            backends & wgpu::Backends::PRIMARY,
            backends - wgpu::Backends::PRIMARY,
        ]
        .into_iter()
        .filter(|b| !b.is_empty())
        .find_map(|b| {
            let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
                backends: b,
                ..wgpu::InstanceDescriptor::new_without_display_handle()
            });
            pollster::block_on(instance.enumerate_adapters(b))
                .into_iter()
                .filter(|a| {
                    wanted
                        .as_ref()
                        .is_none_or(|w| a.get_info().name.to_lowercase().contains(w))
                })
                .min_by_key(|a| rank(a.get_info().device_type))
        })
        .ok_or_else(|| {
            Error::NoAdapter(match adapter {
                Some(name) => format!(" matching {name:?} for backends {backends:?}"),
                None => format!(" for backends {backends:?}"),
            })
        })?;
        let info = chosen.get_info();
        let (device, queue) = pollster::block_on(chosen.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgpu-optim"),
            required_features: optional & chosen.features(),
            required_limits: chosen.limits(),
            ..Default::default()
        }))
        .map_err(|e| Error::RequestDevice(e.to_string()))?;
        Ok((Self::new(&device, &queue), info))
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// This context with another access mode for the optimizers made with it afterwards. The
    /// two share their caches of compiled kernels.
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// The access mode optimizers made with this context use where they can.
    pub fn access(&self) -> Access {
        self.access
    }

    /// This context with another [`F16Path`] for the optimizers made with it afterwards
    /// ([`F16Path::Auto`] unless this says otherwise). The two share their caches of compiled
    /// kernels. [`F16Path::Native`] is an
    /// [`Error::Unsupported`] where the device was created without
    /// [`SHADER_F16`](wgpu::Features::SHADER_F16); the context is then unchanged.
    pub fn with_f16_path(mut self, path: F16Path) -> Result<Self> {
        if path == F16Path::Native && !self.has_native_f16() {
            return Err(Error::Unsupported(
                "the native f16 path (it needs the SHADER_F16 feature)".into(),
            ));
        }
        self.f16_path = path;
        Ok(self)
    }

    /// The path optimizers made with this context use for f16 storage, as asked for:
    /// [`F16Path::Auto`] stays `Auto` on a device without `SHADER_F16`, where it packs.
    pub fn f16_path(&self) -> F16Path {
        self.f16_path
    }

    /// The path a batch with f16 bindings takes: the context's, but packed where `Auto` has no
    /// native path to take.
    pub(crate) fn f16_path_taken(&self) -> F16Path {
        match self.f16_path {
            F16Path::Auto if !self.has_native_f16() => F16Path::Packed,
            path => path,
        }
    }

    /// Whether the device has the feature the native f16 path needs.
    pub fn has_native_f16(&self) -> bool {
        self.device()
            .features()
            .contains(wgpu::Features::SHADER_F16)
    }

    /// The device's limits, read once when the context was made.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// The compiled pipeline, compiling it on first use.
    pub(crate) fn kernel(&self, pipeline: Pipeline) -> Result<Arc<CompiledKernel>> {
        let mut cache = self.inner.kernels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = cache.get(&pipeline) {
            return Ok(k.clone());
        }
        let compiled = Arc::new(kernels::compile(self, pipeline)?);
        cache.insert(pipeline, compiled.clone());
        Ok(compiled)
    }

    /// A bind group layout, created on first use.
    pub(crate) fn layout(&self, layout: Layout) -> wgpu::BindGroupLayout {
        let mut cache = self.inner.layouts.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(layout)
            .or_insert_with(|| {
                self.device()
                    .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                        label: Some(&format!("wgpu-optim {layout:?}")),
                        entries: &layout.entries(),
                    })
            })
            .clone()
    }

    /// A shader module, created on first use.
    pub(crate) fn module(&self, module: Module) -> wgpu::ShaderModule {
        let mut cache = self.inner.modules.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(module)
            .or_insert_with(|| {
                self.device()
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(&module.label()),
                        source: wgpu::ShaderSource::Wgsl(module.source().into()),
                    })
            })
            .clone()
    }

    /// Copies f32 ranges out of GPU buffers and waits for them: `(buffer, byte offset,
    /// elements)`. The buffers need `COPY_SRC`. This blocks; use it for checkpoints and tests,
    /// not in a training loop. Large reads go through several staging buffers, each within
    /// `max_buffer_size`.
    pub fn read_f32(&self, ranges: &[(&wgpu::Buffer, u64, u64)]) -> Result<Vec<f32>> {
        Ok(self
            .read_words(ranges)?
            .into_iter()
            .map(f32::from_bits)
            .collect())
    }

    /// As [`read_f32`](Self::read_f32), for any 4-byte words.
    pub(crate) fn read_words(&self, ranges: &[(&wgpu::Buffer, u64, u64)]) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(ranges.iter().map(|r| r.2 as usize).sum());
        let bytes: Vec<_> = ranges
            .iter()
            .map(|&(b, o, len)| (b, o, len.saturating_mul(4)))
            .collect();
        self.read_stream(&bytes, READ_CHUNK, |data| {
            out.extend(
                data.chunks_exact(4)
                    .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])),
            );
            Ok(())
        })?;
        Ok(out)
    }

    /// Copies byte ranges out of GPU buffers, `(buffer, byte offset, bytes)`, each a multiple
    /// of 2 (of 16-bit elements), and hands them to `sink` in order, in pieces that go through
    /// one staging buffer of at most `chunk` bytes: the host holds one piece at a time. Copies
    /// move whole 4-byte words; the halves of words outside a range are left out. The buffers
    /// need `COPY_SRC`. Blocks.
    pub(crate) fn read_stream(
        &self,
        ranges: &[(&wgpu::Buffer, u64, u64)],
        chunk: u64,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        for &(buffer, offset, bytes) in ranges {
            let end = offset.checked_add(bytes);
            if !offset.is_multiple_of(2)
                || !bytes.is_multiple_of(2)
                || end.is_none_or(|end| end.next_multiple_of(4) > buffer.size())
            {
                return Err(Error::Input(format!(
                    "read of {bytes} bytes at byte offset {offset} is outside a {}-byte buffer",
                    buffer.size()
                )));
            }
        }
        // Whole words, and the spans of the words' stream to leave out, in order.
        let mut words = Vec::with_capacity(ranges.len());
        let mut skip: Vec<(u64, u64)> = Vec::new();
        let mut at = 0;
        for &(buffer, offset, bytes) in ranges {
            let (start, end) = (offset & !3, (offset + bytes).next_multiple_of(4));
            if offset > start {
                skip.push((at, at + offset - start));
            }
            if end > offset + bytes {
                skip.push((at + offset + bytes - start, at + end - start));
            }
            words.push((buffer, start, end - start));
            at += end - start;
        }
        if skip.is_empty() {
            return self.read_words_stream(&words, chunk, sink);
        }
        let mut at = 0;
        self.read_words_stream(&words, chunk, |data| {
            let (from, to) = (at, at + data.len() as u64);
            let mut cursor = from;
            for &(a, b) in skip.iter().filter(|(a, b)| *b > from && *a < to) {
                if a > cursor {
                    sink(&data[(cursor - from) as usize..(a - from) as usize])?;
                }
                cursor = cursor.max(b);
            }
            if cursor < to {
                sink(&data[(cursor - from) as usize..])?;
            }
            at = to;
            Ok(())
        })
    }

    /// As [`read_stream`](Self::read_stream), for ranges of whole words.
    fn read_words_stream(
        &self,
        ranges: &[(&wgpu::Buffer, u64, u64)],
        chunk: u64,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        for &(buffer, offset, bytes) in ranges {
            if !buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
                return Err(Error::Input(
                    "buffer to read lacks the COPY_SRC usage".into(),
                ));
            }
            let end = offset.checked_add(bytes);
            if !offset.is_multiple_of(4)
                || !bytes.is_multiple_of(4)
                || end.is_none_or(|end| end > buffer.size())
            {
                return Err(Error::Input(format!(
                    "read of {bytes} bytes at byte offset {offset} is outside a {}-byte buffer",
                    buffer.size()
                )));
            }
        }
        // At most max_buffer_size, and a multiple of 4.
        let chunk = (chunk.min(self.limits().max_buffer_size) & !3).max(4);
        let total: u64 = ranges.iter().map(|r| r.2).sum();
        if total == 0 {
            return Ok(());
        }
        let device = self.device();
        let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-optim readback"),
            size: chunk.min(total),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(e.to_string()));
        }
        let mut pending: Vec<(&wgpu::Buffer, u64, u64)> = Vec::new();
        let mut pending_len = 0;
        for &(buffer, offset, bytes) in ranges {
            let mut done = 0;
            while done < bytes {
                let n = (bytes - done).min(chunk - pending_len);
                pending.push((buffer, offset + done, n));
                pending_len += n;
                done += n;
                if pending_len == chunk {
                    self.read_chunk(&staging, &pending, pending_len, &mut sink)?;
                    pending.clear();
                    pending_len = 0;
                }
            }
        }
        if pending_len > 0 {
            self.read_chunk(&staging, &pending, pending_len, &mut sink)?;
        }
        Ok(())
    }

    /// Reads `ranges`, holding `total` bytes, through `staging`, and hands them to `sink`.
    fn read_chunk(
        &self,
        staging: &wgpu::Buffer,
        ranges: &[(&wgpu::Buffer, u64, u64)],
        total: u64,
        sink: &mut impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let device = self.device();
        let mut encoder = device.create_command_encoder(&Default::default());
        let mut at = 0;
        for &(buffer, offset, bytes) in ranges {
            encoder.copy_buffer_to_buffer(buffer, offset, staging, at, bytes);
            at += bytes;
        }
        let index = self.queue().submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, ..total, move |r| {
            let _ = tx.send(r);
        });
        device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| Error::Gpu(e.to_string()))?;
        rx.recv()
            .map_err(|e| Error::Gpu(e.to_string()))?
            .map_err(|e| Error::Gpu(e.to_string()))?;
        let data = staging
            .get_mapped_range(..total)
            .map_err(|e| Error::Gpu(e.to_string()))?;
        let result = sink(&data[..]);
        drop(data);
        staging.unmap();
        result
    }

    /// Elements of `dtype` out of GPU buffers, `(buffer, first element, elements)`, widened to
    /// f32. Blocks.
    pub(crate) fn read_typed(
        &self,
        ranges: &[(&wgpu::Buffer, u64, u64)],
        dtype: DType,
    ) -> Result<Vec<f32>> {
        let size = dtype.size();
        let bytes: Vec<_> = ranges
            .iter()
            .map(|&(b, first, len)| (b, first * size, len * size))
            .collect();
        let mut out = Vec::with_capacity(ranges.iter().map(|r| r.2 as usize).sum());
        // A piece may end inside an element; its rest comes with the next piece.
        let mut carry: Vec<u8> = Vec::new();
        self.read_stream(&bytes, READ_CHUNK, |data| {
            carry.extend_from_slice(data);
            let whole = carry.len() / size as usize * size as usize;
            out.extend(dtype.decode(&carry[..whole]));
            carry.drain(..whole);
            Ok(())
        })?;
        Ok(out)
    }

    /// Writes `data` (whole elements of 2 or 4 bytes) into `buffer` at byte `offset`, a
    /// multiple of 2, with [`wgpu::Queue::write_buffer`], which writes whole words: where the
    /// range starts or ends inside a word, that word's other half is read back first (this
    /// blocks) and written unchanged.
    pub(crate) fn write_halves(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        let (start, end) = (
            offset & !3,
            (offset + data.len() as u64).next_multiple_of(4),
        );
        if data.is_empty() {
            return Ok(());
        }
        if start == offset && end == offset + data.len() as u64 {
            self.queue().write_buffer(buffer, offset, data);
            return Ok(());
        }
        let mut words = Vec::with_capacity((end - start) as usize);
        if offset > start {
            let first = self.read_words(&[(buffer, start, 1)])?[0].to_le_bytes();
            words.extend_from_slice(&first[..2]);
        }
        words.extend_from_slice(data);
        if end > offset + data.len() as u64 {
            let last = self.read_words(&[(buffer, end - 4, 1)])?[0].to_le_bytes();
            words.extend_from_slice(&last[2..]);
        }
        self.queue().write_buffer(buffer, start, &words);
        Ok(())
    }

    /// The byte size of a buffer of `elements` f32 values (at least 4), or
    /// [`Error::TooLarge`] past the device's `max_buffer_size`.
    pub(crate) fn check_buffer_size(&self, label: &str, elements: u64) -> Result<u64> {
        let bytes = elements.saturating_mul(4).max(4);
        let limit = self.limits().max_buffer_size;
        if bytes > limit {
            return Err(Error::TooLarge {
                what: format!("buffer {label:?}"),
                bytes,
                limit,
                limit_name: "max_buffer_size",
            });
        }
        Ok(bytes)
    }

    /// Creates a buffer with `STORAGE | COPY_SRC | COPY_DST` usage holding `data`, checking the
    /// device's `max_buffer_size` first.
    pub fn create_f32_buffer(&self, label: &str, data: &[f32]) -> Result<wgpu::Buffer> {
        self.create_byte_buffer(label, bytemuck::cast_slice(data))
    }

    /// As [`create_f32_buffer`](Self::create_f32_buffer), from bytes (padded with zeros to a
    /// whole word).
    pub(crate) fn create_byte_buffer(&self, label: &str, data: &[u8]) -> Result<wgpu::Buffer> {
        let bytes = self.check_buffer_size(label, (data.len() as u64).div_ceil(4))?;
        let device = self.device();
        let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let mut contents: Vec<u8> = data.to_vec();
        contents.resize(bytes as usize, 0);
        let buffer = wgpu::util::DeviceExt::create_buffer_init(
            device,
            &wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            },
        );
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(e.to_string()));
        }
        Ok(buffer)
    }
}

/// Bytes of host-visible memory a readback uses at once.
pub(crate) const READ_CHUNK: u64 = 1 << 28;

/// Runs `f` inside out-of-memory and validation error scopes and reports what they caught.
pub(crate) fn scoped<T>(device: &wgpu::Device, f: impl FnOnce() -> T) -> Result<T> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let value = f();
    let v = pollster::block_on(validation.pop());
    let o = pollster::block_on(oom.pop());
    match o.or(v) {
        Some(e) => Err(Error::Gpu(e.to_string())),
        None => Ok(value),
    }
}
