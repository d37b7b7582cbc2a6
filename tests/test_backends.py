"""Backend selection: auto order, forcing, environment, fallbacks."""

import logging

import pytest
import torch

from rnnfast import backends

GRU = {"cell": "gru", "T": 8, "B": 2, "H": 16, "P": 0, "lengths": False, "reverse": False}
LSTM = dict(GRU, cell="lstm")
RNN = dict(GRU, cell="rnn_tanh")


def test_auto_order_cpu(monkeypatch):
    """The default rules: Intel CPUs (here an AVX-512 one), and vector ISAs not measured elsewhere."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(backends, "cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(backends, "intel_cpu", lambda: True)
    assert backends.auto_order("recurrence", cpu, GRU) == ["cpu", "reference"]
    assert backends.auto_order("module", cpu, GRU) == ["cpu", "torch"]
    # torch.nn's oneDNN LSTM is ahead on padded input: those modules prefer it; packed input (no oneDNN in
    # torch.nn) and bare ops keep cpu.
    big = dict(LSTM, B=16, H=256)
    assert backends.auto_order("module", cpu, big) == ["torch", "cpu"]
    assert backends.auto_order("module", cpu, dict(big, lengths=True)) == ["cpu", "torch"]
    # One row with a large W: the cpu kernels' product reads W on all cores, ahead of oneDNN's LSTM.
    assert backends.auto_order("module", cpu, dict(LSTM, B=1, H=512)) == ["cpu", "torch"]
    assert backends.auto_order("module", cpu, dict(LSTM, B=1, H=256)) == ["torch", "cpu"]
    # Small batches with a small H (call overheads) or a W_hh beyond L2 (teams): the cpu kernels.
    for B, H in [(1, 64), (2, 16), (4, 128), (2, 512), (4, 1024), (3, 2048)]:
        assert backends.auto_order("module", cpu, dict(LSTM, B=B, H=H)) == ["cpu", "torch"], (B, H)
    for B, H in [(4, 256), (2, 384), (5, 128), (8, 1024)]:
        assert backends.auto_order("module", cpu, dict(LSTM, B=B, H=H)) == ["torch", "cpu"], (B, H)
    # Training at B <= 4 on Intel CPUs: the cpu kernels were ahead in every case measured there.
    mid = dict(LSTM, H=256)
    assert backends.auto_order("module", cpu, dict(mid, grad=True)) == ["cpu", "torch"]
    assert backends.auto_order("module", cpu, dict(mid, B=4, grad=True)) == ["cpu", "torch"]
    assert backends.auto_order("module", cpu, dict(mid, B=5, grad=True)) == ["torch", "cpu"]
    assert backends.auto_order("module", cpu, dict(mid, grad=False)) == ["torch", "cpu"]
    # other vendors with an ISA not measured keep the default rules, without the Intel training rule
    monkeypatch.setattr(backends, "intel_cpu", lambda: False)
    monkeypatch.setattr(backends, "cpu_capability", lambda: "DEFAULT")
    assert backends.auto_order("module", cpu, dict(mid, grad=True)) == ["torch", "cpu"]
    assert backends.auto_order("module", cpu, dict(LSTM, B=4, H=128)) == ["cpu", "torch"]
    # Under autocast torch.nn's LSTM runs oneDNN in bfloat16, which some CPUs cannot: cpu first.
    assert backends.auto_order("module", cpu, dict(big, autocast=True)) == ["cpu", "torch"]
    # One or two steps: torch.nn's single C++ call beats the fixed cost of a cpu call.
    assert backends.auto_order("module", cpu, dict(GRU, T=2)) == ["torch", "cpu"]
    assert backends.auto_order("module", cpu, dict(GRU, T=3)) == ["cpu", "torch"]
    assert backends.auto_order("recurrence", cpu, dict(GRU, T=1)) == ["cpu", "reference"]
    assert backends.auto_order("recurrence", cpu, dict(LSTM, B=16)) == ["cpu", "reference"]
    assert backends.auto_order("recurrence", cpu, LSTM) == ["cpu", "reference"]


def test_auto_order_cpu_lstm_on_avx2(monkeypatch):
    """On AVX2 CPUs other than Intel's padded LSTM modules take the cpu kernels at every size measured."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(backends, "cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(backends, "intel_cpu", lambda: False)
    for B, H in [(16, 256), (1, 256), (4, 256), (64, 1024), (256, 64)]:
        for grad in (False, True):
            sizes = dict(LSTM, B=B, H=H, grad=grad)
            assert backends.auto_order("module", cpu, sizes) == ["cpu", "torch"], (B, H, grad)
    assert backends.auto_order("module", cpu, dict(LSTM, B=16, H=256, T=2)) == ["torch", "cpu"]
    # one or two steps: torch.nn only where oneDNN's per-call reorder of the weights is small against the
    # step (H > 128 and more than one row)
    for B, H, T, want in [(16, 128, 1, "cpu"), (1, 512, 2, "cpu"), (4, 512, 1, "torch"), (16, 256, 3, "cpu")]:
        assert backends.auto_order("module", cpu, dict(LSTM, B=B, H=H, T=T))[0] == want, (B, H, T)
    monkeypatch.setattr(backends, "intel_cpu", lambda: True)
    assert backends.auto_order("module", cpu, dict(LSTM, B=16, H=256)) == ["torch", "cpu"]
    assert backends.auto_order("module", cpu, dict(LSTM, B=16, H=128, T=1)) == ["torch", "cpu"]
    # under autocast never torch.nn's LSTM (its bfloat16 oneDNN LSTM raises on CPUs without bf16)
    assert backends.auto_order("module", cpu, dict(LSTM, B=4, H=512, T=1, autocast=True)) == ["cpu", "torch"]


