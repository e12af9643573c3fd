"""Following up with the units, pure (agents/core/responders): acknowledgement windows and
no-shows, declines, answers from units not assigned, stuck units, severity changes, segments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kaifong.agents.core import dispatch, responders
from kaifong.agents.core import incident as core
from kaifong.agents.core.errors import Refused
from kaifong.agents.core.matching import RUN_CARDS, Candidate
from kaifong.streams.settings import Settings

T0 = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
SETTINGS = Settings()
RINGS = SETTINGS.ring_table()
POLICY = core.Policy(renotify_s=60.0, ack_windows=SETTINGS.ack_window_table(), stuck_factor=2.0)
WINDOW_1 = POLICY.ack_windows[1]


def report(**kw: Any) -> dict[str, Any]:
    return {"event_id": "r-i1", "incident_id": "i1", "category": "fire", "severity": 3,
            "reported_at": T0.isoformat(), "location": {"lat": 23.1, "lon": 113.3}, "source": "call_110",
            "exercise": False, "district": "越秀区", "grid": "G1", **kw}


def unit(uid: str, kind: str = "post", dlat: float = 0.0, responders_: int = 4,
         equipment: frozenset[str] = frozenset()) -> Candidate:
    return Candidate(uid, kind, 23.1 + dlat, 113.3, responders_, equipment, "越秀区", "G1")


EXTINGUISHER = frozenset({"extinguisher"})


def update(kind: str, seconds: float, **kw: Any) -> dict[str, Any]:
    return {"event_id": f"{kind}-{seconds}-{kw.get('unit_id', '')}", "incident_id": "i1", "kind": kind,
            "at": (T0 + timedelta(seconds=seconds)).isoformat(), **kw}


def decide(view: Any, rings: list[int], candidates: list[Candidate], exclude: frozenset[str] = frozenset()) -> Any:
    return dispatch.choose(view, candidates, dispatch.plan(view, rings, RINGS), RUN_CARDS, exclude=exclude)


def opened(candidates: list[Candidate], **kw: Any) -> dict[str, Any]:
    doc = core.fresh_document(report(**kw), RINGS, T0, 0)
    view = dispatch.view_of(doc["report"])
    return core.reported(doc, view, decide(view, core.first_rings(view.severity, RINGS), candidates), T0, POLICY).doc


def settle(outcome: Any, candidates: list[Candidate], at: datetime) -> core.Change:
    """What the flow does: a Change as it is; a Redispatch decided among ``candidates``."""
    if isinstance(outcome, core.Redispatch):
        return core.redispatched(outcome, decide(outcome.view, list(outcome.rings), candidates, outcome.exclude),
                                 at, POLICY)
    assert isinstance(outcome, core.Change)
    return outcome


def units_of(doc: dict[str, Any], ring: int) -> dict[str, dict[str, Any]]:
    return {u["unit_id"]: u for u in doc["state"]["units"] if u["ring"] == ring}


NEAR = [unit("p1"), unit("p2", dlat=0.0001)]
SPARE = unit("p3", dlat=0.0002)


# -- acknowledgement windows and no-shows --------------------------------------------------------------
def test_every_assigned_unit_gets_an_acknowledgement_window_on_the_state_and_a_timer() -> None:
    doc = core.fresh_document(report(), RINGS, T0, 0)
    view = dispatch.view_of(doc["report"])
    change = core.reported(doc, view, decide(view, [1, 2, 3], NEAR), T0, POLICY)
    ring1 = units_of(change.doc, 1)
    assert set(ring1) == {"p1", "p2"}
    due = T0 + timedelta(seconds=WINDOW_1)
    assert ring1["p1"]["ack_due_at"] == due.isoformat() and ring1["p1"]["assigned_at"] == T0.isoformat()
    assert ring1["p1"]["kind"] == "post" and ring1["p1"]["eta_s"] is not None
    assert ("w|i1|p1", core.due_ms(due)) in change.timers_set


def test_a_unit_that_never_answers_is_released_and_replaced_before_the_ring_deadline() -> None:
    doc = opened(NEAR)
    at = T0 + timedelta(seconds=WINDOW_1)
    outcome = responders.window_closed(doc, "p1", at, POLICY)
    assert isinstance(outcome, core.Redispatch) and outcome.cause == "no_show" and outcome.rings == (1,)
    assert {"p1", "p2"} <= outcome.exclude  # never the no-show again, nor anyone tried
    change = settle(outcome, [*NEAR, SPARE], at)
    assert change.release == ("p1",) and change.released[0].cause == "no_show"
    [replacement] = change.assignments
    assert replacement["assignment_id"] == "i1:r1:a1" and [u["unit_id"] for u in replacement["units"]] == ["p3"]
    assert change.reserve == (("p3", 1),) and change.redispatched == ((1, "no_show"),)
    assert at < datetime.fromisoformat(change.doc["state"]["rings"][0]["deadline_at"])  # before the deadline
    p1 = units_of(change.doc, 1)["p1"]
    assert p1["status"] == "no_show" and p1["released_at"] == at.isoformat()
    assert ("w|i1|p3", core.due_ms(at + timedelta(seconds=WINDOW_1))) in change.timers_set
    # The same timer firing again (a crash before it was marked done) changes nothing.
    assert responders.window_closed(change.doc, "p1", at + timedelta(seconds=1), POLICY) is None


def test_a_window_that_closes_after_the_unit_answered_changes_nothing() -> None:
    doc = opened(NEAR)
    for kind in ("acknowledged", "en_route", "on_scene"):
        answered = core.updated(doc, update(kind, 5, unit_id="p1"), T0 + timedelta(seconds=5), POLICY)
        assert isinstance(answered, core.Change) and "w|i1|p1" in answered.timers_clear
        assert responders.window_closed(answered.doc, "p1", T0 + timedelta(seconds=WINDOW_1), POLICY) is None


def test_a_no_show_with_nobody_left_escalates_at_once() -> None:
    doc = opened(NEAR[:1])
    outcome = responders.window_closed(doc, "p1", T0 + timedelta(seconds=WINDOW_1), POLICY)
    change = settle(outcome, NEAR[:1], T0 + timedelta(seconds=WINDOW_1))
    assert [(e["ring"], e["reason"]) for e in change.escalations] == [(1, "no_candidate")]
    assert change.release == ("p1",) and change.assignments[0]["units"] == []


# -- declines and answers from units not assigned ------------------------------------------------------
def test_a_decline_releases_and_replaces_within_one_decision() -> None:
    doc = opened(NEAR)
    outcome = core.updated(doc, update("declined", 8, unit_id="p2", reason="busy"), T0 + timedelta(seconds=8),
                           POLICY)
    assert isinstance(outcome, core.Redispatch) and outcome.cause == "declined"
    change = settle(outcome, [*NEAR, SPARE], T0 + timedelta(seconds=8))
    assert change.release == ("p2",) and change.reserve == (("p3", 1),)
    assert change.released[0].reason == "busy" and units_of(change.doc, 1)["p2"]["decline_reason"] == "busy"
    assert {"w|i1|p2", "s|i1|p2"} <= set(change.timers_clear)
    assert [k for k, _ in change.publish] == ["assignment", "state"]


def test_a_decline_that_leaves_the_ring_short_escalates_one_level_up() -> None:
    doc = opened(NEAR[:1])
    level = doc["state"]["escalation_level"]
    outcome = core.updated(doc, update("declined", 8, unit_id="p1"), T0 + timedelta(seconds=8), POLICY)
    change = settle(outcome, NEAR[:1], T0 + timedelta(seconds=8))
    [esc] = change.escalations
    assert esc["reason"] == "unit_declined" and esc["ring"] == 1
    assert esc["level"] == core.clock.next_level(level)
    assert change.escalations_opened == ((esc["escalation_id"], esc["level"]),)
    assert change.released[0].reason == "other"  # no reason given


@pytest.mark.parametrize("kind", ["acknowledged", "declined", "en_route", "on_scene"])
def test_an_answer_from_a_unit_not_assigned_is_refused_with_its_own_class(kind: str) -> None:
    doc = opened(NEAR)
    with pytest.raises(Refused) as refused:
        core.updated(doc, update(kind, 5, unit_id="stranger"), T0 + timedelta(seconds=5), POLICY)
    assert refused.value.error_class == "unit_not_assigned" and refused.value.stage == "clock"


def test_an_answer_from_a_released_unit_is_refused_and_a_duplicate_is_a_no_op() -> None:
    doc = opened(NEAR)
    decline = update("declined", 8, unit_id="p2")
    change = settle(core.updated(doc, decline, T0 + timedelta(seconds=8), POLICY), [*NEAR, SPARE],
                    T0 + timedelta(seconds=8))
    assert core.updated(change.doc, decline, T0 + timedelta(seconds=9), POLICY) is None  # the same event again
    with pytest.raises(Refused) as refused:
        core.updated(change.doc, update("acknowledged", 9, unit_id="p2"), T0 + timedelta(seconds=9), POLICY)
    assert refused.value.error_class == "unit_not_assigned" and "declined" in refused.value.reason


def test_a_decline_after_setting_off_is_refused() -> None:
    doc = opened(NEAR)
    moving = core.updated(doc, update("en_route", 3, unit_id="p1"), T0 + timedelta(seconds=3), POLICY)
    assert isinstance(moving, core.Change)
    with pytest.raises(Refused) as refused:
        core.updated(moving.doc, update("declined", 4, unit_id="p1"), T0 + timedelta(seconds=4), POLICY)
    assert refused.value.error_class == "decline_after_moving"


# -- segments and needs met ------------------------------------------------------------------------------
def test_each_answer_records_its_time_and_measures_its_segment_once() -> None:
    doc = opened(NEAR)
    steps = [("acknowledged", 4, ("acknowledgement", 4.0)), ("en_route", 9, ("turnout", 9.0)),
             ("on_scene", 40, ("travel", 31.0))]
    for kind, seconds, (segment, value) in steps:
        change = core.updated(doc, update(kind, seconds, unit_id="p1"), T0 + timedelta(seconds=seconds), POLICY)
        assert isinstance(change, core.Change)
        assert change.segments == ((segment, 1, "post", value),)
        doc = change.doc
        assert units_of(doc, 1)["p1"][f"{kind}_at"] == (T0 + timedelta(seconds=seconds)).isoformat()
        if kind == "en_route":  # the stuck check: twice the ETA, and at least a minute more than it
            eta = units_of(doc, 1)["p1"]["eta_s"]
            assert change.timers_set == (("s|i1|p1", core.due_ms(T0 + timedelta(seconds=9 + max(2 * eta, eta + 60)))),)
        if kind == "on_scene":
            assert "s|i1|p1" in change.timers_clear
    again = core.updated(doc, update("acknowledged", 50, unit_id="p1") | {"event_id": "late-ack"},
                         T0 + timedelta(seconds=50), POLICY)
    assert isinstance(again, core.Change) and again.segments == ()  # measured once
    assert doc["state"]["rings"][0]["state"] == "met"


def test_needs_met_when_the_run_cards_responders_are_on_scene() -> None:
    # Fire, severity 3: the run card asks for more responders than one post brings.
    need = RUN_CARDS["fire"][3].responders
    doc = opened([unit("p1", responders_=need - 1), unit("p2", dlat=0.0001, responders_=4, equipment=EXTINGUISHER)])
    first = core.updated(doc, update("on_scene", 30, unit_id="p1"), T0 + timedelta(seconds=30), POLICY)
    assert isinstance(first, core.Change) and first.needs_met_s is None
    second = core.updated(first.doc, update("on_scene", 45, unit_id="p2"), T0 + timedelta(seconds=45), POLICY)
    assert isinstance(second, core.Change) and second.needs_met_s == 45.0
    assert second.doc["state"]["needs_met_s"] == 45.0


# -- stuck units -------------------------------------------------------------------------------------------
def test_a_unit_en_route_far_beyond_its_eta_is_flagged_and_its_pending_ring_decided_again() -> None:
    doc = opened(NEAR)
    moving = core.updated(doc, update("en_route", 3, unit_id="p1"), T0 + timedelta(seconds=3), POLICY)
    assert isinstance(moving, core.Change)
    outcome = responders.stuck_check(moving.doc, "p1", T0 + timedelta(seconds=50), POLICY)
    assert isinstance(outcome, core.Redispatch) and outcome.cause == "stuck"
    change = settle(outcome, [*NEAR, SPARE], T0 + timedelta(seconds=50))
    assert units_of(change.doc, 1)["p1"]["stuck"] is True and change.stuck == (("p1", 1),)
    assert change.release == ()  # the stuck unit keeps coming
    assert responders.stuck_check(change.doc, "p1", T0 + timedelta(seconds=51), POLICY) is None  # once


# -- severity ---------------------------------------------------------------------------------------------
def test_severity_three_to_one_applies_the_new_run_card_and_goes_to_the_district() -> None:
    # Enough units with extinguishers near by for severity 1's larger run card.
    city = [*NEAR, unit("u1", "unit", 0.0003, 4, EXTINGUISHER), unit("u2", "unit", 0.0004, 4, EXTINGUISHER),
            unit("u3", "unit", 0.0005, 4, EXTINGUISHER), unit("g1", "grid_team", 0.001),
            unit("s1", "street_force", 0.002), unit("f1", "professional", 0.003)]
    doc = opened([*NEAR, city[5]])  # reported at 3 with two posts (8 responders, no extinguisher) and a grid team
    assert {b["ring"] for b in doc["assignments"]} == {1, 2, 3}
    outcome = core.updated(doc, update("severity_changed", 10, severity=1), T0 + timedelta(seconds=10), POLICY)
    assert isinstance(outcome, core.Redispatch) and outcome.cause == "severity"
    assert set(outcome.rings) == {2, 4, 5}  # ring 2 again: severity 1's run card needs more
    change = settle(outcome, city, T0 + timedelta(seconds=10))
    [esc] = [e for e in change.escalations if e["reason"] == "severity"]
    assert esc["level"] == "district" and change.doc["state"]["escalation_level"] == "district"
    assert {b["ring"] for b in change.assignments} >= {4, 5}
    assert {u for u, _ in change.reserve} >= {"s1", "f1"}
    assert {u for u, r in change.reserve if r == 2} & {"u1", "u2", "u3"}  # the extra ring-2 units
    assert change.doc["state"]["severity"] == 1
    # Exactly once: the same update again is a no-op.
    assert core.updated(change.doc, update("severity_changed", 10, severity=1), T0 + timedelta(seconds=11),
                        POLICY) is None


def test_a_downgrade_keeps_every_unit() -> None:
    doc = opened(NEAR, severity=2)
    change = core.updated(doc, update("severity_changed", 10, severity=4), T0 + timedelta(seconds=10), POLICY)
    assert isinstance(change, core.Change)
    assert change.release == () and not change.release_all and change.doc["state"]["severity"] == 4
    assert [u["status"] for u in change.doc["state"]["units"]] == [u["status"] for u in doc["state"]["units"]]


def test_closing_clears_every_units_timers() -> None:
    doc = opened(NEAR)
    change = core.updated(doc, update("resolved", 30), T0 + timedelta(seconds=30), POLICY)
    assert isinstance(change, core.Change) and change.release_all
    assert {"w|i1|p1", "w|i1|p2", "s|i1|p1"} <= set(change.timers_clear)
