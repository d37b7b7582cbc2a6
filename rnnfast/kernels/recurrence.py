"""Triton kernels of the recurrence op (RNN tanh/relu, GRU, LSTM): one step body over a tile of batch rows
and hidden units, run by two schedules.

Dimensions: T time, B batch, H hidden, G gates (rnn 1, gru 3, lstm 4), S saved activations per unit
(rnn 0, gru 4, lstm 5), N state width (P with an LSTM projection, else H); see
``rnnfast/ops/recurrence/common.py`` for the op contract and the ``ws`` layout.

Tiles. Program ``pid`` of a launch owns batch rows ``tb·BLOCK_B + [0, BLOCK_B)`` and hidden units
``th·BLOCK_H + [0, BLOCK_H)`` with ``tb = pid % nb``, ``th = pid // nb`` (nb = ⌈B / BLOCK_B⌉), all gates of
those units: per step it multiplies the whole h_{t-1} of its rows by its G slices of W_hh (``tl.dot`` over
K-tiles, W_hh in the input dtype, fp32 accumulation), adds gi_t and b_hh and applies the cell as the
epilogue, writing its slice of h_t, y_t and the saved activations. B=1 thus spreads over ⌈H / BLOCK_H⌉
programs. A step reads the whole h_{t-1} that every program of its rows wrote in the step before, so
steps are *phases* separated by a grid-wide point: either a kernel boundary or a grid barrier.

Phases. A kernel runs phases ``q ∈ [q0, q1)`` of its direction and meets the other programs at a grid
barrier between consecutive phases: the per-step schedule launches one phase at a time (q1 = q0 + 1, the
barrier never runs), the persistent schedule launches all of them at once. The phases:

- forward: per step s, the cell phase (tiles over H units); with a projection a second phase
  h_t = u·W_hrᵀ (tiles over P columns), u = o·tanh(c) travelling through the scratch ``ubuf``.
- backward, k = 0..T (k-th processed step; reverse of the forward order): the *dh phase* forms, for the
  program's slice of h's columns, dh_{k} = dgh_{k-1}·W_hh (+ the GRU's direct path dh·z; a copy of
  grad_hn at k = 0), which needs the whole dgh of step k-1; the *gate phase* then forms the gate
  gradients of step k from ws for the program's units. Without a projection the dh phase's columns are
  the gate phase's units, so both run in one phase with dh in registers (T + 1 phases). With a
  projection, the gate phase needs dh·W_hr over all P columns: two phases per step (2T + 1).
  dW_hh, db_hh (and dW_hr) are GEMMs after the loop, in the launcher.

Buffers that a phase reads for other tiles are written by an earlier phase only (h ping-pongs between
the two halves of ``hbuf``, dh between those of ``dhbuf``); a program's own state (c, dc) also
ping-pongs, because the load and the store of an element need not be done by the same thread.

The grid barrier is a monotonic int32 counter: after a CTA barrier each program adds 1 with release
semantics and spins with acquire loads until the counter reaches (barriers so far) × programs. It is
correct only if every program of the grid is resident at once, which the launcher checks from the
compiled kernel's registers and shared memory before choosing it. Loads of data written by other programs
bypass L1 (``.cg``).

Arithmetic: fp16/bf16 inputs are upcast to fp32 for all pointwise math; ``tl.dot`` accumulates in fp32
(fp64 under the interpreter for fp64 inputs). The backward's dgh·W_hh runs on fp32 operands. tanh is
2·σ(2x) − 1 and σ is built from ``tl.exp``, so the kernels need no libdevice.
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
def _load_tile(ptr, rows, cols, row_mask, col_mask, ld):
    """ptr[rows, cols] of a row-major (·, ld) matrix, zero outside the masks, upcast by the caller."""
    return tl.load(
        ptr + rows[:, None] * ld + cols[None, :], mask=row_mask[:, None] & col_mask[None, :], other=0.0
    )


@triton.jit
def _load_shared(ptr, rows, cols, row_mask, col_mask, ld):
    """As ``_load_tile`` for data other programs wrote before the last grid-wide point: cached in L2
    only, so an L1 line from before the barrier is never read."""
    return tl.load(
        ptr + rows[:, None] * ld + cols[None, :],
        mask=row_mask[:, None] & col_mask[None, :],
        other=0.0,
        cache_modifier=".cg",
    )


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
    """W_hh[gate·H + js, ks] of W_hh (G·H, N) as a (BK, BH) tile, zero outside the masks."""
    return tl.load(
        w_ptr + (gate * H + js[:, None]) * N + ks[None, :],
        mask=j_mask[:, None] & k_mask[None, :],
        other=0.0,
    )


@triton.jit
def _valid(len_ptr, rows, row_mask, t, HAS_LEN: tl.constexpr):
    """Rows whose sequence covers time t."""
    if HAS_LEN:
        lens = tl.load(len_ptr + rows, mask=row_mask, other=0)
        return row_mask & (t < lens)
    else:
        return row_mask


@triton.jit
def _grid_barrier(count_ptr, target):
    """Wait until ``target`` arrivals (all programs, every barrier so far) are counted. Every program of
    the grid must be resident, or this waits forever: the launcher checks it, and the interpreter (which
    runs programs one after another) never gets here."""
    # Every thread's stores of this phase are done before the one release below publishes them.
    tl.debug_barrier()
    seen = tl.atomic_add(count_ptr, 1, sem="acq_rel") + 1
    while seen < target:
        seen = tl.atomic_add(count_ptr, 0, sem="acquire")
    tl.debug_barrier()


# --------------------------------------------------------------------------------------------------
# Forward


@triton.jit
def _program_tile(B, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's tile: its unit-block index, batch rows and hidden units (row blocks vary fastest)."""
    pid = tl.program_id(0)
    nb = tl.cdiv(B, BLOCK_B)
    th = pid // nb
    rows = (pid % nb) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = th * BLOCK_H + tl.arange(0, BLOCK_H)
    return th, rows, cols


