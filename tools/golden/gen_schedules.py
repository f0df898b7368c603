#!/usr/bin/env python3
"""Generate golden learning-rate schedule traces for wgpu-optim's host-side schedules.

Run from the repository root (CPU only; needs torch and Keras 3, see
``tools/golden/requirements.txt``):

    python3 tools/golden/gen_schedules.py

It writes, under ``tests/golden/schedules/`` (format and trace semantics are
defined in ``tests/golden/schedules/SPEC.md``):

* ``pytorch.json`` - {"torch_version": ..., "cases": [{"name", "optimizer"
  ("SGD" | "Adam"), "spec", "steps", "lr", ["momentum"], ["metrics"],
  ["epochs"]}, ...]} traced with the real ``torch.optim.lr_scheduler``
  classes.  ``lr`` (and ``momentum``, present only when the schedule cycles
  momentum; for Adam it is ``betas[0]``) has ``steps`` rows, each a list with
  one float per parameter group.  Row k is the value the k-th optimizer step
  uses: for k in range(steps): record; optimizer.step(); scheduler.step().
  ReduceLROnPlateau cases carry ``metrics`` (``steps`` values; the step after
  row k is ``scheduler.step(metrics[k])``).  Fractional
  CosineAnnealingWarmRestarts cases carry ``epochs`` (``steps - 1`` values;
  the step after row k is ``scheduler.step(epochs[k])``).  OneCycleLR cases
  have steps == total_steps and are never stepped after the last row (torch
  raises past total_steps).
* ``keras.json`` - {"keras_version": ..., "cases": [{"name", "spec", "steps",
  "lr"}, ...]} with ``lr[k] = float(schedule(k))`` from
  ``keras.optimizers.schedules`` (Keras 3, torch backend).  Keras computes in
  float32, so these are float32 values widened to float64.

Every spec is round-tripped through JSON before the scheduler is built from it,
exactly as a reader of the golden file would see it, and schedulers are built
generically from the spec (``"type"`` is the library class name, closure ids are
mapped to the fixed lambdas of SPEC.md, other keys are passed through).  Floats
are written with ``repr`` precision (``json`` round-trips Python floats exactly).

The Rust tests read the committed JSON files, so CI needs no Python.  The
script has no randomness beyond fixed seeds and no timestamps: rerunning it
rewrites the same files.
"""

import json
import math
import os
import random
import sys
import warnings

os.environ["KERAS_BACKEND"] = "torch"  # must precede `import keras`

import torch  # noqa: E402
from torch.optim import lr_scheduler as sched  # noqa: E402

import keras  # noqa: E402

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT_DIR = os.path.join(REPO_ROOT, "tests", "golden", "schedules")
MAX_FILE_BYTES = 1024 * 1024

