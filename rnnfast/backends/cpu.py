"""How the cpu backend chooses: facts of this machine read once, a small cost model over them, opt-in
measured autotuning with a per-machine cache, and :func:`flags` to force a path.

- :func:`facts`: vector width, cache sizes (sysfs, else sysconf), threads, CPU model; read once per process,
  outside any traced code.
- :func:`module_choice`: ``"cpu"`` or ``"torch"`` for a module call (the cost model; measurements behind it
  in docs/cpu.md). The C++ kernels' own paths (team / row split / plain loop, blocked kernel / oneDNN /
  ATen) come from the options struct of csrc/cpu/common.h, whose defaults are computed from the same kind
  of facts; :func:`flags` overrides both.
- ``benchmark = True`` (or ``RNNFAST_AUTOTUNE=1``), like ``torch.backends.cudnn.benchmark``: the first call
  of each key times the candidates and keeps the fastest, in memory and in
  ``$RNNFAST_CACHE_DIR/autotune-<cpu>-torch<v>-rnnfast<v>.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("rnnfast")

#: Measured autotuning on (``RNNFAST_AUTOTUNE=1`` sets it at import), like ``torch.backends.cudnn.benchmark``.
benchmark: bool = os.environ.get("RNNFAST_AUTOTUNE", "0") not in ("", "0")

# ---------------------------------------------------------------------------------------------
# Facts


@dataclass(frozen=True)
class Facts:
    vector_bytes: int  # widest vector the kernels' clones use: 64 AVX-512, 32 AVX2, 16 baseline
    l1d_bytes: int  # per core
    l2_bytes: int  # per core
    l3_bytes: int  # per socket (0: none reported)
    threads: int  # torch.get_num_threads() when read
    cpu_model: str  # for the autotune cache's file name only: no rule reads it
    onednn: bool  # torch has oneDNN's linear ops (the projection's and the step products' library)


def _sysfs_caches() -> dict[int, int]:
    """Data/unified cache sizes per level of cpu0, in bytes, from sysfs."""
    sizes: dict[int, int] = {}
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    for d in sorted(root.glob("index*")) if root.is_dir() else []:
        try:
            level = int((d / "level").read_text())
            kind = (d / "type").read_text().strip()
            text = (d / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        m = re.fullmatch(r"(\d+)([KMG]?)", text)
        if m:
            sizes[level] = int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]
    return sizes


def _sysconf(name: str) -> int:
    try:
        v = os.sysconf(name)
    except (ValueError, OSError):
        return 0
    return max(int(v), 0)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown"


def read_facts() -> Facts:
    """Reads the facts afresh (:func:`facts` keeps the first reading)."""
    caches = _sysfs_caches()
    capability = torch.backends.cpu.get_cpu_capability()
    return Facts(
        vector_bytes=64 if capability.startswith("AVX512") else 32 if capability.startswith("AVX2") else 16,
        l1d_bytes=caches.get(1) or _sysconf("SC_LEVEL1_DCACHE_SIZE") or 32 << 10,
        l2_bytes=caches.get(2) or _sysconf("SC_LEVEL2_CACHE_SIZE") or 1 << 20,  # the kernels assume 1 MiB too
        l3_bytes=caches.get(3) or _sysconf("SC_LEVEL3_CACHE_SIZE"),
        threads=torch.get_num_threads(),
        cpu_model=_cpu_model(),
        onednn=torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"),
    )


_FACTS: Facts = read_facts()  # at import: never inside traced code


def facts() -> Facts:
    return _FACTS


# ---------------------------------------------------------------------------------------------
# Forced paths


_PATHS = ("auto", "team", "rows", "plain")
_GEMMS = ("auto", "blocked", "onednn", "aten")
_forced: dict[str, str] = {}


@contextlib.contextmanager
def flags(path: str | None = None, gemm: str | None = None, benchmark: bool | None = None) -> Iterator[None]:
    """Forces the cpu kernels' choices inside the block, like ``torch.backends.cudnn.flags``.

    path: ``"team"`` (a team of threads over slices of the hidden units), ``"rows"`` (a thread per slice
    of the batch rows) or ``"plain"`` (one loop, its products on all threads); where the forced path
    cannot run a call (one thread, a projected LSTM's team, fewer rows than threads) the call takes the
    plain loop. gemm: the library of the large products (input projection, per-step products, weight
    gradients): ``"blocked"`` (the kernels' own), ``"onednn"`` or ``"aten"``. ``"auto"``: the defaults.
    benchmark: autotuning on or off. None leaves a setting as it is."""
    if path is not None and path not in _PATHS:
        raise ValueError(f"path: expected one of {_PATHS} or None, got {path!r}")
    if gemm is not None and gemm not in _GEMMS:
        raise ValueError(f"gemm: expected one of {_GEMMS} or None, got {gemm!r}")
    mod = globals()
    saved = dict(_forced), mod["benchmark"]
    try:
        for name, value in (("path", path), ("gemm", gemm)):
            if value == "auto":
                _forced.pop(name, None)
            elif value is not None:
                _forced[name] = value
        if benchmark is not None:
            mod["benchmark"] = bool(benchmark)
        _push_options()
        yield
    finally:
        _forced.clear()
        _forced.update(saved[0])
        mod["benchmark"] = saved[1]
        _push_options()


def forced(name: str) -> str | None:
    """The value :func:`flags` forces for ``name`` (``"path"``, ``"gemm"``), or None."""
    return _forced.get(name)


def _push_options() -> None:
    """Hands the forced paths to the C++ kernels' options (csrc/cpu/common.h), if they are loaded."""
    if not hasattr(torch.ops, "rnnfast_C") or not hasattr(torch.ops.rnnfast_C, "set_options"):
        return
    path = {"plain": 1, "rows": 2, "team": 3}.get(_forced.get("path", ""), 0)
    gemm = {"aten": 1, "onednn": 2, "blocked": 3}.get(_forced.get("gemm", ""), 0)
    torch.ops.rnnfast_C.set_options(path, gemm)


def on_load() -> None:
    """Called once the C++ kernels are loaded (rnnfast._ext): they take the forced paths of the moment."""
    _push_options()


# ---------------------------------------------------------------------------------------------
# The cost model

# A call of at most this many steps: the cpu kernels' fixed cost per call (validation, allocation, the
# layer stack; ~20-30 µs) exceeds what their faster steps save over torch.nn's single C++ call.
SHORT_STEPS = 2
# Rows up to which a step is bound by per-step costs (call overheads, reading W_hh), not arithmetic:
# there the cpu kernels, with no library call per step, beat torch.nn's fused LSTM.
FEW_ROWS = 4
# Multiply-adds per row of an LSTM step (4·H²) up to which its W_hh (256 KiB in float32) sits in a
# quarter of any L2: a step of a few µs, where torch.nn's per-step overheads count.
SMALL_STEP_WORK = 1 << 16


def module_choice(sizes: Mapping[str, Any], dtype: torch.dtype = torch.float32) -> str:
    """``"cpu"`` or ``"torch"``: which of the cpu kernels and torch.nn serves a module call on CPU tensors
    by default (after a cached autotune result, if any). Reasons and measurements: docs/cpu.md."""
    tuned = _tuned.get(tune_key(sizes, dtype)) if benchmark and _tuned else None
    if tuned is not None:
        return tuned
    cell, T, B, H = sizes.get("cell", ""), sizes.get("T", 8), sizes.get("B", 0), sizes.get("H", 0)
    lstm = cell == "lstm"
    if lstm and sizes.get("autocast"):
        # torch.nn's CPU LSTM runs oneDNN in bfloat16 under autocast, which raises on CPUs without bf16
        # support; the cpu kernels compute in float32 everywhere.
        return "cpu"
    narrow = _FACTS.vector_bytes < 64
    if T <= SHORT_STEPS:
        # torch.nn's oneDNN LSTM reorders its weights at every call: with half-width vectors (where
        # the cpu kernels keep pace with the GEMM libraries) small LSTMs stay with the cpu kernels.
        if lstm and narrow and (H <= 128 or B == 1):
            return "cpu"
        return "torch"
    if not lstm or sizes.get("lengths") or narrow:
        # torch.nn's fused LSTM is oneDNN's, and only for padded input; with half-width vectors the
        # cpu kernels' blocked products run at the libraries' rate and keep every size.
        return "cpu"
    if B <= FEW_ROWS:
        w_bytes = 4 * H * H * 4  # float32 W_hh
        # training (the backward's per-step products), a W_hh small enough that overheads dominate,
        # or one beyond a core's L2, which the cpu kernels' team splits over the cores' L2s
        if sizes.get("grad") or 4 * H * H <= SMALL_STEP_WORK or w_bytes > _FACTS.l2_bytes:
            return "cpu"
    return "torch"


# ---------------------------------------------------------------------------------------------
# Autotuning

REPEATS = 5  # timed rounds after one warm-up: the best of each candidate's is kept
MAX_SECONDS = 2.0  # per candidate: fewer rounds where one run is long


def _bucket(n) -> int:
    """n rounded up to a power of two (comparisons only, so symbolic sizes become guards)."""
    b = 1
    while b < n:
        b *= 2
    return b


def _threads() -> int:
    # Under torch.compile the thread count of trace time, as a constant (dynamo cannot trace the call).
    return _threads_at_trace() if torch.compiler.is_compiling() else torch.get_num_threads()


@torch.compiler.assume_constant_result
def _threads_at_trace() -> int:
    return torch.get_num_threads()


def tune_key(sizes: Mapping[str, Any], dtype: torch.dtype | str) -> str:
    dt = str(dtype).removeprefix("torch.")
    return "|".join(
        [
            str(sizes.get("cell", "")),
            "train" if sizes.get("grad") else "infer",
            dt,
            f"threads{_threads()}",
            f"B{_bucket(sizes.get('B', 1))}",
            f"H{sizes.get('H', 0)}",
            f"P{sizes.get('P', 0)}",
            f"T{_bucket(sizes.get('T', 1))}",
            "packed" if sizes.get("lengths") else "padded",
            "bi" if sizes.get("reverse") else "uni",
            "autocast" if sizes.get("autocast") else "plain",
        ]
    )


_tuned: dict[str, str] = {}
_loaded_file: list[Path] = []


def cache_file() -> Path:
    """The per-machine autotune cache: CPU model, torch and rnnfast versions in its name."""
    # Looked up on every autotuned call: the path is built once per cache directory.
    return _cache_file(os.environ.get("RNNFAST_CACHE_DIR", ""))


@functools.lru_cache(maxsize=8)
def _cache_file(_env: str) -> Path:
    from rnnfast._ext import cache_dir
    from rnnfast._version import __version__

    cpu = re.sub(r"[^A-Za-z0-9]+", "-", _FACTS.cpu_model).strip("-").lower() or "cpu"
    torch_v = torch.__version__.replace("+", "_")
    return cache_dir() / f"autotune-{cpu}-torch{torch_v}-rnnfast{__version__}.json"


def _read_cache(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        warnings.warn(f"rnnfast: autotune cache {path} unreadable, ignored ({e})", stacklevel=3)
        return {}
    try:
        data = json.loads(text)
        entries = data["entries"]
        if not isinstance(entries, dict):
            raise TypeError("entries is not an object")
        return {str(k): str(v["choice"]) for k, v in entries.items() if v.get("choice") in ("cpu", "torch")}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        warnings.warn(f"rnnfast: autotune cache {path} is corrupt, ignored ({e})", stacklevel=3)
        return {}


def _load() -> None:
    path = cache_file()
    if _loaded_file != [path]:
        _loaded_file[:] = [path]
        _tuned.clear()
        _tuned.update(_read_cache(path))


def save(key: str, choice: str, times: Mapping[str, float]) -> None:
    """Adds one result to the cache file: read, merge, write to a temporary file and rename, under a
    lock, so that processes tuning at once all keep their results."""
    path = cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            entries: dict[str, Any] = {}
            try:
                data = json.loads(path.read_text())
                if isinstance(data.get("entries"), dict):
                    entries = data["entries"]
            except (OSError, ValueError, AttributeError):
                pass  # missing or corrupt (warned about when read): rewritten
            entries[key] = {"choice": choice, "seconds": {k: round(v, 9) for k, v in times.items()}}
            doc = {"facts": asdict(_FACTS), "torch": torch.__version__, "entries": entries}
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def measure(runs: Mapping[str, Callable[[], object]]) -> dict[str, float]:
    """Seconds of one call of each candidate: a warm-up each, then up to REPEATS rounds in which every
    candidate runs once in turn (a drifting machine hits them alike), the best of its rounds kept (tests
    replace this)."""
    first = {}
    for name, run in runs.items():
        t0 = time.perf_counter()
        run()
        first[name] = time.perf_counter() - t0
    rounds = max(1, min(REPEATS, int(MAX_SECONDS / max(max(first.values()), 1e-9))))
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def _candidate(backend: str, sizes: Mapping[str, Any], dtype: torch.dtype) -> Callable[[], object]:
    """A call like the one being tuned: a one-layer module of the key's cell and sizes, fresh random input."""
    import rnnfast

    cell, T, B, H, P = (
        sizes["cell"],
        int(sizes["T"]),
        int(sizes["B"]),
        int(sizes["H"]),
        int(sizes.get("P", 0)),
    )
    kw: dict[str, Any] = {"bidirectional": bool(sizes.get("reverse")), "backend": backend}
    if cell == "lstm":
        m = rnnfast.LSTM(H, H, proj_size=P, **kw)
    elif cell == "gru":
        m = rnnfast.GRU(H, H, **kw)
    else:
        m = rnnfast.RNN(H, H, nonlinearity=cell.removeprefix("rnn_"), **kw)
    m = m.to(dtype)
    x = torch.randn(T, B, H, dtype=dtype)
    if sizes.get("lengths"):
        lengths = torch.linspace(T, max(1, T // 2), B).long()
        x = torch.nn.utils.rnn.pack_padded_sequence(x, lengths)
    grad = bool(sizes.get("grad"))
    m.requires_grad_(grad)

    def run():
        with torch.autocast("cpu", enabled=bool(sizes.get("autocast"))):
            out = m(x)[0]
        if grad:
            (out.data if sizes.get("lengths") else out).sum().backward()

    return run


def tune(sizes: Mapping[str, Any], dtype: torch.dtype) -> str:
    """The autotuned choice for a module call: looked up, or measured now (both candidates, fastest kept)."""
    _load()
    key = tune_key(sizes, dtype)
    hit = _tuned.get(key)
    if hit is not None:
        return hit
    with torch.enable_grad() if sizes.get("grad") else torch.no_grad():
        times = measure({name: _candidate(name, sizes, dtype) for name in ("cpu", "torch")})
    choice = min(times, key=times.__getitem__)
    _tuned[key] = choice
    log.debug("rnnfast: autotune %s -> %s (%s)", key, choice, times)
    try:
        save(key, choice, times)
    except OSError as e:
        warnings.warn(f"rnnfast: autotune cache {cache_file()} not written ({e})", stacklevel=2)
    return choice


def clear_memory() -> None:
    """Forgets the autotune results held in memory (the file stays; the next lookup reads it again)."""
    _tuned.clear()
    _loaded_file.clear()
