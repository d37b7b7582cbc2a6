"""``rnnfast bench`` and ``rnnfast profile``: argument parsing and the run loop.

``main_bench`` checks and times a grid of cases on one device, prints the table and writes
``<out>/<stem>.json``, ``.csv`` and the figures (``.png``, :mod:`rnnfast.bench.plot`); it returns 1 when
a provider disagreed with its baseline (MISMATCH) or raised (ERROR), else 0. ``--replot`` redraws the
figures of results files instead. ``main_profile`` runs one case under torch.profiler
(see :mod:`rnnfast.bench.profile`).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

from rnnfast.bench import plot, registry, report, roofline, runner


def _csv(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_device(name: str | None) -> torch.device:
    device = torch.device(name or default_device())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("rnnfast bench: --device cuda: no CUDA device (torch.cuda.is_available() is False)")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"rnnfast bench: --device: expected cpu or cuda[:N], got {name!r}")
    return device


class Progress:
    """A plain-text progress bar on stderr: redrawn in place on a terminal, one line per case otherwise."""

    def __init__(self, total: int, enabled: bool = True, width: int = 24):
        self.total, self.done, self.width, self.enabled = total, 0, width, enabled
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()

    def show(self, what: str, transient: bool = False) -> None:
        """Draw the bar; a ``transient`` update (which provider is running) only on a terminal."""
        if not self.enabled or (transient and not self.tty):
            return
        fill = self.width * self.done // max(self.total, 1)
        elapsed = time.perf_counter() - self.start
        line = f"[{'#' * fill}{'.' * (self.width - fill)}] {self.done}/{self.total} {elapsed:5.0f}s {what}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line[:150])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def step(self) -> None:
        self.done += 1

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rnnfast bench",
        description="Check and time rnnfast's providers against torch.nn (cuDNN on CUDA) and the reference.",
    )
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda if present, else cpu)")
    p.add_argument("--grid", default="quick", choices=registry.GRIDS, help="case grid (default: quick)")
    p.add_argument("--ops", type=_csv, help=f"comma-separated ops to keep, from {', '.join(registry.OPS)}")
    p.add_argument(
        "--dtype", type=_csv, help="comma-separated dtypes replacing the grid's (float32, bfloat16, ...)"
    )
    p.add_argument(
        "--modes", type=_csv, help="comma-separated modes replacing the grid's (fwd, fwdbwd, infer)"
    )
    p.add_argument(
        "--filter",
        metavar="REGEX",
        help="keep the cases whose label matches (re.search), e.g. 'B(1|4) T50 I64' or 'B256 .* H1024'",
    )
    p.add_argument(
        "--providers",
        type=_csv,
        help="comma-separated providers to time (torch.nn, reference, cpu, triton, cuda, auto, compile); "
        "the baseline (torch.nn, or reference for bare ops) always runs, to check them and for the speedup",
    )
    p.add_argument(
        "--compile", action="store_true", help="add torch.compile of the PyTorch oracle (slow compiles)"
    )
    p.add_argument(
        "--out",
        help="directory for the JSON, CSV and PNG (default: bench_out; with --replot: beside each file)",
    )
    p.add_argument(
        "--name", help="file stem (default: <device>-<grid>[-<ops>-<dtypes>-<modes> given], e.g. cpu-quick)"
    )
    p.add_argument(
        "--min-time", type=float, default=0.3, help="seconds of timed samples per provider (default 0.3)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time the providers of a case in turns, this many rounds of min-time/rounds seconds each, "
        "pooling the samples (default 1: one provider after the other); for a machine whose speed drifts",
    )
    p.add_argument("--threads", type=int, help="torch.set_num_threads for the run (default: torch's choice)")
    p.add_argument(
        "--no-floor",
        action="store_true",
        help="skip timing each case's GEMMs one by one (the %%GEMMs column, JSON pct_floor); "
        "the roofline floor (%%floor) needs no timing of its own and stays",
    )
    p.add_argument("--list", action="store_true", help="print the cases and their providers, run nothing")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument(
        "--replot",
        nargs="+",
        metavar="FILE",
        help="run nothing: redraw the figures of results JSON files (written by rnnfast bench) "
        "beside each, or into --out",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main_bench(argv: list[str] | None = None) -> int:
    """``rnnfast bench``: returns 0, or 1 if any provider gave a MISMATCH or an ERROR."""
    args = bench_parser().parse_args(argv)
    if args.replot:
        return _replot(args.replot, args.out)
    device = parse_device(args.device)
    if args.rounds < 1:
        raise SystemExit(f"rnnfast bench: --rounds: expected a positive integer, got {args.rounds}")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"rnnfast bench: --threads: expected a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.dtype:
        bad = [d for d in args.dtype if d not in registry.DTYPES]
        if bad:
            raise SystemExit(
                f"rnnfast bench: --dtype: expected names from {tuple(registry.DTYPES)}, got {bad}"
            )
    if args.modes:
        bad = [m for m in args.modes if m not in registry.MODES]
        if bad:
            raise SystemExit(f"rnnfast bench: --modes: expected names from {registry.MODES}, got {bad}")
    try:
        cases = registry.grid(args.grid, device, modes=args.modes, dtypes=args.dtype, ops=args.ops)
    except ValueError as e:
        raise SystemExit(f"rnnfast bench: {e}") from None
    if args.filter:
        try:
            pattern = re.compile(args.filter)
        except re.error as e:
            raise SystemExit(
                f"rnnfast bench: --filter: not a regular expression ({e}): {args.filter!r}"
            ) from None
        cases = [c for c in cases if pattern.search(c.label)]
        if not cases:
            raise SystemExit(
                f"rnnfast bench: --filter: no case label of the '{args.grid}' grid matches {args.filter!r}"
            )
    compile_ = args.compile or bool(args.providers and "compile" in args.providers)
    if args.providers:
        known = {"compile", *registry.KERNEL_BACKENDS}.union(*(s.extra for s in registry.OPS.values()))
        bad = [p for p in args.providers if p not in known]
        if bad:
            raise SystemExit(f"rnnfast bench: --providers: expected names from {sorted(known)}, got {bad}")

    if args.list:
        runnable = []
        for case in cases:
            listed = registry.providers(case, device, compile=compile_)
            chosen = [
                (n, ok)
                for n, ok, _ in listed
                if not args.providers or n in args.providers or n == case.spec.baseline
            ]
            runnable.append(sum(ok for _, ok in chosen))
            names = [n + ("" if ok else " (no)") for n, ok in chosen]
            print(f"{case.label:<46} {', '.join(names)}")
        print(f"{len(cases)} cases; '(no)': not runnable here (the reason is in the table of a run)")
        if device.type == "cpu":
            est = runner.estimate_seconds(cases, runnable, min_time=args.min_time, floor=not args.no_floor)
            print(
                f"estimated run time: {est / 60:.1f} min (model: {runner.CPU_FLOP_RATE / 1e9:.0f} GFLOP/s "
                "plus a per-step overhead; compiles not counted)"
            )
        return 0

    machine = report.machine_info(device)
    dtypes = list(dict.fromkeys(c.dtype for c in cases))
    progress = Progress(len(cases), enabled=not args.quiet)
    progress.show("measuring the GEMM and copy peaks")
    peak = runner.measure_peak(device, dtypes, min_time=max(args.min_time, 0.05))
    print("\n".join(report.header_lines(machine, peak)), flush=True)

    floor = None if args.no_floor else runner.GemmFloor(device, min_time=args.min_time)
    rows: list[dict] = []
    t0 = time.perf_counter()
    for case in cases:
        progress.show(case.label)
        rows += runner.run_case(
            case,
            device,
            peak,
            providers=args.providers,
            compile=compile_,
            min_time=args.min_time,
            rounds=args.rounds,
            on_provider=lambda name, case=case: progress.show(f"{case.label}: {name}", transient=True),
            floor=floor,
        )
        progress.step()
    progress.show(f"done in {time.perf_counter() - t0:.0f}s")
    progress.close()

    limits = roofline.apply(rows, peak)
    print()
    print("\n".join(report.table_lines(rows)))
    not_run = report.not_run_lines(rows)
    if not_run:
        print("not run (unsupported here):")
        print("\n".join(not_run))
    print(report.LEGEND)
    for line in roofline.raised(limits):
        print(f"roofline: {line}")

    out = report.ensure_dir(args.out or "bench_out")
    # Restricted runs get their own files, so runs split by dtype or op do not overwrite each other.
    filters = [
        *(args.ops or []),
        *(args.dtype or []),
        *(args.modes or []),
        *(["filtered"] if args.filter else []),
    ]
    stem = args.name or "-".join([report.result_stem(machine, args.grid), *filters])
    meta = {
        "grid": args.grid,
        "filters": {
            "ops": args.ops,
            "dtypes": args.dtype,
            "modes": args.modes,
            "providers": args.providers,
            "filter": args.filter,
        },
        "command": "rnnfast bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seconds": round(time.perf_counter() - t0, 1),
        # The GEMMs behind floor_ms (registry.floor_gemms), each timed once in this run.
        "floor_gemms": floor.as_list() if floor is not None else None,
        # The limits behind roofline_ms: the measured peaks, or the case that beat one.
        "roofline": limits,
    }
    report.write_json(out / f"{stem}.json", machine, peak, rows, meta)
    report.write_csv(out / f"{stem}.csv", machine, rows)
    written = [f"{stem}.json", f"{stem}.csv"]
    if not args.no_plot:
        figures, why = plot.write_figures(out / stem, rows, machine, meta)
        if why:
            print(f"no PNG: {why}")
        written += [f.name for f in figures]
    print(f"wrote {', '.join(str(out / w) for w in written)}")

    bad = [r for r in rows if r["status"] in ("MISMATCH", "ERROR")]
    if bad:
        print(f"{len(bad)} provider run(s) failed the check or raised: see MISMATCH/ERROR rows above")
        return 1
    return 0


def _replot(files: list[str], out: str | None) -> int:
    """``rnnfast bench --replot FILE...``: the figures of each results file, nothing run."""
    out_dir = report.ensure_dir(out) if out else None
    for name in files:
        try:
            figures, why = plot.replot(Path(name), out_dir)
        except (OSError, ValueError) as e:  # a missing or foreign file: say which, as argparse would
            raise SystemExit(f"rnnfast bench: --replot: {e}") from None
        if why:
            print(f"no PNG: {why}")
            return 1
        print(f"wrote {', '.join(str(f) for f in figures)}")
    return 0


def main_profile(argv: list[str] | None = None) -> int:
    """``rnnfast profile``: one case under torch.profiler; see :mod:`rnnfast.bench.profile`."""
    from rnnfast.bench import profile

    return profile.main(argv)
