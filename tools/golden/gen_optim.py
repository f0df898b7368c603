#!/usr/bin/env python3
"""Generate golden reference files for the wgpu-optim optimizer kernels.

Run from the repository root:

    python3 tools/golden/gen_optim.py

It runs the real ``torch.optim`` classes (SGD, Adam, AdamW, RMSprop, Adagrad,
NAdam, RAdam, Adamax, Adadelta, Rprop, ASGD, Adafactor, Muon), ``Lion`` from lion-pytorch and
``Lamb``, ``ADOPT`` and ``AdEMAMix`` from pytorch-optimizer and
``AdamWScheduleFree`` from schedulefree, at the versions in
tools/golden/requirements.txt (the script refuses others, see PACKAGE_OPTIMIZERS),
on CPU over a fixed, seeded problem and writes, under ``tests/golden/optim/``:

* ``params.safetensors``  - initial parameters (F32), one tensor per name
                            ("w" [7,5], "b" [13], "v" [300]).
* ``extra_params.safetensors``, ``extra_grads.safetensors`` - the same for the
                            tensors only some cases step ("c" [3,4,6], Adafactor's;
                            "m" [6,11], Muon's, which steps "w" and "m" only).
* ``grads.safetensors``   - per-step gradients (F32), one tensor per name with
                            shape [STEPS, *param_shape]; step k uses grads[name][k].
* ``cases.json``          - {"steps": STEPS, "names": [...], "cases": [
                              {"name": ..., "optimizer": {"type": <torch class>,
                               "lr": ..., <non-default args, torch names>}}, ...]}
  A case that steps other tensors than "names" lists its own under "names".
  For the classes from outside torch.optim, "type" is the package's class name
  and the other keys are the package's own argument names; ADOPT's
  ``"clip_lambda": null`` stands for ``clip_lambda=None`` (no clipping; the
  package's default is ``step ** 0.25``).
  A case may also carry a ``"schedule"``: a torch.optim.lr_scheduler spec in
  the format of tests/golden/schedules/SPEC.md, without "lr" (the base LR is
  the optimizer's). The scheduler is stepped after every optimizer step, as
  ``wgpu-optim replay --schedule`` does.
* ``<case>.f32.safetensors`` - final params and optimizer state after STEPS
                            steps, computed in float32 with torch's single-tensor
                            CPU path (foreach=False) for torch.optim classes; the
                            others with their package's default (pytorch-optimizer:
                            its foreach path, on CPU too).
* ``<case>.f64.safetensors`` - the same run in float64 (params and grads
                            upcast before the run); F64 tensors.

In the per-case files, final params are stored under their names and every
optimizer state tensor under ``<name>.<state name>`` exactly as
``optimizer.state`` names it (momentum_buffer, exp_avg, exp_avg_sq,
max_exp_avg_sq, square_avg, grad_avg, sum, step; NAdam: mu_product;
Adamax: exp_inf; Adadelta: square_avg, acc_delta; Rprop: prev, step_size;
ASGD: eta, mu, ax; Adafactor: row_var [..., rows, 1] and col_var [..., 1, cols]
for tensors of two dimensions or more, variance for the others).  State entries that are None are skipped.  The 0-d
per-parameter scalars ``step``, ``mu_product`` (NAdam), ``eta`` and ``mu``
(ASGD) are stored as 0-d F32 tensors in both files: torch creates them in its
scalar dtype (float32 while the default dtype is float32, which this script
leaves alone), not in the param dtype, so the float64 run's are float32 too
(and torch's float64 trajectory really does round mu_product, eta and mu to
float32 every step).  Every other state tensor has the run's dtype.
pytorch-optimizer keeps one ``step`` per param group (GROUP_STEP): it is stored
as every param's ``<name>.step``, as wgpu-optim keeps it per tensor.  Lamb's
per-step diagnostics (weight_norm, adam_norm, trust_ratio) are not stored.
AdamWScheduleFree runs in train mode (``train()`` before the first step): its
params are y, its state z and exp_avg_sq; its per-group ``k``, ``lr_max`` and
``weight_sum`` (Python floats) are stored as every param's ``<name>.step``,
``<name>.lr_max`` and, as wgpu-optim keeps it, a float32 pair ``<name>.weight_sum``
+ ``<name>.weight_sum_lo`` (0-d F32, the same in both files); and the params
after ``eval()`` (x) as ``<name>.eval``.

While it runs, the script checks that the cases reach the branches they are
there for, and prints where: RAdam's rectification switch (rho_t > 5),
Rprop's clamp of step_size at either bound of step_sizes (counted from the
pre-clamp value, recomputed before each step), the step from which ASGD's
average ``ax`` differs from the param, Lamb's clamp of the weight norm at 10
(per tensor), and ADOPT's clipping of the normalized gradient at
clip_lambda(step).

The Rust tests read these committed files, so CI needs no Python.  Rerunning
this script is deterministic and rewrites the same files (stale per-case files
in the output directory are removed) on the same machine and torch build;
another CPU or torch build may differ in the last bit of float32 results
(torch's vectorized CPU kernels fuse multiply-adds, their scalar tails may not).  It prints, per case, PyTorch's own
float32 error: the max abs difference between the f32 and f64 final params.
"""

import inspect
import json
import os
import sys

import torch
from safetensors.torch import save_file

SEED = 20261123
STEPS = 20
GRAD_SCALE = 0.5
SHAPES = [("w", (7, 5)), ("b", (13,)), ("v", (300,))]
NAMES = [n for n, _ in SHAPES]
# Tensors that only some classes' cases step (their cases list them in cases.json), drawn after
# the others' params and grads so that those stay as they were: Adafactor factors every tensor
# of two dimensions or more over its last two, one pair of factors per leading index.
EXTRA_SHAPES = [("c", (3, 4, 6)), ("m", (6, 11))]
EXTRA_NAMES = {"Adafactor": ["c"]}
# Classes that step other tensors than NAMES: Muon takes matrices only ("w" is tall, so Muon
# iterates it transposed; "m" is wide).
OWN_NAMES = {"Muon": ["w", "m"]}


