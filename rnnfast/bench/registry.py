"""The benchmark registry: cases, providers, grids, FLOP and byte counts.

One registry serves both the pytest-benchmark suite (``benchmarks/``) and ``rnnfast bench``.

A **case** is one op at one size, dtype and mode (:class:`Case`). Dimension letters: T time, B batch,
I input, H hidden, G gates (RNN 1, GRU 3, LSTM 4), L layers, D directions (2 when bidirectional),
R rows of a tree reduce, HT tracker hidden.

Ops (``OPS``):
    gru, rnn, lstm            the drop-in modules (``rnnfast.GRU`` ...) against ``torch.nn`` (cuDNN on CUDA)
    gru_op, rnn_op, lstm_op   one layer and direction of the recurrence through ``rnnfast.functional``
                              (gi precomputed; only the sequential part is timed)
    tree_lstm                 ``rnnfast.functional.tree_lstm`` (the SPINN composition, pointwise)
    tree_lstm_reduce          ``rnnfast.functional.tree_lstm_reduce`` (three GEMMs + the composition)
    spinn                     ``rnnfast.nn.SPINN``, the thin-stack encoder, against the list-based SPINN
                              of the classic SNLI example (T transitions, HT tracker hidden)

Modes: ``fwd`` (forward with autograd recording, as in training), ``fwdbwd`` (forward and the backward of
every input and parameter, with fixed random output gradients), ``infer`` (forward under ``no_grad``).

A **provider** is one way to run a case:
    torch.nn    torch.nn.GRU/RNN/LSTM (modules only; cuDNN on CUDA, ATen on CPU) - the module baseline
    reference   rnnfast with ``backend="reference"`` (pure PyTorch) - the baseline of the bare ops;
                for spinn, the list-based SPINN (its baseline)
    cpu, triton, cuda   rnnfast with that backend, where ``rnnfast.backends`` says it supports the case
    auto        the rnnfast module with ``backend="auto"`` (modules only): what a user gets by default,
                the backend ``auto`` picks for the case, torch.nn itself included
    compile     ``torch.compile`` of the pure-PyTorch oracle (slow to compile: only on request)

Adding an op: build an :class:`OpSpec` and call :func:`register_op` (as the SPINN encoder does); see
:func:`register_op` for what each field must do. :func:`register_provider` adds a provider (tests use it
to register a deliberately wrong one).
"""

from __future__ import annotations

import copy
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnnfast
from rnnfast import backends
from rnnfast.data.trees import pad_transitions, random_transitions
from rnnfast.nn.spinn import SPINN
from rnnfast.ops.recurrence import common
from rnnfast.ops.recurrence import reference as rec_ref
from rnnfast.ops.spinn import reference as spinn_ref
from rnnfast.ops.tree_lstm import reference as tree_ref
from rnnfast.ops.tree_lstm_reduce import reference as reduce_ref

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
SHORT_DTYPE = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}
MODES = ("fwd", "fwdbwd", "infer")
# The rnnfast backends that can serve a case; "torch" is left out: for a module it is torch.nn itself.
KERNEL_BACKENDS = ("reference", "cpu", "triton", "cuda")
GRIDS = ("tiny", "quick", "full", "sweep", "decode")


@dataclass(frozen=True)
class Case:
    """One op at one size, dtype and mode. Fields an op does not use stay at their defaults."""

    op: str
    mode: str = "fwd"
    dtype: str = "float32"
    B: int = 1
    T: int = 1
    I: int = 0
    H: int = 1
    layers: int = 1
    bidir: bool = False
    packed: bool = False
    R: int = 0
    HT: int = 0

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"op: expected one of {sorted(OPS)}, got {self.op!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {tuple(DTYPES)}, got {self.dtype!r}")

    @property
    def spec(self) -> OpSpec:
        return OPS[self.op]

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def shape(self) -> str:
        """The sizes that matter for this op, e.g. ``B16 T100 I256 H256`` or ``R128 H300``."""
        return self.spec.shape(self)

    @property
    def id(self) -> str:
        """Stable, readable id: ``gru-fwd-B16-T100-I256-H256-float32``."""
        return "-".join([self.op, self.mode, *self.shape.split(), self.dtype])

    @property
    def label(self) -> str:
        """Short label for tables: ``gru fwdbwd B16 T100 I256 H256 f32``."""
        return f"{self.op} {self.mode} {self.shape} {SHORT_DTYPE[self.dtype]}"

    def sizes(self) -> dict[str, Any]:
        """The ``sizes`` mapping ``rnnfast.backends`` takes to decide support."""
        return self.spec.sizes(self)


@dataclass
class Workload:
    """The inputs of one case, shared by every provider so all of them compute the same thing.

    ``data`` holds op-specific inputs; ``leaves`` are the shared input tensors that backward
    differentiates (the module parameters are per provider, see :class:`Bound`).
    """

    case: Case
    device: torch.device
    data: dict[str, Any]
    leaves: list[Tensor]
    _grad_outputs: list[Tensor] | None = None

    def grad_outputs(self, outs: list[Tensor]) -> list[Tensor]:
        """Fixed random upstream gradients for ``outs`` (made once, the same for every provider)."""
        if self._grad_outputs is None:
            g = _generator(self.case, salt="grad")
            self._grad_outputs = [_rand(g, tuple(o.shape), o.dtype, self.device) for o in outs]
        return self._grad_outputs


@dataclass
class Bound:
    """A provider bound to a workload: ``forward()`` returns the outputs as a flat list of tensors
    (PackedSequence outputs as their ``.data``), ``params`` the provider's own parameter leaves."""

    forward: Callable[[], list[Tensor]]
    params: list[Tensor] = field(default_factory=list)


Gemm = tuple[int, int, int]  # (m, k, n): torch.mm of an (m, k) by a (k, n) matrix


@dataclass(frozen=True)
class OpSpec:
    """How to build, run and count one op. See :func:`register_op`."""

    name: str
    family: str  # the op name rnnfast.backends decides support for ("module", "recurrence", ...)
    baseline: str  # provider every other provider is checked against and the speedup refers to
    shape: Callable[[Case], str]
    sizes: Callable[[Case], dict[str, Any]]
    make: Callable[[Case, torch.device], Workload]
    run_backend: Callable[[Workload, str], Bound]  # the op through rnnfast with backend=name
    extra: dict[str, Callable[[Workload], Bound]]  # providers other than rnnfast backends
    flops: Callable[[Case], float]
    bytes: Callable[[Case], float]
    tokens: Callable[[Case], int]
    # GEMMs the computation cannot avoid, {(m, k, n): count}; None: the op has no GEMM floor
    floor: Callable[[Case], dict[Gemm, int]] | None = None
    # Elements of the floating-point tensors a forward call reads and writes at its boundary: the
    # differentiable inputs, the parameters and the outputs (see :func:`boundary_bytes`)
    io: Callable[[Case], int] | None = None
    # Per layer and direction (elements of the weights every step reads, steps per forward); see
    # :func:`must_move_bytes`
    step_weights: Callable[[Case], list[tuple[int, int]]] | None = None


