"""The reference backend: explicit BPTT vs autograd through the oracle, gradcheck, opcheck."""

import pytest
import torch

import rnnfast.ops.recurrence.function  # noqa: F401  (registers the custom ops)
import rnnfast.ops.tree_lstm.function  # noqa: F401
import rnnfast.ops.tree_lstm_reduce.function  # noqa: F401
from rnnfast import functional as RF
from rnnfast.ops.recurrence import reference as rec_ref
from rnnfast.ops.tree_lstm_reduce import reference as red_ref
from tests.utils import assert_close, case_id, oracle, recurrence_inputs, run_recurrence

SHAPES = [(1, 1, 1), (5, 3, 7), (4, 2, 33)]  # (T, B, H)
CASES = [
    (cell, T, B, H, P, lens, rev)
    for cell, P in [("rnn_tanh", 0), ("rnn_relu", 0), ("gru", 0), ("lstm", 0), ("lstm", 3)]
    for (T, B, H) in SHAPES
    for lens in (False, True)
    for rev in (False, True)
    if not (lens and B == 1 and T == 1)
]


def _ids(c):
    cell, T, B, H, P, lens, rev = c
    return case_id(c=cell, T=T, B=B, H=H, P=P) + ("-lens" if lens else "") + ("-rev" if rev else "")


def _lengths(T, B):
    # Ragged, unsorted, including a full-length row and (when B > 2) a zero-length row.
    vals = [T, max(T - 2, 1), 0, T - 1, 1][:B]
    return vals


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_bptt_matches_autograd_oracle(case):
    cell, T, B, H, P, lens, rev = case
    a = recurrence_inputs(cell, T, B, H, P, lengths=_lengths(T, B) if lens else None)
    y, h, c = run_recurrence(cell, a, rev, "reference")
    y_o, h_o, c_o = oracle(cell, **a, reverse=rev)
    assert_close("y", y, y_o, 1e-12)
    assert_close("h_n", h, h_o, 1e-12)
    if c is not None:
        assert_close("c_n", c, c_o, 1e-12)
    # Inject upstream gradients on every output, h_n and c_n included.
    gy, gh = torch.randn_like(y), torch.randn_like(h)
    outs, outs_o, grads = [y, h], [y_o, h_o], [gy, gh]
    if c is not None:
        outs.append(c)
        outs_o.append(c_o)
        grads.append(torch.randn_like(c))
    names = [k for k in ("gi", "h0", "c0", "w_hh", "b_hh", "w_hr") if a[k] is not None]
    inputs = [a[k] for k in names]
    got = torch.autograd.grad(outs, inputs, grads)
    want = torch.autograd.grad(outs_o, inputs, grads)
    for n, g, w in zip(names, got, want):
        assert_close("d" + n, g, w, 1e-11)


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c[1:4] == (5, 3, 7) or c[1:4] == (1, 1, 1)],
    ids=_ids,
)
def test_gradcheck_reference(case):
    cell, T, B, H, P, lens, rev = case
    a = recurrence_inputs(cell, T, B, H, P, lengths=_lengths(T, B) if lens else None)
    names = [k for k in ("gi", "h0", "c0", "w_hh", "b_hh", "w_hr") if a[k] is not None]

    def f(*xs):
        b = dict(a, **dict(zip(names, xs)))
        return tuple(t for t in run_recurrence(cell, b, rev, "reference") if t is not None)

    assert torch.autograd.gradcheck(f, [a[k] for k in names], fast_mode=True)


def test_lengths_semantics_per_sequence():
    """Each ragged row equals the same sequence run alone, truncated to its length."""
    T, B, H = 6, 4, 5
    lens = [6, 3, 1, 4]
    for rev in (False, True):
        a = recurrence_inputs("gru", T, B, H, lengths=lens, grad=False)
        y, h, _ = run_recurrence("gru", a, rev, "reference")
        for b, L in enumerate(lens):
            yb, hb = rec_ref.gru(
                a["gi"][:L, b : b + 1], a["h0"][b : b + 1], a["w_hh"], a["b_hh"], reverse=rev
            )
            assert_close(f"y[:, {b}]", y[:L, b : b + 1], yb, 1e-13)
            assert_close(f"h_n[{b}]", h[b : b + 1], hb, 1e-13)
            assert (y[L:, b] == 0).all(), f"y[{L}:, {b}] must be zero past the row's length"


