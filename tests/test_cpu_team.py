"""The ``cpu`` backend's team loops: at small batch, with several threads, the forward and backward time
loops run on a team of threads that each own a slice of the hidden units for the whole call
(csrc/cpu/team.h, ``team_parts`` in csrc/cpu/recurrence.cpp). Every case first checks that the team
really runs, then compares with the float64 oracle, the plain one-thread loop and torch.nn.

The thread count is set per test (OpenMP starts the threads even where the machine has fewer cores,
so these run everywhere; oversubscribed, the barrier yields)."""

from __future__ import annotations

import pytest
import torch

import rnnfast
from rnnfast import _ext
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


def avx512_other() -> bool:
    """Whether the kernels run their AVX-512 code on a CPU other than Intel's (avx512_other() in
    csrc/cpu/matmul.h), where the teams' limits differ."""
    _ext.ensure_loaded()
    return torch.ops.rnnfast_C.isa_level() == 4 and "GenuineIntel" not in open("/proc/cpuinfo").read()


@pytest.fixture(autouse=True)
def no_row_split(monkeypatch):
    """From 16 rows the row split (tests/test_cpu_row_split.py) goes before a team: off here."""
    monkeypatch.setenv("RNNFAST_CPU_ROW_SPLIT_MIN_B", "-1")


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
def test_team_float32_matches_plain_loop(cell, n, monkeypatch):
    """float32, one team per thread count, against the plain loop in the same process and the oracle."""
    B, T, H = 4, 12, 256
    lengths = [12, 5, 12, 1]
    args = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=torch.float32)
    with threads(n):
        assert team_parts(cell, T, B, H) == n
        team = run_recurrence(cell, args, False, "cpu")
        monkeypatch.setenv("RNNFAST_CPU_TEAM_MIN_WORK", "-1")
        assert team_parts(cell, T, B, H) == 1
        plain = run_recurrence(cell, args, False, "cpu")
    for name, a, b in zip(["y", "h_n", "c_n"], team, plain):
        if a is not None:
            assert_close(name, a, b.detach(), atol=2e-6, rtol=2e-6)
    monkeypatch.delenv("RNNFAST_CPU_TEAM_MIN_WORK")
    with threads(n):
        assert_matches_oracle(cell, args, True, "cpu", 3e-5, seed=4)


@pytest.mark.parametrize("cell,H", [("gru", 96), ("gru", 160), ("lstm", 64), ("lstm", 160)])
def test_team_slices_by_panels_match_oracle(cell, H, monkeypatch):
    """RNNFAST_CPU_TEAM_EVEN_SLICES=0 (slices on multiples of the panel width, uneven units) is a supported
    setting: float64, ragged, both directions, two and three threads."""
    monkeypatch.setenv("RNNFAST_CPU_TEAM_EVEN_SLICES", "0")
    args = recurrence_inputs(cell, 7, 5, H, lengths=[7, 0, 3, 7, 5], dtype=torch.float64)
    for n in (2, 3):
        with threads(n):
            assert team_parts(cell, 7, 5, H, torch.float64) > 1
            for reverse in (False, True):
                assert_matches_oracle(cell, args, reverse, "cpu", 1e-11, seed=12)


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
def test_one_row_short_forward_takes_matvec(cell):
    """One row with a W_hh of 2^18+ values over fewer than 128 steps: the forward runs the matvec loop
    (no slices to pack), the backward its team, and the two together still match the oracle."""
    B, T, H = 1, 50, 512
    with threads(2):
        _ext.ensure_loaded()
        code = common.CELL_CODE[cell]
        backward = torch.ops.rnnfast_C.team_parts(T, B, code, H, False, torch.float32)
        assert torch.ops.rnnfast_C.team_parts(T, B, code, H, False, torch.float32, forward=True) == 1
        assert torch.ops.rnnfast_C.team_parts(200, B, code, H, False, torch.float32, forward=True) == backward
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
    _ext.ensure_loaded()
    if torch.ops.rnnfast_C.isa_level() != 3 and not avx512_other():
        pytest.skip("teams beyond L2 over more than 8 rows: AVX2, and AVX-512 on CPUs other than Intel's")
    B, T, H = 20, 6, 512
    with threads(2):
        code = common.CELL_CODE[cell]
        assert torch.ops.rnnfast_C.team_parts(T, B, code, H, False, torch.float32) == 2
        assert torch.ops.rnnfast_C.team_parts(T, B, code, H, False, torch.float32, forward=True) == 2
        lengths = [6] * 7 + [5] * 5 + [3] * 4 + [1] * 4
        args = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=torch.float32)
        assert_matches_oracle(cell, args, True, "cpu", 1e-4, seed=10)


