"""Issue 20, must-show 1: escalations reach the right seat through a real Alertmanager.

A real Alertmanager (Debian's ``prometheus-alertmanager``) started here with the configuration
``kaifong seats alertmanager`` generates, a webhook receiver per seat, a real worker on the
embedded broker and Redis with a seats file:

- a breach in district A reaches district A's receiver only, grouped per incident;
- acknowledging resolves it in Alertmanager (the resolved notification arrives);
- an exercise escalation reaches no real receiver;
- with Alertmanager stopped, incidents are still decided at once, the pushes fail and are
  retried with backoff (counted), and the notification arrives once Alertmanager is back.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from alertmanager_helpers import webhook_sink
from kafka import KafkaConsumer, KafkaProducer

from kaifong.agents.tools import alertmanager
from kaifong.streams.embedded import alertmanager as am_service
from kaifong.streams.embedded import free_port

pytestmark = pytest.mark.integration

POINT = (23.1291, 113.2644)
A, B = "越秀区", "海珠区"


def seats(sink: str) -> dict[str, Any]:
    hook = lambda path, **kw: {"type": "webhook", "url": f"{sink}/{path}", **kw}  # noqa: E731
    return {"version": 1, "timezone": "Asia/Shanghai", "seats": [
        {"id": "city", "level": "city", "jurisdiction": {}, "receivers": [hook("city")]},
        {"id": "district-YX", "level": "district", "jurisdiction": {"districts": [A]},
         "receivers": [hook("yx"), hook("yx-exercise", exercise=True)]},
        {"id": "district-HZ", "level": "district", "jurisdiction": {"districts": [B]}, "receivers": [hook("hz")]},
    ]}


def report(incident_id: str, district: str, exercise: bool = False) -> dict[str, Any]:
    return {"event_id": f"rep-{incident_id}", "incident_id": incident_id, "category": "fire", "severity": 3,
            "reported_at": datetime.now(UTC).isoformat(), "location": {"lat": POINT[0], "lon": POINT[1]},
            "district": district, "grid": "G-none", "source": "call_110", "exercise": exercise}


def am_alerts(url: str, **labels: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode([("filter", f'{k}="{v}"') for k, v in labels.items()])
    with urllib.request.urlopen(f"{url}/api/v2/alerts?{query}", timeout=5) as r:
        out: list[dict[str, Any]] = json.loads(r.read())
    return out


def wait(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def told(received: list[dict[str, Any]], incident: str) -> dict[str, list[dict[str, Any]]]:
    """Webhook notifications mentioning ``incident``, by receiver path."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in list(received):
        body = r["body"]
        if any(a["labels"].get("incident") == incident for a in body.get("alerts", [])):
            out[r["path"].strip("/")].append(body)
    return out


