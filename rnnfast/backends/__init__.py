"""Which backend serves an op.

Backends: ``reference`` (pure PyTorch, any device), ``cpu`` (C++ kernels in ``rnnfast._C``),
``triton`` (``rnnfast/kernels``), ``cuda`` (persistent CUDA kernels in ``rnnfast._C``), and, for the
drop-in modules only, ``torch`` (torch.nn's own kernels: cuDNN on CUDA, ATen on CPU).

Each backend implements an op in ``rnnfast/ops/<op>/<backend>.py``; that module exports
``supports(device, dtype, sizes) -> (ok, reason)`` and the op's ``forward``/``backward``.

Selection: an explicit ``backend=`` argument, else the environment variable ``RNNFAST_BACKEND``,
else ``"auto"``. A forced backend that cannot serve the call raises with the reason; ``auto`` walks
the order below and logs each skipped backend at debug level.

On CPU tensors the choice between the cpu kernels and torch.nn for a module, and the cpu kernels' own
paths, come from one policy (:mod:`rnnfast.backends.cpu`): a cost model over facts of the machine, or,
with ``rnnfast.backends.cpu.benchmark = True``, measured autotuning with a per-machine cache.

GPU backends join ``auto`` only once their tests and benchmarks have passed on real hardware: the
pairs in ``GPU_VERIFIED``. Until then they are opt-in (``backend="cuda"`` / ``"triton"``).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from rnnfast.backends import cpu

log = logging.getLogger("rnnfast")

BACKENDS = ("reference", "cpu", "triton", "cuda", "torch")
# Ops served through the backend registry. "module" is the whole nn.RNN-style layer stack, which only
# the "torch" backend implements as a unit; the others serve it op by op through "recurrence".
OPS = ("recurrence", "tree_lstm", "tree_lstm_reduce", "module")

# (backend, op) pairs whose GPU tests passed on a real GPU and whose committed benchmark results show
# them ahead of the alternatives; only these are chosen by "auto" on CUDA tensors.
GPU_VERIFIED: frozenset[tuple[str, str]] = frozenset()

Sizes = Mapping[str, Any]


class BackendError(RuntimeError):
    """A forced backend cannot serve the call (the message says why)."""


def _triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class Backend:
    name: str
    doc: str

    def available(self) -> tuple[bool, str]:
        """Whether this backend can run at all in this process, and if not, why."""
        return _availability(self.name)

    def implementation(self, op: str):
        """The module implementing ``op`` for this backend, or None if there is none."""
        return _implementation(self.name, op)

    def supports(self, op: str, device: torch.device, dtype: torch.dtype, sizes: Sizes) -> tuple[bool, str]:
        ok, why = self.available()
        if not ok:
            return False, why
        impl = self.implementation(op)
        if impl is None:
            return False, f"no {self.name} implementation of '{op}'"
        return impl.supports(torch.device(device), dtype, sizes)


def _implementation(backend: str, op: str):
    # A plain dict, which torch.compile reads as a constant (it would trace functools.cache's body).
    key = (backend, op)
    if key not in _implementations:
        _implementations[key] = _import_implementation(backend, op)
    return _implementations[key]


_implementations: dict[tuple[str, str], Any] = {}


def preload() -> None:
    """Imports the CPU-side implementations (``import rnnfast`` does), so that torch.compile, which cannot
    trace an import, finds them in :data:`_implementations`."""
    for backend in ("reference", "cpu", "torch"):
        for op in OPS:
            _implementation(backend, op)


def _import_implementation(backend: str, op: str):
    if backend == "torch":
        if op != "module":
            return None
        name = "rnnfast.nn._torch_backend"
    else:
        # The other backends serve a module layer by layer through their recurrence op.
        name = f"rnnfast.ops.{'recurrence' if op == 'module' else op}.{backend}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        # Only "this backend has no file for this op" means unsupported; a missing dependency inside an
        # existing implementation is a real error and propagates.
        if e.name == name or name.startswith(f"{e.name}."):
            return None
        raise


def _available_reference() -> tuple[bool, str]:
    return True, "pure PyTorch"


def _available_torch() -> tuple[bool, str]:
    return True, "torch.nn kernels (cuDNN on CUDA)"


def _available_cpu() -> tuple[bool, str]:
    from rnnfast import _ext

    return _ext.status()


def _available_triton() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return False, f"triton is not importable ({e})"
    if torch.cuda.is_available() or _triton_interpret():
        return True, "triton " + triton.__version__ + (" (interpreter)" if _triton_interpret() else "")
    return False, "triton needs a CUDA GPU, or TRITON_INTERPRET=1 to run on the CPU"


def _available_cuda() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    from rnnfast import _cuda_ext

    return _cuda_ext.status()


def _availability(name: str) -> tuple[bool, str]:
    # A plain dict (not functools.cache, whose body torch.compile would trace: it opens files): under
    # torch.compile a first check runs outside the graph, as a constant.
    # Checked afresh at every eager call (cheap: each caches its own expensive part).
    fn = _AVAILABLE[name]
    if torch.compiler.is_compiling():
        hit = _available_cache.get(name)
        if hit is not None and hit[0] is fn:
            return hit[1]
        return _available_const(name), _available_why(name)
    result = fn()
    _available_cache[name] = (fn, result)
    return result


@torch.compiler.assume_constant_result
def _available_const(name: str) -> bool:
    return _AVAILABLE[name]()[0]


@torch.compiler.assume_constant_result
def _available_why(name: str) -> str:
    return _AVAILABLE[name]()[1]


_available_cache: dict[str, tuple[Any, tuple[bool, str]]] = {}

_AVAILABLE = {
    "reference": _available_reference,
    "cpu": _available_cpu,
    "triton": _available_triton,
    "cuda": _available_cuda,
    "torch": _available_torch,
}

REGISTRY: dict[str, Backend] = {
    "reference": Backend("reference", "pure PyTorch: the oracle for every other backend"),
    "cpu": Backend("cpu", "C++ CPU kernels in rnnfast._C (fused time loop, vectorised cells)"),
    "triton": Backend("triton", "Triton kernels in rnnfast/kernels"),
    "cuda": Backend("cuda", "persistent CUDA kernels in rnnfast._C"),
    "torch": Backend("torch", "torch.nn's own kernels, for the drop-in modules (cuDNN on CUDA)"),
}


def auto_order(
    op: str, device: torch.device, sizes: Sizes | None = None, dtype: torch.dtype = torch.float32
) -> list[str]:
    """The backends ``auto`` tries for ``op`` on ``device``, best first."""
    device = torch.device(device)
    kernel_op = "recurrence" if op == "module" else op
    if device.type == "cuda":
        order = [b for b in ("cuda", "triton") if (b, kernel_op) in GPU_VERIFIED]
    elif device.type == "cpu" and op == "module" and cpu.module_choice(sizes or {}, dtype) == "torch":
        order = ["torch", "cpu"]
    elif device.type == "cpu":
        order = ["cpu"]
    else:
        order = []
    # A module with no fused backend for its device is best served by torch.nn itself (cuDNN on CUDA);
    # a bare op by the reference.
    last = "torch" if op == "module" else "reference"
    return order if last in order else order + [last]


def requested_backend(backend: str | None) -> str:
    """The backend asked for: the argument, else ``RNNFAST_BACKEND``, else ``auto``."""
    if backend is None or backend == "auto":
        backend = os.environ.get("RNNFAST_BACKEND", "auto") or "auto"
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a str, got {type(backend).__name__}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend: expected 'auto' or one of {BACKENDS}, got {backend!r}")
    return backend


def resolve(
    op: str, device: torch.device, dtype: torch.dtype, sizes: Sizes, backend: str | None = "auto"
) -> str:
    """Name of the backend that runs ``op`` for these inputs.

    A forced backend that cannot serve the call raises :class:`BackendError` with the reason.
    Traceable by ``torch.compile`` with symbolic sizes: the machine's facts and the backends' availability
    are read outside the graph (:func:`_availability`), the decisions are comparisons of ints, which
    become guards; autotuning only looks its cache up there.
    """
    return _resolve(op, device, dtype, sizes, backend)


def _resolve(op: str, device: torch.device, dtype: torch.dtype, sizes: Sizes, backend: str | None) -> str:
    if op not in OPS:
        raise ValueError(f"op: expected one of {OPS}, got {op!r}")
    backend = requested_backend(backend)
    if backend != "auto":
        ok, why = REGISTRY[backend].supports(op, device, dtype, sizes)
        if not ok:
            raise BackendError(f"rnnfast: backend '{backend}' cannot run '{op}' on {device}/{dtype}: {why}")
        return backend
    if op == "module" and device.type == "cpu" and cpu.benchmark and not torch.compiler.is_compiling():
        # Measured once per key (rnnfast.backends.cpu.tune), between the backends that can run it.
        able = [n for n in ("cpu", "torch") if REGISTRY[n].supports(op, device, dtype, sizes)[0]]
        if len(able) == 2:
            return cpu.tune(sizes, dtype)
    reasons = []
    for name in auto_order(op, device, sizes, dtype):
        ok, why = REGISTRY[name].supports(op, device, dtype, sizes)
        if ok:
            if reasons:
                log.debug("rnnfast: '%s' falls back to %s (%s)", op, name, "; ".join(reasons))
            return name
        reasons.append(f"{name}: {why}")
    raise BackendError(f"rnnfast: no backend can run '{op}' on {device}/{dtype}: " + "; ".join(reasons))


def implementation(backend: str, op: str):
    impl = _implementation(backend, op)
    if impl is None:
        raise BackendError(f"rnnfast: backend '{backend}' has no implementation of '{op}'")
    return impl


def table(device: torch.device | None = None) -> list[dict[str, str]]:
    """One row per backend × op: availability and, for a typical float32 call, support and why."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sample = {
        "recurrence": {"cell": "gru", "T": 16, "B": 4, "H": 128, "P": 0, "lengths": False, "reverse": False},
        "tree_lstm": {"R": 64, "H": 128},
        "tree_lstm_reduce": {"R": 64, "H": 128, "HT": 0},
        "module": {"cell": "gru", "T": 16, "B": 4, "H": 128, "P": 0, "lengths": False, "reverse": False},
    }
    rows = []
    for name, b in REGISTRY.items():
        avail, why_avail = b.available()
        for op in OPS:
            if b.implementation(op) is None:
                continue
            ok, why = b.supports(op, device, torch.float32, sample[op])
            verified = device.type != "cuda" or name in ("reference", "torch") or (name, op) in GPU_VERIFIED
            in_auto = ok and verified and name in auto_order(op, device, sample[op])
            rows.append(
                {
                    "backend": name,
                    "op": op,
                    "available": "yes" if avail else "no",
                    "supports": "yes" if ok else "no",
                    "in auto": "yes" if in_auto else "no",
                    "why": why if ok else (why if avail else why_avail),
                }
            )
    return rows
