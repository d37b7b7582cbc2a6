"""A d2l-style character language model trains identically with rnnfast.GRU and torch.nn.GRU.

Embedding (one-hot) -> 2-layer GRU -> Linear, SGD with gradient-norm clipping, float64: the loss curves agree
to 1e-8 from the same init.
"""

import math

import pytest
import torch
from torch import nn

import rnnfast

TEXT = (
    "the time traveller for so it will be convenient to speak of him was expounding a recondite matter "
    "to us his grey eyes shone and twinkled and his usually pale face was flushed and animated"
)


class CharLM(nn.Module):
    def __init__(self, rnn: nn.Module, vocab: int):
        super().__init__()
        self.rnn, self.vocab = rnn, vocab
        self.out = nn.Linear(rnn.hidden_size, vocab, dtype=torch.float64)

    def forward(self, tokens, state=None):
        x = nn.functional.one_hot(tokens.T, self.vocab).to(torch.float64)  # (T, B, V)
        y, state = self.rnn(x, state)
        return self.out(y), state


def _train(rnn_cls, steps=12, backend=None):
    chars = sorted(set(TEXT))
    idx = torch.tensor([chars.index(c) for c in TEXT])
    torch.manual_seed(0)
    kw = {} if backend is None else {"backend": backend}
    rnn = rnn_cls(len(chars), 32, num_layers=2, dtype=torch.float64, **kw)
    model = CharLM(rnn, len(chars))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    T, B = 12, 4
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, len(idx) - T - 1, (B,), generator=g)
        xb = torch.stack([idx[s : s + T] for s in starts])
        yb = torch.stack([idx[s + 1 : s + T + 1] for s in starts])
        logits, _ = model(xb)
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(chars)), yb.T.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_char_lm_loss_curve_matches_torch(backend):
    want = _train(nn.GRU)
    got = _train(rnnfast.GRU, backend=backend)
    assert want[-1] < want[0] - 0.3, f"the model must learn: {want[0]:.3f} -> {want[-1]:.3f}"
    for step, (a, b) in enumerate(zip(got, want)):
        assert math.isclose(a, b, rel_tol=0, abs_tol=1e-8), f"loss at step {step}: {a!r} vs torch.nn {b!r}"
