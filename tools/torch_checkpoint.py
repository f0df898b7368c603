#!/usr/bin/env python3
"""Convert between PyTorch optimizer state and wgpu-optim checkpoints.

A wgpu-optim checkpoint (see src/optimizer/checkpoint.rs) is one safetensors file:

* ``<name>.step``    - I64, shape ``[]``: the tensor's step count (every optimizer, SGD too).
* ``<name>.<state>`` - F32, F16 or BF16 (the type the optimizer keeps its state in: PyTorch's
  is the parameter's), the parameter's shape: each state buffer under PyTorch's state
  name (Adam/AdamW: exp_avg, exp_avg_sq, max_exp_avg_sq with amsgrad; SGD: momentum_buffer
  when momentum != 0; RMSprop: square_avg, momentum_buffer when momentum > 0, grad_avg when
  centered; Adagrad: sum; Adamax: exp_avg, exp_inf; RAdam and NAdam: exp_avg, exp_avg_sq;
  Adadelta: square_avg, acc_delta; Rprop: prev, step_size; ASGD: ax; Adafactor: variance
  for a tensor of one dimension, else row_var and col_var, in PyTorch's shapes: the
  parameter's with the last dimension 1, and with the second-to-last 1; Muon:
  momentum_buffer; Lion: exp_avg; Lamb and ADOPT: exp_avg, exp_avg_sq; AdEMAMix: exp_avg,
  exp_avg_sq, exp_avg_slow; AdamWScheduleFree: z, exp_avg_sq).
* ``<name>.<scalar>`` - F32, shape ``[]``: each per-tensor scalar state that is not the step,
  under PyTorch's state name (NAdam: mu_product; ASGD: eta, mu; AdamWScheduleFree: lr_max,
  and weight_sum as a float32 pair weight_sum + weight_sum_lo).
* ``<name>``         - F32, F16 or BF16 (the parameter's type), the parameter's shape: the
  parameter (optional in general; :func:`to_wgpu_optim` always writes it).
* ``<name>.master``  - F32, the parameter's shape: wgpu-optim's f32 master copy of a 16-bit
  parameter (``Precision::with_master_weights``), where it keeps one.  PyTorch keeps none.
* metadata: ``format`` = ``wgpu-optim``, ``version`` = ``1``, ``optimizer`` = the class name
  (SGD, Adam, AdamW, RMSprop, Adagrad, Adamax, RAdam, NAdam, Adadelta, Rprop, ASGD, Adafactor,
  Muon; Lion; Lamb, ADOPT, AdEMAMix; AdamWScheduleFree),
  ``param_groups`` = a JSON list with one object per group (its hyperparameters under
  PyTorch's argument names, or the package's, and ``params``: its tensors' names),
  ``train_mode`` = ``true`` or ``false`` (AdamWScheduleFree only: whether the parameters hold
  y, the train-mode values, or x), optionally ``grad_scaler``
  = JSON with exactly the keys of ``torch.amp.GradScaler.state_dict()``, optionally
  ``scheduler`` (wgpu-optim's own scheduler state).

Python API::

    to_wgpu_optim(optimizer, model.named_parameters(), "ckpt.safetensors", grad_scaler=scaler)
    from_wgpu_optim("ckpt.safetensors", optimizer, model.named_parameters(), grad_scaler=scaler)

CLI::

    python3 tools/torch_checkpoint.py to-wgpu IN.pt OUT.safetensors --optimizer Adam [--names a,b]
        [--attributes JSON] [--state-dtype param|f32|bf16]
    python3 tools/torch_checkpoint.py from-wgpu IN.safetensors OUT.pt

where IN.pt / OUT.pt hold ``{"model": model.state_dict(), "optimizer": opt.state_dict(),
["grad_scaler": scaler.state_dict()], ["optimizer_attributes": {...}]}``.

Classes: those of torch.optim (foreach=False or not makes no difference), and from other
packages ``lion_pytorch.Lion`` (lion-pytorch 0.2.5), ``pytorch_optimizer.Lamb``, ``ADOPT`` and
``AdEMAMix`` (pytorch-optimizer 4.1.0) and ``schedulefree.AdamWScheduleFree`` (schedulefree
1.4.1), the versions wgpu-optim implements (PACKAGE_CLASSES: other classes of the same name,
such as ``pytorch_optimizer.Lion``, are not these).

Conversion rules:

* Tensors are named by the model's parameter names.  The optimizer's parameter indices map
  to names in the order ``optimizer.param_groups[g]["params"]`` holds the parameters (over
  all groups), matched to ``named_parameters`` by identity.  In the CLI the names are, in
  that order, ``--names`` when given, else the groups' ``param_names`` when the optimizer was
  built from named parameters, else the keys of the model's state dict (whose count must
  then equal the optimizer's parameter count: a model with buffers or frozen parameters
  needs ``--names``).
* PyTorch keeps ``step`` as a float 0-d tensor; it becomes an I64 on export and a
  ``torch.optim.optimizer._get_scalar_dtype()`` 0-d tensor on import.  SGD, Muon and Lion
  keep no step: the export writes step 1 where a momentum buffer (Lion: exp_avg) exists and 0
  elsewhere; the import restores the buffer only where step > 0 (and, for SGD, momentum !=
  0).  Every other torch.optim class but Adagrad gets no state where step is 0 (PyTorch's
  state for a parameter that has not stepped: PyTorch creates it at the first step, from the
  group's hyperparameters of that step); Adagrad always does.  A parameter without PyTorch
  state exports step 0 and its initial state: buffers of zeros, but Adagrad's sum =
  initial_accumulator_value and Rprop's step_size = the group's lr; scalars mu_product = 1
  (NAdam), eta = the group's lr rounded to float32 and mu = 1 (ASGD).
* Lamb, ADOPT and AdEMAMix count steps per param group (``group["step"]``),
  AdamWScheduleFree too (``group["k"]``); wgpu-optim per tensor.  The export writes the
  group's count as every tensor's step, and a tensor without state (no gradient yet) gets
  zero buffers (AdamWScheduleFree: z = the parameter, which schedulefree would copy at its
  first step), which the package's next step treats as it treats a new state.  State while
  the group's count is 0 is a ValueError.  The import sets the group's count to its tensors'
  common step (tensors of one group that differ are a ValueError) and gives every tensor
  state where it is above 0.  Lamb's per-step diagnostics (weight_norm, adam_norm,
  trust_ratio: written by every step, never read) are dropped.
* AdamWScheduleFree's group entries ``lr_max`` and ``weight_sum`` (Python floats) become
  every tensor's scalars ``lr_max`` (rounded to float32) and ``weight_sum`` + ``weight_sum_lo``
  (weight_sum rounded to float32, and the rest rounded to float32); the import sets them from
  the tensors' (which must agree within a group), ``weight_sum`` as the exact sum of the pair.
  ``train_mode`` (the same in every group) becomes the metadata ``train_mode``, and the
  parameters are carried as they are (y in train mode, x in eval mode).  ``scheduled_lr``
  (logging only) is dropped; on import it comes from the target's groups.  With
  ``load_parameters=False``, the target's mode must be the checkpoint's.
* Some package hyperparameters are attributes of the optimizer object, not group entries,
  and so are not in its ``state_dict()`` (ATTRIBUTES): Lion's decoupled_weight_decay
  (``decoupled_wd``) and use_triton; Lamb's n_sma_threshold, degenerated_to_sgd, pre_norm
  and maximize; ADOPT's clip_lambda and maximize; AdEMAMix's maximize.  wgpu-optim keeps
  them per group: the export writes the optimizer's in every group, the import sets them on
  the optimizer (every group of the checkpoint must agree).  ADOPT's clip_lambda is a
  function of the step in the package and the exponent p of ``step ** p`` (or None) in
  wgpu-optim: the package's default is 0.25, another function is probed for ``step ** p``
  (else a ValueError), and the import sets the package's default function for 0.25, else
  :class:`StepPower` (p).  use_triton (lion-pytorch's Triton kernel, which changes nothing
  numerically) is exported as whether the optimizer runs it and ignored on import.  Lion's
  decoupled weight decay divides by the lr the optimizer was built with (lion-pytorch's
  ``_init_lr``, wgpu-optim's built configuration), which is no checkpoint state: it stays the
  target's own, as when PyTorch loads its own state dict.  The CLI's to-wgpu takes these
  attributes from ``--attributes`` (JSON, e.g. ``'{"maximize": true}'``; keys not given take
  the package's defaults, ``'{}'`` takes all of them) or the input's
  ``"optimizer_attributes"``, and refuses these classes without either; from-wgpu writes them
  under ``"optimizer_attributes"`` (clip_lambda as the exponent).  Group entries the packages
  read with a default when absent (Lamb's adanorm, adanorm_r, adam_debias; ADOPT's and
  AdEMAMix's cautious, stable_adamw) are exported with that default.  Lamb's adanorm keeps
  each parameter's exp_grad_adanorm (shape (1,) in the package, a 0-d scalar in wgpu-optim's
  checkpoint).  Lamb with pre_norm reads the
  global norm's max_grad_norm and eps from ``optimizer.defaults``, wgpu-optim from the first
  group: the export refuses an optimizer whose defaults differ from its first group's (the
  CLI, whose state dict lacks the defaults, takes them to be the first group's), and the
  import sets them in ``optimizer.defaults`` from the first group.
* Parameters and state buffers keep their dtype when it is float32, float16 or bfloat16 (so
  the state of ``Adam(fused=True)`` on bf16 parameters stays bf16, as wgpu-optim keeps it by
  default); float64 ones are rounded to float32.  A parameter without PyTorch state gets its
  initial state in the parameter's dtype, as PyTorch would create it.  For a wgpu-optim
  optimizer that keeps its state in another type (``Precision::with_state``, replay's
  ``--state-dtype``), ``state_dtype`` (``--state-dtype``) casts every state buffer on export:
  ``"param"`` to the parameter's stored dtype, ``"f32"`` to float32 (exact from 16-bit
  state), ``"bf16"`` to bfloat16 (rounded to nearest even, as wgpu-optim's kernels round).
  Scalars are written as float32.  On import, state and parameters may be F32, F16 or BF16
  (``load_state_dict`` casts the state to the parameter's dtype, as it does when PyTorch
  loads its own).  A master copy (``<name>.master``) becomes the parameter where the target
  parameter is float32 or float64; for a 16-bit target parameter, which PyTorch keeps
  without one, it is dropped with a warning, and the checkpoint's 16-bit parameter is
  loaded.
  Scalars (NAdam's mu_product, ASGD's eta and mu: 0-d tensors in PyTorch, or numbers in old
  pickles; Lamb's exp_grad_adanorm, of shape (1,), imported so) are imported as
  ``_get_scalar_dtype()`` 0-d tensors, as PyTorch creates them
  (``load_state_dict`` then casts them to the parameter's dtype and device, as it does when
  PyTorch loads its own state dict).  Which buffers and scalars a parameter has follows from
  its class and its group's hyperparameters; PyTorch state that they do not use, or that they
  need and is missing, is a ValueError.
* Only hyperparameters wgpu-optim's configurations accept are exported: numbers as floats
  (an int such as PyTorch's default weight_decay 0 or Rprop's step_sizes (1e-6, 50) comes back
  as 0.0 / 50.0; whole-number settings, ns_steps, n_sma_threshold and warmup_steps, stay
  ints), pairs (betas, etas, step_sizes) as two-element lists (tuples on import; AdEMAMix's
  betas are three).  PyTorch's foreach, capturable, differentiable, fused and param_names are
  dropped, and so is AdamW's decoupled_weight_decay (which must be True or absent; Adam, RAdam
  and NAdam keep their own), as are the keys LR schedulers add to groups (initial_lr, max_lr,
  min_lr, base_momentum, max_momentum); on import they come from the target optimizer's own
  groups.  Any other group key is a ValueError.
* LR schedulers are not converted: the export writes no ``scheduler`` entry, and the import
  ignores one (with a warning).  Save and restore a PyTorch scheduler separately.
* A disabled GradScaler (empty state dict) is no grad scaler.  A checkpoint's grad_scaler
  state is loaded only into a given scaler (a warning says when one is ignored).
"""

