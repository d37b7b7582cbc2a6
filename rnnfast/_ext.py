"""Loading of the compiled CPU kernels, ``rnnfast._C`` (the CUDA kernels: ``rnnfast._cuda_ext``).

The ops live in the ``torch.ops.rnnfast_C`` namespace. Loading is lazy: importing rnnfast builds and
loads nothing; the first use of the ``cpu`` backend (its availability check) does, in this order:

1. the prebuilt ``rnnfast._C`` from ``pip install`` / ``setup.py build_ext``;
2. if it is missing or does not load (e.g. built against another torch: an ABI mismatch), a just-in-time
   build of ``csrc/cpu`` with ninja (``torch.utils.cpp_extension``), cached in
   ``$RNNFAST_CACHE_DIR`` (default ``~/.cache/rnnfast``) per torch version, Python version and a hash of
   the sources and flags. Concurrent processes serialise on a file lock; the second one finds the build
   done;
3. if that fails too: one warning, and :func:`status` reports the reason, so ``auto`` moves on to the
   next backend.

Environment: ``RNNFAST_NO_JIT=1`` skips step 2; ``RNNFAST_CSRC_DIR`` points the JIT build at another
``csrc`` directory and skips step 1 (the prebuilt module is built from the package's own sources). The
compiler's output shows with the ``rnnfast`` logger at DEBUG level.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.util
import logging
import os
import sys
import sysconfig
import threading
import warnings
from pathlib import Path

import torch

# Compiler flags shared by setup.py and the JIT build. No -march: the hot loops carry their own ISA
# clones (csrc/cpu/common.h), so one build runs on any x86-64 CPU. -fopenmp makes at::parallel_for
# (an inline OpenMP region in ATen's headers) parallel; it resolves to the libgomp torch already loaded.
# -fno-trapping-math lets GCC turn the clamps and selects of the vectorised math (common.h) into blends:
# with trapping math only the AVX-512 clones, which have mask registers, vectorised the cell loops, and
# the AVX2 ones ran scalar (LSTM B=16 H=128: 38 vs ~5 µs of pointwise per step). Values are unchanged.
CXX_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
CXX_FLAGS += ["-fopenmp"] if sys.platform.startswith("linux") else []
LD_FLAGS = ["-fopenmp"] if sys.platform.startswith("linux") else []

_lock = threading.Lock()
_state: tuple[bool, str] | None = None


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def csrc_dir() -> Path:
    """The C++ sources: ``$RNNFAST_CSRC_DIR`` or the ``csrc`` next to the package (source checkouts)."""
    env = os.environ.get("RNNFAST_CSRC_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "csrc"


def cpu_sources(root: Path | None = None) -> list[Path]:
    return sorted((root or csrc_dir()).joinpath("cpu").glob("*.cpp"))


def cache_dir() -> Path:
    env = os.environ.get("RNNFAST_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "rnnfast"


def _build_key(sources: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(sources + sorted(sources[0].parent.glob("*.h"))):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(" ".join(CXX_FLAGS + LD_FLAGS).encode())
    h.update(sysconfig.get_config_var("SOABI").encode() if sysconfig.get_config_var("SOABI") else b"")
    return h.hexdigest()[:16]


def _ops_present() -> bool:
    return hasattr(torch.ops.rnnfast_C, "recurrence_fwd")


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def jit_build(build_root: Path | None = None) -> Path:
    """Build (or find cached) the CPU kernels from sources and load them; returns the library path."""
    from torch.utils import cpp_extension

    sources = cpu_sources()
    if not sources:
        raise FileNotFoundError(f"no C++ sources in {csrc_dir() / 'cpu'}")
    key = _build_key(sources)
    py = f"py{sys.version_info[0]}{sys.version_info[1]}"
    torch_ver = torch.__version__.replace("+", "_")
    build_dir = (build_root or cache_dir()) / f"cpu-torch{torch_ver}-{py}-{key}"
    name = f"rnnfast_cpu_{key}"
    lib = build_dir / f"{name}.so"
    with _file_lock(build_dir.parent / f".{build_dir.name}.lock"):
        if not lib.exists():
            build_dir.mkdir(parents=True, exist_ok=True)
            print("rnnfast: building CPU kernels (first use, ~1 min)...", file=sys.stderr, flush=True)
            cpp_extension.load(
                name=name,
                sources=[str(s) for s in sources],
                extra_cflags=CXX_FLAGS,
                extra_ldflags=LD_FLAGS,
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=logging.getLogger("rnnfast").isEnabledFor(logging.DEBUG),
            )
            print(f"rnnfast: CPU kernels built in {build_dir}", file=sys.stderr, flush=True)
        elif not _ops_present():
            torch.ops.load_library(str(lib))
    return lib


def _register_fakes() -> None:
    """Shape-only kernels so the ops trace under torch.compile / FakeTensor (and pass opcheck)."""
    from rnnfast.ops.recurrence import common

    gates = [common.GATES[c] for c in common.CELLS]
    saved = [common.SAVED[c] for c in common.CELLS]

    @torch.library.register_fake("rnnfast_C::recurrence_fwd")
    def _(gi, h0, c0, w_hh, b_hh, w_hr, lengths, cell, reverse, need_ws):
        T, B, GH = gi.shape
        H = GH // gates[cell]
        empty = gi.new_empty((0,))
        c_n = gi.new_empty((B, H)) if c0 is not None else empty
        ws = gi.new_empty((T, B, saved[cell] * H)) if need_ws else gi.new_empty((0,))
        return gi.new_empty((T, B, h0.shape[1])), gi.new_empty(h0.shape), c_n, ws

    @torch.library.register_fake("rnnfast_C::recurrence_bwd")
    def _(grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr, lengths, y, ws, cell, reverse):
        def like(t):
            return y.new_empty((0,)) if t is None else y.new_empty(t.shape)

        T, B = y.shape[:2]
        return (
            y.new_empty((T, B, w_hh.shape[0])),
            y.new_empty(h0.shape),
            like(c0),
            like(w_hh),
            like(b_hh),
            like(w_hr),
        )

    _register_module_ops(gates, saved)

    @torch.library.register_fake("rnnfast_C::tree_lstm_fwd")
    def _(lstm_in, c_l, c_r):
        return lstm_in.new_empty(c_l.shape), lstm_in.new_empty(c_l.shape)

    @torch.library.register_fake("rnnfast_C::tree_lstm_bwd")
    def _(grad_h, grad_c, lstm_in, c_l, c_r, c):
        return lstm_in.new_empty(lstm_in.shape), lstm_in.new_empty(c_l.shape), lstm_in.new_empty(c_r.shape)


def _register_module_ops(gates: list[int], saved: list[int]) -> None:
    """Fake kernels and autograd of ``module_fwd`` / ``module_bwd`` (argument and ``saved`` layout:
    csrc/cpu/recurrence.cpp, module_fwd_impl()), so that autograd, torch.compile and export see the
    layer stack as one op each way."""
    half = (torch.float16, torch.bfloat16)

    @torch.library.register_fake("rnnfast_C::module_fwd")
    def _(
        x,
        h0,
        c0,
        weights,
        masks,
        batch_sizes,
        cell,
        num_layers,
        bidirectional,
        has_bias,
        has_proj,
        _lib,
        need_ws,
    ):
        D, per = 2 if bidirectional else 1, 2 + 2 * has_bias + has_proj
        H = weights[0].shape[0] // gates[cell]
        N = weights[per - 1].shape[0] if has_proj else H
        acc = torch.float32 if x.dtype in half else x.dtype
        packed = batch_sizes is not None
        if packed:
            T, rows = batch_sizes.shape[0], x.shape[0]
            # The batch is batch_sizes[0], a value: known from a given state, else data-dependent.
            B = h0.shape[1] if h0 is not None else torch.library.get_ctx().new_dynamic_size()
            y = x.new_empty((rows, D * N))
        else:
            T, B = x.shape[0], x.shape[1]
            rows = T * B
            y = x.new_empty((T, B, D * N))
        L = num_layers
        h_n = x.new_empty((L * D, B, N))
        c_n = x.new_empty((L * D, B, H)) if cell == 3 else x.new_empty((0,))
        out = []
        if need_ws:
            in_is_y = False
            for layer in range(L):
                skip = layer == 0 or in_is_y
                out.append(x.new_empty((0,) if skip else (rows, D * N), dtype=acc))
                for _d in range(D):
                    is_y = layer == L - 1 and D == 1 and not packed and x.dtype not in half
                    out.append(x.new_empty((0,) if is_y else (T, B, N), dtype=acc))
                    out.append(x.new_empty((T, B, saved[cell] * H), dtype=acc))
                in_is_y = D == 1 and not packed and not masks
        return y, h_n, c_n, out

    @torch.library.register_fake("rnnfast_C::module_bwd")
    def _(grad_y, grad_hn, grad_cn, x, h0, c0, weights, masks, batch_sizes, saved_, y, *cfg):
        need_dx = cfg[-1]

        def like(t):
            return x.new_empty((0,)) if t is None else t.new_empty(t.shape)

        dx = x.new_empty(x.shape) if need_dx else x.new_empty((0,))
        return dx, like(h0), like(c0), [w.new_empty(w.shape) for w in weights]

    def setup_context(ctx, inputs, output):
        x, h0, c0, weights, masks, batch_sizes, *cfg, need_ws = inputs
        _save_module_ctx(ctx, x, h0, c0, weights, masks, batch_sizes, tuple(cfg), need_ws, output)

    def backward(ctx, grad_y, grad_hn, grad_cn, _grad_saved):
        dx, dh0, dc0, dws = _module_backward(ctx, grad_y, grad_hn, grad_cn)
        return dx, dh0, dc0, dws, [None] * ctx.counts[1], None, *([None] * (len(ctx.cfg) + 1))

    torch.library.register_autograd("rnnfast_C::module_fwd", backward, setup_context=setup_context)


def _save_module_ctx(ctx, x, h0, c0, weights, masks, batch_sizes, cfg, need_ws, output) -> None:
    """What module_fwd's backward needs, kept on ``ctx`` (the op's registered autograd and
    :class:`ModuleStack` alike)."""
    y, _h_n, c_n, saved_ = output
    ctx.cfg, ctx.need_ws = cfg, need_ws
    ctx.counts = (len(weights), len(masks), len(saved_))
    ctx.save_for_backward(x, h0, c0, batch_sizes, y, *weights, *masks, *saved_)
    if cfg[0] != 3:
        ctx.mark_non_differentiable(c_n)
    ctx.mark_non_differentiable(*saved_)


def _module_backward(ctx, grad_y, grad_hn, grad_cn):
    """(dx, dh0, dc0, weight grads) of module_fwd through ``module_bwd``, None where not wanted."""
    if not ctx.need_ws:
        raise RuntimeError(
            "rnnfast_C::module_fwd: called with need_ws=False, it saved nothing to differentiate"
        )
    x, h0, c0, batch_sizes, y, *rest = ctx.saved_tensors
    nw, nm, _ = ctx.counts
    weights, masks, saved_ = rest[:nw], rest[nw : nw + nm], rest[nw + nm :]
    need_dx = ctx.needs_input_grad[0]
    dx, dh0, dc0, dws = torch.ops.rnnfast_C.module_bwd(
        grad_y, grad_hn, grad_cn if ctx.cfg[0] == 3 else None, x, h0, c0, weights, masks, batch_sizes,
        saved_, y, *ctx.cfg, need_dx,
    )  # fmt: skip
    return (
        dx if need_dx else None,
        dh0 if h0 is not None else None,
        dc0 if c0 is not None else None,
        list(dws),
    )


class ModuleStack(torch.autograd.Function):
    """Eager training through module_fwd: the op below autograd, with the context and backward of its
    registered autograd but without torch.library's per-call wrapping of every argument (a few hundred
    µs a call, most of a short sequence's time). torch.compile and direct calls of the op use the
    registered autograd."""

    @staticmethod
    def forward(ctx, x, h0, c0, batch_sizes, cfg, nw, *tensors):
        weights, masks = list(tensors[:nw]), list(tensors[nw:])
        with torch._C._AutoDispatchBelowAutograd():
            out = torch.ops.rnnfast_C.module_fwd(x, h0, c0, weights, masks, batch_sizes, *cfg, True)
        _save_module_ctx(ctx, x, h0, c0, weights, masks, batch_sizes, cfg, True, out)
        return out[0], out[1], out[2]

    @staticmethod
    def backward(ctx, grad_y, grad_hn, grad_cn):
        dx, dh0, dc0, dws = _module_backward(ctx, grad_y, grad_hn, grad_cn)
        return dx, dh0, dc0, None, None, None, *dws, *([None] * ctx.counts[1])


def _stale_prebuilt() -> str | None:
    """In a source checkout (editable install), a prebuilt module older than csrc/cpu is skipped: once
    loaded, a library cannot be replaced in the process, so the check happens before the import."""
    spec = importlib.util.find_spec("rnnfast._C")
    if spec is None or not spec.origin:
        return None
    built = os.path.getmtime(spec.origin)
    root = csrc_dir() / "cpu"
    sources = list(root.glob("*.cpp")) + list(root.glob("*.h"))
    newer = [p.name for p in sources if os.path.getmtime(p) > built]
    if newer:
        return f"prebuilt rnnfast._C is older than {', '.join(sorted(newer))} (rebuild with pip install -e .)"
    return None


def _load() -> tuple[bool, str]:
    reasons = []
    how = None
    if _ops_present():
        how = "already loaded"
    if how is None and not os.environ.get("RNNFAST_CSRC_DIR"):
        stale = _stale_prebuilt()
        if stale:
            reasons.append(stale)
        else:
            try:
                importlib.import_module("rnnfast._C")
                how = "prebuilt rnnfast._C"
            except (ImportError, OSError) as e:
                reasons.append(f"prebuilt rnnfast._C: {e}")
    if how is None:
        if _flag("RNNFAST_NO_JIT"):
            reasons.append("JIT build disabled (RNNFAST_NO_JIT=1)")
        else:
            try:
                lib = jit_build()
                how = f"JIT-built {lib}"
            except Exception as e:  # noqa: BLE001 (any build failure means: fall back, with the reason)
                reasons.append(f"JIT build from {csrc_dir() / 'cpu'} failed: {type(e).__name__}: {e}")
    if how is None or not _ops_present():
        if how is not None:
            reasons.append(f"{how} did not register torch.ops.rnnfast_C")
        return False, "; ".join(reasons)
    _register_fakes()
    return True, f"C++ CPU kernels ({how})"


def status() -> tuple[bool, str]:
    """Whether the compiled CPU ops are loaded, and how (or why not). Loads them on the first call."""
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                state = _load()
                if not state[0]:
                    warnings.warn(
                        f"rnnfast: the C++ CPU kernels are unavailable, falling back: {state[1]}",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                _state = state
                if state[0]:
                    from rnnfast.backends import cpu

                    cpu.on_load()  # the kernels take the paths forced at the moment
    return _state


def ensure_loaded() -> None:
    """Load the CPU ops or raise with the reason they are unavailable."""
    ok, why = status()
    if not ok:
        raise RuntimeError(f"rnnfast: the C++ CPU kernels are unavailable: {why}")
