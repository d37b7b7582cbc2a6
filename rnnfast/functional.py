"""Functional API: the sequential part of one RNN layer and direction, and the tree-LSTM ops.

Dimension letters: T time, B batch, H hidden, G gates (rnn 1, gru 3, lstm 4), P LSTM projection,
R rows of a tree reduce, HT tracker hidden.

The input projection ``gi = x·W_ihᵀ + b_ih`` is not part of these ops: compute it for all steps at once
(one GEMM, ``F.linear``) and pass it in, so the kernels see only what is truly sequential.

Every function takes ``backend="auto"`` (or ``RNNFAST_BACKEND``); see :mod:`rnnfast.backends`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnfast import backends
from rnnfast._guards import check_tracer
from rnnfast.ops.recurrence import common
from rnnfast.ops.recurrence.function import recurrence as _recurrence
from rnnfast.ops.tree_lstm.function import tree_lstm as _tree_lstm
from rnnfast.ops.tree_lstm_reduce.function import tree_lstm_reduce as _tree_lstm_reduce

__all__ = ["rnn", "gru", "lstm", "tree_lstm", "tree_lstm_reduce", "spinn_encode"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(name: str, t, shape: tuple[int | None, ...], ref: Tensor | None = None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected a floating dtype {_FLOATS}, got {t.dtype}")
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    if ref is not None:
        if t.device != ref.device:
            raise RuntimeError(f"{name}: expected a tensor on {ref.device} like the input, got {t.device}")
        if t.dtype != ref.dtype:
            raise TypeError(f"{name}: expected dtype {ref.dtype} like the input, got {t.dtype}")


def check_lengths(lengths, T: int, B: int, device: torch.device) -> Tensor | None:
    """Validate ``lengths`` (B,) integers in [0, T]; returns them as int64 on ``device``."""
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"lengths: expected an integer tensor, got {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths: expected shape ({B},) (one per batch row), got {tuple(lengths.shape)}")
    # A value check reads the values on the host, which a compiled graph cannot do; there the check is
    # skipped and out-of-range values act as clamped to [0, T] (every backend masks with t < lengths[b]).
    if not torch.compiler.is_compiling():
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > T:
            raise ValueError(f"lengths: expected values in [0, T={T}], got min {lo}, max {hi}")
    return lengths.to(device=device, dtype=torch.int64, non_blocking=True)


def _recurrence_call(cell, gi, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, backend):
    check_tracer("rnnfast.functional." + ("rnn" if cell.startswith("rnn") else cell))
    G = common.GATES[cell]
    _check_tensor("gi", gi, (None, None, None))
    T, B, GH = gi.shape
    if T == 0:
        raise ValueError("gi: expected at least one time step (T >= 1), got T=0")
    if GH % G:
        raise ValueError(f"gi: expected last dimension {G}·H for {cell}, got {GH}")
    H = GH // G
    N = w_hr.shape[0] if w_hr is not None else H
    _check_tensor("h0", h0, (B, N), gi)
    if cell == "lstm":
        _check_tensor("c0", c0, (B, H), gi)
    _check_tensor("w_hh", w_hh, (GH, N), gi)
    if b_hh is not None:
        _check_tensor("b_hh", b_hh, (GH,), gi)
    if w_hr is not None:
        _check_tensor("w_hr", w_hr, (None, H), gi)
    lengths = check_lengths(lengths, T, B, gi.device)
    sizes = {
        "cell": cell,
        "T": T,
        "B": B,
        "H": H,
        "P": 0 if w_hr is None else N,
        "lengths": lengths is not None,
        "reverse": bool(reverse),
    }
    name = backends.resolve("recurrence", gi.device, gi.dtype, sizes, backend)
    return _recurrence(cell, gi, h0, c0, w_hh, b_hh, w_hr, lengths, bool(reverse), name)


def rnn(
    gi: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
    nonlinearity: str = "tanh",
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Elman RNN recurrence ``h_t = act(gi_t + W_hh·h_{t-1} + b_hh)``.

    gi (T, B, H), h0 (B, H), w_hh (H, H), b_hh (H,), lengths (B,) -> y (T, B, H), h_n (B, H).
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
    y, h_n, _ = _recurrence_call(
        "rnn_" + nonlinearity, gi, h0, None, w_hh, b_hh, None, lengths, reverse, backend
    )
    return y, h_n


def gru(
    gi: Tensor,
    h0: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """GRU recurrence as torch.nn.GRU (gates r, z, n; ``n = tanh(gi_n + r·(W_hn·h + b_hn))``).

    gi (T, B, 3H), h0 (B, H), w_hh (3H, H), b_hh (3H,), lengths (B,) -> y (T, B, H), h_n (B, H).
    With ``lengths``, row b is valid for t < lengths[b]: y is 0 beyond and h_n is its last valid state.
    """
    y, h_n, _ = _recurrence_call("gru", gi, h0, None, w_hh, b_hh, None, lengths, reverse, backend)
    return y, h_n


def lstm(
    gi: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None = None,
    w_hr: Tensor | None = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """LSTM recurrence as torch.nn.LSTM (gates i, f, g, o; optional projection ``w_hr``).

    gi (T, B, 4H), h0 (B, P|H), c0 (B, H), w_hh (4H, P|H), b_hh (4H,), w_hr (P, H)
    -> y (T, B, P|H), h_n (B, P|H), c_n (B, H).
    """
    return _recurrence_call("lstm", gi, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, backend)


def tree_lstm(lstm_in: Tensor, c_l: Tensor, c_r: Tensor, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Tree-LSTM composition: lstm_in (R, 5H) = [a, i, f1, f2, o], c_l, c_r (R, H) -> h, c (R, H)."""
    check_tracer("rnnfast.functional.tree_lstm")
    _check_tensor("lstm_in", lstm_in, (None, None))
    R, H5 = lstm_in.shape
    if H5 % 5:
        raise ValueError(f"lstm_in: expected last dimension 5·H, got {H5}")
    _check_tensor("c_l", c_l, (R, H5 // 5), lstm_in)
    _check_tensor("c_r", c_r, (R, H5 // 5), lstm_in)
    name = backends.resolve("tree_lstm", lstm_in.device, lstm_in.dtype, {"R": R, "H": H5 // 5}, backend)
    return _tree_lstm(lstm_in, c_l, c_r, name)


def tree_lstm_reduce(
    h_l: Tensor,
    c_l: Tensor,
    h_r: Tensor,
    c_r: Tensor,
    w_l: Tensor,
    b_l: Tensor | None,
    w_r: Tensor,
    h_track: Tensor | None = None,
    w_t: Tensor | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Fused SPINN reduce: ``lstm_in = h_l·W_lᵀ + b_l + h_r·W_rᵀ [+ h_track·W_tᵀ]`` then the tree-LSTM.

    h_l, c_l, h_r, c_r (R, H); w_l, w_r (5H, H); b_l (5H,); h_track (R, HT); w_t (5H, HT) -> h, c (R, H).
    """
    check_tracer("rnnfast.functional.tree_lstm_reduce")
    _check_tensor("h_l", h_l, (None, None))
    R, H = h_l.shape
    for name, t in (("c_l", c_l), ("h_r", h_r), ("c_r", c_r)):
        _check_tensor(name, t, (R, H), h_l)
    _check_tensor("w_l", w_l, (5 * H, H), h_l)
    _check_tensor("w_r", w_r, (5 * H, H), h_l)
    if b_l is not None:
        _check_tensor("b_l", b_l, (5 * H,), h_l)
    if (h_track is None) != (w_t is None):
        raise ValueError("h_track and w_t: expected both or neither, got only one")
    HT = 0
    if h_track is not None:
        _check_tensor("h_track", h_track, (R, None), h_l)
        HT = h_track.shape[1]
        _check_tensor("w_t", w_t, (5 * H, HT), h_l)
    sizes = {"R": R, "H": H, "HT": HT}
    name = backends.resolve("tree_lstm_reduce", h_l.device, h_l.dtype, sizes, backend)
    return _tree_lstm_reduce(h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t, name)


# At the end: the SPINN encoder builds on the functions above (importing it first would be a cycle).
from rnnfast.ops.spinn.encoder import spinn_encode  # noqa: E402
