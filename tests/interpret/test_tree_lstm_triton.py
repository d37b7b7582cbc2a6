"""Triton tree-LSTM composition and fused SPINN reduce under TRITON_INTERPRET=1 (CPU): against the
oracles in float64 and float32, and float64 gradcheck through rnnfast.functional."""

import pytest
import torch

from rnnfast import functional
from rnnfast.ops.tree_lstm import reference as tree_ref
from rnnfast.ops.tree_lstm_reduce import reference as reduce_ref
from rnnfast.ops.tree_lstm_reduce import triton as reduce_triton
from tests.utils import assert_close, case_id

# (R, H, HT): single row and unit, odd sizes within one tile, H across two tiles of the reduce (32 wide),
# HT larger than H (its own K range).
SHAPES = [(1, 1, 0), (3, 7, 5), (5, 33, 0), (17, 40, 70)]
IDS = [case_id(R=r, H=h, HT=t) for r, h, t in SHAPES]
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def _rand(*shape, dtype, gen, scale=1.0):
    return (
        ((torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale).to(dtype).requires_grad_()
    )


def _reduce_inputs(R, H, HT, dtype, bias=True):
    g = torch.Generator().manual_seed(R * 31 + H * 7 + HT)
    s = 1.0 / H**0.5
    return {
        "h_l": _rand(R, H, dtype=dtype, gen=g),
        "c_l": _rand(R, H, dtype=dtype, gen=g),
        "h_r": _rand(R, H, dtype=dtype, gen=g),
        "c_r": _rand(R, H, dtype=dtype, gen=g),
        "w_l": _rand(5 * H, H, dtype=dtype, gen=g, scale=s),
        "b_l": _rand(5 * H, dtype=dtype, gen=g) if bias else None,
        "w_r": _rand(5 * H, H, dtype=dtype, gen=g, scale=s),
        "h_track": _rand(R, HT, dtype=dtype, gen=g) if HT else None,
        "w_t": _rand(5 * H, HT, dtype=dtype, gen=g, scale=1.0 / max(HT, 1) ** 0.5) if HT else None,
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("R,H,HT", SHAPES, ids=IDS)
def test_tree_lstm_vs_oracle(R, H, HT, dtype):
    g = torch.Generator().manual_seed(R + H)
    lstm_in, c_l, c_r = (
        _rand(R, 5 * H, dtype=dtype, gen=g),
        _rand(R, H, dtype=dtype, gen=g),
        _rand(R, H, dtype=dtype, gen=g),
    )
    got = functional.tree_lstm(lstm_in, c_l, c_r, backend="triton")
    want = tree_ref.tree_lstm(lstm_in, c_l, c_r)
    tol = TOL[dtype]
    for name, a, b in zip(("h", "c"), got, want):
        assert_close(name, a, b, atol=tol)
    ups = [torch.randn(R, H, generator=g, dtype=torch.float64).to(dtype) for _ in range(2)]
    gg = torch.autograd.grad(got, (lstm_in, c_l, c_r), ups)
    gw = torch.autograd.grad(want, (lstm_in, c_l, c_r), ups)
    for name, a, b in zip(("dlstm_in", "dc_l", "dc_r"), gg, gw):
        assert_close(name, a, b, atol=tol)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("R,H,HT", SHAPES, ids=IDS)
def test_reduce_vs_oracle(R, H, HT, dtype, bias):
    a = _reduce_inputs(R, H, HT, dtype, bias)
    got = functional.tree_lstm_reduce(**a, backend="triton")
    want = reduce_ref.tree_lstm_reduce(**a)
    tol = TOL[dtype]
    for name, x, y in zip(("h", "c"), got, want):
        assert_close(name, x, y, atol=tol)
    g = torch.Generator().manual_seed(3)
    ups = [torch.randn(R, H, generator=g, dtype=torch.float64).to(dtype) for _ in range(2)]
    names = [k for k, v in a.items() if v is not None]
    gg = torch.autograd.grad(got, [a[k] for k in names], ups)
    gw = torch.autograd.grad(want, [a[k] for k in names], ups)
    for name, x, y in zip(names, gg, gw):
        assert_close("d" + name, x, y, atol=tol * 10)


def test_reduce_ws_is_lstm_in():
    """The saved activations are lstm_in itself, in the accumulation dtype (the backward's input)."""
    a = {
        k: (v.detach() if v is not None else None) for k, v in _reduce_inputs(4, 9, 3, torch.float32).items()
    }
    _, _, ws = reduce_triton.forward(*a.values())
    want = a["h_l"] @ a["w_l"].t() + a["b_l"] + a["h_r"] @ a["w_r"].t() + a["h_track"] @ a["w_t"].t()
    assert_close("ws", ws, want, atol=2e-5)


def test_tree_lstm_gradcheck():
    g = torch.Generator().manual_seed(11)
    xs = (_rand(3, 35, dtype=torch.float64, gen=g), _rand(3, 7, dtype=torch.float64, gen=g),
          _rand(3, 7, dtype=torch.float64, gen=g))  # fmt: skip
    assert torch.autograd.gradcheck(lambda *t: functional.tree_lstm(*t, backend="triton"), xs, fast_mode=True)


@pytest.mark.parametrize("HT", [0, 4], ids=["no-tracker", "tracker"])
def test_reduce_gradcheck(HT):
    a = _reduce_inputs(3, 5, HT, torch.float64)
    names = [k for k, v in a.items() if v is not None]

    def f(*xs):
        return functional.tree_lstm_reduce(**dict(a, **dict(zip(names, xs))), backend="triton")

    assert torch.autograd.gradcheck(f, [a[k] for k in names], fast_mode=True)
