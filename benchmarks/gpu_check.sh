#!/usr/bin/env bash
# One prepared GPU check for a lent device machine: the GPU tests (every CUDA path against
# the CPU), then the backprojector benchmark and the paper-sized case, each step under its
# own timeout; about 5 minutes on an H100, 9 at most. Run from anywhere:  bash benchmarks/gpu_check.sh
# Results (tables and JSON) go to $OUT (default ./gpu-results); paste them, with the
# machine line each prints, into docs/benchmarks.md.
#
# Needs torch with CUDA, timm, pluggy, safetensors, nibabel, rich and click importable
# (the device has no network: nothing is installed here). Triton (shipped with CUDA
# torch) enables the fused backprojector; without it the torch path is measured. Step 1
# needs pytest (and collects every test module: one that cannot be imported there is
# reported and the others still run).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
status=0

step() {  # step NAME SECONDS CMD...: run with a timeout, keep going on failure
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s) ==="
    local t0=$SECONDS
    timeout --signal=INT "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s ==="
    [ "$rc" -eq 0 ] || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY - <<'EOF' || { echo "missing dependencies: see the header of this script"; exit 2; }
import torch, timm, pluggy, safetensors, nibabel, rich, click  # noqa: F401
assert torch.cuda.is_available(), "torch sees no CUDA device"
from tomofield.pipeline.kernels import triton_bp
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "|", torch.cuda.get_device_name(),
      "| triton backprojector:", triton_bp.available())
EOF

# 1. the tests marked gpu (tests/numeric/test_gpu_paths.py and any other): each CUDA path
#    against the CPU at a realistic size, the Triton kernel's 64-bit offsets past 2^31
#    elements (skipped, with the reason, where the GPU has too little free memory)
step gpu_tests 240 $PY -m pytest -q -rs -p no:cacheprovider --continue-on-collection-errors -m gpu \
    --junitxml "$OUT/gpu_tests.xml" tests

# 2. the backprojector alone on the paper grid: 64 x 512 x 512 voxels, L = 2000, M = 100
step backprojector 60 $PY -m benchmarks backprojector --case paper --min-seconds 1 --json "$OUT/backprojector.json"

# 3. paper-sized reconstruction side by side with the naive reference (fp32), on the
#    first 200 of the lattice's directions (same directions and seeds for both); fp16
#    (the CUDA default), bf16 and fp32 encoders, so that the correlations confirm the default
step pipeline_L200 130 $PY -m benchmarks pipeline --case paper --directions 200 --configs fp16,bf16,fp32 \
    --json "$OUT/pipeline_L200.json"

# 4. the fast path on the whole paper case (L = 2000, 204,000 slices of 224 x 224): time per volume
step pipeline_L2000 90 $PY -m benchmarks pipeline --case paper --skip-naive --configs fp16 \
    --json "$OUT/pipeline_L2000.json"

echo "results in $OUT"
exit $status
