//! Storage types of parameters, gradients and state: f32, f16 and bf16.
//!
//! The math is f32 always. A 16-bit value is widened exactly when loaded, and an f32 result
//! is rounded to the nearest 16-bit value, ties to even, when stored, as PyTorch's fused
//! kernels (`torch.optim.Adam(fused=True)`) and its `Tensor.to(dtype)` do. On the GPU both
//! 16-bit types are packed two to a 32-bit word and converted by bit operations
//! (shaders/dtype.wgsl), so every adapter has them and each rounds alike; f16 may instead use
//! the adapter's `shader-f16` arrays ([`F16Path`](crate::F16Path)), with the same rounding.
//! [`DType::round`] is the same rounding on the CPU, for the [reference](crate::reference).

use crate::error::{Error, Result};

/// The type a buffer holds its elements in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// IEEE binary32, `torch.float32`.
    #[default]
    F32,
    /// IEEE binary16, `torch.float16`: 5 exponent and 10 mantissa bits.
    F16,
    /// bfloat16, `torch.bfloat16`: f32's 8 exponent bits and 7 mantissa bits.
    BF16,
}

impl DType {
    /// Every storage type.
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Bytes per element: 4 or 2.
    pub fn size(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// `x` rounded to this type (to nearest, ties to even; beyond f16's range to infinity) and
    /// widened back to f32. NaN stays NaN.
    pub fn round(self, x: f32) -> f32 {
        match self {
            DType::F32 => x,
            DType::F16 => half::f16::from_f32(x).to_f32(),
            DType::BF16 => half::bf16::from_f32(x).to_f32(),
        }
    }

    /// `x` rounded to this type directly from f64 (to nearest, ties to even), widened back.
    /// Rounding through f32 first could round twice; this rounds to f32 toward odd first,
    /// which keeps the result exact.
    pub fn round_f64(self, x: f64) -> f64 {
        let odd = x as f32;
        let odd = if !x.is_finite() || f64::from(odd) == x {
            odd
        } else {
            // The f32 below |x| in magnitude, with its last bit set: that bit stands for
            // everything x had beyond f32's precision.
            let toward_zero = if f64::from(odd).abs() > x.abs() {
                f32::from_bits(odd.to_bits() - 1)
            } else {
                odd
            };
            f32::from_bits(toward_zero.to_bits() | 1)
        };
        match self {
            DType::F32 => f64::from(x as f32),
            _ => f64::from(self.round(odd)),
        }
    }

    /// The stored bits of `x` rounded to this type: the f32 bits, or the 16 bits in the low
    /// half. A NaN is stored as PyTorch stores it: f16 `0x7e00` and bf16 `0x7fc0`, with the
    /// sign for f16 only.
    pub fn bits(self, x: f32) -> u32 {
        match self {
            DType::F32 => x.to_bits(),
            DType::F16 if x.is_nan() => 0x7e00 | (x.to_bits() >> 16 & 0x8000),
            DType::BF16 if x.is_nan() => 0x7fc0,
            DType::F16 => u32::from(half::f16::from_f32(x).to_bits()),
            DType::BF16 => u32::from(half::bf16::from_f32(x).to_bits()),
        }
    }

    /// The value of stored bits (the low 16 for a 16-bit type), exactly.
    pub fn value(self, bits: u32) -> f32 {
        match self {
            DType::F32 => f32::from_bits(bits),
            DType::F16 => half::f16::from_bits(bits as u16).to_f32(),
            DType::BF16 => half::bf16::from_bits(bits as u16).to_f32(),
        }
    }

    /// The spacing of this type's values near `x`: one unit in the last place at `x`'s
    /// magnitude, and the subnormals' spacing below the normal range.
    pub fn spacing(self, x: f64) -> f64 {
        let (mantissa, smallest) = match self {
            DType::F32 => (23, 2f64.powi(-149)),
            DType::F16 => (10, 2f64.powi(-24)),
            DType::BF16 => (7, 2f64.powi(-133)),
        };
        let exponent = x.abs().max(smallest).log2().floor() as i32;
        2f64.powi(exponent - mantissa).max(smallest)
    }

    /// The safetensors name: `F32`, `F16` or `BF16`.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }

    /// `values` rounded to this type, as its little-endian bytes.
    pub(crate) fn encode(self, values: &[f32]) -> Vec<u8> {
        let size = self.size() as usize;
        values
            .iter()
            .flat_map(|&v| self.bits(v).to_le_bytes().into_iter().take(size))
            .collect()
    }

    /// The values of `bytes`, little-endian elements of this type, widened to f32 (exactly); a
    /// trailing partial element is left out.
    pub(crate) fn decode(self, bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
        bytes.chunks_exact(self.size() as usize).map(move |e| {
            let mut word = [0u8; 4];
            word[..e.len()].copy_from_slice(e);
            self.value(u32::from_le_bytes(word))
        })
    }

    /// PyTorch's name: `float32`, `float16` or `bfloat16`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        })
    }
}

