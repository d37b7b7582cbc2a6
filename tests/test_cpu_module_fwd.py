"""The cpu modules' one-call path (``rnnfast_C::module_fwd`` / ``module_bwd``, ``_FusedRNNMixin._one_call``):
the whole layer stack in one C++ call, in training one autograd node. Parity with torch.nn in float64 on
every module option (outputs, and gradients of the input, h0/c0 and every parameter), that the call is
taken exactly where it applies, each library of the input projection, and the ops' argument checks."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
import rnnfast.nn.rnn as rnn_mod
from rnnfast import _ext
from rnnfast.ops import linear
from tests.utils import MODULE_KINDS, assert_close, kind_id

ok, why = _ext.status()
pytestmark = pytest.mark.skipif(not ok, reason=f"C++ CPU kernels unavailable: {why}")


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


@pytest.mark.parametrize("mode", ["infer", "train"])
@pytest.mark.parametrize("hx", [False, True], ids=["zero-state", "hx"])
@pytest.mark.parametrize("inp", ["seq-first", "batch-first", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("kind", MODULE_KINDS, ids=kind_id)
def test_one_call_matches_torch_nn(kind, num_layers, bidirectional, bias, inp, hx, mode, one_calls):
    """float64, H = 33, T = 4, B = 3 (1 unbatched): outputs and final states as torch.nn's (under no_grad
    for inference), and in training the gradients of the input, every parameter and h0 (c0) for injected
    upstream gradients on every output."""
    name, kw = kind
    T, B, I, H = 4, 3, 5, 33
    torch.manual_seed(11)
    ref = getattr(nn, name)(
        I, H, num_layers=num_layers, bias=bias, bidirectional=bidirectional,
        batch_first=inp == "batch-first", dtype=torch.float64, **kw,
    )  # fmt: skip
    fast = rnnfast.from_torch(ref, backend="cpu")
    shape = {"batch-first": (B, T, I), "unbatched": (T, I)}.get(inp, (T, B, I))
    x = (torch.rand(*shape, dtype=torch.float64) * 2 - 1).requires_grad_(mode == "train")
    D = 2 if bidirectional else 1
    N = kw.get("proj_size", 0) or H
    state, leaves = None, [x]
    if hx:
        lead = (num_layers * D,) if inp == "unbatched" else (num_layers * D, B)
        h0 = (torch.rand(*lead, N, dtype=torch.float64) - 0.5).requires_grad_(mode == "train")
        state, leaves = h0, [x, h0]
        if name == "LSTM":
            c0 = (torch.rand(*lead, H, dtype=torch.float64) - 0.5).requires_grad_(mode == "train")
            state, leaves = (h0, c0), [x, h0, c0]
    with torch.set_grad_enabled(mode == "train"):
        want = _flat(ref(x, state))
        got = _flat(fast(x, state))
    for n, g, w in zip(["output", "h_n", "c_n"], got, want):
        assert_close(n, g, w, 1e-12)
    assert one_calls == [True]
    if mode == "train":
        ups = [torch.randn_like(w) for w in want]
        g_want = torch.autograd.grad(want, leaves + list(ref.parameters()), ups)
        g_got = torch.autograd.grad(got, leaves + list(fast.parameters()), ups)
        names = ["input", "h_0", "c_0"][: len(leaves)] + [n for n, _ in ref.named_parameters()]
        for n, g, w in zip(names, g_got, g_want):
            assert_close("d" + n, g, w, 1e-11)


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


def test_one_call_taken_where_it_applies(monkeypatch):
    """Inference and training (parameters, the input or only hx requiring grad) take the one call;
    dropout between layers in training, float16 and weights of another dtype than the input take the
    per-op layer stack, PackedSequence input does not try it. Results as torch.nn's either way."""
    seen = []
    orig = rnn_mod._FusedRNNMixin._one_call
    monkeypatch.setattr(
        rnn_mod._FusedRNNMixin, "_one_call", lambda self, *a: seen.append(o := orig(self, *a)) or o
    )

    def took(f):
        seen.clear()
        out = f()
        return [o is not None for o in seen], out

    torch.manual_seed(0)
    ref = nn.GRU(4, 6, num_layers=2, dropout=0.5, dtype=torch.float64).eval()
    m = rnnfast.from_torch(ref, backend="cpu").eval()
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    h0 = torch.randn(2, 2, 6, dtype=torch.float64, requires_grad=True)
    assert took(lambda: m(x))[0] == [True]  # parameters require grad: the autograd node
    with torch.no_grad():
        assert took(lambda: m(x))[0] == [True]
        m.train()
        assert took(lambda: m(x))[0] == [False]  # training dropout between layers
        m.eval()
        m16 = copy.deepcopy(m).half()
        assert took(lambda: m16(x.half()))[0] == [False]  # float16: computed in float32 by the per-op path
    m.requires_grad_(False)
    ref.requires_grad_(False)
    used, out = took(lambda: m(x, h0))
    assert used == [True]  # only hx records a gradient
    (dh0,) = torch.autograd.grad(out[0].sum(), h0)
    (want,) = torch.autograd.grad(ref(x, h0)[0].sum(), h0)
    assert_close("dh0", dh0, want, 1e-12)
    assert took(lambda: m(pack_padded_sequence(x, torch.tensor([5, 3]))))[0] == []  # not tried
    m32 = rnnfast.from_torch(nn.GRU(4, 6), backend="cpu")
    with torch.no_grad(), pytest.raises(ValueError, match="does not match weight dtype"):
        m32(x)  # float64 input, float32 weights: refused before any path is taken, as torch.nn does


