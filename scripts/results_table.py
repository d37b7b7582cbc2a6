"""Markdown headline table from the committed benchmark results (``benchmarks/results/*.json``).

For every quick-grid results file (one per device, written by ``rnnfast bench``; ``--all`` adds the
other grids and restricted runs) and every case: the baseline's median (torch.nn for the modules, the
reference for the bare ops), the fastest rnnfast provider that passed the correctness check (a backend,
or ``auto``: the module as a user gets it, which may hand the call to torch.nn), and its speedup; files
written with the GEMM floor (rows with ``pct_floor``) add that provider's % of floor ("—" where the op
has none). Numbers are copied from the files, never recomputed or edited, except the speedup (a ratio of
two of them).

    python scripts/results_table.py                      # print the table
    python scripts/results_table.py --update README.md   # rewrite it between the README markers
    python scripts/results_table.py --check README.md    # exit 1 if README's table is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

START = "<!-- results-table:start -->"
END = "<!-- results-table:end -->"
# The providers that are rnnfast: its backends, and "auto" (the module as a user gets it, which may hand
# the call to torch.nn itself where that is faster).
RNNFAST_BACKENDS = ("reference", "cpu", "triton", "cuda", "auto")
ROOT = Path(__file__).resolve().parents[1]


def _ms(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def file_table(path: Path, root: Path) -> list[str]:
    doc = json.loads(path.read_text())
    m = doc["machine"]
    commit = (m.get("commit") or "unknown")[:10]
    rel = path.relative_to(root) if path.is_relative_to(root) else path
    tf32 = "" if m["device"] != "cuda" else f", cuDNN TF32 {'on' if m['cudnn_allow_tf32'] else 'off'}"
    if m.get("loadavg_1min") is not None:
        tf32 += f", load average {m['loadavg_1min']}"
    # Files from before the GEMM floor have no pct_floor key: their table keeps its columns.
    floor = any("pct_floor" in r for r in doc["rows"])
    lines = [
        f"**{m['device_name']}** ({m['device']}, {m['threads']} threads{tf32}) · torch {m['torch']} · "
        f"rnnfast {m.get('rnnfast')} @ `{commit}` · grid `{doc.get('grid')}` · [`{rel}`]({rel})",
        "",
        "| case | baseline | baseline ms | fastest rnnfast | ms | speedup |"
        + (" % of floor |" if floor else ""),
        "|---|---|---:|---|---:|---:|" + ("---:|" if floor else ""),
    ]
    cases: dict[str, list[dict]] = {}
    for r in doc["rows"]:
        cases.setdefault(r["case"], []).append(r)
    for rows in cases.values():
        base_name = rows[0]["baseline"]
        base = next((r for r in rows if r["provider"] == base_name and r["status"] == "ok"), None)
        ours = [r for r in rows if r["provider"] in RNNFAST_BACKENDS and r["provider"] != base_name]
        failed = [r for r in ours if r["status"] in ("MISMATCH", "ERROR")]
        timed = [r for r in ours if r["status"] == "ok"]
        best = min(timed, key=lambda r: r["median_ms"]) if timed else None
        base_ms = _ms(base["median_ms"]) if base else "—"
        if best is None:
            note = ", ".join(f"{r['provider']} {r['status']}" for r in failed) or "only the baseline ran"
            lines.append(
                f"| {rows[0]['label']} | {base_name} | {base_ms} | {note} | | |" + (" |" if floor else "")
            )
            continue
        speedup = f"{base['median_ms'] / best['median_ms']:.2f}×" if base else "—"
        extra = "".join(f" ({r['provider']} {r['status']})" for r in failed)
        pct = best.get("pct_floor")
        lines.append(
            f"| {rows[0]['label']} | {base_name} | {base_ms} | {best['provider']}{extra} | "
            f"{_ms(best['median_ms'])} | {speedup} |"
            + ((f" {pct:.0f}% |" if pct is not None else " — |") if floor else "")
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
        "Median per call after warm-up; speedup = baseline median / rnnfast median, both from the same run. "
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
    args = p.parse_args(argv)
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
