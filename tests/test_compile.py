"""torch.compile(fullgraph=True) sees the rnnfast ops as opaque custom ops and still gets the same numbers."""

import pytest
import torch

import rnnfast
from tests.utils import assert_close


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
