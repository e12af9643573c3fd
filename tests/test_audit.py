"""The audit trail: every acknowledgement, drill order and sign-in/out — done or refused — is a
record on ``kaifong.audit.v1`` naming its seat, accepted by ``schemas/json/audit.schema.json``
(a real worker on the embedded broker and Redis; the topic read with kafka-python)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from kafka import KafkaConsumer

from kaifong.agents.web.audit import ACTIONS, audit_id, record
from kaifong.agents.web.identity import SERVICE, Principal, mint
from kaifong.schemas.validation import load_schema
from kaifong.streams.settings import Settings

pytestmark = pytest.mark.integration

TOKEN = "svc-audit-5e1d"
A, B = "越秀区", "海珠区"
HOOK = [{"type": "webhook", "url": "http://127.0.0.1:9/hook"}]
RINGS = "self_rescue:3600,mutual_aid:3601,grid:3602"
PHONE = "13800138000"


def call(base: str, method: str, path: str, body: Any = None, token: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"null")


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def read_topic(settings: Settings, suffix: str) -> list[tuple[bytes | None, dict[str, Any], dict[str, bytes]]]:
    consumer = KafkaConsumer(settings.topic_prefix + suffix, bootstrap_servers=settings.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=50,
                             consumer_timeout_ms=1500)
    try:
        return [(rec.key, orjson.loads(rec.value), dict(rec.headers)) for rec in consumer]
    finally:
        consumer.close()


def report(incident_id: str, district: str, street: str) -> dict[str, Any]:
    return {"event_id": f"{incident_id}-r", "incident_id": incident_id, "category": "fire", "severity": 1,
            "reported_at": datetime.now(UTC).isoformat(), "location": {"lat": 23.129, "lon": 113.264},
            "district": district, "street": street, "grid": f"{street}-PG01-G0001", "source": "call_110",
            "exercise": False, "description": "厨房冒烟", "caller": {"phone": PHONE, "name": "陈先生"}}


def unit(uid: str, district: str, street: str) -> dict[str, Any]:
    return {"event_id": f"reg-{uid}", "unit_id": uid, "kind": "professional", "name": uid, "district": district,
            "street": street, "police_grid": "PG1", "grid": f"{street}-PG01-G0002",
            "venue": {"id": f"V-{uid}", "type": "mall"}, "home": {"lat": 23.2, "lon": 113.3}, "responders": 6,
            "equipment": []}


def test_every_acknowledgement_and_drill_order_is_audited_with_its_seat(new_settings, start_worker,
                                                                         tmp_path: Path) -> None:
    seats = tmp_path / "seats.json"
    seats.write_bytes(orjson.dumps({"version": 1, "seats": [
        {"id": "city", "level": "city", "jurisdiction": {}, "receivers": HOOK},
        {"id": "d-a", "level": "district", "jurisdiction": {"districts": [A]}, "receivers": HOOK},
        {"id": "d-b", "level": "district", "jurisdiction": {"districts": [B]}, "receivers": HOOK}]}))
    settings = new_settings(api_token=TOKEN, seats_file=str(seats), auth_signing_key="audit-key", rings=RINGS,
                            escalation_renotify_s=3600)
    worker = start_worker(settings, name="audit")
    base = worker.base_url
    tag = uuid.uuid4().hex[:6]
    a_disp, a_view = mint(settings, "d-a", "dispatcher", 600), mint(settings, "d-a", "viewer", 600)
    b_disp = mint(settings, "d-b", "dispatcher", 600)

    units = [unit(f"{tag}-a{i}", A, "YX-S01") for i in range(3)] + [unit(f"{tag}-b0", B, "HZ-S01")]
    now = datetime.now(UTC).isoformat()
    assert call(base, "POST", "/api/events/unit-registered", units, token=TOKEN)[0] == 202
    assert call(base, "POST", "/api/events/unit-status", [
        {"event_id": f"st-{u['unit_id']}", "unit_id": u["unit_id"], "status": "available", "seq": 1, "at": now,
         "location": u["home"]} for u in units], token=TOKEN)[0] == 202
    inc_a, inc_b = f"{tag}-a", f"{tag}-b"
    assert call(base, "POST", "/api/events/incident-reported", [report(inc_a, A, "YX-S01"),
                                                                report(inc_b, B, "HZ-S01")], token=TOKEN)[0] == 202
    esc_a, esc_b = f"{inc_a}:r1:severity:0", f"{inc_b}:r1:severity:0"
    wait_for(lambda: {esc_a, esc_b} <= {e["escalation_id"] for e in
                                        call(base, "GET", "/api/escalations", token=TOKEN)[2]["open"]},
             what="the escalations")
    wait_for(lambda: len(call(base, "GET", "/api/units?district=" + urllib.request.quote(A), token=TOKEN)[2]
                         ["units"]) == 3, what="the units")

    # Acknowledgements: a seat's (its body's "by" ignored), the service token's, refused ones.
    status, _, ack = call(base, "POST", f"/api/escalations/{esc_a}/ack", {"by": "someone-else"}, token=a_disp)
    assert status == 202 and ack["by"] == "d-a"
    assert call(base, "POST", f"/api/escalations/{esc_a}/ack", {}, token=a_disp)[0] == 202  # again: same id
    assert call(base, "POST", f"/api/escalations/{esc_b}/ack", {"by": "seat-7"}, token=TOKEN)[0] == 202
    assert call(base, "POST", f"/api/escalations/{esc_b}/ack", {}, token=a_view)[0] == 403  # a viewer
    assert call(base, "POST", f"/api/escalations/{esc_b}/ack", {}, token=a_disp)[0] == 403  # out of scope
    # Drill orders: a seat's, the service token's, one out of scope.
    status, _, drill_a = call(base, "POST", "/api/drills", {"district": A}, token=a_disp)
    assert status == 202, drill_a
    status, _, drill_s = call(base, "POST", "/api/drills", {"unit_id": f"{tag}-b0"}, token=TOKEN)
    assert status == 202, drill_s
    assert call(base, "POST", "/api/drills", {"unit_id": f"{tag}-a1"}, token=b_disp)[0] == 403
    # Sign in and out (the cookie holds the seat's own token), a refused sign-in.
    status, headers, who = call(base, "POST", "/api/session", {"token": a_disp})
    assert status == 200 and (who["seat"], who["role"], who["level"]) == ("d-a", "dispatcher", "district")
    assert who["expires_at"] and who["jurisdiction"] == {"districts": [A]}
    jar = {"Cookie": headers["Set-Cookie"].split(";", 1)[0]}
    assert "Secure" not in headers["Set-Cookie"]  # plain http here; https (or X-Forwarded-Proto) sets it
    assert call(base, "GET", "/api/session", headers=jar)[2]["seat"] == "d-a"
    assert call(base, "DELETE", "/api/session", headers=jar)[0] == 200
    assert call(base, "POST", "/api/session", {"token": "x.y.z"})[0] == 401
    https = call(base, "POST", "/api/session", {"token": a_view}, headers={"X-Forwarded-Proto": "https"})[1]
    assert "Secure" in https["Set-Cookie"]

    def trail() -> list[tuple[bytes | None, dict[str, Any], dict[str, bytes]]]:
        recs = read_topic(settings, "audit.v1")
        return recs if len(recs) >= 12 else []

    records = wait_for(trail, what="the audit records")
    validator = jsonschema.Draft202012Validator(load_schema("audit"),
                                                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    for key, body, headers_ in records:
        assert not list(validator.iter_errors(body)), body
        assert key == (body["seat"] or body["principal"]).encode()
        assert headers_["ce_type"] == b"dev.kaifong.audit.v1" and headers_["ce_id"] == body["audit_id"].encode()
        assert body["remote"] == "127.0.0.1"
        text = orjson.dumps(body).decode()
        assert PHONE not in text and "陈先生" not in text and "厨房" not in text  # no personal data
        assert not any(t in text for t in (TOKEN, a_disp, a_view, b_disp, a_disp.split(".")[-1]))
    seen = [(b["action"], b["outcome"], b["seat"], b["principal"], b.get("reason")) for _, b, _ in records]
    print("\naudit trail:\n" + "\n".join(map(str, seen)))

    # Records of one key keep their order; across keys (partitions) only the set is compared.
    acks = [b for _, b, _ in records if b["action"] == "escalation_acknowledged"]
    got = sorted((b["outcome"], b["seat"] or "", b["principal"], b["subject"]["escalation_id"]) for b in acks)
    assert got == sorted([
        ("ok", "d-a", "seat", esc_a), ("ok", "d-a", "seat", esc_a), ("ok", "", "service", esc_b),
        ("refused", "d-a", "seat", esc_b), ("refused", "d-a", "seat", esc_b)])
    by_a = [b for b in acks if b["seat"] == "d-a"]
    assert by_a[0]["audit_id"] == by_a[1]["audit_id"], "the same acknowledgement, the same id"
    assert by_a[0]["role"] == "dispatcher" and by_a[0]["level"] == "district"
    assert by_a[2]["reason"].startswith("acknowledging an escalation needs the dispatcher role")
    assert by_a[3]["reason"] == "the escalation's incident is outside this seat's jurisdiction"
    service_ack = next(b for b in acks if b["principal"] == "service")
    assert service_ack["role"] == "admin" and service_ack["seat"] is None and service_ack["level"] == "city"
    # Every acknowledgement published has its ok record, with the seat as its "by".
    updates = [v for _, v, _ in read_topic(settings, "incidents.updates.v1") if v["kind"] == "escalation_acknowledged"]
    assert sorted((u["escalation_id"], u["by"]) for u in updates) == sorted(
        [(esc_a, "d-a"), (esc_a, "d-a"), (esc_b, "seat-7")])

    drills = [b for _, b, _ in records if b["action"] == "drill_ordered"]
    issued = {v["drill_id"]: v for _, v, _ in read_topic(settings, "drills.issued.v1")}
    assert {d["subject"]["drill_id"] for d in drills if d["outcome"] == "ok"} == set(issued) == {
        drill_a["drills"][0]["drill_id"], drill_s["drills"][0]["drill_id"]}
    assert sorted((d["outcome"], d["seat"] or "", d["subject"]["drill"]["target"]) for d in drills) == [
        ("ok", "", "unit_id"), ("ok", "d-a", "district"), ("refused", "d-b", "unit_id")]

    sessions = [(b["action"], b["outcome"], b["seat"], b["principal"]) for _, b, _ in records
                if b["action"] in ("signed_in", "signed_out")]
    assert [x for x in sessions if x[2] == "d-a"] == [("signed_in", "ok", "d-a", "seat"),
                                                      ("signed_out", "ok", "d-a", "seat"),
                                                      ("signed_in", "ok", "d-a", "seat")]
    assert [x for x in sessions if x[2] is None] == [("signed_in", "refused", None, "anonymous")]
    token_ids = {b["subject"].get("token_id") for _, b, _ in records if b["action"] == "signed_in"
                 and b["outcome"] == "ok"}
    assert len(token_ids) == 2 and None not in token_ids  # the token's id, never the token

    counted = Counter((b["action"], b["outcome"]) for _, b, _ in records)
    for (action, outcome), n in counted.items():
        assert worker.metric("kaifong_audit_events_total", action=action, outcome=outcome) == n
    assert worker.metric("kaifong_audit_events_total", action="merge_confirmed", outcome="ok") == 0


def test_audit_records_in_process() -> None:
    at = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    body = record(SERVICE, "drill_ordered", "ok", {"drill_id": "d1"}, remote="10.0.0.9", at=at, discriminator="d1")
    assert body["seat"] is None and body["principal"] == "service" and body["at"] == "2026-12-07T02:00:00.000+00:00"
    assert body["audit_id"] == audit_id("drill_ordered", "ok", SERVICE, {"drill_id": "d1"}, "d1")
    anonymous = Principal("anonymous", None)
    refused = record(anonymous, "signed_in", "refused", {}, remote=None, at=at, reason="the token has expired")
    assert refused["role"] is None and refused["reason"] == "the token has expired"
    assert set(ACTIONS) == set(load_schema("audit")["properties"]["action"]["enum"])
    with pytest.raises(ValueError, match="audit record"):
        record(SERVICE, "deleted_everything", "ok", {}, remote=None, at=at)
