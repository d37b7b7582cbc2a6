"""benchmarks/gpu_check.sh and its stages (benchmarks/gpu), without a GPU: the dry run (every stage's
entry point imports and parses its arguments; the limits add up to at most 600 s), the script's argument
checks and lint, and the logic the stages run on: the result writer (flushed per record, the fields
every record carries), the budget guard (on a fake clock), the supervisor of a stage's cases (a crash,
a hang and a lost CUDA context each cost one case), the accuracy rule on CPU tensors, the sanitizer's
options and verdicts, the build's ptxas summary, the pytest plugin, the final summary."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from benchmarks.gpu import common, env, pytests, sanitize, smoke, summary, timings

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _script(*args, timeout=300):
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


# --------------------------------------------------------------------------------------------------
# The script


@pytest.mark.slow
def test_dry_run_checks_every_stage_and_prints_limits_within_600_s():
    r = _script("--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    limits = [int(m) for m in re.findall(r"^stage \d \w+: limit (\d+) s", r.stdout, re.M)]
    names = re.findall(r"^stage \d (\w+):", r.stdout, re.M)
    assert names == ["env", "smoke", "sanitize", "timings", "pytests"], r.stdout
    summary_limit = int(re.search(r"^summary: limit (\d+) s", r.stdout, re.M).group(1))
    total = int(re.search(r"^total (\d+) s$", r.stdout, re.M).group(1))
    assert total == sum(limits) + summary_limit <= 600, r.stdout
    # Each entry point said what it would run.
    for line in (
        "benchmarks.gpu.env:",
        "benchmarks.gpu.smoke:",
        "benchmarks.gpu.sanitize:",
        "benchmarks.gpu.timings:",
    ):
        assert line in r.stdout, r.stdout
    assert re.search(r"benchmarks\.gpu\.pytests: [1-9]\d* tests", r.stdout), r.stdout


def test_dry_run_of_one_stage_and_its_limit():
    r = _script("--dry-run", "--stage", "3", "--limit", "200")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stage 3 timings: limit 200 s" in r.stdout and "total 210 s" in r.stdout, r.stdout
    assert "stage 1" not in r.stdout


@pytest.mark.parametrize(
    "args, word",
    [
        (["--stage", "7"], "--stage"),
        (["--stage", "x"], "--stage"),
        (["--limit", "100"], "--limit"),  # without --stage
        (["--stage", "1", "--limit", "5"], "--limit"),
        (["--commit", "not-a-sha"], "--commit"),
        (["--frobnicate"], "unknown argument"),
    ],
)
def test_bad_arguments_are_refused_by_name(args, word):
    r = _script(*args, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert word in r.stderr, r.stderr


def test_script_is_clean_bash():
    shellcheck = shutil.which("shellcheck")
    cmd = [shellcheck, str(SCRIPT)] if shellcheck else ["bash", "-n", str(SCRIPT)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_output_files_are_few_and_named_as_the_script_writes_them():
    names = list(common.OUTPUT_FILES.values())
    assert len(names) <= 8 and len(set(names)) == len(names), names
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names), names
    text = SCRIPT.read_text()
    assert f'"$out/{common.OUTPUT_FILES["log"]}"' in text and f'"$out/{common.OUTPUT_FILES["run"]}"' in text
    stages = re.search(r"^NAMES=\((.*)\)$", text, re.M).group(1).split()
    for name in stages:  # each stage an entry point, and its results file one of the eight
        assert (ROOT / "benchmarks" / "gpu" / f"{name}.py").exists(), name


# --------------------------------------------------------------------------------------------------
# Records


def test_writer_flushes_each_record_before_the_process_ends(tmp_path):
    """A stage killed mid-way (SIGKILL: no cleanup at all) keeps every record it had written."""
    path = tmp_path / "r.jsonl"
    child = textwrap.dedent(
        f"""
        import os, sys, time
        from benchmarks.gpu.common import ResultWriter
        w = ResultWriter({str(path)!r}, {{"run": "r1"}})
        w.write({{"case": 1}})
        w.write({{"case": 2, "err": float("nan")}})
        print("written", flush=True)
        time.sleep(60)
        """
    )
    p = subprocess.Popen([sys.executable, "-c", child], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "written"
    finally:
        p.kill()
        p.wait()
    records = common.read_records(path)
    assert [r["case"] for r in records] == [1, 2] and records[1]["err"] == "nan", records


def test_records_carry_run_commit_versions_and_tf32(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNFAST_GPU_CHECK_GPU", "NVIDIA H100 80GB HBM3")
    monkeypatch.setenv("RNNFAST_GPU_CHECK_DRIVER", "580.65.06")
    common.environment.cache_clear()
    try:
        args = common.parser("x", budget_s=10).parse_args(
            ["--out", str(tmp_path), "--run", "R", "--commit", "abc1234", "--commit-source", "argument"]
        )
        ctx = common.Context.from_args("timings", args)
        w = ctx.writer("timings")
        w.write({"provider": "cudnn", "dtype": torch.bfloat16, "median_ms": 1.5, "ratio": float("inf")})
        (rec,) = common.read_records(tmp_path / common.OUTPUT_FILES["timings"])
    finally:
        common.environment.cache_clear()
    for key in (
        "run",
        "stage",
        "commit",
        "commit_source",
        "gpu",
        "driver",
        "cuda",
        "cudnn",
        "torch",
        "triton",
    ):
        assert key in rec, key
    assert rec["run"] == "R" and rec["stage"] == "timings" and rec["commit"] == "abc1234"
    assert rec["commit_source"] == "argument" and rec["gpu"] == "NVIDIA H100 80GB HBM3"
    assert rec["driver"] == "580.65.06" and rec["torch"] == torch.__version__
    assert set(rec["tf32"]) == {"cudnn_allow_tf32", "matmul_allow_tf32"}
    assert rec["dtype"] == "bfloat16" and rec["ratio"] == "inf" and rec["median_ms"] == 1.5


def test_read_records_leaves_out_a_torn_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert common.read_records(path) == [{"a": 1}, {"a": 2}]


# --------------------------------------------------------------------------------------------------
# Budget and supervisor


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_budget_guard_stops_starting_cases_near_the_deadline(tmp_path, capsys):
    clock = FakeClock()
    budget = common.Budget.of(10.0, clock)
    writer = common.ResultWriter(tmp_path / "r.jsonl")
    ran = []

    def run_case(case, emit):
        ran.append(case["i"])
        clock.t += 3.0
        return {"status": "pass"}

    cases = [{"kind": "k", "i": i} for i in range(6)]
    est = common.Estimator(default=3.0, margin=1.0)
    assert common.run_child(cases, 0, run_case, writer, budget, est) == 0
    assert ran == [0, 1, 2]  # after three cases 1 s is left; the next needs the 3 s the others took
    records = common.read_records(tmp_path / "r.jsonl")
    assert [r["status"] for r in records] == ["pass"] * 3 + ["skipped"] * 3
    assert all("budget" in r["why"] for r in records[3:]) and records[0]["seconds"] == 3.0
    out = capsys.readouterr().out
    assert f"{common.CASE_MARK} 0 " in out and f"{common.DONE_MARK} 2" in out


def test_estimator_learns_per_kind():
    est = common.Estimator(key=lambda c: c["k"], default=2.0, margin=1.5)
    assert est.estimate({"k": "a"}) == 3.0  # nothing seen: the default
    est.add({"k": "a"}, 4.0)
    est.add({"k": "a"}, 1.0)
    assert est.estimate({"k": "a"}) == 6.0  # the longest of its kind
    assert est.estimate({"k": "b"}) == 6.0  # unseen kind: the longest of any


def test_a_failing_case_is_recorded_and_the_next_one_runs(tmp_path):
    writer = common.ResultWriter(tmp_path / "r.jsonl")

    def run_case(case, emit):
        emit({"row": 1})
        if case["i"] == 0:
            raise ValueError("bad numbers")
        return {"status": "pass"}

    cases = [{"kind": "k", "i": 0}, {"kind": "k", "i": 1}]
    rc = common.run_child(cases, 0, run_case, writer, common.Budget.of(60), common.Estimator(), lambda: True)
    assert rc == 0
    records = common.read_records(tmp_path / "r.jsonl")
    assert [(r["i"], r.get("row"), r.get("status")) for r in records] == [
        (0, 1, None),
        (0, None, "error"),
        (1, 1, None),
        (1, None, "pass"),
    ]
    assert "ValueError: bad numbers" in records[1]["error"]


CHILD = """
import os, sys, time
from benchmarks.gpu import common

