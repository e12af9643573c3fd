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

Timer members: see :mod:`kaifong.agents.core.change`. The follow-up with the units (answers,
declines, no-shows, stuck units, severity changes) is :mod:`kaifong.agents.core.responders`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from kaifong.agents.core import clock, responders
from kaifong.agents.core.change import (
    Change,
    Policy,
    Publish,
    Redispatch,
    assign,
    due_ms,
    entry,
    next_attempt,
    opened,
    parse_timer,
    pool_of,
    renotify_timer,
    timer,
    tried,
)
from kaifong.agents.core.dispatch import assignment_body, chosen_units
from kaifong.agents.core.errors import Refused
from kaifong.agents.core.matching import IncidentView, RingDecision
from kaifong.streams.settings import Ring

__all__ = [
    "Breach",
    "Change",
    "Policy",
    "Redispatch",
    "breach",
    "breached",
    "due_ms",
    "first_rings",
    "fresh_document",
    "parse_timer",
    "redispatched",
    "renotify",
    "reported",
    "timer",
    "updated",
]

#: Applied update ids remembered per incident (idempotency beyond the dedupe window).
APPLIED_KEEP = responders.APPLIED_KEEP


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
             policy: Policy) -> Change:
    """A report's first decision: assignments, the severity-1 and no-candidate escalations, the
    ring deadlines, acknowledgement windows and re-notification timers, and the new state."""
    incident_id = view.incident_id
    bodies = [assignment_body(incident_id, d, 0, now, view.exercise) for d in decisions]
    state, windows = assign(doc["state"], bodies, now, policy)
    escalations: list[dict[str, Any]] = []
    if view.severity == 1:
        state, body = clock.escalate(state, 1, "severity", now)
        escalations.append(body)
    for d in decisions:
        if not d.units and d.reason != "needs_met":
            state, body = clock.escalate(state, d.ring, "no_candidate", now)
            escalations.append(body)
    new = {**doc, "state": state, "assignments": bodies,
           "escalations": {**doc["escalations"], **{e["escalation_id"]: entry(e) for e in escalations}}}
    timers = [(timer("d", incident_id, str(r["ring"])), due_ms(clock.parse_time(r["deadline_at"])))
              for r in state["rings"] if r["state"] == "pending"]
    timers += [renotify_timer(e, now, policy) for e in escalations]
    timers += windows
    publish: list[Publish] = [("assignment", b) for b in bodies]
    publish += [("escalation", e) for e in escalations]
    publish.append(("state", state))
    return Change(doc=new, publish=tuple(publish), reserve=tuple(chosen_units(decisions)), pool=pool_of(state),
                  timers_set=tuple(timers), escalations_opened=opened(escalations),
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
    return Breach(ring, state, esc, tried(doc), max(1, next_attempt(doc, ring)), view)


def breached(doc: dict[str, Any], b: Breach, decisions: list[RingDecision], now: datetime,
             policy: Policy) -> Change:
    """The breach stored with its re-dispatch: escalation first, then the new assignments."""
    incident_id = b.state["incident_id"]
    bodies = [assignment_body(incident_id, d, b.attempt, now, b.state["exercise"]) for d in decisions]
    state, windows = assign(b.state, bodies, now, policy)
    esc = b.escalation
    new = {**doc, "state": state, "assignments": [*(doc["assignments"] or []), *bodies],
           "escalations": {**doc["escalations"], esc["escalation_id"]: entry(esc)}}
    publish: list[Publish] = [("escalation", esc), *(("assignment", body) for body in bodies), ("state", state)]
    return Change(doc=new, publish=tuple(publish), reserve=tuple(chosen_units(decisions)), pool=pool_of(state),
                  timers_set=(renotify_timer(esc, now, policy), *windows),
                  escalations_opened=opened([esc]), assignments=tuple(bodies), escalations=(esc,),
                  ring_changes=(clock.RingChange(b.ring, "breached", None),))


# -- decided again ---------------------------------------------------------------------------
def redispatched(r: Redispatch, decisions: list[RingDecision], now: datetime, policy: Policy) -> Change:
    """A ring decided again (no-show, decline, stuck unit, severity upgrade), stored with what
    the event itself changed; when nobody could be found, the escalation ``r`` names."""
    doc = r.base.doc
    state = doc["state"]
    incident_id = state["incident_id"]
    bodies = [assignment_body(incident_id, d, next_attempt(doc, d.ring), now, state["exercise"]) for d in decisions]
    state, windows = assign(state, bodies, now, policy)
    escalations = list(r.base.escalations)
    raised: list[dict[str, Any]] = []
    for d in decisions:
        if r.escalate_if_short and not d.units and d.reason != "needs_met":
            attempt = sum(1 for e in doc["escalations"].values()
                          if e["body"]["ring"] == d.ring and e["body"]["reason"] == r.escalate_if_short)
            state, esc = clock.escalate(state, d.ring, r.escalate_if_short, now, attempt)
            raised.append(esc)
    escalations += raised
    new = {**doc, "state": state, "assignments": [*(doc["assignments"] or []), *bodies],
           "escalations": {**doc["escalations"], **{e["escalation_id"]: entry(e) for e in raised}}}
    publish: list[Publish] = [("escalation", e) for e in escalations]
    publish += [("assignment", b) for b in bodies]
    publish.append(("state", state))
    return replace(r.base, doc=new, publish=tuple(publish), reserve=tuple(chosen_units(decisions)),
                   pool=pool_of(state),
                   timers_set=(*r.base.timers_set, *windows, *(renotify_timer(e, now, policy) for e in raised)),
                   escalations_opened=(*r.base.escalations_opened, *opened(raised)),
                   assignments=tuple(bodies), escalations=tuple(escalations),
                   redispatched=tuple((d.ring, r.cause) for d in decisions))


# -- re-notifications and acknowledgements ---------------------------------------------------
def renotify(doc: dict[str, Any], esc_id: str, now: datetime, policy: Policy) -> Change | None:
    """Tell an unacknowledged escalation again (and again after ``policy.renotify_s``), or None
    when it was acknowledged or the incident closed."""
    e = doc["escalations"].get(esc_id)
    if e is None or e["acked_at"] is not None or doc["state"]["status"] in clock.TERMINAL:
        return None
    n = e["notifications"] + 1
    body = {**e["body"], "notification": n, "raised_at": now.isoformat()}
    new = {**doc, "escalations": {**doc["escalations"], esc_id: {**e, "notifications": n}}}
    return Change(doc=new, publish=(("escalation", body),), timers_set=(renotify_timer(e["body"], now, policy),),
                  renotified=body)


def acknowledge(doc: dict[str, Any], update: dict[str, Any]) -> Change:
    """A duty officer's acknowledgement of an escalation: no more re-notifications. Refused
    for an escalation the incident does not have; a second acknowledgement changes nothing
    but is recorded as applied."""
    esc_id = str(update.get("escalation_id") or "")
    e = doc["escalations"].get(esc_id)
    if e is None:
        raise Refused("clock", "unknown_escalation", f"no escalation {esc_id!r} on incident {update['incident_id']}")
    new = {**doc, "applied": [*doc["applied"], update["event_id"]][-APPLIED_KEEP:]}
    if e["acked_at"] is not None:
        return Change(doc=new, escalations_closed=(esc_id,))
    at = clock.parse_time(update["at"])
    raised = clock.parse_time(e["body"]["raised_at"])
    new["escalations"] = {**doc["escalations"],
                          esc_id: {**e, "acked_at": update["at"], "acked_by": update.get("by")}}
    return Change(doc=new, timers_clear=(timer("n", update["incident_id"], esc_id),), escalations_closed=(esc_id,),
                  acknowledged=(e["body"]["level"], max(0.0, (at - raised).total_seconds())))


# -- updates ---------------------------------------------------------------------------------
def updated(doc: dict[str, Any], update: dict[str, Any], now: datetime, policy: Policy | None = None
            ) -> Change | Redispatch | None:
    """An update applied, or None for a replay of an update already applied: a unit's answer
    (:mod:`kaifong.agents.core.responders`), a severity change, an escalation's acknowledgement,
    or the incident's own milestone. A terminal status stops every clock of the incident and
    frees its units. Refused as :func:`kaifong.agents.core.clock.apply_update` says, and for an
    answer from a unit the incident does not hold (``unit_not_assigned``)."""
    policy = policy or Policy()
    if update["event_id"] in doc["applied"]:
        return None
    kind = update["kind"]
    if kind == "escalation_acknowledged":
        return acknowledge(doc, update)
    if doc["state"]["status"] in clock.TERMINAL:
        raise Refused("clock", "incident_closed", f"incident is already {doc['state']['status']}")
    if kind == "declined":
        if not update.get("unit_id"):
            raise Refused("clock", "missing_field", "declined needs the unit_id of the unit that declines")
        return responders.declined(doc, update, now, policy)
    if kind == "severity_changed":
        return responders.severity_changed(doc, update, now, policy)
    if kind in responders.UNIT_ANSWERS and update.get("unit_id"):
        return responders.answered(doc, update, now, policy)
    state, changes = clock.apply_update(doc["state"], update, now)
    new = {**doc, "state": state, "applied": [*doc["applied"], update["event_id"]][-APPLIED_KEEP:]}
    change = Change(doc=new, publish=(("state", state),), ring_changes=tuple(changes))
    if state["status"] not in clock.TERMINAL:
        return change
    incident_id = state["incident_id"]
    clear = [timer("d", incident_id, str(r["ring"])) for r in state["rings"]]
    clear += [timer("n", incident_id, e) for e in doc["escalations"]]
    clear += [timer(k, incident_id, u["unit_id"]) for u in state["units"] for k in ("w", "s")]
    return replace(change, timers_clear=tuple(clear), release_all=True, close=True)
