"""Bounded cost per request of ``POST /api/events``: the handler in process (aiohttp's test server,
a recording ``send_all``), then a real worker that keeps serving /health and dispatching while it
is flooded with invalid events."""

from __future__ import annotations

import asyncio
import io
import itertools
import statistics
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from kafka import KafkaConsumer, KafkaProducer

from kaifong.agents.web import ingest as ingest_module
from kaifong.agents.web.ingest import MAX_LISTED_ERRORS, SLICE_EVENTS, Ingest
from kaifong.schemas.validation import InvalidEvent
from kaifong.streams.codec import Headers
from kaifong.streams.settings import Settings

#: Every error body stays under this many bytes, whatever the request.
ERROR_BODY_MAX = 64 * 1024
T0 = "2026-11-29T14:00:00+08:00"
Record = tuple[str, bytes | None, bytes, Headers]


def incident(i: int, tag: str = "b") -> dict[str, Any]:
    """A valid incident report."""
    return {"event_id": f"{tag}-r-{i}", "incident_id": f"{tag}-inc-{i}", "category": "fire", "severity": 1 + i % 4,
            "reported_at": T0, "location": {"lat": 23.1 + i / 1e5, "lon": 113.3}, "district": "越秀区",
            "grid": f"G{i % 7}", "source": "call_110", "exercise": False, "description": "smoke"}


def empty_objects(n: int) -> bytes:
    """``[{},{},…]``: ``n`` empty objects (3 bytes each)."""
    return b"[" + b",".join([b"{}"] * n) + b"]"


class Recorder:
    """The handler's injected port: records what would have been produced."""

    def __init__(self) -> None:
        self.calls: list[list[Record]] = []

    async def __call__(self, records: list[Record]) -> None:
        self.calls.append(records)

    @property
    def sent(self) -> int:
        """Records sent so far."""
        return sum(map(len, self.calls))


def run_ingest(settings: Settings, body: Callable[[TestClient[web.Request, web.Application], Recorder],
                                                  Awaitable[None]]) -> Recorder:
    """Serve the ingest handler on aiohttp's test server and run ``body`` against it."""
    recorder = Recorder()
    handler = Ingest(settings, recorder)
    app = web.Application()
    app.router.add_post("/api/events", handler.ingest)
    app.router.add_post("/api/events/{type}", handler.ingest)

    async def main() -> None:
        async with TestClient(TestServer(app)) as client:
            await body(client, recorder)

    asyncio.run(main())
    return recorder


class CountingParse:
    """Wraps the validator the handler calls, counting the events it checks."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self._parse = ingest_module.parse
        monkeypatch.setattr(ingest_module, "parse", self)

    def __call__(self, name: str, raw: bytes | None, *, max_bytes: int) -> dict[str, Any]:
        self.calls += 1
        return self._parse(name, raw, max_bytes=max_bytes)


# -- the handler in process ------------------------------------------------------------------------------------------
def test_hundred_thousand_empty_objects_refused_unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The request of the bug report (300 KB, 100,000 ``{}``): refused whole on its length, before
    a single event is checked; a small answer; nothing sent."""
    counting = CountingParse(monkeypatch)
    body = empty_objects(100_000)
    assert len(body) < Settings().max_event_bytes * 100  # within the body limit: only the cap refuses it
    answers: list[tuple[int, bytes]] = []

    async def post(client: TestClient[web.Request, web.Application], _: Recorder) -> None:
        for path in ("/api/events/incident-reported", "/api/events?type=unit-status"):
            resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
            answers.append((resp.status, await resp.read()))

    recorder = run_ingest(Settings(), post)
    for status, raw in answers:
        answer = orjson.loads(raw)
        assert status == 413 and answer["error"] == "too_many_events", answer
        assert answer["limit"] == 1000 and answer["events"] == 100_000 and answer["accepted"] == 0
        assert "KAIFONG_MAX_EVENTS_PER_REQUEST" in answer["message"]
        assert len(raw) < ERROR_BODY_MAX
    assert counting.calls == 0, "no event is checked in a request refused on its length"
    assert recorder.sent == 0


