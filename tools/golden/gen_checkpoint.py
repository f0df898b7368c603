#!/usr/bin/env python3
"""Generate golden checkpoints that carry a run between PyTorch and wgpu-optim, both ways,
and check that a resumed run continues the uninterrupted one.

Run from the repository root, after building the binary (`cargo build`):

    python3 tools/golden/gen_checkpoint.py [--cases NAME,NAME]

(--cases: regenerate only those cases' files; cases.json is written whole and the other
cases' files are kept.)

It needs ``target/debug/wgpu-optim`` (or the binary named by $WGPU_OPTIM_BIN), which it runs
with ``replay --resume`` and ``replay --save-checkpoint``, and tools/torch_checkpoint.py.

Each case runs the real ``torch.optim`` class (single-tensor CPU path, foreach=False), or the
class from its package as tools/golden/gen_optim.py builds it (Lion, Lamb, ADOPT, AdEMAMix,
AdamWScheduleFree, with the package's defaults, in train mode for AdamWScheduleFree), over
three parameters of a small module, "layer.weight" [4,6], "layer.bias" [6] and "gain" [5]
(a case may give them other shapes, its "shapes": Muon's are matrices)
(seeded randn init; gradients randn * 0.5, seeded per case), for STEPS = 20 iterations, and
writes a checkpoint with ``to_wgpu_optim`` after SPLIT = 10.  The scaler case runs

    scaler = torch.amp.GradScaler("cpu", **grad_scaler)
    p.grad = <gradient file>[k]; scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm, foreach=False)
    scaler.step(opt); scaler.update()

whose gradient file holds the *scaled* gradients (as tools/golden/gen_amp.py builds them:
``f32(g_k * scale_k)``, then +inf at the elements listed in "inject", steps 4 and 13, which
the scaler skips).  Files under ``tests/golden/checkpoint/``, per case <c>:

* ``<c>.params.safetensors``  - initial parameters (F32) by name.
* ``<c>.head.safetensors``    - gradients of steps 0..9, shape [10, *shape] (F32).
* ``<c>.tail.safetensors``    - gradients of steps 10..19, shape [10, *shape] (F32).
* ``<c>.torch10.safetensors`` - the wgpu-optim checkpoint tools/torch_checkpoint.py's
                                ``to_wgpu_optim`` writes after 10 float32 steps (parameters,
                                I64 steps, state, param_groups and grad_scaler metadata; the
                                metadata keys are sorted in the header so the file is
                                byte-stable across reruns).
* ``<c>.torch20.safetensors`` - the uninterrupted 20-step float32 run, in the format of
                                ``replay --out``: final params by name, every state tensor as
                                ``<name>.<state>`` (``step`` as 0-d F32; SGD, Muon and Lion
                                have none; Lamb, ADOPT and AdEMAMix the group's step as every
                                tensor's; Lamb's diagnostics left out; AdamWScheduleFree the
                                group's k, lr_max and weight_sum as every tensor's step, lr_max
                                and the F32 pair weight_sum + weight_sum_lo), and
                                for the scaler case ``grad_scaler.scale`` (F32 [1]) and
                                ``grad_scaler.growth_tracker`` (I32 [1]).
* ``<c>.f64.safetensors``     - the same 20-step run in float64 (params upcast, the float32
                                file gradients upcast; the scaler's scale stays float32).
* ``<c>.torch_resumed.safetensors`` - what PyTorch produces when it loads wgpu-optim's own
                                10-step checkpoint (``replay --grads <c>.head.safetensors
                                --save-checkpoint``) with ``from_wgpu_optim`` into a fresh
                                model/optimizer/scaler (zero params, the optimizer built with
                                3x the lr, both replaced by the load; a package optimizer
                                with the package's defaults for all else, which the load
                                replaces too) and runs steps 10..19
                                (torch20's format).
* ``cases.json``              - {"steps": 20, "split": 10, "names": [...], "cases": [{"name",
    "optimizer" (format of tests/golden/optim/cases.json), and for the scaler case
    "clip_grad_norm", "grad_scaler" (torch.amp.GradScaler arguments, device "cpu" implied)
    and "inject" ({"step", "name", "index" (flat), "value"})}]}.

The script checks, per case, that
  (a) forward: ``replay --params <c>.params --grads <c>.tail --resume <c>.torch10`` ends
      where torch20 does, and
  (b) reverse: the 10-step ``replay --save-checkpoint`` checkpoint matches torch10 (as
      tests/golden.rs checks it too: the same tensors, dtypes and shapes, each value within
      1e-6 (1 + |torch10|), the same param_groups), and PyTorch resumed from it
      (torch_resumed) ends where torch20 does,
each tensor within float32 accuracy: |x - torch32| <= 4 |torch32 - torch64| + 1e-6 (1 +
|torch64|) elementwise, with steps, the scale and the growth tracker exact (the checkpoint
step of SGD, Muon and Lion is 1 from PyTorch, the step count from wgpu-optim: only whether it
is 0 is compared).
It prints the worst ratio |x - torch32| / bound per case and direction and fails above 1.
It also checks that ``replay --resume`` with 3x the lr in --optimizer gives the same output
bit for bit (the checkpoint's hyperparameters win) and that the 10-step ``replay --out``
equals its own checkpoint.
Rerunning is deterministic; stale files are removed.
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

from gen_optim import (DIAGNOSTIC_STATES, REPO_ROOT, build_optimizer, finish_output_dir,
                       state_tensors)

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
from torch_checkpoint import (GROUP_STEP, PACKAGE_CLASSES, from_wgpu_optim,  # noqa: E402
                              read_checkpoint, to_wgpu_optim)

SEED = 20261125
STEPS = 20
SPLIT = 10
GRAD_SCALE = 0.5
SHAPES = [("layer.weight", (4, 6)), ("layer.bias", (6,)), ("gain", (5,))]
NAMES = [n for n, _ in SHAPES]

OUT_DIR = os.path.join(REPO_ROOT, "tests", "golden", "checkpoint")
BINARY = os.environ.get("WGPU_OPTIM_BIN", os.path.join(REPO_ROOT, "target", "debug", "wgpu-optim"))

CASES = [
    {"name": "adam_amsgrad_wd",
     "optimizer": {"type": "Adam", "lr": 0.01, "weight_decay": 0.1, "amsgrad": True}},
    {"name": "adamw_betas", "optimizer": {"type": "AdamW", "lr": 0.01, "betas": [0.8, 0.95]}},
    {"name": "sgd_nesterov",
     "optimizer": {"type": "SGD", "lr": 0.05, "momentum": 0.9, "nesterov": True}},
    {"name": "sgd_momentum_dampening_wd",
     "optimizer": {"type": "SGD", "lr": 0.05, "momentum": 0.9, "dampening": 0.2,
                   "weight_decay": 0.01}},
    {"name": "rmsprop_centered_momentum",
     "optimizer": {"type": "RMSprop", "lr": 0.01, "momentum": 0.5, "centered": True}},
    {"name": "adagrad_lr_decay_init_acc",
     "optimizer": {"type": "Adagrad", "lr": 0.1, "lr_decay": 0.01,
                   "initial_accumulator_value": 0.1}},
    {"name": "scaler_clip_adam", "optimizer": {"type": "Adam", "lr": 0.01},
     "clip_grad_norm": 1.0, "grad_scaler": {"init_scale": 1024.0, "growth_interval": 3},
     "inject": [{"step": 4, "name": "layer.bias", "index": 2, "value": "inf"},
                {"step": 13, "name": "gain", "index": 3, "value": "inf"}]},
    # Scalar state: NAdam's mu_product, ASGD's eta and mu (0-d F32 in the checkpoint).
    {"name": "nadam_decoupled_wd",
     "optimizer": {"type": "NAdam", "lr": 0.01, "weight_decay": 0.05,
                   "decoupled_weight_decay": True}},
    {"name": "asgd_averaging",
     "optimizer": {"type": "ASGD", "lr": 0.05, "lambd": 0.5, "alpha": 0.5, "t0": 3.0}},
    {"name": "rprop_step_sizes",
     "optimizer": {"type": "Rprop", "lr": 0.01, "step_sizes": [0.003, 0.02]}},
    # Factored state: layer.weight keeps row_var [4, 1] and col_var [1, 6], the vectors variance.
    {"name": "adafactor_wd",
     "optimizer": {"type": "Adafactor", "lr": 0.05, "weight_decay": 0.01, "eps": [None, 1e-3]}},
    # Muon takes matrices only: its case gives every parameter two dimensions (wide, square,
    # tall). Newton-Schulz in float32 (gen_optim's patch of _zeropower_via_newtonschulz).
    {"name": "muon_wd",
     "optimizer": {"type": "Muon", "lr": 0.02, "weight_decay": 0.05},
     "shapes": {"layer.weight": [4, 6], "layer.bias": [3, 3], "gain": [5, 2]}},
    # Classes from other packages. Lion (lion-pytorch) keeps no step.
    {"name": "lion_betas_wd",
     "optimizer": {"type": "Lion", "lr": 0.01, "betas": [0.95, 0.98], "weight_decay": 0.5}},
    # pytorch-optimizer counts steps per param group, and keeps some hyperparameters on the
    # optimizer object (Lamb's degenerated_to_sgd, n_sma_threshold and maximize here; ADOPT's
    # clip_lambda and maximize; AdEMAMix's maximize), which the reverse run's optimizer is
    # built without. Lamb's rectification with threshold 12: SGD steps up to step 12, across
    # the split (the package's per-parameter path).
    {"name": "lamb_rectify_sgd_maximize",
     "optimizer": {"type": "Lamb", "lr": 0.01, "weight_decay": 0.1, "rectify": True,
                   "degenerated_to_sgd": True, "n_sma_threshold": 12, "maximize": True}},
    {"name": "adopt_no_clip_maximize_wd",
     "optimizer": {"type": "ADOPT", "lr": 0.01, "clip_lambda": None, "maximize": True,
                   "weight_decay": 0.1, "weight_decouple": True}},
    # alpha and beta3 warm up over 12 steps, across the split.
    {"name": "ademamix_t_alpha_beta3_maximize",
     "optimizer": {"type": "AdEMAMix", "lr": 0.01, "betas": [0.9, 0.999, 0.99],
                   "t_alpha_beta3": 12, "maximize": True}},
    # schedulefree keeps k, lr_max and weight_sum per group; the learning rate warms up over 16
    # steps, across the split (lr_max moves after it). A power-of-two lr and warmup make every
    # weight lr_max**2 and weight_sum exact in float32: the resumed run's weight_sum is then the
    # float64 run's, as tests/golden.rs compares a 0-d state that both PyTorch runs share
    # (weight_sum_lo: 0) only against float32 PyTorch, not against float64.
    {"name": "adamw_schedulefree_warmup_wd",
     "optimizer": {"type": "AdamWScheduleFree", "lr": 0.015625, "warmup_steps": 16,
                   "weight_decay": 0.05}},
    # Lamb's pre_norm (an attribute) scales the gradients by their global norm, with
    # max_grad_norm and eps from the optimizer's defaults (wgpu-optim: the first group's);
    # without the trust ratio and with eps above sqrt(v) the update follows the scale.
    {"name": "lamb_pre_norm_adam_eps",
     "optimizer": {"type": "Lamb", "lr": 0.01, "pre_norm": True, "max_grad_norm": 0.1,
                   "adam": True, "eps": 1e-2}},
    # Lamb's adanorm (a group entry the package reads with a default) keeps each parameter's
    # running gradient norm, exp_grad_adanorm, of shape (1,) in the package.
    {"name": "lamb_adanorm_wd",
     "optimizer": {"type": "Lamb", "lr": 0.01, "adanorm": True, "adanorm_r": 0.5,
                   "weight_decay": 0.1}},
]
# Classes whose PyTorch state holds no step (the tool writes 1 once a buffer exists).
NO_STEP = ("SGD", "Muon", "Lion")


def case_shapes(case):
    """The (name, shape) of each parameter: SHAPES, or the case's own "shapes"."""
    if "shapes" not in case:
        return SHAPES
    return [(n, tuple(case["shapes"][n])) for n in NAMES]


