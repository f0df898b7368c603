use super::{
    Class, NOT_CAPTURABLE, Shader, Sums, TorchSwitch, WeightDecay, check_non_negative, grad_sign,
    with_wd_and_maximize,
};
use crate::error::Result;
use crate::reference::Real;
use serde::{Deserialize, Serialize};

/// `torch.optim.Adagrad`.
///
/// With `g` the gradient (negated when `maximize`), `t` the step number starting at 1, and
/// `λ` = `weight_decay`:
///
/// ```text
/// g ← g + λ·θ                           (if λ ≠ 0)
/// clr = lr / (1 + (t − 1)·lr_decay)
/// S ← S + g²                            (sum, starts at initial_accumulator_value)
/// θ ← θ − clr · g / (√S + ε)
/// ```
///
/// State: `sum`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adagrad {
    /// Learning rate (default 1e-2).
    pub lr: f64,
    /// Learning-rate decay (default 0).
    pub lr_decay: f64,
    /// L2 penalty (default 0).
    pub weight_decay: f64,
    /// Starting value of the accumulator `sum` (default 0).
    pub initial_accumulator_value: f64,
    /// Added to the denominator (default 1e-10).
    pub eps: f64,
    /// Maximize the objective instead of minimizing (default false).
    pub maximize: bool,
}

impl Default for Adagrad {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            maximize: false,
        }
    }
}

/// One parameter group's record in `shaders/adagrad.wgsl` (`Hyper`); keep the two in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AdagradHyper {
    pub(crate) lr: f32,
    pub(crate) lr_decay: f32,
    pub(crate) eps: f32,
    pub(crate) weight_decay: f32,
    pub(crate) grad_sign: f32,
    pub(crate) _pad: [f32; 3],
}
const _: () = assert!(size_of::<AdagradHyper>() == 32);

/// The kernel template's view of `shaders/adagrad.wgsl`.
const SHADER: Shader = Shader {
    file: "adagrad.wgsl",
    source: include_str!("../../shaders/adagrad.wgsl"),
    switches: &[],
    hyper_size: size_of::<AdagradHyper>() as u64,
    sums: Sums::Never,
    factored: 0,
    apply: 0,
};

impl Adagrad {
    /// The effective learning rate of step `t` (1-based), computed in f64 as PyTorch does.
    pub fn clr(&self, t: u64) -> f64 {
        self.lr / (1.0 + (t as f64 - 1.0) * self.lr_decay)
    }
}

impl Class for Adagrad {
    const NAME: &'static str = "Adagrad";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [TorchSwitch] = NOT_CAPTURABLE;
    type Hyper = AdagradHyper;

    fn validate(&self) -> Result<()> {
        check_non_negative("learning rate", self.lr)?;
        check_non_negative("lr_decay value", self.lr_decay)?;
        check_non_negative("weight_decay value", self.weight_decay)?;
        check_non_negative(
            "initial_accumulator_value value",
            self.initial_accumulator_value,
        )?;
        check_non_negative("epsilon value", self.eps)
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["sum"]
    }

    fn initial_state(&self, _name: &str) -> f64 {
        self.initial_accumulator_value
    }

    /// The kernel forms `clr` from each tensor's step count.
    fn hyper(&self) -> AdagradHyper {
        AdagradHyper {
            lr: self.lr as f32,
            lr_decay: self.lr_decay as f32,
            eps: self.eps as f32,
            weight_decay: self.weight_decay as f32,
            grad_sign: grad_sign(self.maximize),
            _pad: [0.0; 3],
        }
    }

    fn reference<F: Real>(
        &self,
        t: u64,
        _shape: &[usize],
        param: &mut [F],
        grad: &[F],
        state: &mut [Vec<F>],
        _scalars: &mut [F],
    ) {
        let (clr, eps, sign) = (
            F::of(self.clr(t)),
            F::of(self.eps),
            F::of(grad_sign(self.maximize).into()),
        );
        let decay = WeightDecay::l2(self.weight_decay);
        let sum = &mut state[0];
        for (i, (p, &g)) in param.iter_mut().zip(grad).enumerate() {
            let g = decay.grad(sign, p, g);
            sum[i] += g * g;
            *p -= clr * (g / (sum[i].sqrt() + eps));
        }
    }

    fn cases() -> Vec<Self> {
        with_wd_and_maximize(0.05, |weight_decay, maximize| {
            [(0.01, 0.1), (0.0, 0.0)]
                .into_iter()
                .map(|(lr_decay, initial_accumulator_value)| Adagrad {
                    lr: 0.1,
                    lr_decay,
                    weight_decay,
                    initial_accumulator_value,
                    maximize,
                    ..Default::default()
                })
                .collect()
        })
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        vec![("adagrad", Adagrad::default())]
    }
}
