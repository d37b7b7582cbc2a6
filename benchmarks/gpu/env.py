"""Stage 0: the machine, the build, and the plan of the persistent kernels; records in run.jsonl, the
install's whole output in build.log.

1. report: nvidia-smi, the versions of torch, CUDA, cuDNN, Triton, Python, nvcc, compute-sanitizer and
   ncu, the device's properties (SMs, shared memory per block with opt-in, L2), torch's TF32 defaults.
2. build: ``pip install -v -e . --no-deps --no-build-isolation`` with MAX_JOBS=16 (unless set) and
   ``-Xptxas -v`` added to every nvcc call through NVCC_APPEND_FLAGS. setup.py builds the CUDA kernels
   only where torch has CUDA and nvcc is found; its line saying which is recorded. Registers, stack and
   spills of every kernel are read from build.log (with the compile test's parser): one record per
   kernel, and one for the build.
3. plans, in a new process (it loads the library just built): for every cell x dtype x B in
   {1, 16, 64, 256} x H in {33, 256, 768, 1024, 2048} x direction, the persistent kernel's plan
   (``torch.ops.rnnfast_C.cuda_persistent_plan``: CTAs, units per CTA, multiply mode, K-chunk, chunks,
   split of K, prefetch, shared memory), the CTAs per SM and the share of the opt-in shared memory it
   takes, and the algorithm the backend picks (``cuda.algorithm``).
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.gpu import common

PLAN_FIELDS = (
    "ok",
    "ctas",
    "units",
    "mode",
    "k_chunk",
    "k_chunks",
    "split",
    "prefetch",
    "smem_bytes",
)  # cuda._plan
PLAN_BATCHES = (1, 16, 64, 256)
PLAN_HIDDEN = (33, 256, 768, 1024, 2048)
DEVICE_PROPERTIES = (
    "name",
    "major",
    "minor",
    "total_memory",
    "multi_processor_count",
    "L2_cache_size",
    "shared_memory_per_block",
    "shared_memory_per_block_optin",
    "shared_memory_per_multiprocessor",
    "regs_per_multiprocessor",
    "max_threads_per_multi_processor",
    "warp_size",
    "clock_rate",
    "memory_clock_rate",
    "memory_bus_width",
)
SMI_QUERY = (
    "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,compute_cap,mig.mode.current"
)


def _output(cmd: list[str], timeout: float = 60) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return (r.stdout + r.stderr).strip()


def _tool_version(name: str) -> str | None:
    path = shutil.which(name)
    if path is None:
        for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
            if home and (Path(home) / "bin" / name).exists():
                path = str(Path(home) / "bin" / name)
    if path is None:
        return None
    text = _output([path, "--version"]) or ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return f"{path}: {lines[-1].strip()}" if lines else path


def smi_fields(csv: str) -> dict:
    """nvidia-smi --query-gpu ... --format=csv output (header line, then one line per GPU) -> GPU 0's."""
    lines = [ln for ln in csv.splitlines() if ln.strip()]
    if len(lines) < 2:
        return {}
    keys = [k.strip() for k in lines[0].split(",")]
    return dict(zip(keys, (v.strip() for v in lines[1].split(","))))


