"""The roofline floor of a case: the least time the machine's limits, measured in the same run, allow.

    floor = max(FLOP / peak FLOP/s, bytes that must move / bandwidth)

FLOP is the case's count (``registry.flops_of``: its GEMMs; for the tree ops and SPINN the pointwise
math too, one FLOP per operation, which only lowers the floor). The peak FLOP/s is the run's large GEMM
in the case's dtype (``runner.measure_peak``), the bandwidth its large copy; the bytes that must move
are ``registry.must_move_bytes`` for the cache the run's cores reach (:func:`cache_of`). A case cannot
beat either limit, so ``pct_roofline`` = 100 · floor / median is at most 100%, and says how close the
case came to the machine. Where a case did beat a measured peak (the large GEMM is one shape; a noisy
machine can slow its samples), the case itself showed the machine's limit: the peak is raised to that
case's rate, the case is at 100%, and the run's ``roofline`` record names it. So the bound holds by
construction, also for results files written before this module, whose rows are read the same way
(their cache size unknown: the memory term is left out, which only lowers the floor).

Nothing here imports torch at module level except through :func:`cache_of` (for a CUDA device), so
results files can be read where torch is slow to import.
"""

from __future__ import annotations

import os
from pathlib import Path

SYSFS_CPU = Path("/sys/devices/system/cpu")
# 32-bit registers per SM on every NVIDIA GPU since Kepler, where the driver does not report it.
GPU_REGS_PER_SM = 65536


def _size(text: str) -> int:
    """sysfs cache size ('32K', '1024K', '32768K', '2M') in bytes."""
    text = text.strip()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    return int(text.rstrip("KkMmGg")) * scale


def cpu_cache(cpus: list[int], root: Path = SYSFS_CPU) -> tuple[int | None, str]:
    """(bytes, description) of the data caches the given CPUs reach: every distinct data or unified
    cache (L1d, L2, L3, ...) of those CPUs once, from ``<root>/cpu<N>/cache/index*``. (None, why)
    where sysfs does not say. All levels are summed: an upper bound of what can stay cached, so the
    bytes that must move stay a lower bound."""
    seen: dict[tuple[str, str], int] = {}
    levels: dict[str, list[int]] = {}
    for cpu in cpus:
        for index in sorted((root / f"cpu{cpu}" / "cache").glob("index*")):
            try:
                kind = (index / "type").read_text().strip()
                if kind not in ("Data", "Unified"):
                    continue
                level = (index / "level").read_text().strip()
                shared = (index / "shared_cpu_list").read_text().strip()
                size = _size((index / "size").read_text())
            except (OSError, ValueError):
                continue
            if (level, shared) not in seen:
                seen[(level, shared)] = size
                levels.setdefault(level, []).append(size)
    if not seen:
        return None, f"cache size unknown (no {root}/cpu*/cache)"
    parts = []
    for level, sizes in sorted(levels.items()):
        same = len(set(sizes)) == 1
        each = f"{len(sizes)}×{_kib(sizes[0])}" if same and len(sizes) > 1 else " + ".join(map(_kib, sizes))
        parts.append(f"L{level} {each}")
    cpu_list = ",".join(map(str, cpus))
    return sum(seen.values()), f"{_kib(sum(seen.values()))}: {', '.join(parts)} (CPUs {cpu_list}, sysfs)"


def gpu_cache(props) -> tuple[int, str]:
    """(bytes, description) of what a kernel can keep on a GPU between steps: the L2 cache plus, on
    every SM, its shared memory and register file (a persistent kernel keeps W_hh there).
    ``props``: ``torch.cuda.get_device_properties``."""
    sms = int(props.multi_processor_count)
    l2 = int(getattr(props, "L2_cache_size", 0) or 0)
    smem = int(getattr(props, "shared_memory_per_multiprocessor", 0) or 0)
    regs = 4 * int(getattr(props, "regs_per_multiprocessor", 0) or GPU_REGS_PER_SM)
    total = l2 + sms * (smem + regs)
    return total, (
        f"{_kib(total)}: L2 {_kib(l2)} + {sms} SMs × (shared memory {_kib(smem)} + registers {_kib(regs)})"
    )


