"""Stage 3: per-step times on a CUDA GPU against cuDNN; one record per case and provider in timings.jsonl,
written as soon as that provider is measured.

Cases, most important first (the stage stops starting cases when its budget is near):
- the grid-barrier floor: the persistent forward of rnn_tanh at B=1 with one hidden unit per SM, fp16,
  at T=1024 and T=4096; the difference per step removes the launch and leaves the barrier and h's trip
  through L2;
- the anchor: LSTM fp16 B=16 T=1024 H=768 (the published H100 figure for cuDNN's persistent LSTM is
  1.96 us/step forward);
- GRU/LSTM x bf16/fp32 x B in {1, 16, 64, 256} x H in {256, 1024} x infer / fwdbwd at T=256: bf16 with
  B <= 16 first (the targets), then B=64, fp32, and B=256 last.
Modes: ``infer`` is the forward under no_grad, ``fwdbwd`` the forward and the backward of every input.

Providers: each row of ``common.VARIANTS`` on the bare op (gi given, one layer and direction), and
``cudnn``: torch.nn.GRU/LSTM of input size 128 with the same W_hh, b_hh, h0 (c0). 128 keeps PyTorch's
rule for cuDNN's persistent kernel open (it asks input_size % 128 == 0; fp16 LSTMs at B <= 128 get it)
while its input projection stays a small part of a step; that projection alone is timed as
``cudnn_input`` so the recurrence's share of cuDNN's time can be read off.

Before it is timed, each rnnfast provider's forward is compared with the reference backend in float32
on the same inputs, with the tolerance ``rnnfast bench`` uses; one that disagrees is recorded ``fail``
and not timed. Timing: CUDA events around each call (``rnnfast.bench.runner.sample_fn``), two rounds
over the providers after their warm-up (a drift falls on all of them), TF32 as torch's defaults leave it
(recorded). Each row: median, quartiles, min, max, samples, us/step (median / T) and ``vs_cudnn``
(cuDNN's median / this provider's, same case, same run: above 1 is faster than cuDNN).
"""

from __future__ import annotations

import sys
import time
import zlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.gpu import common
from rnnfast.bench import runner
from rnnfast.ops.recurrence.common import GATES
from tests.utils import run_recurrence

T_GRID = 256
CELLS = ("gru", "lstm")
DTYPES = ("bfloat16", "float32")
BATCHES = (1, 16, 64, 256)
HIDDEN = (256, 1024)
MODES = ("infer", "fwdbwd")
ANCHOR = dict(cell="lstm", dtype="float16", B=16, T=1024, H=768)
FLOOR_T = (1024, 4096)
CUDNN_INPUT = 128
ROUNDS = 2
MIN_TIME_S = 0.05  # per provider and round


def _priority(case: dict) -> tuple:
    return (case["B"] == 256, case["dtype"] == "float32", case["B"] == 64)


def cases() -> list[dict]:
    grid = [
        {"kind": "grid", "cell": c, "dtype": d, "B": B, "T": T_GRID, "H": H, "mode": m}
        for d in DTYPES
        for B in BATCHES
        for c in CELLS
        for H in HIDDEN
        for m in MODES
    ]
    anchor = [{"kind": "anchor", **ANCHOR, "mode": m} for m in MODES]
    return (
        [{"kind": "floor", "cell": "rnn_tanh", "dtype": "float16", "B": 1}]
        + anchor
        + sorted(grid, key=_priority)
    )


# --------------------------------------------------------------------------------------------------


def _inputs(
    cell: str, T: int, B: int, H: int, dtype: torch.dtype, grad: bool, seed: int, device="cuda"
) -> dict:
    """Random op inputs made on the GPU (a B=256, H=1024 LSTM's gi is 268M values), the keys of
    ``tests.utils.recurrence_inputs``: W_hh within +-1/sqrt(H), so the recurrence stays bounded."""
    g = torch.Generator(device=device).manual_seed(seed)
    G = GATES[cell]

    def r(*shape, scale=1.0):
        t = torch.rand(*shape, generator=g, device=device, dtype=torch.float32).mul_(2).sub_(1).mul_(scale)
        return t.to(dtype).requires_grad_(grad)

    return {
        "gi": r(T, B, G * H),
        "h0": r(B, H, scale=0.5),
        "c0": r(B, H, scale=0.5) if cell == "lstm" else None,
        "w_hh": r(G * H, H, scale=H**-0.5),
        "b_hh": r(G * H, scale=H**-0.5),
        "w_hr": None,
        "lengths": None,
    }


def _leaves(a: dict) -> list[Tensor]:
    return [a[k] for k in ("gi", "h0", "c0", "w_hh", "b_hh") if a[k] is not None]


