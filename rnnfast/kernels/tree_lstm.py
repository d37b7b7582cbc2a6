"""Triton kernels of the tree-LSTM composition and of the fused SPINN reduce.

Dimensions: R rows (nodes reduced at once), H hidden, HT tracker hidden (0 without a tracker).
    lstm_in (R, 5H) = chunks a, i, f1, f2, o
    c = tanh(a)·σ(i) + σ(f1)·c_l + σ(f2)·c_r;  h = σ(o)·tanh(c)

Kernels (grid: one program per BLOCK_R × BLOCK_H tile of the (R, H) outputs):
- ``tree_lstm_fwd_kernel``: the composition, pointwise.
- ``tree_lstm_bwd_kernel``: its gate gradients, pointwise: d lstm_in (R, 5H), dc_l, dc_r.
- ``tree_lstm_reduce_fwd_kernel``: lstm_in = h_l·W_lᵀ + b_l + h_r·W_rᵀ [+ h_track·W_tᵀ] with ``tl.dot``
  over the three K segments through separate pointers (nothing concatenated in memory), the five gate
  tiles of a program's H-tile side by side, then the composition as the epilogue; writes h, c and
  ws = lstm_in in the accumulation dtype (the backward's input).
The reduce's backward is ``tree_lstm_bwd_kernel`` on ws followed by the weight/input GEMMs.

fp16/bf16 are upcast to fp32 for the pointwise math; dots accumulate in fp32 (fp64 for fp64 inputs
under the interpreter).
"""

from __future__ import annotations

import triton
import triton.language as tl

from rnnfast.kernels.recurrence import sigmoid, tanh


@triton.jit
def _chunk(ptr, rows, cols, mask, H, k: tl.constexpr):
    """Chunk k (of 5) of a (R, 5H) row-major matrix at (rows, cols), upcast to fp32 (or kept fp64)."""
    x = tl.load(ptr + rows[:, None] * (5 * H) + k * H + cols[None, :], mask=mask, other=0.0)
    if x.dtype == tl.float64:
        return x
    return x.to(tl.float32)


@triton.jit
def _rh(ptr, rows, cols, mask, H):
    """An (R, H) row-major tile, upcast to fp32 (or kept fp64)."""
    x = tl.load(ptr + rows[:, None] * H + cols[None, :], mask=mask, other=0.0)
    if x.dtype == tl.float64:
        return x
    return x.to(tl.float32)


@triton.jit
def _compose(a, i, f1, f2, o, c_l, c_r):
    c = tanh(a) * sigmoid(i) + sigmoid(f1) * c_l + sigmoid(f2) * c_r
    return sigmoid(o) * tanh(c), c


