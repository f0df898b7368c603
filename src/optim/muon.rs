use super::{Class, Orthogonalize, Shader, Sums, check, check_fits_f32, py_float};
use crate::error::{Error, Result};
use crate::reference::{Real, lerp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `torch.optim.Muon`: momentum, orthogonalized by Newton–Schulz iterations, for parameters of
/// two dimensions.
///
/// With `g` the gradient of a parameter `θ` of shape `[A, B]`, `μ` = `momentum`, `λ` =
/// `weight_decay` and `(a, b, c)` = `ns_coefficients`:
///
/// ```text
/// m ← lerp(m, g, 1 − μ)                           (momentum_buffer)
/// u = lerp(g, m, μ) if nesterov, else m
/// X = u, transposed when A > B (so that X is m x n with m ≤ n)
/// X ← X / max(‖X‖, eps)
/// ns_steps times:  G = X·Xᵀ;  U = b·G + c·G·G;  X ← a·X + U·X
/// θ ← θ·(1 − lr·λ) − lr·ratio·X                   (X transposed back)
/// ratio: adjust_lr_fn None or "original" √max(1, A/B); "match_rms_adamw" 0.2·√max(A, B);
///        "spectral_unclamped" √(A/B)
/// ```
///
/// PyTorch runs the iterations in bfloat16 for tensor-core speed; WGSL has no bfloat16, so
/// they run in float32 here, and the golden data comes from PyTorch's algorithm with its
/// iterations in float32. Each iteration is three products of the tiled kernel
/// ([`crate::gemm`]) on X viewed wide (a transpose costs nothing: the product reads through
/// strides). A step runs the momentum and the normalization as the template's step (its
/// first phase, with `‖u‖` from the per-tensor sums), the products, then the update of the
/// parameter (its second phase), all recorded into the one compute pass, with no readback.
/// The iterates live in two more state buffers of each tensor (internal, not PyTorch state),
/// and the products `G` and `U` in one buffer of the optimizer sized for its largest tensor.
///
/// A tensor must have two dimensions, and is never split between dispatches, so it must fit
/// one storage binding. `ns_steps`, `ns_coefficients` and `adjust_lr_fn` are fixed when the
/// optimizer is built (they shape the recorded products). Muon keeps no step count.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Muon {
    /// Learning rate (default 1e-3).
    pub lr: f64,
    /// Decoupled weight decay, scaled by the learning rate (default 0.1).
    pub weight_decay: f64,
    /// Momentum factor (default 0.95).
    pub momentum: f64,
    /// Nesterov momentum (default true).
    pub nesterov: bool,
    /// The coefficients `(a, b, c)` of the Newton–Schulz polynomial (default (3.4445, −4.775,
    /// 2.0315)).
    pub ns_coefficients: (f64, f64, f64),
    /// The floor of the norm the update is divided by (default 1e-7).
    pub eps: f64,
    /// Newton–Schulz iterations, fewer than 100 (default 5).
    pub ns_steps: u32,
    /// How the learning rate scales with the parameter's shape (default `None`, which is
    /// `"original"`).
    pub adjust_lr_fn: Option<AdjustLr>,
}

impl Default for Muon {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            weight_decay: 0.1,
            momentum: 0.95,
            nesterov: true,
            ns_coefficients: (3.4445, -4.775, 2.0315),
            eps: 1e-7,
            ns_steps: 5,
            adjust_lr_fn: None,
        }
    }
}

/// Muon's `adjust_lr_fn`: the factor of the learning rate for a parameter of shape `[A, B]`.
/// In JSON, PyTorch's strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdjustLr {
    /// `"original"`: `√max(1, A/B)` (also what `None` gives).
    Original,
    /// `"match_rms_adamw"`: `0.2·√max(A, B)`.
    MatchRmsAdamw,
    /// `"spectral_unclamped"`: `√(A/B)`.
    SpectralUnclamped,
}

impl AdjustLr {
    const NAMES: [(&'static str, AdjustLr); 3] = [
        ("original", AdjustLr::Original),
        ("match_rms_adamw", AdjustLr::MatchRmsAdamw),
        ("spectral_unclamped", AdjustLr::SpectralUnclamped),
    ];

    /// PyTorch's name.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("original", |(n, _)| n)
    }
}

