"""rnnfast: fused recurrent networks for PyTorch.

Drop-in ``rnnfast.GRU`` / ``RNN`` / ``LSTM`` for the torch.nn modules, the sequential ops in
:mod:`rnnfast.functional`, and SPINN/TreeLSTM parts in :mod:`rnnfast.nn`.
"""

import torch

from rnnfast import backends, functional, models
from rnnfast._version import __version__
from rnnfast.nn.rnn import GRU, LSTM, RNN, from_torch
from rnnfast.nn.spinn import SPINN, Tracker, TreeLSTMReduce
from rnnfast.nn.transitions import PAD, REDUCE, SHIFT

backends.preload()

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "from_torch",
    "functional",
    "backends",
    "models",
    "SHIFT",
    "REDUCE",
    "PAD",
    "__version__",
]

# torch.load's default (weights_only=True) unpickles only allowlisted classes. rnnfast's modules, and the
# torch.nn modules inside its SPINN parts and SNLI model, hold nothing but parameters, buffers and plain
# attributes (numbers, strings, dicts of them), so a whole pickled model that holds them loads like one
# holding torch.nn's RNNs: the user allowlists their own classes, nothing of rnnfast's.
torch.serialization.add_safe_globals(
    [
        RNN,
        GRU,
        LSTM,
        SPINN,
        TreeLSTMReduce,
        Tracker,
        models.SNLIClassifier,
        models.snli.Feature,
        torch.nn.Linear,
        torch.nn.LSTMCell,
        torch.nn.Embedding,
        torch.nn.BatchNorm1d,
        torch.nn.Dropout,
        torch.nn.ReLU,
        torch.nn.Sequential,
    ]
)
