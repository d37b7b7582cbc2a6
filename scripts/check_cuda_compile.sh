#!/usr/bin/env bash
# Compile check of the CUDA kernels without a GPU: every csrc/cuda/*.cu with nvcc -Xptxas -v (prints
# registers / stack / spills per kernel, fails if a persistent kernel spills; with cuobjdump, which triton
# ships, also the LDSM / HMMA / FFMA counts of each persistent kernel), then the torch binding with the host
# compiler against torch's CPU headers (-fsyntax-only: it must need no CUDA header).
# tests/test_cuda_compile.py asserts the same and more (the SASS of the inner loops, the host emulator).
#
# Usage: scripts/check_cuda_compile.sh [arch]     (arch defaults to sm_90; PYTHON picks the interpreter)
set -euo pipefail

ARCH="${1:-sm_90}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
NVCC="${NVCC:-$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")}"
CXX="${CXX:-$(command -v c++ || command -v g++)}"
DEMANGLE="$(command -v cu++filt || command -v c++filt || echo cat)"
CUOBJDUMP="${CUOBJDUMP:-$("$PYTHON" -c 'import pathlib, triton; print(pathlib.Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump")' 2>/dev/null || command -v cuobjdump || true)}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

if [[ ! -x "$NVCC" ]]; then
  echo "nvcc not found (set NVCC or CUDA_HOME)" >&2
  exit 2
fi

# What torch's extension build adds to nvcc, so that the check compiles what the build compiles.
TORCH_FLAGS=(--expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__)

# <type, cell[, mode]> codes -> names (rnnfast_cuda.h).
pretty() {
  sed -E 's/, ([0-3]), ([0-2])>/, \1, m\2>/; s/, 0(,|>)/, rnn_tanh\1/; s/, 1(,|>)/, rnn_relu\1/; s/, 2(,|>)/, gru\1/;
          s/, 3(,|>)/, lstm\1/; s/, m0>/, mma>/; s/, m1>/, tf32>/; s/, m2>/, ffma>/'
}

status=0
for cu in "$ROOT"/csrc/cuda/*.cu; do
  name="$(basename "$cu")"
  log="$TMP/$name.log"
  if ! "$NVCC" -c "-arch=$ARCH" -std=c++20 -O3 "${TORCH_FLAGS[@]}" -Xptxas -v -o "$TMP/$name.o" "$cu" >"$log" 2>&1; then
    cat "$log" >&2
    echo "FAILED: $name" >&2
    status=1
    continue
  fi
  echo "== $name ($ARCH): kernel, registers, stack bytes, spill stores, spill loads"
  # ptxas prints per kernel: "Compiling entry function 'NAME'", "... stack frame, ... spill ...", "Used N registers".
  awk '
    /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); name = substr($0, RSTART + 1, RLENGTH - 2) }
    /bytes stack frame/ { stack = $1; stores = $5; loads = $9 }
    /Used [0-9]+ registers/ { for (i = 1; i <= NF; i++) if ($i == "Used") regs = $(i + 1);
                              print name, regs, stack, stores, loads }
  ' "$log" >"$TMP/$name.tab"
  while read -r mangled regs stack stores loads; do
    printf '  %-48s %4s %4s %4s %4s\n' "$(echo "$mangled" | "$DEMANGLE" | sed -E 's/^void //; s/rnnfast::\(anonymous namespace\):://; s/rnnfast:://g; s/\(.*$//' | pretty)" \
      "$regs" "$stack" "$stores" "$loads"
    if [[ "$mangled" == *persistent* && ( "$stores" != 0 || "$loads" != 0 ) ]]; then
      echo "  SPILL in persistent kernel $mangled" >&2
      status=1
    fi
  done <"$TMP/$name.tab"
  if [[ "$name" == persistent_* && -x "$CUOBJDUMP" ]]; then
    echo "   SASS: LDSM / HMMA / FFMA / LDG instructions per kernel"
    "$CUOBJDUMP" -sass "$TMP/$name.o" | awk '
      /Function :/ { if (f) print f, l, h, m, g; f = $3; l = h = m = g = 0 }
      / LDSM/ { l++ } / HMMA/ { h++ } / FFMA / { m++ } / LDG/ { g++ }
      END { if (f) print f, l, h, m, g }' |
      while read -r mangled l h m g; do
        printf '  %-52s %5s %5s %5s %5s\n' "$(echo "$mangled" | "$DEMANGLE" |
          sed -E 's/^void //; s/rnnfast::\(anonymous namespace\):://; s/rnnfast:://g; s/\(.*$//' | pretty)" "$l" "$h" "$m" "$g"
      done
  fi
done

echo "== bindings.cpp: syntax check against torch's CPU headers"
mapfile -t INCLUDES < <("$PYTHON" -c 'from torch.utils.cpp_extension import include_paths; print("\n".join(include_paths()))')
if "$CXX" -std=c++20 -fsyntax-only -Wall -Wextra "${INCLUDES[@]/#/-I}" "$ROOT/csrc/cuda/bindings.cpp" 2>"$TMP/bind.log"; then
  if grep -E '(bindings\.cpp|rnnfast_cuda\.h):[0-9]+:[0-9]+:' "$TMP/bind.log"; then
    echo "FAILED: warnings in bindings.cpp" >&2
    status=1
  else
    echo "  ok"
  fi
else
  cat "$TMP/bind.log" >&2
  echo "FAILED: bindings.cpp" >&2
  status=1
fi
exit "$status"
