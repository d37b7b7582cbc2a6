"""Helpers shared by the tests: random inputs for the ops, named comparisons, readable ids."""

from __future__ import annotations

import contextlib

import torch

from rnnfast import functional
from rnnfast.ops.recurrence import common
from rnnfast.ops.recurrence import reference as rec_ref

CELLS = common.CELLS

# The drop-in modules' kinds: (class name, its extra constructor arguments).
MODULE_KINDS = [
    ("RNN", {"nonlinearity": "tanh"}),
    ("RNN", {"nonlinearity": "relu"}),
    ("GRU", {}),
    ("LSTM", {}),
    ("LSTM", {"proj_size": 3}),
]


def kind_id(kind) -> str:
    """'LSTM-3'-style ids of MODULE_KINDS entries."""
    name, kw = kind
    return name + "".join(f"-{v}" for v in kw.values())


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float = 0.0) -> None:
    """Compare two tensors, naming the tensor and the worst element in the failure message."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != expected {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != expected {want.dtype}"
    assert not torch.isnan(got).any(), f"{name}: contains NaN (an output element was never written?)"
    diff = (got.double() - want.double()).abs()
    tol = atol + rtol * want.double().abs()
    if diff.numel() and (diff > tol).any():
        i = int((diff - tol).argmax())
        idx = tuple(int(k) for k in torch.unravel_index(torch.tensor(i), diff.shape))
        raise AssertionError(
            f"{name}: max abs diff {diff.max().item():.3e} > atol {atol:g} + rtol {rtol:g}; "
            f"worst at {idx}: got {got[idx].item():.6g}, expected {want[idx].item():.6g}"
        )


def case_id(**kw) -> str:
    """'B3-T5-H33'-style ids."""
    return "-".join(f"{k}{v}" for k, v in kw.items())


def recurrence_inputs(
    cell, T, B, H, P=0, lengths=None, dtype=torch.float64, device="cpu", bias=True, grad=True
):
    """Fresh random inputs of the recurrence op (never zeros). Returns a dict of op arguments."""
    G = common.GATES[cell]
    N = P or H
    g = torch.Generator().manual_seed(1234 + T * 7 + B * 13 + H)

    def r(*shape, scale=0.5):
        t = (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale
        return t.to(device=device, dtype=dtype).requires_grad_(grad)

    args = {
        "gi": r(T, B, G * H, scale=1.0),
        "h0": r(B, N),
        "c0": r(B, H) if cell == "lstm" else None,
        "w_hh": r(G * H, N, scale=1.0 / max(N, 1) ** 0.5),
        "b_hh": r(G * H) if bias else None,
        "w_hr": r(P, H, scale=1.0 / max(H, 1) ** 0.5) if P else None,
        "lengths": None if lengths is None else torch.as_tensor(lengths, dtype=torch.int64, device=device),
    }
    return args


def oracle(cell, gi, h0, c0, w_hh, b_hh, w_hr, lengths, reverse):
    """The plain-loop reference of common.py's op contract: (y, h_n, c_n or None)."""
    if cell == "gru":
        y, h = rec_ref.gru(gi, h0, w_hh, b_hh, lengths, reverse)
        return y, h, None
    if cell == "lstm":
        return rec_ref.lstm(gi, h0, c0, w_hh, b_hh, w_hr, lengths, reverse)
    y, h = rec_ref.rnn(gi, h0, w_hh, b_hh, lengths, reverse, nonlinearity=cell[4:])
    return y, h, None


def run_recurrence(cell, a: dict, reverse: bool, backend: str):
    """The functional op of ``cell`` on the arguments of :func:`recurrence_inputs`: (y, h_n, c_n or None)."""
    if cell == "lstm":
        return functional.lstm(
            a["gi"], a["h0"], a["c0"], a["w_hh"], a["b_hh"], a["w_hr"], a["lengths"], reverse, backend=backend
        )
    if cell == "gru":
        y, h = functional.gru(a["gi"], a["h0"], a["w_hh"], a["b_hh"], a["lengths"], reverse, backend=backend)
    else:
        y, h = functional.rnn(
            a["gi"], a["h0"], a["w_hh"], a["b_hh"], a["lengths"], reverse, cell[4:], backend=backend
        )
    return y, h, None


def assert_matches_oracle(cell, args: dict, reverse: bool, backend: str, tol: float, seed: int) -> None:
    """``backend``'s op on :func:`recurrence_inputs` ``args`` against :func:`oracle` (same dtype): outputs to
    ``tol``, the gradient of every input that requires one to ``10·tol`` under random output gradients."""
    outs = [o for o in run_recurrence(cell, args, reverse, backend) if o is not None]
    keys = ("gi", "h0", "c0", "w_hh", "b_hh", "w_hr", "lengths")
    want = [w for w in oracle(cell, *(args[k] for k in keys), reverse) if w is not None]
    for name, o, w in zip(["y", "h_n", "c_n"], outs, want):
        assert_close(name, o, w.detach(), atol=tol, rtol=tol)
    g = torch.Generator().manual_seed(seed)
    ups = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outs]
    inputs = {k: v for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    got = torch.autograd.grad(outs, list(inputs.values()), ups)
    exp = torch.autograd.grad(want, list(inputs.values()), ups)
    for name, a, b in zip(inputs, got, exp):
        assert_close("d" + name, a, b, atol=10 * tol, rtol=10 * tol)


@contextlib.contextmanager
def threads(n):
    """torch's intra-op thread count set to ``n`` for the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def team_parts(cell, T, B, H, dtype=torch.float32):
    """How many threads the cpu backend's backward time loop of these sizes shares (1: no team)."""
    from rnnfast import _ext

    _ext.ensure_loaded()
    return torch.ops.rnnfast_C.team_parts(T, B, common.CELL_CODE[cell], H, False, dtype)


def row_parts(cell, B, H, P=0, dtype=torch.float32, T=100, backward=False):
    """How many slices of rows the cpu backend's plain forward (backward: backward) time loop of these
    sizes splits into (1: none)."""
    from rnnfast import _ext

    _ext.ensure_loaded()
    return torch.ops.rnnfast_C.row_parts(B, common.CELL_CODE[cell], H, P, dtype, T, backward)


def assert_packed_module_matches(mod, ref, x, lengths, atol_y=1e-10, atol_g=1e-9):
    """``mod`` against the torch.nn module ``ref`` on ``x`` (T, B, I) packed unsorted by ``lengths``: the
    padded output, and the gradients of the input and every parameter under an output gradient that
    depends on the output."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    outs = []
    for m in (mod, ref):
        xi = x.clone().requires_grad_(True)
        y, _ = m(pack_padded_sequence(xi, lengths, enforce_sorted=False))
        y, _ = pad_packed_sequence(y)
        g = torch.autograd.grad(y, [xi, *m.parameters()], torch.ones_like(y) * 0.1 + y.detach())
        outs.append((y, g))
    assert_close("y", outs[0][0], outs[1][0].detach(), atol=atol_y)
    for i, (a, b) in enumerate(zip(outs[0][1], outs[1][1])):
        assert_close(f"grad[{i}]", a, b, atol=atol_g)