def test_auto_order_cpu_lstm_on_avx512_other_than_intel(monkeypatch):
    """On AVX-512 CPUs other than Intel's padded LSTM modules take torch.nn only at 16 <= B <= 64 with
    256 <= H <= 512 (in training only below 32 rows, or 48 with H <= 256) and in inference at 64 < B <= 128
    with 256 <= H <= 384 below 100 steps, and one- or two-step LSTMs keep the cpu kernels."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(backends, "cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(backends, "intel_cpu", lambda: False)
    for B, H, grad, want in [
        (16, 256, False, "torch"),
        (16, 512, True, "torch"),
        (64, 384, False, "torch"),
        (32, 256, True, "torch"),
        (47, 256, True, "torch"),
        (31, 512, True, "torch"),
        (32, 384, True, "cpu"),
        (48, 256, True, "cpu"),
        (48, 512, False, "torch"),
        (64, 256, True, "cpu"),
        (15, 256, False, "cpu"),
        (65, 512, False, "cpu"),
        (16, 128, False, "cpu"),
        (16, 1024, False, "cpu"),
        (4, 256, False, "cpu"),
        (1, 256, True, "cpu"),
        (256, 64, False, "cpu"),
    ]:
        sizes = dict(LSTM, B=B, H=H, grad=grad)
        assert backends.auto_order("module", cpu, sizes)[0] == want, (B, H, grad)
    assert backends.auto_order("module", cpu, dict(LSTM, B=16, H=256, lengths=True))[0] == "cpu"
    for B, H, T, grad, want in [
        (65, 256, 50, False, "torch"),
        (128, 384, 99, False, "torch"),
        (96, 256, 3, False, "torch"),
        (96, 256, 100, False, "cpu"),
        (129, 256, 50, False, "cpu"),
        (96, 512, 50, False, "cpu"),
        (96, 192, 50, False, "cpu"),
        (96, 256, 50, True, "cpu"),
    ]:
        sizes = dict(LSTM, B=B, H=H, T=T, grad=grad)
        assert backends.auto_order("module", cpu, sizes)[0] == want, (B, H, T, grad)
    for B, H, T in [(16, 512, 1), (4, 512, 2), (1, 128, 1), (16, 256, 2)]:
        assert backends.auto_order("module", cpu, dict(LSTM, B=B, H=H, T=T))[0] == "cpu", (B, H, T)
    # modules of one or two steps: GRUs take cpu, RNNs in inference only (neither under autocast)
    assert backends.auto_order("module", cpu, dict(GRU, B=16, H=512, T=1, autocast=True))[0] == "torch"
    assert backends.auto_order("module", cpu, dict(RNN, B=16, H=512, T=1, autocast=True))[0] == "torch"
    for T, grad in [(1, False), (2, False), (1, True), (2, True)]:
        assert backends.auto_order("module", cpu, dict(GRU, B=1, H=128, T=T, grad=grad))[0] == "cpu", T
        rnn = backends.auto_order("module", cpu, dict(RNN, B=1, H=128, T=T, grad=grad))[0]
        assert rnn == ("torch" if grad else "cpu"), (T, grad)
    assert backends.auto_order("module", cpu, dict(RNN, cell="rnn_relu", T=1))[0] == "cpu"
    monkeypatch.setattr(backends, "cpu_capability", lambda: "AVX2")
    assert backends.auto_order("module", cpu, dict(GRU, B=1, H=128, T=1))[0] == "torch"


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
