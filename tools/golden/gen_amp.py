#!/usr/bin/env python3
"""Generate golden trajectories of the PyTorch training-loop recipe with gradient
clipping and AMP gradient scaling, for the wgpu-optim kernels.

Run from the repository root:

    python3 tools/golden/gen_amp.py

Each case runs the real ``torch.optim`` class (single-tensor CPU path,
foreach=False) for STEPS iterations of

    scaler = torch.amp.GradScaler("cpu", **grad_scaler)    # scaler cases only
    for k in range(STEPS):
        p.grad = <gradient file>[k]                        # for each param
        if scaler: scaler.unscale_(opt)
        if clip_grad_norm: torch.nn.utils.clip_grad_norm_(params, max_norm,
                                  norm_type=norm_type, foreach=False)
        if clip_grad_value: torch.nn.utils.clip_grad_value_(params, v, foreach=False)
        if scaler: scaler.step(opt); scaler.update()
        else: opt.step()
        if schedule and k + 1 < STEPS: scheduler.step()    # every iteration, skipped or not

and writes, under ``tests/golden/amp/``:

* ``params.safetensors``        - initial parameters (F32): "w" [7,5], "b" [13], "v" [100].
* ``<case>.grads.safetensors``  - the gradients the loop assigns (F32), one tensor
                                  per name with shape [STEPS, *param_shape].
    - Plain cases: the seeded base gradients randn * 0.5; clip-norm cases also
      multiply step k by a seeded per-step factor in [2^-1.5, 2^1.5], so the
      total norm varies and max_norm clips on some steps and not on others.
    - Scaler cases: the *scaled* gradients the engine's backward would produce:
      ``f32(g_k * scale_k)`` where g_k is the unscaled gradient above and scale_k
      the scaler's scale before step k (float32); then single elements are set to
      +inf / NaN / -inf at the steps listed in the case's "inject" (those steps
      are skipped and the scale backs off).  The scale sequence depends only on
      which steps have non-finite values, so it is the same for both runs.
* ``cases.json``                - {"steps", "names", "cases": [{"name", "optimizer",
    ["schedule"], ["clip_grad_norm", "norm_type"], ["clip_grad_value"],
    ["grad_scaler", "inject"], "trace"}]}.  "optimizer" and "schedule" use the
    format of tests/golden/optim/cases.json.  "norm_type" is 2.0 or "inf".
    "grad_scaler" holds torch.amp.GradScaler arguments (device "cpu" implied).
    "inject" lists {"step", "name", "index" (flat), "value": "inf"|"-inf"|"nan"}.
    "trace" holds, from the float32 run: "found_inf" (0/1 per step) and "scale"
    (scale used at each step) for scaler cases, and "total_norm" (the float32
    value clip_grad_norm_ returned at each step; "nan"/"inf" when non-finite)
    for clip-norm cases.
* ``<case>.f32.safetensors``    - final params by name, every optimizer state tensor
                                  as ``<name>.<state>`` exactly as opt.state names
                                  it (None skipped, ``step`` as 0-d F32), and for
                                  scaler cases ``grad_scaler.scale`` (F32 [1]) and
                                  ``grad_scaler.growth_tracker`` (I32 [1]).
* ``<case>.f64.safetensors``    - the same loop in float64: params upcast, the
                                  float32 file gradients upcast (exact).  The
                                  scaler's scale stays float32 (torch keeps it so).

The script checks that the float32 and float64 runs skip the same steps with the
same scales, that a skipped step leaves params and optimizer state untouched, and
that every clip-norm case clips on some steps and not on others.  It prints, per
case, PyTorch's own float32 error (max |f32 - f64| over the final params), the
clip counts, the skipped steps and the scale sequence.  For the case
scaler_sgd_nesterov_skip_first it also runs SGD with fused=True (not stored) and
prints how far it diverges.  Rerunning is deterministic; stale files are removed.
"""

import copy
import json
import math
import os
import sys
import warnings

import torch
from safetensors.torch import save_file

from gen_optim import build_optimizer, build_scheduler, finish_output_dir, state_tensors