# Closure ids of SPEC.md -> the fixed Python functions.
CLOSURES = {
    "pow095": lambda epoch: 0.95 ** epoch,
    "inv_step3": lambda epoch: 1.0 / (1 + epoch // 3),
    "const095": lambda epoch: 0.95,
    "alt": lambda epoch: 0.9 if epoch % 2 == 0 else 1.05,
    "half_per_cycle": lambda x: 1 / (2.0 ** (x - 1)),
    "decay_iter": lambda x: 0.999 ** x,
}
CLOSURE_KEYS = ("lr_lambda", "scale_fn")

TORCH_TYPES = {
    name: getattr(sched, name)
    for name in [
        "LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR", "ConstantLR",
        "LinearLR", "ExponentialLR", "PolynomialLR", "CosineAnnealingLR",
        "CosineAnnealingWarmRestarts", "CyclicLR", "OneCycleLR",
        "ReduceLROnPlateau", "SequentialLR", "ChainedScheduler",
    ]
}


# --------------------------------------------------------------------------
# Deterministic inputs
# --------------------------------------------------------------------------

def metrics_walk(seed, n, start, drift, noise, flat_prob):
    """Seeded random walk rounded to 3 decimals: a trend (drift) with noise and
    flat stretches (repeated values), so plateau schedulers see both improvements
    and plateaus."""
    rng = random.Random(seed)
    m = start
    out = []
    for _ in range(n):
        if rng.random() >= flat_prob:
            m += drift + rng.uniform(-noise, noise)
        out.append(round(m, 3))
    return out


def nonuniform_epochs(n):
    """Increasing fractional epochs: a hand-picked head (hits restart boundaries
    of T_0=3, T_mult=2 exactly: 3, 9, 21) then seeded increments."""
    head = [0.1, 0.5, 1.7, 2.0, 2.05, 2.999, 3.0, 3.01, 4.5, 5.25, 6.0, 8.75,
            9.0, 9.5, 12.0, 15.3, 20.99, 21.0, 21.4]
    rng = random.Random(7)
    out = list(head)
    while len(out) < n:
        out.append(round(out[-1] + rng.uniform(0.05, 1.6), 2))
    return out[:n]


# --------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------

def group_lrs(spec):
    """Initial per-group LRs of the optimizer for a top-level spec."""
    if "lr" in spec:
        lr = spec["lr"]
    elif "base_lr" in spec:  # CyclicLR (it overwrites group lr with base_lr)
        lr = spec["base_lr"]
    else:  # OneCycleLR (it overwrites group lr with max_lr / div_factor)
        lr = spec["max_lr"]
    return list(lr) if isinstance(lr, list) else [lr]


def build_optimizer(kind, lrs):
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs]
    if kind == "SGD":
        return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)
    if kind == "Adam":
        return torch.optim.Adam(groups, lr=lrs[0])
    raise ValueError(f"unknown optimizer {kind}")


def build_scheduler(spec, optimizer):
    """spec (dict) -> torch scheduler on `optimizer`, generically."""
    cls = TORCH_TYPES[spec["type"]]
    kwargs = {}
    for key, val in spec.items():
        if key in ("type", "lr"):
            continue
        if key in CLOSURE_KEYS:
            val = CLOSURES[val]
        elif key == "schedulers":
            val = [build_scheduler(child, optimizer) for child in val]
        kwargs[key] = val
    if cls is sched.ChainedScheduler:
        return cls(kwargs.pop("schedulers"), optimizer=optimizer, **kwargs)
    return cls(optimizer, **kwargs)


def cycles_momentum(spec):
    return spec["type"] in ("CyclicLR", "OneCycleLR") and spec.get("cycle_momentum", True)


def run_torch_case(case):
    spec = case["spec"]
    kind = case["optimizer"]
    n = case["steps"]
    opt = build_optimizer(kind, group_lrs(spec))
    s = build_scheduler(spec, opt)
    with_mom = cycles_momentum(spec)
    mom_key = "betas" if kind == "Adam" else "momentum"
    lr_rows, mom_rows = [], []
    for k in range(n):
        lr_rows.append([float(g["lr"]) for g in opt.param_groups])
        if with_mom:
            if kind == "Adam":
                mom_rows.append([float(g["betas"][0]) for g in opt.param_groups])
            else:
                mom_rows.append([float(g[mom_key]) for g in opt.param_groups])
        opt.step()
        if spec["type"] == "ReduceLROnPlateau":
            s.step(case["metrics"][k])
        elif "epochs" in case:
            if k < n - 1:
                s.step(case["epochs"][k])
        elif spec["type"] == "OneCycleLR":
            if k < n - 1:  # torch raises when stepped past total_steps
                s.step()
        else:
            s.step()
    out = {"lr": lr_rows}
    if with_mom:
        out["momentum"] = mom_rows
    return out


