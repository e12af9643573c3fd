"""Issue 3, must-shows 2 and 3: two workers, 200 incidents competing for 50 units, then a replay."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer

from kaifong.agents.core.clock import initial_rings

pytestmark = pytest.mark.integration

CENTRE = (23.1291, 113.2644)
KINDS = ["post"] * 15 + ["unit"] * 15 + ["grid_team"] * 10 + ["street_force"] * 5 + ["professional"] * 5


def units(tag: str) -> list[dict[str, Any]]:
    rng = random.Random(3)
    out = []
    for i, kind in enumerate(KINDS):
        out.append({"event_id": f"{tag}-reg-{i}", "unit_id": f"{tag}-u{i:02d}", "kind": kind, "name": f"u{i}",
                    "district": "越秀区", "police_grid": "PG1", "grid": f"G{i % 3}",
                    "venue": {"id": f"{tag}-V{i % 20}", "type": "mall"},
                    "home": {"lat": CENTRE[0] + rng.uniform(-0.003, 0.003),
                             "lon": CENTRE[1] + rng.uniform(-0.003, 0.003)},
                    "responders": 6, "equipment": ["shield", "extinguisher", "aed"][: 1 + i % 3]})
    return out


def read_all(settings: Any, topic: str, expect: int, timeout: float = 60) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(settings.topic_prefix + topic, bootstrap_servers=settings.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=50,
                             consumer_timeout_ms=1500)
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out += [orjson.loads(r.value) for r in consumer]
        if len(out) >= expect:
            out += [orjson.loads(r.value) for r in consumer]  # and anything just behind
            break
    consumer.close()
    return out


#: Long ring targets: this test is about dispatch, so no deadline may fire while it runs.
SLOW_RINGS = "self_rescue:3600,mutual_aid:3601,grid:3602,street:3603,professional:3604"


def test_two_workers_200_incidents_50_units_then_replay(new_settings, start_worker) -> None:
    settings = new_settings(rings=SLOW_RINGS)
    w1 = start_worker(settings, wait=False, name="w1")
    w2 = start_worker(settings, wait=False, name="w2")
    w1.wait_ready()
    w2.wait_ready()
    tag = f"d{int(time.time() * 1000) % 10**8}"
    p = settings.topic_prefix
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks="all")
    unit_list = units(tag)
    for u in unit_list:
        producer.send(p + "units.registry.v1", key=u["unit_id"].encode(), value=orjson.dumps(u))
    now = datetime.now(UTC).isoformat()
    for u in unit_list:
        producer.send(p + "units.status.v1", key=u["unit_id"].encode(), value=orjson.dumps(
            {"event_id": f"{u['unit_id']}-s1", "unit_id": u["unit_id"], "status": "available", "at": now,
             "seq": 1, "location": u["home"]}))
    producer.flush()
    r = redis.Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(r.zcard(f"kf:geo:avail:{k}") for k in set(KINDS)) < 50:
        time.sleep(0.2)
    assert sum(r.zcard(f"kf:geo:avail:{k}") for k in set(KINDS)) == 50

    rng = random.Random(11)
    incidents = [{"event_id": f"{tag}-e{i}", "incident_id": f"{tag}-i{i:03d}", "category": rng.choice(
        ["fire", "violence", "medical", "crowd"]), "severity": rng.randint(1, 4),
        "reported_at": datetime.now(UTC).isoformat(),
        "location": {"lat": CENTRE[0] + rng.uniform(-0.002, 0.002), "lon": CENTRE[1] + rng.uniform(-0.002, 0.002)},
        "district": "越秀区", "grid": f"G{i % 3}", "venue_id": f"{tag}-V{i % 20}", "source": "video",
        "exercise": False} for i in range(200)]
    for inc in incidents:  # all at once
        producer.send(p + "incidents.reported.v1", key=inc["incident_id"].encode(), value=orjson.dumps(inc))
    producer.flush()

    rings_expected = {inc["incident_id"]: initial_rings(inc["severity"], [1, 2, 3, 4, 5]) for inc in incidents}
    total = sum(len(v) for v in rings_expected.values())
    assignments = read_all(settings, "dispatch.assignments.v1", total)
    by_id = {a["assignment_id"]: a for a in assignments}
    assert len(by_id) == total, f"{len(by_id)} distinct assignments, expected {total}"
    decided: dict[str, set[int]] = defaultdict(set)
    holder: dict[str, str] = {}
    for a in by_id.values():
        assert a["attempt"] == 0 and a["assignment_id"] == f"{a['incident_id']}:r{a['ring']}:a0"
        decided[a["incident_id"]].add(a["ring"])
        for u in a["units"]:
            assert u["unit_id"] not in holder, f"{u['unit_id']} reserved twice ({holder.get(u['unit_id'])})"
            holder[u["unit_id"]] = a["incident_id"]
        if not a["units"]:
            # An empty ring says why: a shortfall, or ring 1 already met the needs.
            assert "shortfall" in a or a["reason"] == "needs_met", a
    # Every incident got a decision for every ring it should have, nothing pending.
    assert {k: sorted(v) for k, v in decided.items()} == rings_expected
    assert 0 < len(holder) <= 50
    # Redis agrees: each held unit is reserved by exactly the incident its assignment names.
    for unit_id, incident_id in holder.items():
        assert r.hget(f"kf:unit:{unit_id}:live", "reserved_by").decode() == incident_id
    assert sum(r.zcard(f"kf:geo:avail:{k}") for k in set(KINDS)) == 50 - len(holder)
    # Both workers did part of the work.
    for w in (w1, w2):
        assert w.metric("kaifong_events_in_total", topic=p + "incidents.reported.v1", outcome="ok") > 0
    reservations_before = {u: r.hget(f"kf:unit:{u}:live", "reserved_by") for u in holder}
    w1.stop()
    w2.stop()

    # Replay the incidents topic from the beginning: a new consumer group, and the dedupe ledger
    # wiped too, so only the stored decisions stand between a replay and a second dispatch.
    for key in r.scan_iter(match="kf:seen:incident-reported:*"):
        r.delete(key)
    replay = start_worker(new_settings(broker_url=settings.broker_url, redis_url=settings.redis_url,
                                       topic_prefix=settings.topic_prefix, app_id=settings.app_id + "-replay",
                                       rings=SLOW_RINGS),
                          name="replay")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and replay.metric(
            "kaifong_events_in_total", topic=p + "incidents.reported.v1", outcome="ok") < 200:
        time.sleep(0.3)
    assert replay.metric("kaifong_events_in_total", topic=p + "incidents.reported.v1", outcome="ok") == 200
    after = read_all(settings, "dispatch.assignments.v1", total)
    assert {a["assignment_id"] for a in after} == set(by_id), "a replay must not invent new assignment ids"
    for a in after:  # republished copies are identical to the originals
        assert a == by_id[a["assignment_id"]]
    assert {u: r.hget(f"kf:unit:{u}:live", "reserved_by") for u in holder} == reservations_before
    assert replay.metric("kaifong_assignments_total") == 0  # no fresh decision was made
    assert sum(r.zcard(f"kf:geo:avail:{k}") for k in set(KINDS)) == 50 - len(holder)