impl Serialize for AdjustLr {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for AdjustLr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "Adjust learning rate function {name} is not supported"
                ))
            })
    }
}

/// One parameter group's record in `shaders/muon.wgsl` (`Hyper`); keep the two in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct MuonHyper {
    lr: f32,
    momentum: f32,
    one_minus_momentum: f32,
    eps: f32,
    decay: f32,
    /// The state buffer holding the last iterate: 1 after an even number of iterations, else 2.
    last: u32,
    _pad: [u32; 2],
}

const SHADER: Shader = Shader {
    file: "muon.wgsl",
    source: include_str!("../../shaders/muon.wgsl"),
    switches: &["NESTEROV", "APPLY"],
    hyper_size: size_of::<MuonHyper>() as u64,
    sums: Sums::Always,
    factored: 0,
    apply: 2,
};

/// `X·Y` of an `r x k` and a `k x c` row-major matrix, summed in increasing `k` as the GPU's
/// kernel sums.
fn matmul<F: Real>(x: &[F], y: &[F], (r, k, c): (usize, usize, usize)) -> Vec<F> {
    let mut out = vec![F::of(0.0); r * c];
    for i in 0..r {
        for j in 0..c {
            let mut acc = F::of(0.0);
            for p in 0..k {
                acc += x[i * k + p] * y[p * c + j];
            }
            out[i * c + j] = acc;
        }
    }
    out
}

/// The transpose of an `r x c` row-major matrix.
fn transpose<F: Real>(x: &[F], r: usize, c: usize) -> Vec<F> {
    (0..c * r).map(|e| x[(e % r) * c + e / r]).collect()
}

impl Muon {
    /// PyTorch's `_zeropower_via_newtonschulz` in `F` of a row-major `[rows, cols]` matrix.
    fn newton_schulz<F: Real>(&self, u: &[F], rows: usize, cols: usize) -> Vec<F> {
        let tall = rows > cols;
        let (m, n) = if tall { (cols, rows) } else { (rows, cols) };
        let mut x = if tall {
            transpose(u, rows, cols)
        } else {
            u.to_vec()
        };
        let norm = x.iter().fold(F::of(0.0), |a, &v| a + v * v).sqrt();
        let norm = norm.max(F::of(self.eps));
        x.iter_mut().for_each(|v| *v /= norm);
        let (a, b, c) = self.ns_coefficients;
        let (a, b, c) = (F::of(a), F::of(b), F::of(c));
        for _ in 0..self.ns_steps {
            let xt = transpose(&x, m, n);
            let gram = matmul(&x, &xt, (m, n, m));
            let gg = matmul(&gram, &gram, (m, m, m));
            let update: Vec<F> = gg.iter().zip(&gram).map(|(&q, &g)| c * q + b * g).collect();
            let ux = matmul(&update, &x, (m, m, n));
            x = ux.iter().zip(&x).map(|(&q, &v)| q + a * v).collect();
        }
        if tall { transpose(&x, m, n) } else { x }
    }
}

impl Class for Muon {
    const NAME: &'static str = "Muon";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [super::TorchSwitch] = &[];
    const STEP_STATE: bool = false;
    const SCRATCH_STATES: u32 = 2;
    type Hyper = MuonHyper;