SEED = 20261124
STEPS = 40
GRAD_SCALE = 0.5
SHAPES = [("w", (7, 5)), ("b", (13,)), ("v", (100,))]
NAMES = [n for n, _ in SHAPES]

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT_DIR = os.path.join(REPO_ROOT, "tests", "golden", "amp")

# Non-finite injections: (step, name, flat index, value).  With growth_interval 3
# the scale grows after every 3 clean steps and backs off at each injected step;
# steps 9 and 10 back off twice in a row.
INJECT_A = [(4, "v", 17, "inf"), (9, "w", 3, "nan"), (10, "b", 0, "-inf"),
            (21, "v", 99, "nan"), (30, "w", 34, "inf")]
INJECT_B = [(2, "b", 12, "nan"), (7, "v", 0, "inf"), (8, "v", 50, "inf"),
            (19, "w", 0, "-inf"), (27, "b", 6, "nan"), (36, "v", 63, "inf")]
INJECT_FIRST = [(0, "v", 5, "inf"), (13, "w", 20, "nan"), (14, "b", 3, "-inf"),
                (26, "v", 42, "inf")]

GS_POW2 = {"init_scale": 1024.0, "growth_interval": 3}
# Non-power-of-two factors: the scale is inexact, so file gradients, inv_scale and
# the unscaled gradients all round (exercises the exact float32 scale arithmetic).
GS_ODD = {"init_scale": 1000.0, "growth_factor": 1.7, "backoff_factor": 0.3,
          "growth_interval": 3}

# "clip_grad_norm": "auto" picks max_norm between the smallest and largest per-step
# total norm (mid-gap near the median, to 3 significant digits).
CASES = [
    {"name": "clip_norm2_sgd", "optimizer": {"type": "SGD", "lr": 0.05, "momentum": 0.9},
     "clip_grad_norm": "auto", "norm_type": 2.0},
    {"name": "clip_norm2_adam", "optimizer": {"type": "Adam", "lr": 0.01},
     "clip_grad_norm": "auto", "norm_type": 2.0},
    {"name": "clip_norminf_adam", "optimizer": {"type": "Adam", "lr": 0.01, "amsgrad": True},
     "clip_grad_norm": "auto", "norm_type": "inf"},
    {"name": "clip_norminf_rmsprop", "optimizer": {"type": "RMSprop", "lr": 0.01, "momentum": 0.5},
     "clip_grad_norm": "auto", "norm_type": "inf"},
    {"name": "clip_value_adamw", "optimizer": {"type": "AdamW", "lr": 0.01},
     "clip_grad_value": 0.6},
    {"name": "clip_value_sgd", "optimizer": {"type": "SGD", "lr": 0.05, "weight_decay": 0.01},
     "clip_grad_value": 0.4},
    {"name": "scaler_adam", "optimizer": {"type": "Adam", "lr": 0.01},
     "grad_scaler": GS_POW2, "inject": INJECT_A},
    {"name": "scaler_sgd_momentum", "optimizer": {"type": "SGD", "lr": 0.05, "momentum": 0.9},
     "grad_scaler": GS_POW2, "inject": INJECT_B},
    {"name": "scaler_clip_norm2_adam", "optimizer": {"type": "Adam", "lr": 0.01, "weight_decay": 0.05},
     "clip_grad_norm": "auto", "norm_type": 2.0, "grad_scaler": GS_POW2, "inject": INJECT_A},
    {"name": "scaler_clip_norm2_adamw", "optimizer": {"type": "AdamW", "lr": 0.01, "amsgrad": True},
     "clip_grad_norm": "auto", "norm_type": 2.0, "grad_scaler": GS_ODD, "inject": INJECT_B},
    {"name": "scaler_clip_norminf_sgd_momentum",
     "optimizer": {"type": "SGD", "lr": 0.05, "momentum": 0.9, "dampening": 0.1},
     "clip_grad_norm": "auto", "norm_type": "inf", "grad_scaler": GS_POW2, "inject": INJECT_B},
    {"name": "scaler_clip_norm2_adamw_onecycle", "optimizer": {"type": "AdamW", "lr": 0.01},
     "schedule": {"type": "OneCycleLR", "max_lr": 0.02, "total_steps": STEPS},
     "clip_grad_norm": "auto", "norm_type": 2.0, "grad_scaler": GS_POW2, "inject": INJECT_A},
    {"name": "scaler_sgd_nesterov_skip_first",
     "optimizer": {"type": "SGD", "lr": 0.05, "momentum": 0.9, "nesterov": True},
     "grad_scaler": GS_POW2, "inject": INJECT_FIRST},
    {"name": "scaler_adagrad", "optimizer": {"type": "Adagrad", "lr": 0.1, "lr_decay": 0.01},
     "grad_scaler": GS_ODD, "inject": INJECT_A},
    {"name": "scaler_rmsprop_centered",
     "optimizer": {"type": "RMSprop", "lr": 0.01, "momentum": 0.9, "centered": True},
     "grad_scaler": {"init_scale": 65536.0, "growth_interval": 4}, "inject": INJECT_B},
]