impl std::str::FromStr for DType {
    type Err = Error;

    /// `f32`, `f16` or `bf16`, or PyTorch's names (`float32`, `float16`, `half`,
    /// `bfloat16`).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" | "float" => Ok(DType::F32),
            "f16" | "float16" | "half" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            _ => Err(Error::Input(format!(
                "unknown dtype {s:?} (expected f32, f16 or bf16)"
            ))),
        }
    }
}

/// The storage type of an optimizer's state buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StateDType {
    /// Each tensor's state in its parameter's type, as PyTorch keeps it:
    /// `torch.optim.Adam(fused=True)` on bf16 parameters keeps bf16 moments.
    #[default]
    Param,
    /// f32 whatever the parameters' type, as Apex and llm.c keep it.
    F32,
    /// bf16, as torchtitan keeps it: half the memory of f32 state.
    BF16,
}

impl StateDType {
    /// The state's type for a parameter of type `param`.
    pub fn for_param(self, param: DType) -> DType {
        match self {
            StateDType::Param => param,
            StateDType::F32 => DType::F32,
            StateDType::BF16 => DType::BF16,
        }
    }
}

impl std::fmt::Display for StateDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StateDType::Param => "param",
            StateDType::F32 => "f32",
            StateDType::BF16 => "bf16",
        })
    }
}

impl std::str::FromStr for StateDType {
    type Err = Error;

    /// `param`, `f32` or `bf16`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "param" => Ok(StateDType::Param),
            "f32" | "float32" => Ok(StateDType::F32),
            "bf16" | "bfloat16" => Ok(StateDType::BF16),
            _ => Err(Error::Input(format!(
                "unknown state dtype {s:?} (expected param, f32 or bf16)"
            ))),
        }
    }
}

/// How an optimizer keeps what it stores beside the parameters, for 16-bit parameters. With
/// f32 parameters and the default [`StateDType::Param`], everything is f32.
///
/// The default is PyTorch's fused kernels: state in the parameter's type, no master copy,
/// parameters rounded to nearest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Precision {
    /// The state buffers' type.
    pub state: StateDType,
    /// Whether the optimizer keeps an f32 master copy of each 16-bit parameter (as Apex's
    /// `master_weights` and llm.c do). The update then runs on the master copy, and the 16-bit
    /// parameter is written from it in the same kernel. The copy is made by the first step that
    /// runs, from the parameters as they are then (nothing is read back);
    /// [`Optimizer::read_master`] reads it and checkpoints carry it as `<name>.master`. f32 parameters are their own master: asking
    /// for master weights when no parameter is 16-bit is an error.
    ///
    /// [`Optimizer::read_master`]: crate::Optimizer::read_master
    pub master_weights: bool,
    /// With a seed, every 16-bit parameter is rounded stochastically when stored (as llm.c
    /// and torchao's `bf16_stochastic_round` do), rather than to nearest: to one of the two
    /// values around the f32 result, with the probabilities that make the rounding unbiased.
    /// The random bits are [`rounding_bits`] of the seed, the optimizer's step count (its
    /// first tensor's), the tensor's index and the element's index in its tensor, so a run
    /// and a run resumed from a checkpoint round alike. [`DType::round_stochastic`] is the
    /// same rounding on the CPU.
    pub stochastic_rounding: Option<u32>,
}

impl Precision {
    /// State buffers of type `state`.
    pub fn with_state(self, state: StateDType) -> Self {
        Self { state, ..self }
    }

    /// With or without an f32 master copy of each 16-bit parameter (see
    /// [`master_weights`](Self::master_weights)).
    pub fn with_master_weights(self, master_weights: bool) -> Self {
        Self {
            master_weights,
            ..self
        }
    }

    /// 16-bit parameters rounded stochastically with random bits from `seed` (see
    /// [`stochastic_rounding`](Self::stochastic_rounding)), or to nearest with `None`.
    pub fn with_stochastic_rounding(self, seed: Option<u32>) -> Self {
        Self {
            stochastic_rounding: seed,
            ..self
        }
    }
}

/// lowbias32 (Chris Wellons' integer hash): a bijection of u32 whose output bits each depend
/// on every input bit.
fn mix32(x: u32) -> u32 {
    let mut v = x;
    v ^= v >> 16;
    v = v.wrapping_mul(0x7feb_352d);
    v ^= v >> 15;
    v = v.wrapping_mul(0x846c_a68b);
    v ^ (v >> 16)
}

