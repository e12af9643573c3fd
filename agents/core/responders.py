"""kaifong.agents.core.responders — following up with the units: answers, declines, no-shows, stuck units, severity.

Layer: agents/core (pure). Every assigned unit has an acknowledgement window (per ring,
``Policy.ack_windows``): a unit that neither acknowledges nor moves by then is a **no-show** —
released and its ring decided again at once, before the ring's deadline. A **decline** does the
same at once. A unit **en route** far beyond its ETA is flagged **stuck**, and its ring decided
again while still pending (the stuck unit keeps coming). A **severity upgrade** applies the new
severity's run card — the rings a report at that severity would have decided, ring 2 for the
needs still missing — and the severity-1 escalation; a **downgrade keeps every unit** (releasing
a unit already on its way is a person's call; the duty officer cancels what is not needed).

Each function returns a :class:`~kaifong.agents.core.change.Change`, or a
:class:`~kaifong.agents.core.change.Redispatch` when a ring is to be decided again, or None
when the event changes nothing (a timer that fires late, after the unit answered).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from kaifong.agents.core import clock
from kaifong.agents.core.change import (
    ACTIVE,
    RELEASED,
    STUCK_GRACE_S,
    Change,
    Policy,
    Redispatch,
    Released,
    due_ms,
    entry,
    needs_left,
    opened,
    timer,
    tried,
    unit_of,
)
from kaifong.agents.core.dispatch import view_of
from kaifong.agents.core.errors import Refused
from kaifong.agents.core.matching import Needs, needs_for

#: Applied update ids remembered per incident (idempotency beyond the dedupe window).
APPLIED_KEEP = 500
#: A unit's answers: they must come from a unit the incident holds.
UNIT_ANSWERS = frozenset({"acknowledged", "declined", "en_route", "on_scene"})
#: Which time each answer records on the unit, and the segment it closes (from which time).
_MILESTONE = {"acknowledged": ("acknowledged_at", "acknowledgement", "assigned_at"),
              "en_route": ("en_route_at", "turnout", "assigned_at"),
              "on_scene": ("on_scene_at", "travel", "en_route_at")}


def _applied(doc: dict[str, Any], update: dict[str, Any]) -> list[str]:
    return [*doc["applied"], update["event_id"]][-APPLIED_KEEP:]


def _seconds(later: str, earlier: str | None) -> float | None:
    if earlier is None:
        return None
    return round(max(0.0, (clock.parse_time(later) - clock.parse_time(earlier)).total_seconds()), 3)


def holding(doc: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """The incident's entry of the answering unit; refused when the incident does not hold it
    (never assigned, or released as a no-show or a decline)."""
    unit_id = update["unit_id"]
    unit = unit_of(doc["state"], unit_id)
    if unit is None:
        raise Refused("clock", "unit_not_assigned",
                      f"{update['kind']} from unit {unit_id}, which is not assigned to incident "
                      f"{update['incident_id']}")
    if unit["status"] in RELEASED:
        raise Refused("clock", "unit_not_assigned",
                      f"{update['kind']} from unit {unit_id}, released from incident {update['incident_id']} "
                      f"as {unit['status']} at {unit.get('released_at')}")
    return unit


def _view(doc: dict[str, Any], state: dict[str, Any]) -> Any:
    return view_of(doc["report"], state["severity"])


def _redispatch_or_change(doc: dict[str, Any], change: Change, ring: int, cause: str, *, policy: Policy,
                          escalate_if_short: str | None) -> Change | Redispatch:
    """Decide ``ring`` again when it still needs someone: pending, or left with nobody."""
    state = change.doc["state"]
    entry_ = clock.ring_of(state, ring)
    if state["status"] in clock.TERMINAL or entry_ is None:
        return change
    left = [u for u in state["units"] if u["ring"] == ring and u["status"] in ACTIVE]
    if entry_["state"] != "pending" and left:
        return change  # met or breached, and someone is still coming
    view = _view(doc, state)
    if ring == 2:  # only what is still missing of the run card
        view = replace(view, needs=needs_left(change.doc, view, policy))
    return Redispatch(change, (ring,), tried(change.doc), cause, view, escalate_if_short)


def _release(doc: dict[str, Any], unit_id: str, cause: str, at: str, now: datetime, *,
             reason: str | None = None, applied: list[str] | None = None) -> Change:
    """The unit let go: status ``cause``, its timers cleared, its reservation freed."""
    state = clock.next_version(doc["state"], now)
    unit = unit_of(state, unit_id)
    assert unit is not None
    unit.update(status=cause, released_at=at)
    if reason is not None:
        unit["decline_reason"] = reason
    incident_id = state["incident_id"]
    new = {**doc, "state": state}
    if applied is not None:
        new["applied"] = applied
    return Change(doc=new, publish=(("state", state),), release=(unit_id,),
                  timers_clear=(timer("w", incident_id, unit_id), timer("s", incident_id, unit_id)),
                  released=(Released(unit_id, unit["ring"], cause, reason),))


# -- answers ---------------------------------------------------------------------------------
def answered(doc: dict[str, Any], update: dict[str, Any], now: datetime, policy: Policy) -> Change:
    """A unit's acknowledgement, departure or arrival: its time recorded, its segment measured,
    its acknowledgement window closed, its stuck check set (en route) or cleared (on scene), the
    ring met (on scene in time), the run card's needs met on scene."""
    unit_id = update["unit_id"]
    before = holding(doc, update)
    state, changes = clock.apply_update(doc["state"], update, now)
    unit = unit_of(state, unit_id)
    assert unit is not None
    kind = update["kind"]
    incident_id = state["incident_id"]
    segments: list[tuple[str, int, str, float]] = []
    timers_set: list[tuple[str, int]] = []
    timers_clear = [timer("w", incident_id, unit_id)]
    if before.get(_MILESTONE[kind][0]) is None:
        measured = milestone(unit, kind, update["at"])
        if measured is not None:
            segments.append(measured)
        if kind == "en_route" and unit.get("eta_s") is not None:
            eta = float(unit["eta_s"])
            stuck_after = max(policy.stuck_factor * eta, eta + STUCK_GRACE_S)
            timers_set.append((timer("s", incident_id, unit_id),
                               due_ms(clock.parse_time(update["at"]) + timedelta(seconds=stuck_after))))
    if kind == "on_scene":
        timers_clear.append(timer("s", incident_id, unit_id))
    needs_met_s = None
    if kind == "on_scene" and state.get("needs_met_at") is None and _needs_met(doc, state, policy):
        needs_met_s = _seconds(update["at"], state["reported_at"])
        state.update(needs_met_at=update["at"], needs_met_s=needs_met_s)
    new = {**doc, "state": state, "applied": _applied(doc, update)}
    return Change(doc=new, publish=(("state", state),), timers_set=tuple(timers_set),
                  timers_clear=tuple(timers_clear), ring_changes=tuple(changes), segments=tuple(segments),
                  needs_met_s=needs_met_s)


