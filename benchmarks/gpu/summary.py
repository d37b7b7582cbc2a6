"""The end of a gpu_check.sh run: per stage its exit code and seconds, per results file the count of each
status, every failing record in one line, and the timings as us/step with the ratio to cuDNN.

    python -m benchmarks.gpu.summary --out DIR [--run ID]

Exit code 1 when a stage did not end cleanly or a record failed, else 0.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from benchmarks.gpu import common

RESULT_KEYS = ("run", "smoke", "sanitize", "timings", "tests")
FIELDS = ("kind", "variant", "provider", "tool", "cell", "dtype", "T", "B", "H", "mode", "nodeid")


def one_line(r: dict) -> str:
    what = " ".join(f"{k}={r[k]}" for k in FIELDS if r.get(k) is not None)
    why = str(r.get("why") or r.get("error") or "").splitlines()
    return f"{r.get('status')}: {what}" + (f" ({why[0][:160]})" if why else "")


def summarize(out: Path, run: str | None = None) -> tuple[list[str], bool]:
    """(lines to print, whether everything passed) for the records of ``run`` (default: the latest)."""
    records = {k: common.read_records(out / common.OUTPUT_FILES[k]) for k in RESULT_KEYS}
    if run is None:
        runs = sorted({r.get("run") for rs in records.values() for r in rs if r.get("run")})
        run = runs[-1] if runs else None
    records = {k: [r for r in rs if r.get("run") == run] for k, rs in records.items()}
    lines, ok = [f"gpu_check run {run} in {out}"], True
    for r in (r for r in records["run"] if r.get("kind") == "stage"):
        clean = r.get("rc") == 0
        ok &= clean
        flag = "" if clean else ("  <- time limit" if r.get("timed_out") else "  <- failed")
        lines.append(
            f"  stage {r['stage_number']} {r['stage']:<9} rc {r['rc']:>3} in {r['seconds']:>4} s{flag}"
        )
    for key in RESULT_KEYS:
        rs = [r for r in records[key] if r.get("kind") != "stage"]
        if not rs:
            continue
        counts = Counter(str(r.get("status")) for r in rs)
        lines.append(
            f"{common.OUTPUT_FILES[key]}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        )
        bad = [r for r in rs if r.get("status") in common.FAILING]
        ok &= not bad
        lines += [f"  {one_line(r)}" for r in bad[:40]]
        if len(bad) > 40:
            lines.append(f"  ... and {len(bad) - 40} more")
    lines += timing_lines(records["timings"])
    return lines, ok


def timing_lines(rows: list[dict]) -> list[str]:
    """One line per timed case: each provider's us/step, in brackets cuDNN's time over its own, and in
    braces the cost model's us/step where it has one."""
    cases: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("provider") and r.get("status") == "ok":
            key = tuple(r.get(k) for k in ("kind", "cell", "dtype", "B", "T", "H", "mode"))
            cases.setdefault(key, []).append(r)
    out = ["timings (us/step, [cuDNN time / this one], {cost model}):"] if cases else []
    for (kind, cell, dtype, B, T, H, mode), rs in cases.items():
        cols = []
        for r in rs:
            ratio = f" [{r['vs_cudnn']:.2f}x]" if isinstance(r.get("vs_cudnn"), float) else ""
            m = r.get("model_us_per_step")
            model = f" {{{m:.2f}}}" if isinstance(m, float) else ""
            cols.append(f"{r['provider']} {r['us_per_step']:.2f}{ratio}{model}")
        out.append(f"  {kind} {cell} {dtype} B{B} T{T} H{H} {mode or ''}: " + ", ".join(cols))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--run", default=None)
    args = p.parse_args(argv)
    lines, ok = summarize(args.out, args.run)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
