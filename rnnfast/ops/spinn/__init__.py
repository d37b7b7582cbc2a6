"""SPINN: the batched thin-stack encoder (``spinn_encode``) and the list-based reference."""

from rnnfast.ops.spinn.encoder import Plan, check_transitions, make_plan, spinn_encode

__all__ = ["spinn_encode", "make_plan", "Plan", "check_transitions"]
