"""The benchmark harness: FLOP/byte counts, correctness gate, CLI end to end, pytest-benchmark suite,
profile and the results table. Timings themselves are never asserted (speed lives in benchmarks)."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from rnnfast import _ext
from rnnfast.bench import main_bench, main_profile, plot, registry, roofline, runner
from rnnfast.nn.transitions import REDUCE, SHIFT

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine idle OpenMP threads spin and slow these runs
    several-fold (nothing here measures speed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# Counts, against hand-computed values


@pytest.mark.parametrize(
    "case, fwd_flop",
    [
        # GRU, B=2 T=3 I=4 H=5: N=6 tokens, 2·N·3H·(I+H) = 2·6·15·9
        (registry.Case("gru", B=2, T=3, I=4, H=5), 1620),
        # one step of the bare GRU op is the recurrent GEMM only: 6·B·H² = 6·2·25
        (registry.Case("gru_op", B=2, T=1, H=5), 300),
        # RNN: 2·N·H·(I+H) = 2·6·5·9
        (registry.Case("rnn", B=2, T=3, I=4, H=5), 540),
        # LSTM, 2 layers, bidirectional: layer 0 2·(2·6·20·(4+5)) = 4320,
        # layer 1 (I = 2H = 10) 2·(2·6·20·15) = 7200
        (registry.Case("lstm", B=2, T=3, I=4, H=5, layers=2, bidir=True), 11520),
        # tree-LSTM composition: 12·R·H pointwise = 12·4·8
        (registry.Case("tree_lstm", R=4, H=8), 384),
        # reduce: 2·R·5H·(2H+HT) + 12·R·H = 2·4·40·19 + 384
        (registry.Case("tree_lstm_reduce", R=4, H=8, HT=3), 6464),
        # SPINN, B=1 T=5 H=4 HT=2: the one example has N = 3 leaves, so ΣR = 2 reduced rows.
        # reduce 2·ΣR·5H·(2H+HT) = 2·2·20·10 = 800, composition 12·ΣR·H = 96,
        # tracker at every step 2·T·B·4HT·(3H+HT) = 2·5·8·14 = 1120
        (registry.Case("spinn", B=1, T=5, H=4, HT=2), 2016),
        # without a tracker only the children's GEMM and the composition: 2·2·20·8 + 96
        (registry.Case("spinn", B=1, T=5, H=4), 736),
    ],
    ids=lambda v: v.id if isinstance(v, registry.Case) else str(v),
)
def test_flops_hand_computed(case, fwd_flop):
    assert registry.flops_of(case) == fwd_flop
    assert registry.flops_of(registry.Case(**{**case.__dict__, "mode": "fwdbwd"})) == 3 * fwd_flop
    assert registry.flops_of(registry.Case(**{**case.__dict__, "mode": "infer"})) == fwd_flop


def test_bytes_and_tokens_hand_computed():
    tree = registry.Case("tree_lstm", R=4, H=8)
    assert registry.bytes_of(tree) == 9 * 4 * 8 * 4  # lstm_in 5RH + c_l, c_r + h, c; float32
    assert registry.tokens_of(tree) == 4
    # gru_op B=2 T=3 H=5 float64: gi 6·15 + y 6·5 + w_hh 75 + b_hh 15 + h0, h_n 2·10 = 230 elements
    assert registry.bytes_of(registry.Case("gru_op", dtype="float64", B=2, T=3, H=5)) == 230 * 8
    assert registry.tokens_of(registry.Case("gru", B=2, T=3, I=4, H=5)) == 6


def test_packed_counts_use_the_real_lengths():
    case = registry.Case("rnn", B=5, T=8, I=3, H=4, packed=True)
    w = case.spec.make(case, torch.device("cpu"))
    n = int(w.data["lengths"].sum())
    assert int(w.data["lengths"].max()) == 8 and n < 5 * 8
    assert registry.tokens_of(case) == n
    assert registry.flops_of(case) == 2 * n * 4 * (3 + 4)


def test_spinn_counts_follow_the_generated_trees():
    case = registry.Case("spinn", "fwdbwd", B=6, T=11, H=5, HT=3)
    w = case.spec.make(case, torch.device("cpu"))
    tr = w.data["transitions"]
    assert tuple(tr.shape) == (11, 6) and tuple(w.data["buffers"].shape) == (6, 6, 10)
    shifts = (tr == SHIFT).sum(0)
    assert int(shifts.max()) == 6 and int(shifts.min()) >= 6 * 3 // 4 and len(set(shifts.tolist())) > 1
    R = int((tr == REDUCE).sum())
    assert R == int((shifts - 1).sum())
    tracker = 2 * 11 * 6 * 12 * (15 + 3)
    assert registry.flops_of(case) == 3 * (2 * R * 25 * 13 + 12 * R * 5 + tracker)
    assert registry.tokens_of(case) == 6 * 11
    with pytest.raises(ValueError, match="T: spinn"):
        registry.flops_of(registry.Case("spinn", B=2, T=8, H=4))


def test_auto_provider_is_the_module_as_users_get_it():
    """Modules list ``auto`` (rnnfast with backend="auto") after the baseline; it matches torch.nn in
    every mode; bare ops do not list it."""
    for case in registry.grid("tiny", "cpu", ops=["lstm", "gru"]):
        names = [p[0] for p in registry.providers(case, "cpu")]
        assert names[:2] == ["torch.nn", "auto"], names
        w = case.spec.make(case, torch.device("cpu"))
        bound = registry.bind(case, "auto", w)
        base = runner.step_fn(w, registry.bind(case, "torch.nn", w))()
        got = runner.step_fn(w, bound)()
        assert len(got) == len(base)
        err, where = runner.max_rel_error(got, base)
        assert err <= runner.tolerance(torch.float32, "cpu"), f"{case.id}: {where} {err:.2e}"
    for case in registry.grid("tiny", "cpu", ops=["lstm_op"]):
        assert "auto" not in [p[0] for p in registry.providers(case, "cpu")]


def test_spinn_providers_and_check():
    """The list-based reference is the baseline and listed once; the thin stack, with every tree-LSTM
    cell backend that runs here (the reference cell included, though not listed under its name), matches
    its root h and the gradients of the leaf buffers, the null and every parameter."""
    for case in registry.grid("tiny", "cpu", ops=["spinn"], modes=["fwdbwd"]):
        names = [p[0] for p in registry.providers(case, "cpu")]
        assert names[0] == "reference" and names.count("reference") == 1 and "cpu" in names
        w = case.spec.make(case, torch.device("cpu"))
        base_bound = registry.bind(case, "reference", w)
        base = runner.step_fn(w, base_bound)()
        n_params = 8 if case.HT else 3  # reduce left (w, b), right, track; tracker LSTMCell (4)
        assert len(base_bound.params) == n_params
        assert len(base) == 1 + len(w.leaves) + n_params
        assert tuple(base[0].shape) == (case.B, case.H) and all(t.abs().sum() > 0 for t in base)
        backends_here = [n for n, ok, _ in registry.providers(case, "cpu") if ok and n != "reference"]
        for backend in ["reference", *backends_here]:
            got = runner.step_fn(w, case.spec.run_backend(w, backend))()
            err, where = runner.max_rel_error(got, base)
            assert err <= runner.tolerance(torch.float32, "cpu"), f"{case.id} {backend}: {where} {err:.2e}"
        # A wrong parameter shows up in the check.
        bad = case.spec.run_backend(w, "reference")
        with torch.no_grad():
            bad.params[0][0, 0] += 0.1
        assert runner.max_rel_error(runner.step_fn(w, bad)(), base)[0] > 1e-3


def test_spinn_in_the_grids():
    spinn = registry.Case("spinn", "fwdbwd", B=128, T=49, H=300, HT=64)
    assert spinn in registry.grid("quick", "cpu") and spinn in registry.grid("quick", "cuda")
    assert registry.grid("tiny", "cpu", ops=["spinn"])
    assert {c.H for c in registry.grid("full", "cpu", ops=["spinn"])} == {100, 300}


# --------------------------------------------------------------------------------------------------
# The GEMM floor and the sweep grid


def test_floor_gemms_hand_computed():
    # GRU fwdbwd B=2 T=3 I=4 H=5: tokens 6, G·H = 15
    gemms = registry.floor_gemms(registry.Case("gru", "fwdbwd", B=2, T=3, I=4, H=5))
    assert gemms == {
        (6, 4, 15): 1,  # input GEMM
        (2, 5, 15): 3,  # recurrent, once per step
        (6, 15, 4): 1,  # dX = dGi·W_ih
        (15, 6, 4): 1,  # dW_ih = dGiᵀ·X
        (15, 6, 5): 1,  # dW_hh = dGhᵀ·h
        (2, 15, 5): 3,  # dh = dg·W_hh, once per step
    }
    assert registry.floor_gemms(registry.Case("gru", "infer", B=2, T=3, I=4, H=5)) == {
        (6, 4, 15): 1,
        (2, 5, 15): 3,
    }
    # the bare op: recurrent part only (gi is its input, dgi its output)
    assert registry.floor_gemms(registry.Case("gru_op", "fwdbwd", B=2, T=3, H=5)) == {
        (2, 5, 15): 3,
        (15, 6, 5): 1,
        (2, 15, 5): 3,
    }
    # LSTM with projection P=2 (N = P): projection T×(B,H)×(H,P), its backward dW_hr and T×dh_raw
    lstm = registry.recurrence_gemms(4, "fwdbwd", T=3, B=2, tokens=6, H=5, I=4, P=2)
    assert lstm == {
        (6, 4, 20): 1,
        (2, 2, 20): 3,
        (2, 5, 2): 3,
        (6, 20, 4): 1,
        (20, 6, 4): 1,
        (20, 6, 2): 1,
        (2, 20, 2): 3,
        (2, 6, 5): 1,
        (2, 2, 5): 3,
    }
    for op in ("tree_lstm", "tree_lstm_reduce", "spinn"):
        assert registry.floor_gemms(next(iter(registry.grid("tiny", "cpu", ops=[op])))) is None


def test_floor_gemm_flop_equals_the_case_flop():
    """Unpacked, the floor's GEMMs are exactly the FLOP count (which leaves pointwise math out), in
    every mode, with layers and directions; packed, the per-step GEMMs keep the full batch."""
    cases = [c for g in ("tiny", "quick", "full") for c in registry.grid(g, "cpu") if c.spec.floor]
    cases += [registry.Case("lstm", "fwdbwd", B=2, T=3, I=4, H=5, layers=3, bidir=True)]
    for case in cases:
        flop = sum(2 * m * k * n * count for (m, k, n), count in registry.floor_gemms(case).items())
        if case.packed:
            assert flop > registry.flops_of(case), case.id
        else:
            assert flop == registry.flops_of(case), case.id


def test_floor_of_a_small_case_is_positive_and_cached(monkeypatch):
    calls = []
    timed = runner.time_after_first

    def counting(fn, device, first_call_s, min_time=0.3):
        calls.append(1)
        return timed(fn, device, first_call_s, min_time)

    monkeypatch.setattr(runner, "time_after_first", counting)
    # every candidate GEMM of a shape is timed once (torch.mm, and the blocked kernel where it loads)
    per = len(runner.gemm_candidates(torch.ones(2, 2), torch.ones(2, 2), torch.empty(2, 2)))
    assert per == (2 if _ext.status()[0] else 1)
    floor = runner.GemmFloor("cpu", min_time=0.001)
    infer = registry.Case("gru", "infer", B=3, T=5, I=8, H=8)
    ms = floor.floor_ms(infer)
    assert 0 < ms < float("inf") and len(calls) == 2 * per  # input and recurrent GEMM
    # fwdbwd of the same shape: its forward GEMMs and dW_hh (= dW_ih's shape, I = H) come from the cache
    assert 0 < floor.floor_ms(registry.Case("gru", "fwdbwd", B=3, T=5, I=8, H=8)) < float("inf")
    assert len(calls) == (2 + 3) * per
    # T = 10: only the input GEMM is new; the per-step GEMM is timed once for every T
    floor.floor_ms(registry.Case("gru", "infer", B=3, T=10, I=8, H=8))
    assert len(calls) == 6 * per and len(floor.timings) == 6
    assert floor.floor_ms(infer) == ms and len(calls) == 6 * per
    step = floor.gemm_ms("float32", 3, 8, 24)
    assert ms == pytest.approx(floor.gemm_ms("float32", 15, 8, 24) + 5 * step)
    assert {g["m"] for g in floor.as_list()} >= {3, 15, 30} and all(
        g["median_ms"] > 0 for g in floor.as_list()
    )
    assert floor.floor_ms(registry.Case("tree_lstm", R=4, H=8)) is None and len(calls) == 6 * per


def _stubbed_gemms(a, b, out):
    """Two GEMMs of the same product whose sampled times are fixed (see _stub_samples)."""

    def slow():
        return torch.mm(a, b, out=out)

    def fast():
        return torch.mm(a, b, out=out)

    slow.stub_ms, fast.stub_ms = 2.0, 0.5
    return {"slow": slow, "fast": fast}


def _stub_samples(fn, device, *args, **kwargs):
    """runner.sample_fn without a clock: every sample of ``fn`` takes its ``stub_ms`` (1 ms else)."""
    fn()
    return [getattr(fn, "stub_ms", 1.0)] * runner.MIN_REPS, "stub"


def test_floor_and_peak_take_the_fastest_gemm(monkeypatch):
    """The GEMM-call time and the peak keep the faster candidate; timings stubbed, so no race with the
    machine's noise decides it."""
    monkeypatch.setattr(runner, "gemm_candidates", _stubbed_gemms)
    monkeypatch.setattr(runner, "sample_fn", _stub_samples)
    floor = runner.GemmFloor("cpu", min_time=0.01)
    assert floor.gemm_ms("float32", 4, 8, 16) == 0.5
    (row,) = floor.as_list()
    assert row["lib"] == "fast" and (row["m"], row["k"], row["n"]) == (4, 8, 16) and row["method"] == "stub"
    peak = runner.measure_peak("cpu", ["float32"], min_time=0.01)
    assert peak["gemm_lib"] == {"float32": "fast"}
    assert peak["gemm_flops"]["float32"] == pytest.approx(2 * 1024**3 / 0.5e-3)
    assert peak["copy_bytes_per_s"] == pytest.approx(2 * (64 << 20) / 1e-3)  # the copy: 1 ms


