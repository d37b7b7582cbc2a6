#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one command from the repository root (about 10 minutes on an H100):
# install + build, the whole test suite on the GPU, compute-sanitizer on the CUDA kernels, the full benchmark
# grid, and the raw results written under benchmarks/results/ (and copied to $OUT when that is set).
#
#   bash benchmarks/gpu_run.sh            # everything
#   STEPS="tests bench" bash benchmarks/gpu_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-"build tests sanitizer bench"}
LOG_DIR=${OUT:-benchmarks/results}
mkdir -p "$LOG_DIR"
export PYTHONUNBUFFERED=1
status=0

step() { [[ " $STEPS " == *" $1 "* ]]; }
run() { echo "+ $*"; "$@" || { echo "FAILED ($?): $*"; status=1; }; }

if step build; then
    run python -m pip install -e . --no-deps --no-build-isolation -q
    run python -m rnnfast info
fi
if step tests; then
    # The whole suite, GPU tests included (they skip only where no GPU is present).
    run python -m pytest -q -rs tests --junitxml="$LOG_DIR/gpu-tests.xml"
fi
if step sanitizer && command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
        run compute-sanitizer --tool "$tool" --error-exitcode 1 \
            python -m pytest -q -x tests/test_cuda_backend.py -k "small or sanitize"
    done
fi
if step bench; then
    # Quick grid (headline table), then the full grid split per dtype (each split its own results file).
    run python -m rnnfast bench --device cuda --grid quick --out benchmarks/results
    for dt in float32 bfloat16 float16; do
        run python -m rnnfast bench --device cuda --grid full --dtype "$dt" \
            --providers torch.nn,triton,cuda --min-time 0.1 --out benchmarks/results
    done
    run python -m rnnfast bench --device cuda --ops tree_lstm_reduce --providers reference,triton \
        --out benchmarks/results
    run python -m pytest -q benchmarks --benchmark-only --benchmark-json "$LOG_DIR/pytest-benchmark-cuda.json"
    run python -m rnnfast profile --op gru --B 64 --T 256 --H 1024 --provider cuda --out "$LOG_DIR"
    run python scripts/results_table.py --update README.md
fi
exit $status
