"""Triton kernels of the recurrence op (RNN tanh/relu, GRU, LSTM): the whole time loop in one launch.

Dimensions: T time, B batch, H hidden, G gates (rnn 1, gru 3, lstm 4), S saved activations per unit
(rnn 0, gru 4, lstm 5); see ``rnnfast/ops/recurrence/common.py`` for the op contract and ``ws`` layout.

Design: each program owns BLOCK_B batch rows and *all* H hidden units, and loops over T itself. A step
needs the whole h_{t-1} of its rows and nothing of other rows, so programs never wait for each other:
the design runs unchanged under the Triton interpreter (programs one after another) and on a GPU
(programs side by side). Per step and per tile of BLOCK_H units the program computes the G gate tiles
h_{t-1}·W_hhᵀ with ``tl.dot`` over K-tiles of W_hh read from global memory (W_hh stays L2-resident on a
GPU), then the cell's pointwise math as the epilogue, and writes y_t, ws_t and h_t.

The state travels through a small ping-pong scratch ``hbuf`` (2, B, N) in the accumulation dtype: step s
reads buffer s % 2 (in K-tiles, for the GEMM) and writes buffer (s + 1) % 2 (in H-tiles); a CTA barrier
(``tl.debug_barrier``) between steps makes the writes of all threads visible before the next reads.
When H fits one tile and W_hh's G tiles are small (``RESIDENT``), they are loaded once before the loop
and stay in registers for all T steps instead of being re-read from L2 every step.
The LSTM cell state ping-pongs the same way in ``cbuf`` (2, B, H). Updating it in place would be safe
only if the load and the store of an element were done by the same thread, which Triton's layout choices
(a dot result's layout vs a load's) do not promise; two buffers make every step read-only on its inputs.

LSTM projection (P > 0): the state h has N = P columns; the cell's u = o·tanh(c) goes to a scratch
``ubuf`` (B, H), and after a barrier h_t = u·W_hrᵀ is computed in P-tiles with ``tl.dot``.

Backward runs the same structure in reverse time, in two phases per step: (1) per H-tile, the gate
gradients from ``ws`` (written to dgi / dgh, also the input of the weight-gradient GEMM after the loop);
barrier; (2) per K-tile of h_{t-1}, dh_{t-1} = dgh_t·W_hh (+ the GRU's direct path dh·z); barrier.
With a projection, phase 1 first forms dh_t·W_hr (the gradient w.r.t. u) per H-tile, and phase 2 also
writes dh_t itself, the input of the dW_hr GEMM after the loop.

Arithmetic: fp16/bf16 inputs are upcast to fp32 for all pointwise math; ``tl.dot`` accumulates in fp32
(fp64 under the interpreter for fp64 inputs). tanh is 2·σ(2x) − 1 and σ is built from ``tl.exp``, so
the kernels need no libdevice.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Cell codes, as common.CELL_CODE.
RNN_TANH: tl.constexpr = tl.constexpr(0)
RNN_RELU: tl.constexpr = tl.constexpr(1)
GRU: tl.constexpr = tl.constexpr(2)
LSTM: tl.constexpr = tl.constexpr(3)


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    return 2.0 * sigmoid(2.0 * x) - 1.0


@triton.jit
def _w_tile_t(w_ptr, gate, cols, col_mask, ks, k_mask, H, N):
    """W_hh[gate·H + cols, ks]ᵀ of W_hh (G·H, N) as a (BK, BH) tile, zero outside the masks."""
    return tl.load(
        w_ptr + (gate * H + cols[None, :]) * N + ks[:, None],
        mask=col_mask[None, :] & k_mask[:, None],
        other=0.0,
    )


@triton.jit
def _w_tile(w_ptr, gate, js, j_mask, ks, k_mask, H, N):
    """W_hh[gate·H + js, ks] of W_hh (G·H, N) as a (BH, BK) tile, zero outside the masks."""
    return tl.load(
        w_ptr + (gate * H + js[:, None]) * N + ks[None, :],
        mask=j_mask[:, None] & k_mask[None, :],
        other=0.0,
    )


@triton.jit
def _load_tile(ptr, rows, cols, row_mask, col_mask, ld):
    """ptr[rows, cols] of a row-major (·, ld) matrix, zero outside the masks, upcast by the caller."""
    return tl.load(
        ptr + rows[:, None] * ld + cols[None, :], mask=row_mask[:, None] & col_mask[None, :], other=0.0
    )


@triton.jit
def recurrence_fwd_kernel(
    gi_ptr,  # (T, B, G·H) input projection incl. b_ih, input dtype
    w_ptr,  # (G·H, N) W_hh, input dtype
    b_ptr,  # (G·H,) b_hh, input dtype (unused without HAS_BIAS)
    wr_ptr,  # (P, H) W_hr, input dtype (LSTM projection; unused without PROJ)
    len_ptr,  # (B,) int64 lengths (unused without HAS_LEN)
    y_ptr,  # (T, B, N) outputs, input dtype
    ws_ptr,  # (T, B, S·H) saved activations, accumulation dtype (unused without NEED_WS)
    hbuf_ptr,  # (2, B, N) accumulation dtype; hbuf[0] = h0 on entry, hbuf[T % 2] = h_n on exit
    cbuf_ptr,  # (2, B, H) accumulation dtype, LSTM only: cbuf[0] = c0 on entry, cbuf[T % 2] = c_n on exit
    ubuf_ptr,  # (B, H) accumulation dtype scratch: o·tanh(c) before the projection (unused without PROJ)
    T,
    B,
    H,
    N,  # state width: P with a projection, else H
    CELL: tl.constexpr,
    G: tl.constexpr,
    S: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_LEN: tl.constexpr,
    REVERSE: tl.constexpr,
    NEED_WS: tl.constexpr,
    PROJ: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    RESIDENT: tl.constexpr,
    PREC: tl.constexpr,
):
    acc_ty = hbuf_ptr.dtype.element_ty
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    if HAS_LEN:
        lens = tl.load(len_ptr + rows, mask=row_mask, other=0)
    GH = G * H
    if RESIDENT:
        # H fits one tile: W_hh is loaded once and stays on chip for all T steps.
        ar_h = tl.arange(0, BLOCK_H)
        ar_k = tl.arange(0, BLOCK_K)
        wr0 = _w_tile_t(w_ptr, 0, ar_h, ar_h < H, ar_k, ar_k < N, H, N)
        wr1 = wr0
        wr2 = wr0
        wr3 = wr0
        if G >= 3:
            wr1 = _w_tile_t(w_ptr, 1, ar_h, ar_h < H, ar_k, ar_k < N, H, N)
            wr2 = _w_tile_t(w_ptr, 2, ar_h, ar_h < H, ar_k, ar_k < N, H, N)
        if G == 4:
            wr3 = _w_tile_t(w_ptr, 3, ar_h, ar_h < H, ar_k, ar_k < N, H, N)
    for s in range(T):
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        if HAS_LEN:
            valid = row_mask & (t < lens)
        else:
            valid = row_mask
        v = valid[:, None]
        h_cur = hbuf_ptr + (s % 2) * B * N
        h_nxt = hbuf_ptr + ((s + 1) % 2) * B * N
        t64 = t.to(tl.int64)
        gi_t = gi_ptr + t64 * B * GH
        y_t = y_ptr + t64 * B * N
        ws_t = ws_ptr + t64 * B * (S * H)
        for j0 in range(0, H, BLOCK_H):
            cols = j0 + tl.arange(0, BLOCK_H)
            col_mask = cols < H
            acc0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_ty)
            acc1 = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_ty)
            acc2 = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_ty)
            acc3 = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_ty)
            for k0 in range(0, N, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_mask = ks < N
                # The GEMM operand in W_hh's dtype (bf16/fp16 on tensor cores), accumulated in fp32.
                h = _load_tile(h_cur, rows, ks, row_mask, k_mask, N).to(w_ptr.dtype.element_ty)
                if RESIDENT:
                    acc0 = tl.dot(h, wr0, acc=acc0, input_precision=PREC)
                    if G >= 3:
                        acc1 = tl.dot(h, wr1, acc=acc1, input_precision=PREC)
                        acc2 = tl.dot(h, wr2, acc=acc2, input_precision=PREC)
                    if G == 4:
                        acc3 = tl.dot(h, wr3, acc=acc3, input_precision=PREC)
                else:
                    w = _w_tile_t(w_ptr, 0, cols, col_mask, ks, k_mask, H, N)
                    acc0 = tl.dot(h, w, acc=acc0, input_precision=PREC)
                    if G >= 3:
                        w = _w_tile_t(w_ptr, 1, cols, col_mask, ks, k_mask, H, N)
                        acc1 = tl.dot(h, w, acc=acc1, input_precision=PREC)
                        w = _w_tile_t(w_ptr, 2, cols, col_mask, ks, k_mask, H, N)
                        acc2 = tl.dot(h, w, acc=acc2, input_precision=PREC)
                    if G == 4:
                        w = _w_tile_t(w_ptr, 3, cols, col_mask, ks, k_mask, H, N)
                        acc3 = tl.dot(h, w, acc=acc3, input_precision=PREC)
            if HAS_BIAS:
                acc0 += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(acc_ty)[None, :]
                if G >= 3:
                    acc1 += tl.load(b_ptr + H + cols, mask=col_mask, other=0.0).to(acc_ty)[None, :]
                    acc2 += tl.load(b_ptr + 2 * H + cols, mask=col_mask, other=0.0).to(acc_ty)[None, :]
                if G == 4:
                    acc3 += tl.load(b_ptr + 3 * H + cols, mask=col_mask, other=0.0).to(acc_ty)[None, :]
            tile_mask = row_mask[:, None] & col_mask[None, :]
            if not PROJ:
                # Without a projection N == H: h_{t-1} in this tile's layout.
                h_prev = _load_tile(h_cur, rows, cols, row_mask, col_mask, N)
            x0 = _load_tile(gi_t, rows, cols, row_mask, col_mask, GH).to(acc_ty) + acc0
            if CELL == RNN_TANH:
                h_new = tanh(x0)
            elif CELL == RNN_RELU:
                h_new = tl.maximum(x0, 0.0)
            elif CELL == GRU:
                r = sigmoid(x0)
                z = sigmoid(_load_tile(gi_t + H, rows, cols, row_mask, col_mask, GH).to(acc_ty) + acc1)
                n = tanh(_load_tile(gi_t + 2 * H, rows, cols, row_mask, col_mask, GH).to(acc_ty) + r * acc2)
                h_new = (1.0 - z) * n + z * h_prev
                if NEED_WS:
                    ws_rc = ws_t + rows[:, None] * (S * H) + cols[None, :]
                    tl.store(ws_rc, r, mask=tile_mask)
                    tl.store(ws_rc + H, z, mask=tile_mask)
                    tl.store(ws_rc + 2 * H, n, mask=tile_mask)
                    tl.store(ws_rc + 3 * H, acc2, mask=tile_mask)
            else:
                i = sigmoid(x0)
                f = sigmoid(_load_tile(gi_t + H, rows, cols, row_mask, col_mask, GH).to(acc_ty) + acc1)
                g = tanh(_load_tile(gi_t + 2 * H, rows, cols, row_mask, col_mask, GH).to(acc_ty) + acc2)
                o = sigmoid(_load_tile(gi_t + 3 * H, rows, cols, row_mask, col_mask, GH).to(acc_ty) + acc3)
                c_rc = rows[:, None] * H + cols[None, :]
                c_prev = tl.load(cbuf_ptr + (s % 2) * B * H + c_rc, mask=tile_mask, other=0.0)
                c = f * c_prev + i * g
                h_new = o * tanh(c)
                # Frozen state beyond a row's length.
                c_keep = tl.where(valid[:, None], c, c_prev)
                tl.store(cbuf_ptr + ((s + 1) % 2) * B * H + c_rc, c_keep, mask=tile_mask)
                if NEED_WS:
                    ws_rc = ws_t + rows[:, None] * (S * H) + cols[None, :]
                    tl.store(ws_rc, i, mask=tile_mask)
                    tl.store(ws_rc + H, f, mask=tile_mask)
                    tl.store(ws_rc + 2 * H, g, mask=tile_mask)
                    tl.store(ws_rc + 3 * H, o, mask=tile_mask)
                    tl.store(ws_rc + 4 * H, c, mask=tile_mask)
            if PROJ:
                # h_t = W_hr·(o·tanh c) needs u of every H-tile: finished after this loop.
                tl.store(ubuf_ptr + rows[:, None] * H + cols[None, :], h_new, mask=tile_mask)
            else:
                tl.store(
                    h_nxt + rows[:, None] * H + cols[None, :], tl.where(v, h_new, h_prev), mask=tile_mask
                )
                y_out = tl.where(v, h_new, 0.0).to(y_ptr.dtype.element_ty)
                tl.store(y_t + rows[:, None] * H + cols[None, :], y_out, mask=tile_mask)
        if PROJ:
            # u of every tile must be visible before the projection reads it in K-tiles.
            tl.debug_barrier()
            for p0 in range(0, N, BLOCK_K):
                ps = p0 + tl.arange(0, BLOCK_K)
                p_mask = ps < N
                acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=acc_ty)
                for j0 in range(0, H, BLOCK_H):
                    js = j0 + tl.arange(0, BLOCK_H)
                    j_mask = js < H
                    u = _load_tile(ubuf_ptr, rows, js, row_mask, j_mask, H).to(wr_ptr.dtype.element_ty)
                    # W_hr[ps, js]ᵀ: (BH, BK)
                    wr = tl.load(
                        wr_ptr + ps[None, :] * H + js[:, None],
                        mask=j_mask[:, None] & p_mask[None, :],
                        other=0.0,
                    )
                    acc = tl.dot(u, wr, acc=acc, input_precision=PREC)
                p_tile = row_mask[:, None] & p_mask[None, :]
                h_prev = _load_tile(h_cur, rows, ps, row_mask, p_mask, N)
                tl.store(h_nxt + rows[:, None] * N + ps[None, :], tl.where(v, acc, h_prev), mask=p_tile)
                y_out = tl.where(v, acc, 0.0).to(y_ptr.dtype.element_ty)
                tl.store(y_t + rows[:, None] * N + ps[None, :], y_out, mask=p_tile)
        # h_t of every tile must be visible to every thread before step t+1 reads it in K-tiles.
        tl.debug_barrier()


@triton.jit
def recurrence_bwd_kernel(
    gy_ptr,  # (T, B, N) gradient of y, output dtype
    w_ptr,  # (G·H, N) W_hh, output dtype
    wr_ptr,  # (P, H) W_hr, output dtype (LSTM projection; unused without PROJ)
    len_ptr,  # (B,) int64 lengths (unused without HAS_LEN)
    y_ptr,  # (T, B, N) forward outputs (rnn: the activation's derivative comes from them)
    hprev_ptr,  # (T, B, H) acc dtype: state each step started from (gru only)
    cprev_ptr,  # (T, B, H) acc dtype: cell state each step started from (lstm only)
    ws_ptr,  # (T, B, S·H) saved activations, acc dtype
    dgi_ptr,  # (T, B, G·H) acc dtype out: gradient w.r.t. gi, zero at invalid steps
    dgh_ptr,  # (T, B, G·H) acc dtype out: gradient w.r.t. h·W_hhᵀ + b_hh (gru; the others alias dgi)
    dhbuf_ptr,  # (2, B, N) acc dtype: dhbuf[0] = grad_hn on entry, dhbuf[T % 2] = dh0 on exit
    dcbuf_ptr,  # (2, B, H) acc dtype, lstm only: dcbuf[0] = grad_cn on entry, dcbuf[T % 2] = dc0 on exit
    dhr_ptr,  # (T, B, P) acc dtype out: gradient w.r.t. the projected h_t, zero at invalid steps (PROJ)
    T,
    B,
    H,
    N,  # state width: P with a projection, else H
    CELL: tl.constexpr,
    G: tl.constexpr,
    S: tl.constexpr,
    HAS_LEN: tl.constexpr,
    REVERSE: tl.constexpr,
    PROJ: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    RESIDENT: tl.constexpr,
    PREC: tl.constexpr,
):
    acc_ty = dhbuf_ptr.dtype.element_ty
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    if HAS_LEN:
        lens = tl.load(len_ptr + rows, mask=row_mask, other=0)
    GH = G * H
    if RESIDENT:
        # H fits one tile: W_hh is loaded once (upcast) and stays on chip for all T steps.
        ar_h = tl.arange(0, BLOCK_H)
        ar_k = tl.arange(0, BLOCK_K)
        wr0 = _w_tile(w_ptr, 0, ar_h, ar_h < H, ar_k, ar_k < N, H, N).to(acc_ty)
        wr1 = wr0
        wr2 = wr0
        wr3 = wr0
        if G >= 3:
            wr1 = _w_tile(w_ptr, 1, ar_h, ar_h < H, ar_k, ar_k < N, H, N).to(acc_ty)
            wr2 = _w_tile(w_ptr, 2, ar_h, ar_h < H, ar_k, ar_k < N, H, N).to(acc_ty)
        if G == 4:
            wr3 = _w_tile(w_ptr, 3, ar_h, ar_h < H, ar_k, ar_k < N, H, N).to(acc_ty)
    for s in range(T):
        # Reverse of the forward's processing order.
        if REVERSE:
            t = s
        else:
            t = T - 1 - s
        if HAS_LEN:
            valid = row_mask & (t < lens)
        else:
            valid = row_mask
        v = valid[:, None]
        dh_cur = dhbuf_ptr + (s % 2) * B * N
        dh_nxt = dhbuf_ptr + ((s + 1) % 2) * B * N
        t64 = t.to(tl.int64)
        gy_t = gy_ptr + t64 * B * N
        ws_t = ws_ptr + t64 * B * (S * H)
        dgi_t = dgi_ptr + t64 * B * GH
        dgh_t = dgh_ptr + t64 * B * GH
        # Phase 1: gate gradients, per H-tile.
        for j0 in range(0, H, BLOCK_H):
            cols = j0 + tl.arange(0, BLOCK_H)
            col_mask = cols < H
            tile_mask = row_mask[:, None] & col_mask[None, :]
            if PROJ:
                # Gradient w.r.t. o·tanh(c): dh_t (B, P) · W_hr (P, H), this H-tile's columns.
                dh = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_ty)
                for p0 in range(0, N, BLOCK_K):
                    ps = p0 + tl.arange(0, BLOCK_K)
                    p_mask = ps < N
                    gy = _load_tile(gy_t, rows, ps, row_mask, p_mask, N).to(acc_ty)
                    dh_p = _load_tile(dh_cur, rows, ps, row_mask, p_mask, N) + tl.where(v, gy, 0.0)
                    wr = tl.load(
                        wr_ptr + ps[:, None] * H + cols[None, :],
                        mask=p_mask[:, None] & col_mask[None, :],
                        other=0.0,
                    ).to(acc_ty)
                    dh = tl.dot(dh_p, wr, acc=dh, input_precision=PREC)
            else:
                gy = _load_tile(gy_t, rows, cols, row_mask, col_mask, N).to(acc_ty)
                dh = _load_tile(dh_cur, rows, cols, row_mask, col_mask, N) + tl.where(v, gy, 0.0)
            out_rc = rows[:, None] * GH + cols[None, :]
            if CELL == RNN_TANH or CELL == RNN_RELU:
                y = _load_tile(y_ptr + t64 * B * H, rows, cols, row_mask, col_mask, H).to(acc_ty)
                if CELL == RNN_TANH:
                    d0 = dh * (1.0 - y * y)
                else:
                    d0 = tl.where(y > 0.0, dh, 0.0)
                tl.store(dgi_t + out_rc, tl.where(v, d0, 0.0), mask=tile_mask)
            elif CELL == GRU:
                ws_rc = ws_t + rows[:, None] * (S * H) + cols[None, :]
                r = tl.load(ws_rc, mask=tile_mask, other=0.0)
                z = tl.load(ws_rc + H, mask=tile_mask, other=0.0)
                n = tl.load(ws_rc + 2 * H, mask=tile_mask, other=0.0)
                hn = tl.load(ws_rc + 3 * H, mask=tile_mask, other=0.0)
                h_prev = _load_tile(hprev_ptr + t64 * B * H, rows, cols, row_mask, col_mask, H)
                dn = dh * (1.0 - z) * (1.0 - n * n)
                dz = dh * (h_prev - n) * z * (1.0 - z)
                dr = dn * hn * r * (1.0 - r)
                dr = tl.where(v, dr, 0.0)
                dz = tl.where(v, dz, 0.0)
                dn = tl.where(v, dn, 0.0)
                tl.store(dgi_t + out_rc, dr, mask=tile_mask)
                tl.store(dgi_t + out_rc + H, dz, mask=tile_mask)
                tl.store(dgi_t + out_rc + 2 * H, dn, mask=tile_mask)
                tl.store(dgh_t + out_rc, dr, mask=tile_mask)
                tl.store(dgh_t + out_rc + H, dz, mask=tile_mask)
                tl.store(dgh_t + out_rc + 2 * H, dn * r, mask=tile_mask)
            else:
                ws_rc = ws_t + rows[:, None] * (S * H) + cols[None, :]
                i = tl.load(ws_rc, mask=tile_mask, other=0.0)
                f = tl.load(ws_rc + H, mask=tile_mask, other=0.0)
                g = tl.load(ws_rc + 2 * H, mask=tile_mask, other=0.0)
                o = tl.load(ws_rc + 3 * H, mask=tile_mask, other=0.0)
                c = tl.load(ws_rc + 4 * H, mask=tile_mask, other=0.0)
                c_prev = _load_tile(cprev_ptr + t64 * B * H, rows, cols, row_mask, col_mask, H)
                dc_rc = rows[:, None] * H + cols[None, :]
                dc_old = tl.load(dcbuf_ptr + (s % 2) * B * H + dc_rc, mask=tile_mask, other=0.0)
                tc = tanh(c)
                dc = dc_old + dh * o * (1.0 - tc * tc)
                tl.store(dgi_t + out_rc, tl.where(v, dc * g * i * (1.0 - i), 0.0), mask=tile_mask)
                tl.store(dgi_t + out_rc + H, tl.where(v, dc * c_prev * f * (1.0 - f), 0.0), mask=tile_mask)
                tl.store(dgi_t + out_rc + 2 * H, tl.where(v, dc * i * (1.0 - g * g), 0.0), mask=tile_mask)
                tl.store(dgi_t + out_rc + 3 * H, tl.where(v, dh * tc * o * (1.0 - o), 0.0), mask=tile_mask)
                tl.store(
                    dcbuf_ptr + ((s + 1) % 2) * B * H + dc_rc, tl.where(v, dc * f, dc_old), mask=tile_mask
                )
        # dgh_t of every tile must be visible before phase 2 reads it across tiles.
        tl.debug_barrier()
        # Phase 2: dh_{t-1} = dgh_t · W_hh (+ dh_t·z for the GRU), per K-tile of h_{t-1}.
        for k0 in range(0, N, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_mask = ks < N
            acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=acc_ty)
            for j0 in range(0, H, BLOCK_H):
                js = j0 + tl.arange(0, BLOCK_H)
                j_mask = js < H
                d0 = _load_tile(dgh_t, rows, js, row_mask, j_mask, GH)
                if G >= 3:
                    d1 = _load_tile(dgh_t + H, rows, js, row_mask, j_mask, GH)
                    d2 = _load_tile(dgh_t + 2 * H, rows, js, row_mask, j_mask, GH)
                if G == 4:
                    d3 = _load_tile(dgh_t + 3 * H, rows, js, row_mask, j_mask, GH)
                if RESIDENT:
                    acc = tl.dot(d0, wr0, acc=acc, input_precision=PREC)
                    if G >= 3:
                        acc = tl.dot(d1, wr1, acc=acc, input_precision=PREC)
                        acc = tl.dot(d2, wr2, acc=acc, input_precision=PREC)
                    if G == 4:
                        acc = tl.dot(d3, wr3, acc=acc, input_precision=PREC)
                else:
                    w = _w_tile(w_ptr, 0, js, j_mask, ks, k_mask, H, N).to(acc_ty)
                    acc = tl.dot(d0, w, acc=acc, input_precision=PREC)
                    if G >= 3:
                        w = _w_tile(w_ptr, 1, js, j_mask, ks, k_mask, H, N).to(acc_ty)
                        acc = tl.dot(d1, w, acc=acc, input_precision=PREC)
                        w = _w_tile(w_ptr, 2, js, j_mask, ks, k_mask, H, N).to(acc_ty)
                        acc = tl.dot(d2, w, acc=acc, input_precision=PREC)
                    if G == 4:
                        w = _w_tile(w_ptr, 3, js, j_mask, ks, k_mask, H, N).to(acc_ty)
                        acc = tl.dot(d3, w, acc=acc, input_precision=PREC)
            dh_old = _load_tile(dh_cur, rows, ks, row_mask, k_mask, N)
            if CELL == GRU:
                gy = _load_tile(gy_t, rows, ks, row_mask, k_mask, N).to(acc_ty)
                z = _load_tile(ws_t + H, rows, ks, row_mask, k_mask, S * H)
                acc += (dh_old + tl.where(v, gy, 0.0)) * z
            if PROJ:
                # dh_t itself, input of dW_hr = Σ_t dh_tᵀ·(o·tanh c) after the loop.
                gy = _load_tile(gy_t, rows, ks, row_mask, k_mask, N).to(acc_ty)
                tl.store(
                    dhr_ptr + t64 * B * N + rows[:, None] * N + ks[None, :],
                    tl.where(v, dh_old + gy, 0.0),
                    mask=row_mask[:, None] & k_mask[None, :],
                )
            tl.store(
                dh_nxt + rows[:, None] * N + ks[None, :],
                tl.where(v, acc, dh_old),
                mask=row_mask[:, None] & k_mask[None, :],
            )
        # dh_{t-1} of every K-tile must be visible before the next step's phase 1.
        tl.debug_barrier()
