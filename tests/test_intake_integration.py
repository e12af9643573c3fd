"""Issue 2, must-show 3: 1,000 valid and 100 invalid events, published with kafka-python's own
producer (not kaifong's code), against the real embedded broker and Redis."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer

from kaifong.agents.store.keys import drill as drill_key

pytestmark = pytest.mark.integration

T0 = "2026-11-29T14:00:00+08:00"


def incident(i: int, tag: str) -> dict[str, Any]:
    return {"event_id": f"{tag}-r-{i}", "incident_id": f"{tag}-inc-{i}", "category": "fire", "severity": 1 + i % 4,
            "reported_at": T0, "location": {"lat": 23.1 + i / 1e4, "lon": 113.3}, "district": "越秀区",
            "grid": f"G{i % 7}", "source": "call_110", "exercise": i % 10 == 0,
            "description": "smoke", "caller": {"phone": "13800138000", "name": "王小明"}}


def update(i: int, tag: str) -> dict[str, Any]:
    return {"event_id": f"{tag}-u-{i}", "incident_id": f"{tag}-inc-{i}", "kind": "acknowledged",
            "at": "2026-11-29T14:00:30+08:00"}


def registry(i: int, tag: str) -> dict[str, Any]:
    return {"event_id": f"{tag}-g-{i}", "unit_id": f"{tag}-unit-{i}", "kind": "unit", "name": f"单元{i}",
            "district": "天河区", "police_grid": "PG1", "grid": "G1", "venue": {"id": f"V{i}", "type": "school"},
            "home": {"lat": 23.13, "lon": 113.32}, "responders": 8, "equipment": ["shield", "aed"]}


def status(i: int, tag: str) -> dict[str, Any]:
    return {"event_id": f"{tag}-s-{i}", "unit_id": f"{tag}-unit-{i % 50}", "status": "available",
            "location": {"lat": 23.13, "lon": 113.32}, "at": T0, "seq": i}


def drill(i: int, tag: str) -> dict[str, Any]:
    return {"event_id": f"{tag}-d-{i}", "drill_id": f"{tag}-drill-{i}", "unit_id": f"{tag}-unit-{i}",
            "stage": "acknowledged", "at": T0}


def test_thousand_valid_hundred_invalid(new_settings, start_worker) -> None:
    settings = new_settings()
    worker = start_worker(settings)
    tag = uuid.uuid4().hex[:6]
    p = settings.topic_prefix
    topics = {"incident-reported": p + "incidents.reported.v1", "incident-update": p + "incidents.updates.v1",
              "unit-registered": p + "units.registry.v1", "unit-status": p + "units.status.v1",
              "drill-response": p + "drills.responses.v1"}
    valid: list[tuple[str, str, dict[str, Any]]] = []  # (event type, key, event)
    valid += [("incident-reported", f"{tag}-inc-{i}", incident(i, tag)) for i in range(300)]
    valid += [("incident-update", f"{tag}-inc-{i}", update(i, tag)) for i in range(200)]
    valid += [("unit-registered", f"{tag}-unit-{i}", registry(i, tag)) for i in range(200)]
    # Status: per unit, seq strictly increasing in publish order (same key → same partition).
    valid += [("unit-status", f"{tag}-unit-{i % 50}", status(i, tag)) for i in range(250)]
    valid += [("drill-response", f"{tag}-drill-{i}", drill(i, tag)) for i in range(50)]
    assert len(valid) == 1000

    base = incident(999, tag)
    bad_time = {**base, "reported_at": "2026-11-29T14:00:00"}
    # (event type, raw value bytes, expected error class) — 10 kinds x ~10 each = 90 dead letters.
    invalid_kinds: list[tuple[str, bytes, str]] = [
        ("incident-reported", b"{not json", "not_json"),
        ("incident-reported", b"[1, 2, 3]", "not_object"),
        ("incident-reported", orjson.dumps({k: v for k, v in base.items() if k != "category"}), "missing_field"),
        ("incident-reported", orjson.dumps({**base, "severity": "high"}), "wrong_type"),
        ("incident-reported", orjson.dumps({**base, "source": "carrier_pigeon"}), "bad_enum"),
        ("incident-reported", orjson.dumps({**base, "location": {"lat": 123.0, "lon": 113.3}}), "out_of_range"),
        ("incident-reported", orjson.dumps(bad_time), "bad_time"),
        ("incident-reported", orjson.dumps({**base, "description": "x" * (2 * 1024 * 1024)}), "too_large"),
        ("unit-status", b"\xff\xfe not utf-8", "not_json"),
        ("incident-update", orjson.dumps({**update(1, tag), "kind": "teleported"}), "bad_enum"),
        ("unit-status", b'{"event_id": "x", "seq": NaN}', "not_json"),
        ("drill-response", orjson.dumps({**drill(1, tag), "extra": 1}), "unknown_field"),
    ]
    invalid: list[tuple[str, bytes, str]] = []
    while len(invalid) < 90:
        for kind in invalid_kinds:
            if len(invalid) < 90:
                invalid.append(kind)
    # 10 duplicates: the same event_id again (dropped and counted, not dead-lettered).
    duplicates = [valid[i] for i in range(0, 1000, 100)]

    # The 50 drill answers answer drills that exist (an answer to an unknown drill is refused).
    seed = redis.Redis.from_url(settings.redis_url)
    for i in range(50):
        record = {"drill_id": f"{tag}-drill-{i}", "unit_id": f"{tag}-unit-{i}", "channel": "radio",
                  "issued_at": "2026-11-29T13:59:00+08:00", "expected_headcount": 8, "reason": "manual"}
        seed.hset(drill_key(record["drill_id"]), mapping={
            "doc": orjson.dumps({"record": record, "partition": 0, "day": "2026-11-29"}), "issued_sent": "1"})
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, max_request_size=4 * 1024 * 1024,
                             linger_ms=5, acks="all")
    sent_invalid: dict[tuple[int, int, str], str] = {}  # (partition, offset, topic) → expected class
    futures = []
    for et, key, ev in valid:
        futures.append(producer.send(topics[et], key=key.encode(), value=orjson.dumps(ev)))
    inv_futures = [(producer.send(topics[et], key=b"bad", value=raw), et, cls) for et, raw, cls in invalid]
    for et, key, ev in duplicates:
        futures.append(producer.send(topics[et], key=key.encode(), value=orjson.dumps(ev)))
    producer.flush()
    for f in futures:
        f.get(10)
    for f, et, cls in inv_futures:
        meta = f.get(10)
        sent_invalid[(meta.partition, meta.offset, topics[et])] = cls
    producer.close()
    assert len(sent_invalid) == 90

    # Every invalid message on the dead-letter topic, with its reason, stage and source coordinates.
    consumer = KafkaConsumer(p + "deadletter.v1", bootstrap_servers=settings.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=50,
                             consumer_timeout_ms=500)
    dead: dict[tuple[int, int, str], dict[str, Any]] = {}
    deadline = time.monotonic() + 60
    while len(dead) < 90 and time.monotonic() < deadline:
        for rec in consumer:
            body = orjson.loads(rec.value)
            headers = dict(rec.headers)
            assert headers["kf_error_class"].decode() == body["error_class"]
            assert int(headers["kf_source_offset"]) == body["source_offset"]
            assert headers["kf_source_topic"].decode() == body["source_topic"]
            assert rec.key == b"bad"
            dead[(body["source_partition"], body["source_offset"], body["source_topic"])] = body
    consumer.close()
    assert set(dead) == set(sent_invalid), "dead letters must be exactly the invalid messages"
    for coords, expected in sent_invalid.items():
        body = dead[coords]
        assert body["error_class"] == expected, (coords, body["error"])
        assert body["stage"] == "intake"
        assert body["error"]
        if body["value_size"] <= 64 * 1024:
            assert not body["value_truncated"]
            assert base64.b64decode(body["value_b64"])  # the original bytes are kept
        else:
            assert body["value_truncated"] and body["value_size"] > 2 * 1024 * 1024

    # Every valid event got through: its effect is recorded (dedupe ledger written after the
    # effect), every incident's state is on the state topic, and the counters agree.
    r = redis.Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + 60
    missing: list[str] = []
    while time.monotonic() < deadline:
        # (Unit status keeps no per-event keys: its effect is checked through the units' seq below.)
        missing = [ev["event_id"] for et, _, ev in valid
                   if et != "unit-status" and not r.exists(f"kf:seen:{et}:{ev['event_id']}")]
        if not missing:
            break
        time.sleep(0.5)
    assert not missing, f"{len(missing)} valid events not processed, e.g. {missing[:5]}"
    for i in range(50):
        live = r.hgetall(f"kf:unit:{tag}-unit-{i}:live")
        assert int(live[b"seq"]) == max(s for s in range(250) if s % 50 == i)
    for i in range(50):
        assert r.hget(f"kf:drill:{tag}-drill-{i}:responses", "acknowledged")

    states: dict[str, dict[str, Any]] = {}
    consumer = KafkaConsumer(p + "incidents.state.v1", bootstrap_servers=settings.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=50,
                             consumer_timeout_ms=1000)
    for rec in consumer:
        st = orjson.loads(rec.value)
        if st["version"] >= states.get(st["incident_id"], {}).get("version", 0):
            states[st["incident_id"]] = st
        assert dict(rec.headers)["ce_id"].decode() == f"{st['incident_id']}:v{st['version']}"
    consumer.close()
    assert set(states) == {f"{tag}-inc-{i}" for i in range(300)}
    assert all(states[f"{tag}-inc-{i}"]["status"] == "acknowledged" for i in range(200))
    assert all(states[f"{tag}-inc-{i}"]["status"] == "open" for i in range(200, 300))

    counts = {o: worker.metric("kaifong_events_in_total", outcome=o) for o in ("ok", "invalid", "duplicate")}
    assert counts == {"ok": 1000, "invalid": 90, "duplicate": 10}
    # ... and the worker is still running and healthy.
    assert worker.alive()
    assert worker.get("/health")[0] == 200
    # No personal data in the worker's log (caller phone and name rode on every incident).
    log_text = worker.log_path.read_text("utf-8", "replace")
    assert "13800138000" not in log_text and "王小明" not in log_text