/// The 32 random bits with which stochastic rounding stores element `element` of tensor
/// `tensor` at step `step` of an optimizer seeded with `seed` (see
/// [`Precision::stochastic_rounding`]): a counter-based hash, the same on the GPU
/// (shaders/dtype.wgsl). The element index is taken modulo 2³².
pub fn rounding_bits(seed: u32, step: u32, tensor: u32, element: u32) -> u32 {
    let mut h = mix32(seed ^ 0x9e37_79b9);
    h = mix32(h ^ step);
    h = mix32(h ^ tensor);
    mix32(h ^ element)
}

impl DType {
    /// `x` rounded stochastically to this type with the random bits `r`, widened back: to
    /// the one of the two values around `x` that lies away from zero when `(r >> 8) / 2²⁴` is
    /// below `x`'s distance from the other one, in units of their spacing, so that over
    /// uniform `r` the mean is `x`. A value of the type, NaN, and values beyond the largest
    /// finite value round to nearest. The same as the GPU's (shaders/dtype.wgsl).
    pub fn round_stochastic(self, x: f32, r: u32) -> f32 {
        if self == DType::F32 {
            return x;
        }
        let n = self.bits(x);
        let y = self.value(n);
        if y == x || !y.is_finite() {
            return y;
        }
        // The other value around x: one further from zero, or one nearer.
        let other = if y.abs() > x.abs() { n - 1 } else { n + 1 };
        let z = self.value(other);
        if !z.is_finite() {
            return y;
        }
        let (near, far) = if z.abs() > y.abs() { (y, z) } else { (z, y) };
        // Exact in f32: |x| is within a factor 2 of |near|, or |near| is 0.
        let frac = (x.abs() - near.abs()) / (far.abs() - near.abs());
        if ((r >> 8) as f32) * 2f32.powi(-24) < frac {
            far
        } else {
            near
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even_and_nan_is_pytorchs() {
        // 1 + 2^-8 lies halfway between bf16's 1 and 1 + 2^-7: ties to the even 1.
        assert_eq!(DType::BF16.round(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(
            DType::BF16.round(1.0 + 3.0 * 2f32.powi(-8)),
            1.0 + 2f32.powi(-6)
        );
        // 65520 is halfway between f16's largest finite value and 65536: to infinity.
        assert_eq!(DType::F16.round(65519.0), 65504.0);
        assert_eq!(DType::F16.round(65520.0), f32::INFINITY);
        // f16's smallest subnormal, 2^-24, and half of it, a tie to the even 0.
        assert_eq!(DType::F16.round(2f32.powi(-24)), 2f32.powi(-24));
        assert_eq!(DType::F16.round(2f32.powi(-25)), 0.0);
        assert_eq!(DType::BF16.bits(-f32::NAN), 0x7fc0);
        assert_eq!(DType::F16.bits(-f32::NAN), 0xfe00);
        assert!(DType::F16.value(0xfe00).is_nan());
        assert_eq!(DType::BF16.bits(-2.5), 0xc020);
        assert_eq!(DType::F16.bits(-2.5), 0xc100);
    }

    #[test]
    fn rounding_from_f64_is_direct() {
        // Just above the tie between bf16's 1 and 1 + 2^-7, by less than f32 can hold: f32
        // would round it to the tie, and the tie to the even 1.
        let x = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
        assert_eq!(DType::BF16.round(x as f32), 1.0);
        assert_eq!(DType::BF16.round_f64(x), 1.0 + 2f64.powi(-7));
        assert_eq!(
            DType::F16.round_f64(-(1.0 + 2f64.powi(-11) + 2f64.powi(-40))),
            -(1.0 + 2f64.powi(-10))
        );
        assert_eq!(DType::F16.round_f64(1.0 + 2f64.powi(-11)), 1.0);
        assert_eq!(DType::BF16.round_f64(1e300), f64::INFINITY);
        assert_eq!(DType::F32.round_f64(0.1), f64::from(0.1f32));
        assert!(DType::F16.round_f64(f64::NAN).is_nan());
    }

    #[test]
    fn names_parse() {
        for d in DType::ALL {
            assert_eq!(d.to_string().parse::<DType>().unwrap(), d);
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
        }
        assert!("f64".parse::<DType>().is_err());
        for s in [StateDType::Param, StateDType::F32, StateDType::BF16] {
            assert_eq!(s.to_string().parse::<StateDType>().unwrap(), s);
        }
        assert!("f16".parse::<StateDType>().is_err());
    }
}
