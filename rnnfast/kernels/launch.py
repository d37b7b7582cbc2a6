"""What the Triton launchers share: where the kernels run, output allocation, tile sizes, dot precision.

This module does not import ``triton``, so the backends' ``supports()`` can use it anywhere.
"""

from __future__ import annotations

import os

import torch

GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The interpreter runs on CPU tensors through NumPy, which has no bfloat16 arithmetic; fp16 would be
# emulated at a speed no test can afford. fp64 exercises the same code at the oracle's precision.
INTERPRETER_DTYPES = (torch.float32, torch.float64)


def interpreting() -> bool:
    """True when Triton runs its interpreter (``TRITON_INTERPRET=1``), i.e. kernels run on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_device(device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """Whether a Triton kernel can run on ``device`` in ``dtype`` at all, and if not, why."""
    if device.type == "cuda":
        if dtype not in GPU_DTYPES:
            return False, f"dtype {dtype} on CUDA: the Triton kernels take float32, float16, bfloat16"
        return True, "CUDA"
    if device.type == "cpu":
        if not interpreting():
            return False, "CPU tensors run Triton kernels only under TRITON_INTERPRET=1"
        if dtype not in INTERPRETER_DTYPES:
            return False, f"dtype {dtype} under the Triton interpreter: float32 and float64 only"
        return True, "Triton interpreter"
    return False, f"device type '{device.type}': the Triton kernels run on CUDA (or the CPU interpreter)"


def poison() -> bool:
    return os.environ.get("RNNFAST_DEBUG_POISON", "0") not in ("", "0")


def alloc(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An output buffer; NaN-filled under ``RNNFAST_DEBUG_POISON=1`` so an element never written shows."""
    t = torch.empty(shape, dtype=dtype, device=device)
    if poison() and t.numel() and t.dtype.is_floating_point:
        t.fill_(float("nan"))
    return t


def tile(n: int, lo: int = 16, hi: int = 64) -> int:
    """A power-of-two tile covering ``n`` clamped to [lo, hi]; lo = 16 is tl.dot's smallest block dim."""
    return max(lo, min(hi, 1 << max(0, n - 1).bit_length()))


def dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """``tl.dot`` input precision for fp32 operands: TF32 where torch itself would use it, else IEEE.

    ``allow_tf32`` is the caller's torch flag (cuDNN's for the RNN, cuBLAS's for linears), so the kernel
    matches what torch.nn does with the same settings. Other dtypes ignore the setting.
    """
    if dtype == torch.float32 and allow_tf32 and not interpreting():
        return "tf32"
    return "ieee"
