"""Pure-PyTorch SPINN reduce: three linears and the tree-LSTM composition.

Dimensions: R rows, H hidden, HT tracker hidden (0 without a tracker).
    lstm_in = h_l·W_lᵀ + b_l + h_r·W_rᵀ [+ h_track·W_tᵀ]   (R, 5H)
    (h, c) = tree_lstm(lstm_in, c_l, c_r)
Weights: w_l (5H, H), b_l (5H) or None, w_r (5H, H), w_t (5H, HT) or None.
Saved for backward (``ws``): lstm_in in the accumulation dtype.
"""

from __future__ import annotations

import torch.nn.functional as F

from rnnfast.ops.recurrence.common import acc_dtype
from rnnfast.ops.tree_lstm import reference as tree


def tree_lstm_reduce(h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track=None, w_t=None):
    """The oracle: exactly the SPINN example's ``Reduce`` on batched rows. Returns (h, c)."""
    lstm_in = F.linear(h_l, w_l, b_l) + F.linear(h_r, w_r)
    if h_track is not None:
        lstm_in = lstm_in + F.linear(h_track, w_t)
    return tree.tree_lstm(lstm_in, c_l, c_r)


def supports(device, dtype, sizes):
    return tree.supports(device, dtype, sizes)


def forward(h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t):
    acc = acc_dtype(h_l.dtype)

    def a(t):
        return None if t is None else t.to(acc)

    lstm_in = F.linear(a(h_l), a(w_l), a(b_l)) + F.linear(a(h_r), a(w_r))
    if h_track is not None:
        lstm_in = lstm_in + F.linear(a(h_track), a(w_t))
    h, c = tree.tree_lstm(lstm_in, a(c_l), a(c_r))
    return h.to(h_l.dtype), c.to(h_l.dtype), lstm_in


def input_and_weight_grads(d, dc_l, dc_r, h_l, h_r, b_l, w_l, w_r, h_track, w_t, dtype):
    """The GEMMs after the gate gradients, shared by every backend.

    d (R, 5H) is the gradient of lstm_in in the accumulation dtype; returns the op's nine gradients in
    ``dtype`` (empty tensors for the absent bias and tracker).
    """
    acc = d.dtype
    dh_l = d.mm(w_l.to(acc))
    dh_r = d.mm(w_r.to(acc))
    dw_l = d.t().mm(h_l.to(acc))
    dw_r = d.t().mm(h_r.to(acc))
    db_l = d.sum(0) if b_l is not None else d.new_empty((0,))
    if h_track is not None:
        dh_t, dw_t = d.mm(w_t.to(acc)), d.t().mm(h_track.to(acc))
    else:
        dh_t, dw_t = d.new_empty((0,)), d.new_empty((0,))
    return tuple(t.to(dtype) for t in (dh_l, dc_l, dh_r, dc_r, dw_l, db_l, dw_r, dh_t, dw_t))


def backward(grad_h, grad_c, h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t, c, ws):
    dt = h_l.dtype
    acc = acc_dtype(dt)
    d, dc_l, dc_r = tree.gate_grads(grad_h.to(acc), grad_c.to(acc), ws, c_l.to(acc), c_r.to(acc), c.to(acc))
    return input_and_weight_grads(d, dc_l, dc_r, h_l, h_r, b_l, w_l, w_r, h_track, w_t, dt)
