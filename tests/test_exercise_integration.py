"""Issue 4, must-show 4 (and issue 3's exercise rule): an exercise incident rides the whole path,
reserves only units taking part in the exercise, and shows up in exercise="true" series only."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import orjson
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer

pytestmark = pytest.mark.integration


def test_exercise_incident_is_kept_apart(new_settings, start_worker) -> None:
    settings = new_settings(rings="self_rescue:3600,mutual_aid:3601,grid:3602,street:3603,professional:3604")
    worker = start_worker(settings)
    p = settings.topic_prefix
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks="all")
    now = datetime.now(UTC).isoformat()
    for i, status in enumerate(["available", "available", "drilling"]):
        uid = f"x-post-{i}"
        reg = {"unit_id": uid, "kind": "post", "name": uid, "district": "天河区", "police_grid": "PG", "grid": "G",
               "venue": {"id": "VX", "type": "mall"}, "home": {"lat": 23.14, "lon": 113.37}, "responders": 5,
               "equipment": ["shield"]}
        producer.send(p + "units.registry.v1", key=uid.encode(), value=orjson.dumps(reg))
        producer.send(p + "units.status.v1", key=uid.encode(), value=orjson.dumps(
            {"event_id": f"{uid}-1", "unit_id": uid, "status": status, "at": now, "seq": 1}))
    producer.flush()
    r = redis.Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and r.zcard("kf:geo:drill:post") < 1:
        time.sleep(0.1)
    exercise = {"event_id": "x-e1", "incident_id": "x-inc-1", "category": "violence", "severity": 1,
                "reported_at": now, "location": {"lat": 23.14, "lon": 113.37}, "district": "天河区",
                "venue_id": "VX", "source": "call_110", "exercise": True}
    producer.send(p + "incidents.reported.v1", key=b"x-inc-1", value=orjson.dumps(exercise))
    producer.flush()

    consumer = KafkaConsumer(p + "dispatch.assignments.v1", p + "incidents.state.v1", p + "incidents.escalations.v1",
                             bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest",
                             enable_auto_commit=False, fetch_max_wait_ms=50, consumer_timeout_ms=3000)
    got: dict[str, list] = {"assignments": [], "state": [], "escalations": []}
    for rec in consumer:
        topic = rec.topic.removeprefix(p)
        key = {"dispatch.assignments.v1": "assignments", "incidents.state.v1": "state",
               "incidents.escalations.v1": "escalations"}[topic]
        got[key].append((orjson.loads(rec.value), dict(rec.headers)))
    consumer.close()
    ring1 = next(a for a, _ in got["assignments"] if a["ring"] == 1)
    assert ring1["exercise"] is True
    assert [u["unit_id"] for u in ring1["units"]] == ["x-post-2"], "only the unit in the exercise"
    for uid in ("x-post-0", "x-post-1"):  # real units untouched, still dispatchable
        assert r.hget(f"kf:unit:{uid}:live", "reserved_by") is None
        assert r.zscore("kf:geo:avail:post", uid) is not None
    assert got["state"] and all(s["exercise"] is True for s, _ in got["state"])
    escalations = [(e, h) for e, h in got["escalations"]]
    assert escalations and all(e["exercise"] is True for e, _ in escalations)
    # Their own CloudEvents type: a router paging real escalation targets never matches them.
    assert all(h["ce_type"] == b"dev.kaifong.escalation.exercise.v1" for _, h in escalations)
    assert worker.metric("kaifong_escalations_total", exercise="true") >= 1
    assert worker.metric("kaifong_escalations_total", exercise="false") == 0
    assert worker.metric("kaifong_assignments_total", exercise="true") >= 1
    assert worker.metric("kaifong_assignments_total", exercise="false") == 0
    assert worker.metric("kaifong_reported_to_assignment_seconds_count", exercise="false") == 0
    assert worker.metric("kaifong_reported_to_assignment_seconds_count", exercise="true") == 1
    assert worker.metric("kaifong_escalations_unacknowledged") == 0  # exercise ones never page
