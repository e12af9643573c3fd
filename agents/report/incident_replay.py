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

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kaifong.agents.core import clock
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
           rings: tuple[Ring, ...], horizon: datetime) -> Replayed:
    """Replay one incident: open, first assignments, then updates, deadlines and re-dispatches
    in event-time order, through the worker's own clock functions.

    ``updates`` must be in the order the worker received them (offset order): it breaks ties
    between updates stamped with the same time. Deadlines after ``horizon`` are left pending.
    """
    reported_at = clock.parse_time(report["reported_at"])
    state = clock.open_incident(report, rings, reported_at)
    rounds = sorted(assignments, key=lambda a: (int(a.get("attempt", 0)), a["decided_at"], int(a["ring"])))
    first = [a for a in rounds if int(a.get("attempt", 0)) == 0]
    if first:
        state = clock.with_assignments(state, first, reported_at)
    # (time, order at equal times, arrival order, kind, item): updates before the deadline they
    # share a timestamp with (an arrival *at* the deadline meets it), re-dispatches after it.
    seq = itertools.count()
    queue: list[tuple[datetime, int, int, str, Any]] = []
    queue += [(clock.parse_time(u["at"]), 0, next(seq), "update", u) for u in updates]
    queue += [(clock.parse_time(r["deadline_at"]), 1, next(seq), "deadline", int(r["ring"])) for r in state["rings"]]
    queue += [(clock.parse_time(a["decided_at"]), 2, next(seq), "assign", a)
              for a in rounds if int(a.get("attempt", 0)) > 0]
    queue.sort(key=lambda e: e[:3])
    changes: list[tuple[datetime, clock.RingChange]] = []
    refused = 0
    closed_at: datetime | None = None
    for at, _, _, kind, item in queue:
        if kind == "update":
            if item["kind"] == "escalation_acknowledged":
                continue  # acknowledges an escalation; the ring clocks do not see it
            try:
                state, closed = clock.apply_update(state, item, at)
            except Refused:
                refused += 1
                continue
            changes += [(at, c) for c in closed]
            if state["status"] in clock.TERMINAL and closed_at is None:
                closed_at = at
        elif kind == "deadline":
            if at > horizon:
                continue  # not yet decided when the report was made
            breached = clock.breach(state, item, at)
            if breached is not None:
                state = breached
                changes.append((at, clock.RingChange(item, "breached", None)))
        else:
            state = clock.with_assignments(state, [item], at)
    return Replayed(report, state, changes, refused, closed_at, horizon)


def rings_of_state(state: dict[str, Any]) -> tuple[Ring, ...] | None:
    """The ring table an incident was opened with, as recorded in its state (if complete)."""
    try:
        rings = tuple(Ring(int(r["ring"]), str(r["name"]), float(r["target_s"])) for r in state["rings"])
    except (KeyError, TypeError, ValueError):
        return None
    return rings or None

