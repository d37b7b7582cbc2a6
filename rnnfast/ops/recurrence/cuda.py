"""The ``cuda`` backend of the recurrence op: persistent CUDA kernels (``csrc/cuda``), opt-in.

Two algorithms, chosen per call by a per-step cost model (``with flags(algo="persistent"|"stepwise"):``
forces one):
- persistent: the whole time loop in one cooperative launch; each CTA keeps its slice of W_hh in shared
  memory for all T steps and the CTAs meet at one grid barrier per step (forward and backward). Tensor
  cores for float16/bfloat16, and for float32 in TF32 where torch.nn's cuDNN RNN would use TF32
  (``torch.backends.cudnn.allow_tf32``), else exact float32 FMA.
- stepwise: per step one GEMM (cuBLAS through ATen, tensor cores in the data dtype with float32
  accumulation) and one fused pointwise kernel.
The backward kernels return the gate gradients dgh (T, B, G·H) in the data dtype; dW_hh and db_hh are
then one GEMM and one reduction here, accumulated in float32.

The cost model (:func:`step_time`, written out in docs/cuda.md, printed by ``scripts/gpu_model.py``)
estimates µs per step of both algorithms from a few device figures; ``auto`` runs persistent up to the
largest batch at which the model has it ahead (:func:`batch_limit`).

Not implemented (refused in ``supports``): float64, the LSTM projection (``proj_size``), devices other
than CUDA, GPUs below compute capability 8.0. Dimensions: T time, B batch, H hidden, G gates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from rnnfast import _cuda_ext
from rnnfast.ops.recurrence import common
from rnnfast.ops.recurrence.common import CELL_CODE, empty

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_PERSISTENT, _STEPWISE = 1, 2
_ALGOS = ("auto", "persistent", "stepwise")
_MODES = ("tensor cores", "TF32 tensor cores", "float32 FMA")  # rnnfast_cuda.h RNNFAST_MMA16/TF32/FFMA


_forced = "auto"


@contextlib.contextmanager
def flags(algo: str = "auto") -> Iterator[None]:
    """Force the algorithm inside the block, like ``torch.backends.cudnn.flags``: ``"persistent"``,
    ``"stepwise"`` or ``"auto"`` (the cost model's choice). Process-wide; the previous setting comes back
    on exit. Under torch.compile the setting at trace time is baked into the graph."""
    global _forced
    if algo not in _ALGOS:
        raise ValueError(f"algo: expected one of {_ALGOS}, got {algo!r}")
    prev, _forced = _forced, algo
    try:
        yield
    finally:
        _forced = prev


def _forced_algorithm() -> str:
    return _forced


def tf32_allowed() -> bool:
    """Whether float32 may multiply in TF32: what torch.nn's cuDNN RNN would do (the RNN's own
    ``fp32_precision`` where torch has it, else ``torch.backends.cudnn.allow_tf32``)."""
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    precision = getattr(rnn, "fp32_precision", None)
    if precision in ("tf32", "ieee"):
        return precision == "tf32"
    return bool(torch.backends.cudnn.allow_tf32)


# ------------------------------------------------------------------------------------------------------
# Per-step cost model. Each constant is a datasheet figure of an H100 SXM or an estimate that the GPU
# check measures (marked "measure"); docs/cuda.md derives the terms.


@dataclasses.dataclass(frozen=True)
class Gpu:
    sms: int = 132  # H100 SXM datasheet (read from the device when there is one)
    clock_ghz: float = 1.755  # H100 SXM clock under sustained tensor-core load (boost 1.98)
    l2_tbs: float = 5.5  # measure: aggregate L2 read bandwidth, every SM reading (microbenchmarks 5.5-7)
    hbm_tbs: float = 3.35  # datasheet HBM3 bandwidth
    l2_latency_us: float = 0.5  # measure: first bytes of a staged chunk after the barrier (one L2 round trip)
    barrier_us: float = 1.0  # measure: the grid barrier (release-add + acquire spin over all CTAs)
    launch_us: float = 3.0  # measure: the stepwise loop's cost per launch (ATen dispatch + launch, eager)
    smem_bytes_clk: int = 128  # datasheet: 32 banks x 4 bytes per SM and clock
    mma_flop_clk: int = 2048  # measure: mma.sync m16n8k16 per SM and clock (half of the dense wgmma rate)
    ffma_flop_clk: int = 256  # datasheet: 128 float32 lanes per SM, 2 FLOP per FMA
    cell_us: float = 0.15  # measure: one pass of 256 threads over the cell math (transcendentals)

    @classmethod
    def of(cls, device: torch.device | int | None = None) -> Gpu:
        """The defaults with the SM count of ``device`` (the rest is not exposed by the driver)."""
        if device is None or not torch.cuda.is_available():
            return cls()
        return cls(sms=torch.cuda.get_device_properties(device).multi_processor_count)


_TF32_RATE = 0.5  # datasheet: TF32 tensor-core rate is half the 16-bit rate


def _mode(dtype: torch.dtype, tf32: bool) -> int:
    return 0 if dtype != torch.float32 else (1 if tf32 else 2)


def step_time(
    cell: str,
    dtype: torch.dtype,
    B: int,
    H: int,
    backward: bool,
    tf32: bool = True,
    gpu: Gpu | None = None,
) -> dict[str, float]:
    """Modelled µs per step of the persistent kernel (its parts) and of the stepwise algorithm.

    Keys: ``barrier``, ``l2`` (staging the shared operand: every CTA reads all B rows of h, or of dgh
    in backward), ``smem`` (the tile GEMM's shared-memory reads), ``mma`` (its arithmetic), ``cells``,
    ``hbm`` (the cells' own inputs and outputs), ``persistent`` (the sum, with staging overlapped with the
    GEMM beyond one block of 16 rows), ``stepwise``, and ``l2_bytes`` per step."""
    gpu = gpu or Gpu()
    G, S = common.GATES[cell], common.SAVED[cell]
    esz = 4 if dtype == torch.float32 else 2
    mode = _mode(dtype, tf32)
    clk = gpu.clock_ghz * 1e3  # clocks per µs
    U = math.ceil(H / gpu.sms)
    ctas = math.ceil(H / U)
    N, K = (U, G * H) if backward else (G * U, H)
    np_ = math.ceil(N / 8) * 8
    kp = math.ceil(K / (32 // esz)) * (32 // esz)
    nm = math.ceil(B / 16)
    l2_bytes = ctas * B * K * esz
    l2 = l2_bytes / (gpu.l2_tbs * 1e6)
    if mode == 2:  # 4x4 register tiles: 2 bytes of shared memory per FMA
        smem_bytes = nm * 32 * np_ * kp
        rate = gpu.ffma_flop_clk
    else:  # ldmatrix: the slice once per row block, the staged rows once per column group of warps
        groups = math.ceil(np_ / 32)
        smem_bytes = nm * (np_ + 16 * groups) * kp * esz
        rate = gpu.mma_flop_clk * (_TF32_RATE if mode == 1 else 1.0)
    smem = smem_bytes / gpu.smem_bytes_clk / clk
    mma = 2 * nm * 16 * np_ * kp / rate / clk
    gemm = max(smem, mma)
    # Several row blocks are double-buffered: the next block's copies overlap this block's GEMM.
    operand = gpu.l2_latency_us + (max(l2, gemm) if nm > 1 else l2 + gemm)
    cells = nm * math.ceil(min(B, 16) * U / 256) * gpu.cell_us
    per_unit = (G + 1) * esz + S * 4 if not backward else (2 * G + 2) * esz + S * 4
    hbm = B * H * per_unit / (gpu.hbm_tbs * 1e6)
    persistent = gpu.barrier_us + operand + cells + hbm
    # Stepwise: a cuBLAS GEMM reading all of W_hh (from L2) and a pointwise kernel, each at least one launch.
    w_bytes = G * H * H * esz
    flops = 2 * B * G * H * H
    gemm_step = max(gpu.launch_us, w_bytes / (gpu.l2_tbs * 1e6), flops / (gpu.sms * rate * clk))
    stepwise = gemm_step + max(gpu.launch_us, hbm)
    return {
        "barrier": gpu.barrier_us,
        "l2": l2,
        "smem": smem,
        "mma": mma,
        "cells": cells,
        "hbm": hbm,
        "persistent": persistent,
        "stepwise": stepwise,
        "l2_bytes": float(l2_bytes),
    }


_MAX_BATCH = 1 << 16


@functools.lru_cache(maxsize=4096)
def batch_limit(
    cell: str, dtype: torch.dtype, H: int, backward: bool, tf32: bool = True, gpu: Gpu | None = None
) -> int:
    """The largest batch at which the model has the persistent kernel ahead of stepwise (0: never).
    The persistent kernel's staging grows with B·ctas, the stepwise GEMM's floor does not, so the model's
    comparison flips once; found by doubling, then bisection."""

    def wins(B: int) -> bool:
        t = step_time(cell, dtype, B, H, backward, tf32, gpu)
        return t["persistent"] <= t["stepwise"]

    if not wins(1):
        return 0
    lo, hi = 1, 2
    while hi <= _MAX_BATCH and wins(hi):
        lo, hi = hi, hi * 2
    if hi > _MAX_BATCH:
        return _MAX_BATCH
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if wins(mid) else (lo, mid)
    return lo


# ------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _plan(cell: str, dtype: torch.dtype, tf32: bool, B: int, H: int, backward: bool, device: int):
    """[ok, ctas, units, mode, k_chunk, k_chunks, split, prefetch, smem_bytes] on ``device``."""
    with torch.cuda.device(device):
        return tuple(
            torch.ops.rnnfast_C.cuda_persistent_plan(CELL_CODE[cell], dtype, tf32, B, H, backward, device)
        )


@functools.lru_cache(maxsize=16)
def _gpu(device: int) -> Gpu:
    return Gpu.of(device)


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def algorithm(
    cell: str, dtype: torch.dtype, B: int, H: int, backward: bool, device: torch.device
) -> tuple[int, str]:
    """(algorithm code, description) for one call; code 0 when the forced algorithm cannot run."""
    forced = _forced_algorithm()
    if forced == "stepwise":
        return _STEPWISE, "stepwise (forced by flags(algo='stepwise'))"
    tf32 = dtype == torch.float32 and tf32_allowed()
    index = _device_index(device)
    ok, ctas, units, mode, k_chunk, k_chunks, _, prefetch, smem = _plan(
        cell, dtype, tf32, B, H, backward, index
    )
    direction = "backward" if backward else "forward"
    if not ok:
        why = (
            f"the persistent kernel cannot run for H={H} ({dtype}, {direction}): its slices do not fit in "
            "shared memory or its grid cannot be co-resident"
        )
        return (0, why) if forced == "persistent" else (_STEPWISE, f"stepwise ({why})")
    staged = "whole rows" if k_chunks == 1 else f"{k_chunks} chunks of {k_chunk} columns"
    desc = (
        f"persistent ({ctas} CTAs x {units} units, {smem // 1024} KiB shared memory each, {_MODES[mode]}, "
        f"operand staged in {staged}{', next step prefetched' if prefetch else ''}"
    )
    if forced == "persistent":
        return _PERSISTENT, desc + "; forced)"
    limit = batch_limit(cell, dtype, H, backward, tf32, _gpu(index))
    if B <= limit:
        return _PERSISTENT, desc + f"; cost model: persistent up to B={limit})"
    if limit == 0:
        return _STEPWISE, f"stepwise (cost model: the persistent {_MODES[mode]} kernel loses at H={H})"
    return _STEPWISE, f"stepwise (cost model: persistent up to B={limit} at H={H}, got B={B})"


def supports(device: torch.device, dtype: torch.dtype, sizes) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, f"the cuda backend runs on CUDA devices only, got {device}"
    if dtype not in _DTYPES:
        return False, f"dtype {dtype} is not implemented by the CUDA kernels (float32, float16, bfloat16)"
    cell = sizes.get("cell", "gru")
    if cell not in common.CELLS:
        return False, f"unknown cell {cell!r}"
    if sizes.get("P", 0):
        return False, "the LSTM projection (proj_size) is not implemented by the CUDA kernels"
    ok, why = _cuda_ext.status()
    if not ok:
        return False, why
    B, H = int(sizes.get("B", 1)), int(sizes.get("H", 1))
    fwd, fwd_why = algorithm(cell, dtype, B, H, False, device)
    bwd, bwd_why = algorithm(cell, dtype, B, H, True, device)
    if not fwd or not bwd:
        return False, fwd_why if not fwd else bwd_why
    return True, f"forward {fwd_why}; backward {bwd_why}"


def _c(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def _algorithm_or_raise(cell, t: Tensor, w_hh: Tensor, w_hr, backward: bool) -> int:
    """The algorithm for this call (see :func:`algorithm`), or a clear error for what is not implemented."""
    if w_hr is not None:
        raise ValueError("w_hr: the LSTM projection is not implemented by the cuda backend")
    algo, why = algorithm(cell, t.dtype, t.shape[1], w_hh.shape[1], backward, t.device)
    if not algo:
        raise RuntimeError(f"rnnfast cuda: {why}")
    return algo


def forward(cell, gi, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, need_ws):
    with torch.cuda.device(gi.device):
        algo = _algorithm_or_raise(cell, gi, w_hh, w_hr, backward=False)
        y, h_n, c_n, ws = torch.ops.rnnfast_C.cuda_recurrence_fwd(
            gi.contiguous(),
            h0.contiguous(),
            _c(c0),
            w_hh.contiguous(),
            _c(b_hh),
            None,
            _c(lengths),
            CELL_CODE[cell],
            bool(reverse),
            bool(need_ws),
            algo,
            gi.dtype == torch.float32 and tf32_allowed(),
            torch.cuda.current_stream(gi.device).cuda_stream,
        )
    return y, h_n, c_n, ws


def _mm_f32(a: Tensor, b: Tensor) -> Tensor:
    """a·b accumulated and returned in float32: on tensor cores in the operands' 16-bit dtype where torch
    has the output-dtype GEMM (CUDA, torch >= 2.8), else on float32 copies (the same products)."""
    if a.dtype != torch.float32 and a.is_cuda:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except TypeError:  # torch < 2.8: no out_dtype
            pass
    return torch.mm(a.float(), b.float())


def weight_grads(dgh: Tensor, h_prev: Tensor, has_bias: bool) -> tuple[Tensor, Tensor]:
    """dW_hh = Σ_t dghᵀ·h_prev and db_hh = Σ_t dgh in float32, from dgh (T, B, G·H) and h_prev (T, B, H)
    in the data dtype; returned in the data dtype."""
    gh = dgh.shape[-1]
    dgh2 = dgh.reshape(-1, gh)
    dw = _mm_f32(dgh2.t(), h_prev.reshape(-1, h_prev.shape[-1]))
    db = dgh2.sum(0, dtype=torch.float32) if has_bias else dgh.new_empty((0,), dtype=torch.float32)
    return dw.to(dgh.dtype), db.to(dgh.dtype)


def backward(cell, grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, y, ws):
    with torch.cuda.device(y.device):
        algo = _algorithm_or_raise(cell, y, w_hh, w_hr, backward=True)
        dgi, dh0, dc0, dgh = torch.ops.rnnfast_C.cuda_recurrence_bwd(
            grad_y.contiguous(),
            grad_hn.contiguous(),
            _c(grad_cn),
            h0.contiguous(),
            _c(c0),
            w_hh.contiguous(),
            _c(b_hh),
            None,
            _c(lengths),
            y.contiguous(),
            ws.contiguous(),
            CELL_CODE[cell],
            bool(reverse),
            algo,
            y.dtype == torch.float32 and tf32_allowed(),
            torch.cuda.current_stream(y.device).cuda_stream,
        )
        T, B, GH = dgi.shape
        # Rows of dgh are padded to 16 bytes; the view skips the padding without a copy.
        dgh = dgh.view(T * B, -1)[:, :GH]
        # dgh is zero at invalid steps, so the rows previous_states fills with h0 there do not contribute.
        h_prev = common.previous_states(y, h0.to(y.dtype), lengths, reverse)
        dw_hh, db_hh = weight_grads(dgh, h_prev, b_hh is not None)
    return dgi, dh0, dc0, dw_hh, db_hh, empty(y)