CASES = [{"kind": "k", "i": i, "do": do, "limit_s": 2} for i, do in enumerate(%r)]

def run_case(case, emit):
    if case["do"] == "crash":
        os._exit(7)
    if case["do"] == "hang":
        time.sleep(120)
    if case["do"] == "lose":
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    return {"status": "pass"}

start = int(sys.argv[sys.argv.index("--child-start") + 1])
writer = common.ResultWriter(%r)
usable = lambda: False  # after a failing case, as when a kernel fault broke the context
sys.exit(common.run_child(CASES, start, run_case, writer, common.Budget.of(120), common.Estimator(), usable))
"""


@pytest.mark.slow
def test_supervisor_records_a_crash_a_hang_and_a_lost_context_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    plan = ["ok", "crash", "ok", "hang", "lose", "ok"]
    path = tmp_path / "smoke.jsonl"
    script = tmp_path / "child.py"
    script.write_text(CHILD % (plan, str(path)))
    cases = [{"kind": "k", "i": i, "do": do, "limit_s": 2} for i, do in enumerate(plan)]
    writer = common.ResultWriter(path)
    rc = common.supervise([sys.executable, str(script)], cases, writer, common.Budget.of(120), poll_s=0.1)
    assert rc == 0
    by_case = {}
    for r in common.read_records(path):
        by_case.setdefault(r["i"], []).append(r["status"])
    assert by_case == {0: ["pass"], 1: ["crashed"], 2: ["pass"], 3: ["hung"], 4: ["error"], 5: ["pass"]}, (
        by_case
    )


def test_supervisor_records_a_child_that_dies_outside_any_case(tmp_path):
    path = tmp_path / "r.jsonl"
    writer = common.ResultWriter(path)
    rc = common.supervise(
        [sys.executable, "-c", "import sys; sys.exit(4)"], [{"kind": "k"}], writer, common.Budget.of(60)
    )
    assert rc == 2
    (rec,) = common.read_records(path)
    assert rec["status"] == "error" and "exit code 4" in rec["why"]


# --------------------------------------------------------------------------------------------------
# Stage 1: the accuracy rule


def test_the_rule_allows_twice_cudnns_error_and_no_more():
    g = torch.Generator().manual_seed(0)
    want = torch.rand(64, 33, generator=g, dtype=torch.float64) - 0.5
    noise = torch.rand(64, 33, generator=g, dtype=torch.float64) - 0.5
    noise /= noise.abs().max()
    cudnn = want + 1e-3 * noise
    assert smoke.judge("y", torch.float32, want + 1.9e-3 * noise, cudnn, want)["ok"]
    bad = smoke.judge("y", torch.float32, want + 2.1e-3 * noise, cudnn, want)
    assert not bad["ok"] and bad["why"].startswith("y:") and bad["err"] == pytest.approx(2.1e-3)
    assert bad["cudnn_err"] == pytest.approx(1e-3)
    nan = (want + 0).index_put_(
        (torch.tensor([3]), torch.tensor([5])), torch.tensor(float("nan"), dtype=torch.float64)
    )
    assert not smoke.judge("y", torch.float32, nan, cudnn, want)["ok"]
    assert not smoke.judge("dgi", torch.float32, None, cudnn, want)["ok"]


def test_the_rule_keeps_a_floor_of_a_few_ulps_where_cudnn_is_exact():
    want = torch.linspace(-1, 1, 50, dtype=torch.float64)
    assert smoke.judge("h_n", torch.bfloat16, want + 1e-2, want, want)["ok"]  # bf16 floor 1.6e-2
    assert not smoke.judge("h_n", torch.bfloat16, want + 3e-2, want, want)["ok"]
    assert not smoke.judge("h_n", torch.float32, want + 1e-5, want, want)["ok"]  # fp32 floor 1e-6


REFERENCE = common.Variant("reference", "reference")


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh"])
def test_accuracy_case_runs_on_cpu_with_the_reference_backend(cell):
    rec = smoke.accuracy(REFERENCE, cell, torch.float32, 9, 5, 33, "ragged_reverse", device="cpu")
    names = [c["name"] for c in rec["checks"]]
    expected = ["y", "h_n"] + (["c_n"] if cell == "lstm" else []) + ["dgi", "dh0"]
    expected += (["dc0"] if cell == "lstm" else []) + ["dw_hh", "db_hh"]
    assert rec["status"] == "pass" and names == expected, rec


def test_accuracy_case_fails_a_wrong_output(monkeypatch):
    right = smoke.run_recurrence

    def wrong(cell, a, reverse, backend):
        y, h, c = right(cell, a, reverse, backend)
        return y * 1.01, h, c

    monkeypatch.setattr(smoke, "run_recurrence", wrong)
    rec = smoke.accuracy(REFERENCE, "gru", torch.float32, 9, 5, 33, "plain", device="cpu")
    failing = [c["name"] for c in rec["checks"] if not c["ok"]]
    assert rec["status"] == "fail" and "y" in failing and "h_n" not in failing, rec


def test_accuracy_case_of_a_variant_that_cannot_run_is_not_applicable():
    rec = smoke.accuracy(common.variant("persistent"), "gru", torch.float32, 9, 5, 33, "plain", device="cpu")
    assert rec["status"] == "n/a" and "CUDA" in rec["why"], rec


def test_smoke_cases_cover_every_cell_dtype_variant_and_problem():
    cases = smoke.cases()
    acc = {(c["variant"], c["cell"], c["dtype"], c["H"]) for c in cases if c["kind"] == "accuracy"}
    assert len(acc) == len(common.VARIANTS) * 4 * 3 * len(smoke.PROBLEMS)
    assert cases[0]["kind"] == "capture" and cases[0]["first_call"] and cases[-1]["kind"] == "two_streams"
    kinds = [c["kind"] for c in cases]
    assert kinds.index("accuracy") > max(i for i, c in enumerate(cases) if c.get("first_call"))


# --------------------------------------------------------------------------------------------------
# Stage 2: compute-sanitizer

HELP_2025 = """
  --kernel-name arg                     key1=val1,key2=val2,...
  --kernel-name-exclude arg             key1=val1,key2=val2,...
  --launch-timeout arg                  Timeout in seconds to wait to connect to the target process.
  --print-limit arg (=100)              When this is set, ...