class Model(torch.nn.Module):
    """The parameters under their checkpoint names (named_parameters() lists "gain" first,
    the optimizer holds them in SHAPES order: names are matched by identity)."""

    def __init__(self, params, dtype):
        super().__init__()
        self.gain = torch.nn.Parameter(params["gain"].detach().clone().to(dtype))
        self.layer = torch.nn.Module()
        self.layer.weight = torch.nn.Parameter(params["layer.weight"].detach().clone().to(dtype))
        self.layer.bias = torch.nn.Parameter(params["layer.bias"].detach().clone().to(dtype))

    def ordered(self):
        return [self.layer.weight, self.layer.bias, self.gain]


def make_problem(index, shapes):
    """Seeded initial params and unscaled gradients [STEPS, *shape] of case `index`."""
    torch.manual_seed(SEED + index)
    params = {n: torch.randn(shape, dtype=torch.float32) for n, shape in shapes}
    grads = {n: torch.randn((STEPS, *shape), dtype=torch.float32) * GRAD_SCALE
             for n, shape in shapes}
    return params, grads


def scale_sequence(gs_args, bad_steps):
    """Scale before each step, from a real GradScaler whose optimizer sees a non-finite
    gradient exactly at bad_steps."""
    dummy = torch.zeros(1, dtype=torch.float32)
    opt = torch.optim.SGD([dummy], lr=0.0, foreach=False)
    scaler = torch.amp.GradScaler("cpu", **gs_args)
    scales = []
    for k in range(STEPS):
        scaler.scale(torch.ones((), dtype=torch.float32))  # lazy init, as scale(loss) does
        scales.append(scaler.get_scale())
        dummy.grad = torch.full((1,), float("inf") if k in bad_steps else 1.0)
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
    return scales