def milestone(unit: dict[str, Any], kind: str, at: str) -> tuple[str, int, str, float] | None:
    """Record a unit's first ``kind`` answer (acknowledged, en route, on scene) at ``at`` on its
    entry (changed in place, when it has no such time yet) and return the segment it closes,
    ``(segment, ring, kind, seconds)``, or None (already recorded, or nothing to measure from).
    The after-action report's replay measures with this same function."""
    field, segment, since = _MILESTONE[kind]
    if unit.get(field) is not None:
        return None
    unit[field] = at
    seconds = _seconds(at, unit.get(since))
    if seconds is None or not unit.get("kind"):
        return None
    return segment, int(unit["ring"]), str(unit["kind"]), seconds


def _needs_met(doc: dict[str, Any], state: dict[str, Any], policy: Policy) -> bool:
    need = needs_for(_view(doc, state), policy.run_cards)
    on_scene = {u["unit_id"] for u in state["units"] if u.get("on_scene_at")}
    responders, equipment = 0, set()
    for body in doc["assignments"] or []:
        for unit in body["units"]:
            if unit["unit_id"] in on_scene:
                on_scene.discard(unit["unit_id"])  # once, whatever re-assignments listed it
                responders += int(unit.get("responders", 0))
                equipment |= set(unit.get("equipment", ()))
    return responders >= need.responders and need.equipment <= equipment


