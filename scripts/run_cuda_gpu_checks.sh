#!/usr/bin/env bash
# Everything the cuda backend still needs from a CUDA GPU (H100/H200), in order; stops at the first failure.
#   1. build the kernels (just in time, cached) and print the plan for typical sizes
#   2. compute-sanitizer: memcheck, racecheck, synccheck, initcheck on small shapes (both algorithms)
#   3. the GPU tests (tests/test_cuda_backend.py), then the whole suite
#   4. the benchmark grid against torch.nn (cuDNN), JSON into $OUT_DIR
#
# Usage: scripts/run_cuda_gpu_checks.sh [OUT_DIR]      (PYTHON picks the interpreter; QUICK=1 a small grid)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-$ROOT/cuda-gpu-results}"
PYTHON="${PYTHON:-python}"
SANITIZER="${SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}"
mkdir -p "$OUT_DIR"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

echo "== 1. device, build, plans"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT_DIR/device.txt"
"$PYTHON" - <<'PY' | tee "$OUT_DIR/plans.txt"
import torch
from rnnfast import _cuda_ext
from rnnfast.ops.recurrence import cuda
ok, why = _cuda_ext.status()
print("status:", ok, why)
assert ok, why
for cell in ("rnn_tanh", "gru", "lstm"):
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for H in (256, 768, 1024, 2048):
            for bwd in (False, True):
                print(cell, dtype, "H", H, "backward" if bwd else "forward", cuda.algorithm(cell, dtype, 64, H, bwd, torch.device("cuda"))[1])
PY

echo "== 2. compute-sanitizer"
for tool in memcheck racecheck synccheck initcheck; do
  echo "-- $tool"
  # No caching allocator: every tensor is its own allocation, so out-of-bounds accesses are caught. No NaN
  # poisoning for initcheck: it must see reads of memory nothing wrote.
  poison=1
  [[ "$tool" == initcheck ]] && poison=0
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 RNNFAST_DEBUG_POISON=$poison \
    "$SANITIZER" --tool "$tool" --error-exitcode 1 "$PYTHON" scripts/cuda_sanitize_driver.py \
    2>&1 | tee "$OUT_DIR/sanitizer-$tool.txt" | tail -5
done

echo "== 3. tests"
timeout 3000 "$PYTHON" -m pytest -q -ra tests/test_cuda_backend.py 2>&1 | tee "$OUT_DIR/test_cuda_backend.txt" | tail -30
timeout 3000 "$PYTHON" -m pytest -q -ra tests 2>&1 | tee "$OUT_DIR/tests_all.txt" | tail -30

echo "== 4. benchmark grid"
"$PYTHON" scripts/bench_cuda_recurrence.py ${QUICK:+--quick} --out "$OUT_DIR/bench_cuda_recurrence.json" \
  | tee "$OUT_DIR/bench_cuda_recurrence.txt"
echo "results in $OUT_DIR"
