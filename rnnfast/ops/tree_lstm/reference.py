"""Pure-PyTorch tree-LSTM composition (the SPINN reduce's cell): oracle and ``reference`` backend.

Dimensions: R rows (nodes reduced at once), H hidden.
    lstm_in (R, 5H) holds the chunks a, i, f1, f2, o;
    c = tanh(a)·σ(i) + σ(f1)·c_l + σ(f2)·c_r;  h = σ(o)·tanh(c).
"""

from __future__ import annotations

import torch

from rnnfast.ops.recurrence.common import acc_dtype


def tree_lstm(lstm_in, c_l, c_r):
    """The oracle, written as the SPINN example writes it. Returns (h, c), each (R, H)."""
    a, i, f1, f2, o = lstm_in.chunk(5, 1)
    c = a.tanh() * i.sigmoid() + f1.sigmoid() * c_l + f2.sigmoid() * c_r
    h = o.sigmoid() * c.tanh()
    return h, c


def supports(device, dtype, sizes):
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return False, f"dtype {dtype} is not a floating type"
    return True, "any device, any floating dtype"


def forward(lstm_in, c_l, c_r):
    acc = acc_dtype(lstm_in.dtype)
    h, c = tree_lstm(lstm_in.to(acc), c_l.to(acc), c_r.to(acc))
    return h.to(lstm_in.dtype), c.to(lstm_in.dtype)


def gate_grads(grad_h, grad_c, lstm_in, c_l, c_r, c):
    """Gradients of the composition, all in the accumulation dtype: (d_lstm_in, dc_l, dc_r)."""
    a, i, f1, f2, o = lstm_in.chunk(5, 1)
    ta, si, sf1, sf2, so = a.tanh(), i.sigmoid(), f1.sigmoid(), f2.sigmoid(), o.sigmoid()
    tc = c.tanh()
    dc = grad_c + grad_h * so * (1 - tc * tc)
    d = torch.cat(
        [
            dc * si * (1 - ta * ta),
            dc * ta * si * (1 - si),
            dc * c_l * sf1 * (1 - sf1),
            dc * c_r * sf2 * (1 - sf2),
            grad_h * tc * so * (1 - so),
        ],
        1,
    )
    return d, dc * sf1, dc * sf2


def backward(grad_h, grad_c, lstm_in, c_l, c_r, c):
    acc = acc_dtype(lstm_in.dtype)
    d, dc_l, dc_r = gate_grads(*(t.to(acc) for t in (grad_h, grad_c, lstm_in, c_l, c_r, c)))
    dt = lstm_in.dtype
    return d.to(dt), dc_l.to(dt), dc_r.to(dt)
