"""Whole-model checkpoints: ``torch.save(model)`` then ``torch.load(path)`` with torch's default
``weights_only=True`` loads a model holding every rnnfast module, and the loaded copy computes what the
original does (default backend)."""

import inspect
import io

import pytest
import torch
from torch import nn

import rnnfast
import rnnfast.models.snli
import rnnfast.nn.rnn
import rnnfast.nn.spinn
from rnnfast.models import SNLIClassifier
from rnnfast.nn import SPINN, Tracker, TreeLSTMReduce
from tests.utils import assert_close


class _Model(nn.Module):
    """A user's model holding every rnnfast module (the user allowlists this class, as for any model)."""

    def __init__(self, H=6):
        super().__init__()
        self.rnn = rnnfast.RNN(5, 7, num_layers=2, nonlinearity="relu", bidirectional=True)
        self.gru = rnnfast.GRU(14, 7, batch_first=True)
        self.lstm = rnnfast.LSTM(7, 9, proj_size=4, num_layers=2, dropout=0.25)
        self.reduce = TreeLSTMReduce(H, 3)
        self.tracker = Tracker(H, 3)
        self.spinn = SPINN(H, 3, predict=True)
        self.snli = SNLIClassifier(n_embed=11, d_embed=5, d_hidden=H, d_tracker=3, d_mlp=8)

    def forward(self, x, buffers, transitions, tokens, pair_transitions):
        y = self.rnn(x)[0]
        y = self.gru(y.transpose(0, 1))[0].transpose(0, 1)
        y, (h, c) = self.lstm(y)
        H = self.reduce.left.in_features
        r = buffers[:, 0, :H]
        rh, rc = self.reduce(r, r, r.flip(0), r.flip(0), torch.tanh(r[:, :3]))
        (th, tc), _ = self.tracker(r, rh, rc)
        root, logits = self.spinn(buffers, transitions)
        cls = self.snli(tokens, pair_transitions)
        return y, h, c, rh, rc, th, tc, root, logits, cls


def _transitions(T_leaves, B):
    steps = [3, 3] + [2, 3] * (T_leaves - 2) + [2]
    return torch.tensor(steps).unsqueeze(1).expand(-1, B).contiguous()


def _inputs(H=6, B=3, N=4):
    return (
        torch.randn(5, B, 5, dtype=torch.float64),
        torch.randn(B, N, 2 * H, dtype=torch.float64),
        _transitions(N, B),
        torch.randint(2, 11, (2 * B, N + 1)),
        _transitions(N, 2 * B),
    )


def _roundtrip(obj, tmp_path, safe=()):
    path = tmp_path / "model.pt"
    torch.save(obj, path)
    with torch.serialization.safe_globals(list(safe)):
        return torch.load(path)  # the default: weights_only=True


def test_whole_model_loads_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = _Model().double().eval()
    args = _inputs()
    want = model(*args)
    loaded = _roundtrip(model, tmp_path, safe=[_Model])
    assert type(loaded) is _Model
    got = loaded(*args)
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close(f"output {i}", g, w, atol=0)
    want_params = dict(model.named_parameters())
    for name, p in loaded.named_parameters():
        assert_close(name, p, want_params[name], atol=0)
    assert loaded.lstm.proj_size == 4 and loaded.rnn.nonlinearity == "relu"


@pytest.mark.parametrize(
    "make",
    [
        lambda: rnnfast.GRU(4, 5, bidirectional=True),
        lambda: rnnfast.LSTM(4, 5, proj_size=3, backend="reference"),
        lambda: rnnfast.RNN(4, 5, nonlinearity="relu"),
    ],
    ids=["GRU", "LSTM-proj-reference", "RNN-relu"],
)
def test_bare_module_loads_and_trains(make, tmp_path):
    """No allowlisting at all for an rnnfast module alone; the loaded one keeps its backend and trains."""
    m = make().double()
    loaded = _roundtrip(m, tmp_path)
    assert loaded.backend == m.backend
    x = torch.randn(6, 2, 4, dtype=torch.float64)
    assert_close("y", loaded(x)[0], m(x)[0], atol=0)
    loaded(x)[0].sum().backward()
    m(x)[0].sum().backward()
    for (name, a), b in zip(loaded.named_parameters(), m.parameters()):
        assert_close("d" + name, a.grad, b.grad, atol=0)


def test_every_rnnfast_module_class_is_allowlisted():
    """A module class added to rnnfast must be added to the allowlist too (rnnfast/__init__.py)."""
    allowed = set(torch.serialization.get_safe_globals())
    for mod in (rnnfast.nn.rnn, rnnfast.nn.spinn, rnnfast.models.snli):
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, nn.Module) and cls.__module__ == mod.__name__ and not name.startswith("_"):
                assert cls in allowed, f"{cls.__module__}.{name} is not registered with add_safe_globals"


def test_state_dict_checkpoint_still_loads(tmp_path):
    # The state_dict route, which needs no allowlist, keeps working as it does for torch.nn.
    m = rnnfast.LSTM(3, 4, proj_size=2)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh = rnnfast.LSTM(3, 4, proj_size=2)
    fresh.load_state_dict(torch.load(buf))
    x = torch.randn(2, 1, 3)
    assert_close("y", fresh(x)[0], m(x)[0], atol=0)
