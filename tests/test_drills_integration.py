"""Issue 5: pull-test drills end to end, against real workers on the embedded broker and Redis.

Manual drills through the API and the CLI, answers on ``drills.responses.v1``, results on
``drills.results.v1`` (pass, late, no_answer, aborted by a real dispatch), metrics, readiness and
pass rates; then the scheduler: two workers, one lease, each eligible unit drilled once, none
that is dispatched or off duty. Targets are shrunk through settings (ack 1 s, muster 2 s, so
the no-answer cut-off is 3 s) and the scheduler's day is squeezed into seconds
(``KAIFONG_DRILL_SPREAD_S``), so the whole file runs in well under a minute.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer

from kaifong.streams.settings import Settings

pytestmark = pytest.mark.integration

TOKEN = "t0k"
#: Long ring targets: no ring deadline may fire while these tests run.
SLOW_RINGS = "self_rescue:3600,mutual_aid:3601,grid:3602,street:3603,professional:3604"
HOME = {"lat": 23.1291, "lon": 113.2644}
Rec = tuple[bytes | None, dict[str, Any], dict[str, bytes]]


# -- helpers ----------------------------------------------------------------------------------------
def call(base: str, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
    """One HTTP request; (status, JSON body)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def collect(settings: Settings, suffix: str, until: Callable[[list[Rec]], bool], timeout: float = 20.0) -> list[Rec]:
    """Records of a topic from the beginning, read until ``until(records)`` holds (or the timeout)."""
    consumer = KafkaConsumer(settings.topic_prefix + suffix, bootstrap_servers=settings.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=50,
                             consumer_timeout_ms=300)
    out: list[Rec] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            out += [(r.key, orjson.loads(r.value), dict(r.headers)) for r in consumer]
            if until(out):
                break
    finally:
        consumer.close()
    return out


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def registry(uid: str, *, grid: str, district: str = "越秀区", kind: str = "post", venue: str = "V0") -> dict[str, Any]:
    return {"unit_id": uid, "kind": kind, "name": uid, "district": district, "police_grid": "PG1", "grid": grid,
            "venue": {"id": venue, "type": "mall"}, "home": HOME, "responders": 6, "equipment": ["shield"]}


def publish_units(producer: KafkaProducer, settings: Settings, units: list[tuple[dict[str, Any], str]]) -> None:
    """Register units and give each its status (seq 1)."""
    p = settings.topic_prefix
    now = datetime.now().astimezone().isoformat()
    for reg, status in units:
        uid = reg["unit_id"]
        producer.send(p + "units.registry.v1", key=uid.encode(), value=orjson.dumps(reg))
        producer.send(p + "units.status.v1", key=uid.encode(), value=orjson.dumps(
            {"event_id": f"{uid}-s1", "unit_id": uid, "status": status, "at": now, "seq": 1, "location": HOME}))
    producer.flush()


def answer(producer: KafkaProducer, settings: Settings, drill: dict[str, Any], stage: str, after_s: float,
           headcount: int | None = None, event_id: str = "") -> None:
    """A unit's answer stamped ``after_s`` seconds after the drill was issued (event time)."""
    at = datetime.fromisoformat(drill["issued_at"]) + timedelta(seconds=after_s)
    body: dict[str, Any] = {"event_id": event_id or f"{drill['drill_id']}-{stage}", "drill_id": drill["drill_id"],
                            "unit_id": drill["unit_id"], "stage": stage, "at": at.isoformat()}
    if headcount is not None:
        body["headcount"] = headcount
    producer.send(settings.topic_prefix + "drills.responses.v1", key=drill["drill_id"].encode(),
                  value=orjson.dumps(body))


