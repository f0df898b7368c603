//! `torch.optim.lr_scheduler`, emulated step for step.
//!
//! PyTorch's schedulers act on the optimizer's `param_groups`: most of them compute the next LR
//! from the group's current `lr` (the "chainable" form), and several schedulers of one
//! `SequentialLR` or `ChainedScheduler` share the groups. [`Group`] stands for one such dict (only
//! the keys that schedulers read or write), and every scheduler here works on a shared
//! `&mut [Group]` exactly where PyTorch reads or writes `optimizer.param_groups`, in the same
//! order and with the same float operations, so the numbers agree to the last bit or close to
//! it (the golden tests allow 1e-9 relative).

use super::LrLambda;
use super::spec::{Args, PerGroup};
use super::util::{
    MAX_COUNT, bisect_right, div, exact, fmod, ifloordiv, imod, pow, py_float, py_repr,
};
use crate::error::{Error, Result};
use crate::optim::non_negative;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::f64::consts::PI;

/// A closure resolver: the closure that a spec's id string names.
pub(crate) type Resolver<'a> = dyn Fn(&str) -> Option<LrLambda> + 'a;

/// The PyTorch class names handled here.
pub(crate) const TYPES: &[&str] = &[
    "LambdaLR",
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "OneCycleLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "ChainedScheduler",
];

/// How deeply composite specs may nest.
const MAX_DEPTH: usize = 32;

/// The momentum (SGD, RMSprop) or beta1 (Adam, AdamW) of a group before any scheduler that
/// cycles momentum sets it. Never visible: such a scheduler sets it when it is built.
const DEFAULT_MOMENTUM: f64 = 0.9;

/// One of the optimizer's `param_groups`: the keys that schedulers read and write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Group {
    /// `lr`.
    #[serde(with = "exact")]
    pub(crate) lr: f64,
    /// `initial_lr`, set by the first scheduler built on the group.
    #[serde(with = "exact::opt")]
    initial_lr: Option<f64>,
    /// `momentum`, or `betas[0]` for Adam.
    #[serde(with = "exact")]
    pub(crate) momentum: f64,
    /// OneCycleLR's `max_lr`.
    #[serde(with = "exact::opt")]
    max_lr: Option<f64>,
    /// OneCycleLR's `min_lr`.
    #[serde(with = "exact::opt")]
    min_lr: Option<f64>,
    /// CyclicLR's and OneCycleLR's `max_momentum`.
    #[serde(with = "exact::opt")]
    max_momentum: Option<f64>,
    /// CyclicLR's and OneCycleLR's `base_momentum`.
    #[serde(with = "exact::opt")]
    base_momentum: Option<f64>,
}

impl Group {
    fn new(lr: f64) -> Self {
        Self {
            lr,
            initial_lr: None,
            momentum: DEFAULT_MOMENTUM,
            max_lr: None,
            min_lr: None,
            max_momentum: None,
            base_momentum: None,
        }
    }

    fn get(&self, key: Key) -> Result<f64> {
        let (v, name) = match key {
            Key::InitialLr => (self.initial_lr, "initial_lr"),
            Key::MaxLr => (self.max_lr, "max_lr"),
            Key::MinLr => (self.min_lr, "min_lr"),
            Key::MaxMomentum => (self.max_momentum, "max_momentum"),
            Key::BaseMomentum => (self.base_momentum, "base_momentum"),
        };
        v.ok_or_else(|| Error::Input(format!("KeyError: param group has no {name:?}")))
    }
}

/// A key of a param group that OneCycleLR's phases name.
#[derive(Clone, Copy, Debug)]
enum Key {
    InitialLr,
    MaxLr,
    MinLr,
    MaxMomentum,
    BaseMomentum,
}

fn lrs_of(g: &[Group]) -> Vec<f64> {
    g.iter().map(|x| x.lr).collect()
}

fn next(count: i64) -> Result<i64> {
    if count >= MAX_COUNT {
        Err(Error::Input(format!(
            "the step counter would pass {MAX_COUNT}"
        )))
    } else {
        Ok(count + 1)
    }
}

/// `LRScheduler`'s counters and `base_lrs`, plus CosineAnnealingWarmRestarts' `T_i` and `T_cur`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct LeafState {
    last_epoch: i64,
    step_count: u64,
    #[serde(with = "exact::vec")]
    base_lrs: Vec<f64>,
    #[serde(with = "exact::opt")]
    t_i: Option<f64>,
    #[serde(with = "exact::opt")]
    t_cur: Option<f64>,
}

/// ReduceLROnPlateau's counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct PlateauState {
    last_epoch: i64,
    #[serde(with = "exact")]
    best: f64,
    num_bad_epochs: i64,
    cooldown_counter: i64,
}

/// The state of one scheduler of the tree, in pre-order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "node")]
pub(crate) enum NodeState {
    /// A scheduler derived from `LRScheduler`.
    Leaf {
        /// Its class name.
        name: String,
        /// Its counters.
        state: LeafState,
    },
    /// SequentialLR.
    Sequential {
        /// Its own `last_epoch`.
        last_epoch: i64,
    },
    /// ChainedScheduler (no state of its own).
    Chained,
    /// ReduceLROnPlateau.
    Plateau {
        /// Its counters.
        state: PlateauState,
    },
}

/// CyclicLR's scale function.
#[derive(Clone)]
enum Scale {
    Triangular,
    Triangular2,
    ExpRange(f64),
    Custom(LrLambda),
}

impl Scale {
    fn eval(&self, x: i64) -> Result<f64> {
        match self {
            Scale::Triangular => Ok(1.0),
            Scale::Triangular2 => div(1.0, pow(2.0, x as f64 - 1.0)?),
            Scale::ExpRange(gamma) => pow(*gamma, x as f64),
            Scale::Custom(f) => Ok(f(to_u64(x, "scale_fn")?)),
        }
    }
}

fn to_u64(x: i64, what: &str) -> Result<u64> {
    u64::try_from(x)
        .map_err(|_| Error::Input(format!("{what} would be called with a negative epoch {x}")))
}

#[derive(Clone)]
struct Cyclic {
    max_lrs: Vec<f64>,
    total_size: f64,
    step_ratio: f64,
    scale: Scale,
    by_cycle: bool,
    cycle_momentum: bool,
    base_momentums: Vec<f64>,
    max_momentums: Vec<f64>,
}

#[derive(Clone, Copy, Debug)]
struct Phase {
    end_step: f64,
    start_lr: Key,
    end_lr: Key,
    start_momentum: Key,
    end_momentum: Key,
}

#[derive(Clone)]
struct OneCycle {
    total_steps: i64,
    phases: Vec<Phase>,
    cos: bool,
    cycle_momentum: bool,
}

impl OneCycle {
    fn anneal(&self, start: f64, end: f64, pct: f64) -> f64 {
        if self.cos {
            let cos_out = (PI * pct).cos() + 1.0;
            end + (start - end) / 2.0 * cos_out
        } else {
            (end - start) * pct + start
        }
    }
}

