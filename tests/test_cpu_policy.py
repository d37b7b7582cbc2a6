"""The cpu backend's policy (rnnfast.backends.cpu): facts, the cost model's properties, flags(), autotuning
and its per-machine cache. No assertion here depends on which CPU runs it."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import rnnfast
from rnnfast import backends
from rnnfast.backends import cpu

ROOT = Path(__file__).resolve().parent.parent
CELLS = ("rnn_tanh", "rnn_relu", "gru", "lstm")


def _grid():
    for cell in CELLS:
        for T in (1, 2, 3, 50):
            for B in (1, 4, 5, 64):
                for H in (16, 128, 256, 1024):
                    for extra in ({}, {"grad": True}, {"lengths": True}, {"autocast": True}):
                        yield dict(cell=cell, T=T, B=B, H=H, P=0, reverse=False, **extra)


def test_facts_are_plausible():
    f = cpu.facts()
    assert f.vector_bytes in (16, 32, 64)
    assert 4 << 10 <= f.l1d_bytes <= f.l2_bytes
    assert f.l3_bytes == 0 or f.l3_bytes >= f.l2_bytes
    assert f.threads >= 1 and f.cpu_model
    assert cpu.read_facts() == dataclasses.replace(f, threads=torch.get_num_threads())


def test_module_choice_is_valid_and_supported():
    dev = torch.device("cpu")
    for sizes in _grid():
        choice = cpu.module_choice(sizes)
        assert choice in ("cpu", "torch"), sizes
        assert backends.REGISTRY[choice].supports("module", dev, torch.float32, sizes)[0] or choice == "cpu"


def test_module_choice_never_takes_torch_lstm_under_autocast():
    """torch.nn's CPU LSTM under autocast is oneDNN in bfloat16, which raises on CPUs without bf16."""
    for sizes in _grid():
        if sizes["cell"] == "lstm" and sizes.get("autocast"):
            assert cpu.module_choice(sizes) == "cpu", sizes


def test_module_choice_reads_no_vendor(monkeypatch):
    """The same facts but another CPU model name give the same choices everywhere."""
    before = [cpu.module_choice(s) for s in _grid()]
    monkeypatch.setattr(cpu, "_FACTS", dataclasses.replace(cpu.facts(), cpu_model="Another Vendor CPU 9000"))
    assert [cpu.module_choice(s) for s in _grid()] == before


def test_module_choice_follows_the_facts(monkeypatch):
    """Vector width and L2 are what the model reads: changing them may change choices, and every answer
    stays valid."""
    for vb, l2 in ((16, 256 << 10), (32, 1 << 20), (64, 2 << 20), (64, 32 << 20)):
        monkeypatch.setattr(cpu, "_FACTS", dataclasses.replace(cpu.facts(), vector_bytes=vb, l2_bytes=l2))
        assert {cpu.module_choice(s) for s in _grid()} <= {"cpu", "torch"}


def test_flags_force_and_restore():
    assert cpu.forced("path") is None and cpu.forced("gemm") is None
    with cpu.flags(path="rows", gemm="blocked"):
        assert cpu.forced("path") == "rows" and cpu.forced("gemm") == "blocked"
        with cpu.flags(path="team"):
            assert cpu.forced("path") == "team" and cpu.forced("gemm") == "blocked"
        assert cpu.forced("path") == "rows"
    assert cpu.forced("path") is None and cpu.forced("gemm") is None
    with pytest.raises(RuntimeError), cpu.flags(gemm="aten"):
        raise RuntimeError("inside")
    assert cpu.forced("gemm") is None


def test_flags_reject_unknown_values():
    with pytest.raises(ValueError, match=r"path: expected one of .* got 'fast'"):
        with cpu.flags(path="fast"):
            pass
    with pytest.raises(ValueError, match=r"gemm: expected one of .* got 'mkl'"):
        with cpu.flags(gemm="mkl"):
            pass


def test_flags_benchmark_restores(monkeypatch):
    monkeypatch.setattr(cpu, "benchmark", False)
    with cpu.flags(benchmark=True):
        assert cpu.benchmark
    assert not cpu.benchmark


# ---------------------------------------------------------------------------------------------
# Autotuning

SIZES = dict(cell="gru", T=20, B=3, H=24, P=0, lengths=False, reverse=False, grad=False, autocast=False)


