"""Triton recurrence kernels under TRITON_INTERPRET=1 (CPU): against the plain-loop oracle in float64 and
float32, float64 gradcheck through rnnfast.functional, the drop-in modules against torch.nn, and the
configurations the backend refuses."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnfast
from rnnfast import backends
from rnnfast.ops.recurrence import triton as rec_triton
from tests.utils import CELLS, assert_close, case_id, oracle, recurrence_inputs, run_recurrence

# (T, B, H, lengths, reverse): B=1 and H=1 edges, odd H inside one tile (7, 33) and across two (70),
# ragged lengths including an empty sequence, both directions.
SHAPES = [
    (1, 1, 1, None, False),
    (5, 3, 7, None, True),
    (5, 3, 33, [5, 2, 0], False),
    (5, 3, 33, [3, 5, 1], True),
    (3, 2, 70, [3, 1], True),
    (2, 17, 16, [2, 1] * 8 + [0], False),  # two programs of 16 rows
]
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "T,B,H,lengths,reverse",
    SHAPES,
    ids=[case_id(T=s[0], B=s[1], H=s[2], L=int(s[3] is not None), R=int(s[4])) for s in SHAPES],
)
@pytest.mark.parametrize("cell", CELLS)
def test_forward_backward_vs_oracle(cell, T, B, H, lengths, reverse, dtype):
    a = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=dtype)
    got = run_recurrence(cell, a, reverse, "triton")
    want = oracle(cell, a["gi"], a["h0"], a["c0"], a["w_hh"], a["b_hh"], None, a["lengths"], reverse)
    tol = TOL[dtype]
    names = ("y", "h_n", "c_n")
    for name, g, w in zip(names, got, want):
        if w is not None:
            assert_close(name, g, w, atol=tol)
    if lengths is not None:
        invalid = torch.arange(T).unsqueeze(1) >= a["lengths"].unsqueeze(0)
        assert (got[0][invalid] == 0).all(), "y: expected exact zeros beyond each row's length"

    # Upstream gradients on every output, h_n included, so the gradient flowing into h0/c0 is checked
    # through both the outputs and the final state.
    gen = torch.Generator().manual_seed(7)
    ups = [torch.randn(w.shape, generator=gen, dtype=torch.float64).to(dtype) for w in want if w is not None]
    inputs = [a[k] for k in ("gi", "h0", "c0", "w_hh", "b_hh") if a[k] is not None]
    in_names = [k for k in ("gi", "h0", "c0", "w_hh", "b_hh") if a[k] is not None]
    g_got = torch.autograd.grad([o for o in got if o is not None], inputs, ups)
    g_want = torch.autograd.grad([o for o in want if o is not None], inputs, ups)
    for name, g, w in zip(in_names, g_got, g_want):
        assert_close("d" + name, g, w, atol=tol * 10)


@pytest.mark.parametrize("cell", CELLS)
def test_inference_forward(cell):
    """Without autograd the op runs with need_ws=False (nothing saved): same outputs."""
    a = recurrence_inputs(cell, 4, 3, 9, lengths=[4, 0, 2], dtype=torch.float64, grad=False)
    with torch.no_grad():
        got = run_recurrence(cell, a, True, "triton")
    want = oracle(cell, a["gi"], a["h0"], a["c0"], a["w_hh"], a["b_hh"], None, a["lengths"], True)
    for name, g, w in zip(("y", "h_n", "c_n"), got, want):
        if w is not None:
            assert_close(name, g, w, atol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("lengths,reverse", [(None, False), ([4, 2, 1], True)], ids=["full", "ragged-rev"])
def test_gradcheck(cell, lengths, reverse):
    a = recurrence_inputs(cell, 4, 3, 5, lengths=lengths, dtype=torch.float64)
    keys = [k for k in ("gi", "h0", "c0", "w_hh", "b_hh") if a[k] is not None]

    def f(*xs):
        kw = dict(a, **dict(zip(keys, xs)))
        return tuple(o for o in run_recurrence(cell, kw, reverse, "triton") if o is not None)

    assert torch.autograd.gradcheck(f, [a[k] for k in keys], fast_mode=True)


def _packed(x, lengths):
    return pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)


@pytest.mark.parametrize("cls", ["RNN", "GRU", "LSTM", "LSTM-proj"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_module_parity(cls, packed):
    """2 layers, bidirectional, with h0: outputs, final states and every parameter's gradient."""
    T, B, I, H = 4, 3, 5, 7
    kw = dict(num_layers=2, bidirectional=True, dtype=torch.float64)
    if cls == "LSTM-proj":
        cls, kw["proj_size"] = "LSTM", 4
    ours = getattr(rnnfast, cls)(I, H, backend="triton", **kw)
    theirs = getattr(torch.nn, cls)(I, H, **kw)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(4, B, kw.get("proj_size", H), dtype=torch.float64)
    hx = (h0, torch.randn(4, B, H, dtype=torch.float64)) if cls == "LSTM" else h0
    lengths = [4, 1, 3]
    inp = _packed(x, lengths) if packed else x
    out_o, st_o = ours(inp, hx)
    out_t, st_t = theirs(inp, hx)
    if packed:
        out_o, _ = pad_packed_sequence(out_o)
        out_t, _ = pad_packed_sequence(out_t)
    assert_close("output", out_o, out_t, atol=1e-10)
    st_o = st_o if cls == "LSTM" else (st_o,)
    st_t = st_t if cls == "LSTM" else (st_t,)
    for name, s_o, s_t in zip(("h_n", "c_n"), st_o, st_t):
        assert_close(name, s_o, s_t, atol=1e-10)
    loss_o = out_o.pow(2).sum() + sum(s.sum() for s in st_o)
    loss_t = out_t.pow(2).sum() + sum(s.sum() for s in st_t)
    loss_o.backward()
    loss_t.backward()
    for (name, p_o), p_t in zip(ours.named_parameters(), theirs.parameters()):
        assert_close("grad " + name, p_o.grad, p_t.grad, atol=1e-9)


