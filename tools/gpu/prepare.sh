#!/usr/bin/env bash
# Prepares the bandwidth run on a lent GPU machine (see tools/gpu/run.sh), here, in the repo root.
# That machine has no Rust toolchain and may lack the Vulkan loader, so this builds the CLI and
# the criterion bench binary into .gpu-bin/ and downloads the loader packages into .gl/; both
# folders are git-ignored through .git/info/exclude and travel with the `carry` argument:
#   run(command="bash tools/gpu/run.sh", carry=[".gl", ".gpu-bin"])
set -euo pipefail
cd "$(dirname "$0")/../.."
for d in /.gl/ /.gpu-bin/; do
    grep -qxF "$d" .git/info/exclude || echo "$d" >>.git/info/exclude
done
cargo build --release --bin wgpu-optim
bench=$(cargo bench --bench optim --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "optim" and m.get("executable"):
        print(m["executable"])')
mkdir -p .gpu-bin
cp target/release/wgpu-optim .gpu-bin/wgpu-optim
cp "$bench" .gpu-bin/optim-bench
if ! ls .gl/*.deb >/dev/null 2>&1; then
    mkdir -p .gl /tmp/amd64/partial
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    # shellcheck disable=SC2086
    apt-get $o update >/dev/null
    # shellcheck disable=SC2086
    (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
du -sh .gpu-bin .gl
