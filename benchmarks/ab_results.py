"""What the paired A/B scripts (cpu_flags_ab.py, cpu_gemm_ab.py) share: the paired timing, and the results
files: <name>.json holds the machine (with versions and commit) and one row per case; <name>.csv the same
rows, the machine's columns repeated on each."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import torch

from rnnfast.bench.report import git_commit, machine_info


def write_results(out: str | Path, name: str, rows: list[dict], **meta) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(machine_info(torch.device("cpu")), commit=git_commit(), **meta)
    (out / f"{name}.json").write_text(json.dumps({"machine": meta, "results": rows}, indent=1) + "\n")
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*meta, *rows[0]])
        w.writeheader()
        for row in rows:
            w.writerow({**meta, **row})
    print(f"wrote {out / name}.json, .csv")


def time_pair(fa, fb, rounds: int, round_s: float) -> tuple[list[float], list[float]]:
    """Milliseconds per call of fa (A) and fb (B), per round, the two in turns (the order alternating each
    round, one untimed call before each turn), so that a drifting machine hits both alike."""
    for _ in range(3):
        fa(), fb()
    t0 = time.perf_counter()
    fa()
    reps = max(1, int(round_s / max(time.perf_counter() - t0, 1e-6)))
    a, b = [], []
    for r in range(rounds):
        for side, f in (("a", fa), ("b", fb)) if r % 2 == 0 else (("b", fb), ("a", fa)):
            f()
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            (a if side == "a" else b).append((time.perf_counter() - t0) / reps * 1e3)
    return a, b