# (T, B, H, P, lengths, reverse): P < H within one tile, P > H, both across tiles.
PROJ_SHAPES = [(1, 1, 1, 1, None, False), (5, 3, 33, 20, [5, 2, 0], True), (3, 2, 20, 70, [1, 3], False)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "T,B,H,P,lengths,reverse",
    PROJ_SHAPES,
    ids=[case_id(T=s[0], B=s[1], H=s[2], P=s[3], L=int(s[4] is not None), R=int(s[5])) for s in PROJ_SHAPES],
)
def test_lstm_projection_vs_oracle(T, B, H, P, lengths, reverse, dtype):
    a = recurrence_inputs("lstm", T, B, H, P=P, lengths=lengths, dtype=dtype)
    got = run_recurrence("lstm", a, reverse, "triton")
    want = oracle("lstm", a["gi"], a["h0"], a["c0"], a["w_hh"], a["b_hh"], a["w_hr"], a["lengths"], reverse)
    tol = TOL[dtype]
    for name, g, w in zip(("y", "h_n", "c_n"), got, want):
        assert_close(name, g, w, atol=tol)
    gen = torch.Generator().manual_seed(9)
    ups = [torch.randn(w.shape, generator=gen, dtype=torch.float64).to(dtype) for w in want]
    keys = ("gi", "h0", "c0", "w_hh", "b_hh", "w_hr")
    g_got = torch.autograd.grad(got, [a[k] for k in keys], ups)
    g_want = torch.autograd.grad(want, [a[k] for k in keys], ups)
    for name, g, w in zip(keys, g_got, g_want):
        assert_close("d" + name, g, w, atol=tol * 10)


def test_lstm_projection_gradcheck():
    a = recurrence_inputs("lstm", 4, 3, 5, P=3, lengths=[4, 1, 2], dtype=torch.float64)
    keys = ("gi", "h0", "c0", "w_hh", "b_hh", "w_hr")

    def f(*xs):
        return run_recurrence("lstm", dict(a, **dict(zip(keys, xs))), True, "triton")

    assert torch.autograd.gradcheck(f, [a[k] for k in keys], fast_mode=True)


def test_refuses_large_h_on_cuda():
    ok, why = rec_triton.supports(torch.device("cuda"), torch.float32, {"cell": "gru", "H": 4096, "P": 0})
    assert not ok and "H=4096" in why


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_refuses_half_under_interpreter(dtype):
    ok, why = rec_triton.supports(torch.device("cpu"), dtype, {"cell": "gru", "H": 8, "P": 0})
    assert not ok and "interpreter" in why


def test_auto_does_not_pick_unverified_triton():
    a = recurrence_inputs("gru", 2, 2, 4, dtype=torch.float32)
    sizes = {"cell": "gru", "T": 2, "B": 2, "H": 4, "P": 0, "lengths": False, "reverse": False}
    assert backends.resolve("recurrence", a["gi"].device, a["gi"].dtype, sizes, "auto") != "triton"


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_non_contiguous_inputs(cell):
    """Strided gi (batch-first storage), transposed W_hh storage and a strided h0 give the same results."""
    a = recurrence_inputs(cell, 4, 3, 9, lengths=[4, 2, 3], dtype=torch.float64, grad=False)
    strided = dict(a)
    strided["gi"] = a["gi"].transpose(0, 1).contiguous().transpose(0, 1)
    strided["w_hh"] = a["w_hh"].t().contiguous().t()
    strided["h0"] = torch.stack([a["h0"], a["h0"]], -1)[..., 0]
    assert not any(strided[k].is_contiguous() for k in ("gi", "w_hh", "h0"))
    got = run_recurrence(cell, strided, False, "triton")
    want = oracle(cell, a["gi"], a["h0"], a["c0"], a["w_hh"], a["b_hh"], None, a["lengths"], False)
    for name, g, w in zip(("y", "h_n", "c_n"), got, want):
        if w is not None:
            assert_close(name, g, w, atol=1e-10)
