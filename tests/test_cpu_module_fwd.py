"""The cpu backend's layer stack, one C++ op each way (``rnnfast_C::module_fwd`` / ``module_bwd``, autograd
and fake kernels registered in rnnfast/_ext.py): parity with torch.nn in float64 on every module option
(padded, batch-first, unbatched and PackedSequence input, sorted or not; outputs, and gradients of the
input, h0/c0 and every parameter), dropout between layers (reproducible, torch.nn's scaling, gradients
against a reference applying the same masks), float16/bfloat16 through float32, gradcheck of the op, and
the op's argument checks."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast
import rnnfast.nn.rnn as rnn_mod
from rnnfast import _ext
from rnnfast.backends import cpu as cpu_policy
from tests.utils import MODULE_KINDS, assert_close, kind_id

ok, why = _ext.status()
pytestmark = pytest.mark.skipif(not ok, reason=f"C++ CPU kernels unavailable: {why}")

INPUTS = ["seq-first", "batch-first", "unbatched", "packed-sorted", "packed-unsorted"]


@pytest.fixture
def stack_calls(monkeypatch):
    """Counts the calls served by the C++ stack; the per-op layer stack fails the test if it runs."""
    seen = []
    orig = rnn_mod._FusedRNNMixin._cpu_stack

    def spy(self, *a):
        seen.append(True)
        return orig(self, *a)

    def no_layers(self, *a):
        raise AssertionError("the per-op layer stack ran for the cpu backend")

    monkeypatch.setattr(rnn_mod._FusedRNNMixin, "_cpu_stack", spy)
    monkeypatch.setattr(rnn_mod._FusedRNNMixin, "_layers", no_layers)
    return seen


def _flat(out):
    y, st = out
    y = y.data if isinstance(y, PackedSequence) else y
    return [y, *(st if isinstance(st, tuple) else (st,))]


def _input(inp, T, B, I, dtype=torch.float64, grad=True):
    """(module input, leaf tensor): fresh random values; packed inputs have ragged lengths (T first)."""
    shape = {"batch-first": (B, T, I), "unbatched": (T, I)}.get(inp, (T, B, I))
    x = (torch.rand(*shape, dtype=dtype) * 2 - 1).requires_grad_(grad)
    if not inp.startswith("packed"):
        return x, x
    lengths = torch.tensor([T, max(T - 3, 1), 1, max(T - 1, 1)][:B])
    if inp == "packed-sorted":
        lengths = lengths.sort(descending=True).values
    return pack_padded_sequence(x, lengths, enforce_sorted=inp == "packed-sorted"), x


def _state(name, inp, L, D, B, N, H, grad):
    lead = (L * D,) if inp == "unbatched" else (L * D, B)
    h0 = (torch.rand(*lead, N, dtype=torch.float64) - 0.5).requires_grad_(grad)
    if name != "LSTM":
        return h0, [h0]
    c0 = (torch.rand(*lead, H, dtype=torch.float64) - 0.5).requires_grad_(grad)
    return (h0, c0), [h0, c0]


@pytest.mark.parametrize("mode", ["infer", "train"])
@pytest.mark.parametrize("hx", [False, True], ids=["zero-state", "hx"])
@pytest.mark.parametrize("inp", INPUTS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("kind", MODULE_KINDS, ids=kind_id)
def test_stack_matches_torch_nn(kind, num_layers, bidirectional, inp, hx, mode, stack_calls):
    """float64, H = 33, T = 4, B = 3 (1 unbatched): outputs and final states as torch.nn's (under no_grad
    for inference), and in training the gradients of the input, every parameter and h0 (c0) for injected
    upstream gradients on every output."""
    name, kw = kind
    T, B, I, H = 4, 3, 5, 33
    torch.manual_seed(11)
    ref = getattr(nn, name)(
        I, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=inp == "batch-first",
        dtype=torch.float64, **kw,
    )  # fmt: skip
    fast = rnnfast.from_torch(ref, backend="cpu")
    x, leaf = _input(inp, T, B, I, grad=mode == "train")
    D, N = 2 if bidirectional else 1, kw.get("proj_size", 0) or H
    state, leaves = _state(name, inp, num_layers, D, B, N, H, mode == "train") if hx else (None, [])
    with torch.set_grad_enabled(mode == "train"):
        want = _flat(ref(x, state))
        got = _flat(fast(x, state))
    for n, g, w in zip(["output", "h_n", "c_n"], got, want):
        assert_close(n, g, w, 1e-12)
    assert stack_calls == [True]
    if mode == "train":
        leaves = [leaf, *leaves]
        ups = [torch.randn_like(w) for w in want]
        g_want = torch.autograd.grad(want, leaves + list(ref.parameters()), ups, retain_graph=True)
        g_got = torch.autograd.grad(got, leaves + list(fast.parameters()), ups)
        names = ["input", "h_0", "c_0"][: len(leaves)] + [n for n, _ in ref.named_parameters()]
        for n, g, w in zip(names, g_got, g_want):
            assert_close("d" + n, g, w, 1e-11)


@pytest.mark.parametrize("kind", MODULE_KINDS, ids=kind_id)
def test_stack_without_bias(kind, stack_calls):
    name, kw = kind
    torch.manual_seed(1)
    ref = getattr(nn, name)(4, 6, num_layers=2, bias=False, bidirectional=True, dtype=torch.float64, **kw)
    fast = rnnfast.from_torch(ref, backend="cpu")
    x, _ = _input("packed-unsorted", 5, 3, 4)
    want, got = _flat(ref(x)), _flat(fast(x))
    for n, g, w in zip(["output", "h_n", "c_n"], got, want):
        assert_close(n, g, w, 1e-12)
    g_want = torch.autograd.grad(want[0].sum(), list(ref.parameters()), retain_graph=True)
    g_got = torch.autograd.grad(got[0].sum(), list(fast.parameters()))
    for (n, _), g, w in zip(ref.named_parameters(), g_got, g_want):
        assert_close("d" + n, g, w, 1e-11)


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
@pytest.mark.parametrize("inp", ["seq-first", "packed-unsorted"])
@pytest.mark.parametrize("T,B,H", [(1, 1, 64), (1, 4, 33), (7, 1, 128), (3, 2, 1)], ids=str)
def test_stack_float32_odd_shapes(cell, T, B, H, inp, stack_calls):
    """float32 one-step and short calls (the decoding loop's), B = 1, T = 1, H = 1 and 33 included,
    inference_mode."""
    cls = {"rnn_tanh": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell]
    torch.manual_seed(3)
    ref = cls(H, H, num_layers=2, bidirectional=True)
    fast = rnnfast.from_torch(ref, backend="cpu")
    x, _ = _input(inp, T, B, H, dtype=torch.float32, grad=False)
    with torch.inference_mode():
        want, got = _flat(ref(x)), _flat(fast(x))
    for n, g, w in zip(["output", "h_n", "c_n"], got, want):
        assert_close(n, g, w, 2e-5, 2e-5)
    assert stack_calls == [True]


# Half-precision tolerances against float64: the inputs, weights and results are rounded to the dtype
# (8 bits of mantissa for bfloat16, 11 for float16), the arithmetic is float32.
_HALF_TOL = {torch.bfloat16: 3e-2, torch.float16: 4e-3}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("inp", ["seq-first", "packed-unsorted"])
@pytest.mark.parametrize("kind", [("GRU", {}), ("LSTM", {"proj_size": 3}), ("RNN", {})], ids=kind_id)
def test_stack_half_precision_through_float32(kind, inp, dtype, stack_calls):
    """float16 / bfloat16 modules: outputs in the input's dtype, gradients in the parameters' dtype, both
    near torch.nn's float64 results on the same (rounded) values."""
    name, kw = kind
    torch.manual_seed(7)
    ref = getattr(nn, name)(5, 8, num_layers=2, bidirectional=True, **kw).to(dtype).double()
    fast = rnnfast.from_torch(ref, backend="cpu").to(dtype)
    leaf = (torch.rand(6, 3, 5) * 2 - 1).to(dtype).requires_grad_()
    leaf64 = leaf.detach().double().requires_grad_()
    if inp.startswith("packed"):
        lengths = torch.tensor([6, 3, 1])
        x = pack_padded_sequence(leaf, lengths, enforce_sorted=False)
        x64 = pack_padded_sequence(leaf64, lengths, enforce_sorted=False)
    else:
        x, x64 = leaf, leaf64
    got, want = _flat(fast(x)), _flat(ref(x64))
    tol = _HALF_TOL[dtype]
    for n, g, w in zip(["output", "h_n", "c_n"], got, want):
        assert g.dtype == dtype, n
        assert_close(n, g.double(), w, tol, tol)
    ups = [torch.randn_like(w) for w in want]
    g_got = torch.autograd.grad(got, [leaf, *fast.parameters()], [u.to(dtype) for u in ups])
    g_want = torch.autograd.grad(want, [leaf64, *ref.parameters()], ups)
    for n, g, w in zip(["input"] + [n for n, _ in ref.named_parameters()], g_got, g_want):
        assert g.dtype == dtype, n
        assert_close("d" + n, g.double(), w, 4 * tol, 4 * tol)
    assert stack_calls == [True]


# -- dropout between layers ------------------------------------------------------------------------


def _reference_with_masks(ref: nn.RNNBase, x, hx, masks):
    """torch.nn's layers one at a time (single-layer modules holding ref's weights), each layer's output
    but the last multiplied by the given mask: what a multi-layer torch.nn module computes in training
    with those dropout masks."""
    L, D = ref.num_layers, 2 if ref.bidirectional else 1
    kw = {"proj_size": ref.proj_size} if ref.mode == "LSTM" else {}
    if ref.mode.startswith("RNN_"):
        kw["nonlinearity"] = ref.nonlinearity
    cls = {"GRU": nn.GRU, "LSTM": nn.LSTM}.get(ref.mode, nn.RNN)
    hs, cs = [], []
    for layer in range(L):
        inp = ref.input_size if layer == 0 else D * (ref.proj_size or ref.hidden_size)
        one = cls(inp, ref.hidden_size, bidirectional=ref.bidirectional, dtype=torch.float64, **kw)
        for sfx in ["", "_reverse"][:D]:
            for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"):
                if hasattr(ref, f"{n}_l{layer}{sfx}"):
                    setattr(one, f"{n}_l0{sfx}", getattr(ref, f"{n}_l{layer}{sfx}"))
        state = None
        if hx is not None:
            state = (
                tuple(s[layer * D : (layer + 1) * D] for s in hx)
                if isinstance(hx, tuple)
                else hx[layer * D : (layer + 1) * D]
            )
        x, st = one(x, state)
        h, c = st if isinstance(st, tuple) else (st, None)
        hs.append(h)
        cs.append(c)
        if layer < L - 1:
            if isinstance(x, PackedSequence):
                x = PackedSequence(x.data * masks[layer], x.batch_sizes, x.sorted_indices, x.unsorted_indices)
            else:
                x = x * masks[layer]
    h_n = torch.cat(hs)
    return (x, (h_n, torch.cat(cs))) if ref.mode == "LSTM" else (x, h_n)


@pytest.fixture
def masks(monkeypatch):
    """Records every dropout mask the cpu stack draws."""
    drawn = []
    orig = rnn_mod._FusedRNNMixin._dropout_mask

    def spy(self, *a):
        m = orig(self, *a)
        drawn.append(m)
        return m

    monkeypatch.setattr(rnn_mod._FusedRNNMixin, "_dropout_mask", spy)
    return drawn


@pytest.mark.parametrize("inp", ["seq-first", "packed-unsorted"])
@pytest.mark.parametrize("kind", MODULE_KINDS, ids=kind_id)
def test_dropout_gradients_with_the_drawn_masks(kind, inp, masks, stack_calls):
    """Training with dropout 0.4 over 3 bidirectional layers: outputs, states and every gradient as a
    float64 torch.nn reference that applies the very masks the stack drew."""
    name, kw = kind
    torch.manual_seed(5)
    ref = getattr(nn, name)(4, 6, num_layers=3, bidirectional=True, dropout=0.4, dtype=torch.float64, **kw)
    fast = rnnfast.from_torch(ref, backend="cpu").train()
    x, leaf = _input(inp, 5, 3, 4)
    N = kw.get("proj_size", 0) or 6
    hx, hleaves = _state(name, inp, 3, 2, 3, N, 6, True)
    got = _flat(fast(x, hx))
    assert len(masks) == 2 and stack_calls == [True]
    want = _flat(_reference_with_masks(ref, x, hx, masks))
    for n, g, w in zip(["output", "h_n", "c_n"], got, want):
        assert_close(n, g, w, 1e-12)
    ups = [torch.randn_like(w) for w in want]
    leaves = [leaf, *hleaves, *ref.parameters()]
    g_want = torch.autograd.grad(want, leaves, ups, retain_graph=True)  # the packing is shared
    g_got = torch.autograd.grad(got, [leaf, *hleaves, *fast.parameters()], ups)
    names = ["input", "h_0", "c_0"][: 1 + len(hleaves)] + [n for n, _ in ref.named_parameters()]
    for n, g, w in zip(names, g_got, g_want):
        assert_close("d" + n, g, w, 1e-11)


def test_dropout_masks_are_torch_nn_s_and_reproducible(masks):
    """Each mask keeps an element with probability 1 - p, scaled by 1/(1 - p), drawn from torch's
    generator: torch.manual_seed repeats a run exactly, another seed differs; eval mode and p = 0 draw
    none and equal torch.nn exactly."""
    p = 0.3
    torch.manual_seed(0)
    m = rnnfast.LSTM(8, 50, num_layers=3, dropout=p, backend="cpu").train()
    x = torch.randn(20, 4, 8)
    torch.manual_seed(123)
    a = m(x)[0]
    torch.manual_seed(123)
    b = m(x)[0]
    torch.manual_seed(124)
    c = m(x)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(masks) == 6
    for mask in masks:
        assert mask.shape == (20, 4, 50)
        values = mask.unique().tolist()
        assert len(values) == 2 and values[0] == 0 and values[1] == pytest.approx(1 / (1 - p)), values
    kept = torch.stack(masks).ne(0).double().mean().item()
    n = 6 * 20 * 4 * 50
    assert abs(kept - (1 - p)) < 5 * ((p * (1 - p) / n) ** 0.5), kept  # 5 sigma
    masks.clear()
    ref = m.to_torch()
    with torch.no_grad():
        assert_close("eval", m.eval()(x)[0], ref.eval()(x)[0], 2e-5, 2e-5)
        m.train().dropout = 0.0
        ref.train().dropout = 0.0
        assert_close("p=0 training", m(x)[0], ref(x)[0], 2e-5, 2e-5)
    assert masks == []


@pytest.mark.parametrize(
    "kind", [("GRU", {}), ("LSTM", {"proj_size": 2}), ("RNN", {"nonlinearity": "relu"})], ids=kind_id
)
@pytest.mark.parametrize("inp", ["seq-first", "packed-unsorted"])
def test_stack_gradcheck(kind, inp, monkeypatch, stack_calls):
    """float64 gradcheck of the op through the module (two bidirectional layers, dropout with masks fixed
    across gradcheck's evaluations) with respect to the input, h0 (c0) and every parameter (swapped in by
    torch.func.functional_call)."""
    name, kw = kind
    torch.manual_seed(4)
    m = getattr(rnnfast, name)(
        3, 4, num_layers=2, bidirectional=True, dropout=0.5, dtype=torch.float64, backend="cpu", **kw
    ).train()
    fixed = {}
    monkeypatch.setattr(
        rnn_mod._FusedRNNMixin,
        "_dropout_mask",
        lambda self, shape, dtype, device: fixed.setdefault(
            shape, torch.bernoulli(torch.full(shape, 0.5, dtype=dtype)).mul_(2)
        ),
    )
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, kw.get("proj_size", 0) or 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([2, 3])

    def f(x, h0, c0, *ps):
        hx = (h0, c0) if name == "LSTM" else h0
        inp_ = pack_padded_sequence(x, lengths, enforce_sorted=False) if inp != "seq-first" else x
        return _flat(torch.func.functional_call(m, dict(zip(names, ps)), (inp_, hx)))

    assert torch.autograd.gradcheck(f, (x, h0, c0, *params))
    assert stack_calls and all(stack_calls)


def test_every_option_takes_the_stack(stack_calls):
    """Training with dropout, float16, autocast, PackedSequence and only hx requiring grad all run the
    one C++ stack (the per-op layer stack would fail the test)."""
    torch.manual_seed(0)
    m = rnnfast.GRU(4, 6, num_layers=2, dropout=0.5, backend="cpu").train()
    x = torch.randn(5, 2, 4)
    m(x)
    m.half()(x.half())
    m.float().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(x)
    m(pack_padded_sequence(x, torch.tensor([3, 5]), enforce_sorted=False))
    m.requires_grad_(False)
    h0 = torch.randn(2, 2, 6, requires_grad=True)
    (dh0,) = torch.autograd.grad(m(x, h0)[0].sum(), h0)
    assert dh0.shape == h0.shape
    assert stack_calls == [True] * 5


@pytest.mark.parametrize("grad", [False, True], ids=["infer", "train"])
@pytest.mark.parametrize("lib", ["blocked", "aten", "onednn"])
@pytest.mark.parametrize("T,B", [(200, 4), (40, 5)], ids=["800rows", "200rows"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_stack_projection_in_every_library(dtype, T, B, lib, grad, request):
    """Projections of at least 2^21 multiply-adds (kProjectMinWork; 96 inputs, LSTM H = 32: 800 and 200
    rows) in each library of the input projection (flags(gemm=...)): the blocked kernel (float32 below 768
    rows: oneDNN forward), ATen into cached blocks, oneDNN (float32 forward and dX from 128 rows); outputs
    and gradients against torch.nn, computed in float64."""
    stack = contextlib.ExitStack()
    request.addfinalizer(stack.close)
    stack.enter_context(cpu_policy.flags(gemm=lib))
    assert T * B * 128 * 96 >= 1 << 21
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


def test_module_ops_gradcheck_directly():
    """float64 gradcheck of module_fwd (its registered autograd, i.e. module_bwd) called as an op: packed
    rows with batch_sizes, dropout masks, given h0 and c0, a projected LSTM."""
    _ext.ensure_loaded()
    torch.manual_seed(9)
    m = nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, dtype=torch.float64)
    ws = [p.detach().clone().requires_grad_() for p in m.parameters()]
    bs = torch.tensor([3, 2, 2, 1])
    x = torch.randn(int(bs.sum()), 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.bernoulli(torch.full((int(bs.sum()), 4), 0.5, dtype=torch.float64)) * 2

    def f(x, h0, c0, *ws):
        y, h_n, c_n, _ = torch.ops.rnnfast_C.module_fwd(
            x, h0, c0, list(ws), [mask], bs, 3, 2, True, True, True, 0, True
        )
        return y, h_n, c_n

    assert torch.autograd.gradcheck(f, (x, h0, c0, *ws))


def test_module_ops_reject_bad_arguments():
    _ext.ensure_loaded()
    op = torch.ops.rnnfast_C.module_fwd
    m = rnnfast.GRU(3, 4)
    ws = [m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0]
    x = torch.randn(2, 1, 3)
    cfg = (2, 1, False, True, False, 0)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="weights: expected 4 tensors"):
            op(x, None, None, ws[:3], [], None, *cfg, False)
        with pytest.raises(RuntimeError, match="w_ih: expected shape"):
            op(torch.randn(2, 1, 5), None, None, ws, [], None, *cfg, False)
        with pytest.raises(RuntimeError, match="h0: expected shape"):
            op(x, torch.zeros(2, 1, 4), None, ws, [], None, *cfg, False)
        with pytest.raises(RuntimeError, match="x: expected float32 or float64"):
            op(x.int(), None, None, ws, [], None, *cfg, False)
        with pytest.raises(RuntimeError, match="weights: expected dtype"):
            op(x.half(), None, None, ws, [], None, *cfg, False)
        with pytest.raises(RuntimeError, match="masks: expected none or one per layer"):
            op(x, None, None, ws, [torch.ones(2, 1, 4)], None, *cfg, False)
        with pytest.raises(RuntimeError, match="batch_sizes: expected positive, non-increasing"):
            op(torch.randn(3, 3), None, None, ws, [], torch.tensor([1, 2]), *cfg, False)
        with pytest.raises(RuntimeError, match="x: expected 3 packed rows"):
            op(torch.randn(4, 3), None, None, ws, [], torch.tensor([2, 1]), *cfg, False)
        y, h_n, c_n, saved = op(x, None, None, ws, [], None, *cfg, False)
        assert (y.shape, h_n.shape, c_n.numel(), saved) == ((2, 1, 4), (1, 1, 4), 0, [])
        y, h_n, c_n, saved = op(x, None, None, ws, [], None, *cfg, True)
        assert len(saved) == 3  # layer 0's input (the caller's x), its output (y itself) and activations
        bwd = torch.ops.rnnfast_C.module_bwd
        g_y, g_h = torch.ones_like(y), torch.ones_like(h_n)
        with pytest.raises(RuntimeError, match="saved: expected 3 tensors"):
            bwd(g_y, g_h, None, x, None, None, ws, [], None, saved[:2], y, *cfg, True)
        with pytest.raises(RuntimeError, match="grad_y: expected shape"):
            bwd(torch.ones(2, 1, 5), g_h, None, x, None, None, ws, [], None, saved, y, *cfg, True)
        dx, dh0, dc0, dws = bwd(g_y, g_h, None, x, None, None, ws, [], None, saved, y, *cfg, True)
        assert (dx.shape, dh0.numel(), dc0.numel(), [d.shape for d in dws]) == (
            x.shape,
            0,
            0,
            [w.shape for w in ws],
        )
        dx, *_ = bwd(g_y, g_h, None, x, None, None, ws, [], None, saved, y, *cfg, False)
        assert dx.numel() == 0  # need_dx=False: no dX product
    y, h_n, _, _ = op(x, None, None, ws, [], None, *cfg, False)
    with pytest.raises(RuntimeError, match="need_ws=False"):
        torch.autograd.grad(y.sum(), ws[0])


def test_fake_kernels_match_the_op():
    """torch.library.opcheck: the fake kernels' shapes, dtypes and the registered autograd agree with the
    C++ op, for padded and packed input, float32 and bfloat16, with dropout masks."""
    _ext.ensure_loaded()
    torch.manual_seed(2)
    m = nn.GRU(3, 4, num_layers=2, bidirectional=True)
    for dtype in (torch.float32, torch.bfloat16):
        ws = [p.detach().to(dtype).requires_grad_() for p in m.parameters()]
        for bs in (None, torch.tensor([3, 2, 1])):
            x = torch.randn(6, 3, dtype=dtype) if bs is not None else torch.randn(3, 2, 3, dtype=dtype)
            x.requires_grad_()
            mask = [torch.full((*x.shape[:-1], 8), 2.0)]
            for masks in ([], mask):
                args = (x, None, None, ws, masks, bs, 2, 2, True, True, False, 0, True)
                torch.library.opcheck(torch.ops.rnnfast_C.module_fwd.default, args)