import argparse
import importlib
import inspect
import json
import math
import sys
import warnings
from collections import OrderedDict

import torch
from safetensors import safe_open
from safetensors.torch import save_file

try:
    from torch.optim.optimizer import _get_scalar_dtype
except ImportError:  # older or newer torch without the private helper
    def _get_scalar_dtype():
        return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32

FORMAT = "wgpu-optim"
VERSION = "1"

# Hyperparameters per class, under PyTorch's argument names (the package's for the classes
# from other packages): what wgpu-optim accepts.
HYPERPARAMETERS = {
    "SGD": ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"),
    "Adam": ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
             "decoupled_weight_decay"),
    "AdamW": ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"),
    "RMSprop": ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"),
    "Adagrad": ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "maximize"),
    "Adamax": ("lr", "betas", "eps", "weight_decay", "maximize"),
    "RAdam": ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay", "maximize"),
    "NAdam": ("lr", "betas", "eps", "weight_decay", "momentum_decay", "decoupled_weight_decay",
              "maximize"),
    "Adadelta": ("lr", "rho", "eps", "weight_decay", "maximize"),
    "Rprop": ("lr", "etas", "step_sizes", "maximize"),
    "ASGD": ("lr", "lambd", "alpha", "t0", "weight_decay", "maximize"),
    "Adafactor": ("lr", "beta2_decay", "eps", "d", "weight_decay", "maximize"),
    "Muon": ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps",
             "adjust_lr_fn"),
    "Lion": ("lr", "betas", "weight_decay", "use_triton", "decoupled_weight_decay"),
    "Lamb": ("lr", "betas", "weight_decay", "weight_decouple", "fixed_decay", "rectify",
             "degenerated_to_sgd", "n_sma_threshold", "grad_averaging", "max_grad_norm", "adam",
             "pre_norm", "eps", "maximize", "adanorm", "adanorm_r", "adam_debias"),
    "ADOPT": ("lr", "betas", "clip_lambda", "weight_decay", "weight_decouple", "fixed_decay",
              "eps", "maximize", "cautious", "stable_adamw"),
    "AdEMAMix": ("lr", "betas", "weight_decay", "weight_decouple", "fixed_decay", "alpha",
                 "t_alpha_beta3", "eps", "maximize", "cautious", "stable_adamw"),
    "AdamWScheduleFree": ("lr", "betas", "eps", "weight_decay", "warmup_steps", "r",
                          "weight_lr_power"),
}
# The classes from other packages, by the module that defines each (a class of the same name
# elsewhere, such as pytorch_optimizer.Lion or lion_pytorch.foreach.Lion, is another one),
# and the pip package that has it.
PACKAGE_CLASSES = {
    "Lion": ("lion_pytorch.lion_pytorch", "lion-pytorch"),
    "Lamb": ("pytorch_optimizer.optimizer.lamb", "pytorch-optimizer"),
    "ADOPT": ("pytorch_optimizer.optimizer.adopt", "pytorch-optimizer"),
    "AdEMAMix": ("pytorch_optimizer.optimizer.ademamix", "pytorch-optimizer"),
    "AdamWScheduleFree": ("schedulefree.adamw_schedulefree", "schedulefree"),
}
# Classes whose PyTorch state holds no step: a tensor has stepped when it has state.
NO_STEP = ("SGD", "Muon", "Lion")
# Classes that count steps per param group, under this group key, not per parameter.
GROUP_STEP = {"Lamb": "step", "ADOPT": "step", "AdEMAMix": "step", "AdamWScheduleFree": "k"}
# Other group entries that are state, not hyperparameters (AdamWScheduleFree's; scheduled_lr
# is for logging only).
GROUP_STATE_KEYS = {"AdamWScheduleFree": ("train_mode", "weight_sum", "lr_max", "scheduled_lr")}
# Per-tensor scalars in the checkpoint that the package keeps per param group.
GROUP_SCALARS = {"AdamWScheduleFree": ("lr_max", "weight_sum", "weight_sum_lo")}
# Hyperparameters a package keeps on the optimizer object, not in its param groups (so not in
# its state_dict()), with the package's defaults; wgpu-optim keeps them per group.
ATTRIBUTES = {
    "Lion": {"use_triton": False, "decoupled_weight_decay": False},
    "Lamb": {"degenerated_to_sgd": False, "n_sma_threshold": 5, "pre_norm": False,
             "maximize": False},
    "ADOPT": {"clip_lambda": 0.25, "maximize": False},
    "AdEMAMix": {"maximize": False},
}
# The object attribute where it is not named as the argument.
ATTRIBUTE_FIELDS = {("Lion", "decoupled_weight_decay"): "decoupled_wd"}
# Group entries the package reads with a default when absent (group.get(key, default)).
GROUP_DEFAULTS = {
    "Lamb": {"adanorm": False, "adanorm_r": 0.95, "adam_debias": False},
    "ADOPT": {"cautious": False, "stable_adamw": False},
    "AdEMAMix": {"cautious": False, "stable_adamw": False},
}
# Group hyperparameters a package also reads from the optimizer's defaults, under a condition:
# Lamb's pre_norm takes the global norm's max_grad_norm and eps from optimizer.defaults,
# wgpu-optim from the first group.
DEFAULTS_READ = {"Lamb": ("pre_norm", ("max_grad_norm", "eps"))}
# Per-parameter state entries that are per-step diagnostics: written by every step, never read.
DIAGNOSTIC_STATES = {"Lamb": ("weight_norm", "adam_norm", "trust_ratio")}
# Hyperparameters that are whole numbers (ints in PyTorch and in wgpu-optim's JSON).
INT_KEYS = {"ns_steps", "n_sma_threshold", "warmup_steps"}
# Hyperparameters that are three numbers (Muon's ns_coefficients; AdEMAMix's betas).
TRIPLE_KEYS = {"ns_coefficients"}
TRIPLE_BETAS = ("AdEMAMix",)
# Hyperparameters that are None or a number (ADOPT's clip_lambda exponent, AdEMAMix's
# t_alpha_beta3).
OPTIONAL_KEYS = {"clip_lambda", "t_alpha_beta3"}
# Hyperparameters that are None or one of these names (Muon's adjust_lr_fn).
NAME_KEYS = {"adjust_lr_fn": ("original", "match_rms_adamw", "spectral_unclamped")}
BOOL_KEYS = {"nesterov", "maximize", "amsgrad", "centered", "decoupled_weight_decay",
             "use_triton", "weight_decouple", "fixed_decay", "rectify", "degenerated_to_sgd",
             "grad_averaging", "adam", "pre_norm", "adanorm", "adam_debias", "cautious",
             "stable_adamw"}