#[derive(Clone)]
enum LeafKind {
    Lambda(Vec<LrLambda>),
    Multiplicative(Vec<LrLambda>),
    Step {
        step_size: i64,
        gamma: f64,
    },
    MultiStep {
        milestones: Vec<i64>,
        gamma: f64,
    },
    Constant {
        factor: f64,
        total_iters: i64,
    },
    Linear {
        start: f64,
        end: f64,
        total_iters: i64,
    },
    Exponential {
        gamma: f64,
    },
    Polynomial {
        total_iters: i64,
        power: f64,
    },
    Cosine {
        t_max: f64,
        eta_min: f64,
    },
    Restarts {
        t_0: i64,
        t_mult: i64,
        eta_min: f64,
    },
    Cyclic(Box<Cyclic>),
    OneCycle(Box<OneCycle>),
}

/// A scheduler derived from `LRScheduler` (everything but the composites and
/// ReduceLROnPlateau).
#[derive(Clone)]
struct Leaf {
    name: &'static str,
    st: LeafState,
    is_initial: bool,
    kind: LeafKind,
}

impl Leaf {
    /// `LRScheduler.__init__` with `last_epoch=-1`: sets `initial_lr` where missing, takes
    /// `base_lrs` from it and makes the initial step.
    fn attach(name: &'static str, kind: LeafKind, g: &mut [Group]) -> Result<Self> {
        for grp in g.iter_mut() {
            if grp.initial_lr.is_none() {
                grp.initial_lr = Some(grp.lr);
            }
        }
        let restarts = matches!(kind, LeafKind::Restarts { .. });
        let t_0 = match kind {
            LeafKind::Restarts { t_0, .. } => t_0 as f64,
            _ => 0.0,
        };
        let mut leaf = Leaf {
            name,
            st: LeafState {
                last_epoch: -1,
                step_count: 0,
                base_lrs: g.iter().map(|x| x.initial_lr.unwrap_or(x.lr)).collect(),
                t_i: restarts.then_some(t_0),
                t_cur: restarts.then_some(-1.0),
            },
            is_initial: false,
            kind,
        };
        leaf.initial_step(g)?;
        Ok(leaf)
    }

    /// `LRScheduler._initial_step`.
    fn initial_step(&mut self, g: &mut [Group]) -> Result<()> {
        self.st.step_count = 0;
        self.is_initial = true;
        let r = self.step(g);
        self.is_initial = false;
        r
    }

    /// `step()`.
    fn step(&mut self, g: &mut [Group]) -> Result<()> {
        if matches!(self.kind, LeafKind::Restarts { .. }) {
            return self.restarts_step(g, None);
        }
        self.st.step_count = self.st.step_count.saturating_add(1);
        self.update_lr(g, None)
    }

    /// `step(epoch)`.
    fn step_epoch(&mut self, g: &mut [Group], epoch: f64) -> Result<()> {
        if matches!(self.kind, LeafKind::Restarts { .. }) {
            return self.restarts_step(g, Some(epoch));
        }
        if !(epoch >= 0.0 && epoch.fract() == 0.0 && epoch <= MAX_COUNT as f64) {
            return Err(Error::Input(format!(
                "{}.step(epoch) needs a whole, non-negative epoch (only \
                 CosineAnnealingWarmRestarts takes fractional epochs), got {}",
                self.name,
                py_float(epoch)
            )));
        }
        self.st.step_count = self.st.step_count.saturating_add(1);
        self.update_lr(g, Some(epoch as i64))
    }

    /// `LRScheduler._update_lr(epoch)`.
    fn update_lr(&mut self, g: &mut [Group], epoch: Option<i64>) -> Result<()> {
        let values = match epoch {
            None => {
                self.st.last_epoch = next(self.st.last_epoch)?;
                self.get_lr(g)?
            }
            Some(e) => {
                self.st.last_epoch = e;
                match self.closed_form()? {
                    Some(v) => v,
                    None => self.get_lr(g)?,
                }
            }
        };
        for (grp, lr) in g.iter_mut().zip(values) {
            grp.lr = lr;
        }
        Ok(())
    }

    /// CosineAnnealingWarmRestarts' own `step(epoch=None)`.
    fn restarts_step(&mut self, g: &mut [Group], epoch: Option<f64>) -> Result<()> {
        let LeafKind::Restarts { t_0, t_mult, .. } = self.kind else {
            return Ok(());
        };
        let mut t_i = self.st.t_i.unwrap_or(t_0 as f64);
        let mut t_cur = self.st.t_cur.unwrap_or(-1.0);
        let epoch = match epoch {
            None if self.st.last_epoch < 0 => Some(0.0),
            e => e,
        };
        let epoch = match epoch {
            None => {
                let e = next(self.st.last_epoch)? as f64;
                t_cur += 1.0;
                if t_cur >= t_i {
                    t_cur = fmod(t_cur, t_i)?;
                    t_i *= t_mult as f64;
                }
                e
            }
            Some(e) => {
                if e < 0.0 {
                    return Err(Error::Input(format!(
                        "Expected non-negative epoch, but got {}",
                        py_float(e)
                    )));
                }
                if e.is_nan() || e > MAX_COUNT as f64 {
                    return Err(Error::Input(format!(
                        "CosineAnnealingWarmRestarts: epoch {} is out of range",
                        py_float(e)
                    )));
                }
                let t0 = t_0 as f64;
                if e >= t0 {
                    if t_mult == 1 {
                        t_cur = fmod(e, t0)?;
                    } else {
                        let tm = t_mult as f64;
                        let n = ((e / t0 * (tm - 1.0) + 1.0).ln() / tm.ln()) as i32;
                        let tm_n = tm.powi(n);
                        t_cur = e - t0 * (tm_n - 1.0) / (tm - 1.0);
                        t_i = t0 * tm_n;
                    }
                } else {
                    t_i = t0;
                    t_cur = e;
                }
                e
            }
        };
        self.st.t_i = Some(t_i);
        self.st.t_cur = Some(t_cur);
        self.st.last_epoch = epoch.floor() as i64;
        let values = self.get_lr(g)?;
        for (grp, lr) in g.iter_mut().zip(values) {
            grp.lr = lr;
        }
        Ok(())
    }