FUSED_CHECK_CASE = "scaler_sgd_nesterov_skip_first"


def norm_type_value(nt):
    return math.inf if nt == "inf" else float(nt)


def make_problem():
    """Seeded initial params, base grads and per-step norm factors (float32, CPU)."""
    torch.manual_seed(SEED)
    params = {name: torch.randn(shape, dtype=torch.float32) for name, shape in SHAPES}
    base = {name: torch.randn((STEPS, *shape), dtype=torch.float32) * GRAD_SCALE
            for name, shape in SHAPES}
    factors = torch.exp2(torch.rand(STEPS, dtype=torch.float32) * 3.0 - 1.5)
    return params, base, factors


def scale_sequence(gs_args, inject):
    """Scale before each step and found_inf per step, from a real GradScaler whose
    optimizer sees a non-finite gradient exactly at the injected steps."""
    bad = {s for s, _, _, _ in inject}
    dummy = torch.zeros(1, dtype=torch.float32)
    opt = torch.optim.SGD([dummy], lr=0.0, foreach=False)
    scaler = torch.amp.GradScaler("cpu", **gs_args)
    scales, found = [], []
    for k in range(STEPS):
        scaler.scale(torch.ones((), dtype=torch.float32))  # lazy init, as scale(loss) does
        scales.append(scaler.get_scale())
        dummy.grad = torch.full((1,), math.inf if k in bad else 1.0, dtype=torch.float32)
        scaler.unscale_(opt)
        found.append(int(k in bad))
        scaler.step(opt)
        scaler.update()
    return scales, found


def case_grads(case, base, factors):
    """The F32 gradient file of a case: name -> [STEPS, *shape]."""
    unscaled = {}
    for n in NAMES:
        g = base[n].clone()
        if "clip_grad_norm" in case:
            g = g * factors.view(STEPS, *([1] * (g.dim() - 1)))
        unscaled[n] = g
    if "grad_scaler" not in case:
        return unscaled, unscaled, None
    scales, found = scale_sequence(case["grad_scaler"], case["inject"])
    out = {}
    for n in NAMES:
        out[n] = torch.stack([unscaled[n][k] * scales[k] for k in range(STEPS)])
    for step, name, index, value in case["inject"]:
        out[name][step].view(-1)[index] = float(value)
    return out, unscaled, (scales, found)


def total_norms(grads, nt, skip):
    """Per-step total norms of unscaled finite gradients (for choosing max_norm)."""
    res = []
    for k in range(STEPS):
        if k in skip:
            continue
        norms = [torch.linalg.vector_norm(grads[n][k], nt) for n in NAMES]
        res.append(torch.linalg.vector_norm(torch.stack(norms), nt).item())
    return res


def snapshot(tensors, opt):
    return ([t.detach().clone() for t in tensors],
            [{k: (v.clone() if torch.is_tensor(v) else copy.deepcopy(v))
              for k, v in opt.state[t].items()} if t in opt.state else None
             for t in tensors])