def torch_cases():
    C = []

    def add(name, spec, steps, optimizer="SGD", **extra):
        C.append({"name": name, "optimizer": optimizer, "spec": spec, "steps": steps, **extra})

    # LambdaLR / MultiplicativeLR
    add("lambda_pow095", {"type": "LambdaLR", "lr": 0.1, "lr_lambda": "pow095"}, 40)
    add("lambda_inv_step3", {"type": "LambdaLR", "lr": 0.1, "lr_lambda": "inv_step3"}, 40)
    add("lambda_pow095_2groups", {"type": "LambdaLR", "lr": [0.1, 0.05], "lr_lambda": "pow095"}, 40)
    add("multiplicative_const095", {"type": "MultiplicativeLR", "lr": 0.1, "lr_lambda": "const095"}, 40)
    add("multiplicative_alt", {"type": "MultiplicativeLR", "lr": 0.1, "lr_lambda": "alt"}, 40)

    # Step-type and simple decays
    add("step_3_half", {"type": "StepLR", "lr": 0.1, "step_size": 3, "gamma": 0.5}, 40)
    add("step_5_default_gamma", {"type": "StepLR", "lr": 0.1, "step_size": 5}, 40)
    add("multistep_repeated", {"type": "MultiStepLR", "lr": 0.1, "milestones": [3, 7, 7, 12], "gamma": 0.5}, 30)
    add("multistep_default_gamma", {"type": "MultiStepLR", "lr": 0.1, "milestones": [5, 10]}, 30)
    add("constant_default", {"type": "ConstantLR", "lr": 0.1}, 30)
    add("constant_half_4", {"type": "ConstantLR", "lr": 0.1, "factor": 0.5, "total_iters": 4}, 30)
    add("linear_default", {"type": "LinearLR", "lr": 0.1}, 30)
    add("linear_warmup_8", {"type": "LinearLR", "lr": 0.1, "start_factor": 0.25, "end_factor": 1.0, "total_iters": 8}, 30)
    add("linear_decay_10", {"type": "LinearLR", "lr": 0.1, "start_factor": 1.0, "end_factor": 0.1, "total_iters": 10}, 30)
    add("exponential_09", {"type": "ExponentialLR", "lr": 0.1, "gamma": 0.9}, 40)
    add("exponential_095_2groups", {"type": "ExponentialLR", "lr": [0.1, 0.03], "gamma": 0.95}, 40)
    add("polynomial_default", {"type": "PolynomialLR", "lr": 0.1}, 30)
    add("polynomial_10_pow2", {"type": "PolynomialLR", "lr": 0.1, "total_iters": 10, "power": 2.0}, 30)
    add("polynomial_10_pow05", {"type": "PolynomialLR", "lr": 0.1, "total_iters": 10, "power": 0.5}, 30)

    # Cosine annealing
    add("cosine_10_periodic", {"type": "CosineAnnealingLR", "lr": 0.1, "T_max": 10, "eta_min": 0.001}, 45)
    add("cosine_7", {"type": "CosineAnnealingLR", "lr": 0.1, "T_max": 7}, 30)
    add("cosine_12_2groups", {"type": "CosineAnnealingLR", "lr": [0.1, 0.02], "T_max": 12, "eta_min": 0.001}, 40)
    add("warm_restarts_5", {"type": "CosineAnnealingWarmRestarts", "lr": 0.1, "T_0": 5}, 40)
    add("warm_restarts_3_mult2", {"type": "CosineAnnealingWarmRestarts", "lr": 0.1, "T_0": 3, "T_mult": 2, "eta_min": 0.01}, 60)
    n = 60
    add("warm_restarts_4_mult2_frac03", {"type": "CosineAnnealingWarmRestarts", "lr": 0.1, "T_0": 4, "T_mult": 2, "eta_min": 0.001}, n,
        epochs=[k * 0.3 for k in range(1, n)])
    add("warm_restarts_5_frac03", {"type": "CosineAnnealingWarmRestarts", "lr": 0.1, "T_0": 5}, n,
        epochs=[k * 0.3 for k in range(1, n)])
    n = 50
    add("warm_restarts_3_mult2_nonuniform", {"type": "CosineAnnealingWarmRestarts", "lr": 0.1, "T_0": 3, "T_mult": 2, "eta_min": 0.01}, n,
        epochs=nonuniform_epochs(n - 1))

    # CyclicLR
    add("cyclic_triangular", {"type": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 5}, 60)
    add("cyclic_triangular2", {"type": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 5, "mode": "triangular2"}, 60)
    add("cyclic_exp_range", {"type": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 5, "mode": "exp_range", "gamma": 0.98}, 60)
    add("cyclic_scale_fn_cycle", {"type": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 5,
                                  "scale_fn": "half_per_cycle", "scale_mode": "cycle"}, 60)
    add("cyclic_scale_fn_iterations", {"type": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 5,
                                       "scale_fn": "decay_iter", "scale_mode": "iterations"}, 60)
    add("cyclic_up4_down6", {"type": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 4, "step_size_down": 6}, 60)
    add("cyclic_momentum_sgd", {"type": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 5,
                                "cycle_momentum": True, "base_momentum": 0.8, "max_momentum": 0.9}, 60)
    add("cyclic_momentum_adam", {"type": "CyclicLR", "base_lr": 0.001, "max_lr": 0.01, "step_size_up": 5,
                                 "base_momentum": 0.85, "max_momentum": 0.95}, 60, optimizer="Adam")
    add("cyclic_no_momentum", {"type": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 5, "cycle_momentum": False}, 60)
    add("cyclic_2groups_momentum_lists", {"type": "CyclicLR", "base_lr": [0.01, 0.002], "max_lr": [0.1, 0.03],
                                          "step_size_up": 3, "step_size_down": 7, "mode": "exp_range", "gamma": 0.99,
                                          "base_momentum": [0.8, 0.85], "max_momentum": [0.9, 0.99]}, 60)
    add("cyclic_2groups", {"type": "CyclicLR", "base_lr": [0.01, 0.001], "max_lr": [0.1, 0.02], "step_size_up": 5,
                           "mode": "triangular2"}, 60)

    # OneCycleLR: steps == total_steps
    add("onecycle_default_cos", {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 50}, 50)
    add("onecycle_linear", {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 50, "anneal_strategy": "linear"}, 50)
    add("onecycle_three_phase", {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 60, "three_phase": True}, 60)
    add("onecycle_three_phase_linear", {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 45, "three_phase": True,
                                        "anneal_strategy": "linear", "pct_start": 0.25}, 45)
    add("onecycle_div10_final100", {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 50, "div_factor": 10.0,
                                    "final_div_factor": 100.0}, 50)
    add("onecycle_epochs_5x8", {"type": "OneCycleLR", "max_lr": 0.1, "epochs": 5, "steps_per_epoch": 8}, 40)
    add("onecycle_no_momentum", {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 50, "cycle_momentum": False}, 50)
    add("onecycle_adam", {"type": "OneCycleLR", "max_lr": 0.01, "total_steps": 50}, 50, optimizer="Adam")
    add("onecycle_momentum_08_095", {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 50, "pct_start": 0.4,
                                     "base_momentum": 0.8, "max_momentum": 0.95}, 50)
    add("onecycle_pct01_odd_total", {"type": "OneCycleLR", "max_lr": 0.05, "total_steps": 37, "pct_start": 0.1}, 37)
    add("onecycle_2groups", {"type": "OneCycleLR", "max_lr": [0.1, 0.01], "total_steps": 50}, 50)

    # ReduceLROnPlateau
    n = 80
    down = metrics_walk(11, n, 1.0, -0.01, 0.03, 0.3)
    up = metrics_walk(12, n, 0.5, 0.05, 0.04, 0.3)
    add("plateau_min_rel", {"type": "ReduceLROnPlateau", "lr": 0.1, "mode": "min", "factor": 0.5, "patience": 2,
                            "cooldown": 1, "min_lr": 0.003}, n, metrics=down)
    add("plateau_default", {"type": "ReduceLROnPlateau", "lr": 0.1, "patience": 3}, n, metrics=down)
    add("plateau_max_abs", {"type": "ReduceLROnPlateau", "lr": 0.1, "mode": "max", "factor": 0.5, "patience": 2,
                            "threshold": 0.1, "threshold_mode": "abs"}, n, metrics=up)
    add("plateau_max_rel_cooldown3", {"type": "ReduceLROnPlateau", "lr": 0.1, "mode": "max", "factor": 0.3, "patience": 1,
                                      "threshold": 0.01, "cooldown": 3}, n, metrics=up)
    add("plateau_eps_suppress", {"type": "ReduceLROnPlateau", "lr": 0.05, "factor": 0.5, "patience": 1, "eps": 0.01},
        n, metrics=down)
    add("plateau_2groups_min_lr_list", {"type": "ReduceLROnPlateau", "lr": [0.1, 0.01], "factor": 0.5, "patience": 2,
                                        "min_lr": [0.01, 0.002]}, n, metrics=down)

    # SequentialLR / ChainedScheduler
    add("sequential_warmup_cosine", {"type": "SequentialLR", "lr": 0.1, "milestones": [5], "schedulers": [
        {"type": "LinearLR", "start_factor": 0.01, "total_iters": 5},
        {"type": "CosineAnnealingLR", "T_max": 30}]}, 40)
    add("sequential_constant_exp_step", {"type": "SequentialLR", "lr": 0.1, "milestones": [4, 12], "schedulers": [
        {"type": "ConstantLR", "factor": 0.5, "total_iters": 3},
        {"type": "ExponentialLR", "gamma": 0.9},
        {"type": "StepLR", "step_size": 4, "gamma": 0.5}]}, 40)
    add("chained_constant_exp", {"type": "ChainedScheduler", "lr": 0.1, "schedulers": [
        {"type": "ConstantLR", "factor": 0.1, "total_iters": 2},
        {"type": "ExponentialLR", "gamma": 0.9}]}, 30)
    add("chained_linear_step", {"type": "ChainedScheduler", "lr": 0.1, "schedulers": [
        {"type": "LinearLR", "start_factor": 0.5, "total_iters": 4},
        {"type": "StepLR", "step_size": 3, "gamma": 0.5}]}, 30)
    add("sequential_2groups_linear_multistep", {"type": "SequentialLR", "lr": [0.1, 0.01], "milestones": [6], "schedulers": [
        {"type": "LinearLR", "start_factor": 0.1, "total_iters": 6},
        {"type": "MultiStepLR", "milestones": [5, 15], "gamma": 0.3}]}, 40)
    add("chained_multiplicative_step", {"type": "ChainedScheduler", "lr": 0.1, "schedulers": [
        {"type": "MultiplicativeLR", "lr_lambda": "alt"},
        {"type": "StepLR", "step_size": 5, "gamma": 0.5}]}, 30)
    return C


