"""The cuda backend of the recurrence op. The kernel tests need a CUDA GPU (skipped, with the reason,
without one); the first few (supports, algorithm choice, opt-in) run everywhere.

Accuracy rule: for every output and every input gradient, the error of the cuda backend against a
float64 reference is at most twice the error torch.nn (cuDNN) makes on the same problem in the same dtype,
measured in the same test (plus a small floor of a few ulps of the dtype for problems where cuDNN happens
to be exact). torch.nn runs the op's problem exactly: input size G·H with W_ih = I and b_ih = 0 (so its
input projection returns gi unchanged), packed sequences for ``lengths``, and the valid part of every row
time-reversed for ``reverse``. Float32 comparisons turn TF32 off on both sides.

Both algorithms are covered on every shape: ``flags(algo="persistent")`` (the persistent kernels fit all
of them, which test_persistent_plan_covers_the_test_shapes checks) and ``stepwise``; what ``auto`` picks
between them comes from the cost model, checked on the CPU below (test_algorithm_follows_the_cost_model).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnfast
from rnnfast.ops.recurrence import common
from rnnfast.ops.recurrence import cuda as cuda_backend
from tests.utils import CELLS, assert_close, case_id, oracle, recurrence_inputs

gpu = pytest.mark.cuda
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (the cuda backend runs on the device)"
)

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Tolerance floor, relative to the largest reference magnitude: about two ulps near 1 of each dtype.
FLOOR = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
SHAPES = [(7, 3, 33), (1, 1, 256), (7, 17, 256), (33, 3, 1000)]  # (T, B, H)
MODES = ("plain", "reverse", "ragged", "ragged_reverse")


@pytest.fixture(params=["persistent", "stepwise"])
def algo(request):
    with cuda_backend.flags(algo=request.param):
        yield request.param


@pytest.fixture
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_supports_refuses_other_devices_dtypes_and_projection():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    ok, why = cuda_backend.supports(cpu, torch.float32, {"cell": "gru", "B": 2, "H": 8})
    assert not ok and "CUDA devices only" in why, why
    ok, why = cuda_backend.supports(cuda, torch.float64, {"cell": "gru", "B": 2, "H": 8})
    assert not ok and "float64" in why, why
    ok, why = cuda_backend.supports(cuda, torch.float32, {"cell": "lstm", "B": 2, "H": 8, "P": 4})
    assert not ok and "projection" in why, why


def test_availability_is_reported():
    ok, why = cuda_backend.supports(torch.device("cuda"), torch.float32, {"cell": "gru", "B": 2, "H": 8})
    if torch.cuda.is_available():
        assert ok, why
    else:
        assert not ok and "no CUDA device" in why, why


def test_forced_algorithm_is_validated():
    with pytest.raises(ValueError, match="algo: expected one of"):
        with cuda_backend.flags(algo="fastest"):
            pass
    assert cuda_backend._forced_algorithm() == "auto"


def test_forced_algorithm_is_restored_on_exit():
    with cuda_backend.flags(algo="stepwise"):
        assert cuda_backend._forced_algorithm() == "stepwise"
        with cuda_backend.flags(algo="persistent"):
            assert cuda_backend._forced_algorithm() == "persistent"
        assert cuda_backend._forced_algorithm() == "stepwise"
    assert cuda_backend._forced_algorithm() == "auto"


def test_auto_never_picks_the_unverified_cuda_backend():
    assert ("cuda", "recurrence") not in rnnfast.backends.GPU_VERIFIED
    assert "cuda" not in rnnfast.backends.auto_order("recurrence", torch.device("cuda"))
    assert "cuda" not in rnnfast.backends.auto_order("module", torch.device("cuda"))


MODEL_CASES = [
    (c, d, H, bwd) for c in ("gru", "lstm") for d in DTYPES for H in (256, 1024) for bwd in (False, True)
]


@pytest.mark.parametrize(("cell", "dtype", "H", "backward"), MODEL_CASES)
def test_cost_model_terms(cell, dtype, H, backward):
    """The persistent estimate is its parts (staging overlapped with the GEMM beyond one block of rows),
    and the staged bytes are what every CTA reads: all B rows of h (forward) or of dgh (backward)."""
    gpu = cuda_backend.Gpu()
    for B in (1, 16, 17, 64, 256):
        t = cuda_backend.step_time(cell, dtype, B, H, backward, True, gpu)
        assert all(v >= 0 for v in t.values()), t
        gemm, serial = max(t["smem"], t["mma"]), B <= 16
        operand = gpu.l2_latency_us + (t["l2"] + gemm if serial else max(t["l2"], gemm))
        assert t["persistent"] == pytest.approx(t["barrier"] + operand + t["cells"] + t["hbm"]), t
        U = -(-H // gpu.sms)
        ctas, esz = -(-H // U), 4 if dtype == torch.float32 else 2
        K = common.GATES[cell] * H if backward else H
        assert t["l2_bytes"] == ctas * B * K * esz, t


@pytest.mark.parametrize(("cell", "dtype", "H", "backward"), MODEL_CASES)
def test_batch_limit_is_where_the_model_changes_its_mind(cell, dtype, H, backward):
    for tf32 in (True, False) if dtype == torch.float32 else (True,):
        limit = cuda_backend.batch_limit(cell, dtype, H, backward, tf32)

        def wins(B, tf32=tf32):
            t = cuda_backend.step_time(cell, dtype, B, H, backward, tf32)
            return t["persistent"] <= t["stepwise"]

        assert limit == 0 or wins(limit), (cell, dtype, H, backward, tf32, limit)
        assert not wins(limit + 1) or limit == cuda_backend._MAX_BATCH, (
            cell,
            dtype,
            H,
            backward,
            tf32,
            limit,
        )


def test_float32_fma_never_outlasts_tf32_in_the_model():
    for cell in ("gru", "lstm"):
        for H in (128, 512, 1024, 2048):
            for bwd in (False, True):
                fma = cuda_backend.batch_limit(cell, torch.float32, H, bwd, False)
                tf32 = cuda_backend.batch_limit(cell, torch.float32, H, bwd, True)
                assert fma <= tf32, (cell, H, bwd, fma, tf32)


def test_algorithm_follows_the_cost_model(monkeypatch):
    """algorithm(): persistent up to the model's batch limit, stepwise beyond; forced persistent runs
    whenever the plan fits; a plan that does not fit goes stepwise (auto) or is refused (forced)."""
    plan = (1, 128, 8, 0, 1024, 1, 8, 1, 99 * 1024)
    monkeypatch.setattr(cuda_backend, "_plan", lambda *args: plan)
    monkeypatch.setattr(cuda_backend, "_gpu", lambda index: cuda_backend.Gpu())
    monkeypatch.setattr(cuda_backend, "_device_index", lambda device: 0)
    dev = torch.device("cuda")
    limit = cuda_backend.batch_limit("lstm", torch.bfloat16, 1024, False, True, cuda_backend.Gpu())
    assert limit > 0
    code, why = cuda_backend.algorithm("lstm", torch.bfloat16, limit, 1024, False, dev)
    assert code == 1 and "128 CTAs x 8 units, 99 KiB" in why and f"B={limit}" in why, why
    code, why = cuda_backend.algorithm("lstm", torch.bfloat16, limit + 1, 1024, False, dev)
    assert code == 2 and "cost model" in why, why
    with cuda_backend.flags(algo="persistent"):
        code, why = cuda_backend.algorithm("lstm", torch.bfloat16, limit + 1, 1024, False, dev)
        assert code == 1 and "forced" in why, why
    plan = (0,) * 9
    code, why = cuda_backend.algorithm("lstm", torch.bfloat16, 1, 1024, False, dev)
    assert code == 2 and "cannot run" in why, why
    with cuda_backend.flags(algo="persistent"):
        code, why = cuda_backend.algorithm("lstm", torch.bfloat16, 1, 1024, False, dev)
        assert code == 0 and "cannot run" in why, why


def test_tf32_follows_the_cudnn_rnn_setting():
    saved = torch.backends.cudnn.allow_tf32
    try:
        for value in (False, True):
            torch.backends.cudnn.allow_tf32 = value
            assert cuda_backend.tf32_allowed() is value
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def _lengths(mode: str, T: int, B: int) -> list[int] | None:
    if not mode.startswith("ragged"):
        return None
    pattern = [T, max(1, T // 2), 1, max(1, T - 1)]
    out = [pattern[b % len(pattern)] for b in range(B)]
    if B == 1:
        out = [max(1, T - 1)]
    return out


def _flip_valid(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse, along time, the valid prefix of every row of x (T, B, ...); the padding stays in place."""
    T, B = x.shape[:2]
    t = torch.arange(T, device=x.device).unsqueeze(1)
    n = torch.full((B,), T, device=x.device) if lengths is None else lengths.to(x.device)
    idx = torch.where(t < n.unsqueeze(0), n.unsqueeze(0) - 1 - t, t)
    idx = idx.view(T, B, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, idx)


