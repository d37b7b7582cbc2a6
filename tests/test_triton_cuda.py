"""Triton backend on a CUDA GPU: fp32/fp16/bf16 against a float64 reference, with the error bound set by
torch's own error at that dtype (cuDNN for the RNN modules, the unfused PyTorch ops for the tree-LSTM):
ours ≤ 2 × torch's + a small floor. Every GPU test skips with a visible reason without CUDA.

``test_kernels_compile_for_sm90`` needs no GPU: it compiles every kernel specialisation the launchers use
for an H100 (sm_90) target, catching frontend and lowering errors on CPU-only machines.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnfast
from rnnfast import functional
from rnnfast.ops.tree_lstm import reference as tree_ref
from rnnfast.ops.tree_lstm_reduce import reference as reduce_ref
from tests.utils import CELLS, assert_close, case_id, oracle, recurrence_inputs, run_recurrence

triton = pytest.importorskip("triton", reason="triton is not installed")

cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DT_IDS = ["f32", "f16", "bf16"]
# Absolute floor added to the bound, for outputs where torch happens to be (near) exact.
FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _err(got, want) -> float:
    return (got.double().cpu() - want.double().cpu()).abs().max().item() if want.numel() else 0.0


def _assert_within(name, ours, torchs, dtype):
    assert ours == ours, f"{name}: NaN in the Triton result"
    bound = 2 * torchs + FLOOR[dtype]
    assert ours <= bound, f"{name}: error {ours:.3e} > 2 × torch's {torchs:.3e} + {FLOOR[dtype]:g}"


# --------------------------------------------------------------------------------------------------
# Modules: rnnfast.<RNN|GRU|LSTM>(backend="triton") vs torch.nn (cuDNN) at the same dtype, both vs fp64.

MODULE_CASES = [
    # (T, B, I, H, layers, bidirectional, packed)
    (5, 3, 7, 33, 1, False, False),
    (64, 37, 32, 256, 2, True, False),
    (128, 16, 64, 300, 1, True, True),
    (200, 1, 16, 1024, 1, False, False),
]


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize(
    "T,B,I,H,layers,bidir,packed",
    MODULE_CASES,
    ids=[case_id(T=c[0], B=c[1], I=c[2], H=c[3], L=c[4], D=int(c[5]) + 1, P=int(c[6])) for c in MODULE_CASES],
)
@pytest.mark.parametrize("cls", ["RNN", "GRU", "LSTM", "LSTM-proj"])
def test_module_vs_cudnn(cls, T, B, I, H, layers, bidir, packed, dtype):
    dev = "cuda"
    kw = dict(bidirectional=bidir)
    if cls == "LSTM-proj":
        cls, kw["proj_size"] = "LSTM", H // 2
    ref = getattr(torch.nn, cls)(I, H, layers, dtype=torch.float64, **kw)
    # Round the parameters and inputs to the dtype first: the comparison measures the arithmetic only.
    state = {k: v.to(dtype).double() for k, v in ref.state_dict().items()}
    ref.load_state_dict(state)
    ours = getattr(rnnfast, cls)(I, H, layers, backend="triton", device=dev, dtype=dtype, **kw)
    ours.load_state_dict(state)
    theirs = getattr(torch.nn, cls)(I, H, layers, device=dev, dtype=dtype, **kw)
    theirs.load_state_dict(state)
    x64 = torch.randn(T, B, I, dtype=torch.float64).to(dtype).double()
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T

    def run(m, dt, device):
        x = x64.to(device=device, dtype=dt, copy=True).requires_grad_()
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        out, st = m(inp)
        if packed:
            out, _ = pad_packed_sequence(out, total_length=T)
        st = st if cls == "LSTM" else (st,)
        g = torch.Generator().manual_seed(5)
        up = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device=device, dtype=dt)
        (out * up).sum().add(sum(s.sum() for s in st)).backward()
        return [out, *st, x.grad] + [p.grad for p in m.parameters()]

    want = run(ref, torch.float64, "cpu")
    got = run(ours, dtype, dev)
    torch_got = run(theirs, dtype, dev)
    names = (
        ["output", "h_n", "c_n"][: 3 if cls == "LSTM" else 2]
        + ["dx"]
        + [n for n, _ in ref.named_parameters()]
    )
    for name, o, t, w in zip(names, got, torch_got, want):
        _assert_within(name, _err(o, w), _err(t, w), dtype)


# --------------------------------------------------------------------------------------------------
# The op itself in fp32 with TF32 off: close to the fp64 oracle, every cell, lengths and reverse.


@cuda
@pytest.mark.parametrize("T,B,H,ragged,reverse", [(1, 1, 1, False, False), (9, 19, 70, True, True)])
@pytest.mark.parametrize("cell", CELLS)
def test_op_fp32_vs_oracle(cell, T, B, H, ragged, reverse, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    lengths = torch.randint(0, T + 1, (B,)).tolist() if ragged else None
    a64 = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=torch.float64)
    a = {
        k: (v.detach().float().cuda().requires_grad_() if torch.is_tensor(v) and v.is_floating_point() else v)
        for k, v in a64.items()
    }
    if a["lengths"] is not None:
        a["lengths"] = a["lengths"].cuda()
    keys = [k for k in ("gi", "h0", "c0", "w_hh", "b_hh") if a[k] is not None]
    got = [o for o in run_recurrence(cell, a, reverse, "triton") if o is not None]
    want = [
        o
        for o in oracle(
            cell, *(a64[k] for k in ("gi", "h0", "c0", "w_hh", "b_hh", "w_hr", "lengths")), reverse
        )
        if o is not None
    ]
    for name, g, w in zip(("y", "h_n", "c_n"), got, want):
        assert_close(name, g.double().cpu(), w.detach(), atol=1e-4)
    ups = [torch.randn(w.shape, dtype=torch.float64) for w in want]
    g_got = torch.autograd.grad(list(got), [a[k] for k in keys], [u.float().cuda() for u in ups])
    g_want = torch.autograd.grad(want, [a64[k] for k in keys], ups)
    for k, g, w in zip(keys, g_got, g_want):
        assert_close("d" + k, g.double().cpu(), w, atol=1e-3)


# --------------------------------------------------------------------------------------------------
# The three schedules launch the same kernels over the same tiles: bit-identical results.


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("cell,P", [("rnn_tanh", 0), ("gru", 0), ("lstm", 0), ("lstm", 48)])
def test_schedules_agree_bit_for_bit(cell, P, dtype):
    from rnnfast.ops.recurrence import triton as rec_triton

    T, B, H = 11, 5, 96
    a = recurrence_inputs(cell, T, B, H, P=P, lengths=[11, 3, 7, 0, 11], dtype=dtype, device="cuda")
    keys = [k for k in ("gi", "h0", "c0", "w_hh", "b_hh", "w_hr") if a[k] is not None]
    ups = None

    def run(schedule):
        nonlocal ups
        with rec_triton.flags(schedule=schedule):
            outs = [o for o in run_recurrence(cell, a, True, "triton") if o is not None]
            if ups is None:
                ups = [torch.randn_like(o) for o in outs]
            grads = torch.autograd.grad(outs, [a[k] for k in keys], ups)
        return [o.detach() for o in outs] + list(grads)

    want = run("step")
    sizes = {"cell": cell, "T": T, "B": B, "H": H, "P": P, "lengths": True, "reverse": True}
    for schedule in ("graph", "persistent"):
        with rec_triton.flags(schedule=schedule):
            ok, why = rec_triton.supports(torch.device("cuda"), dtype, sizes)
        assert ok, f"{schedule}: {why}"
        for call in range(2):  # graph: the capture, then a replay
            for i, (g, w) in enumerate(zip(run(schedule), want)):
                assert torch.equal(g, w), f"{schedule} call {call}: output {i} differs from the step schedule"


# --------------------------------------------------------------------------------------------------
# Tree-LSTM composition and the fused reduce vs the unfused PyTorch ops at the same dtype.


def _r(*shape, dtype, scale=1.0):
    return ((torch.rand(*shape, dtype=torch.float64) * 2 - 1) * scale).to(dtype).double()


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("R,H,HT", [(1, 1, 0), (64, 300, 64), (517, 300, 0), (4096, 128, 32)])
def test_reduce_vs_torch(R, H, HT, dtype):
    s = 1.0 / H**0.5
    args64 = [
        _r(R, H, dtype=dtype),
        _r(R, H, dtype=dtype),
        _r(R, H, dtype=dtype),
        _r(R, H, dtype=dtype),
        _r(5 * H, H, dtype=dtype, scale=s),
        _r(5 * H, dtype=dtype),
        _r(5 * H, H, dtype=dtype, scale=s),
        _r(R, HT, dtype=dtype) if HT else None,
        _r(5 * H, HT, dtype=dtype, scale=1 / max(HT, 1) ** 0.5) if HT else None,
    ]
    ups = [torch.randn(R, H, dtype=torch.float64) for _ in range(2)]

    def run(fn, dt, dev):
        xs = [None if t is None else t.to(device=dev, dtype=dt, copy=True).requires_grad_() for t in args64]
        outs = fn(*xs)
        live = [t for t in xs if t is not None]
        grads = torch.autograd.grad(outs, live, [u.to(device=dev, dtype=dt) for u in ups])
        return list(outs) + list(grads)

    want = run(reduce_ref.tree_lstm_reduce, torch.float64, "cpu")
    got = run(lambda *t: functional.tree_lstm_reduce(*t, backend="triton"), dtype, "cuda")
    torch_got = run(reduce_ref.tree_lstm_reduce, dtype, "cuda")
    names = ["h", "c", "dh_l", "dc_l", "dh_r", "dc_r", "dw_l", "db_l", "dw_r"] + (
        ["dh_track", "dw_t"] if HT else []
    )
    for name, o, t, w in zip(names, got, torch_got, want):
        _assert_within(name, _err(o, w), _err(t, w), dtype)


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("R,H", [(1, 1), (333, 300)])
def test_tree_lstm_vs_torch(R, H, dtype):
    args64 = [_r(R, 5 * H, dtype=dtype, scale=2.0), _r(R, H, dtype=dtype), _r(R, H, dtype=dtype)]
    ups = [torch.randn(R, H, dtype=torch.float64) for _ in range(2)]

    def run(fn, dt, dev):
        xs = [t.to(device=dev, dtype=dt, copy=True).requires_grad_() for t in args64]
        outs = fn(*xs)
        return list(outs) + list(torch.autograd.grad(outs, xs, [u.to(device=dev, dtype=dt) for u in ups]))

    want = run(tree_ref.tree_lstm, torch.float64, "cpu")
    got = run(lambda *t: functional.tree_lstm(*t, backend="triton"), dtype, "cuda")
    torch_got = run(tree_ref.tree_lstm, dtype, "cuda")
    for name, o, t, w in zip(["h", "c", "dlstm_in", "dc_l", "dc_r"], got, torch_got, want):
        _assert_within(name, _err(o, w), _err(t, w), dtype)


# --------------------------------------------------------------------------------------------------
# Compile check for an H100 target: runs on CPU-only machines.


def _cuobjdump() -> str | None:
    import os
    import shutil

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return bundled if os.path.exists(bundled) else shutil.which("cuobjdump")


def _resources(cubin: bytes) -> dict[str, int]:
    """REG, STACK, LOCAL, SHARED of the one function in ``cubin``, as ``cuobjdump -res-usage`` reads them
    from the ELF's metadata (spilled registers live in the stack frame / local memory)."""
    import re
    import subprocess
    import tempfile

    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump is neither bundled with triton nor on PATH: cannot read spills")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", out)}


