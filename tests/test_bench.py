"""The benchmark harness: FLOP/byte counts, correctness gate, CLI end to end, pytest-benchmark suite,
profile and the results table. Timings themselves are never asserted (speed lives in benchmarks)."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rnnfast import _ext
from rnnfast.bench import main_bench, main_profile, registry, runner
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


def _slow_and_fast_gemms(a, b, out):
    """Two GEMMs of the same product, one of them 2 ms slower a call."""

    def slow():
        time.sleep(0.002)
        return torch.mm(a, b, out=out)

    return {"slow": slow, "fast": lambda: torch.mm(a, b, out=out)}


def test_floor_and_peak_take_the_fastest_gemm(monkeypatch):
    monkeypatch.setattr(runner, "gemm_candidates", _slow_and_fast_gemms)
    floor = runner.GemmFloor("cpu", min_time=0.01)
    assert floor.gemm_ms("float32", 4, 8, 16) < 2.0
    (row,) = floor.as_list()
    assert row["lib"] == "fast" and (row["m"], row["k"], row["n"]) == (4, 8, 16)
    peak = runner.measure_peak("cpu", ["float32"], min_time=0.01)
    assert peak["gemm_lib"] == {"float32": "fast"} and peak["gemm_flops"]["float32"] > 0


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


def test_rep_policy_reuses_the_first_long_call():
    calls = []
    fn = lambda: calls.append(1)  # noqa: E731
    t = runner.time_after_first(fn, "cpu", first_call_s=runner.LONG_CALL_S + 1, min_time=0.0)
    assert len(calls) == runner.LONG_REPS - 1 and t.reps == runner.LONG_REPS
    assert t.max_ms == pytest.approx((runner.LONG_CALL_S + 1) * 1e3)
    calls.clear()
    t = runner.time_after_first(fn, "cpu", first_call_s=1e-4, min_time=0.0)
    assert len(calls) == runner.WARMUP + runner.MIN_REPS and t.reps == runner.MIN_REPS


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
        "tokens/s",
        "TFLOP/s",
        "%FLOP",
        "%BW",
    ):
        assert column in text
    assert "measured peak: GEMM float32" in text
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
# The pytest-benchmark suite and rnnfast profile


def test_benchmark_suite_smoke_run():
    """``pytest benchmarks --benchmark-disable`` collects the tiny grid and runs each case once
    (restricted to the bare-op and tree tests to keep it short; the modules run the same code path)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RNNFAST_BENCH_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    env.pop("RNNFAST_BENCH_GRID", None)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks",
        "--benchmark-disable",
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
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RNNFAST_BENCH_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    env.pop("RNNFAST_BENCH_GRID", None)
    cmd = [sys.executable, "-m", "pytest", "benchmarks/test_bench_spinn.py", "--benchmark-disable", "-q"]
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
    # A file with pct_floor gets the column ("—" for ops without a floor); one without keeps its columns.
    assert "| speedup | % of floor |" in table
    assert all(ln.endswith("% |") for ln in table.splitlines() if ln.startswith("| gru "))
    assert all(ln.endswith("| — |") for ln in table.splitlines() if ln.startswith("| tree_lstm_reduce "))
    old = tmp_path / "old"
    old.mkdir()
    doc = json.loads((out_dir / "cpu-tiny-gru-tree_lstm_reduce.json").read_text())
    doc["rows"] = [{k: v for k, v in r.items() if k not in ("floor_ms", "pct_floor")} for r in doc["rows"]]
    (old / "cpu-tiny.json").write_text(json.dumps(doc))
    old_table = rt.build(old, root=old, everything=True)
    assert (
        "floor" not in old_table
        and "| case | baseline | baseline ms | fastest rnnfast | ms | speedup |\n" in old_table
    )
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
    assert s["b16h256"] == "0.90–0.90×" and s["b1h512"] == "2.00–2.00×" and s["floor"] == "1 of 2"


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
