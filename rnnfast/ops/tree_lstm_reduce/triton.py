"""Triton backend of the fused SPINN reduce (``rnnfast/kernels/tree_lstm.py``).

Dimensions: R rows, H hidden, HT tracker hidden (see ``reference.py``).
Forward: one kernel, lstm_in = h_l·W_lᵀ + b_l + h_r·W_rᵀ [+ h_track·W_tᵀ] (three K segments, no concat)
with the tree-LSTM composition as its epilogue; ws = lstm_in in the accumulation dtype.
Backward: the gate gradients in one pointwise kernel, then the input and weight gradients as GEMMs.
"""

from __future__ import annotations

import torch

from rnnfast.kernels import launch
from rnnfast.ops.recurrence.common import acc_dtype
from rnnfast.ops.tree_lstm import triton as tree
from rnnfast.ops.tree_lstm_reduce import reference

BLOCK_R = 16
# K-tiles of at most 32 and no software pipelining: with 64-wide K-tiles or a pipelined K-loop the five
# accumulators spill at sm_90 (tests/test_triton_cuda.py compiles the kernel and checks).
BLOCK_K_MAX = 32
NUM_STAGES = 1


def supports(device: torch.device, dtype: torch.dtype, sizes) -> tuple[bool, str]:
    ok, why = launch.check_device(device, dtype)
    return ok, (f"fused GEMM + tree-LSTM epilogue, {why}" if ok else why)


def forward(h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t):
    from rnnfast.kernels.tree_lstm import tree_lstm_reduce_fwd_kernel

    R, H = h_l.shape
    HT = 0 if h_track is None else h_track.shape[1]
    dt, dev = h_l.dtype, h_l.device
    h = launch.alloc((R, H), dt, dev)
    c = launch.alloc((R, H), dt, dev)
    ws = launch.alloc((R, 5 * H), acc_dtype(dt), dev)
    w_l = w_l.contiguous()
    # A program holds five (16, 32) fp32 accumulators, one per gate chunk, so the epilogue has all five
    # gates of its units at hand.
    bh = launch.tile(H, lo=16, hi=32)
    bk = launch.tile(max(H, HT), lo=16, hi=BLOCK_K_MAX)
    grid = (-(-R // BLOCK_R), -(-H // bh))
    if R and H:  # an empty launch grid is not valid on every Triton version
        tree_lstm_reduce_fwd_kernel[grid](
            h_l.contiguous(), c_l.contiguous(), h_r.contiguous(), c_r.contiguous(), w_l,
            b_l.contiguous() if b_l is not None else w_l, w_r.contiguous(),
            h_track.contiguous() if h_track is not None else w_l,
            w_t.contiguous() if w_t is not None else w_l,
            h, c, ws, R, H, HT,
            HAS_BIAS=b_l is not None, HAS_TRACK=h_track is not None,
            BLOCK_R=BLOCK_R, BLOCK_H=bh, BLOCK_K=bk, num_stages=NUM_STAGES,
            PREC=launch.dot_precision(dt, torch.backends.cuda.matmul.allow_tf32),
        )  # fmt: skip
    return h, c, ws


def backward(grad_h, grad_c, h_l, c_l, h_r, c_r, w_l, b_l, w_r, h_track, w_t, c, ws):
    dt = h_l.dtype
    acc = acc_dtype(dt)
    # d (R, 5H) in the accumulation dtype: the gradient of lstm_in, input of the GEMMs below.
    d, dc_l, dc_r = tree.gate_grads(grad_h, grad_c, ws, c_l, c_r, c, acc)
    return reference.input_and_weight_grads(d, dc_l, dc_r, h_l, h_r, b_l, w_l, w_r, h_track, w_t, dt)