@triton.jit
def _fwd_cell_tile(
    gi_ptr, w_ptr, b_ptr, len_ptr, y_ptr, ws_ptr, hbuf_ptr, cbuf_ptr, ubuf_ptr,
    s, T, B, H, N, rows, cols,
    CELL: tl.constexpr, G: tl.constexpr, S: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LEN: tl.constexpr,
    REVERSE: tl.constexpr, NEED_WS: tl.constexpr, PROJ: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Step s for the tile (rows, cols): gates, cell, and this tile's h_t (or u_t), y_t, ws_t, c_t."""
    acc_ty = hbuf_ptr.dtype.element_ty
    row_mask = rows < B
    col_mask = cols < H
    t = T - 1 - s if REVERSE else s
    v = _valid(len_ptr, rows, row_mask, t, HAS_LEN)[:, None]
    h_cur = hbuf_ptr + (s % 2) * B * N
    h_nxt = hbuf_ptr + ((s + 1) % 2) * B * N
    t64 = t.to(tl.int64)
    GH = G * H
    gi_t = gi_ptr + t64 * B * GH
    acc0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_ty)
    acc1 = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_ty)
    acc2 = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_ty)
    acc3 = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_ty)
    for k0 in range(0, N, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < N
        # The GEMM operand in W_hh's dtype (bf16/fp16 on tensor cores), accumulated in fp32.
        h = _load_shared(h_cur, rows, ks, row_mask, k_mask, N).to(w_ptr.dtype.element_ty)
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
    ws_rc = ws_ptr + t64 * B * (S * H) + rows[:, None] * (S * H) + cols[None, :]
    x0 = _load_tile(gi_t, rows, cols, row_mask, col_mask, GH).to(acc_ty) + acc0
    if CELL == RNN_TANH:
        h_new = tanh(x0)
    elif CELL == RNN_RELU:
        h_new = tl.maximum(x0, 0.0)
    elif CELL == GRU:
        r = sigmoid(x0)
        z = sigmoid(_load_tile(gi_t + H, rows, cols, row_mask, col_mask, GH).to(acc_ty) + acc1)
        # torch.nn's convention: b_hn sits inside r·(W_hn·h + b_hn).
        n = tanh(_load_tile(gi_t + 2 * H, rows, cols, row_mask, col_mask, GH).to(acc_ty) + r * acc2)
        h_new = (1.0 - z) * n + z * _load_shared(h_cur, rows, cols, row_mask, col_mask, N)
        if NEED_WS:
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
        tl.store(cbuf_ptr + ((s + 1) % 2) * B * H + c_rc, tl.where(v, c, c_prev), mask=tile_mask)
        if NEED_WS:
            tl.store(ws_rc, i, mask=tile_mask)
            tl.store(ws_rc + H, f, mask=tile_mask)
            tl.store(ws_rc + 2 * H, g, mask=tile_mask)
            tl.store(ws_rc + 3 * H, o, mask=tile_mask)
            tl.store(ws_rc + 4 * H, c, mask=tile_mask)
    if PROJ:
        # h_t = W_hr·(o·tanh c) needs u of every unit: the next phase.
        tl.store(ubuf_ptr + rows[:, None] * H + cols[None, :], h_new, mask=tile_mask)
    else:
        h_prev = _load_shared(h_cur, rows, cols, row_mask, col_mask, N)
        tl.store(h_nxt + rows[:, None] * N + cols[None, :], tl.where(v, h_new, h_prev), mask=tile_mask)
        y_out = tl.where(v, h_new, 0.0).to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + t64 * B * N + rows[:, None] * N + cols[None, :], y_out, mask=tile_mask)


