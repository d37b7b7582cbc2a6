"""The ``cpu`` backend (C++ kernels in csrc/cpu) against the oracle, torch.nn and gradcheck."""

from __future__ import annotations

import os

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnfast
from rnnfast import _ext, backends
from rnnfast import functional as RF
from rnnfast.ops.recurrence import common
from rnnfast.ops.tree_lstm import reference as tree_ref
from rnnfast.ops.tree_lstm_reduce import reference as reduce_ref
from tests.utils import (
    assert_close,
    assert_matches_oracle,
    case_id,
    recurrence_inputs,
    run_recurrence,
)

ok, why = _ext.status()
pytestmark = pytest.mark.skipif(not ok, reason=f"C++ CPU kernels unavailable: {why}")

CELL_CASES = [("rnn_tanh", 0), ("rnn_relu", 0), ("gru", 0), ("lstm", 0), ("lstm", 3)]
CELL_IDS = [f"{c}-P{p}" for c, p in CELL_CASES]


def _call(cell, args, reverse, backend):
    return [o for o in run_recurrence(cell, args, reverse, backend) if o is not None]


def _grad_inputs(args):
    return {k: v for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad}


# --------------------------------------------------------------------------------------------------
# float64 gradcheck of every cell, with lengths (one empty row), reverse, and h0/c0/w_hr gradients.


