"""The input projection ``gi = x·W_ihᵀ + b_ih`` of the ``cpu`` backend's modules and its gradients: ATen
(MKL), oneDNN or the backend's blocked kernel, the large results in blocks of the backend's cache
(csrc/cpu/blocks.h: a fresh result this large is page-faulted in at every call).

Dimensions: M rows (T·B tokens), I input, GH = G·H gate columns. The library is ATen unless
``rnnfast.backends.cpu.flags(gemm=...)`` forces another (A/B figures: docs/cpu.md). Below ``_MIN_WORK``
multiply-adds, under torch.compile, and where ATen's result is smaller than the cache's blocks it is plain
F.linear, whose autograd costs less per call than this module's Function (~15 µs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnfast.backends import cpu as cpu_policy

_MIN_WORK = 1 << 21
_DNNL_DX_MIN_ROWS = 128
# Results from this size come from the cpu backend's block cache (BlockCache::kMinBytes, csrc/cpu/blocks.h).
_CACHE_MIN_BYTES = 1 << 20
# The blocked kernel's forward from this many rows (oneDNN below, where it is available): it packs W_ihᵀ
# at every call, which fewer rows do not earn back.
_BLOCKED_FWD_MIN_ROWS = 768
_DNNL = cpu_policy.facts().onednn


def library() -> str:
    """Where the input projection's products go: ``"blocked"`` (the cpu backend's kernel; oneDNN for a
    forward of fewer than ``_BLOCKED_FWD_MIN_ROWS`` rows), ``"onednn"`` (forward and dX; dW through ATen) or
    ``"aten"``: ``rnnfast.backends.cpu.flags(gemm=...)``, else ATen (figures per machine: docs/cpu.md)."""
    choice = cpu_policy.forced("gemm")
    if choice == "onednn":
        return "onednn" if _DNNL else "aten"
    return choice or "aten"


def _mm_nt(a: Tensor, b: Tensor, bias: Tensor | None, lib: str, dnnl: bool = True) -> Tensor:
    """a (M, K) · bᵀ (+ bias), b (N, K), by ``lib`` (:func:`library`; oneDNN only for float32, and with
    ``dnnl``; the blocked kernel's forward, ``dnnl`` set, from ``_BLOCKED_FWD_MIN_ROWS`` rows where
    oneDNN is there), written into a block of the cpu backend's cache (csrc/cpu/blocks.h) except
    oneDNN's: a fresh result this large is page-faulted in at every call (GRU B=256 H=256 T=50: 9.6K
    faults and ~20 ms of system time per forward for gi alone)."""
    f32 = a.dtype == torch.float32
    if lib == "blocked" and not (dnnl and f32 and _DNNL and a.shape[0] < _BLOCKED_FWD_MIN_ROWS):
        return torch.ops.rnnfast_C.gemm(a, b.t(), bias)
    if lib != "aten" and dnnl and f32:
        return torch.ops.mkldnn._linear_pointwise(a.contiguous(), b.contiguous(), bias, "none", [], "")
    if a.shape[0] * b.shape[0] * a.element_size() < _CACHE_MIN_BYTES:
        return torch.mm(a, b.t()) if bias is None else torch.addmm(bias, a, b.t())
    out = torch.ops.rnnfast_C.empty_cached([a.shape[0], b.shape[0]], a.dtype)
    if bias is None:
        return torch.mm(a, b.t(), out=out)
    return torch.addmm(bias, a, b.t(), out=out)


# library() as the code rnnfast_C::module_fwd / module_bwd take (ProjectLib in csrc/cpu/recurrence.cpp).
_LIB_CODE = {"aten": 0, "blocked": 1, "onednn": 2}


def library_code() -> int:
    """:func:`library` as the integer the cpu modules' one-call ops take (they choose among its kernels
    for each product as :func:`input_projection` and its backward do)."""
    return _LIB_CODE[library()]


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, lib: str) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, w)
        ctx.has_bias = b is not None
        ctx.x_shape = x.shape
        ctx.lib = lib
        return _mm_nt(x2, w, b, lib).reshape(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x2, w = ctx.saved_tensors
        g2 = grad.reshape(-1, w.shape[0]).contiguous()
        dx = dw = db = None
        blocked = ctx.lib == "blocked"
        if ctx.needs_input_grad[0]:
            # (M, GH)·(GH, I): the blocked kernel packs W as it is; oneDNN copies w.t() contiguous first,
            # which a few rows do not earn back
            dnnl = not blocked and g2.shape[0] >= _DNNL_DX_MIN_ROWS
            dx = torch.ops.rnnfast_C.gemm(g2, w) if blocked else _mm_nt(g2, w.t(), None, ctx.lib, dnnl)
            dx = dx.reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            # (GH, M)·(M, I), a sum over the M rows: the blocked kernel reads g2 transposed; oneDNN would
            # need both operands transposed into copies, which cost as much as it saves (B=256, H=64: 0.7
            # ms per copy against a 1 ms product), so otherwise ATen
            dw = torch.ops.rnnfast_C.gemm(g2, x2.contiguous(), None, True) if blocked else g2.t().mm(x2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g2.sum(0)
        return dx, dw, db, None


def input_projection(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """x (..., I) · wᵀ + b, w (GH, I), b (GH,) or None -> (..., GH); F.linear's result and gradients.
    For the cpu backend's modules (rnnfast._C loaded)."""
    rows = x.numel() // max(x.shape[-1], 1)
    lib = library()
    own = lib == "blocked" or (lib == "onednn" and x.dtype == torch.float32)
    if (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and w.dtype == x.dtype
        and (b is None or b.dtype == x.dtype)
        and not torch.compiler.is_compiling()
        and rows * w.shape[0] * w.shape[1] >= _MIN_WORK
        and (own or rows * w.shape[0] * x.element_size() >= _CACHE_MIN_BYTES)
    ):
        grad = x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)
        if grad and torch.is_grad_enabled():
            return _Linear.apply(x, w, b, lib)
        return _mm_nt(x.reshape(-1, x.shape[-1]), w, b, lib).reshape(*x.shape[:-1], w.shape[0])
    return F.linear(x, w, b)
