"""Drop-in parity of rnnfast.RNN/GRU/LSTM with torch.nn in float64: outputs, h_n (c_n), and gradients of
the input, every parameter and h0 (c0), with injected upstream gradients on every output.

The backend under test comes from RNNFAST_TEST_BACKENDS (comma-separated, default "reference,auto,cpu": auto
may give a case to torch.nn, cpu always runs the C++ layer stack), so the same suite checks each backend:
e.g. RNNFAST_TEST_BACKENDS=triton pytest tests/test_modules.py.
"""

import os

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast
from rnnfast import _ext
from tests.utils import MODULE_KINDS, assert_close, kind_id

# cpu by default where its kernels are built (test_cpu_*.py say why they are not, where they skip).
_DEFAULT = "reference,auto" + (",cpu" if _ext.status()[0] else "")
BACKENDS = os.environ.get("RNNFAST_TEST_BACKENDS", _DEFAULT).split(",")
INPUTS = ["padded", "packed-sorted", "packed-unsorted", "unbatched"]


def _pair(kind, backend, **cfg):
    name, kw = kind
    ref = getattr(nn, name)(dtype=torch.float64, **kw, **cfg)
    fast = rnnfast.from_torch(ref, backend=backend)
    return ref, fast


def _outputs(out, is_lstm):
    y, hx = out
    y = y.data if isinstance(y, PackedSequence) else y
    return [y, *hx] if is_lstm else [y, hx]


def _make_input(kind_input, T, B, I, batch_first):
    x = torch.rand(T, B, I, dtype=torch.float64) * 2 - 1
    lengths = torch.tensor([T, 1, T - 2, T - 1][:B])
    if kind_input == "unbatched":
        return x[:, 0].clone().requires_grad_(), None
    if kind_input == "packed-sorted":
        lengths, _ = lengths.sort(descending=True)
    if batch_first:
        x = x.transpose(0, 1).contiguous()
    x.requires_grad_()
    if kind_input == "padded":
        return x, None
    return x, lengths


