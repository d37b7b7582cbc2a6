"""Markdown headline table from the committed benchmark results (``benchmarks/results/*.json``), and
their figures.

For every quick-grid results file (one per device, written by ``rnnfast bench``; ``--all`` adds the
other grids and restricted runs) and every case: the baseline's median (torch.nn for the modules, the
reference for the bare ops), the fastest rnnfast provider that passed the correctness check (a backend,
or ``auto``: the module as a user gets it, which may hand the call to torch.nn), its speedup and its %
of the roofline floor (``rnnfast.bench.roofline``: at most 100%). Numbers are copied from the files,
never edited; derived are the speedup (a ratio of two medians) and, for files written before the
roofline, its % of floor, from the file's own peaks and medians (FLOP term only: those files do not
record the cache size the memory term needs).

    python scripts/results_table.py                      # print the table
    python scripts/results_table.py --update README.md   # rewrite it between the README markers
    python scripts/results_table.py --check README.md    # exit 1 if README's table is out of date
    python scripts/results_table.py --plot FILE.json     # redraw a results file's figures beside it
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's rnnfast, not an installed one

from rnnfast.bench import plot, roofline  # noqa: E402 (after the path it comes from)

START = "<!-- results-table:start -->"
END = "<!-- results-table:end -->"


def _ms(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _pct(x: float) -> str:
    return f"{x:.2g}%" if x < 10 else f"{x:.0f}%"


def file_table(path: Path, root: Path) -> list[str]:
    doc = json.loads(path.read_text())
    m = doc["machine"]
    commit = (m.get("commit") or "unknown")[:10]
    rel = path.relative_to(root) if path.is_relative_to(root) else path
    tf32 = "" if m["device"] != "cuda" else f", cuDNN TF32 {'on' if m['cudnn_allow_tf32'] else 'off'}"
    if m.get("loadavg_1min") is not None:
        tf32 += f", load average {m['loadavg_1min']}"
    rows = doc["rows"]
    derived = not any("pct_roofline" in r for r in rows)
    if derived:  # written before the roofline: the same rule over the file's own peaks and medians
        rows = copy.deepcopy(rows)
        roofline.apply(rows, doc.get("peak") or {})
    lines = [
        f"**{m['device_name']}** ({m['device']}, {m['threads']} threads{tf32}) · torch {m['torch']} · "
        f"rnnfast {m.get('rnnfast')} @ `{commit}` · grid `{doc.get('grid')}` · [`{rel}`]({rel})"
        + (" · % of floor from the file's peaks, FLOP term only" if derived else ""),
        "",
        "| case | baseline | baseline ms | fastest rnnfast | ms | speedup | % of floor |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    cases: dict[str, list[dict]] = {}
    for r in rows:
        cases.setdefault(r["case"], []).append(r)
    for rows in cases.values():
        base_name = rows[0]["baseline"]
        base = next((r for r in rows if r["provider"] == base_name and r["status"] == "ok"), None)
        ours = [r for r in rows if r["provider"] in plot.RNNFAST_PROVIDERS and r["provider"] != base_name]
        failed = [r for r in ours if r["status"] in ("MISMATCH", "ERROR")]
        best = plot.fastest_rnnfast(rows)
        base_ms = _ms(base["median_ms"]) if base else "—"
        if best is None:
            note = ", ".join(f"{r['provider']} {r['status']}" for r in failed) or "only the baseline ran"
            lines.append(f"| {rows[0]['label']} | {base_name} | {base_ms} | {note} | | | |")
            continue
        speedup = f"{base['median_ms'] / best['median_ms']:.2f}×" if base else "—"
        extra = "".join(f" ({r['provider']} {r['status']})" for r in failed)
        pct = best.get("pct_roofline")
        lines.append(
            f"| {rows[0]['label']} | {base_name} | {base_ms} | {best['provider']}{extra} | "
            f"{_ms(best['median_ms'])} | {speedup} | " + (f"{_pct(pct)} |" if pct is not None else "— |")
        )
    return lines


def headline(doc: dict) -> bool:
    """A headline run: the whole quick grid (no --ops/--dtype/--modes/--filter restriction)."""
    filters = doc.get("filters") or {}
    return doc.get("grid") == "quick" and not any(
        filters.get(k) for k in ("ops", "dtypes", "modes", "filter")
    )


def build(results: Path, root: Path = ROOT, everything: bool = False) -> str:
    out: list[str] = []
    for f in sorted(results.glob("*.json")):
        doc = json.loads(f.read_text())
        if not (isinstance(doc, dict) and doc.get("schema") == 1 and "rows" in doc):
            # e.g. a pytest-benchmark --benchmark-json file kept next to them
            print(f"results_table: {f.name} is not an 'rnnfast bench' result; left out", file=sys.stderr)
            continue
        if everything or headline(doc):
            out += file_table(f, root) + [""]
    if not out:
        raise SystemExit(f"results_table: no 'rnnfast bench' quick-grid results (*.json) in {results}")
    out.append(
        "Median per call after warm-up; speedup = baseline median / rnnfast median, both from the same run; "
        "% of floor = 100 × the roofline floor / the rnnfast median, floor = max(FLOP / peak GEMM FLOP/s, "
        "bytes that must move / copy bandwidth), both limits measured in the same run (at most 100%; "
        "[docs/benchmarks.md](docs/benchmarks.md#the-roofline-floor-floor)). "
        "Regenerate with `python scripts/results_table.py --update README.md`."
    )
    return "\n".join(out)


def replace_between_markers(text: str, table: str) -> str:
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise SystemExit(f"results_table: expected the markers {START} ... {END} in the file")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results", help="results directory")
    p.add_argument("--all", action="store_true", help="every results file, not only the full quick-grid runs")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--update", type=Path, metavar="README", help="rewrite the table between the markers")
    g.add_argument("--check", type=Path, metavar="README", help="exit 1 if the table there is out of date")
    g.add_argument(
        "--plot",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="redraw the figures of results JSON files (beside each, same stem), nothing else",
    )
    args = p.parse_args(argv)
    if args.plot:
        for f in args.plot:
            try:
                figures, why = plot.replot(f)
            except (OSError, ValueError) as e:
                raise SystemExit(f"results_table: --plot: {e}") from None
            if why:
                print(f"results_table: no PNG: {why}", file=sys.stderr)
                return 1
            print(f"wrote {', '.join(str(x) for x in figures)}")
        return 0
    table = build(args.results, everything=args.all)
    if args.update:
        args.update.write_text(replace_between_markers(args.update.read_text(), table))
        print(f"updated {args.update}")
    elif args.check:
        text = args.check.read_text()
        if replace_between_markers(text, table) != text:
            print(
                f"{args.check}: results table out of date; run scripts/results_table.py --update {args.check}"
            )
            return 1
        print(f"{args.check}: results table up to date")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
