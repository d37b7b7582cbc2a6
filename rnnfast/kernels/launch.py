"""What the Triton launchers share: where the kernels run, output allocation, tile sizes, dot precision,
the launch itself (recorded for tests) and how many programs of a compiled kernel can be resident.

This module does not import ``triton``, so the backends' ``supports()`` can use it anywhere.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

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


# --------------------------------------------------------------------------------------------------
# Launches: one entry point, so that tests can read what was launched.

_recorders: list[list] = []


@contextlib.contextmanager
def record_launches() -> Iterator[list]:
    """Collect ``(kernel name, grid)`` of every launch made through :func:`run` in the block."""
    log: list = []
    _recorders.append(log)
    try:
        yield log
    finally:
        _recorders.remove(log)


def run(kernel, grid: tuple[int, ...], *args, **kwargs):
    """``kernel[grid](*args, **kwargs)``, recorded for :func:`record_launches`."""
    for log in _recorders:
        log.append((kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__, tuple(grid)))
    return kernel[grid](*args, **kwargs)


def resident_programs(compiled, device: torch.device) -> tuple[int, str]:
    """How many programs of ``compiled`` (a Triton CompiledKernel) can be resident at once on ``device``,
    from its registers, shared memory and warps and the device's per-SM limits, and what bounds it."""
    compiled._init_handles()
    regs = max(1, int(compiled.n_regs))
    smem = int(compiled.metadata.shared)
    warps = int(compiled.metadata.num_warps)
    props = torch.cuda.get_device_properties(device)
    # Registers are allocated per warp in units of 256.
    warp_regs = -(-regs * 32 // 256) * 256
    limits = {
        "registers": getattr(props, "regs_per_multiprocessor", 65536) // (warp_regs * warps),
        "threads": getattr(props, "max_threads_per_multi_processor", 2048) // (32 * warps),
        "blocks": 32,  # sm_80 and later
    }
    if smem:
        # Each block also holds 1 KiB of shared memory reserved by the driver.
        per_sm = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024)
        limits["shared memory"] = per_sm // (smem + 1024)
    bound = min(limits, key=limits.get)
    per_sm = limits[bound]
    sms = props.multi_processor_count
    return per_sm * sms, (
        f"{per_sm} programs per SM x {sms} SMs ({regs} registers, {smem} B shared memory, {warps} warps; "
        f"bound by {bound})"
    )
