"""What a benchmark run reports: the machine, the table, JSON + CSV files (the figures: ``plot``)."""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import platform
import subprocess
from pathlib import Path

import torch

from rnnfast._version import __version__

# Columns of the CSV after the machine columns; the JSON rows carry the same keys.
ROW_KEYS = (
    "case",
    "label",
    "op",
    "mode",
    "dtype",
    "B",
    "T",
    "I",
    "H",
    "layers",
    "bidir",
    "packed",
    "R",
    "HT",
    "provider",
    "baseline",
    "status",
    "detail",
    "tolerance",
    "max_rel_err",
    "median_ms",
    "q25_ms",
    "q75_ms",
    "min_ms",
    "max_ms",
    "reps",
    "method",
    "do_bench_ms",
    "speedup",
    "tokens",
    "flop",
    "bytes",
    "tokens_per_s",
    "tflops",
    "pct_peak_flops",
    "pct_peak_bw",
    "floor_ms",
    "pct_floor",
    "must_move_bytes",
    "roofline_ms",
    "roofline_bound",
    "pct_roofline",
)
MACHINE_KEYS = (
    "device",
    "device_name",
    "torch",
    "triton",
    "cuda",
    "cudnn",
    "cudnn_allow_tf32",
    "matmul_allow_tf32",
    "threads",
    "commit",
)


def _cpu_name() -> str:
    """The CPU model and its widest vector ISA, e.g. 'AMD EPYC (AVX2)': CPU timings differ by ISA even
    where the model name does not (the C++ kernels and oneDNN pick their code by it)."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if name is None and line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif not flags and line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    return f"{name} ({isa})" if isa else name


def git_commit() -> str | None:
    """The commit of the checkout rnnfast runs from ('+dirty' with uncommitted changes), or None."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")


def machine_info(device: torch.device) -> dict:
    """Everything a result depends on besides the code: device, versions, precision settings, threads."""
    device = torch.device(device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = {
        "device": device.type,
        "device_name": _cpu_name(),
        "cpu": _cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "rnnfast": __version__,
        "commit": git_commit(),
        # Other processes on the machine skew CPU timings: the 1-minute load average says how busy it was.
        "loadavg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=props.name,
            capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
        )
    return info


# --------------------------------------------------------------------------------------------------
# The table


def _si(x: float | None) -> str:
    if x is None:
        return ""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _ms(x: float | None) -> str:
    return "" if x is None else (f"{x:.4g}" if x < 1000 else f"{x:.0f}")


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x:.2g}%" if x < 10 else f"{x:.0f}%"


COLUMNS = (
    ("case", "<"),
    ("provider", "<"),
    ("median ms", ">"),
    ("IQR ms", ">"),
    ("speedup", ">"),
    ("%floor", ">"),
    ("bound", "<"),
    ("%GEMMs", ">"),
    ("tokens/s", ">"),
    ("TFLOP/s", ">"),
    ("%FLOP", ">"),
    ("%BW", ">"),
)


def table_lines(rows: list[dict]) -> list[str]:
    """The result table as text lines, one line per checked provider; unsupported ones are left to
    :func:`not_run_lines`. A MISMATCH or ERROR row says so (and why) instead of a time."""
    cells = []
    last_case = None
    for r in rows:
        if r["status"] == "unsupported":
            continue
        case = r["label"] if r["case"] != last_case else ""
        last_case = r["case"]
        prov = r["provider"] + ("*" if r["provider"] == r["baseline"] else "")
        if r["status"] != "ok":
            cells.append((case, prov, f"{r['status']}: {r['detail']}"))
            continue
        speed = "" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        cells.append(
            (
                case,
                prov,
                _ms(r["median_ms"]),
                f"{_ms(r['q25_ms'])}-{_ms(r['q75_ms'])}",
                speed,
                _pct(r.get("pct_roofline")),
                {"FLOP": "FLOP", "memory": "mem"}.get(r.get("roofline_bound") or "", ""),
                _pct(r.get("pct_floor")),
                _si(r["tokens_per_s"]),
                f"{r['tflops']:.3g}",
                _pct(r["pct_peak_flops"]),
                _pct(r["pct_peak_bw"]),
            )
        )
    widths = [len(name) for name, _ in COLUMNS]
    for c in cells:
        if len(c) == len(COLUMNS):
            widths = [max(w, len(v)) for w, v in zip(widths, c)]
        else:
            widths[:2] = [max(widths[0], len(c[0])), max(widths[1], len(c[1]))]

    def fmt(c):
        parts = [f"{v:{a}{w}}" for v, (_, a), w in zip(c, COLUMNS, widths)]
        return "  ".join(parts).rstrip()

    lines = [fmt([name for name, _ in COLUMNS]), "  ".join("-" * w for w in widths)]
    for c in cells:
        if len(c) == len(COLUMNS):
            lines.append(fmt(c))
        else:
            lines.append(f"{c[0]:<{widths[0]}}  {c[1]:<{widths[1]}}  {c[2]}")
    return lines


