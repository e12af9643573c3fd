"""kaifong.agents.flows.dispatch — choose and reserve units for an incident's rings, publish assignments.

Layer: agents. Thin around :mod:`kaifong.agents.core.matching`: find candidates (Redis GEO, small
radius first, wider only when a kind found none), call ``choose_units``, reserve every chosen
unit of every ring in one atomic script (all or none), and on a conflict with another incident
(another partition or worker won a unit) exclude the lost units and decide again. Assignment
ids are deterministic (``{incident}:r{ring}:a{attempt}``) and decisions are stored on the
incident, so a replay republishes the same assignments instead of deciding anew.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from kaifong.agents.core import matching
from kaifong.agents.core.matching import Candidate, IncidentView, Needs, RingDecision
from kaifong.agents.store.units import UnitStore
from kaifong.streams import metrics
from kaifong.streams.settings import Settings

log = logging.getLogger(__name__)

#: First search per kind: (radius m, how many). Small radii keep GEOSEARCH cheap (DESIGN §6);
#: a kind that finds nobody is searched again 4× wider.
SEARCH: dict[str, tuple[float, int]] = {
    "post": (1000.0, 40), "unit": (1500.0, 40), "grid_team": (3000.0, 8),
    "street_force": (6000.0, 6), "professional": (15000.0, 6),
}
RING_KINDS: dict[int, tuple[str, ...]] = {1: ("post", "unit"), 2: ("post", "unit"), 3: ("grid_team",),
                                          4: ("street_force",), 5: ("professional",)}
MAX_CONFLICT_RETRIES = 8


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


@dataclass
class Dispatcher:
    """Decides, reserves and publishes; holds no state of its own."""

    settings: Settings
    store: UnitStore
    clock: Callable[[], datetime]
    run_cards: dict[str, dict[int, Needs]] = field(default_factory=lambda: dict(matching.RUN_CARDS))

    @classmethod
    def from_settings(cls, settings: Settings, store: UnitStore, clock: Callable[[], datetime]) -> Dispatcher:
        """Build with the run cards named by the settings (or the built-in ones)."""
        cards = dict(matching.RUN_CARDS)
        if settings.run_cards_file:
            cards = matching.load_run_cards(orjson.loads(Path(settings.run_cards_file).read_bytes()))
        return cls(settings, store, clock, cards)

    @property
    def topic(self) -> str:
        """Full name of the assignments topic."""
        return self.settings.topic_prefix + "dispatch.assignments.v1"

    def _plan(self, view: IncidentView, rings: list[int]) -> tuple[str, list[Any], list[str]]:
        """Pool, ring table and unit kinds of a decision for ``rings``."""
        pool = "drill" if view.exercise else "avail"
        ring_table = [r for r in self.settings.ring_table() if r.number in rings]
        kinds = sorted({k for r in ring_table for k in RING_KINDS.get(r.number, ())})
        return pool, ring_table, kinds

    def search_args(self, view: IncidentView, rings: list[int]) -> list[Any]:
        """Arguments of the candidates search for ``rings`` (``unitstore.CANDIDATES_FN``), for a
        script that runs the search in its own round trip; read its result with
        ``store.found`` and pass that to :meth:`decide`."""
        pool, _, kinds = self._plan(view, rings)
        return self.store.search_args(view.lat, view.lon, [(k, *SEARCH[k]) for k in kinds], pool=pool)

    async def find(self, view: IncidentView, kinds: Iterable[str], pool: str) -> list[Candidate]:
        """Dispatchable candidates of ``kinds`` near the incident."""
        wanted = sorted(set(kinds))
        return await self.store.candidates(view.lat, view.lon, [(k, *SEARCH[k]) for k in wanted], pool=pool)

    async def decide(self, view: IncidentView, rings: list[int], *, exclude: frozenset[str] = frozenset(),
                     attempt: int = 0,
                     writes: Callable[[list[RingDecision]], Sequence[Sequence[Any]]] | None = None,
                     candidates: list[Candidate] | None = None,
                     ) -> list[RingDecision]:
        """Choose and atomically reserve units for ``rings``; retry around lost races.

        ``writes(decisions)`` gives the Redis commands that record a decision; they are done in
        the reservation's atomic step (only for the decision whose reservation succeeds). When
        every retry lost its race, the empty decisions returned have not been written.
        ``candidates``: found already (see :meth:`search_args`); searched here when None.
        """
        pool, ring_table, kinds = self._plan(view, rings)
        if candidates is None:
            candidates = await self.find(view, kinds, pool)
        lost: set[str] = set()
        for _ in range(MAX_CONFLICT_RETRIES):
            pool_now = [c for c in candidates if c.unit_id not in lost]
            decisions = matching.choose_units(view, pool_now, ring_table, self.run_cards,
                                              rings_to_decide=[r.number for r in ring_table],
                                              exclude=exclude | lost,
                                              readiness_weight=self.settings.readiness_weight)
            chosen = [(u.unit_id, d.ring) for d in decisions for u in d.units]
            failed = await self.store.reserve(view.incident_id, chosen, pool=pool,
                                              now_ms=int(self.clock().timestamp() * 1000),
                                              writes=writes(decisions) if writes else None)
            if not failed:
                return decisions
            metrics.RESERVATION_CONFLICTS.inc(len(failed))
            lost |= set(failed)
        # Every retry lost a race: decide with nobody rather than loop forever; the clock
        # escalates an empty ring at once.
        log.warning("incident %s: gave up reserving after %d conflicts", view.incident_id, MAX_CONFLICT_RETRIES)
        return [RingDecision(r.number, (), Needs(0, frozenset()), "no_candidate") for r in ring_table]
