"""kaifong.agents.report.incident_replay — one incident replayed through the worker's ring clock.

Layer: agents/report (pure). Every incident goes through the same functions the worker runs
(:mod:`kaifong.agents.core.clock`: ``open_incident`` → ``with_assignments`` → ``apply_update`` …
``breach``), so the report and the worker cannot disagree on a rule, and a different ring table
("what if") is one more replay with other targets. Rules of the replay (event time throughout,
like the worker's clock):

- events are applied in event-time order: updates (``at``), then ring deadlines
  (``deadline_at``: a pending ring is breached there, unless the incident was resolved or
  cancelled before), then re-dispatch rounds (``decided_at``) — at equal times in that order,
  because an arrival *at* the deadline meets the ring (``clock.apply_update``);
- a deadline later than the report's horizon (``to`` + longest target, or now if earlier) is
  not decided: that ring is reported as pending;
- a what-if replay keeps every arrival and dispatch round as it happened and moves only the
  deadlines: it answers "how would these arrivals have been judged under that table", not
  "what would have been dispatched" (a looser table can only turn breaches into met rings).

The worker decides a ring by *processing* order (an arrival timed before the deadline but
delivered after the deadline timer fired counts as a breach there). The report decides by
event time, and lists every ring where the two disagree (the live state topic is the witness).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kaifong.agents.core import clock, responders
from kaifong.agents.core.change import Policy, assign, unit_of
from kaifong.agents.core.errors import Refused
from kaifong.streams.settings import Ring


@dataclass
class Replayed:
    """One incident replayed through :mod:`kaifong.agents.core.clock` under one ring table."""

    report: dict[str, Any]
    state: dict[str, Any]
    #: Ring changes in the order the clock produced them, with their event time.
    changes: list[tuple[datetime, clock.RingChange]]
    #: Updates the clock refused (before the report, after the incident closed …).
    refused: int = 0
    #: Event time of the update that resolved or cancelled the incident, if one did.
    closed_at: datetime | None = None
    #: Deadlines after this were not decided (the report's horizon for this incident).
    horizon: datetime | None = None
    #: ``(segment, ring, kind, seconds)`` of every unit answer, as the worker measures them.
    segments: list[tuple[str, int, str, float]] = field(default_factory=list)

    @property
    def incident_id(self) -> str:
        """The incident's id."""
        return str(self.report["incident_id"])

    @property
    def exercise(self) -> bool:
        """Whether this is an exercise incident (never counted in compliance)."""
        return bool(self.report["exercise"])

    def ring_states(self) -> dict[int, str]:
        """Ring number → met | breached | stopped | pending."""
        return {int(r["ring"]): str(r["state"]) for r in self.state["rings"]}

    def outcome(self) -> str:
        """The incident's class on the map: exercise, breached (any ring), met, or open."""
        if self.exercise:
            return "exercise"
        states = set(self.ring_states().values())
        return "breached" if "breached" in states else "met" if "met" in states else "open"

    def first_on_scene_s(self) -> float | None:
        """Seconds from the report to the first unit on scene (any ring), if any arrived."""
        seconds = [c.seconds for _, c in self.changes if c.seconds is not None]
        return min(seconds) if seconds else None

    def waited_s(self) -> float:
        """How long the scene waited for its first unit: the arrival, or — when nobody came —
        until the incident was closed (or the horizon). A false alarm cancelled after a minute
        waited a minute; an incident nobody reached all day waited all day."""
        first = self.first_on_scene_s()
        if first is not None:
            return first
        end = self.closed_at or self.horizon
        reported = clock.parse_time(self.report["reported_at"])
        return max(0.0, (end - reported).total_seconds()) if end is not None else math.inf


