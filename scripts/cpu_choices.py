"""Dump what the cpu policy picks over a grid of sizes, or compare two dumps (e.g. two revisions on the same
machine): the module's backend (cpu kernels or torch.nn), the loops' team / row-split parts, the per-step
products' path and the input projection's library. No timing: choices only.

    PYTHONPATH=. python scripts/cpu_choices.py --out /tmp/new.json
    PYTHONPATH=/path/to/other/checkout python scripts/cpu_choices.py --out /tmp/old.json
    python scripts/cpu_choices.py --compare /tmp/old.json /tmp/new.json
"""

from __future__ import annotations

import argparse
import json
import sys

CELLS = {"rnn_tanh": (0, 1), "gru": (2, 3), "lstm": (3, 4)}  # code, gates


def dump(threads: int) -> dict[str, object]:
    import torch

    from rnnfast import _ext, backends
    from rnnfast.ops import linear

    ok, why = _ext.status()
    if not ok:
        raise SystemExit(f"C++ CPU kernels unavailable: {why}")
    torch.set_num_threads(threads)
    ops, cpu, out, f32 = torch.ops.rnnfast_C, torch.device("cpu"), {}, torch.float32
    for cell, (code, gates) in CELLS.items():
        for T in (1, 2, 50, 200):
            for B in (1, 4, 16, 64, 256):
                for H in (64, 128, 256, 512, 1024):
                    case = f"{cell} T{T} B{B} H{H}"
                    for grad in (False, True):
                        for packed in (False, True):
                            s = dict(cell=cell, T=T, B=B, H=H, P=0, lengths=packed, reverse=False, grad=grad)
                            out[f"module {case} grad{int(grad)} packed{int(packed)}"] = backends.auto_order(
                                "module", cpu, s
                            )[0]
                    for fwd in (False, True):
                        out[f"team {case} fwd{int(fwd)}"] = ops.team_parts(T, B, code, H, False, f32, fwd)
                    for bwd in (False, True):
                        out[f"rows {case} bwd{int(bwd)}"] = ops.row_parts(B, code, H, 0, f32, T, bwd)
                    out[f"step product {case}"] = ops.gemm_path(B, H, gates * H, T)
    out["input projection"] = linear.library()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the dump here")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="print where two dumps differ")
    args = p.parse_args(argv)
    if args.compare:
        old, new = (json.load(open(f)) for f in args.compare)
        diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        for k in diff:
            print(f"{k}: {old.get(k)} -> {new.get(k)}")
        print(f"{len(diff)} of {len(set(old) | set(new))} choices differ")
        return 0
    if not args.out:
        p.error("--out or --compare")
    data = dump(args.threads)
    with open(args.out, "w") as f:
        json.dump(data, f, indent=0, sort_keys=True)
    print(f"wrote {len(data)} choices to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
