"""Seats: who may call what, where — the permission matrix on a real worker (embedded broker and
Redis), seat tokens verified in process (local HS256, OIDC RS256/ES256), and no credential in any
log line.

One worker serves the whole matrix (one test walks it): a seats file with a city seat, two
district seats (越秀区 = A, 海珠区 = B) and a street seat in A; tokens minted with
:func:`kaifong.agents.web.identity.mint`; real escalations from severity-1 reports (they escalate
at once; no unit is near them).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from aiohttp.test_utils import make_mocked_request
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from kafka import KafkaConsumer

from kaifong.agents.flows.seatbook import parse_seats
from kaifong.agents.web.auth import Guard
from kaifong.agents.web.identity import MAX_TTL_S, Identity, Principal, Refusal, mint
from kaifong.streams.settings import Settings

pytestmark = pytest.mark.integration

TOKEN = "svc-7f3a9c1e5b2d"
KEY = "test-key"
A, B = "越秀区", "海珠区"
A_STREET, A_GRID = "YX-S01", "YX-S01-PG01-G0001"
B_STREET, B_GRID = "HZ-S01", "HZ-S01-PG01-G0001"
#: Long rings: no deadline falls due while the test runs; severity 1 escalates at once.
RINGS = "self_rescue:3600,mutual_aid:3601,grid:3602"
HOOK = [{"type": "webhook", "url": "http://127.0.0.1:9/hook"}]
ALL_ROLES = ["viewer", "dispatcher", "admin"]


def seats_doc() -> dict[str, Any]:
    """The city seat, district seats A and B, a street seat in A (viewer and dispatcher only)."""
    return {"version": 1, "seats": [
        {"id": "city", "level": "city", "jurisdiction": {}, "receivers": HOOK, "roles": ALL_ROLES},
        {"id": "d-a", "level": "district", "jurisdiction": {"districts": [A]}, "receivers": HOOK, "roles": ALL_ROLES},
        {"id": "d-b", "level": "district", "jurisdiction": {"districts": [B]}, "receivers": HOOK, "roles": ALL_ROLES},
        {"id": "s-a1", "level": "street", "jurisdiction": {"streets": [A_STREET]}, "receivers": HOOK,
         "roles": ["viewer", "dispatcher"]},
    ]}


# -- HTTP helpers -------------------------------------------------------------------------------------
def call(base: str, method: str, path: str, body: Any = None, token: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """One request; (status, headers, JSON body or bytes)."""
    data = None if body is None else json.dumps(body).encode()
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


def stream_status(base: str, token: str | None) -> int:
    """The status of ``GET /api/stream`` (the stream is closed at once)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/api/stream", headers={"Authorization": f"Bearer {token}"} if token else {})
        return conn.getresponse().status
    finally:
        conn.close()


