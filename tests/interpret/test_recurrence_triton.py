"""Triton recurrence kernels under TRITON_INTERPRET=1 (CPU): the split step kernels (tiles of rows x
units, one launch per phase) against the plain-loop oracle in float64 and float32, float64 gradcheck
through rnnfast.functional, the drop-in modules against torch.nn, the launch grids and phases, the
schedule flags, and the configurations the backend refuses."""

import collections
import contextlib

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnfast
from rnnfast import backends
from rnnfast.kernels import launch
from rnnfast.ops.recurrence import triton as rec_triton
from tests.utils import CELLS, assert_close, case_id, oracle, recurrence_inputs, run_recurrence

# (T, B, H, lengths, reverse) through the split kernels (16 x 16 tiles here): H=1 and 33 (ragged last
# tile), 130 (nine tiles, ragged), B=1/3/17 (17: two row blocks), T=1 and 7, ragged lengths including an
# empty sequence, both directions.
SHAPES = [
    (1, 1, 1, None, False),
    (7, 1, 33, None, True),
    (7, 3, 33, [7, 2, 0], False),
    (1, 3, 130, [1, 0, 1], True),
    (4, 1, 130, None, False),
    (3, 17, 33, [3, 1, 2] * 5 + [0, 3], True),
]
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "T,B,H,lengths,reverse",
    SHAPES,
    ids=[case_id(T=s[0], B=s[1], H=s[2], L=int(s[3] is not None), R=int(s[4])) for s in SHAPES],
)
@pytest.mark.parametrize("cell", CELLS)
def test_forward_backward_vs_oracle(cell, T, B, H, lengths, reverse, dtype):
    a = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=dtype)
    got = run_recurrence(cell, a, reverse, "triton")
    want = oracle(cell, a["gi"], a["h0"], a["c0"], a["w_hh"], a["b_hh"], None, a["lengths"], reverse)
    tol = TOL[dtype]
    names = ("y", "h_n", "c_n")
    for name, g, w in zip(names, got, want):
        if w is not None:
            assert_close(name, g, w, atol=tol)
    if lengths is not None:
        invalid = torch.arange(T).unsqueeze(1) >= a["lengths"].unsqueeze(0)
        assert (got[0][invalid] == 0).all(), "y: expected exact zeros beyond each row's length"

    # Upstream gradients on every output, h_n included, so the gradient flowing into h0/c0 is checked
    # through both the outputs and the final state.
    gen = torch.Generator().manual_seed(7)
    ups = [torch.randn(w.shape, generator=gen, dtype=torch.float64).to(dtype) for w in want if w is not None]
    inputs = [a[k] for k in ("gi", "h0", "c0", "w_hh", "b_hh") if a[k] is not None]
    in_names = [k for k in ("gi", "h0", "c0", "w_hh", "b_hh") if a[k] is not None]
    g_got = torch.autograd.grad([o for o in got if o is not None], inputs, ups)
    g_want = torch.autograd.grad([o for o in want if o is not None], inputs, ups)
    for name, g, w in zip(in_names, g_got, g_want):
        assert_close("d" + name, g, w, atol=tol * 10)


@pytest.mark.parametrize("cell", CELLS)
def test_inference_forward(cell):
    """Without autograd the op runs with need_ws=False (nothing saved): same outputs."""
    a = recurrence_inputs(cell, 4, 3, 9, lengths=[4, 0, 2], dtype=torch.float64, grad=False)
    with torch.no_grad():
        got = run_recurrence(cell, a, True, "triton")
    want = oracle(cell, a["gi"], a["h0"], a["c0"], a["w_hh"], a["b_hh"], None, a["lengths"], True)
    for name, g, w in zip(("y", "h_n", "c_n"), got, want):
        if w is not None:
            assert_close(name, g, w, atol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("lengths,reverse", [(None, False), ([4, 2, 1], True)], ids=["full", "ragged-rev"])
def test_gradcheck(cell, lengths, reverse):
    a = recurrence_inputs(cell, 4, 3, 5, lengths=lengths, dtype=torch.float64)
    keys = [k for k in ("gi", "h0", "c0", "w_hh", "b_hh") if a[k] is not None]

    def f(*xs):
        kw = dict(a, **dict(zip(keys, xs)))
        return tuple(o for o in run_recurrence(cell, kw, reverse, "triton") if o is not None)

    assert torch.autograd.gradcheck(f, [a[k] for k in keys], fast_mode=True)


def _packed(x, lengths):
    return pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)


