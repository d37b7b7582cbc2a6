"""The ``cpu`` backend's team loops: at small batch, with several threads, the forward and backward time
loops run on a team of threads that each own a slice of the hidden units for the whole call
(csrc/cpu/team.h, ``team_parts`` in csrc/cpu/recurrence.cpp). Each case forces the team
(``flags(path="team")``), checks that it really runs, then compares with the float64 oracle, the plain
loop (``path="plain"``) and torch.nn.

The thread count is set per test (OpenMP starts the threads even where the machine has fewer cores,
so these run everywhere; oversubscribed, the barrier yields)."""

from __future__ import annotations

import pytest
import torch

import rnnfast
from rnnfast import _ext
from rnnfast.backends import cpu as cpu_policy
from rnnfast.ops.recurrence import common
from tests.utils import (
    CELLS,
    assert_close,
    assert_matches_oracle,
    assert_packed_module_matches,
    case_id,
    recurrence_inputs,
    run_recurrence,
    team_parts,
    threads,
)

ok, why = _ext.status()
pytestmark = pytest.mark.skipif(not ok, reason=f"C++ CPU kernels unavailable: {why}")


@pytest.fixture(autouse=True)
def forced_team():
    with cpu_policy.flags(path="team"):
        yield


# float64 (panels of 32 units with AVX-512, 12 with AVX2), a W_hh slice within a 512 KiB L2 on two
# threads. H per cell: an RNN takes a team from H=256 (G·H >= 256); GRU H=160 and LSTM H=128 split in
# slices that end inside a panel where the panel width does not divide them.
H_OF = {"rnn_tanh": 256, "rnn_relu": 256, "gru": 160, "lstm": 128}
# B=5: a block of 4 rows and one of 1; ragged unsorted lengths with an empty row shrink the products
# and freeze rows at different steps; B=1 the one-row product.
TEAM_CASES = [(1, 8, None), (5, 7, [7, 0, 3, 7, 5]), (3, 9, [2, 9, 9])]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B,T,lengths", TEAM_CASES, ids=[case_id(B=c[0], T=c[1]) for c in TEAM_CASES])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("n", [2, 3], ids=["threads2", "threads3"])
def test_team_matches_oracle(cell, B, T, lengths, reverse, n):
    H = H_OF[cell]
    with threads(n):
        assert team_parts(cell, T, B, H, torch.float64) > 1, f"expected a team at {cell} B={B} T={T} H={H}"
        args = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=torch.float64)
        assert_matches_oracle(cell, args, reverse, "cpu", 1e-11, seed=11)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("n", [2, 4], ids=["threads2", "threads4"])
