"""TorchScript, torch.jit.trace and ONNX export: a clear error that names what works, never a deep one.

Every check is on the default backend and asserts the message the user reads: what failed, and the fix
(``module.to_torch()`` for TorchScript/ONNX; ``torch.export`` / ``torch.compile``, which work). The fixes
it names are run too, against the module's own output.
"""

import io
import warnings

import pytest
import torch
from torch import nn

import rnnfast
from rnnfast import functional as RF
from rnnfast.nn import SPINN, TreeLSTMReduce
from tests.utils import assert_close

WORKS = r"torch\.export\.export and torch\.compile support it"
TO_TORCH = r"module\.to_torch\(\) is the torch\.nn\.{} with the same parameters"

MODULES = {
    "RNN": lambda: rnnfast.RNN(5, 7, num_layers=2),
    "GRU": lambda: rnnfast.GRU(5, 7, bidirectional=True),
    "LSTM": lambda: rnnfast.LSTM(5, 7, proj_size=3),
}


def _x(T=4, B=3, I=5):
    return torch.randn(T, B, I)


class _Wrapper(nn.Module):
    """A user model holding an rnnfast module, the way a swap from torch.nn looks."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        n = rnn.proj_size or rnn.hidden_size
        self.head = nn.Linear(n * (2 if rnn.bidirectional else 1), 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


@pytest.mark.parametrize("kind", MODULES)
@pytest.mark.parametrize("nested", [False, True], ids=["module", "in-model"])
def test_script_names_to_torch(kind, nested):
    m = MODULES[kind]()
    target = _Wrapper(m) if nested else m
    pat = rf"rnnfast\.{kind} cannot be compiled by TorchScript \(torch\.jit\.script\).*{WORKS}.*"
    with pytest.raises(RuntimeError, match=pat + TO_TORCH.format(kind)):
        torch.jit.script(target)


@pytest.mark.parametrize("kind", MODULES)
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_trace_names_to_torch(kind, grad):
    # Under no_grad the trace used to succeed and the traced module then failed once called with grad.
    m = MODULES[kind]()
    pat = rf"rnnfast\.{kind} cannot be traced by torch\.jit\.trace.*{WORKS}.*" + TO_TORCH.format(kind)
    with torch.set_grad_enabled(grad), pytest.raises(RuntimeError, match=pat):
        torch.jit.trace(_Wrapper(m), (_x(),))


def _onnx_export(model, args, dynamo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated and says so
        torch.onnx.export(model, args, io.BytesIO() if not dynamo else None, dynamo=dynamo)


@pytest.mark.parametrize("kind", MODULES)
def test_onnx_export_names_to_torch(kind):
    m = MODULES[kind]().eval()
    pat = rf"rnnfast\.{kind} cannot be exported to ONNX \(torch\.onnx\.export\).*{WORKS}.*"
    with pytest.raises(RuntimeError, match=pat + TO_TORCH.format(kind)):
        _onnx_export(_Wrapper(m), (_x(),), dynamo=False)


def test_onnx_dynamo_export_names_to_torch():
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    m = rnnfast.GRU(5, 7).eval()
    with pytest.raises(Exception, match=r"rnnfast\.GRU cannot be exported to ONNX.*module\.to_torch\(\)"):
        _onnx_export(m, (_x(),), dynamo=True)


def _spinn_inputs(B=3, N=4, H=6):
    buffers = torch.randn(B, N, 2 * H)
    # each example: shift, shift, reduce, then shift-reduce for the remaining leaves
    steps = [3, 3] + [2, 3] * (N - 2) + [2]
    transitions = torch.tensor(steps).unsqueeze(1).expand(-1, B).contiguous()
    return buffers, transitions


def test_spinn_parts_script_trace_onnx():
    spinn = SPINN(6, 4)
    reduce = TreeLSTMReduce(6)
    buffers, transitions = _spinn_inputs()
    r_args = tuple(torch.randn(3, 6) for _ in range(4))
    for name, mod in (("SPINN", spinn), ("TreeLSTMReduce", reduce)):
        with pytest.raises(RuntimeError, match=rf"rnnfast\.nn\.{name} cannot be compiled by TorchScript.*"):
            torch.jit.script(mod)
    with pytest.raises(RuntimeError, match=rf"rnnfast\.nn\.SPINN cannot be traced.*{WORKS}"):
        torch.jit.trace(spinn, (buffers, transitions))
    with pytest.raises(RuntimeError, match=rf"rnnfast\.nn\.TreeLSTMReduce cannot be traced.*{WORKS}"):
        torch.jit.trace(reduce, r_args)
    with pytest.raises(RuntimeError, match=r"rnnfast\.nn\.TreeLSTMReduce cannot be exported to ONNX"):
        _onnx_export(reduce, r_args, dynamo=False)


class _FunctionalGRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(21, 7))
        self.b = nn.Parameter(torch.randn(21))

    def forward(self, gi, h0):
        return RF.gru(gi, h0, self.w, self.b)[0]


def test_functional_ops_under_trace_and_onnx():
    m = _FunctionalGRU()
    args = (torch.randn(4, 3, 21), torch.randn(3, 7))
    with pytest.raises(RuntimeError, match=rf"rnnfast\.functional\.gru cannot be traced.*{WORKS}"):
        torch.jit.trace(m, args)
    with pytest.raises(RuntimeError, match=r"rnnfast\.functional\.gru cannot be exported to ONNX"):
        _onnx_export(m, args, dynamo=False)
    x = torch.randn(3, 10)
    with pytest.raises(RuntimeError, match=r"rnnfast\.functional\.tree_lstm cannot be traced"):
        torch.jit.trace(lambda a: RF.tree_lstm(a, x[:, :2], x[:, 2:4]), (x,))


@pytest.mark.parametrize("kind", MODULES)
def test_named_fixes_work(kind):
    """What the messages offer: the model with ``to_torch()`` in place of the rnnfast module scripts and
    traces to the same numbers; torch.export of the rnnfast model itself works."""
    model = _Wrapper(MODULES[kind]()).double().eval()
    x, x2 = _x().double(), _x(T=6, B=2).double()
    want, want2 = model(x), model(x2)
    converted = _Wrapper(model.rnn.to_torch()).double().eval()
    converted.head.load_state_dict(model.head.state_dict())
    scripted = torch.jit.script(converted)  # torch.jit.script of a bare torch.nn RNN has no forward
    assert_close("scripted y", scripted(x2), want2, atol=1e-12)
    traced = torch.jit.trace(converted, (x,))
    assert_close("traced y", traced(x), want, atol=1e-12)
    exported = torch.export.export(model, (x,))
    assert_close("torch.export y", exported.module()(x), want, atol=1e-12)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_to_torch_exports_to_onnx(dynamo):
    pytest.importorskip("onnxscript" if dynamo else "onnx", reason="ONNX export writes with onnx")
    model = _Wrapper(rnnfast.LSTM(5, 7, num_layers=2, bidirectional=True)).eval()
    model.rnn = model.rnn.to_torch()
    _onnx_export(model, (_x(),), dynamo=dynamo)


def test_guards_leave_torch_compile_alone():
    # The guards must not break the graph. (backend="reference": on the default backend, fullgraph trips
    # over the CPU detection in the input projection's library choice, a separate matter.)
    torch._dynamo.reset()
    m = rnnfast.GRU(5, 7, num_layers=2, backend="reference").double()
    x = _x().double()
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    assert_close("compiled y", compiled(x)[0], m(x)[0], atol=1e-12)