@pytest.mark.parametrize("grad", [False, True], ids=["infer", "train"])
@pytest.mark.parametrize("lib", ["blocked", "aten", "onednn"])
@pytest.mark.parametrize("T,B", [(200, 4), (40, 5)], ids=["800rows", "200rows"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_one_call_projection_in_every_library(dtype, T, B, lib, grad, monkeypatch):
    """Projections of at least _MIN_WORK multiply-adds (96 inputs, LSTM H = 32: 800 and 200 rows) in each
    library of the input projection (RNNFAST_CPU_GEMM): the blocked kernel (float32 below 768 rows: oneDNN
    forward), ATen, oneDNN (float32 forward and dX from 128 rows); outputs and gradients against torch.nn,
    computed in float64."""
    monkeypatch.setenv("RNNFAST_CPU_GEMM", lib)
    assert T * B * 128 * 96 >= linear._MIN_WORK
    torch.manual_seed(5)
    ref = nn.LSTM(96, 32, num_layers=2, dtype=torch.float64)
    m = rnnfast.from_torch(ref, backend="cpu").to(dtype)
    x = torch.randn(T, B, 96, dtype=torch.float64)
    tol = 1e-11 if dtype == torch.float64 else 2e-4
    if not grad:
        with torch.no_grad():
            for n, g, w in zip(["output", "h_n", "c_n"], _flat(m(x.to(dtype))), _flat(ref(x))):
                assert_close(n, g.double(), w, tol, tol)
        return
    xf = x.to(dtype).requires_grad_()
    x.requires_grad_()
    got, want = _flat(m(xf)), _flat(ref(x))
    ups = [torch.randn_like(w) for w in want]
    g_got = torch.autograd.grad(got, [xf, *m.parameters()], [u.to(dtype) for u in ups])
    g_want = torch.autograd.grad(want, [x, *ref.parameters()], ups)
    names = ["output", "h_n", "c_n", "input"] + [n for n, _ in ref.named_parameters()]
    for n, g, w in zip(names, list(got) + list(g_got), list(want) + list(g_want)):
        assert_close(n, g.double(), w.detach(), tol * 10, tol * 10)


def test_module_fwd_rejects_bad_arguments():
    _ext.ensure_loaded()
    op = torch.ops.rnnfast_C.module_fwd
    m = rnnfast.GRU(3, 4)
    ws = [m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0]
    x = torch.randn(2, 1, 3)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="weights: expected 4 tensors"):
            op(x, None, None, ws[:3], 2, 1, False, True, False, 0, False)
        with pytest.raises(RuntimeError, match="w_ih: expected shape"):
            op(torch.randn(2, 1, 5), None, None, ws, 2, 1, False, True, False, 0, False)
        with pytest.raises(RuntimeError, match="h0: expected shape"):
            op(x, torch.zeros(2, 1, 4), None, ws, 2, 1, False, True, False, 0, False)
        with pytest.raises(RuntimeError, match="x: expected float32 or float64"):
            op(x.half(), None, None, ws, 2, 1, False, True, False, 0, False)
        y, h_n, c_n, saved = op(x, None, None, ws, 2, 1, False, True, False, 0, False)
        assert (y.shape, h_n.shape, c_n.numel(), saved) == ((2, 1, 4), (1, 1, 4), 0, [])
        y, h_n, c_n, saved = op(x, None, None, ws, 2, 1, False, True, False, 0, True)
        assert len(saved) == 3  # layer 0's input (the caller's x), its output and saved activations
        bwd = torch.ops.rnnfast_C.module_bwd
        cfg = (2, 1, False, True, False, 0, True)
        g_y, g_h = torch.ones_like(y), torch.ones_like(h_n)
        with pytest.raises(RuntimeError, match="saved: expected 3 tensors"):
            bwd(g_y, g_h, None, x, None, None, ws, saved[:2], *cfg)
        with pytest.raises(RuntimeError, match="grad_y: expected shape"):
            bwd(torch.ones(2, 1, 5), g_h, None, x, None, None, ws, saved, *cfg)
        dx, dh0, dc0, dws = bwd(g_y, g_h, None, x, None, None, ws, saved, *cfg)
        assert (dx.shape, dh0.numel(), dc0.numel(), [d.shape for d in dws]) == (
            x.shape,
            0,
            0,
            [w.shape for w in ws],
        )
        dx, *_ = bwd(g_y, g_h, None, x, None, None, ws, saved, *cfg[:-1], False)
        assert dx.numel() == 0  # need_dx=False: no dX product


def test_module_fwd_all_cells_and_layers_against_torch_forward():
    """float32, every cell, 1 and 3 layers, both directions: the one call against torch.nn's forward run on
    the same module (its _torch_forward)."""
    torch.manual_seed(2)
    for (name, kw), L, bi in itertools.product(MODULE_KINDS, [1, 3], [False, True]):
        m = getattr(rnnfast, name)(6, 9, num_layers=L, bidirectional=bi, backend="cpu", **kw).eval()
        x = torch.randn(5, 3, 6)
        with torch.no_grad():
            got = _flat(m(x))
            want = _flat(m._torch_forward(x))
        for n, g, w in zip(["output", "h_n", "c_n"], got, want):
            assert_close(f"{name}{kw} L{L} bi={bi} {n}", g, w, 2e-5, 2e-5)


@pytest.mark.parametrize(
    "kind", [("GRU", {}), ("LSTM", {"proj_size": 2}), ("RNN", {"nonlinearity": "relu"})], ids=kind_id
)
def test_one_call_gradcheck(kind, one_calls):
    """float64 gradcheck of the one call through the module (two bidirectional layers) with respect to
    the input, h0 and every parameter (swapped in by torch.func.functional_call)."""
    name, kw = kind
    torch.manual_seed(4)
    m = getattr(rnnfast, name)(
        3, 4, num_layers=2, bidirectional=True, dtype=torch.float64, backend="cpu", **kw
    )
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, kw.get("proj_size", 0) or 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)

    def f(x, h0, c0, *ps):
        hx = (h0, c0) if name == "LSTM" else h0
        return _flat(torch.func.functional_call(m, dict(zip(names, ps)), (x, hx)))

    assert torch.autograd.gradcheck(f, (x, h0, c0, *params))
    assert one_calls and all(one_calls)


