"""Issue 7: the worker's JSON API, HTTP ingest, acknowledgements, the live feed and the token
guard — against real workers on the embedded broker and Redis, with kafka-python reading topics."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import redis
from aiohttp.test_utils import make_mocked_request
from kafka import KafkaConsumer

from kaifong.agents.web.api import Guard, InsecureConfig, is_loopback
from kaifong.streams.settings import Settings

pytestmark = pytest.mark.integration

TOKEN = "t0ken"
TH = quote("天河区")
LONG_RINGS = "self_rescue:3600,mutual_aid:3601,grid:3602"


# -- helpers ----------------------------------------------------------------------------------------
def call(base: str, method: str, path: str, body: Any = None, *, token: str | None = None,
         headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """One HTTP request; returns (status, headers, JSON body or bytes)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, hdrs, payload = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, payload = e.code, dict(e.headers), e.read()
    if hdrs.get("Content-Type", "").startswith("application/json"):
        return status, hdrs, json.loads(payload)
    return status, hdrs, payload


def read_topic(settings: Settings, suffix: str, timeout_ms: int = 1500) -> list[tuple[bytes | None, dict[str, Any]]]:
    """Every record of a topic from the beginning: (key, JSON value)."""
    consumer = KafkaConsumer(settings.topic_prefix + suffix, bootstrap_servers=settings.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=50,
                             consumer_timeout_ms=timeout_ms)
    try:
        return [(rec.key, orjson.loads(rec.value)) for rec in consumer]
    finally:
        consumer.close()


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def incident(tag: str, **over: Any) -> dict[str, Any]:
    event = {"event_id": f"{tag}-r", "incident_id": f"{tag}-inc", "category": "fire", "severity": 1,
             "reported_at": datetime.now(UTC).isoformat(), "location": {"lat": 23.129, "lon": 113.264},
             "district": "越秀区", "grid": "YX-001", "source": "call_110", "exercise": False,
             "description": "厨房冒烟 smoke in a kitchen", "caller": {"phone": "13800138000"}}
    event.update(over)
    return event