# Hyperparameters that are pairs of numbers (tuples in PyTorch, two-element lists in JSON).
PAIR_KEYS = {"betas", "etas", "step_sizes"}
# PyTorch group keys that are implementation choices or bookkeeping, not hyperparameters.
DROPPED_KEYS = {"foreach", "capturable", "differentiable", "fused", "param_names"}
# Keys LR schedulers add to param groups (the scheduler's state, not the optimizer's).
SCHEDULER_KEYS = {"initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum"}
SCALER_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")


def optimizer_class_name(optimizer):
    """The wgpu-optim name of an optimizer: its class, or the nearest of the classes in
    HYPERPARAMETERS it derives from (AdamW before Adam), from torch.optim or, for the others,
    from the module PACKAGE_CLASSES names."""
    for cls in type(optimizer).__mro__:
        name = cls.__name__
        if name in PACKAGE_CLASSES:
            if cls.__module__ == PACKAGE_CLASSES[name][0]:
                return name
        elif cls.__module__.startswith("torch.optim") and name in HYPERPARAMETERS:
            return name
    raise ValueError(f"{type(optimizer).__module__}.{type(optimizer).__name__} is not one of "
                     f"{', '.join(HYPERPARAMETERS)} (torch.optim's, or "
                     + ", ".join(f"{m}.{n}" for n, (m, _) in PACKAGE_CLASSES.items()) + ")")


def optimizer_class(cls_name):
    """The optimizer class of a wgpu-optim name (importing its package)."""
    if cls_name not in PACKAGE_CLASSES:
        return getattr(torch.optim, cls_name)
    module, dist = PACKAGE_CLASSES[cls_name]
    try:
        return getattr(importlib.import_module(module), cls_name)
    except ImportError:
        raise ValueError(f"{cls_name} needs the package {dist} (pip install {dist})") from None


class StepPower:
    """ADOPT's clip_lambda for the exponent p: ``step ** p`` (math.pow, as the package's
    default ``lambda step: math.pow(step, 0.25)``)."""

    def __init__(self, p):
        self.p = p

    def __call__(self, step):
        return math.pow(step, self.p)

    def __repr__(self):
        return f"StepPower({self.p!r})"


def _default_clip_lambda():
    """The function ADOPT's constructor takes by default."""
    cls = optimizer_class("ADOPT")
    return inspect.signature(cls.__init__).parameters["clip_lambda"].default


def clip_exponent(fn):
    """ADOPT's clip_lambda (None or a function of the step) as wgpu-optim's exponent p of
    ``step ** p`` (or None); a function that is not ``step ** p`` is a ValueError."""
    if fn is None:
        return None
    if isinstance(fn, StepPower):
        return fn.p
    if fn is _default_clip_lambda():
        return 0.25
    if callable(fn):
        try:
            p = float(f"{math.log(fn(2)) / math.log(2):.12g}")
            if all(math.isclose(fn(s), math.pow(s, p), rel_tol=1e-12, abs_tol=0.0)
                   for s in (1, 2, 3, 10, 1000, 123457)):
                return p
        except (TypeError, ValueError, ArithmeticError):
            pass
    raise ValueError(f"ADOPT's clip_lambda is {fn!r}, which wgpu-optim cannot carry: it takes "
                     "clip_lambda as the exponent p of step ** p, or None")


def clip_function(p):
    """wgpu-optim's clip exponent as ADOPT's clip_lambda: None, the package's default function
    for 0.25, else StepPower(p)."""
    if p is None:
        return None
    return _default_clip_lambda() if p == 0.25 else StepPower(p)


def optimizer_attributes(cls_name, optimizer):
    """The hyperparameters a package optimizer keeps on the object (ATTRIBUTES), under their
    argument names, in wgpu-optim's form."""
    out = {}
    for key in ATTRIBUTES.get(cls_name, {}):
        if cls_name == "Lion" and key == "use_triton":
            fn = getattr(optimizer, "update_fn", None)
            out[key] = getattr(fn, "__module__", None) == "lion_pytorch.triton"
            continue
        field = ATTRIBUTE_FIELDS.get((cls_name, key), key)
        if not hasattr(optimizer, field):
            raise ValueError(f"the {cls_name} optimizer has no attribute {field!r} ({key}); "
                             f"is its package the version wgpu-optim implements?")
        value = getattr(optimizer, field)
        out[key] = clip_exponent(value) if key == "clip_lambda" else value
    return _check_attributes(cls_name, out, "the optimizer's attributes")


def _set_attributes(cls_name, optimizer, attributes):
    """Sets ATTRIBUTES (checked, in wgpu-optim's form) on a package optimizer; use_triton,
    an implementation choice, stays the optimizer's."""
    for key, value in attributes.items():
        if key == "use_triton":
            continue
        if key == "clip_lambda":
            value = clip_function(value)
        setattr(optimizer, ATTRIBUTE_FIELDS.get((cls_name, key), key), value)


def _check_attributes(cls_name, attributes, what):
    """Every attribute of the class, checked, in wgpu-optim's form."""
    keys = ATTRIBUTES.get(cls_name, {})
    if not keys:
        if attributes:
            raise ValueError(f"{what}: {cls_name} keeps no hyperparameters outside its param "
                             f"groups, got {sorted(attributes)}")
        return {}
    if attributes is None:
        raise ValueError(f"{cls_name} keeps {', '.join(keys)} on the optimizer object, not in "
                         "its state dict: give them (attributes=..., on the command line "
                         "--attributes)")
    for key in attributes:
        if key not in keys:
            raise ValueError(f"{what}: {key!r} is no {cls_name} optimizer attribute "
                             f"({', '.join(keys)})")
    for key in keys:
        if key not in attributes:
            raise ValueError(f"{what}: {cls_name} optimizer attribute {key!r} is missing")
    return {key: _hyper_value(key, attributes[key], what, cls_name) for key in keys}


