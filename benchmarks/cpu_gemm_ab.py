"""Paired A/B of the large products of the cpu backend's input projection: the library it replaced (A)
against its blocked kernel (B, ``torch.ops.rnnfast_C.gemm``), float32, in alternating short rounds in
one process; the figure of a case is the median over rounds of B's time / A's time (< 1: the blocked
kernel is faster).

- ``fwd``: x (M, K) · Wᵀ + b, W (N, K); A is oneDNN (``mkldnn::_linear_pointwise``, a fresh result);
- ``dx``: g (M, N) · W; A is oneDNN on a contiguous copy of Wᵀ, as the projection's dX took it;
- ``dw``: gᵀ · x, a sum over the M rows; A is ATen (MKL).

    python benchmarks/cpu_gemm_ab.py --shapes 800x256x1024,12800x64x256 --name cpu-gemm-ab

writes benchmarks/results/<name>.json and .csv (machine, versions, commit, one row per shape and product).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ab_results import time_pair, write_results  # noqa: E402
from rnnfast import _ext  # noqa: E402


def shapes(s: str) -> list[tuple[int, int, int]]:
    out = []
    for item in s.split(","):
        m, k, n = (int(v) for v in item.split("x"))
        out.append((m, k, n))
    return out


def products(M: int, K: int, N: int):
    """(name, A, B) for the three products of a projection of these sizes, on fresh random operands."""
    g = torch.Generator().manual_seed(M + K + N)
    x = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g)
    b = torch.randn(N, generator=g)
    gy = torch.randn(M, N, generator=g)
    gemm, dnnl = torch.ops.rnnfast_C.gemm, torch.ops.mkldnn._linear_pointwise
    return [
        ("fwd", lambda: dnnl(x, w, b, "none", [], ""), lambda: gemm(x, w.t(), b)),
        ("dx", lambda: dnnl(gy, w.t().contiguous(), None, "none", [], ""), lambda: gemm(gy, w)),
        ("dw", lambda: gy.t().mm(x), lambda: gemm(gy, x, None, True)),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", type=shapes, required=True, help="MxKxN[,MxKxN...]")
    p.add_argument("--products", default="fwd,dx,dw")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--round-s", type=float, default=0.02, help="seconds of calls per side and round")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", required=True)
    args = p.parse_args(argv)
    ok, why = _ext.status()
    if not ok:
        print(f"C++ CPU kernels unavailable: {why}", file=sys.stderr)
        return 1
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        print("this torch has no oneDNN linear (mkldnn::_linear_pointwise)", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    wanted, rows = args.products.split(","), []
    for M, K, N in args.shapes:
        for name, fa, fb in products(M, K, N):
            if name not in wanted:
                continue
            a, b = time_pair(fa, fb, args.rounds, args.round_s)
            ratio = [tb / ta for ta, tb in zip(a, b)]
            q = statistics.quantiles(ratio, n=4)
            row = {
                "product": name, "M": M, "K": K, "N": N, "dtype": "float32",
                "a": "ATen (MKL)" if name == "dw" else "oneDNN", "b": "blocked (rnnfast_C::gemm)",
                "a_median_ms": statistics.median(a), "b_median_ms": statistics.median(b),
                "b_over_a_median": statistics.median(ratio), "b_over_a_q25": q[0], "b_over_a_q75": q[2],
                "rounds": args.rounds,
            }  # fmt: skip
            rows.append(row)
            print(
                f"{name:3s} {M}x{K}x{N}: A {row['a_median_ms']:8.3f} B {row['b_median_ms']:8.3f} ms"
                f"  B/A {row['b_over_a_median']:.2f} [{q[0]:.2f}, {q[2]:.2f}]",
                flush=True,
            )
    write_results(args.out, args.name, rows, op="input projection products")
    return 0


if __name__ == "__main__":
    sys.exit(main())