def _compile(fn, pointers: dict, scalars: dict, constexprs: dict, **options):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(fn.arg_names)
    sig = {**pointers, **{k: "i32" for k in scalars}, **{k: "constexpr" for k in constexprs}}
    assert set(sig) == set(names), f"signature mismatch: {sorted(set(names) ^ set(sig))}"
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def _assert_no_spills(what: str, kernel) -> dict[str, int]:
    res = _resources(kernel.asm["cubin"])
    assert res.get("STACK", 0) == 0 and res.get("LOCAL", 0) == 0, f"{what}: spills at sm_90: {res}"
    return res


def _recurrence_cases():
    """(cell, direction, config) for every config the launcher can pick for that cell and direction."""
    from rnnfast.ops.recurrence import triton as rec_triton

    return [
        pytest.param(
            cell, backward, cfg, id=f"{cell}-{'bwd' if backward else 'fwd'}-{cfg.block_h}x{cfg.block_k}"
        )
        for cell in ("rnn_tanh", "rnn_relu", "gru", "lstm", "lstm-proj")
        for backward in (False, True)
        for cfg in rec_triton.configs_in_use(backward, cell == "lstm-proj")
    ]


# dtype ids: fp32 with TF32 dots (torch's default) and exact fp32 (allow_tf32 off), fp16, bf16.
COMPILE_DTYPES = {"fp32-tf32": ("fp32", "tf32"), "fp32": ("fp32", "ieee"), "fp16": ("fp16", "ieee")}
COMPILE_DTYPES["bf16"] = ("bf16", "ieee")


