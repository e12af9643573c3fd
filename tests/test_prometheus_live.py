"""Issue 6, must-shows 2 and 3: a real Prometheus scrapes a worker on the embedded stack fed with
traffic, using the project's own scrape config and rules; every recording rule and every
Grafana panel expression returns data; and 10,000 distinct incidents do not grow the number of
exposed series (no per-incident labels)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from kafka import KafkaProducer

from kaifong.streams.embedded import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
RINGS = "self_rescue:2,mutual_aid:4,grid:6,street:8,professional:10"


def _exprs_module() -> Any:
    spec = importlib.util.spec_from_file_location("grafana_exprs", ROOT / "deploy/grafana/exprs.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def query(port: int, expr: str) -> list[Any]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", (expr, body)
    result: list[Any] = body["data"]["result"]
    return result


def feed(settings: Any, worker: Any, n_incidents: int = 30) -> None:
    """Traffic touching every metric family: units, incidents met and breached, exercise,
    escalations and an acknowledgement, dead letters, drills, HTTP (authorised and not)."""
    p = settings.topic_prefix
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks="all")
    now = datetime.now(UTC)
    for i in range(40):
        uid = f"pl-u{i}"
        reg = {"unit_id": uid, "kind": ["post", "unit", "grid_team", "street_force", "professional"][i % 5],
               "name": uid, "district": "越秀区", "police_grid": "PG", "grid": f"G{i % 4}",
               "venue": {"id": f"V{i % 8}", "type": "mall"}, "home": {"lat": 23.129 + i * 1e-4, "lon": 113.264},
               "responders": 6, "equipment": ["shield", "aed", "extinguisher"]}
        producer.send(p + "units.registry.v1", key=uid.encode(), value=orjson.dumps(reg))
        status = "drilling" if i >= 36 else "available"
        producer.send(p + "units.status.v1", key=uid.encode(), value=orjson.dumps(
            {"event_id": f"{uid}-1", "unit_id": uid, "status": status, "at": now.isoformat(), "seq": 1}))
    # A spare unit far from the incidents: free for the pull test below.
    spare = {"unit_id": "pl-spare", "kind": "unit", "name": "spare", "district": "从化区", "police_grid": "PG",
             "grid": "GX", "venue": {"id": "VX", "type": "school"}, "home": {"lat": 23.63, "lon": 113.57},
             "responders": 6, "equipment": []}
    producer.send(p + "units.registry.v1", key=b"pl-spare", value=orjson.dumps(spare))
    producer.send(p + "units.status.v1", key=b"pl-spare", value=orjson.dumps(
        {"event_id": "pl-spare-1", "unit_id": "pl-spare", "status": "available", "at": now.isoformat(), "seq": 1}))
    producer.send(p + "units.status.v1", key=b"x", value=b"{broken")  # a dead letter
    producer.flush()
    time.sleep(2)
    for i in range(n_incidents):
        iid = f"pl-i{i}"
        inc = {"event_id": f"pl-e{i}", "incident_id": iid, "category": "fire", "severity": 1 + i % 4,
               "reported_at": datetime.now(UTC).isoformat(), "location": {"lat": 23.129, "lon": 113.264},
               "district": "越秀区", "grid": f"G{i % 4}", "venue_id": f"V{i % 8}", "source": "call_110",
               "exercise": i % 10 == 9}
        producer.send(p + "incidents.reported.v1", key=iid.encode(), value=orjson.dumps(inc))
    producer.flush()
    time.sleep(1.5)
    for i in range(0, n_incidents, 2):  # half get their ring-1 unit on scene in time
        iid = f"pl-i{i}"
        req = urllib.request.Request(f"{worker.base_url}/api/incidents/{iid}",
                                     headers={"Authorization": "Bearer t0k"})
        with urllib.request.urlopen(req, timeout=5) as r:
            doc = json.loads(r.read())
        ring1 = [u["unit_id"] for a in doc.get("assignments", []) if a["ring"] == 1 for u in a["units"]]
        at = (datetime.now(UTC) + timedelta(milliseconds=10)).isoformat()
        if ring1:
            producer.send(p + "incidents.updates.v1", key=iid.encode(), value=orjson.dumps(
                {"event_id": f"pl-os{i}", "incident_id": iid, "kind": "on_scene", "unit_id": ring1[0], "at": at}))
    producer.flush()
    time.sleep(12)  # every ring deadline passes: breaches, escalations, re-dispatches
    # Acknowledge one escalation over HTTP; one refused request for the unauthorized counter.
    esc = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{worker.base_url}/api/escalations", headers={"Authorization": "Bearer t0k"}), timeout=5).read())
    open_ids = [e["escalation_id"] for e in (esc.get("open") or esc.get("escalations") or [])]
    assert open_ids, esc
    urllib.request.urlopen(urllib.request.Request(f"{worker.base_url}/api/escalations/{open_ids[0]}/ack",
                                                  data=b"{}", method="POST",
                                                  headers={"Authorization": "Bearer t0k",
                                                           "Content-Type": "application/json"}), timeout=5)
    try:
        urllib.request.urlopen(urllib.request.Request(f"{worker.base_url}/api/escalations/x/ack", data=b"{}",
                                                      method="POST"), timeout=5)
    except urllib.error.HTTPError as e:
        assert e.code == 401
    # A pull test through the API, answered in time.
    req = urllib.request.Request(f"{worker.base_url}/api/drills", method="POST",
                                 data=json.dumps({"unit_id": "pl-spare", "channel": "radio"}).encode(),
                                 headers={"Authorization": "Bearer t0k", "Content-Type": "application/json"})
    drill = json.loads(urllib.request.urlopen(req, timeout=5).read())
    drill_id = (drill.get("drills") or [drill])[0]["drill_id"]
    for stage, extra in (("acknowledged", {}), ("mustered", {"headcount": 6})):
        producer.send(p + "drills.responses.v1", key=drill_id.encode(), value=orjson.dumps(
            {"event_id": f"{drill_id}-{stage}", "drill_id": drill_id, "unit_id": "pl-spare", "stage": stage,
             "at": datetime.now(UTC).isoformat(), **extra}))
        producer.flush()
        time.sleep(0.3)
    producer.close()


def test_prometheus_scrapes_rules_and_dashboards_return_data(new_settings, start_worker, tmp_path: Path) -> None:
    promtool = shutil.which("prometheus")
    assert promtool, "Debian package `prometheus` is required (.ci/run installs it)"
    settings = new_settings(rings=RINGS, api_token="t0k", watchdog_interval_s=2, escalation_renotify_s=3,
                            drills_enabled=False, drill_ack_target_s=5, drill_muster_target_s=10)
    worker = start_worker(settings)
    # The project's own scrape config and rules, pointed at this worker, scraped every second.
    conf = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    conf["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    # The project's rule files as they are, except that every group is evaluated each second
    # (the 1 d / 3 d groups normally run once a minute: too slow for a test).
    rule_files = []
    for f in sorted((ROOT / "deploy/prometheus/rules").glob("*.yml")):
        rules = yaml.safe_load(f.read_text())
        for group in rules["groups"]:
            group.pop("interval", None)
        (tmp_path / f.name).write_text(yaml.safe_dump(rules, allow_unicode=True))
        rule_files.append(str(tmp_path / f.name))
    conf["rule_files"] = rule_files
    job = next(j for j in conf["scrape_configs"] if j["job_name"] == "kaifong")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{worker.settings.web_port}"]}]
    job["authorization"] = {"credentials": "t0k"}
    job.pop("file_sd_configs", None)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(conf))
    port = free_port()
    prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=(tmp_path / "prom.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        feed(settings, worker)
        time.sleep(8)  # a few more scrapes and rule evaluations after the last event
        up = query(port, 'up{job="kaifong"}')
        assert up and up[0]["value"][1] == "1", (tmp_path / "prom.log").read_text()[-2000:]

        # Every recording rule is healthy and has produced a series.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10) as r:
            groups = json.loads(r.read())["data"]["groups"]
        recorded = [rule for g in groups for rule in g["rules"] if rule["type"] == "recording"]
        assert recorded
        empty = []
        for rule in recorded:
            assert rule["health"] == "ok", rule
            if not query(port, rule["name"]):
                empty.append(rule["name"])
        assert not empty, f"recording rules without data: {empty}"
        for rule in (rule for g in groups for rule in g["rules"] if rule["type"] == "alerting"):
            assert rule["health"] == "ok", rule

        # Every panel of every dashboard returns data.
        exprs = _exprs_module()
        no_data = []
        for dashboard in sorted((ROOT / "deploy/grafana/dashboards").glob("*.json")):
            for _dash, title, expr in exprs.exprs(dashboard):
                if not query(port, expr):
                    no_data.append(f"{dashboard.name} · {title}: {expr}")
        assert not no_data, "panels without data:\n" + "\n".join(no_data)
    finally:
        prom.terminate()
        prom.wait(10)


def test_three_thousand_incidents_add_no_series(new_settings, start_worker) -> None:
    # One ring, severity 4: the cheapest real incident (one decision, one escalation); every code
    # path still runs (dispatch, clock, escalation, state). 3,000 after the warm-up: six times the
    # warm-up's incident ids, grids and times — a label carrying any of them would add series.
    settings = new_settings(rings="self_rescue:3600", watchdog_interval_s=0)
    worker = start_worker(settings)
    p = settings.topic_prefix
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20, acks=1)

    def publish(start: int, n: int) -> None:
        now = datetime.now(UTC).isoformat()
        for i in range(start, start + n):
            iid = f"ser-{i}"
            producer.send(p + "incidents.reported.v1", key=iid.encode(), value=orjson.dumps(
                {"event_id": iid, "incident_id": iid, "category": "medical", "severity": 4, "reported_at": now,
                 "location": {"lat": 23.1 + (i % 100) / 1000, "lon": 113.3}, "district": "天河区",
                 "grid": f"G{i % 50}", "source": "call_110", "exercise": i % 20 == 0}))
        producer.flush()

    def series() -> int:
        _, body = worker.get("/metrics")
        return sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))

    def processed() -> float:
        return worker.metric("kaifong_events_in_total", topic=p + "incidents.reported.v1")

    publish(0, 500)  # warm-up: every code path has run once
    deadline = time.monotonic() + 60
    while processed() < 500 and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(6)
    before = series()
    publish(500, 3_000)
    deadline = time.monotonic() + 600
    while processed() < 3_500 and time.monotonic() < deadline:
        time.sleep(1)
    assert processed() == 3_500
    time.sleep(6)
    after = series()
    print(f"\nexposed series: {before} after warm-up, {after} after 3,000 more incidents")
    assert after == before