def same(a, b):
    return torch.equal(a, b) or (a.shape == b.shape and bool(
        ((a == b) | (a.isnan() & b.isnan())).all()))


def run_case(case, params, grads, dtype, fused=False, steps=STEPS):
    tensors = [params[n].detach().clone().to(dtype) for n in NAMES]
    step_grads = {n: grads[n].to(dtype) for n in NAMES}
    opt = build_optimizer(case["optimizer"], tensors, fused=fused)
    schedule = case.get("schedule")
    scheduler = build_scheduler(schedule, opt) if schedule is not None else None
    scaler = None
    if "grad_scaler" in case:
        scaler = torch.amp.GradScaler("cpu", **case["grad_scaler"])
    clip_norm = case.get("clip_grad_norm")
    nt = norm_type_value(case.get("norm_type", 2.0))
    clip_value = case.get("clip_grad_value")

    trace = {"found_inf": [], "scale": [], "total_norm": [], "clip_coef": [],
             "clamped": []}
    for k in range(steps):
        for n, p in zip(NAMES, tensors):
            p.grad = step_grads[n][k].clone()
        if scaler is not None:
            scaler.scale(torch.ones((), dtype=torch.float32))  # lazy init, as scale(loss) does
            trace["scale"].append(scaler.get_scale())
            before = snapshot(tensors, opt)
            scaler.unscale_(opt)
        if clip_norm is not None:
            tn = torch.nn.utils.clip_grad_norm_(tensors, clip_norm, norm_type=nt, foreach=False)
            trace["total_norm"].append(tn.item())
            trace["clip_coef"].append(min(clip_norm / (tn.item() + 1e-6), 1.0))
        if clip_value is not None:
            trace["clamped"].append(sum(int((p.grad.abs() > clip_value).sum()) for p in tensors))
            torch.nn.utils.clip_grad_value_(tensors, clip_value, foreach=False)
        if scaler is not None:
            found = int(sum(v.item() for v in
                            scaler._per_optimizer_states[id(opt)]["found_inf_per_device"].values()) > 0)
            trace["found_inf"].append(found)
            scaler.step(opt)
            scaler.update()
            if found and not fused:
                after = snapshot(tensors, opt)
                for t0, t1 in zip(before[0], after[0]):
                    if not torch.equal(t0, t1):
                        raise RuntimeError(f"{case['name']}: skipped step {k} changed params")
                for s0, s1 in zip(before[1], after[1]):
                    if (s0 is None) != (s1 is None) or (s0 is not None and (
                            s0.keys() != s1.keys() or not all(
                                same(s0[key], s1[key]) if torch.is_tensor(s0[key])
                                else s0[key] == s1[key] for key in s0))):
                        raise RuntimeError(f"{case['name']}: skipped step {k} changed state")
        else:
            opt.step()
        # OneCycleLR refuses to step past total_steps; the last step needs no next LR.
        if scheduler is not None and k + 1 < STEPS:
            scheduler.step()

    out = {}
    if steps < STEPS:
        for n, p in zip(NAMES, tensors):
            out[n] = p.detach().clone()
            for key, val in opt.state[p].items() if p in opt.state else ():
                out[f"{n}.{key}"] = val
        return out, trace
    out = state_tensors(NAMES, tensors, opt, dtype)
    if scaler is not None:
        out["grad_scaler.scale"] = scaler._scale.detach().clone().reshape(1).to(torch.float32)
        out["grad_scaler.growth_tracker"] = (
            scaler._growth_tracker.detach().clone().reshape(1).to(torch.int32))
        sd = scaler.state_dict()
        assert sd["scale"] == out["grad_scaler.scale"].item()
        assert sd["_growth_tracker"] == out["grad_scaler.growth_tracker"].item()
    return out, trace