@pytest.mark.parametrize("tracker", [False, True], ids=["no-tracker", "tracker"])
def test_tree_lstm_reduce_reference(tracker):
    R, H, HT = 5, 7, 3
    g = torch.Generator().manual_seed(3)

    def r(*s):
        return (torch.rand(*s, generator=g, dtype=torch.float64) - 0.5).requires_grad_()

    args = [r(R, H), r(R, H), r(R, H), r(R, H), r(5 * H, H), r(5 * H), r(5 * H, H)]
    if tracker:
        args += [r(R, HT), r(5 * H, HT)]
    h, c = RF.tree_lstm_reduce(*args, backend="reference")
    h_o, c_o = red_ref.tree_lstm_reduce(*args)
    assert_close("h", h, h_o, 1e-14)
    assert_close("c", c, c_o, 1e-14)
    assert torch.autograd.gradcheck(lambda *xs: RF.tree_lstm_reduce(*xs, backend="reference"), args)


def test_tree_lstm_reference_gradcheck():
    R, H = 4, 6
    x = [torch.randn(R, 5 * H, dtype=torch.float64, requires_grad=True)] + [
        torch.randn(R, H, dtype=torch.float64, requires_grad=True) for _ in range(2)
    ]
    assert torch.autograd.gradcheck(lambda *xs: RF.tree_lstm(*xs, backend="reference"), x)


# ---- torch.library.opcheck of every custom op --------------------------------------------------------


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_opcheck_recurrence(cell):
    a = recurrence_inputs(cell, 3, 2, 4, P=0, lengths=[3, 2], grad=False)
    fwd_args = (
        a["gi"],
        a["h0"],
        a["c0"],
        a["w_hh"],
        a["b_hh"],
        None,
        a["lengths"],
        cell,
        False,
        True,
        "reference",
    )
    torch.library.opcheck(torch.ops.rnnfast.recurrence_fwd.default, fwd_args)
    y, h, c, ws = torch.ops.rnnfast.recurrence_fwd(*fwd_args)
    gc = torch.randn_like(c) if cell == "lstm" else None
    bwd_args = (
        torch.randn_like(y),
        torch.randn_like(h),
        gc,
        a["h0"],
        a["c0"],
        a["w_hh"],
        a["b_hh"],
        None,
        a["lengths"],
        y,
        ws,
        cell,
        True,
        "reference",
    )
    torch.library.opcheck(torch.ops.rnnfast.recurrence_bwd.default, bwd_args)


def test_opcheck_tree_ops():
    R, H = 3, 4
    x = torch.randn(R, 5 * H, dtype=torch.float64)
    cl, cr = torch.randn(R, H, dtype=torch.float64), torch.randn(R, H, dtype=torch.float64)
    torch.library.opcheck(torch.ops.rnnfast.tree_lstm_fwd.default, (x, cl, cr, "reference"))
    h, c = torch.ops.rnnfast.tree_lstm_fwd(x, cl, cr, "reference")
    torch.library.opcheck(
        torch.ops.rnnfast.tree_lstm_bwd.default,
        (torch.randn_like(h), torch.randn_like(c), x, cl, cr, c, "reference"),
    )
    hl, hr, ht = (torch.randn(R, H, dtype=torch.float64) for _ in range(3))
    wl, wr, wt = (torch.randn(5 * H, H, dtype=torch.float64) for _ in range(3))
    b = torch.randn(5 * H, dtype=torch.float64)
    args = (hl, cl, hr, cr, wl, b, wr, ht, wt, "reference")
    torch.library.opcheck(torch.ops.rnnfast.tree_lstm_reduce_fwd.default, args)
    h, c, ws = torch.ops.rnnfast.tree_lstm_reduce_fwd(*args)
    torch.library.opcheck(
        torch.ops.rnnfast.tree_lstm_reduce_bwd.default,
        (torch.randn_like(h), torch.randn_like(c), hl, cl, hr, cr, wl, b, wr, ht, wt, c, ws, "reference"),
    )
