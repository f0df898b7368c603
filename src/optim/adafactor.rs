use super::{
    Class, FOREACH, Shader, Sums, TorchSwitch, check, check_fits_f32, grad_sign, py_float,
};
use crate::error::Result;
use crate::reference::{Real, lerp};
use serde::{Deserialize, Serialize};

/// `torch.optim.Adafactor`: second moments factored into row and column means for tensors of
/// two dimensions or more, a relative step size, and the update clipped by its RMS.
///
/// With `g` the gradient (negated when `maximize`), `t` the step number starting at 1, `τ` =
/// `beta2_decay`, `(ε1, ε2)` = `eps` (ε1 float32's epsilon when `None`), `λ` = `weight_decay`,
/// and `n` the tensor's elements:
///
/// ```text
/// ρ = min(lr, 1/√t)
/// α = max(ε2, ‖θ‖/√n)·ρ                       (the parameter before this step's decay)
/// θ ← θ·(1 − lr·λ)
/// w = t^τ                                     (1 − β2ₜ)
/// one dimension:   V ← lerp(V, g², w)         (variance)
/// more dimensions: R ← lerp(R, mean of g² over each row, w)     (row_var, [..., rows, 1])
///                  C ← lerp(C, mean of g² over each column, w)  (col_var, [..., 1, cols])
///                  V = R·C / max(mean of R over the rows, ε1)    (per matrix)
/// u = g / √max(V, ε1²)
/// θ ← θ − α / max(1, ‖u‖/(√n·d)) · u
/// ```
///
/// As in PyTorch, a tensor of two dimensions or more is factored over its last two, with one
/// factor pair per matrix of its leading dimensions; its state is `row_var` and `col_var`, a
/// tensor of one dimension keeps `variance`. The row and column means run as two passes over
/// each factored tensor's gradient after `finalize`, and the norms `‖θ‖` and `‖u‖` as
/// per-tensor sums (shaders/sums.wgsl), so a step reads the gradients three times and the
/// parameters twice. A factored tensor is never split between dispatches, so it must fit one
/// storage binding. The learning rate is scheduled as any other; PyTorch's relative step
/// `min(lr, 1/√t)` and the RMS scale `α` apply on top of it, on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adafactor {
    /// Learning rate: the cap of the relative step size (default 1e-2).
    pub lr: f64,
    /// The exponent of the second moments' decay, `1 − β2ₜ = t^beta2_decay` (default −0.8).
    pub beta2_decay: f64,
    /// `(ε1, ε2)`: ε1 bounds the variance estimate and the row factor's mean below (`None`,
    /// the default, is float32's epsilon); ε2 bounds the parameter's RMS in the step size
    /// (default 1e-3).
    pub eps: (Option<f64>, f64),
    /// The clipping threshold of the update's RMS (default 1).
    pub d: f64,
    /// Decoupled weight decay, scaled by the learning rate (default 0).
    pub weight_decay: f64,
    /// Maximize the objective instead of minimizing (default false).
    pub maximize: bool,
}

impl Default for Adafactor {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            beta2_decay: -0.8,
            eps: (None, 1e-3),
            d: 1.0,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// One parameter group's record in `shaders/adafactor.wgsl` (`Hyper`); keep the two in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AdafactorHyper {
    lr: f32,
    beta2_decay: f32,
    eps1: f32,
    eps1_sq: f32,
    eps2: f32,
    d: f32,
    decay: f32,
    grad_sign: f32,
}

const SHADER: Shader = Shader {
    file: "adafactor.wgsl",
    source: include_str!("../../shaders/adafactor.wgsl"),
    switches: &["FACTORED"],
    hyper_size: size_of::<AdafactorHyper>() as u64,
    sums: Sums::Always,
    factored: 1,
    apply: 0,
};

impl Adafactor {
    /// ε1: as given, or float32's epsilon (PyTorch's `torch.finfo(param.dtype).eps`).
    fn eps1(&self) -> f64 {
        self.eps.0.unwrap_or(f64::from(f32::EPSILON))
    }

    /// The variance estimate of a factored tensor of `shape` after this step's update of its
    /// factors, from the gradient `g`: `R·C / max(mean of R, ε1)` for each element.
    fn factored_variance<F: Real>(
        &self,
        shape: &[usize],
        g: &[F],
        row_var: &mut [F],
        col_var: &mut [F],
        weight: F,
    ) -> Vec<F> {
        let dims = shape.len();
        let (rows, cols) = (shape[dims - 2], shape[dims - 1]);
        let matrices = g.len() / (rows * cols);
        // PyTorch's `vector_norm(...).square_().div_(size)`.
        let mean_square = |acc: F, size: usize| {
            let norm = acc.sqrt();
            norm * norm / F::of(size as f64)
        };
        for (r, row) in row_var.iter_mut().enumerate() {
            let acc = g[r * cols..(r + 1) * cols]
                .iter()
                .fold(F::of(0.0), |a, &x| a + x * x);
            *row = lerp(*row, mean_square(acc, cols), weight);
        }
        for (k, col) in col_var.iter_mut().enumerate() {
            let (m, c) = (k / cols, k % cols);
            let acc = (0..rows)
                .map(|r| g[(m * rows + r) * cols + c])
                .fold(F::of(0.0), |a, x| a + x * x);
            *col = lerp(*col, mean_square(acc, rows), weight);
        }
        let eps1 = F::of(self.eps1());
        let means: Vec<F> = (0..matrices)
            .map(|m| {
                let sum = row_var[m * rows..(m + 1) * rows]
                    .iter()
                    .fold(F::of(0.0), |a, &x| a + x);
                (sum / F::of(rows as f64)).max(eps1)
            })
            .collect();
        (0..g.len())
            .map(|e| {
                let row = e / cols;
                let m = row / rows;
                row_var[row] * col_var[m * cols + e % cols] / means[m]
            })
            .collect()
    }
}