def not_run_lines(rows: list[dict]) -> list[str]:
    """One line per provider that some case could not run on, with the reasons given."""
    seen: dict[str, list[str]] = {}
    for r in rows:
        if r["status"] == "unsupported":
            reasons = seen.setdefault(r["provider"], [])
            if r["detail"] not in reasons:
                reasons.append(r["detail"])
    return [f"  {p}: {'; '.join(reasons)}" for p, reasons in seen.items()]


def header_lines(machine: dict, peak: dict) -> list[str]:
    tf32 = f"cudnn.allow_tf32={machine['cudnn_allow_tf32']} matmul.allow_tf32={machine['matmul_allow_tf32']}"
    lines = [
        f"device: {machine['device']} ({machine['device_name']}), {machine['threads']} threads, "
        f"load average {machine['loadavg_1min']}",
        f"torch {machine['torch']}, triton {machine['triton']}, CUDA {machine['cuda']}, "
        f"cuDNN {machine['cudnn']}; {tf32}",
        f"rnnfast {machine['rnnfast']} at {machine['commit'] or 'unknown commit'}",
    ]
    if peak:
        libs = peak.get("gemm_lib", {})
        gemm = ", ".join(
            f"{dt} {v / 1e12:.3g} TFLOP/s (n={peak['gemm_n'][dt]}, {libs.get(dt, 'torch.mm')})"
            for dt, v in peak["gemm_flops"].items()
        )
        lines.append(
            f"measured peak: GEMM {gemm}; "
            f"copy {peak['copy_bytes_per_s'] / 1e9:.3g} GB/s ({peak['copy_mib']} MiB)"
        )
        if "cache" in peak:
            lines.append(f"cache: {peak['cache']}")
    return lines


LEGEND = (
    "median ms: per call, after warm-up; IQR: 25th-75th percentile; * marks the case's baseline "
    "(torch.nn for modules, reference for bare ops); speedup = baseline median / median; "
    "%floor: 100 x the roofline floor / median, floor = max(FLOP / peak GEMM FLOP/s, bytes that must "
    "move beyond the cache / copy bandwidth), at most 100% (bound: which term sets it); "
    "%GEMMs: 100 x the time of the case's GEMMs called one by one (the fastest of torch.mm and, on the "
    "CPU, rnnfast's blocked kernel, timed in this run) / median, above 100% where a fused loop saves "
    "the calls' overhead; %FLOP, %BW: achieved FLOP/s and bytes/s against the GEMM and copy peaks "
    "measured above."
)


# --------------------------------------------------------------------------------------------------
# Files


def _finite(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def write_json(path: Path, machine: dict, peak: dict, rows: list[dict], meta: dict) -> None:
    doc = {
        "schema": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **meta,
        "machine": machine,
        "peak": peak,
        "rows": [{k: _finite(r.get(k)) for k in ROW_KEYS} for r in rows],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")


def write_csv(path: Path, machine: dict, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(MACHINE_KEYS + ROW_KEYS)
        for r in rows:
            w.writerow([machine.get(k) for k in MACHINE_KEYS] + [_finite(r.get(k)) for k in ROW_KEYS])


def result_stem(machine: dict, grid: str) -> str:
    """File stem for a run: ``cpu-quick``, ``cuda-nvidia-h100-80gb-hbm3-quick``."""
    if machine["device"] == "cuda":
        name = "".join(ch if ch.isalnum() else "-" for ch in machine["device_name"].lower())
        name = "-".join(p for p in name.split("-") if p)
        return f"cuda-{name}-{grid}"
    return f"{machine['device']}-{grid}"


def ensure_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p
