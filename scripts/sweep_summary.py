"""Summarise a sweep-grid results file of ``rnnfast bench`` against the CPU targets, per cell.

    python scripts/sweep_summary.py benchmarks/results/<name>.json [--provider cpu]

Per cell (gru, rnn, lstm) it prints the range of the provider's speed-up over torch.nn, the cases below
0.95× (the worst named), the overhead-bound cases (B ≤ 4, H ≤ 128) for inference and forward+backward,
B=16 H=256, one row with H ≥ 512, and how many GEMM-bound cases (B ≥ 16 or H ≥ 256) have %GEMMs (the
bench's column: 100 × the time of the case's GEMMs called one by one / the case's time; JSON ``pct_floor``)
below 85%. Speed-ups are ratios of the medians in the file; nothing is re-measured.

    python scripts/sweep_summary.py benchmarks/results/<name>.json --targets lstm [--providers cpu,auto]

prints instead one line per case of that cell with its target (3× at B ≤ 4 and H ≤ 128, 1.1× at B=16
H=256, else 0.95×), each provider's speed-up and the share of the run's GEMM peak the target asks for.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def _range(xs: list[float]) -> str:
    return f"{min(xs):.2f}–{max(xs):.2f}×" if xs else "–"


def by_case(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """{case label: {provider: row}} over the timed rows (those with a median)."""
    cases: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        if r.get("median_ms"):
            cases[r["label"]][r["provider"]] = r
    return cases


def summarise(rows: list[dict], provider: str = "cpu") -> list[dict]:
    cases_by_label = by_case(rows)
    out = []
    for op in ("gru", "rnn", "lstm"):
        cases = []
        for label, prov in cases_by_label.items():
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
        low_gemms = [r for r in gemm if r.get("pct_floor") is not None and r["pct_floor"] < 85]
        out.append(
            {
                "cell": op,
                "range": _range([s for *_, s in cases]),
                "below": f"{len(below)} of {len(cases)}"
                + (f" (worst {below[0][1]}: {below[0][0]:.2f}×)" if below else ""),
                "small": f"{_range(small['infer'])} / {_range(small['fwdbwd'])}",
                "b16h256": _range([s for _, r, s in cases if r["B"] == 16 and r["H"] == 256]),
                "b1h512": _range([s for _, r, s in cases if r["B"] == 1 and r["H"] >= 512]),
                "gemms": f"{len(low_gemms)} of {len(gemm)}",
            }
        )
    return out


def target_of(B: int, H: int) -> tuple[float, str]:
    """The speed-up asked for at batch B and hidden size H, and the name of the rule."""
    if B <= 4 and H <= 128:
        return 3.0, "3x (B<=4, H<=128)"
    if B == 16 and H == 256:
        return 1.1, "1.1x (B=16, H=256)"
    return 0.95, "0.95x (grid)"


def targets(doc: dict, op: str, providers: list[str]) -> list[str]:
    """Per case of ``op``: its target, torch.nn's median, each provider's speed-up (! below the target),
    and the FLOP/s the target asks for (the case's ``flop`` in torch.nn's time / the target) as a share
    of the run's GEMM peak (``peak.gemm_flops``); above 100% no implementation meets it on that machine,
    its best large GEMM alone not being fast enough. Then, per rule and provider, how many cases meet it,
    and the cases below their target where it asks for more than the peak."""
    peak = doc["peak"]["gemm_flops"]["float32"]
    lib = doc["peak"].get("gemm_lib", {}).get("float32", "torch.mm")
    lines = [
        f"{op}: GEMM peak of the run {peak / 1e9:.0f} GFLOP/s ({lib}, n={doc['peak']['gemm_n']['float32']})",
        f"{'case':<26} {'target':<20} {'torch.nn ms':>11} "
        + " ".join(f"{p + ' x':>9}" for p in providers)
        + f" {'needs':>7} {'% peak':>7}",
    ]
    summary: dict[tuple[str, str], list] = {}
    beyond = []
    cases = [by for by in by_case(doc["rows"]).values() if "torch.nn" in by]
    cases = [by for by in cases if by["torch.nn"]["op"] == op and not by["torch.nn"]["packed"]]
    cases = [by for by in cases if by["torch.nn"]["layers"] == 1]
    for by in sorted(cases, key=lambda by: tuple(by["torch.nn"][k] for k in ("mode", "B", "H", "T"))):
        base = by["torch.nn"]
        mode, B, H, T = (base[k] for k in ("mode", "B", "H", "T"))
        target, rule = target_of(B, H)
        needed_ms = base["median_ms"] / target
        gflops = base["flop"] / (needed_ms * 1e-3) / 1e9
        pct = 100.0 * gflops * 1e9 / peak
        cells, missed = [], False
        for p in providers:
            if p not in by:
                cells.append(f"{'-':>9}")
                continue
            x = base["median_ms"] / by[p]["median_ms"]
            ok = x >= target
            missed |= not ok
            summary.setdefault((rule, p), []).append(ok)
            cells.append(f"{x:>8.2f}{' ' if ok else '!'}")
        if missed and pct > 100:
            beyond.append(f"{mode} B{B} T{T} H{H}")
        lines.append(
            f"{mode + f' B{B} T{T} H{H}':<26} {rule:<20} {base['median_ms']:>11.3f} "
            + " ".join(cells)
            + f" {gflops:>7.0f} {pct:>6.0f}%"
        )
    lines.append("! marks a case below its target; needs: GFLOP/s to meet it (FLOP / (torch.nn ms / target))")
    for (rule, p), oks in sorted(summary.items()):
        lines.append(f"{rule:<20} {p:<8} met in {sum(oks)} of {len(oks)}")
    lines.append(
        f"cases below a target that asks for more than the measured peak: {len(beyond)} "
        f"({', '.join(beyond) or 'none'})"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="a JSON file written by rnnfast bench --grid sweep")
    p.add_argument("--provider", default="cpu", help="the provider compared with torch.nn (default cpu)")
    p.add_argument("--targets", metavar="CELL", help="per case of this cell (gru, rnn, lstm): the targets")
    p.add_argument("--providers", default="cpu,auto", help="with --targets: providers (default cpu,auto)")
    args = p.parse_args(argv)
    with open(args.results) as f:
        data = json.load(f)
    if args.targets:
        print("\n".join(targets(data, args.targets, [n for n in args.providers.split(",") if n])))
        return 0
    m = data["machine"]
    print(f"{m.get('device_name')}, {m.get('threads')} threads, torch {m.get('torch')}")
    print(f"commit {m.get('commit')}")
    print(
        "| cell | speed-up range | below 0.95× | B ≤ 4, H ≤ 128 (infer / fwd+bwd) | B=16, H=256 "
        "| B=1, H ≥ 512 | %GEMMs < 85% (GEMM-bound) |"
    )
    print("|---|---|---|---|---|---|---|")
    for s in summarise(data["rows"], args.provider):
        print(
            f"| {s['cell'].upper()} | {s['range']} | {s['below']} | {s['small']} | {s['b16h256']} "
            f"| {s['b1h512']} | {s['gemms']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
