"""Triton backend of the recurrence op: the step body of ``rnnfast/kernels/recurrence.py`` over tiles of
BLOCK_B batch rows × BLOCK_H hidden units, run by one of three schedules (see the kernel module for the
tiles and phases):

- ``step``: one launch per phase (one step, all tiles);
- ``graph`` (CUDA): the same launches captured once per shape into a CUDA graph and replayed, so a phase
  costs a graph node instead of a Python launch; inputs and outputs are copied to and from the graph's
  own buffers;
- ``persistent`` (CUDA): one launch running every phase, with a grid barrier between phases; chosen only
  when every program of the grid can be resident at once (checked on the compiled kernel).

``with flags(schedule=...)`` forces one; otherwise :func:`estimate` (the cost model) picks the cheapest
schedule that can run. Dimensions and contract: ``common.py`` (T time, B batch, H hidden, G gates,
P projection; the state has N = P columns with an LSTM projection, else N = H). The weight gradients
dW_hh, db_hh (and dW_hr) are GEMMs after the loop.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator

import torch

from rnnfast.kernels import launch
from rnnfast.ops.recurrence import common
from rnnfast.ops.recurrence.common import acc_dtype, empty

log = logging.getLogger("rnnfast")

SCHEDULES = ("step", "graph", "persistent")
_forced: str | None = None


@contextlib.contextmanager
def flags(schedule: str | None = None) -> Iterator[None]:
    """Force the schedule inside the block, like ``rnnfast.ops.recurrence.cuda.flags``: ``"step"``,
    ``"graph"``, ``"persistent"``, or None (the cost model's choice). Process-wide; the previous setting
    comes back on exit. A forced schedule that cannot run a call raises RuntimeError with the reason."""
    global _forced
    if schedule is not None and schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES} or None, got {schedule!r}")
    prev, _forced = _forced, schedule
    try:
        yield
    finally:
        _forced = prev


def forced_schedule() -> str | None:
    return _forced


# --------------------------------------------------------------------------------------------------
# Tile configuration


@dataclasses.dataclass(frozen=True)
class Config:
    block_b: int
    block_h: int
    block_k: int
    num_warps: int
    num_stages: int

    def launch_options(self) -> dict:
        return dict(
            BLOCK_B=self.block_b,
            BLOCK_H=self.block_h,
            BLOCK_K=self.block_k,
            num_warps=self.num_warps,
            num_stages=self.num_stages,
        )


# The rule, from compiling the kernels for sm_90 (tests/test_triton_cuda.py checks every config it can
# return for 0 bytes of spills): 16 batch rows per program (tl.dot's smallest M; more rows are more
# programs), K-tiles of 16, no software pipelining, 4 warps forward and 8 backward. The tile's width
# follows the number of programs: BLOCK_H = 32 while the grid still fills the GPU's SMs with it, else 16
# (the smallest tl.dot N), so B=1 runs on ⌈H/16⌉ programs up to H = 16·SMs; the backward with an LSTM
# projection always takes 16 with K-tiles of 32. Wider tiles or K-tiles, more rows, 4 warps backward or a
# pipelined K-loop spill (the LSTM first) at sm_90.
BLOCK_B = 16
BLOCK_K = 16
BLOCK_HS = (16, 32)
NUM_WARPS = {False: 4, True: 8}  # by direction: backward?
NUM_STAGES = 1
DEFAULT_SMS = 132  # an H100 SXM; the device's own count where there is one
# Element offsets within one step (and W_hh's) are int32 in the kernels; time offsets are int64.
INT32_MAX = 2**31 - 1


def config(B: int, H: int, N: int, backward: bool, sms: int = DEFAULT_SMS) -> Config:
    """The tile configuration for B rows, H units, state width N on a GPU of ``sms`` SMs."""
    if backward and N != H:
        return Config(BLOCK_B, BLOCK_HS[0], 2 * BLOCK_K, NUM_WARPS[True], NUM_STAGES)
    nb = -(-B // BLOCK_B)
    wide = nb * -(-max(H, N) // BLOCK_HS[-1]) >= sms
    bh = BLOCK_HS[-1] if wide else BLOCK_HS[0]
    return Config(BLOCK_B, bh, BLOCK_K, NUM_WARPS[backward], NUM_STAGES)


def configs_in_use(backward: bool, proj: bool) -> tuple[Config, ...]:
    """Every configuration :func:`config` can return for a direction (the compile check covers each)."""
    if backward and proj:
        return (config(1, 1, 2, True),)
    return tuple(Config(BLOCK_B, bh, BLOCK_K, NUM_WARPS[backward], NUM_STAGES) for bh in BLOCK_HS)


# --------------------------------------------------------------------------------------------------
# Cost model (every constant an estimate until the GPU check measures it; docs/triton.md)


@dataclasses.dataclass(frozen=True)
class Costs:
    sms: int = DEFAULT_SMS
    launch_us: float = 20.0  # a Triton launch from Python: argument binding + cuLaunchKernel
    node_us: float = 1.5  # one kernel node of a replayed CUDA graph, back to back
    copy_us: float = 4.0  # one tensor copy dispatched from Python (graph inputs and outputs)
    barrier_us: float = 0.8  # grid barrier: release-add + acquire spin, one program
    barrier_program_us: float = 0.004  # each further program's atomic on the one counter (serialised in L2)
    l2_latency_us: float = 0.6  # a phase's first dependent loads after the grid-wide point
    l2_tbs: float = 5.5  # aggregate L2 read bandwidth, every SM reading
    hbm_tbs: float = 3.35  # H100 SXM datasheet

    @classmethod
    def of(cls, device: torch.device | None) -> Costs:
        if device is None or device.type != "cuda" or not torch.cuda.is_available():
            return cls()
        return cls(sms=torch.cuda.get_device_properties(device).multi_processor_count)


def phases(T: int, proj: bool, backward: bool) -> int:
    """Phases of one call (kernel module docstring): T or 2T forward, T + 1 or 2T + 1 backward."""
    if T == 0:
        return 0
    return T * (2 if proj else 1) + (1 if backward else 0)


def estimate(
    cell: str, dtype: torch.dtype, T: int, B: int, H: int, N: int, backward: bool, costs: Costs | None = None
) -> dict[str, float]:
    """Estimated µs of one call under each schedule, and the parts: ``phase`` (the work of one phase:
    each program streams its G slices of W_hh and its rows of h from L2, programs beyond the SM count
    in further waves), ``programs``.

    step = phases × (launch + phase); graph = phases × (node + phase) + the copies to and from the
    graph's buffers; persistent = launch + phases × (barrier + programs × per-program + phase)."""
    costs = costs or Costs()
    G, S = common.GATES[cell], common.SAVED[cell]
    esz = torch.empty((), dtype=dtype).element_size()
    cfg = config(B, H, N, backward, costs.sms)
    nb = -(-B // cfg.block_b)
    programs = nb * -(-max(H, N) // cfg.block_h)
    per_program = (G * cfg.block_h * N + min(B, cfg.block_b) * N) * esz  # masked rows are not read
    waves = -(-programs // costs.sms)
    phase = waves * (costs.l2_latency_us + per_program / (costs.l2_tbs * 1e6 / costs.sms))
    n = phases(T, N != H, backward)
    acc = 4 if esz < 4 else esz
    if backward:  # gy, y, h_prev/c_prev, ws in; dgi (and dgh) out
        moved, copies = T * B * (2 * N * esz + H * acc + S * H * acc + 2 * G * H * acc), 7
    else:  # gi in; y, ws out
        moved, copies = T * B * (G * H * esz + N * esz + S * H * acc), 6
    graph_copies = copies * costs.copy_us + 2 * moved / (costs.hbm_tbs * 1e6)
    barrier = costs.barrier_us + programs * costs.barrier_program_us
    return {
        "phase": phase,
        "programs": float(programs),
        "step": n * (costs.launch_us + phase),
        "graph": n * (costs.node_us + phase) + graph_copies,
        "persistent": costs.launch_us + n * (barrier + phase),
    }


# --------------------------------------------------------------------------------------------------
# Schedule choice


def _interpreter_reason(schedule: str) -> str:
    if schedule == "graph":
        return "CUDA graphs need a CUDA device (the Triton interpreter runs on the CPU)"
    return (
        "the Triton interpreter runs programs one after another, so a grid barrier would wait forever "
        "for programs that have not started"
    )


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def choose(
    cell: str,
    dtype: torch.dtype,
    T: int,
    B: int,
    H: int,
    N: int,
    backward: bool,
    device: torch.device,
    persistent_fit: Callable[[], tuple[bool, str]],
    graph_seen: bool = True,
) -> tuple[str, str]:
    """(schedule, why) for one call; raises RuntimeError when the forced schedule cannot run it.
    ``persistent_fit`` says whether the persistent grid can be resident (compiles the kernel);
    ``graph_seen`` whether this call's shapes came before (else the model leaves the graph out)."""
    forced = forced_schedule()
    if device.type != "cuda":
        # Under the interpreter only the per-step schedule runs: programs run one after another there.
        if forced in ("graph", "persistent"):
            raise RuntimeError(
                f"rnnfast triton: schedule={forced!r} cannot run: {_interpreter_reason(forced)}"
            )
        return "step", "per-step launches (Triton interpreter)"
    why_not: dict[str, str] = {}
    if _capturing():
        # The caller is capturing a graph: the per-step launches go straight into it (no nested
        # capture), which is what the graph schedule would give.
        if forced == "graph":
            return "step", "graph (forced; inside the caller's CUDA graph capture, which takes the launches)"
        why_not["graph"] = "the call is inside a CUDA graph capture, which takes its launches directly"
    if forced in (None, "persistent"):
        ok, why = persistent_fit()
        if not ok:
            why_not["persistent"] = why
    if forced is None and not graph_seen and "graph" not in why_not:
        why_not["graph"] = "first call of these shapes (a graph is captured from the second)"
    if forced is not None:
        if forced in why_not:
            raise RuntimeError(f"rnnfast triton: schedule={forced!r} cannot run: {why_not[forced]}")
        return forced, f"{forced} (forced by flags(schedule={forced!r}))"
    est = estimate(cell, dtype, T, B, H, N, backward, Costs.of(device))
    runnable = [s for s in SCHEDULES if s not in why_not]
    best = min(runnable, key=lambda s: est[s])
    why = f"{best} (cost model: " + ", ".join(f"{s} {est[s]:.0f} µs" for s in runnable)
    return best, why + "".join(f"; not {s}: {r}" for s, r in why_not.items()) + ")"


# --------------------------------------------------------------------------------------------------
# Support


def supports(device: torch.device, dtype: torch.dtype, sizes) -> tuple[bool, str]:
    ok, why = launch.check_device(device, dtype)
    if not ok:
        return False, why
    cell = sizes.get("cell")
    if cell not in common.CELLS:
        return False, f"cell {cell!r} is not one of {common.CELLS}"
    forced = forced_schedule()
    if device.type != "cuda" and forced in ("graph", "persistent"):
        return False, f"schedule={forced!r}: {_interpreter_reason(forced)}"
    B, H, P = int(sizes.get("B", 1)), int(sizes.get("H", 1)), int(sizes.get("P", 0))
    G, S = common.GATES[cell], common.SAVED[cell]
    N = P or H
    for what, n in (("B·G·H", B * G * H), ("B·S·H", B * S * H), ("G·H·N", G * H * N), ("B·N", B * N)):
        if n > INT32_MAX:
            return False, f"{what} = {n} > 2^31 - 1: the kernels index one step (and W_hh) in int32"
    if device.type == "cuda" and forced == "persistent":
        ok, fit_why = _persistent_fit(cell, dtype, sizes, device)
        if not ok:
            return False, f"schedule='persistent' cannot run: {fit_why}"
    cfg = config(B, H, N, False, Costs.of(device).sms)
    return True, f"split recurrence, {why}, forward tiles {cfg.block_b}x{cfg.block_h}"


# --------------------------------------------------------------------------------------------------
# Running the phases


_GRAPHS: collections.OrderedDict = collections.OrderedDict()
GRAPH_CACHE_SIZE = 8
# Keys of recent calls: the cost model considers a graph from a shape's second call on, so a shape seen
# once (e.g. one more sequence length) never pays for a capture.
_SEEN: collections.OrderedDict = collections.OrderedDict()
SEEN_SIZE = 64


def _step_launches(kernel, tensors, count, scalars, consts, nb, tiles, n):
    for q in range(n):
        launch.run(kernel, (nb * tiles[q % len(tiles)],), *tensors, count, q, q + 1, *scalars, **consts)


def _graph_key(kernel, tensors, scalars, consts, n, device):
    shapes = tuple((tuple(t.shape), t.dtype) for t in tensors)
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None
    return (kernel.fn.__name__, device.index, stream, shapes, scalars, tuple(sorted(consts.items())), n)


def _run_graph(key, kernel, tensors, inputs, outputs, count, scalars, consts, nb, tiles, n):
    """The step launches through a CUDA graph cached per shape, dtype, device and stream (two streams
    never share one graph's buffers). On a miss the launches run directly (compiling the kernels) and
    are then captured onto copies of the arguments; a hit copies the inputs in, replays, copies out."""
    entry = _GRAPHS.get(key)
    if entry is None:
        _step_launches(kernel, tensors, count, scalars, consts, nb, tiles, n)
        statics: dict[int, torch.Tensor] = {}
        for t in tensors + [count]:
            statics.setdefault(id(t), t.clone())  # an argument passed twice stays one buffer
        static = [statics[id(t)] for t in tensors]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            _step_launches(kernel, static, statics[id(count)], scalars, consts, nb, tiles, n)
        _GRAPHS[key] = (graph, static)
        while len(_GRAPHS) > GRAPH_CACHE_SIZE:
            _GRAPHS.popitem(last=False)
        return
    _GRAPHS.move_to_end(key)
    graph, static = entry
    done: set[int] = set()
    for i in inputs:
        if id(static[i]) not in done:
            static[i].copy_(tensors[i])
            done.add(id(static[i]))
    graph.replay()
    for i in outputs:
        tensors[i].copy_(static[i])


_RESIDENT: dict = {}


def _int_class(v: int) -> int:
    """What Triton specialises an int argument on: 1, a multiple of 16, or neither."""
    return 1 if v == 1 else (16 if v % 16 == 0 else 0)


def _fit_kernel(kernel, tensors, scalars, consts, programs: int, n: int, device) -> tuple[bool, str]:
    """Whether the persistent launch of ``kernel`` (``consts`` incl. the config) over ``programs``
    programs can be resident: the grid barrier's condition. ``tensors`` only give the specialisation;
    the resident count is cached per specialisation and device."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    device = torch.device("cuda", index)
    spec = tuple(t.dtype for t in tensors), tuple(_int_class(v) for v in scalars)
    key = (kernel.fn.__name__, spec, tuple(sorted(consts.items())), device)
    if key not in _RESIDENT:
        count = torch.zeros(1, dtype=torch.int32, device=device)
        try:
            compiled = kernel.warmup(*tensors, count, 0, n, *scalars, grid=(programs,), **consts)
            _RESIDENT[key] = launch.resident_programs(compiled, device)
        except Exception as e:  # a Triton without these fields: the schedule is not used, never guessed
            _RESIDENT[key] = 0, f"the compiled kernel's resources could not be read ({type(e).__name__}: {e})"
    resident, what = _RESIDENT[key]
    ok = programs <= resident
    return ok, f"{programs} programs {'<=' if ok else '>'} {resident} resident at once ({what})"


def _execute(kernel, tensors, inputs, outputs, scalars, consts, cfg, tiles, n, cell, backward):
    """Run the n phases of one call with the schedule :func:`choose` picks."""
    if n == 0:
        return
    T, B, H, N = scalars
    device = tensors[0].device
    dtype = tensors[0].dtype
    nb = -(-B // cfg.block_b)
    consts = dict(consts, **cfg.launch_options())
    programs = nb * max(tiles)

    def fit() -> tuple[bool, str]:
        return _fit_kernel(kernel, tensors, scalars, consts, programs, n, device)

    key = _graph_key(kernel, tensors, scalars, consts, n, device)
    seen = key in _GRAPHS or key in _SEEN
    schedule, why = choose(cell, dtype, T, B, H, N, backward, device, fit, graph_seen=seen)
    _SEEN[key] = None
    _SEEN.move_to_end(key)
    while len(_SEEN) > SEEN_SIZE:
        _SEEN.popitem(last=False)
    log.debug("rnnfast triton %s %s: %s", cell, "backward" if backward else "forward", why)
    count = torch.zeros(1, dtype=torch.int32, device=device)
    if schedule == "persistent":
        launch.run(kernel, (programs,), *tensors, count, 0, n, *scalars, **consts)
    elif schedule == "graph":
        _run_graph(key, kernel, tensors, inputs, outputs, count, scalars, consts, nb, tiles, n)
    else:
        _step_launches(kernel, tensors, count, scalars, consts, nb, tiles, n)


def _persistent_fit(cell: str, dtype: torch.dtype, sizes, device: torch.device) -> tuple[bool, str]:
    """The residency check of both directions' persistent launches for ``sizes`` (what supports()
    knows of a call: no tensors, so one-element stand-ins give the kernels' specialisation)."""
    from rnnfast.kernels.recurrence import recurrence_bwd_kernel, recurrence_fwd_kernel

    G, S = common.GATES[cell], common.SAVED[cell]
    T, B, H, P = (int(sizes.get(k, d)) for k, d in (("T", 1), ("B", 1), ("H", 1), ("P", 0)))
    N, proj, acc = P or H, bool(P), acc_dtype(dtype)
    x, a, i64 = (torch.empty(1, dtype=t, device=device) for t in (dtype, acc, torch.int64))
    flags = dict(CELL=common.CELL_CODE[cell], G=G, S=S, HAS_LEN=bool(sizes.get("lengths")))
    flags.update(REVERSE=bool(sizes.get("reverse")), PROJ=proj)
    sms = Costs.of(device).sms
    for backward in (False, True):
        cfg = config(B, H, N, backward, sms)
        programs = -(-B // cfg.block_b) * max(_tiles(cfg, H, N, proj, backward))
        if backward:
            kernel, tensors = recurrence_bwd_kernel, [x, x, x, i64, x] + [a] * 8
            consts = dict(flags, PREC=launch.dot_precision(acc, torch.backends.cudnn.allow_tf32))
        else:
            kernel, tensors = recurrence_fwd_kernel, [x, x, x, x, i64, x] + [a] * 4
            consts = dict(flags, HAS_BIAS=True, NEED_WS=S > 0)
            consts["PREC"] = launch.dot_precision(dtype, torch.backends.cudnn.allow_tf32)
        consts.update(cfg.launch_options())
        n = phases(max(T, 1), proj, backward)
        ok, why = _fit_kernel(kernel, tensors, (max(T, 1), B, H, N), consts, programs, n, device)
        if not ok:
            return False, f"{'backward' if backward else 'forward'}: {why}"
    return True, "persistent grids fit"


def _tiles(cfg: Config, H: int, N: int, proj: bool, backward: bool) -> list[int]:
    """Tiles along the units (or P columns) of each phase of a step, in phase order."""
    th, tn = -(-H // cfg.block_h), -(-N // cfg.block_h)
    if not proj:
        return [th]
    return [tn, th] if backward else [th, tn]


def forward(cell, gi, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, need_ws):
    from rnnfast.kernels.recurrence import recurrence_fwd_kernel

    T, B = gi.shape[:2]
    G = common.GATES[cell]
    H = w_hh.shape[0] // G
    N = h0.shape[-1]
    dt = gi.dtype
    acc = acc_dtype(dt)
    dev = gi.device
    gi, w_hh = gi.contiguous(), w_hh.contiguous()
    b = b_hh.contiguous() if b_hh is not None else w_hh
    wr = w_hr.contiguous() if w_hr is not None else w_hh
    lens = lengths.contiguous() if lengths is not None else gi
    y = launch.alloc((T, B, N), dt, dev)
    ws = launch.alloc(common.ws_shape(cell, T, B, H, need_ws), acc, dev)
    hbuf = torch.empty((2, B, N), dtype=acc, device=dev)
    hbuf[0] = h0
    cbuf = hbuf
    if cell == "lstm":
        cbuf = torch.empty((2, B, H), dtype=acc, device=dev)
        cbuf[0] = c0
    ubuf = torch.empty((B, H), dtype=acc, device=dev) if w_hr is not None else hbuf
    if B:  # an empty launch grid is not valid on every Triton version
        proj = w_hr is not None
        cfg = config(B, H, N, False, Costs.of(dev).sms)
        tensors = [gi, w_hh, b, wr, lens, y, ws if need_ws else hbuf, hbuf, cbuf, ubuf]
        consts = dict(
            CELL=common.CELL_CODE[cell], G=G, S=common.SAVED[cell], HAS_BIAS=b_hh is not None,
            HAS_LEN=lengths is not None, REVERSE=bool(reverse), PROJ=proj,
            NEED_WS=bool(need_ws) and common.SAVED[cell] > 0,
            PREC=launch.dot_precision(dt, torch.backends.cudnn.allow_tf32),
        )  # fmt: skip
        _execute(
            recurrence_fwd_kernel, tensors, inputs=[0, 1, 2, 3, 4, 7, 8], outputs=[5, 6, 7, 8],
            scalars=(T, B, H, N), consts=consts, cfg=cfg, tiles=_tiles(cfg, H, N, proj, False),
            n=phases(T, proj, False), cell=cell, backward=False,
        )  # fmt: skip
    h_n = hbuf[T % 2].to(dt)
    c_n = cbuf[T % 2].to(dt) if cell == "lstm" else empty(y)
    return y, h_n, c_n, ws


def backward(cell, grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr, lengths, reverse, y, ws):
    from rnnfast.kernels.recurrence import recurrence_bwd_kernel

    T, B, N = y.shape
    G = common.GATES[cell]
    H = w_hh.shape[0] // G
    dt = y.dtype
    acc = acc_dtype(dt)
    dev = y.device
    y, w_hh, grad_y = y.contiguous(), w_hh.contiguous(), grad_y.contiguous()
    wr = w_hr.contiguous() if w_hr is not None else w_hh
    ws = ws.contiguous()
    lens = lengths.contiguous() if lengths is not None else y
    # The state each step started from: needed by the GRU's gate gradients and, for every cell, by the
    # dW_hh GEMM after the loop.
    h_prev = common.previous_states(y.to(acc), h0.to(acc), lengths, reverse).contiguous()
    c_prev = h_prev
    if cell == "lstm":
        c_prev = common.previous_states(ws[..., 4 * H :], c0.to(acc), lengths, reverse).contiguous()
    dgi = launch.alloc((T, B, G * H), acc, dev)
    dgh = launch.alloc((T, B, G * H), acc, dev) if cell == "gru" else dgi
    dhr = launch.alloc((T, B, N), acc, dev) if w_hr is not None else dgi
    dhbuf = torch.empty((2, B, N), dtype=acc, device=dev)
    dhbuf[0] = grad_hn
    dcbuf = dhbuf
    if cell == "lstm":
        dcbuf = torch.empty((2, B, H), dtype=acc, device=dev)
        dcbuf[0] = grad_cn
    if B:  # an empty launch grid is not valid on every Triton version
        proj = w_hr is not None
        cfg = config(B, H, N, True, Costs.of(dev).sms)
        tensors = [grad_y, w_hh, wr, lens, y, h_prev, c_prev, ws if ws.numel() else dhbuf]
        tensors += [dgi, dgh, dhbuf, dcbuf, dhr]
        consts = dict(
            CELL=common.CELL_CODE[cell], G=G, S=common.SAVED[cell], HAS_LEN=lengths is not None,
            REVERSE=bool(reverse), PROJ=proj, PREC=launch.dot_precision(acc, torch.backends.cudnn.allow_tf32),
        )  # fmt: skip
        _execute(
            recurrence_bwd_kernel, tensors, inputs=[0, 1, 2, 3, 4, 5, 6, 7, 10, 11],
            outputs=[8, 9, 10, 11, 12], scalars=(T, B, H, N), consts=consts, cfg=cfg,
            tiles=_tiles(cfg, H, N, proj, True), n=phases(T, proj, True), cell=cell, backward=True,
        )  # fmt: skip
    dw_hh, db_hh = common.weight_grads(dgh, h_prev, b_hh is not None)
    dw_hr = empty(y)
    if w_hr is not None:
        # h_t = W_hr·u_t with u = o·tanh(c): dW_hr = Σ_t dh_tᵀ·u_t, one GEMM (dh_t is 0 at invalid steps).
        u = ws[..., 3 * H : 4 * H] * torch.tanh(ws[..., 4 * H :])
        dw_hr = dhr.reshape(-1, N).t().mm(u.reshape(-1, H)).to(dt)
    dc0 = dcbuf[T % 2].to(dt) if cell == "lstm" else empty(y)
    return dgi.to(dt), dhbuf[T % 2].to(dt), dc0, dw_hh.to(dt), db_hh.to(dt), dw_hr
