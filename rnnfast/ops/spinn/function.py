"""The SPINN encoder's C++ CPU loop as custom ops ``rnnfast::spinn_fwd`` / ``spinn_bwd`` + autograd.

Dimensions: T transitions, B batch, N leaves, H hidden, HT tracker hidden, RM = B·max(0, min(N − 1,
⌊(T − 1)/2⌋)) the most reduces a batch can hold, P = (1 + N)·B + RM pool rows (null, leaves, one row per
possible reduce).

The ops take the transitions (T, B) int64 on the host and plan the loop themselves (csrc/cpu/spinn.cpp),
so every output shape follows from the input shapes: ``torch.compile`` traces them through the fake
kernels below, forward and backward, with no graph break. The saved activations are fixed-size:
the packed reduce rows are RM long, rows past the batch's ΣR reduces are zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnfast import _ext


def max_reduce_rows(T: int, B: int, N: int) -> int:
    """Most reduces a batch of T steps over N leaves can hold: each needs one shift more than the
    reduces before it, so at most N − 1 and ⌊(T − 1)/2⌋ per example."""
    return B * max(0, min(N - 1, (T - 1) // 2)) if T > 0 else 0


@torch.library.custom_op("rnnfast::spinn_fwd", mutates_args=(), device_types="cpu")
def spinn_fwd(
    buffers: Tensor,
    null: Tensor,
    transitions: Tensor,
    w_l: Tensor,
    b_l: Tensor | None,
    w_r: Tensor,
    w_t: Tensor | None,
    w_ih: Tensor | None,
    w_hh: Tensor | None,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(h, c (B, H), hs (T, B, HT), ph, pc (P, H), gates (RM, 5H), acts (T, B, 4HT), cs (T, B, HT));
    without a tracker hs, acts and cs are empty (0,)."""
    _ext.ensure_loaded()
    args = (buffers, null, transitions, w_l, b_l, w_r, w_t, w_ih, w_hh, b_ih, b_hh)
    return torch.ops.rnnfast_C.spinn_fwd(*args)


@spinn_fwd.register_fake
def _(buffers, null, transitions, w_l, b_l, w_r, w_t, w_ih, w_hh, b_ih, b_hh):
    B, N, H2 = buffers.shape
    H, T = H2 // 2, transitions.shape[0]
    HT = w_hh.shape[1] if w_hh is not None else 0
    RM = max_reduce_rows(T, B, N)
    P = (1 + N) * B + RM
    new = buffers.new_empty
    hs, acts, cs = (new((T, B, HT)), new((T, B, 4 * HT)), new((T, B, HT)))
    if w_hh is None:
        hs, acts, cs = new((0,)), new((0,)), new((0,))
    return new((B, H)), new((B, H)), hs, new((P, H)), new((P, H)), new((RM, 5 * H)), acts, cs