    /// `get_lr()`: the chainable form.
    fn get_lr(&self, g: &mut [Group]) -> Result<Vec<f64>> {
        let le = self.st.last_epoch;
        let base = &self.st.base_lrs;
        let scaled = |g: &[Group], f: f64| g.iter().map(|x| x.lr * f).collect::<Vec<_>>();
        Ok(match &self.kind {
            LeafKind::Lambda(lambdas) => {
                let e = to_u64(le, "lr_lambda")?;
                lambdas.iter().zip(base).map(|(f, b)| b * f(e)).collect()
            }
            LeafKind::Multiplicative(lambdas) => {
                if self.is_initial {
                    lrs_of(g)
                } else {
                    let e = to_u64(le, "lr_lambda")?;
                    lambdas
                        .iter()
                        .zip(g.iter())
                        .map(|(f, x)| x.lr * f(e))
                        .collect()
                }
            }
            LeafKind::Step { step_size, gamma } => {
                if le == 0 || imod(le, *step_size)? != 0 {
                    lrs_of(g)
                } else {
                    scaled(g, *gamma)
                }
            }
            LeafKind::MultiStep { milestones, gamma } => {
                let count = milestones.iter().filter(|&&m| m == le).count();
                if count == 0 {
                    lrs_of(g)
                } else {
                    scaled(g, pow(*gamma, count as f64)?)
                }
            }
            LeafKind::Constant {
                factor,
                total_iters,
            } => {
                if le == 0 {
                    scaled(g, *factor)
                } else if le != *total_iters {
                    lrs_of(g)
                } else {
                    scaled(g, div(1.0, *factor)?)
                }
            }
            LeafKind::Linear {
                start,
                end,
                total_iters,
            } => {
                if le == 0 {
                    scaled(g, *start)
                } else if self.is_initial || le > *total_iters {
                    lrs_of(g)
                } else {
                    let d = div(
                        end - start,
                        *total_iters as f64 * start + (le - 1) as f64 * (end - start),
                    )?;
                    scaled(g, 1.0 + d)
                }
            }
            LeafKind::Exponential { gamma } => {
                if self.is_initial {
                    lrs_of(g)
                } else {
                    scaled(g, *gamma)
                }
            }
            LeafKind::Polynomial { total_iters, power } => {
                if self.is_initial || le > *total_iters {
                    lrs_of(g)
                } else {
                    let ti = *total_iters as f64;
                    let num = 1.0 - div(le as f64, ti)?;
                    let den = 1.0 - div((le - 1) as f64, ti)?;
                    scaled(g, pow(div(num, den)?, *power)?)
                }
            }
            LeafKind::Cosine { t_max, eta_min } => {
                let (t_max, eta_min) = (*t_max, *eta_min);
                let lef = le as f64;
                if self.is_initial {
                    lrs_of(g)
                } else if self.st.step_count == 1 && le > 0 {
                    base.iter()
                        .map(|b| {
                            Ok(eta_min + (b - eta_min) * (1.0 + div(lef * PI, t_max)?.cos()) / 2.0)
                        })
                        .collect::<Result<_>>()?
                } else if fmod((le - 1) as f64 - t_max, 2.0 * t_max)? == 0.0 {
                    let c = 1.0 - div(PI, t_max)?.cos();
                    g.iter()
                        .zip(base)
                        .map(|(x, b)| x.lr + (b - eta_min) * c / 2.0)
                        .collect()
                } else {
                    let num = 1.0 + div(PI * lef, t_max)?.cos();
                    let den = 1.0 + div(PI * (le - 1) as f64, t_max)?.cos();
                    if den == 0.0 {
                        return Err(Error::Input(format!(
                            "CosineAnnealingLR: float division by zero at epoch {le}: \
                             1 + cos(pi * {} / T_max) is 0 for T_max {}",
                            le - 1,
                            py_float(t_max)
                        )));
                    }
                    let r = num / den;
                    g.iter().map(|x| r * (x.lr - eta_min) + eta_min).collect()
                }
            }
            LeafKind::Restarts { eta_min, .. } => {
                let t_cur = self.st.t_cur.unwrap_or(0.0);
                let t_i = self.st.t_i.unwrap_or(1.0);
                let c = 1.0 + div(PI * t_cur, t_i)?.cos();
                base.iter()
                    .map(|b| eta_min + (b - eta_min) * c / 2.0)
                    .collect()
            }
            LeafKind::Cyclic(c) => {
                let cycle = (1.0 + le as f64 / c.total_size).floor();
                let x = 1.0 + le as f64 / c.total_size - cycle;
                let scale_factor = if x <= c.step_ratio {
                    div(x, c.step_ratio)?
                } else {
                    div(x - 1.0, c.step_ratio - 1.0)?
                };
                let s = c.scale.eval(if c.by_cycle { cycle as i64 } else { le })?;
                let lrs = base
                    .iter()
                    .zip(&c.max_lrs)
                    .map(|(b, m)| b + (m - b) * scale_factor * s)
                    .collect();
                if c.cycle_momentum {
                    for ((grp, bm), mm) in g.iter_mut().zip(&c.base_momentums).zip(&c.max_momentums)
                    {
                        grp.momentum = mm - (mm - bm) * scale_factor * s;
                    }
                }
                lrs
            }
            LeafKind::OneCycle(o) => {
                if le > o.total_steps {
                    return Err(Error::Input(format!(
                        "Tried to step {le} times. The specified number of total steps is {}",
                        o.total_steps
                    )));
                }
                let step_num = le as f64;
                let mut lrs = Vec::with_capacity(g.len());
                for grp in g.iter_mut() {
                    let mut start_step = 0.0;
                    let mut computed = (grp.lr, grp.momentum);
                    for (i, phase) in o.phases.iter().enumerate() {
                        let end_step = phase.end_step;
                        if step_num <= end_step || i == o.phases.len() - 1 {
                            let pct = div(step_num - start_step, end_step - start_step)?;
                            let lr =
                                o.anneal(grp.get(phase.start_lr)?, grp.get(phase.end_lr)?, pct);
                            let m = if o.cycle_momentum {
                                o.anneal(
                                    grp.get(phase.start_momentum)?,
                                    grp.get(phase.end_momentum)?,
                                    pct,
                                )
                            } else {
                                grp.momentum
                            };
                            computed = (lr, m);
                            break;
                        }
                        start_step = phase.end_step;
                    }
                    lrs.push(computed.0);
                    grp.momentum = computed.1;
                }
                lrs
            }
        })
    }

    /// `_get_closed_form_lr()`, for the classes that have one.
    fn closed_form(&self) -> Result<Option<Vec<f64>>> {
        let le = self.st.last_epoch;
        let base = &self.st.base_lrs;
        let times = |f: f64| Some(base.iter().map(|b| b * f).collect::<Vec<_>>());
        Ok(match &self.kind {
            LeafKind::Step { step_size, gamma } => {
                times(pow(*gamma, ifloordiv(le, *step_size)? as f64)?)
            }
            LeafKind::MultiStep { milestones, gamma } => {
                let mut sorted = milestones.clone();
                sorted.sort_unstable();
                times(pow(*gamma, bisect_right(&sorted, le) as f64)?)
            }
            LeafKind::Constant {
                factor,
                total_iters,
            } => times(
                factor
                    + if le >= *total_iters {
                        1.0 - factor
                    } else {
                        0.0
                    },
            ),
            LeafKind::Linear {
                start,
                end,
                total_iters,
            } => {
                let m = (*total_iters).min(le) as f64;
                times(start + div((end - start) * m, *total_iters as f64)?)
            }
            LeafKind::Exponential { gamma } => times(pow(*gamma, le as f64)?),
            LeafKind::Polynomial { total_iters, power } => {
                let m = (*total_iters).min(le) as f64;
                times(pow(1.0 - div(m, *total_iters as f64)?, *power)?)
            }
            LeafKind::Cosine { t_max, eta_min } => {
                let c = 1.0 + div(PI * le as f64, *t_max)?.cos();
                Some(
                    base.iter()
                        .map(|b| eta_min + (b - eta_min) * c / 2.0)
                        .collect(),
                )
            }
            _ => None,
        })
    }
}

