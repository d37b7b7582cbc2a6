"""Transition codes of the SPINN shift/reduce sequences (those of the classic PyTorch SNLI example)."""

PAD = 1  # no-op (left padding of shorter sequences)
REDUCE = 2  # pop right, pop left, push compose(left, right)
SHIFT = 3  # push the buffer's next leaf
