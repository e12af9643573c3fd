"""kaifong.agents.core.dispatch — what to search for and how a decision goes on the wire.

Layer: agents/core (pure). The flow asks :func:`plan` which units to look for (pool, kinds,
search radii), finds them through the store, lets :func:`choose` (around
:func:`kaifong.agents.core.matching.choose_units`) pick, and publishes :func:`assignment_body`.
Assignment ids are deterministic (``{incident}:r{ring}:a{attempt}``), so a replay republishes
the same assignments instead of deciding anew.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kaifong.agents.core import matching
from kaifong.agents.core.matching import Candidate, IncidentView, Needs, RingDecision
from kaifong.streams.settings import Ring

#: First search per kind: (radius m, how many). Small radii keep GEOSEARCH cheap (DESIGN §6);
#: a kind that finds nobody is searched again 4× wider.
SEARCH: dict[str, tuple[float, int]] = {
    "post": (1000.0, 40), "unit": (1500.0, 40), "grid_team": (3000.0, 8),
    "street_force": (6000.0, 6), "professional": (15000.0, 6),
}
RING_KINDS: dict[int, tuple[str, ...]] = {1: ("post", "unit"), 2: ("post", "unit"), 3: ("grid_team",),
                                          4: ("street_force",), 5: ("professional",)}
#: Reservations lost to another incident before a decision gives up (and escalates).
MAX_CONFLICT_RETRIES = 8


@dataclass(frozen=True)
class Plan:
    """What one decision for some rings of an incident searches for."""

    pool: str  #: ``avail`` (real incidents) or ``drill`` (exercises)
    rings: tuple[Ring, ...]
    #: ``(kind, radius_m, count)`` per unit kind the rings use.
    searches: tuple[tuple[str, float, int], ...]


def plan(view: IncidentView, rings: list[int], ring_table: tuple[Ring, ...]) -> Plan:
    """The pool, ring rows and searches of a decision for ``rings``."""
    chosen = tuple(r for r in ring_table if r.number in rings)
    kinds = sorted({k for r in chosen for k in RING_KINDS.get(r.number, ())})
    return Plan("drill" if view.exercise else "avail", chosen, tuple((k, *SEARCH[k]) for k in kinds))


def choose(view: IncidentView, candidates: list[Candidate], p: Plan,
           run_cards: Mapping[str, Mapping[int, Needs]], *, exclude: frozenset[str] = frozenset(),
           readiness_weight: float = 0.0) -> list[RingDecision]:
    """The matcher's decision for the plan's rings among ``candidates`` (none of ``exclude``)."""
    return matching.choose_units(view, candidates, p.rings, run_cards, rings_to_decide=[r.number for r in p.rings],
                                 exclude=exclude, readiness_weight=readiness_weight)


def nobody(p: Plan) -> list[RingDecision]:
    """The decision when every reservation lost its race: nobody, so the clock escalates at once."""
    return [RingDecision(r.number, (), Needs(0, frozenset()), "no_candidate") for r in p.rings]


def chosen_units(decisions: list[RingDecision]) -> list[tuple[str, int]]:
    """``(unit_id, ring)`` of every unit a decision takes."""
    return [(u.unit_id, d.ring) for d in decisions for u in d.units]


def assignment_id(incident_id: str, ring: int, attempt: int) -> str:
    """Deterministic id of the assignment of ``ring`` at ``attempt`` (0 = first decision)."""
    return f"{incident_id}:r{ring}:a{attempt}"


def view_of(report: dict[str, Any], severity: int | None = None) -> IncidentView:
    """The matcher's view of an incident report."""
    needs = report.get("needs")
    return IncidentView(
        incident_id=report["incident_id"], category=report["category"],
        severity=severity or report["severity"], lat=report["location"]["lat"], lon=report["location"]["lon"],
        district=report.get("district"), grid=report.get("grid"), venue_id=report.get("venue_id"),
        exercise=bool(report["exercise"]),
        needs=None if not needs else Needs(int(needs.get("responders", 0)), frozenset(needs.get("equipment", []))),
    )


def assignment_body(incident_id: str, decision: RingDecision, attempt: int, decided_at: datetime,
                    exercise: bool) -> dict[str, Any]:
    """The wire form of one ring's decision (schema ``assignment``)."""
    body: dict[str, Any] = {
        "assignment_id": assignment_id(incident_id, decision.ring, attempt), "incident_id": incident_id,
        "ring": decision.ring, "attempt": attempt,
        "units": [{"unit_id": u.unit_id, "kind": u.kind, "distance_m": round(u.distance_m, 1),
                   "eta_s": round(u.eta_s, 1), "responders": u.responders, "rank": u.rank,
                   "equipment": list(u.equipment)} for u in decision.units],
        "decided_at": decided_at.isoformat(), "reason": decision.reason, "exercise": exercise,
    }
    if decision.shortfall is not None:
        body["shortfall"] = {"responders": decision.shortfall.responders,
                             "equipment": sorted(decision.shortfall.equipment)}
    return body


def outcome_of(body: dict[str, Any]) -> str:
    """Bounded label of an assignment (wire form) for the assignments counter."""
    if not body["units"]:
        return "no_candidate"
    if body.get("shortfall") is not None:
        return "shortfall"
    return "beyond_target" if body["reason"] == "beyond_target" else "ok"