def _run_rnnfast(cell, a, reverse):
    F = rnnfast.functional
    if cell == "gru":
        y, h = F.gru(a["gi"], a["h0"], a["w_hh"], a["b_hh"], a["lengths"], reverse, backend="cuda")
        return y, h, None
    if cell == "lstm":
        return F.lstm(
            a["gi"], a["h0"], a["c0"], a["w_hh"], a["b_hh"], None, a["lengths"], reverse, backend="cuda"
        )
    y, h = F.rnn(a["gi"], a["h0"], a["w_hh"], a["b_hh"], a["lengths"], reverse, cell[4:], backend="cuda")
    return y, h, None


def _run_torch_nn(cell, a, reverse):
    """torch.nn (cuDNN) on the op's problem; returns (y, h_n, c_n, leaves in the order of _leaves)."""
    T, B = a["gi"].shape[:2]
    H = a["h0"].shape[1]
    GH = common.GATES[cell] * H
    cls = {"gru": nn.GRU, "lstm": nn.LSTM}.get(cell)
    m = cls(GH, H) if cls else nn.RNN(GH, H, nonlinearity=cell[4:])
    m = m.to(device=a["gi"].device, dtype=a["gi"].dtype)
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.eye(GH))
        m.bias_ih_l0.zero_()
        m.weight_hh_l0.copy_(a["w_hh"])
        m.bias_hh_l0.copy_(a["b_hh"])
    lengths = a["lengths"]
    x = _flip_valid(a["gi"], lengths) if reverse else a["gi"]
    hx = (a["h0"].unsqueeze(0), a["c0"].unsqueeze(0)) if cell == "lstm" else a["h0"].unsqueeze(0)
    if lengths is not None:
        x = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    out, state = m(x, hx)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, total_length=T)
    y = _flip_valid(out, lengths) if reverse else out
    h_n, c_n = (state[0][0], state[1][0]) if cell == "lstm" else (state[0], None)
    leaves = [a["gi"], a["h0"], a["c0"], m.weight_hh_l0, m.bias_hh_l0]
    return y, h_n, c_n, leaves


