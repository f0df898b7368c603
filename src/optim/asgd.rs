use super::{
    Class, Shader, Sums, TorchSwitch, UNFUSED, WeightDecay, check_non_negative, grad_sign,
    with_wd_and_maximize,
};
use crate::error::Result;
use crate::reference::Real;
use serde::{Deserialize, Serialize};

/// `torch.optim.ASGD`: averaged stochastic gradient descent.
///
/// With `g` the gradient (negated when `maximize`), `t` the step number starting at 1, and
/// `λ` = `weight_decay`, using the per-tensor scalars `η` (`eta`) and `μ` (`mu`) of the step
/// before (`η` = lr and `μ` = 1 at the first):
///
/// ```text
/// g ← g + λ·θ                            (if λ ≠ 0)
/// θ ← θ·(1 − lambd·η) − η·g
/// ax ← ax + (θ − ax)·μ   if μ ≠ 1, else ax ← θ
/// η ← lr / (1 + lambd·lr·t)^alpha,  μ ← 1 / max(1, t − t0)
/// ```
///
/// `eta` and `mu` are kept in f32 on the GPU, as PyTorch keeps them (in an f64 run too).
/// State: `ax`, and the scalars `eta` and `mu`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(clippy::upper_case_acronyms)]
pub struct ASGD {
    /// Learning rate (default 1e-2).
    pub lr: f64,
    /// Decay term (default 1e-4).
    pub lambd: f64,
    /// Power of the learning-rate decay (default 0.75).
    pub alpha: f64,
    /// The step after which averaging starts (default 1e6).
    pub t0: f64,
    /// L2 penalty (default 0).
    pub weight_decay: f64,
    /// Maximize the objective instead of minimizing (default false).
    pub maximize: bool,
}

impl Default for ASGD {
    fn default() -> Self {
        Self {
            lr: 1e-2,
            lambd: 1e-4,
            alpha: 0.75,
            t0: 1e6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

/// One parameter group's record in `shaders/asgd.wgsl` (`Hyper`); keep the two in sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct AsgdHyper {
    lr: f32,
    lambd: f32,
    alpha: f32,
    t0: f32,
    weight_decay: f32,
    grad_sign: f32,
    _pad: [f32; 2],
}

const SHADER: Shader = Shader {
    file: "asgd.wgsl",
    source: include_str!("../../shaders/asgd.wgsl"),
    switches: &[],
    hyper_size: size_of::<AsgdHyper>() as u64,
    sums: Sums::Never,
    factored: 0,
    apply: 0,
};

/// `x` rounded to f32, as f64: PyTorch keeps `eta` and `mu` as f32 tensors.
fn f32_of(x: f64) -> f64 {
    f64::from(x as f32)
}

impl Class for ASGD {
    const NAME: &'static str = "ASGD";
    const SHADER: &'static Shader = &SHADER;
    const TORCH_SWITCHES: &'static [TorchSwitch] = UNFUSED;
    type Hyper = AsgdHyper;

    /// PyTorch checks lr, lambd, alpha and weight_decay; not t0.
    fn validate(&self) -> Result<()> {
        check_non_negative("learning rate", self.lr)?;
        check_non_negative("lambd value", self.lambd)?;
        check_non_negative("alpha value", self.alpha)?;
        check_non_negative("weight_decay value", self.weight_decay)
    }

    fn lr_mut(&mut self) -> &mut f64 {
        &mut self.lr
    }

    fn state_names(&self) -> &'static [&'static str] {
        &["ax"]
    }

    fn scalar_names(&self) -> &'static [&'static str] {
        &["eta", "mu"]
    }

    /// `eta` starts at the learning rate (the kernel takes it from the first step's group, as
    /// PyTorch creates the state then), `mu` at 1.
    fn initial_scalar(&self, name: &str) -> f64 {
        if name == "eta" { f32_of(self.lr) } else { 1.0 }
    }

    fn hyper(&self) -> AsgdHyper {
        AsgdHyper {
            lr: self.lr as f32,
            lambd: self.lambd as f32,
            alpha: self.alpha as f32,
            t0: self.t0 as f32,
            weight_decay: self.weight_decay as f32,
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
        scalars: &mut [F],
    ) {
        let eta = if t == 1 {
            f32_of(self.lr)
        } else {
            scalars[0].to_f64()
        };
        let mu = scalars[1].to_f64();
        let decay = F::of(1.0 - self.lambd * eta);
        let (eta_f, mu_f) = (F::of(eta), F::of(mu));
        let weight_decay = WeightDecay::l2(self.weight_decay);
        let sign = F::of(grad_sign(self.maximize).into());
        let ax = &mut state[0];
        for (i, (p, &g)) in param.iter_mut().zip(grad).enumerate() {
            let g = weight_decay.grad(sign, p, g);
            *p *= decay;
            *p -= eta_f * g;
            ax[i] = if mu != 1.0 {
                ax[i] + (*p - ax[i]) * mu_f
            } else {
                *p
            };
        }
        let t = t as f64;
        scalars[0] = F::of(f32_of(
            self.lr / (1.0 + self.lambd * self.lr * t).powf(self.alpha),
        ));
        scalars[1] = F::of(f32_of(1.0 / (t - self.t0).max(1.0)));
    }

    fn cases() -> Vec<Self> {
        with_wd_and_maximize(0.05, |weight_decay, maximize| {
            vec![ASGD {
                lr: 0.05,
                lambd: 0.5,
                alpha: 0.5,
                t0: 3.0,
                weight_decay,
                maximize,
            }]
        })
    }

    fn bench_cases() -> Vec<(&'static str, Self)> {
        vec![("asgd", ASGD::default())]
    }
}