@triton.jit
def _fwd_proj_tile(
    wr_ptr, len_ptr, y_ptr, hbuf_ptr, ubuf_ptr, s, T, B, H, N, rows, ps,
    HAS_LEN: tl.constexpr, REVERSE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Step s's projection for the tile (rows, ps of the P columns): h_t = u_t·W_hrᵀ, y_t."""
    acc_ty = hbuf_ptr.dtype.element_ty
    row_mask = rows < B
    p_mask = ps < N
    t = T - 1 - s if REVERSE else s
    v = _valid(len_ptr, rows, row_mask, t, HAS_LEN)[:, None]
    acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_ty)
    for j0 in range(0, H, BLOCK_K):
        js = j0 + tl.arange(0, BLOCK_K)
        j_mask = js < H
        u = _load_shared(ubuf_ptr, rows, js, row_mask, j_mask, H).to(wr_ptr.dtype.element_ty)
        # W_hr[ps, js]ᵀ: (BK, BH)
        wr = tl.load(
            wr_ptr + ps[None, :] * H + js[:, None], mask=j_mask[:, None] & p_mask[None, :], other=0.0
        )
        acc = tl.dot(u, wr, acc=acc, input_precision=PREC)
    p_tile = row_mask[:, None] & p_mask[None, :]
    h_prev = _load_tile(hbuf_ptr + (s % 2) * B * N, rows, ps, row_mask, p_mask, N)
    tl.store(
        hbuf_ptr + ((s + 1) % 2) * B * N + rows[:, None] * N + ps[None, :],
        tl.where(v, acc, h_prev),
        mask=p_tile,
    )
    y_out = tl.where(v, acc, 0.0).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + t.to(tl.int64) * B * N + rows[:, None] * N + ps[None, :], y_out, mask=p_tile)


@triton.jit(do_not_specialize=["q0", "q1"])
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
    count_ptr,  # (1,) int32, zero on entry: the grid barrier's counter (touched only when q1 > q0 + 1)
    q0,  # first phase of this launch: step q // PHASES, phase q % PHASES
    q1,  # end of this launch's phases (q0 + 1: one phase, no barrier)
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
    PREC: tl.constexpr,
):
    PHASES: tl.constexpr = 2 if PROJ else 1
    th, rows, cols = _program_tile(B, BLOCK_B, BLOCK_H)
    for q in range(q0, q1):
        s = q // PHASES
        if q % PHASES == 0:
            if th * BLOCK_H < H:
                _fwd_cell_tile(
                    gi_ptr, w_ptr, b_ptr, len_ptr, y_ptr, ws_ptr, hbuf_ptr, cbuf_ptr, ubuf_ptr,
                    s, T, B, H, N, rows, cols, CELL, G, S, HAS_BIAS, HAS_LEN, REVERSE, NEED_WS, PROJ,
                    BLOCK_B, BLOCK_H, BLOCK_K, PREC,
                )  # fmt: skip
        else:
            if th * BLOCK_H < N:
                _fwd_proj_tile(
                    wr_ptr, len_ptr, y_ptr, hbuf_ptr, ubuf_ptr, s, T, B, H, N, rows, cols,
                    HAS_LEN, REVERSE, BLOCK_B, BLOCK_H, BLOCK_K, PREC,
                )  # fmt: skip
        if q + 1 < q1:
            _grid_barrier(count_ptr, (q - q0 + 1) * tl.num_programs(0))