# --------------------------------------------------------------------------
# Keras
# --------------------------------------------------------------------------

def build_keras_schedule(spec):
    cls = getattr(keras.optimizers.schedules, spec["type"])
    return cls(**{k: v for k, v in spec.items() if k != "type"})


def keras_cases():
    C = []

    def add(name, spec, steps):
        C.append({"name": name, "spec": spec, "steps": steps})

    add("exponential", {"type": "ExponentialDecay", "initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5}, 80)
    add("exponential_staircase", {"type": "ExponentialDecay", "initial_learning_rate": 0.1, "decay_steps": 10,
                                  "decay_rate": 0.5, "staircase": True}, 80)
    add("piecewise", {"type": "PiecewiseConstantDecay", "boundaries": [10, 20], "values": [0.1, 0.05, 0.01]}, 60)
    add("polynomial_linear", {"type": "PolynomialDecay", "initial_learning_rate": 0.1, "decay_steps": 40,
                              "end_learning_rate": 0.001}, 80)
    add("polynomial_pow2", {"type": "PolynomialDecay", "initial_learning_rate": 0.1, "decay_steps": 40,
                            "end_learning_rate": 0.001, "power": 2.0}, 80)
    add("polynomial_cycle", {"type": "PolynomialDecay", "initial_learning_rate": 0.1, "decay_steps": 15,
                             "end_learning_rate": 0.001, "cycle": True}, 80)
    add("polynomial_cycle_pow2", {"type": "PolynomialDecay", "initial_learning_rate": 0.1, "decay_steps": 15,
                                  "end_learning_rate": 0.001, "power": 2.0, "cycle": True}, 80)
    add("inverse_time", {"type": "InverseTimeDecay", "initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5}, 80)
    add("inverse_time_staircase", {"type": "InverseTimeDecay", "initial_learning_rate": 0.1, "decay_steps": 10,
                                   "decay_rate": 0.5, "staircase": True}, 80)
    add("cosine", {"type": "CosineDecay", "initial_learning_rate": 0.1, "decay_steps": 50}, 80)
    add("cosine_alpha", {"type": "CosineDecay", "initial_learning_rate": 0.1, "decay_steps": 50, "alpha": 0.1}, 80)
    add("cosine_warmup", {"type": "CosineDecay", "initial_learning_rate": 0.0, "decay_steps": 50, "alpha": 0.1,
                          "warmup_target": 0.1, "warmup_steps": 10}, 80)
    add("cosine_warmup_from_001", {"type": "CosineDecay", "initial_learning_rate": 0.01, "decay_steps": 40,
                                   "warmup_target": 0.1, "warmup_steps": 8}, 80)
    add("cosine_restarts", {"type": "CosineDecayRestarts", "initial_learning_rate": 0.1, "first_decay_steps": 10}, 100)
    add("cosine_restarts_tmul1_mmul08", {"type": "CosineDecayRestarts", "initial_learning_rate": 0.1,
                                         "first_decay_steps": 10, "t_mul": 1.0, "m_mul": 0.8, "alpha": 0.05}, 100)
    add("cosine_restarts_tmul15_mmul09", {"type": "CosineDecayRestarts", "initial_learning_rate": 0.1,
                                          "first_decay_steps": 7, "t_mul": 1.5, "m_mul": 0.9, "alpha": 0.01}, 100)
    return C


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------

def roundtrip(obj):
    return json.loads(json.dumps(obj))


def check_finite(name, rows):
    for row in rows:
        for v in (row if isinstance(row, list) else [row]):
            if not (isinstance(v, float) and math.isfinite(v)):
                raise SystemExit(f"{name}: non-finite or non-float value {v!r}")


def write_doc(path, version_key, version, cases):
    lines = [json.dumps(c, separators=(",", ":"), allow_nan=False) for c in cases]
    text = ('{"%s":%s,"cases":[\n' % (version_key, json.dumps(version))
            + ",\n".join(lines) + "\n]}\n")
    json.loads(text)  # sanity: valid JSON
    if len(text.encode()) > MAX_FILE_BYTES:
        raise SystemExit(f"{path}: {len(text)} bytes exceeds {MAX_FILE_BYTES}")
    with open(path, "w", newline="\n") as f:
        f.write(text)
    return len(text.encode())


def main():
    warnings.simplefilter("ignore")  # step(epoch) deprecation warning etc.
    os.makedirs(OUT_DIR, exist_ok=True)

    names = set()
    out = []
    for case in torch_cases():
        assert case["name"] not in names, case["name"]
        names.add(case["name"])
        case = roundtrip(case)  # build from exactly what a reader sees
        n = case["steps"]
        if "epochs" in case:
            assert len(case["epochs"]) == n - 1
            assert all(a < b for a, b in zip(case["epochs"], case["epochs"][1:]))
        if "metrics" in case:
            assert len(case["metrics"]) == n
        if case["spec"]["type"] == "OneCycleLR":
            sp = case["spec"]
            assert n == sp.get("total_steps", sp.get("epochs", 0) * sp.get("steps_per_epoch", 0))
        trace = run_torch_case(case)
        check_finite(case["name"], trace["lr"])
        assert len(trace["lr"]) == n
        row = {"name": case["name"], "optimizer": case["optimizer"], "spec": case["spec"], "steps": n}
        row.update(trace)
        for extra in ("metrics", "epochs"):
            if extra in case:
                row[extra] = case[extra]
        out.append(row)
    size = write_doc(os.path.join(OUT_DIR, "pytorch.json"), "torch_version", torch.__version__, out)
    print(f"pytorch.json: {len(out)} cases, {size} bytes (torch {torch.__version__})")

    names = set()
    kout = []
    for case in keras_cases():
        assert case["name"] not in names, case["name"]
        names.add(case["name"])
        case = roundtrip(case)
        schedule = build_keras_schedule(case["spec"])
        lr = [float(schedule(k)) for k in range(case["steps"])]
        check_finite(case["name"], lr)
        kout.append({"name": case["name"], "spec": case["spec"], "steps": case["steps"], "lr": lr})
    size = write_doc(os.path.join(OUT_DIR, "keras.json"), "keras_version", keras.__version__, kout)
    print(f"keras.json: {len(kout)} cases, {size} bytes (keras {keras.__version__}, backend {keras.backend.backend()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