def case_grads(case, grads):
    """The F32 gradient file of a case (scaled, with injections, for the scaler case)."""
    if "grad_scaler" not in case:
        return grads
    scales = scale_sequence(case["grad_scaler"], {i["step"] for i in case["inject"]})
    out = {n: torch.stack([grads[n][k] * scales[k] for k in range(STEPS)]) for n in NAMES}
    for i in case["inject"]:
        out[i["name"]][i["step"]].view(-1)[i["index"]] = float(i["value"])
    return out


class Run:
    """A model, its optimizer and (for the scaler case) its GradScaler, stepped as the case's
    training loop does."""

    def __init__(self, case, params, dtype, optimizer=None):
        self.case, self.dtype = case, dtype
        self.model = Model(params, dtype)
        self.opt = build_optimizer(optimizer or case["optimizer"], self.model.ordered())
        self.scaler = (torch.amp.GradScaler("cpu", **case["grad_scaler"])
                       if "grad_scaler" in case else None)
        self.found_inf = []
        self.scales = []

    def step(self, grads, k):
        """Step with grads[name][k] (cast to the run's dtype)."""
        tensors = self.model.ordered()
        for n, p in zip(NAMES, tensors):
            p.grad = grads[n][k].to(self.dtype).clone()
        if self.scaler is not None:
            self.scaler.scale(torch.ones((), dtype=torch.float32))  # lazy init
            self.scales.append(self.scaler.get_scale())
            self.scaler.unscale_(self.opt)
        if "clip_grad_norm" in self.case:
            torch.nn.utils.clip_grad_norm_(tensors, self.case["clip_grad_norm"], foreach=False)
        if self.scaler is not None:
            states = self.scaler._per_optimizer_states[id(self.opt)]["found_inf_per_device"]
            self.found_inf.append(int(sum(v.item() for v in states.values()) > 0))
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()

    def result(self):
        """Final params and state in the format of replay's output (a package's per-group
        step, lr_max and weight_sum as every tensor's, as gen_optim.py's run_case writes them)."""
        kind = self.case["optimizer"]["type"]
        out = state_tensors(NAMES, self.model.ordered(), self.opt, self.dtype,
                            DIAGNOSTIC_STATES.get(kind, ()))
        if kind in GROUP_STEP:
            group = self.opt.param_groups[0]
            scalars = {"step": float(group.get(GROUP_STEP[kind], 0))}
            if kind == "AdamWScheduleFree":
                hi = float(torch.tensor(group["weight_sum"], dtype=torch.float32))
                scalars.update(lr_max=group["lr_max"], weight_sum=hi,
                               weight_sum_lo=group["weight_sum"] - hi)
            for n in NAMES:
                for key, value in scalars.items():
                    out[f"{n}.{key}"] = torch.tensor(value, dtype=torch.float32)
        if self.scaler is not None:
            out["grad_scaler.scale"] = (
                self.scaler._scale.detach().clone().reshape(1).to(torch.float32))
            out["grad_scaler.growth_tracker"] = (
                self.scaler._growth_tracker.detach().clone().reshape(1).to(torch.int32))
        return out