def _leaves(a):
    return [a["gi"], a["h0"], a["c0"], a["w_hh"], a["b_hh"]]


GRAD_NAMES = ("dgi", "dh0", "dc0", "dw_hh", "db_hh")


def _grads(outs, leaves, upstream):
    """Gradients of Σ y·gy + h_n·ghn (+ c_n·gcn) w.r.t. the leaves that exist (None for the others)."""
    loss = sum((o.double() * g).sum() for o, g in zip(outs, upstream) if o is not None)
    present = [t for t in leaves if t is not None]
    got = iter(torch.autograd.grad(loss, present))
    return [next(got) if t is not None else None for t in leaves]


def _upstream(cell, T, B, H, device):
    g = torch.Generator().manual_seed(99 + T + B + H)
    gy = torch.randn(T, B, H, generator=g, dtype=torch.float64).to(device)
    ghn = torch.randn(B, H, generator=g, dtype=torch.float64).to(device)
    gcn = torch.randn(B, H, generator=g, dtype=torch.float64).to(device) if cell == "lstm" else None
    return gy, ghn, gcn


def _copy(a, dtype):
    return {
        k: (
            v.detach().to(dtype).requires_grad_()
            if isinstance(v, torch.Tensor) and v.is_floating_point()
            else v
        )
        for k, v in a.items()
    }


def _check(name, dtype, got, torch_val, want):
    """got within max(2 x torch.nn's error, floor) of the float64 value want."""
    want = want.double()
    torch_err = (torch_val.double() - want).abs().max().item() if want.numel() else 0.0
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    assert_close(name, got.double(), want, atol=max(2.0 * torch_err, FLOOR[dtype] * scale))


