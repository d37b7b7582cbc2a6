"""The ``triton`` backend's switches, beside :mod:`rnnfast.backends.cpu`: :func:`flags` forces the
recurrence's schedule inside the block (``rnnfast.ops.recurrence.triton.flags``, where it is documented)."""

from rnnfast.ops.recurrence.triton import flags

__all__ = ["flags"]
