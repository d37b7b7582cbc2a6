"""Clear errors where TorchScript and ONNX export cannot follow rnnfast.

rnnfast's forward picks a backend in Python and runs custom ops (``torch.library``) whose kernels have no
TorchScript or ONNX form, so ``torch.jit.script`` fails deep in its compiler, ``torch.jit.trace`` records
one data-dependent path and ``torch.onnx.export`` stops at an op it cannot translate. These checks say so
up front and name what works: ``torch.export`` and ``torch.compile`` (which keep the custom ops as
nodes), or the module's ``to_torch()`` (the torch.nn module with the same parameters) for TorchScript and
ONNX.
"""

from __future__ import annotations

import torch

__all__ = ["refuse_scripting", "check_tracer"]

_WORKS = "torch.export.export and torch.compile support it"


@torch.compiler.assume_constant_result
def _onnx_exporting() -> bool:
    # torch.export (strict) under torch.onnx.export traces with dynamo, which folds
    # torch.onnx.is_in_onnx_export() to False; a constant result is evaluated for real at trace time.
    return torch.onnx.is_in_onnx_export()


def _names(what) -> tuple[str, str | None]:
    """(public name, torch.nn equivalent or None) of a module, or of an op given by its public name."""
    if isinstance(what, str):
        return what, None
    if isinstance(what, torch.nn.RNNBase):  # rnnfast.RNN / GRU / LSTM (or a subclass): mode names the cell
        cell = "RNN" if what.mode.startswith("RNN") else what.mode
        return f"rnnfast.{cell}", f"torch.nn.{cell}"
    return f"rnnfast.nn.{type(what).__name__}", None


def _fix(what: str, torch_equivalent: str | None) -> str:
    if torch_equivalent is None:
        return f"{_WORKS}."
    return (
        f"{_WORKS}; to {what}, convert it first: module.to_torch() is the {torch_equivalent} with the "
        "same parameters."
    )


def refuse_scripting(module: torch.nn.Module):
    """Raise the error for ``torch.jit.script`` of ``module`` (called from its ``__prepare_scriptable__``)."""
    name, equivalent = _names(module)
    raise RuntimeError(
        f"{name} cannot be compiled by TorchScript (torch.jit.script): its forward chooses a backend in "
        f"Python and runs rnnfast's custom ops. {_fix('script it', equivalent)}"
    )


def check_tracer(what) -> None:
    """Raise a clear error when ``what`` (a module, or an op's public name) runs under ``torch.jit.trace``
    or ONNX export.

    ONNX first: the TorchScript-based exporter traces too, the newer one runs torch.export. In eager mode
    this costs two flag reads (~0.2 µs); under torch.compile it folds to nothing.
    """
    tracing = torch.jit.is_tracing()
    if not (tracing or torch.compiler.is_compiling()):
        return
    if _onnx_exporting():
        name, equivalent = _names(what)
        raise RuntimeError(
            f"{name} cannot be exported to ONNX (torch.onnx.export): its kernels are rnnfast custom ops "
            f"with no ONNX form. {_fix('export to ONNX', equivalent)}"
        )
    if tracing:
        name, equivalent = _names(what)
        raise RuntimeError(
            f"{name} cannot be traced by torch.jit.trace: its forward takes data-dependent paths (backend, "
            f"sequence length, grad mode) that a trace would freeze. {_fix('trace it', equivalent)}"
        )