def results_by_drill(settings: Settings, drill_ids: set[str], timeout: float = 15.0) -> dict[str, dict[str, Any]]:
    recs = collect(settings, "drills.results.v1", lambda rs: {v["drill_id"] for _, v, _ in rs} >= drill_ids, timeout)
    out: dict[str, dict[str, Any]] = {}
    for key, value, headers in recs:
        assert key == value["drill_id"].encode()
        assert headers["ce_type"] == b"dev.kaifong.drill-result.v1"
        assert value["drill_id"] not in out, "a result is published once"
        out[value["drill_id"]] = value
    return out


# -- (a) (b) (c): manual drills, pass / late / no_answer, API, CLI, metrics --------------------------
def test_manual_drills_pass_late_no_answer(new_settings, start_worker) -> None:
    settings = new_settings(api_token=TOKEN, drills_enabled=False, drill_ack_target_s=1, drill_muster_target_s=2)
    worker = start_worker(settings)
    base = worker.base_url
    tag = uuid.uuid4().hex[:6]
    a, b, c = f"{tag}-a", f"{tag}-b", f"{tag}-c"
    district_c = f"D-{tag}"
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks="all")
    publish_units(producer, settings, [(registry(a, grid=f"G-{tag}-a"), "available"),
                                       (registry(b, grid=f"G-{tag}-b"), "available"),
                                       (registry(c, grid=f"G-{tag}-c", district=district_c), "available")])
    r = redis.Redis.from_url(settings.redis_url)
    wait_for(lambda: all(r.hget(f"kf:unit:{u}:live", "status") == b"available" for u in (a, b, c)),
             what="units registered")

    # The API: bearer token, a bad body with every reason, unknown targets.
    assert call(base, "POST", "/api/drills", {"unit_id": a}, token=None)[0] == 401
    status, body = call(base, "POST", "/api/drills", {"unit_id": a, "grid": "x", "channel": "fax", "extra": 1})
    assert status == 400 and body["error"] == "bad_body" and len(body["reasons"]) == 3
    assert call(base, "POST", "/api/drills", b"[1]")[0] == 400
    assert call(base, "POST", "/api/drills", {"unit_id": f"{tag}-nobody"})[1]["error"] == "unknown_unit"
    assert call(base, "POST", "/api/drills", {"grid": f"G-{tag}-none"})[0] == 404
    assert call(base, "POST", "/api/drills", {"district": f"D-{tag}-none"})[0] == 404

    # (a) unit A by id, (b) unit B by its grid, (c) unit C by its district through the CLI.
    status, body = call(base, "POST", "/api/drills", {"unit_id": a})
    assert status == 202, body
    drill_a = body["drills"][0]
    assert drill_a["unit_id"] == a and drill_a["reason"] == "manual" and drill_a["channel"] == "radio"
    status, body = call(base, "POST", "/api/drills", {"unit_id": a})
    assert status == 409 and body["error"] == "no_eligible_unit", "one open drill per unit"
    status, body = call(base, "POST", "/api/drills", {"grid": f"G-{tag}-b", "channel": "video"})
    assert status == 202, body
    drill_b = body["drills"][0]
    assert drill_b["unit_id"] == b and drill_b["channel"] == "video"
    cli = subprocess.run([sys.executable, "-m", "kaifong.agents.cli", "drill", "--district", district_c],
                         env=worker.env, capture_output=True, text=True, timeout=30)
    assert cli.returncode == 0, cli.stderr
    drill_c = call(base, "GET", "/api/drills")[1]
    drill_c = next(d for d in drill_c["drills"] if d["unit_id"] == c)
    assert drill_c["drill_id"] in cli.stdout

    # The drill does not touch the unit's live status: it stays available (and dispatchable).
    assert r.hget(f"kf:unit:{a}:live", "status") == b"available"
    assert r.zscore("kf:geo:avail:post", a) is not None

    # Answers: A in time with enough people; B musters 3 s after issue (target 2 s, cut-off 6 s);
    # C never answers. Plus an answer to an unknown drill and one stamped before A's issue.
    answer(producer, settings, drill_a, "acknowledged", 0.3)
    answer(producer, settings, drill_a, "mustered", 0.8, headcount=5)
    answer(producer, settings, drill_b, "acknowledged", 0.5)
    answer(producer, settings, drill_b, "mustered", 3.0, headcount=6)
    answer(producer, settings, {**drill_a, "drill_id": f"drl-{tag}-nope"}, "acknowledged", 0.1)
    answer(producer, settings, drill_a, "mustered", -5.0, headcount=6, event_id=f"{tag}-early")
    producer.flush()

    issued = collect(settings, "drills.issued.v1", lambda rs: len(rs) >= 3)
    assert {v["drill_id"] for _, v, _ in issued} == {drill_a["drill_id"], drill_b["drill_id"], drill_c["drill_id"]}
    for key, value, headers in issued:
        assert key == value["drill_id"].encode()
        assert headers["ce_type"] == b"dev.kaifong.drill-issued.v1" and headers["ce_id"] == key
        assert value["ack_target_s"] == 1 and value["muster_target_s"] == 2 and value["expected_headcount"] == 6
        assert value["reason"] == "manual"

    results = results_by_drill(settings, {drill_a["drill_id"], drill_b["drill_id"], drill_c["drill_id"]})
    ra, rb, rc = results[drill_a["drill_id"]], results[drill_b["drill_id"]], results[drill_c["drill_id"]]
    assert (ra["outcome"], ra["ack_s"], ra["muster_s"], ra["headcount"]) == ("pass", 0.3, 0.8, 5)
    assert (rb["outcome"], rb["ack_s"], rb["muster_s"]) == ("late", 0.5, 3.0)
    assert (rc["outcome"], rc["ack_s"], rc["muster_s"]) == ("no_answer", None, None)
    no_answer_at = datetime.fromisoformat(drill_c["issued_at"]) + timedelta(seconds=3)  # 3 x the ack target
    assert datetime.fromisoformat(rc["decided_at"]) == no_answer_at

    # Refused answers are dead-lettered with their reason.
    dead = collect(settings, "deadletter.v1", lambda rs: len(rs) >= 2, timeout=10)
    assert sorted(v["error_class"] for _, v, _ in dead) == ["before_issue", "unknown_drill"]
    assert all(v["stage"] == "drills" for _, v, _ in dead)

    # Metrics.
    assert worker.metric("kaifong_drills_total", outcome="pass") == 1
    assert worker.metric("kaifong_drills_total", outcome="late") == 1
    assert worker.metric("kaifong_drills_total", outcome="no_answer") == 1
    assert worker.metric("kaifong_drills_issued_total", reason="manual") == 3
    assert worker.metric("kaifong_drill_response_seconds_count", stage="acknowledged") == 2
    assert worker.metric("kaifong_drill_response_seconds_count", stage="mustered") == 2
    assert worker.metric("kaifong_drill_response_seconds_bucket", stage="mustered", le="5.0") == 2

    # Today's drills, counts, pass rates by grid, readiness per unit.
    status, today = call(base, "GET", "/api/drills")
    mine = {d["drill_id"]: d for d in today["drills"] if d["unit_id"] in (a, b, c)}
    assert status == 200 and {d["outcome"] for d in mine.values()} == {"pass", "late", "no_answer"}
    assert today["outcomes"]["pass"] >= 1 and today["outcomes"]["no_answer"] >= 1
    status, rates = call(base, "GET", "/api/drills/rates?by=grid")
    assert status == 200
    assert rates["groups"][f"G-{tag}-a"]["pass_rate"] == 1.0 and rates["groups"][f"G-{tag}-b"]["pass_rate"] == 0.0
    assert call(base, "GET", "/api/drills/rates?by=street")[0] == 400
    assert {u: float(r.hget("kf:readiness", u)) for u in (a, b, c)} == {a: 1.0, b: 0.6, c: 0.0}
    assert r.llen(f"kf:unit:{a}:drills") == 1 and not r.exists(f"kf:unit:{a}:drill")
    # A unit whose drill ended can be drilled again.
    assert call(base, "POST", "/api/drills", {"unit_id": a})[0] == 202


