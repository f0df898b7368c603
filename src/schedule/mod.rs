//! Learning-rate schedules on the host, in f64: PyTorch's `torch.optim.lr_scheduler`, Keras 3's
//! `keras.optimizers.schedules` and the textbook forms, step for step.
//!
//! A schedule is described by a JSON spec: an object whose `"type"` is PyTorch's class name,
//! Keras' class name or one of the textbook names below, and whose other keys are that class's
//! own argument names, with that library's defaults when omitted (a `null` counts as omitted).
//! `optimizer`, `last_epoch` and `verbose` are never given; unknown keys are an error.
//!
//! ```
//! use wgpu_optim::schedule::Scheduler;
//!
//! # fn main() -> Result<(), wgpu_optim::Error> {
//! let mut s = Scheduler::from_json(r#"{"type":"StepLR","lr":0.1,"step_size":2,"gamma":0.5}"#)?;
//! let mut lrs = Vec::new();
//! for _ in 0..5 {
//!     lrs.push(s.lrs()[0]); // the LR that the next optimizer step uses
//!     // optimizer.step() with that LR, then:
//!     s.step()?;
//! }
//! assert_eq!(lrs, [0.1, 0.1, 0.05, 0.05, 0.025]);
//! # Ok(())
//! # }
//! ```
//!
//! # PyTorch
//!
//! `LambdaLR`, `MultiplicativeLR`, `StepLR`, `MultiStepLR`, `ConstantLR`, `LinearLR`,
//! `ExponentialLR`, `PolynomialLR`, `CosineAnnealingLR`, `CosineAnnealingWarmRestarts`,
//! `CyclicLR`, `OneCycleLR`, `ReduceLROnPlateau`, `SequentialLR` and `ChainedScheduler`.
//!
//! The spec's `"lr"` is the optimizer's LR: a number, or a list with one LR per parameter
//! group. CyclicLR and OneCycleLR need no `"lr"` (they use `base_lr` / `max_lr`, numbers or
//! per-group lists). `SequentialLR` and `ChainedScheduler` take `"schedulers"`, a list of child
//! specs without `"lr"`, and SequentialLR `"milestones"`. Closures (`lr_lambda` of LambdaLR and
//! MultiplicativeLR, `scale_fn` of CyclicLR) are id strings that a resolver turns into Rust
//! closures ([`Scheduler::from_spec_with_closures`]); a plain JSON spec cannot supply them.
//!
//! PyTorch's schedulers mostly compute the next LR from the optimizer's current LR (the
//! recursive, "chainable" forms), share the optimizer's `param_groups` when combined, and have
//! quirks that show in the numbers: CosineAnnealingLR's recursion past `T_max`, SequentialLR's
//! `recursive_undo` and its closed-form `_update_lr(0)` at each milestone, ConstantLR and
//! LinearLR acting on whatever LR the group holds. This module emulates the param groups (their
//! `lr`, `initial_lr`, momentum or beta1, and OneCycleLR's and CyclicLR's extra keys) and runs
//! each class's own `get_lr`, `_get_closed_form_lr` and `step` on them with the same float
//! operations in the same order, so the numbers agree with PyTorch's to rounding (the golden
//! tests check 1e-9 relative on traces recorded from torch 2.15). PyTorch's checks give
//! [`Error::InvalidHyperparameter`] with PyTorch's message.
//!
//! Where PyTorch would divide by zero (a ZeroDivisionError in Python, at construction or only
//! at some later step), the spec is rejected when the schedule is built, with an
//! [`Error::InvalidHyperparameter`] that names the argument: StepLR `step_size` 0,
//! CosineAnnealingLR `T_max` 0, LinearLR and PolynomialLR `total_iters` 0, PolynomialLR a
//! negative `power`, ConstantLR `factor` 0 with `total_iters` > 0, CyclicLR `step_size_up` 0 or
//! `step_size_up + step_size_down` 0, OneCycleLR `div_factor` or `final_div_factor` 0, and a
//! `pct_start` that leaves a phase of the cycle with no length for its `total_steps`. This holds
//! even where the division would come only at a step that a SequentialLR milestone or the end of
//! the training never reaches. The one division that depends on the step rather than on an
//! argument alone, CosineAnnealingLR's `1 + cos(π·(t − 1)/T_max)` for a `T_max` that is not a
//! whole number (e.g. `T_max` 2/3 at step 3), gives [`Error::Input`] at that step, as in PyTorch,
//! with a message that names `T_max`.
//!
//! CyclicLR and OneCycleLR cycle the momentum by default (`cycle_momentum`): then
//! [`Scheduler::momentum`] gives the value to use as SGD's or RMSprop's `momentum`, or as Adam's
//! or AdamW's `beta1`, for the next step.
//!
//! # Keras
//!
//! `ExponentialDecay`, `PiecewiseConstantDecay`, `PolynomialDecay`, `InverseTimeDecay`,
//! `CosineDecay` and `CosineDecayRestarts`, with Keras' argument names
//! (`initial_learning_rate`, `decay_steps`, …). The LR before step `k` (counting from 0) is
//! `schedule(k)`, with Keras' formulas computed in f64 (Keras computes in float32, so the two
//! agree to about 1e-7 relative). A Keras schedule gives the same LR to every group.
//!
//! # Textbook forms
//!
//! `Fixed` {lr}, `PowerScheduling` {lr, s, c = 1}: `lr/(1 + t/s)^c`, `TimeBasedDecay`
//! {lr, decay}: `lr/(1 + decay·t)`, `ExponentialScheduling` {lr, s}: `lr·0.1^(t/s)` and
//! `StepDecay` {lr, drop, s}: `lr·drop^⌊t/s⌋`, at step `t` = 0, 1, …. Some printings give the
//! exponential form as `0.1^(−t/s)` and the step form as `e^⌊t/s⌋`; those grow, so this module
//! implements the decaying forms above.
//!
//! `LinearWarmup` {warmup_steps `W`, warmup_start_factor `f` (default 0), schedule: a child
//! spec of any kind} puts a linear warm-up in front of the child. With `c(j)` the child's LRs
//! after `j` of its own steps:
//!
//! ```text
//! lr(t) = c(0) · (f + (1 − f) · t / W)    for t < W
//! lr(t) = c(t − W)                        for t ≥ W
//! ```
//!
//! so the LR rises linearly from `f·c(0)` and reaches the child's initial LR `c(0)` at step
//! `W`, where the child starts, shifted by `W` steps (it is not stepped during the warm-up).
//! Momentum, when the child cycles it, is the child's. A ReduceLROnPlateau child ignores the
//! metrics given during the warm-up.
//!
//! Textbook and Keras arguments that would divide by zero are rejected when the schedule is
//! built, naming the argument: Keras checks its `decay_steps` and `first_decay_steps` itself
//! (with Keras' message); beyond Keras, InverseTimeDecay's `decay_rate` must be ≥ 0 (else
//! `1 + decay_rate·step/decay_steps` reaches 0) and PolynomialDecay's `power` ≥ 0 (else it
//! raises 0 to a negative power at `decay_steps`); PowerScheduling's `c` must be ≥ 0.
//!
//! # Steps
//!
//! [`Scheduler::lrs`] is the LR per group that the next optimizer step uses; after that
//! optimizer step, call [`Scheduler::step`] (PyTorch's `scheduler.step()`; for Keras and textbook
//! schedules, the step count goes up by one), or [`Scheduler::step_metric`] for
//! ReduceLROnPlateau. Every method that returns an error leaves the scheduler as it was.
//!
//! A [`Trace`] holds every value in memory, so [`Scheduler::trace`] takes at most
//! [`MAX_TRACE_STEPS`] steps and [`MAX_TRACE_VALUES`] learning rates in all
//! ([`Scheduler::max_trace_steps`]); a schedule has at most [`MAX_GROUPS`] parameter groups.

