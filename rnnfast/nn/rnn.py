"""Drop-in ``rnnfast.RNN`` / ``GRU`` / ``LSTM``.

Each is built on ``torch.nn.RNNBase`` exactly as its torch.nn counterpart, so the constructor, parameter
names and shapes, init, ``state_dict`` and ``flatten_parameters`` are torch.nn's own; only ``forward``
differs. Per layer and
direction the input projection for all steps is one GEMM (``F.linear``) and the recurrence runs in the
selected rnnfast backend. ``backend="torch"`` (and ``auto`` where no fused backend is verified for the
device) calls torch.nn's forward itself, i.e. cuDNN on CUDA.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnfast import backends
from rnnfast._ext import ModuleStack
from rnnfast._guards import check_tracer, refuse_scripting
from rnnfast.ops.linear import library_code
from rnnfast.ops.recurrence.common import CELL_CODE, acc_dtype, as_dtype
from rnnfast.ops.recurrence.function import recurrence

__all__ = ["RNN", "GRU", "LSTM", "from_torch"]


_CELLS = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "GRU": "gru", "LSTM": "lstm"}


def _cell(module: nn.RNNBase) -> str:
    return _CELLS[module.mode]


def _param(module: nn.Module, name: str) -> Tensor:
    """``getattr(module, name)`` for a weight: from the parameter dict where it is there (Module.__getattr__
    costs ~1 µs a lookup, five per layer and direction), else by getattr (a parametrized weight, or one
    that torch.func.functional_call swapped for a plain tensor)."""
    p = module._parameters.get(name)
    return p if p is not None else getattr(module, name)


def _autocast_on(x: Tensor) -> bool:
    """Whether autocast is on for ``x``'s device (CPU and CUDA, where torch.nn's RNNs honour it)."""
    return x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)


def _records_grad(module: nn.Module, x: Tensor) -> bool:
    """Whether autograd will record the call (training), which ``auto`` weighs for CPU LSTMs."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


def _autocast_dtype(module: nn.RNNBase, device: torch.device) -> torch.dtype | None:
    """The dtype torch.nn computes in under autocast (enabled on ``device``), or None to keep the input dtype.

    On CUDA torch.nn casts every RNN to the autocast dtype (cuDNN's RNN is on autocast's lower-precision
    list); on CPU only the LSTM is (its oneDNN path), GRU and RNN stay in float32.
    """
    if device.type == "cpu" and module.mode != "LSTM":
        return None
    return torch.get_autocast_dtype(device.type)


