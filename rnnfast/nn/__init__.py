"""Modules: drop-in RNN/GRU/LSTM and the SPINN parts."""

from rnnfast.nn.rnn import GRU, LSTM, RNN, from_torch
from rnnfast.nn.spinn import SPINN, Tracker, TreeLSTMReduce
from rnnfast.nn.transitions import PAD, REDUCE, SHIFT

__all__ = ["GRU", "LSTM", "RNN", "from_torch", "SPINN", "Tracker", "TreeLSTMReduce", "PAD", "REDUCE", "SHIFT"]
