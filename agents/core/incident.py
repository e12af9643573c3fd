"""kaifong.agents.core.incident — the incident decisions as values: what each event changes.

Layer: agents/core (pure). Each function takes the stored document of an incident, the event
and the time, and returns a :class:`Change` — the new document, what to publish, the units to
reserve or release, the timers to set or clear, the escalations opened or closed — which the
store applies in one atomic step (:meth:`kaifong.agents.store.incidents.IncidentStore.apply`)
and the flow then publishes and counts. Nothing here reads a clock, Redis or the broker.

The stored document: ``state`` (what the state topic shows), ``report`` (the report as kept,
without the caller's contact), ``assignments`` (every assignment body, None until the first
decision is stored), ``escalations`` (id → body, acknowledgement, notifications), ``applied``
(the last update event ids) and ``partition`` (whose timers these are).

Timer members are ``kind|incident|arg``: ``d`` ring deadline (arg: ring), ``n`` re-notification
(arg: escalation id), ``e`` expiry of updates parked before their report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from kaifong.agents.core import clock
from kaifong.agents.core.dispatch import assignment_body, chosen_units
from kaifong.agents.core.errors import Refused
from kaifong.agents.core.matching import IncidentView, RingDecision
from kaifong.streams.settings import Ring

#: Applied update ids remembered per incident (idempotency beyond the dedupe window).
APPLIED_KEEP = 500

#: What a change publishes: ("assignment" | "escalation" | "state", body). The flow encodes
#: them for their topics (with CloudEvents headers) before the store keeps them in the outbox.
Publish = tuple[str, dict[str, Any]]


def timer(kind: str, incident_id: str, arg: str = "") -> str:
    """A timer's member string: kind (d=deadline, n=re-notify, e=early-update expiry), id, arg."""
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
class Change:
    """One decision's effects, applied together or not at all."""

    doc: dict[str, Any]
    publish: tuple[Publish, ...] = ()
    #: ``(unit_id, ring)`` to reserve for this incident in ``pool`` (all or none).
    reserve: tuple[tuple[str, int], ...] = ()
    pool: str = "avail"
    #: Release every unit the incident holds (it closed).
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

    @property
    def dispatched(self) -> list[str]:
        """The units this change assigns."""
        return [u["unit_id"] for b in self.assignments for u in b["units"]]



def _entry(body: dict[str, Any]) -> dict[str, Any]:
    return {"body": body, "acked_at": None, "acked_by": None, "notifications": 0}