    /// PyTorch's checks, in its order (an unknown `adjust_lr_fn` fails as JSON is read); then
    /// `ns_steps` below 100, and the momentum, eps, the decay factor and the coefficients
    /// within float32, where PyTorch fails at the step.
    fn validate(&self) -> Result<()> {
        let at_least_0 = |what: &str, value: f64| {
            check(value >= 0.0, || {
                format!("{what} should be >= 0 but is: {}", py_float(value))
            })
        };
        at_least_0("Learning rate", self.lr)?;
        at_least_0("momentum", self.momentum)?;
        at_least_0("weight decay", self.weight_decay)?;
        check(self.ns_steps < 100, || {
            "Number of steps must be less than 100 for computational efficiency".into()
        })?;
        // PyTorch converts these to float32 at the step and fails there where they overflow;
        // the GPU would give NaN.
        check_fits_f32("momentum", self.momentum)?;
        check_fits_f32("eps", self.eps)?;
        check_fits_f32("1 - lr * weight_decay", 1.0 - self.lr * self.weight_decay)?;
        let (a, b, c) = self.ns_coefficients;
        for x in [a, b, c] {
            check_fits_f32("ns_coefficients", x)?;
        }
        Ok(())
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn momentum_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.momentum)
    }

    fn switches(&self) -> u32 {
        u32::from(self.nesterov)
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["momentum_buffer"]
    }

    fn check_shape(&self, shape: &[usize]) -> Result<()> {
        if shape.len() == 2 {
            return Ok(());
        }
        let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
        Err(Error::Input(format!(
            "Muon only supports 2D parameters whereas we found a parameter with size: torch.Size([{}])",
            dims.join(", ")
        )))
    }

    fn orthogonalize(&self) -> Option<Orthogonalize> {
        let (a, b, c) = self.ns_coefficients;
        Some(Orthogonalize {
            ns_steps: self.ns_steps,
            ns_coefficients: [a, b, c],
            adjust_lr_fn: self.adjust_lr_fn,
        })
    }

    fn hyper(&self) -> MuonHyper {
        MuonHyper {
            lr: self.lr as f32,
            momentum: self.momentum as f32,
            one_minus_momentum: (1.0 - self.momentum) as f32,
            eps: self.eps as f32,
            decay: (1.0 - self.lr * self.weight_decay) as f32,
            last: 1 + self.ns_steps % 2,
            _pad: [0; 2],
        }
    }

    fn reference<F: Real>(
        &self,
        _t: u64,
        shape: &[usize],
        param: &mut [F],
        grad: &[F],
        state: &mut [Vec<F>],
        _scalars: &mut [F],
    ) {
        let buf = &mut state[0];
        let weight = F::of(1.0 - self.momentum);
        for (m, &g) in buf.iter_mut().zip(grad) {
            *m = lerp(*m, g, weight);
        }
        let u: Vec<F> = if self.nesterov {
            let momentum = F::of(self.momentum);
            grad.iter()
                .zip(buf.iter())
                .map(|(&g, &m)| lerp(g, m, momentum))
                .collect()
        } else {
            buf.clone()
        };
        let x = self.newton_schulz(&u, shape[0], shape[1]);
        let ratio = self.orthogonalize().map_or(1.0, |o| o.lr_ratio(shape));
        let decay = F::of(1.0 - self.lr * self.weight_decay);
        let step = F::of(-(self.lr * ratio));
        for (p, v) in param.iter_mut().zip(x) {
            *p = *p * decay + step * v;
        }
    }

    fn cases() -> Vec<Self> {
        let mut out = Vec::new();
        for nesterov in [true, false] {
            for weight_decay in [0.0, 0.1] {
                out.push(Muon {
                    lr: 0.02,
                    nesterov,
                    weight_decay,
                    ..Default::default()
                });
            }
        }
        // Every adjust_lr_fn; an even number of iterations (the last iterate in the other
        // state buffer), none at all, and other coefficients.
        for adjust_lr_fn in [AdjustLr::MatchRmsAdamw, AdjustLr::SpectralUnclamped] {
            out.push(Muon {
                lr: 0.02,
                adjust_lr_fn: Some(adjust_lr_fn),
                ..Default::default()
            });
        }
        out.push(Muon {
            lr: 0.05,
            momentum: 0.8,
            ns_steps: 4,
            ns_coefficients: (2.0, -1.5, 0.5),
            adjust_lr_fn: Some(AdjustLr::Original),
            ..Default::default()
        });
        // No iterations at all, and eps above every norm: X = u / eps (a learning rate large
        // enough that the step is far above the tolerance).
        out.push(Muon {
            lr: 10.0,
            ns_steps: 0,
            eps: 1e3,
            ..Default::default()
        });
        out
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        Vec::new()
    }

    fn bench_matrix_cases() -> Vec<(&'static str, Self)> {
        vec![("muon", Muon::default())]
    }
}