def _compare(cell, dtype, T, B, H, lengths, reverse):
    a64 = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=torch.float64, device="cuda")
    upstream = _upstream(cell, T, B, H, "cuda")
    ref = oracle(
        cell, a64["gi"], a64["h0"], a64["c0"], a64["w_hh"], a64["b_hh"], None, a64["lengths"], reverse
    )
    ref_grads = _grads(ref, _leaves(a64), upstream)

    ours_in = _copy(a64, dtype)
    ours = _run_rnnfast(cell, ours_in, reverse)
    ours_grads = _grads(ours, _leaves(ours_in), upstream)

    nn_in = _copy(a64, dtype)
    *nn_out, nn_leaves = _run_torch_nn(cell, nn_in, reverse)
    nn_grads = _grads(nn_out, nn_leaves, upstream)

    for name, got, tv, want in zip(("y", "h_n", "c_n"), ours, nn_out, ref):
        if want is not None:
            assert got.dtype == dtype, f"{name}: dtype {got.dtype}, expected {dtype}"
            _check(name, dtype, got, tv, want)
    for name, got, tv, want in zip(GRAD_NAMES, ours_grads, nn_grads, ref_grads):
        if want is not None:
            assert got is not None, f"{name}: no gradient"
            _check(name, dtype, got, tv, want)


@gpu
@needs_gpu
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("shape", SHAPES, ids=[case_id(T=t, B=b, H=h) for t, b, h in SHAPES])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("cell", CELLS)
def test_matches_fp64_within_torch_nn_error(cell, dtype, mode, shape, algo):
    T, B, H = shape
    _compare(cell, dtype, T, B, H, _lengths(mode, T, B), mode.endswith("reverse"))


@gpu
@needs_gpu
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_long_sequence(cell, dtype, algo):
    T, B, H = 1024, 3, 256
    _compare(cell, dtype, T, B, H, [T, 700, 1], reverse=False)


@gpu
@needs_gpu
@pytest.mark.usefixtures("no_tf32")
def test_zero_length_rows_and_no_bias(algo):
    """A row with length 0 keeps h0 (y all zero); b_hh absent. float32 against float64 directly."""
    for cell in CELLS:
        a64 = recurrence_inputs(
            cell, 5, 3, 40, lengths=[5, 0, 2], dtype=torch.float64, device="cuda", bias=False
        )
        ref = oracle(cell, a64["gi"], a64["h0"], a64["c0"], a64["w_hh"], None, None, a64["lengths"], True)
        a32 = _copy(a64, torch.float32)
        ours = _run_rnnfast(cell, a32, True)
        upstream = _upstream(cell, 5, 3, 40, "cuda")
        ref_grads = _grads(ref, _leaves(a64), upstream)
        ours_grads = _grads(ours, _leaves(a32), upstream)
        for name, got, want in zip(
            ("y", "h_n", "c_n") + GRAD_NAMES, list(ours) + ours_grads, list(ref) + ref_grads
        ):
            if want is not None:
                assert_close(f"{cell} {name}", got.double(), want, atol=2e-5)


@gpu
@needs_gpu
@pytest.mark.usefixtures("no_tf32")
def test_persistent_plan_covers_the_test_shapes():
    ok, why = cuda_backend.supports(torch.device("cuda"), torch.float32, {"cell": "gru", "B": 3, "H": 33})
    assert ok, why
    dev = torch.device("cuda")
    with cuda_backend.flags(algo="persistent"):
        for cell in CELLS:
            for dtype in DTYPES:
                for _T, B, H in SHAPES:
                    for backward in (False, True):
                        code, why = cuda_backend.algorithm(cell, dtype, B, H, backward, dev)
                        assert code == 1, f"{cell} {dtype} B={B} H={H} backward={backward}: {why}"
        # With K-chunked staging every cell's backward fits at H=1024 on an H100-sized GPU (132 SMs, 227 KiB).
        props = torch.cuda.get_device_properties(0)
        if props.multi_processor_count >= 132 and props.shared_memory_per_block_optin >= 232448:
            for dtype in DTYPES:
                for cell in CELLS:
                    code, why = cuda_backend.algorithm(cell, dtype, 16, 1024, True, dev)
                    assert code == 1, f"{cell} {dtype} H=1024 backward: {why}"