"""


def test_sanitizer_options_follow_its_help():
    args = sanitize.sanitizer_args(HELP_2025)
    assert (
        args[:2] == ["--kernel-name", "kns=rnnfast"]
        and "--launch-timeout" in args
        and "--print-limit" in args
    )
    assert args[-2:] == ["--error-exitcode", str(sanitize.SANITIZER_ERRORS)]
    assert sanitize.sanitizer_args("  --filter arg   kernel filter")[:2] == ["--filter", "kns=rnnfast"]
    assert "kns=rnnfast" not in sanitize.sanitizer_args("")


def test_sanitizer_verdicts():
    clean = "driver: 8 calls done\n========= ERROR SUMMARY: 0 errors\n"
    assert sanitize.judge_tool(0, sanitize.parse_output(clean))[0] == "pass"
    found = "driver: 8 calls done\n========= ERROR SUMMARY: 3 errors\n"
    parsed = sanitize.parse_output(found)
    assert parsed["errors"] == 3 and parsed["summary"] == ["========= ERROR SUMMARY: 3 errors"]
    assert sanitize.judge_tool(sanitize.SANITIZER_ERRORS, parsed)[0] == "fail"
    broken = "driver: the cuda backend cannot run: no CUDA device\n========= ERROR SUMMARY: 0 errors\n"
    assert sanitize.judge_tool(2, sanitize.parse_output(broken))[0] == "error"
    assert sanitize.judge_tool(0, sanitize.parse_output("driver: 8 calls done\n"))[0] == "error"
    assert sanitize.judge_tool(None, sanitize.parse_output(clean))[0] == "cut"
    listed = sanitize.parse_output(
        "kernel: void rnnfast::fwd_persistent_kernel<float, 3>(...)\nkernel: gemm\n"
    )
    assert listed["kernels"] == ["void rnnfast::fwd_persistent_kernel<float, 3>(...)", "gemm"]


def test_sanitizer_time_shares():
    assert sanitize.plan_timeout("memcheck", 100.0, {}) == 50.0  # shares with racecheck
    assert sanitize.plan_timeout("racecheck", 60.0, {"memcheck": 40.0}) == 60.0
    assert sanitize.plan_timeout("synccheck", 30.0, {"memcheck": 40.0, "racecheck": 20.0}) is None
    assert sanitize.plan_timeout("synccheck", 50.0, {"memcheck": 40.0, "racecheck": 20.0}) == 50.0
    assert sanitize.plan_timeout("memcheck", 0.0, {}) is None


def test_sanitizer_env_poisons_except_under_initcheck():
    assert sanitize.tool_env("memcheck")["RNNFAST_DEBUG_POISON"] == "1"
    assert sanitize.tool_env("initcheck")["RNNFAST_DEBUG_POISON"] == "0"
    assert sanitize.tool_env("racecheck")["PYTORCH_NO_CUDA_MEMORY_CACHING"] == "1"


# --------------------------------------------------------------------------------------------------
# Stage 0 and 3


PTXAS = """
[3/5] nvcc ... persistent_fwd.cu
ptxas info    : Compiling entry function '_ZN7rnnfast21fwd_persistent_kernelIfLi3EEEvv' for 'sm_90'
ptxas info    : Function properties for _ZN7rnnfast21fwd_persistent_kernelIfLi3EEEvv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 71 registers, used 1 barriers
ptxas info    : Compiling entry function '_ZN7rnnfast15fwd_step_kernelIfLi3EEEvv' for 'sm_90'
ptxas info    : Function properties for _ZN7rnnfast15fwd_step_kernelIfLi3EEEvv
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers
rnnfast: CUDA kernels built: CUDA 13.0, nvcc from /usr/local/cuda
"""


def test_build_summary_reads_registers_and_spills():
    record, kernels = env.build_summary(PTXAS, 0, 61.0)
    assert record["status"] == "pass" and record["kernels"] == 2 and record["max_regs"] == 71
    assert record["cuda_kernels"].startswith("built CUDA 13.0")
    assert [k["regs"] for k in kernels] == [71, 40] and kernels[1]["spill_stores"] == 4
    assert len(record["spilling_kernels"]) == 1 and "fwd_step_kernel" in record["spilling_kernels"][0]
    assert env.build_summary("", None, 120.0)[0]["status"] == "cut"
    cmd, extra = env.pip_command()
    assert cmd[-4:] == ["-e", ".", "--no-deps", "--no-build-isolation"]
    assert extra["NVCC_APPEND_FLAGS"].endswith("-Xptxas -v") and extra["MAX_JOBS"]


def test_nvidia_smi_fields():
    csv = "name, driver_version, memory.total [MiB]\nNVIDIA H100 80GB HBM3, 580.65.06, 81559 MiB\n"
    assert env.smi_fields(csv) == {
        "name": "NVIDIA H100 80GB HBM3",
        "driver_version": "580.65.06",
        "memory.total [MiB]": "81559 MiB",
    }
    assert env.smi_fields("") == {}


def test_timing_cases_come_in_priority_order():
    cases = timings.cases()
    assert [c["kind"] for c in cases[:3]] == ["floor", "anchor", "anchor"]
    grid = [(c["dtype"], c["B"]) for c in cases if c["kind"] == "grid"]
    assert len(grid) == 2 * 2 * 4 * 2 * 2 == len(set(map(str, cases[3:]))) and len(set(grid)) == 8
    blocks = [grid[i] for i in range(0, len(grid), 8)]  # 8 cases (cell x H x mode) per dtype and B
    assert blocks == [
        ("bfloat16", 1),
        ("bfloat16", 16),
        ("bfloat16", 64),
        ("float32", 1),
        ("float32", 16),
    ] + [
        ("float32", 64),
        ("bfloat16", 256),
        ("float32", 256),
    ]


def test_timing_rows_carry_median_spread_and_the_ratio_to_cudnn():
    rows = []
    fns = {"cudnn": lambda: sum(range(20000)), "persistent": lambda: sum(range(2000))}
    out = timings._measure(fns, rows.append, {"persistent": {"algorithm": "x"}}, 100, {}, device="cpu")
    assert set(out) == {"cudnn", "persistent"}
    cudnn, ours = rows
    for r in rows:
        assert r["status"] == "ok" and r["reps"] >= 2 * 3
        assert r["q25_ms"] <= r["median_ms"] <= r["q75_ms"] and r["min_ms"] <= r["max_ms"]
        assert r["us_per_step"] == pytest.approx(1e3 * r["median_ms"] / 100)
    assert "vs_cudnn" not in cudnn and ours["vs_cudnn"] == pytest.approx(
        cudnn["median_ms"] / ours["median_ms"]
    )
    assert ours["algorithm"] == "x"


def test_timing_rows_carry_the_cost_models_step_time_of_the_algorithm_chosen(monkeypatch):
    # The model's µs/step for what the backend runs (persistent forward, stepwise backward here), so the
    # first GPU run reads each measurement against it; the plan op itself needs a GPU and is stubbed.
    from rnnfast.ops.recurrence import cuda

    chosen = {False: (cuda._PERSISTENT, "persistent (stub)"), True: (cuda._STEPWISE, "stepwise (stub)")}
    monkeypatch.setattr(cuda, "algorithm", lambda cell, dtype, B, H, bwd, dev: chosen[bwd])
    monkeypatch.setattr(cuda, "tf32_allowed", lambda: False)
    v = common.variant("persistent")
    fwd = timings._algorithm(v, "lstm", torch.bfloat16, 16, 768, False)
    both = timings._algorithm(v, "lstm", torch.bfloat16, 16, 768, True)
    gpu = cuda.Gpu()
    want_fwd = cuda.step_time("lstm", torch.bfloat16, 16, 768, False, False, gpu)["persistent"]
    want_bwd = cuda.step_time("lstm", torch.bfloat16, 16, 768, True, False, gpu)["stepwise"]
    assert fwd == {"algorithm": "forward persistent (stub)", "model_us_per_step": round(want_fwd, 3)}
    assert both["model_us_per_step"] == pytest.approx(want_fwd + want_bwd, abs=1e-3)
    assert both["algorithm"] == "forward persistent (stub); backward stepwise (stub)"
    assert timings._algorithm(common.variant("triton"), "lstm", torch.bfloat16, 16, 768, True) == {
        "algorithm": None
    }
    row = {"kind": "case", "cell": "lstm", "dtype": "bfloat16", "B": 16, "T": 8, "H": 768, "mode": "fwd"}
    row |= {"provider": "persistent", "status": "ok", "us_per_step": 2.5, "vs_cudnn": 1.2, **fwd}
    (line,) = summary.timing_lines([row])[1:]
    assert f"persistent 2.50 [1.20x] {{{fwd['model_us_per_step']:.2f}}}" in line


def test_timing_provider_that_raises_gets_an_error_row():
    def boom():
        raise RuntimeError("launch failed")

    rows = []
    timings._measure({"cudnn": lambda: None, "triton": boom}, rows.append, {}, 10, {}, device="cpu")
    assert [r["status"] for r in rows] == ["ok", "error"] and "launch failed" in rows[1]["error"]


# --------------------------------------------------------------------------------------------------
# Stage 4 and the summary


PYTEST_FILE = """
def test_long_sequence():
    pass