@pytest.mark.slow
@pytest.mark.parametrize("dt", list(COMPILE_DTYPES))
@pytest.mark.parametrize("cell,backward,cfg", _recurrence_cases())
def test_recurrence_kernels_compile_for_sm90_without_spills(cell, backward, cfg, dt):
    """Each recurrence kernel, every cell, dtype and tile configuration the launcher uses, with the
    launcher's warps and stages. The per-step and persistent schedules launch the same binary (the
    grid barrier is a runtime branch), so this covers both; the barrier's release add and acquire load
    must be in it."""
    from rnnfast.kernels import recurrence as K
    from rnnfast.ops.recurrence import common

    proj = cell == "lstm-proj"
    cell = "lstm" if proj else cell
    code, G, S = common.CELL_CODE[cell], common.GATES[cell], common.SAVED[cell]
    dt, id_prec = COMPILE_DTYPES[dt]
    opts = cfg.launch_options()
    warps, stages = opts.pop("num_warps"), opts.pop("num_stages")
    scalars = {"q0": 0, "q1": 0, "T": 0, "B": 0, "H": 0, "N": 0}
    if not backward:
        io = {"gi_ptr": dt, "w_ptr": dt, "b_ptr": dt, "wr_ptr": dt, "len_ptr": "i64", "y_ptr": dt}
        io.update({k: "fp32" for k in ("ws_ptr", "hbuf_ptr", "cbuf_ptr", "ubuf_ptr")}, count_ptr="i32")
        fn = K.recurrence_fwd_kernel
        consts = dict(CELL=code, G=G, S=S, HAS_BIAS=True, HAS_LEN=True, REVERSE=False, NEED_WS=S > 0)
    else:
        io = {"gy_ptr": dt, "w_ptr": dt, "wr_ptr": dt, "len_ptr": "i64", "y_ptr": dt, "dhr_ptr": "fp32"}
        io.update(
            {k: "fp32" for k in ("hprev_ptr", "cprev_ptr", "ws_ptr", "dgi_ptr", "dgh_ptr", "dhbuf_ptr")}
        )
        io.update(dcbuf_ptr="fp32", count_ptr="i32")
        fn = K.recurrence_bwd_kernel
        consts = dict(CELL=code, G=G, S=S, HAS_LEN=True, REVERSE=True)
    # The backward's dots run on fp32 operands: TF32 or exact for every input dtype.
    for prec in (id_prec,) if dt == "fp32" or not backward else ("tf32", "ieee"):
        kernel = _compile(
            fn,
            {k: "*" + v for k, v in io.items()},
            scalars,
            dict(consts, PROJ=proj, PREC=prec, **opts),
            num_warps=warps,
            num_stages=stages,
        )
        _assert_no_spills(f"{fn.__name__} {cell}{'-proj' if proj else ''} {dt}/{prec} {cfg}", kernel)
        ptx = kernel.asm["ptx"]
        assert "atom.global.gpu.acq_rel.add" in ptx and "ld.global.gpu.acquire" in ptx, (
            "the grid barrier's release add / acquire load are missing from the PTX"
        )


