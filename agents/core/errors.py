"""kaifong.agents.core.errors — what a decision can say instead of deciding.

Layer: agents/core (pure). A flow turns :class:`Refused` into a dead-letter record with its
stage and class, and :class:`Duplicate` into a quiet no-op.
"""

from __future__ import annotations


class Duplicate(Exception):
    """Raised by a handler that checks the dedupe ledger itself (in its first round trip)."""


class Refused(Exception):
    """A valid-looking event a later stage refuses (stale sequence, illegal transition…)."""

    def __init__(self, stage: str, error_class: str, reason: str) -> None:
        self.stage = stage
        self.error_class = error_class
        self.reason = reason
        super().__init__(f"{stage}/{error_class}: {reason}")
