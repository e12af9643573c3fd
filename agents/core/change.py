"""kaifong.agents.core.change — what an incident decision returns: a Change, or a Redispatch first.

Layer: agents/core (pure). A :class:`Change` is one decision's effects, applied by the store in
one atomic step; a :class:`Redispatch` is a change that first needs candidates (a ring decided
again after a no-show, a decline, a stuck unit or a severity upgrade): the flow searches, the
matcher chooses, and :func:`kaifong.agents.core.incident.redispatched` completes the change.

Timer members are ``kind|incident|arg``: ``d`` ring deadline (arg: ring), ``n`` re-notification
(arg: escalation id), ``e`` expiry of updates parked before their report, ``w`` a unit's
acknowledgement window and ``s`` its stuck check (arg: unit id).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kaifong.agents.core import clock
from kaifong.agents.core.matching import RUN_CARDS, IncidentView, Needs, needs_for

#: What a change publishes: ("assignment" | "escalation" | "state", body). The flow encodes
#: them for their topics (with CloudEvents headers) before the store keeps them in the outbox.
Publish = tuple[str, dict[str, Any]]

#: Unit statuses on an incident that still hold the unit (assigned and not released).
ACTIVE = frozenset({"assigned", "acknowledged", "en_route", "on_scene"})
#: How a released unit ended on an incident.
RELEASED = frozenset({"no_show", "declined"})
#: A unit en route is stuck after ``stuck_factor × ETA``, and never sooner than its ETA plus this.
STUCK_GRACE_S = 60.0


@dataclass(frozen=True)
class Policy:
    """The configuration the incident decisions need (from the settings, read once)."""

    renotify_s: float = 60.0
    #: Acknowledgement window (s) per ring.
    ack_windows: Mapping[int, float] = field(default_factory=dict)
    stuck_factor: float = 2.0
    #: The configured ring numbers.
    rings: tuple[int, ...] = (1, 2, 3, 4, 5)
    run_cards: Mapping[str, Mapping[int, Needs]] = field(default_factory=lambda: dict(RUN_CARDS))


def timer(kind: str, incident_id: str, arg: str = "") -> str:
    """A timer's member string: kind (see the module docstring), incident id, argument."""
    return f"{kind}|{incident_id}|{arg}"


def parse_timer(value: str) -> tuple[str, str, str]:
    """``(kind, incident_id, arg)`` of a timer member string."""
    kind, incident_id, arg = value.split("|", 2)
    return kind, incident_id, arg


def due_ms(t: datetime) -> int:
    """A timer's due time in ms, rounded up: a timer claimed at its due millisecond must never
    fire before the deadline."""
    return math.ceil(t.timestamp() * 1000)


@dataclass(frozen=True)
class Released:
    """A unit let go by an incident before it arrived."""

    unit_id: str
    ring: int
    cause: str  #: ``no_show`` | ``declined``
    reason: str | None = None  #: the decline's reason


@dataclass(frozen=True)
class Change:
    """One decision's effects, applied together or not at all."""

    doc: dict[str, Any]
    publish: tuple[Publish, ...] = ()
    #: ``(unit_id, ring)`` to reserve for this incident in ``pool`` (all or none).
    reserve: tuple[tuple[str, int], ...] = ()
    pool: str = "avail"
    #: Release these units (no-show, declined) / every unit the incident holds (it closed).
    release: tuple[str, ...] = ()
    release_all: bool = False
    timers_set: tuple[tuple[str, int], ...] = ()
    timers_clear: tuple[str, ...] = ()
    #: Real escalations now open (id, level) / no longer open (id): the open-escalations gauge.
    escalations_opened: tuple[tuple[str, str], ...] = ()
    escalations_closed: tuple[str, ...] = ()
    #: The incident leaves the open set (resolved or cancelled).
    close: bool = False
    # -- facts for the flow to count and tell (no metrics in core) ---------------------------
    assignments: tuple[dict[str, Any], ...] = ()
    escalations: tuple[dict[str, Any], ...] = ()
    ring_changes: tuple[clock.RingChange, ...] = ()
    #: Seconds from an escalation's raising to its acknowledgement, with its level.
    acknowledged: tuple[str, float] | None = None
    renotified: dict[str, Any] | None = None
    #: ``(segment, ring, kind, seconds)``: acknowledgement, turnout, travel of one unit.
    segments: tuple[tuple[str, int, str, float], ...] = ()
    needs_met_s: float | None = None
    released: tuple[Released, ...] = ()
    stuck: tuple[tuple[str, int], ...] = ()
    #: ``(ring, cause)`` of the rings decided again by this change.
    redispatched: tuple[tuple[int, str], ...] = ()

    @property
    def dispatched(self) -> list[str]:
        """The units this change assigns."""
        return [u["unit_id"] for b in self.assignments for u in b["units"]]


