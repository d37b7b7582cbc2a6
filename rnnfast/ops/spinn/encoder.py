"""Batched SPINN encoder: the whole shift/reduce loop over a thin stack, no per-example Python state.

Dimensions: B batch, N leaves, T transitions, H hidden, HT tracker hidden, R rows reducing at a step,
S = 1 + N + T slots per example.

The thin stack (Bowman et al. 2016) keeps every state ever pushed in one tensor and the stack itself as
row pointers into it. Here the state tensor is a pool of S slots per example, stored slot-major as two
(S·B, H) tensors ``ph`` and ``pc`` (row ``slot·B + b``):
    slot 0          the null state (the two stack bottoms, and the buffer top once the buffer is empty)
    slots 1..N      the leaves, in reading order (a shift only moves a pointer: nothing is copied)
    slot N+1+t      the state composed by step t's reduce
Each slot is written once, so the final pool is all the backward needs.

With the transitions given, the pointers depend only on them: :func:`build_plan` walks the transitions
once on the host and produces, per step, the flat rows the tracker reads, the examples that reduce,
their children and their output rows. The loop then only gathers, runs one batched reduce and one
tracker step, and scatters: a fixed sequence of kernels with no host synchronisation, capturable in a
CUDA graph. Backward is a hand-written reverse loop over the same plan; every weight gradient is one
big GEMM after it. Measured against the alternatives (all rows composed with masking; autograd over
out-of-place ops) in scripts/bench_spinn.py and docs/spinn.md.

On CPU tensors (float32/float64, the tree-LSTM cell on the ``cpu`` backend, not ``all_rows``) the same
loop runs in C++ instead, planning included: the custom ops ``rnnfast::spinn_fwd/_bwd``
(rnnfast/ops/spinn/function.py, csrc/cpu/spinn.cpp), which torch.compile traces without a graph break.
The Python loop here serves the other devices, dtypes and backends.

Without transitions (a predicting tracker), :func:`_predict` keeps the stack pointers on the device and
picks each step's action by a masked argmax; see :func:`spinn_encode`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnfast import backends, functional
from rnnfast._guards import check_tracer
from rnnfast.nn.transitions import PAD, REDUCE, SHIFT
from rnnfast.ops.spinn import function

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
_CPP_DTYPES = (torch.float32, torch.float64)


@dataclass
class Plan:
    """Per-step gather/scatter rows of one batch of transitions (all flat rows ``slot·B + b``).

    buf (T, B): the buffer top of every example (the tracker's first input);
    stk (T, 2B): its stack top and second, interleaved per example (so a gather views as (B, 2H)).
    For the reducing steps ``steps`` (the others only run the tracker), each step t has
    rows[t] (R_t,): the examples that reduce; pair[t] (2R_t,): their left and right children
    interleaved (a gather views as (R_t, 2H), the input of one fused GEMM); kids[t] (2R_t,): the same
    children lefts first, then rights; out[t] (R_t,): where the composed states go; off[t]: the
    offset of these R_t rows in the packed (ΣR, ·) buffers. root (B,): the final stack top.
    """

    T: int
    B: int
    N: int
    buf: Tensor
    stk: Tensor
    rows: dict[int, Tensor]
    pair: dict[int, Tensor]
    kids: dict[int, Tensor]
    out: dict[int, Tensor]
    off: dict[int, int]
    total: int
    root: Tensor
    tr: Tensor | None = None  # the transitions (T, B) int64 on the host, for the C++ loop

    @property
    def slots(self) -> int:
        return 1 + self.N + self.T

    @property
    def steps(self) -> list[int]:
        return list(self.off)


def _transitions_tensor(transitions, B: int) -> Tensor:
    """Type and shape of the transitions (T, B), checked without reading them; as int64 on the host."""
    if not isinstance(transitions, Tensor):
        raise TypeError(f"transitions: expected a torch.Tensor, got {type(transitions).__name__}")
    if transitions.dtype not in _INT_DTYPES:
        raise TypeError(
            f"transitions: expected an integer tensor (SHIFT=3, REDUCE=2, PAD=1), got {transitions.dtype}"
        )
    if transitions.dim() != 2 or transitions.shape[1] != B:
        raise ValueError(f"transitions: expected shape (T, B={B}), got {tuple(transitions.shape)}")
    return transitions.to("cpu", torch.int64)


def check_transitions(transitions, B: int, N: int) -> Tensor:
    """Validate the transitions (T, B) once, on the host. Returns them as an int64 CPU tensor.

    The C++ loop (csrc/cpu/spinn.cpp) repeats these value checks with the same messages."""
    tr = _transitions_tensor(transitions, B)
    bad = ~((tr == SHIFT) | (tr == REDUCE) | (tr == PAD))
    if bad.any():
        t, b = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"transitions: unknown code {int(tr[t, b])} at step {t}, example {b}; "
            f"expected SHIFT={SHIFT}, REDUCE={REDUCE} or PAD={PAD}"
        )
    shifts = (tr == SHIFT).sum(0)
    if shifts.numel() and int(shifts.max()) > N:
        b = int(shifts.argmax())
        raise ValueError(
            f"transitions: example {b} shifts {int(shifts[b])} times but buffers holds only N={N} leaves"
        )
    # Stack size after each step (the two null bottoms excluded); a reduce needs two entries.
    size = torch.cumsum((tr == SHIFT).long() - (tr == REDUCE).long(), 0)
    before = size - (tr == SHIFT).long() + (tr == REDUCE).long()
    under = (tr == REDUCE) & (before < 2)
    if under.any():
        t, b = (int(v) for v in under.nonzero()[0])
        raise ValueError(
            f"transitions: step {t}, example {b} reduces with {int(before[t, b])} entr"
            f"{'y' if int(before[t, b]) == 1 else 'ies'} on the stack; a reduce needs 2"
        )
    return tr


def build_plan(tr: Tensor, N: int, all_rows: bool = False) -> Plan:
    """Walk validated host transitions ``tr`` (T, B) int64 once and return the per-step rows.

    Plain Python lists per example (one pass over T·B codes, ~5 ms at B=128, T=49), then a single
    tensor for everything, split into per-step views: cheaper than ~30 small tensor ops per step.
    ``all_rows`` composes every example at every step that has a reduce (examples that do not reduce
    read the null slot and write their own unused output slot): fixed R = B per step, more FLOPs.
    """
    T, B = tr.shape
    codes = tr.t().tolist()
    buf = [0] * (T * B)
    stk = [0] * (2 * T * B)
    lefts: list[dict[int, int]] = [{} for _ in range(T)]
    rights: list[dict[int, int]] = [{} for _ in range(T)]
    root = []
    for b, seq in enumerate(codes):
        n = seq.count(SHIFT)
        stack, bp = [0, 0], 0  # slots; the two null bottoms
        for t, a in enumerate(seq):
            i = t * B + b
            buf[i] = (bp + 1 if bp < n else 0) * B + b
            stk[2 * i] = stack[-1] * B + b
            stk[2 * i + 1] = stack[-2] * B + b
            if a == SHIFT:
                bp += 1
                stack.append(bp)
            elif a == REDUCE:
                rights[t][b] = stack.pop() * B + b
                lefts[t][b] = stack.pop() * B + b
                stack.append(N + 1 + t)
        root.append(stack[-1] * B + b)
    flat = buf + stk + root
    sizes = [T * B, 2 * T * B, B]
    off, total = {}, 0
    for t in range(T):
        if not lefts[t]:
            continue
        rows = list(range(B)) if all_rows else list(lefts[t])
        left = [lefts[t].get(b, b) for b in rows]  # b = the null slot's row of example b
        right = [rights[t].get(b, b) for b in rows]
        pair = [v for lr in zip(left, right) for v in lr]
        out = [(N + 1 + t) * B + b for b in rows]
        flat += rows + pair + left + right + out
        sizes += [len(rows), 2 * len(rows), 2 * len(rows), len(rows)]
        off[t] = total
        total += len(rows)
    views = iter(torch.tensor(flat, dtype=torch.int64).split(sizes))
    buf_t, stk_t, root_t = next(views).view(T, B), next(views).view(T, 2 * B), next(views)
    rows_d, pair_d, kids_d, out_d = {}, {}, {}, {}
    for t in off:
        rows_d[t], pair_d[t], kids_d[t], out_d[t] = next(views), next(views), next(views), next(views)
    return Plan(T, B, N, buf_t, stk_t, rows_d, pair_d, kids_d, out_d, off, total, root_t, tr)


def _to_device(p: Plan, device: torch.device) -> Plan:
    """One host-to-device copy for the whole plan; the per-step tensors become views of it."""
    if device.type == "cpu":
        return p
    steps = p.steps
    parts = [p.buf.view(-1), p.stk.view(-1), p.root]
    for t in steps:
        parts += [p.rows[t], p.pair[t], p.kids[t], p.out[t]]
    views = iter(torch.split(torch.cat(parts).to(device, non_blocking=True), [t.numel() for t in parts]))
    buf, stk, root = next(views).view(p.T, p.B), next(views).view(p.T, 2 * p.B), next(views)
    rows, pair, kids, out = {}, {}, {}, {}
    for t in steps:
        rows[t], pair[t], kids[t], out[t] = next(views), next(views), next(views), next(views)
    return Plan(p.T, p.B, p.N, buf, stk, rows, pair, kids, out, dict(p.off), p.total, root, p.tr)


def make_plan(transitions: Tensor, N: int, all_rows: bool = False, device=None) -> Plan:
    """Validate ``transitions`` (T, B) for buffers of N leaves and plan them, on ``device``."""
    tr = check_transitions(transitions, transitions.shape[1] if isinstance(transitions, Tensor) else -1, N)
    return _to_device(build_plan(tr, N, all_rows), torch.device(device or "cpu"))


def _pools(buffers: Tensor, null: Tensor, T: int) -> tuple[Tensor, Tensor]:
    """(S·B, H) pools of h and c: null, leaves slot-major, then T unwritten step slots.

    Only the first 1 + N slots are copied (a cat would also copy the T empty ones: 4.5 → 1.5 ms per
    pool at B=128, N=25, T=49, H=300).
    """
    B, N, H2 = buffers.shape
    H = H2 // 2
    leaves = buffers.transpose(0, 1)
    pools = []
    for part in (slice(0, H), slice(H, H2)):
        pool = buffers.new_empty((1 + N + T) * B, H)
        pool[:B] = null[:, part]
        pool[B : (1 + N) * B].view(N, B, H).copy_(leaves[..., part])
        pools.append(pool)
    return pools[0], pools[1]


def _lstm_pointwise(gates, c):
    """LSTMCell pointwise part (gate order i, f, g, o), activating ``gates`` (B, 4HT) in place."""
    HT = c.shape[1]
    gates[:, : 2 * HT].sigmoid_()
    gates[:, 2 * HT : 3 * HT].tanh_()
    gates[:, 3 * HT :].sigmoid_()
    i, f, g, o = gates.chunk(4, 1)
    c = torch.addcmul(f * c, i, g)
    return o * c.tanh(), c


def _lstm_cell(x, h, c, w_ih, w_hh, bias, act_out):
    gates = torch.addmm(bias, x, w_ih.t()) if bias is not None else x.mm(w_ih.t())
    gates.addmm_(h, w_hh.t())
    act_out.copy_(gates)
    return _lstm_pointwise(act_out, c)


class SpinnEncode(torch.autograd.Function):
    """The planned loop. Packed buffers over the ΣR reduced rows keep what the weight gradients need,
    so backward does one GEMM per weight after its loop instead of one per step:
        xk (ΣR, 2H) the children's h [left, right], xt (ΣR, HT) the tracker h, lstm_in (ΣR, 5H);
    tracker: xs (T, B, 2H) stack top/second h, acts (T, B, 4HT) activated gates, cs, hs (T, B, HT).
    The buffer-top part of the tracker's input GEMM runs once over all leaves before the loop.
    """

    @staticmethod
    def forward(
        ctx, p: Plan, impl, buffers, null, w_l, b_l, w_r, w_t, w_ih, w_hh, b_ih, b_hh, w_trans, b_trans
    ):
        T, B, N = p.T, p.B, p.N
        ph, pc = _pools(buffers, null, T)
        H = ph.shape[1]
        tracker = w_ih is not None
        wk = torch.cat([w_l, w_r], 1)  # (5H, 2H): one GEMM over [h_l, h_r]
        xk = ph.new_empty(p.total, 2 * H)
        lstm_in = ph.new_empty(p.total, 5 * H)
        if tracker:
            HT = w_hh.shape[1]
            xt = ph.new_empty(p.total, HT)
            acts = ph.new_empty(T, B, 4 * HT)
            cs, hs = ph.new_empty(T, B, HT), ph.new_empty(T, B, HT)
            xs = ph.new_empty(T, B, 2 * H)
            w_buf, w_stk = w_ih[:, :H], w_ih[:, H:]
            bias = None if b_ih is None else b_ih + b_hh
            leaves = ph[: (1 + N) * B]
            g_buf = torch.addmm(bias, leaves, w_buf.t()) if bias is not None else leaves.mm(w_buf.t())
            h = c = ph.new_zeros(B, HT)
        for t in range(T):
            if tracker:
                torch.index_select(ph, 0, p.stk[t], out=xs[t].view(2 * B, H))
                gates = torch.index_select(g_buf, 0, p.buf[t], out=acts[t])
                gates.addmm_(xs[t], w_stk.t()).addmm_(h, w_hh.t())
                h, c = _lstm_pointwise(gates, c)
                hs[t], cs[t] = h, c
            if t in p.off:
                rows, out, kids, o = p.rows[t], p.out[t], p.kids[t], p.off[t]
                R = rows.shape[0]
                x, li = xk[o : o + R], lstm_in[o : o + R]
                torch.index_select(ph, 0, p.pair[t], out=x.view(2 * R, H))
                ck = pc.index_select(0, kids)
                if b_l is not None:
                    torch.addmm(b_l, x, wk.t(), out=li)
                else:
                    torch.mm(x, wk.t(), out=li)
                if tracker:
                    torch.index_select(hs[t], 0, rows, out=xt[o : o + R])
                    li.addmm_(xt[o : o + R], w_t.t())
                h_new, c_new = impl.forward(li, ck[:R], ck[R:])
                ph.index_copy_(0, out, h_new)
                pc.index_copy_(0, out, c_new)
        h_root, c_root = ph.index_select(0, p.root), pc.index_select(0, p.root)
        logits = F.linear(hs, w_trans, b_trans) if w_trans is not None else buffers.new_empty((0,))
        ctx.p, ctx.impl = p, impl
        saved = (ph, pc, xk, lstm_in, wk, w_t, w_ih, w_hh, w_trans)
        if tracker:
            saved += (xt, acts, cs, hs, xs)
        ctx.save_for_backward(*saved)
        ctx.flags = (b_l is not None, b_ih is not None)
        if w_trans is None:
            ctx.mark_non_differentiable(logits)
        return h_root, c_root, logits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h, grad_c, grad_logits):
        p, impl = ctx.p, ctx.impl
        ph, pc, xk, lstm_in, wk, w_t, w_ih, w_hh, w_trans, *trk_saved = ctx.saved_tensors
        has_bl, has_bih = ctx.flags
        T, B, N = p.T, p.B, p.N
        H = ph.shape[1]
        tracker = w_ih is not None
        dph, dpc = torch.zeros_like(ph), torch.zeros_like(pc)
        dph.index_add_(0, p.root, grad_h)
        dpc.index_add_(0, p.root, grad_c)
        d_all = lstm_in.new_empty(p.total, 5 * H)
        dw_trans = db_trans = None
        if tracker:
            xt, acts, cs, hs, xs = trk_saved
            HT = hs.shape[2]
            w_stk = w_ih[:, H:]
            if w_trans is not None and grad_logits is not None:
                dhs = torch.matmul(grad_logits, w_trans)
                g2 = grad_logits.reshape(-1, grad_logits.shape[-1])
                dw_trans = g2.t().mm(hs.reshape(-1, HT))
                db_trans = g2.sum(0)
            else:
                dhs = torch.zeros_like(hs)
            dgates = torch.empty_like(acts)
            dh = grad_h.new_zeros(B, HT)
            dc = grad_h.new_zeros(B, HT)
        for t in range(T - 1, -1, -1):
            if t in p.off:
                rows, out, kids, o = p.rows[t], p.out[t], p.kids[t], p.off[t]
                R = rows.shape[0]
                ck = pc.index_select(0, kids)
                d, dc_l, dc_r = impl.backward(
                    dph.index_select(0, out),
                    dpc.index_select(0, out),
                    lstm_in[o : o + R],
                    ck[:R],
                    ck[R:],
                    pc.index_select(0, out),
                )
                d_all[o : o + R] = d
                dph.index_add_(0, p.pair[t], d.mm(wk).view(2 * R, H))
                dpc.index_add_(0, kids, torch.cat([dc_l, dc_r]))
                if tracker:
                    dhs[t].index_add_(0, rows, d.mm(w_t))
            if tracker:
                dh = dh + dhs[t]
                i, f, g_, o_ = acts[t].chunk(4, 1)
                tc = cs[t].tanh()
                dct = torch.addcmul(dc, dh * o_, 1 - tc * tc)
                c_prev = cs[t - 1] if t > 0 else torch.zeros_like(dc)
                dg = dgates[t]
                torch.mul(dct * g_, i * (1 - i), out=dg[:, :HT])
                torch.mul(dct * c_prev, f * (1 - f), out=dg[:, HT : 2 * HT])
                torch.mul(dct * i, 1 - g_ * g_, out=dg[:, 2 * HT : 3 * HT])
                torch.mul(dh * tc, o_ * (1 - o_), out=dg[:, 3 * HT :])
                dc = dct * f
                dph.index_add_(0, p.stk[t], dg.mm(w_stk).view(2 * B, H))
                dh = dg.mm(w_hh)
        # Weight gradients: one GEMM each over all rows.
        dwk = d_all.t().mm(xk)
        dw_l, dw_r = dwk[:, :H], dwk[:, H:]
        db_l = d_all.sum(0) if has_bl else None
        dw_t = dw_ih = dw_hh = db_ih = db_hh = None
        if tracker:
            dw_t = d_all.t().mm(xt)
            dg_all = dgates.view(T * B, 4 * HT)
            # The buffer-top part: gate gradients summed per leaf row, then one GEMM each way.
            dg_buf = dgates.new_zeros((1 + N) * B, 4 * HT).index_add_(0, p.buf.reshape(-1), dg_all)
            leaves = ph[: (1 + N) * B]
            dph[: (1 + N) * B] += dg_buf.mm(w_ih[:, :H])
            dw_ih = torch.cat([dg_buf.t().mm(leaves), dg_all.t().mm(xs.view(T * B, 2 * H))], 1)
            h_prev = torch.cat([hs.new_zeros(1, B, HT), hs[:-1]])[:T].reshape(T * B, HT)
            dw_hh = dg_all.t().mm(h_prev)
            if has_bih:
                db_ih = dg_all.sum(0)
                db_hh = db_ih.clone()
        dph3, dpc3 = dph.view(-1, B, H), dpc.view(-1, B, H)
        d_buffers = torch.cat([dph3[1 : N + 1], dpc3[1 : N + 1]], 2).transpose(0, 1)
        d_null = torch.cat([dph3[0], dpc3[0]], 1)
        grads = (d_buffers, d_null, dw_l, db_l, dw_r, dw_t, dw_ih, dw_hh, db_ih, db_hh, dw_trans, db_trans)
        return (None, None) + grads


def encode_autograd(p: Plan, buffers, null, w_l, b_l, w_r, w_t, w_ih, w_hh, b_ih, b_hh):
    """The same planned loop in differentiable out-of-place ops, backward left to autograd.

    Kept as the measured alternative to :class:`SpinnEncode`: each step's scatter has to copy the whole
    pool (``index_copy`` out of place) and autograd records ~20 nodes per step; see docs/spinn.md for the
    timings. Returns the root (h, c).
    """
    T, B = p.T, p.B
    H = buffers.shape[2] // 2
    ph, pc = _pools(buffers, null, T)
    tracker = w_ih is not None
    if tracker:
        h = c = buffers.new_zeros(B, w_hh.shape[1])
    for t in range(T):
        if tracker:
            x = torch.cat([ph.index_select(0, p.buf[t]), ph.index_select(0, p.stk[t]).view(B, 2 * H)], 1)
            h, c = torch.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
        if t in p.off:
            rows, out, kids = p.rows[t], p.out[t], p.kids[t]
            R = rows.shape[0]
            hk, ck = ph.index_select(0, kids), pc.index_select(0, kids)
            ht = h.index_select(0, rows) if tracker else None
            h_new, c_new = functional.tree_lstm_reduce(hk[:R], ck[:R], hk[R:], ck[R:], w_l, b_l, w_r, ht, w_t)
            ph, pc = ph.index_copy(0, out, h_new), pc.index_copy(0, out, c_new)
    return ph.index_select(0, p.root), pc.index_select(0, p.root)


@torch.no_grad()
def _predict(impl, buffers, null, lengths, w_l, b_l, w_r, w_t, w_ih, w_hh, b_ih, b_hh, w_trans, b_trans):
    """Greedy decoding with the stack pointers on the device: every example composes at every step
    (non-reducing ones into their own unused slot), so no step depends on the host.

    Returns (h, c, logits, transitions), transitions (2·max(lengths)−1, B) on the device.
    """
    B, N, _ = buffers.shape
    dev = buffers.device
    T = max(2 * int(lengths.max()) - 1, 0) if B else 0
    ph, pc = _pools(buffers, null, T)
    HT = w_hh.shape[1]
    ar = torch.arange(B, device=dev)
    stack = torch.zeros(B, T + 2, dtype=torch.int64, device=dev)
    sp = torch.full((B,), 2, dtype=torch.int64, device=dev)
    bp = torch.zeros(B, dtype=torch.int64, device=dev)
    n = lengths.to(dev)
    h = c = buffers.new_zeros(B, HT)
    act = buffers.new_empty(B, 4 * HT)
    bias = None if b_ih is None else b_ih + b_hh
    never = torch.zeros(B, dtype=torch.bool, device=dev)
    logits, actions = [], []
    for t in range(T):
        top = stack.gather(1, (sp - 1)[:, None]).squeeze(1)
        second = stack.gather(1, (sp - 2)[:, None]).squeeze(1)
        can_shift, can_reduce = bp < n, sp >= 4
        buf = torch.where(can_shift, bp + 1, 0)
        x = ph.index_select(0, (torch.stack([buf, top, second], 1) * B + ar[:, None]).view(-1)).view(B, -1)
        h, c = _lstm_cell(x, h, c, w_ih, w_hh, bias, act)
        score = F.linear(h, w_trans, b_trans)
        logits.append(score)
        valid = torch.stack([never, ~(can_shift | can_reduce), can_reduce, can_shift], 1)
        a = score.masked_fill(~valid, float("-inf")).argmax(1)
        actions.append(a)
        kids = torch.cat([second * B + ar, top * B + ar])
        hk, ck = ph.index_select(0, kids), pc.index_select(0, kids)
        lstm_in = F.linear(hk[:B], w_l, b_l).addmm_(hk[B:], w_r.t()).addmm_(h, w_t.t())
        h_new, c_new = impl.forward(lstm_in, ck[:B], ck[B:])
        slot = N + 1 + t
        ph[slot * B : (slot + 1) * B] = h_new
        pc[slot * B : (slot + 1) * B] = c_new
        shift, red = a == SHIFT, a == REDUCE
        pos = torch.where(shift, sp, torch.where(red, sp - 2, sp - 1))
        val = torch.where(shift, bp + 1, torch.where(red, torch.full_like(bp, slot), top))
        stack.scatter_(1, pos[:, None], val[:, None])
        sp = sp + shift.long() - red.long()
        bp = bp + shift.long()
    root = stack.gather(1, (sp - 1)[:, None]).squeeze(1) * B + ar
    tr = torch.stack(actions) if actions else torch.empty(0, B, dtype=torch.int64, device=dev)
    lg = torch.stack(logits) if logits else buffers.new_empty(0, B, w_trans.shape[0])
    return ph.index_select(0, root), pc.index_select(0, root), lg, tr


def _encode_cpp(buffers, null, tr, weights, w_trans, b_trans):
    """The C++ loop (validates ``tr`` (T, B) int64 on the host itself); logits (T, B, 4) or None."""
    h, c, hs = function.spinn_cpu(buffers, null, tr, *weights)
    return h, c, (F.linear(hs, w_trans, b_trans) if w_trans is not None else None)


def _check(name: str, t, shape: tuple[int | None, ...], ref: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating tensor, got {t.dtype}")
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} like buffers, got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name}: expected a tensor on {ref.device} like buffers, got {t.device}")


def spinn_encode(
    buffers: Tensor,
    transitions: Tensor | None,
    null: Tensor | None,
    w_l: Tensor,
    b_l: Tensor | None,
    w_r: Tensor,
    w_t: Tensor | None = None,
    w_ih: Tensor | None = None,
    w_hh: Tensor | None = None,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    w_trans: Tensor | None = None,
    b_trans: Tensor | None = None,
    *,
    lengths: Tensor | None = None,
    all_rows: bool = False,
    plan: Plan | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Encode a batch of binary trees with SPINN (the classic PyTorch SNLI example's model).

    buffers (B, N, 2H): leaf states [h; c] in reading order, left-aligned.
    transitions (T, B) integer: SHIFT=3, REDUCE=2, PAD=1 (no-op); on the host normally (a device tensor
    costs one copy before the loop). None with a predicting tracker: greedy decoding of 2·n−1 steps per
    example (n = ``lengths[b]``, default N), invalid actions masked.
    null (B, 2H) or None (zeros): the two stack bottoms and the buffer top once the buffer is empty.
    Reduce: w_l, w_r (5H, H), b_l (5H,) or None, w_t (5H, HT) (with a tracker).
    Tracker (an LSTMCell over cat(buffer top h, stack top h, stack second h)): w_ih (4HT, 3H),
    w_hh (4HT, HT), b_ih, b_hh (4HT,) or None; w_trans (4, HT), b_trans (4,) for transition logits.
    ``all_rows`` composes all B rows at every reducing step instead of only the reducing ones.
    ``plan``: a :class:`Plan` already on the device (``make_plan(transitions, N, device=...)``), used
    instead of ``transitions``: nothing then touches the host, so the call can be captured in a CUDA
    graph (build the plan before capturing; its copy to the device cannot be captured).

    Returns (h, c, logits, transitions): root state (B, H) each; logits (T, B, 4) or None without
    w_trans; the transitions that were run (the predicted ones when none were given).
    """
    check_tracer("rnnfast.functional.spinn_encode")
    if not isinstance(buffers, Tensor):
        raise TypeError(f"buffers: expected a torch.Tensor, got {type(buffers).__name__}")
    if buffers.dim() != 3 or buffers.shape[2] % 2:
        raise ValueError(f"buffers: expected shape (B, N, 2·H), got {tuple(buffers.shape)}")
    _check("buffers", buffers, (None, None, None), buffers)
    B, N, H2 = buffers.shape
    H = H2 // 2
    if null is None:
        null = buffers.new_zeros(B, H2)
    _check("null", null, (B, H2), buffers)
    _check("w_l", w_l, (5 * H, H), buffers)
    _check("w_r", w_r, (5 * H, H), buffers)
    if b_l is not None:
        _check("b_l", b_l, (5 * H,), buffers)
    tracker = w_ih is not None
    if (w_t is None) != (w_ih is None) or (w_ih is None) != (w_hh is None):
        raise ValueError(
            "w_t, w_ih, w_hh: a tracker needs all three (its LSTMCell and the reduce's track), "
            f"got w_t={'set' if w_t is not None else None}, w_ih={'set' if w_ih is not None else None}, "
            f"w_hh={'set' if w_hh is not None else None}"
        )
    if tracker:
        HT = w_hh.shape[-1]
        _check("w_hh", w_hh, (4 * HT, HT), buffers)
        _check("w_ih", w_ih, (4 * HT, 3 * H), buffers)
        _check("w_t", w_t, (5 * H, HT), buffers)
        if (b_ih is None) != (b_hh is None):
            raise ValueError("b_ih, b_hh: expected both or neither")
        if b_ih is not None:
            _check("b_ih", b_ih, (4 * HT,), buffers)
            _check("b_hh", b_hh, (4 * HT,), buffers)
    if w_trans is not None:
        if not tracker:
            raise ValueError("w_trans: transition logits need a tracker (w_ih, w_hh, w_t)")
        _check("w_trans", w_trans, (None, HT), buffers)
        if b_trans is not None:
            _check("b_trans", b_trans, (w_trans.shape[0],), buffers)
    # The Python loop runs the reduce's three linears as one fused GEMM into packed buffers (see
    # SpinnEncode); its tree-LSTM composition is the registered op, served by the best backend for the
    # device. (The backend module is looked up only where the Python loop runs: torch.compile cannot
    # trace that lookup, and the C++ loop does not need it.)
    sizes = {"R": B, "H": H}
    name = backends.resolve("tree_lstm", buffers.device, buffers.dtype, sizes, backend)
    # The whole loop in C++ (rnnfast::spinn_fwd/_bwd) where the tree-LSTM cell runs on the cpu backend;
    # the Python loop below is for other devices, dtypes and backends (and the all-rows variant).
    cpp = name == "cpu" and buffers.dtype in _CPP_DTYPES and not all_rows and B > 0
    weights = (w_l, b_l, w_r, w_t, w_ih, w_hh, b_ih, b_hh)
    if plan is not None:
        if not isinstance(plan, Plan) or (plan.B, plan.N) != (B, N):
            raise ValueError(f"plan: expected a Plan for B={B}, N={N}, got {plan!r:.80}")
        if cpp and plan.tr is not None:
            h, c, logits = _encode_cpp(buffers, null, plan.tr, weights, w_trans, b_trans)
            return h, c, logits, transitions
        impl = backends.implementation(name, "tree_lstm")
        h, c, logits = SpinnEncode.apply(plan, impl, buffers, null, *weights, w_trans, b_trans)
        return h, c, (logits if w_trans is not None else None), transitions
    if transitions is None:
        if w_trans is None or w_trans.shape[0] != 4:
            raise ValueError("transitions: None needs a predicting tracker (w_trans of shape (4, HT))")
        if lengths is None:
            lengths = torch.full((B,), N, dtype=torch.int64)
        if not isinstance(lengths, Tensor) or lengths.dtype not in _INT_DTYPES or lengths.shape != (B,):
            raise ValueError(f"lengths: expected an integer tensor of shape ({B},), got {lengths!r}")
        lengths = lengths.cpu()
        if B and (int(lengths.min()) < 0 or int(lengths.max()) > N):
            raise ValueError(f"lengths: expected values in [0, N={N}], got {lengths.tolist()}")
        args = (*weights, w_trans, b_trans)
        impl = backends.implementation(name, "tree_lstm")
        h, c, logits, predicted = _predict(impl, buffers, null, lengths, *args)
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (buffers, null, *args)
        )
        if not needs_grad:
            return h, c, logits, predicted
        # Gradients flow through the states the predicted transitions built: replay them (one host copy).
        transitions = predicted
    if cpp:
        tr = _transitions_tensor(transitions, B)
        h, c, logits = _encode_cpp(buffers, null, tr, weights, w_trans, b_trans)
        return h, c, logits, transitions
    p = _to_device(build_plan(check_transitions(transitions, B, N), N, all_rows), buffers.device)
    impl = backends.implementation(name, "tree_lstm")
    h, c, logits = SpinnEncode.apply(p, impl, buffers, null, *weights, w_trans, b_trans)
    return h, c, (logits if w_trans is not None else None), transitions
