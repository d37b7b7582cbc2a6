"""Drop-in ``rnnfast.RNN`` / ``GRU`` / ``LSTM``.

Each is built on ``torch.nn.RNNBase`` exactly as its torch.nn counterpart, so the constructor, parameter
names and shapes, init, ``state_dict`` and ``flatten_parameters`` are torch.nn's own; only ``forward``
differs. Per layer and
direction the input projection for all steps is one GEMM (``F.linear``) and the recurrence runs in the
selected rnnfast backend. ``backend="torch"`` (and ``auto`` where no fused backend is verified for the
device) calls torch.nn's forward itself, i.e. cuDNN on CUDA.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnfast import backends
from rnnfast._guards import check_tracer, refuse_scripting
from rnnfast.ops.linear import input_projection, library_code
from rnnfast.ops.recurrence.common import CELL_CODE, as_dtype
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
            T, B = input.batch_sizes.shape[0], int(input.batch_sizes[0])
            x = input.data

        autocast = _autocast_on(x)
        name = self._plan_backend(x, T, B, packed, autocast)
        if name == "torch":
            return self._torch_forward(input, hx)

        sorted_indices = unsorted_indices = lengths = rows = None
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            # The kernels take padded gi in the packed (length-sorted) order, and the lengths. The input
            # projections run on the packed rows (x stays `data`), padded afterwards; under torch.compile
            # (no data-dependent index tensors) x is padded first.
            if torch.compiler.is_compiling():
                x, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
            else:
                *rows, lengths = _packed_rows(batch_sizes, data.device)
                x = data
        elif not batched:
            x = x.unsqueeze(1)

        D = 2 if self.bidirectional else 1
        N = self.proj_size if self.proj_size > 0 else self.hidden_size
        is_lstm = self.mode == "LSTM"
        if hx is None:
            h0 = c0 = None  # zeros, made by _layers
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
        fast = None
        if name == "cpu" and not packed and not autocast:
            fast = self._one_call(x, T, B, h0, c0)
        if fast is not None:
            y, h_n, c_n = fast
        elif autocast:
            with torch.autocast(x.device.type, enabled=False):
                y, h_n, c_n = self._layers(
                    x, T, B, h0, c0, lengths, rows, name, _autocast_dtype(self, x.device)
                )
        else:
            y, h_n, c_n = self._layers(x, T, B, h0, c0, lengths, rows, name, None)

        if packed:
            data = (
                pack_padded_sequence(y, lengths).data
                if rows is None
                else y.flatten(0, 1).index_select(0, rows[0])
            )
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

    def _one_call(self, x, T, B, h0, c0):
        """The cpu backend's whole layer stack in one C++ call (``rnnfast_C::module_fwd``: per layer and
        direction the input projection and the forward loop; in training one autograd node whose backward
        is ``module_bwd``): (y, h_n, c_n), or None where it does not apply (torch.compile, dropout between
        layers in training, float16/bfloat16, weights of another dtype than the input or a tensor
        subclass; RNNFAST_CPU_ONE_CALL=0, read at every call) and _layers runs. It computes what _layers
        does, each product in the same library, and saves its Python and autograd overheads: a one-step
        GRU at B=1, H=64 took ~23 µs through _layers in inference, an RNN ~120 µs in training."""
        dt = x.dtype
        if (
            dt not in _ONE_CALL_DTYPES
            or os.environ.get("RNNFAST_CPU_ONE_CALL") == "0"
            or (self.dropout and self.training and self.num_layers > 1)
            or torch.compiler.is_compiling()
            or type(x) is not Tensor
        ):
            return None
        weights = [_param(self, n) for names in self._all_weights for n in names]
        for w in weights:
            if type(w) not in _PLAIN or w.dtype != dt:
                return None
        cfg = (
            CELL_CODE[_cell(self)],
            self.num_layers,
            self.bidirectional,
            self.bias,
            self.proj_size > 0,
            library_code(),
        )
        if torch.is_grad_enabled() and (
            x.requires_grad
            or any(w.requires_grad for w in weights)
            or any(s is not None and s.requires_grad for s in (h0, c0))
        ):
            if weights[1].numel() * weights[1].element_size() >= _ONE_CALL_TRAIN_MAX_W_HH_BYTES:
                return None
            y, h_n, c_n = _ModuleCall.apply(x, h0, c0, cfg, *weights)
        else:
            y, h_n, c_n, _ = torch.ops.rnnfast_C.module_fwd(x, h0, c0, weights, *cfg, False)
        return y, h_n, (c_n if self.mode == "LSTM" else None)

    def _layers(self, x, T, B, h0, c0, lengths, rows, backend, cast):
        """Run the layer stack on seq-first x (T, B, I); returns y (T, B, D·N), h_n, c_n (L·D, B, ·).

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
                project = input_projection if backend == "cpu" else F.linear
                if rows is not None:
                    gi = _pad_rows(project(x_rows, w_ih, b_ih), rows, T, B)
                else:
                    gi = project(x, w_ih, b_ih)
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


class _ModuleCall(torch.autograd.Function):
    """Autograd of the one-call layer stack: forward ``rnnfast_C::module_fwd`` keeping every layer's
    activations, backward ``module_bwd`` (all layers, directions and the input projections at once)."""

    @staticmethod
    def forward(ctx, x, h0, c0, cfg, *weights):
        y, h_n, c_n, saved = torch.ops.rnnfast_C.module_fwd(x, h0, c0, weights, *cfg, True)
        ctx.cfg, ctx.n_weights = cfg, len(weights)
        ctx.save_for_backward(x, h0, c0, *weights, *saved)
        if cfg[0] != CELL_CODE["lstm"]:
            ctx.mark_non_differentiable(c_n)
        return y, h_n, c_n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_hn, grad_cn):
        x, h0, c0, *rest = ctx.saved_tensors
        weights, saved = rest[: ctx.n_weights], rest[ctx.n_weights :]
        lstm = ctx.cfg[0] == CELL_CODE["lstm"]
        need_dx = ctx.needs_input_grad[0]
        dx, dh0, dc0, dws = torch.ops.rnnfast_C.module_bwd(
            grad_y, grad_hn, grad_cn if lstm else None, x, h0, c0, weights, saved, *ctx.cfg, need_dx
        )
        return (
            dx if need_dx else None,
            dh0 if h0 is not None else None,
            dc0 if c0 is not None else None,
            None,
            *dws,
        )


_ONE_CALL_DTYPES = (torch.float32, torch.float64)
# Training takes the one call only below this W_hh size (the first layer's): what it saves is a fixed
# ~20-90 µs a call, while with a W_hh of 1 MiB or more paired rounds on a 2-core Zen 5 EPYC put it behind
# the per-op path at one step (GRU and LSTM H=512, B=4-16: 0.60-0.87x; B=1 0.77-1.15x) and level at 50
# steps (0.97-1.04x), for reasons not pinned down (its time in the recurrence's backward varied more).
# Inference takes it at every size (paired rounds: 1.03-1.22x at one step, 0.98-1.09x at 50 steps).
_ONE_CALL_TRAIN_MAX_W_HH_BYTES = 1 << 20
_PLAIN = (Tensor, nn.Parameter)


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
