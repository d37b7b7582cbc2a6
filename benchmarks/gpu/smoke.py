"""Stage 1: correctness of every kernel variant on a CUDA GPU, one record per case in smoke.jsonl.

Cases, in this order:
- capture, first call inside: a CUDA-graph capture (forward and backward) in which the variant's first
  call of the process happens; then replayed on fresh inputs, it must equal an eager call. A kernel may
  instead refuse capture with a clear error (recorded as an error with its message).
- accuracy: every cell x float32/float16/bfloat16 x variant on three problems: ragged lengths with
  reverse at H=33, (T=33, B=17, H=256) and (T=64, B=16, H=1024). Every output and input gradient must
  meet the test suite's rule (tests/test_cuda_backend.py): its error against a float64 oracle at most
  twice cuDNN's on the same problem, or a few ulps of the dtype; TF32 off on both sides. The Triton
  variants come after the CUDA ones: they compile each specialisation on first use (seconds each), so a
  tight budget leaves out Triton cases rather than CUDA ones.
- capture after a warm-up call.
- two streams: the largest configuration that runs persistent, forward and backward on two streams at
  once beside a third one busy with GEMMs. It must finish (the supervisor's per-case limit is the
  watchdog: a deadlocked grid barrier is recorded as ``hung``) and match one stream alone bit for bit.
"""

from __future__ import annotations

import functools
import os
import sys

import torch
from torch import Tensor

from benchmarks.gpu import common
from tests import test_cuda_backend as tcb
from tests.utils import CELLS, oracle, recurrence_inputs, run_recurrence

PROBLEMS = ((9, 5, 33, "ragged_reverse"), (33, 17, 256, "plain"), (64, 16, 1024, "plain"))  # T, B, H, mode
CAPTURE_FIRST = dict(dtype="float16", T=12, B=3, H=72)  # sizes no other case uses
CAPTURE_WARM = dict(dtype="bfloat16", T=16, B=5, H=64)
TWO_STREAMS = dict(dtype="bfloat16", T=64, B=16)
OUTPUT_NAMES = ("y", "h_n", "c_n")


def cases() -> list[dict]:
    out = []
    for v in common.VARIANTS:
        for cell in ("gru", "lstm"):
            out.append(
                {"kind": "capture", "first_call": True, "variant": v.name, "cell": cell, **CAPTURE_FIRST}
            )
    # Triton compiles each specialisation on first use: its cases go after the CUDA ones (see above).
    groups = (
        [v for v in common.VARIANTS if v.backend == "cuda"],
        [v for v in common.VARIANTS if v.backend != "cuda"],
    )
    for group in groups:
        for T, B, H, mode in PROBLEMS:
            for cell in CELLS:
                for dtype in common.DTYPES:
                    for v in group:
                        out.append(
                            {"kind": "accuracy", "variant": v.name, "cell": cell, "dtype": dtype}
                            | {"T": T, "B": B, "H": H, "mode": mode}
                        )
    for v in common.VARIANTS:
        for cell in ("gru", "lstm"):
            out.append(
                {"kind": "capture", "first_call": False, "variant": v.name, "cell": cell, **CAPTURE_WARM}
            )
    out.append({"kind": "two_streams", **TWO_STREAMS, "limit_s": 45})
    return out


# --------------------------------------------------------------------------------------------------
# Accuracy against the float64 oracle


def judge(name: str, dtype: torch.dtype, got: Tensor | None, torch_val: Tensor, want: Tensor) -> dict:
    """One output or gradient under the test suite's rule (``tests.test_cuda_backend._check``): its error,
    cuDNN's, and whether it passes."""
    rec = {"name": name}
    if got is None:
        return rec | {"ok": False, "why": "no value (a missing gradient)"}
    want = want.double()
    rec["err"] = (got.double() - want).abs().max().item() if want.numel() else 0.0
    rec["cudnn_err"] = (torch_val.double() - want).abs().max().item() if want.numel() else 0.0
    try:
        tcb._check(name, dtype, got, torch_val, want)
    except AssertionError as e:
        return rec | {"ok": False, "why": str(e)}
    return rec | {"ok": True}


@functools.cache
def _baseline(cell: str, dtype: torch.dtype, T: int, B: int, H: int, mode: str, device: str) -> dict:
    """The float64 oracle and torch.nn (cuDNN) at ``dtype`` on one problem, outputs and input gradients
    (shared by every variant)."""
    lengths, reverse = tcb._lengths(mode, T, B), mode.endswith("reverse")
    a64 = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=torch.float64, device=device)
    upstream = tcb._upstream(cell, T, B, H, device)
    ref = oracle(
        cell, a64["gi"], a64["h0"], a64["c0"], a64["w_hh"], a64["b_hh"], None, a64["lengths"], reverse
    )
    ref_grads = tcb._grads(ref, tcb._leaves(a64), upstream)
    nn_in = tcb._copy(a64, dtype)
    *nn_out, nn_leaves = tcb._run_torch_nn(cell, nn_in, reverse)
    nn_grads = tcb._grads(nn_out, nn_leaves, upstream)

    def detach(ts):
        return [None if t is None else t.detach() for t in ts]

    return {
        "inputs": a64,
        "upstream": upstream,
        "ref": detach(ref),
        "ref_grads": detach(ref_grads),
        "torch": detach(nn_out),
        "torch_grads": detach(nn_grads),
    }


