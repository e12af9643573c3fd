"""The incident decisions of agents/core, pure: no Redis, no broker, no event loop.

Each case of tests/test_incident_engine.py (the same decisions through the store and the flow
on a real Redis) has its counterpart here, plus what only the values show: which units a
change reserves or frees, which timers it sets or clears, which escalations it opens or closes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kaifong.agents.core import dispatch
from kaifong.agents.core import incident as core
from kaifong.agents.core.errors import Refused
from kaifong.agents.core.matching import RUN_CARDS, Candidate
from kaifong.streams.settings import Settings

T0 = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
RINGS = Settings().ring_table()
RENOTIFY_S = 60.0
POLICY = core.Policy(renotify_s=RENOTIFY_S, ack_windows=Settings().ack_window_table())


def report(incident_id: str = "i1", **kw: Any) -> dict[str, Any]:
    return {"event_id": f"r-{incident_id}", "incident_id": incident_id, "category": "fire", "severity": 3,
            "reported_at": T0.isoformat(), "location": {"lat": 23.1, "lon": 113.3}, "source": "call_110",
            "exercise": False, "district": "越秀区", "grid": "G1", "caller": {"phone": "13800000000"}, **kw}


def update(kind: str, at: datetime, incident_id: str = "i1", **kw: Any) -> dict[str, Any]:
    return {"event_id": f"{kind}-{at.timestamp()}-{kw.get('escalation_id', '')}", "incident_id": incident_id,
            "kind": kind, "at": at.isoformat(), **kw}


def unit(uid: str, kind: str = "post", dlat: float = 0.0, venue: str | None = None) -> Candidate:
    return Candidate(uid, kind, 23.1 + dlat, 113.3, 4, frozenset(), "越秀区", "G1", venue)


CITY = [unit("p1", venue="V1"), unit("p2", dlat=0.001), unit("u1", "unit", 0.002), unit("g1", "grid_team", 0.003),
        unit("s1", "street_force", 0.004), unit("f1", "professional", 0.005)]


def decide(doc: dict[str, Any], rings: list[int], candidates: list[Candidate],
           exclude: frozenset[str] = frozenset()) -> list[Any]:
    view = dispatch.view_of(doc["report"], doc["state"]["severity"])
    return dispatch.choose(view, candidates, dispatch.plan(view, rings, RINGS), RUN_CARDS, exclude=exclude)


def opened(rep: dict[str, Any], candidates: list[Candidate], now: datetime = T0) -> core.Change:
    """A report's first decision, as the flow makes it."""
    doc = core.fresh_document(rep, RINGS, now, partition=2)
    view = dispatch.view_of(doc["report"])
    decisions = decide(doc, core.first_rings(view.severity, RINGS), candidates)
    return core.reported(doc, view, decisions, now, POLICY)


def stored(change: core.Change) -> dict[str, Any]:
    return change.doc


def published(change: core.Change, kind: str) -> list[dict[str, Any]]:
    return [body for k, body in change.publish if k == kind]


# -- reports -----------------------------------------------------------------------------------
def test_a_report_reserves_its_units_starts_every_ring_clock_and_keeps_no_caller() -> None:
    change = opened(report(venue_id="V1"), CITY)
    doc = stored(change)
    assert "caller" not in doc["report"] and doc["partition"] == 2
    assert [a["assignment_id"] for a in published(change, "assignment")] == ["i1:r1:a0", "i1:r2:a0", "i1:r3:a0"]
    assert published(change, "assignment")[0]["units"][0]["unit_id"] == "p1"  # the venue's post
    assert set(change.reserve) == {(u["unit_id"], a["ring"]) for a in doc["assignments"] for u in a["units"]}
    assert change.pool == "avail"
    assert {e["ring"] for e in change.escalations} <= {2}  # ring 2 may fall short of the run card
    assert change.escalations_opened == tuple((e["escalation_id"], e["level"]) for e in change.escalations)
    deadlines = {m: due for m, due in change.timers_set if m.startswith("d|")}
    assert deadlines == {f"d|i1|{r.number}": int((T0 + timedelta(seconds=r.target_s)).timestamp() * 1000)
                         for r in RINGS}
    assert [k for k, _ in change.publish][-1] == "state" and published(change, "state")[0]["version"] == 2