@pytest.fixture
def tuning(monkeypatch, tmp_path):
    """Autotuning on, its cache in tmp_path, candidates replaced by their names and a stubbed timer."""
    monkeypatch.setenv("RNNFAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu, "benchmark", True)
    cpu.clear_memory()
    calls = []
    times = {"cpu": 2.0, "torch": 1.0}

    def measure(runs):
        calls.extend(runs)
        assert all(runs[name] == name for name in runs)
        return {name: times[name] for name in runs}

    monkeypatch.setattr(cpu, "_candidate", lambda name, sizes, dtype: name)
    monkeypatch.setattr(cpu, "measure", measure)
    yield times, calls
    cpu.clear_memory()


def test_autotune_picks_the_measured_fastest(tuning):
    times, calls = tuning
    dev = torch.device("cpu")
    assert backends.resolve("module", dev, torch.float32, SIZES) == "torch"
    assert sorted(calls) == ["cpu", "torch"]
    # Cached: no more measurements for the same key, even where the timer would now say otherwise.
    times.update(cpu=0.5)
    assert backends.resolve("module", dev, torch.float32, dict(SIZES, T=17, B=4)) == "torch"
    assert len(calls) == 2
    # Another key is measured afresh.
    assert backends.resolve("module", dev, torch.float32, dict(SIZES, H=40)) == "cpu"
    assert len(calls) == 4
    # The default policy consults the tuned results (the path torch.compile takes).
    assert cpu.module_choice(SIZES) == "torch"


def test_autotune_skips_forced_backends_and_bare_ops(tuning):
    _, calls = tuning
    dev = torch.device("cpu")
    assert backends.resolve("module", dev, torch.float32, SIZES, backend="cpu") == "cpu"
    assert backends.resolve("recurrence", dev, torch.float32, SIZES) in ("cpu", "reference")
    assert calls == []


def test_autotune_key_buckets_and_fields():
    k = cpu.tune_key(SIZES, torch.float32)
    assert k == cpu.tune_key(dict(SIZES, T=32, B=4), torch.float32)
    for change in ({"T": 33}, {"B": 5}, {"H": 25}, {"cell": "lstm"}, {"grad": True}, {"lengths": True}):
        assert cpu.tune_key(dict(SIZES, **change), torch.float32) != k, change
    assert cpu.tune_key(SIZES, torch.float64) != k


def test_autotune_cache_round_trips(tuning, tmp_path):
    times, calls = tuning
    cpu.tune(SIZES, torch.float32)
    path = cpu.cache_file()
    assert path.parent == tmp_path and path.exists()
    name = path.name
    assert torch.__version__.replace("+", "_") in name and rnnfast.__version__ in name
    data = json.loads(path.read_text())
    assert data["entries"][cpu.tune_key(SIZES, torch.float32)]["choice"] == "torch"
    assert not list(tmp_path.glob("*.tmp"))
    # A new process state: read from the file, not measured.
    cpu.clear_memory()
    times.update(cpu=0.1)
    assert cpu.tune(SIZES, torch.float32) == "torch"
    assert len(calls) == 2


def test_corrupt_cache_is_ignored_with_a_warning(tuning):
    path = cpu.cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="corrupt, ignored"):
        assert cpu.tune(SIZES, torch.float32) == "torch"
    # Rewritten whole, readable again.
    cpu.clear_memory()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu.tune(SIZES, torch.float32) == "torch"


_WRITER = textwrap.dedent(
    """
    import sys
    from rnnfast.backends import cpu
    i = int(sys.argv[1])
    for j in range(40):
        cpu.save(f"key-{i}-{j}", "cpu" if j % 2 else "torch", {"cpu": 1.0, "torch": 2.0})
    """
)


def test_cache_survives_two_processes_writing_at_once(tmp_path):
    env = dict(os.environ, RNNFAST_CACHE_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(i)], env=env) for i in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    files = list(tmp_path.glob("autotune-*.json"))
    assert len(files) == 1
    entries = json.loads(files[0].read_text())["entries"]
    assert set(entries) == {f"key-{i}-{j}" for i in range(2) for j in range(40)}
    assert not list(tmp_path.glob("*.tmp"))


