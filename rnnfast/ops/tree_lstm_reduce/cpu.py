"""``cpu`` backend of the SPINN reduce: the linears as in-place ``addmm`` into one (R, 5H) buffer, then
the fused C++ tree-LSTM kernel. Saved for backward (``ws``): lstm_in, as in the reference.

Dimensions: R rows, H hidden, HT tracker hidden.
"""

from __future__ import annotations

import torch

from rnnfast import _ext
from rnnfast.ops.recurrence.common import acc_dtype
from rnnfast.ops.tree_lstm import cpu as tree_cpu
from rnnfast.ops.tree_lstm_reduce import reference


def supports(device: torch.device, dtype: torch.dtype, sizes) -> tuple[bool, str]:
    ok, why = tree_cpu.supports(device, dtype, sizes)
    return ok, (f"ATen GEMMs + {why}" if ok else why)


def forward(h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t):
    _ext.ensure_loaded()
    dt = h_l.dtype
    acc = acc_dtype(dt)

    def a(t):
        return None if t is None else t.to(acc)

    h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t = map(
        a, (h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t)
    )
    # lstm_in = h_l·W_lᵀ + b_l + h_r·W_rᵀ [+ h_track·W_tᵀ]: (R, 5H), accumulated in place.
    lstm_in = torch.addmm(b_l, h_l, w_l.t()) if b_l is not None else h_l.mm(w_l.t())
    lstm_in.addmm_(h_r, w_r.t())
    if h_track is not None:
        lstm_in.addmm_(h_track, w_t.t())
    h, c = torch.ops.rnnfast_C.tree_lstm_fwd(lstm_in, c_l, c_r)
    return h.to(dt), c.to(dt), lstm_in


def backward(grad_h, grad_c, h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t, c, ws):
    _ext.ensure_loaded()
    dt = h_l.dtype
    acc = acc_dtype(dt)
    d, dc_l, dc_r = torch.ops.rnnfast_C.tree_lstm_bwd(
        grad_h.to(acc), grad_c.to(acc), ws, c_l.to(acc), c_r.to(acc), c.to(acc)
    )
    return reference.input_and_weight_grads(d, dc_l, dc_r, h_l, h_r, b_l, w_l, w_r, h_track, w_t, dt)
