"""kaifong.agents.core.clock — the ring clocks as pure functions: open, assign, arrive, breach, escalate.

Layer: agents/core (pure: no I/O, the clock is passed in as ``now``). The worker and the
after-action report both call these, so there is one implementation of the rules:

- every ring's deadline runs from the incident's ``reported_at`` (event time);
- a ring is **met** when one of its units is on scene by its deadline, **breached** when the
  deadline passes unmet (decided by the deadline timer, or by an arrival timed after it);
- a breach raises an escalation one command level up (grid → street → district → city), and
  so do "no candidate at all" and severity 1 (straight to the district);
- resolved or cancelled incidents stop their clocks and absorb nothing more; a milestone
  timed before the report is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kaifong.agents.core.errors import Refused
from kaifong.streams.settings import Ring

#: Status order: an update never moves an incident backwards (a late "acknowledged" after
#: "on_scene" is recorded but does not reopen anything).
STATUS_ORDER = {"open": 0, "acknowledged": 1, "en_route": 2, "on_scene": 3, "resolved": 9, "cancelled": 9}
TERMINAL = frozenset({"resolved", "cancelled"})
MILESTONES = frozenset({"acknowledged", "en_route", "on_scene", "resolved", "cancelled"})
LEVELS = ("grid", "street", "district", "city")
#: Severity-1 incidents go straight to this level.
SEVERITY_LEVEL = "district"


def _iso(t: datetime) -> str:
    return t.isoformat()


def parse_time(value: str) -> datetime:
    """An RFC 3339 string (already validated) as an aware datetime."""
    return datetime.fromisoformat(value)


@dataclass(frozen=True, slots=True)
class RingChange:
    """A ring that closed: met or breached, with the measured seconds when a unit arrived."""

    ring: int
    outcome: str  # "met" | "breached"
    seconds: float | None


def open_incident(report: dict[str, Any], rings: tuple[Ring, ...], now: datetime) -> dict[str, Any]:
    """The first state of an incident: every ring pending, deadlines from ``reported_at``.

    >>> from kaifong.streams.settings import parse_rings
    >>> from datetime import UTC
    >>> s = open_incident({"incident_id": "i1", "category": "fire", "severity": 2,
    ...     "reported_at": "2026-11-29T08:00:00+08:00", "location": {"lat": 23.1, "lon": 113.3},
    ...     "source": "call_110", "exercise": False}, parse_rings("a:60,b:180"), datetime.now(UTC))
    >>> [(r["ring"], r["deadline_at"], r["state"]) for r in s["rings"]]
    [(1, '2026-11-29T08:01:00+08:00', 'pending'), (2, '2026-11-29T08:03:00+08:00', 'pending')]
    """
    reported_at = parse_time(report["reported_at"])
    state = {
        "incident_id": report["incident_id"],
        "version": 1,
        "status": "open",
        "category": report["category"],
        "severity": report["severity"],
        "reported_at": report["reported_at"],
        "updated_at": _iso(now),
        "location": report["location"],
        "district": report.get("district"),
        "grid": report.get("grid"),
        "source": report["source"],
        "exercise": bool(report["exercise"]),
        "rings": [
            {"ring": r.number, "name": r.name, "target_s": r.target_s,
             "deadline_at": _iso(reported_at + timedelta(seconds=r.target_s)), "state": "pending",
             "seconds": None, "units": []}
            for r in rings
        ],
        "units": [],
        "escalation_level": None,
    }
    if report.get("street"):  # only when named: states of reports without one stay as they were
        state["street"] = report["street"]
    return state


def _next(state: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A copy of ``state`` one version on (nested lists copied, never shared)."""
    return {**state, "version": state["version"] + 1, "updated_at": _iso(now),
            "units": [dict(u) for u in state["units"]], "rings": [dict(r) for r in state["rings"]]}


#: A copy of a state one version on (for decisions outside this module).
next_version = _next


def ring_of(state: dict[str, Any], number: int) -> dict[str, Any] | None:
    """The ring entry ``number`` of a state, if configured."""
    return next((r for r in state["rings"] if r["ring"] == number), None)


def initial_rings(severity: int, configured: Iterable[int]) -> list[int]:
    """Rings decided as soon as an incident is reported: 1–3, and 4–5 too for severity 1–2.

    >>> initial_rings(1, [1, 2, 3, 4, 5]), initial_rings(3, [1, 2, 3, 4, 5]), initial_rings(1, [1, 2, 3])
    ([1, 2, 3, 4, 5], [1, 2, 3], [1, 2, 3])
    """
    wanted = {1, 2, 3} | ({4, 5} if severity <= 2 else set())
    return sorted(r for r in configured if r in wanted)