@pytest.mark.skipif(not _ext.status()[0], reason="the cpu backend's extension did not load")
def test_gemm_candidates_compute_the_same_product():
    g = torch.Generator().manual_seed(5)
    for dt in (torch.float32, torch.float64):
        a, b = torch.randn(70, 33, generator=g, dtype=dt), torch.randn(33, 130, generator=g, dtype=dt)
        out = torch.full((70, 130), float("nan"), dtype=dt)
        got = {name: fn().clone() for name, fn in runner.gemm_candidates(a, b, out).items()}
        assert set(got) == {"torch.mm", "rnnfast_C.gemm"}
        for name, y in got.items():
            torch.testing.assert_close(y, a @ b, msg=name)
    assert list(runner.gemm_candidates(a.bfloat16(), b.bfloat16(), out.bfloat16())) == ["torch.mm"]


def test_tf32_candidate_sets_and_restores_the_matmul_flag():
    """The float32 peak on CUDA also times torch.mm in TF32 (cuDNN's precision for float32 RNNs); the
    wrapper turns the flag on for the call only, also when the call raises."""
    seen = []
    before = torch.backends.cuda.matmul.allow_tf32
    runner._with_tf32(lambda: seen.append(torch.backends.cuda.matmul.allow_tf32))()
    assert seen == [True] and torch.backends.cuda.matmul.allow_tf32 == before

    def fails():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        runner._with_tf32(fails)()
    assert torch.backends.cuda.matmul.allow_tf32 == before


