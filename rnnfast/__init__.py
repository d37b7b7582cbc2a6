"""rnnfast: fused recurrent networks for PyTorch.

Drop-in ``rnnfast.GRU`` / ``RNN`` / ``LSTM`` for the torch.nn modules, the sequential ops in
:mod:`rnnfast.functional`, and SPINN/TreeLSTM parts in :mod:`rnnfast.nn`.
"""

from rnnfast import backends, functional
from rnnfast._version import __version__
from rnnfast.nn.rnn import GRU, LSTM, RNN, from_torch
from rnnfast.nn.transitions import PAD, REDUCE, SHIFT

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "from_torch",
    "functional",
    "backends",
    "SHIFT",
    "REDUCE",
    "PAD",
    "__version__",
]