mod keras;
mod output;
mod pytorch;
mod spec;
mod textbook;
mod util;

pub use output::plot_trace;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use spec::Args;
use std::fmt;
use std::sync::Arc;

/// A Rust closure standing for a Python one: LambdaLR's and MultiplicativeLR's `lr_lambda`
/// (called with the epoch, `last_epoch`), and CyclicLR's `scale_fn` (called with the cycle
/// number, from 1, when `scale_mode` is `"cycle"`, else with the iteration count).
pub type LrLambda = Arc<dyn Fn(u64) -> f64 + Send + Sync>;

/// Every schedule type name that a spec may give.
pub fn types() -> impl Iterator<Item = &'static str> {
    pytorch::TYPES
        .iter()
        .chain(keras::TYPES)
        .chain(textbook::TYPES)
        .chain(&["LinearWarmup"])
        .copied()
}

/// Whether a spec of this type takes the optimizer's LR as its `"lr"`: the PyTorch schedulers
/// except CyclicLR and OneCycleLR (which set the LR from their own `base_lr` / `max_lr`).
pub fn uses_optimizer_lr(schedule_type: &str) -> bool {
    pytorch::TYPES.contains(&schedule_type) && !matches!(schedule_type, "CyclicLR" | "OneCycleLR")
}

/// How deeply `LinearWarmup` specs may nest.
const MAX_DEPTH: usize = 32;