def test_rep_policy_reuses_the_first_long_call():
    calls = []
    fn = lambda: calls.append(1)  # noqa: E731
    t = runner.time_after_first(fn, "cpu", first_call_s=runner.LONG_CALL_S + 1, min_time=0.0)
    assert len(calls) == runner.LONG_REPS - 1 and t.reps == runner.LONG_REPS
    assert t.max_ms == pytest.approx((runner.LONG_CALL_S + 1) * 1e3)
    calls.clear()
    t = runner.time_after_first(fn, "cpu", first_call_s=1e-4, min_time=0.0)
    assert len(calls) == runner.WARMUP + runner.MIN_REPS and t.reps == runner.MIN_REPS


# --------------------------------------------------------------------------------------------------
# The roofline floor


def test_boundary_bytes_are_the_tensors_a_call_reads_and_writes():
    """S counts exactly the floating-point tensors at the call's boundary: the differentiable inputs,
    the parameters and the outputs of the baseline (fwdbwd: also the upstream gradients and the
    gradients), on every op and variant of the tiny grid."""
    for case in registry.grid("tiny", "cpu", modes=["fwd", "fwdbwd"], dtypes=["float64"]):
        w = case.spec.make(case, torch.device("cpu"))
        bound = registry.bind(case, case.spec.baseline, w)
        got = runner.step_fn(w, bound)()
        inputs = w.leaves + bound.params
        outs = got[: len(got) - len(inputs)] if case.mode == "fwdbwd" else got
        tensors = inputs + got + (outs if case.mode == "fwdbwd" else [])
        assert all(t.dtype == torch.float64 for t in tensors), case.id
        assert registry.boundary_bytes(case) == sum(t.numel() * 8 for t in tensors), case.id


def test_must_move_bytes_hand_computed():
    # GRU B=2 T=3 I=4 H=5 float32: x 24, params 3·5·9 + 2·15 = 165, y 30, h_n 10 -> S = 229 elements;
    # W_hh + b_hh = 75 + 15 = 90 elements read at each of the 3 steps.
    infer = registry.Case("gru", "infer", B=2, T=3, I=4, H=5)
    S, W = 229 * 4, 90 * 4
    assert registry.boundary_bytes(infer) == S
    assert registry.must_move_bytes(infer, 0) == S + 2 * W  # no cache: everything, W again at steps 2, 3
    assert registry.must_move_bytes(infer, 300) == (S - 300) + 2 * (W - 300)
    assert registry.must_move_bytes(infer, W) == S - W  # W stays: once per call
    assert registry.must_move_bytes(infer, S) == 0  # all of it stays between calls
    # fwdbwd: 2S at the boundary; W read at 3 forward and 3 backward steps
    fwdbwd = registry.Case("gru", "fwdbwd", B=2, T=3, I=4, H=5)
    assert registry.must_move_bytes(fwdbwd, 300) == (2 * S - 300) + 5 * (W - 300)
    # two layers, bidirectional: 4 recurrences, each re-reading its own W (layer 1: I_1 = 2H)
    deep = registry.Case("gru", "infer", B=2, T=3, I=4, H=5, layers=2, bidir=True)
    assert registry.must_move_bytes(deep, 0) == registry.boundary_bytes(deep) + 4 * 2 * W
    # tree ops run one step: the boundary only; without a cache size nothing is claimed
    tree = registry.Case("tree_lstm", "fwdbwd", R=4, H=8)
    assert registry.must_move_bytes(tree, 100) == 2 * 9 * 4 * 8 * 4 - 100
    assert registry.must_move_bytes(infer, None) is None


def test_cpu_cache_from_sysfs(tmp_path):
    def cache(cpu, index, level, kind, size, shared):
        d = tmp_path / f"cpu{cpu}" / "cache" / f"index{index}"
        d.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
            (d / name).write_text(f"{value}\n")

    for cpu in (0, 1):
        cache(cpu, 0, 1, "Data", "48K", cpu)
        cache(cpu, 1, 1, "Instruction", "32K", cpu)
        cache(cpu, 2, 2, "Unified", "2048K", cpu)
        cache(cpu, 3, 3, "Unified", "32M", "0-1")
    size, what = roofline.cpu_cache([0, 1], root=tmp_path)
    assert size == 2 * 48 * 1024 + 2 * 2048 * 1024 + 32 * 1024 * 1024  # the shared L3 once, no L1i
    assert "L1 2×48 KiB" in what and "L2 2×2 MiB" in what and "L3 32 MiB" in what
    assert roofline.cpu_cache([0], root=tmp_path)[0] == 48 * 1024 + 2048 * 1024 + 32 * 1024 * 1024
    assert roofline.cpu_cache([0], root=tmp_path / "none")[0] is None


def test_gpu_cache_counts_l2_shared_memory_and_registers():
    props = types.SimpleNamespace(
        multi_processor_count=132,
        L2_cache_size=50 << 20,
        shared_memory_per_multiprocessor=228 << 10,
        regs_per_multiprocessor=65536,
    )
    size, what = roofline.gpu_cache(props)
    assert size == (50 << 20) + 132 * ((228 << 10) + (256 << 10))
    assert "132 SMs" in what
    del props.regs_per_multiprocessor  # an older torch: 64 Ki registers per SM
    assert roofline.gpu_cache(props)[0] == size


def _row(case, provider, median_ms, base_ms=None, status="ok", cache=None):
    """A results row of ``case`` as the runner writes it, with a stubbed timing."""
    row = runner._row_head(case, provider, 1e-4)
    row["must_move_bytes"] = registry.must_move_bytes(case, cache)
    if status == "ok":
        row.update(status="ok", median_ms=median_ms, speedup=(base_ms or median_ms) / median_ms)
    else:
        row.update(status=status, detail="stub")
    return row


def test_roofline_stays_at_most_100_on_stubbed_timings():
    peak = {"gemm_flops": {"float32": 1e11}, "gemm_n": {"float32": 1024}, "copy_bytes_per_s": 1e10,
            "copy_mib": 64, "cache_bytes": 4 << 20}  # fmt: skip
    big = registry.Case("gru", "infer", B=64, T=50, I=512, H=512)  # 1.3 GFLOP: 13 ms at the peak
    one_row = registry.Case("lstm", "infer", B=1, T=200, I=1024, H=1024)  # W_hh 16 MiB > the cache
    rows = [
        _row(big, "torch.nn", 20.0, cache=4 << 20),
        _row(big, "cpu", 10.0, 20.0, cache=4 << 20),  # 130 GFLOP/s: beats the measured peak
        _row(one_row, "torch.nn", 800.0, cache=4 << 20),
        _row(one_row, "cpu", 400.0, 800.0, cache=4 << 20),  # 6.3 GB/s: within the copy
        _row(one_row, "cuda", None, status="MISMATCH", cache=4 << 20),
    ]
    limits = roofline.apply(rows, peak)
    assert limits["gemm_flops"]["float32"] == pytest.approx(registry.flops_of(big) / 10e-3)
    assert limits["gemm_raised_by"] == {"float32": "gru infer B64 T50 I512 H512 f32 [cpu]"}
    assert limits["copy_raised_by"] is None and limits["copy_bytes_per_s"] == 1e10
    fast, slow = rows[1], rows[0]
    assert fast["pct_roofline"] == pytest.approx(100.0) and fast["roofline_bound"] == "FLOP"
    assert slow["pct_roofline"] == pytest.approx(50.0)
    # the one-row LSTM streams 16 MiB of W_hh beyond the cache at each of 199 steps: memory-bound
    moved = rows[3]["must_move_bytes"]
    assert moved > 199 * ((16 << 20) - (4 << 20))
    assert rows[3]["roofline_bound"] == "memory" and rows[3]["roofline_ms"] == pytest.approx(
        moved / 1e10 * 1e3
    )
    assert rows[3]["pct_roofline"] == pytest.approx(100 * moved / 1e10 / 0.4)
    assert rows[4]["pct_roofline"] is None and rows[4]["roofline_ms"] == rows[3]["roofline_ms"]
    assert all(r["pct_roofline"] <= 100 * (1 + 1e-12) for r in rows if r["pct_roofline"] is not None)
    assert any("raised" in line and "[cpu]" in line for line in roofline.raised(limits))
    # rows without must_move_bytes (files from before it) get the FLOP term alone
    for r in rows:
        r["must_move_bytes"] = None
    roofline.apply(rows, peak)
    assert rows[3]["roofline_bound"] == "FLOP" and rows[3]["roofline_ms"] < moved / 1e10 * 1e3