def test_matches_fp64_within_torch_nn_error():
    pass

def test_first():
    pass

def test_second():
    assert False, "wrong"
"""


@pytest.mark.slow
def test_pytest_stage_orders_records_and_stops_on_budget(tmp_path):
    (tmp_path / "test_fake.py").write_text(PYTEST_FILE)
    out = tmp_path / "out"
    code = textwrap.dedent(
        f"""
        import sys, pytest
        from benchmarks.gpu import common, pytests
        budget = common.Budget.of(float(sys.argv[1]))
        rec = pytests.Recorder(common.ResultWriter({str(out / "tests.jsonl")!r}), budget)
        sys.exit(pytest.main([{str(tmp_path / "test_fake.py")!r}, "-q", "-p", "no:cacheprovider",
                              "--rootdir", {str(tmp_path)!r}], plugins=[rec]))
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code, "600"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    records = common.read_records(out / "tests.jsonl")
    order = [pytests.function_of(x["nodeid"]) for x in records if x["kind"] == "test"]
    assert order == [
        "test_first",
        "test_second",
        "test_matches_fp64_within_torch_nn_error",
        "test_long_sequence",
    ], r.stdout
    assert [x["status"] for x in records if x["kind"] == "test"] == ["pass", "fail", "pass", "pass"]
    assert "wrong" in records[1]["why"] and records[-1]["kind"] == "session" and records[-1]["not_run"] == 0
    (out / "tests.jsonl").unlink()
    subprocess.run([sys.executable, "-c", code, "5"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    records = common.read_records(out / "tests.jsonl")
    assert [x["kind"] for x in records] == ["test", "session"], records  # 5 s < the 10 s reserve
    assert records[-1]["status"] == "cut" and records[-1]["not_run"] == 3


def test_summary_lists_failures_and_timings(tmp_path):
    run = {"run": "R"}
    w = common.ResultWriter(tmp_path / common.OUTPUT_FILES["run"], run)
    w.write(
        {"kind": "stage", "stage": "smoke", "stage_number": 1, "rc": 0, "seconds": 80, "timed_out": False}
    )
    w = common.ResultWriter(tmp_path / common.OUTPUT_FILES["smoke"], run)
    w.write({"kind": "accuracy", "variant": "persistent", "cell": "gru", "status": "pass"})
    w.write(
        {
            "kind": "accuracy",
            "variant": "stepwise",
            "cell": "lstm",
            "status": "fail",
            "why": "dgi: max abs diff",
        }
    )
    w = common.ResultWriter(tmp_path / common.OUTPUT_FILES["timings"], run)
    row = {"kind": "grid", "cell": "gru", "dtype": "bfloat16", "B": 16, "T": 256, "H": 256, "mode": "infer"}
    w.write(row | {"provider": "cudnn", "status": "ok", "us_per_step": 3.0})
    w.write(row | {"provider": "persistent", "status": "ok", "us_per_step": 2.0, "vs_cudnn": 1.5})
    lines, ok = summary.summarize(tmp_path)
    text = "\n".join(lines)
    assert not ok
    assert "fail: kind=accuracy variant=stepwise cell=lstm (dgi: max abs diff)" in text, text
    assert "smoke.jsonl: 1 fail, 1 pass" in text and "stage 1 smoke" in text
    assert "persistent 2.00 [1.50x]" in text, text
    assert json.loads((tmp_path / "smoke.jsonl").read_text().splitlines()[0])["run"] == "R"


def test_timing_case_runs_on_cpu_checks_then_times_each_provider(monkeypatch):
    """The whole of a stage-3 case with the reference backend as the rnnfast provider (torch.nn on the
    CPU as 'cudnn'), a variant that cannot run here, and one whose forward is wrong."""
    right = timings.run_recurrence

    @contextlib.contextmanager
    def off_by_one_percent():
        def wrong(cell, a, reverse, backend):
            y, h, c = right(cell, a, reverse, backend)
            return y * 1.01, h, c

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(timings, "run_recurrence", wrong)
            yield

    variants = (
        REFERENCE,
        common.variant("persistent"),
        common.Variant("wrong", "reference", off_by_one_percent),
    )
    monkeypatch.setattr(common, "VARIANTS", variants)
    rows = []
    case = {"kind": "grid", "cell": "lstm", "dtype": "float32", "B": 3, "T": 8, "H": 16, "mode": "fwdbwd"}
    rec = timings.time_case(case, rows.append, device="cpu")
    by = {r["provider"]: r for r in rows}
    assert set(by) == {"cudnn", "cudnn_input", "reference", "persistent", "wrong"}, rows
    assert by["persistent"]["status"] == "n/a" and "CUDA" in by["persistent"]["why"]
    assert by["wrong"]["status"] == "fail" and by["wrong"]["max_rel_err"] > by["wrong"]["tolerance"]
    assert "median_ms" not in by["wrong"]  # a provider that disagrees is not timed
    ok = by["reference"]
    assert ok["status"] == "ok" and ok["max_rel_err"] <= ok["tolerance"] and ok["vs_cudnn"] > 0
    assert by["cudnn"]["status"] == by["cudnn_input"]["status"] == "ok"
    assert rec["status"] == "fail" and rec["providers"]["reference"] == "ok"


def test_environment_report_runs_without_a_gpu(tmp_path, capsys):
    w = common.ResultWriter(tmp_path / "run.jsonl", {"run": "R"})
    env.report(w)
    (rec,) = common.read_records(tmp_path / "run.jsonl")
    assert rec["kind"] == "env" and rec["cuda_available"] == torch.cuda.is_available()
    assert set(rec["tools"]) == {"nvcc", "compute-sanitizer", "ncu"} and rec["python"]
    assert "nvcc:" in capsys.readouterr().out


@pytest.mark.slow
def test_a_stage_stopped_by_its_time_limit_records_the_rest_as_cut(tmp_path):
    """SIGTERM to the stage's process group, as coreutils' timeout sends it: the case in progress and
    the ones after it are recorded ``cut`` and the stage exits with timeout's code."""
    path = tmp_path / "r.jsonl"
    code = textwrap.dedent(
        f"""
        import sys
        from benchmarks.gpu import common
        cases = [{{"kind": "k", "i": i, "limit_s": 100}} for i in range(3)]
        child = [sys.executable, "-c", "import time; print('@case 1 100', flush=True); time.sleep(100)"]
        sys.exit(common.supervise(child, cases, common.ResultWriter({str(path)!r}), common.Budget.of(100)))
        """
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert p.stdout.readline().startswith("[2/3] kind=k i=1")
        os.killpg(p.pid, signal.SIGTERM)
        assert p.wait(timeout=30) == common.CUT
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert [(r["i"], r["status"]) for r in common.read_records(path)] == [(1, "cut"), (2, "cut")]


def test_pytest_stage_leaves_the_offline_compile_tests_to_the_cpu_run():
    # The sm_90 compile checks need no GPU and run in every CPU test run; the stage's minute goes to the
    # tests that do need one.
    rec = pytests.Recorder(None, common.Budget.of(60.0))
    args = [a for a in pytests.pytest_args(None) if a not in ("-q", "-rfEs")]
    rc = pytest.main([*args, "--collect-only", "-qq"], plugins=[rec])
    names = {pytests.function_of(i.nodeid) for i in rec.items}
    assert rc == 0 and names, names
    assert not any("compile_for_sm90" in n for n in names), names
    assert "test_module_vs_cudnn" in names
