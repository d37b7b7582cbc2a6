"""The cpu modules' one-call inference (``rnnfast_C::module_fwd``, ``_FusedRNNMixin._one_call``): the
whole layer stack in one C++ call where no gradient is recorded. Parity with torch.nn in float64 on every
module option, that the call is taken exactly where it applies, and the projection library it follows."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
import rnnfast.nn.rnn as rnn_mod
from rnnfast import _ext
from rnnfast.ops import linear
from tests.utils import assert_close

ok, why = _ext.status()
pytestmark = pytest.mark.skipif(not ok, reason=f"C++ CPU kernels unavailable: {why}")

KINDS = [
    ("RNN", {"nonlinearity": "tanh"}),
    ("RNN", {"nonlinearity": "relu"}),
    ("GRU", {}),
    ("LSTM", {}),
    ("LSTM", {"proj_size": 3}),
]


def _kind_id(k):
    name, kw = k
    return name + "".join(f"-{v}" for v in kw.values())


@pytest.fixture
def one_calls(monkeypatch):
    """Counts the calls served by module_fwd; _layers (the per-op path) fails the test if it runs."""
    seen = []
    orig = rnn_mod._FusedRNNMixin._one_call

    def spy(self, *a):
        out = orig(self, *a)
        seen.append(out is not None)
        return out

    def no_layers(self, *a):
        raise AssertionError("the per-op layer stack ran where the one call applies")

    monkeypatch.setattr(rnn_mod._FusedRNNMixin, "_one_call", spy)
    monkeypatch.setattr(rnn_mod._FusedRNNMixin, "_layers", no_layers)
    return seen


def _flat(out):
    y, st = out
    return [y, *(st if isinstance(st, tuple) else (st,))]


@pytest.mark.parametrize("hx", [False, True], ids=["zero-state", "hx"])
@pytest.mark.parametrize("inp", ["seq-first", "batch-first", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("kind", KINDS, ids=_kind_id)
def test_one_call_matches_torch_nn(kind, num_layers, bidirectional, bias, inp, hx, one_calls):
    """float64, H = 33, T = 4, B = 3 (1 unbatched): outputs and final states as torch.nn's under no_grad."""
    name, kw = kind
    T, B, I, H = 4, 3, 5, 33
    torch.manual_seed(11)
    ref = getattr(nn, name)(
        I, H, num_layers=num_layers, bias=bias, bidirectional=bidirectional,
        batch_first=inp == "batch-first", dtype=torch.float64, **kw,
    )  # fmt: skip
    fast = rnnfast.from_torch(ref, backend="cpu")
    x = torch.rand(B, T, I, dtype=torch.float64) * 2 - 1 if inp == "batch-first" else None
    if x is None:
        x = (
            torch.rand(T, I, dtype=torch.float64)
            if inp == "unbatched"
            else torch.rand(T, B, I, dtype=torch.float64)
        )
        x = x * 2 - 1
    D = 2 if bidirectional else 1
    N = kw.get("proj_size", 0) or H
    state = None
    if hx:
        lead = (num_layers * D,) if inp == "unbatched" else (num_layers * D, B)
        h0 = torch.rand(*lead, N, dtype=torch.float64) - 0.5
        state = (h0, torch.rand(*lead, H, dtype=torch.float64) - 0.5) if name == "LSTM" else h0
    with torch.no_grad():
        want = _flat(ref(x, state))
        got = _flat(fast(x, state))
    for n, g, w in zip(["output", "h_n", "c_n"], got, want):
        assert_close(n, g, w, 1e-12)
    assert one_calls == [True]


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
@pytest.mark.parametrize("T,B,H", [(1, 1, 64), (1, 4, 33), (7, 1, 128), (3, 2, 1)], ids=str)
def test_one_call_float32_odd_shapes(cell, T, B, H, one_calls):
    """float32 one-step and short calls (the decoding loop's), H = 1 and 33 included, inference_mode."""
    cls = {"rnn_tanh": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell]
    torch.manual_seed(3)
    ref = cls(H, H, num_layers=2)
    fast = rnnfast.from_torch(ref, backend="cpu")
    x = torch.randn(T, B, H)
    with torch.inference_mode():
        want, got = _flat(ref(x)), _flat(fast(x))
    for n, g, w in zip(["output", "h_n", "c_n"], got, want):
        assert_close(n, g, w, 2e-5, 2e-5)
    assert one_calls == [True]


