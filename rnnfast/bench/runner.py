"""Running a case: the timed step per mode, the correctness check, timers, the machine's peak.

Timing never happens without synchronising: on CUDA every sample is bracketed by CUDA events (and
``triton.testing.do_bench`` gives a second median); on the CPU by ``time.perf_counter``. Each provider
is run once and compared with the case's baseline before it is timed; one that disagrees is not timed.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from rnnfast.bench import registry, roofline
from rnnfast.bench.registry import Case, Workload

# Largest error allowed, relative to the largest magnitude of the baseline tensor (see max_rel_error).
# float32: the recurrences accumulate over up to a few hundred steps; rounding differences between two
# correct float32 implementations stay below 1e-5 there. With TF32 (cuDNN's default on CUDA) the GEMMs
# keep 10 mantissa bits, hence the looser bound.
TOLERANCE = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
}
TOLERANCE_TF32 = 5e-3


def tolerance(dtype: torch.dtype, device: torch.device) -> float:
    """Allowed relative error for outputs of ``dtype`` on ``device``."""
    if dtype == torch.float32 and torch.device(device).type == "cuda" and tf32_enabled():
        return TOLERANCE_TF32
    return TOLERANCE[dtype]


def tf32_enabled() -> bool:
    return bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)


_DEVICE: list[str] = []  # set by the benchmark suite's --bench-device


def set_default_device(name: str | None) -> None:
    _DEVICE[:] = [name] if name else []


def default_device() -> torch.device:
    """The device set by :func:`set_default_device` (``pytest benchmarks --bench-device``), else CUDA when
    present, else the CPU."""
    return torch.device(_DEVICE[0] if _DEVICE else ("cuda" if torch.cuda.is_available() else "cpu"))


def synchronize(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def step_fn(workload: Workload, bound: registry.Bound) -> Callable[[], list[Tensor]]:
    """The callable that is timed, per mode; it returns the outputs (and, for fwdbwd, the gradients
    of the shared inputs then of the provider's parameters) for the correctness check."""
    mode, forward = workload.case.mode, bound.forward
    if mode == "infer":

        def infer():
            with torch.no_grad():
                return forward()

        return infer
    if mode == "fwd":
        return forward
    wrt = workload.leaves + bound.params

    def fwdbwd():
        outs = forward()
        grads = torch.autograd.grad(outs, wrt, workload.grad_outputs(outs))
        return outs + list(grads)

    return fwdbwd


def max_rel_error(got: list[Tensor], want: list[Tensor]) -> tuple[float, str]:
    """Worst over the tensors of max|got − want| / max|want|, and the index of the worst tensor.

    A shape difference or a NaN/Inf where the baseline is finite counts as an infinite error.
    """
    if len(got) != len(want):
        return float("inf"), f"{len(got)} outputs, baseline has {len(want)}"
    worst, where = 0.0, ""
    for k, (g, w) in enumerate(zip(got, want)):
        if g.shape != w.shape:
            return float("inf"), f"output {k}: shape {tuple(g.shape)} != baseline {tuple(w.shape)}"
        g64, w64 = g.detach().double(), w.detach().double()
        if not torch.isfinite(g64).all() and torch.isfinite(w64).all():
            return float("inf"), f"output {k}: non-finite values"
        if not g64.numel():
            continue
        scale = max(float(w64.abs().max()), 1e-30)
        err = float((g64 - w64).abs().max()) / scale
        if err > worst:
            worst, where = err, f"output {k}"
    return worst, where


@dataclass
class Timing:
    """Per-call milliseconds: median, quartiles, extremes, sample count, how it was measured."""

    median_ms: float
    q25_ms: float
    q75_ms: float
    min_ms: float
    max_ms: float
    reps: int
    method: str
    do_bench_ms: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _summary(samples: list[float], method: str) -> Timing:
    s = sorted(samples)
    if len(s) >= 2:
        q = statistics.quantiles(s, n=4, method="inclusive")
        q25, q75 = q[0], q[2]
    else:
        q25 = q75 = s[0]
    return Timing(statistics.median(s), q25, q75, s[0], s[-1], len(s), method)


# Rep policy. Short calls: 2 warm-up calls, then samples for min_time seconds (at least MIN_REPS, at
# most MAX_REPS). A call longer than LONG_CALL_S is far above the timer's resolution, and its one-time
# costs (first allocations, autograd graph) are a fraction of a percent of it: on the CPU the first call
# (the correctness check, or the floor's first GEMM) is the first of LONG_REPS samples, no warm-up
# besides (on CUDA, whose samples are CUDA events, LONG_REPS more). The sweep grid's largest case (lstm
# fwdbwd B256 T200 H1024, 2.6 TFLOP: ~25 s a call at 100 GFLOP/s) costs 3 calls per provider instead
# of 8, and the whole sweep grid (2 providers, floor included) ~23 min by estimate_seconds instead of ~49.
MIN_REPS = 5
MAX_REPS = 200
WARMUP = 2
LONG_CALL_S = 0.5
LONG_REPS = 3


def rep_policy(first_call_s: float) -> tuple[int, int]:
    """(warm-up calls, samples at least) for a callable whose first call took ``first_call_s``;
    for a long call the first call is one of the samples on the CPU (:func:`time_after_first`)."""
    return (0, LONG_REPS) if first_call_s > LONG_CALL_S else (WARMUP, MIN_REPS)


def time_fn(
    fn: Callable[[], object],
    device: torch.device,
    min_time: float = 0.3,
    min_reps: int = MIN_REPS,
    max_reps: int = MAX_REPS,
    warmup: int = WARMUP,
    first_ms: float | None = None,
) -> Timing:
    """Median and spread of ``fn``'s wall time per call, after ``warmup`` calls.

    Samples are taken until ``min_time`` seconds have passed and at least ``min_reps`` calls were
    made, or ``max_reps`` calls. CUDA: one pair of CUDA events per call, synchronised once at the end,
    plus ``triton.testing.do_bench``'s median when Triton is importable. CPU: ``time.perf_counter``;
    ``first_ms``, a call already timed the same way, counts as the first sample.
    """
    samples, method = sample_fn(fn, device, min_time, min_reps, max_reps, warmup, first_ms)
    timing = _summary(samples, method)
    if torch.device(device).type == "cuda":
        timing.do_bench_ms = do_bench_ms(fn)
    return timing


def sample_fn(
    fn: Callable[[], object],
    device: torch.device,
    min_time: float = 0.3,
    min_reps: int = MIN_REPS,
    max_reps: int = MAX_REPS,
    warmup: int = WARMUP,
    first_ms: float | None = None,
) -> tuple[list[float], str]:
    """The per-call milliseconds :func:`time_fn` summarises, and how they were measured."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type != "cuda":
        samples: list[float] = [] if first_ms is None else [first_ms]
        start = time.perf_counter() - (first_ms or 0.0) * 1e-3
        while len(samples) < max_reps and (len(samples) < min_reps or time.perf_counter() - start < min_time):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        return samples, "perf_counter"
    events = []
    start = time.perf_counter()
    while len(events) < max_reps and (len(events) < min_reps or time.perf_counter() - start < min_time):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        events.append((a, b))
        if len(events) % 16 == 0:
            # Keep the host from running far ahead of the GPU, so the loop measures GPU time.
            b.synchronize()
    torch.cuda.synchronize(device)
    return [a.elapsed_time(b) for a, b in events], "cuda_events"


def timed_call(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """(fn(), seconds it took, synchronised)."""
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def time_after_first(
    fn: Callable[[], object], device: torch.device, first_call_s: float, min_time: float = 0.3
) -> Timing:
    """:func:`time_fn` with the warm-up and samples :func:`rep_policy` gives for a callable whose
    first call (made and timed by :func:`timed_call`) took ``first_call_s``."""
    warmup, min_reps = rep_policy(first_call_s)
    first_ms = first_call_s * 1e3 if warmup == 0 and torch.device(device).type != "cuda" else None
    return time_fn(fn, device, min_time=min_time, min_reps=min_reps, warmup=warmup, first_ms=first_ms)


def time_in_rounds(
    fns: dict[str, tuple[Callable[[], object], float]],
    device: torch.device,
    rounds: int,
    min_time: float = 0.3,
) -> dict[str, Timing | Exception]:
    """Times several callables in turns: ``rounds`` rounds, each giving every callable ``min_time /
    rounds`` seconds of samples, and summarises each callable's samples of all rounds. On a machine
    whose speed drifts (other tenants, clocks), a drift then falls on all of them alike instead of on
    whichever ran during it. ``fns``: name -> (callable, seconds its first call took, as for
    :func:`time_after_first`). The first round follows :func:`rep_policy`; a later one warms up with one
    call (another callable ran in between) and takes one sample of a long call, MIN_REPS of a short one.
    A callable that raises gets its exception instead of a timing and leaves the rounds."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    methods: dict[str, str] = {}
    failed: dict[str, Exception] = {}
    per_round = min_time / rounds
    cuda = torch.device(device).type == "cuda"
    for r in range(rounds):
        for name, (fn, first_call_s) in fns.items():
            if name in failed:
                continue
            warmup, min_reps = rep_policy(first_call_s)
            first_ms = first_call_s * 1e3 if r == 0 and warmup == 0 and not cuda else None
            if r > 0:
                warmup, min_reps = (0, 1) if first_call_s > LONG_CALL_S else (1, MIN_REPS)
            try:
                got, methods[name] = sample_fn(fn, device, per_round, min_reps, MAX_REPS, warmup, first_ms)
            except Exception as e:  # reported in the caller's row, like a failing first call
                failed[name] = e
                continue
            samples[name] += got
    out: dict[str, Timing | Exception] = dict(failed)
    for name, (fn, _) in fns.items():
        if name in failed:
            continue
        out[name] = _summary(samples[name], methods[name])
        if cuda:
            out[name].do_bench_ms = do_bench_ms(fn)
    return out


class GemmFloor:
    """The time of a case's GEMMs called one by one (``registry.floor_gemms``; the ``%GEMMs`` column,
    JSON ``floor_ms``/``pct_floor``, keys named when it was called the floor), one timing per distinct
    GEMM in a run. Not a lower bound (that is ``roofline``): it compares the case with the same products
    made as library calls.

    Each (dtype, m, k, n) is timed on its own, every GEMM of :func:`gemm_candidates` on seeded uniform
    (m, k) and (k, n) matrices on the run's device, with the providers' method (:func:`time_after_first`:
    median of repeated calls), and the fastest counts (its name in :meth:`as_list`); many cases share
    shapes (infer and fwdbwd their forward GEMMs, T = 50 and 200 their per-step GEMMs), so the cache
    keeps the floor's cost to a fraction of the providers'. A GEMM that runs T times per call (the
    recurrent one) is timed once and its median multiplied by T: a step's GEMM is the same work at
    every step. For small per-step GEMMs the time includes the call's overhead (a few µs from Python),
    which a compiled time loop partly avoids: pct_floor above 100 is possible for overhead-bound cases,
    and the comparison is meant for GEMM-bound ones.
    """

    def __init__(self, device: torch.device, min_time: float = 0.3):
        self.device, self.min_time = torch.device(device), min_time
        self.timings: dict[tuple[str, int, int, int], Timing] = {}
        self.libs: dict[tuple[str, int, int, int], str] = {}

    def gemm_ms(self, dtype: str, m: int, k: int, n: int) -> float:
        """Median ms of the fastest GEMM (m, k) × (k, n) in ``dtype`` (a registry dtype name), cached."""
        key = (dtype, m, k, n)
        if key not in self.timings:
            g = torch.Generator().manual_seed(m * 1_000_003 + k * 1009 + n)
            dt = registry.DTYPES[dtype]
            a = torch.rand((m, k), generator=g).to(self.device, dt)
            b = torch.rand((k, n), generator=g).to(self.device, dt)
            out = torch.empty((m, n), device=self.device, dtype=dt)
            for lib, mm in gemm_candidates(a, b, out).items():
                _, first = timed_call(mm, self.device)
                t = time_after_first(mm, self.device, first, self.min_time)
                if key not in self.timings or t.median_ms < self.timings[key].median_ms:
                    self.timings[key], self.libs[key] = t, lib
            del a, b, out
            _free(self.device)
        return self.timings[key].median_ms

    def floor_ms(self, case: Case) -> float | None:
        """Σ count × median time over the case's floor GEMMs, or None when the op has no floor."""
        gemms = registry.floor_gemms(case)
        if gemms is None:
            return None
        return sum(count * self.gemm_ms(case.dtype, *shape) for shape, count in gemms.items())

    def as_list(self) -> list[dict]:
        """The timed GEMMs, for the JSON: dtype, m, k, n, the fastest GEMM (``lib``) and its timing."""
        return [
            {"dtype": dt, "m": m, "k": k, "n": n, "lib": self.libs[(dt, m, k, n)], **t.as_dict()}
            for (dt, m, k, n), t in self.timings.items()
        ]


def gemm_candidates(a: Tensor, b: Tensor, out: Tensor) -> dict[str, Callable[[], Tensor]]:
    """The GEMMs a · b that the peak and the GEMM floor take the fastest of, by name: ``torch.mm``, and on
    the CPU in float32/float64 also the cpu backend's blocked kernel (``rnnfast_C::gemm``, where the
    extension loads; ATen's where it would not take the product). torch.mm alone understates some CPUs:
    on a 2-core AMD EPYC with AVX-512, whose MKL runs its AVX2 code, n = 1024 ran at ~220 GFLOP/s
    through torch.mm and ~470 through the blocked kernel, so a case at "100% of the floor" was at half
    of what the machine does."""
    fns = {"torch.mm": lambda: torch.mm(a, b, out=out)}
    if a.device.type == "cpu" and a.dtype in (torch.float32, torch.float64):
        from rnnfast import _ext

        if _ext.status()[0]:
            fns["rnnfast_C.gemm"] = lambda: torch.ops.rnnfast_C.gemm(a, b)
    return fns


# The run-time estimate (``rnnfast bench --list`` on the CPU): a call takes flop / CPU_FLOP_RATE plus a
# per-step overhead per layer and direction. Rates and overheads seen on a 2-core AMD EPYC with 2 threads
# (torch.mm 90-160 GFLOP/s): GEMM-bound cases run at 100-160 GFLOP/s; at B1 H64 a step costs ~3 µs
# (cpu infer) to ~13 µs (torch.nn infer) and ~100 µs (torch.nn fwdbwd, autograd per step).
CPU_FLOP_RATE = 100e9
STEP_OVERHEAD_S = {"infer": 10e-6, "fwd": 20e-6, "fwdbwd": 60e-6}
GEMM_CALL_S = 5e-6  # one torch.mm call from Python, besides its FLOP


def _calls_seconds(t: float, min_time: float) -> float:
    """Seconds :func:`time_after_first` plus the first call spend on a callable taking ``t`` s."""
    warmup, min_reps = rep_policy(t)
    if warmup == 0:
        return t * LONG_REPS  # the first call is a sample
    reps = max(min_reps, min(MAX_REPS, int(min_time / max(t, 1e-9)) + 1))
    return t * (1 + warmup + reps)


def estimate_seconds(
    cases: list[Case],
    providers_per_case: list[int],
    min_time: float = 0.3,
    floor: bool = True,
    flop_rate: float = CPU_FLOP_RATE,
) -> float:
    """Estimated seconds of a CPU run of ``cases`` (``providers_per_case[i]`` providers timed for case
    i, the baseline included), with the rep policy of :func:`rep_policy` and, with ``floor``, the
    timings of each distinct floor GEMM (as :class:`GemmFloor` caches them; two on the CPU). A model,
    not a measurement: each call is its FLOP at ``flop_rate`` plus :data:`STEP_OVERHEAD_S` per step,
    layer and direction.
    """
    total = 0.0
    gemms: set[tuple[str, int, int, int]] = set()
    for case, n in zip(cases, providers_per_case):
        steps = case.T * case.layers * (2 if case.bidir else 1)
        t = registry.flops_of(case) / flop_rate + steps * STEP_OVERHEAD_S[case.mode]
        total += n * _calls_seconds(t, min_time)
        shapes = registry.floor_gemms(case) if floor and n else None
        gemms.update((case.dtype, *shape) for shape in shapes or ())
    for _, m, k, n in gemms:
        total += 2 * _calls_seconds(2.0 * m * k * n / flop_rate + GEMM_CALL_S, min_time)
    return total


def do_bench_ms(fn: Callable[[], object]) -> float | None:
    """``triton.testing.do_bench`` median in ms (L2 flushed between calls), or None without Triton."""
    try:
        from triton.testing import do_bench
    except ImportError:
        return None
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def measure_peak(device: torch.device, dtypes: list[str], min_time: float = 0.5) -> dict:
    """The machine's measured peaks in this run: GEMM FLOP/s per dtype, copy bandwidth in B/s, and the
    cache the run reaches (``cache_bytes``, ``cache``: what it is made of; see ``roofline.cache_of``).

    GEMM: an n×n·n×n product (n = 1024 on CPU, 8192 on CUDA; 2·n³ FLOP), the fastest of
    :func:`gemm_candidates` (its name in ``gemm_lib``); on CUDA in float32 with cuDNN's TF32 allowed,
    also the product in TF32 (``torch.mm (TF32)``): cuDNN runs float32 RNNs in TF32 then, so that is
    the float32 limit of the run. Copy: ``dst.copy_(src)`` of 64 MiB on CPU, 1 GiB on CUDA (read +
    write: 2× the size), beyond the caches. The fastest of ``min_time`` seconds of samples: a peak is
    the best the machine did, and on a shared machine the median would understate it.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    peak: dict = {"gemm_flops": {}, "gemm_n": {}, "gemm_lib": {}}
    for name in dtypes:
        dt = registry.DTYPES[name]
        n = 8192 if cuda else (1024 if dt in (torch.float32, torch.float64) else 256)
        a = torch.randn(n, n, device=device).to(dt)
        b = torch.randn(n, n, device=device).to(dt)
        out = torch.empty(n, n, device=device, dtype=dt)
        candidates = gemm_candidates(a, b, out)
        tf32 = cuda and dt == torch.float32 and torch.backends.cudnn.allow_tf32
        if tf32 and not torch.backends.cuda.matmul.allow_tf32:
            candidates["torch.mm (TF32)"] = _with_tf32(candidates["torch.mm"])
        for lib, mm in candidates.items():
            t = time_fn(mm, device, min_time=min_time, min_reps=3, max_reps=50)
            flops = 2.0 * n**3 / (t.min_ms * 1e-3)
            if flops > peak["gemm_flops"].get(name, 0.0):
                peak["gemm_flops"][name], peak["gemm_lib"][name] = flops, lib
        peak["gemm_n"][name] = n
        del a, b, out, candidates
    size = (1 << 30) if cuda else (64 << 20)
    src = torch.empty(size // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    t = time_fn(lambda src=src, dst=dst: dst.copy_(src), device, min_time=min_time, min_reps=3, max_reps=50)
    peak["copy_bytes_per_s"] = 2.0 * size / (t.min_ms * 1e-3)
    peak["copy_mib"] = size >> 20
    del src, dst
    _free(device)
    peak["cache_bytes"], peak["cache"] = roofline.cache_of(device)
    return peak


def _with_tf32(mm: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """``mm`` with ``torch.backends.cuda.matmul.allow_tf32`` on during the call."""

    def call():
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return mm()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before

    return call


def _free(device: torch.device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def run_case(
    case: Case,
    device: torch.device,
    peak: dict,
    providers: list[str] | None = None,
    compile: bool = False,
    min_time: float = 0.3,
    on_provider: Callable[[str], None] | None = None,
    floor: GemmFloor | None = None,
    rounds: int = 1,
) -> list[dict]:
    """Check and time every provider of ``case`` (or those named). One row dict per provider.

    rounds > 1: all providers are checked first, then timed in turns (:func:`time_in_rounds`).

    status: ``ok`` (checked and timed), ``MISMATCH`` (disagrees with the baseline beyond the tolerance:
    not timed), ``ERROR`` (raised: the message is in ``detail``; not timed), ``unsupported`` (the backend
    refuses the case: ``detail`` says why). The baseline is always run (first, for the check) and timed;
    the check's call is every provider's first warm-up (:func:`rep_policy`), and the baseline's own
    check is that first call (its error is 0 by definition). With ``floor``, rows of ops with a GEMM
    floor get ``floor_ms`` and ``pct_floor`` = 100·floor_ms/median_ms, the case's GEMMs called one by
    one (timed once at least one provider was). Every row gets ``must_move_bytes`` for the cache in
    ``peak``; the roofline columns need every case's timings and are filled over the whole run by
    ``roofline.apply(rows, peak)``.
    """
    device = torch.device(device)
    spec = case.spec
    listed = registry.providers(case, device, compile=compile)
    if providers is not None:
        # The baseline is always timed too: every speedup needs it.
        listed = [p for p in listed if p[0] in providers or p[0] == spec.baseline]
    tol = tolerance(case.torch_dtype, device)
    workload = spec.make(case, device)

    base_fn, base_out, base_first, base_error = None, None, 0.0, None
    try:
        base_fn = step_fn(workload, registry.bind(case, spec.baseline, workload))
        outs, base_first = timed_call(base_fn, device)
        base_out = [t.detach() for t in outs]
        del outs
    except Exception as e:  # reported in every row below: no provider can be checked without it
        base_error = f"baseline {spec.baseline} failed: {type(e).__name__}: {e}"

    rows = []
    pending: dict[str, tuple[Callable[[], object], float]] = {}  # checked, to be timed in rounds
    for name, ok, why in listed:
        row = _row_head(case, name, tol)
        if ok and on_provider is not None:
            on_provider(name)
        if not ok:
            row.update(status="unsupported", detail=why)
            rows.append(row)
            continue
        if base_error is not None:
            row.update(status="ERROR", detail=base_error)
            rows.append(row)
            continue
        rows.append(row)
        keep = False
        try:
            if name == spec.baseline:
                fn, err, first = base_fn, 0.0, base_first
            else:
                fn = step_fn(workload, registry.bind(case, name, workload))
                outs, first = timed_call(fn, device)
                err, where = max_rel_error(outs, base_out)
                del outs
            row["max_rel_err"] = err
            if not err <= tol:
                row.update(status="MISMATCH", detail=f"{where}: rel. error {err:.2e} > tolerance {tol:.0e}")
                continue
            if rounds > 1:
                pending[name], keep = (fn, first), True
                continue
            _timed(row, case, peak, time_after_first(fn, device, first, min_time=min_time))
        except Exception as e:  # a provider that raises is a result to report, not a crash of the run
            row.update(status="ERROR", detail=f"{type(e).__name__}: {e}")
            continue
        finally:
            if not keep:
                fn = None
                if name == spec.baseline:
                    base_fn = None
                _free(device)
    if pending:
        timings = time_in_rounds(pending, device, rounds, min_time=min_time)
        pending.clear()
        base_fn = fn = None
        _free(device)
        for row in rows:
            got = timings.get(row["provider"])
            if isinstance(got, Exception):
                row.update(status="ERROR", detail=f"{type(got).__name__}: {got}")
            elif got is not None:
                _timed(row, case, peak, got)
    base_ms = next(
        (r["median_ms"] for r in rows if r["provider"] == spec.baseline and r["status"] == "ok"), None
    )
    floor_ms = None
    if floor is not None and any(r["status"] == "ok" for r in rows):
        floor_ms = floor.floor_ms(case)
    must_move = registry.must_move_bytes(case, peak.get("cache_bytes"))
    for row in rows:
        row["must_move_bytes"] = must_move
        row["floor_ms"] = floor_ms
        if row["status"] == "ok" and base_ms is not None:
            row["speedup"] = base_ms / row["median_ms"]
        if row["status"] == "ok" and floor_ms is not None:
            row["pct_floor"] = 100.0 * floor_ms / row["median_ms"]
    return rows


def _timed(row: dict, case: Case, peak: dict, timing: Timing) -> None:
    row.update(status="ok", **timing.as_dict())
    _throughput(row, case, peak)


def _row_head(case: Case, provider: str, tol: float) -> dict:
    return {
        "case": case.id,
        "label": case.label,
        "op": case.op,
        "mode": case.mode,
        "dtype": case.dtype,
        "B": case.B,
        "T": case.T,
        "I": case.I,
        "H": case.H,
        "layers": case.layers,
        "bidir": case.bidir,
        "packed": case.packed,
        "R": case.R,
        "HT": case.HT,
        "provider": provider,
        "baseline": case.spec.baseline,
        "status": "",
        "detail": "",
        "tolerance": tol,
        "max_rel_err": None,
        "median_ms": None,
        "q25_ms": None,
        "q75_ms": None,
        "min_ms": None,
        "max_ms": None,
        "reps": None,
        "method": None,
        "do_bench_ms": None,
        "speedup": None,
        "tokens": registry.tokens_of(case),
        "flop": registry.flops_of(case),
        "bytes": registry.bytes_of(case),
        "tokens_per_s": None,
        "tflops": None,
        "pct_peak_flops": None,
        "pct_peak_bw": None,
        "floor_ms": None,
        "pct_floor": None,
        "must_move_bytes": None,
        "roofline_ms": None,
        "roofline_bound": None,
        "pct_roofline": None,
    }


def _throughput(row: dict, case: Case, peak: dict) -> None:
    s = row["median_ms"] * 1e-3
    row["tokens_per_s"] = row["tokens"] / s
    row["tflops"] = row["flop"] / s / 1e12
    gemm = peak.get("gemm_flops", {}).get(case.dtype)
    if gemm:
        row["pct_peak_flops"] = 100.0 * row["flop"] / s / gemm
    bw = peak.get("copy_bytes_per_s")
    if bw:
        row["pct_peak_bw"] = 100.0 * row["bytes"] / s / bw


# --------------------------------------------------------------------------------------------------
# pytest-benchmark


_baseline_cache: dict[str, list[Tensor]] = {}


def pytest_benchmark_case(case: Case, provider: str, benchmark, device: torch.device) -> None:
    """Body of one pytest-benchmark test: check against the baseline, then time with pedantic rounds.

    The timed target synchronises inside the call on CUDA. Throughput (tokens/s, TFLOP/s) and, on
    CUDA, the ``do_bench`` median go into ``benchmark.extra_info``. A mismatch fails the test.
    """
    import pytest

    device = torch.device(device)
    ok, why = next(((o, w) for n, o, w in registry.providers(case, device, compile=True) if n == provider))
    if not ok:
        pytest.skip(f"{provider}: {why}")
    spec = case.spec
    workload = spec.make(case, device)
    if case.id not in _baseline_cache:
        _baseline_cache.clear()  # one case at a time: tests of a case are adjacent
        base = step_fn(workload, registry.bind(case, spec.baseline, workload))
        _baseline_cache[case.id] = [t.detach() for t in base()]
    fn = step_fn(workload, registry.bind(case, provider, workload))
    tol = tolerance(case.torch_dtype, device)
    err, where = max_rel_error(fn(), _baseline_cache[case.id])
    assert err <= tol, (
        f"{provider} on {case.label}: {where} relative error {err:.2e} > {tol:.0e} vs {spec.baseline}"
    )

    def target():
        fn()
        synchronize(device)

    benchmark.group = case.label
    benchmark.extra_info.update(
        case=case.id,
        provider=provider,
        baseline=spec.baseline,
        max_rel_err=err,
        tokens=registry.tokens_of(case),
        flop=registry.flops_of(case),
        bytes=registry.bytes_of(case),
    )
    if benchmark.disabled:
        benchmark.pedantic(target)  # the smoke run: one call
        return
    t0 = time.perf_counter()
    target()
    once = time.perf_counter() - t0
    rounds = 50 if device.type == "cuda" else max(5, min(100, int(0.5 / max(once, 1e-6))))
    benchmark.pedantic(target, rounds=rounds, warmup_rounds=3, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info["tokens_per_s"] = registry.tokens_of(case) / median
    benchmark.extra_info["tflops"] = registry.flops_of(case) / median / 1e12
    if device.type == "cuda":
        benchmark.extra_info["do_bench_ms"] = do_bench_ms(fn)
