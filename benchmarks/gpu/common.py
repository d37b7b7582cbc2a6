"""What the stages of ``benchmarks/gpu_check.sh`` share.

- The output folder: at most eight files (``OUTPUT_FILES``), each appended to one JSON line (or log line)
  at a time and flushed, so a stage cut short by its time limit loses nothing it had finished.
- The record: every result line carries the run, stage, commit (and where it came from), GPU name,
  driver, CUDA, cuDNN, torch and Triton versions, the TF32 settings at the time and the UTC time.
- The budget: a stage stops starting cases when the next one would not finish before its deadline, and
  writes a ``skipped`` record for each case it leaves out.
- The kernel variants (``VARIANTS``): one table for the correctness and timing stages.
- The supervisor: a stage's cases run in a child process; a case that kills the process (a crash, a lost
  CUDA context) or makes no progress within its limit (a hang) is recorded as such, and a new child goes
  on with the next case, so one broken kernel costs one case, not the stage.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import importlib.metadata
import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]

# Everything a run leaves in --out. The caller of a lent machine gets back at most 8 files, named with
# letters, digits, '.', '_' and '-' only; gpu_check.sh writes the first two itself.
OUTPUT_FILES = {
    "log": "gpu_check.log",  # all console output of the run
    "run": "run.jsonl",  # one record per stage (rc, seconds, timed out), environment, plans, ptxas
    "build": "build.log",  # output of the install, ptxas -v included
    "smoke": "smoke.jsonl",
    "sanitize": "sanitize.jsonl",
    "timings": "timings.jsonl",
    "tests": "tests.jsonl",  # one record per test, written as each finishes
    "junit": "tests.xml",
}

# Statuses a result record can have; the first four mean something is wrong.
FAILING = ("fail", "error", "crashed", "hung")
STATUSES = FAILING + ("pass", "ok", "n/a", "skipped", "cut")

CASE_MARK, DONE_MARK = "@case", "@done"
CONTEXT_LOST = 3  # exit code of a child whose CUDA context broke: the parent starts a new one
CUT = 124  # exit code of a stage stopped by its time limit (that of coreutils' timeout)
DEFAULT_CASE_LIMIT_S = 60.0


# --------------------------------------------------------------------------------------------------
# Arguments


def parser(doc: str | None, budget_s: float) -> argparse.ArgumentParser:
    """The arguments every stage takes (gpu_check.sh passes them); ``budget_s`` is the stage's default."""
    p = argparse.ArgumentParser(
        description=(doc or "").strip().splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu-check")
    p.add_argument("--run", default=None, help="id of the gpu_check.sh run (default: the start time)")
    p.add_argument("--commit", default="unknown", help="commit of the code under test")
    p.add_argument(
        "--commit-source",
        default="none",
        choices=("git", "argument", "none"),
        help="where --commit came from",
    )
    p.add_argument("--budget-s", type=float, default=budget_s, help="seconds this stage may take")
    p.add_argument("--deadline", type=float, default=None, help="wall-clock deadline (overrides --budget-s)")
    p.add_argument("--dry-run", action="store_true", help="import, parse, print the plan; run nothing")
    p.add_argument("--child-start", type=int, default=None, help=argparse.SUPPRESS)
    return p


@dataclass
class Context:
    """One stage's run: where results go and what every record carries."""

    stage: str
    out: Path
    run: str
    commit: str
    commit_source: str

    @classmethod
    def from_args(cls, stage: str, args: argparse.Namespace) -> Context:
        run = args.run or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return cls(stage, Path(args.out), run, args.commit, args.commit_source)

    def base(self) -> dict:
        return {
            "run": self.run,
            "stage": self.stage,
            "commit": self.commit,
            "commit_source": self.commit_source,
            **environment(),
            "tf32": tf32_state(),
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def writer(self, key: str) -> ResultWriter:
        return ResultWriter(self.out / OUTPUT_FILES[key], self.base)


def budget_from_args(args: argparse.Namespace, clock: Callable[[], float] = time.time) -> Budget:
    return Budget(args.deadline, clock) if args.deadline is not None else Budget.of(args.budget_s, clock)


# --------------------------------------------------------------------------------------------------
# Records


def _nvidia_smi_gpu() -> tuple[str | None, str | None]:
    """(GPU name, driver version) of GPU 0 from nvidia-smi, without touching CUDA in this process."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None, None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    first = out.strip().splitlines()[0] if out.strip() else ""
    name, _, driver = first.rpartition(",")
    return (name.strip() or None), (driver.strip() or None)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def environment() -> dict:
    """GPU name and versions: from gpu_check.sh's environment where it set them, else queried here."""
    gpu, driver = os.environ.get("RNNFAST_GPU_CHECK_GPU"), os.environ.get("RNNFAST_GPU_CHECK_DRIVER")
    if not gpu or not driver:
        gpu, driver = _nvidia_smi_gpu()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "gpu": gpu,
        "driver": driver,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "torch": torch.__version__,
        "triton": _version("triton"),
    }


def tf32_state() -> dict:
    return {
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
    }


def jsonable(v: Any) -> Any:
    """``v`` with what JSON cannot hold made plain: non-finite floats as 'nan'/'inf', dtypes as names."""
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    return str(v)


class ResultWriter:
    """Appends one JSON line per record to ``path``, flushed at once. ``base`` gives the fields every
    record starts with (a record's own fields win)."""

    def __init__(self, path: Path, base: Callable[[], dict] | dict | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._base = base if callable(base) else (lambda b=dict(base or {}): b)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (lives as long as the writer)

    def write(self, record: dict) -> dict:
        full = jsonable({**self._base(), **record})
        self._file.write(json.dumps(full, allow_nan=False) + "\n")
        self._file.flush()
        return full

    def close(self) -> None:
        self._file.close()


def read_records(path: Path) -> list[dict]:
    """The records of a results file (a torn last line, from a process killed mid-write, is left out)."""
    out = []
    if not Path(path).exists():
        return out
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def error_record(e: BaseException) -> dict:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return {
        "status": "error",
        "error": f"{type(e).__name__}: {e}"[:2000],
        "traceback": "".join(tb)[-3000:],
    }


# --------------------------------------------------------------------------------------------------
# Time


class Budget:
    """Seconds left until a deadline on ``clock`` (wall-clock time, so a parent and its child agree)."""

    def __init__(self, deadline: float, clock: Callable[[], float] = time.time):
        self.deadline, self.clock = float(deadline), clock

    @classmethod
    def of(cls, seconds: float, clock: Callable[[], float] = time.time) -> Budget:
        return cls(clock() + seconds, clock)

    def left(self) -> float:
        return self.deadline - self.clock()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds


@dataclass
class Estimator:
    """Expected seconds of a case: the longest finished case of the same kind (``key``), else the
    longest of any kind, else ``default``; times ``margin``."""

    key: Callable[[dict], Any] = lambda case: case.get("kind")
    default: float = 5.0
    margin: float = 1.2
    _seen: dict = field(default_factory=dict)

    def add(self, case: dict, seconds: float) -> None:
        k = self.key(case)
        self._seen[k] = max(self._seen.get(k, 0.0), seconds)

    def estimate(self, case: dict) -> float:
        k = self.key(case)
        if k in self._seen:
            return self.margin * self._seen[k]
        return self.margin * max(self._seen.values(), default=self.default)


# --------------------------------------------------------------------------------------------------
# Kernel variants


@dataclass(frozen=True)
class Variant:
    """One way to run the recurrence: the ``backend=`` of the functional op and the context that forces
    its inner algorithm. A new schedule of a backend is one more row of ``VARIANTS``."""

    name: str
    backend: str
    flags: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def _cuda_algo(algo: str) -> Callable[[], contextlib.AbstractContextManager]:
    def flags():
        from rnnfast.ops.recurrence import cuda

        return cuda.flags(algo=algo)

    return flags


def _triton_schedule(schedule: str) -> Callable[[], contextlib.AbstractContextManager]:
    def flags():
        from rnnfast.ops.recurrence import triton

        return triton.flags(schedule=schedule)

    return flags


VARIANTS: tuple[Variant, ...] = (
    Variant("persistent", "cuda", _cuda_algo("persistent")),
    Variant("stepwise", "cuda", _cuda_algo("stepwise")),
    Variant("triton", "triton"),  # the cost model's schedule
    Variant("triton-step", "triton", _triton_schedule("step")),
    Variant("triton-graph", "triton", _triton_schedule("graph")),
    Variant("triton-persistent", "triton", _triton_schedule("persistent")),
)


def variant(name: str) -> Variant:
    for v in VARIANTS:
        if v.name == name:
            return v
    raise ValueError(f"variant: expected one of {[v.name for v in VARIANTS]}, got {name!r}")


def supports(
    v: Variant, cell: str, dtype: torch.dtype, T: int, B: int, H: int, lengths: bool, reverse: bool, device
) -> tuple[bool, str]:
    """Whether ``v`` can run this call, and why not: the sizes the functional op gives the backends."""
    from rnnfast import backends

    sizes = {"cell": cell, "T": T, "B": B, "H": H, "P": 0, "lengths": lengths, "reverse": reverse}
    with v.flags():
        return backends.REGISTRY[v.backend].supports("recurrence", torch.device(device), dtype, sizes)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------------------------------
# Running cases


def describe(case: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in case.items() if k != "limit_s")


def write_skipped(writer: ResultWriter, cases: Iterable[dict], why: str, status: str = "skipped") -> None:
    for case in cases:
        writer.write({**case, "status": status, "why": why})


def load_cuda_kernels() -> None:
    """Loads rnnfast's CUDA kernels (building them just in time if the install did not), so that no
    case's time limit pays for a build; what happened is printed."""
    if torch.cuda.is_available():
        from rnnfast import _cuda_ext

        print(f"CUDA kernels: {_cuda_ext.status()[1]}", flush=True)


def gpu_usable() -> bool:
    """False when this process's CUDA context is broken (a kernel fault is sticky): the next case must
    run in a new process. True without CUDA."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return True
    try:
        torch.cuda.synchronize()
        return torch.ones(1, device="cuda").add_(1).item() == 2.0
    except Exception:  # any CUDA error here means the context is gone
        return False


def run_child(
    cases: list[dict],
    start: int,
    run_case: Callable[[dict, Callable[[dict], None]], dict],
    writer: ResultWriter,
    budget: Budget,
    estimator: Estimator,
    usable: Callable[[], bool] = gpu_usable,
) -> int:
    """Runs ``cases[start:]`` in this process, one record each; announces each case to the supervisor.
    ``run_case(case, emit)`` returns the case's record; ``emit(row)`` writes a row of its own at once
    (the case's fields, then the row's), for cases that measure several things. Stops starting cases
    when the budget would not cover the next one (the rest are ``skipped``). Returns 0, or
    CONTEXT_LOST after a case that broke the CUDA context."""
    for i in range(start, len(cases)):
        case = cases[i]
        need = estimator.estimate(case)
        if not budget.allows(need):
            why = f"stage budget: {max(budget.left(), 0):.0f} s left, the next case needs about {need:.0f} s"
            write_skipped(writer, cases[i:], why)
            print(f"{len(cases) - i} cases skipped ({why})", flush=True)
            return 0
        print(f"{CASE_MARK} {i} {case.get('limit_s', DEFAULT_CASE_LIMIT_S)}", flush=True)
        t0 = budget.clock()
        try:
            record = run_case(case, lambda row, case=case: writer.write({**case, **row}))
        except Exception as e:  # recorded; the stage goes on with the next case
            record = error_record(e)
        seconds = budget.clock() - t0
        estimator.add(case, seconds)
        writer.write({**case, **record, "seconds": round(seconds, 3)})
        print(f"{DONE_MARK} {i}", flush=True)
        if record.get("status") in FAILING and not usable():
            print("the CUDA context is broken; a new process takes the next case", flush=True)
            return CONTEXT_LOST
    return 0


class StageCut(Exception):
    """SIGTERM: the stage's time limit is up."""


def _raise_cut(signum, frame):
    raise StageCut()


def _pump(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def supervise(
    child_argv: list[str],
    cases: list[dict],
    writer: ResultWriter,
    budget: Budget,
    restart_s: float = 15.0,
    poll_s: float = 0.5,
) -> int:
    """Runs ``cases`` through child processes (``child_argv`` + ``--child-start I``), each going on from
    where the last one stopped. A case during which the child died is recorded ``crashed``, one that ran
    past its ``limit_s`` ``hung`` (the child is killed). On SIGTERM the case in progress and the rest are
    recorded ``cut``. Returns 0, CUT after SIGTERM, 2 when a child died outside any case."""
    previous = signal.signal(signal.SIGTERM, _raise_cut)
    start, proc, current = 0, None, None
    try:
        while start < len(cases):
            proc = subprocess.Popen(
                child_argv + ["--child-start", str(start)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
            lines: queue.Queue = queue.Queue()
            threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
            current, last_done, hung, since, limit = None, start - 1, False, time.monotonic(), 0.0
            tail: deque = deque(maxlen=30)
            while True:
                try:
                    line = lines.get(timeout=poll_s)
                except queue.Empty:
                    if current is not None and time.monotonic() - since > limit:
                        proc.kill()
                        hung = True
                        break
                    if proc.poll() is not None and lines.empty():
                        break  # exited; a grandchild may still hold the pipe open
                    continue
                if line is None:
                    break
                word, _, rest = line.partition(" ")
                if word == CASE_MARK:
                    index, limit_s = rest.split()
                    current, limit, since = int(index), float(limit_s), time.monotonic()
                    print(f"[{current + 1}/{len(cases)}] {describe(cases[current])}", flush=True)
                elif word == DONE_MARK:
                    last_done, current = int(rest), None
                else:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                    tail.append(line)
            rc = proc.wait()
            if rc == 0 and not hung:
                return 0
            if current is not None:
                status = "hung" if hung else "crashed"
                why = (
                    f"no result after {limit:.0f} s (killed)"
                    if hung
                    else f"the process died (exit code {rc})"
                )
                seconds = round(time.monotonic() - since, 3)
                writer.write(
                    {
                        **cases[current],
                        "status": status,
                        "why": why,
                        "seconds": seconds,
                        "output_tail": "".join(tail),
                    }
                )
                start = current + 1
            elif rc == CONTEXT_LOST:
                start = last_done + 1
            else:
                writer.write(
                    {
                        "kind": "stage",
                        "status": "error",
                        "why": f"the stage's process ended outside any case (exit code {rc})",
                        "output_tail": "".join(tail),
                    }
                )
                return 2
            if start < len(cases) and not budget.allows(restart_s):
                write_skipped(writer, cases[start:], "stage budget: no time left to start a new process")
                return 0
        return 0
    except StageCut:
        if proc is not None and proc.poll() is None:
            proc.kill()
        rest = cases[current:] if current is not None else cases[start:]
        write_skipped(writer, rest, "the stage's time limit was reached", status="cut")
        return CUT
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_stage(
    ctx: Context,
    args: argparse.Namespace,
    argv: list[str],
    module: str,
    cases: list[dict],
    run_case: Callable[[dict, Callable[[dict], None]], dict],
    estimator: Estimator,
    setup: Callable[[], None] = lambda: None,
) -> int:
    """The usual main of a stage whose work is a list of cases: the plan under --dry-run, the cases
    themselves in a child (--child-start), else the supervisor of the children."""
    if args.dry_run:
        kinds: dict[str, int] = {}
        for c in cases:
            kinds[c.get("kind", "?")] = kinds.get(c.get("kind", "?"), 0) + 1
        print(f"{module}: {len(cases)} cases ({', '.join(f'{n} {k}' for k, n in kinds.items())})")
        return 0
    budget = budget_from_args(args)
    writer = ctx.writer(ctx.stage)
    if args.child_start is not None:
        setup()
        return run_child(cases, args.child_start, run_case, writer, budget, estimator)
    child = [sys.executable, "-m", module, *argv, "--run", ctx.run, "--deadline", str(budget.deadline)]
    return supervise(child, cases, writer, budget)