# -- (d): a real dispatch aborts the drill; the unit is dispatched ----------------------------------
def test_dispatch_aborts_open_drill(new_settings, start_worker) -> None:
    settings = new_settings(api_token=TOKEN, drills_enabled=False, rings=SLOW_RINGS)
    worker = start_worker(settings)
    tag = uuid.uuid4().hex[:6]
    unit = f"{tag}-d"
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks="all")
    publish_units(producer, settings, [(registry(unit, grid=f"G-{tag}", venue=f"V-{tag}"), "available")])
    r = redis.Redis.from_url(settings.redis_url)
    wait_for(lambda: r.zscore("kf:geo:avail:post", unit) is not None, what="unit dispatchable")
    status, body = call(worker.base_url, "POST", "/api/drills", {"unit_id": unit})
    assert status == 202, body
    drill = body["drills"][0]
    answer(producer, settings, drill, "acknowledged", 0.2)
    producer.flush()
    wait_for(lambda: r.hexists(f"kf:drill:{drill['drill_id']}:responses", "acknowledged"), what="ack stored")
    time.sleep(0.5)  # the acknowledgement is stamped issue + 0.2 s: the dispatch must come after it
    # While its drill is open the unit is exactly as available as it says it is.
    assert r.hget(f"kf:unit:{unit}:live", "status") == b"available"
    assert r.zscore("kf:geo:avail:post", unit) is not None

    incident = {"event_id": f"{tag}-r", "incident_id": f"{tag}-inc", "category": "fire", "severity": 2,
                "reported_at": datetime.now().astimezone().isoformat(), "location": HOME, "district": "越秀区",
                "grid": f"G-{tag}", "venue_id": f"V-{tag}", "source": "call_110", "exercise": False}
    producer.send(settings.topic_prefix + "incidents.reported.v1", key=incident["incident_id"].encode(),
                  value=orjson.dumps(incident))
    producer.flush()
    assignments = collect(settings, "dispatch.assignments.v1",
                          lambda rs: any(u["unit_id"] == unit for _, v, _ in rs for u in v["units"]))
    assert any(u["unit_id"] == unit for _, v, _ in assignments for u in v["units"]), "the drilled unit is dispatched"
    assert r.hget(f"kf:unit:{unit}:live", "reserved_by") == incident["incident_id"].encode()

    result = results_by_drill(settings, {drill["drill_id"]})[drill["drill_id"]]
    assert result["outcome"] == "aborted" and result["ack_s"] == 0.2 and result["muster_s"] is None, result
    assert worker.metric("kaifong_drills_total", outcome="aborted") == 1
    # An aborted drill says nothing about the unit and does not count as its drill.
    assert not r.exists(f"kf:unit:{unit}:drills") and r.hget("kf:readiness", unit) is None
    assert r.hget(f"kf:drills:planner:{settings.topic_prefix}", unit) is None
    assert not r.exists(f"kf:unit:{unit}:drill")