def test_one_call_can_be_turned_off(monkeypatch, one_calls):
    """RNNFAST_CPU_ONE_CALL=0 (read at every call) leaves every call to the per-op layer stack."""
    m = rnnfast.GRU(3, 4, backend="cpu")
    x = torch.randn(2, 1, 3)
    monkeypatch.setenv("RNNFAST_CPU_ONE_CALL", "0")
    with pytest.raises(AssertionError, match="per-op layer stack ran"):
        m(x)
    assert one_calls == [False]
    monkeypatch.delenv("RNNFAST_CPU_ONE_CALL")
    m(x)
    assert one_calls == [False, True]


def test_one_call_training_only_below_a_w_hh_of_one_mib(one_calls, monkeypatch):
    """Training takes the one call where the first layer's W_hh is below 1 MiB (float32 LSTM H=128: 256
    KiB); from 1 MiB (H=256) it keeps the per-op path, which inference does not."""
    monkeypatch.setattr(rnn_mod._FusedRNNMixin, "_layers", lambda self, *a: ("per-op",) * 3)
    for H, want in [(128, True), (256, False)]:
        m = rnnfast.LSTM(8, H, backend="cpu")
        one_calls.clear()
        out = m(torch.randn(2, 1, 8))
        assert one_calls == [want] and (out[0] == "per-op") is not want, H
        with torch.no_grad():
            one_calls.clear()
            m(torch.randn(2, 1, 8))
            assert one_calls == [True], H