def test_escalations_reach_their_district_seat_resolve_on_ack_and_survive_alertmanager_down(
        new_settings, start_worker, tmp_path: Path) -> None:
    with webhook_sink() as (sink, received):
        seats_path = tmp_path / "seats.json"
        seats_path.write_bytes(orjson.dumps(seats(sink)))
        config = tmp_path / "alertmanager.yml"
        config.write_text(alertmanager.dump(alertmanager.render(
            orjson.loads(seats_path.read_bytes()), group_wait="1s", group_interval="1s", repeat_interval="1h")))
        port = free_port()
        am = am_service(port, tmp_path, config)
        am.start()
        url = f"http://127.0.0.1:{port}"
        try:
            # No units at all: every ring escalates at once (no_candidate), raised at grid
            # level; no grid or street seat exists, so it goes up to the district's seat.
            settings = new_settings(rings="a:60,b:3600", seats_file=str(seats_path), alertmanager_urls=url,
                                    notify_interval_s=0.5, notify_keepalive_s=30.0)
            worker = start_worker(settings)
            p = settings.topic_prefix
            producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=2)
            escalations = KafkaConsumer(p + "incidents.escalations.v1", bootstrap_servers=settings.bootstrap_servers,
                                        auto_offset_reset="earliest", enable_auto_commit=False,
                                        consumer_timeout_ms=200, fetch_max_wait_ms=50)
            seen: list[dict[str, Any]] = []

            def escalations_of(incident: str) -> list[dict[str, Any]]:
                seen.extend(orjson.loads(r.value) for r in escalations)
                return [e for e in seen if e["incident_id"] == incident]

            def send(topic: str, key: str, body: dict[str, Any]) -> None:
                producer.send(p + topic, key=key.encode(), value=orjson.dumps(body))
                producer.flush()

            # 1. A real incident in district A: A's receiver only, grouped per incident.
            send("incidents.reported.v1", "na-1", report("na-1", A))
            esc = wait(lambda: escalations_of("na-1"), 20, "na-1's escalations")
            assert all(e["seats"] == ["district-YX"] and e["seat_level"] == "district" for e in esc), esc
            wait(lambda: told(received, "na-1").get("yx"), 20, "district A's receiver to be told of na-1")
            time.sleep(2.5)  # group_wait + group_interval: anything misrouted would have arrived
            by_path = told(received, "na-1")
            assert set(by_path) == {"yx"}, {k: len(v) for k, v in by_path.items()}
            for body in by_path["yx"]:
                assert body["groupLabels"] == {"incident": "na-1"}
                assert {a["labels"]["seat"] for a in body["alerts"]} == {"district-YX"}
                assert {a["labels"]["exercise"] for a in body["alerts"]} == {"false"}
            assert am_alerts(url, incident="na-1", seat="district-YX")

            # 2. An exercise in district A: pushed to Alertmanager, routed to the exercise
            #    receiver, never to a real one.
            send("incidents.reported.v1", "nx-1", report("nx-1", A, exercise=True))
            wait(lambda: am_alerts(url, incident="nx-1"), 20, "the exercise alert in Alertmanager")
            time.sleep(2.5)
            exercise_paths = set(told(received, "nx-1"))
            assert exercise_paths <= {"yx-exercise"}, exercise_paths

            # 3. Acknowledge every escalation of na-1: resolved in Alertmanager.
            for e in {x["escalation_id"]: x for x in escalations_of("na-1")}.values():
                send("incidents.updates.v1", "na-1", {
                    "event_id": f"ack-{e['escalation_id']}", "incident_id": "na-1", "kind": "escalation_acknowledged",
                    "escalation_id": e["escalation_id"], "by": "district-YX", "at": datetime.now(UTC).isoformat()})
            wait(lambda: any(b["status"] == "resolved" for b in told(received, "na-1").get("yx", [])), 20,
                 "the resolved notification of na-1")
            assert not [a for a in am_alerts(url, incident="na-1") if a["status"]["state"] == "active"]

            # 4. Alertmanager down: the incident is decided at once all the same; pushes fail
            #    and are retried; the notification arrives once it is back.
            am.stop()
            errors_before = worker.metric("kaifong_notify_pushes_total", outcome="error")
            t0 = time.monotonic()
            send("incidents.reported.v1", "na-2", report("na-2", A))
            wait(lambda: escalations_of("na-2"), 10, "na-2 decided while Alertmanager is down")
            decided_s = time.monotonic() - t0
            wait(lambda: worker.metric("kaifong_notify_pushes_total", outcome="error") > errors_before, 10,
                 "a failed push counted")
            time.sleep(2)
            assert worker.metric("kaifong_notify_pending") >= 1
            assert not told(received, "na-2")
            am = am_service(port, tmp_path, config)
            am.start()
            back = time.monotonic()
            wait(lambda: told(received, "na-2").get("yx"), 45, "na-2's notification after Alertmanager is back")
            retries = worker.metric("kaifong_notify_retries_total")
            print(f"\nna-2 decided {decided_s:.2f} s after its report with Alertmanager down; "
                  f"delivered {time.monotonic() - back:.1f} s after it came back; {retries:.0f} retries counted")
            assert retries >= 1
            assert worker.metric("kaifong_notify_pending") == 0 or told(received, "na-2")
            escalations.close()
            producer.close()
        finally:
            am.stop()


