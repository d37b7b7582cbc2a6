"""Benchmarks: the case registry, the runner, the roofline floor, the figures, ``rnnfast bench`` and
``rnnfast profile``.

``python -m rnnfast.bench [bench|profile] ...`` runs them without the ``rnnfast`` console script.
"""

from rnnfast.bench.cli import main_bench, main_profile

__all__ = ["main_bench", "main_profile"]