/// ReduceLROnPlateau.
#[derive(Clone)]
struct Plateau {
    factor: f64,
    min_lrs: Vec<f64>,
    patience: i64,
    cooldown: i64,
    eps: f64,
    max_mode: bool,
    rel: bool,
    threshold: f64,
    st: PlateauState,
}

impl Plateau {
    fn is_better(&self, a: f64, best: f64) -> bool {
        match (self.max_mode, self.rel) {
            (false, true) => a < best * (1.0 - self.threshold),
            (false, false) => a < best - self.threshold,
            (true, true) => a > best * (self.threshold + 1.0),
            (true, false) => a > best + self.threshold,
        }
    }

    fn step(&mut self, g: &mut [Group], current: f64) -> Result<()> {
        self.st.last_epoch = next(self.st.last_epoch)?;
        if self.is_better(current, self.st.best) {
            self.st.best = current;
            self.st.num_bad_epochs = 0;
        } else {
            self.st.num_bad_epochs = self.st.num_bad_epochs.saturating_add(1);
        }
        if self.st.cooldown_counter > 0 {
            self.st.cooldown_counter -= 1;
            self.st.num_bad_epochs = 0;
        }
        if self.st.num_bad_epochs > self.patience {
            for (grp, min_lr) in g.iter_mut().zip(&self.min_lrs) {
                let old = grp.lr;
                let reduced = old * self.factor;
                // Python's max(a, b) keeps a unless b > a.
                let new = if *min_lr > reduced { *min_lr } else { reduced };
                if old - new > self.eps {
                    grp.lr = new;
                }
            }
            self.st.cooldown_counter = self.cooldown;
            self.st.num_bad_epochs = 0;
        }
        Ok(())
    }
}

/// SequentialLR.
#[derive(Clone)]
struct Sequential {
    milestones: Vec<i64>,
    children: Vec<Node>,
    last_epoch: i64,
}

/// A scheduler of the tree.
#[derive(Clone)]
enum Node {
    Leaf(Box<Leaf>),
    Sequential(Sequential),
    Chained(Vec<Node>),
    Plateau(Box<Plateau>),
}

impl Node {
    fn name(&self) -> &'static str {
        match self {
            Node::Leaf(l) => l.name,
            Node::Sequential(_) => "SequentialLR",
            Node::Chained(_) => "ChainedScheduler",
            Node::Plateau(_) => "ReduceLROnPlateau",
        }
    }

    fn step(&mut self, g: &mut [Group]) -> Result<()> {
        match self {
            Node::Leaf(l) => l.step(g),
            Node::Sequential(s) => {
                s.last_epoch = next(s.last_epoch)?;
                let idx = bisect_right(&s.milestones, s.last_epoch);
                let child = &mut s.children[idx];
                if idx > 0 && s.milestones[idx - 1] == s.last_epoch {
                    child.update_lr_at_zero(g)
                } else {
                    child.step(g)
                }
            }
            Node::Chained(children) => children.iter_mut().try_for_each(|c| c.step(g)),
            Node::Plateau(_) => Err(Error::Input(
                "ReduceLROnPlateau needs a metric: call step_metric".into(),
            )),
        }
    }

    /// `_initial_step()`: composites just step.
    fn initial_step(&mut self, g: &mut [Group]) -> Result<()> {
        match self {
            Node::Leaf(l) => l.initial_step(g),
            _ => self.step(g),
        }
    }

    /// `_update_lr(0)`, as SequentialLR calls it at a milestone.
    fn update_lr_at_zero(&mut self, g: &mut [Group]) -> Result<()> {
        match self {
            Node::Leaf(l) => l.update_lr(g, Some(0)),
            other => Err(Error::Input(format!(
                "SequentialLR cannot switch to a {} at a milestone (PyTorch raises \
                 NotImplementedError there)",
                other.name()
            ))),
        }
    }

    /// SequentialLR's `recursive_undo`.
    fn recursive_undo(&mut self) {
        match self {
            Node::Leaf(l) => l.st.last_epoch -= 1,
            Node::Sequential(s) => s.children.iter_mut().for_each(Node::recursive_undo),
            Node::Chained(children) => children.iter_mut().for_each(Node::recursive_undo),
            Node::Plateau(p) => p.st.last_epoch -= 1,
        }
    }

    fn cycles_momentum(&self) -> bool {
        match self {
            Node::Leaf(l) => match &l.kind {
                LeafKind::Cyclic(c) => c.cycle_momentum,
                LeafKind::OneCycle(o) => o.cycle_momentum,
                _ => false,
            },
            Node::Sequential(s) => s.children.iter().any(Node::cycles_momentum),
            Node::Chained(children) => children.iter().any(Node::cycles_momentum),
            Node::Plateau(_) => false,
        }
    }

    fn save(&self, out: &mut Vec<NodeState>) {
        match self {
            Node::Leaf(l) => out.push(NodeState::Leaf {
                name: l.name.into(),
                state: l.st.clone(),
            }),
            Node::Sequential(s) => {
                out.push(NodeState::Sequential {
                    last_epoch: s.last_epoch,
                });
                s.children.iter().for_each(|c| c.save(out));
            }
            Node::Chained(children) => {
                out.push(NodeState::Chained);
                children.iter().for_each(|c| c.save(out));
            }
            Node::Plateau(p) => out.push(NodeState::Plateau {
                state: p.st.clone(),
            }),
        }
    }

    fn load<'a>(
        &mut self,
        states: &mut impl Iterator<Item = &'a NodeState>,
        groups: usize,
    ) -> Result<()> {
        let bad = |what: String| Error::Input(format!("scheduler state does not fit: {what}"));
        let in_range = |e: i64| (-MAX_COUNT..=MAX_COUNT).contains(&e);
        let state = states
            .next()
            .ok_or_else(|| bad(format!("no state for {}", self.name())))?;
        match (self, state) {
            (Node::Leaf(l), NodeState::Leaf { name, state }) => {
                let restarts = matches!(l.kind, LeafKind::Restarts { .. });
                if name != l.name {
                    return Err(bad(format!("state of a {name} for a {}", l.name)));
                }
                if state.base_lrs.len() != groups
                    || !in_range(state.last_epoch)
                    || restarts != state.t_i.is_some()
                    || restarts != state.t_cur.is_some()
                {
                    return Err(bad(format!("malformed {name} state")));
                }
                l.st = state.clone();
            }
            (Node::Sequential(s), NodeState::Sequential { last_epoch }) => {
                if !in_range(*last_epoch) {
                    return Err(bad("malformed SequentialLR state".into()));
                }
                s.last_epoch = *last_epoch;
                for c in &mut s.children {
                    c.load(states, groups)?;
                }
            }
            (Node::Chained(children), NodeState::Chained) => {
                for c in children {
                    c.load(states, groups)?;
                }
            }
            (Node::Plateau(p), NodeState::Plateau { state }) => {
                if !in_range(state.last_epoch) {
                    return Err(bad("malformed ReduceLROnPlateau state".into()));
                }
                p.st = state.clone();
            }
            (node, state) => {
                return Err(bad(format!(
                    "state of a {} for a {}",
                    match state {
                        NodeState::Leaf { name, .. } => name.as_str(),
                        NodeState::Sequential { .. } => "SequentialLR",
                        NodeState::Chained => "ChainedScheduler",
                        NodeState::Plateau { .. } => "ReduceLROnPlateau",
                    },
                    node.name()
                )));
            }
        }
        Ok(())
    }
}

