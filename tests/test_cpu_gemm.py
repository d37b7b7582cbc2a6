"""The large float32 products of the ``cpu`` backend: oneDNN inside the time loops and for the input
projection, checked against float64 oracles on sizes that take those paths."""

from __future__ import annotations

import pytest
import torch

import rnnfast
from rnnfast import _ext
from rnnfast.backends import cpu as cpu_policy
from rnnfast.ops import linear
from rnnfast.ops.recurrence import common
from tests.utils import assert_close, assert_matches_oracle, oracle, recurrence_inputs, run_recurrence

ok, why = _ext.status()
pytestmark = pytest.mark.skipif(not ok, reason=f"C++ CPU kernels unavailable: {why}")
ONEDNN = torch.backends.mkldnn.is_available()


STEP_SIZES = [(1, 128, 512), (4, 256, 1024), (16, 128, 512), (3, 256, 1024), (1, 1024, 3072), (1, 300, 1200)]
BIG = [(16, 512, 1536), (16, 512, 2048), (64, 1024, 4096), (4, 1024, 3072), (256, 256, 1024)]


def test_step_products_paths_are_valid_and_forced():
    """Every per-step product takes a known path; flags(gemm=...) sends the large ones to the library
    asked for, or keeps every one in the blocked kernels."""
    _ext.ensure_loaded()
    path = torch.ops.rnnfast_C.gemm_path
    kernels = {"blocked", "packed", "matvec"}
    for s in STEP_SIZES + BIG:
        for steps in (1, 7, 8, 100):
            assert path(*s, steps) in kernels | {"onednn", "aten"}, (s, steps)
    with cpu_policy.flags(gemm="blocked"):
        assert all(path(*s) in kernels for s in STEP_SIZES + BIG)
    with cpu_policy.flags(gemm="aten"):
        assert [path(*s) for s in BIG if s[0] > 1] == ["aten"] * 5
    with cpu_policy.flags(gemm="onednn"):
        assert [path(*s) for s in BIG if s[0] > 1] == ["onednn" if ONEDNN else "aten"] * 5
    # one row over fewer steps than a copy of W_hhᵀ pays for: matvec reads it in place
    assert [path(1, 128, 512, steps) for steps in (1, 7)] == ["matvec", "matvec"]


# W packed in panels (B >= 4, K·M >= 2^17): M = 3·H or 4·H with H = 215 is no multiple of any panel width
# (zero-padded last panel), 4·192 is one of all of them; B = 7 a block of 4 rows and one of 3, ragged rows
# shrink the products, reverse. float64.
@pytest.mark.parametrize("cell,H", [("lstm", 215), ("gru", 215), ("lstm", 192)])
def test_packed_panels_match_oracle(cell, H):
    _ext.ensure_loaded()
    B, T = 7, 9
    assert torch.ops.rnnfast_C.gemm_path(B, H, common.GATES[cell] * H) == "packed"
    lengths = [9, 9, 7, 5, 5, 2, 1]
    args = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=torch.float64)
    assert_matches_oracle(cell, args, True, "cpu", 1e-11, seed=6)


# Two and three rows with a W_hh beyond a core's L2 (4.7 MB in float64) take the packed kernel too; on
# one thread, where no team takes the loop. Ragged rows, reverse, float64 against the oracle.
@pytest.mark.parametrize("B", [2, 3])
def test_packed_few_rows_large_w_match_oracle(B):
    _ext.ensure_loaded()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.ops.rnnfast_C.team_parts(9, B, 3, 384, False, torch.float64) == 1
        args = recurrence_inputs("lstm", 9, B, 384, lengths=[9, 6, 2][:B], dtype=torch.float64)
        assert_matches_oracle("lstm", args, True, "cpu", 1e-11, seed=7)
    finally:
        torch.set_num_threads(threads)


# One row and a W beyond L2 (K·M > 2^18) take the matrix-vector kernel, forward and backward (T >= 8 so
# that the backward's transposed copy of W pays): K = 300 leaves a tail after the vector loop, M = 1200 a
# split over threads that is not a multiple of the kernel's four rows. float64 against the oracle.
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_single_row_large_w_matches_oracle(cell, reverse):
    args = recurrence_inputs(cell, 9, 1, 300, dtype=torch.float64)
    assert_matches_oracle(cell, args, reverse, "cpu", 1e-11, seed=5)


