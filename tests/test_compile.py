"""torch.compile(fullgraph=True) sees the rnnfast ops as opaque custom ops and still gets the same numbers."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast
from rnnfast import _ext
from tests.utils import assert_close

_cpu_ok, _cpu_why = _ext.status()
needs_cpu = pytest.mark.skipif(not _cpu_ok, reason=f"C++ CPU kernels unavailable: {_cpu_why}")


def _graphs_backend(graphs):
    """aot_eager, keeping each graph dynamo hands over (one per compiled frame)."""

    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    return backend


def _packed(x, inp):
    lengths = torch.tensor([5, 2, 4]) if inp == "packed-unsorted" else torch.tensor([5, 4, 2])
    return pack_padded_sequence(x, lengths, enforce_sorted=inp == "packed-sorted")


def _data(y):
    return y.data if isinstance(y, PackedSequence) else y


@needs_cpu
@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("inp", ["padded", "packed-sorted", "packed-unsorted"])
@pytest.mark.parametrize("backend", ["auto", "cpu"])
def test_compile_fullgraph_module_training(backend, inp, dynamic):
    """fullgraph training step (forward and backward) of a two-layer bidirectional module on the default
    backend and the cpu stack, padded and PackedSequence input: one graph, the loss and every gradient as
    eager and as torch.nn (float64); a second batch size reuses (dynamic) or recompiles (static) the
    graph and still agrees."""
    torch._dynamo.reset()
    name = "GRU" if inp != "packed-sorted" else "LSTM"
    torch.manual_seed(0)
    ref = getattr(nn, name)(3, 5, num_layers=2, bidirectional=True, dtype=torch.float64)
    m = rnnfast.from_torch(ref, backend=backend)

    def step(x):
        y, h = m(x)
        h = h[0] if isinstance(h, tuple) else h
        return (_data(y) ** 2).sum() + h.sum()

    def ref_step(x):
        y, h = ref(x)
        h = h[0] if isinstance(h, tuple) else h
        return (_data(y) ** 2).sum() + h.sum()

    graphs = []
    compiled = torch.compile(step, fullgraph=True, backend=_graphs_backend(graphs), dynamic=dynamic)
    counts = []
    for B in (6, 7) if inp == "padded" else (3,):
        x = torch.randn(5, B, 3, dtype=torch.float64, requires_grad=True)

        def xin(x=x):  # packed anew for each run: each backward frees the packing's graph
            return x if inp == "padded" else _packed(x, inp)

        leaves = [x, *m.parameters()]
        out = compiled(xin())
        counts.append(len(graphs))
        g_comp = torch.autograd.grad(out, leaves)
        eager = step(xin())
        g_eager = torch.autograd.grad(eager, leaves)
        want = ref_step(xin())
        g_want = torch.autograd.grad(want, [x, *ref.parameters()])
        assert_close("loss", out, eager, 1e-12)
        assert_close("loss vs torch.nn", out, want, 1e-10)
        names = ["input"] + [n for n, _ in m.named_parameters()]
        for n, a, b, w in zip(names, g_comp, g_eager, g_want):
            assert_close("d" + n, a, b, 1e-12)
            assert_close("d" + n + " vs torch.nn", a, w, 1e-10)
    if inp == "padded":  # the second batch size: the same graph with dynamic shapes, a new one without
        assert (counts[1] == counts[0]) is dynamic, counts
    if backend == "cpu":
        code = "".join(g.code for g in graphs)
        assert "rnnfast_C.module_fwd" in code, code


@needs_cpu
@pytest.mark.slow
@pytest.mark.parametrize("inp", ["padded", "packed-unsorted"])
@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_compile_fullgraph_inference_inductor(name, inp):
    """Inference (no_grad) of the default backend through inductor: outputs and states as eager."""
    torch._dynamo.reset()
    torch.manual_seed(1)
    m = getattr(rnnfast, name)(4, 6, num_layers=2).eval()
    x = torch.randn(6, 3, 4)
    xin = x if inp == "padded" else _packed(x[:5], inp)

    def f(x):
        y, h = m(x)
        h = h[0] if isinstance(h, tuple) else h
        return torch.tanh(_data(y)), h * 2

    with torch.no_grad():
        got = torch.compile(f, fullgraph=True)(xin)
        want = f(xin)
    for n, g, w in zip(["output", "h_n"], got, want):
        assert_close(n, g, w, 1e-6, 1e-6)


@needs_cpu
@pytest.mark.slow
def test_compile_fullgraph_dropout_training():
    """Dropout between layers under torch.compile: masks from torch's generator (the same seed gives the
    same step, compiled or not), gradients as eager's with that seed."""
    torch._dynamo.reset()
    torch.manual_seed(2)
    m = rnnfast.GRU(3, 8, num_layers=3, dropout=0.5, backend="cpu", dtype=torch.float64).train()
    x = torch.randn(6, 2, 3, dtype=torch.float64)

    def step(x):
        return (m(x)[0] ** 2).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.manual_seed(7)
    a = compiled(x)
    g_a = torch.autograd.grad(a, list(m.parameters()))
    torch.manual_seed(7)
    b = compiled(x)
    torch.manual_seed(7)
    e = step(x)
    g_e = torch.autograd.grad(e, list(m.parameters()))
    torch.manual_seed(8)
    c = compiled(x)
    assert a.item() == b.item() and a.item() != c.item()
    assert_close("loss vs eager", a, e, 1e-12)
    for (n, _), ga, ge in zip(m.named_parameters(), g_a, g_e):
        assert_close("d" + n, ga, ge, 1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_compile_fullgraph_module(name):
    torch._dynamo.reset()
    m = getattr(rnnfast, name)(3, 5, num_layers=2, bidirectional=True, backend="reference")
    head = torch.nn.Linear(10, 2)

    def step(x):
        y = m(x)[0]
        return head(y).sum()

    x = torch.randn(4, 2, 3)
    eager = step(x)
    g_eager = torch.autograd.grad(eager, list(m.parameters()))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    g_comp = torch.autograd.grad(out, list(m.parameters()))
    assert_close("loss", out, eager, 1e-5)
    for (n, _), a, b in zip(m.named_parameters(), g_comp, g_eager):
        assert_close("d" + n, a, b, 1e-5)


@pytest.mark.slow
def test_compile_fullgraph_functional_inductor():
    torch._dynamo.reset()
    T, B, H = 4, 2, 5
    gi, h0 = torch.randn(T, B, 3 * H), torch.randn(B, H)
    w, b = torch.randn(3 * H, H, requires_grad=True), torch.randn(3 * H)
    lengths = torch.tensor([4, 2])

    def f(gi, h0, w, b):
        y, h = rnnfast.functional.gru(torch.tanh(gi), h0, w, b, lengths=lengths, backend="reference")
        return (y * 2).sum() + h.sum()

    eager = f(gi, h0, w, b)
    out = torch.compile(f, fullgraph=True)(gi, h0, w, b)
    assert_close("out", out, eager, 1e-4)
    (gw,) = torch.autograd.grad(out, [w])
    (gw_e,) = torch.autograd.grad(eager, [w])
    assert_close("dw_hh", gw, gw_e, 1e-4)


def test_fake_tensors_reach_the_registered_op():
    """Eager calls on plain tensors skip the custom-op dispatch; tracers' tensor subclasses (here fake
    tensors, as torch.export and make_fx use) must still see the registered op and its fake kernel."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from rnnfast import functional as RF

    with FakeTensorMode():
        gi, h0 = torch.randn(5, 2, 12), torch.randn(2, 4)
        w_hh, b_hh = torch.randn(12, 4), torch.randn(12)
        y, h = RF.gru(gi, h0, w_hh, b_hh, backend="cpu")
    assert type(y).__name__ == "FakeTensor" and tuple(y.shape) == (5, 2, 4) and tuple(h.shape) == (2, 4)


@pytest.mark.slow
@pytest.mark.parametrize("tracker", [False, True], ids=["no-tracker", "tracker"])
def test_compile_fullgraph_spinn(tracker):
    """The SPINN encoder with transitions given on the CPU: rnnfast::spinn_fwd/_bwd in one graph."""
    import random

    from rnnfast.data.trees import pad_transitions, random_transitions
    from rnnfast.nn.spinn import SPINN

    torch._dynamo.reset()
    B, H = 5, 6
    model = SPINN(H, 4 if tracker else None, predict=tracker)
    rng = random.Random(0)
    tr = pad_transitions([random_transitions(rng.randint(1, 6), rng) for _ in range(B)])
    N = int((tr == rnnfast.SHIFT).sum(0).max())
    buffers = torch.randn(B, N, 2 * H, requires_grad=True)
    null = torch.randn(B, 2 * H, requires_grad=True)

    def step(buffers, null):
        out = model(buffers, tr, null, return_c=True)
        loss = out[0].sum() + (out[1] * out[1]).sum()
        return loss + out[2].square().sum() if tracker else loss

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    inputs = [buffers, null] + list(model.parameters())
    eager = step(buffers, null)
    g_eager = torch.autograd.grad(eager, inputs)
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    out = compiled(buffers, null)
    g_comp = torch.autograd.grad(out, inputs)
    assert len(graphs) == 1
    code = "".join(m.code for m in graphs[0].modules() if isinstance(m, torch.fx.GraphModule))
    assert "rnnfast.spinn_fwd" in code and "rnnfast.spinn_bwd" in code
    assert_close("loss", out, eager, 1e-5)
    names = ["buffers", "null"] + [n for n, _ in model.named_parameters()]
    for name, a, b in zip(names, g_comp, g_eager):
        assert_close("d" + name, a, b, 1e-5)
