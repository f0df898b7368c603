//! The crate's error type.

/// Everything that can go wrong in this crate. Whenever an `Error` is returned, nothing on the
/// GPU or in the optimizer has been modified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A hyperparameter failed one of PyTorch's own checks. The message is PyTorch's, e.g.
    /// `Invalid learning rate: -1.0`.
    #[error("{0}")]
    InvalidHyperparameter(String),

    /// A tensor's parameter and gradient ranges have different lengths.
    #[error("tensor {tensor}: parameter has {param_len} elements but gradient has {grad_len}")]
    LengthMismatch {
        /// Index of the tensor in the optimizer (over all groups, in order).
        tensor: usize,
        /// Elements in the parameter range.
        param_len: u64,
        /// Elements in the gradient range.
        grad_len: u64,
    },

    /// A buffer lacks a usage flag that the kernels need.
    #[error("tensor {tensor}: {role} buffer lacks the {usage} usage")]
    MissingUsage {
        /// Index of the tensor in the optimizer.
        tensor: usize,
        /// `"parameter"` or `"gradient"`.
        role: &'static str,
        /// The missing flag, e.g. `STORAGE`.
        usage: &'static str,
    },

    /// A tensor's range does not lie inside its buffer, or is not 4-byte aligned.
    #[error(
        "tensor {tensor}: {role} range at byte offset {offset} with {len} f32 elements does not fit a {buffer_size}-byte buffer at 4-byte alignment"
    )]
    OutOfRange {
        /// Index of the tensor in the optimizer.
        tensor: usize,
        /// `"parameter"` or `"gradient"`.
        role: &'static str,
        /// Byte offset of the range.
        offset: u64,
        /// Elements in the range.
        len: u64,
        /// Size of the buffer in bytes.
        buffer_size: u64,
    },

    /// Two ranges that the kernels write overlap: two parameters, or a parameter and a gradient.
    #[error("tensor {first} and tensor {second} overlap in the same buffer ({what})")]
    Overlap {
        /// The first tensor's index.
        first: usize,
        /// The second tensor's index (may equal `first` when its parameter and gradient overlap).
        second: usize,
        /// Which ranges overlap.
        what: &'static str,
    },

    /// A tensor or buffer is larger than the device's limits allow.
    #[error("{what} needs {bytes} bytes but the device allows at most {limit} ({limit_name})")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Bytes needed.
        bytes: u64,
        /// The device limit in bytes.
        limit: u64,
        /// Name of the `wgpu::Limits` field.
        limit_name: &'static str,
    },

    /// The device's limits are too low for a kernel (for example too few storage buffers per
    /// shader stage), or it lacks a feature asked for (`SHADER_F16` for the native f16 path).
    #[error("the device does not support {0}")]
    Unsupported(String),

    /// Parameter groups of one optimizer name different optimizer types.
    #[error("parameter group {group} is {found} but the optimizer is {expected}")]
    MixedOptimizers {
        /// The offending group.
        group: usize,
        /// The optimizer type of group 0.
        expected: &'static str,
        /// The optimizer type of this group.
        found: &'static str,
    },

    /// A change to a parameter group would change which state buffers exist (for example
    /// turning `amsgrad` on after construction).
    #[error("parameter group {group}: {what} cannot change after the optimizer is built")]
    StructuralChange {
        /// The group.
        group: usize,
        /// What the change tried to alter.
        what: &'static str,
    },

    /// An index names no tensor or group.
    #[error("there is no {what} {index} (the optimizer has {count})")]
    NoSuchIndex {
        /// `"tensor"` or `"group"`.
        what: &'static str,
        /// The index asked for.
        index: usize,
        /// How many exist.
        count: usize,
    },

    /// A state name that this optimizer does not keep for the tensor.
    #[error("{optimizer} keeps no state named {name:?} (it keeps {known})")]
    UnknownState {
        /// The name asked for.
        name: String,
        /// The optimizer type.
        optimizer: &'static str,
        /// The names it does keep, comma separated.
        known: String,
    },

    /// State values of the wrong length.
    #[error("state {name:?} of tensor {tensor} has {expected} elements, got {found}")]
    StateLength {
        /// The state name.
        name: String,
        /// The tensor.
        tensor: usize,
        /// Its length.
        expected: u64,
        /// Length supplied.
        found: u64,
    },

    /// No adapter matched the request.
    #[error("no GPU adapter found{0}")]
    NoAdapter(String),

    /// The adapter refused to create a device.
    #[error("could not create a device: {0}")]
    RequestDevice(String),

    /// wgpu reported an error (out of memory, validation) while this crate created resources or
    /// read them back.
    #[error("wgpu error: {0}")]
    Gpu(String),

    /// A malformed or inconsistent input file or spec (used by the CLI's `replay`).
    #[error("{0}")]
    Input(String),

    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Shorthand for `std::result::Result<T, Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