@gpu
@needs_gpu
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("cls", [rnnfast.GRU, rnnfast.LSTM, rnnfast.RNN])
def test_module_parity(cls, algo):
    torch.manual_seed(0)
    m = cls(12, 40, num_layers=2, bidirectional=True, backend="cuda").cuda()
    ref = m.to_torch()
    x = torch.randn(9, 4, 12, device="cuda", requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    lengths = torch.tensor([9, 3, 7, 1])
    for packed in (False, True):
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        inp_ref = pack_padded_sequence(x_ref, lengths, enforce_sorted=False) if packed else x_ref
        out, state = m(inp)
        out_ref, state_ref = ref(inp_ref)
        if packed:
            out, out_ref = out.data, out_ref.data
        hs = state if isinstance(state, tuple) else (state,)
        hs_ref = state_ref if isinstance(state_ref, tuple) else (state_ref,)
        assert_close(f"{cls.__name__} packed={packed} output", out, out_ref, atol=2e-5)
        for i, (h, hr) in enumerate(zip(hs, hs_ref)):
            assert_close(f"{cls.__name__} packed={packed} state[{i}]", h, hr, atol=2e-5)
        loss = out.sum() + sum(h.sum() for h in hs)
        loss_ref = out_ref.sum() + sum(h.sum() for h in hs_ref)
        grads = torch.autograd.grad(loss, [x, *m.parameters()])
        grads_ref = torch.autograd.grad(loss_ref, [x_ref, *ref.parameters()])
        names = ["x"] + [n for n, _ in m.named_parameters()]
        for n, g, gr in zip(names, grads, grads_ref):
            assert_close(f"{cls.__name__} packed={packed} d{n}", g, gr, atol=1e-4, rtol=1e-4)


def _fresh(args, seed):
    g = torch.Generator().manual_seed(seed)
    for v in args.values():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            v.copy_((torch.rand(v.shape, generator=g, dtype=torch.float64) - 0.5).to(v.dtype))


def _forward(cell, a, reverse=False):
    return cuda_backend.forward(
        cell, a["gi"], a["h0"], a["c0"], a["w_hh"], a["b_hh"], None, a["lengths"], reverse, True
    )


@gpu
@needs_gpu
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_graph_capture_forward(cell, algo):
    a = recurrence_inputs(
        cell, 16, 5, 64, lengths=[16, 9, 1, 16, 4], dtype=torch.float16, device="cuda", grad=False
    )
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture: build, plan cache, cuBLAS handles
        _forward(cell, a)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = _forward(cell, a)
    _fresh(a, seed=5)
    graph.replay()
    torch.cuda.synchronize()
    eager = _forward(cell, a)
    for name, got, want in zip(("y", "h_n", "c_n", "ws"), captured, eager):
        # ws is unspecified (NaN-poisoned) past each row's length in both runs: compare NaN as equal.
        torch.testing.assert_close(
            got, want, rtol=0, atol=0, equal_nan=True, msg=lambda m, n=name: f"{n}: {m}"
        )


@gpu
@needs_gpu
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_cuda_graph_capture_backward(cell, algo):
    """Forward and backward captured together, with lengths on the device: nothing in the backward copies
    between host and device (a copy from pageable memory would fail the capture)."""
    T, B, H = 12, 5, 48
    a = recurrence_inputs(cell, T, B, H, lengths=[12, 7, 1, 12, 3], dtype=torch.bfloat16, device="cuda")
    leaves = [t for t in _leaves(a) if t is not None]
    upstream = _upstream(cell, T, B, H, "cuda")

    def run():
        outs = _run_rnnfast(cell, a, reverse=True)
        return torch.autograd.grad(
            sum((o.float() * g.float()).sum() for o, g in zip(outs, upstream) if o is not None), leaves
        )

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        eager = run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    graph.replay()
    torch.cuda.synchronize()
    for i, (got, want) in enumerate(zip(captured, eager)):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=lambda m, i=i: f"grad {i}: {m}")