/// The most parameter groups that [`Scheduler::from_spec`] takes (`groups`, or the length of a
/// per-group list in the spec).
pub const MAX_GROUPS: usize = 1 << 16;

/// The most steps that one [`Scheduler::trace`] (and `wgpu-optim schedule --steps`) records.
pub const MAX_TRACE_STEPS: usize = 1_000_000;

/// The most learning rates (steps × parameter groups) that one [`Scheduler::trace`] records;
/// the momenta, when the schedule cycles them, are as many again.
pub const MAX_TRACE_VALUES: usize = 4_000_000;

#[derive(Clone)]
enum Kind {
    Torch(Box<pytorch::Torch>),
    Keras {
        name: String,
        schedule: keras::Keras,
        groups: usize,
        t: f64,
    },
    Textbook {
        name: String,
        schedule: textbook::Textbook,
        t: f64,
    },
    Warmup(Box<Warmup>),
}

#[derive(Clone)]
struct Warmup {
    steps: u64,
    start_factor: f64,
    t: u64,
    child: Kind,
}

/// The state of a [`Kind`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "form", rename_all = "snake_case")]
enum KindState {
    Torch {
        groups: Vec<pytorch::Group>,
        schedulers: Vec<pytorch::NodeState>,
    },
    Position {
        #[serde(with = "util::exact")]
        t: f64,
    },
    Warmup {
        t: u64,
        child: Box<KindState>,
    },
}

fn build_kind(
    spec: &Value,
    hint: usize,
    res: Option<&pytorch::Resolver<'_>>,
    depth: usize,
) -> Result<Kind> {
    if depth > MAX_DEPTH {
        return Err(Error::Input("schedule specs nest too deeply".into()));
    }
    let args = Args::new(spec)?;
    let ty = args.ty;
    if pytorch::TYPES.contains(&ty) {
        Ok(Kind::Torch(Box::new(pytorch::Torch::build(
            spec, hint, res,
        )?)))
    } else if keras::TYPES.contains(&ty) {
        Ok(Kind::Keras {
            name: ty.into(),
            schedule: keras::Keras::build(&args)?,
            groups: hint.max(1),
            t: 0.0,
        })
    } else if textbook::TYPES.contains(&ty) {
        Ok(Kind::Textbook {
            name: ty.into(),
            schedule: textbook::Textbook::build(&args, hint)?,
            t: 0.0,
        })
    } else if ty == "LinearWarmup" {
        args.allow(&["warmup_steps", "warmup_start_factor", "schedule"])?;
        let steps = args.i64("warmup_steps")?;
        if steps < 0 {
            return Err(Error::InvalidHyperparameter(format!(
                "LinearWarmup: warmup_steps must be >= 0, got {steps}"
            )));
        }
        let start_factor = args.f64_or("warmup_start_factor", 0.0)?;
        if !(0.0..=1.0).contains(&start_factor) {
            return Err(Error::InvalidHyperparameter(format!(
                "LinearWarmup: warmup_start_factor must be between 0 and 1, got {}",
                util::py_float(start_factor)
            )));
        }
        let child = build_kind(args.req("schedule")?, hint, res, depth + 1)?;
        Ok(Kind::Warmup(Box::new(Warmup {
            steps: steps as u64,
            start_factor,
            t: 0,
            child,
        })))
    } else {
        Err(Error::Input(format!(
            "unknown schedule type {ty:?} (known: {})",
            types().collect::<Vec<_>>().join(", ")
        )))
    }
}

