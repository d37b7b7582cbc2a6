"""The fused SPINN reduce as custom ops ``rnnfast::tree_lstm_reduce_fwd`` / ``_bwd`` + autograd."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnfast import backends
from rnnfast.ops.recurrence.common import acc_dtype


@torch.library.custom_op("rnnfast::tree_lstm_reduce_fwd", mutates_args=())
def tree_lstm_reduce_fwd(
    h_l: Tensor,
    c_l: Tensor,
    h_r: Tensor,
    c_r: Tensor,
    w_l: Tensor,
    b_l: Tensor | None,
    w_r: Tensor,
    h_track: Tensor | None,
    w_t: Tensor | None,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    impl = backends.implementation(backend, "tree_lstm_reduce")
    return tuple(impl.forward(h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t))


@tree_lstm_reduce_fwd.register_fake
def _(h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t, backend):
    R = h_l.shape[0]
    return (
        h_l.new_empty(c_l.shape),
        h_l.new_empty(c_l.shape),
        h_l.new_empty((R, w_l.shape[0]), dtype=acc_dtype(h_l.dtype)),
    )


@torch.library.custom_op("rnnfast::tree_lstm_reduce_bwd", mutates_args=())
def tree_lstm_reduce_bwd(
    grad_h: Tensor,
    grad_c: Tensor,
    h_l: Tensor,
    c_l: Tensor,
    h_r: Tensor,
    c_r: Tensor,
    w_l: Tensor,
    b_l: Tensor | None,
    w_r: Tensor,
    h_track: Tensor | None,
    w_t: Tensor | None,
    c: Tensor,
    ws: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    impl = backends.implementation(backend, "tree_lstm_reduce")
    return tuple(impl.backward(grad_h, grad_c, h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t, c, ws))


@tree_lstm_reduce_bwd.register_fake
def _(grad_h, grad_c, h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t, c, ws, backend):
    def like(t):
        return h_l.new_empty((0,)) if t is None else h_l.new_empty(t.shape)

    return (
        like(h_l),
        like(c_l),
        like(h_r),
        like(c_r),
        like(w_l),
        like(b_l),
        like(w_r),
        like(h_track),
        like(w_t),
    )


class TreeLSTMReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t, backend):
        h, c, ws = torch.ops.rnnfast.tree_lstm_reduce_fwd(
            h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t, backend
        )
        ctx.save_for_backward(h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t, c, ws)
        ctx.backend = backend
        return h, c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h, grad_c):
        h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t, c, ws = ctx.saved_tensors
        grads = torch.ops.rnnfast.tree_lstm_reduce_bwd(
            grad_h.contiguous(),
            grad_c.contiguous(),
            h_l,
            c_l,
            h_r,
            c_r,
            w_l,
            b_l,
            w_r,
            h_track,
            w_t,
            c,
            ws,
            ctx.backend,
        )
        dh_l, dc_l, dh_r, dc_r, dw_l, db_l, dw_r, dh_t, dw_t = grads
        return (
            dh_l,
            dc_l,
            dh_r,
            dc_r,
            dw_l,
            db_l if b_l is not None else None,
            dw_r,
            dh_t if h_track is not None else None,
            dw_t if w_t is not None else None,
            None,
        )


def tree_lstm_reduce(h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t, backend):
    tensors = (h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return TreeLSTMReduce.apply(h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t, backend)
    h, c, _ = torch.ops.rnnfast.tree_lstm_reduce_fwd(h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t, backend)
    return h, c