@triton.jit
def tree_lstm_fwd_kernel(
    x_ptr,  # (R, 5H) lstm_in
    cl_ptr,  # (R, H)
    cr_ptr,  # (R, H)
    h_ptr,  # (R, H) out
    c_ptr,  # (R, H) out
    R,
    H,
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    m = (rows < R)[:, None] & (cols < H)[None, :]
    h, c = _compose(
        _chunk(x_ptr, rows, cols, m, H, 0),
        _chunk(x_ptr, rows, cols, m, H, 1),
        _chunk(x_ptr, rows, cols, m, H, 2),
        _chunk(x_ptr, rows, cols, m, H, 3),
        _chunk(x_ptr, rows, cols, m, H, 4),
        _rh(cl_ptr, rows, cols, m, H),
        _rh(cr_ptr, rows, cols, m, H),
    )
    rc = rows[:, None] * H + cols[None, :]
    tl.store(h_ptr + rc, h.to(h_ptr.dtype.element_ty), mask=m)
    tl.store(c_ptr + rc, c.to(c_ptr.dtype.element_ty), mask=m)


@triton.jit
def tree_lstm_bwd_kernel(
    gh_ptr,  # (R, H) gradient of h
    gc_ptr,  # (R, H) gradient of c
    x_ptr,  # (R, 5H) lstm_in (the reduce passes its fp32 ws)
    cl_ptr,  # (R, H)
    cr_ptr,  # (R, H)
    c_ptr,  # (R, H) forward output c
    d_ptr,  # (R, 5H) out: gradient of lstm_in
    dcl_ptr,  # (R, H) out
    dcr_ptr,  # (R, H) out
    R,
    H,
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    m = (rows < R)[:, None] & (cols < H)[None, :]
    ta = tanh(_chunk(x_ptr, rows, cols, m, H, 0))
    si = sigmoid(_chunk(x_ptr, rows, cols, m, H, 1))
    sf1 = sigmoid(_chunk(x_ptr, rows, cols, m, H, 2))
    sf2 = sigmoid(_chunk(x_ptr, rows, cols, m, H, 3))
    so = sigmoid(_chunk(x_ptr, rows, cols, m, H, 4))
    gh = _rh(gh_ptr, rows, cols, m, H)
    tc = tanh(_rh(c_ptr, rows, cols, m, H))
    dc = _rh(gc_ptr, rows, cols, m, H) + gh * so * (1.0 - tc * tc)
    d_ty = d_ptr.dtype.element_ty
    drc = d_ptr + rows[:, None] * (5 * H) + cols[None, :]
    tl.store(drc, (dc * si * (1.0 - ta * ta)).to(d_ty), mask=m)
    tl.store(drc + H, (dc * ta * si * (1.0 - si)).to(d_ty), mask=m)
    tl.store(drc + 2 * H, (dc * _rh(cl_ptr, rows, cols, m, H) * sf1 * (1.0 - sf1)).to(d_ty), mask=m)
    tl.store(drc + 3 * H, (dc * _rh(cr_ptr, rows, cols, m, H) * sf2 * (1.0 - sf2)).to(d_ty), mask=m)
    tl.store(drc + 4 * H, (gh * tc * so * (1.0 - so)).to(d_ty), mask=m)
    rc = rows[:, None] * H + cols[None, :]
    tl.store(dcl_ptr + rc, (dc * sf1).to(dcl_ptr.dtype.element_ty), mask=m)
    tl.store(dcr_ptr + rc, (dc * sf2).to(dcr_ptr.dtype.element_ty), mask=m)


@triton.jit
def _segment_dot(
    acc0,
    acc1,
    acc2,
    acc3,
    acc4,
    x_ptr,
    w_ptr,
    rows,
    row_mask,
    cols,
    col_mask,
    H,
    K,
    BLOCK_K: tl.constexpr,
    PREC: tl.constexpr,
):
    """acc_k (BR, BH) += x[rows, :K] · W[k·H + cols, :K]ᵀ for the five gate chunks k; x (R, K), W (5H, K)."""
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        x = tl.load(
            x_ptr + rows[:, None] * K + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0
        )
        wm = k_mask[:, None] & col_mask[None, :]
        w_kc = w_ptr + cols[None, :] * K + ks[:, None]
        acc0 = tl.dot(x, tl.load(w_kc, mask=wm, other=0.0), acc=acc0, input_precision=PREC)
        acc1 = tl.dot(x, tl.load(w_kc + H * K, mask=wm, other=0.0), acc=acc1, input_precision=PREC)
        acc2 = tl.dot(x, tl.load(w_kc + 2 * H * K, mask=wm, other=0.0), acc=acc2, input_precision=PREC)
        acc3 = tl.dot(x, tl.load(w_kc + 3 * H * K, mask=wm, other=0.0), acc=acc3, input_precision=PREC)
        acc4 = tl.dot(x, tl.load(w_kc + 4 * H * K, mask=wm, other=0.0), acc=acc4, input_precision=PREC)
    return acc0, acc1, acc2, acc3, acc4


@triton.jit
def tree_lstm_reduce_fwd_kernel(
    hl_ptr,  # (R, H)
    cl_ptr,  # (R, H)
    hr_ptr,  # (R, H)
    cr_ptr,  # (R, H)
    wl_ptr,  # (5H, H)
    bl_ptr,  # (5H,) (unused without HAS_BIAS)
    wr_ptr,  # (5H, H)
    ht_ptr,  # (R, HT) (unused without HAS_TRACK)
    wt_ptr,  # (5H, HT) (unused without HAS_TRACK)
    h_ptr,  # (R, H) out
    c_ptr,  # (R, H) out
    ws_ptr,  # (R, 5H) out: lstm_in, accumulation dtype
    R,
    H,
    HT,
    HAS_BIAS: tl.constexpr,
    HAS_TRACK: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PREC: tl.constexpr,
):
    acc_ty = ws_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_mask = rows < R
    col_mask = cols < H
    a = tl.zeros((BLOCK_R, BLOCK_H), dtype=acc_ty)
    i = tl.zeros((BLOCK_R, BLOCK_H), dtype=acc_ty)
    f1 = tl.zeros((BLOCK_R, BLOCK_H), dtype=acc_ty)
    f2 = tl.zeros((BLOCK_R, BLOCK_H), dtype=acc_ty)
    o = tl.zeros((BLOCK_R, BLOCK_H), dtype=acc_ty)
    a, i, f1, f2, o = _segment_dot(
        a, i, f1, f2, o, hl_ptr, wl_ptr, rows, row_mask, cols, col_mask, H, H, BLOCK_K, PREC
    )
    a, i, f1, f2, o = _segment_dot(
        a, i, f1, f2, o, hr_ptr, wr_ptr, rows, row_mask, cols, col_mask, H, H, BLOCK_K, PREC
    )
    if HAS_TRACK:
        a, i, f1, f2, o = _segment_dot(
            a, i, f1, f2, o, ht_ptr, wt_ptr, rows, row_mask, cols, col_mask, H, HT, BLOCK_K, PREC
        )
    if HAS_BIAS:
        a += tl.load(bl_ptr + cols, mask=col_mask, other=0.0).to(acc_ty)[None, :]
        i += tl.load(bl_ptr + H + cols, mask=col_mask, other=0.0).to(acc_ty)[None, :]
        f1 += tl.load(bl_ptr + 2 * H + cols, mask=col_mask, other=0.0).to(acc_ty)[None, :]
        f2 += tl.load(bl_ptr + 3 * H + cols, mask=col_mask, other=0.0).to(acc_ty)[None, :]
        o += tl.load(bl_ptr + 4 * H + cols, mask=col_mask, other=0.0).to(acc_ty)[None, :]
    m = row_mask[:, None] & col_mask[None, :]
    ws_rc = ws_ptr + rows[:, None] * (5 * H) + cols[None, :]
    tl.store(ws_rc, a, mask=m)
    tl.store(ws_rc + H, i, mask=m)
    tl.store(ws_rc + 2 * H, f1, mask=m)
    tl.store(ws_rc + 3 * H, f2, mask=m)
    tl.store(ws_rc + 4 * H, o, mask=m)
    h, c = _compose(a, i, f1, f2, o, _rh(cl_ptr, rows, cols, m, H), _rh(cr_ptr, rows, cols, m, H))
    rc = rows[:, None] * H + cols[None, :]
    tl.store(h_ptr + rc, h.to(h_ptr.dtype.element_ty), mask=m)
    tl.store(c_ptr + rc, c.to(c_ptr.dtype.element_ty), mask=m)
