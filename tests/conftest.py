"""Test-wide setup.

- NaN poisoning: floating tensors from ``torch.empty``/``empty_like``/``new_empty`` come filled with NaN,
  and the compiled kernels fill their outputs with NaN before writing (``RNNFAST_DEBUG_POISON=1``), so an
  output element a kernel forgets to write fails the comparison instead of passing by luck.
- ``tests/interpret`` runs in its own pytest invocation with ``TRITON_INTERPRET=1`` (the variable must be
  set before Triton is imported); the plain run leaves it out.
"""

import os

import pytest
import torch

os.environ.setdefault("RNNFAST_DEBUG_POISON", "1")

_interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
collect_ignore = [] if _interpret else ["interpret"]

_empty, _empty_like, _new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty


def _poison(t):
    # Tracers' tensors (fake, functional) hold no data, and their sizes may be data-dependent symbols.
    if type(t) is not torch.Tensor:
        return t
    if (t.dtype.is_floating_point or t.dtype.is_complex) and t.device.type != "meta":
        t.fill_(float("nan"))
    return t


def _poisoned_empty(*args, **kwargs):
    return _poison(_empty(*args, **kwargs))


def _poisoned_empty_like(*args, **kwargs):
    return _poison(_empty_like(*args, **kwargs))


def _poisoned_new_empty(self, *args, **kwargs):
    return _poison(_new_empty(self, *args, **kwargs))


@pytest.fixture(autouse=True)
def nan_poison(monkeypatch):
    monkeypatch.setattr(torch, "empty", _poisoned_empty)
    monkeypatch.setattr(torch, "empty_like", _poisoned_empty_like)
    monkeypatch.setattr(torch.Tensor, "new_empty", _poisoned_new_empty)
    yield


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)
    yield
