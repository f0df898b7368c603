use super::{Class, Shader, Sums, check, py_float};
use crate::error::Result;
use crate::reference::Real;
use serde::{Deserialize, Serialize};

/// `Lion`, as the `lion-pytorch` package (0.2.5) defines it: the sign of an interpolated
/// momentum, with weight decay on the parameter.
///
/// With `g` the gradient, `λ` = `weight_decay`, and `lr₀` the learning rate the optimizer was
/// built with:
///
/// ```text
/// θ ← θ·(1 − lr·λ)            (decoupled_weight_decay: θ ← θ·(1 − lr·λ/lr₀))
/// c = β1·m + (1 − β1)·g
/// θ ← θ − lr·sign(c)
/// m ← β2·m + (1 − β2)·g        (exp_avg)
/// ```
///
/// lion-pytorch keeps no step count; `use_triton` selects its CUDA kernel and changes nothing
/// here. The CPU reference takes `lr₀` to be the configuration's own `lr`. State: `exp_avg`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lion {
    /// Learning rate (default 1e-4).
    pub lr: f64,
    /// Coefficients of the interpolation for the update and of the momentum (default
    /// (0.9, 0.99)).
    pub betas: (f64, f64),
    /// Weight decay (default 0).
    pub weight_decay: f64,
    /// lion-pytorch's Triton kernel (default false); accepted, and changes nothing here.
    pub use_triton: bool,
    /// Divide the weight decay by the learning rate the optimizer was built with (default
    /// false).
    pub decoupled_weight_decay: bool,
}

impl Default for Lion {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            betas: (0.9, 0.99),
            weight_decay: 0.0,
            use_triton: false,
            decoupled_weight_decay: false,
        }
    }
}

/// One parameter group's record in `shaders/lion.wgsl` (`Hyper`); keep the two in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct LionHyper {
    lr: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    decay: f32,
    _pad: [f32; 2],
}

const SHADER: Shader = Shader {
    file: "lion.wgsl",
    source: include_str!("../../shaders/lion.wgsl"),
    switches: &[],
    hyper_size: size_of::<LionHyper>() as u64,
    sums: Sums::Never,
    factored: 0,
    apply: 0,
};

impl Lion {
    /// The parameter's factor `1 − lr·λ` (with decoupled weight decay, λ divided by `built_lr`).
    fn decay(&self, built_lr: f64) -> f64 {
        let wd = if self.decoupled_weight_decay {
            self.weight_decay / built_lr
        } else {
            self.weight_decay
        };
        1.0 - self.lr * wd
    }
}

impl Class for Lion {
    const NAME: &'static str = "Lion";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [super::TorchSwitch] = &[];
    const STEP_STATE: bool = false;
    type Hyper = LionHyper;

    /// lion-pytorch asserts `lr > 0` and `0 <= beta <= 1`, without a message; these are the
    /// same checks with one. It does not check the weight decay.
    fn validate(&self) -> Result<()> {
        check(self.lr > 0.0, || {
            format!(
                "Invalid learning rate: {} (Lion needs lr > 0)",
                py_float(self.lr)
            )
        })?;
        let (b1, b2) = self.betas;
        for (i, b) in [b1, b2].into_iter().enumerate() {
            check((0.0..=1.0).contains(&b), || {
                format!(
                    "Invalid beta parameter at index {i}: {} (Lion needs 0 <= beta <= 1)",
                    py_float(b)
                )
            })?;
        }
        Ok(())
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn momentum_mut(&mut self) -> Option<&mut f64> {
        Some(&mut self.betas.0)
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["exp_avg"]
    }

    fn hyper(&self) -> LionHyper {
        self.hyper_from(self)
    }

    fn hyper_from(&self, built: &Self) -> LionHyper {
        let (b1, b2) = self.betas;
        LionHyper {
            lr: self.lr as f32,
            beta1: b1 as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            decay: self.decay(built.lr) as f32,
            _pad: [0.0; 2],
        }
    }

    fn reference<F: Real>(
        &self,
        _t: u64,
        _shape: &[usize],
        param: &mut [F],
        grad: &[F],
        state: &mut [Vec<F>],
        _scalars: &mut [F],
    ) {
        let (b1, b2) = self.betas;
        let (lr, decay) = (F::of(self.lr), F::of(self.decay(self.lr)));
        let (beta1, one_minus_b1) = (F::of(b1), F::of(1.0 - b1));
        let (beta2, one_minus_b2) = (F::of(b2), F::of(1.0 - b2));
        let m = &mut state[0];
        for (i, (p, &g)) in param.iter_mut().zip(grad).enumerate() {
            *p *= decay;
            let c = m[i] * beta1 + one_minus_b1 * g;
            *p -= lr * c.sign();
            m[i] = m[i] * beta2 + one_minus_b2 * g;
        }
    }

    fn cases() -> Vec<Self> {
        [0.0, 0.5]
            .into_iter()
            .flat_map(|weight_decay| {
                [false, true].map(|decoupled_weight_decay| Lion {
                    lr: 0.01,
                    betas: (0.95, 0.98),
                    weight_decay,
                    decoupled_weight_decay,
                    ..Default::default()
                })
            })
            .collect()
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        vec![("lion", Lion::default())]
    }
}
