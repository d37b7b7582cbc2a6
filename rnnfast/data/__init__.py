"""SNLI data: jsonl loader, vocabulary, bucketed batches, GloVe vectors; binary-parse helpers."""

from rnnfast.data.snli import LABELS, Batch, Example, Vocab, batches, load_glove, make_batch, read_jsonl
from rnnfast.data.trees import pad_transitions, parse_to_transitions, random_transitions, transitions_to_parse

__all__ = [
    "LABELS",
    "Batch",
    "Example",
    "Vocab",
    "batches",
    "load_glove",
    "make_batch",
    "read_jsonl",
    "pad_transitions",
    "parse_to_transitions",
    "random_transitions",
    "transitions_to_parse",
]
