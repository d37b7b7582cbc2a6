"""The ``cuda`` backend's switches, beside :mod:`rnnfast.backends.cpu`: :func:`flags` forces the algorithm
inside the block (``rnnfast.ops.recurrence.cuda.flags``, where it is documented)."""

from rnnfast.ops.recurrence.cuda import flags

__all__ = ["flags"]
