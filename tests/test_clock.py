"""Pure ring-clock functions with an injected clock (issue 4, must-show 1, the pure half)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kaifong.agents.core import clock
from kaifong.agents.core.errors import Refused
from kaifong.streams.settings import parse_rings

RINGS = parse_rings("self_rescue:60,mutual_aid:180,grid:300,street:600,professional:1200")
T0 = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)


def report(**kw: object) -> dict:
    base = {"event_id": "e", "incident_id": "i1", "category": "fire", "severity": 3,
            "reported_at": T0.isoformat(), "location": {"lat": 23.1, "lon": 113.3}, "source": "call_110",
            "exercise": False, "district": "越秀区"}
    return {**base, **kw}


def assigned(state: dict) -> dict:
    bodies = [{"ring": 1, "units": [{"unit_id": "u1"}]}, {"ring": 2, "units": [{"unit_id": "u2"}]},
              {"ring": 3, "units": [{"unit_id": "u3"}]}]
    return clock.with_assignments(state, bodies, T0)


def upd(kind: str, seconds: float, unit: str | None = None, **kw: object) -> dict:
    u = {"event_id": f"{kind}-{seconds}-{unit}", "incident_id": "i1", "kind": kind,
         "at": (T0 + timedelta(seconds=seconds)).isoformat(), **kw}
    if unit:
        u["unit_id"] = unit
    return u


def ring(state: dict, n: int) -> dict:
    found = clock.ring_of(state, n)
    assert found is not None
    return found


def test_deadlines_run_from_reported_at() -> None:
    s = clock.open_incident(report(), RINGS, T0 + timedelta(seconds=5))
    assert [r["deadline_at"] for r in s["rings"]] == [(T0 + timedelta(seconds=t)).isoformat()
                                                      for t in (60, 180, 300, 600, 1200)]
    assert all(r["state"] == "pending" for r in s["rings"])


def test_three_ring_city() -> None:
    s = clock.open_incident(report(), parse_rings("a:60,b:180,c:300"), T0)
    assert [r["ring"] for r in s["rings"]] == [1, 2, 3]
    assert clock.initial_rings(1, [1, 2, 3]) == [1, 2, 3]


def test_met_when_a_ring_unit_is_on_scene_by_its_deadline() -> None:
    s = assigned(clock.open_incident(report(), RINGS, T0))
    s2, changes = clock.apply_update(s, upd("on_scene", 42.5, "u1"), T0 + timedelta(seconds=43))
    assert ring(s2, 1)["state"] == "met" and ring(s2, 1)["seconds"] == 42.5
    assert changes == [clock.RingChange(1, "met", 42.5)]
    assert ring(s2, 2)["state"] == "pending"  # ring 2 is met only by a ring-2 unit
    assert s2["version"] == s["version"] + 1 and s2["status"] == "on_scene"


def test_arrival_after_the_deadline_breaches_and_is_measured() -> None:
    s = assigned(clock.open_incident(report(), RINGS, T0))
    s2, changes = clock.apply_update(s, upd("on_scene", 200, "u2"), T0 + timedelta(seconds=201))
    assert ring(s2, 2)["state"] == "breached" and ring(s2, 2)["seconds"] == 200
    assert changes == [clock.RingChange(2, "breached", 200)]


def test_breach_by_the_timer_then_escalate_one_level_up() -> None:
    s = assigned(clock.open_incident(report(), RINGS, T0))
    now = T0 + timedelta(seconds=60, milliseconds=80)
    b = clock.breach(s, 1, now)
    assert b is not None and ring(b, 1)["state"] == "breached"
    b2, esc = clock.escalate(b, 1, "ring_deadline_missed", now)
    assert esc["escalation_id"] == "i1:r1:ring_deadline_missed:0"
    assert esc["level"] == "grid" and b2["escalation_level"] == "grid"
    assert esc["breached_by_s"] == pytest.approx(0.08)
    assert esc["deadline_at"] == (T0 + timedelta(seconds=60)).isoformat()
    _, esc2 = clock.escalate(b2, 2, "ring_deadline_missed", now)
    assert esc2["level"] == "street"
    # A later arrival of the ring's unit is measured but does not re-count the ring.
    b3, changes = clock.apply_update(b2, upd("on_scene", 70, "u1"), now)
    assert ring(b3, 1)["state"] == "breached" and changes == [clock.RingChange(1, "arrived", 70)]
    # The timer firing again for a breached ring does nothing.
    assert clock.breach(b3, 1, now) is None


def test_met_ring_does_not_breach() -> None:
    s = assigned(clock.open_incident(report(), RINGS, T0))
    s2, _ = clock.apply_update(s, upd("on_scene", 30, "u1"), T0)
    assert clock.breach(s2, 1, T0 + timedelta(seconds=60)) is None


def test_late_report_is_already_due() -> None:
    # Reported 10 minutes ago: rings 1-4 are past their deadlines the moment it arrives.
    now = T0 + timedelta(minutes=10, seconds=1)
    s = clock.open_incident(report(), RINGS, now)
    due = [r["ring"] for r in s["rings"] if clock.parse_time(r["deadline_at"]) <= now]
    assert due == [1, 2, 3, 4]
    b = clock.breach(s, 3, now)
    assert b is not None
    _, esc = clock.escalate(b, 3, "ring_deadline_missed", now)
    assert esc["breached_by_s"] == pytest.approx(301.0)


def test_milestone_before_the_report_is_refused() -> None:
    s = clock.open_incident(report(), RINGS, T0)
    with pytest.raises(Refused) as info:
        clock.apply_update(s, upd("acknowledged", -5), T0)
    assert info.value.error_class == "before_report"


def test_resolved_before_deadline_stops_clocks_and_absorbs_nothing() -> None:
    s = assigned(clock.open_incident(report(), RINGS, T0))
    s2, _ = clock.apply_update(s, upd("resolved", 30), T0)
    assert s2["status"] == "resolved"
    assert all(r["state"] == "stopped" for r in s2["rings"])
    assert clock.breach(s2, 1, T0 + timedelta(seconds=61)) is None
    with pytest.raises(Refused) as info:
        clock.apply_update(s2, upd("on_scene", 40, "u1"), T0)
    assert info.value.error_class == "incident_closed"


def test_status_never_goes_backwards_and_severity_changes() -> None:
    s = assigned(clock.open_incident(report(), RINGS, T0))
    s, _ = clock.apply_update(s, upd("on_scene", 30, "u1"), T0)
    s, _ = clock.apply_update(s, upd("acknowledged", 35), T0)
    assert s["status"] == "on_scene"
    s, _ = clock.apply_update(s, upd("severity_changed", 36, severity=1), T0)
    assert s["severity"] == 1


def test_severity_one_goes_to_the_district_and_levels_never_drop() -> None:
    s = clock.open_incident(report(severity=1), RINGS, T0)
    s, esc = clock.escalate(s, 1, "severity", T0)
    assert esc["level"] == "district" and esc["breached_by_s"] == 0
    s, esc2 = clock.escalate(s, 1, "ring_deadline_missed", T0 + timedelta(seconds=61))
    assert esc2["level"] == "city"
    _, esc3 = clock.escalate(s, 2, "ring_deadline_missed", T0 + timedelta(seconds=181))
    assert esc3["level"] == "city"  # the top stays the top


def test_exercise_flag_rides_on_escalations() -> None:
    s = clock.open_incident(report(exercise=True), RINGS, T0)
    _, esc = clock.escalate(s, 1, "no_candidate", T0)
    assert esc["exercise"] is True


def test_ids_are_deterministic() -> None:
    assert clock.escalation_id("a:b", 1, "severity", 0) == "a:b:r1:severity:0"
    assert clock.incident_of_escalation("a:b:r1:severity:0") == "a:b"
