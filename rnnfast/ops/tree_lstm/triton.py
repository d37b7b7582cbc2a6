"""Triton backend of the tree-LSTM composition: one pointwise kernel each way
(``rnnfast/kernels/tree_lstm.py``).

Dimensions: R rows, H hidden; lstm_in (R, 5H) = a, i, f1, f2, o (see ``reference.py``).
"""

from __future__ import annotations

import torch

from rnnfast.kernels import launch

BLOCK_R = 16


def supports(device: torch.device, dtype: torch.dtype, sizes) -> tuple[bool, str]:
    ok, why = launch.check_device(device, dtype)
    return ok, (f"pointwise kernel, {why}" if ok else why)


def _grid(R: int, H: int, block_h: int) -> tuple[int, int]:
    return (-(-R // BLOCK_R), -(-H // block_h))


def forward(lstm_in, c_l, c_r):
    from rnnfast.kernels.tree_lstm import tree_lstm_fwd_kernel

    R, H = c_l.shape
    lstm_in, c_l, c_r = lstm_in.contiguous(), c_l.contiguous(), c_r.contiguous()
    h = launch.alloc((R, H), lstm_in.dtype, lstm_in.device)
    c = launch.alloc((R, H), lstm_in.dtype, lstm_in.device)
    bh = launch.tile(H, lo=16, hi=128)
    if R and H:  # an empty launch grid is not valid on every Triton version
        tree_lstm_fwd_kernel[_grid(R, H, bh)](lstm_in, c_l, c_r, h, c, R, H, BLOCK_R=BLOCK_R, BLOCK_H=bh)
    return h, c


def gate_grads(grad_h, grad_c, lstm_in, c_l, c_r, c, d_dtype: torch.dtype):
    """(d lstm_in in ``d_dtype``, dc_l, dc_r in c_l's dtype); every input may be any float dtype."""
    from rnnfast.kernels.tree_lstm import tree_lstm_bwd_kernel

    R, H = c_l.shape
    dev = lstm_in.device
    d = launch.alloc((R, 5 * H), d_dtype, dev)
    dc_l = launch.alloc((R, H), c_l.dtype, dev)
    dc_r = launch.alloc((R, H), c_l.dtype, dev)
    bh = launch.tile(H, lo=16, hi=128)
    if R and H:  # an empty launch grid is not valid on every Triton version
        tree_lstm_bwd_kernel[_grid(R, H, bh)](
            grad_h.contiguous(), grad_c.contiguous(), lstm_in.contiguous(),
            c_l.contiguous(), c_r.contiguous(), c.contiguous(), d, dc_l, dc_r, R, H,
            BLOCK_R=BLOCK_R, BLOCK_H=bh,
        )  # fmt: skip
    return d, dc_l, dc_r


def backward(grad_h, grad_c, lstm_in, c_l, c_r, c):
    return gate_grads(grad_h, grad_c, lstm_in, c_l, c_r, c, lstm_in.dtype)
