"""The large float32 products of the ``cpu`` backend: oneDNN inside the time loops and for the input
projection, checked against float64 oracles on sizes that take those paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnfast
from rnnfast import _ext
from rnnfast import functional as RF
from rnnfast.ops import linear
from tests.utils import assert_close, oracle, recurrence_inputs

ok, why = _ext.status()
pytestmark = pytest.mark.skipif(not ok, reason=f"C++ CPU kernels unavailable: {why}")
ONEDNN = torch.backends.mkldnn.is_available()


def test_step_products_pick_their_path():
    """Small steps stay in the register-blocked kernel; big float32 steps go to oneDNN where torch has it."""
    _ext.ensure_loaded()
    path = torch.ops.rnnfast_C.gemm_path
    assert path(1, 128, 512) == "blocked"
    assert path(4, 256, 1024) == "blocked"
    assert path(16, 512, 2048) == ("onednn" if ONEDNN else "aten")
    assert path(64, 1024, 4096) == ("onednn" if ONEDNN else "aten")


# B=16, H=256 LSTM: 16·256·1024 = 4M multiply-adds per step (oneDNN forward and backward);
# GRU: 3M; RNN 1M stays blocked, so it checks the mix of paths in one run. Ragged rows and reverse too.
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
def test_large_steps_match_oracle(cell, ragged):
    T, B, H = 5, 16, 256
    lengths = [5, 3, 5, 1, 0, 4, 5, 2, 5, 5, 3, 1, 5, 4, 2, 5] if ragged else None
    args = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=torch.float32)
    keys = ("gi", "h0", "c0", "w_hh", "b_hh", "w_hr", "lengths")
    a = args
    if cell == "lstm":
        outs = RF.lstm(
            a["gi"], a["h0"], a["c0"], a["w_hh"], a["b_hh"], None, a["lengths"], ragged, backend="cpu"
        )
    elif cell == "gru":
        outs = RF.gru(a["gi"], a["h0"], a["w_hh"], a["b_hh"], a["lengths"], ragged, backend="cpu")
    else:
        outs = RF.rnn(a["gi"], a["h0"], a["w_hh"], a["b_hh"], a["lengths"], ragged, "tanh", backend="cpu")
    args64 = {
        k: (
            v.detach().double().requires_grad_(v.requires_grad)
            if isinstance(v, torch.Tensor) and v.is_floating_point()
            else v
        )
        for k, v in args.items()
    }
    want = [w for w in oracle(cell, *(args64[k] for k in keys), ragged) if w is not None]
    for name, o, w in zip(["y", "h_n", "c_n"], outs, want):
        assert_close(name, o.double(), w.detach(), atol=2e-4, rtol=2e-4)
    g = torch.Generator().manual_seed(3)
    ups = [torch.randn(o.shape, generator=g) for o in outs]
    names = [k for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    got = torch.autograd.grad(outs, [args[k] for k in names], ups)
    exp = torch.autograd.grad(want, [args64[k] for k in names], [u.double() for u in ups])
    for name, x, y in zip(names, got, exp):
        assert_close("d" + name, x.double(), y, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_input_projection_matches_linear(bias):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 16, 256, generator=g).transpose(0, 1).requires_grad_()  # non-contiguous input
    w = torch.randn(768, 256, generator=g).mul_(0.05).requires_grad_()
    b = torch.randn(768, generator=g).requires_grad_() if bias else None
    y = linear.input_projection(x, w, b)
    if ONEDNN:
        assert type(y.grad_fn).__name__ == "_DnnlLinearBackward"
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if bias else None
    want = F.linear(x64, w64, b64)
    assert_close("y", y.double(), want, atol=1e-4, rtol=1e-4)
    up = torch.randn(y.shape, generator=g)
    ins, ins64 = [x, w] + ([b] if bias else []), [x64, w64] + ([b64] if bias else [])
    for name, a, e in zip(
        ["dx", "dw", "db"], torch.autograd.grad(y, ins, up), torch.autograd.grad(want, ins64, up.double())
    ):
        assert_close(name, a.double(), e, atol=1e-3, rtol=1e-3)


def test_input_projection_small_or_float64_is_linear():
    x = torch.randn(3, 2, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(24, 8, dtype=torch.float64, requires_grad=True)
    y = linear.input_projection(x, w, None)
    assert "DnnlLinear" not in type(y.grad_fn).__name__
    x32 = torch.randn(3, 2, 8, requires_grad=True)
    assert "DnnlLinear" not in type(linear.input_projection(x32, w.float(), None).grad_fn).__name__


def test_module_with_large_products_matches_torch_nn():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(256, 256)
    mod = rnnfast.from_torch(ref, backend="cpu")
    x = torch.randn(20, 16, 256)
    out, (h, c) = mod(x)
    out_ref, (h_ref, c_ref) = ref(x)
    for name, a, b in (("output", out, out_ref), ("h_n", h, h_ref), ("c_n", c, c_ref)):
        assert_close(name, a, b, atol=1e-4, rtol=1e-4)
    (out.square().sum() + c.sum()).backward()
    (out_ref.square().sum() + c_ref.sum()).backward()
    for (name, p), (_, q) in zip(mod.named_parameters(), ref.named_parameters()):
        assert_close("grad " + name, p.grad, q.grad, atol=2e-3, rtol=2e-3)
