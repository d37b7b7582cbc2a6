"""Expected µs per step of the persistent CUDA kernels and of the stepwise algorithm, from the cost model
in rnnfast/ops/recurrence/cuda.py (derived in docs/cuda.md), so that a GPU run is read against it.

    python scripts/gpu_model.py                          # the grid of the GPU check's timing stage
    python scripts/gpu_model.py --cells lstm --dtypes float16 --B 16 --H 768      # one case
    python scripts/gpu_model.py --barrier-us 0.8 --l2-tbs 6.2 --csv model.csv     # with measured figures

Columns: barrier, l2 (staging the shared operand: MB through L2 per step and µs), smem and mma (the tile
GEMM), cells, hbm (the cells' own traffic), persistent (their sum), stepwise, and the batch up to which
`auto` runs persistent for that (cell, dtype, H, direction). No GPU needed; with one, --device reads its SM
count.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys

import torch

from rnnfast.ops.recurrence import cuda

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def rows(cells, dtypes, batches, hiddens, tf32: bool, gpu: cuda.Gpu):
    for cell in cells:
        for name in dtypes:
            dtype = DTYPES[name]
            for H in hiddens:
                for backward in (False, True):
                    limit = cuda.batch_limit(cell, dtype, H, backward, tf32, gpu)
                    for B in batches:
                        t = cuda.step_time(cell, dtype, B, H, backward, tf32, gpu)
                        yield {
                            "cell": cell,
                            "dtype": name + ("" if dtype != torch.float32 else ("-tf32" if tf32 else "-fma")),
                            "B": B,
                            "H": H,
                            "dir": "bwd" if backward else "fwd",
                            "barrier": t["barrier"],
                            "l2_MB": t["l2_bytes"] / 1e6,
                            "l2": t["l2"],
                            "smem": t["smem"],
                            "mma": t["mma"],
                            "cells": t["cells"],
                            "hbm": t["hbm"],
                            "persistent": t["persistent"],
                            "stepwise": t["stepwise"],
                            "auto": "persistent" if B <= limit else "stepwise",
                            "limit_B": limit,
                        }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cells", nargs="+", default=["gru", "lstm"], choices=["rnn_tanh", "rnn_relu", "gru", "lstm"]
    )
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=list(DTYPES))
    p.add_argument("--B", nargs="+", type=int, default=[1, 16, 64, 256])
    p.add_argument("--H", nargs="+", type=int, default=[256, 1024])
    p.add_argument("--no-tf32", action="store_true", help="float32 in exact FMA (cudnn.allow_tf32 off)")
    p.add_argument("--device", action="store_true", help="read the SM count of the current CUDA device")
    for field in dataclasses.fields(cuda.Gpu):
        p.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=None)
    p.add_argument("--csv", help="also write the rows to this CSV file")
    args = p.parse_args(argv)

    gpu = cuda.Gpu.of(torch.cuda.current_device()) if args.device else cuda.Gpu()
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(cuda.Gpu)}
    gpu = dataclasses.replace(gpu, **{k: v for k, v in overrides.items() if v is not None})
    table = list(rows(args.cells, args.dtypes, args.B, args.H, not args.no_tf32, gpu))
    print("model:", ", ".join(f"{f.name}={getattr(gpu, f.name)}" for f in dataclasses.fields(gpu)))
    print("µs per step (l2_MB: megabytes through L2 per step)")
    head = list(table[0])
    print(" ".join(f"{h:>10}" for h in head))
    for r in table:
        print(" ".join(f"{v:>10.2f}" if isinstance(v, float) else f"{v!s:>10}" for v in r.values()))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=head)
            w.writeheader()
            w.writerows(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