def test_team_float32_matches_plain_loop(cell, n):
    """float32, one team per thread count, against the plain loop in the same process and the oracle."""
    B, T, H = 4, 12, 256
    lengths = [12, 5, 12, 1]
    args = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=torch.float32)
    with threads(n):
        assert team_parts(cell, T, B, H) == n
        team = run_recurrence(cell, args, False, "cpu")
        with cpu_policy.flags(path="plain"):
            assert team_parts(cell, T, B, H) == 1
            plain = run_recurrence(cell, args, False, "cpu")
    for name, a, b in zip(["y", "h_n", "c_n"], team, plain):
        if a is not None:
            assert_close(name, a, b.detach(), atol=2e-6, rtol=2e-6)
    with threads(n):
        assert_matches_oracle(cell, args, True, "cpu", 3e-5, seed=4)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_team_gradcheck(cell):
    B, T, H = 3, 5, H_OF[cell]
    args = recurrence_inputs(cell, T, B, H, lengths=[5, 2, 4])
    names = [k for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    with threads(2):
        assert team_parts(cell, T, B, H, torch.float64) == 2

        def f(*ts):
            a = dict(args, **dict(zip(names, ts)))
            return [o for o in run_recurrence(cell, a, False, "cpu") if o is not None]

        assert torch.autograd.gradcheck(f, [args[k] for k in names], fast_mode=True)


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
@cpu_policy.flags(path="auto")
def test_one_row_large_w_default_paths_match_oracle(cell):
    """One row with a W_hh of 2^18+ values, default paths (the forward's matvec loop and the backward's
    team where the cost model picks them): still the oracle."""
    B, T, H = 1, 50, 512
    with threads(2):
        args = recurrence_inputs(cell, T, B, H, dtype=torch.float32)
        assert_matches_oracle(cell, args, False, "cpu", 1e-4, seed=5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_team_beyond_l2_matches_oracle(cell):
    """B=3, H=1024: each thread's slice of W_hh (6 / 8 MiB) is beyond L2, the team still runs; ragged rows."""
    B, T, H = 3, 6, 1024
    with threads(2):
        _ext.ensure_loaded()
        code = common.CELL_CODE[cell]
        assert torch.ops.rnnfast_C.team_parts(T, B, code, H, False, torch.float32) == 2
        assert torch.ops.rnnfast_C.team_parts(T, B, code, H, False, torch.float32, forward=True) == 2
        args = recurrence_inputs(cell, T, B, H, lengths=[6, 4, 1], dtype=torch.float32)
        assert_matches_oracle(cell, args, True, "cpu", 1e-4, seed=9)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_team_beyond_l2_many_rows_matches_oracle(cell):
    """B=20, H=512: a team of two over 20 rows, slices of 3 / 4 MiB; ragged rows, reverse."""
    B, T, H = 20, 6, 512
    with threads(2):
        code = common.CELL_CODE[cell]
        assert torch.ops.rnnfast_C.team_parts(T, B, code, H, False, torch.float32) == 2
        assert torch.ops.rnnfast_C.team_parts(T, B, code, H, False, torch.float32, forward=True) == 2
        lengths = [6] * 7 + [5] * 5 + [3] * 4 + [1] * 4
        args = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=torch.float32)
        assert_matches_oracle(cell, args, True, "cpu", 1e-4, seed=10)


def test_team_choice_properties():
    """Forced, a team takes one member per thread up to one per panel, never with a projection or one
    thread; by default any team has 2 to that many members."""
    _ext.ensure_loaded()

    def parts(T, B, cell, H, proj, forward=False):
        return torch.ops.rnnfast_C.team_parts(T, B, common.CELL_CODE[cell], H, proj, torch.float32, forward)

    for n in (1, 2, 3):
        with threads(n):
            for T, B, cell, H in [(200, 1, "lstm", 128), (3, 16, "gru", 256), (50, 300, "rnn_tanh", 1024)]:
                for forward in (False, True):
                    assert parts(T, B, cell, H, True, forward) == 1  # projection
                    got = parts(T, B, cell, H, False, forward)
                    assert (got == 1) if n == 1 else (2 <= got <= n), (n, T, B, cell, H, got)
                    assert H < 1024 or got == n  # H=1024 has a panel for every thread
                    with cpu_policy.flags(path="auto"):
                        d = parts(T, B, cell, H, False, forward)
                        assert d == 1 or 2 <= d <= n, (n, T, B, cell, H, d)
                    with cpu_policy.flags(path="plain"):
                        assert parts(T, B, cell, H, False, forward) == 1


@pytest.mark.parametrize("mode", ["nn.GRU", "nn.LSTM"])
def test_team_modules_match_torch_nn(mode):
    """Two layers, bidirectional, packed unsorted input, float64, every gradient, against torch.nn."""
    B, T = 3, 9
    kind = mode.split(".")[1]
    H = H_OF[kind.lower()]
    ref = getattr(torch.nn, kind)(H, H, num_layers=2, bidirectional=True).double()
    mod = rnnfast.from_torch(ref, backend="cpu")
    x = torch.randn(T, B, H, dtype=torch.float64)
    lengths = torch.tensor([4, 9, 6])
    with threads(2):
        assert team_parts(kind.lower(), T, B, H, torch.float64) == 2
        assert_packed_module_matches(mod, ref, x, lengths)


@pytest.mark.parametrize("cell,H", [("gru", 128), ("lstm", 128), ("rnn_tanh", 256)])
def test_team_of_many_rows_matches_oracle(cell, H):
    """B=100 (a W_hh of at most 2^16 values keeps its team up to 128 rows), ragged, float64."""
    B, T = 100, 5
    lengths = [(b * 7) % (T + 1) for b in range(B)]
    with threads(2):
        assert team_parts(cell, T, B, H, torch.float64) == 2
        args = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=torch.float64)
        assert_matches_oracle(cell, args, True, "cpu", 1e-11, seed=2)


# Small H: a forced team whose H has fewer than two whole panels (AVX-512: 64 float32 units) slices it in
# panels of half the width in the forward, the backward's product keeps whole panels over its H columns.
# B=3 and 4 (a row block of 3), H=64 and 96 (two and three narrow panels), ragged rows, both directions;
# float32 against the oracle.
@pytest.mark.parametrize("cell,H", [("lstm", 64), ("lstm", 96), ("gru", 96)])
@pytest.mark.parametrize("B", [3, 4])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_team_narrow_panels_match_oracle(cell, H, B, reverse):
    _ext.ensure_loaded()
    code = common.CELL_CODE[cell]
    T = 9
    with threads(2):
        assert torch.ops.rnnfast_C.team_parts(T, B, code, H, False, torch.float32, forward=True) == 2
        lengths = [9, 7, 2, 1][:B]
        args = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=torch.float32)
        assert_matches_oracle(cell, args, reverse, "cpu", 1e-4, seed=11)
