"""The ``cpu`` backend's row split: where no team runs and several threads are free, the plain time loop
splits the batch rows into slices, one thread each, every slice running its own whole time loop
(``row_parts`` in csrc/cpu/recurrence.cpp). Every case first checks that the split really happens, then
compares with the float64 oracle, the unsplit loop (``RNNFAST_CPU_ROW_SPLIT_MIN_B=-1``) and torch.nn.

The thread count is set per test (OpenMP starts the threads even where the machine has fewer cores)."""

from __future__ import annotations

import pytest
import torch

import rnnfast
from rnnfast import _ext
from tests.utils import (
    CELLS,
    assert_close,
    assert_matches_oracle,
    assert_packed_module_matches,
    case_id,
    recurrence_inputs,
    row_parts,
    run_recurrence,
    team_parts,
    threads,
)

ok, why = _ext.status()
pytestmark = pytest.mark.skipif(not ok, reason=f"C++ CPU kernels unavailable: {why}")

OFF = "RNNFAST_CPU_ROW_SPLIT_MIN_B"


def ragged(B, T):
    """Unsorted lengths with empty rows and full rows scattered over every slice."""
    return [(b * 5 + 3) % (T + 1) for b in range(B)]


# (B, threads): B=20 on two threads splits 12 + 8 rows; B=37 on three 12 + 12 + 13 (a slice whose rows end
# inside a block of 4); below 16 rows, 4 rows a thread and even slices: B=9 on two 4 + 5, B=13 on three
# 4 + 4 + 5.
SPLITS = [(20, 2), (37, 3), (9, 2), (13, 3)]