def test_one_call_taken_only_where_nothing_records_a_gradient(monkeypatch):
    """Autograd (parameters, the input or only hx requiring grad), dropout in training, PackedSequence,
    float16, and weights of another dtype than the input go through the per-op layer stack, with the
    same results as torch.nn; eval mode or no dropout under no_grad take the one call."""
    seen = []
    orig = rnn_mod._FusedRNNMixin._one_call
    monkeypatch.setattr(
        rnn_mod._FusedRNNMixin, "_one_call", lambda self, *a: seen.append(o := orig(self, *a)) or o
    )

    def took(f):
        seen.clear()
        f()
        return [o is not None for o in seen]

    torch.manual_seed(0)
    ref = nn.GRU(4, 6, num_layers=2, dropout=0.5, dtype=torch.float64)
    m = rnnfast.from_torch(ref, backend="cpu")
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    h0 = torch.randn(2, 2, 6, dtype=torch.float64, requires_grad=True)
    m.eval()
    assert took(lambda: m(x)) == [False]  # parameters require grad
    with torch.no_grad():
        assert took(lambda: m(x)) == [True]
        m.train()
        assert took(lambda: m(x)) == [False]  # training dropout between layers
        m.eval()
        assert took(lambda: m(x.half())) == [False]  # float16: computed in float32 by the per-op path
    for p in m.parameters():
        p.requires_grad_(False)
    assert took(lambda: m(x)) == [True]
    out = []
    assert took(lambda: out.append(m(x, h0))) == [False]  # only hx records a gradient
    ref.eval()
    torch.autograd.grad(out[0][0].sum(), h0)  # the graph reaches hx
    assert_close("output", out[0][0], ref(x, h0)[0], 1e-12)
    packed = pack_padded_sequence(x, torch.tensor([5, 3]))
    assert took(lambda: m(packed)) == []  # not even tried
    m32 = rnnfast.from_torch(nn.GRU(4, 6), backend="cpu").requires_grad_(False)
    assert took(lambda: m32(x)) == [False]  # float64 input, float32 weights


@pytest.mark.parametrize("lib", ["blocked", "aten", "onednn"])
def test_one_call_projection_follows_the_library(lib, monkeypatch):
    """Projections from _MIN_WORK multiply-adds take the library's kernel: the blocked one inside the call
    (float64 here, and float32 from _BLOCKED_FWD_MIN_ROWS rows), ATen's, or none where the product would
    be oneDNN's (float32 then stays on the per-op path). 640 rows x 96 x 128 (LSTM H = 32)."""
    monkeypatch.setenv("RNNFAST_CPU_GEMM", lib)
    rows, works = 640, [640 * 128 * 96]
    assert works[0] >= linear._MIN_WORK
    want64 = {"blocked": True, "aten": False, "onednn": False}[lib]
    assert linear.module_blocked(rows, works, torch.float64) is want64
    want32 = {"blocked": True, "aten": False, "onednn": None if linear._DNNL else False}[lib]
    assert linear.module_blocked(rows, works, torch.float32) is want32
    if lib == "blocked" and linear._DNNL:
        assert linear.module_blocked(rows - 200, works, torch.float32) is None  # oneDNN below 512 rows
    assert linear.module_blocked(rows, [linear._MIN_WORK - 1], torch.float32) is False  # F.linear's size
    torch.manual_seed(5)
    ref = nn.LSTM(96, 32, dtype=torch.float64)
    m = rnnfast.from_torch(ref, backend="cpu")
    x = torch.randn(160, 4, 96, dtype=torch.float64)
    with torch.no_grad():
        for n, g, w in zip(["output", "h_n", "c_n"], _flat(m(x)), _flat(ref(x))):
            assert_close(n, g, w, 1e-11)


def test_module_fwd_rejects_bad_arguments():
    _ext.ensure_loaded()
    op = torch.ops.rnnfast_C.module_fwd
    m = rnnfast.GRU(3, 4)
    ws = [m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0]
    x = torch.randn(2, 1, 3)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="weights: expected 4 tensors"):
            op(x, None, None, ws[:3], 2, 1, False, True, False, False)
        with pytest.raises(RuntimeError, match="w_ih: expected shape"):
            op(torch.randn(2, 1, 5), None, None, ws, 2, 1, False, True, False, False)
        with pytest.raises(RuntimeError, match="h0: expected shape"):
            op(x, torch.zeros(2, 1, 4), None, ws, 2, 1, False, True, False, False)
        with pytest.raises(RuntimeError, match="x: expected float32 or float64"):
            op(x.half(), None, None, ws, 2, 1, False, True, False, False)
        y, h_n, c_n = op(x, None, None, ws, 2, 1, False, True, False, False)
        assert (y.shape, h_n.shape, c_n.numel()) == ((2, 1, 4), (1, 1, 4), 0)


def test_module_fwd_all_cells_and_layers_against_torch_forward():
    """float32, every cell, 1 and 3 layers, both directions: the one call against torch.nn's forward run on
    the same module (its _torch_forward)."""
    torch.manual_seed(2)
    for (name, kw), L, bi in itertools.product(KINDS, [1, 3], [False, True]):
        m = getattr(rnnfast, name)(6, 9, num_layers=L, bidirectional=bi, backend="cpu", **kw).eval()
        x = torch.randn(5, 3, 6)
        with torch.no_grad():
            got = _flat(m(x))
            want = _flat(m._torch_forward(x))
        for n, g, w in zip(["output", "h_n", "c_n"], got, want):
            assert_close(f"{name}{kw} L{L} bi={bi} {n}", g, w, 2e-5, 2e-5)