def test_an_exercise_reserves_from_the_drill_pool_and_opens_no_real_escalation() -> None:
    change = opened(report(exercise=True, severity=1), [])
    assert change.pool == "drill"
    assert change.escalations and all(e["exercise"] for e in change.escalations)
    assert change.escalations_opened == ()  # the open-escalations gauge counts real ones only


def test_no_candidate_escalates_at_once_renotifies_until_acknowledged() -> None:
    change = opened(report(), [])
    doc = stored(change)
    assert {(e["ring"], e["reason"], e["level"]) for e in change.escalations} == {
        (1, "no_candidate", "grid"), (2, "no_candidate", "street"), (3, "no_candidate", "district")}
    esc_id = "i1:r1:no_candidate:0"
    assert dict(change.escalations_opened)[esc_id] == "grid"
    renotify_at = {m: due for m, due in change.timers_set if m.startswith("n|")}
    assert renotify_at[f"n|i1|{esc_id}"] == int(T0.timestamp() * 1000) + 60_000
    # Re-notified every minute, numbered, until acknowledged.
    again = core.renotify(doc, esc_id, T0 + timedelta(seconds=60), POLICY)
    assert again is not None and again.renotified is not None
    assert again.renotified["notification"] == 1
    assert published(again, "escalation")[0]["raised_at"] == (T0 + timedelta(seconds=60)).isoformat()
    doc = stored(again)
    ack = core.updated(doc, update("escalation_acknowledged", T0 + timedelta(seconds=90), escalation_id=esc_id,
                                   by="seat-3"), T0 + timedelta(seconds=90))
    assert ack is not None and ack.acknowledged == ("grid", 90.0)
    assert ack.timers_clear == (f"n|i1|{esc_id}",) and ack.escalations_closed == (esc_id,)
    doc = stored(ack)
    assert doc["escalations"][esc_id]["acked_by"] == "seat-3"
    assert core.renotify(doc, esc_id, T0 + timedelta(seconds=120), POLICY) is None
    # A second acknowledgement changes nothing but is recorded; an unknown one is refused.
    twice = core.acknowledge(doc, update("escalation_acknowledged", T0 + timedelta(seconds=95),
                                         escalation_id=esc_id, by="seat-4"))
    assert twice.acknowledged is None and twice.doc["escalations"][esc_id]["acked_by"] == "seat-3"
    with pytest.raises(Refused) as refused:
        core.updated(doc, update("escalation_acknowledged", T0, escalation_id="i1:r9:x:0"), T0)
    assert refused.value.error_class == "unknown_escalation"


def test_severity_one_goes_to_the_district_at_once() -> None:
    change = opened(report(severity=1), CITY)
    [esc] = [e for e in change.escalations if e["reason"] == "severity"]
    assert esc["level"] == "district" and esc["breached_by_s"] == 0.0
    assert stored(change)["state"]["escalation_level"] == "district"
    assert [a["ring"] for a in stored(change)["assignments"]] == [1, 2, 3, 4, 5]


# -- deadlines ---------------------------------------------------------------------------------
def breach_at(doc: dict[str, Any], ring: int, at: datetime, candidates: list[Candidate]) -> core.Change | None:
    b = core.breach(doc, ring, at, dispatch.view_of(doc["report"], doc["state"]["severity"]))
    if b is None:
        return None
    return core.breached(doc, b, decide(doc, [ring], candidates, b.exclude), at, POLICY)


def test_deadline_breach_escalates_once_with_a_wider_redispatch() -> None:
    doc = stored(opened(report(), CITY[:2]))
    first = {u["unit_id"] for a in doc["assignments"] for u in a["units"]}
    at = T0 + timedelta(seconds=60.05)
    change = breach_at(doc, 1, at, [*CITY[:2], unit("p9", dlat=0.0003)])
    assert change is not None
    [esc] = change.escalations
    assert esc["escalation_id"] == "i1:r1:ring_deadline_missed:0" and esc["breached_by_s"] == pytest.approx(0.05)
    assert esc["level"] == core.clock.next_level(doc["state"]["escalation_level"])  # one level up
    [again] = published(change, "assignment")
    assert again["assignment_id"] == "i1:r1:a1" and {u["unit_id"] for u in again["units"]} == {"p9"}
    assert not first & {u for u, _ in change.reserve}  # never a unit already tried
    assert [k for k, _ in change.publish] == ["escalation", "assignment", "state"]
    assert stored(change)["state"]["rings"][0]["state"] == "breached"
    assert change.ring_changes == (core.clock.RingChange(1, "breached", None),)
    assert change.timers_set == ((f"n|i1|{esc['escalation_id']}", int(at.timestamp() * 1000) + 60_000),
                                 ("w|i1|p9", core.due_ms(at + timedelta(seconds=POLICY.ack_windows[1]))))
    # The timer firing again (a takeover, a replay) changes nothing.
    assert breach_at(stored(change), 1, at + timedelta(seconds=1), CITY) is None