def canonicalize(path):
    """Rewrites a safetensors header with its metadata keys sorted (safetensors writes them in
    hash order), so that the file is the same on every run."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:
        raise RuntimeError(f"{path}: canonical header longer than the original")
    text += b" " * (n - len(text))
    with open(path, "wb") as f:
        f.write(data[:8] + text + data[8 + n:])


def replay(case, params_file, grads_file, out, resume=None, save_checkpoint=None,
           optimizer=None):
    cmd = [BINARY, "replay", "--optimizer", json.dumps(optimizer or case["optimizer"]),
           "--params", params_file, "--grads", grads_file, "--out", out]
    if "clip_grad_norm" in case:
        cmd += ["--clip-grad-norm", str(case["clip_grad_norm"])]
    if "grad_scaler" in case:
        cmd += ["--grad-scaler", json.dumps(case["grad_scaler"])]
    if resume is not None:
        cmd += ["--resume", resume]
    if save_checkpoint is not None:
        cmd += ["--save-checkpoint", save_checkpoint]
    env = dict(os.environ)
    env.setdefault("XDG_RUNTIME_DIR", "/tmp")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{case['name']}: replay failed ({proc.returncode}):\n  "
                           + " ".join(cmd) + "\n" + proc.stdout + proc.stderr)


def worst_ratio(what, ours, t32, t64):
    """Checks ours against the float32 run t32, bounded by the float64 run t64. Returns
    (worst ratio, where)."""
    if set(ours) != set(t32):
        raise RuntimeError(f"{what}: tensors {sorted(ours)} != expected {sorted(t32)}")
    worst, where = 0.0, None
    for key, ref in t32.items():
        got = ours[key]
        if got.numel() == 1 and ref.numel() == 1:
            # A scalar state: 0-d in replay's output, (1,) in the package (Lamb's
            # exp_grad_adanorm).
            got = got.reshape(ref.shape)
        if tuple(got.shape) != tuple(ref.shape):
            raise RuntimeError(f"{what}: {key} has shape {tuple(got.shape)}, "
                               f"expected {tuple(ref.shape)}")
        if key.endswith(".step") or key.startswith("grad_scaler."):
            if not torch.equal(got.double(), ref.double()):
                raise RuntimeError(f"{what}: {key} is {got.tolist()}, expected {ref.tolist()}")
            continue
        g, r, r64 = got.double(), ref.double(), t64[key].double()
        bound = 4 * (r - r64).abs() + 1e-6 * (1 + r64.abs())
        ratio = (g - r).abs() / bound
        i = int(ratio.argmax())
        if ratio.view(-1)[i].item() > worst or where is None:
            worst = ratio.view(-1)[i].item()
            where = (f"{key}[{i}]: ours {g.view(-1)[i].item():.9g} torch32 "
                     f"{r.view(-1)[i].item():.9g} torch64 {r64.view(-1)[i].item():.9g}")
    if not worst <= 1.0:
        raise RuntimeError(f"{what}: beyond float32 accuracy (ratio {worst:.3g}) at {where}")
    return worst, where


def other_lr(case):
    """The case's optimizer with another lr, which loading a checkpoint must replace."""
    return {**case["optimizer"], "lr": case["optimizer"]["lr"] * 3}


