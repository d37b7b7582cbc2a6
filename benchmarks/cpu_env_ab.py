"""Paired A/B of the cpu backend's knobs read at every call (RNNFAST_CPU_ROW_SPLIT_MIN_B,
RNNFAST_CPU_TEAM_MIN_WORK, RNNFAST_CPU_BLAS_MIN_B, RNNFAST_CPU_SMALL_MAX_WORK,
RNNFAST_CPU_TEAM_EVEN_SLICES; several at once with --env A=1,B=2): the recurrence op of each case is
timed with the variable unset (A) and set (B) in alternating short rounds in one process, so the slow
drift of a shared machine hits both alike;
the figure of a case is the median over rounds of B's time / A's time (> 1: A is faster). With
``--module`` the case is a whole one-layer module call (rnnfast.RNN / GRU / LSTM, I = H, backend "cpu":
the input projection, its gradients and the loop) instead of the recurrence op alone, for the knobs of
the projection (RNNFAST_CPU_GEMM, read at every call); ``--module-backend auto --env-a RNNFAST_BACKEND=cpu
--env RNNFAST_BACKEND=torch`` compares two backends of the same module.

    python benchmarks/cpu_env_ab.py --env RNNFAST_CPU_ROW_SPLIT_MIN_B=-1 --cells rnn_tanh,gru,lstm \\
        --batch 16,64,256 --hidden 64,128,256 --threads 2 --name cpu-row-split-ab

writes benchmarks/results/<name>.json and .csv (machine, versions, commit, one row per case and mode).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ab_results import write_results  # noqa: E402
from rnnfast import _ext  # noqa: E402
from tests.utils import recurrence_inputs, row_parts, run_recurrence, team_parts  # noqa: E402


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",")]


# Variables set for side A only (--env-a; side B removes those it does not set itself).
ENV_A: dict[str, str] = {}


def set_env(env: dict[str, str], on: bool) -> None:
    """Sets the variables of ``env`` (side B) or removes them (side A, which sets ENV_A's instead)."""
    for name, value in env.items():
        if on:
            os.environ[name] = value
        else:
            os.environ.pop(name, None)
    for name, value in ENV_A.items():
        if not on:
            os.environ[name] = value
        elif name not in env:
            os.environ.pop(name, None)


def time_pair(run, env: dict[str, str], rounds: int, round_s: float) -> tuple[list[float], list[float]]:
    """Milliseconds per call of ``run`` with the variables of ``env`` unset (A) and set (B), per round."""
    for _ in range(3):
        run()
    t0 = time.perf_counter()
    run()
    reps = max(1, int(round_s / max(time.perf_counter() - t0, 1e-6)))
    a, b = [], []
    try:
        for r in range(rounds):
            for side in "ab" if r % 2 == 0 else "ba":
                set_env(env, side == "b")
                run()
                t0 = time.perf_counter()
                for _ in range(reps):
                    run()
                (a if side == "a" else b).append((time.perf_counter() - t0) / reps * 1e3)
    finally:
        set_env(env, False)
    return a, b


def module_call(cell: str, T: int, B: int, H: int, mode: str, backend: str = "cpu"):
    """A call of a one-layer rnnfast module (I = H) on fresh random input, as a function; with backend
    "auto" RNNFAST_BACKEND (read at every call) may pick the backend per side."""
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
    p.add_argument("--env", required=True, help="NAME=VALUE[,NAME=VALUE...] set for side B")
    p.add_argument("--cells", default="rnn_tanh,gru,lstm")
    p.add_argument("--batch", type=ints, default=[16, 64, 256])
    p.add_argument("--hidden", type=ints, default=[64, 128, 256])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--modes", default="infer,fwdbwd")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--module", action="store_true", help="time a one-layer module call, not the op alone")
    p.add_argument("--module-backend", default="cpu", help="the module's backend argument (default cpu)")
    p.add_argument("--env-a", default="", help="NAME=VALUE[,NAME=VALUE...] set for side A only")
    p.add_argument("--round-s", type=float, default=0.02, help="seconds of calls per side and round")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", required=True)
    args = p.parse_args(argv)
    env = dict(item.partition("=")[::2] for item in args.env.split(","))
    if not all(env) or not all(env.values()):
        p.error(f"--env: expected NAME=VALUE[,NAME=VALUE...], got {args.env!r}")
    ENV_A.update(dict(item.partition("=")[::2] for item in args.env_a.split(",") if item))
    if not all(ENV_A.values()):
        p.error(f"--env-a: expected NAME=VALUE[,NAME=VALUE...], got {args.env_a!r}")
    ok, why = _ext.status()
    if not ok:
        print(f"C++ CPU kernels unavailable: {why}", file=sys.stderr)
        return 1
    set_env(env, False)
    torch.set_num_threads(args.threads)
    T, rows = args.steps, []
    for cell in args.cells.split(","):
        for B in args.batch:
            for H in args.hidden:
                # which loops each side runs: the backward's team of team_parts threads, else row_parts
                # slices of rows (forward, backward)
                loops = {}
                for side in "ab":
                    set_env(env, side == "b")
                    loops[side] = (
                        team_parts(cell, T, B, H),
                        row_parts(cell, B, H, T=T),
                        row_parts(cell, B, H, T=T, backward=True),
                    )
                    set_env(env, False)
                for mode in args.modes.split(","):
                    if args.module:
                        run = module_call(cell, T, B, H, mode, args.module_backend)
                    else:
                        x = recurrence_inputs(cell, T, B, H, dtype=torch.float32, grad=mode == "fwdbwd")

                        def run(x=x, mode=mode, cell=cell):
                            if mode == "infer":
                                with torch.inference_mode():
                                    run_recurrence(cell, x, False, "cpu")
                            else:
                                outs = [o for o in run_recurrence(cell, x, False, "cpu") if o is not None]
                                sum(o.sum() for o in outs).backward()

                    a, b = time_pair(run, env, args.rounds, args.round_s)
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
    op = f"module, one layer, I = H ({args.module_backend})" if args.module else "recurrence (cpu)"
    write_results(args.out, args.name, rows, env_a=args.env_a, env_b=args.env, op=op)
    return 0


if __name__ == "__main__":
    sys.exit(main())