# --------------------------------------------------------------------------------------------------
# Backward


@triton.jit
def _dgh_dot(acc, dgh_p, w_ptr, gate, rows, row_mask, js, j_mask, ks, k_mask, G, H, N, PREC: tl.constexpr):
    """acc + dgh[rows, gate·H + js] · W_hh[gate·H + js, ks], on fp32 operands (dgh is fp32)."""
    d = _load_shared(dgh_p + gate * H, rows, js, row_mask, j_mask, G * H)
    w = _w_tile(w_ptr, gate, js, j_mask, ks, k_mask, H, N).to(d.dtype)
    return tl.dot(d, w, acc=acc, input_precision=PREC)


@triton.jit
def _bwd_dh_tile(
    gy_ptr, w_ptr, len_ptr, ws_ptr, dgh_ptr, dhbuf_ptr, dhr_ptr, k, T, B, H, N, rows, ks,
    CELL: tl.constexpr, G: tl.constexpr, S: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
    PROJ: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    """dh entering backward step k (gradient w.r.t. the state step k produced, without y's direct part)
    for the tile (rows, ks of h's columns): grad_hn at k = 0, else dgh_{k-1}·W_hh (+ dh_{k-1}·z_{k-1} for
    the GRU), frozen where step k-1 was beyond a row's length. Stored in dhbuf[k % 2] and returned; with a
    projection, dh + gy of step k also goes to dhr (the gate phase's input and dW_hr's)."""
    acc_ty = dhbuf_ptr.dtype.element_ty
    row_mask = rows < B
    k_mask = ks < N
    tile = row_mask[:, None] & k_mask[None, :]
    GH = G * H
    if k == 0:
        dh_in = _load_tile(dhbuf_ptr, rows, ks, row_mask, k_mask, N)
    else:
        # Step k-1 in the backward order, i.e. the forward step after step k's.
        tp = k - 1 if REVERSE else T - k
        vp = _valid(len_ptr, rows, row_mask, tp, HAS_LEN)[:, None]
        tp64 = tp.to(tl.int64)
        dgh_p = dgh_ptr + tp64 * B * GH
        acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_ty)
        for j0 in range(0, H, BLOCK_K):
            js = j0 + tl.arange(0, BLOCK_K)
            j_mask = js < H
            acc = _dgh_dot(acc, dgh_p, w_ptr, 0, rows, row_mask, js, j_mask, ks, k_mask, G, H, N, PREC)
            if G >= 3:
                acc = _dgh_dot(acc, dgh_p, w_ptr, 1, rows, row_mask, js, j_mask, ks, k_mask, G, H, N, PREC)
                acc = _dgh_dot(acc, dgh_p, w_ptr, 2, rows, row_mask, js, j_mask, ks, k_mask, G, H, N, PREC)
            if G == 4:
                acc = _dgh_dot(acc, dgh_p, w_ptr, 3, rows, row_mask, js, j_mask, ks, k_mask, G, H, N, PREC)
        dh_old = _load_tile(dhbuf_ptr + ((k - 1) % 2) * B * N, rows, ks, row_mask, k_mask, N)
        if CELL == GRU:
            gy = _load_tile(gy_ptr + tp64 * B * N, rows, ks, row_mask, k_mask, N).to(acc_ty)
            z = _load_tile(ws_ptr + tp64 * B * (S * H) + H, rows, ks, row_mask, k_mask, S * H)
            acc += (dh_old + tl.where(vp, gy, 0.0)) * z
        dh_in = tl.where(vp, acc, dh_old)
        tl.store(dhbuf_ptr + (k % 2) * B * N + rows[:, None] * N + ks[None, :], dh_in, mask=tile)
    if PROJ:
        if k < T:
            t = k if REVERSE else T - 1 - k
            t64 = t.to(tl.int64)
            v = _valid(len_ptr, rows, row_mask, t, HAS_LEN)[:, None]
            gy = _load_tile(gy_ptr + t64 * B * N, rows, ks, row_mask, k_mask, N).to(acc_ty)
            tl.store(
                dhr_ptr + t64 * B * N + rows[:, None] * N + ks[None, :],
                tl.where(v, dh_in + gy, 0.0),
                mask=tile,
            )
    return dh_in