def _kib(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.4g} MiB"
    return f"{n / 1024:.4g} KiB"


def cache_of(device, threads: int | None = None) -> tuple[int | None, str]:
    """The cache the run reaches on ``device``: a CUDA GPU's (:func:`gpu_cache`), or on the CPU the
    caches of the first ``threads`` CPUs this process may run on (:func:`cpu_cache`)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return gpu_cache(torch.cuda.get_device_properties(device))
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    n = threads or torch.get_num_threads()
    return cpu_cache(cpus[: max(1, min(n, len(cpus)))])


def apply(rows: list[dict], peak: dict) -> dict:
    """Fill ``roofline_ms``, ``roofline_bound`` ('FLOP' or 'memory') and ``pct_roofline`` in ``rows``
    (one run's rows: the peaks are shared) and return the limits used: {'gemm_flops': {dtype: FLOP/s},
    'gemm_raised_by': {dtype: None or '<label> [<provider>]'}, 'copy_bytes_per_s',
    'copy_raised_by', 'cache_bytes', 'memory_term': whether any row counted its bytes}.

    ``peak`` is the run's measured peaks (``runner.measure_peak``); a timed row whose FLOP/s (or
    must-move bytes/s) beats them raises them and is named in ``*_raised_by``. Rows without
    ``must_move_bytes`` (None, or files from before it) get the FLOP term only.
    """
    gemm = {dt: float(v) for dt, v in (peak.get("gemm_flops") or {}).items() if v}
    gemm_by: dict[str, str | None] = dict.fromkeys(gemm)
    copy = float(peak.get("copy_bytes_per_s") or 0.0)
    copy_by = None
    for r in rows:
        if r.get("status") != "ok" or not r.get("median_ms"):
            continue
        s = r["median_ms"] * 1e-3
        if r.get("flop") and r["flop"] / s > gemm.get(r["dtype"], 0.0):
            gemm[r["dtype"]], gemm_by[r["dtype"]] = r["flop"] / s, f"{r['label']} [{r['provider']}]"
        moved = r.get("must_move_bytes")
        if moved and moved / s > copy:
            copy, copy_by = moved / s, f"{r['label']} [{r['provider']}]"
    for r in rows:
        compute = r["flop"] / gemm[r["dtype"]] if r.get("flop") and r["dtype"] in gemm else 0.0
        moved = r.get("must_move_bytes")
        memory = moved / copy if moved and copy else 0.0
        floor_s = max(compute, memory)
        r["roofline_ms"] = floor_s * 1e3 if floor_s > 0 else None
        r["roofline_bound"] = None if floor_s <= 0 else ("memory" if memory > compute else "FLOP")
        r["pct_roofline"] = None
        if r["roofline_ms"] is not None and r.get("status") == "ok" and r.get("median_ms"):
            r["pct_roofline"] = 100.0 * r["roofline_ms"] / r["median_ms"]
    return {
        "gemm_flops": gemm,
        "gemm_raised_by": gemm_by,
        "copy_bytes_per_s": copy or None,
        "copy_raised_by": copy_by,
        "cache_bytes": peak.get("cache_bytes"),
        "memory_term": any(r.get("must_move_bytes") is not None for r in rows),
    }


def raised(limits: dict) -> list[str]:
    """Lines naming the limits that a case raised above the measured peaks (none: empty)."""
    out = [
        f"{dt} peak raised to {limits['gemm_flops'][dt] / 1e12:.3g} TFLOP/s by {by} (faster than the GEMM)"
        for dt, by in limits["gemm_raised_by"].items()
        if by
    ]
    if limits.get("copy_raised_by"):
        out.append(
            f"bandwidth raised to {limits['copy_bytes_per_s'] / 1e9:.3g} GB/s by {limits['copy_raised_by']} "
            "(moved its bytes faster than the copy)"
        )
    return out