def sse_events(resp: http.client.HTTPResponse) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a text/event-stream response (comments skipped)."""
    event, data = "message", []
    while True:
        line = resp.readline().decode("utf-8").rstrip("\r\n")
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)


# -- the guard, in process ----------------------------------------------------------------------------
def test_guard_rules() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("kaifong-0")
    with pytest.raises(InsecureConfig, match="KAIFONG_API_TOKEN"):
        Guard.from_settings(Settings(web_host="0.0.0.0", api_token=""))
    Guard.from_settings(Settings(web_host="0.0.0.0", api_token="x"))  # fine with a token
    Guard.from_settings(Settings(web_host="127.0.0.1", api_token=""))  # development

    def refused(guard: Guard, method: str, path: str, route: str, headers: dict[str, str] | None = None) -> bool:
        request = make_mocked_request(method, path, headers=headers or {})
        return guard.refusal(request, route) is not None

    dev = Guard("", loopback=True)
    assert not refused(dev, "POST", "/api/events/x", "/api/events/{type}")
    local = Guard(TOKEN, loopback=True)
    assert not refused(local, "GET", "/api/summary", "/api/summary")
    assert refused(local, "POST", "/api/events/x", "/api/events/{type}")
    assert refused(local, "POST", "/api/events/x", "/api/events/{type}", {"Authorization": "Bearer nope"})
    assert not refused(local, "POST", "/api/events/x", "/api/events/{type}", {"Authorization": f"Bearer {TOKEN}"})
    wide = Guard(TOKEN, loopback=False)
    for path in ("/health", "/ready"):
        assert not refused(wide, "GET", path, path)
    for path in ("/metrics", "/api/summary"):
        assert refused(wide, "GET", path, path)
        assert not refused(wide, "GET", path, path, {"Authorization": f"Bearer {TOKEN}"})
    # The console's page and files hold no data: open, so that the page can show its sign-in form.
    for path in ("/", "/static/{name}"):
        assert not refused(wide, "GET", path, path)
    assert refused(wide, "GET", "/api/summary?token=" + TOKEN, "/api/summary")  # a token in a URL is never taken
    # A service-token sign-in's session cookie (a JWT minted here, never the token itself) reads
    # and writes; it is refused as a bearer token.
    session, _ = wide.identity.service_session(datetime.now(UTC))
    assert TOKEN not in session
    cookie = {"Cookie": f"kf_session={session}"}
    assert not refused(wide, "GET", "/api/stream", "/api/stream", cookie)
    assert not refused(wide, "POST", "/api/escalations/x/ack", "/api/escalations/{id}/ack", cookie)
    assert refused(wide, "GET", "/api/stream", "/api/stream", {"Authorization": f"Bearer {session}"})
    assert refused(wide, "GET", "/api/stream", "/api/stream", {"Cookie": "kf_session=forged"})
    # A cookie-borne write from another origin is refused (CSRF: SameSite=Strict plus this check).
    assert wide.cross_site(make_mocked_request("POST", "/api/escalations/x/ack", headers={
        **cookie, "Origin": "https://evil.example", "Host": "kaifong:6066"}))
    # Token-less development: a browser write from another origin is refused (CSRF).
    assert dev.cross_site(make_mocked_request("POST", "/api/events/x", headers={
        "Origin": "https://evil.example", "Host": "127.0.0.1:6066"}))
    assert not dev.cross_site(make_mocked_request("POST", "/api/events/x", headers={
        "Origin": "http://127.0.0.1:6066", "Host": "127.0.0.1:6066"}))
    assert not dev.cross_site(make_mocked_request("POST", "/api/events/x", headers={"Host": "127.0.0.1:6066"}))


def test_worker_refuses_an_open_port_without_token(tmp_path) -> None:
    env = Settings(web_host="0.0.0.0", api_token="", data_dir=str(tmp_path)).to_env()
    env.update({"PATH": "/usr/bin:/bin", "KAIFONG_WEB_PORT": "1"})
    done = subprocess.run([sys.executable, "-m", "kaifong.agents.cli", "worker", "--no-ensure-topics"],
                          env=env, capture_output=True, timeout=60)
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    assert b"KAIFONG_API_TOKEN is empty" in done.stderr


# -- the API against a worker -------------------------------------------------------------------------
def test_api_end_to_end(new_settings, start_worker) -> None:
    settings = new_settings(api_token=TOKEN, rings=LONG_RINGS, max_event_bytes=4096)
    worker = start_worker(settings)
    base = worker.base_url
    tag = uuid.uuid4().hex[:6]
    r = redis.Redis.from_url(settings.redis_url)

    # The console and its files, with security headers; Faust's {"status": "OK"} index is gone.
    status, headers, page = call(base, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"Content-Security-Policy" in page and b"/static/console.js" in page
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for name, ctype in (("console.js", "text/javascript"), ("console.css", "text/css")):
        status, headers, _ = call(base, "GET", f"/static/{name}")
        assert status == 200 and headers["Content-Type"].startswith(ctype)
        assert headers["X-Content-Type-Options"] == "nosniff" and "Content-Security-Policy" in headers
    assert call(base, "GET", "/static/../worker.py")[0] == 404
    assert call(base, "GET", "/static/nope.js")[0] == 404
    assert call(base, "GET", "/api/nope")[0] == 404

    # Empty city: counters at zero; the map has the eleven districts with Chinese names.
    status, _, summary = call(base, "GET", "/api/summary")
    assert status == 200 and summary["incidents"] == {"real": 0, "exercise": 0, "total": 0}
    assert summary["escalations"]["total"] == 0 and summary["drills"]["total"] == 0
    assert [x["name"] for x in summary["rings"]] == ["self_rescue", "mutual_aid", "grid"]
    status, _, geo = call(base, "GET", "/api/geo")
    assert status == 200 and len(geo["districts"]) == 11
    yuexiu = next(d for d in geo["districts"] if d["code"] == "YX")
    assert yuexiu["name"] == "越秀区" and len(yuexiu["outline"]) >= 12 and yuexiu["available"] == 0

    # -- ingest: refusals ------------------------------------------------------------------------
    unauthorized_before = worker.metric("kaifong_http_unauthorized_total", route="/api/events/{type}")
    status, headers, body = call(base, "POST", "/api/events/incident-reported", incident(tag))
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert body["error"] == "unauthorized"
    status, headers, _ = call(base, "POST", "/api/events/incident-reported", incident(tag), token="wrong")
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert worker.metric("kaifong_http_unauthorized_total", route="/api/events/{type}") == unauthorized_before + 2

    status, _, body = call(base, "POST", "/api/events/carrier-pigeon", incident(tag), token=TOKEN)
    assert status == 400 and body["error"] == "unknown_type" and "incident-reported" in body["types"]
    assert call(base, "POST", "/api/events", incident(tag), token=TOKEN)[0] == 400  # no ?type=
    three_wrongs = {k: v for k, v in incident(f"{tag}-bad").items() if k != "category"}
    three_wrongs.update(severity="high", source="carrier_pigeon")
    status, _, body = call(base, "POST", "/api/events/incident-reported", three_wrongs, token=TOKEN)
    assert status == 400 and body["accepted"] == 0
    [err] = body["errors"]
    assert err["index"] == 0 and err["error_class"] == "missing_field"
    assert len(err["reasons"]) == 3, err["reasons"]
    assert any("category" in x for x in err["reasons"]) and any("severity" in x for x in err["reasons"])
    # All or nothing: one invalid event in an array and the valid one is not sent either.
    lost = incident(f"{tag}-lost")
    status, _, body = call(base, "POST", "/api/events?type=incident-reported",
                           [lost, {**incident(f"{tag}-x"), "reported_at": "yesterday"}, [1]], token=TOKEN)
    assert status == 400
    assert [(e["index"], e["error_class"]) for e in body["errors"]] == [(1, "bad_time"), (2, "not_object")]
    status, _, body = call(base, "POST", "/api/events/incident-reported", raw=b"{nope", token=TOKEN)
    assert status == 400 and body["errors"][0]["error_class"] == "not_json"
    status, _, body = call(base, "POST", "/api/events/incident-reported", raw=b"[]", token=TOKEN)
    assert status == 400 and body["errors"][0]["error_class"] == "empty"
    status, _, body = call(base, "POST", "/api/events/incident-reported",
                           {**incident(f"{tag}-big"), "description": "x" * 3900, "note": "y" * 300}, token=TOKEN)
    assert status == 400 and body["errors"][0]["error_class"] == "too_large"  # over max_event_bytes=4096

    # 413: on the declared length, before the body is read …
    limit = settings.max_event_bytes * 100
    conn = http.client.HTTPConnection("127.0.0.1", settings_port(base), timeout=10)
    conn.putrequest("POST", "/api/events/incident-reported")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(limit + 1))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"] == "too_large"
    conn.close()
    # … and on the bytes actually sent when no length is declared (chunked).
    conn = http.client.HTTPConnection("127.0.0.1", settings_port(base), timeout=10)
    conn.putrequest("POST", "/api/events/incident-reported")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunk = b"[" + b" " * 65536
    try:
        for _ in range(limit // 65536 + 2):
            conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        conn.send(b"0\r\n\r\n")
    except OSError:
        pass  # the server may close as soon as it has refused
    resp = conn.getresponse()
    assert resp.status == 413
    conn.close()

    # -- the live feed: open it before anything happens ------------------------------------------
    stream = http.client.HTTPConnection("127.0.0.1", settings_port(base), timeout=15)
    stream.request("GET", "/api/stream", headers={"Accept": "text/event-stream"})
    sresp = stream.getresponse()
    assert sresp.status == 200 and sresp.getheader("Content-Type").startswith("text/event-stream")
    events = sse_events(sresp)
    assert next(events) == ("ready", '{"positioned":true}')

    # -- ingest: accepted --------------------------------------------------------------------------
    units = [{"event_id": f"{tag}-g{i}", "unit_id": f"{tag}-u{i}", "kind": "post", "name": f"天河岗{i}",
              "district": "天河区", "police_grid": "TH-PG1", "grid": f"TH-G{i % 2}",
              "venue": {"id": f"{tag}-v{i}", "type": "mall"}, "home": {"lat": 23.14, "lon": 113.37},
              "responders": 4, "equipment": ["shield"]} for i in range(3)]
    status, _, body = call(base, "POST", "/api/events/unit-registered", units, token=TOKEN)
    assert status == 202 and body["accepted"] == 3 and body["ids"] == [u["event_id"] for u in units]
    now = datetime.now(UTC).isoformat()
    statuses = [{"event_id": f"{tag}-s{i}", "unit_id": f"{tag}-u{i}", "status": "available" if i else "off_duty",
                 "at": now, "seq": 1} for i in range(3)]
    assert call(base, "POST", "/api/events/unit-status", statuses, token=TOKEN)[0] == 202

    report = incident(tag)
    status, _, body = call(base, "POST", "/api/events/incident-reported", report, token=TOKEN)
    assert status == 202 and body == {"accepted": 1, "topic": settings.topic_prefix + "incidents.reported.v1",
                                      "ids": [report["event_id"]]}
    exercise = incident(f"{tag}-ex", severity=3, exercise=True, district="天河区", grid="TH-G1",
                        location={"lat": 23.14, "lon": 113.37})
    assert call(base, "POST", "/api/events/incident-reported", exercise, token=TOKEN)[0] == 202
    reported = read_topic(settings, "incidents.reported.v1")
    assert (report["incident_id"].encode(), report) in reported, "the event is on the topic, keyed by incident_id"
    assert all(v["incident_id"] != lost["incident_id"] for _, v in reported), "nothing of a refused request"

    # The live feed carries the state and the severity escalation.
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 10
    while not {"state", "escalation"} <= set(seen) and time.monotonic() < deadline:
        event, data = next(events)
        doc = json.loads(data)
        if doc.get("incident_id") == report["incident_id"]:
            seen[event] = doc
    stream.close()
    assert seen["state"]["district"] == "越秀区"
    assert seen["escalation"]["reason"] in ("severity", "no_candidate")

    # -- reads -------------------------------------------------------------------------------------
    esc_id = f"{report['incident_id']}:r1:severity:0"
    wait_for(lambda: call(base, "GET", "/api/summary")[2]["incidents"]["total"] == 2, what="two open incidents")
    status, _, body = call(base, "GET", "/api/incidents")
    assert status == 200 and body["count"] == 2
    assert [s["incident_id"] for s in body["incidents"]] == [exercise["incident_id"], report["incident_id"]]
    mine = body["incidents"][1]
    assert mine["description"] == report["description"] and "caller" not in mine
    assert mine["rings"][0]["state"] == "pending" and mine["escalation_level"] in ("district", "city")
    def ids(query: str) -> list[str]:
        return [s["incident_id"] for s in call(base, "GET", "/api/incidents" + query)[2]["incidents"]]

    assert ids("?district=" + quote("越秀区")) == [report["incident_id"]]
    assert ids("?grid=TH-G1") == [exercise["incident_id"]]
    assert ids("?exercise=true") == [exercise["incident_id"]]
    assert ids("?exercise=false") == [report["incident_id"]]
    assert ids("?grid=nowhere") == []
    assert call(base, "GET", "/api/incidents?exercise=maybe")[0] == 400
    assert call(base, "GET", "/api/incidents?limit=0")[0] == 400

    status, _, detail = call(base, "GET", f"/api/incidents/{report['incident_id']}")
    assert status == 200 and detail["state"]["incident_id"] == report["incident_id"]
    assert detail["report"]["description"] == report["description"] and "caller" not in detail["report"]
    assert isinstance(detail["assignments"], list) and detail["assignments"]
    assert esc_id in {e["escalation_id"] for e in detail["escalations"]}
    assert call(base, "GET", "/api/incidents/nope")[0] == 404

    status, _, escalations = call(base, "GET", "/api/escalations")
    assert status == 200
    entry = next(e for e in escalations["open"] if e["escalation_id"] == esc_id)
    assert entry["level"] == "district" and entry["acked_at"] is None
    assert entry["incident"]["district"] == "越秀区" and entry["incident"]["severity"] == 1
    assert all(e["escalation_id"] != esc_id for e in escalations["acknowledged"])
    district_filtered = call(base, "GET", "/api/escalations?district=" + quote("天河区"))[2]  # 天河区
    assert all(e["incident"]["district"] == "天河区" for e in district_filtered["open"])

    # Units of a district, live status and availability; refusals.
    wait_for(lambda: call(base, "GET", f"/api/units?district={TH}")[2]["total"] == 3,
             what="three units in 天河区")
    status, _, body = call(base, "GET", f"/api/units?district={TH}")
    assert status == 200 and [u["unit_id"] for u in body["units"]] == [f"{tag}-u{i}" for i in range(3)]
    by_id = {u["unit_id"]: u for u in body["units"]}
    assert by_id[f"{tag}-u0"]["status"] == "off_duty" and not by_id[f"{tag}-u0"]["dispatchable"]
    assert by_id[f"{tag}-u1"]["status"] == "available" and by_id[f"{tag}-u1"]["name"] == "天河岗1"
    page = call(base, "GET", f"/api/units?district={TH}&limit=1&offset=1")[2]
    assert [u["unit_id"] for u in page["units"]] == [f"{tag}-u1"] and page["total"] == 3
    grid = call(base, "GET", f"/api/units?district={TH}&grid=TH-G0")[2]
    assert [u["unit_id"] for u in grid["units"]] == [f"{tag}-u0", f"{tag}-u2"]
    status, _, body = call(base, "GET", "/api/units?district=" + quote("火星区"))
    assert status == 400 and body["error"] == "unknown_district" and "天河区" in body["districts"]
    assert call(base, "GET", "/api/units")[0] == 400
    assert call(base, "GET", f"/api/units?district={TH}&limit=x")[0] == 400

    # Drills today: whatever the hash holds (local day, UTC+8).
    today = datetime.now(timezone(timedelta(hours=8))).date().isoformat()
    r.hset(f"kf:drills:today:{today}", mapping={"pass": 3, "fail": 1})
    summary = call(base, "GET", "/api/summary")[2]
    assert summary["drills"]["outcomes"]["pass"] == 3 and summary["drills"]["total"] == 4
    assert summary["drills"]["pass_rate"] == 0.75
    assert summary["incidents"] == {"real": 1, "exercise": 1, "total": 2}
    assert summary["escalations"]["open"]["district"] >= 1
    assert sum(summary["units"]["available"].values()) == sum(
        d["available"] for d in call(base, "GET", "/api/geo")[2]["districts"])

    # -- acknowledge ---------------------------------------------------------------------------------
    ack_path = f"/api/escalations/{esc_id}/ack"
    assert call(base, "POST", ack_path, {"by": "seat-7"})[0] == 401
    assert call(base, "POST", f"/api/escalations/{tag}-nope:r1:severity:0/ack", {"by": "seat-7"}, token=TOKEN)[0] == 404
    assert call(base, "POST", "/api/escalations/garbage/ack", token=TOKEN)[0] == 404
    status, _, body = call(base, "POST", ack_path, {"by": "seat 7; drop"}, token=TOKEN)
    assert status == 400 and body["errors"][0]["error_class"] == "bad_format"
    assert call(base, "POST", ack_path, {"who": "x"}, token=TOKEN)[0] == 400
    status, _, event = call(base, "POST", ack_path, {"by": "seat-7"}, token=TOKEN)
    assert status == 202
    assert event["event_id"] == f"ack-{esc_id}" and event["incident_id"] == report["incident_id"]
    assert event["kind"] == "escalation_acknowledged" and event["escalation_id"] == esc_id
    assert event["by"] == "seat-7" and datetime.fromisoformat(event["at"]).tzinfo is not None
    updates = read_topic(settings, "incidents.updates.v1")
    assert (report["incident_id"].encode(), event) in updates

    def acknowledged() -> bool:
        body = call(base, "GET", "/api/escalations")[2]
        return (all(e["escalation_id"] != esc_id for e in body["open"])
                and any(e["escalation_id"] == esc_id and e["acked_by"] == "seat-7" for e in body["acknowledged"]))

    wait_for(acknowledged, what="the escalation to leave the open list")
    assert r.hget(f"kf:esc:open:{settings.topic_prefix}", esc_id) is None
    status, _, body = call(base, "POST", ack_path, token=TOKEN)  # again, no body: idempotent
    assert status == 202 and body["by"] == "console"

    # Requests are counted by route template, never by raw path.
    assert worker.metric("kaifong_http_requests_total", route="/api/incidents/{id}", code="404") >= 1
    assert worker.metric("kaifong_http_requests_total", route="/api/escalations/{id}/ack", code="202") == 2
    assert worker.metric("kaifong_http_requests_total", route="unmatched", code="404") >= 1
    _, _, text = call(base, "GET", "/metrics")
    assert b'route="/api/incidents/nope"' not in text and esc_id.encode() not in text


def settings_port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def test_beyond_loopback_everything_but_probes_needs_the_token(new_settings, start_worker) -> None:
    settings = new_settings(api_token=TOKEN, web_host="0.0.0.0")
    worker = start_worker(settings, wait=False)
    base = worker.base_url
    wait_for(lambda: _answers(base + "/health"), timeout=30, what="the web port")
    # Probes carry no secret.
    assert call(base, "GET", "/health")[0] == 200
    assert call(base, "GET", "/ready")[0] in (200, 503)
    for path in ("/metrics", "/api/summary", "/api/incidents", "/api/geo", "/api/stream", "/api/nope"):
        status, headers, _ = call(base, "GET", path)
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith("Bearer"), path
    # The console's page and files are open (no data in them): the page shows its sign-in form.
    for path in ("/", "/static/console.js"):
        assert call(base, "GET", path)[0] == 200, path
    assert call(base, "GET", "/api/session")[2]["principal"] == "anonymous"
    status, _, text = call(base, "GET", "/metrics", token=TOKEN)
    assert status == 200 and b"kaifong_http_unauthorized_total" in text
    assert call(base, "GET", "/api/summary", token=TOKEN)[0] == 200
    assert call(base, "GET", "/api/summary", token="wrong")[0] == 401
    # /?token=… no longer signs in (nothing is set); a browser signs in with POST /api/session and
    # gets a session cookie (a JWT minted here, never the token itself).
    status, headers, _ = call(base, "GET", f"/?token={TOKEN}")
    assert status == 200 and "Set-Cookie" not in headers
    assert call(base, "POST", "/api/session", {"token": "wrong"})[0] == 401
    status, headers, who = call(base, "POST", "/api/session", {"token": TOKEN})
    assert status == 200 and (who["principal"], who["role"], who["seat"]) == ("service", "admin", None)
    cookie = headers["Set-Cookie"]
    assert cookie.startswith("kf_session=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert TOKEN not in cookie
    jar = {"Cookie": cookie.split(";", 1)[0]}
    for path in ("/api/summary", "/static/console.js", "/"):
        assert call(base, "GET", path, headers=jar)[0] == 200, path
    assert call(base, "GET", "/api/session", headers=jar)[2]["principal"] == "service"
    # A write carried by the cookie from another origin is refused (CSRF).
    assert call(base, "POST", "/api/events/incident-reported", incident("x"),
                headers={**jar, "Origin": "https://evil.example"})[0] == 403
    assert call(base, "GET", "/api/summary", headers={"Cookie": "kf_session=forged"})[0] == 401
    status, headers, _ = call(base, "DELETE", "/api/session", headers=jar)
    assert status == 200 and headers["Set-Cookie"].startswith('kf_session=""')
    _, _, text = call(base, "GET", "/metrics", token=TOKEN)
    assert b'kaifong_http_unauthorized_total{route="/metrics"} 1.0' in text
    assert b'kaifong_http_unauthorized_total{route="/api/summary"} 3.0' in text


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
