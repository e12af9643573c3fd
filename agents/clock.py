"""kaifong.agents.clock — pure functions over an incident's state: open it, apply updates.

Layer: agents (pure: no I/O, the clock is passed in). The worker and the after-action report
both call these, so there is one implementation of the rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from kaifong.agents.intake import Refused
from kaifong.streams.settings import Ring

#: Status order: an update never moves an incident backwards (a late "acknowledged" after
#: "on_scene" is recorded but does not reopen anything).
STATUS_ORDER = {"open": 0, "acknowledged": 1, "en_route": 2, "on_scene": 3, "resolved": 9, "cancelled": 9}
TERMINAL = frozenset({"resolved", "cancelled"})
MILESTONES = frozenset({"acknowledged", "en_route", "on_scene", "resolved", "cancelled"})


def _iso(t: datetime) -> str:
    return t.isoformat()


def parse_time(value: str) -> datetime:
    """An RFC 3339 string (already validated) as an aware datetime."""
    return datetime.fromisoformat(value)


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
    state: dict[str, Any] = {
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
    return state


def apply_update(state: dict[str, Any], update: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A new state with ``update`` applied, or :class:`Refused` with the reason.

    Refused: anything after the incident was resolved or cancelled; a milestone timed before
    the report.
    """
    if state["status"] in TERMINAL:
        raise Refused("clock", "incident_closed", f"incident is already {state['status']}")
    at = parse_time(update["at"])
    if at < parse_time(state["reported_at"]):
        raise Refused("clock", "before_report",
                      f"{update['kind']} at {update['at']} is before the report at {state['reported_at']}")
    new = {**state, "version": state["version"] + 1, "updated_at": _iso(now),
           "units": [dict(u) for u in state["units"]], "rings": [dict(r) for r in state["rings"]]}
    kind = update["kind"]
    if kind == "severity_changed":
        if "severity" not in update:
            raise Refused("clock", "missing_field", "severity_changed needs a severity")
        new["severity"] = update["severity"]
    elif kind in MILESTONES:
        if kind in TERMINAL or STATUS_ORDER[kind] > STATUS_ORDER[new["status"]]:
            new["status"] = kind
        unit_id = update.get("unit_id")
        if unit_id:
            for unit in new["units"]:
                if unit["unit_id"] == unit_id:
                    unit["status"] = kind
        if kind in TERMINAL:
            for ring in new["rings"]:
                if ring["state"] == "pending":
                    ring["state"] = "stopped"
    return new


def initial_rings(severity: int, configured: Iterable[int]) -> list[int]:
    """Rings decided as soon as an incident is reported: 1–3, and 4–5 too for severity 1–2.

    >>> initial_rings(1, [1, 2, 3, 4, 5]), initial_rings(3, [1, 2, 3, 4, 5]), initial_rings(1, [1, 2, 3])
    ([1, 2, 3, 4, 5], [1, 2, 3], [1, 2, 3])
    """
    wanted = {1, 2, 3} | ({4, 5} if severity <= 2 else set())
    return sorted(r for r in configured if r in wanted)


def with_assignments(state: dict[str, Any], assignments: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """A new state listing the units assigned per ring (status ``assigned`` until they report)."""
    new = {**state, "version": state["version"] + 1, "updated_at": _iso(now),
           "units": [dict(u) for u in state["units"]], "rings": [dict(r) for r in state["rings"]]}
    known = {u["unit_id"] for u in new["units"]}
    for body in assignments:
        ids = [u["unit_id"] for u in body["units"]]
        for ring in new["rings"]:
            if ring["ring"] == body["ring"]:
                ring["units"] = sorted(set(ring.get("units") or []) | set(ids))
        for uid in ids:
            if uid not in known:
                new["units"].append({"unit_id": uid, "ring": body["ring"], "status": "assigned"})
                known.add(uid)
    return new