@triton.jit
def _bwd_gate_tile(
    dh_in, gy_ptr, wr_ptr, len_ptr, y_ptr, hprev_ptr, cprev_ptr, ws_ptr, dgi_ptr, dgh_ptr, dcbuf_ptr,
    dhr_ptr, k, T, B, H, N, rows, cols,
    CELL: tl.constexpr, G: tl.constexpr, S: tl.constexpr, HAS_LEN: tl.constexpr, REVERSE: tl.constexpr,
    PROJ: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    """Gate gradients of backward step k for the tile (rows, cols of the H units), from dh_in (without a
    projection: this tile's dh entering step k) or, with one, from dhr_t·W_hr over all P columns."""
    acc_ty = dcbuf_ptr.dtype.element_ty
    row_mask = rows < B
    col_mask = cols < H
    tile_mask = row_mask[:, None] & col_mask[None, :]
    t = k if REVERSE else T - 1 - k
    t64 = t.to(tl.int64)
    v = _valid(len_ptr, rows, row_mask, t, HAS_LEN)[:, None]
    GH = G * H
    if PROJ:
        # Gradient w.r.t. u = o·tanh(c): (dh_t + gy_t) (B, P) · W_hr (P, H), this tile's units.
        dh = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_ty)
        for p0 in range(0, N, BLOCK_K):
            ps = p0 + tl.arange(0, BLOCK_K)
            p_mask = ps < N
            dh_p = _load_shared(dhr_ptr + t64 * B * N, rows, ps, row_mask, p_mask, N)
            wr = tl.load(
                wr_ptr + ps[:, None] * H + cols[None, :], mask=p_mask[:, None] & col_mask[None, :], other=0.0
            ).to(acc_ty)
            dh = tl.dot(dh_p, wr, acc=dh, input_precision=PREC)
    else:
        gy = _load_tile(gy_ptr + t64 * B * N, rows, cols, row_mask, col_mask, N).to(acc_ty)
        dh = dh_in + tl.where(v, gy, 0.0)
    out_rc = dgi_ptr + t64 * B * GH + rows[:, None] * GH + cols[None, :]
    ws_rc = ws_ptr + t64 * B * (S * H) + rows[:, None] * (S * H) + cols[None, :]
    if CELL == RNN_TANH or CELL == RNN_RELU:
        y = _load_tile(y_ptr + t64 * B * H, rows, cols, row_mask, col_mask, H).to(acc_ty)
        if CELL == RNN_TANH:
            d0 = dh * (1.0 - y * y)
        else:
            d0 = tl.where(y > 0.0, dh, 0.0)
        tl.store(out_rc, tl.where(v, d0, 0.0), mask=tile_mask)
    elif CELL == GRU:
        r = tl.load(ws_rc, mask=tile_mask, other=0.0)
        z = tl.load(ws_rc + H, mask=tile_mask, other=0.0)
        n = tl.load(ws_rc + 2 * H, mask=tile_mask, other=0.0)
        hn = tl.load(ws_rc + 3 * H, mask=tile_mask, other=0.0)
        h_prev = _load_tile(hprev_ptr + t64 * B * H, rows, cols, row_mask, col_mask, H)
        dn = tl.where(v, dh * (1.0 - z) * (1.0 - n * n), 0.0)
        dz = tl.where(v, dh * (h_prev - n) * z * (1.0 - z), 0.0)
        dr = tl.where(v, dn * hn * r * (1.0 - r), 0.0)
        tl.store(out_rc, dr, mask=tile_mask)
        tl.store(out_rc + H, dz, mask=tile_mask)
        tl.store(out_rc + 2 * H, dn, mask=tile_mask)
        gh_rc = dgh_ptr + t64 * B * GH + rows[:, None] * GH + cols[None, :]
        tl.store(gh_rc, dr, mask=tile_mask)
        tl.store(gh_rc + H, dz, mask=tile_mask)
        tl.store(gh_rc + 2 * H, dn * r, mask=tile_mask)
    else:
        i = tl.load(ws_rc, mask=tile_mask, other=0.0)
        f = tl.load(ws_rc + H, mask=tile_mask, other=0.0)
        g = tl.load(ws_rc + 2 * H, mask=tile_mask, other=0.0)
        o = tl.load(ws_rc + 3 * H, mask=tile_mask, other=0.0)
        c = tl.load(ws_rc + 4 * H, mask=tile_mask, other=0.0)
        c_prev = _load_tile(cprev_ptr + t64 * B * H, rows, cols, row_mask, col_mask, H)
        dc_rc = rows[:, None] * H + cols[None, :]
        dc_old = tl.load(dcbuf_ptr + (k % 2) * B * H + dc_rc, mask=tile_mask, other=0.0)
        tc = tanh(c)
        dc = dc_old + dh * o * (1.0 - tc * tc)
        tl.store(out_rc, tl.where(v, dc * g * i * (1.0 - i), 0.0), mask=tile_mask)
        tl.store(out_rc + H, tl.where(v, dc * c_prev * f * (1.0 - f), 0.0), mask=tile_mask)
        tl.store(out_rc + 2 * H, tl.where(v, dc * i * (1.0 - g * g), 0.0), mask=tile_mask)
        tl.store(out_rc + 3 * H, tl.where(v, dh * tc * o * (1.0 - o), 0.0), mask=tile_mask)
        tl.store(dcbuf_ptr + ((k + 1) % 2) * B * H + dc_rc, tl.where(v, dc * f, dc_old), mask=tile_mask)