def state_names(cls_name, hyper, shape):
    """The state buffers a tensor of `shape` in a group with these hyperparameters keeps, as
    PyTorch names them."""
    if cls_name == "Adafactor":
        return ["row_var", "col_var"] if factored(shape) else ["variance"]
    if cls_name == "SGD":
        return ["momentum_buffer"] if hyper.get("momentum", 0) != 0 else []
    if cls_name == "Muon":
        return ["momentum_buffer"]
    if cls_name in ("Adam", "AdamW"):
        return ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if hyper.get("amsgrad") else [])
    if cls_name == "RMSprop":
        return (["square_avg"] + (["grad_avg"] if hyper.get("centered") else [])
                + (["momentum_buffer"] if hyper.get("momentum", 0) > 0 else []))
    if cls_name == "Adagrad":
        return ["sum"]
    if cls_name == "Adamax":
        return ["exp_avg", "exp_inf"]
    if cls_name in ("RAdam", "NAdam", "Lamb", "ADOPT"):
        return ["exp_avg", "exp_avg_sq"]
    if cls_name == "Adadelta":
        return ["square_avg", "acc_delta"]
    if cls_name == "Rprop":
        return ["prev", "step_size"]
    if cls_name == "ASGD":
        return ["ax"]
    if cls_name == "Lion":
        return ["exp_avg"]
    if cls_name == "AdEMAMix":
        return ["exp_avg", "exp_avg_sq", "exp_avg_slow"]
    if cls_name == "AdamWScheduleFree":
        return ["z", "exp_avg_sq"]
    raise ValueError(f"unknown optimizer {cls_name!r}; expected one of {', '.join(HYPERPARAMETERS)}")


def factored(shape):
    """Whether Adafactor factors the state of a tensor of `shape`, as wgpu-optim does: two
    dimensions or more, none of them 0."""
    return len(shape) >= 2 and all(d > 0 for d in shape)


def state_shape(name, shape):
    """The shape PyTorch gives state `name` of a tensor of `shape`: Adafactor's row factor
    has its last dimension 1, its column factor its second-to-last; the others, the tensor's."""
    shape = list(shape)
    if name == "row_var":
        shape[-1] = 1
    elif name == "col_var":
        shape[-2] = 1
    return tuple(shape)


def scalar_names(cls_name, hyper):
    """The per-tensor scalar state besides the step, as PyTorch names it (0-d tensors; Lamb's
    exp_grad_adanorm, with adanorm, a tensor of shape (1,))."""
    if cls_name == "Lamb":
        return ["exp_grad_adanorm"] if hyper.get("adanorm") else []
    return {"NAdam": ["mu_product"], "ASGD": ["eta", "mu"]}.get(cls_name, [])


def initial_state_value(cls_name, hyper, name):
    """The value a state buffer holds before a parameter's first step."""
    if cls_name == "Adagrad" and name == "sum":
        return hyper.get("initial_accumulator_value", 0.0)
    if cls_name == "Rprop" and name == "step_size":
        return hyper["lr"]
    return 0.0


def initial_scalar_value(cls_name, hyper, name):
    """The value a scalar state holds before a parameter's first step (as float32 holds it)."""
    if cls_name == "ASGD" and name == "eta":
        return float(torch.tensor(hyper["lr"], dtype=torch.float32))
    if cls_name == "Lamb":
        return 0.0
    return 1.0


def _float(x, what):
    if torch.is_tensor(x):
        if x.numel() != 1:
            raise ValueError(f"{what} is a tensor of shape {tuple(x.shape)}, expected a scalar")
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{what} is {x!r}, expected a number")
    return float(x)


def _hyper_value(key, value, what, cls_name=None):
    """A hyperparameter in the JSON form wgpu-optim reads."""
    if key in BOOL_KEYS:
        if not isinstance(value, bool):
            raise ValueError(f"{what}: {key} is {value!r}, expected a bool")
        return value
    if key in NAME_KEYS:
        if value is not None and value not in NAME_KEYS[key]:
            raise ValueError(f"{what}: {key} is {value!r}, expected None or one of "
                             f"{', '.join(NAME_KEYS[key])}")
        return value
    if key in INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{what}: {key} is {value!r}, expected a whole number >= 0")
        return value
    if key in OPTIONAL_KEYS:
        return None if value is None else _float(value, f"{what}: {key}")
    if key in TRIPLE_KEYS or (key == "betas" and cls_name in TRIPLE_BETAS):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3:
            raise ValueError(f"{what}: {key} is {value!r}, expected three numbers")
        return [_float(b, f"{what}: {key}") for b in value]
    if key in PAIR_KEYS or (key == "eps" and isinstance(value, (list, tuple))):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
            raise ValueError(f"{what}: {key} is {value!r}, expected two numbers")
        # Adafactor's eps is (eps1, eps2), eps1 None for float32's epsilon.
        return [None if b is None and key == "eps" and k == 0 else _float(b, f"{what}: {key}")
                for k, b in enumerate(value)]
    return _float(value, f"{what}: {key}")


def _export_group(cls_name, group, g, attributes):
    """A torch param group's hyperparameters (without "params") in wgpu-optim's form, with the
    optimizer's attributes (checked) for the classes that keep some on the object."""
    what = f"param group {g}"
    allowed = HYPERPARAMETERS[cls_name]
    skipped = set(GROUP_STATE_KEYS.get(cls_name, ())) | {GROUP_STEP.get(cls_name)}
    out = {}
    for key, value in group.items():
        if key == "params" or key in DROPPED_KEYS or key in SCHEDULER_KEYS or key in skipped:
            continue
        if key == "decoupled_weight_decay" and cls_name == "AdamW":
            continue
        if key in ATTRIBUTES.get(cls_name, {}):
            raise ValueError(f"{what}: the group holds {key!r}, which {cls_name} reads from the "
                             "optimizer object, not from its groups")
        if key not in allowed:
            raise ValueError(f"{what}: {cls_name} hyperparameter {key!r} is not supported by "
                             f"wgpu-optim (supported: {', '.join(allowed)})")
        if key == "adanorm_r" and value is None:  # Lamb reads None as its default
            value = GROUP_DEFAULTS[cls_name][key]
        out[key] = _hyper_value(key, value, what, cls_name)
    dwd = group.get("decoupled_weight_decay")
    if cls_name == "AdamW" and dwd not in (None, True):
        raise ValueError(f"{what}: AdamW with decoupled_weight_decay={dwd!r} is not supported")
    for key, default in GROUP_DEFAULTS.get(cls_name, {}).items():
        out.setdefault(key, default)
    out.update(attributes)
    # Keep the order of the class's argument list, so the JSON is stable.
    return {key: out[key] for key in allowed if key in out}


# The dtypes a checkpoint holds parameters and state buffers in (safetensors' F32, F16, BF16).
STORED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# The state types a wgpu-optim optimizer keeps (StateDType), by replay's --state-dtype names:
# None for the parameter's.
STATE_DTYPES = {"param": None, "f32": torch.float32, "bf16": torch.bfloat16}


def _as_stored(t, what, shape):
    """A parameter or state buffer as the checkpoint stores it: on the CPU, in its dtype
    where that is one of STORED_DTYPES, else (float64) rounded to float32."""
    if not torch.is_tensor(t):
        raise ValueError(f"{what} is {type(t).__name__}, expected a tensor")
    if t.is_complex():
        raise ValueError(f"{what} is complex ({t.dtype}); wgpu-optim holds real tensors only")
    if not t.is_floating_point():
        raise ValueError(f"{what} has dtype {t.dtype}, expected a floating-point tensor")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{what} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    dtype = t.dtype if t.dtype in STORED_DTYPES else torch.float32
    return t.detach().to(device="cpu", dtype=dtype).contiguous()


def _scalar_f32(value, what):
    """A scalar state (a one-element real tensor or a number) as a float32 0-d tensor."""
    if torch.is_tensor(value):
        if value.is_complex() or not value.is_floating_point():
            raise ValueError(f"{what} has dtype {value.dtype}, expected a floating-point scalar")
        if value.numel() != 1:
            raise ValueError(f"{what} is a tensor of shape {tuple(value.shape)}, expected a scalar")
        return value.detach().to(device="cpu", dtype=torch.float32).reshape(()).clone()
    return torch.tensor(_float(value, what), dtype=torch.float32)


def _step_count(value, what):
    v = _float(value, what)
    if not (v >= 0 and math.isfinite(v) and v == int(v)):
        raise ValueError(f"{what} is {v!r}, expected a whole number >= 0")
    return int(v)


def _group_scalars(cls_name, group, g):
    """The per-tensor scalars a package keeps per param group (GROUP_SCALARS), as float32 0-d
    tensors: AdamWScheduleFree's lr_max, and weight_sum as a pair (hi, the rest)."""
    if cls_name != "AdamWScheduleFree":
        return {}
    what = f"param group {g}"
    lr_max = _float(group.get("lr_max", -1.0), f"{what}: lr_max")
    weight_sum = _float(group.get("weight_sum", 0.0), f"{what}: weight_sum")
    hi = torch.tensor(weight_sum, dtype=torch.float32)
    lo = torch.tensor(weight_sum - float(hi), dtype=torch.float32)
    if not (math.isfinite(float(hi)) and math.isfinite(float(lo))):
        raise ValueError(f"{what}: weight_sum {weight_sum!r} is beyond float32's range")
    return {"lr_max": torch.tensor(lr_max, dtype=torch.float32), "weight_sum": hi,
            "weight_sum_lo": lo}


