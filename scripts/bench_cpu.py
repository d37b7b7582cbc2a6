"""Quick timing of the ``cpu`` backend against torch.nn on the CPU (module level, float32).

    python scripts/bench_cpu.py                      # the key points
    python scripts/bench_cpu.py --grid               # B in {1,4,16,64,256} x H in {64..1024} x T in {50,200}
    python scripts/bench_cpu.py --cells gru --points 1,128,200 4,64,500
    python scripts/bench_cpu.py --backend auto       # what the policy picks (cpu kernels or torch.nn)
    python scripts/bench_cpu.py --path plain --gemm aten   # forced paths (rnnfast.backends.cpu.flags)

Prints median milliseconds of torch.nn and rnnfast (run alternately, so that both see the same
machine load) and their ratio (>1: rnnfast faster), for inference
(no_grad) and forward+backward. The benchmark harness under benchmarks/ is the full tool; this is the
kernel author's loop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import rnnfast
from rnnfast.backends import cpu

KEY_POINTS = [(1, 128, 200), (4, 64, 500), (16, 256, 100), (64, 256, 50), (1, 1024, 50)]


def _interleaved_ms(fns, rounds=15, min_time=0.5, warmup=2) -> list[float]:
    """Median ms of each function, run alternately so that both see the same machine load."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < rounds or (time.perf_counter() - start < min_time and len(times[0]) < 200):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) * 1e3 for ts in times]


def bench(cell: str, B: int, H: int, T: int, modes, backend: str = "cpu") -> list[tuple[str, float, float]]:
    torch.manual_seed(0)
    kind = {"gru": "GRU", "lstm": "LSTM", "rnn": "RNN"}[cell]
    ref = getattr(torch.nn, kind)(H, H)
    fast = rnnfast.from_torch(ref, backend=backend)
    x = torch.randn(T, B, H)
    xg = x.clone().requires_grad_()
    rows = []
    for mode in modes:
        fns = []
        for m in (ref, fast):
            if mode == "infer":

                def run(m=m):
                    with torch.no_grad():
                        m(x)

            else:

                def run(m=m):
                    m(xg)[0].sum().backward()

            fns.append(run)
        t_ref, t_fast = _interleaved_ms(fns)
        rows.append((mode, t_ref, t_fast))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", default="gru,rnn,lstm")
    p.add_argument("--points", nargs="*", help="B,H,T triples")
    p.add_argument("--grid", action="store_true")
    p.add_argument("--modes", default="infer,train")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backend", default="cpu", help="rnnfast's backend: cpu (default) or auto")
    p.add_argument("--path", default="auto", help="flags(path=...): auto, team, rows, plain")
    p.add_argument("--gemm", default="auto", help="flags(gemm=...): auto, blocked, onednn, aten")
    p.add_argument("--autotune", action="store_true", help="rnnfast.backends.cpu.benchmark = True")
    a = p.parse_args()
    with cpu.flags(path=a.path, gemm=a.gemm, benchmark=a.autotune):
        run(a)


def run(a) -> None:
    torch.set_num_threads(a.threads)
    if a.grid:
        points = [
            (B, H, T) for T in (50, 200) for B in (1, 4, 16, 64, 256) for H in (64, 128, 256, 512, 1024)
        ]
    elif a.points:
        points = [tuple(int(v) for v in s.split(",")) for s in a.points]
    else:
        points = KEY_POINTS
    load = os.getloadavg()[0]
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, float32; medians in ms; load average {load:.1f}")
    tune = "on" if a.autotune else "off"
    print(f"rnnfast backend {a.backend}, path {a.path}, gemm {a.gemm}, autotune {tune}")
    print(f"{'cell':5} {'B':>4} {'H':>5} {'T':>4} {'mode':6} {'torch.nn':>10} {'rnnfast':>10} {'speedup':>8}")
    for cell in a.cells.split(","):
        for B, H, T in points:
            for mode, t_ref, t_fast in bench(cell, B, H, T, a.modes.split(","), a.backend):
                row = f"{cell:5} {B:4d} {H:5d} {T:4d} {mode:6} {t_ref:10.3f} {t_fast:10.3f}"
                print(f"{row} {t_ref / t_fast:7.2f}x", flush=True)


if __name__ == "__main__":
    main()