OPS: dict[str, OpSpec] = {}


def register_op(spec: OpSpec) -> None:
    """Add an op to the registry (or replace one of the same name).

    What the fields must do, e.g. for the SPINN encoder (``rnnfast.nn.SPINN``; use B batch, T
    transitions, H hidden, HT tracker hidden of :class:`Case`):
        family      the op name ``rnnfast.backends`` resolves for it, so providers are listed where
                    ``REGISTRY[backend].supports(family, device, dtype, sizes(case))`` is true
        make        builds a :class:`Workload`: seeded random inputs (``_generator(case)``), never zeros,
                    with the differentiable ones in ``leaves`` (requires_grad set for fwd/fwdbwd)
        run_backend returns a :class:`Bound` running the op with ``backend=name`` (for a module:
                    a fresh module with the workload's parameters, its parameters in ``params``)
        extra       other providers by name (a plain-PyTorch SPINN as the baseline, ``compile``)
        flops, bytes, tokens   forward counts; ``flops_of``/``bytes_of`` scale them for the mode
        floor       optional: the GEMMs the op cannot avoid in the case's mode (see :func:`floor_gemms`)
        io, step_weights   optional: what the roofline's memory term counts (see :func:`must_move_bytes`)
    then add its cases to :func:`grid`.
    """
    OPS[spec.name] = spec


def register_provider(op: str, name: str, build: Callable[[Workload], Bound]) -> None:
    """Add a provider to one op (``build(workload) -> Bound``); it is run and checked like the others."""
    spec = OPS[op]
    OPS[op] = replace(spec, extra={**spec.extra, name: build})


# --------------------------------------------------------------------------------------------------
# Deterministic inputs: a generator seeded by the case id, values uniform in (-scale, scale).


def _generator(case: Case, salt: str = "") -> torch.Generator:
    # The mode is left out of the seed so fwd/fwdbwd/infer of one shape see the same numbers.
    key = replace(case, mode="fwd").id + salt
    return torch.Generator().manual_seed(zlib.crc32(key.encode()))


def _rand(
    g: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype, device, scale: float = 1.0
) -> Tensor:
    t = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * scale
    return t.to(device=device, dtype=dtype)