def test_roofline_stays_at_most_100_on_every_committed_result():
    """Every recorded run, read through the same rule: no timed case above 100% of its floor, and a
    case at 100% wherever one raised a peak."""
    files = 0
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        doc = json.loads(path.read_text())
        if not (isinstance(doc, dict) and doc.get("schema") == 1 and "rows" in doc):
            continue
        files += 1
        rows = [dict(r) for r in doc["rows"]]
        limits = roofline.apply(rows, doc.get("peak") or {})
        pcts = [r["pct_roofline"] for r in rows if r["status"] == "ok" and r.get("flop")]
        assert pcts and all(0 < p <= 100 * (1 + 1e-9) for p in pcts), path.name
        if any(limits["gemm_raised_by"].values()):
            assert max(pcts) == pytest.approx(100.0), path.name
    assert files >= 10


def test_sweep_grid_shapes():
    for device in ("cpu", "cuda"):
        cases = registry.grid("sweep", device)
        assert len(cases) == 3 * 5 * 5 * 2 * 2
        for mode in ("infer", "fwdbwd"):
            got = {(c.op, c.B, c.H, c.T) for c in cases if c.mode == mode}
            assert got == {
                (op, B, H, T)
                for op in ("gru", "rnn", "lstm")
                for B in (1, 4, 16, 64, 256)
                for H in (64, 128, 256, 512, 1024)
                for T in (50, 200)
            }
        assert {c.mode for c in cases} == {"infer", "fwdbwd"}
        assert all(
            c.I == c.H and c.layers == 1 and not c.bidir and not c.packed and c.dtype == "float32"
            for c in cases
        )
    assert {c.mode for c in registry.grid("sweep", "cpu", modes=["fwd"])} == {"fwd"}


def test_decode_grid_shapes():
    cases = registry.grid("decode", "cpu")
    assert {c.T for c in cases} == {1} and {c.mode for c in cases} == {"infer", "fwdbwd"}
    one = {(c.op, c.B, c.H) for c in cases if c.layers == 1}
    assert one == {(op, B, H) for op in ("gru", "rnn", "lstm") for B in (1, 4, 16) for H in (128, 512)}
    assert {(c.op, c.B, c.H) for c in cases if c.layers == 2} == {
        (op, B, 128) for op in ("gru", "rnn", "lstm") for B in (1, 4, 16)
    }
    assert len(cases) == (18 + 9) * 2 and all(c.I == c.H and c.dtype == "float32" for c in cases)


def test_sweep_estimate_fits_the_budget():
    """The rep policy keeps the sweep command's estimated CPU run time under 40 minutes (the model of
    runner.estimate_seconds: 100 GFLOP/s plus per-step overhead, both providers, floor included)."""
    cases = registry.grid("sweep", "cpu")
    est = runner.estimate_seconds(cases, [2] * len(cases))
    assert 10 * 60 < est < 40 * 60
    assert runner.estimate_seconds(cases, [2] * len(cases), floor=False) < est
    rc, text = _run_cli(["--device", "cpu", "--grid", "sweep", "--providers", "torch.nn,cpu", "--list"])
    assert rc == 0 and f"estimated run time: {est / 60:.1f} min" in text
    assert "lstm fwdbwd B256 T200 I1024 H1024 f32" in text and "300 cases" in text


def test_case_validation_names_the_field():
    with pytest.raises(ValueError, match="mode"):
        registry.Case("gru", mode="backward")
    with pytest.raises(ValueError, match="op"):
        registry.Case("transformer")
    with pytest.raises(ValueError, match="ops"):
        registry.grid("tiny", "cpu", ops=["nope"])


def test_grids_cover_the_representative_cpu_shapes():
    quick = registry.grid("quick", "cpu")
    for op in ("gru", "rnn", "lstm"):
        for mode in ("fwd", "fwdbwd"):
            assert registry.Case(op, mode, B=1, T=200, I=128, H=128) in quick
            assert registry.Case(op, mode, B=16, T=100, I=256, H=256) in quick
    assert len({c.id for c in registry.grid("full", "cuda")}) == len(registry.grid("full", "cuda"))


def test_every_provider_agrees_on_the_tiny_grid():
    """The check itself: every runnable provider matches its baseline on every tiny case."""
    for case in registry.grid("tiny", "cpu", modes=["fwdbwd"]):
        w = case.spec.make(case, torch.device("cpu"))
        base = runner.step_fn(w, registry.bind(case, case.spec.baseline, w))()
        for name, ok, _ in registry.providers(case, "cpu"):
            if ok:
                got = runner.step_fn(w, registry.bind(case, name, w))()
                err, where = runner.max_rel_error(got, base)
                assert err <= runner.tolerance(case.torch_dtype, "cpu"), (
                    f"{case.id} {name}: {where} {err:.2e}"
                )


def test_modes_differ_in_what_they_record():
    for mode, grads in (("infer", False), ("fwd", True), ("fwdbwd", True)):
        case = registry.Case("lstm", mode, B=2, T=3, I=4, H=5)
        w = case.spec.make(case, torch.device("cpu"))
        bound = registry.bind(case, "reference", w)
        outs = runner.step_fn(w, bound)()
        n_out = 3  # y, h_n, c_n
        assert len(outs) == n_out + (len(w.leaves) + len(bound.params) if mode == "fwdbwd" else 0)
        assert all(o.requires_grad == grads for o in outs[:n_out])


def test_max_rel_error_flags_shape_and_nan():
    a = torch.rand(3, 4) + 0.5
    assert runner.max_rel_error([a], [a.clone()])[0] == 0.0
    assert runner.max_rel_error([a + 1e-3], [a])[0] > 1e-4
    assert runner.max_rel_error([a[:2]], [a])[0] == float("inf")
    assert runner.max_rel_error([torch.full_like(a, float("nan"))], [a])[0] == float("inf")


# --------------------------------------------------------------------------------------------------
# rnnfast bench, end to end on the CPU


def _run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main_bench(argv + ["--threads", "1"])
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bench")
    argv = ["--device", "cpu", "--grid", "tiny", "--ops", "gru,tree_lstm_reduce", "--out", str(out_dir)]
    rc, text = _run_cli(argv + ["--min-time", "0.01", "--quiet"])
    return rc, text, out_dir


def test_cli_prints_the_table(tiny_run):
    rc, text, _ = tiny_run
    assert rc == 0, text
    for column in (
        "case",
        "provider",
        "median ms",
        "IQR ms",
        "speedup",
        "%floor",
        "bound",
        "%GEMMs",
        "tokens/s",
        "TFLOP/s",
        "%FLOP",
        "%BW",
    ):
        assert column in text
    assert "measured peak: GEMM float32" in text and "cache: " in text
    assert "gru fwdbwd B3 T5 I6 H8 L2 bi packed f32" in text
    assert "torch.nn*" in text and "reference" in text
    assert "MISMATCH" not in text and "ERROR" not in text


