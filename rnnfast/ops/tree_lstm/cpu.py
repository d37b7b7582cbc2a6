"""``cpu`` backend of the tree-LSTM composition: one fused C++ pass forward and one backward
(``csrc/cpu/tree_lstm.cpp``). float16/bfloat16 are computed in float32 and cast back."""

from __future__ import annotations

import torch

from rnnfast import _ext
from rnnfast.ops.recurrence.common import acc_dtype

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def supports(device: torch.device, dtype: torch.dtype, sizes) -> tuple[bool, str]:
    if device.type != "cpu":
        return False, f"the C++ kernels run on CPU tensors only, got device {device}"
    if dtype not in _DTYPES:
        return False, f"dtype {dtype} is not one of {_DTYPES}"
    return True, f"fused C++ pointwise kernel, {dtype}"


def forward(lstm_in, c_l, c_r):
    _ext.ensure_loaded()
    acc = acc_dtype(lstm_in.dtype)
    h, c = torch.ops.rnnfast_C.tree_lstm_fwd(lstm_in.to(acc), c_l.to(acc), c_r.to(acc))
    return h.to(lstm_in.dtype), c.to(lstm_in.dtype)


def backward(grad_h, grad_c, lstm_in, c_l, c_r, c):
    _ext.ensure_loaded()
    acc = acc_dtype(lstm_in.dtype)
    grads = torch.ops.rnnfast_C.tree_lstm_bwd(*(t.to(acc) for t in (grad_h, grad_c, lstm_in, c_l, c_r, c)))
    return tuple(g.to(lstm_in.dtype) for g in grads)