# -- (e): the scheduler: one leader among two workers, eligible units only, each once ----------------
def test_scheduler_one_leader_eligible_units_once(new_settings, start_worker) -> None:
    base = new_settings(drills_enabled=False)
    tag = uuid.uuid4().hex[:6]
    statuses = ["available"] * 34 + ["off_duty"] * 3 + ["dispatched"] * 3
    units = [(registry(f"{tag}-s{i:02d}", grid=f"G-{tag}-{i % 4}", district=["越秀区", "天河区"][i % 2]), s)
             for i, s in enumerate(statuses)]
    # A loader worker (scheduler off, its own consumer group so the schedulers' group never waits
    # for it) brings the city into Redis first, so the scheduler's first plan sees all of it.
    loader = start_worker(dataclasses.replace(base, app_id=base.app_id + "-loader"), name="loader")
    producer = KafkaProducer(bootstrap_servers=base.bootstrap_servers, linger_ms=5, acks="all")
    publish_units(producer, base, units)
    r = redis.Redis.from_url(base.redis_url)
    wait_for(lambda: all(r.hget(f"kf:unit:{reg['unit_id']}:live", "status") == s.encode() for reg, s in units),
             what="city loaded")
    loader.proc.send_signal(signal.SIGTERM)

    sched = dataclasses.replace(base, drills_enabled=True, drills_per_day=10_000, drill_spread_s=3.0, drill_seed=7)
    w1 = start_worker(sched, wait=False, name="s1")
    w2 = start_worker(sched, wait=False, name="s2")
    w1.wait_ready()
    w2.wait_ready()
    available = {reg["unit_id"] for reg, s in units if s == "available"}
    busy = {reg["unit_id"] for reg, s in units if s != "available"}

    def mine(recs: list[Rec]) -> list[dict[str, Any]]:
        return [v for _, v, _ in recs if v["unit_id"].startswith(f"{tag}-")]

    issued = collect(sched, "drills.issued.v1", lambda rs: {v["unit_id"] for v in mine(rs)} >= available,
                     timeout=25)
    time.sleep(1.0)  # anything a second leader would have issued meanwhile
    issued = collect(sched, "drills.issued.v1", lambda rs: False, timeout=1.5)
    drills = mine(issued)
    assert {d["unit_id"] for d in drills} == available, "every eligible unit, none dispatched or off duty"
    assert not {d["unit_id"] for d in drills} & busy
    assert len(drills) == len(available), "each unit at most once"
    assert len({v["drill_id"] for _, v, _ in issued}) == len(issued), "drill ids are distinct"
    assert all(d["reason"] == "scheduled" for d in drills)

    # Exactly one worker issued (the lease holder) and it set the coverage gauge.
    counts = [w.metric("kaifong_drills_issued_total", reason="scheduled") for w in (w1, w2)]
    assert sorted(counts)[0] == 0 and sum(counts) == len(issued), counts
    leader = (w1, w2)[counts.index(max(counts))]
    assert leader.metric("kaifong_units_never_drilled") >= len(units)
    # The skipped (busy) units were not marked drilled: they stay urgent for the next plan.
    planner = r.hgetall(f"kf:drills:planner:{sched.topic_prefix}")
    assert {k.decode() for k in planner} >= available and not {k.decode() for k in planner} & busy


