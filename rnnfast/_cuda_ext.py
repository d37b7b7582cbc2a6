"""Loading of the CUDA recurrence kernels ``rnnfast._C_cuda`` (sources in ``csrc/cuda``).

Two ways in, tried in order, and only when a CUDA device is present:
1. the library built ahead of time by ``setup.py`` (``rnnfast/_C_cuda*.so``), loaded with
   ``torch.ops.load_library`` (it registers the ops ``torch.ops.rnnfast_C.cuda_*`` and has no Python
   module of its own);
2. a just-in-time build of the same sources with ninja (``torch.utils.cpp_extension.load``), cached under
   ``$RNNFAST_CACHE_DIR`` (default ``~/.cache/rnnfast``) in a directory keyed by the torch and CUDA
   versions, the GPU architecture and a hash of the sources, so a change to any of them rebuilds. A file
   lock (fcntl) makes concurrent processes wait for one build instead of racing.

``RNNFAST_NO_JIT=1`` disables the just-in-time build.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import sys
import time
from pathlib import Path

import torch

_SOURCE_DIR = Path(__file__).resolve().parent.parent / "csrc" / "cuda"
_status: tuple[bool, str] | None = None


def _ops_registered() -> bool:
    try:
        torch.ops.rnnfast_C.cuda_recurrence_fwd  # noqa: B018 (attribute lookup is the probe)
    except (AttributeError, RuntimeError):
        return False
    return True


def sources() -> list[Path]:
    """The CUDA and binding sources, in a stable order."""
    return sorted(_SOURCE_DIR.glob("*.cu")) + sorted(_SOURCE_DIR.glob("*.cpp"))


def _arch() -> tuple[int, int]:
    return torch.cuda.get_device_capability()


def cache_dir() -> Path:
    """Build directory of the just-in-time build for this torch, CUDA, GPU and source tree."""
    h = hashlib.sha256()
    for p in sorted(_SOURCE_DIR.iterdir()):
        if p.suffix in (".cu", ".cuh", ".cpp", ".h"):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    major, minor = _arch()
    base = Path(os.environ.get("RNNFAST_CACHE_DIR") or Path.home() / ".cache" / "rnnfast")
    key = f"torch{torch.__version__}-cu{torch.version.cuda}-sm{major}{minor}-{h.hexdigest()[:16]}"
    return base / f"cuda-{key}"


def _jit_build() -> str:
    from torch.utils.cpp_extension import load

    build = cache_dir()
    build.mkdir(parents=True, exist_ok=True)
    major, minor = _arch()
    arch = f"{major}{minor}"
    with open(build / "rnnfast.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            fresh = not any(build.glob("*.so"))
            if fresh:
                print(
                    f"rnnfast: compiling the CUDA kernels for sm_{arch} (first use, about a minute) ...",
                    file=sys.stderr,
                    flush=True,
                )
            start = time.perf_counter()
            load(
                name="rnnfast_C_cuda",
                sources=[str(p) for p in sources()],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-lineinfo"],
                build_directory=str(build),
                is_python_module=False,
                verbose=logging.getLogger("rnnfast").isEnabledFor(logging.DEBUG),
            )
            if fresh:
                took = time.perf_counter() - start
                msg = f"rnnfast: CUDA kernels built in {took:.0f} s, cached in {build}"
                print(msg, file=sys.stderr, flush=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return str(build)


def _load() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    if torch.version.cuda is None:
        return False, "torch was built without CUDA"
    major, minor = _arch()
    if major < 8:
        return False, f"needs compute capability >= 8.0 (bfloat16 tensor cores), got {major}.{minor}"
    if _ops_registered():
        return True, "CUDA kernels loaded"
    notes = []
    spec = importlib.util.find_spec("rnnfast._C_cuda")
    if spec is not None and spec.origin:
        try:
            torch.ops.load_library(spec.origin)
            return True, f"prebuilt CUDA kernels ({Path(spec.origin).name})"
        except OSError as e:  # e.g. built against another torch: fall through to the JIT build
            notes.append(f"prebuilt {spec.origin} did not load ({e})")
    if os.environ.get("RNNFAST_NO_JIT") == "1":
        return False, "; ".join(notes + ["no prebuilt rnnfast._C_cuda and RNNFAST_NO_JIT=1"])
    if not sources():
        return False, "; ".join(notes + [f"no prebuilt rnnfast._C_cuda and no CUDA sources in {_SOURCE_DIR}"])
    try:
        where = _jit_build()
    except Exception as e:  # any build failure becomes the reason status() reports
        return False, "; ".join(notes + [f"just-in-time build of the CUDA kernels failed: {e}"])
    return True, f"CUDA kernels built just in time ({where})"


def status() -> tuple[bool, str]:
    """Whether the CUDA kernels are loaded (loaded or built on the first call), and how or why not."""
    global _status
    if _status is None or not _status[0] and _ops_registered():
        _status = _load()
    return _status