@pytest.mark.parametrize("cell,P", CELL_CASES, ids=CELL_IDS)
@pytest.mark.parametrize("lengths", [None, [4, 1, 0]], ids=["full", "ragged"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gradcheck_recurrence(cell, P, lengths, reverse):
    args = recurrence_inputs(cell, T=4, B=3, H=5, P=P, lengths=lengths)
    names = list(_grad_inputs(args))

    def f(*ts):
        a = dict(args, **dict(zip(names, ts)))
        return _call(cell, a, reverse, "cpu")

    assert torch.autograd.gradcheck(f, [args[n] for n in names], fast_mode=cell == "lstm")


def test_gradcheck_tree_lstm():
    g = torch.Generator().manual_seed(3)
    R, H = 4, 5
    x = (torch.rand(R, 5 * H, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    cl = (torch.rand(R, H, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    cr = (torch.rand(R, H, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda *t: RF.tree_lstm(*t, backend="cpu"), (x, cl, cr))


@pytest.mark.parametrize("tracker", [False, True], ids=["no-tracker", "tracker"])
def test_gradcheck_tree_lstm_reduce(tracker):
    g = torch.Generator().manual_seed(4)
    R, H, HT = 3, 4, 2

    def r(*s):
        return ((torch.rand(*s, generator=g, dtype=torch.float64) * 2 - 1) * 0.5).requires_grad_()

    ins = [r(R, H), r(R, H), r(R, H), r(R, H), r(5 * H, H), r(5 * H), r(5 * H, H)]
    ins += [r(R, HT), r(5 * H, HT)] if tracker else [None, None]
    diff = [t for t in ins if t is not None]

    def f(*ts):
        it = iter(ts)
        full = [next(it) if t is not None else None for t in ins]
        return RF.tree_lstm_reduce(*full, backend="cpu")

    assert torch.autograd.gradcheck(f, diff, fast_mode=True)


# --------------------------------------------------------------------------------------------------
# Parity with the oracle on odd shapes, float64 (to 1e-12) and float32; gradients of every input with
# injected upstream gradients on y, h_n and c_n.

# (T, B, H): the register-blocked product covers B < 64 (remainder rows: B=7; on 2 threads from 4M
# multiply-adds per step: B=40, H=192), ATen GEMM from B=64.
SHAPES = [(1, 1, 1), (7, 1, 33), (5, 7, 33), (3, 16, 9), (2, 40, 192), (2, 64, 20)]
TOL = {torch.float64: 1e-12, torch.float32: 2e-5}


def _ragged(T, B):
    g = torch.Generator().manual_seed(T * 31 + B)
    lens = torch.randint(0, T + 1, (B,), generator=g)
    lens[0] = T
    return lens.tolist()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=[case_id(T=t, B=b, H=h) for t, b, h in SHAPES])
@pytest.mark.parametrize("cell,P", CELL_CASES, ids=CELL_IDS)
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
def test_matches_oracle(cell, P, shape, dtype, ragged):
    T, B, H = shape
    reverse = ragged  # cover both directions without doubling the grid
    lengths = _ragged(T, B) if ragged else None
    args = recurrence_inputs(cell, T, B, H, P=P, lengths=lengths, dtype=dtype)
    assert_matches_oracle(cell, args, reverse, "cpu", TOL[dtype], seed=7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_low_precision_matches_reference(cell, dtype):
    """Computed in float32 like the reference backend; outputs in the input dtype, ws in float32."""
    args = recurrence_inputs(cell, 6, 3, 16, lengths=[6, 2, 4], dtype=dtype)
    outs = _call(cell, args, True, "cpu")
    want = _call(cell, args, True, "reference")
    for name, o, w in zip(["y", "h_n", "c_n"], outs, want):
        assert_close(name, o, w, atol=1e-2, rtol=1e-2)
    ups = [torch.ones_like(o) for o in outs]
    inputs = _grad_inputs(args)
    for name, a, b in zip(
        inputs,
        torch.autograd.grad(outs, list(inputs.values()), ups),
        torch.autograd.grad(want, list(inputs.values()), ups),
    ):
        assert_close("d" + name, a, b, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("R,H", [(1, 1), (7, 33), (300, 64)], ids=["R1-H1", "R7-H33", "R300-H64"])
def test_tree_lstm_matches_oracle(R, H, dtype):
    g = torch.Generator().manual_seed(R + H)
    ins = [
        (torch.rand(*s, generator=g, dtype=torch.float64) * 4 - 2).to(dtype).requires_grad_()
        for s in [(R, 5 * H), (R, H), (R, H)]
    ]
    got = RF.tree_lstm(*ins, backend="cpu")
    want = tree_ref.tree_lstm(*ins)
    tol = TOL[dtype]
    for name, a, b in zip(["h", "c"], got, want):
        assert_close(name, a, b.detach(), atol=tol, rtol=tol)
    ups = [torch.randn(a.shape, generator=g, dtype=torch.float64).to(dtype) for a in got]
    for name, a, b in zip(
        ["dlstm_in", "dc_l", "dc_r"], torch.autograd.grad(got, ins, ups), torch.autograd.grad(want, ins, ups)
    ):
        assert_close(name, a, b, atol=10 * tol, rtol=10 * tol)


def test_tree_lstm_reduce_matches_oracle():
    g = torch.Generator().manual_seed(11)
    R, H, HT = 9, 33, 5

    def r(*s):
        return (torch.rand(*s, generator=g) * 2 - 1).requires_grad_()

    ins = [r(R, H), r(R, H), r(R, H), r(R, H), r(5 * H, H), r(5 * H), r(5 * H, H), r(R, HT), r(5 * H, HT)]
    got = RF.tree_lstm_reduce(*ins, backend="cpu")
    want = reduce_ref.tree_lstm_reduce(*ins)
    for name, a, b in zip(["h", "c"], got, want):
        assert_close(name, a, b.detach(), atol=1e-5, rtol=1e-5)
    ups = [torch.randn(a.shape, generator=g) for a in got]
    names = ["dh_l", "dc_l", "dh_r", "dc_r", "dw_l", "db_l", "dw_r", "dh_track", "dw_t"]
    for name, a, b in zip(names, torch.autograd.grad(got, ins, ups), torch.autograd.grad(want, ins, ups)):
        assert_close(name, a, b, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------------
# Module parity: rnnfast.GRU/RNN/LSTM(backend="cpu") vs torch.nn, packed, bidirectional, two layers.

MODULES = [
    ("RNN", {"nonlinearity": "tanh"}),
    ("RNN", {"nonlinearity": "relu"}),
    ("GRU", {}),
    ("LSTM", {}),
    ("LSTM", {"proj_size": 5}),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind,kw", MODULES, ids=["rnn_tanh", "rnn_relu", "gru", "lstm", "lstm-proj"])
def test_module_matches_torch_nn(kind, kw, packed, dtype):
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(6, 9, num_layers=2, bidirectional=True, **kw).to(dtype)
    mod = rnnfast.from_torch(ref, backend="cpu")
    T, B = 7, 4
    x = torch.randn(T, B, 6, dtype=dtype)
    lengths = torch.tensor([7, 5, 5, 2])
    if packed:
        xin = pack_padded_sequence(x, lengths, enforce_sorted=False)
    else:
        xin = x
    out_ref, st_ref = ref(xin)
    out, st = mod(xin)
    if packed:
        out_ref, _ = pad_packed_sequence(out_ref)
        out, _ = pad_packed_sequence(out)
    tol = TOL[dtype] * (1 if dtype == torch.float64 else 5)
    assert_close("output", out, out_ref, atol=tol, rtol=tol)
    st, st_ref = (
        (st if isinstance(st, tuple) else (st,)),
        (st_ref if isinstance(st_ref, tuple) else (st_ref,)),
    )
    for name, a, b in zip(["h_n", "c_n"], st, st_ref):
        assert_close(name, a, b, atol=tol, rtol=tol)
    loss = out.square().sum() + sum(s.sum() for s in st)
    loss_ref = out_ref.square().sum() + sum(s.sum() for s in st_ref)
    loss.backward()
    loss_ref.backward()
    for (name, p), (_, q) in zip(mod.named_parameters(), ref.named_parameters()):
        assert_close("grad " + name, p.grad, q.grad, atol=20 * tol, rtol=20 * tol)


def test_module_auto_picks_cpu_backend():
    assert backends.resolve("module", torch.device("cpu"), torch.float32, {"cell": "gru"}, "auto") == "cpu"


# --------------------------------------------------------------------------------------------------
# The compiled ops themselves: torch.library.opcheck, input checks, NaN poisoning.


def _op_args(cell, P=0, lengths=None, need_ws=True, reverse=False):
    a = recurrence_inputs(cell, 4, 3, 6, P=P, lengths=lengths, grad=False)
    fwd = (
        a["gi"],
        a["h0"],
        a["c0"],
        a["w_hh"],
        a["b_hh"],
        a["w_hr"],
        a["lengths"],
        common.CELL_CODE[cell],
        reverse,
        need_ws,
    )
    return a, fwd


@pytest.mark.parametrize("cell,P", CELL_CASES, ids=CELL_IDS)
def test_opcheck_recurrence(cell, P):
    a, fwd = _op_args(cell, P, lengths=[4, 2, 0], reverse=True)
    torch.library.opcheck(torch.ops.rnnfast_C.recurrence_fwd.default, fwd)
    torch.library.opcheck(torch.ops.rnnfast_C.recurrence_fwd.default, fwd[:-1] + (False,))
    y, h_n, c_n, ws = torch.ops.rnnfast_C.recurrence_fwd(*fwd)
    g = torch.Generator().manual_seed(1)
    bwd = (
        torch.randn(y.shape, generator=g, dtype=y.dtype),
        torch.randn(h_n.shape, generator=g, dtype=y.dtype),
        torch.randn(c_n.shape, generator=g, dtype=y.dtype) if cell == "lstm" else None,
        a["h0"],
        a["c0"],
        a["w_hh"],
        a["b_hh"],
        a["w_hr"],
        a["lengths"],
        y,
        ws,
        common.CELL_CODE[cell],
        True,
    )
    torch.library.opcheck(torch.ops.rnnfast_C.recurrence_bwd.default, bwd)


def test_opcheck_tree_lstm():
    g = torch.Generator().manual_seed(2)
    x, cl, cr = (
        torch.randn(5, 20, generator=g),
        torch.randn(5, 4, generator=g),
        torch.randn(5, 4, generator=g),
    )
    torch.library.opcheck(torch.ops.rnnfast_C.tree_lstm_fwd.default, (x, cl, cr))
    h, c = torch.ops.rnnfast_C.tree_lstm_fwd(x, cl, cr)
    gh, gc = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    torch.library.opcheck(torch.ops.rnnfast_C.tree_lstm_bwd.default, (gh, gc, x, cl, cr, c))


def test_inference_saves_nothing():
    _, fwd = _op_args("gru", need_ws=False)
    y, h_n, c_n, ws = torch.ops.rnnfast_C.recurrence_fwd(*fwd)
    assert ws.shape == (0,) and c_n.shape == (0,)
    _, fwd = _op_args("gru", need_ws=True)
    y2, h2, _, ws2 = torch.ops.rnnfast_C.recurrence_fwd(*fwd)
    assert ws2.shape == (4, 3, 4 * 6)
    assert_close("y", y, y2, atol=0)
    assert_close("h_n", h_n, h2, atol=0)


@pytest.mark.parametrize("cell,P", CELL_CASES, ids=CELL_IDS)
@pytest.mark.parametrize("T,lengths", [(1, None), (3, [3, 0]), (9, [9, 2])], ids=["T1", "T3-empty", "T9"])
def test_outputs_never_alias_inputs(cell, P, T, lengths):
    """The cpu backend declares FRESH_OUTPUTS (function.py then skips its alias check): every output of
    the forward and the backward is new storage, also for an empty row and a one-step call."""
    from rnnfast.ops.recurrence import cpu as cpu_impl

    assert cpu_impl.FRESH_OUTPUTS
    a = recurrence_inputs(cell, T, 2, 5, P=P, lengths=lengths, dtype=torch.float32, grad=False)
    args = (a["gi"], a["h0"], a["c0"], a["w_hh"], a["b_hh"], a["w_hr"], a["lengths"], False)
    fwd = cpu_impl.forward(cell, *args, True)
    y, ws = fwd[0], fwd[3]
    grads = (
        torch.randn_like(y),
        torch.randn_like(a["h0"]),
        torch.randn_like(a["c0"]) if cell == "lstm" else None,
    )
    bwd = cpu_impl.backward(cell, *grads, *args[1:6], a["lengths"], False, y, ws)
    ins = [t for t in (*a.values(), *grads) if isinstance(t, torch.Tensor) and t.numel()]
    taken = {t.untyped_storage().data_ptr() for t in ins}
    for i, o in enumerate((*fwd, *bwd)):
        if o is not None and o.numel():
            assert o.untyped_storage().data_ptr() not in taken, f"output {i} aliases an input"


def test_bad_inputs_name_the_argument():
    a, fwd = _op_args("gru")
    with pytest.raises(RuntimeError, match="w_hh: expected shape"):
        torch.ops.rnnfast_C.recurrence_fwd(
            a["gi"], a["h0"], None, a["w_hh"][:-1], a["b_hh"], None, None, 2, False, True
        )
    with pytest.raises(RuntimeError, match="cell: expected a code"):
        torch.ops.rnnfast_C.recurrence_fwd(
            a["gi"], a["h0"], None, a["w_hh"], a["b_hh"], None, None, 7, False, True
        )
    with pytest.raises(RuntimeError, match="c0: required"):
        torch.ops.rnnfast_C.recurrence_fwd(*_op_args("lstm")[1][:2], None, *_op_args("lstm")[1][3:])
    with pytest.raises(RuntimeError, match="lstm_in: expected"):
        torch.ops.rnnfast_C.tree_lstm_fwd(torch.randn(3, 7), torch.randn(3, 1), torch.randn(3, 1))


def test_supports_reasons():
    from rnnfast.ops.recurrence import cpu

    ok, why = cpu.supports(torch.device("meta"), torch.float32, {})
    assert not ok and "CPU tensors only" in why
    ok, why = cpu.supports(torch.device("cpu"), torch.int32, {})
    assert not ok and "torch.int32" in why
    with pytest.raises(backends.BackendError, match="CPU tensors only"):
        backends.resolve("recurrence", torch.device("meta"), torch.float32, {}, "cpu")


def test_nan_poisoning_is_active():
    """The kernels fill new outputs with NaN under RNNFAST_DEBUG_POISON=1 (set by conftest before the
    extension loaded), so the parity tests above would see any element a kernel leaves unwritten."""
    assert os.environ.get("RNNFAST_DEBUG_POISON") == "1"
    # Every element of every output is written: no NaN survives, including ws rows of skipped steps.
    _, fwd = _op_args("lstm", lengths=[4, 1, 0])
    for t in torch.ops.rnnfast_C.recurrence_fwd(*fwd):
        assert not torch.isnan(t).any()