@triton.jit(do_not_specialize=["q0", "q1"])
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
    count_ptr,  # (1,) int32, zero on entry: the grid barrier's counter (touched only when q1 > q0 + 1)
    q0,  # first phase of this launch (see the module docstring)
    q1,  # end of this launch's phases
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
    PREC: tl.constexpr,
):
    acc_ty = dhbuf_ptr.dtype.element_ty
    PHASES: tl.constexpr = 2 if PROJ else 1
    th, rows, cols = _program_tile(B, BLOCK_B, BLOCK_H)
    for q in range(q0, q1):
        k = q // PHASES
        if q % PHASES == 0:
            if th * BLOCK_H < N:
                dh_in = _bwd_dh_tile(
                    gy_ptr, w_ptr, len_ptr, ws_ptr, dgh_ptr, dhbuf_ptr, dhr_ptr, k, T, B, H, N, rows, cols,
                    CELL, G, S, HAS_LEN, REVERSE, PROJ, BLOCK_B, BLOCK_H, BLOCK_K, PREC,
                )  # fmt: skip
                if not PROJ:
                    if k < T:
                        # N == H: the units of the gate phase are the columns just formed.
                        _bwd_gate_tile(
                            dh_in, gy_ptr, wr_ptr, len_ptr, y_ptr, hprev_ptr, cprev_ptr, ws_ptr, dgi_ptr,
                            dgh_ptr, dcbuf_ptr, dhr_ptr, k, T, B, H, N, rows, cols,
                            CELL, G, S, HAS_LEN, REVERSE, PROJ, BLOCK_B, BLOCK_H, BLOCK_K, PREC,
                        )  # fmt: skip
        else:
            if th * BLOCK_H < H:
                _bwd_gate_tile(
                    tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_ty), gy_ptr, wr_ptr, len_ptr, y_ptr, hprev_ptr,
                    cprev_ptr, ws_ptr, dgi_ptr, dgh_ptr, dcbuf_ptr, dhr_ptr, k, T, B, H, N, rows, cols,
                    CELL, G, S, HAS_LEN, REVERSE, PROJ, BLOCK_B, BLOCK_H, BLOCK_K, PREC,
                )  # fmt: skip
        if q + 1 < q1:
            _grid_barrier(count_ptr, (q - q0 + 1) * tl.num_programs(0))
