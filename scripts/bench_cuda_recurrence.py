"""Timing grid of the cuda backend's recurrence against torch.nn (cuDNN) on a CUDA GPU.

For each (cell, dtype, B, H) at fixed T: median over repeats of forward and forward+backward, for the
persistent and stepwise algorithms and for torch.nn (same problem: W_ih = I, so its input GEMM is the
identity and the recurrence dominates; its time is included, a small bias in cuDNN's disfavour at large H
that the table notes). Also the per-step floor of the persistent kernel (B=1, one unit per CTA): the grid
barrier plus the step's L2 round trip. Prints a table and writes JSON.

    python scripts/bench_cuda_recurrence.py --out results.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from rnnfast.ops.recurrence import common
from rnnfast.ops.recurrence import cuda as cuda_backend


def _time(fn, repeats: int) -> float:
    """Median milliseconds of fn() over repeats, CUDA events, after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _inputs(cell, T, B, H, dtype):
    G = common.GATES[cell]

    def r(*shape, scale=0.5):
        return ((torch.rand(*shape, device="cuda") * 2 - 1) * scale).to(dtype)

    return {
        "gi": r(T, B, G * H, scale=1.0),
        "h0": r(B, H),
        "c0": r(B, H) if cell == "lstm" else None,
        "w_hh": r(G * H, H, scale=H**-0.5),
        "b_hh": r(G * H),
        "gy": r(T, B, H),
        "ghn": r(B, H),
        "gcn": r(B, H) if cell == "lstm" else None,
    }


def _ours(cell, a, backward: bool):
    def run():
        y, hn, cn, ws = cuda_backend.forward(
            cell, a["gi"], a["h0"], a["c0"], a["w_hh"], a["b_hh"], None, None, False, backward
        )
        if backward:
            cuda_backend.backward(
                cell,
                a["gy"],
                a["ghn"],
                a["gcn"],
                a["h0"],
                a["c0"],
                a["w_hh"],
                a["b_hh"],
                None,
                None,
                False,
                y,
                ws,
            )

    return run


def _torch_nn(cell, a, backward: bool):
    T, B = a["gi"].shape[:2]
    H = a["h0"].shape[1]
    GH = a["w_hh"].shape[0]
    m = {"gru": nn.GRU, "lstm": nn.LSTM}.get(cell)
    m = m(GH, H) if m else nn.RNN(GH, H, nonlinearity=cell[4:])
    m = m.to(device="cuda", dtype=a["gi"].dtype)
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.eye(GH))
        m.bias_ih_l0.zero_()
        m.weight_hh_l0.copy_(a["w_hh"])
        m.bias_hh_l0.copy_(a["b_hh"])
    x = a["gi"].detach().requires_grad_(backward)
    hx = (a["h0"][None], a["c0"][None]) if cell == "lstm" else a["h0"][None]

    def run():
        with torch.set_grad_enabled(backward):
            y, _ = m(x, hx)
            if backward:
                y.backward(a["gy"])

    return run


COLUMNS = ("cell", "dtype", "B", "H", "mode", "algo", "ms", "us/step", "cuDNN ms", "speedup")


def _bench_one(cell, dtype, T, B, H, repeats) -> list[dict]:
    a = _inputs(cell, T, B, H, dtype)
    dev = torch.device("cuda")
    rows = []
    for backward in (False, True):
        ref = _time(_torch_nn(cell, a, backward), repeats)
        for algo in ("persistent", "stepwise"):
            with cuda_backend.flags(algo=algo):
                runnable = all(
                    cuda_backend.algorithm(cell, dtype, B, H, bwd, dev)[0] for bwd in {False, backward}
                )
                if not runnable:
                    continue
                ms = _time(_ours(cell, a, backward), repeats)
            rows.append(
                {
                    "cell": cell,
                    "dtype": str(dtype).replace("torch.", ""),
                    "T": T,
                    "B": B,
                    "H": H,
                    "mode": "fwd+bwd" if backward else "fwd",
                    "algo": algo,
                    "ms": ms,
                    "us_per_step": 1000 * ms / T,
                    "cudnn_ms": ref,
                    "speedup": ref / ms,
                }
            )
            r = rows[-1]
            print(
                f"{cell:<8} {r['dtype']:<9} {B:>4} {H:>5} {r['mode']:<8} {algo:<10} {ms:>8.3f} "
                f"{r['us_per_step']:>8.2f} {ref:>9.3f} {r['speedup']:>7.2f}x",
                flush=True,
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="cuda_recurrence_bench.json")
    ap.add_argument("--quick", action="store_true", help="a small grid")
    ap.add_argument("--T", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    ok, why = cuda_backend.supports(torch.device("cuda"), torch.float16, {"cell": "gru", "B": 1, "H": 256})
    assert ok, why
    cells = ("gru", "lstm") if args.quick else common.CELLS
    dtypes = (torch.float16,) if args.quick else (torch.float16, torch.bfloat16, torch.float32)
    Bs = (1, 16) if args.quick else (1, 16, 64, 256)
    Hs = (256, 1024) if args.quick else (128, 256, 512, 768, 1024, 2048)
    print(f"{torch.cuda.get_device_name()}, T={args.T}, TF32 off, torch {torch.__version__}")
    print(" ".join(COLUMNS))
    rows = []
    for cell in cells:
        for dtype in dtypes:
            for B in Bs:
                for H in Hs:
                    rows += _bench_one(cell, dtype, args.T, B, H, args.repeats)
    # Per-step floor: one hidden unit per CTA and B=1, so a step is little more than the grid barrier and
    # the L2 round trip of h.
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    floor_T = 4096
    a = _inputs("rnn_tanh", floor_T, 1, sms, torch.float16)
    with cuda_backend.flags(algo="persistent"):
        floor = _time(_ours("rnn_tanh", a, False), args.repeats) * 1000 / floor_T
    print(f"per-step floor (rnn_tanh, B=1, H={sms}, one unit per CTA): {floor:.2f} us")
    meta = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "tf32": False,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "step_floor_us": floor,
    }
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