def _train_mode(cls_name, groups):
    """AdamWScheduleFree's train_mode, which every group must share (None for other classes)."""
    if cls_name != "AdamWScheduleFree":
        return None
    modes = []
    for g, group in enumerate(groups):
        mode = group.get("train_mode", False)  # schedulefree's groups start in eval mode
        if not isinstance(mode, bool):
            raise ValueError(f"param group {g}: train_mode is {mode!r}, expected a bool")
        modes.append(mode)
    if len(set(modes)) > 1:
        raise ValueError(f"param groups 0 and {modes.index(not modes[0])} differ in train_mode; "
                         "a wgpu-optim checkpoint holds one mode")
    return modes[0] if modes else True


def _check_defaults(cls_name, attributes, groups, defaults):
    """Where the package reads group hyperparameters from the optimizer's defaults
    (DEFAULTS_READ), and wgpu-optim from the first group, they must agree."""
    if cls_name not in DEFAULTS_READ or not groups:
        return
    switch, keys = DEFAULTS_READ[cls_name]
    if not attributes.get(switch) or defaults is None:
        return
    for key in keys:
        if key in defaults and key in groups[0] and defaults[key] != groups[0][key]:
            raise ValueError(f"param group 0: {key} is {groups[0][key]!r}, the optimizer's "
                             f"defaults' {defaults[key]!r}: with {switch}, {cls_name} reads "
                             f"{key} from its defaults, wgpu-optim from the first group")


def state_dict_to_checkpoint(cls_name, state_dict, names, params, grad_scaler_state=None,
                             attributes=None, defaults=None, state_dtype=None):
    """Converts a torch optimizer state dict into a checkpoint's tensors and metadata.

    cls_name: a key of HYPERPARAMETERS ("SGD", "Adam", ...).  state_dict: as
    ``optimizer.state_dict()`` returns it.  names: the tensor names in the order the groups'
    "params" lists hold the indices (over all groups).  params: name -> parameter tensor
    (its shape gives every state tensor's shape; its values are written under the name).
    grad_scaler_state: ``GradScaler.state_dict()`` or None.  attributes: for the classes that
    keep hyperparameters on the optimizer object (ATTRIBUTES), all of them, by argument name
    (as :func:`optimizer_attributes` returns them; ADOPT's clip_lambda as the exponent);
    required for those classes, None for the others.  defaults: the optimizer's
    ``defaults``, or None (unknown: a state dict does not hold them), to check that Lamb with
    pre_norm reads max_grad_norm and eps there as wgpu-optim does from the first group.
    state_dtype: None to keep PyTorch's state dtypes, else a key of STATE_DTYPES, the state
    type of the wgpu-optim optimizer that will load the checkpoint: every state buffer is cast
    to it.

    Returns (tensors, metadata): arguments for ``safetensors.torch.save_file``.
    """
    if cls_name not in HYPERPARAMETERS:
        raise ValueError(f"unknown optimizer {cls_name!r}; expected one of {', '.join(HYPERPARAMETERS)}")
    attributes = _check_attributes(cls_name, attributes, "optimizer attributes")
    if state_dtype is not None and state_dtype not in STATE_DTYPES:
        raise ValueError(f"state dtype {state_dtype!r}; expected one of {', '.join(STATE_DTYPES)}")
    groups = state_dict["param_groups"]
    flat = [i for group in groups for i in group["params"]]
    if len(flat) != len(names):
        raise ValueError(f"the optimizer holds {len(flat)} parameters but {len(names)} names were given")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"tensor name {dup!r} is given twice")
    if len(set(flat)) != len(flat):
        raise ValueError("the optimizer state dict lists a parameter index twice")
    name_of = dict(zip(flat, names))
    unknown = [k for k in state_dict["state"] if k not in name_of]
    if unknown:
        raise ValueError(f"the optimizer state holds index {unknown[0]!r}, which no param group lists")
    train_mode = _train_mode(cls_name, groups)
    _check_defaults(cls_name, attributes, groups, defaults)

    tensors = {}
    meta_groups = []
    diagnostics = DIAGNOSTIC_STATES.get(cls_name, ())
    # The state PyTorch keeps per parameter besides the buffers and scalars.
    per_param_step = {"step"} if cls_name not in NO_STEP and cls_name not in GROUP_STEP else set()
    for g, group in enumerate(groups):
        hyper = _export_group(cls_name, group, g, attributes)
        scalars = scalar_names(cls_name, hyper)
        group_scalars = _group_scalars(cls_name, group, g)
        group_step = None
        if cls_name in GROUP_STEP:
            key = GROUP_STEP[cls_name]
            group_step = _step_count(group.get(key, 0), f"param group {g}: {key}")
        for index in group["params"]:
            name = name_of[index]
            if name not in params:
                raise ValueError(f"no parameter values for tensor {name!r}")
            param = _as_stored(params[name], f"parameter {name!r}", tuple(params[name].shape))
            shape = tuple(param.shape)
            wanted = state_names(cls_name, hyper, shape)
            state = {k: v for k, v in state_dict["state"].get(index, {}).items()
                     if v is not None and k not in diagnostics}
            extra = sorted(set(state) - set(wanted) - set(scalars) - per_param_step)
            if extra:
                raise ValueError(f"{name}: PyTorch state {extra} is not used by {cls_name} with "
                                 f"the hyperparameters of group {g} ({json.dumps(hyper)})")
            if cls_name in NO_STEP:
                step = 1 if any(s in state for s in wanted) else 0
            elif group_step is not None:
                if state and group_step == 0:
                    raise ValueError(f"{name}: PyTorch state {sorted(state)} while param group "
                                     f"{g} has {GROUP_STEP[cls_name]} 0")
                step = group_step
            elif state:
                if "step" not in state:
                    raise ValueError(f"{name}: PyTorch state without a step")
                step = _step_count(state["step"], f"{name}.step")
            else:
                step = 0
            if state:
                missing = [s for s in wanted + scalars if s not in state]
                if missing:
                    raise ValueError(f"{name}: PyTorch state lacks {missing}, which {cls_name} with "
                                     f"the hyperparameters of group {g} keeps")
            tensors[f"{name}.step"] = torch.tensor(step, dtype=torch.int64)
            # The state's dtype: PyTorch's (None), else the one asked for.
            cast = (None if state_dtype is None
                    else STATE_DTYPES[state_dtype] or param.dtype)
            for s in wanted:
                if s in state:
                    buf = _as_stored(state[s], f"{name}.{s}", state_shape(s, shape))
                elif cls_name == "AdamWScheduleFree" and s == "z" and step > 0:
                    # No gradient yet in a group that has stepped: schedulefree copies the
                    # parameter into z at the tensor's first step, wgpu-optim at step 1 only.
                    buf = param.clone()
                else:
                    init = initial_state_value(cls_name, hyper, s)
                    buf = torch.full(state_shape(s, shape), init, dtype=param.dtype)
                tensors[f"{name}.{s}"] = buf if cast is None else buf.to(cast)
            for s in scalars:
                if s in state:
                    tensors[f"{name}.{s}"] = _scalar_f32(state[s], f"{name}.{s}")
                else:
                    tensors[f"{name}.{s}"] = torch.tensor(
                        initial_scalar_value(cls_name, hyper, s), dtype=torch.float32)
            for s, value in group_scalars.items():
                tensors[f"{name}.{s}"] = value.clone()
            tensors[name] = param
        meta_groups.append({**hyper, "params": [name_of[i] for i in group["params"]]})

    metadata = {"format": FORMAT, "version": VERSION, "optimizer": cls_name,
                "param_groups": json.dumps(meta_groups)}
    if train_mode is not None:
        metadata["train_mode"] = "true" if train_mode else "false"
    if grad_scaler_state:  # a disabled scaler's state dict is empty
        if set(grad_scaler_state) != set(SCALER_KEYS):
            raise ValueError(f"grad scaler state with keys {sorted(grad_scaler_state)}, "
                             f"expected {list(SCALER_KEYS)}")
        metadata["grad_scaler"] = json.dumps({
            "scale": _float(grad_scaler_state["scale"], "grad scaler scale"),
            "growth_factor": _float(grad_scaler_state["growth_factor"], "growth_factor"),
            "backoff_factor": _float(grad_scaler_state["backoff_factor"], "backoff_factor"),
            "growth_interval": int(grad_scaler_state["growth_interval"]),
            "_growth_tracker": int(grad_scaler_state["_growth_tracker"]),
        })
    return tensors, metadata


