use super::{
    Class, Shader, Sums, TorchSwitch, UNFUSED, check, check_fits_f32, check_non_negative,
    grad_sign, py_float,
};
use crate::error::Result;
use crate::reference::Real;
use serde::{Deserialize, Serialize};

/// `torch.optim.Rprop`: resilient backpropagation, a step size per element that grows while
/// the gradient keeps its sign and shrinks when it flips.
///
/// With `g` the gradient (negated when `maximize`), `p` the previous step's gradient (`prev`)
/// and `η` the step size (`step_size`, set to `lr` on the tensor's first step):
///
/// ```text
/// f ← etas.1 where g·p > 0, etas.0 where g·p < 0, else 1
/// η ← clamp(η·f, step_sizes.0, step_sizes.1)
/// g ← 0 where g·p < 0                  (no step after a sign flip)
/// θ ← θ − sign(g)·η
/// p ← g
/// ```
///
/// The learning rate is read only on a tensor's first step, as in PyTorch: a schedule has no
/// effect after it. State: `prev`, `step_size`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rprop {
    /// The initial step size (default 1e-2).
    pub lr: f64,
    /// The factors that shrink and grow the step size (default (0.5, 1.2)).
    pub etas: (f64, f64),
    /// The least and the greatest step size (default (1e-6, 50)).
    pub step_sizes: (f64, f64),
    /// Maximize the objective instead of minimizing (default false).
    pub maximize: bool,
}

impl Default for Rprop {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            etas: (0.5, 1.2),
            step_sizes: (1e-6, 50.0),
            maximize: false,
        }
    }
}

/// One parameter group's record in `shaders/rprop.wgsl` (`Hyper`); keep the two in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RpropHyper {
    lr: f32,
    etaminus: f32,
    etaplus: f32,
    step_size_min: f32,
    step_size_max: f32,
    grad_sign: f32,
    _pad: [f32; 2],
}

const SHADER: Shader = Shader {
    file: "rprop.wgsl",
    source: include_str!("../../shaders/rprop.wgsl"),
    switches: &[],
    hyper_size: size_of::<RpropHyper>() as u64,
    sums: Sums::Never,
    factored: 0,
    apply: 0,
};

impl Class for Rprop {
    const NAME: &'static str = "Rprop";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [TorchSwitch] = UNFUSED;
    type Hyper = RpropHyper;

    /// PyTorch checks the learning rate and the etas; it does not check `step_sizes`, but fails
    /// at the step where one does not fit in float32.
    fn validate(&self) -> Result<()> {
        check_non_negative("learning rate", self.lr)?;
        let (minus, plus) = self.etas;
        check(0.0 < minus && minus < 1.0 && 1.0 < plus, || {
            format!(
                "Invalid eta values: {}, {}",
                py_float(minus),
                py_float(plus)
            )
        })?;
        check_fits_f32("step_sizes value", self.step_sizes.0)?;
        check_fits_f32("step_sizes value", self.step_sizes.1)
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["prev", "step_size"]
    }

    /// `step_size` before the first step (which sets it to the learning rate of that step).
    fn initial_state(&self, name: &str) -> f64 {
        if name == "step_size" { self.lr } else { 0.0 }
    }

    fn hyper(&self) -> RpropHyper {
        RpropHyper {
            lr: self.lr as f32,
            etaminus: self.etas.0 as f32,
            etaplus: self.etas.1 as f32,
            step_size_min: self.step_sizes.0 as f32,
            step_size_max: self.step_sizes.1 as f32,
            grad_sign: grad_sign(self.maximize),
            _pad: [0.0; 2],
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
        let (minus, plus) = (F::of(self.etas.0), F::of(self.etas.1));
        let (lo, hi) = (F::of(self.step_sizes.0), F::of(self.step_sizes.1));
        let (zero, one, sign) = (
            F::of(0.0),
            F::of(1.0),
            F::of(grad_sign(self.maximize).into()),
        );
        let [prev, step_size] = state else {
            panic!("Rprop keeps prev and step_size");
        };
        for (i, (p, &g)) in param.iter_mut().zip(grad).enumerate() {
            let mut g = sign * g;
            if t == 1 {
                step_size[i] = F::of(self.lr);
            }
            let product = g * prev[i];
            let factor = if product > zero {
                plus
            } else if product < zero {
                minus
            } else {
                one
            };
            // torch.clamp: the lower bound, then the upper.
            step_size[i] = (step_size[i] * factor).max(lo).min(hi);
            if product < zero {
                g = zero;
            }
            *p -= g.sign() * step_size[i];
            prev[i] = g;
        }
    }

    fn cases() -> Vec<Self> {
        [false, true]
            .into_iter()
            .flat_map(|maximize| {
                [
                    Rprop {
                        lr: 0.01,
                        maximize,
                        ..Default::default()
                    },
                    // Step sizes that clamp at both bounds within a few steps.
                    Rprop {
                        lr: 0.01,
                        etas: (0.3, 1.5),
                        step_sizes: (0.003, 0.02),
                        maximize,
                    },
                ]
            })
            .collect()
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        vec![("rprop", Rprop::default())]
    }
}