def json_float(x):
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT_DIR, exist_ok=True)

    params, base, factors = make_problem()
    # No safetensors metadata: its header order is not stable across runs.
    save_file({n: params[n].contiguous() for n in NAMES},
              os.path.join(OUT_DIR, "params.safetensors"))
    expected = {"params.safetensors", "cases.json"}

    # Build every case's gradient file and resolve max_norm.
    names_seen = set()
    cases_json = []
    case_grad_files = {}
    for case in CASES:
        name = case["name"]
        if name in names_seen:
            raise ValueError(f"duplicate case name {name}")
        names_seen.add(name)
        grads, unscaled, seq = case_grads(case, base, factors)
        entry = {"name": name, "optimizer": case["optimizer"]}
        if "schedule" in case:
            entry["schedule"] = case["schedule"]
        if "clip_grad_norm" in case:
            skip = {s for s, _, _, _ in case.get("inject", [])}
            norms = sorted(total_norms(unscaled, norm_type_value(case["norm_type"]), skip))
            # Midpoint of the widest gap between consecutive norms in the middle half,
            # so that no step's total norm lies close to max_norm (an engine summing in
            # another order must make the same clip decisions).
            lo, hi = len(norms) // 4, (3 * len(norms)) // 4
            i = max(range(lo, hi), key=lambda j: norms[j + 1] - norms[j])
            max_norm = float(f"{(norms[i] + norms[i + 1]) / 2:.3g}")
            if not norms[0] < max_norm < norms[-1]:
                raise RuntimeError(f"{name}: max_norm {max_norm} outside ({norms[0]}, {norms[-1]})")
            entry["clip_grad_norm"] = max_norm
            entry["norm_type"] = case["norm_type"]
        if "clip_grad_value" in case:
            entry["clip_grad_value"] = case["clip_grad_value"]
        if "grad_scaler" in case:
            entry["grad_scaler"] = case["grad_scaler"]
            entry["inject"] = [{"step": s, "name": n, "index": i, "value": v}
                               for s, n, i, v in case["inject"]]
        cases_json.append(entry)
        fname = f"{name}.grads.safetensors"
        save_file({n: grads[n].contiguous() for n in NAMES}, os.path.join(OUT_DIR, fname))
        expected.add(fname)
        case_grad_files[name] = (grads, seq)

    # Run (from the JSON round trip of the case specs, as a reader would see them).
    doc = json.loads(json.dumps({"steps": STEPS, "names": NAMES, "cases": cases_json}))
    print(f"torch {torch.__version__}; {len(doc['cases'])} cases, {STEPS} steps")
    print(f"{'case':36s} {'max|f32-f64|':>12s}  per name ({', '.join(NAMES)})")
    notes = []
    for entry in doc["cases"]:
        name = entry["name"]
        grads, seq = case_grad_files[name]
        r32, t32 = run_case(entry, params, grads, torch.float32)
        r64, t64 = run_case(entry, params, grads, torch.float64)
        if set(r32) != set(r64):
            raise RuntimeError(f"{name}: state keys differ between f32 and f64 runs")
        trace = {}
        if "grad_scaler" in entry:
            if t32["found_inf"] != t64["found_inf"] or t32["scale"] != t64["scale"]:
                raise RuntimeError(f"{name}: f32 and f64 runs skip different steps / scales")
            if t32["scale"] != seq[0] or t32["found_inf"] != seq[1]:
                raise RuntimeError(f"{name}: scale sequence differs from the file's")
            trace["found_inf"] = t32["found_inf"]
            trace["scale"] = t32["scale"]
        if "clip_grad_norm" in entry:
            trace["total_norm"] = [json_float(x) for x in t32["total_norm"]]
        entry["trace"] = trace
        for suffix, res in (("f32", r32), ("f64", r64)):
            fname = f"{name}.{suffix}.safetensors"
            save_file(res, os.path.join(OUT_DIR, fname))
            expected.add(fname)
        per_name = [(r32[n].double() - r64[n]).abs().max().item() for n in NAMES]
        print(f"{name:36s} {max(per_name):12.3e}  "
              + " ".join(f"{e:.3e}" for e in per_name)
              + f"   state: {', '.join(sorted({k.split('.', 1)[1] for k in r32 if k.split('.')[0] in NAMES and '.' in k}))}")
        if "clip_grad_norm" in entry:
            finite = [c for c, tn in zip(t32["clip_coef"], t32["total_norm"]) if math.isfinite(tn)]
            clipped = sum(c < 1.0 for c in finite)
            clipped64 = sum(c < 1.0 for c, tn in zip(t64["clip_coef"], t64["total_norm"])
                            if math.isfinite(tn))
            if not 0 < clipped < len(finite):
                raise RuntimeError(f"{name}: clipping must trigger on some steps, not all")
            margin = min(abs(tn + 1e-6 - entry["clip_grad_norm"]) / entry["clip_grad_norm"]
                         for tn in t32["total_norm"] if math.isfinite(tn))
            if margin < 1e-3:
                raise RuntimeError(f"{name}: a total norm lies within {margin:.1e} of max_norm")
            nonfinite = [(k, json_float(tn)) for k, tn in enumerate(t32["total_norm"])
                         if not math.isfinite(tn)]
            print(f"    clip_grad_norm max_norm={entry['clip_grad_norm']} norm_type={entry['norm_type']}:"
                  f" clipped {clipped}/{len(finite)} finite steps (f64 run: {clipped64});"
                  f" total_norm range [{min(t for t in t32['total_norm'] if math.isfinite(t)):.4g},"
                  f" {max(t for t in t32['total_norm'] if math.isfinite(t)):.4g}],"
                  f" closest to max_norm at relative distance {margin:.1e}"
                  + (f"; non-finite total_norm at {nonfinite}" if nonfinite else ""))
        if "clip_grad_value" in entry:
            c = t32["clamped"]
            print(f"    clip_grad_value {entry['clip_grad_value']}: clamped elements per step"
                  f" min {min(c)} max {max(c)} total {sum(c)} of {STEPS * sum(p.numel() for p in params.values())}")
        if "grad_scaler" in entry:
            skipped = [k for k, f in enumerate(t32["found_inf"]) if f]
            changes = [(0, t32["scale"][0])] + [(k, s) for k, s in enumerate(t32["scale"])
                                                 if k and s != t32["scale"][k - 1]]
            print(f"    grad_scaler {entry['grad_scaler']}: skipped steps {skipped};"
                  f" final scale {r32['grad_scaler.scale'].item()!r},"
                  f" growth_tracker {r32['grad_scaler.growth_tracker'].item()}")
            print("    scale (step: value where it changes): "
                  + ", ".join(f"{k}: {s!r}" for k, s in changes))
        if name == FUSED_CHECK_CASE:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rf, _ = run_case(entry, params, grads, torch.float32, fused=True)
                r1, _ = run_case(entry, params, grads, torch.float32, fused=True, steps=1)
            # The single-tensor path creates no state on a skipped first step; the fused
            # path allocates momentum_buffer with torch.empty_like and then skips the kernel.
            notes.append(f"{name} with fused=True after the skipped step 0: state keys "
                         f"{sorted(k for k in r1 if '.' in k and k.split('.')[0] in NAMES)}, params "
                         f"{'unchanged' if all(torch.equal(r1[n], params[n]) for n in NAMES) else 'CHANGED'}"
                         " (single-tensor path: no state)")
            dp = max((rf[n] - r32[n]).abs().max().item() for n in NAMES)
            mb = max(rf[f"{n}.momentum_buffer"].abs().max().item() for n in NAMES)
            mb_ref = max(r32[f"{n}.momentum_buffer"].abs().max().item() for n in NAMES)
            notes.append(f"{name} with fused=True (CPU, not stored): max|param fused - single| = {dp:.3e},"
                         f" max|momentum_buffer| fused {mb:.3e} vs single-tensor {mb_ref:.3e}"
                         f" -> {'DIVERGES' if not (dp < 1e-3) else 'matches'}")

    with open(os.path.join(OUT_DIR, "cases.json"), "w", newline="\n") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    for note in notes:
        print(note)

    return finish_output_dir(OUT_DIR, expected)


if __name__ == "__main__":
    sys.exit(main())