def reverse_spec(case):
    """The optimizer PyTorch resumes with: another lr; a package optimizer with the package's
    defaults for everything else, so that from_wgpu_optim must set its groups' hyperparameters,
    those it keeps on the object (ATTRIBUTES) and Lamb's defaults that pre_norm reads."""
    kind = case["optimizer"]["type"]
    if kind in PACKAGE_CLASSES:
        return {"type": kind, "lr": case["optimizer"]["lr"] * 3}
    return other_lr(case)


def check_checkpoint_like_torch(name, ours_path, torch_path):
    """replay's checkpoint against PyTorch's, as tests/golden.rs compares them: the same
    tensors, dtypes and shapes, values within 1e-6 (1 + |torch|) (for a class without step
    state only whether each step is 0), the same format, version, optimizer, grad_scaler and
    param_groups (tensor names sorted). Returns the worst |ours - torch| / (1 + |torch|)."""
    ours, ours_meta = read_checkpoint(ours_path)
    theirs, their_meta = read_checkpoint(torch_path)
    layout = {k: (t.dtype, tuple(t.shape)) for k, t in theirs.items()}
    if {k: (t.dtype, tuple(t.shape)) for k, t in ours.items()} != layout:
        raise RuntimeError(f"{name}: replay's checkpoint layout differs from PyTorch's")
    for key in ("format", "version", "optimizer"):
        if ours_meta.get(key) != their_meta.get(key):
            raise RuntimeError(f"{name}: metadata {key} {ours_meta.get(key)!r} != "
                               f"{their_meta.get(key)!r}")

    def loads(meta, key):
        return json.loads(meta[key]) if key in meta else None

    if loads(ours_meta, "grad_scaler") != loads(their_meta, "grad_scaler"):
        raise RuntimeError(f"{name}: grad_scaler metadata differs")
    groups = []
    for meta in (ours_meta, their_meta):
        g = json.loads(meta["param_groups"])
        for group in g:
            group["params"] = sorted(group["params"])
        groups.append(g)
    if groups[0] != groups[1]:
        raise RuntimeError(f"{name}: param_groups {groups[0]} != PyTorch's {groups[1]}")
    worst = 0.0
    sgd = ours_meta["optimizer"] in NO_STEP
    for key, t in theirs.items():
        a, b = ours[key].double(), t.double()
        if key.endswith(".step") and sgd:
            if bool(a > 0) != bool(b > 0):
                raise RuntimeError(f"{name}: {key} is {a.item()}, PyTorch's {b.item()}")
            continue
        err = ((a - b).abs() / (1 + b.abs())).max().item() if a.numel() else 0.0
        if not err <= 1e-6:
            raise RuntimeError(f"{name}: replay's checkpoint {key} differs from PyTorch's by "
                               f"{err:.3g} (1 + |x|) > 1e-6")
        worst = max(worst, err)
    return worst