def accuracy(
    v: common.Variant, cell: str, dtype: torch.dtype, T: int, B: int, H: int, mode: str, device: str = "cuda"
) -> dict:
    """``v`` on one problem against the oracle: a record with every output's and gradient's check."""
    reverse = mode.endswith("reverse")
    lengths = tcb._lengths(mode, T, B)
    ok, why = common.supports(v, cell, dtype, T, B, H, lengths is not None, reverse, device)
    if not ok:
        return {"status": "n/a", "why": why}
    base = _baseline(cell, dtype, T, B, H, mode, str(device))
    ours_in = tcb._copy(base["inputs"], dtype)
    with v.flags():
        ours = run_recurrence(cell, ours_in, reverse, v.backend)
        ours_grads = tcb._grads(ours, tcb._leaves(ours_in), base["upstream"])
    checks = []
    for name, got, tv, want in zip(OUTPUT_NAMES, ours, base["torch"], base["ref"]):
        if want is not None:
            check = judge(name, dtype, got, tv, want)
            if got is not None and got.dtype != dtype:
                check |= {"ok": False, "why": f"dtype {got.dtype}, expected {dtype}"}
            checks.append(check)
    for name, got, tv, want in zip(tcb.GRAD_NAMES, ours_grads, base["torch_grads"], base["ref_grads"]):
        if want is not None:
            checks.append(judge(name, dtype, got, tv, want))
    return {"status": "pass" if all(c["ok"] for c in checks) else "fail", "checks": checks}


# --------------------------------------------------------------------------------------------------
# CUDA graphs and streams


def _refill(a: dict, seed: int) -> None:
    """New values, in place, for the floating tensors of ``a`` (the static inputs of a graph)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in a.values():
            if isinstance(t, Tensor) and t.is_floating_point():
                t.copy_((torch.rand(t.shape, generator=g, dtype=torch.float64) - 0.5).to(t.dtype))


def _upstream_like(
    cell: str, T: int, B: int, H: int, dtype: torch.dtype, device: str, seed: int
) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(T, B, H), (B, H)] + ([(B, H)] if cell == "lstm" else [])
    return [torch.randn(s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype) for s in shapes]


def _fwd_bwd(v: common.Variant, cell: str, a: dict, ups: list[Tensor]):
    """A callable running ``v`` forward and backward on ``a``: outputs then the input gradients."""
    leaves = [t for t in tcb._leaves(a) if t is not None]

    def step() -> list[Tensor]:
        with v.flags():
            outs = [o for o in run_recurrence(cell, a, False, v.backend) if o is not None]
            grads = torch.autograd.grad(outs, leaves, ups)
        return [o.detach() for o in outs] + list(grads)

    names = list(OUTPUT_NAMES[: 3 if cell == "lstm" else 2])
    names += [n for n, t in zip(tcb.GRAD_NAMES, tcb._leaves(a)) if t is not None]
    return step, names


def _diff(got: Tensor, want: Tensor) -> float:
    """max |got - want| with NaN equal to NaN (and infinite where only one side is NaN)."""
    g, w = got.double(), want.double()
    both = torch.isnan(g) & torch.isnan(w)
    d = (g - w).abs().masked_fill(both, 0.0).nan_to_num(nan=float("inf"))
    return d.max().item() if d.numel() else 0.0


def _same(names, got: list[Tensor], want: list[Tensor], dtype: torch.dtype, n_exact: int) -> list[dict]:
    """Per tensor: the difference; the first ``n_exact`` must match bit for bit, the rest to within the
    test suite's floor for ``dtype`` (a gradient's GEMM may differ in the last bits between launches)."""
    out = []
    for k, (name, g, w) in enumerate(zip(names, got, want)):
        d = _diff(g, w)
        scale = max(1.0, w.double().abs().nan_to_num().max().item()) if w.numel() else 1.0
        tol = 0.0 if k < n_exact else tcb.FLOOR[dtype] * scale
        out.append({"name": name, "diff": d, "tol": tol, "ok": d <= tol})
    return out


def capture(
    v: common.Variant, cell: str, dtype: torch.dtype, T: int, B: int, H: int, first_call: bool, device="cuda"
) -> dict:
    """A graph of ``v``'s forward and backward, replayed on new inputs, against an eager call. With
    ``first_call`` nothing of ``v`` runs before the capture, not even its support check (the persistent
    kernels' plan sets function attributes and queries occupancy on first use)."""
    lengths = tcb._lengths("ragged", T, B)
    if not first_call:
        ok, why = common.supports(v, cell, dtype, T, B, H, True, False, device)
        if not ok:
            return {"status": "n/a", "why": why}
    a = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=dtype, device=device)
    step, names = _fwd_bwd(v, cell, a, _upstream_like(cell, T, B, H, dtype, device, seed=5))
    if not first_call:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # the warm-up the torch.cuda.graph docs ask for
            step()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    inner = None  # what failed inside the capture; ending a broken capture raises an error of its own
    try:
        with torch.cuda.graph(graph):
            try:
                captured = step()
            except Exception as e:
                inner = e
                raise
    except Exception as e:  # a refusal is a result: recorded with its message
        rec = common.error_record(inner or e) | {"phase": "capture"}
        if inner is not None and e is not inner:
            rec["capture_end"] = f"{type(e).__name__}: {e}"[:1000]
        return rec
    _refill(a, seed=6)
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    torch.cuda.synchronize()
    checks = _same(names, captured, eager, dtype, n_exact=3 if cell == "lstm" else 2)
    return {"status": "pass" if all(c["ok"] for c in checks) else "fail", "checks": checks}


