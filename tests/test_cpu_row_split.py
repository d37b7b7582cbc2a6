"""The ``cpu`` backend's row split: where no team runs and several threads are free, the plain time loop
splits the batch rows into slices, one thread each, every slice running its own whole time loop
(``row_parts`` in csrc/cpu/recurrence.cpp). Each case forces the split (``flags(path="rows")``), checks
that it really happens, then compares with the float64 oracle, the unsplit loop (``path="plain"``) and
torch.nn.

The thread count is set per test (OpenMP starts the threads even where the machine has fewer cores)."""

from __future__ import annotations

import pytest
import torch

import rnnfast
from rnnfast import _ext
from rnnfast.backends import cpu as cpu_policy
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


@pytest.fixture(autouse=True)
def forced_rows():
    with cpu_policy.flags(path="rows"):
        yield


def ragged(B, T):
    """Unsorted lengths with empty rows and full rows scattered over every slice."""
    return [(b * 5 + 3) % (T + 1) for b in range(B)]


# (B, threads): B=20 on two threads splits 12 + 8 rows; B=37 on three 12 + 12 + 13 (a slice whose rows end
# inside a block of 4); below 8 rows a thread, even slices: B=9 on two 4 + 5, B=13 on three 4 + 4 + 5,
# B=2 on two 1 + 1, B=5 on three 1 + 2 + 2.
SPLITS = [(20, 2), (37, 3), (9, 2), (13, 3), (2, 2), (5, 3)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B,n", SPLITS, ids=[case_id(B=b, threads=n) for b, n in SPLITS])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "ragged"])
def test_row_split_matches_oracle(cell, B, n, reverse, lengths):
    """H=33 (no team: G·H < 256), float64, every gradient."""
    T, H = 9, 33
    with threads(n):
        assert row_parts(cell, B, H, dtype=torch.float64, T=T) == n
        assert row_parts(cell, B, H, dtype=torch.float64, T=T, backward=True) == n
        assert team_parts(cell, T, B, H, torch.float64) == 1
        args = recurrence_inputs(cell, T, B, H, lengths=ragged(B, T) if lengths else None)
        assert_matches_oracle(cell, args, reverse, "cpu", 1e-11, seed=3)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_row_split_projected_lstm_matches_oracle(reverse):
    B, T, H, P = 24, 8, 40, 20
    with threads(3):
        assert row_parts("lstm", B, H, P, torch.float64, T) == 3
        args = recurrence_inputs("lstm", T, B, H, P=P, lengths=ragged(B, T))
        assert_matches_oracle("lstm", args, reverse, "cpu", 1e-11, seed=8)


@pytest.mark.parametrize("cell", CELLS)
def test_row_split_float32_matches_unsplit_loop(cell):
    """float32 at H=64, B=64 on two threads against the one loop over all rows, both directions."""
    B, T, H = 64, 10, 64
    args = recurrence_inputs(cell, T, B, H, lengths=ragged(B, T), dtype=torch.float32)
    with threads(2):
        assert row_parts(cell, B, H, T=T) == 2 and team_parts(cell, T, B, H) == 1
        split = run_recurrence(cell, args, True, "cpu")
        g = torch.Generator().manual_seed(6)
        inputs = [v for v in args.values() if isinstance(v, torch.Tensor) and v.requires_grad]
        split_out = [o for o in split if o is not None]
        ups = [torch.randn(o.shape, generator=g) for o in split_out]
        split_grads = torch.autograd.grad(split_out, inputs, ups)
        with cpu_policy.flags(path="plain"):
            assert row_parts(cell, B, H) == 1 and team_parts(cell, T, B, H) == 1
            plain_out = [o for o in run_recurrence(cell, args, True, "cpu") if o is not None]
            plain_grads = torch.autograd.grad(plain_out, inputs, ups)
        outs, grads = (split_out, plain_out), (split_grads, plain_grads)
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


def test_row_split_choice_properties():
    """Forced, the split takes every thread up to one row each, never with one thread; by default any
    split has at least 2 slices and at most one per thread."""
    for n in (1, 2, 3):
        with threads(n):
            for B in (1, 2, 5, 16, 64, 300):
                for cell, H in (("gru", 64), ("lstm", 512), ("rnn_tanh", 33)):
                    forced = row_parts(cell, B, H)
                    assert forced == (min(n, B) if n > 1 and B > 1 else 1), (n, B, cell, H)
                    assert team_parts(cell, 100, B, H) == 1  # the forced split leaves no team
                    with cpu_policy.flags(path="auto"):
                        for backward in (False, True):
                            parts = row_parts(cell, B, H, backward=backward)
                            assert parts == 1 or 2 <= parts <= min(n, B), (n, B, cell, H, parts)


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
@cpu_policy.flags(path="plain")
def test_plain_loop_rows_on_all_threads_match_oracle(cell, reverse, with_lengths):
    """The plain loop with B·G·H >= 16K: each step's cell runs over slices of the rows on two threads
    (for_rows), with ragged unsorted lengths (empty rows too) followed by the output and state copies,
    without lengths writing y[t] itself, which the next step reads; H=65 (no team: one panel), float64,
    every gradient."""
    T, B, H = 7, 300, 65
    with threads(2):
        assert row_parts(cell, B, H, dtype=torch.float64, T=T) == 1
        assert team_parts(cell, T, B, H, torch.float64) == 1
        args = recurrence_inputs(cell, T, B, H, lengths=ragged(B, T) if with_lengths else None)
        assert_matches_oracle(cell, args, reverse, "cpu", 1e-11, seed=4)
