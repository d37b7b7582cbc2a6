"""Stage 2: compute-sanitizer on rnnfast's CUDA kernels; one record per step in sanitize.jsonl.

The driver (``--driver``) forces the persistent algorithm and launches its forward and backward kernels
for GRU and LSTM, bfloat16 and float32 (``--dtypes``), on two problems: T=4, B=6, H=33 with lengths
[4, 0, 2, 1, 4, 3] in reverse (a zero length; one hidden unit per CTA) and T=3, B=17, H=300 (several
units per CTA, two batch chunks). It stops with an error if any of them would not run persistent.

Steps:
1. the driver once without the sanitizer, under torch.profiler: the kernels it launched whose name
   contains the filter's substring (``rnnfast``, the kernels' namespace, hence in their mangled names).
   Without one the sanitizer would check nothing, and the tools are skipped as failed.
2. memcheck, then racecheck, each with its share of the budget; then synccheck and initcheck if the
   longest tool so far would fit again. Each runs ``compute-sanitizer --tool T --kernel-name
   kns=rnnfast ...`` on the driver (the filter syntax is taken from the installed version's --help; the
   command is printed and recorded), with PyTorch's caching allocator off (every tensor its own
   allocation, so an access past its end is caught) and outputs NaN-poisoned, except under initcheck,
   which must see reads of memory nothing wrote.
Each record: the tool, its command, exit code, the sanitizer's SUMMARY lines and ERROR SUMMARY count,
seconds, and whether the driver finished. Without compute-sanitizer every tool is recorded skipped.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import torch

from benchmarks.gpu import common

FILTER = "rnnfast"
TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
REQUIRED = ("memcheck", "racecheck")
SANITIZER_ERRORS = 86  # --error-exitcode: tells the sanitizer's findings from a failing driver
DRIVER_PROBLEMS = (
    (4, 6, 33, (4, 0, 2, 1, 4, 3), True),
    (3, 17, 300, None, False),
)  # T, B, H, lengths, reverse
DRIVER_CELLS = ("gru", "lstm")
DRIVER_DONE = re.compile(r"driver: (\d+) calls done")
ERROR_SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) error")


# --------------------------------------------------------------------------------------------------
# The driver (runs under compute-sanitizer)


def driver(dtypes: list[str], profile: bool) -> int:
    from rnnfast.ops.recurrence import common as rec
    from rnnfast.ops.recurrence import cuda

    dev = torch.device("cuda")
    ok, why = cuda.supports(dev, torch.float32, {"cell": "gru", "B": 1, "H": 33})
    if not ok:
        print(f"driver: the cuda backend cannot run: {why}", flush=True)
        return 2
    g = torch.Generator().manual_seed(0)
    calls = 0
    activities = [torch.profiler.ProfilerActivity.CUDA]
    prof = torch.profiler.profile(activities=activities) if profile else contextlib.nullcontext()
    with prof, cuda.flags(algo="persistent"):
        for cell in DRIVER_CELLS:
            for name in dtypes:
                dtype = common.DTYPES[name]
                for T, B, H, lengths, reverse in DRIVER_PROBLEMS:
                    for backward in (False, True):
                        code, why = cuda.algorithm(cell, dtype, B, H, backward, dev)
                        if code != 1:
                            print(
                                f"driver: {cell} {name} B={B} H={H} does not run persistent: {why}",
                                flush=True,
                            )
                            return 2
                    G = rec.GATES[cell]

                    def r(*shape, dtype=dtype):
                        return (torch.rand(*shape, generator=g) - 0.5).to(device=dev, dtype=dtype)

                    gi, h0, w, b = r(T, B, G * H), r(B, H), r(G * H, H), r(G * H)
                    c0 = r(B, H) if cell == "lstm" else None
                    L = None if lengths is None else torch.tensor(lengths, device=dev)
                    y, _, _, ws = cuda.forward(cell, gi, h0, c0, w, b, None, L, reverse, True)
                    gcn = r(B, H) if cell == "lstm" else None
                    cuda.backward(cell, r(T, B, H), r(B, H), gcn, h0, c0, w, b, None, L, reverse, y, ws)
                    torch.cuda.synchronize()
                    calls += 1
                    print(f"driver: {cell} {name} T={T} B={B} H={H} forward+backward", flush=True)
    if profile:
        cuda_events = [
            e for e in prof.events() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
        ]
        for kernel in sorted({e.name for e in cuda_events}):
            print(f"kernel: {kernel}", flush=True)
    print(f"driver: {calls} calls done", flush=True)
    return 0


# --------------------------------------------------------------------------------------------------
# The orchestration


def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "compute-sanitizer").exists():
            return str(Path(home) / "bin" / "compute-sanitizer")
    return None


def _text(cmd: list[str]) -> str:
    """What ``cmd`` prints ('' if it cannot run)."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return r.stdout + r.stderr