@torch.library.custom_op("rnnfast::spinn_bwd", mutates_args=(), device_types="cpu")
def spinn_bwd(
    grad_h: Tensor,
    grad_c: Tensor,
    grad_hs: Tensor | None,
    transitions: Tensor,
    ph: Tensor,
    pc: Tensor,
    gates: Tensor,
    acts: Tensor,
    cs: Tensor,
    hs: Tensor,
    w_l: Tensor,
    has_b_l: bool,
    w_r: Tensor,
    w_t: Tensor | None,
    w_ih: Tensor | None,
    w_hh: Tensor | None,
    has_b_ih: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(d_buffers (B, N, 2H), d_null (B, 2H), dw_l, db_l, dw_r, dw_t, dw_ih, dw_hh, db_ih, db_hh); the
    gradients of absent parameters are empty (0,)."""
    _ext.ensure_loaded()
    return torch.ops.rnnfast_C.spinn_bwd(
        grad_h, grad_c, grad_hs, transitions, ph, pc, gates, acts, cs, hs, w_l, has_b_l, w_r, w_t,
        w_ih, w_hh, has_b_ih,
    )  # fmt: skip


@spinn_bwd.register_fake
def _(grad_h, grad_c, grad_hs, transitions, ph, pc, gates, acts, cs, hs, w_l, has_b_l, w_r, w_t,
      w_ih, w_hh, has_b_ih):  # fmt: skip
    B, H = grad_h.shape
    N = (ph.shape[0] - gates.shape[0]) // B - 1
    new = grad_h.new_empty
    tracker = w_ih is not None

    def like(t, present=True):
        return new(t.shape) if t is not None and present else new((0,))

    HT = w_hh.shape[1] if tracker else 0
    return (
        new((B, N, 2 * H)),
        new((B, 2 * H)),
        new(w_l.shape),
        new((5 * H,)) if has_b_l else new((0,)),
        new(w_r.shape),
        like(w_t),
        like(w_ih),
        like(w_hh),
        new((4 * HT,)) if tracker and has_b_ih else new((0,)),
        new((4 * HT,)) if tracker and has_b_ih else new((0,)),
    )


class SpinnEncodeCpu(torch.autograd.Function):
    """Autograd of the C++ loop: the root (h, c) and the tracker's h at every step (for the transition
    logits, computed outside) are differentiable; the rest of the forward's outputs is saved."""

    @staticmethod
    def forward(ctx, buffers, null, transitions, w_l, b_l, w_r, w_t, w_ih, w_hh, b_ih, b_hh):
        h, c, hs, ph, pc, gates, acts, cs = torch.ops.rnnfast.spinn_fwd(
            buffers, null, transitions, w_l, b_l, w_r, w_t, w_ih, w_hh, b_ih, b_hh
        )
        ctx.save_for_backward(transitions, w_l, w_r, w_t, w_ih, w_hh, ph, pc, gates, acts, cs, hs)
        ctx.flags = (b_l is not None, b_ih is not None)
        if w_ih is None:
            ctx.mark_non_differentiable(hs)
        return h, c, hs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h, grad_c, grad_hs):
        transitions, w_l, w_r, w_t, w_ih, w_hh, ph, pc, gates, acts, cs, hs = ctx.saved_tensors
        has_b_l, has_b_ih = ctx.flags
        tracker = w_ih is not None
        grads = torch.ops.rnnfast.spinn_bwd(
            grad_h.contiguous(), grad_c.contiguous(),
            grad_hs.contiguous() if tracker and grad_hs is not None else None,
            transitions, ph, pc, gates, acts, cs, hs, w_l, has_b_l, w_r, w_t, w_ih, w_hh, has_b_ih,
        )  # fmt: skip
        d_buffers, d_null, dw_l, db_l, dw_r, dw_t, dw_ih, dw_hh, db_ih, db_hh = grads
        return (
            d_buffers,
            d_null,
            None,
            dw_l,
            db_l if has_b_l else None,
            dw_r,
            dw_t if tracker else None,
            dw_ih if tracker else None,
            dw_hh if tracker else None,
            db_ih if tracker and has_b_ih else None,
            db_hh if tracker and has_b_ih else None,
        )


def spinn_cpu(buffers, null, transitions, w_l, b_l, w_r, w_t, w_ih, w_hh, b_ih, b_hh):
    """Root (h, c) (B, H) each and the tracker's h (T, B, HT) (empty without a tracker), through autograd
    when a gradient is needed, else the forward op alone."""
    tensors = (buffers, null, w_l, b_l, w_r, w_t, w_ih, w_hh, b_ih, b_hh)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return SpinnEncodeCpu.apply(buffers, null, transitions, w_l, b_l, w_r, w_t, w_ih, w_hh, b_ih, b_hh)
    h, c, hs, *_ = torch.ops.rnnfast.spinn_fwd(
        buffers, null, transitions, w_l, b_l, w_r, w_t, w_ih, w_hh, b_ih, b_hh
    )
    return h, c, hs