def test_cli_writes_json_and_csv(tiny_run):
    _, _, out_dir = tiny_run
    doc = json.loads((out_dir / "cpu-tiny-gru-tree_lstm_reduce.json").read_text())
    assert doc["machine"]["device"] == "cpu" and doc["machine"]["threads"] >= 1
    assert doc["machine"]["torch"] == torch.__version__
    assert doc["peak"]["gemm_flops"]["float32"] > 0 and doc["peak"]["copy_bytes_per_s"] > 0
    rows = doc["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["op"] for r in ok} == {"gru", "tree_lstm_reduce"}
    assert {r["provider"] for r in ok} >= {"torch.nn", "reference"}
    for r in ok:
        assert 0 < r["min_ms"] <= r["q25_ms"] <= r["median_ms"] <= r["q75_ms"] <= r["max_ms"], r
        assert r["tokens_per_s"] > 0 and r["tflops"] > 0 and r["speedup"] > 0
        assert r["max_rel_err"] <= r["tolerance"]
    assert all(r["detail"] for r in rows if r["status"] == "unsupported")
    with open(out_dir / "cpu-tiny-gru-tree_lstm_reduce.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert [r["case"] for r in table] == [r["case"] for r in rows]
    assert float(table[0]["median_ms"]) == pytest.approx(rows[0]["median_ms"])
    # The GEMM floor: every timed gru row has it, the tree op has none; the CSV carries the same.
    for r, c in zip(rows, table):
        if r["op"] == "gru" and r["status"] == "ok":
            assert 0 < r["floor_ms"] < float("inf")
            assert r["pct_floor"] == pytest.approx(100 * r["floor_ms"] / r["median_ms"])
            assert float(c["pct_floor"]) == pytest.approx(r["pct_floor"])
        elif r["op"] == "tree_lstm_reduce":
            assert r["floor_ms"] is None and r["pct_floor"] is None and c["pct_floor"] == ""
    assert any(r["pct_floor"] for r in rows)
    assert doc["schema"] == 1 and {"m", "k", "n", "median_ms", "reps"} <= set(doc["floor_gemms"][0])
    # The roofline floor: every timed row has one, at most 100%, from the run's own limits.
    limits = doc["roofline"]
    assert doc["peak"]["cache_bytes"] > 0 and limits["cache_bytes"] == doc["peak"]["cache_bytes"]
    assert limits["gemm_flops"]["float32"] >= doc["peak"]["gemm_flops"]["float32"]
    for r, c in zip(rows, table):
        if r["status"] == "ok":
            assert r["must_move_bytes"] is not None and r["roofline_bound"] in ("FLOP", "memory")
            assert 0 < r["pct_roofline"] <= 100 * (1 + 1e-9), r
            assert r["pct_roofline"] == pytest.approx(100 * r["roofline_ms"] / r["median_ms"])
            assert float(c["pct_roofline"]) == pytest.approx(r["pct_roofline"])


def test_cli_writes_the_png(tiny_run):
    _, text, out_dir = tiny_run
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no PNG: matplotlib is not installed" in text
        pytest.skip("matplotlib is not installed: the PNG is skipped (the CLI says so)")
    assert (out_dir / "cpu-tiny-gru-tree_lstm_reduce.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_broken_provider_is_a_mismatch_and_not_timed(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "OPS", dict(registry.OPS))
    calls = []

    def broken(w):
        bound = registry.OPS["gru"].extra["torch.nn"](w)

        def forward():
            calls.append(1)
            return [t + 1e-3 for t in bound.forward()]

        return registry.Bound(forward, bound.params)

    def raising(w):
        def forward():
            raise RuntimeError("kernel exploded")

        return registry.Bound(forward)

    registry.register_provider("gru", "broken", broken)
    registry.register_provider("gru", "raising", raising)
    argv = ["--device", "cpu", "--grid", "tiny", "--ops", "gru", "--modes", "fwd", "--out", str(tmp_path)]
    rc, text = _run_cli(argv + ["--providers", "torch.nn,broken,raising", "--min-time", "0.01", "--quiet"])
    assert rc == 1
    assert "MISMATCH" in text and "ERROR: RuntimeError: kernel exploded" in text
    rows = json.loads((tmp_path / "cpu-tiny-gru-fwd.json").read_text())["rows"]
    bad = [r for r in rows if r["provider"] == "broken"]
    assert len(bad) == 2  # the two tiny gru shapes
    for r in bad:
        assert r["status"] == "MISMATCH" and r["median_ms"] is None and r["reps"] is None
        assert r["max_rel_err"] > r["tolerance"]
    assert len(calls) == len(bad)  # run once for the check, never timed
    assert all(r["status"] == "ERROR" for r in rows if r["provider"] == "raising")
    assert all(r["status"] == "ok" for r in rows if r["provider"] == "torch.nn")


def test_rounds_time_providers_in_turns():
    order = []
    fns = {name: ((lambda name=name: order.append(name)), 1e-4) for name in ("a", "b")}
    timings = runner.time_in_rounds(fns, "cpu", rounds=3, min_time=0.0)
    assert all(t.reps == 3 * runner.MIN_REPS for t in timings.values())
    # round 1: the rep policy's warm-up and samples; rounds 2 and 3: one warm-up call and MIN_REPS
    first = runner.WARMUP + runner.MIN_REPS
    later = 1 + runner.MIN_REPS
    runs = [order[0]]
    for name in order[1:]:
        if name != runs[-1]:
            runs.append(name)
    assert runs == ["a", "b"] * 3 and len(order) == 2 * (first + 2 * later)

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("went wrong later")

    timings = runner.time_in_rounds({"ok": (lambda: None, 1e-4), "flaky": (flaky, 1e-4)}, "cpu", 3, 0.0)
    assert isinstance(timings["flaky"], RuntimeError) and timings["ok"].reps == 3 * runner.MIN_REPS


def test_cli_rounds(tmp_path):
    argv = ["--device", "cpu", "--grid", "tiny", "--ops", "gru", "--modes", "fwd", "--out", str(tmp_path)]
    rc, text = _run_cli(argv + ["--rounds", "2", "--min-time", "0.01", "--quiet", "--no-plot"])
    assert rc == 0, text
    rows = json.loads((tmp_path / "cpu-tiny-gru-fwd.json").read_text())["rows"]
    timed = [r for r in rows if r["status"] == "ok"]
    assert {r["provider"] for r in timed} >= {"torch.nn", "reference", "cpu"}
    assert all(r["reps"] >= 2 * runner.MIN_REPS and r["speedup"] > 0 for r in timed)
    with pytest.raises(SystemExit, match="--rounds"):
        main_bench(argv + ["--rounds", "0"])


def test_cli_roofline_when_every_case_beats_the_peaks(monkeypatch, tmp_path):
    """With measured peaks stubbed far below what any call does (1 FLOP/s, 1 B/s, no cache), the
    fastest cases set both limits: each at 100% of its floor, every other case below, all named."""
    stub = {"gemm_flops": {"float32": 1.0}, "gemm_n": {"float32": 1024}, "gemm_lib": {"float32": "stub"},
            "copy_bytes_per_s": 1.0, "copy_mib": 64, "cache_bytes": 0, "cache": "none (stub)"}  # fmt: skip
    monkeypatch.setattr(runner, "measure_peak", lambda *a, **k: dict(stub))
    argv = ["--device", "cpu", "--grid", "tiny", "--ops", "gru,rnn", "--modes", "fwd", "--out", str(tmp_path)]
    rc, text = _run_cli(argv + ["--no-floor", "--no-plot", "--min-time", "0.01", "--quiet"])
    assert rc == 0, text
    doc = json.loads((tmp_path / "cpu-tiny-gru-rnn-fwd.json").read_text())
    limits, rows = doc["roofline"], [r for r in doc["rows"] if r["status"] == "ok"]
    assert limits["gemm_raised_by"]["float32"] and limits["copy_raised_by"] and limits["cache_bytes"] == 0
    assert "roofline: float32 peak raised to" in text and "roofline: bandwidth raised to" in text
    assert all(0 < r["pct_roofline"] <= 100 * (1 + 1e-9) for r in rows)
    by = {f"{r['label']} [{r['provider']}]": r for r in rows}
    assert by[limits["gemm_raised_by"]["float32"]]["pct_roofline"] == pytest.approx(100.0)
    assert by[limits["copy_raised_by"]]["pct_roofline"] == pytest.approx(100.0)
    # no cache: the whole boundary moves, and W_hh again at every step after the first
    keys = ("op", "mode", "dtype", "B", "T", "I", "H", "layers", "bidir", "packed")
    assert all(r["must_move_bytes"] > registry.boundary_bytes(registry.Case(**{k: r[k] for k in keys}))
               for r in rows)  # fmt: skip


def test_cli_no_floor(tmp_path):
    argv = ["--device", "cpu", "--grid", "tiny", "--ops", "rnn", "--modes", "infer", "--out", str(tmp_path)]
    rc, _ = _run_cli(argv + ["--no-floor", "--no-plot", "--min-time", "0.01", "--quiet"])
    doc = json.loads((tmp_path / "cpu-tiny-rnn-infer.json").read_text())
    assert rc == 0 and doc["floor_gemms"] is None
    assert all(r["floor_ms"] is None and r["pct_floor"] is None for r in doc["rows"])


def test_cli_runs_spinn_on_the_tiny_grid(tmp_path):
    argv = ["--device", "cpu", "--grid", "tiny", "--ops", "spinn", "--out", str(tmp_path), "--no-plot"]
    rc, text = _run_cli(argv + ["--min-time", "0.01", "--quiet"])
    assert rc == 0, text
    assert "spinn fwdbwd B3 T9 H8 HT3 f32" in text and "MISMATCH" not in text and "ERROR" not in text
    rows = json.loads((tmp_path / "cpu-tiny-spinn.json").read_text())["rows"]
    ok = {(r["case"], r["provider"]) for r in rows if r["status"] == "ok"}
    cases = registry.grid("tiny", "cpu", ops=["spinn"])
    assert ok == {(c.id, p) for c in cases for p in ("reference", "cpu")}
    assert all(r["speedup"] > 0 and r["max_rel_err"] <= r["tolerance"] for r in rows if r["status"] == "ok")


def test_cli_list_runs_nothing(tmp_path):
    rc, text = _run_cli(["--device", "cpu", "--grid", "quick", "--list", "--out", str(tmp_path / "none")])
    assert rc == 0 and "gru fwdbwd B16 T100 I256 H256 f32" in text and "torch.nn, auto, reference" in text
    assert f"{len(registry.grid('quick', 'cpu'))} cases" in text
    assert not (tmp_path / "none").exists()


def test_cli_rejects_bad_arguments():
    with pytest.raises(SystemExit, match="--providers"):
        main_bench(["--device", "cpu", "--grid", "tiny", "--providers", "nope"])
    with pytest.raises(SystemExit, match="--dtype"):
        main_bench(["--device", "cpu", "--grid", "tiny", "--dtype", "float8"])
    with pytest.raises(SystemExit, match="--filter: not a regular expression"):
        main_bench(["--device", "cpu", "--grid", "tiny", "--filter", "B(1"])
    with pytest.raises(SystemExit, match="--filter: no case label"):
        main_bench(["--device", "cpu", "--grid", "tiny", "--filter", "B9999"])


def test_cli_filter_keeps_matching_cases():
    argv = ["--device", "cpu", "--grid", "sweep", "--ops", "gru", "--modes", "infer", "--list"]
    rc, text = _run_cli(argv + ["--filter", "B(1|16) T50 I(64|256) "])
    listed = [ln.split("  ")[0] for ln in text.splitlines() if ln.startswith("gru ")]
    assert rc == 0 and "4 cases" in text
    assert listed == [f"gru infer B{B} T50 I{H} H{H} f32" for B in (1, 16) for H in (64, 256)]


# --------------------------------------------------------------------------------------------------
# The figures: bars for a few cases, heat maps for B × H grids, redrawn from any results file

MACHINE = {"device": "cpu", "device_name": "Test CPU (AVX2)", "threads": 2, "torch": "2.13.0",
           "triton": "3.9.0", "rnnfast": "0.1.0", "commit": "0123456789abcdef",
           "loadavg_1min": 0.5}  # fmt: skip


def _results(tmp_path, name, rows):
    doc = {"schema": 1, "grid": "quick", "created": "2026-12-08T00:00:00+00:00", "machine": MACHINE,
           "peak": {"gemm_flops": {"float32": 1e11}}, "rows": rows}  # fmt: skip
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _overlapping_labels(fig):
    """Pairs of drawn texts (titles, legend, axis and tick labels, printed values) whose boxes overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    texts = [*fig.texts, *(t for leg in fig.legends for t in leg.get_texts())]  # the suptitle included
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis, (lo, hi) in ((ax.xaxis, sorted(ax.get_xlim())), (ax.yaxis, sorted(ax.get_ylim()))):
            texts += [t.label1 for t in axis.get_major_ticks() if lo <= t.get_loc() <= hi]
    boxes = []
    for t in texts:
        if t is not None and t.get_visible() and t.get_text().strip():
            b = t.get_window_extent(renderer)
            boxes.append((t.get_text(), b.expanded(0.98, 0.9)))
    inside = fig.bbox
    outside = [text for text, b in boxes if b.x0 < inside.x0 - 1 or b.x1 > inside.x1 + 1 or b.y0 < -1]
    pairs = [(a, c) for i, (a, b) in enumerate(boxes) for c, d in boxes[i + 1 :] if b.overlaps(d)]
    return pairs + [(text, "outside the figure") for text in outside]


def _bar_rows():
    gru = registry.Case("gru", "fwd", B=1, T=200, I=128, H=128)
    lstm = registry.Case("lstm", "fwdbwd", B=16, T=100, I=256, H=256)
    tree = registry.Case("tree_lstm", "fwd", R=128, H=300)
    spinn = registry.Case("spinn", "fwd", B=128, T=49, H=300, HT=64)
    return [
        _row(gru, "torch.nn", 4.0),
        _row(gru, "auto", 1.0, 4.0),
        _row(gru, "reference", 5.0, 4.0),
        _row(gru, "cpu", 0.8, 4.0),  # 5×, the fastest: its value is printed
        _row(gru, "triton", None, status="unsupported"),
        _row(lstm, "torch.nn", 10.0),
        _row(lstm, "auto", 10.0, 10.0),  # 1×, faster than cpu
        _row(lstm, "cpu", 11.0, 10.0),
        _row(lstm, "reference", None, status="MISMATCH"),
        _row(tree, "reference", 0.2),
        _row(tree, "cpu", 0.07, 0.2),
        _row(spinn, "reference", 80.0),
        _row(spinn, "cpu", None, status="ERROR"),
    ]


def test_bar_chart_of_a_few_cases(tmp_path):
    pytest.importorskip("matplotlib")
    rows = _bar_rows()
    fig = plot.bar_figure(rows, MACHINE, {"grid": "quick"})
    bars = sorted(p.get_gid() for ax in fig.axes for p in ax.patches if p.get_gid())
    gru, lstm = "gru-fwd-B1-T200-I128-H128-float32", "lstm-fwdbwd-B16-T100-I256-H256-float32"
    want = [f"{gru}|auto", f"{gru}|reference", f"{gru}|cpu", f"{lstm}|auto", f"{lstm}|cpu"]
    assert bars == sorted(want + ["tree_lstm-fwd-R128-H300-float32|cpu"])
    values = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == "value"]
    assert values == ["5.00×", "1.00×", "2.86×"]  # the fastest rnnfast provider of each timed case
    notes = [t.get_text().strip() for ax in fig.axes for t in ax.texts if t.get_color() == "#b00000"]
    assert notes == ["reference: MISMATCH", "cpu: ERROR"]
    # one section per baseline, its 1× line named; the title names device, versions and commit
    assert [ax.get_title(loc="left").split(" (")[0] for ax in fig.axes] == [
        "speed-up over torch.nn", "speed-up over reference"]  # fmt: skip
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    title = fig._suptitle.get_text()
    assert "Test CPU (AVX2)" in title and "torch 2.13.0" in title and "@ 0123456789" in title
    assert _overlapping_labels(fig) == []
    # the PNG, from the results file: its size follows from the cases and providers drawn
    path = _results(tmp_path, "few", rows)
    written, why = plot.replot(path)
    assert why is None and written == [tmp_path / "few.png"]
    sections = (
        2 * plot.SECTION_IN + 2 * (3 * plot.BAR_IN + plot.CASE_PAD_IN) + 2 * (plot.BAR_IN + plot.CASE_PAD_IN)
    )
    height = plot.HEAD_IN + plot.FOOT_IN + sections
    w, h = _png_size(written[0])
    assert w == round(plot.BAR_WIDTH_IN * plot.DPI) and abs(h - height * plot.DPI) <= 1.5


def _sweep_rows():
    rows = []
    for T in (50, 200):
        for B in (1, 4, 16):
            for H in (64, 128):
                if (T, B, H) == (200, 16, 128):
                    continue  # a hole in the grid
                case = registry.Case("gru", "infer", B=B, T=T, I=H, H=H)
                rows.append(_row(case, "torch.nn", 2.0))
                if (T, B, H) == (50, 4, 64):
                    rows.append(_row(case, "cpu", None, status="MISMATCH"))
                else:
                    rows.append(_row(case, "cpu", 2.0 / (B * H / 64), 2.0))  # 1× to 32×
    deep = registry.Case("gru", "infer", B=4, T=50, I=64, H=64, layers=2)  # outside the grid: a bar
    return rows + [_row(deep, "torch.nn", 3.0), _row(deep, "cpu", 6.0, 3.0)]


def test_heat_maps_of_a_sweep(tmp_path):
    pytest.importorskip("matplotlib")
    rows = _sweep_rows()
    panels, rest = plot.split(rows)
    assert len(panels) == 2 and list(rest) == ["gru-infer-B4-T50-I64-H64-L2-float32"]
    sparse = [r for r in rows if r["T"] == 200 and (r["B"], r["H"]) in ((1, 64), (4, 128))]
    assert plot.split(sparse) == ({}, plot._cases(sparse))  # 2 of its 4 cells: bars
    fig = plot.heat_figure(rows, MACHINE, {"grid": "sweep"})
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in fig.axes if ax.images] == [
        "gru infer f32 T=50 · vs torch.nn", "gru infer f32 T=200 · vs torch.nn"]  # fmt: skip
    for im in images:
        assert im.get_array().shape == (3, 2)  # B ∈ {1, 4, 16} × H ∈ {64, 128}
    # 6 cells at T=50 with the mismatch masked, 5 at T=200 with the hole masked
    assert [int((~im.get_array().mask).sum()) for im in images] == [5, 5]
    cells = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == "cell"]
    assert len(cells) == 10 and "32.0×" in cells and "1.00×" in cells
    assert [t.get_text() for ax in fig.axes for t in ax.texts if t.get_text() == "fail"] == ["fail"]
    norm = images[0].norm  # diverging, centred on 1×
    assert float(norm(0.0)) == pytest.approx(0.5) and norm.vmax == pytest.approx(math.log10(32))
    assert _overlapping_labels(fig) == []
    # the files: heat maps in <stem>.png, the case outside the grid in <stem>-bars.png
    path = _results(tmp_path, "sweep", rows)
    written, why = plot.replot(path, tmp_path / "out")
    assert why is None and written == [tmp_path / "out" / "sweep.png", tmp_path / "out" / "sweep-bars.png"]
    width = max(6.0, 2 * (2 * plot.CELL_W_IN + plot.PANEL_PAD_W_IN) + plot.COLORBAR_IN)
    height = 3 * plot.CELL_H_IN + plot.PANEL_PAD_H_IN + plot.HEAD_IN
    w, h = _png_size(written[0])
    assert abs(w - width * plot.DPI) <= 1.5 and abs(h - height * plot.DPI) <= 1.5
    assert _png_size(written[1])[0] == round(plot.BAR_WIDTH_IN * plot.DPI)


def test_replot_from_the_cli_and_the_results_script(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = _results(tmp_path, "few", _bar_rows())
    assert main_bench(["--replot", str(path), "--out", str(tmp_path / "cli")]) == 0
    assert _png_size(tmp_path / "cli" / "few.png")[0] == round(plot.BAR_WIDTH_IN * plot.DPI)
    assert _results_table().main(["--plot", str(path)]) == 0
    assert (tmp_path / "few.png").exists() and f"wrote {tmp_path / 'few.png'}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--replot: .*not an 'rnnfast bench' results file"):
        bad = tmp_path / "bad.json"
        bad.write_text("[]")
        main_bench(["--replot", str(bad)])


def test_figures_without_matplotlib(monkeypatch, tmp_path, capsys):
    def missing():
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(plot, "_matplotlib", missing)
    written, why = plot.write_figures(tmp_path / "x", _bar_rows())
    assert written == [] and why.startswith("matplotlib is not installed") and not list(tmp_path.iterdir())
    path = _results(tmp_path, "few", _bar_rows())
    assert main_bench(["--replot", str(path)]) == 1
    assert "no PNG: matplotlib is not installed" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# The pytest-benchmark suite and rnnfast profile


def test_benchmark_suite_smoke_run():
    """``pytest benchmarks --benchmark-disable`` collects the tiny grid and runs each case once
    (restricted to the bare-op and tree tests to keep it short; the modules run the same code path)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("RNNFAST_BENCH_GRID", None)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks",
        "--benchmark-disable",
        "--bench-device",
        "cpu",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    proc = subprocess.run(
        cmd + ["-k", "_op- or tree"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = registry.grid("tiny", "cpu", ops=["gru_op", "rnn_op", "lstm_op", "tree_lstm", "tree_lstm_reduce"])
    listed = [p for c in cases for p in registry.providers(c, "cpu") if p[0] != "compile"]
    passed = sum(1 for p in listed if p[1])
    assert f"{passed} passed, {len(listed) - passed} skipped" in proc.stdout, proc.stdout[-2000:]
    assert "PytestBenchmarkWarning" not in proc.stdout


def test_benchmark_suite_covers_spinn():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("RNNFAST_BENCH_GRID", None)
    cmd = [sys.executable, "-m", "pytest", "benchmarks/test_bench_spinn.py", "--benchmark-disable", "-q"]
    cmd += ["--bench-device", "cpu"]
    proc = subprocess.run(
        cmd + ["-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    listed = [p for c in registry.grid("tiny", "cpu", ops=["spinn"]) for p in registry.providers(c, "cpu")]
    passed = sum(1 for p in listed if p[1])
    assert f"{passed} passed, {len(listed) - passed} skipped" in proc.stdout, proc.stdout[-2000:]


def test_profile_writes_a_trace_with_layer_ranges(tmp_path):
    # The provider is named: by default the profile picks the fastest one the machine supports.
    argv = ["--op", "gru", "--B", "2", "--T", "3", "--H", "8", "--layers", "2", "--bidir"]
    argv += ["--provider", "reference"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main_profile(argv + ["--steps", "1", "--warmup", "1", "--out", str(tmp_path), "--device", "cpu"])
    assert rc == 0
    assert "Self CPU time total" in out.getvalue()
    (trace,) = tmp_path.glob("trace-*.json")
    names = {e.get("name") for e in json.loads(trace.read_text())["traceEvents"]}
    assert "rnnfast.gru layer1 reverse [reference]" in names
    assert "bench gru fwdbwd B2 T3 I8 H8 L2 bi f32 [reference]" in names


# --------------------------------------------------------------------------------------------------
# scripts/results_table.py


def _results_table():
    spec = importlib.util.spec_from_file_location("results_table", ROOT / "scripts" / "results_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_results_table_from_cli_output(tiny_run, tmp_path):
    _, _, out_dir = tiny_run
    rt = _results_table()
    assert not rt.headline(json.loads((out_dir / "cpu-tiny-gru-tree_lstm_reduce.json").read_text()))
    table = rt.build(out_dir, root=out_dir, everything=True)
    assert "| gru fwd B3 T5 I6 H8 f32 | torch.nn |" in table
    assert "| tree_lstm_reduce fwdbwd R4 H8 HT3 f32 | reference |" in table
    # The % of floor column is the fastest rnnfast provider's pct_roofline, as recorded.
    doc = json.loads((out_dir / "cpu-tiny-gru-tree_lstm_reduce.json").read_text())
    assert "| speedup | % of floor |" in table and "FLOP term only" not in table
    for rs in plot._cases(doc["rows"]).values():
        best = plot.fastest_rnnfast(rs)
        (line,) = [ln for ln in table.splitlines() if ln.startswith(f"| {rs[0]['label']} |")]
        assert line.endswith(f" {rt._pct(best['pct_roofline'])} |") and best["pct_roofline"] <= 100, line
    # A file from before the roofline: derived from its own peak and medians, FLOP term only.
    old = tmp_path / "old"
    old.mkdir()
    new_keys = ("must_move_bytes", "roofline_ms", "roofline_bound", "pct_roofline")
    doc["rows"] = [{k: v for k, v in r.items() if k not in new_keys} for r in doc["rows"]]
    del doc["roofline"], doc["peak"]["cache_bytes"], doc["peak"]["cache"]
    (old / "cpu-tiny.json").write_text(json.dumps(doc))
    old_table = rt.build(old, root=old, everything=True)
    assert "% of floor from the file's peaks, FLOP term only" in old_table
    peak = max(
        [doc["peak"]["gemm_flops"]["float32"]]
        + [r["flop"] / (r["median_ms"] * 1e-3) for r in doc["rows"] if r["status"] == "ok"]
    )
    best = plot.fastest_rnnfast([r for r in doc["rows"] if r["label"] == "gru fwd B3 T5 I6 H8 f32"])
    want = rt._pct(100 * best["flop"] / peak / (best["median_ms"] * 1e-3))
    assert "| gru fwd B3 T5 I6 H8 f32 | torch.nn |" in old_table and f" {want} |\n" in old_table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{rt.START}\nold table\n{rt.END}\nafter\n")
    assert rt.main(["--results", str(out_dir), "--all", "--check", str(readme)]) == 1
    assert rt.main(["--results", str(out_dir), "--all", "--update", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{rt.END}\nafter\n") and "old table" not in text
    assert rt.main(["--results", str(out_dir), "--all", "--check", str(readme)]) == 0


# --------------------------------------------------------------------------------------------------
# scripts/sweep_summary.py


def test_sweep_summary_counts_the_targets():
    spec = importlib.util.spec_from_file_location("sweep_summary", ROOT / "scripts" / "sweep_summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def row(op, mode, B, H, provider, ms, floor=None):
        label = f"{op} {mode} B{B} T50 I{H} H{H} f32"
        return dict(label=label, op=op, mode=mode, B=B, H=H, provider=provider, median_ms=ms, pct_floor=floor)

    rows = [
        row("gru", "infer", 1, 64, "torch.nn", 3.0),
        row("gru", "infer", 1, 64, "cpu", 1.0),  # 3x, overhead-bound
        row("gru", "fwdbwd", 4, 128, "torch.nn", 8.0),
        row("gru", "fwdbwd", 4, 128, "cpu", 2.0),  # 4x
        row("gru", "infer", 16, 256, "torch.nn", 1.8),
        row("gru", "infer", 16, 256, "cpu", 2.0, floor=80.0),  # 0.9x, GEMM-bound below 85%
        row("gru", "infer", 1, 512, "torch.nn", 5.0),
        row("gru", "infer", 1, 512, "cpu", 2.5, floor=90.0),  # 2x
        row("gru", "infer", 64, 64, "cpu", 1.0),  # no torch.nn row: left out
    ]
    (s,) = mod.summarise(rows)
    assert s["cell"] == "gru" and s["range"] == "0.90–4.00×"
    assert s["below"] == "1 of 4 (worst gru infer B16 T50 I256 H256 f32: 0.90×)"
    assert s["small"] == "3.00–3.00× / 4.00–4.00×"
    assert s["b16h256"] == "0.90–0.90×" and s["b1h512"] == "2.00–2.00×" and s["gemms"] == "1 of 2"


def test_sweep_summary_targets_per_case():
    spec = importlib.util.spec_from_file_location("sweep_summary", ROOT / "scripts" / "sweep_summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def row(mode, B, H, provider, ms, flop):
        label = f"lstm {mode} B{B} T50 I{H} H{H} f32"
        return dict(label=label, op="lstm", mode=mode, B=B, H=H, T=50, provider=provider, median_ms=ms,
                    flop=flop, status="ok", packed=False, layers=1)  # fmt: skip

    peak = {"gemm_flops": {"float32": 100e9}, "gemm_n": {"float32": 1024}, "gemm_lib": {"float32": "x"}}
    doc = {
        "peak": peak,
        "rows": [
            # B=4 H=128: 3x of 1 ms is 0.333 ms; 50 MFLOP in it is 150 GFLOP/s, 150% of the peak
            row("infer", 4, 128, "torch.nn", 1.0, 50e6),
            row("infer", 4, 128, "cpu", 0.5, 50e6),  # 2x: below
            row("infer", 4, 128, "auto", 0.25, 50e6),  # 4x: met
            # B=16 H=256: 1.1x; 2 ms of 110 MFLOP asks for 60.5 GFLOP/s
            row("fwdbwd", 16, 256, "torch.nn", 2.0, 110e6),
            row("fwdbwd", 16, 256, "cpu", 1.9, 110e6),  # 1.05x: below, within the peak
            row("infer", 64, 512, "torch.nn", 1.0, 1e6),
            row("infer", 64, 512, "cpu", 1.0, 1e6),  # 1x >= 0.95x
            {**row("infer", 64, 512, "torch.nn", 9.0, 1e6), "packed": True, "label": "packed"},  # left out
        ],
    }
    lines = mod.targets(doc, "lstm", ["cpu", "auto"])
    assert lines[0] == "lstm: GEMM peak of the run 100 GFLOP/s (x, n=1024)"
    (b4,) = [ln for ln in lines if ln.startswith("infer B4 T50 H128")]
    assert "3x (B<=4, H<=128)" in b4 and "2.00!" in b4 and "4.00 " in b4 and b4.endswith("150%")
    (b16,) = [ln for ln in lines if ln.startswith("fwdbwd B16 T50 H256")]
    assert "1.1x (B=16, H=256)" in b16 and "1.05!" in b16 and b16.endswith(" 60%")
    assert "3x (B<=4, H<=128)    cpu      met in 0 of 1" in lines
    assert "3x (B<=4, H<=128)    auto     met in 1 of 1" in lines
    assert "0.95x (grid)         cpu      met in 1 of 1" in lines
    assert lines[-1].endswith("asks for more than the measured peak: 1 (infer B4 T50 H128)")