@pytest.mark.slow
@pytest.mark.parametrize("dt", ["fp32", "fp16", "bf16"])
def test_tree_lstm_kernels_compile_for_sm90_without_spills(dt):
    from rnnfast.kernels import tree_lstm as TK
    from rnnfast.ops.tree_lstm_reduce import triton as reduce_launcher

    prec = "tf32" if dt == "fp32" else "ieee"
    kernels = {
        "tree_lstm fwd": _compile(
            TK.tree_lstm_fwd_kernel,
            {k: "*" + dt for k in ("x_ptr", "cl_ptr", "cr_ptr", "h_ptr", "c_ptr")},
            {"R": 0, "H": 0},
            dict(BLOCK_R=16, BLOCK_H=128),
        ),
        "tree_lstm bwd": _compile(
            TK.tree_lstm_bwd_kernel,
            {
                **{
                    k: "*" + dt
                    for k in ("gh_ptr", "gc_ptr", "cl_ptr", "cr_ptr", "c_ptr", "dcl_ptr", "dcr_ptr")
                },
                "x_ptr": "*fp32",
                "d_ptr": "*fp32",
            },
            {"R": 0, "H": 0},
            dict(BLOCK_R=16, BLOCK_H=128),
        ),
    }
    names = ("hl_ptr", "cl_ptr", "hr_ptr", "cr_ptr", "wl_ptr", "bl_ptr", "wr_ptr", "ht_ptr", "wt_ptr")
    kernels["tree_lstm_reduce fwd"] = _compile(
        TK.tree_lstm_reduce_fwd_kernel,
        {**{k: "*" + dt for k in names + ("h_ptr", "c_ptr")}, "ws_ptr": "*fp32"},
        {"R": 0, "H": 0, "HT": 0},
        dict(
            HAS_BIAS=True,
            HAS_TRACK=True,
            BLOCK_R=16,
            BLOCK_H=32,
            BLOCK_K=reduce_launcher.BLOCK_K_MAX,
            PREC=prec,
        ),
        num_stages=reduce_launcher.NUM_STAGES,
    )
    for name, kernel in kernels.items():
        _assert_no_spills(f"{name} {dt}", kernel)
