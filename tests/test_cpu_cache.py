"""The ``cpu`` backend's block cache (csrc/cpu/blocks.h): large outputs and scratch come from freed
blocks instead of fresh memory the kernel must fault in, and the results do not depend on it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from rnnfast import _ext
from tests.utils import assert_close, recurrence_inputs, run_recurrence

ok, why = _ext.status()
pytestmark = pytest.mark.skipif(not ok, reason=f"C++ CPU kernels unavailable: {why}")


def _info():
    _ext.ensure_loaded()
    return torch.ops.rnnfast_C.cache_info()


def test_large_outputs_reuse_freed_blocks():
    # GRU, T=40, B=64, H=128: y (1.3 MB), ws (5.2 MB), dgi and the scratch dgh (3.9 MB) are all large.
    args = recurrence_inputs("gru", 40, 64, 128, dtype=torch.float32)
    torch.ops.rnnfast_C.cache_clear()
    assert _info()[:2] == (0, 0)
    first = run_recurrence("gru", args, False, "cpu")
    grads = torch.autograd.grad(first[0], [args["gi"], args["w_hh"]], torch.ones_like(first[0]))
    first = [t.detach().clone() for t in first[:2]] + [g.clone() for g in grads]
    del grads
    cached, blocks, reused = _info()
    assert cached > 0 and blocks > 0  # dgh and the released outputs came back
    again = run_recurrence("gru", args, False, "cpu")
    grads = torch.autograd.grad(again[0], [args["gi"], args["w_hh"]], torch.ones_like(again[0]))
    assert _info()[2] > reused  # this time from the cache
    for name, a, b in zip(["y", "h_n", "dgi", "dw_hh"], [*again[:2], *grads], first):
        assert_close(name, a, b, atol=0, rtol=0)
    torch.ops.rnnfast_C.cache_clear()
    assert _info()[:2] == (0, 0)


def test_cached_tensor_is_an_ordinary_tensor():
    _ext.ensure_loaded()
    t = torch.ops.rnnfast_C.empty_cached([512, 1024], torch.float32)
    assert t.shape == (512, 1024) and t.dtype == torch.float32 and t.is_contiguous()
    t.fill_(2.0)
    assert t.sum().item() == 2.0 * 512 * 1024
    small = torch.ops.rnnfast_C.empty_cached([3, 4], torch.float64)  # below the cache's 1 MiB: plain
    assert small.shape == (3, 4) and small.dtype == torch.float64


def test_cache_limit_zero_turns_it_off():
    _ext.ensure_loaded()
    before = torch.ops.rnnfast_C.cache_limit()
    try:
        torch.ops.rnnfast_C.cache_clear()
        torch.ops.rnnfast_C.cache_set_limit(0)
        assert torch.ops.rnnfast_C.cache_limit() == 0
        t = torch.ops.rnnfast_C.empty_cached([1 << 20], torch.float32)
        del t
        assert _info()[:2] == (0, 0)
        torch.ops.rnnfast_C.cache_set_limit(64 << 20)
        t = torch.ops.rnnfast_C.empty_cached([1 << 20], torch.float32)
        del t
        assert _info()[:2] == (4 << 20, 1)  # 4 MiB, in 2 MiB units
        torch.ops.rnnfast_C.cache_set_limit(2 << 20)  # lowering the limit frees what is beyond it
        assert _info()[:2] == (0, 0)
        with pytest.raises(RuntimeError, match="bytes must be >= 0"):
            torch.ops.rnnfast_C.cache_set_limit(-1)
    finally:
        torch.ops.rnnfast_C.cache_set_limit(before)
        torch.ops.rnnfast_C.cache_clear()


def test_default_limit_scales_with_memory():
    # An eighth of the physical memory, at most 4 GiB: one call's large tensors must fit (GRU B=256 T=200
    # H=512 forward+backward holds ~1.1 GiB of them). A fresh process, whose limit nobody set.
    code = (
        "import torch; from rnnfast import _ext; _ext.ensure_loaded(); "
        "print(torch.ops.rnnfast_C.cache_limit())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert int(out.stdout) == min(ram // 8, 4 << 30)