def case_names(spec):
    """The tensors a case steps: the class's OWN_NAMES, or NAMES and its EXTRA_NAMES."""
    if spec["type"] in OWN_NAMES:
        return OWN_NAMES[spec["type"]]
    return NAMES + EXTRA_NAMES.get(spec["type"], [])


def zeropower_via_newtonschulz_f32(grad, ns_coefficients, ns_steps, eps):
    """torch.optim._muon._zeropower_via_newtonschulz (torch 2.15) with its iterations in the
    gradient's own dtype instead of bfloat16 (WGSL has no bfloat16): the same checks, the same
    operations in the same order."""
    if ns_steps >= 100:
        raise ValueError(
            "Number of steps must be less than 100 for computational efficiency"
        )
    if len(grad.shape) != 2:
        raise ValueError("Input tensor gradient must be a 2D matrix")
    if len(ns_coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")
    a, b, c = ns_coefficients
    ortho_grad = grad.clone()
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    ortho_grad.div_(ortho_grad.norm().clamp(min=eps))
    for _ in range(ns_steps):
        gram_matrix = ortho_grad @ ortho_grad.T
        gram_update = torch.addmm(
            gram_matrix, gram_matrix, gram_matrix, beta=b, alpha=c
        )
        ortho_grad = torch.addmm(ortho_grad, gram_update, ortho_grad, beta=a)
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    return ortho_grad


# The function patched is the bfloat16 one this copy departs from only there.
assert "bfloat16" in inspect.getsource(torch.optim._muon._zeropower_via_newtonschulz)
torch.optim._muon._zeropower_via_newtonschulz = zeropower_via_newtonschulz_f32

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT_DIR = os.path.join(REPO_ROOT, "tests", "golden", "optim")
MAX_TOTAL_BYTES = 2 * 1024 * 1024

# (case name, optimizer spec).  Spec keys are torch.optim class / argument
# names; "lr" is always explicit, other args only when non-default.
CASES = [
    # --- SGD ---
    ("sgd", {"type": "SGD", "lr": 0.05}),
    ("sgd_wd", {"type": "SGD", "lr": 0.05, "weight_decay": 0.1}),
    ("sgd_momentum", {"type": "SGD", "lr": 0.05, "momentum": 0.9}),
    ("sgd_momentum_dampening",
     {"type": "SGD", "lr": 0.05, "momentum": 0.9, "dampening": 0.3}),
    ("sgd_nesterov", {"type": "SGD", "lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("sgd_nesterov_wd",
     {"type": "SGD", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.01, "nesterov": True}),
    ("sgd_momentum_wd_maximize",
     {"type": "SGD", "lr": 0.05, "momentum": 0.8, "weight_decay": 0.05, "maximize": True}),
    ("sgd_maximize", {"type": "SGD", "lr": 0.05, "maximize": True}),
    # --- Adam ---
    ("adam", {"type": "Adam", "lr": 0.01}),
    ("adam_wd", {"type": "Adam", "lr": 0.01, "weight_decay": 0.1}),
    ("adam_amsgrad", {"type": "Adam", "lr": 0.01, "amsgrad": True}),
    ("adam_amsgrad_wd_maximize",
     {"type": "Adam", "lr": 0.01, "weight_decay": 0.05, "amsgrad": True, "maximize": True}),
    ("adam_betas_eps", {"type": "Adam", "lr": 0.01, "betas": [0.8, 0.99], "eps": 1e-6}),
    ("adam_maximize", {"type": "Adam", "lr": 0.01, "maximize": True}),
    # --- AdamW (default weight_decay is 1e-2) ---
    ("adamw", {"type": "AdamW", "lr": 0.01}),
    ("adamw_wd", {"type": "AdamW", "lr": 0.01, "weight_decay": 0.1}),
    ("adamw_amsgrad", {"type": "AdamW", "lr": 0.01, "amsgrad": True}),
    ("adamw_amsgrad_maximize",
     {"type": "AdamW", "lr": 0.01, "amsgrad": True, "maximize": True}),
    ("adamw_betas", {"type": "AdamW", "lr": 0.01, "betas": [0.5, 0.9]}),
    # --- RMSprop ---
    ("rmsprop", {"type": "RMSprop", "lr": 0.01}),
    ("rmsprop_centered", {"type": "RMSprop", "lr": 0.01, "centered": True}),
    ("rmsprop_momentum", {"type": "RMSprop", "lr": 0.01, "momentum": 0.9}),
    ("rmsprop_centered_momentum",
     {"type": "RMSprop", "lr": 0.01, "momentum": 0.9, "centered": True}),
    ("rmsprop_wd", {"type": "RMSprop", "lr": 0.01, "weight_decay": 0.1}),
    ("rmsprop_alpha_eps", {"type": "RMSprop", "lr": 0.01, "alpha": 0.9, "eps": 1e-6}),
    ("rmsprop_centered_momentum_wd_maximize",
     {"type": "RMSprop", "lr": 0.01, "weight_decay": 0.05, "momentum": 0.5,
      "centered": True, "maximize": True}),
    # --- Adagrad ---
    ("adagrad", {"type": "Adagrad", "lr": 0.1}),
    ("adagrad_lr_decay", {"type": "Adagrad", "lr": 0.1, "lr_decay": 0.05}),
    ("adagrad_init_acc", {"type": "Adagrad", "lr": 0.1, "initial_accumulator_value": 0.3}),
    ("adagrad_wd", {"type": "Adagrad", "lr": 0.1, "weight_decay": 0.1}),
    ("adagrad_eps_maximize", {"type": "Adagrad", "lr": 0.1, "eps": 1e-6, "maximize": True}),
    ("adagrad_lr_decay_init_acc_wd",
     {"type": "Adagrad", "lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.02,
      "initial_accumulator_value": 0.1}),
    # --- NAdam (mu_product is a 0-d float32 state) ---
    ("nadam", {"type": "NAdam", "lr": 0.01}),
    ("nadam_wd", {"type": "NAdam", "lr": 0.01, "weight_decay": 0.1}),
    ("nadam_momentum_decay", {"type": "NAdam", "lr": 0.01, "momentum_decay": 0.05}),
    ("nadam_decoupled_wd",
     {"type": "NAdam", "lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("nadam_maximize", {"type": "NAdam", "lr": 0.01, "maximize": True}),
    ("nadam_betas_eps", {"type": "NAdam", "lr": 0.01, "betas": [0.8, 0.99], "eps": 1e-6}),
    # --- RAdam (rho_t > 5 from step 6 on for these betas: both branches are taken) ---
    ("radam", {"type": "RAdam", "lr": 0.01}),
    ("radam_wd", {"type": "RAdam", "lr": 0.01, "weight_decay": 0.1}),
    ("radam_decoupled_wd",
     {"type": "RAdam", "lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("radam_maximize", {"type": "RAdam", "lr": 0.01, "maximize": True}),
    ("radam_betas", {"type": "RAdam", "lr": 0.01, "betas": [0.8, 0.99]}),
    # --- Adamax ---
    ("adamax", {"type": "Adamax", "lr": 0.01}),
    ("adamax_wd", {"type": "Adamax", "lr": 0.01, "weight_decay": 0.1}),
    ("adamax_maximize", {"type": "Adamax", "lr": 0.01, "maximize": True}),
    ("adamax_betas_eps", {"type": "Adamax", "lr": 0.01, "betas": [0.8, 0.99], "eps": 1e-4}),
    # --- Adadelta (default lr is 1.0) ---
    ("adadelta", {"type": "Adadelta", "lr": 1.0}),
    ("adadelta_rho_eps", {"type": "Adadelta", "lr": 1.0, "rho": 0.5, "eps": 1e-4}),
    ("adadelta_wd", {"type": "Adadelta", "lr": 1.0, "weight_decay": 0.1}),
    ("adadelta_maximize", {"type": "Adadelta", "lr": 1.0, "maximize": True}),
    ("adadelta_lr", {"type": "Adadelta", "lr": 0.3}),
    # --- Rprop (rprop_step_sizes clamps at both bounds; rprop_etas at the default lower one) ---
    ("rprop", {"type": "Rprop", "lr": 0.01}),
    ("rprop_etas", {"type": "Rprop", "lr": 0.01, "etas": [0.3, 1.5]}),
    ("rprop_step_sizes", {"type": "Rprop", "lr": 0.01, "step_sizes": [0.003, 0.02]}),
    ("rprop_maximize", {"type": "Rprop", "lr": 0.01, "maximize": True}),
    # --- ASGD (eta and mu are 0-d float32 states; with t0 = 5 averaging starts at step 8) ---
    ("asgd", {"type": "ASGD", "lr": 0.05}),
    ("asgd_t0", {"type": "ASGD", "lr": 0.05, "t0": 5.0}),
    ("asgd_lambd_alpha_t0", {"type": "ASGD", "lr": 0.05, "lambd": 0.5, "alpha": 0.5, "t0": 5.0}),
    ("asgd_wd", {"type": "ASGD", "lr": 0.05, "weight_decay": 0.1}),
    ("asgd_maximize", {"type": "ASGD", "lr": 0.05, "maximize": True}),
    # --- Adafactor (w [7,5] and c [3,4,6] factored, b and v not; default lr 1e-2).  lr 0.5
    # caps the relative step size min(lr, 1/sqrt(t)) for the first 3 steps only; eps (0.25, 1.1)
    # holds up some row factors' means and some parameters' RMS (BranchProbe). ---
    ("adafactor", {"type": "Adafactor", "lr": 0.01}),
    ("adafactor_wd", {"type": "Adafactor", "lr": 0.01, "weight_decay": 0.1}),
    ("adafactor_lr", {"type": "Adafactor", "lr": 0.5}),
    ("adafactor_eps_d_decay",
     {"type": "Adafactor", "lr": 0.05, "eps": [0.25, 1.1], "d": 1.2, "beta2_decay": -0.5}),
    ("adafactor_maximize", {"type": "Adafactor", "lr": 0.05, "maximize": True}),
    # --- Muon (w [7,5] tall, m [6,11] wide; default lr 1e-3), Newton-Schulz in float32
    # (zeropower_via_newtonschulz_f32).
    ("muon", {"type": "Muon", "lr": 0.02}),
    ("muon_plain_momentum", {"type": "Muon", "lr": 0.02, "nesterov": False,
                             "weight_decay": 0.0}),
    ("muon_match_rms_adamw", {"type": "Muon", "lr": 0.02, "adjust_lr_fn": "match_rms_adamw"}),
    ("muon_spectral_unclamped", {"type": "Muon", "lr": 0.02, "momentum": 0.8,
                                 "adjust_lr_fn": "spectral_unclamped"}),
    ("muon_ns4_coefficients", {"type": "Muon", "lr": 0.02, "ns_steps": 4,
                               "ns_coefficients": [2.0, -1.5, 0.5], "adjust_lr_fn": "original"}),
    # --- Lion (lion-pytorch; default lr is 1e-4, betas (0.9, 0.99); no step count) ---
    ("lion", {"type": "Lion", "lr": 0.01}),
    ("lion_default_lr", {"type": "Lion", "lr": 1e-4}),
    ("lion_betas", {"type": "Lion", "lr": 0.01, "betas": [0.95, 0.98]}),
    ("lion_wd", {"type": "Lion", "lr": 0.01, "weight_decay": 0.5}),
    ("lion_decoupled_wd",
     {"type": "Lion", "lr": 0.01, "weight_decay": 0.01, "decoupled_weight_decay": True}),
    # --- Lamb (pytorch-optimizer's default foreach path; default lr 1e-3, eps 1e-6,
    # weight_decouple=True; "v" (norm ~17) takes the weight-norm clamp at 10, "w" and "b" not) ---
    ("lamb", {"type": "Lamb", "lr": 0.01}),
    ("lamb_wd", {"type": "Lamb", "lr": 0.01, "weight_decay": 0.1}),
    ("lamb_wd_coupled", {"type": "Lamb", "lr": 0.01, "weight_decay": 0.1, "weight_decouple": False}),
    ("lamb_wd_fixed", {"type": "Lamb", "lr": 0.01, "weight_decay": 0.01, "fixed_decay": True}),
    # Without weight decay added to the update, grad_averaging only scales exp_avg (which the
    # trust ratio cancels, up to eps): the case adds coupled weight decay.
    ("lamb_no_grad_averaging_wd_coupled",
     {"type": "Lamb", "lr": 0.01, "grad_averaging": False, "weight_decay": 0.1,
      "weight_decouple": False}),
    ("lamb_adam", {"type": "Lamb", "lr": 0.001, "adam": True}),
    ("lamb_betas", {"type": "Lamb", "lr": 0.01, "betas": [0.8, 0.99]}),
    ("lamb_eps_maximize", {"type": "Lamb", "lr": 0.01, "eps": 1e-2, "maximize": True}),
    # rectify takes the package's per-parameter path: no step before n_sma reaches the
    # threshold (steps 1-5), or SGD steps with degenerated_to_sgd (steps 1-8 at threshold 8).
    ("lamb_rectify", {"type": "Lamb", "lr": 0.1, "rectify": True}),
    ("lamb_rectify_sgd_wd",
     {"type": "Lamb", "lr": 0.01, "rectify": True, "degenerated_to_sgd": True,
      "n_sma_threshold": 8, "weight_decay": 0.1}),
    ("lamb_adam_debias_wd_coupled",
     {"type": "Lamb", "lr": 0.01, "adam_debias": True, "weight_decay": 0.05,
      "weight_decouple": False}),
    # pre_norm: every gradient times min(max_grad_norm / (global norm + eps), 1).  Lamb's update
    # is nearly invariant to the gradients' scale; without the trust ratio and with eps above
    # sqrt(v) it follows it, so the factor shows.  The second case takes the per-parameter path
    # (rectify) with coupled weight decay; the third a bound above the norm (factor 1).
    ("lamb_pre_norm_adam_eps",
     {"type": "Lamb", "lr": 0.01, "pre_norm": True, "max_grad_norm": 0.1, "adam": True,
      "eps": 1e-2}),
    ("lamb_pre_norm_rectify_wd_coupled_max",
     {"type": "Lamb", "lr": 0.01, "pre_norm": True, "max_grad_norm": 0.5, "rectify": True,
      "degenerated_to_sgd": True, "weight_decay": 0.1, "weight_decouple": False,
      "maximize": True}),
    ("lamb_pre_norm_above", {"type": "Lamb", "lr": 0.01, "pre_norm": True, "max_grad_norm": 1e3}),
    # adanorm (a keyword the package reads from the group): the per-parameter path, with each
    # tensor's running gradient norm as state exp_grad_adanorm; at r = 0.5 it catches up with the
    # gradients' norms within a few steps, so that a gradient of a norm below it is rescaled.
    ("lamb_adanorm", {"type": "Lamb", "lr": 0.01, "adanorm": True, "adanorm_r": 0.5}),
    ("lamb_adanorm_adam_eps_maximize",
     {"type": "Lamb", "lr": 0.01, "adanorm": True, "adanorm_r": 0.5, "adam": True, "eps": 1e-2,
      "maximize": True}),
    ("lamb_adanorm_rectify_sgd_wd",
     {"type": "Lamb", "lr": 0.01, "adanorm": True, "rectify": True, "degenerated_to_sgd": True,
      "weight_decay": 0.1}),
    # --- ADOPT (pytorch-optimizer; default betas (0.9, 0.9999), eps 1e-6, clip step**0.25) ---
    ("adopt", {"type": "ADOPT", "lr": 0.01}),
    ("adopt_no_clip", {"type": "ADOPT", "lr": 0.01, "clip_lambda": None}),
    ("adopt_wd", {"type": "ADOPT", "lr": 0.01, "weight_decay": 0.1}),
    ("adopt_wd_decoupled",
     {"type": "ADOPT", "lr": 0.01, "weight_decay": 0.1, "weight_decouple": True}),
    ("adopt_wd_fixed",
     {"type": "ADOPT", "lr": 0.01, "weight_decay": 0.01, "weight_decouple": True,
      "fixed_decay": True}),
    ("adopt_betas_eps_maximize",
     {"type": "ADOPT", "lr": 0.01, "betas": [0.8, 0.99], "eps": 0.1, "maximize": True}),
    # cautious and stable_adamw take the package's per-parameter path.
    ("adopt_cautious", {"type": "ADOPT", "lr": 0.01, "cautious": True}),
    ("adopt_stable_adamw", {"type": "ADOPT", "lr": 0.01, "stable_adamw": True}),
    # --- AdEMAMix (pytorch-optimizer; default betas (0.9, 0.999, 0.9999), alpha 5, eps 1e-8) ---
    ("ademamix", {"type": "AdEMAMix", "lr": 0.01}),
    ("ademamix_betas_alpha", {"type": "AdEMAMix", "lr": 0.01, "betas": [0.8, 0.99, 0.95],
                              "alpha": 2.0}),
    ("ademamix_t_alpha_beta3",
     {"type": "AdEMAMix", "lr": 0.01, "betas": [0.9, 0.999, 0.99], "t_alpha_beta3": 12}),
    ("ademamix_wd", {"type": "AdEMAMix", "lr": 0.01, "weight_decay": 0.1}),
    ("ademamix_wd_decoupled",
     {"type": "AdEMAMix", "lr": 0.01, "weight_decay": 0.1, "weight_decouple": True}),
    ("ademamix_wd_fixed_eps",
     {"type": "AdEMAMix", "lr": 0.01, "weight_decay": 0.01, "weight_decouple": True,
      "fixed_decay": True, "eps": 1e-3}),
    ("ademamix_maximize", {"type": "AdEMAMix", "lr": 0.01, "maximize": True}),
    ("ademamix_cautious", {"type": "AdEMAMix", "lr": 0.01, "cautious": True}),
    ("ademamix_stable_adamw", {"type": "AdEMAMix", "lr": 0.01, "stable_adamw": True}),
    # --- AdamWScheduleFree (schedulefree; default lr is 0.0025, weight_lr_power 2) ---
    ("adamw_schedulefree", {"type": "AdamWScheduleFree", "lr": 0.01}),
    ("adamw_schedulefree_wd", {"type": "AdamWScheduleFree", "lr": 0.01, "weight_decay": 0.1}),
    ("adamw_schedulefree_warmup", {"type": "AdamWScheduleFree", "lr": 0.01, "warmup_steps": 8}),
    ("adamw_schedulefree_warmup_r_power",
     {"type": "AdamWScheduleFree", "lr": 0.01, "warmup_steps": 6, "r": 1.0,
      "weight_lr_power": 1.0}),
    ("adamw_schedulefree_r", {"type": "AdamWScheduleFree", "lr": 0.01, "r": 0.5}),
    ("adamw_schedulefree_betas_eps_wd",
     {"type": "AdamWScheduleFree", "lr": 0.01, "betas": [0.95, 0.99], "eps": 1e-4,
      "weight_decay": 0.05, "warmup_steps": 4, "weight_lr_power": 0.0}),
]

# (case name, optimizer spec, schedule spec): trajectories with a learning-rate schedule,
# including schedules that cycle momentum (SGD, RMSprop) or beta1 (Adam, AdamW).
SCHEDULED_CASES = [
    ("sched_sgd_momentum_steplr", {"type": "SGD", "lr": 0.05, "momentum": 0.9},
     {"type": "StepLR", "step_size": 5, "gamma": 0.5}),
    ("sched_sgd_nesterov_cycliclr", {"type": "SGD", "lr": 0.05, "momentum": 0.9, "nesterov": True},
     {"type": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 4}),
    ("sched_adam_onecycle", {"type": "Adam", "lr": 0.01},
     {"type": "OneCycleLR", "max_lr": 0.05, "total_steps": STEPS}),
    ("sched_adamw_amsgrad_sequential", {"type": "AdamW", "lr": 0.02, "amsgrad": True},
     {"type": "SequentialLR", "milestones": [5], "schedulers": [
         {"type": "LinearLR", "start_factor": 0.1, "total_iters": 5},
         {"type": "CosineAnnealingLR", "T_max": 15}]}),
    ("sched_rmsprop_centered_momentum_onecycle",
     {"type": "RMSprop", "lr": 0.01, "momentum": 0.9, "centered": True},
     {"type": "OneCycleLR", "max_lr": 0.02, "total_steps": STEPS, "anneal_strategy": "linear",
      "base_momentum": 0.8, "max_momentum": 0.9}),
    ("sched_rmsprop_exponential", {"type": "RMSprop", "lr": 0.01},
     {"type": "ExponentialLR", "gamma": 0.9}),
    ("sched_adagrad_cosine", {"type": "Adagrad", "lr": 0.1},
     {"type": "CosineAnnealingLR", "T_max": 8, "eta_min": 0.01}),
    ("sched_adam_warm_restarts", {"type": "Adam", "lr": 0.02, "weight_decay": 0.01},
     {"type": "CosineAnnealingWarmRestarts", "T_0": 6, "T_mult": 2}),
    ("sched_adamw_chained", {"type": "AdamW", "lr": 0.01, "betas": [0.8, 0.99]},
     {"type": "ChainedScheduler", "schedulers": [
         {"type": "ConstantLR", "factor": 0.5, "total_iters": 3},
         {"type": "ExponentialLR", "gamma": 0.95}]}),
    # NAdam has "betas", so OneCycleLR cycles its beta1 (0.95 -> 0.85 -> 0.95 by default).
    ("sched_nadam_onecycle", {"type": "NAdam", "lr": 0.01},
     {"type": "OneCycleLR", "max_lr": 0.02, "total_steps": STEPS}),
    ("sched_radam_steplr", {"type": "RAdam", "lr": 0.02},
     {"type": "StepLR", "step_size": 5, "gamma": 0.5}),
    ("sched_adadelta_cosine", {"type": "Adadelta", "lr": 1.0},
     {"type": "CosineAnnealingLR", "T_max": 10, "eta_min": 0.1}),
    # Lion's decoupled weight decay divides by the constructor's lr, not the scheduled one.
    ("sched_lion_decoupled_wd_steplr",
     {"type": "Lion", "lr": 0.01, "weight_decay": 0.05, "decoupled_weight_decay": True},
     {"type": "StepLR", "step_size": 5, "gamma": 0.5}),
    ("sched_ademamix_linear", {"type": "AdEMAMix", "lr": 0.01, "weight_decay": 0.1,
                               "weight_decouple": True},
     {"type": "LinearLR", "start_factor": 0.2, "total_iters": 8}),
    ("sched_lamb_wd_cosine", {"type": "Lamb", "lr": 0.01, "weight_decay": 0.1},
     {"type": "CosineAnnealingLR", "T_max": 20, "eta_min": 0.001}),
    # A rising learning rate moves AdamWScheduleFree's lr_max, and with it the weights.
    ("sched_adamw_schedulefree_linear", {"type": "AdamWScheduleFree", "lr": 0.01},
     {"type": "LinearLR", "start_factor": 0.2, "total_iters": 8}),
    # A falling one leaves lr_max at its peak (weight_lr_power 2 then weighs the later
    # iterates by the peak, not by their own learning rate).
    ("sched_adamw_schedulefree_warmup_steplr",
     {"type": "AdamWScheduleFree", "lr": 0.01, "warmup_steps": 4},
     {"type": "StepLR", "step_size": 6, "gamma": 0.3}),
    ("sched_adafactor_wd_steplr", {"type": "Adafactor", "lr": 0.05, "weight_decay": 0.05},
     {"type": "StepLR", "step_size": 5, "gamma": 0.5}),
    ("sched_muon_steplr", {"type": "Muon", "lr": 0.02},
     {"type": "StepLR", "step_size": 5, "gamma": 0.5}),
    # OneCycleLR cycles beta1, the first of ADOPT's betas.
    ("sched_adopt_onecycle", {"type": "ADOPT", "lr": 0.01},
     {"type": "OneCycleLR", "max_lr": 0.02, "total_steps": STEPS}),
]

# Per-parameter 0-d states that torch creates in its scalar dtype (torch.optim.optimizer.
# _get_scalar_dtype(): float32 unless the default dtype is float64), whatever the param dtype.
SCALAR_STATES = ("step", "mu_product", "eta", "mu")


def finish_output_dir(out_dir, expected):
    """Removes stale per-case files from earlier runs and checks the directory's size.
    Returns the exit status: 1 when the golden files exceed MAX_TOTAL_BYTES."""
    for fname in sorted(os.listdir(out_dir)):
        if fname.endswith(".safetensors") and fname not in expected:
            os.remove(os.path.join(out_dir, fname))
            print(f"removed stale {fname}")
    total = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"total size of {os.path.relpath(out_dir, REPO_ROOT)}: {total} bytes")
    if total > MAX_TOTAL_BYTES:
        print("error: golden files exceed 2 MB", file=sys.stderr)
        return 1
    return 0


def make_problem():
    """Seeded initial params and per-step grads (float32, CPU)."""
    torch.manual_seed(SEED)
    params = {}
    for name, shape in SHAPES:
        params[name] = torch.randn(shape, dtype=torch.float32)
    grads = {}
    for name, shape in SHAPES:
        grads[name] = torch.randn((STEPS, *shape), dtype=torch.float32) * GRAD_SCALE
    for name, shape in EXTRA_SHAPES:
        params[name] = torch.randn(shape, dtype=torch.float32)
        grads[name] = torch.randn((STEPS, *shape), dtype=torch.float32) * GRAD_SCALE
    return params, grads


# Optimizers from outside torch.optim: spec["type"] -> (module, class name, pip package,
# version the golden files were written with).
PACKAGE_OPTIMIZERS = {
    "Lion": ("lion_pytorch", "Lion", "lion-pytorch", "0.2.5"),
    "Lamb": ("pytorch_optimizer", "Lamb", "pytorch-optimizer", "4.1.0"),
    "ADOPT": ("pytorch_optimizer", "ADOPT", "pytorch-optimizer", "4.1.0"),
    "AdEMAMix": ("pytorch_optimizer", "AdEMAMix", "pytorch-optimizer", "4.1.0"),
    "AdamWScheduleFree": ("schedulefree", "AdamWScheduleFree", "schedulefree", "1.4.1"),
}

# Package classes that count steps per param group (group["step"]), not per param.
GROUP_STEP = ("Lamb", "ADOPT", "AdEMAMix")

# Per-parameter state entries that are per-step diagnostics, not optimizer state: written by
# every step and never read (Lamb's norms and trust ratio).  Not stored.
DIAGNOSTIC_STATES = {"Lamb": ("weight_norm", "adam_norm", "trust_ratio")}


def package_class(kind):
    """The class named kind from its package, at the version in PACKAGE_OPTIMIZERS."""
    import importlib
    from importlib.metadata import PackageNotFoundError, version

    module, cls_name, dist, want = PACKAGE_OPTIMIZERS[kind]
    try:
        have = version(dist)
    except PackageNotFoundError:
        raise RuntimeError(f"{kind} needs `pip install {dist}=={want}`") from None
    if have != want:
        raise RuntimeError(f"{kind}: {dist} {have} is installed, the golden files are written "
                           f"with {dist}=={want}")
    return getattr(importlib.import_module(module), cls_name)


def build_optimizer(spec, tensors, fused=False):
    """Construct the optimizer class named in spec from its JSON form: a torch.optim class with
    its single-tensor CPU implementation (foreach=False), or the fused one; a class from
    PACKAGE_OPTIMIZERS from its package, with that package's defaults."""
    args = {k: v for k, v in spec.items() if k != "type"}
    if "betas" in args:
        args["betas"] = tuple(float(b) for b in args["betas"])
    if spec["type"] in PACKAGE_OPTIMIZERS:
        if fused:
            raise ValueError(f"{spec['type']} has no fused implementation")
        opt = package_class(spec["type"])([{"params": tensors}], **args)
        if spec["type"] == "AdamWScheduleFree":
            opt.train()
        return opt
    cls = getattr(torch.optim, spec["type"])
    if fused:
        args["fused"] = True
    elif "foreach" in inspect.signature(cls).parameters:
        # Muon takes no foreach: it has the single-tensor implementation only.
        args["foreach"] = False
    return cls([{"params": tensors}], **args)


def state_tensors(names, tensors, opt, dtype, skip=()):
    """Final params by name and every state tensor as "<name>.<state>" (None and the states in
    skip left out; the SCALAR_STATES as 0-d float32 tensors), checking that every other state
    has the run's dtype."""
    out = {}
    for n, p in zip(names, tensors):
        out[n] = p.detach().clone().contiguous()
        for key, val in sorted(opt.state[p].items()):
            if val is None or key in skip:
                continue
            if not torch.is_tensor(val):
                raise TypeError(f"unexpected non-tensor state {n}.{key}: {val!r}")
            t = val.detach().clone().contiguous()
            if key == "step":
                if t.dim() != 0:
                    raise ValueError(f"expected 0-d step tensor, got shape {tuple(t.shape)}")
                t = t.to(torch.float32)
            elif key in SCALAR_STATES:
                # NAdam's mu_product, ASGD's eta and mu: float32 even in the float64 run.
                if t.dim() != 0 or t.dtype != torch.float32:
                    raise TypeError(f"state {n}.{key} is {t.dtype} of shape {tuple(t.shape)}, "
                                    "expected a 0-d float32 tensor")
            elif t.dtype != dtype:
                raise TypeError(f"state {n}.{key} has dtype {t.dtype}, expected {dtype}")
            out[f"{n}.{key}"] = t
    return out


class BranchProbe:
    """Records, for one run, where the branches a case is there for are taken: RAdam's
    rectification (rho_t > 5), Rprop's clamp at either step_sizes bound (from the pre-clamp
    value, recomputed from the state before each step exactly as torch computes it), ASGD's
    averaging (ax differs from the param), Lamb's weight-norm clamp, ADOPT's clipping of
    the normalized gradient (from the state before each step, as the package computes it),
    and Adafactor's bounds: the update's RMS clipped at d, the parameter's RMS held up at
    eps2, a row factor's mean held up at eps1 (tensor-steps where each bound acts)."""

    def __init__(self, spec):
        self.kind = spec["type"]
        self.rect_steps = []        # RAdam: steps with rho_t > 5
        self.clamp_lo = []          # Rprop: (step, elements clamped up to step_size_min)
        self.clamp_hi = []          # Rprop: (step, elements clamped down to step_size_max)
        self.ax_steps = []          # ASGD: steps after which ax != param somewhere
        self.clipped = []           # ADOPT: (step, elements beyond +-step**0.25)
        self.norm_clamped = {}      # Lamb: tensor name -> steps with weight norm > 10
        self.bounds = {"d": 0, "eps2": 0, "eps1": 0}  # Adafactor: tensor-steps at each bound
        self.clip_on = spec.get("clip_lambda", True) is not None

    def before(self, k, opt, tensors):
        group = opt.param_groups[0]
        if self.kind == "RAdam":
            beta2 = group["betas"][1]
            step = float(k + 1)     # all params' step counters move together
            rho_inf = 2 / (1 - beta2) - 1
            if rho_inf - 2 * step * (beta2**step) / (1 - beta2**step) > 5.0:
                self.rect_steps.append(k + 1)
        elif self.kind == "Rprop":
            etaminus, etaplus = group["etas"]
            lo, hi = group["step_sizes"]
            n_lo = n_hi = 0
            for p in tensors:
                state = opt.state[p]
                if state:
                    step_size, prev = state["step_size"], state["prev"]
                else:
                    step_size, prev = torch.full_like(p, group["lr"]), torch.zeros_like(p)
                grad = -p.grad if group["maximize"] else p.grad
                sign = grad.mul(prev).sign()
                sign[sign.gt(0)] = etaplus
                sign[sign.lt(0)] = etaminus
                sign[sign.eq(0)] = 1
                unclamped = step_size * sign
                n_lo += int((unclamped < lo).sum())
                n_hi += int((unclamped > hi).sum())
            if n_lo:
                self.clamp_lo.append((k + 1, n_lo))
            if n_hi:
                self.clamp_hi.append((k + 1, n_hi))
        elif self.kind == "Lamb":
            wd = group["weight_decay"]
            factor = 1.0
            if group["weight_decouple"] and wd != 0.0:
                factor = 1.0 - wd * (1.0 if group["fixed_decay"] else group["lr"])
            for n, p in zip(NAMES, tensors):
                if float(torch.linalg.norm(p * factor)) > opt.clamp:
                    self.norm_clamped.setdefault(n, []).append(k + 1)
        elif self.kind == "ADOPT":
            step = group.get("step", 0) + 1
            if step > 1:
                clip = step ** 0.25
                n_clip = 0
                for p in tensors:
                    grad = -p.grad if opt.maximize else p.grad
                    if group["weight_decay"] != 0.0 and not group["weight_decouple"]:
                        grad = grad + group["weight_decay"] * p
                    de_nom = opt.state[p]["exp_avg_sq"].sqrt().clamp(min=group["eps"])
                    n_clip += int(((grad / de_nom).abs() > clip).sum())
                if n_clip:
                    self.clipped.append((step, n_clip))

        elif self.kind == "Adafactor":
            eps1, eps2 = group["eps"]
            eps1 = torch.finfo(tensors[0].dtype).eps if eps1 is None else eps1
            for p in tensors:
                state = opt.state[p]
                w = ((state["step"].item() if state else 0) + 1) ** group["beta2_decay"]
                grad = -p.grad if group["maximize"] else p.grad
                if float(p.norm()) / p.numel() ** 0.5 < eps2:
                    self.bounds["eps2"] += 1
                if p.dim() > 1:
                    rows = state.get("row_var", torch.zeros_like(grad[..., :1]))
                    cols = state.get("col_var", torch.zeros_like(grad[..., :1, :]))
                    rows = rows.lerp(grad.square().mean(-1, keepdim=True), w)
                    cols = cols.lerp(grad.square().mean(-2, keepdim=True), w)
                    mean = rows.mean(-2, keepdim=True)
                    self.bounds["eps1"] += int(bool((mean < eps1).any()))
                    var = rows @ cols / mean.clamp(min=eps1)
                else:
                    var = state.get("variance", torch.zeros_like(grad)).lerp(grad.square(), w)
                update = grad / var.clamp(min=eps1 * eps1).sqrt()
                if float(update.norm()) / (update.numel() ** 0.5 * group["d"]) > 1:
                    self.bounds["d"] += 1

    def after(self, k, opt, tensors):
        if self.kind == "ASGD":
            if any(bool((opt.state[p]["ax"] != p).any()) for p in tensors):
                self.ax_steps.append(k + 1)

    def summary(self):
        if self.kind == "RAdam":
            return f"rho_t>5 from step {self.rect_steps[0] if self.rect_steps else 'never'}"
        if self.kind == "Rprop":
            def first(hits):
                return (f"from step {hits[0][0]}, {sum(c for _, c in hits)} element-steps"
                        if hits else "never")
            return f"clamp at min {first(self.clamp_lo)}; at max {first(self.clamp_hi)}"
        if self.kind == "ASGD":
            return (f"ax != param from step {self.ax_steps[0]}" if self.ax_steps
                    else "ax == param throughout (no averaging)")
        if self.kind == "Lamb":
            return "weight norm > 10: " + (", ".join(
                f"{n} steps {v[0]}-{v[-1]} ({len(v)})" for n, v in self.norm_clamped.items())
                or "never")
        if self.kind == "Adafactor":
            return "tensor-steps at a bound: " + ", ".join(f"{k} {v}" for k, v in self.bounds.items())
        if self.kind == "ADOPT":
            what = "clipped" if self.clip_on else "beyond step**0.25 (not clipped)"
            return (f"{what}: {sum(c for _, c in self.clipped)} element-steps over "
                    f"{len(self.clipped)} steps" if self.clipped else f"{what}: never")
        return ""

    def check(self, name, spec):
        """The branches a case's options are there for must be taken within STEPS steps."""
        problems = []
        if self.kind == "RAdam" and not (self.rect_steps and self.rect_steps[0] > 1):
            problems.append("RAdam must take both sides of rho_t > 5")
        if self.kind == "Rprop" and "step_sizes" in spec and not (self.clamp_lo and self.clamp_hi):
            problems.append("non-default step_sizes must clamp at both bounds")
        if self.kind == "ASGD" and spec.get("t0", 1e6) < STEPS and not self.ax_steps:
            problems.append("a t0 below STEPS must start the averaging")
        if self.kind == "Lamb" and (not self.norm_clamped
                                    or len(self.norm_clamped) == len(NAMES)):
            problems.append("Lamb: the weight norm must be clamped at 10 for some tensors, "
                            "not all")
        if self.kind == "Adafactor":
            eps = spec.get("eps", [None, 1e-3])
            wanted = ["d"] if spec.get("d", 1.0) == 1.0 else []
            wanted += ["eps1"] if eps[0] is not None else []
            wanted += ["eps2"] if eps[1] != 1e-3 else []
            total = STEPS * len(case_names(spec))
            for bound in wanted:
                if not 0 < self.bounds[bound] < total:
                    problems.append(f"Adafactor: the {bound} bound must act on some tensor-steps, "
                                    f"not all ({self.bounds[bound]} of {total})")
        if self.kind == "ADOPT" and not self.clipped:
            problems.append("ADOPT: the normalized gradient must exceed step**0.25 somewhere")
        if problems:
            raise RuntimeError(f"{name}: " + "; ".join(problems))


def build_scheduler(spec, opt):
    """Construct a torch.optim.lr_scheduler class from its JSON form (children recursively)."""
    args = {k: v for k, v in spec.items() if k != "type"}
    cls = getattr(torch.optim.lr_scheduler, spec["type"])
    if spec["type"] in ("SequentialLR", "ChainedScheduler"):
        args["schedulers"] = [build_scheduler(c, opt) for c in args["schedulers"]]
        if spec["type"] == "ChainedScheduler":
            return cls(args["schedulers"], optimizer=opt)
    return cls(opt, **args)


def run_case(spec, params, grads, dtype, schedule=None, probe=None):
    names = case_names(spec)
    tensors = [params[n].detach().clone().to(dtype) for n in names]
    step_grads = {n: grads[n].to(dtype) for n in names}
    opt = build_optimizer(spec, tensors)
    scheduler = build_scheduler(schedule, opt) if schedule is not None else None
    for k in range(STEPS):
        for n, p in zip(names, tensors):
            p.grad = step_grads[n][k].clone()
        if probe is not None:
            probe.before(k, opt, tensors)
        opt.step()
        if probe is not None:
            probe.after(k, opt, tensors)
        # OneCycleLR refuses to step past total_steps; the last step needs no next LR.
        if scheduler is not None and k + 1 < STEPS:
            scheduler.step()

    out = state_tensors(names, tensors, opt, dtype, DIAGNOSTIC_STATES.get(spec["type"], ()))
    if spec["type"] in GROUP_STEP:
        step = torch.tensor(float(opt.param_groups[0]["step"]), dtype=torch.float32)
        for n in NAMES:
            out[f"{n}.step"] = step.clone()
    if spec["type"] == "AdamWScheduleFree":
        group = opt.param_groups[0]
        hi = float(torch.tensor(group["weight_sum"], dtype=torch.float32))
        scalars = {"step": float(group["k"]), "lr_max": group["lr_max"],
                   "weight_sum": hi, "weight_sum_lo": group["weight_sum"] - hi}
        opt.eval()
        for n, p in zip(NAMES, tensors):
            for key, value in scalars.items():
                out[f"{n}.{key}"] = torch.tensor(value, dtype=torch.float32)
            out[f"{n}.eval"] = p.detach().clone().contiguous()
    return out


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT_DIR, exist_ok=True)

    params, grads = make_problem()
    # No safetensors metadata: its header order is not stable across runs.
    extra = [n for n, _ in EXTRA_SHAPES]
    for fname, tensors in (("params", params), ("grads", grads)):
        save_file({n: tensors[n].contiguous() for n in NAMES},
                  os.path.join(OUT_DIR, f"{fname}.safetensors"))
        save_file({n: tensors[n].contiguous() for n in extra},
                  os.path.join(OUT_DIR, f"extra_{fname}.safetensors"))

    names_seen = set()
    cases_json = []
    for name, spec in CASES:
        if name in names_seen:
            raise ValueError(f"duplicate case name {name}")
        names_seen.add(name)
        case = {"name": name, "optimizer": spec}
        if case_names(spec) != NAMES:
            case["names"] = case_names(spec)
        cases_json.append(case)
    for name, spec, schedule in SCHEDULED_CASES:
        if name in names_seen:
            raise ValueError(f"duplicate case name {name}")
        names_seen.add(name)
        case = {"name": name, "optimizer": spec, "schedule": schedule}
        if case_names(spec) != NAMES:
            case["names"] = case_names(spec)
        cases_json.append(case)
    doc = {"steps": STEPS, "names": NAMES, "cases": cases_json}
    with open(os.path.join(OUT_DIR, "cases.json"), "w", newline="\n") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")

    # Construct from the JSON round trip, exactly as a reader of cases.json would.
    with open(os.path.join(OUT_DIR, "cases.json")) as f:
        doc = json.load(f)

    expected = {"params.safetensors", "grads.safetensors", "extra_params.safetensors",
                "extra_grads.safetensors", "cases.json"}
    print(f"torch {torch.__version__}; {len(doc['cases'])} cases, {STEPS} steps")
    print(f"{'case':40s} {'max|f32-f64| params':>20s}  per name ({', '.join(NAMES)})")
    for case in doc["cases"]:
        name, spec = case["name"], case["optimizer"]
        schedule = case.get("schedule")
        probe32, probe64 = BranchProbe(spec), BranchProbe(spec)
        r32 = run_case(spec, params, grads, torch.float32, schedule, probe32)
        r64 = run_case(spec, params, grads, torch.float64, schedule, probe64)
        probe32.check(name, spec)
        probe64.check(name, spec)
        if set(r32) != set(r64):
            raise RuntimeError(f"{name}: state keys differ between f32 and f64 runs")
        for suffix, res in (("f32", r32), ("f64", r64)):
            fname = f"{name}.{suffix}.safetensors"
            save_file(res, os.path.join(OUT_DIR, fname))
            expected.add(fname)
        per_name = [(r32[n].double() - r64[n]).abs().max().item() for n in case_names(spec)]
        print(f"{name:40s} {max(per_name):20.3e}  "
              + " ".join(f"{e:.3e}" for e in per_name)
              + f"   state: {', '.join(sorted({k.split('.', 1)[1] for k in r32 if '.' in k}))}")
        if probe32.summary():
            print(f"{'':40s} f32: {probe32.summary()}")
            if probe64.summary() != probe32.summary():
                print(f"{'':40s} f64: {probe64.summary()}")

    return finish_output_dir(OUT_DIR, expected)


if __name__ == "__main__":
    sys.exit(main())