@dataclass(frozen=True)
class Redispatch:
    """A change that first needs candidates: decide ``rings`` of the incident again."""

    #: What the event changes besides the new decision (its document has the event applied).
    base: Change
    rings: tuple[int, ...]
    #: Never one of these (every unit the incident was ever given).
    exclude: frozenset[str]
    cause: str  #: ``no_show`` | ``declined`` | ``stuck`` | ``severity``
    #: The matcher's view: the current severity and, for ring 2, only the needs still missing.
    view: IncidentView
    #: When nobody is found: raise this escalation (``unit_declined``, ``no_candidate``), or None.
    escalate_if_short: str | None = None


def entry(body: dict[str, Any]) -> dict[str, Any]:
    """A fresh escalation entry of the stored document."""
    return {"body": body, "acked_at": None, "acked_by": None, "notifications": 0}


def opened(escalations: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> tuple[tuple[str, str], ...]:
    """The real escalations among ``escalations``, as the open-escalations gauge keeps them."""
    return tuple((e["escalation_id"], e["level"]) for e in escalations if not e["exercise"])


def pool_of(state: dict[str, Any]) -> str:
    """The unit pool of an incident: the drill pool for an exercise."""
    return "drill" if state["exercise"] else "avail"


def renotify_timer(body: dict[str, Any], now: datetime, policy: Policy) -> tuple[str, int]:
    """The re-notification timer of a freshly raised escalation."""
    return timer("n", body["incident_id"], body["escalation_id"]), due_ms(now) + int(policy.renotify_s * 1000)


def assign(state: dict[str, Any], bodies: list[dict[str, Any]], now: datetime, policy: Policy
           ) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """The state with ``bodies``' units listed (status ``assigned``, with their kind, ETA and
    acknowledgement deadline), and their acknowledgement-window timers."""
    new = clock.with_assignments(state, bodies, now)
    by_id = {u["unit_id"]: u for u in new["units"]}
    timers: list[tuple[str, int]] = []
    for body in bodies:
        decided = clock.parse_time(body["decided_at"])
        window = policy.ack_windows.get(body["ring"])
        for unit in body["units"]:
            e = by_id[unit["unit_id"]]
            if e.get("assigned_at") is not None:
                continue  # listed before (a replay of the same decision)
            due = decided + timedelta(seconds=window) if window else None
            e.update(kind=unit.get("kind"), eta_s=unit.get("eta_s"), assigned_at=body["decided_at"],
                     ack_due_at=due.isoformat() if due else None)
            if due is not None:
                timers.append((timer("w", state["incident_id"], unit["unit_id"]), due_ms(due)))
    return new, timers


def unit_of(state: dict[str, Any], unit_id: str) -> dict[str, Any] | None:
    """The entry of ``unit_id`` in a state's units, if it was ever assigned."""
    return next((u for u in state["units"] if u["unit_id"] == unit_id), None)


def tried(doc: dict[str, Any]) -> frozenset[str]:
    """Every unit the incident was ever given (never chosen again for it)."""
    return frozenset(u["unit_id"] for b in doc["assignments"] or [] for u in b["units"])


def next_attempt(doc: dict[str, Any], ring: int) -> int:
    """The attempt number of the next decision of ``ring`` (0 for a ring never decided)."""
    return 1 + max((b["attempt"] for b in doc["assignments"] or [] if b["ring"] == ring), default=-1)


def needs_left(doc: dict[str, Any], view: IncidentView, policy: Policy) -> Needs:
    """The run card's needs (for the view's severity) not covered by the units still held."""
    need = needs_for(view, policy.run_cards)
    active = {u["unit_id"] for u in doc["state"]["units"] if u["status"] in ACTIVE}
    responders, equipment = 0, set()
    for body in doc["assignments"] or []:
        for unit in body["units"]:
            if unit["unit_id"] in active:
                responders += int(unit.get("responders", 0))
                equipment |= set(unit.get("equipment", ()))
    return Needs(max(0, need.responders - responders), frozenset(need.equipment - equipment))
