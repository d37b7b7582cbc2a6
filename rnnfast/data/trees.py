"""Binary parse strings <-> (tokens, transitions), and random binary trees for tests and benchmarks."""

from __future__ import annotations

import random

import torch

from rnnfast.nn.transitions import PAD, REDUCE, SHIFT


def parse_to_transitions(parse: str, lower: bool = False) -> tuple[list[str], list[int]]:
    """SNLI ``*_binary_parse`` -> (tokens, transitions): a shift per token, a reduce per ')'."""
    tokens, trans = [], []
    for tok in parse.split():
        if tok == "(":
            continue
        if tok == ")":
            trans.append(REDUCE)
        else:
            tokens.append(tok.lower() if lower else tok)
            trans.append(SHIFT)
    return tokens, trans


def transitions_to_parse(tokens: list[str], transitions: list[int]) -> str:
    """The inverse of :func:`parse_to_transitions` for a complete binary parse."""
    stack: list[str] = []
    it = iter(tokens)
    for a in transitions:
        if a == SHIFT:
            stack.append(next(it))
        elif a == REDUCE:
            right, left = stack.pop(), stack.pop()
            stack.append(f"( {left} {right} )")
    if len(stack) != 1:
        raise ValueError(f"transitions: expected a complete parse (one tree left), got {len(stack)} entries")
    return stack[0]


def random_transitions(n: int, rng: random.Random, p_shift: float = 0.5) -> list[int]:
    """A uniformly random shift/reduce sequence of a binary tree with ``n`` leaves (2n−1 transitions)."""
    seq: list[int] = []
    size, left = 0, n
    while left or size > 1:
        if left and (size < 2 or rng.random() < p_shift):
            seq.append(SHIFT)
            left, size = left - 1, size + 1
        else:
            seq.append(REDUCE)
            size -= 1
    return seq


def pad_transitions(seqs: list[list[int]], length: int | None = None) -> torch.Tensor:
    """Left-pad transition sequences with PAD into a (T, B) int64 tensor."""
    T = max([len(s) for s in seqs] + [length or 0])
    out = torch.full((T, len(seqs)), PAD, dtype=torch.int64)
    for b, s in enumerate(seqs):
        if s:
            out[T - len(s) :, b] = torch.tensor(s, dtype=torch.int64)
    return out
