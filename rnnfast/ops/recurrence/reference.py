"""Pure-PyTorch recurrence: the oracle every backend is tested against, and the ``reference`` backend.

Two layers here:
- ``rnn``, ``gru``, ``lstm``: the recurrence written as plainly as possible, differentiated by autograd.
  They follow torch.nn's equations and gate order exactly and are the test oracle.
- ``forward`` / ``backward``: the same forward saving the activations of the op contract
  (``common.py``), and an explicit backward-through-time: gate gradients per step inside the loop, the
  weight gradients as one GEMM after it. This is the template the CPU, Triton and CUDA kernels follow.

Dimensions: T time, B batch, H hidden, G gates, P projection (see ``common.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnfast.ops.recurrence import common
from rnnfast.ops.recurrence.common import acc_dtype, empty, time_steps, valid_mask

# --------------------------------------------------------------------------------------------------
# The oracle: plain loops, autograd does the backward.


def _run(step, gi, state, lengths, reverse):
    """Drive ``step(gi_t, state) -> (out_t, new_state)`` over time with lengths and direction."""
    T, B = gi.shape[:2]
    mask = valid_mask(lengths, T, B, gi.device)
    outs = [None] * T
    for t in time_steps(T, reverse):
        out, new = step(gi[t], state)
        if mask is not None:
            m = mask[t]
            new = tuple(torch.where(m, n, s) for n, s in zip(new, state))
            out = torch.where(m, out, torch.zeros_like(out))
        state = new
        outs[t] = out
    y = torch.stack(outs) if T else gi.new_zeros((0, B, state[0].shape[-1]))
    return y, state


def rnn(gi, h0, w_hh, b_hh=None, lengths=None, reverse=False, nonlinearity="tanh"):
    """Elman RNN: h_t = act(gi_t + W_hh·h_{t-1} + b_hh). gi (T,B,H), h0 (B,H) -> y (T,B,H), h_n (B,H)."""
    act = {"tanh": torch.tanh, "relu": torch.relu}[nonlinearity]

    def step(g, state):
        h = act(g + F.linear(state[0], w_hh, b_hh))
        return h, (h,)

    y, (h,) = _run(step, gi, (h0,), lengths, reverse)
    return y, h


def gru(gi, h0, w_hh, b_hh=None, lengths=None, reverse=False):
    """GRU exactly as torch.nn.GRU, gates r, z, n. gi (T,B,3H), h0 (B,H) -> y (T,B,H), h_n (B,H)."""

    def step(g, state):
        h = state[0]
        g_r, g_z, g_n = g.chunk(3, -1)
        h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, -1)
        r = torch.sigmoid(g_r + h_r)
        z = torch.sigmoid(g_z + h_z)
        n = torch.tanh(g_n + r * h_n)
        h = (1 - z) * n + z * h
        return h, (h,)

    y, (h,) = _run(step, gi, (h0,), lengths, reverse)
    return y, h


def lstm(gi, h0, c0, w_hh, b_hh=None, w_hr=None, lengths=None, reverse=False):
    """LSTM exactly as torch.nn.LSTM, gates i, f, g, o, optional projection h = W_hr·(o·tanh c).

    gi (T,B,4H), h0 (B,P|H), c0 (B,H) -> y (T,B,P|H), h_n (B,P|H), c_n (B,H).
    """

    def step(g, state):
        h, c = state
        i, f, gg, o = (g + F.linear(h, w_hh, b_hh)).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
        h = torch.sigmoid(o) * torch.tanh(c)
        if w_hr is not None:
            h = F.linear(h, w_hr)
        return h, (h, c)

    y, (h, c) = _run(step, gi, (h0, c0), lengths, reverse)
    return y, h, c


# --------------------------------------------------------------------------------------------------
# The reference backend: forward with saved activations, explicit backward through time.


def supports(device: torch.device, dtype: torch.dtype, sizes) -> tuple[bool, str]:
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return False, f"dtype {dtype} is not a floating type"
    return True, "any device, any floating dtype (loops in Python)"


def _step_forward(cell, g, h, c, w_hh, b_hh, w_hr):
    """One step in the accumulation dtype. Returns (h_new, c_new, saved (B, S·H) or None)."""
    gh = F.linear(h, w_hh, b_hh)
    if cell == "rnn_tanh":
        h = torch.tanh(g + gh)
        return h, None, None
    if cell == "rnn_relu":
        h = torch.relu(g + gh)
        return h, None, None
    if cell == "gru":
        g_r, g_z, g_n = g.chunk(3, -1)
        h_r, h_z, hn = gh.chunk(3, -1)
        r = torch.sigmoid(g_r + h_r)
        z = torch.sigmoid(g_z + h_z)
        n = torch.tanh(g_n + r * hn)
        return (1 - z) * n + z * h, None, torch.cat([r, z, n, hn], -1)
    i, f, gg, o = (g + gh).chunk(4, -1)
    i, f, gg, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(gg), torch.sigmoid(o)
    c = f * c + i * gg
    h = o * torch.tanh(c)
    if w_hr is not None:
        h = F.linear(h, w_hr)
    return h, c, torch.cat([i, f, gg, o, c], -1)


def forward(cell, gi, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, need_ws):
    T, B = gi.shape[:2]
    H = w_hh.shape[0] // common.GATES[cell]
    out_dtype = gi.dtype
    acc = acc_dtype(out_dtype)
    gi, w_hh = gi.to(acc), w_hh.to(acc)
    b_hh = None if b_hh is None else b_hh.to(acc)
    w_hr = None if w_hr is None else w_hr.to(acc)
    h = h0.to(acc)
    c = None if c0 is None else c0.to(acc)
    mask = valid_mask(lengths, T, B, gi.device)
    y = gi.new_zeros((T, B, h.shape[-1]))
    ws = gi.new_zeros(common.ws_shape(cell, T, B, H, need_ws))
    for t in time_steps(T, reverse):
        h_new, c_new, saved = _step_forward(cell, gi[t], h, c, w_hh, b_hh, w_hr)
        if mask is None:
            h, c = h_new, c_new
            y[t] = h_new
        else:
            m = mask[t]
            h = torch.where(m, h_new, h)
            c = None if c is None else torch.where(m, c_new, c)
            y[t] = torch.where(m, h_new, torch.zeros_like(h_new))
        if need_ws and saved is not None:
            ws[t] = saved
    c_n = empty(y) if c is None else c.to(out_dtype)
    return y.to(out_dtype), h.to(out_dtype), c_n, ws


def _step_backward(cell, dh, dc, saved, h_prev, c_prev, h_out, w_hr):
    """Gradients of one step: (dgi, dgh, dh_prev_direct, dc_prev, d_hr) — see ``backward``."""
    if cell in ("rnn_tanh", "rnn_relu"):
        dpre = dh * (1 - h_out * h_out) if cell == "rnn_tanh" else dh * (h_out > 0).to(dh.dtype)
        return dpre, dpre, None, None, None
    if cell == "gru":
        r, z, n, hn = saved.chunk(4, -1)
        dn = dh * (1 - z) * (1 - n * n)
        dz = dh * (h_prev - n) * z * (1 - z)
        dr = dn * hn * r * (1 - r)
        return torch.cat([dr, dz, dn], -1), torch.cat([dr, dz, dn * r], -1), dh * z, None, None
    i, f, g, o, c = saved.chunk(5, -1)
    tc = torch.tanh(c)
    d_hr = None
    if w_hr is not None:
        d_hr = dh  # gradient w.r.t. the projected output; w.r.t. o·tanh(c) it is dh·W_hr
        dh = dh.mm(w_hr)
    dc = dc + dh * o * (1 - tc * tc)
    d = torch.cat(
        [dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g), dh * tc * o * (1 - o)], -1
    )
    return d, d, None, dc * f, d_hr


def backward(cell, grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, y, ws):
    T, B = y.shape[:2]
    out_dtype = y.dtype
    acc = acc_dtype(out_dtype)
    w_hh = w_hh.to(acc)
    w_hr = None if w_hr is None else w_hr.to(acc)
    y_acc = y.to(acc)
    h_prev_all = common.previous_states(y_acc, h0.to(acc), lengths, reverse)
    c_prev_all = None
    if cell == "lstm":
        c_prev_all = common.previous_states(ws[..., 4 * (ws.shape[-1] // 5) :], c0.to(acc), lengths, reverse)
    mask = valid_mask(lengths, T, B, y.device)
    dh = grad_hn.to(acc).clone()
    dc = None if cell != "lstm" else grad_cn.to(acc).clone()
    GH = w_hh.shape[0]
    dgi = y_acc.new_zeros((T, B, GH))
    dgh_all = y_acc.new_zeros((T, B, GH))
    d_hr_all = None if w_hr is None else y_acc.new_zeros(y.shape)
    for t in reversed(time_steps(T, reverse)):
        m = None if mask is None else mask[t]
        gy = grad_y[t].to(acc)
        dh_t = dh + (gy if m is None else torch.where(m, gy, torch.zeros_like(gy)))
        saved = ws[t] if ws.numel() else None
        d_gi, d_gh, direct, dc_prev, d_hr = _step_backward(
            cell,
            dh_t,
            dc,
            saved,
            h_prev_all[t],
            None if c_prev_all is None else c_prev_all[t],
            y_acc[t],
            w_hr,
        )
        dh_prev = d_gh.mm(w_hh)
        if direct is not None:
            dh_prev = dh_prev + direct
        if m is None:
            dgi[t], dgh_all[t], dh = d_gi, d_gh, dh_prev
            dc = dc_prev if dc is not None else None
            if d_hr is not None:
                d_hr_all[t] = d_hr
        else:
            dgi[t] = torch.where(m, d_gi, torch.zeros_like(d_gi))
            dgh_all[t] = torch.where(m, d_gh, torch.zeros_like(d_gh))
            dh = torch.where(m, dh_prev, dh)
            if dc is not None:
                dc = torch.where(m, dc_prev, dc)
            if d_hr is not None:
                d_hr_all[t] = torch.where(m, d_hr, torch.zeros_like(d_hr))
    dw_hh, db_hh = common.weight_grads(dgh_all, h_prev_all, b_hh is not None)
    dw_hr = empty(y)
    if w_hr is not None:
        # h = W_hr·(o·tanh c): dW_hr = Σ_t dhᵀ·(o·tanh c), one GEMM after the loop.
        H = ws.shape[-1] // 5
        u = ws[..., 3 * H : 4 * H] * torch.tanh(ws[..., 4 * H :])
        dw_hr = d_hr_all.reshape(-1, d_hr_all.shape[-1]).t().mm(u.reshape(-1, H)).to(out_dtype)
    dc0 = empty(y) if dc is None else dc.to(out_dtype)
    return (
        dgi.to(out_dtype),
        dh.to(out_dtype),
        dc0,
        dw_hh.to(out_dtype),
        db_hh.to(out_dtype),
        dw_hr,
    )
