"""Loading of the compiled extension ``rnnfast._C`` (C++ CPU kernels, and CUDA kernels where built)."""

from __future__ import annotations


def status() -> tuple[bool, str]:
    """Whether ``rnnfast._C`` is loaded, and how (or why not)."""
    return False, "rnnfast._C is not built yet"


def has_cuda_kernels() -> bool:
    return False
