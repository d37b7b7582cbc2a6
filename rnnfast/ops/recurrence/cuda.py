"""The ``cuda`` backend of the recurrence op: persistent CUDA kernels (``csrc/cuda``), opt-in.

Two algorithms, chosen per call (``with flags(algo="persistent"|"stepwise"):`` forces one):
- persistent: the whole time loop in one cooperative launch; each CTA keeps its slice of W_hh in shared
  memory for all T steps and the CTAs meet at one grid barrier per step (forward and backward). Used
  whenever the slices fit on chip (``torch.ops.rnnfast_C.cuda_persistent_plan``).
- stepwise: per step one float32 GEMM (cuBLAS through ATen; TF32 when torch allows it) and one fused
  pointwise kernel. Used where the slices do not fit (large H, large G·H in backward).
The backward kernels return the gate gradients dgh (T, B, G·H); dW_hh and db_hh are then one GEMM and one
reduction here (``common.weight_grads``).

Not implemented (refused in ``supports``): float64, the LSTM projection (``proj_size``), devices other
than CUDA, GPUs below compute capability 8.0. Float32 runs in exact FMA inside the persistent kernels
regardless of ``allow_tf32``. Dimensions: T time, B batch, H hidden, G gates (see ``common.py``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import Tensor

from rnnfast import _cuda_ext
from rnnfast.ops.recurrence import common
from rnnfast.ops.recurrence.common import CELL_CODE, empty

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_PERSISTENT, _STEPWISE = 1, 2
_ALGOS = ("auto", "persistent", "stepwise")


_forced = "auto"


@contextlib.contextmanager
def flags(algo: str = "auto") -> Iterator[None]:
    """Force the algorithm inside the block, like ``torch.backends.cudnn.flags``: ``"persistent"``,
    ``"stepwise"`` or ``"auto"`` (the default choice). Process-wide; the previous setting comes back on exit.
    Under torch.compile the setting at trace time is baked into the graph."""
    global _forced
    if algo not in _ALGOS:
        raise ValueError(f"algo: expected one of {_ALGOS}, got {algo!r}")
    prev, _forced = _forced, algo
    try:
        yield
    finally:
        _forced = prev


def _forced_algorithm() -> str:
    return _forced


@functools.lru_cache(maxsize=512)
def _plan(cell: str, dtype: torch.dtype, B: int, H: int, backward: bool, device: int) -> tuple[int, ...]:
    """[ok, ctas, units, batch_chunk, split_k, smem_bytes] of the persistent kernel on ``device``."""
    with torch.cuda.device(device):
        return tuple(torch.ops.rnnfast_C.cuda_persistent_plan(CELL_CODE[cell], dtype, B, H, backward, device))


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def algorithm(
    cell: str, dtype: torch.dtype, B: int, H: int, backward: bool, device: torch.device
) -> tuple[int, str]:
    """(algorithm code, description) for one call; code 0 when the forced algorithm cannot run."""
    forced = _forced_algorithm()
    if forced == "stepwise":
        return _STEPWISE, "stepwise (forced by flags(algo='stepwise'))"
    plan = _plan(cell, dtype, B, H, backward, _device_index(device))
    if plan[0]:
        ctas, units, _, _, smem = plan[1:]
        return _PERSISTENT, f"persistent ({ctas} CTAs x {units} units, {smem // 1024} KiB shared memory each)"
    if forced == "persistent":
        direction = "backward" if backward else "forward"
        return 0, f"the persistent kernel does not fit for H={H} ({dtype}, {direction})"
    return _STEPWISE, f"stepwise (W_hh slices for H={H} do not fit on chip)"


def supports(device: torch.device, dtype: torch.dtype, sizes) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, f"the cuda backend runs on CUDA devices only, got {device}"
    if dtype not in _DTYPES:
        return False, f"dtype {dtype} is not implemented by the CUDA kernels (float32, float16, bfloat16)"
    cell = sizes.get("cell", "gru")
    if cell not in common.CELLS:
        return False, f"unknown cell {cell!r}"
    if sizes.get("P", 0):
        return False, "the LSTM projection (proj_size) is not implemented by the CUDA kernels"
    ok, why = _cuda_ext.status()
    if not ok:
        return False, why
    B, H = int(sizes.get("B", 1)), int(sizes.get("H", 1))
    fwd, fwd_why = algorithm(cell, dtype, B, H, False, device)
    bwd, bwd_why = algorithm(cell, dtype, B, H, True, device)
    if not fwd or not bwd:
        return False, fwd_why if not fwd else bwd_why
    return True, f"forward {fwd_why}; backward {bwd_why}"


def _c(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def _algorithm_or_raise(cell, t: Tensor, w_hh: Tensor, w_hr, backward: bool) -> str:
    """The algorithm for this call (see :func:`algorithm`), or a clear error for what is not implemented."""
    if w_hr is not None:
        raise ValueError("w_hr: the LSTM projection is not implemented by the cuda backend")
    algo, why = algorithm(cell, t.dtype, t.shape[1], w_hh.shape[1], backward, t.device)
    if not algo:
        raise RuntimeError(f"rnnfast cuda: {why}")
    return algo


def forward(cell, gi, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, need_ws):
    with torch.cuda.device(gi.device):
        algo = _algorithm_or_raise(cell, gi, w_hh, w_hr, backward=False)
        y, h_n, c_n, ws = torch.ops.rnnfast_C.cuda_recurrence_fwd(
            gi.contiguous(),
            h0.contiguous(),
            _c(c0),
            w_hh.contiguous(),
            _c(b_hh),
            None,
            _c(lengths),
            CELL_CODE[cell],
            bool(reverse),
            bool(need_ws),
            algo,
            torch.cuda.current_stream(gi.device).cuda_stream,
        )
    return y, h_n, c_n, ws


def backward(cell, grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, y, ws):
    with torch.cuda.device(y.device):
        algo = _algorithm_or_raise(cell, y, w_hh, w_hr, backward=True)
        dgi, dh0, dc0, dgh = torch.ops.rnnfast_C.cuda_recurrence_bwd(
            grad_y.contiguous(),
            grad_hn.contiguous(),
            _c(grad_cn),
            h0.contiguous(),
            _c(c0),
            w_hh.contiguous(),
            _c(b_hh),
            None,
            _c(lengths),
            y.contiguous(),
            ws.contiguous(),
            CELL_CODE[cell],
            bool(reverse),
            algo,
            torch.cuda.current_stream(y.device).cuda_stream,
        )
        # dgh is zero at invalid steps, so the rows previous_states fills with h0 there do not contribute.
        h_prev = common.previous_states(y.float(), h0.float(), lengths, reverse)
        dw_hh, db_hh = common.weight_grads(dgh, h_prev, b_hh is not None)
    return dgi, dh0, dc0, dw_hh.to(y.dtype), db_hh.to(y.dtype), empty(y)