def read_checkpoint(path):
    """(tensors, metadata) of a safetensors file."""
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, metadata


def _import_group(cls_name, saved, g, what):
    """A checkpoint group's hyperparameters in torch's form (pairs such as betas as tuples),
    the optimizer attributes (ATTRIBUTES) included."""
    allowed = HYPERPARAMETERS[cls_name]
    out = {}
    for key, value in saved.items():
        if key not in allowed:
            raise ValueError(f"{what}: group {g} holds {key!r}, which is no {cls_name} hyperparameter "
                             f"({', '.join(allowed)})")
        value = _hyper_value(key, value, f"{what}: group {g}", cls_name)
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def _split_attributes(cls_name, hypers, what):
    """Takes the optimizer attributes (ATTRIBUTES) out of the groups' hyperparameters (a list
    of dicts, changed in place) and returns them: those the groups hold, which must agree."""
    found = {}
    for g, hyper in enumerate(hypers):
        for key in ATTRIBUTES.get(cls_name, {}):
            if key not in hyper:
                continue
            value = hyper.pop(key)
            if key in found and found[key][1] != value:
                raise ValueError(f"{what}: groups {found[key][0]} and {g} differ in {key} "
                                 f"({found[key][1]!r} and {value!r}); {cls_name} keeps one {key} "
                                 "for the whole optimizer")
            found.setdefault(key, (g, value))
    return {key: value for key, (_, value) in found.items()}


def checkpoint_attributes(metadata, what="checkpoint"):
    """The optimizer attributes (ATTRIBUTES) a checkpoint's groups hold, checked: {} for the
    classes that keep none on the object; ADOPT's clip_lambda as the exponent (see
    :func:`clip_function`)."""
    cls_name = metadata.get("optimizer")
    if cls_name not in HYPERPARAMETERS:
        raise ValueError(f"{what}: unknown optimizer {cls_name!r}")
    try:
        saved_groups = json.loads(metadata.get("param_groups", ""))
        hypers = [_import_group(cls_name, {k: v for k, v in saved.items() if k != "params"},
                                g, what)
                  for g, saved in enumerate(saved_groups)]
    except (json.JSONDecodeError, AttributeError, TypeError) as e:
        raise ValueError(f"{what}: malformed param_groups: {e!r}") from None
    return _split_attributes(cls_name, hypers, what)