impl Kind {
    fn name(&self) -> String {
        match self {
            Kind::Torch(t) => t.name().into(),
            Kind::Keras { name, .. } | Kind::Textbook { name, .. } => name.clone(),
            Kind::Warmup(_) => "LinearWarmup".into(),
        }
    }

    fn lrs(&self) -> Vec<f64> {
        match self {
            Kind::Torch(t) => t.groups.iter().map(|g| g.lr).collect(),
            Kind::Keras {
                schedule,
                groups,
                t,
                ..
            } => vec![schedule.eval(*t); *groups],
            Kind::Textbook { schedule, t, .. } => schedule
                .lrs
                .iter()
                .map(|&lr| schedule.eval(lr, *t))
                .collect(),
            Kind::Warmup(w) => {
                let lrs = w.child.lrs();
                if w.t < w.steps {
                    let f = w.start_factor + (1.0 - w.start_factor) * w.t as f64 / w.steps as f64;
                    lrs.into_iter().map(|lr| lr * f).collect()
                } else {
                    lrs
                }
            }
        }
    }

    fn momentum(&self) -> Option<Vec<f64>> {
        match self {
            Kind::Torch(t) if t.cycles_momentum() => {
                Some(t.groups.iter().map(|g| g.momentum).collect())
            }
            Kind::Warmup(w) => w.child.momentum(),
            _ => None,
        }
    }

    fn needs_metric(&self) -> bool {
        match self {
            Kind::Torch(t) => t.needs_metric(),
            Kind::Warmup(w) => w.child.needs_metric(),
            _ => false,
        }
    }

    fn step(&mut self) -> Result<()> {
        match self {
            Kind::Torch(t) => t.step(),
            Kind::Keras { t, .. } | Kind::Textbook { t, .. } => {
                *t += 1.0;
                Ok(())
            }
            Kind::Warmup(w) => {
                if w.child.needs_metric() {
                    return w.child.step();
                }
                w.t = w.t.saturating_add(1);
                if w.t > w.steps {
                    w.child.step()
                } else {
                    Ok(())
                }
            }
        }
    }

    fn step_metric(&mut self, metric: f64) -> Result<()> {
        match self {
            Kind::Torch(t) => t.step_metric(metric),
            Kind::Warmup(w) if w.child.needs_metric() => {
                w.t = w.t.saturating_add(1);
                if w.t > w.steps {
                    w.child.step_metric(metric)
                } else {
                    Ok(())
                }
            }
            other => Err(Error::Input(format!(
                "{} takes no metric: call step (only ReduceLROnPlateau takes one)",
                other.name()
            ))),
        }
    }

    fn step_epoch(&mut self, epoch: f64) -> Result<()> {
        match self {
            Kind::Torch(t) => t.step_epoch(epoch),
            Kind::Keras { t, .. } | Kind::Textbook { t, .. } => {
                if !(epoch >= 0.0 && epoch.is_finite()) {
                    return Err(Error::Input(format!(
                        "Expected non-negative epoch, but got {}",
                        util::py_float(epoch)
                    )));
                }
                *t = epoch;
                Ok(())
            }
            Kind::Warmup(_) => Err(Error::Input(
                "LinearWarmup cannot jump to an epoch: call step".into(),
            )),
        }
    }

    fn save(&self) -> KindState {
        match self {
            Kind::Torch(t) => KindState::Torch {
                groups: t.groups.clone(),
                schedulers: t.save(),
            },
            Kind::Keras { t, .. } | Kind::Textbook { t, .. } => KindState::Position { t: *t },
            Kind::Warmup(w) => KindState::Warmup {
                t: w.t,
                child: Box::new(w.child.save()),
            },
        }
    }