def _upstream(
    cell: str, T: int, B: int, H: int, dtype: torch.dtype, seed: int, device="cuda"
) -> list[Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    shapes = [(T, B, H), (B, H)] + ([(B, H)] if cell == "lstm" else [])
    return [torch.randn(s, generator=g, device=device, dtype=torch.float32).to(dtype) for s in shapes]


def _rnnfast(v: common.Variant, cell: str, a: dict, ups: list[Tensor], backward: bool):
    leaves = _leaves(a)

    def fn() -> list[Tensor]:
        with v.flags(), torch.set_grad_enabled(backward):
            outs = [o for o in run_recurrence(cell, a, False, v.backend) if o is not None]
            if backward:
                torch.autograd.grad(outs, leaves, ups)
        return outs

    return fn


def _cudnn(cell: str, a: dict, ups: list[Tensor], backward: bool):
    """(the torch.nn call, its input projection alone) on ``a``'s recurrence with input size 128."""
    T, B, GH = a["gi"].shape
    H = GH // GATES[cell]
    dtype, device = a["gi"].dtype, a["gi"].device
    m = (nn.LSTM if cell == "lstm" else nn.GRU)(CUDNN_INPUT, H, device=device, dtype=dtype)
    with torch.no_grad():
        m.weight_hh_l0.copy_(a["w_hh"])
        m.bias_hh_l0.copy_(a["b_hh"])
    x = torch.randn(T, B, CUDNN_INPUT, device=device, dtype=dtype).requires_grad_(backward)
    hx = [a[k].detach()[None].requires_grad_(backward) for k in ("h0", "c0") if a[k] is not None]
    wrt = [x, *hx, *m.parameters()]
    hx = tuple(hx) if cell == "lstm" else hx[0]
    state_ups = [u[None] for u in ups[1:]]

    def call():
        with torch.set_grad_enabled(backward):
            y, state = m(x, hx)
            if backward:
                outs = [y, *(state if isinstance(state, tuple) else (state,))]
                torch.autograd.grad(outs, wrt, [ups[0], *state_ups])

    proj_wrt = [x, m.weight_ih_l0, m.bias_ih_l0]
    gp = torch.ones(T, B, GH, device=device, dtype=dtype)

    def projection():
        with torch.set_grad_enabled(backward):
            p = F.linear(x, m.weight_ih_l0, m.bias_ih_l0)
            if backward:
                torch.autograd.grad(p, proj_wrt, gp)

    return call, projection


def _timed_first(fn, device="cuda") -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    runner.synchronize(torch.device(device))
    return out, time.perf_counter() - t0


def _measure(fns: dict, emit, extra: dict, T: int, first_s: dict, device: str = "cuda") -> dict:
    """Times ``fns`` (name -> callable) in ROUNDS rounds; emits one row per provider; returns the
    timings by name (a provider that raises gets an error row)."""
    samples: dict[str, list[float]] = {n: [] for n in fns}
    failed: dict[str, dict] = {}
    method = "cuda_events"
    for r in range(ROUNDS):
        for name, fn in fns.items():
            if name in failed:
                continue
            try:
                got, method = runner.sample_fn(fn, device, MIN_TIME_S, 3, 100, 2 if r == 0 else 1)
            except Exception as e:  # the row says what happened; the other providers go on
                failed[name] = common.error_record(e)
                continue
            samples[name] += got
    timings = {n: runner._summary(s, method) for n, s in samples.items() if n not in failed}
    cudnn = timings.get("cudnn")
    for name in fns:
        row = {"provider": name, **extra.get(name, {}), "first_call_s": round(first_s.get(name, 0.0), 4)}
        if name in failed:
            emit(row | failed[name])
            continue
        t = timings[name].as_dict()
        row |= {"status": "ok", **t, "us_per_step": 1e3 * t["median_ms"] / T}
        if cudnn is not None and name not in ("cudnn", "cudnn_input"):
            row["vs_cudnn"] = cudnn.median_ms / t["median_ms"]
        emit(row)
    return timings


def time_case(case: dict, emit, device: str = "cuda") -> dict:
    """Every provider on one case: a row each (emitted as measured); returns the case's record."""
    cell, dtype, B, T, H = case["cell"], common.DTYPES[case["dtype"]], case["B"], case["T"], case["H"]
    backward = case["mode"] == "fwdbwd"
    seed = zlib.crc32(f"{cell} {case['dtype']} {B} {T} {H}".encode())
    a = _inputs(cell, T, B, H, dtype, backward, seed, device)
    ups = _upstream(cell, T, B, H, dtype, seed + 1, device)
    a32 = {k: (v.detach().float() if isinstance(v, Tensor) else v) for k, v in a.items()}
    with torch.no_grad():
        want = [o for o in run_recurrence(cell, a32, False, "reference") if o is not None]
    tol = runner.tolerance(dtype, torch.device(device))
    fns, extra, first_s, statuses = {}, {}, {}, {}
    call, projection = _cudnn(cell, a, ups, backward)
    for name, fn in (("cudnn", call), ("cudnn_input", projection)):
        try:
            first_s[name] = _timed_first(fn, device)[1]
            fns[name] = fn
        except Exception as e:  # recorded; the rnnfast providers are still timed
            emit({"provider": name, **common.error_record(e)})
            statuses[name] = "error"
    for v in common.VARIANTS:
        ok, why = common.supports(v, cell, dtype, T, B, H, False, False, device)
        if not ok:
            emit({"provider": v.name, "status": "n/a", "why": why})
            statuses[v.name] = "n/a"
            continue
        fn = _rnnfast(v, cell, a, ups, backward)
        try:
            outs, first_s[v.name] = _timed_first(fn, device)
        except Exception as e:  # recorded; the other providers go on
            emit({"provider": v.name, **common.error_record(e)})
            statuses[v.name] = "error"
            continue
        err, where = runner.max_rel_error(outs, want)
        extra[v.name] = {
            "max_rel_err": err,
            "tolerance": tol,
            **_algorithm(v, cell, dtype, B, H, backward),
        }
        if not err <= tol:
            emit({"provider": v.name, **extra[v.name], "status": "fail", "why": f"forward differs ({where})"})
            statuses[v.name] = "fail"
            continue
        fns[v.name] = fn
    timings = _measure(fns, emit, extra, T, first_s, device)
    statuses |= {n: ("ok" if n in timings else "error") for n in fns}
    worst = next((s for s in common.FAILING if s in statuses.values()), "ok")
    return {"status": worst, "providers": statuses}


def _algorithm(v: common.Variant, cell: str, dtype: torch.dtype, B: int, H: int, backward: bool) -> dict:
    """The CUDA backend's description of the algorithm it runs (plan: CTAs, units, shared memory) and
    the cost model's µs per step for it (forward, plus backward in fwd+bwd), so that each timing row is
    read against the model (scripts/gpu_model.py, docs/cuda.md)."""
    if v.backend != "cuda":
        return {"algorithm": None}
    from rnnfast.ops.recurrence import cuda

    dev = torch.device("cuda")
    gpu = cuda.Gpu.of(dev)
    tf32 = dtype == torch.float32 and cuda.tf32_allowed()
    descs, model = [], 0.0
    with v.flags():
        for bwd in (False, True) if backward else (False,):
            code, desc = cuda.algorithm(cell, dtype, B, H, bwd, dev)
            descs.append(("backward " if bwd else "forward ") + desc)
            name = "persistent" if code == cuda._PERSISTENT else "stepwise"
            model += cuda.step_time(cell, dtype, B, H, bwd, tf32, gpu)[name]
    return {"algorithm": "; ".join(descs), "model_us_per_step": round(model, 3)}


def floor(case: dict, emit) -> dict:
    """Per-step time of the persistent forward with the least work a step can have (one unit per SM)."""
    v = common.variant("persistent")
    dtype = common.DTYPES[case["dtype"]]
    H = torch.cuda.get_device_properties(0).multi_processor_count
    ok, why = common.supports(v, case["cell"], dtype, max(FLOOR_T), case["B"], H, False, False, "cuda")
    if not ok:
        return {"status": "n/a", "why": why}
    medians = {}
    for T in FLOOR_T:
        a = _inputs(case["cell"], T, case["B"], H, dtype, False, seed=T)
        fn = _rnnfast(v, case["cell"], a, [], False)
        _, first = _timed_first(fn)
        t = _measure(
            {"persistent": fn},
            lambda row, T=T, H=H: emit(row | {"T": T, "H": H}),
            {},
            T,
            {"persistent": first},
        )
        medians[T] = t["persistent"].median_ms
    lo, hi = FLOOR_T
    return {"status": "ok", "H": H, "step_floor_us": 1e3 * (medians[hi] - medians[lo]) / (hi - lo)}


def run_case(case: dict, emit) -> dict:
    return floor(case, emit) if case["kind"] == "floor" else time_case(case, emit)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = common.parser(__doc__, budget_s=150).parse_args(argv)
    ctx = common.Context.from_args("timings", args)
    estimator = common.Estimator(key=lambda c: (c.get("B"), c.get("H"), c.get("mode")), default=4.0)
    return common.run_stage(
        ctx, args, argv, "benchmarks.gpu.timings", cases(), run_case, estimator, common.load_cuda_kernels
    )


if __name__ == "__main__":
    sys.exit(main())