@pytest.mark.parametrize("cls", ["RNN", "GRU", "LSTM", "LSTM-proj"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_module_parity(cls, packed):
    """2 layers, bidirectional, with h0: outputs, final states and every parameter's gradient."""
    T, B, I, H = 4, 3, 5, 20  # H: two tiles of units per program row block
    kw = dict(num_layers=2, bidirectional=True, dtype=torch.float64)
    if cls == "LSTM-proj":
        cls, kw["proj_size"] = "LSTM", 4
    ours = getattr(rnnfast, cls)(I, H, backend="triton", **kw)
    theirs = getattr(torch.nn, cls)(I, H, **kw)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(4, B, kw.get("proj_size", H), dtype=torch.float64)
    hx = (h0, torch.randn(4, B, H, dtype=torch.float64)) if cls == "LSTM" else h0
    lengths = [4, 1, 3]
    inp = _packed(x, lengths) if packed else x
    out_o, st_o = ours(inp, hx)
    out_t, st_t = theirs(inp, hx)
    if packed:
        out_o, _ = pad_packed_sequence(out_o)
        out_t, _ = pad_packed_sequence(out_t)
    assert_close("output", out_o, out_t, atol=1e-10)
    st_o = st_o if cls == "LSTM" else (st_o,)
    st_t = st_t if cls == "LSTM" else (st_t,)
    for name, s_o, s_t in zip(("h_n", "c_n"), st_o, st_t):
        assert_close(name, s_o, s_t, atol=1e-10)
    loss_o = out_o.pow(2).sum() + sum(s.sum() for s in st_o)
    loss_t = out_t.pow(2).sum() + sum(s.sum() for s in st_t)
    loss_o.backward()
    loss_t.backward()
    for (name, p_o), p_t in zip(ours.named_parameters(), theirs.parameters()):
        assert_close("grad " + name, p_o.grad, p_t.grad, atol=1e-9)


# (T, B, H, P, lengths, reverse): P < H within one tile, P > H, both across tiles.
PROJ_SHAPES = [(1, 1, 1, 1, None, False), (5, 3, 33, 20, [5, 2, 0], True), (3, 2, 20, 70, [1, 3], False)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "T,B,H,P,lengths,reverse",
    PROJ_SHAPES,
    ids=[case_id(T=s[0], B=s[1], H=s[2], P=s[3], L=int(s[4] is not None), R=int(s[5])) for s in PROJ_SHAPES],
)
def test_lstm_projection_vs_oracle(T, B, H, P, lengths, reverse, dtype):
    a = recurrence_inputs("lstm", T, B, H, P=P, lengths=lengths, dtype=dtype)
    got = run_recurrence("lstm", a, reverse, "triton")
    want = oracle("lstm", a["gi"], a["h0"], a["c0"], a["w_hh"], a["b_hh"], a["w_hr"], a["lengths"], reverse)
    tol = TOL[dtype]
    for name, g, w in zip(("y", "h_n", "c_n"), got, want):
        assert_close(name, g, w, atol=tol)
    gen = torch.Generator().manual_seed(9)
    ups = [torch.randn(w.shape, generator=gen, dtype=torch.float64).to(dtype) for w in want]
    keys = ("gi", "h0", "c0", "w_hh", "b_hh", "w_hr")
    g_got = torch.autograd.grad(got, [a[k] for k in keys], ups)
    g_want = torch.autograd.grad(want, [a[k] for k in keys], ups)
    for name, g, w in zip(keys, g_got, g_want):
        assert_close("d" + name, g, w, atol=tol * 10)


def test_lstm_projection_gradcheck():
    a = recurrence_inputs("lstm", 4, 3, 5, P=3, lengths=[4, 1, 2], dtype=torch.float64)
    keys = ("gi", "h0", "c0", "w_hh", "b_hh", "w_hr")

    def f(*xs):
        return run_recurrence("lstm", dict(a, **dict(zip(keys, xs))), True, "triton")

    assert torch.autograd.gradcheck(f, [a[k] for k in keys], fast_mode=True)


def test_refuses_what_int32_indexing_cannot_address():
    ok, why = rec_triton.supports(
        torch.device("cuda"), torch.float32, {"cell": "lstm", "B": 1 << 20, "H": 1024}
    )
    assert not ok and "B·G·H" in why and "int32" in why


def test_refuses_float64_on_cuda():
    ok, why = rec_triton.supports(torch.device("cuda"), torch.float64, {"cell": "gru", "B": 1, "H": 8})
    assert not ok and "float64" in why


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_refuses_half_under_interpreter(dtype):
    ok, why = rec_triton.supports(torch.device("cpu"), dtype, {"cell": "gru", "H": 8, "P": 0})
    assert not ok and "interpreter" in why


def test_auto_does_not_pick_unverified_triton():
    a = recurrence_inputs("gru", 2, 2, 4, dtype=torch.float32)
    sizes = {"cell": "gru", "T": 2, "B": 2, "H": 4, "P": 0, "lengths": False, "reverse": False}
    assert backends.resolve("recurrence", a["gi"].device, a["gi"].dtype, sizes, "auto") != "triton"


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_non_contiguous_inputs(cell):
    """Strided gi (batch-first storage), transposed W_hh storage and a strided h0 give the same results."""
    a = recurrence_inputs(cell, 4, 3, 9, lengths=[4, 2, 3], dtype=torch.float64, grad=False)
    strided = dict(a)
    strided["gi"] = a["gi"].transpose(0, 1).contiguous().transpose(0, 1)
    strided["w_hh"] = a["w_hh"].t().contiguous().t()
    strided["h0"] = torch.stack([a["h0"], a["h0"]], -1)[..., 0]
    assert not any(strided[k].is_contiguous() for k in ("gi", "w_hh", "h0"))
    got = run_recurrence(cell, strided, False, "triton")
    want = oracle(cell, a["gi"], a["h0"], a["c0"], a["w_hh"], a["b_hh"], None, a["lengths"], False)
    for name, g, w in zip(("y", "h_n", "c_n"), got, want):
        if w is not None:
            assert_close(name, g, w, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# Launches: grids and phases, read from the launches themselves.


def _launches(cell, T, B, H, P=0, grad=True):
    a = recurrence_inputs(cell, T, B, H, P=P, dtype=torch.float64, grad=grad)
    with launch.record_launches() as log:
        out = [o for o in run_recurrence(cell, a, False, "triton") if o is not None]
        fwd = list(log)
        if grad:
            torch.autograd.grad(out, [a["gi"]], [torch.ones_like(o) for o in out])
    return fwd, log[len(fwd) :]


def test_batch_of_one_spreads_over_programs():
    """B=1, H=128: the hidden units are split over several programs in every launch."""
    fwd, bwd = _launches("gru", 2, 1, 128)
    assert fwd and bwd
    for name, grid in fwd + bwd:
        assert grid[0] >= 4, f"{name}: grid {grid} at B=1, H=128: expected >= 4 programs"


@pytest.mark.parametrize("cell,P", [("gru", 0), ("lstm", 0), ("lstm", 20)], ids=["gru", "lstm", "lstm-proj"])
def test_one_launch_per_phase(cell, P):
    """Per-step schedule: T launches forward (2T with a projection), T+1 backward (2T+1), each over
    every tile of its phase: 16 x 16 tiles of B=17 rows (2 row blocks) x H=33 units (3 tiles) or
    P=20 columns (2 tiles)."""
    T, B, H = 3, 17, 33
    fwd, bwd = _launches(cell, T, B, H, P=P)
    names = {n for n, _ in fwd + bwd}
    assert names == {"recurrence_fwd_kernel", "recurrence_bwd_kernel"}, names
    units, cols = 2 * 3, 2 * 2
    if P:
        assert [g[0] for _, g in fwd] == [units, cols] * T
        assert [g[0] for _, g in bwd] == [cols, units] * T + [cols]
    else:
        assert [g[0] for _, g in fwd] == [units] * T
        assert [g[0] for _, g in bwd] == [units] * (T + 1)


@pytest.mark.parametrize("cell,P", [("rnn_tanh", 0), ("gru", 0), ("lstm", 0), ("lstm", 5)])
def test_all_phases_in_one_launch(cell, P, monkeypatch):
    """The persistent schedule's kernel loop (every phase in one launch, grid barrier between phases)
    with a one-program grid, the only grid the interpreter can run it with (a barrier never waits for
    itself): same results as the oracle."""
    monkeypatch.setattr(rec_triton, "choose", lambda *a, **k: ("persistent", "test"))
    a = recurrence_inputs(cell, 4, 3, 9, P=P, lengths=[4, 1, 2], dtype=torch.float64)
    with launch.record_launches() as log:
        got = run_recurrence(cell, a, True, "triton")
        want = oracle(cell, a["gi"], a["h0"], a["c0"], a["w_hh"], a["b_hh"], a["w_hr"], a["lengths"], True)
        keys = [k for k in ("gi", "h0", "c0", "w_hh", "b_hh", "w_hr") if a[k] is not None]
        ups = [torch.randn(w.shape, dtype=torch.float64) for w in want if w is not None]
        g_got = torch.autograd.grad([o for o in got if o is not None], [a[k] for k in keys], ups)
    assert [g for _, g in log] == [(1,), (1,)], log
    for name, g, w in zip(("y", "h_n", "c_n"), got, want):
        if w is not None:
            assert_close(name, g, w, atol=1e-10)
    g_want = torch.autograd.grad([o for o in want if o is not None], [a[k] for k in keys], ups)
    for k, g, w in zip(keys, g_got, g_want):
        assert_close("d" + k, g, w, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# Schedules


def test_flags_rejects_unknown_schedule():
    with pytest.raises(ValueError, match="schedule: expected one of"):
        with rec_triton.flags(schedule="fused"):
            pass


def test_flags_restores_previous_schedule():
    with rec_triton.flags(schedule="step"):
        with rec_triton.flags(schedule="graph"):
            assert rec_triton.forced_schedule() == "graph"
        assert rec_triton.forced_schedule() == "step"
    assert rec_triton.forced_schedule() is None


@pytest.mark.parametrize("schedule,why", [("graph", "CUDA graphs"), ("persistent", "one after another")])
def test_forced_schedule_the_interpreter_cannot_run(schedule, why):
    a = recurrence_inputs("gru", 2, 1, 8, dtype=torch.float64, grad=False)
    with rec_triton.flags(schedule=schedule):
        ok, reason = rec_triton.supports(torch.device("cpu"), torch.float64, {"cell": "gru", "B": 1, "H": 8})
        assert not ok and why in reason
        with pytest.raises(RuntimeError, match=f"schedule='{schedule}'.*{why}"):
            run_recurrence("gru", a, False, "triton")
        # The launcher itself, called without asking supports() first.
        args = (a["gi"], a["h0"], None, a["w_hh"], a["b_hh"], None, None, False, False)
        with pytest.raises(RuntimeError, match=f"schedule='{schedule}' cannot run: .*{why}"):
            rec_triton.forward("gru", *args)


def test_forced_step_schedule_runs_under_the_interpreter():
    a = recurrence_inputs("gru", 3, 2, 8, dtype=torch.float64, grad=False)
    with rec_triton.flags(schedule="step"):
        got = run_recurrence("gru", a, False, "triton")
    want = oracle("gru", a["gi"], a["h0"], None, a["w_hh"], a["b_hh"], None, None, False)
    assert_close("y", got[0], want[0], atol=1e-10)


def _choose(fit, T=64, B=1, H=256, seen=True):
    return rec_triton.choose("gru", torch.bfloat16, T, B, H, H, False, torch.device("cuda"), fit, seen)


def test_graph_only_from_the_second_call_of_a_shape():
    """A shape seen once (one more sequence length) is never captured unless forced."""
    name, why = _choose(lambda: (False, "no"), seen=False)
    assert name == "step" and "first call" in why
    with rec_triton.flags(schedule="graph"):
        assert _choose(lambda: (False, "no"), seen=False)[0] == "graph"


def test_persistent_needs_a_resident_grid():
    """The choice on a CUDA device (decided without one): a grid that cannot be resident is never
    chosen, and forcing it raises with the reason the residency check gave."""

    def no_fit():
        return False, "300 programs > 264 resident"

    assert _choose(no_fit)[0] in ("step", "graph")
    with rec_triton.flags(schedule="persistent"), pytest.raises(RuntimeError, match="300 programs > 264"):
        _choose(no_fit)


def test_no_graph_of_our_own_inside_a_capture(monkeypatch):
    """Inside a caller's capture the per-step launches go into the caller's graph, forced or not."""
    monkeypatch.setattr(rec_triton, "_capturing", lambda: True)
    assert _choose(lambda: (False, "no"))[0] == "step"
    with rec_triton.flags(schedule="graph"):
        name, why = _choose(lambda: (True, "yes"))
    assert name == "step" and "capture" in why


def test_cost_model_picks_the_cheapest_runnable_schedule():
    est = rec_triton.estimate("gru", torch.bfloat16, 64, 1, 256, 256, False)
    name, why = _choose(lambda: (True, "fits"))
    assert est[name] == min(est[s] for s in rec_triton.SCHEDULES), (name, est)
    assert "cost model" in why


def test_resident_programs_from_the_compiled_kernel(monkeypatch):
    """Residency from a kernel's registers, shared memory and warps against an H100's per-SM limits:
    128 registers x 4 warps use 16 Ki of the 64 Ki registers of an SM, so 4 programs fit per SM."""

    class Compiled:
        n_regs, metadata = 128, type("M", (), {"shared": 16384, "num_warps": 4})

        def _init_handles(self):
            pass

    class Props:
        regs_per_multiprocessor = 65536
        max_threads_per_multi_processor = 2048
        shared_memory_per_multiprocessor = 228 * 1024
        multi_processor_count = 132

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    n, why = launch.resident_programs(Compiled(), torch.device("cuda"))
    assert n == 4 * 132 and "bound by registers" in why
    Compiled.metadata.shared = 100 * 1024  # two programs' shared memory (+1 KiB each) fill an SM
    n, why = launch.resident_programs(Compiled(), torch.device("cuda"))
    assert n == 2 * 132 and "bound by shared memory" in why


@pytest.mark.parametrize("cell,P", [("gru", 0), ("lstm", 4)], ids=["gru", "lstm-proj"])
def test_graph_schedule_buffers(cell, P, monkeypatch):
    """The graph schedule's bookkeeping, with a stand-in for CUDA graphs that records the launches made
    during capture and reruns them on replay: the first call runs directly and captures; later calls
    with new inputs of the same shapes only copy in, replay and copy out, and match the oracle."""

    class Graph:
        def __init__(self):
            self.launches = []

        def replay(self):
            for kernel, grid, args, kwargs in self.launches:
                kernel[grid](*args, **kwargs)

    capturing: list[Graph] = []

    @contextlib.contextmanager
    def capture(graph):
        capturing.append(graph)
        yield
        capturing.pop()

    direct = launch.run

    def run(kernel, grid, *args, **kwargs):
        if capturing:
            capturing[-1].launches.append((kernel, grid, args, kwargs))
            return None
        return direct(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    monkeypatch.setattr(launch, "run", run)
    monkeypatch.setattr(rec_triton, "choose", lambda *a, **k: ("graph", "test"))
    monkeypatch.setattr(rec_triton, "_GRAPHS", collections.OrderedDict())
    for seed in range(3):
        torch.manual_seed(seed)
        a = recurrence_inputs(cell, 3, 17, 20, P=P, lengths=[3, 1, 2] * 5 + [0, 3], dtype=torch.float64)
        keys = [k for k in ("gi", "h0", "c0", "w_hh", "b_hh", "w_hr") if a[k] is not None]
        got = [o for o in run_recurrence(cell, a, seed == 2, "triton") if o is not None]
        want = oracle(cell, *(a[k] for k in ("gi", "h0", "c0", "w_hh", "b_hh", "w_hr", "lengths")), seed == 2)
        want = [o for o in want if o is not None]
        ups = [torch.randn(w.shape, dtype=torch.float64) for w in want]
        for name, g, w in zip(("y", "h_n", "c_n"), got, want):
            assert_close(f"{name} (call {seed})", g, w, atol=1e-10)
        g_got = torch.autograd.grad(got, [a[k] for k in keys], ups)
        g_want = torch.autograd.grad(want, [a[k] for k in keys], ups)
        for k, g, w in zip(keys, g_got, g_want):
            assert_close(f"d{k} (call {seed})", g, w, atol=1e-9)
    # One graph per direction and per `reverse` value; calls 0 and 1 share theirs.
    assert len(rec_triton._GRAPHS) == 4