def test_thousand_valid_events_accepted_in_one_send(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingParse(monkeypatch)
    events = [incident(i) for i in range(1000)]
    answers: list[tuple[int, Any]] = []

    async def post(client: TestClient[web.Request, web.Application], _: Recorder) -> None:
        resp = await client.post("/api/events/incident-reported", data=orjson.dumps(events))
        answers.append((resp.status, await resp.json()))

    recorder = run_ingest(Settings(topic_prefix="ib."), post)
    [(status, answer)] = answers
    assert status == 202, answer
    assert answer == {"accepted": 1000, "topic": "ib.incidents.reported.v1", "ids": [e["event_id"] for e in events]}
    assert counting.calls == 1000
    [records] = recorder.calls  # all or nothing: one send of every record
    assert [(t, k, orjson.loads(v)) for t, k, v, _ in records] == [
        ("ib.incidents.reported.v1", e["incident_id"].encode(), e) for e in events]
    assert all(("kf_via", b"http") in h for *_, h in records)


def test_cap_plus_one_refused_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """One event over the cap (here 10): refused, none checked, none sent; at the cap, accepted."""
    counting = CountingParse(monkeypatch)
    settings = Settings(max_events_per_request=10)
    answers: list[tuple[int, Any]] = []

    async def post(client: TestClient[web.Request, web.Application], _: Recorder) -> None:
        for n in (11, 10):
            body = orjson.dumps([incident(i) for i in range(n)])
            resp = await client.post("/api/events/incident-reported", data=body)
            answers.append((resp.status, await resp.json()))

    recorder = run_ingest(settings, post)
    (over, over_answer), (at, at_answer) = answers
    assert over == 413 and over_answer["error"] == "too_many_events" and over_answer["events"] == 11
    assert at == 202 and at_answer["accepted"] == 10
    assert counting.calls == 10, "the refused request's events were never checked"
    assert recorder.sent == 10


def test_comma_heavy_array_refused_before_parsing() -> None:
    """An array with more commas than the cap's events can hold is refused before it is parsed
    (parsing ~8 million empty objects would hold the loop for a second and take 0.5 GB)."""
    settings = Settings(max_events_per_request=10)
    body = b"[[" + b",".join([b"{}"] * 5000) + b"]]"  # one event, 4,999 commas: over 10 x 128
    answers: list[tuple[int, Any]] = []

    async def post(client: TestClient[web.Request, web.Application], _: Recorder) -> None:
        resp = await client.post("/api/events/unit-status", data=body)
        answers.append((resp.status, await resp.json()))

    recorder = run_ingest(settings, post)
    [(status, answer)] = answers
    assert status == 413 and answer["error"] == "too_many_values" and answer["accepted"] == 0, answer
    assert recorder.sent == 0


def test_refusal_lists_the_first_fifty_and_counts_all() -> None:
    """1,000 invalid events (each with several reasons): the answer lists the first 50 by index,
    counts all 1,000, says it is truncated, and stays small."""
    events: list[Any] = [{**incident(i), "severity": "high", "source": "pigeon", "reported_at": "soon",
                          "description": "x" * 5000} for i in range(1000)]
    events[3] = incident(3)  # a valid one among them is not sent either
    answers: list[tuple[int, bytes]] = []

    async def post(client: TestClient[web.Request, web.Application], _: Recorder) -> None:
        # A BytesIO: aiohttp warns that a large bytes body would hold the client's own loop.
        resp = await client.post("/api/events/incident-reported", data=io.BytesIO(orjson.dumps(events)))
        answers.append((resp.status, await resp.read()))

    recorder = run_ingest(Settings(), post)
    [(status, raw)] = answers
    answer = orjson.loads(raw)
    assert status == 400 and answer["error"] == "invalid_events", answer
    assert answer["invalid"] == 999 and answer["events"] == 1000 and answer["accepted"] == 0
    assert answer["errors_truncated"] is True
    assert [e["index"] for e in answer["errors"]] == [i for i in range(51) if i != 3]
    assert len(answer["errors"]) == MAX_LISTED_ERRORS
    assert all(len(e["reasons"]) >= 3 for e in answer["errors"])
    assert all(len(r) <= 301 for e in answer["errors"] for r in e["reasons"])
    assert len(raw) < ERROR_BODY_MAX
    assert recorder.sent == 0


def test_error_body_bounded_whatever_the_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound is the handler's own, not the validator's: even reasons as long and as costly to
    encode as can be (control characters, 6 bytes each in JSON) keep the body under 64 KiB."""
    def hostile(name: str, raw: bytes | None, *, max_bytes: int) -> dict[str, Any]:
        raise InvalidEvent("schema", ["\x01" * 10_000] * 40)

    monkeypatch.setattr(ingest_module, "parse", hostile)
    answers: list[tuple[int, bytes]] = []

    async def post(client: TestClient[web.Request, web.Application], _: Recorder) -> None:
        for n in (1, 1000):
            resp = await client.post("/api/events/unit-status", data=orjson.dumps([{}] * n))
            answers.append((resp.status, await resp.read()))

    run_ingest(Settings(), post)
    for (status, raw), n in zip(answers, (1, 1000), strict=True):
        answer = orjson.loads(raw)
        assert status == 400 and answer["invalid"] == n
        assert len(raw) < ERROR_BODY_MAX, len(raw)
        assert len(answer["errors"]) >= 1 and len(answer["errors"][0]["reasons"]) == 20
        assert answer["errors_truncated"] is (n > 1)


def test_checking_gives_the_loop_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """While 1,000 invalid events are checked, another task runs at least every SLICE_EVENTS events
    (counted by events checked between two of its turns: no clock involved)."""
    counting = CountingParse(monkeypatch)
    seen: list[int] = []
    answers: list[int] = []

    async def post(client: TestClient[web.Request, web.Application], _: Recorder) -> None:
        done = asyncio.Event()

        async def other_task() -> None:
            while not done.is_set():
                seen.append(counting.calls)
                await asyncio.sleep(0)

        task = asyncio.create_task(other_task())
        resp = await client.post("/api/events/unit-status", data=empty_objects(1000))
        answers.append(resp.status)
        done.set()
        await task

    run_ingest(Settings(), post)
    assert answers == [400] and counting.calls == 1000
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert seen[-1] == 1000 and max(gaps) <= SLICE_EVENTS, max(gaps)


def test_existing_contract_kept() -> None:
    """One event or an array; the unknown type, empty array and not-JSON answers as before."""
    answers: list[tuple[int, Any]] = []

    async def post(client: TestClient[web.Request, web.Application], _: Recorder) -> None:
        for path, body in (("/api/events/incident-reported", orjson.dumps(incident(1))),
                           ("/api/events/carrier-pigeon", b"{}"),
                           ("/api/events/incident-reported", b"[]"),
                           ("/api/events/incident-reported", b"[{nope"),
                           ("/api/events/incident-reported", b"{nope"),
                           ("/api/events/incident-reported", b"")):
            resp = await client.post(path, data=body)
            answers.append((resp.status, await resp.json()))

    recorder = run_ingest(Settings(), post)
    one, unknown, empty, not_json_array, not_json_one, nothing = answers
    assert one[0] == 202 and one[1]["accepted"] == 1
    assert unknown[0] == 400 and unknown[1]["error"] == "unknown_type"
    assert empty[0] == 400 and empty[1]["errors"][0]["error_class"] == "empty"
    for status, answer in (not_json_array, not_json_one):
        assert status == 400 and answer["errors"][0]["error_class"] == "not_json", answer
        assert answer["accepted"] == 0 and answer["invalid"] == 1
    assert nothing[0] == 400 and nothing[1]["errors"][0]["error_class"] == "empty"
    assert recorder.sent == 1


# -- a real worker under the flood -----------------------------------------------------------------------------------
CENTRE = (23.1291, 113.2644)
SLOW_RINGS = "self_rescue:3600,mutual_aid:3601,grid:3602,street:3603,professional:3604"
UNIT_KINDS = ["post"] * 10 + ["unit"] * 10 + ["grid_team"] * 6 + ["street_force"] * 2 + ["professional"] * 2


def post_json(base: str, path: str, body: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    """POST a JSON body: the status and the answer's bytes."""
    request = urllib.request.Request(base + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def health_latency(base: str) -> float:
    """Seconds one ``GET /health`` takes, as a client sees it."""
    started = time.perf_counter()
    with urllib.request.urlopen(base + "/health", timeout=30) as r:
        r.read()
        assert r.status == 200
    return time.perf_counter() - started


def poll_health(base: str, seconds: float) -> list[float]:
    """/health every 50 ms for ``seconds``: the latency of each answer."""
    out: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out.append(health_latency(base))
        time.sleep(0.05)
    return out


def report(tag: str, i: int) -> dict[str, Any]:
    """An incident report made now (severity 4: rings 1-3 dispatched at once)."""
    return {"event_id": f"{tag}-e{i}", "incident_id": f"{tag}-i{i:02d}", "category": "fire", "severity": 4,
            "reported_at": datetime.now(UTC).isoformat(), "location": {"lat": CENTRE[0], "lon": CENTRE[1]},
            "district": "越秀区", "grid": "G0", "source": "video", "exercise": False}


def decision_times(settings: Settings, reported: dict[str, dict[str, Any]], timeout: float = 30) -> dict[str, float]:
    """Seconds from each report's ``reported_at`` to its first assignment's ``decided_at``."""
    consumer = KafkaConsumer(settings.topic_prefix + "dispatch.assignments.v1",
                             bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest",
                             enable_auto_commit=False, fetch_max_wait_ms=50, consumer_timeout_ms=1000)
    out: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and set(out) != set(reported):
        for rec in consumer:
            a = orjson.loads(rec.value)
            inc = reported.get(a["incident_id"])
            if inc is not None:
                took = (datetime.fromisoformat(a["decided_at"])
                        - datetime.fromisoformat(inc["reported_at"])).total_seconds()
                out[a["incident_id"]] = min(took, out.get(a["incident_id"], took))
    consumer.close()
    return out


@pytest.mark.integration
def test_worker_keeps_serving_through_a_flood(new_settings: Any, start_worker: Any) -> None:
    """While one request of 100,000 empty objects and a stream of full requests of invalid events
    (1,000 each, every one checked) hit the worker, /health keeps answering in its normal time and
    incidents reported meanwhile are dispatched in their normal time. This bounds a stall (the bug:
    10.7 s); it is no speed benchmark, hence the generous bounds."""
    settings = new_settings(rings=SLOW_RINGS, escalation_renotify_s=3600.0)
    assert len(empty_objects(100_000)) < settings.max_event_bytes * 100  # the body limit admits it
    worker = start_worker(settings)
    base = worker.base_url
    tag = f"fl{int(time.time() * 1000) % 10**8}"

    # Units over HTTP (the accepted path), then wait until they are dispatchable.
    units = [{"event_id": f"{tag}-g{i}", "unit_id": f"{tag}-u{i:02d}", "kind": kind, "name": f"u{i}",
              "district": "越秀区", "police_grid": "PG1", "grid": "G0", "venue": {"id": f"{tag}-v", "type": "mall"},
              "home": {"lat": CENTRE[0] + i * 1e-4, "lon": CENTRE[1]}, "responders": 6, "equipment": ["aed"]}
             for i, kind in enumerate(UNIT_KINDS)]
    assert post_json(base, "/api/events/unit-registered", orjson.dumps(units))[0] == 202
    now = datetime.now(UTC).isoformat()
    statuses = [{"event_id": f"{u['unit_id']}-s1", "unit_id": u["unit_id"], "status": "available", "at": now,
                 "seq": 1, "location": u["home"]} for u in units]
    assert post_json(base, "/api/events/unit-status", orjson.dumps(statuses))[0] == 202
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, body = worker.get(f"/api/units?district={urllib.parse.quote('越秀区')}")
        if sum(u["dispatchable"] for u in orjson.loads(body)["units"]) == len(units):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("units never became dispatchable")

    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=0)
    topic = settings.topic_prefix + "incidents.reported.v1"

    def send_reports(first: int, count: int, every_s: float) -> dict[str, dict[str, Any]]:
        sent: dict[str, dict[str, Any]] = {}
        for i in range(first, first + count):
            inc = report(tag, i)
            producer.send(topic, key=inc["incident_id"].encode(), value=orjson.dumps(inc))
            producer.flush()
            sent[inc["incident_id"]] = inc
            time.sleep(every_s)
        return sent

    # Baseline: /health and dispatch with nothing else going on.
    baseline_health = poll_health(base, 1.5)
    before = send_reports(0, 4, 0.3)
    before_decided = decision_times(settings, before)
    assert set(before_decided) == set(before)

    # The flood, from another thread, while /health is polled and incidents are reported.
    flood: dict[str, Any] = {"cap_answers": []}
    stop = threading.Event()

    def flooding() -> None:
        started = time.perf_counter()
        flood["big"] = post_json(base, "/api/events/incident-reported", empty_objects(100_000))
        flood["big_s"] = time.perf_counter() - started
        full = empty_objects(settings.max_events_per_request)
        while not stop.is_set():
            started = time.perf_counter()
            status, raw = post_json(base, "/api/events/incident-reported", full)
            flood["cap_answers"].append((status, raw, time.perf_counter() - started))

    thread = threading.Thread(target=flooding, daemon=True)
    thread.start()
    during: dict[str, dict[str, Any]] = {}
    reporter = threading.Thread(target=lambda: during.update(send_reports(10, 4, 0.5)), daemon=True)
    reporter.start()
    flood_health = poll_health(base, 3.0)
    reporter.join(30)
    stop.set()
    thread.join(60)
    producer.close(10)
    during_decided = decision_times(settings, during)

    # The flood happened as meant: the long request refused on its length, the full ones checked
    # to the last event, every answer small.
    status, raw = flood["big"]
    assert status == 413 and orjson.loads(raw)["error"] == "too_many_events" and len(raw) < ERROR_BODY_MAX
    assert len(flood["cap_answers"]) >= 3, "the flood should keep the validator busy for the whole window"
    for status, raw, _ in flood["cap_answers"]:
        answer = orjson.loads(raw)
        assert status == 400 and answer["invalid"] == settings.max_events_per_request, answer
        assert answer["errors_truncated"] and len(raw) < ERROR_BODY_MAX

    # /health kept answering in about its normal time (a stall would show as seconds).
    p99 = statistics.quantiles(baseline_health, n=100)[98]
    bound = max(0.5, 5 * p99)
    assert max(flood_health) < bound, (max(flood_health), bound)
    # Incidents reported during the flood were dispatched, in about their normal time.
    assert set(during_decided) == set(during), (set(during) - set(during_decided))
    normal = max(before_decided.values())
    assert max(during_decided.values()) < max(2.0, 5 * normal), (during_decided, before_decided)
    assert worker.metric("kaifong_http_requests_total", code="500") == 0
    print(f"\nflood: 100k-object request answered in {flood['big_s'] * 1000:.0f} ms; "
          f"{len(flood['cap_answers'])} full invalid requests, median "
          f"{statistics.median(t for *_, t in flood['cap_answers']) * 1000:.0f} ms; /health baseline p99 "
          f"{p99 * 1000:.1f} ms, worst during the flood {max(flood_health) * 1000:.1f} ms "
          f"({len(flood_health)} polls); decisions before {sorted(round(v, 3) for v in before_decided.values())} s, "
          f"during {sorted(round(v, 3) for v in during_decided.values())} s")
