"""What every backend of the recurrence op shares: cells, saved-activation layout, step order.

Dimensions: T time, B batch, H hidden, G gates (rnn 1, gru 3, lstm 4), P projection (LSTM ``proj_size``;
the state ``h`` and the outputs ``y`` have P columns when P > 0, else H).

Op contract (one layer, one direction), identical for every backend:

forward(cell, gi, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, need_ws) -> (y, h_n, c_n, ws)
    gi (T, B, G·H) input projection incl. b_ih; h0 (B, P|H); c0 (B, H) for lstm else None;
    w_hh (G·H, P|H); b_hh (G·H) or None; w_hr (P, H) or None; lengths (B,) int64 on gi's device or None.
    y (T, B, P|H) — zero where t >= lengths[b]; h_n (B, P|H); c_n (B, H) for lstm else empty;
    ws: the saved activations (layout below), or an empty tensor when need_ws is False.

backward(cell, grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, y, ws)
    -> (dgi, dh0, dc0, dw_hh, db_hh, dw_hr); dc0, db_hh, dw_hr are empty tensors where not applicable.

Saved activations ``ws`` (T, B, S·H) in the accumulation dtype (float32 for half/bfloat16 inputs):
    rnn_tanh, rnn_relu: S = 0 (the outputs y hold all that backward needs)
    gru:  S = 4: r, z, n, hn = W_hn·h + b_hn   (torch.nn.GRU's gate order r, z, n)
    lstm: S = 5: i, f, g, o (after their nonlinearities), c_t
Values at t >= lengths[b] are unspecified; backward ignores them.

``lengths`` semantics: sequence b is valid for t < lengths[b]; beyond, outputs are 0 and the state is
frozen, so h_n[b] is the state after the last valid step. With ``reverse``, time runs from T-1 down to 0
and sequence b therefore starts at t = lengths[b] - 1.
"""

from __future__ import annotations

import torch

CELLS = ("rnn_tanh", "rnn_relu", "gru", "lstm")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}
SAVED = {"rnn_tanh": 0, "rnn_relu": 0, "gru": 4, "lstm": 5}
# Integer codes of the cells in the compiled kernels' schemas.
CELL_CODE = {name: i for i, name in enumerate(CELLS)}


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the arithmetic and of the saved activations for inputs of ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def as_dtype(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``t`` in ``dtype``; the tensor itself (or None) when it already is: ``Tensor.to`` costs ~1 µs even
    then, and a one-step module call takes about a dozen."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def empty(like: torch.Tensor) -> torch.Tensor:
    """The placeholder returned for an output that does not apply (e.g. c_n of a GRU)."""
    return like.new_empty((0,))


def ws_shape(cell: str, T: int, B: int, H: int, need_ws: bool) -> tuple[int, ...]:
    return (T, B, SAVED[cell] * H) if need_ws else (0,)


def time_steps(T: int, reverse: bool) -> range:
    """Time indices in processing order."""
    return range(T - 1, -1, -1) if reverse else range(T)


def valid_mask(lengths: torch.Tensor | None, T: int, B: int, device: torch.device) -> torch.Tensor | None:
    """(T, B, 1) bool mask of valid steps, or None when every step is valid."""
    if lengths is None:
        return None
    t = torch.arange(T, device=device).unsqueeze(1)
    return (t < lengths.to(device).unsqueeze(0)).unsqueeze(-1)


def previous_states(
    y: torch.Tensor, h0: torch.Tensor, lengths: torch.Tensor | None, reverse: bool
) -> torch.Tensor:
    """(T, B, N) state each valid step started from, rebuilt from the outputs y (T, B, N) and h0 (B, N).

    Step t starts from y[t-1] (y[t+1] with ``reverse``) when that step was valid, else from h0.
    Rows at invalid steps are h0 (never used: their gradients are zero). The same rebuilds the LSTM cell
    states from the saved c_t and c0.
    """
    T = y.shape[0]
    if T == 0:
        return y
    h0 = h0.unsqueeze(0)
    # Built from arange, not by setting an element: no host-to-device copy (CUDA graph capture).
    t = torch.arange(T, device=y.device).view(T, 1, 1)
    if reverse:
        shifted = torch.cat([y[1:], h0], 0)
        first = t == T - 1 if lengths is None else (t + 1) >= lengths.to(y.device).view(1, -1, 1)
    else:
        shifted = torch.cat([h0, y[:-1]], 0)
        first = t == 0
    return torch.where(first, h0.to(y.dtype), shifted)


def weight_grads(
    dgh: torch.Tensor, h_prev: torch.Tensor, has_bias: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """dw_hh = Σ_t dghᵀ·h_prev, db_hh = Σ_t dgh: one GEMM and one reduction after the time loop.

    dgh (T, B, G·H) are the gradients w.r.t. ``h·W_hhᵀ + b_hh``, zero at invalid steps; h_prev (T, B, N).
    """
    gh = dgh.shape[-1]
    dgh2 = dgh.reshape(-1, gh)
    dw = dgh2.t().mm(h_prev.reshape(-1, h_prev.shape[-1]).to(dgh.dtype))
    db = dgh2.sum(0) if has_bias else dgh.new_empty((0,))
    return dw, db
