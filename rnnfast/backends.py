"""Which backend serves an op.

Backends: ``reference`` (pure PyTorch, any device), ``cpu`` (C++ kernels in ``rnnfast._C``),
``triton`` (``rnnfast/kernels``), ``cuda`` (persistent CUDA kernels in ``rnnfast._C``), and, for the
drop-in modules only, ``torch`` (torch.nn's own kernels: cuDNN on CUDA, ATen on CPU).

Each backend implements an op in ``rnnfast/ops/<op>/<backend>.py``; that module exports
``supports(device, dtype, sizes) -> (ok, reason)`` and the op's ``forward``/``backward``.

Selection: an explicit ``backend=`` argument, else the environment variable ``RNNFAST_BACKEND``,
else ``"auto"``. A forced backend that cannot serve the call raises with the reason; ``auto`` walks
the order below and logs each skipped backend at debug level.

GPU backends join ``auto`` only once their tests and benchmarks have passed on real hardware: the
pairs in ``GPU_VERIFIED``. Until then they are opt-in (``backend="cuda"`` / ``"triton"``).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

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
        return _AVAILABLE[self.name]()

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


@functools.cache
def _implementation(backend: str, op: str):
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


@functools.cache
def intel_cpu() -> bool:
    """Whether this is an Intel CPU (where MKL, ATen's CPU GEMM, picks its fastest kernels)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip() == "GenuineIntel"
    except OSError:
        pass
    return "intel" in platform.processor().lower()


@functools.cache
def cpu_capability() -> str:
    """torch's name for the vector ISA of this CPU ("AVX512", "AVX2", "DEFAULT", ...)."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_kind() -> str:
    """The kind of CPU the cpu backend's measured rules are keyed on (the LSTM rules below, the input
    projection's library in rnnfast/ops/linear.py): ``"avx2-other"`` (AVX2 without AVX-512, a vendor other
    than Intel), ``"avx512-other"`` (AVX-512, a vendor other than Intel: there the blocked kernel also takes
    the large products around the loops) or ``"default"`` (Intel CPUs, and vector ISAs not measured)."""
    if intel_cpu():
        return "default"
    return {"AVX2": "avx2-other", "AVX512": "avx512-other"}.get(cpu_capability(), "default")


def _onednn_lstm_faster(sizes: Sizes) -> bool:
    """Whether torch.nn's CPU LSTM (oneDNN's fused LSTM) beats the cpu kernels for a module of ``sizes``.

    torch.nn runs a padded CPU LSTM through oneDNN's fused LSTM, which keeps its weights packed and
    its per-step products near the machine's GEMM peak. Measured on 2-core AMD EPYCs (float32, 2 threads):
    with AVX-512 (benchmarks/results/cpu-sweep-gru-rnn-lstm-infer-fwdbwd.json) the cpu kernels were at
    0.45x-1.51x of it and below 0.95x in 61 of 100 cases; with AVX2
    (benchmarks/results/cpu-avx2-sweep-gru-rnn-lstm-infer-fwdbwd.json) at 0.58x-2.89x and below 0.95x in
    50 of 100, but ahead at one row and H >= 512 (1.04x-2.89x: the one-row product reads W on both
    cores). PackedSequence input does not take oneDNN in torch.nn: there the cpu kernels are ahead (B=64,
    H=256, T=100: 1.2x inference, 1.8x training). So padded LSTM modules take oneDNN, except one-row
    ones with H >= 512 and the other small batches below; packed ones the cpu kernels; the bare lstm op has
    no oneDNN alternative.

    On a 2-core Intel Xeon (AVX-512), with the team loops (benchmarks/results/cpu-xeon-sweep-gru-rnn-lstm-
    infer-fwdbwd.json and cpu-xeon-recheck-lstm-small-batch.json), training at B <= 4 (forward and
    backward, "grad" in ``sizes``) went 1.04x-2.03x in all 24 cases, so there it takes the cpu kernels too;
    inference at B <= 4 was 0.79x-1.85x (behind at H=256 and at T=50), from B=16 mostly 0.65x-1.0x.

    At B <= 4 with H <= 128 (a step of a few µs, where the call overheads count) or H >= 512 (the team
    loops, whose slices of W_hh stream from L3 where they do not fit L2) the cpu kernels are ahead on
    both kinds of machine, in inference too: AVX2 EPYC 0.99x-1.49x and 0.96x-2.16x
    (benchmarks/results/cpu-avx2-lstm-small-batch-2e34bf0.json, T=50 and 200), Xeon 1.14x-2.04x and
    0.87x-2.16x (cpu-xeon-sweep-f3c9603-gru-rnn-lstm-infer-fwdbwd.json). At H=256 they are not (AVX2
    0.93x-1.27x, Xeon 0.92x-1.39x).

    On AVX2 CPUs other than Intel's, with the blocked product keeping every per-step product (one
    broadcast load per row; the library limits of AVX-512 lifted), the cpu kernels were at 0.91x-2.16x,
    73 of 100 cases at 1.05x or more, 4 below 0.95x in a noisy sweep of which a recheck with 7 rounds left
    B=16 H=512 inference at 0.89x / 0.94x (T=50 / 200) (benchmarks/results/cpu-avx2-sweep-54fca59-gru-
    rnn-lstm-infer-fwdbwd.json, cpu-avx2-recheck-lstm-below-1x-24a6f3a.json): there padded LSTM modules
    take the cpu kernels at every size. Intel's AVX2 CPUs were not measured and keep the rules above.

    On AVX-512 CPUs other than Intel's, with the blocked kernel also in the weight gradients, the
    backward's per-step products and the input projection, a sweep on a 2-core Zen 5 EPYC
    (benchmarks/results/cpu-avx512-zen5-sweep-09108f1-lstm-infer-fwdbwd.json) put the cpu kernels at
    0.82x-3.71x, 9 of 100 cases below 0.95x, all at 16 <= B <= 64 with 256 <= H <= 512: inference at
    B=16 0.82x-0.93x and B=64 T=50 0.89x-0.94x (T=200 0.99x-1.07x), training at B=16 0.90x-1.02x (B=64
    1.03x-1.46x). There those take torch.nn, every other size the cpu kernels (before those changes the
    same machine measured 0.67x-2.41x, 47 below 0.95x: cpu-avx512-zen5-sweep-867cf80-lstm-infer-fwdbwd.json).
    Since teams also take 16-127 rows with a W_hh beyond L2 there (csrc/cpu/recurrence.cpp, team_wide_w()),
    paired rounds of the module with each backend (T=50; benchmarks/results/cpu-avx512-zen5-lstm-mid-cpu-vs-
    torch-backend-ab-215b7f4.json and cpu-avx512-zen5-lstm-mid-train-cpu-vs-torch-backend-ab-215b7f4.json)
    put torch.nn still ahead in inference (cpu 0.87x-0.97x at B=16-48, H=256-512) and in training at B=16
    (0.89x-0.93x) and B=32 H=256 (0.91x-0.93x), the cpu kernels in training at B=32 H=384-512 (1.04x-1.11x)
    and from 48 rows (0.99x-1.22x): training takes torch.nn only below 32 rows, or below 48 with H <= 256.
    Beyond 64 rows, inference over short sequences too: there, paired rounds of the module with each
    backend (torch.nn time / cpu time) at T=50 put torch.nn ahead at 65-128 rows with H=256-384 (B=80-128
    0.88x-0.93x, B=128 H=256 0.88x; H=512 1.00x-1.07x, B=160 1.03x-1.06x), at T=100 and T=200 the cpu kernels
    (0.98x-1.19x) (benchmarks/results/cpu-avx512-zen5-lstm-b80-160-h256-512-t50-infer-cpu-vs-torch-backend-
    ab-a7a6be9.json, ...-t200-..., cpu-avx512-zen5-lstm-b80-128-h256-384-t100-infer-cpu-vs-torch-backend-ab-
    8b41b04.json): inference at 64 < B <= 128 with 256 <= H <= 384 and T < 100 takes torch.nn.

    Not under autocast: there torch.nn's LSTM runs oneDNN in bfloat16, which raises on CPUs without
    AVX-512 bf16 support ("could not create a primitive descriptor"), while the cpu kernels compute in
    float32 everywhere.
    """
    if sizes.get("cell") != "lstm" or sizes.get("lengths") or sizes.get("autocast"):
        return False
    rules = cpu_kind()
    if rules == "avx2-other":
        return False
    B, H = sizes.get("B", 0), sizes.get("H", 0)
    if rules == "avx512-other":
        # (one or two steps: see _short_sequence)
        T, grad = sizes.get("T", 8), sizes.get("grad")
        train_mid = B < 32 or (B < 48 and H <= 256)
        mid = 16 <= B <= 64 and 256 <= H <= 512 and (not grad or train_mid)
        short_wide = not grad and 64 < B <= 128 and 256 <= H <= 384 and T < 100
        return (mid or short_wide) and T > 2
    if B <= 4 and (H <= 128 or H >= 512):
        return False
    return not (sizes.get("grad") and B <= 4 and intel_cpu())


def _short_sequence(sizes: Sizes) -> bool:
    """Whether a module call is so short that torch.nn's single C++ call beats the cpu kernels' fixed cost
    per call (the Python layer stack, validation, allocations: some 30 µs). Measured on the 2-core
    development CPU, 1 thread, GRU inference, torch.nn vs cpu: T=1 41 vs 72 µs (B=1, H=64), 382 vs 470
    (B=32, H=256); T=2 56 vs 79, 720 vs 942; from T=4 on about even, and at T=8 cpu is ahead.

    Not for LSTMs under autocast (torch.nn's bfloat16 oneDNN LSTM raises on CPUs without bf16 support,
    see _onednn_lstm_faster), nor, on AVX2 CPUs other than Intel's, for LSTMs with H <= 128 or one row:
    torch.nn's oneDNN LSTM pays for its weights' reorder at every call, and one-step inference on the
    2-core AVX2 EPYC took the cpu kernels 1.10-1.72x less time at H=128 (B=1-16, one and two layers) and
    3.21x at B=1 H=512, against 0.83-0.90x at B=4-16 H=512 (benchmarks/results/cpu-avx2-decode-infer-
    3ffbf36.json; GRU 0.85-1.19x, RNN 0.62-0.91x). On AVX-512 CPUs other than Intel's not for LSTMs at
    all: the cpu kernels were ahead at every one-step size measured on the Zen 5 EPYC, inference
    1.28x-4.30x, training 1.22x-16.3x (benchmarks/results/cpu-avx512-zen5-decode-09108f1.json; GRU
    0.89x-1.46x, RNN 0.72x-1.10x, which kept torch.nn). There, since a module's whole layer stack runs
    in one C++ call (rnnfast.nn.rnn, _one_call), one- and two-step GRUs (not under autocast) take the cpu
    kernels too: in all 9 one-step cases of the decode grid inference 1.06x-1.98x, training 1.03x-1.57x
    (benchmarks/results/cpu-avx512-zen5-decode-3307b0b.json; an earlier run, inference one call only:
    1.14x-1.84x and 1.01x-1.27x, cpu-avx512-zen5-decode-4c6afd6.json), and so does one- and two-step RNN
    inference: against bare torch.nn it was 0.92x-1.36x there, but what `auto` chooses between is the
    module's own two paths, and the torch one costs the module's checks and backend choice on top of
    torch.nn's call (~6 µs: 24.4 against 18.0 µs at B=1 H=64); paired rounds of the module with each
    backend put cpu ahead in all 6 RNN inference cases, 1.05x-1.47x (training 0.79x-1.04x, which keeps
    torch.nn; benchmarks/results/cpu-avx512-zen5-one-step-cpu-vs-torch-backend-ab-357e47d.json)."""
    if sizes.get("T", 8) > 2:
        return False
    if not sizes.get("autocast") and cpu_kind() == "avx512-other":
        if sizes.get("cell") == "gru" or (sizes.get("cell", "").startswith("rnn") and not sizes.get("grad")):
            return False
    if sizes.get("cell") == "lstm":
        if sizes.get("autocast"):
            return False
        rules = cpu_kind()
        small = sizes.get("H", 0) <= 128 or sizes.get("B", 0) == 1
        if rules == "avx512-other" or (small and rules == "avx2-other"):
            return False
    return True


def auto_order(op: str, device: torch.device, sizes: Sizes | None = None) -> list[str]:
    """The backends ``auto`` tries for ``op`` on ``device``, best first."""
    device = torch.device(device)
    kernel_op = "recurrence" if op == "module" else op
    if device.type == "cuda":
        order = [b for b in ("cuda", "triton") if (b, kernel_op) in GPU_VERIFIED]
    elif (
        device.type == "cpu"
        and op == "module"
        and (_onednn_lstm_faster(sizes or {}) or _short_sequence(sizes or {}))
    ):
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
    Under ``torch.compile`` the choice is made once at trace time and baked into the graph (it depends
    only on static facts: device, dtype, sizes, the environment).
    """
    if torch.compiler.is_compiling():
        # Sizes may be symbolic; a backend's choice may depend on them, so specialise on their values.
        items = tuple((k, int(v) if isinstance(v, torch.SymInt) else v) for k, v in sizes.items())
        return _resolve_at_trace_time(op, str(device), dtype, items, backend)
    return _resolve(op, device, dtype, sizes, backend)


@torch.compiler.assume_constant_result
def _resolve_at_trace_time(
    op: str, device: str, dtype: torch.dtype, items: tuple, backend: str | None
) -> str:
    return _resolve(op, torch.device(device), dtype, dict(items), backend)


def _resolve(op: str, device: torch.device, dtype: torch.dtype, sizes: Sizes, backend: str | None) -> str:
    if op not in OPS:
        raise ValueError(f"op: expected one of {OPS}, got {op!r}")
    backend = requested_backend(backend)
    if backend != "auto":
        ok, why = REGISTRY[backend].supports(op, device, dtype, sizes)
        if not ok:
            raise BackendError(f"rnnfast: backend '{backend}' cannot run '{op}' on {device}/{dtype}: {why}")
        return backend
    reasons = []
    for name in auto_order(op, device, sizes):
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
