"""The module suite on a CUDA GPU: rnnfast modules (reference backend on CUDA, and auto) vs cuDNN torch.nn."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from tests.utils import assert_close

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() False)"
    ),
]


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM"])
def test_module_vs_cudnn(name, dtype, backend):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = getattr(nn, name)(16, 33, num_layers=2, bidirectional=True, device="cuda", dtype=dtype)
    fast = rnnfast.from_torch(ref, backend=backend)
    x = torch.randn(9, 5, 16, device="cuda", dtype=dtype, requires_grad=True)
    lengths = torch.tensor([9, 7, 4, 2, 1])
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for inp in (x, pack_padded_sequence(x, lengths)):
        y_r, h_r = ref(inp)
        y_f, h_f = fast(inp)
        y_r = getattr(y_r, "data", y_r)
        y_f = getattr(y_f, "data", y_f)
        assert_close("output", y_f, y_r, tol, tol)
        h_r = h_r[0] if isinstance(h_r, tuple) else h_r
        h_f = h_f[0] if isinstance(h_f, tuple) else h_f
        assert_close("h_n", h_f, h_r, tol, tol)
        g = torch.randn_like(y_r)
        gr = torch.autograd.grad(y_r, [x, *ref.parameters()], g)
        gf = torch.autograd.grad(y_f, [x, *fast.parameters()], g)
        for n, a, b in zip(["input"] + [n for n, _ in ref.named_parameters()], gf, gr):
            assert_close("d" + n, a, b, tol * 10, tol * 10)