def test_late_report_escalates_every_passed_ring_on_the_next_tick() -> None:
    now = T0 + timedelta(minutes=10, seconds=30)
    doc = stored(opened(report(), CITY, now))
    tick = now + timedelta(seconds=0.1)
    timers = opened(report(), CITY, now).timers_set
    due = [m for m, ms in timers if m.startswith("d|") and ms <= tick.timestamp() * 1000]
    assert sorted(due) == ["d|i1|1", "d|i1|2", "d|i1|3", "d|i1|4"]
    missed = {}
    for ring in (1, 2, 3, 4):
        change = breach_at(doc, ring, tick, [])
        assert change is not None
        doc = stored(change)
        missed[ring] = change.escalations[0]
    assert missed[4]["breached_by_s"] == pytest.approx(30.1, abs=0.01)
    assert missed[1]["breached_by_s"] == pytest.approx(570.1, abs=0.01)
    levels = [core.clock.LEVELS.index(missed[r]["level"]) for r in (1, 2, 3, 4)]
    assert levels == sorted(levels) and missed[4]["level"] == "city"  # up a level each, never down


# -- milestones --------------------------------------------------------------------------------
def test_on_scene_in_time_meets_the_ring_and_its_deadline_then_fires_nothing() -> None:
    doc = stored(opened(report(venue_id="V1"), CITY))
    change = core.updated(doc, update("on_scene", T0 + timedelta(seconds=40), unit_id="p1"), T0 + timedelta(seconds=40))
    assert change is not None
    ring1 = stored(change)["state"]["rings"][0]
    assert ring1["state"] == "met" and ring1["seconds"] == 40
    assert core.clock.RingChange(1, "met", 40.0) in change.ring_changes
    assert not change.release_all and not change.close  # still open: nothing freed
    assert breach_at(stored(change), 1, T0 + timedelta(seconds=61), CITY) is None


def test_resolved_before_deadline_stops_every_clock_and_frees_the_units() -> None:
    doc = stored(opened(report(severity=4), []))
    change = core.updated(doc, update("resolved", T0 + timedelta(seconds=20)), T0 + timedelta(seconds=20))
    assert change is not None and change.close and change.release_all
    state = stored(change)["state"]
    assert state["status"] == "resolved" and all(r["state"] == "stopped" for r in state["rings"])
    assert set(change.timers_clear) == {f"d|i1|{r.number}" for r in RINGS} | {f"n|i1|{e}" for e in doc["escalations"]}
    for r in RINGS:
        assert breach_at(stored(change), r.number, T0 + timedelta(seconds=2000), CITY) is None
    assert core.renotify(stored(change), next(iter(doc["escalations"])), T0 + timedelta(seconds=60), POLICY) is None


def test_a_replayed_update_changes_nothing() -> None:
    doc = stored(opened(report(), CITY))
    ack = update("acknowledged", T0 + timedelta(seconds=5))
    change = core.updated(doc, ack, T0 + timedelta(seconds=5))
    assert change is not None and stored(change)["state"]["status"] == "acknowledged"
    assert core.updated(stored(change), ack, T0 + timedelta(seconds=6)) is None


def test_an_update_that_moves_backwards_or_is_unknown_is_refused_as_the_clock_says() -> None:
    doc = stored(opened(report(), CITY))
    with pytest.raises(Refused):
        core.updated(doc, update("on_scene", T0 - timedelta(hours=2), unit_id="p1"), T0)


def test_a_report_whose_deadlines_pass_the_calendar_raises_overflow_for_intake_to_refuse() -> None:
    # flows.intake turns OverflowError into a time_out_of_range dead letter (test_incident_engine).
    with pytest.raises(OverflowError):
        core.fresh_document(report(reported_at="9999-12-31T23:59:59-14:00"), RINGS, T0, 0)
