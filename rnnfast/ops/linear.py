"""The input projection ``gi = x·W_ihᵀ + b_ih`` of the ``cpu`` backend's modules and its gradients: the
backend's blocked kernel, oneDNN or MKL, into the backend's block cache.

Dimensions: M rows (T·B tokens), I input, GH = G·H gate columns.

torch.nn.functional.linear on the CPU is MKL's sgemm, which on AMD CPUs runs its AVX2 code while oneDNN
(torch.nn.LSTM's CPU path) uses AVX-512. On AVX-512 CPUs other than Intel's the products go to the cpu
backend's blocked kernel (``torch.ops.rnnfast_C.gemm``: the per-step product's register blocks over
panels of the right factor, near a core's FMA peak, its result in a block of the cache). Measured on a
2-core AMD EPYC with AVX-512 (Zen 5, 2 threads, float32, paired rounds of benchmarks/cpu_gemm_ab.py,
benchmarks/results/cpu-avx512-zen5-projection-products-ab-189f9aa.json), blocked time / the library's,
MxKxN: forward with bias against oneDNN 0.46 at 12800x256x1024 and 0.22 at 51200x64x256 (oneDNN's
fresh 52 MB result is page-faulted in at every call), 0.82-0.86 at 1600-3200 rows, even at 800, but
1.15-1.42 at 200-400 rows and 1.10-1.19 at 512 (benchmarks/results/cpu-avx512-zen5-projection-fwd-rows-ab-
921ab5c.json; 0.95-1.10 at 800), where packing W_ihᵀ at every call does not pay: so the forward takes
oneDNN below ``_BLOCKED_FWD_MIN_ROWS`` rows; dX against oneDNN (which wants a transposed copy of W) 0.73-0.92;
dW (aᵀ·b, the sum over the rows) against MKL 0.46-0.67.
Before that kernel these CPUs took oneDNN for the forward and dX (for float32
products of at least ``_MIN_WORK`` multiply-adds; below that its ~25 µs call overhead loses to F.linear;
dX only from ``_DNNL_DX_MIN_ROWS`` rows) and MKL for dW, which ``RNNFAST_CPU_GEMM=onednn`` still selects.
On Intel CPUs MKL runs its best code and F.linear is as fast as oneDNN or faster (2-core AVX-512 Xeon, 2
threads, F.linear vs oneDNN: 200x128x512 0.144 vs 0.163 ms, 3200x256x1024 6.9 vs 7.9 ms, 1600x512x2048
14.7 vs 14.3 ms); on an AMD CPU without AVX-512 the two are even on average and oneDNN loses the most
(2-core AVX2 EPYC: 1600x512x2048 22.1 vs 22.8 ms, 12800x64x256 3.0 vs 3.9 ms, 200x256x1024 0.71 vs 0.65;
dX 200x1536x512 2.75 vs 3.27 ms with the copy); neither CPU was measured with the blocked kernel. There,
and with ``RNNFAST_CPU_GEMM=aten`` (as for the time loops' products, csrc/cpu/gemm.h), the products are
ATen's, written into blocks of the cpu backend's cache (see _mm_nt); ``RNNFAST_CPU_GEMM=onednn`` or
``=blocked`` take oneDNN or the blocked kernel on any CPU (read at every call). Under torch.compile, below
``_MIN_WORK``, and where ATen computes a result smaller than the cache's blocks (``_CACHE_MIN_BYTES``:
glibc reuses such memory without page faults) it is plain F.linear, whose autograd costs less per call
than this module's Function (~15 µs: a 200x128 by 128x128 product took 75 µs through it and 50 through
F.linear); a call that records no gradient skips the Function.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnfast import backends

_MIN_WORK = 1 << 21
_DNNL_DX_MIN_ROWS = 128
# Results from this size come from the cpu backend's block cache (BlockCache::kMinBytes, csrc/cpu/blocks.h).
_CACHE_MIN_BYTES = 1 << 20
# The blocked kernel's forward from this many rows (oneDNN below, where it is available): it packs W_ihᵀ
# at every call, which few rows do not earn back (see the module docstring).
_BLOCKED_FWD_MIN_ROWS = 768
_DNNL = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def library() -> str:
    """Where the input projection's products go: ``"blocked"`` (the cpu backend's kernel; oneDNN for a
    forward of fewer than ``_BLOCKED_FWD_MIN_ROWS`` rows), ``"onednn"`` (forward and dX; dW through ATen) or
    ``"aten"`` (MKL). ``RNNFAST_CPU_GEMM`` (read at every call) chooses; by default the blocked kernel on
    AVX-512 CPUs other than Intel's, ATen elsewhere (see the module docstring)."""
    choice = os.environ.get("RNNFAST_CPU_GEMM", "")
    if choice == "onednn":
        return "onednn" if _DNNL else "aten"
    if choice in ("aten", "blocked"):
        return choice
    return "blocked" if backends.cpu_kind() == "avx512-other" else "aten"


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
