"""List-based SPINN, written the way the classic PyTorch SNLI example writes it: the oracle and the
benchmark baseline of the thin-stack encoder.

Every example keeps a Python list for its buffer and one for its stack; each step walks the batch in
Python, collects the examples that reduce and composes them in one batched call. Only plain torch
modules and functions run here (``nn.Linear``, ``nn.LSTMCell``, the tree-LSTM written out), so the
fast encoder is checked against code that shares none of its parts.

Dimensions: B batch, N leaves, T transitions, H hidden, HT tracker hidden.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnfast.nn.transitions import PAD, REDUCE, SHIFT


def _bundle(states: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-example (1, 2H) states -> batched (h, c), each (R, H)."""
    return torch.cat(states, 0).chunk(2, 1)


def _unbundle(h: Tensor, c: Tensor) -> list[Tensor]:
    """Batched (h, c) -> per-example (1, 2H) states."""
    return list(torch.split(torch.cat([h, c], 1), 1, 0))


def _tree_lstm(c_l: Tensor, c_r: Tensor, lstm_in: Tensor) -> tuple[Tensor, Tensor]:
    a, i, f1, f2, o = lstm_in.chunk(5, 1)
    c = a.tanh() * i.sigmoid() + f1.sigmoid() * c_l + f2.sigmoid() * c_r
    h = o.sigmoid() * c.tanh()
    return h, c


def _reduce(model, lefts: list[Tensor], rights: list[Tensor], trackings: list[Tensor] | None) -> list[Tensor]:
    (h_l, c_l), (h_r, c_r) = _bundle(lefts), _bundle(rights)
    lstm_in = model.reduce.left(h_l)
    lstm_in = lstm_in + model.reduce.right(h_r)
    if trackings is not None:
        lstm_in = lstm_in + model.reduce.track(_bundle(trackings)[0])
    return _unbundle(*_tree_lstm(c_l, c_r, lstm_in))


def spinn(model, buffers: Tensor, transitions: Tensor | None, null: Tensor | None = None, lengths=None):
    """Run ``model`` (an :class:`rnnfast.nn.SPINN`) the list-based way.

    buffers (B, N, 2H) leaf states [h; c] in reading order; transitions (T, B) or None (predict mode:
    2N-1 masked greedy steps, N = lengths[b]); null (B, 2H) or None (zeros).
    Returns (h, c, logits): root state (B, H) each, and (T, B, 4) transition logits or None.
    """
    B, N, H2 = buffers.shape
    if null is None:
        null = buffers.new_zeros(B, H2)
    tracker = getattr(model, "tracker", None)
    predict = tracker is not None and hasattr(tracker, "transition")
    if transitions is None:
        n_leaves = [N] * B if lengths is None else [int(n) for n in lengths]
        steps = 2 * max(n_leaves) - 1
        codes = None
    else:
        codes = transitions.tolist()
        steps = len(codes)
        n_leaves = [sum(1 for t in range(steps) if codes[t][b] == SHIFT) for b in range(B)]
    nulls = list(torch.split(null, 1, 0))
    # The buffer pops from its end, like the example's reversed token lists; the null stays at the bottom.
    # Split per example, then per leaf, as the example does (its backward concatenates the pieces'
    # gradients per example rather than materialising a full-size gradient per leaf).
    leaves = [list(torch.split(x.squeeze(0), 1, 0)) for x in torch.split(buffers, 1, 0)]
    bufs = [[nulls[b]] + leaves[b][: n_leaves[b]][::-1] for b in range(B)]
    stacks = [[nulls[b], nulls[b]] for b in range(B)]
    state = None
    logits = []
    for t in range(steps):
        trackings = None
        if tracker is not None:
            x = torch.cat(
                [
                    _bundle([buf[-1] for buf in bufs])[0],
                    _bundle([st[-1] for st in stacks])[0],
                    _bundle([st[-2] for st in stacks])[0],
                ],
                1,
            )
            if state is None:
                state = [x.new_zeros(B, tracker.rnn.hidden_size)] * 2
            state = tracker.rnn(x, state)
            trackings = _unbundle(*state)
            if predict:
                logits.append(tracker.transition(state[0]))
        if codes is not None:
            step = codes[t]
        else:
            step = []
            scores = logits[-1].tolist()
            for b in range(B):
                can_shift, can_reduce = len(bufs[b]) > 1, len(stacks[b]) >= 4
                if can_shift and (not can_reduce or scores[b][SHIFT] > scores[b][REDUCE]):
                    step.append(SHIFT)
                elif can_reduce:
                    step.append(REDUCE)
                else:
                    step.append(PAD)
        lefts, rights, tracks = [], [], []
        for b in range(B):
            if step[b] == SHIFT:
                stacks[b].append(bufs[b].pop())
            elif step[b] == REDUCE:
                rights.append(stacks[b].pop())
                lefts.append(stacks[b].pop())
                if trackings is not None:
                    tracks.append(trackings[b])
        if rights:
            reduced = iter(_reduce(model, lefts, rights, tracks if trackings is not None else None))
            for b in range(B):
                if step[b] == REDUCE:
                    stacks[b].append(next(reduced))
    h, c = _bundle([st[-1] for st in stacks])
    return h, c, (torch.stack(logits) if predict else None)