    fn load(&mut self, state: &KindState) -> Result<()> {
        match (self, state) {
            (Kind::Torch(t), KindState::Torch { groups, schedulers }) => t.load(groups, schedulers),
            (Kind::Keras { t, .. } | Kind::Textbook { t, .. }, KindState::Position { t: s }) => {
                if !(*s >= 0.0 && s.is_finite()) {
                    return Err(Error::Input(
                        "scheduler state does not fit: bad step count".into(),
                    ));
                }
                *t = *s;
                Ok(())
            }
            (Kind::Warmup(w), KindState::Warmup { t, child }) => {
                w.t = *t;
                w.child.load(child)
            }
            _ => Err(Error::Input(
                "scheduler state does not fit: it is of another kind of schedule".into(),
            )),
        }
    }
}

/// A learning-rate schedule: the one type the rest of the crate uses. See the
/// [module documentation](self) for the spec format and the semantics.
#[derive(Clone)]
pub struct Scheduler {
    kind: Kind,
    schedule: String,
    lrs: Vec<f64>,
    momentum: Option<Vec<f64>>,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("schedule", &self.schedule)
            .field("lrs", &self.lrs)
            .field("momentum", &self.momentum)
            .finish_non_exhaustive()
    }
}

/// A scheduler's state, for checkpoints: serialize it with serde (every float is written so that
/// it reads back bit for bit, infinities included) and load it into a scheduler built from the
/// same spec with [`Scheduler::load_state`]; the resumed run continues with the identical
/// sequence. Closures are not part of the state (as in PyTorch): the scheduler that loads it
/// brings its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchedulerState {
    schedule: String,
    state: KindState,
}

/// The LRs (and momenta) of consecutive optimizer steps, as [`Scheduler::trace`] and [`trace`]
/// record them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// Row `k`: the LR per group that optimizer step `k` (from 0) uses.
    pub lr: Vec<Vec<f64>>,
    /// Row `k`: the momentum (or beta1) per group that step `k` uses, when the schedule cycles
    /// momentum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<Vec<Vec<f64>>>,
}

impl Scheduler {
    fn new(spec: &Value, groups: usize, res: Option<&pytorch::Resolver<'_>>) -> Result<Self> {
        if groups > MAX_GROUPS {
            return Err(Error::Input(format!(
                "groups: {groups} parameter groups asked for, at most {MAX_GROUPS} are supported"
            )));
        }
        let kind = build_kind(spec, groups, res, 0)?;
        let schedule = Args::new(spec)?.ty.to_string();
        let mut s = Self {
            kind,
            schedule,
            lrs: Vec::new(),
            momentum: None,
        };
        s.refresh();
        if s.lrs.len() > MAX_GROUPS {
            return Err(Error::Input(format!(
                "{}: the spec gives {} parameter groups, at most {MAX_GROUPS} are supported",
                s.schedule,
                s.lrs.len()
            )));
        }
        if groups != 0 && s.lrs.len() != groups {
            return Err(Error::Input(format!(
                "{}: the spec gives {} parameter groups, {groups} were asked for",
                s.schedule,
                s.lrs.len()
            )));
        }
        Ok(s)
    }

    /// Builds a schedule from its spec. `groups` is the number of parameter groups: a scalar LR
    /// is broadcast to that many (as for an optimizer whose groups share one LR), a list of LRs
    /// must have that length; 0 takes the number from the spec (one for a scalar). At most
    /// [`MAX_GROUPS`].
    ///
    /// Fails with [`Error::Input`] on a malformed spec (unknown type or argument, missing
    /// argument, wrong JSON type, or a closure id, which needs
    /// [`Scheduler::from_spec_with_closures`]) or too many groups, and with
    /// [`Error::InvalidHyperparameter`], with PyTorch's or Keras' message, where that library's
    /// constructor would raise, or naming the argument where it would divide by zero later (see
    /// the [module documentation](self)).
    pub fn from_spec(spec: &Value, groups: usize) -> Result<Self> {
        Self::new(spec, groups, None)
    }

    /// As [`Scheduler::from_spec`], with `closures` turning the spec's closure ids
    /// (`lr_lambda`, `scale_fn`) into Rust closures; an id it answers `None` for is an error.
    pub fn from_spec_with_closures(
        spec: &Value,
        groups: usize,
        closures: &dyn Fn(&str) -> Option<LrLambda>,
    ) -> Result<Self> {
        Self::new(spec, groups, Some(closures))
    }

