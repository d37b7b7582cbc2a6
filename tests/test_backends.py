"""Backend selection: auto order, forcing, environment, fallbacks."""

import logging

import pytest
import torch

from rnnfast import backends

GRU = {"cell": "gru", "T": 8, "B": 2, "H": 16, "P": 0, "lengths": False, "reverse": False}
LSTM = dict(GRU, cell="lstm")
RNN = dict(GRU, cell="rnn_tanh")


def test_auto_order_cpu_ops():
    """Bare ops: the cpu kernels, then the reference; modules: cpu and torch in the policy's order."""
    cpu = torch.device("cpu")
    for sizes in (GRU, LSTM, RNN, dict(GRU, T=1), dict(LSTM, B=64, H=512)):
        assert backends.auto_order("recurrence", cpu, sizes) == ["cpu", "reference"]
        order = backends.auto_order("module", cpu, sizes)
        assert sorted(order) == ["cpu", "torch"]
        assert order[0] == backends.cpu.module_choice(sizes)


def test_auto_order_cuda_only_verified_gpu_backends(monkeypatch):
    cuda = torch.device("cuda")
    assert backends.auto_order("recurrence", cuda, GRU) == ["reference"]
    assert backends.auto_order("module", cuda, GRU) == ["torch"]
    monkeypatch.setattr(backends, "GPU_VERIFIED", frozenset({("triton", "recurrence")}))
    assert backends.auto_order("module", cuda, GRU) == ["triton", "torch"]


def test_resolve_auto_on_cpu_picks_cpu_when_built():
    ok, why = backends.REGISTRY["cpu"].available()
    want = "cpu" if ok else "reference"
    assert backends.resolve("recurrence", torch.device("cpu"), torch.float32, GRU) == want, why


def test_auto_falls_back_with_a_debug_message(monkeypatch, caplog):
    unbuilt = dict(backends._AVAILABLE, cpu=lambda: (False, "not built (test)"))
    monkeypatch.setattr(backends, "_AVAILABLE", unbuilt)
    with caplog.at_level(logging.DEBUG, logger="rnnfast"):
        name = backends.resolve("recurrence", torch.device("cpu"), torch.float32, GRU)
    assert name == "reference"
    assert "falls back to reference (cpu: not built (test))" in caplog.text


def test_environment_forces_a_backend(monkeypatch):
    monkeypatch.setenv("RNNFAST_BACKEND", "reference")
    assert backends.resolve("recurrence", torch.device("cpu"), torch.float32, GRU) == "reference"
    # An explicit argument wins over the environment.
    assert backends.resolve("module", torch.device("cpu"), torch.float32, GRU, backend="torch") == "torch"


def test_unknown_op_and_integer_dtype():
    with pytest.raises(ValueError, match=r"op: expected one of .* got 'conv'"):
        backends.resolve("conv", torch.device("cpu"), torch.float32, {})
    with pytest.raises(backends.BackendError, match=r"'reference' cannot run 'recurrence'.*not a floating"):
        backends.resolve("recurrence", torch.device("cpu"), torch.int32, GRU, backend="reference")


def test_modules_tell_auto_whether_autograd_records(monkeypatch):
    import rnnfast

    seen = []
    real = backends.resolve

    def spy(op, device, dtype, sizes=None, backend=None):
        seen.append(sizes["grad"])
        return real(op, device, dtype, sizes, backend)

    monkeypatch.setattr(backends, "resolve", spy)
    m = rnnfast.LSTM(5, 7)
    x = torch.randn(3, 2, 5)
    m(x)
    with torch.no_grad():
        m(x)
    m.requires_grad_(False)
    m(x)
    m(x.requires_grad_())
    assert seen == [True, False, False, True]
