"""Every path of the cpu kernels, forced with ``rnnfast.backends.cpu.flags``, against the float64 oracle:
each loop split (team, row split, plain loop, and the defaults) with each product library (blocked kernel,
oneDNN, ATen, and the defaults), every cell, odd shapes (H=33, one row, one step, ragged lengths with an
empty row), both directions, gradients included; and a module under each against torch.nn. The same on
every CPU: a forced path that cannot run a call takes the plain loop, so every case runs everywhere."""

from __future__ import annotations

import pytest
import torch

import rnnfast
from rnnfast import _ext
from rnnfast.backends import cpu as cpu_policy
from tests.utils import CELLS, assert_matches_oracle, assert_packed_module_matches, recurrence_inputs, threads

ok, why = _ext.status()
pytestmark = pytest.mark.skipif(not ok, reason=f"C++ CPU kernels unavailable: {why}")

PATHS = ["auto", "team", "rows", "plain"]
GEMMS = ["auto", "blocked", "onednn", "aten"]
# (T, B, H, lengths): odd H, a ragged batch with an empty row; one row over one step; a projection-free
# mid size whose per-step products are large enough for the libraries (K·M = 2^18 at H=256 for an LSTM).
SHAPES = [(5, 3, 33, [5, 0, 3]), (1, 1, 33, None), (6, 5, 256, [6, 6, 4, 2, 1])]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("gemm", GEMMS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,H,lengths", SHAPES, ids=["T5-B3-H33", "T1-B1-H33", "T6-B5-H256"])
def test_forced_paths_match_oracle(path, gemm, cell, T, B, H, lengths):
    args = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=torch.float64)
    with threads(2), cpu_policy.flags(path=path, gemm=gemm):
        for reverse in (False, True):
            assert_matches_oracle(cell, args, reverse, "cpu", 1e-11, seed=T + B + H)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("gemm", ["auto", "blocked", "aten"])
def test_forced_paths_float32_match_oracle(path, gemm):
    """float32 (the kernels' fast math) on an LSTM with a projection: the team cannot run it (plain loop)."""
    for P in (0, 7):
        args = recurrence_inputs("lstm", 7, 6, 64, P=P, lengths=[7, 7, 5, 3, 3, 1], dtype=torch.float32)
        with threads(2), cpu_policy.flags(path=path, gemm=gemm):
            assert_matches_oracle("lstm", args, True, "cpu", 1e-4, seed=P)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["GRU", "LSTM", "RNN"])
def test_forced_paths_module_matches_torch_nn(path, kind):
    """Two layers, bidirectional, packed unsorted input, float64, every gradient."""
    torch.manual_seed(3)
    ref = getattr(torch.nn, kind)(9, 40, num_layers=2, bidirectional=True).double()
    mod = rnnfast.from_torch(ref, backend="cpu")
    x = torch.randn(6, 4, 9, dtype=torch.float64)
    with threads(2), cpu_policy.flags(path=path):
        assert_packed_module_matches(mod, ref, x, torch.tensor([3, 6, 1, 5]))
