"""Summarise a sweep-grid results file of ``rnnfast bench`` against the CPU targets, per cell.

    python scripts/sweep_summary.py benchmarks/results/<name>.json [--provider cpu]

Per cell (gru, rnn, lstm) it prints the range of the provider's speed-up over torch.nn, the cases below
0.95× (the worst named), the overhead-bound cases (B ≤ 4, H ≤ 128) for inference and forward+backward,
B=16 H=256, one row with H ≥ 512, and how many GEMM-bound cases (B ≥ 16 or H ≥ 256) are below 85% of
the GEMM floor. Speed-ups are ratios of the medians in the file; nothing is re-measured.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def _range(xs: list[float]) -> str:
    return f"{min(xs):.2f}–{max(xs):.2f}×" if xs else "–"


def summarise(rows: list[dict], provider: str = "cpu") -> list[dict]:
    by_case: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        if r.get("median_ms"):
            by_case[r["label"]][r["provider"]] = r
    out = []
    for op in ("gru", "rnn", "lstm"):
        cases = []
        for label, prov in by_case.items():
            base, mine = prov.get("torch.nn"), prov.get(provider)
            if base is None or mine is None or mine["op"] != op:
                continue
            cases.append((label, mine, base["median_ms"] / mine["median_ms"]))
        if not cases:
            continue
        below = sorted((s, label) for label, _, s in cases if s < 0.95)
        small = {
            mode: [s for _, r, s in cases if r["B"] <= 4 and r["H"] <= 128 and r["mode"] == mode]
            for mode in ("infer", "fwdbwd")
        }
        gemm = [r for _, r, _ in cases if r["B"] >= 16 or r["H"] >= 256]
        low_floor = [r for r in gemm if r.get("pct_floor") is not None and r["pct_floor"] < 85]
        out.append(
            {
                "cell": op,
                "range": _range([s for *_, s in cases]),
                "below": f"{len(below)} of {len(cases)}"
                + (f" (worst {below[0][1]}: {below[0][0]:.2f}×)" if below else ""),
                "small": f"{_range(small['infer'])} / {_range(small['fwdbwd'])}",
                "b16h256": _range([s for _, r, s in cases if r["B"] == 16 and r["H"] == 256]),
                "b1h512": _range([s for _, r, s in cases if r["B"] == 1 and r["H"] >= 512]),
                "floor": f"{len(low_floor)} of {len(gemm)}",
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="a JSON file written by rnnfast bench --grid sweep")
    p.add_argument("--provider", default="cpu", help="the provider compared with torch.nn (default cpu)")
    args = p.parse_args(argv)
    with open(args.results) as f:
        data = json.load(f)
    m = data["machine"]
    print(f"{m.get('device_name')}, {m.get('threads')} threads, torch {m.get('torch')}")
    print(f"commit {m.get('commit')}")
    print(
        "| cell | speed-up range | below 0.95× | B ≤ 4, H ≤ 128 (infer / fwd+bwd) | B=16, H=256 "
        "| B=1, H ≥ 512 | %floor < 85% (GEMM-bound) |"
    )
    print("|---|---|---|---|---|---|---|")
    for s in summarise(data["rows"], args.provider):
        print(
            f"| {s['cell'].upper()} | {s['range']} | {s['below']} | {s['small']} | {s['b16h256']} "
            f"| {s['b1h512']} | {s['floor']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
