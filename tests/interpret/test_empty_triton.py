"""Empty batches through the Triton backend under TRITON_INTERPRET=1: no launch, well-formed outputs."""

import torch

from rnnfast import functional


def test_empty_batch():
    gi = torch.randn(3, 0, 6, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(0, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    y, h = functional.gru(gi, h0, w, None, backend="triton")
    assert y.shape == (3, 0, 2) and h.shape == (0, 2)
    (y.sum() + h.sum()).backward()
    assert w.grad.shape == (6, 2) and (w.grad == 0).all(), "dw_hh: expected zeros for an empty batch"


def test_empty_rows():
    x, c = torch.randn(0, 10), torch.randn(0, 2)
    h, c_out = functional.tree_lstm(x, c, c, backend="triton")
    assert h.shape == (0, 2) and c_out.shape == (0, 2)
    w = torch.randn(10, 2)
    h, c_out = functional.tree_lstm_reduce(c, c, c, c, w, None, w, backend="triton")
    assert h.shape == (0, 2) and c_out.shape == (0, 2)