def clustered_pair(tmp_path: Path, config: Path) -> list[Any]:
    """Two Alertmanagers gossiping as one cluster (an HA pair), each with its own web port."""
    from kaifong.streams.embedded import Service, alertmanager_binary

    binary = alertmanager_binary()
    assert binary is not None, "Debian package prometheus-alertmanager (installed by .ci/run)"
    web = [free_port(), free_port()]
    gossip = [free_port(), free_port()]
    pair = []
    for i in range(2):
        data = tmp_path / f"am-ha-{i}"
        data.mkdir()
        pair.append(Service(
            f"alertmanager-{i + 1}",
            [binary, f"--config.file={config}", f"--storage.path={data}",
             f"--web.listen-address=127.0.0.1:{web[i]}", f"--cluster.listen-address=127.0.0.1:{gossip[i]}",
             f"--cluster.peer=127.0.0.1:{gossip[1 - i]}", "--cluster.peer-timeout=2s",
             "--cluster.settle-timeout=5s", "--cluster.gossip-interval=100ms", "--log.level=info"],
            web[i], tmp_path / f"am-ha-{i}.log"))
    for service in pair:
        service.start()
    return pair


def test_an_ha_pair_notifies_once_and_keeps_notifying_with_one_member_down(
        new_settings, start_worker, tmp_path: Path) -> None:
    with webhook_sink() as (sink, received):
        seats_path = tmp_path / "seats.json"
        seats_path.write_bytes(orjson.dumps(seats(sink)))
        config = tmp_path / "alertmanager.yml"
        config.write_text(alertmanager.dump(alertmanager.render(
            orjson.loads(seats_path.read_bytes()), group_wait="1s", group_interval="1s", repeat_interval="1h")))
        pair = clustered_pair(tmp_path, config)
        urls = [f"http://127.0.0.1:{s.port}" for s in pair]
        try:
            wait(lambda: all(json.loads(urllib.request.urlopen(f"{u}/api/v2/status", timeout=2).read())
                             ["cluster"]["status"] == "ready" for u in urls), 30, "the pair's cluster ready")
            settings = new_settings(rings="a:60,b:3600", seats_file=str(seats_path), alertmanager_urls=",".join(urls),
                                    notify_interval_s=0.5, notify_keepalive_s=30.0)
            worker = start_worker(settings)
            producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=2)
            producer.send(settings.topic_prefix + "incidents.reported.v1", key=b"ha-1",
                          value=orjson.dumps(report("ha-1", A)))
            producer.flush()
            # kaifong pushes to both members; the pair notifies once (the second member waits its
            # peer timeout, sees the first one's notification in the gossiped log, and stays quiet).
            wait(lambda: told(received, "ha-1").get("yx"), 20, "ha-1's notification")
            wait(lambda: all(am_alerts(u, incident="ha-1") for u in urls), 10, "ha-1 on both members")
            time.sleep(5)  # > peer timeout + group interval: a duplicate would have arrived
            firing = [b for b in told(received, "ha-1")["yx"] if b["status"] == "firing"]
            assert len(firing) == 1, [(b["externalURL"], len(b["alerts"])) for b in firing]
            # One member down: the other one still delivers; the failures are counted per target.
            pair[0].stop()
            producer.send(settings.topic_prefix + "incidents.reported.v1", key=b"ha-2",
                          value=orjson.dumps(report("ha-2", A)))
            producer.flush()
            wait(lambda: told(received, "ha-2").get("yx"), 30, "ha-2's notification through the second member")
            down = f"127.0.0.1:{pair[0].port}"
            wait(lambda: worker.metric("kaifong_notify_pushes_total", target=down, outcome="error") >= 1, 10,
                 "the failed pushes to the stopped member counted")
            up = f"127.0.0.1:{pair[1].port}"
            assert worker.metric("kaifong_notify_pushes_total", target=up, outcome="ok") >= 2
            print(f"\nHA pair: one notification for ha-1 from two members; ha-2 delivered with {down} down")
            producer.close()
        finally:
            for s in pair:
                s.stop()
