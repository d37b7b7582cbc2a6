"""Models built from rnnfast parts."""

from rnnfast.models.snli import SNLIClassifier

__all__ = ["SNLIClassifier"]
