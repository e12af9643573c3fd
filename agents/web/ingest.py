"""kaifong.agents.web.ingest — ``POST /api/events``: HTTP ingest for upstream systems that cannot speak Kafka.

Layer: agents/web. The same contracts as the input topics, all-or-nothing per request: every
event is checked exactly as the topic's intake checks it, and nothing is sent unless all pass.
A request costs the worker a bounded amount whatever it holds: at most
``KAIFONG_MAX_EVENTS_PER_REQUEST`` events, checked in slices that give the event loop back,
and a refusal that lists only the first reasons (its body stays under 64 KiB).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from kaifong.agents.web.responses import error, json_response, read_limited, too_large
from kaifong.agents.web.services import SendAll
from kaifong.schemas.validation import InvalidEvent, parse
from kaifong.streams.codec import Headers
from kaifong.streams.settings import Settings
from kaifong.streams.topics import INPUT_BY_EVENT_TYPE

log = logging.getLogger(__name__)

#: Events checked between two yields to the event loop, and the longest run of checking without
#: one. Both, because an event costs from ~6 µs (valid: the compiled check) to ~100 µs (refused:
#: the reference validator collects every reason) and more for a large one.
SLICE_EVENTS = 200
SLICE_S = 0.005
#: Commas an array body may hold per allowed event, counted before it is parsed. Parsing costs
#: per value (100,000 empty objects: ~20 ms; a full 25 MB body of them: ~1 s and 0.5 GB), and a
#: comma precedes every value but the first of each array or object. A valid event holds at most
#: ~80 values (the schemas are closed and bound their arrays); the rest is room for commas in text.
COMMAS_PER_EVENT = 128
#: Bytes counted for commas between two yields (~0.4 ms each).
COUNT_CHUNK = 1 << 20
#: A refusal lists the first invalid events (by index) up to this many, with at most this many
#: reasons each (the validator's own limit), each cut to this many characters, in at most this
#: many bytes: with the counts around them the body stays under 64 KiB whatever was sent
#: (a reason of 300 characters encodes to at most ~1.8 KB, so one entry always fits).
MAX_LISTED_ERRORS = 50
MAX_LISTED_REASONS = 20
MAX_REASON_CHARS = 300
LISTED_ERRORS_BYTES = 56_000


def _cut(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS] + "…"


@dataclass
class Refusals:
    """The invalid events of one request: every one counted, the first ones listed (bounded)."""

    listed: list[dict[str, Any]] = field(default_factory=list)
    invalid: int = 0
    truncated: bool = False
    _bytes: int = 0

    def add(self, index: int, error_class: str, reasons: list[str]) -> None:
        """Count one invalid event; list it while the list has room (first come, first listed)."""
        self.invalid += 1
        if self.truncated:
            return
        entry = {"index": index, "error_class": error_class,
                 "reasons": [_cut(r) for r in reasons[:MAX_LISTED_REASONS]]}
        size = len(orjson.dumps(entry)) + 1
        if len(self.listed) >= MAX_LISTED_ERRORS or self._bytes + size > LISTED_ERRORS_BYTES:
            self.truncated = True  # later, smaller entries are not listed either: "the first ones"
            return
        self.listed.append(entry)
        self._bytes += size

    def answer(self, events: int, message: str | None = None) -> web.Response:
        """The 400 answer: the listed reasons and the counts; nothing was sent."""
        return json_response({"error": "invalid_events",
                              "message": message or f"{self.invalid} of {events} events are invalid; none was sent",
                              "errors": self.listed, "invalid": self.invalid, "events": events, "accepted": 0,
                              "errors_truncated": self.truncated}, status=400)


@dataclass
class Pacer:
    """Gives the event loop back every :data:`SLICE_EVENTS` events or :data:`SLICE_S` of work."""

    count: int = 0
    since: float = field(default_factory=time.perf_counter)
    yields: int = 0

    async def tick(self) -> None:
        """Called before each unit of work: yield when the slice is used up."""
        self.count += 1
        if self.count > SLICE_EVENTS or time.perf_counter() - self.since >= SLICE_S:
            await asyncio.sleep(0)
            self.yields += 1
            self.count, self.since = 1, time.perf_counter()


async def count_commas(body: bytes, stop_above: int) -> int:
    """The commas in ``body``, counted a chunk at a time (yielding between chunks); counting stops
    as soon as there are more than ``stop_above``."""
    total = 0
    for start in range(0, len(body), COUNT_CHUNK):
        if start:
            await asyncio.sleep(0)
        total += body.count(b",", start, start + COUNT_CHUNK)
        if total > stop_above:
            break
    return total


@dataclass(frozen=True)
class Ingest:
    """The ingest handler: checks with the intake's rules, publishes with the worker's producer."""

    settings: Settings
    send_all: SendAll

    async def ingest(self, request: web.Request) -> web.Response:
        """``POST /api/events/{type}`` or ``/api/events?type=``: one event or a JSON array of events.

        Every event is checked exactly as the topic's intake checks it; if any is invalid, nothing
        is sent and the answer (400) counts them and lists the reasons of the first ones. An array
        longer than ``KAIFONG_MAX_EVENTS_PER_REQUEST`` is refused whole (413) before any is checked.
        """
        event_type = request.match_info.get("type") or request.query.get("type", "")
        spec = INPUT_BY_EVENT_TYPE.get(event_type)
        if spec is None:
            return error(400, "unknown_type", "unknown or missing event type",
                         types=sorted(INPUT_BY_EVENT_TYPE))
        limit = self.settings.max_event_bytes * 100
        if request.content_length is not None and request.content_length > limit:
            return too_large(limit)  # refused on the declared size, before reading a byte of it
        body = await read_limited(request, limit)
        if body is None:
            return too_large(limit)
        cap = self.settings.max_events_per_request
        stripped = body.strip()
        items: list[Any] | None = None
        if stripped[:1] == b"[":
            budget = cap * COMMAS_PER_EVENT
            if await count_commas(stripped, budget) > budget:
                return error(413, "too_many_values", f"the array holds more than {budget} commas, more than "
                             f"{cap} events can hold (KAIFONG_MAX_EVENTS_PER_REQUEST); send fewer events per "
                             "request", limit=budget, accepted=0)
            try:
                top = orjson.loads(stripped)
            except orjson.JSONDecodeError as exc:
                refused = Refusals()
                refused.add(0, "not_json", [str(exc)])
                return refused.answer(1, "the body is not JSON; nothing was sent")
            items = top if isinstance(top, list) else [top]  # always a list: the body starts with "["
            if len(items) > cap:
                return error(413, "too_many_events", f"the array holds {len(items)} events, more than the "
                             f"{cap} one request may carry (KAIFONG_MAX_EVENTS_PER_REQUEST); send fewer events "
                             "per request", limit=cap, events=len(items), accepted=0)
            if not items:
                refused = Refusals()
                refused.add(0, "empty", ["the array holds no events"])
                return refused.answer(0, "the array holds no events")
        # Anything else is one event, checked as the very bytes that will be sent (its size first).
        count = len(items) if items is not None else 1
        refused = Refusals()
        checked: list[tuple[dict[str, Any], bytes]] = []
        pacer = Pacer()
        for i in range(count):
            await pacer.tick()
            if items is None:
                raw = body
            else:
                try:
                    raw = orjson.dumps(items[i])
                except orjson.JSONEncodeError:  # nested deeper than orjson writes (255 levels)
                    refused.add(i, "not_json", ["nested too deeply"])
                    continue
            try:
                event = parse(spec.event_type, raw, max_bytes=self.settings.max_event_bytes)
            except InvalidEvent as exc:
                refused.add(i, exc.error_class, exc.reasons)
                continue
            if not refused.invalid:  # once one is invalid none is sent: keep nothing more
                checked.append((event, raw))
        if refused.invalid:
            log.info("http ingest refused: %d of %d %s events invalid", refused.invalid, count, event_type)
            return refused.answer(count)
        topic = spec.name(self.settings)
        headers: Headers = [("content-type", b"application/json"), ("kf_via", b"http")]
        records: list[tuple[str, bytes | None, bytes, Headers]] = [
            (topic, str(ev[spec.key]).encode(), raw, list(headers)) for ev, raw in checked]
        try:
            await self.send_all(records)
        except Exception as exc:  # noqa: BLE001 - any producer failure: tell the caller to retry
            log.warning("http ingest: could not publish %d events (%s)", len(records), type(exc).__name__)
            return error(503, "broker_unavailable", "not every event was published; retrying the request is "
                         "safe (events are deduplicated by event_id)")
        log.info("http ingest: %d %s events accepted", len(records), event_type)
        return json_response({"accepted": len(records), "topic": topic,
                              "ids": [ev.get("event_id") for ev, _ in checked]}, status=202)
