"""Tree-LSTM composition as custom ops ``rnnfast::tree_lstm_fwd`` / ``tree_lstm_bwd`` + autograd."""

from __future__ import annotations

import torch
from torch import Tensor

from rnnfast import backends


@torch.library.custom_op("rnnfast::tree_lstm_fwd", mutates_args=())
def tree_lstm_fwd(lstm_in: Tensor, c_l: Tensor, c_r: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    return tuple(backends.implementation(backend, "tree_lstm").forward(lstm_in, c_l, c_r))


@tree_lstm_fwd.register_fake
def _(lstm_in, c_l, c_r, backend):
    return lstm_in.new_empty(c_l.shape), lstm_in.new_empty(c_l.shape)


@torch.library.custom_op("rnnfast::tree_lstm_bwd", mutates_args=())
def tree_lstm_bwd(
    grad_h: Tensor, grad_c: Tensor, lstm_in: Tensor, c_l: Tensor, c_r: Tensor, c: Tensor, backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    impl = backends.implementation(backend, "tree_lstm")
    return tuple(impl.backward(grad_h, grad_c, lstm_in, c_l, c_r, c))


@tree_lstm_bwd.register_fake
def _(grad_h, grad_c, lstm_in, c_l, c_r, c, backend):
    return lstm_in.new_empty(lstm_in.shape), lstm_in.new_empty(c_l.shape), lstm_in.new_empty(c_r.shape)


class TreeLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lstm_in, c_l, c_r, backend):
        h, c = torch.ops.rnnfast.tree_lstm_fwd(lstm_in, c_l, c_r, backend)
        ctx.save_for_backward(lstm_in, c_l, c_r, c)
        ctx.backend = backend
        return h, c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h, grad_c):
        lstm_in, c_l, c_r, c = ctx.saved_tensors
        d, dc_l, dc_r = torch.ops.rnnfast.tree_lstm_bwd(
            grad_h.contiguous(), grad_c.contiguous(), lstm_in, c_l, c_r, c, ctx.backend
        )
        return d, dc_l, dc_r, None


def tree_lstm(lstm_in, c_l, c_r, backend):
    if torch.is_grad_enabled() and any(t.requires_grad for t in (lstm_in, c_l, c_r)):
        return TreeLSTM.apply(lstm_in, c_l, c_r, backend)
    return torch.ops.rnnfast.tree_lstm_fwd(lstm_in, c_l, c_r, backend)