def replay(report: dict[str, Any], assignments: Sequence[dict[str, Any]], updates: Sequence[dict[str, Any]],
           rings: tuple[Ring, ...], horizon: datetime, *, ack_windows: Mapping[int, float] | None = None) -> Replayed:
    """Replay one incident: open, first assignments, then updates, deadlines, acknowledgement
    windows and re-dispatches in event-time order, through the worker's own clock and responder
    functions.

    ``updates`` must be in the order the worker received them (offset order): it breaks ties
    between updates stamped with the same time. Deadlines after ``horizon`` are left pending.
    With ``ack_windows`` (ring → seconds, the worker's ``KAIFONG_ACK_WINDOW*``), a unit that
    neither acknowledged nor moved by the end of its window is a no-show, and a decline releases
    its unit, as in the worker: later answers from a released unit are refused, as the worker
    dead-letters them (``unit_not_assigned``).
    """
    reported_at = clock.parse_time(report["reported_at"])
    state = clock.open_incident(report, rings, reported_at)
    policy = Policy(ack_windows=dict(ack_windows or {}))
    rounds = sorted(assignments, key=lambda a: (int(a.get("attempt", 0)), a["decided_at"], int(a["ring"])))
    # (time, order at equal times, arrival order, kind, item): updates before the deadline or
    # window they share a timestamp with (an arrival *at* the deadline meets it), re-dispatches
    # after it.
    seq = itertools.count()
    queue: list[tuple[datetime, int, int, str, Any]] = []

    def assigned(bodies: list[dict[str, Any]], at: datetime) -> None:
        nonlocal state
        known = {u["unit_id"] for u in state["units"]}
        state, _ = assign(state, bodies, at, policy)
        for u in state["units"]:
            if u["unit_id"] not in known and u.get("ack_due_at"):
                heapq.heappush(queue, (clock.parse_time(u["ack_due_at"]), 1, next(seq), "window", u["unit_id"]))

    first = [a for a in rounds if int(a.get("attempt", 0)) == 0]
    if first:
        assigned(first, reported_at)
    queue += [(clock.parse_time(u["at"]), 0, next(seq), "update", u) for u in updates]
    queue += [(clock.parse_time(r["deadline_at"]), 1, next(seq), "deadline", int(r["ring"])) for r in state["rings"]]
    queue += [(clock.parse_time(a["decided_at"]), 2, next(seq), "assign", a)
              for a in rounds if int(a.get("attempt", 0)) > 0]
    heapq.heapify(queue)
    changes: list[tuple[datetime, clock.RingChange]] = []
    segments: list[tuple[str, int, str, float]] = []
    refused = 0
    closed_at: datetime | None = None
    while queue:
        at, _, _, kind, item = heapq.heappop(queue)
        if kind == "update":
            if item["kind"] == "escalation_acknowledged":
                continue  # acknowledges an escalation; the ring clocks do not see it
            try:
                state, closed, measured = _apply(state, item, at)
            except Refused:
                refused += 1
                continue
            changes += [(at, c) for c in closed]
            segments += measured
            if state["status"] in clock.TERMINAL and closed_at is None:
                closed_at = at
        elif kind == "deadline":
            if at > horizon:
                continue  # not yet decided when the report was made
            breached = clock.breach(state, item, at)
            if breached is not None:
                state = breached
                changes.append((at, clock.RingChange(item, "breached", None)))
        elif kind == "window":
            unit = unit_of(state, item)
            if unit is not None and unit["status"] == "assigned" and state["status"] not in clock.TERMINAL \
                    and at <= horizon:
                unit.update(status="no_show", released_at=at.isoformat())
        else:
            assigned([item], at)
    return Replayed(report, state, changes, refused, closed_at, horizon, segments)


def _apply(state: dict[str, Any], update: dict[str, Any], at: datetime
           ) -> tuple[dict[str, Any], list[clock.RingChange], list[tuple[str, int, str, float]]]:
    """One update as the worker applies it: a unit's answer only from a unit the incident holds
    (refused otherwise), with its segment measured; a decline releases the unit."""
    unit_id = update.get("unit_id")
    if update["kind"] == "declined" and not unit_id:
        raise Refused("clock", "missing_field", "declined needs the unit_id")
    if update["kind"] in responders.UNIT_ANSWERS and unit_id:
        if state["status"] in clock.TERMINAL:
            raise Refused("clock", "incident_closed", "closed")
        if update["kind"] == "declined":
            responders.may_decline({"state": state}, update)  # the worker's refusals
            state = clock.next_version(state, at)
            released = unit_of(state, unit_id)
            assert released is not None
            released.update(status="declined", released_at=update["at"])
            return state, [], []
        responders.holding({"state": state}, update)
        state, closed = clock.apply_update(state, update, at)
        unit = unit_of(state, unit_id)
        assert unit is not None
        measured = responders.milestone(unit, update["kind"], update["at"])
        return state, list(closed), [measured] if measured is not None else []
    state, closed = clock.apply_update(state, update, at)
    return state, list(closed), []


def breach_causes(rp: Replayed) -> dict[int, str]:
    """Each breached ring's cause, from its units' times: ``nobody_available`` (no unit was
    ever assigned to it), ``late_acknowledgement`` (none acknowledged or moved within its
    window: no-shows and declines), ``late_turnout`` (the first to set off left too late to
    arrive by the deadline at its ETA), ``long_travel`` (it left in time; the journey took
    longer than its ETA)."""
    causes: dict[int, str] = {}
    for r in rp.state["rings"]:
        if r["state"] != "breached":
            continue
        ring, deadline = int(r["ring"]), clock.parse_time(r["deadline_at"])
        units = [u for u in rp.state["units"] if int(u["ring"]) == ring]
        moved = sorted((u for u in units if u.get("en_route_at")), key=lambda u: u["en_route_at"])
        answered = [u for u in units if u.get("acknowledged_at") or u.get("en_route_at") or u.get("on_scene_at")]
        if not units:
            causes[ring] = "nobody_available"
        elif not answered:
            causes[ring] = "late_acknowledgement"
        elif not moved:
            causes[ring] = "late_turnout"
        else:
            u = moved[0]
            left_by = deadline - timedelta(seconds=float(u.get("eta_s") or 0.0))
            causes[ring] = "late_turnout" if clock.parse_time(u["en_route_at"]) > left_by else "long_travel"
    return causes


def rings_of_state(state: dict[str, Any]) -> tuple[Ring, ...] | None:
    """The ring table an incident was opened with, as recorded in its state (if complete)."""
    try:
        rings = tuple(Ring(int(r["ring"]), str(r["name"]), float(r["target_s"])) for r in state["rings"])
    except (KeyError, TypeError, ValueError):
        return None
    return rings or None

