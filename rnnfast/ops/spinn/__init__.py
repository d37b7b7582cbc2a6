"""SPINN: the batched thin-stack encoder (``spinn_encode``) and the list-based reference."""

from rnnfast.ops.spinn.encoder import check_transitions, plan, spinn_encode

__all__ = ["spinn_encode", "plan", "check_transitions"]
