#!/usr/bin/env bash
# The bandwidth run on a lent GPU machine, after tools/gpu/prepare.sh here: every kernel in
# both access modes against a copy of the same bytes (`wgpu-optim bench`, Vulkan), the
# criterion benches (many tensors, host overhead), and torch.optim.Adam(fused=True) on the same
# GPU (tools/gpu/torch_adam.py). Logs go to $OUT (or ./gpu-out when OUT is unset).
# SIZES (default "16777216 67108864") and BENCH_MAX_LOG2 (default 26) adjust the run.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-gpu-out}
mkdir -p "$out"
if ls .gl/*.deb >/dev/null 2>&1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
nvidia=/usr/local/nvidia/share
if [ -f "$nvidia/vulkan/icd.d/nvidia_icd.json" ]; then
    export VK_DRIVER_FILES=$nvidia/vulkan/icd.d/nvidia_icd.json
    export __EGL_VENDOR_LIBRARY_FILENAMES=$nvidia/glvnd/egl_vendor.d/10_nvidia.json
fi
bin=.gpu-bin
{
    nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv 2>&1
    "$bin/wgpu-optim" info --backend vulkan
    for size in ${SIZES:-16777216 67108864}; do
        for access in vec4 scalar; do
            "$bin/wgpu-optim" bench --backend vulkan --access "$access" --size "$size" --iterations 50
        done
    done
} 2>&1 | tee "$out/bench.txt"
PYTHONUNBUFFERED=1 python3 tools/gpu/torch_adam.py --size ${SIZES:-16777216 67108864} 2>&1 |
    tee "$out/torch.txt"
WGPU_BACKEND=vulkan WGPU_OPTIM_BENCH_MAX_LOG2=${BENCH_MAX_LOG2:-26} \
    "$bin/optim-bench" --bench --warm-up-time 1 --measurement-time 2 2>&1 |
    grep -vE '^(Benchmarking|Found|  [0-9]+ \(|.*outlier)' | tee "$out/criterion.txt" | tail -40
