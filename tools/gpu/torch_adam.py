"""torch.optim.Adam(fused=True) bandwidth, the peer figure for `wgpu-optim bench`'s adam row.

Times one fused Adam step over a single float32 tensor of N elements, counting the 28 bytes per
parameter a fused Adam step must move (read param, grad, exp_avg, exp_avg_sq; write param,
exp_avg, exp_avg_sq), and a tensor copy moving the same bytes, on the same device in the same
run. Prints one line each, in the shape of `wgpu-optim bench`'s rows:

    torch-adam-fused  16777216  2801.3 GB/s  90.1% of copy

Usage: python3 tools/gpu/torch_adam.py [--size N ...] [--iterations I] [--device cuda|cpu]
"""

import argparse
import statistics
import time

import torch


def median_seconds(fn, iterations, device):
    """Median time of `fn()` over `iterations` calls after a warm-up, timed with CUDA events
    on a GPU and the wall clock on the CPU."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(iterations):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[1 << 22, 1 << 24, 1 << 26])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}")
    for n in args.size:
        param = torch.nn.Parameter(torch.randn(n, device=device))
        param.grad = torch.randn(n, device=device)
        opt = torch.optim.Adam([param], lr=1e-3, fused=True)
        step = median_seconds(opt.step, args.iterations, device)
        adam_bytes = 28 * n
        # A copy reads and writes its bytes: 14 B per element moves the same 28 B.
        src = torch.empty(adam_bytes // 2, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        copy = median_seconds(lambda: dst.copy_(src), args.iterations, device)
        adam_gbs = adam_bytes / step / 1e9
        copy_gbs = adam_bytes / copy / 1e9
        print(f"torch-adam-fused  {n}  {adam_gbs:.1f} GB/s  {100 * adam_gbs / copy_gbs:.1f}% of copy")
        print(f"torch-copy        {n}  {copy_gbs:.1f} GB/s")
        del param, opt, src, dst


if __name__ == "__main__":
    main()
