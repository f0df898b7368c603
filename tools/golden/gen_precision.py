#!/usr/bin/env python3
"""Golden trajectories of PyTorch's fused optimizers on 16-bit parameters.

Run from the repository root:

    python3 tools/golden/gen_precision.py

For bf16 and f16 it runs ``torch.optim.Adam``, ``AdamW``, ``SGD`` and ``Adagrad`` with
``fused=True`` on CPU (torch 2.15): parameters, gradients and state in the 16-bit type, the
math in float32, each store rounded to nearest even. It writes, under
``tests/golden/precision/``:

* ``params.<dtype>.safetensors`` - initial parameters ("w" [7,5], "b" [13], "v" [301]) in
  the type (odd lengths, so that tensors end inside 32-bit words).
* ``grads.<dtype>.safetensors``  - per-step gradients in the type, shape [STEPS, *shape].
* ``cases.json``                 - {"steps": STEPS, "split": SPLIT, "cases": [{"name", "dtype",
  "optimizer": {"type", "lr", <torch argument names>}}]}.
* ``<case>.torch.safetensors``   - final parameters and state (``<name>.<state>``) from the
  fused run, in the type; ``<name>.step`` as 0-d F32.
* ``<case>.f64.safetensors``     - the same steps in float64 from the same (widened) start and
  gradients, without rounding: the truth both are measured against.
* ``<case>.torch<SPLIT>.safetensors`` - the wgpu-optim checkpoint that
  tools/torch_checkpoint.py's ``to_wgpu_optim`` writes after the fused run's first SPLIT
  steps: parameters and state in the 16-bit type, as PyTorch keeps them (metadata keys
  sorted, so the file is byte-stable). The script checks that PyTorch, loading it back with
  ``from_wgpu_optim`` into a fresh fused optimizer, ends the remaining steps bit for bit
  where the uninterrupted run does. tests/golden.rs resumes wgpu-optim from it.
* ``<case>.torch<SPLIT>.f32state.safetensors`` - the same checkpoint written with
  ``state_dtype="f32"``, for a wgpu-optim optimizer with f32 state: its state in float32
  (the 16-bit values, widened exactly), its parameters in the type. PyTorch resumes from it
  bit for bit too (``load_state_dict`` casts the state back to the parameter's type).

The non-fused PyTorch path computes op by op in the parameter's type; it is not the
reference here. The Rust test (tests/golden.rs) replays each case on the GPU and holds it to
PyTorch's fused result and to the float64 truth.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

from gen_checkpoint import canonicalize
from gen_optim import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
from torch_checkpoint import from_wgpu_optim, to_wgpu_optim  # noqa: E402

STEPS = 10
# The step after which the fused run is saved as a wgpu-optim checkpoint.
SPLIT = 5
OUT = os.path.join("tests", "golden", "precision")
SHAPES = {"w": (7, 5), "b": (13,), "v": (301,)}
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}
CASES = [
    {"type": "Adam", "lr": 0.01, "weight_decay": 0.01},
    {"type": "Adam", "lr": 0.003, "amsgrad": True},
    {"type": "AdamW", "lr": 0.01, "weight_decay": 0.1},
    {"type": "SGD", "lr": 0.05, "momentum": 0.9, "nesterov": True},
    {"type": "SGD", "lr": 0.1, "weight_decay": 0.01},
    {"type": "Adagrad", "lr": 0.05},
]


def case_name(dtype, opt):
    args = "_".join(
        f"{k}{'' if v is True else v}" for k, v in opt.items() if k not in ("type", "lr")
    )
    return f"{opt['type'].lower()}_{dtype}" + (f"_{args}" if args else "")


def f32_state(checkpoint):
    """The path of the f32-state version of `checkpoint`."""
    return checkpoint.replace(".safetensors", ".f32state.safetensors")


def run(opt, params, grads, fused, checkpoint=None, resume=None):
    """Steps 0..STEPS of `opt` from `params`; with `checkpoint`, saves a wgpu-optim checkpoint
    there after SPLIT steps; with `resume`, loads that checkpoint first and takes the steps
    after SPLIT only. Returns the final parameters and state."""
    kwargs = {k: v for k, v in opt.items() if k != "type"}
    if fused:
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = False
    ps = {n: torch.nn.Parameter(p.clone()) for n, p in params.items()}
    optimizer = getattr(torch.optim, opt["type"])(list(ps.values()), **kwargs)
    first = 0
    if resume is not None:
        from_wgpu_optim(resume, optimizer, ps.items())
        first = SPLIT
    for k in range(first, STEPS):
        if k == SPLIT and checkpoint is not None:
            for path, state_dtype in [(checkpoint, None), (f32_state(checkpoint), "f32")]:
                to_wgpu_optim(optimizer, ps.items(), path, state_dtype=state_dtype)
                canonicalize(path)
        for n, p in ps.items():
            p.grad = grads[n][k].clone()
        optimizer.step()
    out = {}
    for n, p in ps.items():
        out[n] = p.detach().clone()
        for s, v in optimizer.state[p].items():
            if s == "step":
                out[f"{n}.step"] = v.detach().to(torch.float32).reshape(())
            elif torch.is_tensor(v):
                out[f"{n}.{s}"] = v.detach().clone()
    return out


def main():
    assert torch.__version__.startswith("2.15"), torch.__version__
    os.makedirs(OUT, exist_ok=True)
    cases = []
    for dname, dtype in DTYPES.items():
        g = torch.Generator().manual_seed(12)
        params = {n: torch.randn(s, generator=g).to(dtype) for n, s in SHAPES.items()}
        grads = {n: torch.randn((STEPS,) + s, generator=g).to(dtype) for n, s in SHAPES.items()}
        save_file(params, os.path.join(OUT, f"params.{dname}.safetensors"))
        save_file(grads, os.path.join(OUT, f"grads.{dname}.safetensors"))
        for opt in CASES:
            name = case_name(dname, opt)
            checkpoint = os.path.join(OUT, f"{name}.torch{SPLIT}.safetensors")
            fused = run(opt, params, grads, fused=True, checkpoint=checkpoint)
            for key, value in fused.items():
                assert key.endswith(".step") or value.dtype == dtype, (name, key)
            saved = load_file(checkpoint)
            for key, value in saved.items():
                assert key.endswith(".step") or value.dtype == dtype, (name, key)
            widened = load_file(f32_state(checkpoint))
            assert widened.keys() == saved.keys(), name
            for key, value in saved.items():
                state = value.dtype == dtype and key not in params
                want = value.to(torch.float32) if state else value
                assert torch.equal(widened[key], want), (name, key)
            for resume in [checkpoint, f32_state(checkpoint)]:
                resumed = run(opt, params, grads, fused=True, resume=resume)
                for key, value in fused.items():
                    assert torch.equal(resumed[key], value), (name, resume, key)
            truth = run(
                opt,
                {n: p.to(torch.float64) for n, p in params.items()},
                {n: x.to(torch.float64) for n, x in grads.items()},
                fused=False,
            )
            save_file(fused, os.path.join(OUT, f"{name}.torch.safetensors"))
            save_file(truth, os.path.join(OUT, f"{name}.f64.safetensors"))
            err = max(
                (fused[n].to(torch.float64) - truth[n]).abs().max().item() for n in SHAPES
            )
            print(f"{name}: PyTorch's fused {dname} error against float64: {err:.3e}")
            cases.append({"name": name, "dtype": dname, "optimizer": opt})
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"steps": STEPS, "split": SPLIT, "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