# One row over fewer steps than a transposed copy of W_hh pays for: the matrix-vector kernel reads W_hh in
# place, a vector's lanes of rows at a time with their sums in one tree of shuffles, the rows past the
# last whole group four at a time. H = 33 (a tail after the vector loop; an LSTM's 132 rows are whole
# groups and 4 left over), 64, 100; float64 against the oracle, gradients included.
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("H", [33, 64, 100])
@pytest.mark.parametrize("T", [1, 3])
def test_single_row_short_matvec_matches_oracle(cell, H, T):
    _ext.ensure_loaded()
    assert torch.ops.rnnfast_C.gemm_path(1, H, common.GATES[cell] * H, T) == "matvec"
    args = recurrence_inputs(cell, T, 1, H, dtype=torch.float64)
    assert_matches_oracle(cell, args, False, "cpu", 1e-11, seed=4)


# Each library of the per-step products (flags(gemm=...)): "onednn" and "aten" with the blocked kernel's
# limits (64 rows, K·M <= 2^18) on every CPU: B=16, H=512: LSTM and GRU steps (K·M = 1M, 0.8M > 2^18)
# take the library forward and backward; RNN (K·M = 2^18) stays blocked, so the mix of paths runs too.
# B=4, H=1024: the library for all three, at a small batch. "blocked": every product in the blocked
# kernel. Ragged rows and reverse. T=4 runs oneDNN on the unpacked W_hh forward and ATen on the transposed
# view backward; T=16 packs W_hh for oneDNN in both (gemm.h, LinearNT).
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
@pytest.mark.parametrize("B,H", [(16, 512), (4, 1024)], ids=["B16-H512", "B4-H1024"])
@pytest.mark.parametrize("T", [4, 16])
@pytest.mark.parametrize("gemm", ["auto", "onednn", "aten", "blocked"])
def test_large_steps_match_oracle(cell, ragged, B, H, T, gemm):
    with cpu_policy.flags(gemm=gemm):
        _large_steps_match_oracle(cell, ragged, B, H, T)