def expected_parts(B, n):
    return min(n, B // (4 if B < 16 else 8))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B,n", SPLITS, ids=[case_id(B=b, threads=n) for b, n in SPLITS])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "ragged"])
def test_row_split_matches_oracle(cell, B, n, reverse, lengths):
    """H=33 (no team: G·H < 256), float64, every gradient."""
    T, H = 9, 33
    with threads(n):
        assert row_parts(cell, B, H, dtype=torch.float64, T=T) == expected_parts(B, n)
        assert team_parts(cell, T, B, H, torch.float64) == 1
        args = recurrence_inputs(cell, T, B, H, lengths=ragged(B, T) if lengths else None)
        assert_matches_oracle(cell, args, reverse, "cpu", 1e-11, seed=3)


# The backward's split below 8 rows, in place of a team: B=2 on two threads 1 + 1 rows, B=5 on three
# 1 + 2 + 2 (LSTM H=64 in float64: a team without the split, W_hh of 128 KiB).
@pytest.mark.parametrize("B,n", [(2, 2), (5, 3)], ids=[case_id(B=b, threads=n) for b, n in [(2, 2), (5, 3)]])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_backward_row_split_few_rows_matches_oracle(B, n, reverse):
    T, H = 9, 64
    with threads(n):
        assert row_parts("lstm", B, H, dtype=torch.float64, T=T, backward=True) == n
        assert row_parts("lstm", B, H, dtype=torch.float64, T=T) == 1
        assert torch.ops.rnnfast_C.team_parts(T, B, 3, H, False, torch.float64, forward=True) > 1
        assert team_parts("lstm", T, B, H, torch.float64) == 1
        args = recurrence_inputs("lstm", T, B, H, lengths=ragged(B, T))
        assert_matches_oracle("lstm", args, reverse, "cpu", 1e-11, seed=4)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_row_split_projected_lstm_matches_oracle(reverse):
    B, T, H, P = 24, 8, 40, 20
    with threads(3):
        assert row_parts("lstm", B, H, P, torch.float64, T) == 3
        args = recurrence_inputs("lstm", T, B, H, P=P, lengths=ragged(B, T))
        assert_matches_oracle("lstm", args, reverse, "cpu", 1e-11, seed=8)


@pytest.mark.parametrize("cell", CELLS)
def test_row_split_float32_matches_unsplit_loop(cell, monkeypatch):
    """float32 at H=64, B=64 on two threads against the one loop over all rows, both directions."""
    B, T, H = 64, 10, 64
    args = recurrence_inputs(cell, T, B, H, lengths=ragged(B, T), dtype=torch.float32)
    with threads(2):
        assert row_parts(cell, B, H, T=T) == 2 and team_parts(cell, T, B, H) == 1
        split = run_recurrence(cell, args, True, "cpu")
        monkeypatch.setenv(OFF, "-1")
        assert row_parts(cell, B, H) == 1
        plain = run_recurrence(cell, args, True, "cpu")
        g = torch.Generator().manual_seed(6)
        outs = [[o for o in r if o is not None] for r in (split, plain)]
        ups = [torch.randn(o.shape, generator=g) for o in outs[0]]
        inputs = [v for v in args.values() if isinstance(v, torch.Tensor) and v.requires_grad]
        grads = [torch.autograd.grad(o, inputs, ups) for o in outs]
    for name, a, b in zip(["y", "h_n", "c_n"], *outs):
        assert_close(name, a, b.detach(), atol=2e-6, rtol=2e-6)
    for i, (a, b) in enumerate(zip(*grads)):
        assert_close(f"grad[{i}]", a, b, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("cell,P", [("gru", 0), ("lstm", 0), ("lstm", 3)])
def test_row_split_gradcheck(cell, P):
    B, T, H = 17, 8, 5
    args = recurrence_inputs(cell, T, B, H, P=P, lengths=ragged(B, T))
    names = [k for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    with threads(2):
        assert row_parts(cell, B, H, P, torch.float64, T) == 2

        def f(*ts):
            a = dict(args, **dict(zip(names, ts)))
            return [o for o in run_recurrence(cell, a, False, "cpu") if o is not None]

        assert torch.autograd.gradcheck(f, [args[k] for k in names], fast_mode=True)


def test_row_split_choice(monkeypatch):
    """Which plain loops split their rows (float32)."""
    with threads(2):
        assert row_parts("gru", 16, 64) == 2
        assert row_parts("gru", 8, 64) == 2  # 4 rows a thread below 16 rows, with a small W_hh
        assert row_parts("gru", 7, 64) == 1  # fewer than 8 rows
        assert row_parts("gru", 12, 256) == 1  # below 16 rows W_hh (768 KiB) must be below a quarter of L2
        assert row_parts("gru", 16, 64, T=8) == 2
        assert row_parts("gru", 16, 64, T=7) == 1  # too few steps to earn the copy of W_hhᵀ back
        assert row_parts("gru", 256, 64) == 2
        assert row_parts("lstm", 256, 1024) == 1  # W_hh of 16 MiB: beyond a core's L2
        assert row_parts("lstm", 64, 64, P=32) == 2
        assert row_parts("gru", 64, 512) == 1  # beyond the blocked kernel's products
        monkeypatch.setenv(OFF, "64")
        assert row_parts("gru", 32, 64) == 1
        assert row_parts("gru", 64, 64) == 2
        monkeypatch.setenv(OFF, "-1")
        assert row_parts("gru", 64, 64) == 1
        monkeypatch.delenv(OFF)
        # the split goes before a team (GRU H=128 B=16 takes one without it, test_cpu_team.py)
        assert team_parts("gru", 200, 16, 128) == 1 and row_parts("gru", 16, 128) == 2
        # below 8 rows the backward splits where a team would run (GRU H=128), not where the plain loop
        # would (RNN, GRU H=64), nor with W_hh beyond a quarter of L2 (GRU H=512: 3 MiB)
        assert row_parts("gru", 4, 128, backward=True) == 2 and row_parts("gru", 4, 128) == 1
        assert team_parts("gru", 100, 4, 128) == 1
        assert torch.ops.rnnfast_C.team_parts(100, 4, 2, 128, False, torch.float32, forward=True) == 2
        assert row_parts("gru", 4, 64, backward=True) == 1
        assert row_parts("rnn_tanh", 4, 128, backward=True) == 1
        assert row_parts("gru", 4, 512, backward=True) == 1
        assert row_parts("gru", 4, 128, T=7, backward=True) == 1
    with threads(3):
        assert row_parts("gru", 20, 64) == 2  # at least 8 rows a thread from 16 rows
        assert row_parts("gru", 24, 64) == 3
        assert row_parts("gru", 12, 64) == 3  # at least 4 below
    with threads(1):
        assert row_parts("gru", 64, 64) == 1


def test_row_split_lstm_module_matches_torch_nn():
    """Two layers, bidirectional, projection, packed unsorted input, float64, every gradient."""
    B, T, I, H, P = 20, 8, 12, 24, 10
    ref = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P).double()
    mod = rnnfast.from_torch(ref, backend="cpu")
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([max(1, n) for n in ragged(B, T)])
    with threads(2):
        assert row_parts("lstm", B, H, P, torch.float64, T) == 2
        assert_packed_module_matches(mod, ref, x, lengths)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("with_lengths", [True, False], ids=["ragged", "full"])
def test_plain_loop_rows_on_all_threads_match_oracle(cell, reverse, with_lengths, monkeypatch):
    """The plain loop with B·G·H >= 16K: each step's cell runs over slices of the rows on two threads
    (for_rows), with ragged unsorted lengths (empty rows too) followed by the output and state copies,
    without lengths writing y[t] itself, which the next step reads; H=65 (no team: one panel), float64,
    every gradient."""
    T, B, H = 7, 300, 65
    monkeypatch.setenv(OFF, "-1")
    with threads(2):
        assert row_parts(cell, B, H, dtype=torch.float64, T=T) == 1
        assert team_parts(cell, T, B, H, torch.float64) == 1
        args = recurrence_inputs(cell, T, B, H, lengths=ragged(B, T) if with_lengths else None)
        assert_matches_oracle(cell, args, reverse, "cpu", 1e-11, seed=4)