def checkpoint_as_result(path, sgd):
    """A checkpoint in the format of a result: step as 0-d F32 (none for SGD and Muon, `sgd`,
    whose step count only says whether the momentum buffer is set), the grad scaler's scale
    and tracker."""
    tensors, metadata = read_checkpoint(path)
    out = {}
    for key, t in tensors.items():
        if key.endswith(".step"):
            if sgd and t.item() <= 0:
                raise RuntimeError(f"{path}: {key} is {t.item()} after {SPLIT} steps")
            if not sgd:
                out[key] = t.to(torch.float32)
        else:
            out[key] = t
    if "grad_scaler" in metadata:
        gs = json.loads(metadata["grad_scaler"])
        out["grad_scaler.scale"] = torch.tensor([gs["scale"]], dtype=torch.float32)
        out["grad_scaler.growth_tracker"] = torch.tensor([gs["_growth_tracker"]], dtype=torch.int32)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", help="comma-separated case names: regenerate only these "
                        "cases' files (cases.json is written whole, the others' files kept)")
    args = parser.parse_args(argv)
    only = None
    if args.cases is not None:
        only = {c for c in args.cases.split(",") if c}
        unknown = sorted(only - {c["name"] for c in CASES})
        if unknown:
            print(f"error: unknown case(s) {', '.join(unknown)}", file=sys.stderr)
            return 1
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT_DIR, exist_ok=True)
    if not os.access(BINARY, os.X_OK):
        print(f"error: {BINARY} not found; run `cargo build` or set WGPU_OPTIM_BIN",
              file=sys.stderr)
        return 1

    cases_json = [{k: v for k, v in case.items()} for case in CASES]
    doc = json.loads(json.dumps({"steps": STEPS, "split": SPLIT, "names": NAMES,
                                 "cases": cases_json}))
    with open(os.path.join(OUT_DIR, "cases.json"), "w", newline="\n") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    expected = {"cases.json"}
    if only is not None:  # keep the files of the cases not regenerated
        expected |= {f"{c['name']}.{suffix}.safetensors" for c in CASES
                     for suffix in ("params", "head", "tail", "torch10", "torch20", "f64",
                                    "torch_resumed")}

    print(f"torch {torch.__version__}; {len(doc['cases'])} cases, {STEPS} steps, "
          f"checkpoint after {SPLIT}; worst |x - torch32| / (4|torch32 - torch64| + 1e-6(1+|torch64|))")
    print(f"{'case':32s} {'max|f32-f64|':>12s} {'fwd resume':>10s} {'ours@10':>10s} "
          f"{'rev resume':>10s} {'ckpt/(1+|x|)':>12s}")
    details = []
    with tempfile.TemporaryDirectory(prefix="gen_checkpoint.") as tmp:
        for index, case in enumerate(doc["cases"]):
            name = case["name"]
            if only is not None and name not in only:
                continue
            sgd = case["optimizer"]["type"] in NO_STEP
            params, base = make_problem(index, case_shapes(case))
            grads = case_grads(case, base)
            files = {}

            def path(suffix):
                fname = f"{name}.{suffix}.safetensors"
                expected.add(fname)
                files[suffix] = os.path.join(OUT_DIR, fname)
                return files[suffix]

            save_file({n: params[n].contiguous() for n in NAMES}, path("params"))
            save_file({n: grads[n][:SPLIT].contiguous() for n in NAMES}, path("head"))
            save_file({n: grads[n][SPLIT:].contiguous() for n in NAMES}, path("tail"))

            # The uninterrupted runs, with a checkpoint (f32) and a snapshot (both) after SPLIT.
            r32, r64 = Run(case, params, torch.float32), Run(case, params, torch.float64)
            for k in range(SPLIT):
                r32.step(grads, k)
                r64.step(grads, k)
            to_wgpu_optim(r32.opt, r32.model.named_parameters(), path("torch10"),
                          grad_scaler=r32.scaler)
            canonicalize(files["torch10"])
            mid32, mid64 = r32.result(), r64.result()
            for k in range(SPLIT, STEPS):
                r32.step(grads, k)
                r64.step(grads, k)
            if r32.found_inf != r64.found_inf or r32.scales != r64.scales:
                raise RuntimeError(f"{name}: f32 and f64 runs skip different steps / scales")
            if "inject" in case:
                skipped = [k for k, f in enumerate(r32.found_inf) if f]
                if skipped != sorted(i["step"] for i in case["inject"]):
                    raise RuntimeError(f"{name}: skipped steps {skipped}")
            t32, t64 = r32.result(), r64.result()
            save_file(t32, path("torch20"))
            save_file(t64, path("f64"))
            torch_err = max((t32[n].double() - t64[n]).abs().max().item() for n in NAMES)

            # (a) forward: wgpu-optim resumes from PyTorch's checkpoint.
            out_a = os.path.join(tmp, f"{name}.fwd.safetensors")
            replay(case, files["params"], files["tail"], out_a, resume=files["torch10"])
            fwd = worst_ratio(f"{name} forward (replay --resume torch10)", load_file(out_a),
                              t32, t64)
            # The checkpoint's hyperparameters replace --optimizer's: another lr changes nothing.
            out_lr = os.path.join(tmp, f"{name}.fwd_lr.safetensors")
            replay(case, files["params"], files["tail"], out_lr, resume=files["torch10"],
                   optimizer=other_lr(case))
            for key, t in load_file(out_lr).items():
                if not torch.equal(t, load_file(out_a)[key]):
                    raise RuntimeError(f"{name}: replay --resume with another --optimizer lr "
                                       f"differs at {key}: the checkpoint's lr was not used")

            # (b) reverse: PyTorch resumes from wgpu-optim's checkpoint.
            ours10 = os.path.join(tmp, f"{name}.ours10.safetensors")
            out_b = os.path.join(tmp, f"{name}.head.safetensors")
            replay(case, files["params"], files["head"], out_b, save_checkpoint=ours10)
            ckpt = checkpoint_as_result(ours10, sgd)
            at10 = worst_ratio(f"{name} wgpu-optim checkpoint after {SPLIT} steps",
                               ckpt, mid32, mid64)
            # The replay output after 10 steps holds the same values as its checkpoint.
            head_out = load_file(out_b)
            for key, t in head_out.items():
                if not torch.equal(t, ckpt[key]):
                    raise RuntimeError(f"{name}: replay --out and --save-checkpoint differ at {key}")
            like_torch = check_checkpoint_like_torch(name, ours10, files["torch10"])
            fresh = {n: torch.zeros(shape) for n, shape in case_shapes(case)}  # overwritten
            # lr (and a package's attributes) from the file
            rr = Run(case, fresh, torch.float32, optimizer=reverse_spec(case))
            from_wgpu_optim(ours10, rr.opt, rr.model.named_parameters(), grad_scaler=rr.scaler)
            for k in range(SPLIT, STEPS):
                rr.step(grads, k)
            if "inject" in case:
                if rr.found_inf != r32.found_inf[SPLIT:] or rr.scales != r32.scales[SPLIT:]:
                    raise RuntimeError(f"{name}: the resumed run skips steps "
                                       f"{rr.found_inf} / scales {rr.scales}, expected "
                                       f"{r32.found_inf[SPLIT:]} / {r32.scales[SPLIT:]}")
            resumed = rr.result()
            save_file(resumed, path("torch_resumed"))
            rev = worst_ratio(f"{name} reverse (torch from_wgpu_optim of replay's checkpoint)",
                              resumed, t32, t64)

            print(f"{name:32s} {torch_err:12.3e} {fwd[0]:10.3f} {at10[0]:10.3f} {rev[0]:10.3f} "
                  f"{like_torch:12.3e}")
            details.append(f"  {name}: forward worst at {fwd[1]}\n"
                           f"  {name}: ours@10 worst at {at10[1]}\n"
                           f"  {name}: reverse worst at {rev[1]}")
            if "grad_scaler" in case:
                details.append(f"  {name}: skipped steps "
                               f"{[k for k, f in enumerate(r32.found_inf) if f]}, scales {r32.scales},"
                               f" final scale {t32['grad_scaler.scale'].item()!r} growth_tracker "
                               f"{t32['grad_scaler.growth_tracker'].item()}")
    print("\n".join(details))
    return finish_output_dir(OUT_DIR, expected)


if __name__ == "__main__":
    sys.exit(main())