def _large_steps_match_oracle(cell, ragged, B, H, T):
    # Sorted as PackedSequence rows are: the products shrink to the rows still running.
    full = [4, 4, 4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 1, 1, 0, 0] if B == 16 else [4, 3, 1, 0]
    lengths = [n * T // 4 for n in full] if ragged else None
    args = recurrence_inputs(cell, T, B, H, lengths=lengths, dtype=torch.float32)
    keys = ("gi", "h0", "c0", "w_hh", "b_hh", "w_hr", "lengths")
    outs = [o for o in run_recurrence(cell, args, ragged, "cpu") if o is not None]
    args64 = {
        k: (
            v.detach().double().requires_grad_(v.requires_grad)
            if isinstance(v, torch.Tensor) and v.is_floating_point()
            else v
        )
        for k, v in args.items()
    }
    want = [w for w in oracle(cell, *(args64[k] for k in keys), ragged) if w is not None]
    for name, o, w in zip(["y", "h_n", "c_n"], outs, want):
        assert_close(name, o.double(), w.detach(), atol=2e-4, rtol=2e-4)
    g = torch.Generator().manual_seed(3)
    ups = [torch.randn(o.shape, generator=g) for o in outs]
    names = [k for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    got = torch.autograd.grad(outs, [args[k] for k in names], ups)
    exp = torch.autograd.grad(want, [args64[k] for k in names], [u.double() for u in ups])
    for name, x, y in zip(names, got, exp):
        assert_close("d" + name, x.double(), y, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_single_step_unpacked_weights_match_oracle(cell):
    """T = 1 (token-by-token decoding): oneDNN takes W unpacked (packing pays over several steps)."""
    args = recurrence_inputs(cell, 1, 16, 512, dtype=torch.float32)
    outs = [o for o in run_recurrence(cell, args, False, "cpu") if o is not None]
    keys = ("gi", "h0", "c0", "w_hh", "b_hh", "w_hr", "lengths")
    a64 = {k: (v.detach().double() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    want = [w for w in oracle(cell, *(a64[k] for k in keys), False) if w is not None]
    for name, o, w in zip(["y", "h_n", "c_n"], outs, want):
        assert_close(name, o.double(), w, atol=1e-4, rtol=1e-4)


def test_input_projection_library_choice():
    """ATen unless flags(gemm=...) forces another (oneDNN only where torch has it)."""
    assert linear.library() == "aten"
    for forced, want in [
        ("onednn", "onednn" if ONEDNN else "aten"),
        ("blocked", "blocked"),
        ("aten", "aten"),
    ]:
        with cpu_policy.flags(gemm=forced):
            assert linear.library() == want
    assert linear.library() == "aten"


def test_module_with_large_products_matches_torch_nn():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(256, 256)
    mod = rnnfast.from_torch(ref, backend="cpu")
    x = torch.randn(20, 16, 256)
    out, (h, c) = mod(x)
    out_ref, (h_ref, c_ref) = ref(x)
    for name, a, b in (("output", out, out_ref), ("h_n", h, h_ref), ("c_n", c, c_ref)):
        assert_close(name, a, b, atol=1e-4, rtol=1e-4)
    (out.square().sum() + c.sum()).backward()
    (out_ref.square().sum() + c_ref.sum()).backward()
    for (name, p), (_, q) in zip(mod.named_parameters(), ref.named_parameters()):
        assert_close("grad " + name, p.grad, q.grad, atol=2e-3, rtol=2e-3)


# The blocked kernel's large products (torch.ops.rnnfast_C.gemm: the input projection, its dX and dW)
# against float64 matmuls, a·b + bias and aᵀ·b, b any strides. Odd sizes: a row group of fewer than 4
# rows, N no multiple of any panel width (a part-filled last panel), R over the 512 rows of a chunk (a
# second, accumulating pass over y), N over the columns of one block; an empty sum.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "R,M,N", [(1, 1, 1), (7, 5, 3), (33, 70, 33), (600, 37, 130), (1100, 21, 700), (9, 64, 1000)]
)
def test_gemm_matches_matmul(dtype, R, M, N):
    _ext.ensure_loaded()
    gemm = torch.ops.rnnfast_C.gemm
    g = torch.Generator().manual_seed(R + M + N)
    a = torch.randn(M, R, generator=g, dtype=dtype)
    b = torch.randn(R, N, generator=g, dtype=dtype)
    bias = torch.randn(N, generator=g, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-4 * max(1.0, R**0.5)
    want = a.double().mm(b.double())
    for name, got, exp in [
        ("a·b", gemm(a, b), want),
        ("a·b + bias", gemm(a, b, bias), want + bias.double()),
        ("aᵀ·b", gemm(a.t().contiguous(), b, None, True), want),
        ("a·b, b transposed", gemm(a, b.t().contiguous().t()), want),
        ("a·b, a strided", gemm(a.t().contiguous().t(), b), want),
    ]:
        assert got.dtype == dtype and got.shape == (M, N), name
        assert_close(name, got.double(), exp, atol=tol, rtol=tol)
    assert gemm(a[:, :0], b[:0]).abs().sum().item() == 0
    assert_close("bias alone", gemm(a[:, :0], b[:0], bias), bias.expand(M, N), atol=0, rtol=0)
    assert gemm(a[:0], b).shape == (0, N) and gemm(a, b[:, :0]).shape == (M, 0)
    assert gemm(a.t().contiguous()[:, :0], b, None, True).shape == (0, N)


def test_gemm_rejects_mismatched_operands():
    _ext.ensure_loaded()
    gemm = torch.ops.rnnfast_C.gemm
    with pytest.raises(RuntimeError, match="expected"):
        gemm(torch.randn(3, 4), torch.randn(5, 4))
    with pytest.raises(RuntimeError, match="expected"):
        gemm(torch.randn(3, 4), torch.randn(4, 5), None, True)
    with pytest.raises(RuntimeError, match="dtype"):
        gemm(torch.randn(3, 4), torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="bias"):
        gemm(torch.randn(3, 4), torch.randn(4, 5), torch.randn(4))


# The time loops' dW_hh (one product over the first steps, then one accumulating over the others) and a
# projected LSTM's dW_hr, in the blocked kernel (flags(gemm="blocked")) on any CPU: H = 33 and 70 leave
# part-filled panels, ragged rows and reverse; float64 against the oracle. T=70, B=9: 621 summed rows, two
# chunks.
@pytest.mark.parametrize("cell,H,P", [("lstm", 33, 0), ("gru", 70, 0), ("rnn_tanh", 33, 0), ("lstm", 70, 21)])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@cpu_policy.flags(gemm="blocked")
def test_weight_gradients_in_blocked_kernel_match_oracle(cell, H, P, reverse):
    lengths = [70, 70, 66, 40, 33, 20, 7, 2, 1]
    args = recurrence_inputs(cell, 70, 9, H, P=P, lengths=lengths, dtype=torch.float64)
    assert_matches_oracle(cell, args, reverse, "cpu", 1e-11, seed=8)
