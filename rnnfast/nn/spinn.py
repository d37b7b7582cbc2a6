"""SPINN modules with the classic PyTorch SNLI example's parameter names, so its state_dict loads.

Dimensions: B batch, N leaves, T transitions, H hidden (``size``), HT tracker hidden.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnfast import functional
from rnnfast._guards import check_tracer, refuse_scripting


class TreeLSTMReduce(nn.Module):
    """The SPINN reduce: ``lstm_in = left(h_l) + right(h_r) [+ track(h_track)]``, then the tree-LSTM.

    forward(h_l, c_l, h_r, c_r (R, H), h_track (R, HT) or None) -> (h, c), each (R, H).
    """

    def __init__(self, size: int, tracker_size: int | None = None, backend: str = "auto"):
        super().__init__()
        self.left = nn.Linear(size, 5 * size)
        self.right = nn.Linear(size, 5 * size, bias=False)
        if tracker_size is not None:
            self.track = nn.Linear(tracker_size, 5 * size, bias=False)
        self.backend = backend

    def __prepare_scriptable__(self):
        refuse_scripting(self)

    def forward(self, h_l: Tensor, c_l: Tensor, h_r: Tensor, c_r: Tensor, h_track: Tensor | None = None):
        check_tracer(self)
        w_t = self.track.weight if hasattr(self, "track") else None
        if (h_track is None) != (w_t is None):
            raise ValueError(
                "h_track: expected a tensor exactly when the module has a tracker "
                f"(tracker_size={None if w_t is None else w_t.shape[1]}), "
                f"got {'None' if h_track is None else 'a tensor'}"
            )
        return functional.tree_lstm_reduce(
            h_l,
            c_l,
            h_r,
            c_r,
            self.left.weight,
            self.left.bias,
            self.right.weight,
            h_track,
            w_t,
            backend=self.backend,
        )


class Tracker(nn.Module):
    """The SPINN tracker: an LSTMCell over cat(buffer top h, stack top h, stack second h).

    forward(buf, top, second (B, H), state (h, c) (B, HT) or None) -> ((h, c), logits (B, 4) or None).
    """

    def __init__(self, size: int, tracker_size: int, predict: bool = False):
        super().__init__()
        self.rnn = nn.LSTMCell(3 * size, tracker_size)
        if predict:
            self.transition = nn.Linear(tracker_size, 4)
        self.state_size = tracker_size

    def forward(self, buf: Tensor, top: Tensor, second: Tensor, state: tuple[Tensor, Tensor] | None = None):
        x = torch.cat([buf, top, second], 1)
        if state is None:
            z = x.new_zeros(x.shape[0], self.state_size)
            state = (z, z)
        h, c = self.rnn(x, state)
        return (h, c), (self.transition(h) if hasattr(self, "transition") else None)


class SPINN(nn.Module):
    """Batched SPINN encoder (thin stack, the whole loop in tensor ops; see rnnfast.ops.spinn.encoder).

    forward(buffers (B, N, 2H) leaf [h; c] in reading order, transitions (T, B) SHIFT=3/REDUCE=2/PAD=1,
    null (B, 2H) or None) -> root h (B, H); with ``return_c`` also c; with ``predict`` also the
    transition logits (T, B, 4). With ``predict`` and ``transitions=None`` the tracker's masked greedy
    choices drive 2·n−1 steps (n = ``lengths[b]``, default N); given transitions are followed (teacher
    forcing) and their logits returned for a transition loss.
    """

    def __init__(
        self,
        d_hidden: int,
        d_tracker: int | None = None,
        predict: bool = False,
        backend: str = "auto",
        all_rows: bool = False,
    ):
        super().__init__()
        if predict and d_tracker is None:
            raise ValueError("predict: transition prediction needs a tracker (d_tracker), got d_tracker=None")
        self.d_hidden = d_hidden
        self.reduce = TreeLSTMReduce(d_hidden, d_tracker, backend=backend)
        if d_tracker is not None:
            self.tracker = Tracker(d_hidden, d_tracker, predict=predict)
        self.predict = predict
        self.backend = backend
        self.all_rows = all_rows

    def __prepare_scriptable__(self):
        refuse_scripting(self)

    def forward(
        self,
        buffers: Tensor,
        transitions: Tensor | None,
        null: Tensor | None = None,
        lengths: Tensor | None = None,
        return_c: bool = False,
    ):
        check_tracer(self)
        if transitions is None and not self.predict:
            raise ValueError("transitions: required unless the module predicts them (predict=True), got None")
        # Imported here: rnnfast.functional re-exports spinn_encode, and the encoder needs rnnfast.nn's
        # transition codes, so a module-level import would be circular.
        from rnnfast.ops.spinn.encoder import spinn_encode

        r = self.reduce
        tr = getattr(self, "tracker", None)
        trk = ()
        if tr is not None:
            trk = (r.track.weight, tr.rnn.weight_ih, tr.rnn.weight_hh, tr.rnn.bias_ih, tr.rnn.bias_hh)
            if self.predict:
                trk += (tr.transition.weight, tr.transition.bias)
        h, c, logits, _ = spinn_encode(
            buffers,
            transitions,
            null,
            r.left.weight,
            r.left.bias,
            r.right.weight,
            *trk,
            lengths=lengths,
            all_rows=self.all_rows,
            backend=self.backend,
        )
        out = (h, c) if return_c else (h,)
        if self.predict:
            out += (logits,)
        return out if len(out) > 1 else h
