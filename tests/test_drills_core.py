"""The drills' small pure decisions, no I/O: manual orders, the listings, fitting a plan, why a unit is busy.

(Sampling and scoring are tests/test_drillplan.py's.)
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from kaifong.agents.core import drillorders as orders
from kaifong.agents.core import drills as core
from kaifong.agents.core.drillplan import feasible_policy, fit
from kaifong.agents.core.errors import Rejected
from kaifong.streams.settings import Settings


def rejected(body: bytes) -> Rejected:
    with pytest.raises(Rejected) as info:
        orders.parse_order(body)
    return info.value


def test_an_order_names_one_target_and_a_channel() -> None:
    assert orders.parse_order(b'{"unit_id": "u-77"}') == orders.Order("unit_id", "u-77", "radio")
    assert orders.parse_order(b'{"grid": "G1", "channel": "video"}') == orders.Order("grid", "G1", "video")
    e = rejected(b"{nope")
    assert (e.kind, e.code, e.message, e.extra) == ("invalid", "not_json", "the body must be JSON",
                                                    {"reasons": ["the body is not JSON"]})
    assert rejected(b"").code == "bad_body"  # an empty body is no object
    assert rejected(b"[1]").extra == {"reasons": ['expected e.g. {"unit_id": "u-77", "channel": "radio"}']}
    e = rejected(b'{"unit_id": "", "grid": "G1", "channel": "fax", "x": 1}')
    assert e.kind == "invalid" and e.code == "bad_body"
    assert e.extra["reasons"] == ["unknown fields: x", "name exactly one of unit_id, grid, district",
                                  "unit_id must be a non-empty string of at most 128 characters",
                                  "channel must be radio or video"]
    assert e.message == "; ".join(e.extra["reasons"])  # type: ignore[arg-type]


def test_what_an_order_that_cannot_be_served_says() -> None:
    for target, code in (("unit_id", "unknown_unit"), ("grid", "unknown_grid"), ("district", "unknown_district")):
        e = orders.unknown_target(orders.Order(target, "X", "radio"))
        assert (e.kind, e.code) == ("not_found", code) and "X" in e.message
    e = orders.no_eligible_unit(orders.Order("grid", "G1", "radio"), [f"r{i}" for i in range(30)])
    assert (e.kind, e.code, e.message) == ("conflict", "no_eligible_unit", "no eligible unit for grid G1")
    assert e.extra == {"reasons": [f"r{i}" for i in range(20)]}
    e = orders.not_published()
    assert (e.kind, e.code) == ("unavailable", "broker_unavailable")


def test_the_listings() -> None:
    assert orders.listing_day(None, date(2026, 11, 29)) == "2026-11-29"
    assert orders.listing_day("2026-11-01", date(2026, 11, 29)) == "2026-11-01"
    with pytest.raises(Rejected) as info:
        orders.listing_day("yesterday", date(2026, 11, 29))
    assert (info.value.kind, info.value.code) == ("invalid", "bad_query")
    rec = {"drill_id": "d1", "unit_id": "u1"}
    body = orders.listing("2026-11-29", [(rec, None), (rec, {"outcome": "pass", "ack_s": 3.0, "extra": 1})],
                          {"pass": 3, "aborted": 1})
    assert body["outcomes"] == {"pass": 3, "late": 0, "fail": 0, "no_answer": 0, "aborted": 1}
    assert (body["total"], body["pass_rate"], body["open"]) == (4, 1.0, 1)
    assert body["drills"][1] == {**rec, "outcome": "pass", "ack_s": 3.0, "muster_s": None, "headcount": None,
                                 "decided_at": None}
    with pytest.raises(Rejected):
        orders.rates_group("venue")
    assert orders.rates("grid", {"G2": {"aborted": 2}, "G1": {"pass": 1, "fail": 3}}) == {"by": "grid", "groups": {
        "G1": {"pass_rate": 0.25, "drills": 4, "outcomes": {"pass": 1, "late": 0, "fail": 3, "no_answer": 0,
                                                             "aborted": 0}},
        "G2": {"pass_rate": None, "drills": 0, "outcomes": {"pass": 0, "late": 0, "fail": 0, "no_answer": 0,
                                                             "aborted": 2}}}}


def test_policy_from_settings_and_hours() -> None:
    assert core.parse_hours("0-24") == (0, 24)
    with pytest.raises(ValueError, match="KAIFONG_DRILL_HOURS"):
        core.parse_hours("8 to 20")
    policy = core.policy_from_settings(Settings(drill_hours="9-17", drill_ack_target_s=10, drill_muster_target_s=30))
    assert (policy.start_hour, policy.end_hour, policy.no_answer_after_s, policy.no_muster_after_s) == (9, 17, 30, 90)


def test_fitting_a_plan_into_what_is_left_of_the_day() -> None:
    policy = core.DrillPolicy(daily_rate=10, coverage_days=1)
    day = date(2026, 11, 29)
    start = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)  # 08:00 local
    plan = [(start + timedelta(hours=h), f"u{h}") for h in (0, 6, 11)]
    assert fit(plan, day, start - timedelta(hours=1), policy) == plan  # planned before the window: as drawn
    now = start + timedelta(hours=6)  # half the window is gone: the plan is squeezed into the rest
    assert fit(plan, day, now, policy) == [(now, "u0"), (now + timedelta(hours=3), "u6"),
                                           (now + timedelta(hours=5.5), "u11")]
    assert fit(plan, day, start + timedelta(hours=13), policy) == []  # after the window: nothing
    squeezed = fit(plan, day, now, policy, spread_s=12 * 60)
    assert [t for t, _ in squeezed] == [now, now + timedelta(minutes=6), now + timedelta(minutes=11)]


def test_a_registry_that_outgrew_the_rate_is_drilled_faster() -> None:
    policy = core.DrillPolicy(daily_rate=10, coverage_days=5)
    assert feasible_policy(policy, 50) is policy
    assert feasible_policy(policy, 51).daily_rate == 11


def test_why_a_unit_cannot_be_drilled_now() -> None:
    assert core.busy_reason("u1", None, False, False) is None
    assert core.busy_reason("u1", "available", False, False) is None
    assert core.busy_reason("u1", "on_scene", True, True) == "unit u1 has an open drill"
    assert core.busy_reason("u1", "on_scene", True, False) == "unit u1 is reserved for an incident"
    assert core.busy_reason("u1", "off_duty", False, False) == "unit u1 is off duty"
    assert core.busy_why("u1", "busy:drill_open") == "unit u1 is drill open"


def test_a_drill_rebuilt_from_what_is_stored() -> None:
    policy = core.DrillPolicy()
    issued = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
    rec = {"drill_id": "d1", "unit_id": "u1", "channel": "radio", "issued_at": issued.isoformat(),
           "expected_headcount": 4}
    answers = {"acknowledged": {"at": (issued + timedelta(seconds=20)).isoformat()},
               "mustered": {"at": (issued + timedelta(seconds=100)).isoformat(), "headcount": 4}}
    state = core.stored_state(rec, answers, None)
    assert core.score(state, issued + timedelta(seconds=100), policy) == ("pass", 20.0, 100.0)
    ms = core.to_ms(issued + timedelta(seconds=50))
    assert core.abort_time(state, ms, issued + timedelta(hours=1)) == issued + timedelta(seconds=50)
    assert core.abort_time(state, None, issued + timedelta(hours=1)) == issued + timedelta(hours=1)
    assert core.abort_time(state, core.to_ms(issued) - 5000, issued) == issued  # never before the issue
    aborted = core.stored_state(rec, answers, (issued + timedelta(seconds=50)).isoformat())
    assert core.score(aborted, issued + timedelta(seconds=50), policy) == ("aborted", 20.0, None)
    result = core.result_record(state, issued + timedelta(seconds=100), policy)
    assert result is not None and core.result_entry(result) == {"at": result["decided_at"], "outcome": "pass"}
    assert core.result_entry({**result, "outcome": "aborted"}) is None
    assert core.readiness_of([{"at": issued.isoformat(), "outcome": "pass"}], issued) == 1.0
    assert core.from_ms(core.to_ms(issued)) == issued
