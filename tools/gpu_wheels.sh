#!/usr/bin/env bash
# Download, on a machine with network, the wheels the device image lacks for the peer
# comparisons: torchgfn and what it imports, for CPython 3.12 on x86-64 (all pure-Python wheels
# at these versions, 6 MB in all). They land in .whl/ (git-excluded here), which the device call
# carries and tools/gpu_session.sh installs. The device image has torch, numpy, einops,
# cloudpickle, packaging and torch_geometric already.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d .whl \
  torchgfn==2.4.1 tensordict==0.15.3 pyvers==0.2.3 dill==0.4.1 \
  linear-attention-transformer==0.19.1 axial-positional-embedding==0.3.12 linformer==0.2.3 \
  local-attention==1.11.2 product-key-memory==0.3.0 colt5-attention==0.11.2 \
  hyper-connections==0.4.11 torch-einops-utils==0.2.0
du -sh .whl
ls .whl