def sanitizer_args(help_text: str) -> list[str]:
    """The options of this compute-sanitizer version: the kernel filter (``--kernel-name`` since 2022,
    ``--filter`` before), a generous wait for the Python driver to start, a bound on printed errors."""
    args = []
    if "--kernel-name" in help_text:
        args += ["--kernel-name", f"kns={FILTER}"]
    elif "--filter" in help_text:
        args += ["--filter", f"kns={FILTER}"]
    if "--launch-timeout" in help_text:
        args += ["--launch-timeout", "120"]
    if "--print-limit" in help_text:
        args += ["--print-limit", "100"]
    return args + ["--error-exitcode", str(SANITIZER_ERRORS)]


def tool_env(tool: str) -> dict:
    poison = "0" if tool == "initcheck" else "1"
    return os.environ | {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1", "RNNFAST_DEBUG_POISON": poison}


def plan_timeout(tool: str, left: float, durations: dict[str, float]) -> float | None:
    """Seconds ``tool`` may take, or None to skip it: a required tool shares what is left with the
    required tools not run yet; an optional one runs when the longest tool so far would fit again."""
    if left <= 0:
        return None
    if tool in REQUIRED:
        later = [t for t in REQUIRED if t != tool and t not in durations]
        return left / (1 + len(later))
    need = 1.2 * max(durations.values(), default=60.0)
    return left if left >= need else None


def parse_output(text: str) -> dict:
    """What a run printed: the sanitizer's SUMMARY lines, its ERROR SUMMARY count, the driver's calls."""
    errors = ERROR_SUMMARY.findall(text)
    done = DRIVER_DONE.findall(text)
    return {
        "summary": [ln.strip() for ln in text.splitlines() if "SUMMARY" in ln],
        "errors": int(errors[-1]) if errors else None,
        "calls_done": int(done[-1]) if done else None,
        "kernels": [
            ln.split("kernel: ", 1)[1].strip() for ln in text.splitlines() if ln.startswith("kernel: ")
        ],
    }


def judge_tool(rc: int | None, parsed: dict) -> tuple[str, str]:
    """(status, why) of one sanitizer run from its exit code and parsed output (rc None: timed out)."""
    if rc is None:
        return "cut", "ran past its share of the stage's budget (killed)"
    if parsed["errors"]:
        return "fail", f"{parsed['errors']} errors reported"
    if rc == SANITIZER_ERRORS:
        return "fail", "the sanitizer reported errors"
    if rc != 0 or parsed["calls_done"] is None:
        return "error", f"the driver did not finish (exit code {rc})"
    if parsed["errors"] is None:
        return "error", "no ERROR SUMMARY in the output"
    return "pass", "0 errors"


def _run(cmd: list[str], env: dict, timeout: float) -> tuple[int | None, str, float]:
    """Runs ``cmd`` in its own process group, echoing its output; (exit code or None on timeout, output,
    seconds). The group is killed on timeout and on SIGTERM (then StageCut propagates)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=common._pump, args=(proc.stdout, lines), daemon=True).start()
    out: deque = deque(maxlen=20000)
    rc = None
    try:
        while True:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() - t0 > timeout:
                    break
                if proc.poll() is not None and lines.empty():
                    rc = proc.returncode
                    break
                continue
            if line is None:
                rc = proc.wait()
                break
            sys.stdout.write(line)
            out.append(line)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return rc, "".join(out), time.monotonic() - t0


def stage(ctx: common.Context, args) -> int:
    budget = common.budget_from_args(args)
    writer = ctx.writer("sanitize")
    driver_argv = [sys.executable, "-m", "benchmarks.gpu.sanitize", "--driver", "--dtypes", args.dtypes]
    sanitizer = find_sanitizer()
    help_text = ""
    if sanitizer:
        help_text = _text([sanitizer, "--help"])
        print(sanitizer, (_text([sanitizer, "--version"]).strip().splitlines() or [""])[-1])
    previous = signal.signal(signal.SIGTERM, common._raise_cut)
    try:
        listing = driver_argv + ["--profile"]
        print("+", shlex.join(listing), flush=True)
        rc, text, seconds = _run(listing, tool_env("memcheck"), min(90.0, max(budget.left(), 1.0)))
        parsed = parse_output(text)
        launched = [k for k in parsed["kernels"] if FILTER in k]
        ok = rc == 0 and bool(launched)
        writer.write(
            {
                "kind": "kernels",
                "status": "pass" if ok else ("error" if rc != 0 else "fail"),
                "why": None if ok else f"exit code {rc}; kernels matching {FILTER!r}: {len(launched)}",
                "command": shlex.join(listing),
                "kernels": launched,
                "other_kernels": [k for k in parsed["kernels"] if FILTER not in k],
                "seconds": round(seconds, 1),
                "output_tail": None if ok else text[-4000:],
            }
        )
        durations: dict[str, float] = {}
        for tool in TOOLS:
            base = {"kind": "tool", "tool": tool}
            if sanitizer is None:
                writer.write(base | {"status": "skipped", "why": "compute-sanitizer not found"})
                continue
            if not ok:
                writer.write(
                    base | {"status": "skipped", "why": "the driver launched no kernel the filter matches"}
                )
                continue
            timeout = plan_timeout(tool, budget.left(), durations)
            if timeout is None:
                writer.write(
                    base | {"status": "skipped", "why": f"stage budget ({budget.left():.0f} s left)"}
                )
                continue
            cmd = [sanitizer, "--tool", tool, *sanitizer_args(help_text), *driver_argv]
            print("+", shlex.join(cmd), flush=True)
            rc, text, seconds = _run(cmd, tool_env(tool), timeout)
            durations[tool] = seconds
            parsed = parse_output(text)
            status, why = judge_tool(rc, parsed)
            writer.write(
                base
                | {"status": status, "why": why, "rc": rc, "command": shlex.join(cmd)}
                | {k: parsed[k] for k in ("errors", "summary", "calls_done")}
                | {"seconds": round(seconds, 1), "timeout_s": round(timeout, 1)}
                | {"output_tail": None if status == "pass" else text[-6000:]}
            )
        return 0
    except common.StageCut:
        writer.write({"kind": "tool", "status": "cut", "why": "the stage's time limit was reached"})
        return common.CUT
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = common.parser(__doc__, budget_s=120)
    p.add_argument("--driver", action="store_true", help="be the program the sanitizer runs")
    p.add_argument("--profile", action="store_true", help="(with --driver) list the CUDA kernels launched")
    p.add_argument("--dtypes", default="bfloat16,float32", help="dtypes of the driver's calls")
    args = p.parse_args(argv)
    dtypes = [d for d in args.dtypes.split(",") if d]
    unknown = [d for d in dtypes if d not in common.DTYPES]
    if unknown:
        p.error(f"--dtypes: expected names from {sorted(common.DTYPES)}, got {unknown}")
    if args.driver:
        return driver(dtypes, args.profile)
    if args.dry_run:
        sanitizer = find_sanitizer()
        if sanitizer:
            print(f"benchmarks.gpu.sanitize: {sanitizer}")
            help_text = _text([sanitizer, "--help"])
        else:
            print(
                "benchmarks.gpu.sanitize: compute-sanitizer not found here; on the GPU machine, with a 2022+"
            )
            print("   version (its --help is read at run time):")
            help_text = "--kernel-name --launch-timeout --print-limit"
        driver_argv = ["python", "-m", "benchmarks.gpu.sanitize", "--driver", "--dtypes", args.dtypes]
        for tool in TOOLS:
            print(
                "  ",
                shlex.join(
                    [
                        sanitizer or "compute-sanitizer",
                        "--tool",
                        tool,
                        *sanitizer_args(help_text),
                        *driver_argv,
                    ]
                ),
            )
        calls = len(DRIVER_CELLS) * len(dtypes) * len(DRIVER_PROBLEMS)
        print(f"   driver: {calls} persistent forward+backward calls")
        return 0
    return stage(common.Context.from_args("sanitize", args), args)


if __name__ == "__main__":
    sys.exit(main())