/// A PyTorch scheduler (or tree of them) with the param groups it acts on.
#[derive(Clone)]
pub(crate) struct Torch {
    /// The emulated `optimizer.param_groups`.
    pub(crate) groups: Vec<Group>,
    root: Node,
}

impl Torch {
    /// Builds from a spec whose type is one of [`TYPES`].
    pub(crate) fn build(spec: &Value, hint: usize, res: Option<&Resolver<'_>>) -> Result<Self> {
        let args = Args::new(spec)?;
        let mut groups = top_groups(&args, hint)?;
        let root = build_node(spec, &mut groups, res, 0)?;
        Ok(Self { groups, root })
    }

    /// The class name of the outermost scheduler.
    pub(crate) fn name(&self) -> &'static str {
        self.root.name()
    }

    /// `scheduler.step()`.
    pub(crate) fn step(&mut self) -> Result<()> {
        self.root.step(&mut self.groups)
    }

    /// ReduceLROnPlateau's `step(metrics)`.
    pub(crate) fn step_metric(&mut self, metric: f64) -> Result<()> {
        match &mut self.root {
            Node::Plateau(p) => p.step(&mut self.groups, metric),
            other => Err(Error::Input(format!(
                "{} takes no metric: call step (only ReduceLROnPlateau takes one)",
                other.name()
            ))),
        }
    }

    /// `scheduler.step(epoch)`.
    pub(crate) fn step_epoch(&mut self, epoch: f64) -> Result<()> {
        match &mut self.root {
            Node::Leaf(l) => l.step_epoch(&mut self.groups, epoch),
            other => Err(Error::Input(format!(
                "{}.step takes no epoch in PyTorch",
                other.name()
            ))),
        }
    }

    /// Whether the root is ReduceLROnPlateau.
    pub(crate) fn needs_metric(&self) -> bool {
        matches!(self.root, Node::Plateau(_))
    }

    /// Whether some scheduler of the tree cycles momentum.
    pub(crate) fn cycles_momentum(&self) -> bool {
        self.root.cycles_momentum()
    }

    /// The state of every scheduler in pre-order.
    pub(crate) fn save(&self) -> Vec<NodeState> {
        let mut out = Vec::new();
        self.root.save(&mut out);
        out
    }

    /// Loads what [`Torch::save`] gave.
    pub(crate) fn load(&mut self, groups: &[Group], nodes: &[NodeState]) -> Result<()> {
        if groups.len() != self.groups.len() {
            return Err(Error::Input(format!(
                "scheduler state does not fit: it has {} parameter groups, the scheduler {}",
                groups.len(),
                self.groups.len()
            )));
        }
        let mut it = nodes.iter();
        self.root.load(&mut it, groups.len())?;
        if it.next().is_some() {
            return Err(Error::Input(
                "scheduler state does not fit: it has more schedulers than the spec".into(),
            ));
        }
        self.groups = groups.to_vec();
        Ok(())
    }
}

/// The optimizer's param groups: their number and `lr` from the spec's "lr" (CyclicLR and
/// OneCycleLR may omit it: their own per-group lists, or `hint`, give the number).
fn top_groups(args: &Args<'_>, hint: usize) -> Result<Vec<Group>> {
    let lrs = match args.group_lrs(hint)? {
        Some(v) => v,
        None => {
            let keys: &[&str] = match args.ty {
                "CyclicLR" => &["base_lr", "max_lr", "base_momentum", "max_momentum"],
                "OneCycleLR" => &["max_lr", "base_momentum", "max_momentum"],
                _ => return Err(Error::Input(format!("{}: missing argument lr", args.ty))),
            };
            let mut n = hint;
            for key in keys {
                if n == 0 {
                    n = args.per_group(key)?.and_then(|p| p.len()).unwrap_or(0);
                }
            }
            // The optimizer's own lr: CyclicLR overwrites it with base_lr and OneCycleLR's
            // first step sets it, so it is never seen.
            vec![0.0; n.max(1)]
        }
    };
    for &lr in &lrs {
        if !non_negative(lr) {
            return Err(Error::InvalidHyperparameter(format!(
                "Invalid learning rate: {}",
                py_float(lr)
            )));
        }
    }
    Ok(lrs.into_iter().map(Group::new).collect())
}

/// The largest `T_mult` of CosineAnnealingWarmRestarts.
const MAX_T_MULT: i64 = 1 << 20;

/// An argument that PyTorch would divide by zero with (or take an integer modulo by zero), named
/// in `message`.
fn zero_divisor(message: &str) -> Error {
    Error::InvalidHyperparameter(message.into())
}

/// A positive integer argument, or PyTorch's message `Expected positive integer {key}, but
/// got {value}`.
fn positive_int(args: &Args<'_>, key: &str, v: &Value) -> Result<i64> {
    let msg = || {
        Error::InvalidHyperparameter(format!(
            "Expected positive integer {key}, but got {}",
            py_repr(v)
        ))
    };
    let i = v.as_i64().ok_or_else(msg)?;
    if i <= 0 {
        return Err(msg());
    }
    if i > MAX_COUNT {
        return Err(Error::Input(format!("{}: {key} is too large", args.ty)));
    }
    Ok(i)
}