    /// Parses a JSON spec and builds it, taking the number of groups from the spec.
    pub fn from_json(json: &str) -> Result<Self> {
        let spec: Value = serde_json::from_str(json)
            .map_err(|e| Error::Input(format!("schedule spec is not valid JSON: {e}")))?;
        Self::from_spec(&spec, 0)
    }

    /// PyTorch's `LambdaLR(optimizer, lr_lambda)` for an optimizer with these group LRs: the LR
    /// of group `i` at epoch `e` is `lrs[i] · lr_lambda(e)`.
    pub fn lambda_lr(lrs: &[f64], lr_lambda: LrLambda) -> Result<Self> {
        Self::with_lambda("LambdaLR", lrs, lr_lambda)
    }

    /// PyTorch's `MultiplicativeLR(optimizer, lr_lambda)` for an optimizer with these group LRs:
    /// each step multiplies the LR by `lr_lambda(epoch)`.
    pub fn multiplicative_lr(lrs: &[f64], lr_lambda: LrLambda) -> Result<Self> {
        Self::with_lambda("MultiplicativeLR", lrs, lr_lambda)
    }

    fn with_lambda(ty: &str, lrs: &[f64], f: LrLambda) -> Result<Self> {
        let spec = serde_json::json!({"type": ty, "lr": lrs, "lr_lambda": "f"});
        Self::from_spec_with_closures(&spec, 0, &|id| (id == "f").then(|| f.clone()))
    }

    fn refresh(&mut self) {
        self.lrs = self.kind.lrs();
        self.momentum = self.kind.momentum();
    }

    /// Runs `f` on a copy and keeps the result only when it succeeds.
    fn transact(&mut self, f: impl FnOnce(&mut Kind) -> Result<()>) -> Result<()> {
        let mut kind = self.kind.clone();
        f(&mut kind)?;
        self.kind = kind;
        self.refresh();
        Ok(())
    }

    /// The spec's type name.
    pub fn schedule(&self) -> &str {
        &self.schedule
    }

    /// The LR per parameter group that the next optimizer step uses.
    pub fn lrs(&self) -> &[f64] {
        &self.lrs
    }

    /// The momentum (SGD, RMSprop) or beta1 (Adam, AdamW) per group that the next optimizer
    /// step uses, when the schedule cycles momentum (CyclicLR, OneCycleLR); else `None`.
    pub fn momentum(&self) -> Option<&[f64]> {
        self.momentum.as_deref()
    }

    /// Whether the schedule cycles momentum (then [`Scheduler::momentum`] is `Some`).
    pub fn cycles_momentum(&self) -> bool {
        self.momentum.is_some()
    }

    /// The number of parameter groups.
    pub fn groups(&self) -> usize {
        self.lrs.len()
    }

    /// Whether the schedule steps on a metric (ReduceLROnPlateau): then call
    /// [`Scheduler::step_metric`], not [`Scheduler::step`].
    pub fn needs_metric(&self) -> bool {
        self.kind.needs_metric()
    }

    /// PyTorch's `scheduler.step()`, after the optimizer step. For Keras and textbook schedules
    /// the step count goes up by one. An error for ReduceLROnPlateau (it needs
    /// [`Scheduler::step_metric`]) and where PyTorch raises, e.g. OneCycleLR stepped past
    /// `total_steps`.
    pub fn step(&mut self) -> Result<()> {
        self.transact(Kind::step)
    }

    /// ReduceLROnPlateau's `scheduler.step(metric)`. An error for every other schedule.
    pub fn step_metric(&mut self, metric: f64) -> Result<()> {
        self.transact(|k| k.step_metric(metric))
    }

    /// PyTorch's deprecated `scheduler.step(epoch)`: jumps to `epoch`. CosineAnnealingWarmRestarts
    /// takes any non-negative epoch, fractional ones included (its documented use); the other
    /// PyTorch schedulers derived from `LRScheduler` take whole non-negative epochs and use
    /// their closed form where PyTorch has one; SequentialLR, ChainedScheduler,
    /// ReduceLROnPlateau and LinearWarmup reject it. For Keras and textbook schedules it sets
    /// the step count (any non-negative value).
    pub fn step_epoch(&mut self, epoch: f64) -> Result<()> {
        self.transact(|k| k.step_epoch(epoch))
    }