def _opened(escalations: list[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    return tuple((e["escalation_id"], e["level"]) for e in escalations if not e["exercise"])


def _pool(state: dict[str, Any]) -> str:
    return "drill" if state["exercise"] else "avail"


# -- reports ---------------------------------------------------------------------------------
def fresh_document(report: dict[str, Any], rings: tuple[Ring, ...], now: datetime, partition: int) -> dict[str, Any]:
    """The document an incident is opened with (no decision yet: ``assignments`` None)."""
    # The caller's contact stays upstream: kaifong keeps no personal data it does not need.
    kept = {k: v for k, v in report.items() if k != "caller"}
    return {"state": clock.open_incident(report, rings, now), "applied": [], "report": kept, "assignments": None,
            "escalations": {}, "partition": partition}


def first_rings(severity: int, ring_table: tuple[Ring, ...]) -> list[int]:
    """The rings decided when an incident is reported (by severity)."""
    return clock.initial_rings(severity, [r.number for r in ring_table])


def reported(doc: dict[str, Any], view: IncidentView, decisions: list[RingDecision], now: datetime,
             renotify_s: float) -> Change:
    """A report's first decision: assignments, the severity-1 and no-candidate escalations, the
    ring deadlines and re-notification timers, and the new state."""
    incident_id = view.incident_id
    bodies = [assignment_body(incident_id, d, 0, now, view.exercise) for d in decisions]
    state = clock.with_assignments(doc["state"], bodies, now)
    escalations: list[dict[str, Any]] = []
    if view.severity == 1:
        state, body = clock.escalate(state, 1, "severity", now)
        escalations.append(body)
    for d in decisions:
        if not d.units and d.reason != "needs_met":
            state, body = clock.escalate(state, d.ring, "no_candidate", now)
            escalations.append(body)
    new = {**doc, "state": state, "assignments": bodies,
           "escalations": {**doc["escalations"], **{e["escalation_id"]: _entry(e) for e in escalations}}}
    timers = [(timer("d", incident_id, str(r["ring"])), due_ms(clock.parse_time(r["deadline_at"])))
              for r in state["rings"] if r["state"] == "pending"]
    timers += [(timer("n", incident_id, e["escalation_id"]), due_ms(now) + int(renotify_s * 1000))
               for e in escalations]
    publish: list[Publish] = [("assignment", b) for b in bodies]
    publish += [("escalation", e) for e in escalations]
    publish.append(("state", state))
    return Change(doc=new, publish=tuple(publish), reserve=tuple(chosen_units(decisions)), pool=_pool(state),
                  timers_set=tuple(timers), escalations_opened=_opened(escalations),
                  assignments=tuple(bodies), escalations=tuple(escalations))


# -- deadlines -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Breach:
    """A ring deadline that fires: the state with the ring breached and escalated, and what the
    wider re-dispatch for the ring must search (never a unit already tried)."""

    ring: int
    state: dict[str, Any]
    escalation: dict[str, Any]
    exclude: frozenset[str]
    attempt: int
    view: IncidentView


def breach(doc: dict[str, Any], ring: int, now: datetime, view: IncidentView) -> Breach | None:
    """The breach of ``ring`` at its deadline, or None when it is met, stopped or breached
    already (a timer that fires twice changes nothing). ``view``: the matcher's view of the
    report at the incident's current severity."""
    state = clock.breach(doc["state"], ring, now)
    if state is None:
        return None
    attempt = sum(1 for e in doc["escalations"].values()
                  if e["body"]["ring"] == ring and e["body"]["reason"] == "ring_deadline_missed")
    state, esc = clock.escalate(state, ring, "ring_deadline_missed", now, attempt)
    assignments = doc["assignments"] or []
    tried = frozenset(u["unit_id"] for b in assignments for u in b["units"])
    re_attempt = 1 + max((b["attempt"] for b in assignments if b["ring"] == ring), default=0)
    return Breach(ring, state, esc, tried, re_attempt, view)


def breached(doc: dict[str, Any], b: Breach, decisions: list[RingDecision], now: datetime,
             renotify_s: float) -> Change:
    """The breach stored with its re-dispatch: escalation first, then the new assignments."""
    incident_id = b.state["incident_id"]
    bodies = [assignment_body(incident_id, d, b.attempt, now, b.state["exercise"]) for d in decisions]
    state = clock.with_assignments(b.state, bodies, now)
    esc = b.escalation
    new = {**doc, "state": state, "assignments": [*(doc["assignments"] or []), *bodies],
           "escalations": {**doc["escalations"], esc["escalation_id"]: _entry(esc)}}
    publish: list[Publish] = [("escalation", esc), *(("assignment", body) for body in bodies), ("state", state)]
    return Change(doc=new, publish=tuple(publish), reserve=tuple(chosen_units(decisions)), pool=_pool(state),
                  timers_set=((timer("n", incident_id, esc["escalation_id"]), due_ms(now) + int(renotify_s * 1000)),),
                  escalations_opened=_opened([esc]), assignments=tuple(bodies), escalations=(esc,),
                  ring_changes=(clock.RingChange(b.ring, "breached", None),))


# -- re-notifications and acknowledgements ---------------------------------------------------
def renotify(doc: dict[str, Any], esc_id: str, now: datetime, renotify_s: float) -> Change | None:
    """Tell an unacknowledged escalation again (and again after ``renotify_s``), or None when
    it was acknowledged or the incident closed."""
    entry = doc["escalations"].get(esc_id)
    if entry is None or entry["acked_at"] is not None or doc["state"]["status"] in clock.TERMINAL:
        return None
    n = entry["notifications"] + 1
    body = {**entry["body"], "notification": n, "raised_at": now.isoformat()}
    new = {**doc, "escalations": {**doc["escalations"], esc_id: {**entry, "notifications": n}}}
    return Change(doc=new, publish=(("escalation", body),),
                  timers_set=((timer("n", doc["state"]["incident_id"], esc_id), due_ms(now) + int(renotify_s * 1000)),),
                  renotified=body)


def acknowledge(doc: dict[str, Any], update: dict[str, Any]) -> Change:
    """A duty officer's acknowledgement of an escalation: no more re-notifications. Refused
    for an escalation the incident does not have; a second acknowledgement changes nothing
    but is recorded as applied."""
    esc_id = str(update.get("escalation_id") or "")
    entry = doc["escalations"].get(esc_id)
    if entry is None:
        raise Refused("clock", "unknown_escalation", f"no escalation {esc_id!r} on incident {update['incident_id']}")
    new = {**doc, "applied": [*doc["applied"], update["event_id"]][-APPLIED_KEEP:]}
    if entry["acked_at"] is not None:
        return Change(doc=new, escalations_closed=(esc_id,))
    at = clock.parse_time(update["at"])
    raised = clock.parse_time(entry["body"]["raised_at"])
    new["escalations"] = {**doc["escalations"],
                          esc_id: {**entry, "acked_at": update["at"], "acked_by": update.get("by")}}
    return Change(doc=new, timers_clear=(timer("n", update["incident_id"], esc_id),), escalations_closed=(esc_id,),
                  acknowledged=(entry["body"]["level"], max(0.0, (at - raised).total_seconds())))


# -- milestones ------------------------------------------------------------------------------
def updated(doc: dict[str, Any], update: dict[str, Any], now: datetime) -> Change | None:
    """A milestone (acknowledged, en route, on scene, resolved, cancelled…) applied, or None
    for a replay of an update already applied. A terminal status stops every clock of the
    incident and frees its units. Refused as :func:`kaifong.agents.core.clock.apply_update` says."""
    if update["event_id"] in doc["applied"]:
        return None
    if update["kind"] == "escalation_acknowledged":
        return acknowledge(doc, update)
    state, changes = clock.apply_update(doc["state"], update, now)
    new = {**doc, "state": state, "applied": [*doc["applied"], update["event_id"]][-APPLIED_KEEP:]}
    change = Change(doc=new, publish=(("state", state),), ring_changes=tuple(changes))
    if state["status"] not in clock.TERMINAL:
        return change
    incident_id = state["incident_id"]
    clear = [timer("d", incident_id, str(r["ring"])) for r in state["rings"]]
    clear += [timer("n", incident_id, e) for e in doc["escalations"]]
    return replace(change, timers_clear=tuple(clear), release_all=True, close=True)