def with_assignments(state: dict[str, Any], assignments: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """A new state listing the units assigned per ring (status ``assigned`` until they report)."""
    new = _next(state, now)
    known = {u["unit_id"] for u in new["units"]}
    for body in assignments:
        ids = [u["unit_id"] for u in body["units"]]
        ring = ring_of(new, body["ring"])
        if ring is not None:
            ring["units"] = sorted(set(ring.get("units") or []) | set(ids))
        for uid in ids:
            if uid not in known:
                new["units"].append({"unit_id": uid, "ring": body["ring"], "status": "assigned"})
                known.add(uid)
    return new


def apply_update(state: dict[str, Any], update: dict[str, Any], now: datetime
                 ) -> tuple[dict[str, Any], list[RingChange]]:
    """A new state with ``update`` applied and the rings it closed, or :class:`Refused`.

    An ``on_scene`` by a unit assigned to ring *r* meets *r* if it is timed by *r*'s deadline
    (the measured seconds are recorded); timed after it, the ring is breached (if the deadline
    timer has not already said so) and the seconds are still recorded.
    """
    if state["status"] in TERMINAL:
        raise Refused("clock", "incident_closed", f"incident is already {state['status']}")
    at = parse_time(update["at"])
    reported_at = parse_time(state["reported_at"])
    if at < reported_at:
        raise Refused("clock", "before_report",
                      f"{update['kind']} at {update['at']} is before the report at {state['reported_at']}")
    new = _next(state, now)
    changes: list[RingChange] = []
    kind = update["kind"]
    if kind == "severity_changed":
        if "severity" not in update:
            raise Refused("clock", "missing_field", "severity_changed needs a severity")
        new["severity"] = update["severity"]
    elif kind in MILESTONES:
        if kind in TERMINAL or STATUS_ORDER[kind] > STATUS_ORDER[new["status"]]:
            new["status"] = kind
        unit_id = update.get("unit_id")
        unit = next((u for u in new["units"] if u["unit_id"] == unit_id), None) if unit_id else None
        if unit is not None and STATUS_ORDER.get(kind, 0) >= STATUS_ORDER.get(unit["status"], 0):
            unit["status"] = kind
        if kind == "on_scene" and unit is not None:
            ring = ring_of(new, unit["ring"])
            if ring is not None and ring["seconds"] is None:
                seconds = round((at - reported_at).total_seconds(), 3)
                ring["seconds"] = seconds
                if ring["state"] == "pending":
                    ring["state"] = "met" if at <= parse_time(ring["deadline_at"]) else "breached"
                    changes.append(RingChange(ring["ring"], ring["state"], seconds))
                else:  # already breached by its timer: the arrival is measured, not re-counted
                    changes.append(RingChange(ring["ring"], "arrived", seconds))
        if kind in TERMINAL:
            for ring in new["rings"]:
                if ring["state"] == "pending":
                    ring["state"] = "stopped"
    return new, changes


def breach(state: dict[str, Any], ring_number: int, now: datetime) -> dict[str, Any] | None:
    """The state with a pending ring marked breached at its deadline, or None if nothing to do."""
    if state["status"] in TERMINAL:
        return None
    ring = ring_of(state, ring_number)
    if ring is None or ring["state"] != "pending":
        return None
    new = _next(state, now)
    target = ring_of(new, ring_number)
    assert target is not None
    target["state"] = "breached"
    return new


def next_level(current: str | None) -> str:
    """One command level up from ``current`` (grid first; city is the top).

    >>> next_level(None), next_level("grid"), next_level("city")
    ('grid', 'street', 'city')
    """
    if current is None:
        return LEVELS[0]
    return LEVELS[min(LEVELS.index(current) + 1, len(LEVELS) - 1)]


def escalation_id(incident_id: str, ring: int, reason: str, attempt: int) -> str:
    """Deterministic escalation id: incident, ring, reason and attempt.

    >>> escalation_id("inc-1", 2, "ring_deadline_missed", 0)
    'inc-1:r2:ring_deadline_missed:0'
    """
    return f"{incident_id}:r{ring}:{reason}:{attempt}"


def incident_of_escalation(escalation: str) -> str:
    """The incident id inside an escalation id."""
    return escalation.rsplit(":", 3)[0]


def escalate(state: dict[str, Any], ring: int, reason: str, now: datetime, attempt: int = 0
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Raise an escalation: the state one level up and the escalation body (notification 0)."""
    level = SEVERITY_LEVEL if reason == "severity" else next_level(state.get("escalation_level"))
    current = state.get("escalation_level")
    if current is not None and LEVELS.index(current) > LEVELS.index(level):
        level = current  # never de-escalate
    new = {**state, "escalation_level": level}
    entry = ring_of(state, ring)
    deadline = parse_time(entry["deadline_at"]) if entry is not None else now
    if reason != "ring_deadline_missed":
        deadline = now  # "at once" escalations are due the moment they are raised
    body = {
        "escalation_id": escalation_id(state["incident_id"], ring, reason, attempt),
        "incident_id": state["incident_id"], "ring": ring, "level": level, "reason": reason,
        "deadline_at": _iso(deadline), "raised_at": _iso(now),
        "breached_by_s": round(max(0.0, (now - deadline).total_seconds()), 3),
        "attempt": attempt, "exercise": bool(state["exercise"]), "notification": 0,
    }
    if state.get("district"):
        body["district"] = state["district"]
    if state.get("street"):
        body["street"] = state["street"]
    if state.get("grid"):
        body["grid"] = state["grid"]
    return new, body
