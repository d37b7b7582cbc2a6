"""Triton backend of the recurrence op: the whole time loop (forward, and backward through time) in one
kernel launch each; see ``rnnfast/kernels/recurrence.py`` for the kernel design.

Dimensions and contract: ``common.py`` (T time, B batch, H hidden, G gates, P projection; the state has
N = P columns with an LSTM projection, else N = H).
The weight gradients dW_hh, db_hh (and dW_hr) are one GEMM and one reduction after the loop.
"""

from __future__ import annotations

import torch

from rnnfast.kernels import launch
from rnnfast.ops.recurrence import common
from rnnfast.ops.recurrence.common import acc_dtype, empty

# Each program owns BLOCK_B rows and all H units and streams the G·H×N W_hh through its SM every step,
# so per-step time grows with G·H·N on a single SM: beyond this H the kernel is correct but far slower than
# cuDNN, and auto should not pick it.
MAX_H = 1024
BLOCK_B = 16
# W_hh stays on chip (registers) for the whole loop when H and N fit one tile each and its G tiles take at
# most this many bytes: 32 KiB is 64 registers a thread at 4 warps, leaving room for the G accumulators.
RESIDENT_BYTES = 32 * 1024


def _tiles(G: int, H: int, N: int, dtype: torch.dtype) -> dict:
    bh, bk = launch.tile(H), launch.tile(N)
    resident = H <= bh and N <= bk and G * bh * bk * dtype.itemsize <= RESIDENT_BYTES
    return dict(BLOCK_B=BLOCK_B, BLOCK_H=bh, BLOCK_K=bk, RESIDENT=resident)


def supports(device: torch.device, dtype: torch.dtype, sizes) -> tuple[bool, str]:
    ok, why = launch.check_device(device, dtype)
    if not ok:
        return False, why
    if sizes.get("cell") not in common.CELLS:
        return False, f"cell {sizes.get('cell')!r} is not one of {common.CELLS}"
    H = sizes.get("H", 0)
    if device.type == "cuda" and H > MAX_H:
        return False, f"H={H} > {MAX_H}: one program streams all of W_hh per step, too slow at this size"
    return True, f"fused time loop, {why}" + (f", H <= {MAX_H}" if device.type == "cuda" else "")


def _grid(B: int) -> tuple[int]:
    return (-(-B // BLOCK_B),)


def forward(cell, gi, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, need_ws):
    from rnnfast.kernels.recurrence import recurrence_fwd_kernel

    T, B = gi.shape[:2]
    G = common.GATES[cell]
    H = w_hh.shape[0] // G
    N = h0.shape[-1]
    dt = gi.dtype
    acc = acc_dtype(dt)
    dev = gi.device
    gi, w_hh = gi.contiguous(), w_hh.contiguous()
    b = b_hh.contiguous() if b_hh is not None else w_hh
    wr = w_hr.contiguous() if w_hr is not None else w_hh
    lens = lengths.contiguous() if lengths is not None else gi
    y = launch.alloc((T, B, N), dt, dev)
    ws = launch.alloc(common.ws_shape(cell, T, B, H, need_ws), acc, dev)
    hbuf = torch.empty((2, B, N), dtype=acc, device=dev)
    hbuf[0] = h0
    cbuf = hbuf
    if cell == "lstm":
        cbuf = torch.empty((2, B, H), dtype=acc, device=dev)
        cbuf[0] = c0
    ubuf = torch.empty((B, H), dtype=acc, device=dev) if w_hr is not None else hbuf
    if B:  # an empty launch grid is not valid on every Triton version
        recurrence_fwd_kernel[_grid(B)](
            gi, w_hh, b, wr, lens, y, ws if need_ws else hbuf, hbuf, cbuf, ubuf, T, B, H, N,
            CELL=common.CELL_CODE[cell], G=G, S=common.SAVED[cell],
            HAS_BIAS=b_hh is not None, HAS_LEN=lengths is not None, REVERSE=bool(reverse),
            NEED_WS=bool(need_ws) and common.SAVED[cell] > 0, PROJ=w_hr is not None,
            **_tiles(G, H, N, dt), PREC=launch.dot_precision(dt, torch.backends.cudnn.allow_tf32),
        )  # fmt: skip
    h_n = hbuf[T % 2].to(dt)
    c_n = cbuf[T % 2].to(dt) if cell == "lstm" else empty(y)
    return y, h_n, c_n, ws


def backward(cell, grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, y, ws):
    from rnnfast.kernels.recurrence import recurrence_bwd_kernel

    T, B, N = y.shape
    G = common.GATES[cell]
    H = w_hh.shape[0] // G
    dt = y.dtype
    acc = acc_dtype(dt)
    dev = y.device
    y, w_hh, grad_y = y.contiguous(), w_hh.contiguous(), grad_y.contiguous()
    wr = w_hr.contiguous() if w_hr is not None else w_hh
    ws = ws.contiguous()
    lens = lengths.contiguous() if lengths is not None else y
    # The state each step started from: needed by the GRU's gate gradients and, for every cell, by the
    # dW_hh GEMM after the loop.
    h_prev = common.previous_states(y.to(acc), h0.to(acc), lengths, reverse).contiguous()
    c_prev = h_prev
    if cell == "lstm":
        c_prev = common.previous_states(ws[..., 4 * H :], c0.to(acc), lengths, reverse).contiguous()
    dgi = launch.alloc((T, B, G * H), acc, dev)
    dgh = launch.alloc((T, B, G * H), acc, dev) if cell == "gru" else dgi
    dhr = launch.alloc((T, B, N), acc, dev) if w_hr is not None else dgi
    dhbuf = torch.empty((2, B, N), dtype=acc, device=dev)
    dhbuf[0] = grad_hn
    dcbuf = dhbuf
    if cell == "lstm":
        dcbuf = torch.empty((2, B, H), dtype=acc, device=dev)
        dcbuf[0] = grad_cn
    if B:  # an empty launch grid is not valid on every Triton version
        recurrence_bwd_kernel[_grid(B)](
            grad_y, w_hh, wr, lens, y, h_prev, c_prev, ws if ws.numel() else dhbuf,
            dgi, dgh, dhbuf, dcbuf, dhr, T, B, H, N,
            CELL=common.CELL_CODE[cell], G=G, S=common.SAVED[cell],
            HAS_LEN=lengths is not None, REVERSE=bool(reverse), PROJ=w_hr is not None,
            **_tiles(G, H, N, acc), PREC=launch.dot_precision(acc, torch.backends.cudnn.allow_tf32),
        )  # fmt: skip
    dw_hh, db_hh = common.weight_grads(dgh, h_prev, b_hh is not None)
    dw_hr = empty(y)
    if w_hr is not None:
        # h_t = W_hr·u_t with u = o·tanh(c): dW_hr = Σ_t dh_tᵀ·u_t, one GEMM (dh_t is 0 at invalid steps).
        u = ws[..., 3 * H : 4 * H] * torch.tanh(ws[..., 4 * H :])
        dw_hr = dhr.reshape(-1, N).t().mm(u.reshape(-1, H)).to(dt)
    dc0 = dcbuf[T % 2].to(dt) if cell == "lstm" else empty(y)
    return dgi.to(dt), dhbuf[T % 2].to(dt), dc0, dw_hh.to(dt), db_hh.to(dt), dw_hr
