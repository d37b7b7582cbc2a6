"""``cpu`` backend of the recurrence: the C++ time loops of ``csrc/cpu/recurrence.cpp``.

A thin adapter over ``torch.ops.rnnfast_C.recurrence_fwd`` / ``recurrence_bwd`` (same arguments as
``common.py``'s op contract, the cell as its integer code). float16 and bfloat16 inputs are computed in
float32, as the reference does, and the results cast back; ``ws`` stays float32.
"""

from __future__ import annotations

import torch

from rnnfast import _ext
from rnnfast.ops.recurrence.common import CELL_CODE, acc_dtype, as_dtype

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# The reason given for each dtype served (built once: supports() runs at every module call).
_SERVED = {
    dt: "fused C++ time loop, " + str(dt) + ("" if acc_dtype(dt) == dt else " (computed in float32)")
    for dt in _DTYPES
}


def supports(device: torch.device, dtype: torch.dtype, sizes) -> tuple[bool, str]:
    if device.type != "cpu":
        return False, f"the C++ kernels run on CPU tensors only, got device {device}"
    if dtype not in _SERVED:
        return False, f"dtype {dtype} is not one of {_DTYPES}"
    return True, _SERVED[dtype]


# The C++ ops return new tensors only (never an input), so function.py need not check for aliases.
FRESH_OUTPUTS = True


def _lengths(lengths: torch.Tensor | None) -> torch.Tensor | None:
    return None if lengths is None else lengths.to(device="cpu", dtype=torch.int64)


def forward(cell, gi, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, need_ws):
    _ext.ensure_loaded()
    dt = gi.dtype
    acc = acc_dtype(dt)
    tensors = (gi, h0, c0, w_hh, b_hh, w_hr)
    if acc != dt:
        tensors = tuple(as_dtype(t, acc) for t in tensors)
    y, h_n, c_n, ws = torch.ops.rnnfast_C.recurrence_fwd(
        *tensors,
        _lengths(lengths),
        CELL_CODE[cell],
        bool(reverse),
        bool(need_ws),
    )
    if acc != dt:
        y, h_n, c_n = y.to(dt), h_n.to(dt), c_n.to(dt)
    return y, h_n, c_n, ws


def backward(cell, grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, y, ws):
    _ext.ensure_loaded()
    dt = y.dtype
    acc = acc_dtype(dt)
    tensors = (grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr)
    if acc != dt:
        tensors = tuple(as_dtype(t, acc) for t in tensors)
    grads = torch.ops.rnnfast_C.recurrence_bwd(
        *tensors,
        _lengths(lengths),
        as_dtype(y, acc),
        ws,
        CELL_CODE[cell],
        bool(reverse),
    )
    return grads if acc == dt else tuple(g.to(dt) for g in grads)