def may_decline(doc: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """The entry of the declining unit; refused as :func:`holding` says, and once it set off."""
    unit = holding(doc, update)
    if unit["status"] in ("en_route", "on_scene"):
        raise Refused("clock", "decline_after_moving",
                      f"unit {unit['unit_id']} declined incident {update['incident_id']} after reporting "
                      f"{unit['status']}: a unit on its way is released by the duty officer, not by a decline")
    return unit


def declined(doc: dict[str, Any], update: dict[str, Any], now: datetime, policy: Policy) -> Change | Redispatch:
    """A unit turns its assignment down: released at once and its ring decided again; when
    nobody is left to send, a ``unit_declined`` escalation goes one level up."""
    unit = may_decline(doc, update)
    change = _release(doc, update["unit_id"], "declined", update["at"], now, reason=update.get("reason") or "other",
                      applied=_applied(doc, update))
    return _redispatch_or_change(doc, change, unit["ring"], "declined", policy=policy,
                                 escalate_if_short="unit_declined")


# -- timers ----------------------------------------------------------------------------------
def window_closed(doc: dict[str, Any], unit_id: str, now: datetime, policy: Policy) -> Change | Redispatch | None:
    """A unit's acknowledgement window ended: a unit that neither acknowledged nor moved is a
    no-show — released, and its ring decided again at once. None when it answered in time."""
    unit = unit_of(doc["state"], unit_id)
    if unit is None or unit["status"] != "assigned" or doc["state"]["status"] in clock.TERMINAL:
        return None
    change = _release(doc, unit_id, "no_show", now.isoformat(), now)
    return _redispatch_or_change(doc, change, unit["ring"], "no_show", policy=policy, escalate_if_short="no_candidate")


def stuck_check(doc: dict[str, Any], unit_id: str, now: datetime, policy: Policy) -> Change | Redispatch | None:
    """A unit en route long past its ETA: flagged stuck, and its ring decided again while it is
    still pending (the stuck unit keeps its assignment). None when it arrived."""
    unit = unit_of(doc["state"], unit_id)
    if unit is None or unit["status"] != "en_route" or unit.get("stuck") or doc["state"]["status"] in clock.TERMINAL:
        return None
    state = clock.next_version(doc["state"], now)
    flagged = unit_of(state, unit_id)
    assert flagged is not None
    flagged["stuck"] = True
    change = Change(doc={**doc, "state": state}, publish=(("state", state),), stuck=((unit_id, unit["ring"]),))
    ring = clock.ring_of(state, unit["ring"])
    if ring is None or ring["state"] != "pending":
        return change
    return Redispatch(change, (unit["ring"],), tried(doc), "stuck", _view(doc, state))


# -- severity --------------------------------------------------------------------------------
def severity_changed(doc: dict[str, Any], update: dict[str, Any], now: datetime, policy: Policy
                     ) -> Change | Redispatch:
    """The severity set anew. An upgrade decides the rings a report at that severity would
    have decided and were not, ring 2 again for the needs the new run card adds, and raises
    the severity-1 escalation; a downgrade only records it (every unit is kept)."""
    state, _ = clock.apply_update(doc["state"], update, now)
    new = {**doc, "state": state, "applied": _applied(doc, update)}
    change = Change(doc=new, publish=(("state", state),))
    if state["severity"] >= doc["state"]["severity"]:
        return change
    escalations: list[dict[str, Any]] = []
    if state["severity"] == 1:
        done = sum(1 for e in doc["escalations"].values() if e["body"]["reason"] == "severity")
        if not done:
            state, esc = clock.escalate(state, 1, "severity", now)
            escalations.append(esc)
            new = {**new, "state": state, "escalations": {**doc["escalations"], esc["escalation_id"]: entry(esc)}}
            change = Change(doc=new, publish=(("escalation", esc), ("state", state)),
                            timers_set=((timer("n", state["incident_id"], esc["escalation_id"]),
                                         due_ms(now) + int(policy.renotify_s * 1000)),),
                            escalations_opened=opened(escalations), escalations=tuple(escalations))
    decided = {b["ring"] for b in doc["assignments"] or []}
    rings = [r for r in clock.initial_rings(state["severity"], policy.rings) if r not in decided]
    view = _view(doc, state)
    left = needs_left(new, view, policy)
    if 2 in decided and 2 in policy.rings and (left.responders or left.equipment):
        rings.append(2)
    if not rings:
        return change
    view = replace(view, needs=left if left.responders or left.equipment else Needs(0, frozenset()))
    return Redispatch(change, tuple(sorted(rings)), tried(doc), "severity", view, "no_candidate")
