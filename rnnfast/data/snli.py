"""SNLI in its jsonl form: examples from the binary parses, a vocabulary, length-bucketed batches and
optional GloVe-format vectors.

A batch puts the B premises and the B hypotheses side by side (2B sentences) so one encoder call
serves both: tokens (2B, N+1) right-padded with the pad index (column N is always padding: the
encoder's null state comes from it), transitions (T, 2B) left-padded with PAD.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnfast.data.trees import pad_transitions, parse_to_transitions

LABELS = ("entailment", "neutral", "contradiction")
UNK, PAD = "<unk>", "<pad>"


@dataclass
class Example:
    premise: list[str]
    premise_transitions: list[int]
    hypothesis: list[str]
    hypothesis_transitions: list[int]
    label: int


def read_jsonl(path: str | Path, lower: bool = True) -> list[Example]:
    """Read an SNLI-format jsonl file (``sentence1_binary_parse``, ``sentence2_binary_parse``,
    ``gold_label``); pairs without a gold label ('-') or with an empty sentence (no tree for the encoder)
    are dropped."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                label = row["gold_label"]
                s1, s2 = row["sentence1_binary_parse"], row["sentence2_binary_parse"]
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{path}:{n}: not an SNLI jsonl line ({e})") from e
            if label not in LABELS:
                continue
            p, pt = parse_to_transitions(s1, lower)
            h, ht = parse_to_transitions(s2, lower)
            if not (p and h):
                continue
            out.append(Example(p, pt, h, ht, LABELS.index(label)))
    return out


class Vocab:
    """Token <-> index; index 0 is ``<unk>`` and 1 is ``<pad>`` (as in the classic example's fields)."""

    def __init__(self, itos: Sequence[str]):
        if list(itos[:2]) != [UNK, PAD]:
            raise ValueError(f"itos: expected to start with {[UNK, PAD]}, got {list(itos[:2])}")
        self.itos = list(itos)
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    @classmethod
    def build(cls, examples: Sequence[Example], min_freq: int = 1, max_size: int | None = None) -> Vocab:
        counts = Counter(t for e in examples for t in (*e.premise, *e.hypothesis))
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls([UNK, PAD] + words[:max_size])

    @property
    def pad_index(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.stoi.get(t, 0) for t in tokens]


@dataclass
class Batch:
    tokens: torch.Tensor  # (2B, N+1) premises then hypotheses, right-padded with the pad index
    transitions: torch.Tensor  # (T, 2B) left-padded with PAD
    labels: torch.Tensor  # (B,)

    def to(self, device) -> Batch:
        return Batch(self.tokens.to(device), self.transitions, self.labels.to(device))

    def __len__(self) -> int:
        return self.labels.shape[0]


def make_batch(examples: Sequence[Example], vocab: Vocab) -> Batch:
    sents = [e.premise for e in examples] + [e.hypothesis for e in examples]
    trans = [e.premise_transitions for e in examples] + [e.hypothesis_transitions for e in examples]
    N = max(len(s) for s in sents)
    tokens = torch.full((len(sents), N + 1), vocab.pad_index, dtype=torch.int64)
    for i, s in enumerate(sents):
        if s:
            tokens[i, : len(s)] = torch.tensor(vocab.encode(s), dtype=torch.int64)
    labels = torch.tensor([e.label for e in examples], dtype=torch.int64)
    return Batch(tokens, pad_transitions(trans), labels)


def batches(
    examples: Sequence[Example], vocab: Vocab, batch_size: int, shuffle: bool = True, seed: int = 0
) -> Iterator[Batch]:
    """Length-bucketed batches: examples sorted by (premise, hypothesis) length so a batch pads little;
    with ``shuffle`` the order within equal lengths and the order of the batches are random."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    rng = random.Random(seed)
    idx = list(range(len(examples)))
    if shuffle:
        rng.shuffle(idx)
    idx.sort(key=lambda i: (len(examples[i].premise), len(examples[i].hypothesis)))
    chunks = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    if shuffle:
        rng.shuffle(chunks)
    for c in chunks:
        yield make_batch([examples[i] for i in c], vocab)


def load_glove(path: str | Path, vocab: Vocab, dim: int | None = None) -> tuple[torch.Tensor, int]:
    """Vectors for ``vocab`` from a GloVe-format text file (``word v1 … vd`` per line).

    Returns (weights (len(vocab), d), number of vocabulary words found); words not in the file get
    N(0, 0.1²) rows, ``<pad>`` zeros.
    """
    found: dict[int, list[float]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip().split(" ")
            if len(parts) < 2:
                continue
            if dim is None:
                dim = len(parts) - 1
            if len(parts) - 1 != dim:
                raise ValueError(f"{path}:{n}: expected {dim} values after the word, got {len(parts) - 1}")
            i = vocab.stoi.get(parts[0])
            if i is not None:
                found[i] = [float(v) for v in parts[1:]]
    if dim is None:
        raise ValueError(f"{path}: no vectors found")
    weights = torch.randn(len(vocab), dim) * 0.1
    weights[vocab.pad_index] = 0
    for i, v in found.items():
        weights[i] = torch.tensor(v)
    return weights, len(found)