impl Class for Adafactor {
    const NAME: &'static str = "Adafactor";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [TorchSwitch] = FOREACH;
    type Hyper = AdafactorHyper;

    /// PyTorch's checks, in its order; then eps1² and eps2 must fit float32, where PyTorch
    /// fails at the step.
    fn validate(&self) -> Result<()> {
        let at_least = |what: &str, value: f64, bound: u8| {
            check(value >= f64::from(bound), || {
                format!("{what} should be >= {bound} but is: {}", py_float(value))
            })
        };
        at_least("Learning rate", self.lr, 0)?;
        check(self.beta2_decay <= 0.0, || {
            format!(
                "beta2_decay should be <= 0 but is: {}",
                py_float(self.beta2_decay)
            )
        })?;
        if let Some(eps1) = self.eps.0 {
            at_least("epsilon1", eps1, 0)?;
        }
        at_least("epsilon2", self.eps.1, 0)?;
        at_least("Clipping threshold d", self.d, 1)?;
        at_least("weight_decay", self.weight_decay, 0)?;
        // PyTorch converts eps1² (the estimate's floor) and a multiple of eps2 (the step size)
        // to float32 at the step and fails there where they overflow.
        if let Some(eps1) = self.eps.0 {
            check_fits_f32("epsilon1 squared", eps1 * eps1)?;
        }
        check_fits_f32("epsilon2", self.eps.1)
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["variance"]
    }

    fn factored(&self, shape: &[usize]) -> bool {
        shape.len() >= 2 && shape.iter().all(|&d| d > 0)
    }

    fn factored_names(&self) -> &'static [&'static str] {
        &["row_var", "col_var"]
    }

    fn hyper(&self) -> AdafactorHyper {
        let eps1 = self.eps1();
        AdafactorHyper {
            lr: self.lr as f32,
            beta2_decay: self.beta2_decay as f32,
            eps1: eps1 as f32,
            eps1_sq: (eps1 * eps1) as f32,
            eps2: self.eps.1 as f32,
            d: self.d as f32,
            decay: (1.0 - self.lr * self.weight_decay) as f32,
            grad_sign: grad_sign(self.maximize),
        }
    }

    fn reference<F: Real>(
        &self,
        t: u64,
        shape: &[usize],
        param: &mut [F],
        grad: &[F],
        state: &mut [Vec<F>],
        _scalars: &mut [F],
    ) {
        let step = t as f64;
        let root_n = (param.len() as f64).sqrt();
        let norm = |x: &[F]| x.iter().fold(F::of(0.0), |a, &v| a + v * v).sqrt().to_f64();
        let rho = self.lr.min(1.0 / step.sqrt());
        let alpha = self.eps.1.max(norm(param) / root_n) * rho;
        if self.weight_decay != 0.0 {
            let decay = F::of(1.0 - self.lr * self.weight_decay);
            param.iter_mut().for_each(|p| *p *= decay);
        }
        let sign = F::of(grad_sign(self.maximize).into());
        let g: Vec<F> = grad.iter().map(|&x| sign * x).collect();
        let weight = F::of(step.powf(self.beta2_decay));
        let variance = match state {
            [row_var, col_var] => self.factored_variance(shape, &g, row_var, col_var, weight),
            [variance] => {
                for (v, &x) in variance.iter_mut().zip(&g) {
                    *v = lerp(*v, x * x, weight);
                }
                variance.clone()
            }
            _ => panic!("Adafactor keeps variance, or row_var and col_var"),
        };
        let eps1_sq = F::of(self.eps1() * self.eps1());
        let update: Vec<F> = variance
            .iter()
            .zip(&g)
            .map(|(&v, &x)| F::of(1.0) / v.max(eps1_sq).sqrt() * x)
            .collect();
        let denom = 1f64.max(norm(&update) / (root_n * self.d));
        let a = F::of(-alpha / denom);
        for (p, u) in param.iter_mut().zip(update) {
            *p += a * u;
        }
    }

    fn cases() -> Vec<Self> {
        let mut out = Vec::new();
        for maximize in [false, true] {
            for weight_decay in [0.0, 0.1] {
                out.push(Adafactor {
                    weight_decay,
                    maximize,
                    ..Default::default()
                });
            }
        }
        // ε1 and ε2 large enough that the bounds of the row factors' means, the variance
        // estimates and the parameters' RMS act on some tensors; a looser clip, a slower decay.
        out.push(Adafactor {
            lr: 0.05,
            beta2_decay: -0.5,
            eps: (Some(0.25), 1.1),
            d: 1.2,
            weight_decay: 0.01,
            maximize: false,
        });
        out
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        vec![("adafactor", Adafactor::default())]
    }

    fn bench_matrix_cases() -> Vec<(&'static str, Self)> {
        vec![("adafactor-factored", Adafactor::default())]
    }
}