def _run(m, x, lengths, hx, batch_first, sorted_):
    inp = x
    if lengths is not None:
        inp = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=sorted_)
    return m(inp, hx)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("inp", INPUTS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("kind", MODULE_KINDS, ids=kind_id)
def test_module_parity(kind, num_layers, bidirectional, inp, backend):
    T, B, I, H = 5, 4, 3, 6
    is_lstm = kind[0] == "LSTM"
    for batch_first, bias, with_hx in [(False, True, True), (True, False, False)]:
        ref, fast = _pair(
            kind,
            backend,
            input_size=I,
            hidden_size=H,
            num_layers=num_layers,
            bias=bias,
            batch_first=batch_first,
            bidirectional=bidirectional,
        )
        x, lengths = _make_input(inp, T, B, I, batch_first)
        D = 2 if bidirectional else 1
        N = kind[1].get("proj_size", 0) or H
        hx = None
        if with_hx:
            shape = (num_layers * D, N) if inp == "unbatched" else (num_layers * D, B, N)
            h0 = (torch.rand(*shape, dtype=torch.float64) - 0.5).requires_grad_()
            hx = h0
            if is_lstm:
                cshape = shape[:-1] + (H,)
                hx = (h0, (torch.rand(*cshape, dtype=torch.float64) - 0.5).requires_grad_())
        sorted_ = inp == "packed-sorted"
        outs_r = _outputs(_run(ref, x, lengths, hx, batch_first, sorted_), is_lstm)
        outs_f = _outputs(_run(fast, x, lengths, hx, batch_first, sorted_), is_lstm)
        names = ["output", "h_n", "c_n"]
        for n, got, want in zip(names, outs_f, outs_r):
            assert_close(f"{n} (batch_first={batch_first})", got, want, 1e-12)
        grads = [torch.randn_like(o) for o in outs_r]
        leaves = [x] + ([hx] if torch.is_tensor(hx) else list(hx or ()))
        g_r = torch.autograd.grad(outs_r, leaves + list(ref.parameters()), grads)
        g_f = torch.autograd.grad(outs_f, leaves + list(fast.parameters()), grads)
        pnames = ["input"] + ["h_0", "c_0"][: len(leaves) - 1] + [n for n, _ in ref.named_parameters()]
        for n, got, want in zip(pnames, g_f, g_r):
            assert_close(f"d{n} (batch_first={batch_first})", got, want, 1e-11)


@pytest.mark.parametrize("kind", MODULE_KINDS, ids=kind_id)
def test_dropout_between_layers_matches_torch(kind):
    """Training-mode dropout draws the same masks as torch.nn on CPU (same RNG stream, same shapes)."""
    ref, fast = _pair(kind, "reference", input_size=3, hidden_size=5, num_layers=3, dropout=0.4)
    ref.train()
    fast.train()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    torch.manual_seed(7)
    y_r = _outputs(ref(x), kind[0] == "LSTM")
    torch.manual_seed(7)
    y_f = _outputs(fast(x), kind[0] == "LSTM")
    for n, got, want in zip(["output", "h_n", "c_n"], y_f, y_r):
        assert_close(n, got, want, 1e-12)
    fast.eval()
    y1, y2 = fast(x)[0], fast(x)[0]
    assert torch.equal(y1, y2), "eval mode must not apply dropout"


@pytest.mark.parametrize("kind", MODULE_KINDS, ids=kind_id)
def test_state_dict_and_conversions(kind):
    name, kw = kind
    cfg = dict(input_size=4, hidden_size=5, num_layers=2, bidirectional=True, **kw)
    t = getattr(nn, name)(**cfg)
    f = getattr(rnnfast, name)(**cfg)
    # Same names, shapes and init distribution; strict loading both ways.
    assert [(n, p.shape) for n, p in t.named_parameters()] == [(n, p.shape) for n, p in f.named_parameters()]
    f.load_state_dict(t.state_dict(), strict=True)
    t.load_state_dict(f.state_dict(), strict=True)
    assert isinstance(f, nn.RNNBase)
    back = f.to_torch()
    assert type(back) is getattr(nn, name)
    for (n1, p1), (n2, p2) in zip(f.named_parameters(), back.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2) and p1.data_ptr() != p2.data_ptr()
    bound = 1 / cfg["hidden_size"] ** 0.5
    assert all(p.abs().max() <= bound for p in f.parameters()), "init must be U(-1/sqrt(H), 1/sqrt(H))"
    f.flatten_parameters()  # a no-op on CPU, as for torch.nn


def test_constructor_positional_and_device_dtype():
    m = rnnfast.RNN(
        3, 4, 2, "relu", False, True, 0.0, True, device="cpu", dtype=torch.float64, backend="reference"
    )
    t = nn.RNN(3, 4, 2, "relu", False, True, 0.0, True, device="cpu", dtype=torch.float64)
    assert m.nonlinearity == "relu" and m.bias is False and m.batch_first and m.bidirectional
    assert m.weight_hh_l0.dtype == torch.float64
    assert repr(m) == repr(t)[:-1] + ", backend='reference')"


def test_backend_from_environment(monkeypatch):
    m = rnnfast.GRU(3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    monkeypatch.setenv("RNNFAST_BACKEND", "reference")
    calls = []
    import rnnfast.ops.recurrence.reference as ref

    orig = ref.forward
    monkeypatch.setattr(ref, "forward", lambda *a, **k: calls.append(1) or orig(*a, **k))
    m(x)
    assert calls, "RNNFAST_BACKEND=reference must route the module through the reference backend"


def test_torch_backend_runs_torch_nn():
    m = rnnfast.LSTM(3, 4, dtype=torch.float64, backend="torch")
    t = m.to_torch()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    y1, (h1, c1) = m(x)
    y2, (h2, c2) = t(x)
    assert torch.equal(y1, y2) and torch.equal(h1, h2) and torch.equal(c1, c2)


@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_autocast_cpu_dtype_like_torch(name):
    t = getattr(nn, name)(4, 5)
    f = rnnfast.from_torch(t, backend="reference")
    x = torch.randn(3, 2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        try:
            y_t = t(x)[0]
        except RuntimeError as e:
            # torch.nn's oneDNN LSTM cannot build a bfloat16 primitive on CPUs without AVX-512 bf16
            # support; with oneDNN off the output dtype differs, so there is nothing to compare with.
            pytest.skip(f"torch.nn.{name} does not run under bfloat16 autocast on this CPU: {e}")
        y_f = f(x)[0]
    assert y_f.dtype == y_t.dtype
    assert_close("output", y_f.float(), y_t.float(), 3e-2)


@pytest.mark.parametrize("T", [7, 1])
@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_autocast_cpu_default_backend_runs(name, T):
    """The default backend under CPU autocast works on every CPU (it does not hand the LSTM to torch.nn's
    bfloat16 oneDNN path, which some CPUs lack, not even for one step) and stays close to the float32
    result."""
    t = getattr(nn, name)(16, 24)
    f = rnnfast.from_torch(t)
    x = torch.randn(T, 3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = f(x)[0]
    assert_close("output", y.float(), t(x)[0], 3e-2)


def test_no_grad_saves_nothing(monkeypatch):
    """Inference: the forward op is called with need_ws=False (no activations kept)."""
    import rnnfast.ops.recurrence.reference as ref

    seen = []
    orig = ref.forward
    monkeypatch.setattr(ref, "forward", lambda *a: seen.append(a[-1]) or orig(*a))
    m = rnnfast.GRU(3, 4, backend="reference")
    with torch.no_grad():
        m(torch.randn(5, 2, 3))
    with torch.inference_mode():
        m(torch.randn(5, 2, 3))
    m(torch.randn(5, 2, 3))
    assert seen == [False, False, True]


class _Double(nn.Module):
    def forward(self, w):
        return 2 * w


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", [("GRU", {}), ("LSTM", {"proj_size": 3})], ids=kind_id)
def test_swapped_and_parametrized_weights_are_used(kind, backend):
    """The forward reads the weights the module has at the call: those torch.func.functional_call swaps
    in (and back out), and parametrized ones (recomputed per call), as torch.nn does."""
    ref, fast = _pair(kind, backend, input_size=5, hidden_size=7, num_layers=2)
    x = torch.rand(4, 2, 5, dtype=torch.float64) * 2 - 1
    swapped = {k: torch.randn_like(v) for k, v in ref.named_parameters()}
    got = torch.func.functional_call(fast, swapped, (x,))
    want = torch.func.functional_call(ref, swapped, (x,))
    lstm = kind[0] == "LSTM"
    for name, a, b in zip(("y", "h_n", "c_n"), _outputs(got, lstm), _outputs(want, lstm)):
        assert_close("functional_call " + name, a, b, 1e-10)
    assert_close("own weights after", fast(x)[0], ref(x)[0], 1e-10)
    for m in (ref, fast):
        nn.utils.parametrize.register_parametrization(m, "weight_hh_l1", _Double())
    assert_close("parametrized", fast(x)[0], ref(x)[0], 1e-10)
    with torch.no_grad():
        ref.parametrizations.weight_hh_l1.original.mul_(0.5)
        fast.parametrizations.weight_hh_l1.original.mul_(0.5)
    assert_close("parametrized, changed", fast(x)[0], ref(x)[0], 1e-10)