def largest_persistent(dtype: torch.dtype, B: int, device: str = "cuda") -> tuple[str, int, str] | None:
    """(cell, H, plan) of the largest H at which GRU or LSTM runs persistent forward and backward."""
    from rnnfast.ops.recurrence import cuda

    dev = torch.device(device)
    with cuda.flags(algo="persistent"):
        for H in (2048, 1792, 1536, 1280, 1152, 1024, 896, 768, 512, 256):
            for cell in ("gru", "lstm"):
                fwd = cuda.algorithm(cell, dtype, B, H, False, dev)
                bwd = cuda.algorithm(cell, dtype, B, H, True, dev)
                if fwd[0] and bwd[0]:
                    return cell, H, f"forward {fwd[1]}; backward {bwd[1]}"
    return None


def two_streams(dtype: torch.dtype, T: int, B: int, device: str = "cuda") -> dict:
    found = largest_persistent(dtype, B, device)
    if found is None:
        return {"status": "n/a", "why": "no GRU/LSTM size runs persistent forward and backward"}
    cell, H, plan = found
    v = common.variant("persistent")
    problems = []
    for seed in (1, 2):
        a = recurrence_inputs(cell, T, B, H, dtype=dtype, device=device)
        _refill(a, seed)
        with torch.no_grad():
            a["w_hh"].mul_(2.0 / H**0.5)  # back to recurrence_inputs' scale, +-1/sqrt(H)
        problems.append(_fwd_bwd(v, cell, a, _upstream_like(cell, T, B, H, dtype, device, seed)))
    names = problems[0][1]
    alone = [step() for step, _ in problems]
    torch.cuda.synchronize()
    streams = [torch.cuda.Stream() for _ in range(3)]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(streams[2]):  # allocated on the stream that uses it
        big = torch.randn(4096, 4096, device=device, dtype=dtype)
    together: list[list] = [[], []]
    for _ in range(3):
        for runs, (step, _), s in zip(together, problems, streams):
            with torch.cuda.stream(s):
                runs.append(step())
        with torch.cuda.stream(streams[2]):
            for _ in range(8):
                big = torch.tanh(big @ big * 1e-3)
    torch.cuda.synchronize()  # a deadlock never returns from here; the supervisor records it as hung
    checks = []
    for i, (runs, want) in enumerate(zip(together, alone)):
        for k, got in enumerate(runs):
            for c in _same(names, got, want, dtype, n_exact=3 if cell == "lstm" else 2):
                checks.append(c | {"name": f"stream {i} run {k} {c['name']}"})
    return {
        "status": "pass" if all(c["ok"] for c in checks) else "fail",
        "cell": cell,
        "H": H,
        "plan": plan,
        "checks": checks,
    }


# --------------------------------------------------------------------------------------------------


def run_case(case: dict, emit=None) -> dict:
    dtype = common.DTYPES[case["dtype"]]
    if case["kind"] == "accuracy":
        v = common.variant(case["variant"])
        return accuracy(v, case["cell"], dtype, case["T"], case["B"], case["H"], case["mode"])
    if case["kind"] == "capture":
        v = common.variant(case["variant"])
        return capture(v, case["cell"], dtype, case["T"], case["B"], case["H"], case["first_call"])
    if case["kind"] == "two_streams":
        return two_streams(dtype, case["T"], case["B"])
    raise ValueError(f"case kind: expected accuracy, capture or two_streams, got {case['kind']!r}")


def setup() -> None:
    """What the test suite sets: TF32 off (the rule compares like with like), NaN-poisoned outputs; and
    the CUDA kernels loaded (or built just in time) before the first case's clock starts."""
    os.environ.setdefault("RNNFAST_DEBUG_POISON", "1")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    common.load_cuda_kernels()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = common.parser(__doc__, budget_s=150).parse_args(argv)
    ctx = common.Context.from_args("smoke", args)
    estimator = common.Estimator(key=lambda c: (c["kind"], c.get("variant"), c.get("H")), default=3.0)
    return common.run_stage(ctx, args, argv, "benchmarks.gpu.smoke", cases(), run_case, estimator, setup)


if __name__ == "__main__":
    sys.exit(main())