def sse_reader(base: str, token: str) -> tuple[http.client.HTTPConnection, Iterator[tuple[str, dict[str, Any]]]]:
    """An open stream and its (event, JSON data) pairs."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    conn.request("GET", "/api/stream", headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    assert resp.status == 200

    def events() -> Iterator[tuple[str, dict[str, Any]]]:
        event, data = "message", []
        while True:
            line = resp.readline().decode("utf-8").rstrip("\r\n")
            if line == "":
                if data:
                    yield event, json.loads("\n".join(data))
                event, data = "message", []
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())

    return conn, events()


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def read_topic(settings: Settings, suffix: str) -> list[tuple[bytes | None, dict[str, Any]]]:
    consumer = KafkaConsumer(settings.topic_prefix + suffix, bootstrap_servers=settings.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=50,
                             consumer_timeout_ms=1500)
    try:
        return [(rec.key, orjson.loads(rec.value)) for rec in consumer]
    finally:
        consumer.close()


def report(tag: str, district: str, street: str, grid: str, **over: Any) -> dict[str, Any]:
    event = {"event_id": f"{tag}-r", "incident_id": f"{tag}-inc", "category": "fire", "severity": 1,
             "reported_at": datetime.now(UTC).isoformat(), "location": {"lat": 23.129, "lon": 113.264},
             "district": district, "street": street, "grid": grid, "source": "call_110", "exercise": False,
             "caller": {"phone": "13800138000"}}
    event.update(over)
    return event


def unit(uid: str, street: str, district: str = A) -> dict[str, Any]:
    """A professional unit: rings 1-3 never dispatch one, so it stays free for drills."""
    return {"event_id": f"reg-{uid}", "unit_id": uid, "kind": "professional", "name": uid, "district": district,
            "street": street, "police_grid": "PG1", "grid": f"{street}-PG01-G0002",
            "venue": {"id": f"V-{uid}", "type": "mall"}, "home": {"lat": 23.2, "lon": 113.3}, "responders": 6,
            "equipment": []}


# -- the matrix -----------------------------------------------------------------------------------------
#: Columns: name → (method, path template, body template). {A_INC} / {A_ESC} / {TOKEN} are filled in.
COLUMNS: dict[str, tuple[str, str, Any]] = {
    "incidents": ("GET", "/api/incidents", None),
    "incident A": ("GET", "/api/incidents/{A_INC}", None),
    "escalations": ("GET", "/api/escalations", None),
    "units A": ("GET", "/api/units?district=" + urllib.request.quote(A), None),
    "drills": ("GET", "/api/drills", None),
    "stream": ("GET", "/api/stream", None),
    "summary": ("GET", "/api/summary", None),
    "session": ("GET", "/api/session", None),
    "ack A": ("POST", "/api/escalations/{A_ESC}/ack", {}),
    "drill A": ("POST", "/api/drills", {"district": A}),
    "sign in": ("POST", "/api/session", {"token": "{TOKEN}"}),
}
READ_COLUMNS = [c for c, (m, _, _) in COLUMNS.items() if m == "GET"]


def expected_row(caller: str) -> dict[str, int]:
    """What each caller should get from each column."""
    invalid = caller in ("bad signature", "garbage", "expired", "wrong audience", "unknown seat", "role not allowed")
    if invalid:
        return {**dict.fromkeys(COLUMNS, 401)}
    if caller == "none":  # loopback: anonymous reads (the whole city), writes need a credential
        return {**dict.fromkeys(READ_COLUMNS, 200), "ack A": 401, "drill A": 401, "sign in": 400}
    if caller == "service":
        return {**dict.fromkeys(READ_COLUMNS, 200), "ack A": 202, "drill A": 202, "sign in": 200}
    seat, role = caller.split(" ")
    row = {**dict.fromkeys(READ_COLUMNS, 200), "sign in": 200}
    acts = role in ("dispatcher", "admin")
    if seat == "d-b":  # district B: A is out of scope
        row.update({"incident A": 403, "units A": 403, "ack A": 403, "drill A": 403})
    elif seat == "s-a1":  # street YX-S01 of A: A's incident is on it; a whole-district drill is not
        row.update({"ack A": 202 if acts else 403, "drill A": 403})
    else:  # the city, district A
        row.update({"ack A": 202 if acts else 403, "drill A": 202 if acts else 403})
    return row


def print_matrix(actual: dict[str, dict[str, int]], expected: dict[str, dict[str, int]]) -> None:
    width = max(len(c) for c in actual) + 2
    cols = list(COLUMNS)
    print("\npermission matrix (status; * = differs from expected)")
    print("caller".ljust(width) + "".join(c.rjust(max(len(c), 4) + 2) for c in cols))
    for caller, row in actual.items():
        cells = "".join((str(row[c]) + ("*" if row[c] != expected[caller][c] else "")).rjust(max(len(c), 4) + 2)
                        for c in cols)
        print(caller.ljust(width) + cells)


def test_permission_matrix(new_settings, start_worker, tmp_path: Path) -> None:
    seats = tmp_path / "seats.json"
    seats.write_bytes(orjson.dumps(seats_doc()))
    settings = new_settings(api_token=TOKEN, seats_file=str(seats), auth_signing_key=KEY, rings=RINGS,
                            escalation_renotify_s=3600)
    worker = start_worker(settings, name="perm")
    base = worker.base_url
    tag = uuid.uuid4().hex[:6]
    now = datetime.now(UTC)

    tokens: dict[str, str | None] = {f"{seat} {role}": mint(settings, seat, role, 3600, now)
                                     for seat in ("city", "d-a", "d-b") for role in ALL_ROLES}
    tokens["s-a1 dispatcher"] = mint(settings, "s-a1", "dispatcher", 3600, now)
    tokens["none"] = None
    tokens["bad signature"] = mint(dataclasses.replace(settings, auth_signing_key="other-key"), "city", "admin", 3600)
    tokens["garbage"] = "not.a.token"
    tokens["expired"] = mint(settings, "city", "admin", 3600, now - timedelta(hours=2))
    tokens["wrong audience"] = mint(dataclasses.replace(settings, auth_audience="elsewhere"), "city", "admin", 3600)
    tokens["unknown seat"] = mint(settings, "nobody", "viewer", 3600, now)
    tokens["role not allowed"] = mint(settings, "s-a1", "admin", 3600, now)
    tokens["service"] = TOKEN

    # Two real escalations (severity 1 escalates at once), one in A on street YX-S01, one in B;
    # units of A for drills (eight on YX-S01, one on YX-S02: the street seat does not see it).
    a_rep, b_rep = report(f"{tag}-a", A, A_STREET, A_GRID), report(f"{tag}-b", B, B_STREET, B_GRID)
    units = [unit(f"{tag}-u{i}", A_STREET) for i in range(8)] + [unit(f"{tag}-u9", "YX-S02")]
    assert call(base, "POST", "/api/events/unit-registered", units, token=TOKEN)[0] == 202
    statuses = [{"event_id": f"st-{u['unit_id']}", "unit_id": u["unit_id"], "status": "available", "seq": 1,
                 "at": now.isoformat(), "location": u["home"]} for u in units]
    assert call(base, "POST", "/api/events/unit-status", statuses, token=TOKEN)[0] == 202
    assert call(base, "POST", "/api/events/incident-reported", [a_rep, b_rep], token=TOKEN)[0] == 202
    # A seat may not ingest (ingest is the upstream systems' interface).
    assert call(base, "POST", "/api/events/incident-reported", a_rep, token=tokens["city admin"])[0] == 403

    def open_escalations() -> dict[str, dict[str, Any]]:
        body = call(base, "GET", "/api/escalations", token=TOKEN)[2]
        return {e["incident_id"]: e for e in body["open"] if e["reason"] == "severity"}

    def both_raised() -> dict[str, dict[str, Any]] | None:
        found = open_escalations()
        return found if {a_rep["incident_id"], b_rep["incident_id"]} <= set(found) else None

    escs = wait_for(both_raised, what="both escalations")
    a_esc = escs[a_rep["incident_id"]]["escalation_id"]
    assert escs[a_rep["incident_id"]]["street"] == A_STREET
    wait_for(lambda: call(base, "GET", "/api/units?district=" + urllib.request.quote(A), token=TOKEN)[2]
             ["available"]["professional"] == 9, what="the units available")

    # District B acknowledging A's escalation: 403, nothing published, nothing changes, one refused
    # audit record and no ok one.
    status, _, body = call(base, "POST", f"/api/escalations/{a_esc}/ack", {}, token=tokens["d-b dispatcher"])
    assert (status, body["error"]) == (403, "out_of_scope")
    assert a_esc in {e["escalation_id"] for e in open_escalations().values()}
    assert not [v for _, v in read_topic(settings, "incidents.updates.v1") if v.get("escalation_id") == a_esc]
    audit = [(k, v) for k, v in read_topic(settings, "audit.v1") if v["subject"].get("escalation_id") == a_esc]
    assert [(k, v["outcome"], v["seat"], v["reason"]) for k, v in audit] == [
        (b"d-b", "refused", "d-b", "the escalation's incident is outside this seat's jurisdiction")]

    # Scope of the lists: each seat sees its own jurisdiction.
    def listed(caller: str, path: str, key: str) -> set[str]:
        body = call(base, "GET", path, token=tokens[caller])[2]
        items = body[key] if key != "open" else body["open"] + body["acknowledged"]
        return {i["incident_id"] for i in items} & {a_rep["incident_id"], b_rep["incident_id"]}

    both = {a_rep["incident_id"], b_rep["incident_id"]}
    for caller, seen in (("city viewer", both), ("d-a viewer", {a_rep["incident_id"]}),
                         ("d-b viewer", {b_rep["incident_id"]}), ("s-a1 dispatcher", {a_rep["incident_id"]}),
                         ("service", both), ("none", both)):
        assert listed(caller, "/api/incidents", "incidents") == seen, caller
        assert listed(caller, "/api/escalations", "open") == seen, caller
    units_a = "/api/units?district=" + urllib.request.quote(A)
    street_units = call(base, "GET", units_a, token=tokens["s-a1 dispatcher"])[2]
    assert street_units["total"] == 8 and street_units["available"]["professional"] == 8
    assert call(base, "GET", units_a, token=tokens["d-a viewer"])[2]["total"] == 9

    # The live feed of a seat: its jurisdiction only (a new incident in A, then one in B).
    conn_a, events_a = sse_reader(base, tokens["d-a viewer"])
    conn_b, events_b = sse_reader(base, tokens["d-b viewer"])
    try:
        assert next(events_a)[0] == "ready" and next(events_b)[0] == "ready"
        a2, b2 = report(f"{tag}-a2", A, A_STREET, A_GRID, severity=3), report(f"{tag}-b2", B, B_STREET, B_GRID,
                                                                             severity=3)
        assert call(base, "POST", "/api/events/incident-reported", [a2, b2], token=TOKEN)[0] == 202
        seen_b = []
        for event, data in events_b:
            if event in ("state", "escalation"):
                seen_b.append((data["incident_id"], data.get("district")))
                if data["incident_id"] == b2["incident_id"]:
                    break
        assert seen_b and all(d == B for _, d in seen_b), seen_b
        for event, data in events_a:
            if event == "state":
                assert data["district"] == A
                if data["incident_id"] == a2["incident_id"]:
                    break
    finally:
        conn_a.close()
        conn_b.close()

    # The matrix: every caller x every endpoint.
    actual: dict[str, dict[str, int]] = {}
    expected = {caller: expected_row(caller) for caller in tokens}
    for caller, token in tokens.items():
        row: dict[str, int] = {}
        for column, (method, template, body) in COLUMNS.items():
            path = template.format(A_INC=a_rep["incident_id"], A_ESC=a_esc)
            if column == "stream":
                row[column] = stream_status(base, token)
                continue
            if column == "sign in":
                row[column] = call(base, "POST", path, {"token": token or ""})[0]
                continue
            row[column] = call(base, method, path, body, token=token)[0]
        actual[caller] = row
    print_matrix(actual, expected)
    wrong = [(caller, c, actual[caller][c], expected[caller][c]) for caller in tokens for c in COLUMNS
             if actual[caller][c] != expected[caller][c]]
    assert not wrong, f"(caller, column, got, expected): {wrong}"

    # The day's drills (all of them in A): district B sees none, A all, counted again.
    drills_b = call(base, "GET", "/api/drills", token=tokens["d-b viewer"])[2]
    drills_a = call(base, "GET", "/api/drills", token=tokens["d-a viewer"])[2]
    assert drills_b["drills"] == [] and drills_b["total"] == 0 and drills_b["open"] == 0
    assert len(drills_a["drills"]) == 5 and drills_a["open"] == 5
    assert call(base, "GET", "/api/drills/rates?by=district", token=tokens["d-b viewer"])[2]["groups"] == {}

    # A seat's acknowledgement carries the seat, whatever the body said.
    acks = [v for _, v in read_topic(settings, "incidents.updates.v1") if v.get("escalation_id") == a_esc]
    assert acks and {a["by"] for a in acks} <= {"city", "d-a", "s-a1", "console"}
    assert acks[0]["by"] == "city"  # the first in the matrix: the city dispatcher

    # No credential in any log line of the worker (the matrix sent every kind).
    text = worker.log_path.read_text("utf-8", errors="replace")
    secrets_ = [TOKEN, KEY, *(t for t in tokens.values() if t and t != "not.a.token")]
    leaked = [s[:12] for s in secrets_ if s in text or s.split(".")[-1] in text]
    assert not leaked, f"credentials in the worker log: {leaked}"


# -- in process: tokens and the guard -------------------------------------------------------------------
def book_settings(tmp_path: Path, **over: Any) -> tuple[Settings, Callable[[], Any]]:
    book = parse_seats(orjson.dumps(seats_doc()))
    return Settings(seats_file=str(tmp_path / "seats.json"), auth_signing_key=KEY, api_token=TOKEN, **over), \
        lambda: book


def test_seat_tokens_are_verified_against_the_seats_in_force(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    settings, seats = book_settings(tmp_path)
    identity = Identity.from_settings(settings, seats)
    now = datetime.now(UTC)
    good = mint(settings, "d-a", "dispatcher", 600, now)
    found = identity.verify(good)
    assert isinstance(found, Principal) and (found.seat_id, found.role, found.level) == ("d-a", "dispatcher",
                                                                                          "district")
    assert found.covers(A, None, None) and not found.covers(B, None, None)
    claims = jwt.decode(good, options={"verify_signature": False})
    assert claims["iss"] == "kaifong" and claims["aud"] == "kaifong" and claims["jti"]
    assert claims["exp"] - claims["iat"] == 600
    # Expired beyond the 30 s leeway; within it still good.
    assert identity.verify(mint(settings, "d-a", "viewer", 60, now - timedelta(seconds=100))) == \
        Refusal("the token has expired")
    assert isinstance(identity.verify(mint(settings, "d-a", "viewer", 60, now - timedelta(seconds=80))), Principal)
    # A seat gone from the file, or a role it does not allow: refused.
    assert isinstance(identity.verify(mint(settings, "gone", "viewer", 60, now)), Refusal)
    assert isinstance(identity.verify(mint(settings, "s-a1", "admin", 60, now)), Refusal)
    # Ttl limits, roles and keys at minting.
    with pytest.raises(ValueError, match="24 h"):
        mint(settings, "d-a", "viewer", MAX_TTL_S + 1, now)
    with pytest.raises(ValueError, match="role"):
        mint(settings, "d-a", "root", 60, now)
    with pytest.raises(ValueError, match="signing key"):
        mint(Settings(), "d-a", "viewer", 60, now)
    # The key derives from the API token when no signing key is set.
    derived = Settings(api_token=TOKEN, seats_file="x")
    assert isinstance(Identity.from_settings(derived, seats).verify(mint(derived, "city", "admin", 60)), Principal)
    assert isinstance(identity.verify(mint(derived, "city", "admin", 60)), Refusal)  # another key
    # A service session is a cookie's only.
    session, _ = identity.service_session(now)
    assert isinstance(identity.verify(session), Refusal)
    assert identity.verify(session, cookie=True).kind == "service"  # type: ignore[union-attr]
    assert good not in caplog.text and TOKEN not in caplog.text and session not in caplog.text


def test_oidc_issuers_rs256_and_es256(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    for name, key in (("rsa", rsa_key), ("ec", ec_key)):
        (tmp_path / f"{name}.pem").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    issuers = f"https://id.example/rsa={tmp_path / 'rsa.pem'},https://id.example/ec={tmp_path / 'ec.pem'}"
    settings, seats = book_settings(tmp_path, auth_issuers=issuers)
    identity = Identity.from_settings(settings, seats)
    exp = int(time.time()) + 600

    def token(key: Any, alg: str, iss: str, **over: Any) -> str:
        claims = {"iss": iss, "aud": "kaifong", "exp": exp, "sub": "u-1", "seat": "d-b", "role": "viewer", **over}
        return jwt.encode(claims, key, algorithm=alg)

    for key, alg, iss in ((rsa_key, "RS256", "https://id.example/rsa"), (ec_key, "ES256", "https://id.example/ec")):
        found = identity.verify(token(key, alg, iss))
        assert isinstance(found, Principal) and found.seat_id == "d-b" and found.issuer == iss, found
        assert isinstance(identity.verify(token(key, alg, iss, aud="other")), Refusal)
        assert isinstance(identity.verify(token(key, alg, "https://id.example/unknown")), Refusal)
    # Signed by one issuer's key but naming the other issuer; HS256 with a public key as secret.
    assert isinstance(identity.verify(token(ec_key, "ES256", "https://id.example/rsa")), Refusal)
    pem = (tmp_path / "rsa.pem").read_bytes()
    forged = jwt.api_jws.PyJWS().encode(orjson.dumps({"iss": "https://id.example/rsa", "aud": "kaifong", "exp": exp,
                                                      "seat": "city", "role": "admin"}), b"x" * 32, algorithm="HS256")
    assert isinstance(identity.verify(forged), Refusal) and pem
    assert isinstance(identity.verify(token(rsa_key, "RS256", "https://id.example/rsa", role=None)), Refusal)


def test_the_guard_with_seats_refuses_bad_credentials_and_logs_none(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    settings, seats = book_settings(tmp_path)
    guard = Guard.from_settings(settings, seats)
    viewer = mint(settings, "d-a", "viewer", 600)

    def refusal(method: str, path: str, route: str, headers: dict[str, str]) -> str | None:
        return guard.refusal(make_mocked_request(method, path, headers=headers), route)

    bearer = {"Authorization": f"Bearer {viewer}"}
    assert refusal("GET", "/api/incidents", "/api/incidents", bearer) is None
    assert refusal("GET", "/api/incidents", "/api/incidents", {}) is None  # loopback: anonymous reads
    assert refusal("POST", "/api/drills", "/api/drills", {}) is not None  # writes need a credential
    assert refusal("GET", "/api/incidents", "/api/incidents", {"Authorization": "Bearer nope"}) is not None
    assert refusal("GET", "/api/incidents", "/api/incidents", {"Cookie": f"kf_session={viewer}"}) is None
    assert refusal("POST", "/api/session", "/api/session", {"Authorization": "Bearer nope"}) is None  # sign in anew
    assert viewer not in caplog.text and KEY not in caplog.text


# -- the console: a district seat signs in and opens on its district ------------------------------------
def test_console_opens_on_the_seats_district(new_settings, start_worker, tmp_path: Path) -> None:
    import shutil

    from playwright import sync_api

    seats = tmp_path / "seats.json"
    seats.write_bytes(orjson.dumps(seats_doc()))
    settings = new_settings(api_token=TOKEN, seats_file=str(seats), auth_signing_key=KEY, rings=RINGS,
                            escalation_renotify_s=3600)
    worker = start_worker(settings, name="console")
    base = worker.base_url
    tag = uuid.uuid4().hex[:6]
    a_rep, b_rep = report(f"{tag}-a", A, A_STREET, A_GRID), report(f"{tag}-b", B, B_STREET, B_GRID)
    assert call(base, "POST", "/api/events/incident-reported", [a_rep, b_rep], token=TOKEN)[0] == 202
    viewer = mint(settings, "d-a", "viewer", 600)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/?token={viewer}")  # an old bookmark: ignored, taken out of the address
            page.wait_for_function("!location.search.includes('token')")
            assert page.locator(f'.incident[data-incident="{b_rep["incident_id"]}"]').count() in (0, 1)
            page.fill("#signin-token", "not.a.token")
            page.click("#signin-submit")
            page.locator("#signin-error").filter(has_text="登录失败").wait_for(timeout=5_000)
            page.fill("#signin-token", viewer)
            page.click("#signin-submit")
            page.wait_for_selector("#who:not([hidden])", timeout=5_000)
            assert page.locator("#who-seat").inner_text() == "d-a"
            assert page.locator("#who-role").inner_text() == "viewer · 区 district"
            assert page.locator("#f-district").input_value() == A
            assert page.locator("#f-district option").count() == 2  # "all" (of the seat) and A
            page.locator(f'.incident[data-incident="{a_rep["incident_id"]}"]').wait_for(timeout=10_000)
            page.wait_for_selector("body[data-live='1']", timeout=10_000)
            assert page.locator(f'.incident[data-incident="{b_rep["incident_id"]}"]').count() == 0
            ack = page.locator(f'.escalation[data-escalation="{a_rep["incident_id"]}:r1:severity:0"] button.ack')
            ack.wait_for(timeout=10_000)
            assert ack.is_disabled(), "a viewer cannot acknowledge"
            cookies = {c["name"]: c for c in page.context.cookies()}
            assert cookies["kf_session"]["httpOnly"] and cookies["kf_session"]["sameSite"] == "Strict"
            assert page.evaluate("document.cookie") == ""  # the script never sees the credential
            page.click("#signout")
            page.wait_for_selector("#signin:not([hidden])", timeout=5_000)
            assert "kf_session" not in {c["name"] for c in page.context.cookies()}
            assert not errors, errors
        finally:
            browser.close()