def _lengths(g: torch.Generator, T: int, B: int) -> Tensor:
    """Ragged lengths in [max(1, T//4), T], unsorted, with one full-length row (padded length = T)."""
    lo = max(1, T // 4)
    lengths = torch.randint(lo, T + 1, (B,), generator=g)
    lengths[int(torch.randint(0, B, (1,), generator=g))] = T
    return lengths


def _needs_grad(case: Case) -> bool:
    return case.mode != "infer"


# --------------------------------------------------------------------------------------------------
# Counting. All counts are for the forward pass of the whole case; flops_of/bytes_of scale by mode.
#
# Backward ≈ 2× forward: every GEMM y = x·Wᵀ has two GEMMs of the same size in backward (dx = dy·W
# and dW = dyᵀ·x), so forward+backward ≈ 3× forward in FLOP. The pointwise gate math is O(N·G·H)
# against the GEMMs' O(N·G·H·(I+H)) and is left out for the recurrences.
#
# Bytes are the compulsory off-chip traffic of an ideal implementation (each tensor read or written
# once); backward is counted as 2× forward as well. They feed the "% of memory bandwidth" column.


def tokens_of(case: Case) -> int:
    """Tokens (valid (t, b) positions; rows R for the tree ops) one call processes."""
    return case.spec.tokens(case)


def flops_of(case: Case) -> float:
    """FLOP of one call in the case's mode (forward count, ×3 for forward+backward)."""
    return case.spec.flops(case) * (3 if case.mode == "fwdbwd" else 1)


def bytes_of(case: Case) -> float:
    """Compulsory bytes moved by one call in the case's mode (×3 for forward+backward)."""
    return case.spec.bytes(case) * (3 if case.mode == "fwdbwd" else 1)


def _itemsize(case: Case) -> int:
    return torch.empty((), dtype=case.torch_dtype).element_size()


def _packed_tokens(case: Case) -> int:
    """Σ lengths of the case's (deterministic) ragged batch, else T·B."""
    if not case.packed:
        return case.T * case.B
    return int(_lengths(_generator(case, salt="lengths"), case.T, case.B).sum())


_CELL_OF = {
    "gru": "gru",
    "rnn": "rnn_tanh",
    "lstm": "lstm",
    "gru_op": "gru",
    "rnn_op": "rnn_tanh",
    "lstm_op": "lstm",
}


def _module_flops(case: Case) -> float:
    """Σ over layers l and directions: 2·N·G·H·(I_l + H), N = tokens, I_0 = I, I_l = D·H.

    = input GEMM 2·N·I_l·G·H (all steps at once) + recurrent GEMM 2·N·H·G·H (per step 2·B·G·H²:
    6·B·H² for a GRU, 8·B·H² for an LSTM, 2·B·H² for an RNN).
    """
    G = common.GATES[_CELL_OF[case.op]]
    D = 2 if case.bidir else 1
    N = _packed_tokens(case)
    total = 0.0
    for layer in range(case.layers):
        I_l = case.I if layer == 0 else D * case.H
        total += D * 2.0 * N * G * case.H * (I_l + case.H)
    return total


def _module_bytes(case: Case) -> float:
    """Per layer and direction: weights G·H·(I_l+H) + 2·G·H, x read N·I_l, gi written and read
    2·N·G·H, y written N·H; all at the case's element size."""
    G = common.GATES[_CELL_OF[case.op]]
    D = 2 if case.bidir else 1
    N = _packed_tokens(case)
    H = case.H
    total = 0
    for layer in range(case.layers):
        I_l = case.I if layer == 0 else D * H
        total += D * (G * H * (I_l + H) + 2 * G * H + N * I_l + 2 * N * G * H + N * H)
    return float(total * _itemsize(case))


def _op_flops(case: Case) -> float:
    """Recurrent GEMM only: 2·N·G·H² (the input projection is outside the op)."""
    G = common.GATES[_CELL_OF[case.op]]
    return 2.0 * _packed_tokens(case) * G * case.H * case.H


def _op_bytes(case: Case) -> float:
    """gi read N·G·H, y written N·H, w_hh G·H², b_hh G·H, h0 and h_n 2·B·H (LSTM: c0, c_n 2·B·H more)."""
    cell = _CELL_OF[case.op]
    G = common.GATES[cell]
    N, B, H = _packed_tokens(case), case.B, case.H
    states = 4 if cell == "lstm" else 2
    return float((N * G * H + N * H + G * H * H + G * H + states * B * H) * _itemsize(case))


TREE_POINTWISE = 12  # per element: 6 transcendentals (tanh a, σ i, σ f1, σ f2, σ o, tanh c), 4 mul, 2 add


def _tree_flops(case: Case) -> float:
    """12·R·H: pointwise only, counting a transcendental as one FLOP."""
    return float(TREE_POINTWISE * case.R * case.H)


def _tree_bytes(case: Case) -> float:
    """Read lstm_in 5·R·H, c_l and c_r 2·R·H; write h and c 2·R·H: 9·R·H elements."""
    return float(9 * case.R * case.H * _itemsize(case))


def _reduce_flops(case: Case) -> float:
    """2·R·5H·(2H + HT) for the three GEMMs (left, right, tracker) + 12·R·H pointwise."""
    return 2.0 * case.R * 5 * case.H * (2 * case.H + case.HT) + TREE_POINTWISE * case.R * case.H


def _reduce_bytes(case: Case) -> float:
    """Weights 5H·(2H+HT) + bias 5H, inputs R·(4H+HT), outputs 2·R·H, saved lstm_in 5·R·H."""
    R, H, HT = case.R, case.H, case.HT
    return float((5 * H * (2 * H + HT) + 5 * H + R * (4 * H + HT) + 2 * R * H + 5 * R * H) * _itemsize(case))


# --------------------------------------------------------------------------------------------------
# The GEMM floor: the matrix products a case cannot avoid. runner.GemmFloor times each distinct shape
# on its own (the fastest of runner.gemm_candidates); the floor of a case is Σ count × time. A
# recurrence can fuse its pointwise gate math into these GEMMs but cannot do less GEMM work, so a time
# at the floor is as fast as this machine's GEMM makes the case (pct_floor = 100·floor/median).


def recurrence_gemms(
    G: int,
    mode: str,
    T: int,
    B: int,
    tokens: int,
    H: int,
    I: int = 0,
    P: int = 0,
    input_gemm: bool = True,
) -> dict[Gemm, int]:
    """The unavoidable GEMMs of one layer and direction of a recurrence, {(m, k, n): count}.

    tokens = T·B (Σ lengths when packed), N = P (LSTM with projection) or H: the width of the state h.
    Forward (every mode):
        input GEMM   (tokens, I) × (I, G·H)          once (all steps together; skipped for a bare op,
                                                     whose gi is given)
        recurrent    (B, N) × (N, G·H)               T times: one GEMM per step, timed once
        projection   (B, H) × (H, P)                 T times, when P > 0
    fwdbwd adds the backward:
        dX  = dGi·W_ih   (tokens, G·H) × (G·H, I)    once    (input GEMM only)
        dW_ih = dGiᵀ·X   (G·H, tokens) × (tokens, I) once    (input GEMM only)
        dW_hh = dGhᵀ·h   (G·H, tokens) × (tokens, N) once
        dh  = dg·W_hh    (B, G·H) × (G·H, N)         T times
        with P > 0: dW_hr (P, tokens) × (tokens, H) once and dh_raw = dh·W_hr (B, P) × (P, H) T times.
    Packed cases keep the full batch B in the per-step GEMMs (the floor then slightly overstates what
    a kernel that shrinks the batch as sequences end must do).
    """
    N = P or H
    gemms: dict[Gemm, int] = {}

    def add(shape: Gemm, count: int) -> None:
        gemms[shape] = gemms.get(shape, 0) + count

    if input_gemm:
        add((tokens, I, G * H), 1)
    add((B, N, G * H), T)
    if P:
        add((B, H, P), T)
    if mode == "fwdbwd":
        if input_gemm:
            add((tokens, G * H, I), 1)
            add((G * H, tokens, I), 1)
        add((G * H, tokens, N), 1)
        add((B, G * H, N), T)
        if P:
            add((P, tokens, H), 1)
            add((B, P, H), T)
    return gemms


def _module_floor(case: Case) -> dict[Gemm, int]:
    """Every layer and direction: :func:`recurrence_gemms` with I_0 = I, I_l = D·H (the benchmark's
    modules have no projection, P = 0)."""
    G = common.GATES[_CELL_OF[case.op]]
    D = 2 if case.bidir else 1
    tokens = _packed_tokens(case)
    total: dict[Gemm, int] = {}
    for layer in range(case.layers):
        I_l = case.I if layer == 0 else D * case.H
        for shape, count in recurrence_gemms(G, case.mode, case.T, case.B, tokens, case.H, I_l).items():
            total[shape] = total.get(shape, 0) + D * count
    return total


def _op_floor(case: Case) -> dict[Gemm, int]:
    """The bare op's recurrent part only: its gi comes precomputed and its backward returns dgi, so
    neither the input GEMM nor dX/dW_ih is its work."""
    G = common.GATES[_CELL_OF[case.op]]
    return recurrence_gemms(G, case.mode, case.T, case.B, _packed_tokens(case), case.H, input_gemm=False)


def floor_gemms(case: Case) -> dict[Gemm, int] | None:
    """{(m, k, n): count} of the GEMMs ``case`` cannot avoid in its mode, or None for ops without a
    GEMM floor (the tree ops and spinn: their GEMMs are a minor or data-dependent part)."""
    return case.spec.floor(case) if case.spec.floor is not None else None


# --------------------------------------------------------------------------------------------------
# The roofline's memory term: the bytes a call must move between memory and the caches.
#
# A timed loop calls a case again and again, so whatever fits in the cache stays there between calls
# and between steps. What must move is what cannot stay (C: the cache capacity, all levels the run's
# cores reach, taken generously so that the count stays a lower bound):
#   - once per call, the tensors at the call's boundary beyond C: max(0, S - C), S = the floating-point
#     inputs, parameters and outputs of the call (fwdbwd: also the upstream gradients read and the
#     gradients written, 2 S). Activations saved for backward are left out: a kernel may recompute them.
#   - every further step, the weights the step reads beyond C: a recurrence reads all of W_hh at every
#     step (forward, and again at every step of backward), and between two such reads at most C bytes of
#     it can stay cached: (reads - 1) * max(0, W - C) per layer and direction.
# Integer index tensors (lengths, transitions) are left out, a few bytes per row.


def boundary_bytes(case: Case) -> float | None:
    """S: bytes of the floating-point tensors one call reads and writes at its boundary (the
    differentiable inputs, the parameters, the outputs; fwdbwd twice that: the upstream gradients of
    the outputs and the gradients of the inputs and parameters have the same sizes). None when the op
    does not count them."""
    if case.spec.io is None:
        return None
    return float(case.spec.io(case) * _itemsize(case) * (2 if case.mode == "fwdbwd" else 1))


def must_move_bytes(case: Case, cache_bytes: float | None) -> float | None:
    """Bytes one call of ``case`` must move between memory and a cache of ``cache_bytes``, in a loop of
    calls: max(0, S - C) + Σ over layers and directions of (reads - 1) · max(0, W - C), with S from
    :func:`boundary_bytes`, W the weights each step reads and reads = T (2T for fwdbwd). None when the
    cache size or the op's counts are unknown."""
    S = boundary_bytes(case)
    if cache_bytes is None or S is None:
        return None
    total = max(0.0, S - cache_bytes)
    per_step = case.spec.step_weights(case) if case.spec.step_weights is not None else []
    for elements, steps in per_step:
        reads = steps * (2 if case.mode == "fwdbwd" else 1)
        total += (reads - 1) * max(0.0, elements * _itemsize(case) - cache_bytes)
    return total


def _module_io(case: Case) -> int:
    """x N·I, the parameters Σ_l D·(G·H·(I_l + H) + 2·G·H), y N·D·H, h_n (and c_n) L·D·B·H; the
    benchmark's modules start from a zero state (no h0)."""
    G = common.GATES[_CELL_OF[case.op]]
    D = 2 if case.bidir else 1
    N, H = _packed_tokens(case), case.H
    params = sum(
        D * (G * H * ((case.I if layer == 0 else D * H) + H) + 2 * G * H) for layer in range(case.layers)
    )
    states = 2 if case.op == "lstm" else 1
    return N * case.I + params + N * D * H + states * case.layers * D * case.B * H


def _module_step_weights(case: Case) -> list[tuple[int, int]]:
    """W_hh and b_hh, G·H·H + G·H, at each of the T steps of every layer and direction (the bare ops:
    one layer, one direction)."""
    G = common.GATES[_CELL_OF[case.op]]
    D = 2 if case.bidir else 1
    return [(G * case.H * case.H + G * case.H, case.T)] * (case.layers * D)


def _op_io(case: Case) -> int:
    """gi T·B·G·H, h0 (and c0) B·H, w_hh G·H², b_hh G·H, y T·B·H, h_n (and c_n) B·H (gi and y keep all
    T·B positions when packed)."""
    G = common.GATES[_CELL_OF[case.op]]
    T, B, H = case.T, case.B, case.H
    states = 2 if _CELL_OF[case.op] == "lstm" else 1
    return T * B * G * H + 2 * states * B * H + G * H * H + G * H + T * B * H


def _tree_io(case: Case) -> int:
    """lstm_in 5·R·H, c_l, c_r; h, c: 9·R·H."""
    return 9 * case.R * case.H


def _reduce_io(case: Case) -> int:
    """h_l, c_l, h_r, c_r 4·R·H, h_track R·HT, w_l and w_r 10·H², b_l 5H, w_t 5H·HT; h, c 2·R·H."""
    R, H, HT = case.R, case.H, case.HT
    return 4 * R * H + R * HT + 10 * H * H + 5 * H + 5 * H * HT + 2 * R * H


def _spinn_params(case: Case) -> int:
    """Reduce: left (5H, H) + bias 5H, right (5H, H), tracker input (5H, HT); tracker LSTMCell
    (3H -> HT): 4HT·3H + 4HT·HT + two biases 4HT."""
    H, HT = case.H, case.HT
    tracker = 5 * H * HT + 4 * HT * 3 * H + 4 * HT * HT + 8 * HT if HT else 0
    return 10 * H * H + 5 * H + tracker


def _spinn_io(case: Case) -> int:
    """The leaf buffers B·N·2H, the null B·2H (with a tracker: without one no complete tree reads it),
    the parameters, the root h B·H."""
    B, H, N = case.B, case.H, (case.T + 1) // 2
    return B * N * 2 * H + (B * 2 * H if case.HT else 0) + _spinn_params(case) + B * H


def _spinn_step_weights(case: Case) -> list[tuple[int, int]]:
    """Every parameter at each of the T transitions (the reduce's and the tracker's products)."""
    return [(_spinn_params(case), case.T)]


# --------------------------------------------------------------------------------------------------
# Modules: gru, rnn, lstm


_TORCH_MODULE = {"gru": nn.GRU, "rnn": nn.RNN, "lstm": nn.LSTM}


def _module_shape(case: Case) -> str:
    s = f"B{case.B} T{case.T} I{case.I} H{case.H}"
    if case.layers != 1:
        s += f" L{case.layers}"
    if case.bidir:
        s += " bi"
    if case.packed:
        s += " packed"
    return s


def _module_sizes(case: Case) -> dict[str, Any]:
    return {
        "cell": _CELL_OF[case.op],
        "T": case.T,
        "B": case.B,
        "H": case.H,
        "P": 0,
        "lengths": case.packed,
        "reverse": case.bidir,
    }


def _module_make(case: Case, device: torch.device) -> Workload:
    """Inputs: x (T, B, I) seq-first (a PackedSequence with ragged lengths when packed) and a torch.nn
    module with seeded weights uniform in ±1/√H (torch.nn's init range)."""
    g = _generator(case)
    dt = case.torch_dtype
    module = _TORCH_MODULE[case.op](
        case.I, case.H, num_layers=case.layers, bidirectional=case.bidir, device=device, dtype=dt
    )
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(_rand(g, tuple(p.shape), dt, device, scale=case.H**-0.5))
    x = _rand(g, (case.T, case.B, case.I), dt, device)
    lengths = None
    if case.packed:
        lengths = _lengths(_generator(case, salt="lengths"), case.T, case.B)
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        # The packed data is the leaf, as when a user packs a batch from a data loader.
        data = packed.data.detach().requires_grad_(_needs_grad(case))
        x = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        leaf = data
    else:
        x.requires_grad_(_needs_grad(case))
        leaf = x
    return Workload(case, device, {"module": module, "x": x, "lengths": lengths}, [leaf])


def _flat(out) -> list[Tensor]:
    """(y, h_n) or (y, (h_n, c_n)) -> [y, h_n(, c_n)]; a PackedSequence y contributes its data."""
    y, state = out
    y = y.data if isinstance(y, PackedSequence) else y
    return [y, *(state if isinstance(state, tuple) else (state,))]


def _own_params(module: nn.Module, case: Case) -> list[Tensor]:
    params = list(module.parameters())
    for p in params:
        p.requires_grad_(_needs_grad(case))
    return params


def _module_torch(w: Workload) -> Bound:
    m = copy.deepcopy(w.data["module"])
    x = w.data["x"]
    return Bound(lambda: _flat(m(x)), _own_params(m, w.case))


def _module_backend(w: Workload, backend: str) -> Bound:
    m = rnnfast.from_torch(w.data["module"], backend=backend)
    x = w.data["x"]
    return Bound(lambda: _flat(m(x)), _own_params(m, w.case))


def _module_auto(w: Workload) -> Bound:
    """The module as a user gets it: ``backend="auto"``, which may hand the call to torch.nn itself."""
    return _module_backend(w, "auto")


def oracle_stack(m: nn.RNNBase, x: Tensor, lengths: Tensor | None) -> list[Tensor]:
    """The whole module in plain PyTorch (the op oracles per layer and direction, zero initial state).

    x (T, B, I) padded, seq-first -> [y (T, B, D·H), h_n (L·D, B, H)(, c_n)]. This is what
    ``torch.compile`` is given: it sees every step (the rnnfast custom ops are opaque to it).
    """
    cell = {"GRU": "gru", "LSTM": "lstm", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}[m.mode]
    D = 2 if m.bidirectional else 1
    B = x.shape[1]
    hs, cs = [], []
    for layer in range(m.num_layers):
        outs = []
        for d in range(D):
            sfx = f"l{layer}" + ("_reverse" if d else "")
            gi = F.linear(x, getattr(m, "weight_ih_" + sfx), getattr(m, "bias_ih_" + sfx))
            w_hh, b_hh = getattr(m, "weight_hh_" + sfx), getattr(m, "bias_hh_" + sfx)
            h0 = x.new_zeros((B, m.hidden_size))
            if cell == "lstm":
                y, h, c = rec_ref.lstm(gi, h0, h0, w_hh, b_hh, None, lengths, bool(d))
                cs.append(c)
            elif cell == "gru":
                y, h = rec_ref.gru(gi, h0, w_hh, b_hh, lengths, bool(d))
            else:
                y, h = rec_ref.rnn(gi, h0, w_hh, b_hh, lengths, bool(d), nonlinearity=cell[4:])
            outs.append(y)
            hs.append(h)
        x = outs[0] if D == 1 else torch.cat(outs, -1)
    return [x, torch.stack(hs), *([torch.stack(cs)] if cs else [])]


def _module_compile(w: Workload) -> Bound:
    m = copy.deepcopy(w.data["module"])
    x, lengths = w.data["x"], w.data["lengths"]
    fn = torch.compile(oracle_stack, dynamic=False)
    if lengths is None:
        return Bound(lambda: fn(m, x, None), _own_params(m, w.case))
    dev_lengths = lengths.to(w.device)

    def packed():
        # The padding and repacking a plain-PyTorch model needs around a PackedSequence are part of it.
        padded, _ = pad_packed_sequence(x)
        y, *state = fn(m, padded, dev_lengths)
        return [pack_padded_sequence(y, lengths, enforce_sorted=False).data, *state]

    return Bound(packed, _own_params(m, w.case))


# --------------------------------------------------------------------------------------------------
# Bare recurrence ops: gru_op, rnn_op, lstm_op (one layer, one direction; gi precomputed)


def _op_shape(case: Case) -> str:
    return f"B{case.B} T{case.T} H{case.H}" + (" packed" if case.packed else "")


def _op_sizes(case: Case) -> dict[str, Any]:
    return {**_module_sizes(case), "reverse": False}


def _op_make(case: Case, device: torch.device) -> Workload:
    cell = _CELL_OF[case.op]
    G = common.GATES[cell]
    g = _generator(case)
    dt, B, H = case.torch_dtype, case.B, case.H
    data = {
        "gi": _rand(g, (case.T, B, G * H), dt, device),
        "h0": _rand(g, (B, H), dt, device, 0.5),
        "c0": _rand(g, (B, H), dt, device, 0.5) if cell == "lstm" else None,
        "w_hh": _rand(g, (G * H, H), dt, device, H**-0.5),
        "b_hh": _rand(g, (G * H,), dt, device, H**-0.5),
        "lengths": _lengths(_generator(case, salt="lengths"), case.T, B).to(device) if case.packed else None,
    }
    leaves = [t for k, t in data.items() if k != "lengths" and t is not None]
    for t in leaves:
        t.requires_grad_(_needs_grad(case))
    return Workload(case, device, data, leaves)


def _op_call(fns, w: Workload, backend_kw: dict) -> Bound:
    d, cell = w.data, _CELL_OF[w.case.op]
    gru_fn, rnn_fn, lstm_fn = fns
    if cell == "lstm":
        return Bound(
            lambda: list(
                lstm_fn(d["gi"], d["h0"], d["c0"], d["w_hh"], d["b_hh"], None, d["lengths"], **backend_kw)
            )
        )
    if cell == "gru":
        return Bound(lambda: list(gru_fn(d["gi"], d["h0"], d["w_hh"], d["b_hh"], d["lengths"], **backend_kw)))
    return Bound(lambda: list(rnn_fn(d["gi"], d["h0"], d["w_hh"], d["b_hh"], d["lengths"], **backend_kw)))


def _op_backend(w: Workload, backend: str) -> Bound:
    f = rnnfast.functional
    return _op_call((f.gru, f.rnn, f.lstm), w, {"backend": backend})


def _op_compile(w: Workload) -> Bound:
    fns = tuple(torch.compile(fn, dynamic=False) for fn in (rec_ref.gru, rec_ref.rnn, rec_ref.lstm))
    return _op_call(fns, w, {})


# --------------------------------------------------------------------------------------------------
# Tree ops: tree_lstm, tree_lstm_reduce


def _tree_shape(case: Case) -> str:
    return f"R{case.R} H{case.H}" + (f" HT{case.HT}" if case.op == "tree_lstm_reduce" else "")


def _tree_sizes(case: Case) -> dict[str, Any]:
    sizes = {"R": case.R, "H": case.H}
    return {**sizes, "HT": case.HT} if case.op == "tree_lstm_reduce" else sizes


def _tree_make(case: Case, device: torch.device) -> Workload:
    g = _generator(case)
    dt, R, H = case.torch_dtype, case.R, case.H
    data = {"lstm_in": _rand(g, (R, 5 * H), dt, device), "c_l": _rand(g, (R, H), dt, device)}
    data["c_r"] = _rand(g, (R, H), dt, device)
    leaves = list(data.values())
    for t in leaves:
        t.requires_grad_(_needs_grad(case))
    return Workload(case, device, data, leaves)


def _tree_backend(w: Workload, backend: str) -> Bound:
    d = w.data
    return Bound(
        lambda: list(rnnfast.functional.tree_lstm(d["lstm_in"], d["c_l"], d["c_r"], backend=backend))
    )


def _tree_compile(w: Workload) -> Bound:
    fn, d = torch.compile(tree_ref.tree_lstm, dynamic=False), w.data
    return Bound(lambda: list(fn(d["lstm_in"], d["c_l"], d["c_r"])))


_REDUCE_ARGS = ("h_l", "c_l", "h_r", "c_r", "w_l", "b_l", "w_r", "h_track", "w_t")


def _reduce_make(case: Case, device: torch.device) -> Workload:
    g = _generator(case)
    dt, R, H, HT = case.torch_dtype, case.R, case.H, case.HT
    data = {k: _rand(g, (R, H), dt, device) for k in ("h_l", "c_l", "h_r", "c_r")}
    data["w_l"] = _rand(g, (5 * H, H), dt, device, H**-0.5)
    data["b_l"] = _rand(g, (5 * H,), dt, device, H**-0.5)
    data["w_r"] = _rand(g, (5 * H, H), dt, device, H**-0.5)
    data["h_track"] = _rand(g, (R, HT), dt, device) if HT else None
    data["w_t"] = _rand(g, (5 * H, HT), dt, device, HT**-0.5) if HT else None
    leaves = [data[k] for k in _REDUCE_ARGS if data[k] is not None]
    for t in leaves:
        t.requires_grad_(_needs_grad(case))
    return Workload(case, device, data, leaves)


def _reduce_backend(w: Workload, backend: str) -> Bound:
    args = [w.data[k] for k in _REDUCE_ARGS]
    return Bound(lambda: list(rnnfast.functional.tree_lstm_reduce(*args, backend=backend)))


def _reduce_compile(w: Workload) -> Bound:
    fn, args = torch.compile(reduce_ref.tree_lstm_reduce, dynamic=False), [w.data[k] for k in _REDUCE_ARGS]
    return Bound(lambda: list(fn(*args)))


for _name in ("gru", "rnn", "lstm"):
    register_op(
        OpSpec(
            name=_name, family="module", baseline="torch.nn",
            shape=_module_shape, sizes=_module_sizes, make=_module_make, run_backend=_module_backend,
            extra={"torch.nn": _module_torch, "auto": _module_auto, "compile": _module_compile},
            flops=_module_flops, bytes=_module_bytes, tokens=_packed_tokens, floor=_module_floor,
            io=_module_io, step_weights=_module_step_weights,
        )
    )  # fmt: skip
    register_op(
        OpSpec(
            name=_name + "_op", family="recurrence", baseline="reference",
            shape=_op_shape, sizes=_op_sizes, make=_op_make, run_backend=_op_backend,
            extra={"compile": _op_compile},
            flops=_op_flops, bytes=_op_bytes, tokens=_packed_tokens, floor=_op_floor,
            io=_op_io, step_weights=_module_step_weights,
        )
    )  # fmt: skip
register_op(
    OpSpec(
        name="tree_lstm", family="tree_lstm", baseline="reference",
        shape=_tree_shape, sizes=_tree_sizes, make=_tree_make, run_backend=_tree_backend,
        extra={"compile": _tree_compile},
        flops=_tree_flops, bytes=_tree_bytes, tokens=lambda c: c.R, io=_tree_io,
    )
)  # fmt: skip
register_op(
    OpSpec(
        name="tree_lstm_reduce", family="tree_lstm_reduce", baseline="reference",
        shape=_tree_shape, sizes=_tree_sizes, make=_reduce_make, run_backend=_reduce_backend,
        extra={"compile": _reduce_compile},
        flops=_reduce_flops, bytes=_reduce_bytes, tokens=lambda c: c.R, io=_reduce_io,
    )
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The SPINN encoder: spinn (rnnfast.nn.SPINN against the list-based SPINN of the classic SNLI example)
#
# Case fields: B batch, T transitions, H hidden (the tree states, D in the SPINN paper), HT tracker
# hidden (0: no tracker). Trees are random binary trees with SNLI-like sizes: n leaves per example
# uniform in [⌊3N/4⌋, N] with N = (T + 1)/2 (one example has N, so T = 2N − 1 exactly), transitions
# left-padded with PAD. T = 49 gives the 18..25 leaves of scripts/bench_spinn.py.
#
# Providers: "reference" is the list-based encoder (rnnfast/ops/spinn/reference.py: Python lists per
# example, one batched reduce per step), the baseline; the rnnfast backends run the thin-stack encoder
# with that backend's tree-LSTM cell (the op spinn_encode resolves through rnnfast.backends, hence the
# family "tree_lstm"). The thin stack with the reference cell is not listed: its name is the baseline's.


def _spinn_leaves(case: Case) -> Tensor:
    """Leaves per example (B,), uniform in [⌊3N/4⌋, N] with one example at N = (T + 1)/2."""
    if case.T < 1 or case.T % 2 == 0:
        raise ValueError(f"T: spinn takes T = 2·N − 1 transitions for N leaves (odd, ≥ 1), got {case.T}")
    N = (case.T + 1) // 2
    g = _generator(case, salt="leaves")
    n = torch.randint(max(1, 3 * N // 4), N + 1, (case.B,), generator=g)
    n[int(torch.randint(0, case.B, (1,), generator=g))] = N
    return n


def _spinn_rows(case: Case) -> int:
    """ΣR: reduced rows over all steps; an example of n leaves reduces n − 1 times."""
    return int((_spinn_leaves(case) - 1).sum())


def _spinn_flops(case: Case) -> float:
    """Reduce + tracker GEMMs and the tree-LSTM pointwise, over all steps:

        2·ΣR·5H·(2H + HT)    each reduced row: [h_l, h_r] (2H) → 5H, and the tracker h (HT) → 5H
      + 12·ΣR·H              the tree-LSTM composition (as tree_lstm)
      + 2·T·B·4HT·(3H + HT)  the tracker LSTMCell at every step, pads included: 3H → 4HT and HT → 4HT

    ΣR = Σ_b (n_b − 1). The tracker's own pointwise math is left out (as for the recurrences); with
    HT = 0 (no tracker) its terms vanish. B=128 T=49 H=300 HT=64 (ΣR = 2,623): ≈ 8.3 GFLOP per forward.
    """
    R, H, HT = _spinn_rows(case), case.H, case.HT
    reduce = 2.0 * R * 5 * H * (2 * H + HT) + TREE_POINTWISE * R * H
    return reduce + 2.0 * case.T * case.B * 4 * HT * (3 * H + HT)


def _spinn_bytes(case: Case) -> float:
    """Weights (reduce 5H·(2H+HT) + 5H, tracker 4HT·(3H+HT) + 8HT), leaves and null read B·(N+1)·2H,
    per reduced row 11H + HT (as tree_lstm_reduce: children and tracker h read, h and c written, lstm_in
    saved), per tracker step and example 3H + 8HT (input read, state read and written, gates saved),
    the root h written B·H."""
    B, T, H, HT = case.B, case.T, case.H, case.HT
    N, R = (T + 1) // 2, _spinn_rows(case)
    weights = 5 * H * (2 * H + HT) + 5 * H + 4 * HT * (3 * H + HT) + 8 * HT
    tracker = T * B * (3 * H + 8 * HT) if HT else 0
    total = weights + B * (N + 1) * 2 * H + R * (11 * H + HT) + tracker + B * H
    return float(total * _itemsize(case))


def _spinn_shape(case: Case) -> str:
    return f"B{case.B} T{case.T} H{case.H} HT{case.HT}"


def _spinn_sizes(case: Case) -> dict[str, Any]:
    # What spinn_encode asks the backends for its tree-LSTM cell (R is at most B rows per step).
    return {"R": case.B, "H": case.H}


def _spinn_make(case: Case, device: torch.device) -> Workload:
    """Inputs: buffers (B, N, 2H) leaf [h; c], null (B, 2H), transitions (T, B) on the host, and a
    rnnfast.nn.SPINN with seeded weights uniform in ±1/√fan_in (±1/√HT for the tracker's LSTMCell,
    torch's init ranges). Each provider runs its own copy of the module."""
    g = _generator(case)
    dt, B, H, HT = case.torch_dtype, case.B, case.H, case.HT
    N = (case.T + 1) // 2
    module = SPINN(H, HT or None).to(device=device, dtype=dt)
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan_in = HT if name.startswith("tracker.") else (p.shape[1] if p.dim() == 2 else H)
            p.copy_(_rand(g, tuple(p.shape), dt, device, scale=fan_in**-0.5))
    rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=g)))
    transitions = pad_transitions([random_transitions(int(n), rng) for n in _spinn_leaves(case)], case.T)
    buffers = _rand(g, (B, N, 2 * H), dt, device, 0.5)
    null = _rand(g, (B, 2 * H), dt, device, 0.5)
    # Without a tracker the null is only the stack bottom, which no complete tree reads: no gradient.
    leaves = [buffers, null] if HT else [buffers]
    for t in leaves:
        t.requires_grad_(_needs_grad(case))
    data = {"module": module, "buffers": buffers, "null": null, "transitions": transitions}
    return Workload(case, device, data, leaves)


def _spinn_reference(w: Workload) -> Bound:
    m, d = copy.deepcopy(w.data["module"]), w.data
    return Bound(
        lambda: [spinn_ref.spinn(m, d["buffers"], d["transitions"], d["null"])[0]], _own_params(m, w.case)
    )


def _spinn_backend(w: Workload, backend: str) -> Bound:
    """The thin-stack encoder (rnnfast.nn.SPINN) with ``backend``'s tree-LSTM cell: root h (B, H)."""
    m, d = copy.deepcopy(w.data["module"]), w.data
    m.backend = backend
    return Bound(lambda: [m(d["buffers"], d["transitions"], d["null"])], _own_params(m, w.case))


register_op(
    OpSpec(
        name="spinn", family="tree_lstm", baseline="reference",
        shape=_spinn_shape, sizes=_spinn_sizes, make=_spinn_make, run_backend=_spinn_backend,
        extra={"reference": _spinn_reference},
        flops=_spinn_flops, bytes=_spinn_bytes, tokens=lambda c: c.B * c.T,
        io=_spinn_io, step_weights=_spinn_step_weights,
    )
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Providers of a case and the grids


_EXTRA_REASONS = {
    "torch.nn": "torch.nn kernels",
    "auto": "the rnnfast module with backend='auto' (the backend it picks for the case)",
}


def providers(case: Case, device: torch.device, compile: bool = False) -> list[tuple[str, bool, str]]:
    """Every provider of the case, baseline first: (name, supported, reason)."""
    spec = case.spec
    device = torch.device(device)
    out = []
    for name, _ in spec.extra.items():
        if name == "compile":
            continue
        out.append((name, True, _EXTRA_REASONS.get(name, "registered provider")))
    for name in KERNEL_BACKENDS:
        if name in spec.extra:
            continue  # a registered provider of that name takes its place (spinn's list-based reference)
        ok, why = backends.REGISTRY[name].supports(spec.family, device, case.torch_dtype, case.sizes())
        out.append((name, ok, why))
    if "compile" in spec.extra:
        out.append(
            ("compile", compile, "torch.compile of the PyTorch oracle" if compile else "off (--compile)")
        )
    out.sort(key=lambda p: p[0] != spec.baseline)
    return out


def bind(case: Case, provider: str, workload: Workload) -> Bound:
    """The provider's runnable for this workload."""
    spec = case.spec
    if provider in spec.extra:
        return spec.extra[provider](workload)
    if provider in KERNEL_BACKENDS:
        return spec.run_backend(workload, provider)
    raise ValueError(f"provider: expected one of {sorted({*spec.extra, *KERNEL_BACKENDS})}, got {provider!r}")


# The sweep grid: where the GEMM floor is the target (B ≥ 16 or H ≥ 256) and where per-step overhead
# rules (small B and H).
SWEEP_B = (1, 4, 16, 64, 256)
SWEEP_H = (64, 128, 256, 512, 1024)
SWEEP_T = (50, 200)

# The decode grid: one step per call, as a token-by-token generation loop calls a module, where the
# fixed cost of a call (argument checks, allocations, dispatch) is all there is to time.
DECODE_B = (1, 4, 16)
DECODE_H = (128, 512)


def _modules(ops, shapes, modes, dtypes, **kw) -> list[Case]:
    return [Case(op, mode, dt, **s, **kw) for s in shapes for op in ops for mode in modes for dt in dtypes]


def grid(
    name: str,
    device: torch.device | str,
    modes: list[str] | None = None,
    dtypes: list[str] | None = None,
    ops: list[str] | None = None,
) -> list[Case]:
    """The cases of grid ``name`` (tiny | quick | full) for a device type, optionally restricted.

    tiny   a smoke grid: every op and feature (packed, bidirectional, 2 layers, SPINN with and without
           tracker) at toy sizes
    quick  CPU: the overhead-bound (B1 T200 H128) and GEMM-bound (B16 T100 H256) shapes for each
           module, one tree size and the SPINN encoder at B128 T49 H300 HT64. CUDA: small-batch
           (B1 H256 T512) and large (B64 H1024 T256) shapes, bf16, packed, and the tree ops and the
           SPINN encoder at SNLI sizes
    full   B × H sweeps for every module and op, 2-layer bidirectional, packed, and inference
    sweep  the modules' GEMM-floor grid: B ∈ {1, 4, 16, 64, 256} × H ∈ {64, 128, 256, 512, 1024}
           × T ∈ {50, 200}, I = H, one layer, unidirectional, float32, infer and fwdbwd (the same on
           every device; docs/benchmarks.md has its command and run time)
    decode one-step calls (T = 1, the token-by-token generation loop): B ∈ {1, 4, 16} ×
           H ∈ {128, 512}, I = H, float32, infer and fwdbwd, one layer and a 2-layer one at H = 128
    ``modes`` and ``dtypes`` replace the grid's own; ``ops`` keeps only those ops.
    """
    if name not in GRIDS:
        raise ValueError(f"grid: expected one of {GRIDS}, got {name!r}")
    cuda = torch.device(device).type == "cuda"
    cell_ops = ["gru", "rnn", "lstm"]
    bare_ops = ["gru_op", "rnn_op", "lstm_op"]
    if name == "tiny":
        m, d = modes or ["fwd", "fwdbwd"], dtypes or ["float32"]
        cases = _modules(cell_ops, [dict(B=3, T=5, I=6, H=8)], m, d)
        cases += _modules(
            ["gru", "lstm"], [dict(B=3, T=5, I=6, H=8)], m, d, layers=2, bidir=True, packed=True
        )
        cases += _modules(bare_ops, [dict(B=3, T=5, H=8)], m, d)
        cases += _modules(["tree_lstm"], [dict(R=4, H=8)], m, d)
        cases += _modules(["tree_lstm_reduce"], [dict(R=4, H=8, HT=3)], m, d)
        cases += _modules(["spinn"], [dict(B=3, T=9, H=8, HT=3), dict(B=2, T=7, H=8, HT=0)], m, d)
    elif name == "quick":
        m = modes or ["fwd", "fwdbwd"]
        if cuda:
            d = dtypes or ["float32"]
            cases = _modules(
                cell_ops, [dict(B=1, T=512, I=256, H=256), dict(B=64, T=256, I=1024, H=1024)], m, d
            )
            cases += _modules(["gru", "lstm"], [dict(B=64, T=256, I=1024, H=1024)], m, dtypes or ["bfloat16"])
            cases += _modules(["gru"], [dict(B=64, T=256, I=512, H=512)], m, d, packed=True)
            cases += _modules(["tree_lstm"], [dict(R=1024, H=300)], m, d)
            cases += _modules(["tree_lstm_reduce"], [dict(R=1024, H=300, HT=64)], m, d)
            cases += _modules(["spinn"], [dict(B=128, T=49, H=300, HT=64)], m, d)
        else:
            d = dtypes or ["float32"]
            cases = _modules(
                cell_ops, [dict(B=1, T=200, I=128, H=128), dict(B=16, T=100, I=256, H=256)], m, d
            )
            cases += _modules(["tree_lstm"], [dict(R=128, H=300)], m, d)
            cases += _modules(["tree_lstm_reduce"], [dict(R=128, H=300, HT=64)], m, d)
            cases += _modules(["spinn"], [dict(B=128, T=49, H=300, HT=64)], m, d)
    elif name == "sweep":
        m, d = modes or ["infer", "fwdbwd"], dtypes or ["float32"]
        shapes = [dict(B=B, T=T, I=H, H=H) for B in SWEEP_B for H in SWEEP_H for T in SWEEP_T]
        cases = _modules(cell_ops, shapes, m, d)
    elif name == "decode":
        m, d = modes or ["infer", "fwdbwd"], dtypes or ["float32"]
        cases = _modules(cell_ops, [dict(B=B, T=1, I=H, H=H) for B in DECODE_B for H in DECODE_H], m, d)
        cases += _modules(cell_ops, [dict(B=B, T=1, I=128, H=128) for B in DECODE_B], m, d, layers=2)
    else:
        m = modes or ["fwd", "fwdbwd", "infer"]
        d = dtypes or (["float32", "bfloat16", "float16"] if cuda else ["float32"])
        Bs = [1, 16, 64, 256] if cuda else [1, 16, 64]
        Hs = [128, 256, 512, 1024] if cuda else [128, 256, 512]
        T = 256 if cuda else 100
        shapes = [dict(B=B, T=T, I=H, H=H) for B in Bs for H in Hs]
        cases = _modules(cell_ops, shapes, m, d)
        big = [dict(B=Bs[-1], T=T, I=Hs[-2], H=Hs[-2])]
        cases += _modules(cell_ops, big, m, d, layers=2, bidir=True)
        cases += _modules(cell_ops, big, m, d, packed=True)
        cases += _modules(bare_ops, [dict(B=B, T=T, H=H) for B in (1, Bs[-1]) for H in (Hs[1], Hs[-1])], m, d)
        Rs = [128, 1024, 8192] if cuda else [128, 1024]
        cases += _modules(["tree_lstm"], [dict(R=R, H=H) for R in Rs for H in (300, 1024)], m, d)
        cases += _modules(["tree_lstm_reduce"], [dict(R=R, H=300, HT=HT) for R in Rs for HT in (0, 64)], m, d)
        spinn_Bs, spinn_Hs = ((128, 512), (300, 1024)) if cuda else ((32, 128), (100, 300))
        cases += _modules(["spinn"], [dict(B=B, T=49, H=H, HT=64) for B in spinn_Bs for H in spinn_Hs], m, d)
    if ops:
        unknown = sorted(set(ops) - set(OPS))
        if unknown:
            raise ValueError(f"ops: expected names from {sorted(OPS)}, got unknown {unknown}")
        cases = [c for c in cases if c.op in ops]
        missing = [o for o in ops if not any(c.op == o for c in cases)]
        if missing:
            raise ValueError(f"ops: {missing} have no case in the '{name}' grid")
    return list(dict.fromkeys(cases))