_BESIDE_STREAM = """
import threading, torch, rnnfast
from rnnfast.ops.recurrence import cuda as cuda_backend
from tests.utils import recurrence_inputs
a = recurrence_inputs("lstm", 64, 16, 1024, dtype=torch.bfloat16, device="cuda")
with cuda_backend.flags(algo="persistent"):
    code, why = cuda_backend.algorithm("lstm", torch.bfloat16, 16, 1024, True, torch.device("cuda"))
    assert code == 1, why
    print("plan:", why, flush=True)
    other = torch.cuda.Stream()
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    with torch.cuda.stream(other):  # keeps SMs busy while the cooperative grid starts
        for _ in range(200):
            x = (x @ x).clamp_(-1, 1)
    y, h, c = rnnfast.functional.lstm(a["gi"], a["h0"], a["c0"], a["w_hh"], a["b_hh"], backend="cuda")
    (y.float().sum() + h.float().sum() + c.float().sum()).backward()
    torch.cuda.synchronize()
print("done", flush=True)
"""


@gpu
@needs_gpu
def test_full_sm_persistent_kernel_beside_another_stream():
    """The cooperative grid at its largest (one CTA per SM, most of the shared memory: LSTM bf16 H=1024
    backward) completes while another stream keeps the SMs busy. In a subprocess under a timeout: a
    co-residency deadlock would hang, not fail."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _BESIDE_STREAM], capture_output=True, text=True, cwd=root, timeout=180
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"no progress in 180 s (deadlock?):\n{e.stdout}\n{e.stderr}") from None
    assert proc.returncode == 0 and "done" in proc.stdout, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


@gpu
@needs_gpu
@pytest.mark.usefixtures("no_tf32")
def test_two_streams_at_once(algo):
    cells = ("gru", "lstm")
    problems = [
        recurrence_inputs(
            c, 40, 7, 96 + 32 * i, lengths=None, dtype=torch.bfloat16, device="cuda", grad=False
        )
        for i, c in enumerate(cells)
    ]
    expected = [_forward(c, a) for c, a in zip(cells, problems)]
    torch.cuda.synchronize()
    streams = [torch.cuda.Stream() for _ in cells]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    results = [[] for _ in cells]
    for _ in range(3):
        for i, (c, a, s) in enumerate(zip(cells, problems, streams)):
            with torch.cuda.stream(s):
                results[i].append(_forward(c, a))
    torch.cuda.synchronize()
    for c, exp, runs in zip(cells, expected, results):
        for k, outs in enumerate(runs):
            for name, got, want in zip(("y", "h_n", "c_n", "ws"), outs, exp):
                torch.testing.assert_close(
                    got,
                    want,
                    rtol=0,
                    atol=0,
                    equal_nan=True,
                    msg=lambda m, n=f"{c} run {k} {name}": f"{n}: {m}",
                )


@gpu
@needs_gpu
@pytest.mark.usefixtures("no_tf32")
def test_binding_rejects_bad_inputs_by_name():
    ok, why = cuda_backend.supports(torch.device("cuda"), torch.float16, {"cell": "gru", "B": 2, "H": 8})
    assert ok, why
    a = recurrence_inputs("gru", 3, 2, 8, dtype=torch.float16, device="cuda", grad=False)
    stream = torch.cuda.current_stream().cuda_stream
    op = torch.ops.rnnfast_C.cuda_recurrence_fwd
    code = common.CELL_CODE["gru"]
    with pytest.raises(RuntimeError, match="h0: expected dtype"):
        op(
            a["gi"],
            a["h0"].float(),
            None,
            a["w_hh"],
            a["b_hh"],
            None,
            None,
            code,
            False,
            True,
            1,
            False,
            stream,
        )
    with pytest.raises(RuntimeError, match="w_hh: expected shape"):
        op(
            a["gi"],
            a["h0"],
            None,
            a["w_hh"][:, :4],
            a["b_hh"],
            None,
            None,
            code,
            False,
            True,
            1,
            False,
            stream,
        )
    with pytest.raises(RuntimeError, match="lengths: expected int64"):
        bad = torch.ones(2, dtype=torch.int32, device="cuda")
        op(a["gi"], a["h0"], None, a["w_hh"], a["b_hh"], None, bad, code, False, True, 1, False, stream)
    with pytest.raises(RuntimeError, match="w_hr"):
        op(a["gi"], a["h0"], None, a["w_hh"], a["b_hh"], a["w_hh"], None, code, False, True, 1, False, stream)