def test_the_day_is_planned_from_the_registry_once_it_settled(new_settings, start_worker) -> None:
    # `make run`: the worker starts on an empty registry while the simulator registers the city.
    # A day planned at the scheduler's first tick drew from nobody (or from the first units
    # registered) and, planned once, issued no drill all day.
    sched = new_settings(drills_enabled=True, drills_per_day=10_000, drill_spread_s=3.0, drill_seed=7)
    worker = start_worker(sched)
    time.sleep(2.0)  # the scheduler ticks on an empty registry
    tag = uuid.uuid4().hex[:6]
    units = [(registry(f"{tag}-u{i:02d}", grid=f"G-{tag}-{i % 3}"), "available") for i in range(40)]
    producer = KafkaProducer(bootstrap_servers=sched.bootstrap_servers, linger_ms=5, acks="all")
    publish_units(producer, sched, units[:20])  # the city arrives in two parts, 2 s apart
    time.sleep(2.0)
    publish_units(producer, sched, units[20:])
    producer.close()
    every = {reg["unit_id"] for reg, _ in units}
    issued = collect(sched, "drills.issued.v1", lambda rs: {v["unit_id"] for _, v, _ in rs} >= every, timeout=30)
    assert {v["unit_id"] for _, v, _ in issued} == every, "the plan covers the whole registry, not its first part"
    assert worker.metric("kaifong_drills_issued_total", reason="scheduled") == len(every)
