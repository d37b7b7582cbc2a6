"""The recurrence as registered custom ops (``rnnfast::recurrence_fwd`` / ``recurrence_bwd``) and the
autograd Function that calls them.

The custom ops are opaque to ``torch.compile`` (fake kernels give it the output shapes); their bodies
dispatch to the backend named by the ``backend`` argument, resolved beforehand in ``rnnfast.functional``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnfast import backends
from rnnfast.ops.recurrence import common


def _unalias(outs, inputs):
    # A custom op's outputs may not alias its inputs (e.g. a backend returning h0 itself).
    ptrs = {t.untyped_storage().data_ptr() for t in inputs if t is not None and t.numel()}
    return tuple(o.clone() if o.numel() and o.untyped_storage().data_ptr() in ptrs else o for o in outs)


_PLAIN = (Tensor, torch.nn.Parameter)


def _eager(tensors) -> bool:
    """Whether a call can skip the custom-op dispatch and run the op's body directly: plain tensors in
    eager mode. Under torch.compile, export or any tensor subclass (fake, functional, proxy tensors) the
    registered op runs, so tracers see it as one node. The dispatch costs ~25 µs a call, which is the
    whole cost of a short sequence (a GRU step at B=1, H=128 is ~3 µs)."""
    return not torch.compiler.is_compiling() and all(t is None or type(t) in _PLAIN for t in tensors)


def _forward(gi, h0, c0, w_hh, b_hh, w_hr, lengths, cell, reverse, need_ws, backend):
    impl = backends.implementation(backend, "recurrence")
    outs = impl.forward(cell, gi, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, need_ws)
    if getattr(impl, "FRESH_OUTPUTS", False):  # ~9 µs saved, a third of a one-step call's op time
        return outs
    return _unalias(outs, (gi, h0, c0, w_hh, b_hh, w_hr))


def _backward(grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr, lengths, y, ws, cell, reverse, backend):
    impl = backends.implementation(backend, "recurrence")
    outs = impl.backward(cell, grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, y, ws)
    if getattr(impl, "FRESH_OUTPUTS", False):
        return outs
    return _unalias(outs, (grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr, y, ws))


@torch.library.custom_op("rnnfast::recurrence_fwd", mutates_args=())
def recurrence_fwd(
    gi: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    w_hh: Tensor,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    lengths: Tensor | None,
    cell: str,
    reverse: bool,
    need_ws: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _forward(gi, h0, c0, w_hh, b_hh, w_hr, lengths, cell, reverse, need_ws, backend)


@recurrence_fwd.register_fake
def _(gi, h0, c0, w_hh, b_hh, w_hr, lengths, cell, reverse, need_ws, backend):
    T, B = gi.shape[0], gi.shape[1]
    H = w_hh.shape[0] // common.GATES[cell]
    y = gi.new_empty((T, B, h0.shape[-1]))
    h_n = gi.new_empty(h0.shape)
    c_n = gi.new_empty(c0.shape) if cell == "lstm" else gi.new_empty((0,))
    ws = gi.new_empty(common.ws_shape(cell, T, B, H, need_ws), dtype=common.acc_dtype(gi.dtype))
    return y, h_n, c_n, ws


@torch.library.custom_op("rnnfast::recurrence_bwd", mutates_args=())
def recurrence_bwd(
    grad_y: Tensor,
    grad_hn: Tensor,
    grad_cn: Tensor | None,
    h0: Tensor,
    c0: Tensor | None,
    w_hh: Tensor,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    lengths: Tensor | None,
    y: Tensor,
    ws: Tensor,
    cell: str,
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _backward(
        grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr, lengths, y, ws, cell, reverse, backend
    )


@recurrence_bwd.register_fake
def _(grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr, lengths, y, ws, cell, reverse, backend):
    T, B = y.shape[0], y.shape[1]

    def like(t):
        return y.new_empty((0,)) if t is None else y.new_empty(t.shape)

    return (
        y.new_empty((T, B, w_hh.shape[0])),
        y.new_empty(h0.shape),
        like(c0),
        y.new_empty(w_hh.shape),
        like(b_hh),
        like(w_hr),
    )


class Recurrence(torch.autograd.Function):
    """Autograd of one recurrence layer/direction; inputs as in ``common.py``."""

    @staticmethod
    def forward(ctx, gi, h0, c0, w_hh, b_hh, w_hr, lengths, cell, reverse, backend):
        op = _forward if _eager((gi, h0, c0, w_hh, b_hh, w_hr, lengths)) else torch.ops.rnnfast.recurrence_fwd
        y, h_n, c_n, ws = op(gi, h0, c0, w_hh, b_hh, w_hr, lengths, cell, reverse, True, backend)
        ctx.save_for_backward(h0, c0, w_hh, b_hh, w_hr, lengths, y, ws)
        ctx.cell, ctx.reverse, ctx.backend = cell, reverse, backend
        if cell != "lstm":
            ctx.mark_non_differentiable(c_n)
        return y, h_n, c_n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_hn, grad_cn):
        h0, c0, w_hh, b_hh, w_hr, lengths, y, ws = ctx.saved_tensors
        args = (grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr, lengths, y, ws)
        op = _backward if _eager(args) else torch.ops.rnnfast.recurrence_bwd
        dgi, dh0, dc0, dw_hh, db_hh, dw_hr = op(
            grad_y.contiguous(),
            grad_hn.contiguous(),
            grad_cn.contiguous() if ctx.cell == "lstm" else None,
            h0,
            c0,
            w_hh,
            b_hh,
            w_hr,
            lengths,
            y,
            ws,
            ctx.cell,
            ctx.reverse,
            ctx.backend,
        )
        return (
            dgi,
            dh0,
            dc0 if c0 is not None else None,
            dw_hh,
            db_hh if b_hh is not None else None,
            dw_hr if w_hr is not None else None,
            None,
            None,
            None,
            None,
        )


def recurrence(cell, gi, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, backend):
    """Run the op, through autograd when a gradient is needed, else the forward alone (nothing saved)."""
    tensors = (gi, h0, c0, w_hh, b_hh, w_hr)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return Recurrence.apply(gi, h0, c0, w_hh, b_hh, w_hr, lengths, cell, reverse, backend)
    op = _forward if _eager((gi, h0, c0, w_hh, b_hh, w_hr, lengths)) else torch.ops.rnnfast.recurrence_fwd
    y, h_n, c_n, _ = op(gi, h0, c0, w_hh, b_hh, w_hr, lengths, cell, reverse, False, backend)
    return y, h_n, c_n