    /// The state, to resume later with [`Scheduler::load_state`].
    pub fn state(&self) -> SchedulerState {
        SchedulerState {
            schedule: self.schedule.clone(),
            state: self.kind.save(),
        }
    }

    /// Loads a state from [`Scheduler::state`] of a scheduler built from the same spec. An
    /// error, leaving this scheduler unchanged, when the state does not fit its structure.
    pub fn load_state(&mut self, state: &SchedulerState) -> Result<()> {
        if state.schedule != self.schedule {
            return Err(Error::Input(format!(
                "scheduler state does not fit: it is a {}'s, this is a {}",
                state.schedule, self.schedule
            )));
        }
        self.transact(|k| k.load(&state.state))
    }

    /// The most steps that [`Scheduler::trace`] records for this schedule: [`MAX_TRACE_STEPS`],
    /// or fewer with many parameter groups, so that the trace holds at most
    /// [`MAX_TRACE_VALUES`] learning rates.
    pub fn max_trace_steps(&self) -> usize {
        MAX_TRACE_STEPS.min(MAX_TRACE_VALUES / self.groups().max(1))
    }

    /// The LRs (and momenta) of the next `steps` optimizer steps, from the current position,
    /// without changing the scheduler: row 0 is [`Scheduler::lrs`] now; between rows the
    /// scheduler steps once, with `metrics[k]` after row `k` for ReduceLROnPlateau (at least
    /// `steps − 1` metrics), or with `step_epoch(epochs[k])` after row `k` when `epochs` is
    /// given (at least `steps − 1` of them), else with [`Scheduler::step`].
    ///
    /// `steps` may be at most [`Scheduler::max_trace_steps`]; more is an [`Error::Input`] that
    /// names `steps`.
    pub fn trace(
        &self,
        steps: usize,
        metrics: Option<&[f64]>,
        epochs: Option<&[f64]>,
    ) -> Result<Trace> {
        let max = self.max_trace_steps();
        if steps > max {
            return Err(Error::Input(format!(
                "steps: a trace of {steps} steps is too long: at most {max} for {} parameter \
                 group{} (the trace is kept in memory)",
                self.groups(),
                if self.groups() == 1 { "" } else { "s" }
            )));
        }
        let needed = steps.saturating_sub(1);
        match (self.needs_metric(), metrics) {
            (true, None) => {
                return Err(Error::Input(format!(
                    "{} needs a metric for each step",
                    self.schedule
                )));
            }
            (true, Some(m)) if m.len() < needed => {
                return Err(Error::Input(format!(
                    "{} needs {needed} metrics for {steps} steps, got {}",
                    self.schedule,
                    m.len()
                )));
            }
            (false, Some(_)) => {
                return Err(Error::Input(format!(
                    "{} takes no metrics (only ReduceLROnPlateau does)",
                    self.schedule
                )));
            }
            _ => {}
        }
        if let Some(e) = epochs
            && e.len() < needed
        {
            return Err(Error::Input(format!(
                "{needed} epochs needed for {steps} steps, got {}",
                e.len()
            )));
        }
        let mut s = self.clone();
        let mut lr = Vec::with_capacity(steps);
        let mut momentum = s.momentum.is_some().then(|| Vec::with_capacity(steps));
        for k in 0..steps {
            lr.push(s.lrs.clone());
            if let (Some(rows), Some(m)) = (&mut momentum, &s.momentum) {
                rows.push(m.clone());
            }
            if k + 1 < steps {
                if let Some(m) = metrics {
                    s.step_metric(m[k])?;
                } else if let Some(e) = epochs {
                    s.step_epoch(e[k])?;
                } else {
                    s.step()?;
                }
            }
        }
        Ok(Trace { lr, momentum })
    }
}

/// The LRs (and momenta) of the first `steps` optimizer steps of the schedule `spec` (groups
/// from the spec, no closures): see [`Scheduler::trace`], which bounds `steps`. `metrics` feeds
/// ReduceLROnPlateau.
pub fn trace(spec: &Value, steps: usize, metrics: Option<&[f64]>) -> Result<Trace> {
    Scheduler::from_spec(spec, 0)?.trace(steps, metrics, None)
}