class _FusedRNNMixin:
    """The forward shared by the three modules; mixed in before the torch.nn class."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        backends.requested_backend(backend)  # validate the name now, not at the first forward
        self.backend = backend

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", backend={self.backend!r}" if self.backend != "auto" else "")

    def __prepare_scriptable__(self):
        refuse_scripting(self)  # raises: a clear error where torch.jit.script would fail deep in its compiler

    def to_torch(self) -> nn.RNNBase:
        """A torch.nn module with the same configuration and parameters (copies)."""
        base = _TORCH_CLASS[type(self)]
        m = base(**_config(self), device=self.weight_hh_l0.device, dtype=self.weight_hh_l0.dtype)
        m.load_state_dict(self.state_dict())
        return m

    # -- input handling, mirroring torch.nn.RNNBase.forward ------------------------------------------

    def _check_input(self, x: Tensor, batched: bool) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"input: expected a Tensor or PackedSequence, got {type(x).__name__}")
        if not (x.dtype.is_floating_point):
            raise TypeError(f"input: expected a floating dtype, got {x.dtype}")
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"input: expected {self.input_size} features in the last dimension, got {x.shape[-1]}"
            )
        w = _param(self, "weight_ih_l0")
        if x.device != w.device:
            raise RuntimeError(f"input: expected a tensor on {w.device} like the parameters, got {x.device}")
        if x.dtype != w.dtype and not torch._C._is_any_autocast_enabled():
            # torch.nn's own check and message: no silent cast outside autocast.
            raise ValueError(
                f"RNN input dtype ({x.dtype}) does not match weight dtype ({w.dtype}). "
                f"Convert input: input.to({w.dtype}), or convert model: model.to({x.dtype})"
            )
        if x.shape[1 if (batched and self.batch_first) else 0] == 0:
            raise ValueError("input: expected at least one time step, got a sequence of length 0")

    def _check_hidden(self, name: str, h, shape: tuple[int, ...], x: Tensor) -> None:
        if not isinstance(h, Tensor):
            raise TypeError(f"{name}: expected a Tensor, got {type(h).__name__}")
        if tuple(h.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(h.shape)}")
        if h.device != x.device:
            raise RuntimeError(f"{name}: expected a tensor on {x.device} like the input, got {h.device}")
        if h.dtype != x.dtype:
            raise TypeError(f"{name}: expected dtype {x.dtype} like the input, got {h.dtype}")

    def _plan_backend(self, x: Tensor, T: int, B: int, packed: bool, autocast: bool) -> str:
        sizes = {
            "cell": _cell(self),
            "T": T,
            "B": B,
            "H": self.hidden_size,
            "P": self.proj_size,
            "lengths": packed,
            "reverse": self.bidirectional,
            "autocast": autocast,
            "grad": _records_grad(self, x),
        }
        return backends.resolve("module", x.device, x.dtype, sizes, self.backend)

    def _auto_may_take_cpu(self, x: Tensor) -> bool:
        if backends.requested_backend(self.backend) != "auto":
            return False
        return backends.REGISTRY["cpu"].supports("module", x.device, x.dtype, {})[0]

    def forward(self, input, hx=None):  # noqa: A002 (torch.nn's argument name)
        check_tracer(self)  # torch.jit.trace and ONNX export: a clear error naming what works
        packed = isinstance(input, PackedSequence)
        if not packed:
            batched = isinstance(input, Tensor) and input.dim() == 3
            if isinstance(input, Tensor) and input.dim() not in (2, 3):
                raise ValueError(
                    f"input: expected a 2-D (unbatched) or 3-D (batched) tensor, got {input.dim()}-D "
                    f"of shape {tuple(input.shape)}"
                )
            self._check_input(input, batched)
            x = input if not batched else (input.transpose(0, 1) if self.batch_first else input)
            T = x.shape[0]
            B = x.shape[1] if batched else 1
        else:
            batched = True
            self._check_input(input.data, True)
            T, B = input.batch_sizes.shape[0], _packed_batch(input, hx)
            x = input.data

        autocast = _autocast_on(x)
        name = self._plan_backend(x, T, B, packed, autocast)
        if name == "torch" and packed and torch.compiler.is_compiling() and self._auto_may_take_cpu(x):
            # torch.nn's forward reads batch_sizes[0], a value, which torch.compile(fullgraph=True)
            # cannot trace; the cpu stack takes batch_sizes as a tensor.
            name = "cpu"
        if name == "torch":
            return self._torch_forward(input, hx)

        sorted_indices = unsorted_indices = lengths = rows = None
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if name == "cpu":
                x = data  # the C++ stack takes the packed rows and batch_sizes
            elif torch.compiler.is_compiling():
                # The per-op backends take padded gi in the packed (length-sorted) order, and the lengths.
                # Under torch.compile x is padded first, by an op whose batch may be data-dependent.
                x, lengths = torch.ops.rnnfast.pad_packed(data, batch_sizes, B if hx is not None else -1)
                B = x.shape[1]
            else:
                # Eager: the input projections run on the packed rows (x stays `data`), padded afterwards.
                *rows, lengths = _packed_rows(batch_sizes, data.device)
                x = data
        elif not batched:
            x = x.unsqueeze(1)

        D = 2 if self.bidirectional else 1
        N = self.proj_size if self.proj_size > 0 else self.hidden_size
        is_lstm = self.mode == "LSTM"
        if hx is None:
            h0 = c0 = None  # zeros, made by the layer stack
        else:
            if is_lstm:
                if not (isinstance(hx, tuple) and len(hx) == 2):
                    raise TypeError("hx: expected a tuple (h_0, c_0) for LSTM, got " + type(hx).__name__)
                h0, c0 = hx
            else:
                h0, c0 = hx, None
            for hname, h, n in (("h_0", h0, N), ("c_0", c0, self.hidden_size)):
                if h is not None:
                    shape = (self.num_layers * D, B, n) if batched else (self.num_layers * D, n)
                    self._check_hidden(hname, h, shape, x)
            if not batched:
                h0 = h0.unsqueeze(1)
                c0 = c0.unsqueeze(1) if c0 is not None else None
            if sorted_indices is not None:
                h0 = h0.index_select(1, sorted_indices)
                c0 = c0.index_select(1, sorted_indices) if c0 is not None else None

        # Under autocast, compute in the dtype torch.nn would use, with autocast itself off inside (the
        # input GEMMs and the recurrence must agree on one dtype).
        cast = _autocast_dtype(self, x.device) if autocast else None
        with torch.autocast(x.device.type, enabled=False) if autocast else contextlib.nullcontext():
            if name == "cpu":
                y, h_n, c_n = self._cpu_stack(x, h0, c0, batch_sizes if packed else None, cast)
            else:
                y, h_n, c_n = self._layers(x, T, B, h0, c0, lengths, rows, name, cast)

        if packed:
            if name == "cpu":
                data = y
            elif rows is None:
                data = torch.ops.rnnfast.pack_padded(y, batch_sizes, data.shape[0])
            else:
                data = y.flatten(0, 1).index_select(0, rows[0])
            out = PackedSequence(data, input.batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
                c_n = c_n.index_select(1, unsorted_indices) if is_lstm else None
        else:
            out = y
            if not batched:
                out = out.squeeze(1)
                h_n = h_n.squeeze(1)
                c_n = c_n.squeeze(1) if is_lstm else None
            elif self.batch_first:
                out = out.transpose(0, 1)
        return (out, (h_n, c_n)) if is_lstm else (out, h_n)

    def _cpu_stack(self, x, h0, c0, batch_sizes, cast):
        """The cpu backend's whole layer stack in one C++ op, ``rnnfast_C::module_fwd`` (per layer and
        direction the input projection and the time loop; its autograd is ``module_bwd``, see
        rnnfast/_ext.py): seq-first x (T, B, I), or the packed rows (ΣL, I) with ``batch_sizes``;
        returns y (as x, D·N features), h_n, c_n (L·D, B, ·; c_n None but for the LSTM)."""
        dt = cast or x.dtype
        x, h0, c0 = as_dtype(x, dt), as_dtype(h0, dt), as_dtype(c0, dt)
        weights = [as_dtype(_param(self, n), dt) for names in self._all_weights for n in names]
        grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, h0, c0, *weights)
        )
        masks = []
        if self.dropout and self.training and self.num_layers > 1:
            D = 2 if self.bidirectional else 1
            N = self.proj_size if self.proj_size > 0 else self.hidden_size
            shape = (*x.shape[:-1], D * N)
            masks = [self._dropout_mask(shape, acc_dtype(dt), x.device) for _ in range(self.num_layers - 1)]
        cfg = (CELL_CODE[_cell(self)], self.num_layers, self.bidirectional, self.bias, self.proj_size > 0)
        args = (x, h0, c0, weights, masks, batch_sizes, *cfg, _project_lib(), grad)
        if torch.compiler.is_compiling():
            y, h_n, c_n, _ = torch.ops.rnnfast_C.module_fwd(*args)
        elif grad:
            y, h_n, c_n = ModuleStack.apply(
                x, h0, c0, batch_sizes, args[6:-1], len(weights), *weights, *masks
            )
        else:
            # Nothing to record: past the op's Python autograd kernel, most of a short call's overhead.
            with torch._C._AutoDispatchBelowAutograd():
                y, h_n, c_n, _ = torch.ops.rnnfast_C.module_fwd(*args)
        return y, h_n, (c_n if self.mode == "LSTM" else None)

    def _dropout_mask(self, shape, dtype, device) -> Tensor:
        """The dropout mask multiplying a layer's output (torch.nn's dropout between layers: each element
        kept with probability 1 - p and scaled by 1/(1 - p)), drawn from torch's generator."""
        keep = 1.0 - self.dropout
        return torch.empty(shape, dtype=dtype, device=device).bernoulli_(keep).div_(keep)

    def _layers(self, x, T, B, h0, c0, lengths, rows, backend, cast):
        """The layer stack op by op through the ``recurrence`` op, for the backends other than cpu (whose
        stack is one C++ op, :meth:`_cpu_stack`): seq-first x (T, B, I); returns y (T, B, D·N), h_n, c_n
        (L·D, B, ·).

        h0 and c0 are (L·D, B, ·), or None (no ``hx``): zeros, one tensor each for every layer (the
        kernels only read them; a zeros call costs ~1 µs, an index ~0.6, of a one-step call's ~30).

        With ``rows`` (PackedSequence input: the flat (t, b) rows that hold tokens and the others, from
        _packed_rows) x is the packed data (ΣL, I) and every input projection runs on the packed rows
        only, padded afterwards, so no GEMM time goes into the padding (the time loops likewise skip
        finished rows).
        """
        cell = _cell(self)
        D = 2 if self.bidirectional else 1
        dt = cast or x.dtype
        x = as_dtype(x, dt)
        if lengths is not None:
            lengths = lengths.to(x.device)
        is_lstm = self.mode == "LSTM"
        zero_h = zero_c = None
        if h0 is None:
            N = self.proj_size if self.proj_size > 0 else self.hidden_size
            zero_h = x.new_zeros((B, N))
            if is_lstm:  # its own tensor: torch.compile refuses one tensor as two autograd.Function inputs
                zero_c = x.new_zeros((B, self.hidden_size))
        hs, cs = [], []
        for layer in range(self.num_layers):
            outs = []
            x_rows = None
            if rows is not None:
                x_rows = x if layer == 0 else x.flatten(0, 1).index_select(0, rows[0])
            for d in range(D):
                k = layer * D + d
                sfx = f"l{layer}" + ("_reverse" if d else "")
                w_ih = as_dtype(_param(self, "weight_ih_" + sfx), dt)
                w_hh = as_dtype(_param(self, "weight_hh_" + sfx), dt)
                b_ih = as_dtype(_param(self, "bias_ih_" + sfx), dt) if self.bias else None
                b_hh = as_dtype(_param(self, "bias_hh_" + sfx), dt) if self.bias else None
                w_hr = as_dtype(_param(self, "weight_hr_" + sfx), dt) if self.proj_size > 0 else None
                if rows is not None:
                    gi = _pad_rows(F.linear(x_rows, w_ih, b_ih), rows, T, B)
                else:
                    gi = F.linear(x, w_ih, b_ih)
                h_k = zero_h if h0 is None else as_dtype(h0[k], dt)
                c_k = None if not is_lstm else zero_c if c0 is None else as_dtype(c0[k], dt)
                y, h, c = recurrence(cell, gi, h_k, c_k, w_hh, b_hh, w_hr, lengths, bool(d), backend)
                outs.append(y)
                hs.append(h)
                cs.append(c)
            x = outs[0] if D == 1 else torch.cat(outs, -1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        h_n = _stack(hs)
        c_n = _stack(cs) if is_lstm else None
        return x, h_n, c_n


@torch.compiler.assume_constant_result
def _project_lib() -> int:
    # The input projection's library as module_fwd's code; under torch.compile read at trace time (it
    # may look at the CPU), not traced.
    return library_code()


def _packed_batch(input: PackedSequence, hx) -> int:
    """The batch of a PackedSequence: batch_sizes[0], a value, which torch.compile cannot read without
    a graph break; there it is the length of sorted_indices or of the given state, else (only for the
    backend's choice: the kernels read batch_sizes) the mean rows per step, rounded up."""
    if not torch.compiler.is_compiling():
        return int(input.batch_sizes[0])
    if input.sorted_indices is not None:
        return input.sorted_indices.shape[0]
    h = hx[0] if isinstance(hx, tuple) else hx
    if isinstance(h, Tensor) and h.dim() == 3:
        return h.shape[1]
    return -(-input.data.shape[0] // input.batch_sizes.shape[0])


def _stack(ts: list[Tensor]) -> Tensor:
    return ts[0].unsqueeze(0) if len(ts) == 1 else torch.stack(ts)


def _packed_rows(batch_sizes: Tensor, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """PackedSequence layout -> (rows, pad, lengths): rows (ΣL,) the flat t·B + b index of each packed
    token (packed order is time-major with rows sorted by length, i.e. the row-major order of the valid
    (t, b) cells), pad the other flat indices, lengths (B,) per sorted row on the CPU."""
    B = int(batch_sizes[0])
    valid = (torch.arange(B) < batch_sizes.unsqueeze(1)).flatten()  # (T·B,)
    idx = torch.arange(valid.numel())
    return idx[valid].to(device), idx[~valid].to(device), valid.view(-1, B).sum(0)


def _pad_rows(data: Tensor, rows: tuple[Tensor, Tensor], T: int, B: int) -> Tensor:
    """(ΣL, C) packed rows -> (T, B, C) zero-padded, by index_copy: its backward is one index_select
    (pad_packed_sequence copies step by step in place, and autograd then re-copies the whole tensor per
    step: measured 0.3 s of a 0.5 s GRU training step at B=64, H=256, T=100)."""
    out = data.new_empty(T * B, data.shape[-1])
    out.index_fill_(0, rows[1], 0)
    return out.index_copy_(0, rows[0], data).view(T, B, -1)


# PackedSequence <-> padded for the per-op backends under torch.compile, which cannot trace torch.nn's
# pad_packed_sequence / pack_padded_sequence (they read batch_sizes' values). Each is the other's gradient.


@torch.library.custom_op("rnnfast::pad_packed", mutates_args=())
def _pad_packed(data: Tensor, batch_sizes: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """(ΣL, C) packed rows -> (T, B, C) zero-padded and the lengths (B,) int64 on the CPU; ``batch`` is B
    where the caller knows it (a given state), else -1."""
    T, B = batch_sizes.shape[0], int(batch_sizes[0])
    *rows, lengths = _packed_rows(batch_sizes, data.device)
    return _pad_rows(data, rows, T, B), lengths


@_pad_packed.register_fake
def _(data, batch_sizes, batch):
    B = batch if batch >= 0 else torch.library.get_ctx().new_dynamic_size()
    return data.new_empty((batch_sizes.shape[0], B, data.shape[1])), batch_sizes.new_empty((B,))


@torch.library.custom_op("rnnfast::pack_padded", mutates_args=())
def _pack_padded(y: Tensor, batch_sizes: Tensor, total: int) -> Tensor:
    """(T, B, C) padded -> its ``total`` = ΣL packed rows (C,) in PackedSequence order."""
    rows = _packed_rows(batch_sizes, y.device)[0]
    return y.flatten(0, 1).index_select(0, rows)


@_pack_padded.register_fake
def _(y, batch_sizes, total):
    return y.new_empty((total, y.shape[2]))


def _save_batch_sizes(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.shape = inputs[0].shape


def _pad_packed_backward(ctx, grad, _grad_lengths):
    (batch_sizes,) = ctx.saved_tensors
    return torch.ops.rnnfast.pack_padded(grad, batch_sizes, ctx.shape[0]), None, None


def _pack_padded_backward(ctx, grad):
    (batch_sizes,) = ctx.saved_tensors
    return torch.ops.rnnfast.pad_packed(grad, batch_sizes, ctx.shape[1])[0], None, None


_pad_packed.register_autograd(_pad_packed_backward, setup_context=_save_batch_sizes)
_pack_padded.register_autograd(_pack_padded_backward, setup_context=_save_batch_sizes)


def _no_proj(cls_name: str, kwargs: dict) -> None:
    if "proj_size" in kwargs:
        raise ValueError(f"proj_size: only LSTM has a projection, got proj_size for {cls_name}")


# The modules derive from nn.RNNBase, not from nn.RNN/GRU/LSTM: torch.compile refuses to trace instances of
# those three classes (it assumes their cuDNN forward), while it traces rnnfast's forward and custom ops fine.
# Parameters, init, state_dict, flatten_parameters and repr all come from nn.RNNBase unchanged.


class RNN(_FusedRNNMixin, nn.RNNBase):
    """Drop-in :class:`torch.nn.RNN` (tanh or relu) with fused recurrence kernels.

    Same arguments as torch.nn.RNN, plus keyword-only ``backend`` ("auto", "cpu", "triton", "cuda",
    "reference" or "torch").
    """

    def __init__(self, *args, backend: str = "auto", **kwargs):
        _no_proj("RNN", kwargs)
        if len(args) > 3:
            nonlinearity, args = args[3], args[:3] + args[4:]
        else:
            nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_" + nonlinearity.upper(), *args, backend=backend, **kwargs)

    _torch_forward = nn.RNN.forward


class GRU(_FusedRNNMixin, nn.RNNBase):
    """Drop-in :class:`torch.nn.GRU` with fused recurrence kernels; see :class:`RNN`."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        _no_proj("GRU", kwargs)
        super().__init__("GRU", *args, backend=backend, **kwargs)

    _torch_forward = nn.GRU.forward


class LSTM(_FusedRNNMixin, nn.RNNBase):
    """Drop-in :class:`torch.nn.LSTM` (incl. ``proj_size``) with fused recurrence kernels; see ``RNN``."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__("LSTM", *args, backend=backend, **kwargs)

    # torch.nn.LSTM's own checks of the (h_0, c_0) tuple, used by its forward (the "torch" backend).
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden
    _torch_forward = nn.LSTM.forward


_TORCH_CLASS = {RNN: nn.RNN, GRU: nn.GRU, LSTM: nn.LSTM}
_RNNFAST_CLASS = {nn.RNN: RNN, nn.GRU: GRU, nn.LSTM: LSTM}


def _config(m: nn.RNNBase) -> dict:
    cfg = dict(
        input_size=m.input_size,
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        bias=m.bias,
        batch_first=m.batch_first,
        dropout=float(m.dropout),
        bidirectional=m.bidirectional,
    )
    if m.mode in ("RNN_TANH", "RNN_RELU"):
        cfg["nonlinearity"] = m.nonlinearity
    if m.mode == "LSTM":
        cfg["proj_size"] = m.proj_size
    return cfg


def from_torch(module: nn.RNNBase, *, backend: str = "auto") -> RNN | GRU | LSTM:
    """The rnnfast module equivalent to a torch.nn RNN/GRU/LSTM, with copies of its parameters."""
    if isinstance(module, _FusedRNNMixin):
        raise TypeError(f"module: expected a torch.nn RNN/GRU/LSTM, got an rnnfast {type(module).__name__}")
    cls = next((c for t, c in _RNNFAST_CLASS.items() if type(module) is t), None)
    if cls is None:
        raise TypeError(f"module: expected torch.nn.RNN, GRU or LSTM, got {type(module).__name__}")
    w = module.weight_hh_l0
    m = cls(**_config(module), device=w.device, dtype=w.dtype, backend=backend)
    m.load_state_dict(module.state_dict())
    m.train(module.training)
    return m
