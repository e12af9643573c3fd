"""kaifong.agents.web.audit — the audit trail: every human action on the web port, done or refused.

Layer: agents/web. Topic ``kaifong.audit.v1``. An action (acknowledging an escalation, ordering
a drill, signing in or out; merges and manual actions are reserved in the schema) becomes one record of
``schemas/json/audit.schema.json``, keyed by the acting seat (``service`` for the API token,
``anonymous`` for token-less development), with the client's address as the server saw it
(``request.remote``: behind a proxy, the proxy's — a forwarded header is a claim anybody can
make). Refused attempts (403) are recorded too, with the reason. Records carry ids, seats and
roles only: never a name, a phone number or a credential.

An acknowledgement's record is produced in the same batch as the acknowledgement itself
(:meth:`Trail.entry`), so one is never published without the other being attempted.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import jsonschema
import orjson
from aiohttp import web

from kaifong.agents.web.identity import Principal
from kaifong.agents.web.services import SendAll
from kaifong.schemas.validation import load_schema
from kaifong.streams import metrics
from kaifong.streams.codec import Headers, cloudevent_headers
from kaifong.streams.settings import Settings
from kaifong.streams.topics import AUDIT

log = logging.getLogger(__name__)

#: The actions of the schema (the last three are reserved for later features).
ACTIONS: tuple[str, ...] = ("escalation_acknowledged", "drill_ordered", "signed_in", "signed_out",
                            "merge_confirmed", "merge_undone", "manual_action")
OUTCOMES: tuple[str, ...] = ("ok", "refused")

Record = tuple[str, bytes | None, bytes, Headers]


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema("audit"))


def check(record: dict[str, Any]) -> None:
    """Raise :class:`ValueError` naming every reason when ``record`` breaks the audit schema."""
    errors = sorted(e.message[:200] for e in _validator().iter_errors(record))
    if errors:
        raise ValueError("audit record: " + "; ".join(errors))


def key_of(principal: Principal) -> str:
    """The record's key: the seat id, else ``service`` or ``anonymous``."""
    return principal.seat_id or principal.kind


def audit_id(action: str, outcome: str, principal: Principal, subject: dict[str, Any], discriminator: str) -> str:
    """A deterministic id: the same action by the same caller on the same subject (and the same
    ``discriminator``: a time for actions that are not idempotent) has the same id, so a retried
    request is recognisable downstream.

    >>> a = audit_id("drill_ordered", "ok", Principal("service", "admin"), {"drill_id": "d1"}, "")
    >>> a == audit_id("drill_ordered", "ok", Principal("service", "admin"), {"drill_id": "d1"}, ""), a[:3]
    (True, 'au-')
    """
    canonical = orjson.dumps([action, outcome, principal.kind, principal.seat_id, subject, discriminator],
                             option=orjson.OPT_SORT_KEYS)
    return "au-" + hashlib.sha256(canonical).hexdigest()[:32]


def record(principal: Principal, action: str, outcome: str, subject: dict[str, Any], *, remote: str | None,
           at: datetime, reason: str | None = None, discriminator: str | None = None) -> dict[str, Any]:
    """One audit record (checked against the schema). ``discriminator`` None: the time (the
    action is not idempotent); "" or an id: idempotent, the id does not depend on the time."""
    stamp = at.astimezone(UTC).isoformat(timespec="milliseconds")
    body: dict[str, Any] = {
        "audit_id": audit_id(action, outcome, principal, subject, stamp if discriminator is None else discriminator),
        "at": stamp, "action": action, "outcome": outcome, "seat": principal.seat_id, "role": principal.role,
        "level": principal.level, "principal": principal.kind, "subject": subject,
        "remote": (remote or None) and str(remote)[:100]}
    if reason is not None:
        body["reason"] = reason[:300]
    check(body)
    return body


@dataclass
class Trail:
    """Builds and publishes audit records with the worker's producer, and counts them."""

    settings: Settings
    send_all: SendAll
    clock: Callable[[], datetime]

    def __post_init__(self) -> None:
        for action in ACTIONS:
            for outcome in OUTCOMES:
                metrics.AUDIT.labels(action, outcome)  # series at zero from the start

    def entry(self, request: web.Request, principal: Principal, action: str, outcome: str,
              subject: dict[str, Any], *, reason: str | None = None,
              discriminator: str | None = None) -> tuple[Record, dict[str, Any]]:
        """The producer record of one action (to send in the same batch as what it records)."""
        body = record(principal, action, outcome, subject, remote=request.remote, at=self.clock(), reason=reason,
                      discriminator=discriminator)
        headers = [*cloudevent_headers(body["audit_id"], "audit", self.clock(), subject=action), ("kf_via", b"http")]
        return (AUDIT.name(self.settings), key_of(principal).encode(), orjson.dumps(body), headers), body

    @staticmethod
    def counted(body: dict[str, Any]) -> None:
        """Count a record the broker took."""
        metrics.AUDIT.labels(body["action"], body["outcome"]).inc()

    async def publish(self, request: web.Request, principal: Principal, action: str, outcome: str,
                      subject: dict[str, Any], *, reason: str | None = None,
                      discriminator: str | None = None) -> bool:
        """Publish one record on its own; False (logged, never raised) when the broker did not take it."""
        rec, body = self.entry(request, principal, action, outcome, subject, reason=reason,
                               discriminator=discriminator)
        try:
            await self.send_all([rec])
        except Exception as exc:  # noqa: BLE001 - the action's answer stands; the loss is logged
            log.error("audit: %s %s by %s not recorded (%s)", action, outcome, key_of(principal),  # noqa: TRY400 - the class is the message
                      type(exc).__name__)
            return False
        self.counted(body)
        return True
