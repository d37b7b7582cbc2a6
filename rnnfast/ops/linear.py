"""The library of the cpu modules' input projection ``gi = x·W_ihᵀ + b_ih`` and its gradients: ATen (MKL),
oneDNN or the backend's blocked kernel. The products run inside the layer stack's C++ op
(csrc/cpu/recurrence.cpp, project() and project_backward()), which takes the choice as
:func:`library_code`; its size rules live there.
"""

from __future__ import annotations

from rnnfast.backends import cpu as cpu_policy

_DNNL = cpu_policy.facts().onednn


def library() -> str:
    """Where the input projection's products go: ``"blocked"`` (the cpu backend's kernel; oneDNN for a
    forward of few rows), ``"onednn"`` (forward and dX; dW through ATen) or ``"aten"``:
    ``rnnfast.backends.cpu.flags(gemm=...)``, else ATen (figures per machine: docs/cpu.md)."""
    choice = cpu_policy.forced("gemm")
    if choice == "onednn":
        return "onednn" if _DNNL else "aten"
    return choice or "aten"


# library() as the code rnnfast_C::module_fwd / module_bwd take (ProjectLib in csrc/cpu/recurrence.cpp).
_LIB_CODE = {"aten": 0, "blocked": 1, "onednn": 2}


def library_code() -> int:
    """:func:`library` as the integer the cpu modules' layer-stack ops take."""
    return _LIB_CODE[library()]
