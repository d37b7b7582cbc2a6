"""Bad input gets a clear error naming the argument, expected vs got — never a wrong result."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from rnnfast import backends
from rnnfast import functional as RF


def _gru_args(T=4, B=2, H=3):
    return torch.randn(T, B, 3 * H), torch.randn(B, H), torch.randn(3 * H, H), torch.randn(3 * H)


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (
            lambda a: a.update(gi=torch.randn(4, 9)),
            ValueError,
            r"gi: expected shape \(\*, \*, \*\), got \(4, 9\)",
        ),
        (lambda a: a.update(gi=torch.randn(0, 2, 9)), ValueError, r"gi: expected at least one time step"),
        (lambda a: a.update(gi=torch.randn(4, 2, 8)), ValueError, r"gi: expected last dimension 3·H"),
        (lambda a: a.update(h0=torch.randn(3, 3)), ValueError, r"h0: expected shape \(2, 3\), got \(3, 3\)"),
        (
            lambda a: a.update(w_hh=torch.randn(9, 4)),
            ValueError,
            r"w_hh: expected shape \(9, 3\), got \(9, 4\)",
        ),
        (lambda a: a.update(b_hh=torch.randn(8)), ValueError, r"b_hh: expected shape \(9\), got \(8,\)"),
        (lambda a: a.update(gi=torch.randint(0, 3, (4, 2, 9))), TypeError, r"gi: expected a floating dtype"),
        (
            lambda a: a.update(h0=torch.randn(2, 3, dtype=torch.float64)),
            TypeError,
            r"h0: expected dtype torch.float32",
        ),
        (
            lambda a: a.update(h0=torch.randn(2, 3, device="meta")),
            RuntimeError,
            r"h0: expected a tensor on cpu",
        ),
        (
            lambda a: a.update(lengths=torch.tensor([5, 1])),
            ValueError,
            r"lengths: expected values in \[0, T=4\]",
        ),
        (
            lambda a: a.update(lengths=torch.tensor([-1, 1])),
            ValueError,
            r"lengths: expected values in \[0, T=4\]",
        ),
        (
            lambda a: a.update(lengths=torch.tensor([1.0, 2.0])),
            TypeError,
            r"lengths: expected an integer tensor",
        ),
        (lambda a: a.update(lengths=torch.tensor([1, 2, 3])), ValueError, r"lengths: expected shape \(2,\)"),
        (lambda a: a.update(backend="fast"), ValueError, r"backend: expected 'auto' or one of"),
        (lambda a: a.update(gi=[1.0]), TypeError, r"gi: expected a torch.Tensor, got list"),
    ],
)
def test_functional_gru_errors(mutate, exc, match):
    gi, h0, w, b = _gru_args()
    a = dict(gi=gi, h0=h0, w_hh=w, b_hh=b, lengths=None, backend="auto")
    mutate(a)
    with pytest.raises(exc, match=match):
        RF.gru(**a)


def test_lstm_and_rnn_errors():
    with pytest.raises(ValueError, match=r"c0: expected shape \(2, 3\), got \(2, 4\)"):
        RF.lstm(torch.randn(4, 2, 12), torch.randn(2, 3), torch.randn(2, 4), torch.randn(12, 3))
    with pytest.raises(ValueError, match=r"nonlinearity: expected 'tanh' or 'relu', got 'gelu'"):
        RF.rnn(torch.randn(4, 2, 3), torch.randn(2, 3), torch.randn(3, 3), nonlinearity="gelu")
    with pytest.raises(ValueError, match=r"h_track and w_t: expected both or neither"):
        x = torch.randn(2, 3)
        RF.tree_lstm_reduce(x, x, x, x, torch.randn(15, 3), None, torch.randn(15, 3), h_track=x)
    with pytest.raises(ValueError, match=r"lstm_in: expected last dimension 5·H, got 7"):
        RF.tree_lstm(torch.randn(2, 7), torch.randn(2, 1), torch.randn(2, 1))


def test_forced_backend_that_cannot_run_says_why(monkeypatch):
    gi, h0, w, b = _gru_args()
    with pytest.raises(backends.BackendError, match=r"backend 'cuda' cannot run 'recurrence'.*"):
        RF.gru(gi, h0, w, b, backend="cuda")
    with pytest.raises(
        backends.BackendError, match=r"backend 'torch' cannot run 'recurrence'.*no torch implementation"
    ):
        RF.gru(gi, h0, w, b, backend="torch")
    monkeypatch.setenv("RNNFAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match=r"backend: expected 'auto' or one of .* got 'nonsense'"):
        RF.gru(gi, h0, w, b)


def test_module_errors():
    m = rnnfast.GRU(3, 4, num_layers=2, backend="reference")
    with pytest.raises(
        ValueError, match=r"input: expected a 2-D \(unbatched\) or 3-D \(batched\) tensor, got 4-D"
    ):
        m(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"input: expected 3 features in the last dimension, got 5"):
        m(torch.randn(4, 2, 5))
    with pytest.raises(TypeError, match=r"input: expected a floating dtype, got torch.int64"):
        m(torch.randint(0, 3, (4, 2, 3)))
    with pytest.raises(ValueError, match=r"input: expected at least one time step"):
        m(torch.randn(0, 2, 3))
    with pytest.raises(ValueError, match=r"h_0: expected shape \(2, 2, 4\), got \(1, 2, 4\)"):
        m(torch.randn(4, 2, 3), torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match=r"h_0: expected shape \(2, 4\), got \(2, 2, 4\)"):
        m(torch.randn(4, 3), torch.randn(2, 2, 4))
    with pytest.raises(
        TypeError, match=r"h_0: expected dtype torch.float32 like the input, got torch.float64"
    ):
        m(torch.randn(4, 2, 3), torch.randn(2, 2, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"input: expected a tensor on cpu like the parameters, got meta"):
        m(torch.randn(4, 2, 3, device="meta"))
    lstm = rnnfast.LSTM(3, 4, backend="reference")
    with pytest.raises(TypeError, match=r"hx: expected a tuple \(h_0, c_0\) for LSTM"):
        lstm(torch.randn(4, 2, 3), torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match=r"backend: expected 'auto' or one of"):
        rnnfast.GRU(3, 4, backend="cudnn")


def test_unsorted_lengths_without_enforce_sorted_false():
    # torch refuses unsorted lengths unless enforce_sorted=False; the error reaches the user unchanged.
    x = torch.randn(4, 2, 3)
    with pytest.raises(RuntimeError, match="sorted in decreasing order"):
        pack_padded_sequence(x, torch.tensor([2, 4]))


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_input_dtype_must_match_weights_like_torch_nn(kind, x_dtype, packed):
    """An input of another dtype than the weights raises torch.nn's own ValueError (no silent cast); on
    PackedSequence too, where torch.nn's LSTM fails later in a matmul."""
    m = getattr(rnnfast, kind)(3, 4)  # float32 weights, the default backend
    ref = getattr(torch.nn, kind)(3, 4)
    x = torch.randn(5, 2, 3, dtype=x_dtype)
    with pytest.raises(ValueError) as want:
        ref(x)
    assert "does not match weight dtype" in str(want.value)
    with pytest.raises(ValueError) as got:
        m(pack_padded_sequence(x, torch.tensor([5, 3])) if packed else x)
    assert str(got.value) == str(want.value)


def test_input_dtype_under_autocast_still_runs():
    # autocast is where torch.nn accepts a float32 model on lower-precision input; so does rnnfast.
    m, ref = rnnfast.LSTM(3, 4), torch.nn.LSTM(3, 4)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, want = m(x)[0], ref(x)[0]
    assert y.dtype == want.dtype
    torch.testing.assert_close(y.float(), want.float(), atol=2e-2, rtol=0)
