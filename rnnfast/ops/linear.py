"""The input projection ``gi = x·W_ihᵀ + b_ih`` of the ``cpu`` backend's modules: oneDNN or MKL, into
the backend's block cache.

Dimensions: M rows (T·B tokens), I input, GH = G·H gate columns.

torch.nn.functional.linear on the CPU is MKL's sgemm, which on AMD CPUs runs its AVX2 code while oneDNN
(torch.nn.LSTM's CPU path) uses AVX-512: measured on a 2-core AMD EPYC with AVX-512, 2 threads, forward
1600x512x2048 torch.mm 20.6 ms vs oneDNN 16.3 ms, 1600x256x1024 5.8 vs 4.1 ms. The fused LSTM of
torch.nn gets that rate for its input GEMM, so the cpu backend does too: on CPUs with AVX-512 other
than Intel's, forward and dX go to ``torch.ops.mkldnn._linear_pointwise`` for float32 products of at
least ``_MIN_WORK`` multiply-adds (below that its ~25 µs call overhead loses to F.linear), dX only from
``_DNNL_DX_MIN_ROWS`` rows: oneDNN wants W transposed into a copy at every call, which costs as much as
a product of a few rows (GH=1536, I=512: 0.6 ms). On Intel CPUs MKL runs its best code and F.linear is
as fast or faster (2-core AVX-512 Xeon, 2 threads, F.linear vs oneDNN: 200x128x512 0.144 vs 0.163 ms,
3200x256x1024 6.9 vs 7.9 ms, 1600x512x2048 14.7 vs 14.3 ms); on an AMD CPU without AVX-512 the two are
even on average and oneDNN loses the most (2-core AVX2 EPYC: 1600x512x2048 22.1 vs 22.8 ms,
12800x64x256 3.0 vs 3.9 ms, 200x256x1024 0.71 vs 0.65; dX 200x1536x512 2.75 vs 3.27 ms with the copy).
There, with RNNFAST_CPU_GEMM=aten (as for the time loops' products, csrc/cpu/gemm.h) and for float64,
the products are ATen's, written into blocks of the cpu backend's cache (see _mm_nt);
RNNFAST_CPU_GEMM=onednn takes oneDNN on any CPU. Under torch.compile, below ``_MIN_WORK``, and where ATen
computes a result smaller than the cache's blocks (``_CACHE_MIN_BYTES``: glibc reuses such memory without
page faults) it is plain F.linear, whose autograd costs less per call than this module's Function (~15 µs:
a 200x128 by 128x128 product took 75 µs through it and 50 through F.linear); a call that records no
gradient skips the Function.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnfast.backends import cpu_capability
from rnnfast.backends import intel_cpu as _intel_cpu

_MIN_WORK = 1 << 21
_DNNL_DX_MIN_ROWS = 128
# Results from this size come from the cpu backend's block cache (BlockCache::kMinBytes, csrc/cpu/blocks.h).
_CACHE_MIN_BYTES = 1 << 20


def _avx512() -> bool:
    return cpu_capability() == "AVX512"


def _dnnl_available() -> bool:
    choice = os.environ.get("RNNFAST_CPU_GEMM")
    if choice == "aten" or (choice != "onednn" and (_intel_cpu() or not _avx512())):
        return False
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_AVAILABLE = _dnnl_available()


def _mm_nt(a: Tensor, b: Tensor, bias: Tensor | None = None, dnnl: bool = True) -> Tensor:
    """a (M, K) · bᵀ (+ bias), b (N, K): oneDNN's product for float32 where it is the faster library
    (``_AVAILABLE``, and ``dnnl``), else ATen's, written into a block of the cpu backend's cache
    (csrc/cpu/blocks.h): a fresh result this large is page-faulted in at every call (GRU B=256 H=256
    T=50: 9.6K faults and ~20 ms of system time per forward for gi alone)."""
    if _AVAILABLE and dnnl and a.dtype == torch.float32:
        return torch.ops.mkldnn._linear_pointwise(a.contiguous(), b.contiguous(), bias, "none", [], "")
    if a.shape[0] * b.shape[0] * a.element_size() < _CACHE_MIN_BYTES:
        return torch.mm(a, b.t()) if bias is None else torch.addmm(bias, a, b.t())
    out = torch.ops.rnnfast_C.empty_cached([a.shape[0], b.shape[0]], a.dtype)
    if bias is None:
        return torch.mm(a, b.t(), out=out)
    return torch.addmm(bias, a, b.t(), out=out)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, w)
        ctx.has_bias = b is not None
        ctx.x_shape = x.shape
        return _mm_nt(x2, w, b).reshape(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x2, w = ctx.saved_tensors
        g2 = grad.reshape(-1, w.shape[0]).contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            # (M, GH)·(GH, I); oneDNN copies w.t() contiguous first, which a few rows do not earn back
            dx = _mm_nt(g2, w.t(), dnnl=g2.shape[0] >= _DNNL_DX_MIN_ROWS).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            # (GH, M)·(M, I), a sum over the M rows: the cpu backend's mm_tn (its blocked kernel with
            # AVX-512, else ATen; oneDNN would need both transposed into copies, which cost as much as it
            # saves: B=256, H=64, 0.7 ms per copy against a 1 ms product).
            dw = torch.ops.rnnfast_C.mm_tn(g2, x2.contiguous())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g2.sum(0)
        return dx, dw, db


def input_projection(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """x (..., I) · wᵀ + b, w (GH, I), b (GH,) or None -> (..., GH); F.linear's result and gradients.
    For the cpu backend's modules (rnnfast._C loaded)."""
    rows = x.numel() // max(x.shape[-1], 1)
    dnnl = _AVAILABLE and x.dtype == torch.float32
    if (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and w.dtype == x.dtype
        and (b is None or b.dtype == x.dtype)
        and not torch.compiler.is_compiling()
        and rows * w.shape[0] * w.shape[1] >= _MIN_WORK
        and (dnnl or rows * w.shape[0] * x.element_size() >= _CACHE_MIN_BYTES)
    ):
        grad = x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)
        if grad and torch.is_grad_enabled():
            return _Linear.apply(x, w, b)
        return _mm_nt(x.reshape(-1, x.shape[-1]), w, b).reshape(*x.shape[:-1], w.shape[0])
    return F.linear(x, w, b)
