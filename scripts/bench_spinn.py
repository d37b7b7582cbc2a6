"""Benchmark the batched SPINN encoder against the list-based reference (the classic example's loop).

    PYTHONPATH=. python scripts/bench_spinn.py                 # D=300 and D=100, tracker 64, B=128
    PYTHONPATH=. python scripts/bench_spinn.py --d-hidden 300 --batch 128 --reps 5

SNLI-like trees: leaves per sentence uniform in [--min-leaves, --max-leaves] (default 18..25, so up to
49 transitions), random binary trees, left-padded. Prints the median time of forward and of
forward+backward per provider (the providers timed in turns, so that load from other processes falls on
all alike) and the speedup over the reference. Providers: the list-based
reference; the thin-stack encoder as SPINN runs it on the CPU (the planned loop in C++, one op call per
direction); the same planned loop in Python (what other devices run); the Python loop composing all rows
with masking; the Python loop in out-of-place ops with autograd's backward.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from rnnfast import backends
from rnnfast.data.trees import pad_transitions, random_transitions
from rnnfast.nn.spinn import SPINN
from rnnfast.ops.spinn import encoder, reference


def _inputs(B, H, lo, hi, seed):
    rng = random.Random(seed)
    lens = [rng.randint(lo, hi) for _ in range(B)]
    tr = pad_transitions([random_transitions(n, rng) for n in lens])
    g = torch.Generator().manual_seed(seed)
    buffers = torch.randn(B, max(lens), 2 * H, generator=g) * 0.5
    null = torch.randn(B, 2 * H, generator=g) * 0.5
    return buffers, tr, null


def _time_round_robin(fns, reps):
    """Median seconds of each fn, the reps taken in turns (fn 0, fn 1, ..., fn 0, ...) so that load from
    other processes on a shared machine falls on all of them alike; fn i runs reps[i] times."""
    for fn in fns:  # warm-up
        fn()
    ts = [[] for _ in fns]
    for r in range(max(reps)):
        for i, fn in enumerate(fns):
            if r < reps[i]:
                t0 = time.perf_counter()
                fn()
                ts[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in ts]


def run(H, HT, B, lo, hi, reps, ref_reps, only=None, seed=0):
    torch.manual_seed(seed)
    model = SPINN(H, HT)
    buffers, tr, null = _inputs(B, H, lo, hi, seed)
    buffers.requires_grad_(True)
    null.requires_grad_(True)

    def fwd(f):
        def go():
            with torch.no_grad():
                f()

        return go

    def fwd_bwd(f):
        def go():
            h = f()
            h.sum().backward()

        return go

    def ref():
        return reference.spinn(model, buffers, tr, null)[0]

    def autograd_loop():
        r, t = model.reduce, model.tracker
        N = buffers.shape[1]
        p = encoder.make_plan(tr, N)
        return encoder.encode_autograd(p, buffers, null, r.left.weight, r.left.bias, r.right.weight,
                                       r.track.weight, *t.rnn.parameters())[0]  # fmt: skip

    def python_loop():
        # The planned loop in Python (what other devices run), hand-written backward, C++ tree-LSTM cell.
        r, t = model.reduce, model.tracker
        p = encoder.make_plan(tr, buffers.shape[1])
        impl = backends.implementation("cpu", "tree_lstm")
        return encoder.SpinnEncode.apply(p, impl, buffers, null, r.left.weight, r.left.bias, r.right.weight,
                                         r.track.weight, *t.rnn.parameters(), None, None)[0]  # fmt: skip

    def fast(all_rows):
        def go():
            model.all_rows = all_rows
            return model(buffers, tr, null)

        return go

    providers = [
        ("list-based reference", ref, ref_reps),
        ("thin stack, C++ loop", fast(False), reps),
        ("thin stack, Python loop", python_loop, reps),
        ("thin stack, all rows", fast(True), reps),
        ("thin stack, autograd", autograd_loop, reps),
    ]
    print(f"D={H} tracker={HT} B={B} T={tr.shape[0]} leaves {lo}..{hi} threads={torch.get_num_threads()}")
    print(f"{'provider':<26}{'fwd ms':>10}{'speedup':>9}{'fwd+bwd ms':>12}{'speedup':>9}")
    if only:  # the reference always runs: every speedup is against it, in the same process
        providers = providers[:1] + [p for p in providers[1:] if any(p[0].startswith(o) for o in only)]
    reps_of = [n for _, _, n in providers]
    tfs = _time_round_robin([fwd(f) for _, f, _ in providers], reps_of)
    tbs = _time_round_robin([fwd_bwd(f) for _, f, _ in providers], reps_of)
    base = (tfs[0], tbs[0])
    for (name, _, _), tf, tb in zip(providers, tfs, tbs):
        print(f"{name:<26}{tf * 1e3:>10.1f}{base[0] / tf:>8.2f}x{tb * 1e3:>12.1f}{base[1] / tb:>8.2f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-hidden", type=int, nargs="*", default=[300, 100])
    ap.add_argument("--d-tracker", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--min-leaves", type=int, default=18)
    ap.add_argument("--max-leaves", type=int, default=25)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--ref-reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--only", nargs="*", default=None, help="providers to run (prefixes; default all)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    for H in a.d_hidden:
        run(H, a.d_tracker, a.batch, a.min_leaves, a.max_leaves, a.reps, a.ref_reps, a.only)


if __name__ == "__main__":
    main()
