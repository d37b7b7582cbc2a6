"""The results files of the paired A/B scripts (cpu_flags_ab.py, cpu_gemm_ab.py): <name>.json holds the
machine (with versions and commit) and one row per case; <name>.csv the same rows, the machine's columns
repeated on each."""

from __future__ import annotations

import csv
import json
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
