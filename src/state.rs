//! Per-tensor optimizer state under PyTorch's names.

use std::collections::BTreeMap;

/// The state of one tensor, as `optimizer.state[p]` holds it in PyTorch: the step count and the
/// state buffers by name (`exp_avg`, `exp_avg_sq`, `momentum_buffer`, ...).
///
/// `T` is `f32` for GPU state and `f64` for the [CPU reference](crate::reference).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorState<T> {
    /// Steps taken so far (PyTorch's `step`). PyTorch's SGD keeps no step count; this crate
    /// counts its steps anyway, and SGD's first momentum step is the one with `step == 0`.
    pub step: u64,
    /// State buffers by PyTorch name. Each has as many elements as the parameter.
    pub buffers: BTreeMap<String, Vec<T>>,
    /// Scalar (0-d) state besides the step count, by PyTorch name: NAdam's `mu_product`,
    /// ASGD's `eta` and `mu` ([`OptimizerConfig::scalar_names`](crate::OptimizerConfig::scalar_names)).
    pub scalars: BTreeMap<String, T>,
}

impl<T> TensorState<T> {
    /// The buffer called `name`, if present.
    pub fn get(&self, name: &str) -> Option<&[T]> {
        self.buffers.get(name).map(Vec::as_slice)
    }
}