def report(writer: common.ResultWriter) -> None:
    smi = shutil.which("nvidia-smi")
    fields = {}
    if smi:
        print(_output([smi]) or "nvidia-smi printed nothing")
        fields = smi_fields(_output([smi, f"--query-gpu={SMI_QUERY}", "--format=csv"]) or "")
    device = {}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        device = {k: getattr(props, k) for k in DEVICE_PROPERTIES if hasattr(props, k)}
    tools = {name: _tool_version(name) for name in ("nvcc", "compute-sanitizer", "ncu")}
    record = {
        "kind": "env",
        "status": "ok",
        "nvidia_smi": fields,
        "cuda_available": torch.cuda.is_available(),
        "device": device,
        "tools": tools,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "tf32_defaults": common.tf32_state(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    writer.write(record)
    for name, version in tools.items():
        print(f"{name}: {version or 'not found'}")


def pip_command() -> tuple[list[str], dict]:
    """The install and the variables it runs with."""
    cmd = [sys.executable, "-m", "pip", "install", "-v", "-e", ".", "--no-deps", "--no-build-isolation"]
    extra = {
        "MAX_JOBS": os.environ.get("MAX_JOBS", "16"),
        "NVCC_APPEND_FLAGS": (os.environ.get("NVCC_APPEND_FLAGS", "") + " -Xptxas -v").strip(),
    }
    return cmd, extra


def build_summary(text: str, rc: int | None, seconds: float) -> tuple[dict, list[dict]]:
    """(the build's record, one record per kernel) from the install's output."""
    from tests.test_cuda_compile import _demangle, parse_ptxas

    kernels = parse_ptxas(text)
    names = _demangle(list(kernels)) if kernels else {}
    per_kernel = [{"kind": "ptxas", "kernel": names[m], "mangled": m, **k} for m, k in kernels.items()]
    cuda = re.findall(r"rnnfast: CUDA kernels (built|skipped): (.*)", text)
    spills = [r["kernel"] for r in per_kernel if r.get("spill_stores") or r.get("spill_loads")]
    status = "cut" if rc is None else ("pass" if rc == 0 else "fail")
    record = {
        "kind": "build",
        "status": status,
        "rc": rc,
        "seconds": round(seconds, 1),
        "cuda_kernels": " ".join(cuda[-1]) if cuda else "setup.py said nothing about the CUDA kernels",
        "kernels": len(per_kernel),
        "max_regs": max((r.get("regs", 0) for r in per_kernel), default=None),
        "spilling_kernels": spills,
    }
    return record, per_kernel


def build(writer: common.ResultWriter, log: Path, timeout: float) -> None:
    cmd, extra = pip_command()
    print("+", " ".join(f"{k}={shlex.quote(v)}" for k, v in extra.items()), shlex.join(cmd), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        start = f.tell()
        f.write(f"+ {shlex.join(cmd)}\n")
        f.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=common.ROOT,
            env=os.environ | extra,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        previous = signal.signal(signal.SIGTERM, common._raise_cut)
        rc, cut = None, False
        try:
            rc = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            pass  # recorded as cut below
        except common.StageCut:
            cut = True
        finally:
            signal.signal(signal.SIGTERM, previous)
            if proc.poll() is None:  # its own process group: ninja and the compilers go with it
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        seconds = time.monotonic() - t0
    with open(log, encoding="utf-8", errors="replace") as f:
        f.seek(start)
        text = f.read()
    record, per_kernel = build_summary(text, rc, seconds)
    for r in per_kernel:
        writer.write(r)
    writer.write(record)
    print(f"build: {record['status']} (exit code {rc}) in {seconds:.0f} s; {record['cuda_kernels']}")
    spills = ", ".join(record["spilling_kernels"]) or "none"
    print(f"  {record['kernels']} kernels, at most {record['max_regs']} registers; spills: {spills}")
    if record["status"] != "pass":
        print("  last lines of build.log:\n" + "\n".join(text.splitlines()[-40:]))
    if cut:
        raise common.StageCut()


def plans(writer: common.ResultWriter) -> None:
    from rnnfast import _cuda_ext
    from rnnfast.ops.recurrence import common as rec
    from rnnfast.ops.recurrence import cuda

    ok, why = _cuda_ext.status()
    writer.write({"kind": "cuda_ext", "status": "pass" if ok else "error", "why": why})
    print(f"CUDA kernels: {why}")
    if not ok:
        return
    props = torch.cuda.get_device_properties(0)
    sms, optin = props.multi_processor_count, getattr(props, "shared_memory_per_block_optin", None)
    dev = torch.device("cuda", 0)
    largest: dict[tuple, int] = {}
    for cell in rec.CELLS:
        for dtype_name, dtype in common.DTYPES.items():
            for B in PLAN_BATCHES:
                for H in PLAN_HIDDEN:
                    for backward in (False, True):
                        base = {"kind": "plan", "cell": cell, "dtype": dtype_name, "B": B, "H": H}
                        base["direction"] = "backward" if backward else "forward"
                        try:
                            op = torch.ops.rnnfast_C.cuda_persistent_plan
                            tf32 = dtype == torch.float32 and cuda.tf32_allowed()
                            raw = [int(x) for x in op(rec.CELL_CODE[cell], dtype, tf32, B, H, backward, 0)]
                            code, desc = cuda.algorithm(cell, dtype, B, H, backward, dev)
                        except Exception as e:  # recorded; the other configurations go on
                            writer.write(base | common.error_record(e))
                            continue
                        fields = dict(zip(PLAN_FIELDS, raw))
                        if fields.get("ok"):
                            key = (cell, dtype_name, B, base["direction"])
                            largest[key] = max(largest.get(key, 0), H)
                        writer.write(
                            base
                            | {"status": "ok", "plan": raw, **fields, "algorithm": code, "description": desc}
                            | {
                                "ctas_per_sm": fields.get("ctas", 0) / sms if fields.get("ok") else None,
                                "smem_share": fields.get("smem_bytes", 0) / optin
                                if optin and fields.get("ok")
                                else None,
                            }
                        )
    print(
        f"largest H of {PLAN_HIDDEN} with a persistent plan at B=16 ({sms} SMs, {optin} B of shared memory):"
    )
    for (cell, dtype_name, B, direction), H in sorted(largest.items()):
        if B == 16:
            print(f"  {cell:<8} {dtype_name:<9} {direction:<8} H={H}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = common.parser(__doc__, budget_s=120)
    p.add_argument("--part", choices=("all", "report", "build", "plans"), default="all")
    args = p.parse_args(argv)
    if args.dry_run:
        from tests.test_cuda_compile import parse_ptxas  # noqa: F401 (the build's parser must import)

        cmd, extra = pip_command()
        n = 4 * len(common.DTYPES) * len(PLAN_BATCHES) * len(PLAN_HIDDEN) * 2
        print("benchmarks.gpu.env: report (nvidia-smi, versions, device properties); then")
        print("  ", " ".join(f"{k}={shlex.quote(v)}" for k, v in extra.items()), shlex.join(cmd))
        print(f"   then the plans of {n} configurations in a new process")
        return 0
    ctx = common.Context.from_args("env", args)
    writer = ctx.writer("run")
    budget = common.budget_from_args(args)
    try:
        return _stage(args, argv, ctx, writer, budget)
    except common.StageCut:
        writer.write({"kind": "env", "status": "cut", "why": "the stage's time limit was reached"})
        return common.CUT


def _stage(args, argv, ctx, writer, budget) -> int:
    if args.part in ("all", "report"):
        report(writer)
    if args.part in ("all", "build"):
        build(writer, ctx.out / common.OUTPUT_FILES["build"], budget.left() - 20)
    if args.part == "plans":
        plans(writer)
    if args.part == "all":
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.gpu.env",
            *argv,
            "--part",
            "plans",
            "--deadline",
            str(budget.deadline),
        ]
        try:
            rc = subprocess.run(cmd, timeout=max(budget.left(), 1.0)).returncode
        except subprocess.TimeoutExpired:
            rc = None
        if rc != 0:
            writer.write({"kind": "plans", "status": "error", "why": f"the plan dump ended with {rc}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