def test_autotune_times_real_candidates(monkeypatch, tmp_path):
    """Unstubbed: each candidate is a real module call; the result is one of them and is cached."""
    monkeypatch.setenv("RNNFAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu, "REPEATS", 1)
    cpu.clear_memory()
    try:
        for sizes in (SIZES, dict(SIZES, cell="lstm", grad=True, lengths=True, reverse=True)):
            ok = backends.REGISTRY["cpu"].available()[0]
            if not ok:
                pytest.skip("the C++ CPU kernels are not built")
            assert cpu.tune(sizes, torch.float32) in ("cpu", "torch")
        assert len(json.loads(cpu.cache_file().read_text())["entries"]) == 2
    finally:
        cpu.clear_memory()


def test_module_forward_under_autotune_matches_torch_nn(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNFAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu, "REPEATS", 1)
    cpu.clear_memory()
    try:
        torch.manual_seed(0)
        ref = torch.nn.GRU(6, 10, dtype=torch.float64)
        m = rnnfast.from_torch(ref)
        x = torch.randn(7, 3, 6, dtype=torch.float64)
        with cpu.flags(benchmark=True):
            out = m(x)[0]
        torch.testing.assert_close(out, ref(x)[0])
    finally:
        cpu.clear_memory()


def test_info_prints_the_policy(capsys, monkeypatch, tmp_path):
    from rnnfast import cli

    monkeypatch.setenv("RNNFAST_CACHE_DIR", str(tmp_path))
    assert cli.main(["info", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    f = cpu.facts()
    assert f"L2 {f.l2_bytes >> 10} KiB" in out and f"{f.vector_bytes * 8}-bit vectors" in out
    assert str(cpu.cache_file()) in out


def test_cuda_flags_alias():
    from rnnfast.backends import cuda
    from rnnfast.ops.recurrence import cuda as impl

    assert cuda.flags is impl.flags


def test_compiled_module_reads_tuned_choice(monkeypatch, tmp_path):
    """Under torch.compile(fullgraph=True) the policy, with autotuning on, is read from the results held
    in memory (nothing is measured in the graph), with symbolic sizes: a tuned "torch" where the cost
    model says "cpu"."""
    tuned = "torch"
    monkeypatch.setenv("RNNFAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu, "benchmark", True)
    cpu.clear_memory()
    cpu._loaded_file[:] = [cpu.cache_file()]
    torch.manual_seed(0)
    ref = torch.nn.GRU(6, 10)
    m = rnnfast.from_torch(ref)
    seen = []
    real = cpu.module_choice

    def spy(sizes, dtype=torch.float32):
        seen.append(real(sizes, dtype))
        return seen[-1]

    monkeypatch.setattr(cpu, "module_choice", spy)
    x = torch.randn(7, 3, 6)
    assert real(dict(cell="gru", T=7, B=3, H=10, P=0, grad=True)) == "cpu"
    key = cpu.tune_key(dict(cell="gru", T=7, B=3, H=10, P=0, grad=True), torch.float32)
    cpu._tuned[key] = tuned
    try:
        c = torch.compile(m, fullgraph=True, dynamic=True)
        torch.testing.assert_close(c(x)[0], ref(x)[0], atol=1e-5, rtol=1e-5)
        assert seen and seen[0] == tuned
    finally:
        cpu.clear_memory()


def test_triton_flags_alias():
    pytest.importorskip("triton")
    from rnnfast.backends import triton
    from rnnfast.ops.recurrence import triton as impl

    assert triton.flags is impl.flags


def test_choices_script_dumps_and_compares(tmp_path):
    script = ROOT / "scripts" / "cpu_choices.py"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "c.json"
    subprocess.run([sys.executable, str(script), "--out", str(out)], env=env, check=True, timeout=600)
    data = json.loads(out.read_text())
    assert {v for k, v in data.items() if k.startswith("module ")} <= {"cpu", "torch"}
    assert all(v >= 1 for k, v in data.items() if k.startswith(("team ", "rows ")))
    other = dict(data, **{"input projection": "bogus"})
    (tmp_path / "d.json").write_text(json.dumps(other))
    r = subprocess.run(
        [sys.executable, str(script), "--compare", str(out), str(tmp_path / "d.json")],
        env=env, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert f"1 of {len(data)} choices differ" in r.stdout


def test_measure_interleaves_and_keeps_the_best(monkeypatch):
    """On a fake clock: every candidate warms up once, then the rounds run them in turns; the best round
    of each is returned."""
    clock, order = [0.0], []
    monkeypatch.setattr(cpu.time, "perf_counter", lambda: clock[0])
    cost = {"a": [5.0, 3.0, 2.0, 4.0, 2.5, 9.0], "b": [1.0, 1.5, 1.2, 1.1, 0.9, 1.3]}

    def run(name):
        def f():
            order.append(name)
            clock[0] += cost[name][sum(1 for n in order if n == name) - 1]

        return f

    monkeypatch.setattr(cpu, "MAX_SECONDS", 100.0)
    got = cpu.measure({"a": run("a"), "b": run("b")})
    assert order == ["a", "b"] + ["a", "b"] * cpu.REPEATS
    want = {"a": min(cost["a"][1 : 1 + cpu.REPEATS]), "b": min(cost["b"][1 : 1 + cpu.REPEATS])}
    assert got == pytest.approx(want)
