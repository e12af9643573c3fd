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


class Rejected(Exception):
    """A request (an operator's order, a query) that a decision turns down, with a bounded code.

    ``kind`` says what sort of "no" it is — ``invalid`` (the request is malformed), ``not_found``
    (it names something that does not exist), ``conflict`` (it cannot be done in the current
    state), ``unavailable`` (a dependency is down; retrying is safe). Only the web room maps a
    kind to an HTTP status; ``code`` and ``message`` go to the client as they are, ``extra`` as
    further fields of the error body.
    """

    KINDS = ("invalid", "not_found", "conflict", "unavailable")

    def __init__(self, kind: str, code: str, message: str, **extra: object) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown rejection kind {kind!r}")
        self.kind = kind
        self.code = code
        self.message = message
        self.extra = extra
        super().__init__(f"{kind}/{code}: {message}")