def test_team_choice(monkeypatch):
    """Which loops take a team, on two threads (float32)."""
    _ext.ensure_loaded()
    lstm, gru, rnn = (common.CELL_CODE[c] for c in ("lstm", "gru", "rnn_tanh"))

    def parts(T, B, cell, H, proj):
        return torch.ops.rnnfast_C.team_parts(T, B, cell, H, proj, torch.float32)

    with threads(2):
        assert parts(200, 1, lstm, 128, False) == 2
        assert parts(200, 16, gru, 256, False) == 2
        assert parts(200, 1, rnn, 256, False) == 2
        assert parts(200, 16, rnn, 128, False) == 1  # G·H < 256
        if torch.ops.rnnfast_C.isa_level() == 4:
            # one panel (64 float32 units; 24 with AVX2), or two of half the width (narrow panels, opt-in)
            assert parts(200, 16, lstm, 64, False) == 1
            monkeypatch.setenv("RNNFAST_CPU_TEAM_NARROW_PANELS", "1")
            assert parts(200, 16, lstm, 64, False) == 2
            monkeypatch.delenv("RNNFAST_CPU_TEAM_NARROW_PANELS")
        # a real GEMM per step: the plain loop from 64 rows, 128 on AVX-512 CPUs other than Intel's
        other512 = avx512_other()
        assert parts(200, 64, lstm, 256, False) == (2 if other512 else 1)
        assert parts(200, 128, lstm, 256, False) == 1 and parts(200, 127, gru, 512, False) == (
            2 if other512 else 1
        )
        monkeypatch.setenv("RNNFAST_CPU_TEAM_MAX_B", "64")
        assert parts(200, 64, lstm, 256, False) == 1 and parts(200, 63, lstm, 256, False) == 2
        monkeypatch.delenv("RNNFAST_CPU_TEAM_MAX_B")
        assert parts(200, 128, lstm, 128, False) == 2  # ... but W_hh of 2^16 values: a team up to B=128
        assert parts(200, 129, lstm, 128, False) == 1
        assert parts(200, 1, lstm, 128, True) == 1  # projection
        assert parts(2, 1, lstm, 128, False) == 1  # too short to pack W
        # Slices beyond L2 (8 MiB each at H=1024) from 2 to 32 rows with AVX2, to 127 with AVX-512 on CPUs
        # other than Intel's, else to 8 (and there from 16 rows and 2^18 multiply-adds a row the plain
        # loop's products are oneDNN's)
        avx2 = torch.ops.rnnfast_C.isa_level() == 3
        most = 127 if other512 else 32 if avx2 else 8
        assert parts(200, 32, lstm, 512, False) == (2 if avx2 or other512 else 1)
        assert parts(200, 2, lstm, 1024, False) == 2 and parts(200, most, gru, 1024, False) == 2
        assert parts(200, 1, lstm, 1024, False) == 1 and parts(200, most + 1, lstm, 1024, False) == 1
        monkeypatch.setenv("RNNFAST_CPU_TEAM_BEYOND_L2_MAX_B", "8")
        assert parts(200, 8, gru, 1024, False) == 2 and parts(200, 12, lstm, 1024, False) == 1
        monkeypatch.delenv("RNNFAST_CPU_TEAM_BEYOND_L2_MAX_B")
        if other512:
            # RNNFAST_CPU_TEAM_WIDE_W=0: the plain loop (oneDNN's products) from 16 rows and 2^18 a row
            assert parts(200, 16, gru, 512, False) == 2 and parts(200, 16, rnn, 1024, False) == 2
            monkeypatch.setenv("RNNFAST_CPU_TEAM_WIDE_W", "0")
            assert parts(200, 16, gru, 512, False) == 1 and parts(200, 15, gru, 512, False) == 2
            assert parts(200, 16, rnn, 1024, False) == 1 and parts(200, 16, lstm, 256, False) == 2
    with threads(1):
        assert parts(200, 1, lstm, 128, False) == 1


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


# Small H with AVX-512 (one 64-unit float32 panel below H=128): with RNNFAST_CPU_TEAM_NARROW_PANELS=1 the
# forward team slices it in panels of half the width, the backward's product keeps whole panels over its H
# columns. B=3 and 4 (a row block of 3), H=64 and 96
# (two and three narrow panels, G·H >= 256), ragged rows, both directions; float32 against the oracle.
@pytest.mark.parametrize("cell,H", [("lstm", 64), ("lstm", 96), ("gru", 96)])
@pytest.mark.parametrize("B", [3, 4])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_team_narrow_panels_match_oracle(cell, H, B, reverse, monkeypatch):
    _ext.ensure_loaded()
    if torch.ops.rnnfast_C.isa_level() != 4:
        pytest.skip("narrow panels serve AVX-512's 64-unit float32 panels (no team below 128 units)")
    code = common.CELL_CODE[cell]
    T = 9
    with threads(2):
        monkeypatch.setenv("RNNFAST_CPU_TEAM_NARROW_PANELS", "0")
        whole = torch.ops.rnnfast_C.team_parts(T, B, code, H, False, torch.float32, forward=True)
        monkeypatch.setenv("RNNFAST_CPU_TEAM_NARROW_PANELS", "1")
        assert torch.ops.rnnfast_C.team_parts(T, B, code, H, False, torch.float32, forward=True) == 2
        assert whole == (2 if H >= 128 else 1)
        lengths = [9, 7, 2, 1][:B]
        args = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=torch.float32)
        assert_matches_oracle(cell, args, reverse, "cpu", 1e-4, seed=11)