def checkpoint_to_state_dict(tensors, metadata, cls_name, groups, shapes, parameters=True,
                             what="checkpoint", master_dtypes=None):
    """Converts a checkpoint's tensors and metadata into a torch optimizer state dict.

    cls_name: the target optimizer's class (None: take the checkpoint's).  groups: the
    target's groups, a list of (names, current) with names in the order the group holds its
    parameters and current the group's torch keys (without "params"), which the checkpoint's
    hyperparameters override.  shapes: name -> expected shape (a name may be missing).
    parameters: the saved parameters must be present (else they are checked only if present).
    master_dtypes: name -> the target parameter's dtype; where it is float32 or float64, a
    saved master copy (``<name>.master``) is that parameter's value, else it is dropped with a
    warning (None: every master copy is dropped so).

    Everything is checked before returning.  Returns (state_dict, params, scaler_state):
    params maps names to the saved parameters (those present), scaler_state is the
    GradScaler state dict or None.  Indices run over the groups' names in order.  The groups
    hold no optimizer attributes (ATTRIBUTES): :func:`checkpoint_attributes` gives them.
    """
    master_dtypes = master_dtypes or {}

    def meta(key):
        if key not in metadata:
            raise ValueError(f"{what}: not a wgpu-optim checkpoint (no {key!r} in its metadata)")
        return metadata[key]

    if meta("format") != FORMAT:
        raise ValueError(f"{what}: not a wgpu-optim checkpoint (format {meta('format')!r})")
    if meta("version") != VERSION:
        raise ValueError(f"{what}: checkpoint version {meta('version')!r}; this tool reads {VERSION}")
    saved_cls = meta("optimizer")
    if saved_cls not in HYPERPARAMETERS:
        raise ValueError(f"{what}: unknown optimizer {saved_cls!r}")
    if cls_name is not None and saved_cls != cls_name:
        raise ValueError(f"{what}: the checkpoint is of optimizer class {saved_cls}, the target is {cls_name}")
    cls_name = saved_cls
    try:
        saved_groups = json.loads(meta("param_groups"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: malformed param_groups: {e}") from None
    if not isinstance(saved_groups, list) or not all(isinstance(s, dict) for s in saved_groups):
        raise ValueError(f"{what}: malformed param_groups: expected a list of objects")
    if len(saved_groups) != len(groups):
        raise ValueError(f"{what}: the checkpoint has {len(saved_groups)} parameter groups, "
                         f"the target optimizer {len(groups)}")
    checkpoint_attributes(metadata, what)  # the groups agree on them
    train_mode = None
    if cls_name == "AdamWScheduleFree":
        train_mode = {"true": True, "false": False}.get(metadata.get("train_mode"))
        if train_mode is None:
            raise ValueError(f"{what}: train_mode is {metadata.get('train_mode')!r}, expected "
                             "\"true\" or \"false\" (whether the parameters were saved in train "
                             "or eval mode)")

    state, torch_groups, params = {}, [], {}
    expected = set()
    index = 0
    for g, (saved, (names, current)) in enumerate(zip(saved_groups, groups)):
        saved = dict(saved)
        saved_names = saved.pop("params", None)
        if not isinstance(saved_names, list):
            raise ValueError(f"{what}: group {g} has no \"params\" list")
        if len(set(saved_names)) != len(saved_names):
            raise ValueError(f"{what}: group {g} names a tensor twice")
        missing = [n for n in names if n not in saved_names]
        if missing:
            raise ValueError(f"{what}: tensor {missing[0]!r} is not in the checkpoint's group {g}")
        extra = [n for n in saved_names if n not in names]
        if extra:
            raise ValueError(f"{what}: the checkpoint's group {g} holds {extra[0]!r}, "
                             f"which the target's group {g} lacks")
        hyper = _import_group(cls_name, saved, g, what)
        _split_attributes(cls_name, [hyper], what)
        group = {k: v for k, v in current.items() if k != "params"}
        group.update(hyper)
        scalars = scalar_names(cls_name, hyper)
        group_scalars = GROUP_SCALARS.get(cls_name, ())
        steps, group_values = {}, {}
        indices = []
        for name in names:
            step_key = f"{name}.step"
            if step_key not in tensors:
                raise ValueError(f"{what}: the checkpoint lacks tensor {step_key!r}")
            step_t = tensors[step_key]
            if step_t.dtype != torch.int64 or step_t.dim() != 0:
                raise ValueError(f"{what}: tensor {step_key!r} is {step_t.dtype} of shape "
                                 f"{list(step_t.shape)}, expected a 0-d int64 (I64)")
            step = int(step_t.item())
            if step < 0:
                raise ValueError(f"{what}: {step_key} is {step}, expected >= 0")
            expected.add(step_key)
            # The tensor's shape: given, or the saved parameter's, or (Adafactor) from its
            # factors, or its one state buffer's.
            shape = shapes.get(name)
            if shape is None and name in tensors:
                shape = tuple(tensors[name].shape)
            if shape is None and f"{name}.row_var" in tensors and f"{name}.col_var" in tensors:
                shape = (tuple(tensors[f"{name}.row_var"].shape[:-1])
                         + tuple(tensors[f"{name}.col_var"].shape[-1:]))
            if shape is None:
                shape = next((tuple(tensors[k].shape) for k in tensors
                              if k.startswith(f"{name}.") and tensors[k].dim() > 0), ())
            wanted = state_names(cls_name, group, shape)
            keys = [(f"{name}.{s}", state_shape(s, shape)) for s in wanted]
            if parameters or name in tensors:
                keys.append((name, tuple(shape)))
            loaded = {}
            for key, key_shape in keys:
                if key not in tensors:
                    raise ValueError(f"{what}: the checkpoint lacks tensor {key!r}")
                t = tensors[key]
                if t.dtype not in STORED_DTYPES:
                    raise ValueError(f"{what}: tensor {key!r} is {t.dtype}, expected float32, "
                                     "float16 or bfloat16 (F32, F16 or BF16)")
                if tuple(t.shape) != tuple(key_shape):
                    raise ValueError(f"{what}: tensor {key!r} has shape {list(t.shape)}, "
                                     f"expected {list(key_shape)}")
                expected.add(key)
                loaded[key] = t
            if name in loaded:
                params[name] = loaded[name]
            master_key = f"{name}.master"
            if master_key in tensors:
                t = tensors[master_key]
                if t.dtype != torch.float32 or tuple(t.shape) != tuple(shape):
                    raise ValueError(f"{what}: tensor {master_key!r} is {t.dtype} of shape "
                                     f"{list(t.shape)}, expected float32 (F32) of shape "
                                     f"{list(shape)}")
                expected.add(master_key)
                if master_dtypes.get(name) in (torch.float32, torch.float64):
                    params[name] = t
                elif name in params:
                    warnings.warn(f"{what}: the f32 master copy of {name!r} is dropped: PyTorch "
                                  "keeps none for a 16-bit parameter, which takes the "
                                  "checkpoint's 16-bit value")
            for s in list(scalars) + list(group_scalars):
                key = f"{name}.{s}"
                if key not in tensors:
                    raise ValueError(f"{what}: the checkpoint lacks tensor {key!r}")
                t = tensors[key]
                if t.dtype != torch.float32 or t.dim() != 0:
                    raise ValueError(f"{what}: tensor {key!r} is {t.dtype} of shape "
                                     f"{list(t.shape)}, expected a 0-d float32 (F32)")
                expected.add(key)
                loaded[key] = t
            steps[name] = step
            group_values[name] = tuple(float(loaded[f"{name}.{s}"]) for s in group_scalars)
            entry = {}
            if cls_name in NO_STEP:
                if step > 0:
                    for s in wanted:
                        entry[s] = loaded[f"{name}.{s}"]
            elif cls_name in GROUP_STEP:
                if step > 0:
                    for s in wanted:
                        entry[s] = loaded[f"{name}.{s}"]
                    # Lamb's exp_grad_adanorm, which the package keeps with shape (1,).
                    for s in scalars:
                        entry[s] = loaded[f"{name}.{s}"].reshape(1)
            elif step > 0 or cls_name == "Adagrad":
                entry["step"] = torch.tensor(float(step), dtype=_get_scalar_dtype())
                for s in wanted:
                    entry[s] = loaded[f"{name}.{s}"]
                for s in scalars:
                    entry[s] = loaded[f"{name}.{s}"].to(_get_scalar_dtype())
            if entry:
                state[index] = entry
            indices.append(index)
            index += 1
        if cls_name in GROUP_STEP and names:
            # The package counts per group: its tensors must agree.
            for values, kind in ((steps, "step"), (group_values, "/".join(group_scalars))):
                first = names[0]
                other = next((n for n in names if values[n] != values[first]), None)
                if other is not None:
                    raise ValueError(
                        f"{what}: group {g}: {first!r} and {other!r} differ in {kind} "
                        f"({values[first]} and {values[other]}); {cls_name} keeps one per "
                        "param group")
            group[GROUP_STEP[cls_name]] = steps[names[0]]
            if cls_name == "AdamWScheduleFree":
                lr_max, hi, lo = group_values[names[0]]
                group["lr_max"] = lr_max
                group["weight_sum"] = hi + lo
        if train_mode is not None:
            group["train_mode"] = train_mode
        group["params"] = indices
        torch_groups.append(group)

    extra = sorted(k for k in tensors if k not in expected)
    if extra:
        raise ValueError(f"{what}: the checkpoint holds {extra[0]!r}, which belongs to no tensor "
                         "of the target optimizer")

    scaler_state = None
    if "grad_scaler" in metadata:
        try:
            scaler_state = json.loads(metadata["grad_scaler"])
        except json.JSONDecodeError as e:
            raise ValueError(f"{what}: malformed grad_scaler state: {e}") from None
        if not isinstance(scaler_state, dict) or set(scaler_state) != set(SCALER_KEYS):
            raise ValueError(f"{what}: grad_scaler state {metadata['grad_scaler']!r}: expected "
                             f"exactly the keys {list(SCALER_KEYS)}")
        scaler_state = {
            "scale": _float(scaler_state["scale"], "grad_scaler scale"),
            "growth_factor": _float(scaler_state["growth_factor"], "grad_scaler growth_factor"),
            "backoff_factor": _float(scaler_state["backoff_factor"], "grad_scaler backoff_factor"),
            "growth_interval": int(scaler_state["growth_interval"]),
            "_growth_tracker": int(scaler_state["_growth_tracker"]),
        }
    return {"state": state, "param_groups": torch_groups}, params, scaler_state


def _names_by_identity(optimizer, named_parameters):
    """The names of the optimizer's parameters, in the order its groups hold them."""
    by_id = {}
    for name, p in named_parameters:
        by_id.setdefault(id(p), (name, p))
    names = []
    for g, group in enumerate(optimizer.param_groups):
        for k, p in enumerate(group["params"]):
            hit = by_id.get(id(p))
            if hit is None or hit[1] is not p:
                raise ValueError(f"parameter {k} of param group {g} (shape {tuple(p.shape)}) is "
                                 "not among named_parameters")
            names.append(hit[0])
    return names


def to_wgpu_optim(optimizer, named_parameters, path, grad_scaler=None, state_dtype=None):
    """Writes a wgpu-optim checkpoint of a torch optimizer (and a torch.amp.GradScaler) to path.

    named_parameters: (name, parameter) pairs, e.g. ``model.named_parameters()``; every
    parameter the optimizer holds must be among them (by identity), and the parameters'
    current values are written too.  Raises ValueError for anything the checkpoint cannot
    hold (another optimizer class, unsupported hyperparameters, inconsistent state).  A
    package optimizer's hyperparameters kept on the object (ATTRIBUTES) are read from it.
    state_dtype: as :func:`state_dict_to_checkpoint` takes it.
    """
    cls_name = optimizer_class_name(optimizer)
    names = _names_by_identity(optimizer, named_parameters)
    flat = [p for group in optimizer.param_groups for p in group["params"]]
    params = dict(zip(names, flat))
    scaler_state = grad_scaler.state_dict() if grad_scaler is not None else None
    attributes = optimizer_attributes(cls_name, optimizer) if cls_name in ATTRIBUTES else None
    tensors, metadata = state_dict_to_checkpoint(cls_name, optimizer.state_dict(), names, params,
                                                 scaler_state, attributes, optimizer.defaults,
                                                 state_dtype)
    save_file(tensors, str(path), metadata=metadata)


def from_wgpu_optim(path, optimizer, named_parameters, grad_scaler=None, *, load_parameters=True):
    """Loads a wgpu-optim checkpoint into a torch optimizer built over the model's parameters.

    The optimizer must be of the checkpoint's class, with the same groups holding the same
    parameter names; every tensor must be present with the parameter's shape and the
    checkpoint's dtypes.  Any mismatch is a ValueError raised before anything changes.  The
    checkpoint's hyperparameters replace the groups' (other keys, such as foreach, stay), its
    state is loaded with ``optimizer.load_state_dict``, its parameters are copied into the
    model's (with load_parameters; they must then be present), and its grad scaler state into
    grad_scaler when one is given (the checkpoint must then hold one).  A package optimizer's
    hyperparameters kept on the object (ATTRIBUTES) are set on it.  AdamWScheduleFree takes
    the checkpoint's train_mode, which must be the optimizer's own without load_parameters
    (the parameters then keep their values, which the mode describes).
    """
    cls_name = optimizer_class_name(optimizer)
    names = _names_by_identity(optimizer, named_parameters)
    groups, shapes, by_name = [], {}, {}
    start = 0
    for group in optimizer.param_groups:
        n = len(group["params"])
        groups.append((names[start:start + n], {k: v for k, v in group.items() if k != "params"}))
        for name, p in zip(names[start:start + n], group["params"]):
            shapes[name] = tuple(p.shape)
            by_name[name] = p
        start += n
    tensors, metadata = read_checkpoint(path)
    sd, params, scaler_state = checkpoint_to_state_dict(
        tensors, metadata, cls_name, groups, shapes, parameters=load_parameters, what=str(path),
        master_dtypes={name: p.dtype for name, p in by_name.items()})
    attributes = checkpoint_attributes(metadata, what=str(path))
    if cls_name == "AdamWScheduleFree" and not load_parameters:
        for g, (saved, group) in enumerate(zip(sd["param_groups"], optimizer.param_groups)):
            if saved["train_mode"] != group.get("train_mode"):
                raise ValueError(
                    f"{path}: train_mode: the checkpoint was saved in "
                    f"{'train' if saved['train_mode'] else 'eval'} mode, the optimizer's group "
                    f"{g} is in {'train' if group.get('train_mode') else 'eval'} mode; load the "
                    "parameters too, or switch the optimizer with train() or eval() first")
    if grad_scaler is not None:
        if scaler_state is None:
            raise ValueError(f"{path}: the checkpoint holds no grad scaler state")
        if not grad_scaler.is_enabled():
            raise ValueError("the grad scaler is disabled; it cannot take the checkpoint's state")
    elif scaler_state is not None:
        warnings.warn(f"{path}: the checkpoint's grad scaler state is ignored (no grad_scaler given)")
    if "scheduler" in metadata:
        warnings.warn(f"{path}: the checkpoint's scheduler state is not converted")
    if "stochastic_rounding" in metadata:
        warnings.warn(f"{path}: the checkpoint's stochastic rounding (seed "
                      f"{metadata['stochastic_rounding']}) is not carried: PyTorch rounds to "
                      "nearest")
    optimizer.load_state_dict(sd)
    _set_attributes(cls_name, optimizer, attributes)
    if cls_name in DEFAULTS_READ and sd["param_groups"]:
        switch, keys = DEFAULTS_READ[cls_name]
        if getattr(optimizer, switch, False):
            for key in keys:
                optimizer.defaults[key] = sd["param_groups"][0][key]
    if load_parameters:
        with torch.no_grad():
            for name, value in params.items():
                by_name[name].copy_(value)
    if grad_scaler is not None:
        grad_scaler.load_state_dict(scaler_state)


def _cli_to_wgpu(args):
    blob = torch.load(args.input, map_location="cpu", weights_only=True)
    for key in ("model", "optimizer"):
        if key not in blob:
            raise ValueError(f"{args.input}: expected a dict with \"model\" and \"optimizer\"")
    model, sd = blob["model"], blob["optimizer"]
    count = sum(len(g["params"]) for g in sd["param_groups"])
    if args.names is not None:
        names = [n for n in args.names.split(",") if n]
        source = "--names"
    elif all("param_names" in g for g in sd["param_groups"]):
        names = [n for g in sd["param_groups"] for n in g["param_names"]]
        source = "the optimizer's param_names"
    else:
        names = list(model.keys())
        source = "the model's state dict keys"
    if len(names) != count:
        raise ValueError(f"the optimizer holds {count} parameters but {source} give {len(names)} "
                         "names (pass --names a,b,c in the optimizer's parameter order)")
    missing = [n for n in names if n not in model]
    if missing:
        raise ValueError(f"{missing[0]!r} is not in the model's state dict")
    # The hyperparameters a package optimizer keeps on the object, which its state dict lacks.
    attributes = None
    if "optimizer_attributes" in blob:
        attributes = dict(blob["optimizer_attributes"])
    if args.attributes is not None:
        try:
            given = json.loads(args.attributes)
        except json.JSONDecodeError as e:
            raise ValueError(f"--attributes: malformed JSON: {e}") from None
        if not isinstance(given, dict):
            raise ValueError(f"--attributes: {args.attributes!r} is not a JSON object")
        attributes = {**(attributes or {}), **given}
    if args.optimizer in ATTRIBUTES:
        if attributes is None:
            raise ValueError(
                f"{args.optimizer} keeps {', '.join(ATTRIBUTES[args.optimizer])} on the optimizer "
                "object, which its state dict lacks: give them with --attributes, e.g. "
                f"--attributes '{json.dumps(ATTRIBUTES[args.optimizer])}' (keys not given take "
                "these package defaults; '{}' takes them all)")
        attributes = {**ATTRIBUTES[args.optimizer], **attributes}
    tensors, metadata = state_dict_to_checkpoint(args.optimizer, sd, names, model,
                                                 blob.get("grad_scaler"), attributes,
                                                 state_dtype=args.state_dtype)
    save_file(tensors, args.output, metadata=metadata)


def _cli_from_wgpu(args):
    tensors, metadata = read_checkpoint(args.input)
    cls_name = metadata.get("optimizer")
    if cls_name not in HYPERPARAMETERS:
        raise ValueError(f"{args.input}: not a wgpu-optim checkpoint of a known optimizer "
                         f"(optimizer {cls_name!r})")
    attributes = checkpoint_attributes(metadata, args.input)
    try:
        saved_groups = json.loads(metadata["param_groups"])
        groups = []
        for g, saved in enumerate(saved_groups):
            hyper = _import_group(cls_name, {k: v for k, v in saved.items() if k != "params"},
                                  g, args.input)
            _split_attributes(cls_name, [hyper], args.input)
            # PyTorch's (or the package's) defaults for the other keys (foreach, fused, ...),
            # from a throwaway optimizer that also validates the hyperparameters.
            try:
                dummy = optimizer_class(cls_name)([torch.zeros(1)], **hyper)
            except AssertionError:  # lion-pytorch checks with bare asserts
                raise ValueError(f"{args.input}: group {g}: {cls_name} rejects its "
                                 f"hyperparameters {hyper}") from None
            current = {k: v for k, v in dummy.param_groups[0].items() if k != "params"}
            groups.append((list(saved["params"]), current))
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"{args.input}: malformed param_groups: {e!r}") from None
    sd, params, scaler_state = checkpoint_to_state_dict(
        tensors, metadata, cls_name, groups, {}, parameters=True, what=args.input)
    if "scheduler" in metadata:
        print(f"note: {args.input}: the scheduler state is not converted", file=sys.stderr)
    if "stochastic_rounding" in metadata:
        print(f"note: {args.input}: stochastic rounding (seed {metadata['stochastic_rounding']}) "
              "is not carried: PyTorch rounds to nearest", file=sys.stderr)
    model = OrderedDict((name, params[name]) for names, _ in groups for name in names)
    out = {"model": model, "optimizer": sd}
    if scaler_state is not None:
        out["grad_scaler"] = scaler_state
    if cls_name in ATTRIBUTES:
        out["optimizer_attributes"] = {**ATTRIBUTES[cls_name], **attributes}
        print(f"note: {cls_name} keeps {', '.join(ATTRIBUTES[cls_name])} on the optimizer object, "
              f"not in its state dict: build it with {json.dumps(out['optimizer_attributes'])} "
              "(written under \"optimizer_attributes\""
              + ("; clip_lambda as the exponent p of step ** p" if cls_name == "ADOPT" else "")
              + (", and with pre_norm max_grad_norm and eps as the first group's, which Lamb "
                 "reads from its defaults" if cls_name == "Lamb" else "")
              + ")", file=sys.stderr)
    torch.save(out, args.output)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    to = sub.add_parser("to-wgpu", help="torch.save'd {model, optimizer[, grad_scaler]} -> checkpoint")
    to.add_argument("input", help=".pt file with model and optimizer state dicts")
    to.add_argument("output", help="the wgpu-optim checkpoint (.safetensors) to write")
    to.add_argument("--optimizer", required=True, choices=sorted(HYPERPARAMETERS),
                    help="the optimizer class the state dict comes from (torch.optim's, or "
                    "Lion, Lamb, ADOPT, AdEMAMix, AdamWScheduleFree from their packages)")
    to.add_argument("--attributes", help="JSON: the hyperparameters Lion, Lamb, ADOPT and "
                    "AdEMAMix keep on the optimizer object, not in the state dict (e.g. "
                    "'{\"maximize\": true}'; ADOPT's clip_lambda as the exponent p of step ** p, "
                    "or null); keys not given take the package's defaults.  Required for these "
                    "classes unless the input holds \"optimizer_attributes\"")
    to.add_argument("--names", help="comma-separated tensor names in the optimizer's parameter "
                    "order (default: its param_names, else the model state dict's keys)")
    to.add_argument("--state-dtype", choices=list(STATE_DTYPES),
                    help="the state type of the wgpu-optim optimizer that will load the "
                    "checkpoint (replay's --state-dtype): every state buffer is cast to it "
                    "(default: keep PyTorch's dtypes)")
    fr = sub.add_parser("from-wgpu", help="checkpoint -> torch.save'd {model, optimizer[, grad_scaler]}")
    fr.add_argument("input", help="the wgpu-optim checkpoint (.safetensors)")
    fr.add_argument("output", help=".pt file to write")
    args = parser.parse_args(argv)
    try:
        if args.command == "to-wgpu":
            _cli_to_wgpu(args)
        else:
            _cli_from_wgpu(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
