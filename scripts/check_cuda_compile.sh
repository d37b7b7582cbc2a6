#!/usr/bin/env bash
# Compile check of the CUDA kernels without a GPU: every csrc/cuda/*.cu with nvcc -Xptxas -v (prints
# registers / stack / spills per kernel, fails if a persistent kernel spills), then the torch binding with
# the host compiler against torch's CPU headers (-fsyntax-only: it must need no CUDA header).
#
# Usage: scripts/check_cuda_compile.sh [arch]     (arch defaults to sm_90; PYTHON picks the interpreter)
set -euo pipefail

ARCH="${1:-sm_90}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
NVCC="${NVCC:-$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")}"
CXX="${CXX:-$(command -v c++ || command -v g++)}"
DEMANGLE="$(command -v cu++filt || command -v c++filt || echo cat)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

if [[ ! -x "$NVCC" ]]; then
  echo "nvcc not found (set NVCC or CUDA_HOME)" >&2
  exit 2
fi

# What torch's extension build adds to nvcc, so that the check compiles what the build compiles.
TORCH_FLAGS=(--expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__)

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
    printf '  %-48s %4s %4s %4s %4s\n' "$(echo "$mangled" | "$DEMANGLE" | sed -E 's/^void //; s/rnnfast::\(anonymous namespace\):://; s/rnnfast:://g; s/\(.*$//; s/, 0>/, rnn_tanh>/; s/, 1>/, rnn_relu>/; s/, 2>/, gru>/; s/, 3>/, lstm>/')" \
      "$regs" "$stack" "$stores" "$loads"
    if [[ "$mangled" == *persistent* && ( "$stores" != 0 || "$loads" != 0 ) ]]; then
      echo "  SPILL in persistent kernel $mangled" >&2
      status=1
    fi
  done <"$TMP/$name.tab"
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