/// The closures that "lr_lambda" names: one id for every group, or one per group.
fn lambdas(
    args: &Args<'_>,
    key: &str,
    groups: usize,
    res: Option<&Resolver<'_>>,
) -> Result<Vec<LrLambda>> {
    let v = args.req(key)?;
    let (ids, list) = match v {
        Value::String(s) => (vec![s.as_str()], false),
        Value::Array(items) => (
            items
                .iter()
                .map(|x| {
                    x.as_str().ok_or_else(|| {
                        Error::Input(format!(
                            "{}: {key} must be a closure id or a list of them, got {x}",
                            args.ty
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            true,
        ),
        other => {
            return Err(Error::Input(format!(
                "{}: {key} must be a closure id or a list of them, got {other}",
                args.ty
            )));
        }
    };
    if list && ids.len() != groups {
        return Err(Error::InvalidHyperparameter(format!(
            "Expected {groups} lr_lambdas, but got {}",
            ids.len()
        )));
    }
    let fs = ids
        .iter()
        .map(|id| resolve(args, key, id, res))
        .collect::<Result<Vec<_>>>()?;
    Ok(if list {
        fs
    } else {
        vec![fs[0].clone(); groups]
    })
}

fn resolve(args: &Args<'_>, key: &str, id: &str, res: Option<&Resolver<'_>>) -> Result<LrLambda> {
    let res = res.ok_or_else(|| {
        Error::Input(format!(
            "{} needs a Rust closure for {key}; it cannot come from JSON",
            args.ty
        ))
    })?;
    res(id).ok_or_else(|| Error::Input(format!("{}: no closure named {id:?} for {key}", args.ty)))
}

fn momentums(
    args: &Args<'_>,
    groups: &mut [Group],
    base_default: f64,
    max_default: f64,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let n = groups.len();
    let max = args
        .per_group("max_momentum")?
        .unwrap_or(PerGroup::One(max_default))
        .format("max_momentum", n)?;
    let base = args
        .per_group("base_momentum")?
        .unwrap_or(PerGroup::One(base_default))
        .format("base_momentum", n)?;
    for ((grp, m), b) in groups.iter_mut().zip(&max).zip(&base) {
        grp.momentum = *m;
        grp.max_momentum = Some(*m);
        grp.base_momentum = Some(*b);
    }
    Ok((base, max))
}

fn required_per_group(args: &Args<'_>, key: &str, groups: usize) -> Result<Vec<f64>> {
    args.per_group(key)?
        .ok_or_else(|| Error::Input(format!("{}: missing argument {key}", args.ty)))?
        .format(key, groups)
}

/// Builds one scheduler on the shared groups, as its Python constructor does (children of a
/// composite first, in order).
fn build_node(
    spec: &Value,
    g: &mut Vec<Group>,
    res: Option<&Resolver<'_>>,
    depth: usize,
) -> Result<Node> {
    if depth > MAX_DEPTH {
        return Err(Error::Input("schedule specs nest too deeply".into()));
    }
    let args = Args::new(spec)?;
    let n = g.len();
    let leaf = |name: &'static str, kind: LeafKind, g: &mut Vec<Group>| -> Result<Node> {
        Ok(Node::Leaf(Box::new(Leaf::attach(name, kind, g)?)))
    };
    match args.ty {
        "LambdaLR" => {
            args.allow(&["lr", "lr_lambda"])?;
            let f = lambdas(&args, "lr_lambda", n, res)?;
            leaf("LambdaLR", LeafKind::Lambda(f), g)
        }
        "MultiplicativeLR" => {
            args.allow(&["lr", "lr_lambda"])?;
            let f = lambdas(&args, "lr_lambda", n, res)?;
            leaf("MultiplicativeLR", LeafKind::Multiplicative(f), g)
        }
        "StepLR" => {
            args.allow(&["lr", "step_size", "gamma"])?;
            let step_size = args.i64("step_size")?;
            let gamma = args.f64_or("gamma", 0.1)?;
            if step_size == 0 {
                return Err(zero_divisor(
                    "StepLR: step_size must not be 0: the epoch is taken modulo step_size \
                     (integer modulo by zero)",
                ));
            }
            leaf("StepLR", LeafKind::Step { step_size, gamma }, g)
        }
        "MultiStepLR" => {
            args.allow(&["lr", "milestones", "gamma"])?;
            let kind = LeafKind::MultiStep {
                milestones: args.i64_list("milestones")?,
                gamma: args.f64_or("gamma", 0.1)?,
            };
            leaf("MultiStepLR", kind, g)
        }
        "ConstantLR" => {
            args.allow(&["lr", "factor", "total_iters"])?;
            let factor = args.f64_or("factor", 1.0 / 3.0)?;
            if !(0.0..=1.0).contains(&factor) {
                return Err(Error::InvalidHyperparameter(
                    "Constant multiplicative factor expected to be between 0 and 1.".into(),
                ));
            }
            let total_iters = args.i64_or("total_iters", 5)?;
            if factor == 0.0 && total_iters > 0 {
                return Err(zero_divisor(
                    "ConstantLR: factor must not be 0 when total_iters > 0: the LR is divided by \
                     factor at epoch total_iters (float division by zero)",
                ));
            }
            let kind = LeafKind::Constant {
                factor,
                total_iters,
            };
            leaf("ConstantLR", kind, g)
        }
        "LinearLR" => {
            args.allow(&["lr", "start_factor", "end_factor", "total_iters"])?;
            let start = args.f64_or("start_factor", 1.0 / 3.0)?;
            let end = args.f64_or("end_factor", 1.0)?;
            if start > 1.0 || start <= 0.0 {
                return Err(Error::InvalidHyperparameter(
                    "Starting multiplicative factor expected to be greater than 0 and less or equal to 1."
                        .into(),
                ));
            }
            if !(0.0..=1.0).contains(&end) {
                return Err(Error::InvalidHyperparameter(
                    "Ending multiplicative factor expected to be between 0 and 1.".into(),
                ));
            }
            let total_iters = args.i64_or("total_iters", 5)?;
            if total_iters == 0 {
                return Err(zero_divisor(
                    "LinearLR: total_iters must not be 0: the closed form (at a SequentialLR \
                     milestone, or step(epoch)) divides by total_iters (float division by zero)",
                ));
            }
            let kind = LeafKind::Linear {
                start,
                end,
                total_iters,
            };
            leaf("LinearLR", kind, g)
        }
        "ExponentialLR" => {
            args.allow(&["lr", "gamma"])?;
            let kind = LeafKind::Exponential {
                gamma: args.f64("gamma")?,
            };
            leaf("ExponentialLR", kind, g)
        }
        "PolynomialLR" => {
            args.allow(&["lr", "total_iters", "power"])?;
            let total_iters = args.i64_or("total_iters", 5)?;
            let power = args.f64_or("power", 1.0)?;
            if total_iters == 0 {
                return Err(zero_divisor(
                    "PolynomialLR: total_iters must not be 0: the closed form (at a SequentialLR \
                     milestone, or step(epoch)) divides by total_iters (division by zero)",
                ));
            }
            if power < 0.0 {
                return Err(zero_divisor(&format!(
                    "PolynomialLR: power must not be negative, got {}: the decay factor at epoch \
                     total_iters is 0.0 ** power (0.0 cannot be raised to a negative power)",
                    args.repr("power")
                )));
            }
            let kind = LeafKind::Polynomial { total_iters, power };
            leaf("PolynomialLR", kind, g)
        }
        "CosineAnnealingLR" => {
            args.allow(&["lr", "T_max", "eta_min"])?;
            let t_max = args.f64("T_max")?;
            let eta_min = args.f64_or("eta_min", 0.0)?;
            if t_max == 0.0 {
                return Err(zero_divisor(
                    "CosineAnnealingLR: T_max must not be 0: the epoch is taken modulo 2 * T_max \
                     and divided by T_max (integer modulo by zero)",
                ));
            }
            let kind = LeafKind::Cosine { t_max, eta_min };
            leaf("CosineAnnealingLR", kind, g)
        }
        "CosineAnnealingWarmRestarts" => {
            args.allow(&["lr", "T_0", "T_mult", "eta_min"])?;
            let t_0 = positive_int(&args, "T_0", args.req("T_0")?)?;
            let t_mult = match args.get("T_mult") {
                None => 1,
                Some(v) => match v.as_i64() {
                    Some(m) if (1..=MAX_T_MULT).contains(&m) => m,
                    Some(m) if m > MAX_T_MULT => {
                        return Err(Error::Input(format!(
                            "CosineAnnealingWarmRestarts: T_mult is too large, got {m} (at most \
                             {MAX_T_MULT})"
                        )));
                    }
                    _ => {
                        return Err(Error::InvalidHyperparameter(format!(
                            "Expected integer T_mult >= 1, but got {}",
                            py_repr(v)
                        )));
                    }
                },
            };
            let kind = LeafKind::Restarts {
                t_0,
                t_mult,
                eta_min: args.f64_or("eta_min", 0.0)?,
            };
            leaf("CosineAnnealingWarmRestarts", kind, g)
        }
        "CyclicLR" => {
            args.allow(&[
                "lr",
                "base_lr",
                "max_lr",
                "step_size_up",
                "step_size_down",
                "mode",
                "gamma",
                "scale_fn",
                "scale_mode",
                "cycle_momentum",
                "base_momentum",
                "max_momentum",
            ])?;
            let base_lrs = required_per_group(&args, "base_lr", n)?;
            for (grp, lr) in g.iter_mut().zip(&base_lrs) {
                grp.lr = *lr;
            }
            let max_lrs = required_per_group(&args, "max_lr", n)?;
            let up = args.f64_or("step_size_up", 2000.0)?;
            let down = args.opt_f64("step_size_down")?.unwrap_or(up);
            let total_size = up + down;
            if total_size == 0.0 {
                return Err(zero_divisor(&format!(
                    "CyclicLR: step_size_up + step_size_down must not be 0, got {} + {}: the \
                     cycle's length divides the step (float division by zero)",
                    py_float(up),
                    py_float(down)
                )));
            }
            let step_ratio = up / total_size;
            if step_ratio == 0.0 {
                return Err(zero_divisor(&if up == 0.0 {
                    "CyclicLR: step_size_up must not be 0: the LR rises over step_size_up / \
                     (step_size_up + step_size_down) of the cycle, which divides the position in \
                     the cycle (float division by zero)"
                        .to_string()
                } else {
                    format!(
                        "CyclicLR: step_size_up {} is too small against step_size_down {}: \
                         step_size_up / (step_size_up + step_size_down) rounds to 0, which \
                         divides the position in the cycle (float division by zero)",
                        py_float(up),
                        py_float(down)
                    )
                }));
            }
            let mode = args.str_or("mode", "triangular")?;
            let custom = match args.get("scale_fn") {
                None => None,
                Some(Value::String(id)) => Some(resolve(&args, "scale_fn", id, res)?),
                Some(v) => {
                    return Err(Error::Input(format!(
                        "CyclicLR: scale_fn must be a closure id, got {v}"
                    )));
                }
            };
            let gamma = args.f64_or("gamma", 1.0)?;
            let scale_mode = args.str_or("scale_mode", "cycle")?;
            let (scale, by_cycle) = match (custom, mode) {
                (Some(f), _) => (Scale::Custom(f), scale_mode == "cycle"),
                (None, "triangular") => (Scale::Triangular, true),
                (None, "triangular2") => (Scale::Triangular2, true),
                (None, "exp_range") => (Scale::ExpRange(gamma), false),
                (None, _) => {
                    return Err(Error::InvalidHyperparameter(
                        "mode is invalid and scale_fn is None".into(),
                    ));
                }
            };
            let cycle_momentum = args.bool_or("cycle_momentum", true)?;
            let (base_momentums, max_momentums) = if cycle_momentum {
                // PyTorch formats base_momentum first here.
                let n = g.len();
                required_or(&args, "base_momentum", 0.8, n)?;
                momentums(&args, g, 0.8, 0.9)?
            } else {
                (Vec::new(), Vec::new())
            };
            let kind = LeafKind::Cyclic(Box::new(Cyclic {
                max_lrs,
                total_size,
                step_ratio,
                scale,
                by_cycle,
                cycle_momentum,
                base_momentums,
                max_momentums,
            }));
            let mut node = Leaf::attach("CyclicLR", kind, g)?;
            node.st.base_lrs = base_lrs;
            Ok(Node::Leaf(Box::new(node)))
        }
        "OneCycleLR" => {
            args.allow(&[
                "lr",
                "max_lr",
                "total_steps",
                "epochs",
                "steps_per_epoch",
                "pct_start",
                "anneal_strategy",
                "cycle_momentum",
                "base_momentum",
                "max_momentum",
                "div_factor",
                "final_div_factor",
                "three_phase",
            ])?;
            let total_steps = if let Some(v) = args.get("total_steps") {
                positive_int(&args, "total_steps", v)?
            } else if let (Some(e), Some(s)) = (args.get("epochs"), args.get("steps_per_epoch")) {
                let e = positive_int(&args, "epochs", e)?;
                let s = positive_int(&args, "steps_per_epoch", s)?;
                e.checked_mul(s).filter(|t| *t <= MAX_COUNT).ok_or_else(|| {
                    Error::Input(format!(
                        "OneCycleLR: epochs * steps_per_epoch is too large (at most {MAX_COUNT})"
                    ))
                })?
            } else {
                return Err(Error::InvalidHyperparameter(
                    "You must define either total_steps OR (epochs AND steps_per_epoch)".into(),
                ));
            };
            let pct_start = args.f64_or("pct_start", 0.3)?;
            let three_phase = args.bool_or("three_phase", false)?;
            let ts = total_steps as f64;
            let phase = |end_step, start_lr, end_lr, start_momentum, end_momentum| Phase {
                end_step,
                start_lr,
                end_lr,
                start_momentum,
                end_momentum,
            };
            use Key::*;
            let phases = if three_phase {
                vec![
                    phase(
                        pct_start * ts - 1.0,
                        InitialLr,
                        MaxLr,
                        MaxMomentum,
                        BaseMomentum,
                    ),
                    phase(
                        2.0 * pct_start * ts - 2.0,
                        MaxLr,
                        InitialLr,
                        BaseMomentum,
                        MaxMomentum,
                    ),
                    phase(ts - 1.0, InitialLr, MinLr, MaxMomentum, MaxMomentum),
                ]
            } else {
                vec![
                    phase(
                        pct_start * ts - 1.0,
                        InitialLr,
                        MaxLr,
                        MaxMomentum,
                        BaseMomentum,
                    ),
                    phase(ts - 1.0, MaxLr, MinLr, BaseMomentum, MaxMomentum),
                ]
            };
            if !(0.0..=1.0).contains(&pct_start) {
                return Err(Error::InvalidHyperparameter(format!(
                    "Expected float between 0 and 1 pct_start, but got {}",
                    args.repr("pct_start")
                )));
            }
            let cos = match args.str_or("anneal_strategy", "cos")? {
                "cos" => true,
                "linear" => false,
                other => {
                    return Err(Error::InvalidHyperparameter(format!(
                        "anneal_strategy must be one of 'cos' or 'linear', instead got {other}"
                    )));
                }
            };
            let max_lrs = required_per_group(&args, "max_lr", n)?;
            let div_factor = args.f64_or("div_factor", 25.0)?;
            let final_div_factor = args.f64_or("final_div_factor", 1e4)?;
            if div_factor == 0.0 {
                return Err(zero_divisor(
                    "OneCycleLR: div_factor must not be 0: the initial LR is max_lr / div_factor \
                     (float division by zero)",
                ));
            }
            if final_div_factor == 0.0 {
                return Err(zero_divisor(
                    "OneCycleLR: final_div_factor must not be 0: the minimum LR is initial_lr / \
                     final_div_factor (float division by zero)",
                ));
            }
            for (grp, max_lr) in g.iter_mut().zip(&max_lrs) {
                let initial = div(*max_lr, div_factor)?;
                grp.initial_lr = Some(initial);
                grp.max_lr = Some(*max_lr);
                grp.min_lr = Some(div(initial, final_div_factor)?);
            }
            let cycle_momentum = args.bool_or("cycle_momentum", true)?;
            if cycle_momentum {
                momentums(&args, g, 0.85, 0.95)?;
            }
            // get_lr interpolates over each phase, dividing by its length.
            let mut start_step = 0.0;
            for (i, phase) in phases.iter().enumerate() {
                if phase.end_step - start_step == 0.0 {
                    return Err(zero_divisor(&format!(
                        "OneCycleLR: pct_start {} with total_steps {total_steps} leaves phase {} of \
                         {} with no length (it starts and ends at step {}): the LR is \
                         interpolated over that length (float division by zero)",
                        py_float(pct_start),
                        i + 1,
                        phases.len(),
                        py_float(phase.end_step)
                    )));
                }
                start_step = phase.end_step;
            }
            let kind = LeafKind::OneCycle(Box::new(OneCycle {
                total_steps,
                phases,
                cos,
                cycle_momentum,
            }));
            leaf("OneCycleLR", kind, g)
        }
        "ReduceLROnPlateau" => {
            args.allow(&[
                "lr",
                "mode",
                "factor",
                "patience",
                "threshold",
                "threshold_mode",
                "cooldown",
                "min_lr",
                "eps",
            ])?;
            let factor = args.f64_or("factor", 0.1)?;
            if factor >= 1.0 {
                return Err(Error::InvalidHyperparameter(
                    "Factor should be < 1.0.".into(),
                ));
            }
            let min_lrs = match args.per_group("min_lr")?.unwrap_or(PerGroup::One(0.0)) {
                PerGroup::One(x) => vec![x; n],
                PerGroup::Many(v) if v.len() == n => v,
                PerGroup::Many(v) => {
                    return Err(Error::InvalidHyperparameter(format!(
                        "expected {n} min_lrs, got {}",
                        v.len()
                    )));
                }
            };
            let patience = args.i64_or("patience", 10)?;
            let cooldown = args.i64_or("cooldown", 0)?;
            let eps = args.f64_or("eps", 1e-8)?;
            let mode = args.str_or("mode", "min")?;
            let threshold = args.f64_or("threshold", 1e-4)?;
            let threshold_mode = args.str_or("threshold_mode", "rel")?;
            let max_mode = match mode {
                "min" => false,
                "max" => true,
                other => {
                    return Err(Error::InvalidHyperparameter(format!(
                        "mode {other} is unknown!"
                    )));
                }
            };
            let rel = match threshold_mode {
                "rel" => true,
                "abs" => false,
                other => {
                    return Err(Error::InvalidHyperparameter(format!(
                        "threshold mode {other} is unknown!"
                    )));
                }
            };
            Ok(Node::Plateau(Box::new(Plateau {
                factor,
                min_lrs,
                patience,
                cooldown,
                eps,
                max_mode,
                rel,
                threshold,
                st: PlateauState {
                    last_epoch: 0,
                    best: if max_mode {
                        f64::NEG_INFINITY
                    } else {
                        f64::INFINITY
                    },
                    num_bad_epochs: 0,
                    cooldown_counter: 0,
                },
            })))
        }
        "SequentialLR" | "ChainedScheduler" => {
            let sequential = args.ty == "SequentialLR";
            if sequential {
                args.allow(&["lr", "schedulers", "milestones"])?;
            } else {
                args.allow(&["lr", "schedulers"])?;
            }
            let name = if sequential {
                "SequentialLR"
            } else {
                "ChainedScheduler"
            };
            let specs = args.req("schedulers")?;
            let specs = specs.as_array().ok_or_else(|| {
                Error::Input(format!(
                    "{name}: argument schedulers must be a list of specs, got {specs}"
                ))
            })?;
            let mut children = Vec::with_capacity(specs.len());
            for (i, child) in specs.iter().enumerate() {
                let child_args = Args::new(child)?;
                if child_args.has("lr") {
                    return Err(Error::Input(format!(
                        "{name}: schedulers[{i}] ({}) must not give \"lr\": the optimizer's lr \
                         is the {name}'s",
                        child_args.ty
                    )));
                }
                if !TYPES.contains(&child_args.ty) {
                    return Err(Error::Input(format!(
                        "{name}: schedulers[{i}] must be a PyTorch scheduler, got {:?}",
                        child_args.ty
                    )));
                }
                children.push(build_node(child, g, res, depth + 1)?);
            }
            if children.is_empty() {
                return Err(Error::InvalidHyperparameter(if sequential {
                    "SequentialLR expects at least one scheduler, but got no scheduler.".into()
                } else {
                    "ChainedScheduler expects at least one scheduler to be chained, but got no \
                     scheduler."
                        .into()
                }));
            }
            if let Some(i) = children.iter().position(|c| matches!(c, Node::Plateau(_))) {
                return Err(Error::InvalidHyperparameter(format!(
                    "{name} does not support `ReduceLROnPlateau` scheduler as it requires \
                     additional kwargs to be specified when calling `step`, but got one at index \
                     {i} in the given schedulers sequence."
                )));
            }
            if !sequential {
                return Ok(Node::Chained(children));
            }
            let milestones = args.i64_list("milestones")?;
            if milestones.len() + 1 != children.len() {
                return Err(Error::InvalidHyperparameter(format!(
                    "Sequential Schedulers expects number of schedulers provided to be one more \
                     than the number of milestone points, but got number of schedulers {} and \
                     the number of milestones to be equal to {}",
                    children.len(),
                    milestones.len()
                )));
            }
            if milestones.iter().any(|m| m.abs() > MAX_COUNT) {
                return Err(Error::Input(
                    "SequentialLR: a milestone is too large".into(),
                ));
            }
            for grp in g.iter_mut() {
                if let Some(initial) = grp.initial_lr {
                    grp.lr = initial;
                }
            }
            children.iter_mut().for_each(Node::recursive_undo);
            let idx = bisect_right(&milestones, 0);
            children[idx].initial_step(g)?;
            Ok(Node::Sequential(Sequential {
                milestones,
                children,
                last_epoch: 0,
            }))
        }
        other => Err(Error::Input(format!("unknown schedule type {other:?}"))),
    }
}

/// Checks a per-group argument with a default (for PyTorch's order of checks).
fn required_or(args: &Args<'_>, key: &str, default: f64, groups: usize) -> Result<Vec<f64>> {
    args.per_group(key)?
        .unwrap_or(PerGroup::One(default))
        .format(key, groups)
}
