"""Paired A/B of the cpu backend's forced paths: each case is timed under the flags of side A and of side B
(``rnnfast.backends.cpu.flags``: ``path=auto|team|rows|plain``, ``gemm=auto|blocked|onednn|aten``; and, for
``--module``, ``backend=cpu|torch|auto``) in alternating short rounds in one process, so the slow drift of a
shared machine hits both alike; the figure of a case is the median over rounds of B's time / A's time
(> 1: A is faster). Without ``--module`` the case is the recurrence op alone; with it a whole one-layer
module call (rnnfast.RNN / GRU / LSTM, I = H: the input projection, its gradients and the loop).

    python benchmarks/cpu_flags_ab.py --a path=auto --b path=plain --cells rnn_tanh,gru,lstm \\
        --batch 16,64,256 --hidden 64,128,256 --threads 2 --name cpu-row-split-ab
    python benchmarks/cpu_flags_ab.py --module --a backend=cpu --b backend=torch --cells lstm --name lstm-ab

writes benchmarks/results/<name>.json and .csv (machine, versions, commit, one row per case and mode).
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
from rnnfast.backends import cpu  # noqa: E402
from tests.utils import recurrence_inputs, row_parts, run_recurrence, team_parts  # noqa: E402

KEYS = ("path", "gemm", "backend")


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",")]


def side(spec: str) -> dict[str, str]:
    """``path=team,gemm=aten`` -> {"path": "team", "gemm": "aten"}."""
    out = dict(item.partition("=")[::2] for item in spec.split(",") if item)
    bad = [k for k, v in out.items() if k not in KEYS or not v]
    if bad:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE[,...] with NAME in {KEYS}, got {spec!r}")
    return out


def under(flags: dict[str, str], fn):
    """fn run with the cpu flags of one side."""
    kw = {k: v for k, v in flags.items() if k != "backend"}

    def run():
        with cpu.flags(**kw):
            fn()

    return run


def module_call(cell: str, T: int, B: int, H: int, mode: str, backend: str = "cpu"):
    """A call of a one-layer rnnfast module (I = H) on fresh random input, as a function."""
    import rnnfast

    cls = {"rnn_tanh": rnnfast.RNN, "gru": rnnfast.GRU, "lstm": rnnfast.LSTM}[cell]
    g = torch.Generator().manual_seed(T + B + H)
    mod = cls(H, H, backend=backend)
    x = torch.randn(T, B, H, generator=g).requires_grad_(mode == "fwdbwd")

    def run():
        if mode == "infer":
            with torch.inference_mode():
                mod(x)
        else:
            y, _ = mod(x)
            y.sum().backward()

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", type=side, default={}, help="flags of side A: NAME=VALUE[,...] (default: none)")
    p.add_argument("--b", type=side, required=True, help="flags of side B: NAME=VALUE[,...]")
    p.add_argument("--cells", default="rnn_tanh,gru,lstm")
    p.add_argument("--batch", type=ints, default=[16, 64, 256])
    p.add_argument("--hidden", type=ints, default=[64, 128, 256])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--modes", default="infer,fwdbwd")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--module", action="store_true", help="time a one-layer module call, not the op alone")
    p.add_argument("--round-s", type=float, default=0.02, help="seconds of calls per side and round")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", required=True)
    args = p.parse_args(argv)
    if not args.module and ("backend" in args.a or "backend" in args.b):
        p.error("backend=... compares modules: add --module")
    ok, why = _ext.status()
    if not ok:
        print(f"C++ CPU kernels unavailable: {why}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    T, rows, sides = args.steps, [], {"a": args.a, "b": args.b}
    for cell in args.cells.split(","):
        for B in args.batch:
            for H in args.hidden:
                # which loops each side runs: the backward's team of team_parts threads, else row_parts
                # slices of rows (forward, backward)
                loops = {}
                for name, flags in sides.items():
                    with cpu.flags(**{k: v for k, v in flags.items() if k != "backend"}):
                        loops[name] = (
                            team_parts(cell, T, B, H),
                            row_parts(cell, B, H, T=T),
                            row_parts(cell, B, H, T=T, backward=True),
                        )
                for mode in args.modes.split(","):
                    runs = {}
                    for name, flags in sides.items():
                        if args.module:
                            fn = module_call(cell, T, B, H, mode, flags.get("backend", "cpu"))
                        else:
                            x = recurrence_inputs(cell, T, B, H, dtype=torch.float32, grad=mode == "fwdbwd")

                            def fn(x=x, mode=mode, cell=cell):
                                if mode == "infer":
                                    with torch.inference_mode():
                                        run_recurrence(cell, x, False, "cpu")
                                else:
                                    outs = [o for o in run_recurrence(cell, x, False, "cpu") if o is not None]
                                    sum(o.sum() for o in outs).backward()

                        runs[name] = under(flags, fn)
                    a, b = time_pair(runs["a"], runs["b"], args.rounds, args.round_s)
                    ratio = [tb / ta for ta, tb in zip(a, b)]
                    q = statistics.quantiles(ratio, n=4)
                    row = {
                        "cell": cell, "mode": mode, "B": B, "T": T, "H": H, "dtype": "float32",
                        "a_team_parts": loops["a"][0], "a_row_parts": loops["a"][1],
                        "a_row_parts_bwd": loops["a"][2],
                        "b_team_parts": loops["b"][0], "b_row_parts": loops["b"][1],
                        "b_row_parts_bwd": loops["b"][2],
                        "a_median_ms": statistics.median(a), "b_median_ms": statistics.median(b),
                        "b_over_a_median": statistics.median(ratio),
                        "b_over_a_q25": q[0], "b_over_a_q75": q[2], "rounds": args.rounds,
                    }  # fmt: skip
                    rows.append(row)
                    print(
                        f"{cell:8s} {mode:6s} B{B:<4d} H{H:<4d} (team, rows, bwd rows)"
                        f" A {loops['a']} B {loops['b']}"
                        f"  A {row['a_median_ms']:8.3f} B {row['b_median_ms']:8.3f} ms"
                        f"  B/A {row['b_over_a_median']:.2f} [{q[0]:.2f}, {q[2]:.2f}]",
                        flush=True,
                    )
    op = "module, one layer, I = H" if args.module else "recurrence (cpu)"
    write_results(args.out, args.name, rows, flags_a=args.a, flags_b=args.b, op=op)
    return 0


if __name__ == "__main__":
    sys.exit(main())
