"""``rnnfast profile``: one case under torch.profiler, a Chrome trace and a per-kernel summary.

Ranges: each profiled step is a ``record_function`` range (and an NVTX range on CUDA) named after the
case and provider; inside a module, every layer and direction of the recurrence gets its own range
(``rnnfast.gru layer0 reverse [cuda]``). The backward shows up under autograd's node names.

Nsight Systems / Compute: ``--external`` skips torch.profiler (CUPTI cannot serve two profilers) and
brackets the profiled steps with ``cudaProfilerStart``/``Stop``, so only they are captured:
    nsys profile -t cuda,nvtx,osrt --capture-range=cudaProfilerApi --capture-range-end=stop \\
        -o gru python -m rnnfast.bench profile --op gru --provider cuda --external
    ncu --profile-from-start off --nvtx --set full -o gru \\
        python -m rnnfast.bench profile --op gru --provider cuda --external --steps 1
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch

from rnnfast.bench import registry, runner
from rnnfast.bench.cli import parse_device


@contextlib.contextmanager
def _range(name: str, nvtx: bool):
    """A torch.profiler range, and an NVTX range when ``nvtx``."""
    if nvtx:
        torch.cuda.nvtx.range_push(name)
    try:
        with torch.profiler.record_function(name):
            yield
    finally:
        if nvtx:
            torch.cuda.nvtx.range_pop()


@contextlib.contextmanager
def layer_ranges(directions: int, nvtx: bool):
    """Label each layer and direction of the rnnfast modules' recurrence calls while active.

    The modules call ``rnnfast.nn.rnn.recurrence`` once per layer and direction, in order; wrapping
    that name for the duration of the profile gives each call its range. ``reset()`` on the yielded
    object marks the start of a forward (the call counter gives the layer).
    """
    import rnnfast.nn.rnn as rnn_module

    original = rnn_module.recurrence

    class Counter:
        calls = 0

        def reset(self):
            self.calls = 0

    counter = Counter()

    def labelled(cell, gi, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, backend):
        layer = counter.calls // directions
        counter.calls += 1
        name = f"rnnfast.{cell} layer{layer} {'reverse' if reverse else 'forward'} [{backend}]"
        with _range(name, nvtx):
            return original(cell, gi, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, backend)

    rnn_module.recurrence = labelled
    try:
        yield counter
    finally:
        rnn_module.recurrence = original


def profile_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rnnfast profile",
        description="Run one benchmark case under torch.profiler: Chrome trace + per-kernel summary.",
    )
    p.add_argument("--op", default="gru", choices=sorted(registry.OPS))
    p.add_argument("--mode", default="fwdbwd", choices=registry.MODES)
    p.add_argument("--dtype", default="float32", choices=tuple(registry.DTYPES))
    p.add_argument("--B", type=int, default=16, help="batch (default 16)")
    p.add_argument("--T", type=int, default=100, help="time steps (default 100)")
    p.add_argument("--I", type=int, default=None, help="input size (default: H)")
    p.add_argument("--H", type=int, default=256, help="hidden size (default 256)")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--bidir", action="store_true")
    p.add_argument("--packed", action="store_true", help="ragged lengths (PackedSequence / lengths=)")
    p.add_argument("--R", type=int, default=1024, help="rows, for the tree ops (default 1024)")
    p.add_argument("--HT", type=int, default=0, help="tracker hidden, for tree_lstm_reduce and spinn")
    p.add_argument(
        "--provider", help="default: the fastest-looking supported one: cuda, triton, cpu, reference"
    )
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda if present, else cpu)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads for the run (default: torch's choice)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="profiled calls (default 5)")
    p.add_argument("--out", default="bench_out", help="directory for the Chrome trace (default: bench_out)")
    p.add_argument("--row-limit", type=int, default=25, help="rows of the summary table (default 25)")
    p.add_argument("--external", action="store_true", help="no torch.profiler: for nsys / ncu (see docs)")
    return p


def case_from_args(args) -> registry.Case:
    if args.op in ("tree_lstm", "tree_lstm_reduce"):
        HT = args.HT if args.op == "tree_lstm_reduce" else 0
        return registry.Case(args.op, args.mode, args.dtype, R=args.R, H=args.H, HT=HT)
    if args.op == "spinn":
        return registry.Case(args.op, args.mode, args.dtype, B=args.B, T=args.T, H=args.H, HT=args.HT)
    if args.op.endswith("_op"):
        return registry.Case(args.op, args.mode, args.dtype, B=args.B, T=args.T, H=args.H, packed=args.packed)
    return registry.Case(
        args.op, args.mode, args.dtype, B=args.B, T=args.T, I=args.I or args.H, H=args.H,
        layers=args.layers, bidir=args.bidir, packed=args.packed,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = profile_parser().parse_args(argv)
    device = parse_device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"rnnfast profile: --threads: expected a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    case = case_from_args(args)
    listed = {name: (ok, why) for name, ok, why in registry.providers(case, device, compile=True)}
    provider = args.provider
    if provider is None:
        provider = next(p for p in ("cuda", "triton", "cpu", "reference") if listed.get(p, (False,))[0])
    if provider not in listed:
        raise SystemExit(f"rnnfast profile: --provider: expected one of {sorted(listed)}, got {provider!r}")
    if not listed[provider][0]:
        raise SystemExit(f"rnnfast profile: {provider} cannot run {case.label}: {listed[provider][1]}")
    cuda = device.type == "cuda"
    print(
        f"profiling {case.label} with {provider} on {device} ({args.steps} steps after {args.warmup} warm-up)"
    )

    workload = case.spec.make(case, device)
    fn = runner.step_fn(workload, registry.bind(case, provider, workload))
    module_case = case.spec.family == "module" and provider in registry.KERNEL_BACKENDS
    directions = 2 if case.bidir else 1
    stack = contextlib.ExitStack()
    counter = stack.enter_context(layer_ranges(directions, cuda)) if module_case else None

    def step():
        if counter is not None:
            counter.reset()
        # One name for every step, so the summary aggregates them.
        with _range(f"bench {case.label} [{provider}]", cuda):
            fn()

    with stack:
        for _ in range(args.warmup):
            step()
        runner.synchronize(device)
        if args.external:
            if cuda:
                torch.cuda.profiler.start()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            runner.synchronize(device)
            if cuda:
                torch.cuda.profiler.stop()
            print(f"{args.steps} steps: {(time.perf_counter() - t0) * 1e3 / args.steps:.3f} ms per step")
            return 0
        activities = [torch.profiler.ProfilerActivity.CPU]
        if cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
            for _ in range(args.steps):
                step()
            runner.synchronize(device)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trace = out / f"trace-{case.id}-{provider}.json"
    prof.export_chrome_trace(str(trace))
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=args.row_limit))
    print(f"Chrome trace: {trace} (open in chrome://tracing or https://ui.perfetto.dev)")
    return 0
